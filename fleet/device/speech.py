"""A simulated device that talks: its microphone plays what it is told to say (espeak-ng),
silence otherwise, and it keeps what it hears as AudioMeetingDriver does.

The assistant's tests, bench and demo speak commands through it, as a person would into a
board's microphone.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass

import av
import numpy as np

from fleet.agents.voice.audio import STT_RATE, resample
from fleet.agents.voice.stt import SpeechToText
from fleet.agents.voice.tts import TextToSpeech
from fleet.device.audio import AudioMeetingDriver, AudioProfile
from fleet.device.sim import SimulatedDevice
from fleet.media.frames import SAMPLE_RATE, rms, samples_of
from fleet.media.sinks import FanoutSink
from fleet.media.sources import PushSource, SharedSource
from fleet.meetings.participant import LocalParticipant
from fleet.protocol.messages import MIXER_PARTICIPANT, MediaPath

LOUD = 0.01  # RMS (of full scale) above which a 20 ms frame counts as sound, not silence


def words(text: str) -> str:
    """Text as a recognizer writes it: lowercase words, no punctuation."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def voice_peer(participant: LocalParticipant, pid: str) -> str | None:
    """The participant id of the peer whose stream carries `pid`'s voice to `participant`:
    `pid`'s own in a mesh, the mixer's in a mixed session (the mix of all the others)."""
    peers = participant.peers
    if participant.media is MediaPath.MIXED:
        return MIXER_PARTICIPANT if MIXER_PARTICIPANT in peers else None
    return next((p for p, info in peers.items() if info.pid == pid), None)


@dataclass(frozen=True)
class Heard:
    """What a device heard a peer say, recognized back, and when its sound started."""

    text: str
    start: float  # time.monotonic() the first loud frame arrived
    end: float


@dataclass(frozen=True)
class Spoken:
    """When a phrase left the device's mouth (time.monotonic() of its first and last sample)."""

    text: str
    start: float
    end: float


class Loudness:
    """An AudioSink keeping, per peer, when each frame arrived and how loud it was."""

    def __init__(self, keep_s: float = 60.0) -> None:
        self._frames: dict[str, collections.deque[tuple[float, float]]] = {}
        self._keep = round(keep_s / 0.02)

    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        frames = self._frames.setdefault(peer, collections.deque(maxlen=self._keep))
        frames.append((time.monotonic(), rms(samples_of(frame))))

    def loud(self, peer: str, since: float, until: float | None = None) -> list[float]:
        """Arrival times of the loud frames from `peer` in [since, until)."""
        end = float("inf") if until is None else until
        return [t for t, level in self._frames.get(peer, ()) if since <= t < end and level > LOUD]

    def close(self) -> None:
        pass


class SpeakingDriver(AudioMeetingDriver):
    def __init__(self, tts: TextToSpeech, profile: AudioProfile | None = None) -> None:
        super().__init__(profile or AudioProfile(tone_hz=None, keep_s=15.0))
        self.tts = tts
        self.mouth = PushSource(max_buffer_s=30.0)
        self.loudness = Loudness()

    def attach(self, device: SimulatedDevice) -> None:
        super().attach(device)
        self.mesh.sink = FanoutSink(self.mesh.sink, self.loudness)

    def _start_source(self) -> None:
        if self._shared is None and self.profile.media.mic:
            self._shared = SharedSource(self.mouth)
            self.source = self.mouth

    def _stop_source(self) -> None:
        # The mouth outlives a leave: the same device may join and speak again.
        if self._shared is not None:
            self._shared = None
            self.source = None

    async def say(self, text: str) -> Spoken:
        """Queue `text` on the microphone; returns when it will have been spoken."""
        samples = await self.tts.synthesize(text)
        return self.play(text, samples)

    def play(self, text: str, samples: np.ndarray) -> Spoken:
        start_sample = self.mouth._index + self.mouth.queued_samples
        self.mouth.push(samples)
        start = self.mouth.mouth_time(start_sample)
        if start is None:
            raise RuntimeError("the microphone is not being read: join a meeting first")
        return Spoken(text, start, start + samples.size / SAMPLE_RATE)

    def peer_of(self, pid: str) -> str | None:
        return voice_peer(self.participant, pid) if self.participant is not None else None

    async def hear_answer(
        self,
        pid: str,
        since: float,
        stt: SpeechToText,
        phrases: list[str],
        timeout: float = 20.0,
        quiet_s: float = 1.0,
    ) -> Heard:
        """Wait for `pid` to say something after `since` (and fall quiet for `quiet_s`);
        recognize it among `phrases`. TimeoutError if nothing is heard in time."""
        async with asyncio.timeout(timeout):
            while True:
                peer = self.peer_of(pid)
                loud = self.loudness.loud(peer, since) if peer else []
                if loud and time.monotonic() - loud[-1] > quiet_s:
                    break
                await asyncio.sleep(0.05)
        assert peer is not None
        samples = self.heard.samples(peer, last_s=time.monotonic() - loud[0] + 0.3)
        text = await stt.transcribe(resample(samples, SAMPLE_RATE, STT_RATE), phrases)
        return Heard(text.text, loud[0], loud[-1])
