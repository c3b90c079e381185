"""Agents: Python participants that join meetings like devices do.

An agent is a small plugin: the runner (`fleet.agents.runner`) joins a room
through the meeting server and wires the agent into the media mesh. The agent
hears every remote participant's decoded 20 ms frames (`hear`) and says audio
to one peer or to everyone (`speak`), or hands the mesh whole tracks
(`track_for`). An AI bot subclasses `Agent`, turns what it hears into what it
says, and is run with `fleet agent join ROOM --plugin module:Class`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack

from fleet.media.config import MediaConfig
from fleet.media.sinks import WavRecorder
from fleet.media.sources import PushSource, SharedSource, ToneSource, WavSource


class Agent:
    """Base agent: silent and deaf. Override `hear`, call `speak`; or override `track_for`."""

    name = "agent"
    # What the agent can do, declared to the room (a recorder has no microphone).
    media = MediaConfig()

    def __init__(self) -> None:
        self._voices: dict[str, PushSource] = {}
        # Set by the runner: participant id -> a readable name ("p-2 (dev-1)").
        self.name_of: Callable[[str], str] = lambda peer: peer

    # --- the plugin interface -----------------------------------------------------------------
    def hear(self, peer: str, frame: av.AudioFrame) -> None:
        """One decoded 20 ms frame (48 kHz mono s16) from remote participant `peer`."""

    def speak(self, samples: np.ndarray | av.AudioFrame, peer: str | None = None) -> None:
        """Queue audio (48 kHz mono s16) for one peer, or for every peer."""
        targets = [self._voices[peer]] if peer in self._voices else []
        if peer is None:
            targets = list(self._voices.values())
        for voice in targets:
            voice.push(samples)

    def track_for(self, peer: str) -> MediaStreamTrack | None:
        """The track sent to `peer`: by default what `speak` queues for it."""
        voice = self._voices.get(peer)
        if voice is None:
            voice = self._voices[peer] = PushSource()
        return voice

    def close(self) -> None:
        """The agent leaves: flush and release."""
        for voice in self._voices.values():
            voice.stop()

    # AudioSink, so the mesh hands frames straight to `hear`.
    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        self.hear(peer, frame)


class EchoAgent(Agent):
    """Sends every participant its own audio back."""

    name = "echo"

    def hear(self, peer: str, frame: av.AudioFrame) -> None:
        self.speak(frame, peer)


class ToneAgent(Agent):
    """Sends a tone to everyone; hears nothing."""

    name = "tone"
    media = MediaConfig(speaker=False)

    def __init__(self, freq_hz: float = 1000.0) -> None:
        super().__init__()
        self._shared = SharedSource(ToneSource(freq_hz))

    def track_for(self, peer: str) -> MediaStreamTrack | None:
        return self._shared(peer)

    def close(self) -> None:
        self._shared.stop()
        super().close()


class PlayerAgent(ToneAgent):
    """Plays a WAV file (looped) to everyone."""

    name = "play"

    def __init__(self, path: str | Path, loop: bool = True) -> None:
        Agent.__init__(self)
        self._shared = SharedSource(WavSource(path, loop=loop))


class RecorderAgent(Agent):
    """Records every participant to its own WAV file (and a mix); says nothing."""

    name = "record"
    media = MediaConfig(mic=False)

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        self.recorder = WavRecorder(directory, per_peer=True, mix=True)

    def hear(self, peer: str, frame: av.AudioFrame) -> None:
        self.recorder.on_frame(self.name_of(peer), frame)

    def track_for(self, peer: str) -> MediaStreamTrack | None:
        return None

    def close(self) -> None:
        self.recorder.close()
        super().close()
