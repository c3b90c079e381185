"""Agents: Python participants that join meetings like devices do.

An agent is a small plugin: the runner (`fleet.agents.runner`) joins a room
through the meeting server and wires the agent into the media mesh. The agent
hears every remote participant's decoded 20 ms frames (`hear`) and says audio
to one peer or to everyone (`speak`), or hands the mesh whole tracks
(`track_for`). An AI bot subclasses `Agent`, turns what it hears into what it
says, and is run with `fleet agent join ROOM --plugin module:Class`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc import MediaStreamTrack

from fleet.media.config import MediaConfig
from fleet.media.sinks import WavRecorder
from fleet.media.sources import PushSource, SharedSource, ToneSource, WavSource
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics

if TYPE_CHECKING:
    from fleet.meetings.participant import LocalParticipant

log = logging.getLogger("fleet.agents")


@dataclass(frozen=True)
class AgentContext:
    """What a started agent may use: its own broker login (an `agent` user may call some
    API ops: fleet/auth/acl.py) and its participant (room, session, peers)."""

    url: BrokerUrl
    topics: Topics
    pid: str
    participant: LocalParticipant


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
        # A peer's voice ends with its connection: forget those, so nothing queues for them.
        self._voices = {p: v for p, v in self._voices.items() if v.readyState == "live"}
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

    async def start(self, context: AgentContext) -> None:
        """Joined: open what the agent needs beyond the media (an API client, ...)."""

    async def stop(self) -> None:
        """About to leave: close what `start` opened."""

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
        for path in [*self.recorder.paths.values(), self.recorder.mix_path]:
            if path is not None and path.exists():
                log.info("wrote %s (%.1f s)", path, max(0, path.stat().st_size - 44) / 96_000)
        super().close()
