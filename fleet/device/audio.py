"""A simulated device that really meets: signalling through the meeting server, audio
through aiortc.

It sends a tone (each device its own frequency, so a listener can tell who it
hears) or a WAV file, and keeps what it hears from every peer: a level meter
and the last seconds of audio for analysis. Peer stats go into its telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from aiortc import MediaStreamTrack

from fleet.device.sim import MeetingDriver
from fleet.device.tones import (
    RING_AMPLITUDE,
    RING_HZ,
    RING_OFF_S,
    RING_ON_S,
    RING_PEER,
    TONE_AMPLITUDE,
    TONE_BASE_HZ,
    tone_amplitude,
    tone_for,
)
from fleet.errors import FleetError
from fleet.media.analysis import hears, tone_shares
from fleet.media.config import MediaConfig
from fleet.media.frames import FRAME_S, FRAME_SAMPLES, FULL_SCALE, SAMPLE_RATE, make_frame
from fleet.media.mesh import MediaMesh
from fleet.media.sinks import AudioSink, CaptureSink, FanoutSink, LevelMeter, WavRecorder
from fleet.media.sources import SharedSource, ToneSource, WavSource
from fleet.meetings.participant import LocalParticipant
from fleet.mqtt import publish_nowait
from fleet.protocol.messages import Capabilities, MeetingIntent, MeetingState, PeerAudioStats

if TYPE_CHECKING:
    from fleet.device.sim import SimulatedDevice

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 2.0


@dataclass
class DeviceHearing:
    """What one device hears now: the devices whose tone is in what it receives (by FFT
    of the last second), and the level of each stream it receives, by the pid of its
    sender (the mixer's name for a mixed session's one stream)."""

    heard: set[str]
    levels: dict[str, float]
    audible_at: float | None  # time.monotonic() when some stream first carried sound


@dataclass(frozen=True)
class AudioProfile:
    media: MediaConfig = field(default_factory=MediaConfig)
    tone_hz: float | None = TONE_BASE_HZ  # what the microphone "hears"; None: silence
    # Of full scale. A mixer sums the members' tones: keep (members - 1) x this below 1
    # (tone_amplitude(members)).
    tone_amplitude: float = TONE_AMPLITUDE
    wav: Path | None = None  # played instead of the tone
    record_dir: Path | None = None  # one WAV per peer heard
    keep_s: float = 5.0  # seconds of each peer's audio kept for analysis; 0: levels only
    marker_every_s: float | None = None  # a latency marker in the tone (bench/meeting.py)


class AudioMeetingDriver(MeetingDriver):
    waits_for_server = True

    def __init__(self, profile: AudioProfile | None = None) -> None:
        self.profile = profile or AudioProfile()
        self.levels = LevelMeter()
        self.heard = CaptureSink(keep_s=self.profile.keep_s)
        self._shared: SharedSource | None = None
        self.source: MediaStreamTrack | None = None  # what the microphone sends now
        self._stats: list[PeerAudioStats] = []
        self._stats_task: asyncio.Task[None] | None = None
        self.device: SimulatedDevice | None = None
        self.participant: LocalParticipant | None = None
        self._ringer: asyncio.Task[None] | None = None
        self._output: FanoutSink | None = None
        # What ducks the meeting now (an announcement, the ring): it comes back up only
        # when neither plays, as on the firmware.
        self._ducked_by: set[str] = set()

    def attach(self, device: SimulatedDevice) -> None:
        self.device = device
        sinks: list[AudioSink] = [self.levels]
        if self.profile.keep_s > 0:
            sinks.append(self.heard)
        if self.profile.record_dir is not None:
            sinks.append(WavRecorder(self.profile.record_dir / device.id))
        self._output = FanoutSink(*sinks)
        mesh = MediaMesh(self.profile.media, self._source_for, self._output)
        self.participant = LocalParticipant(
            device.id,
            device.topics,
            self._publish,
            mesh,
            self.profile.media.capabilities(),
            on_change=self._changed,
            on_lost=lambda: device._spawn(device._rejoin()),
        )

    @property
    def mesh(self) -> MediaMesh:
        assert self.participant is not None
        assert self.participant.mesh is not None
        return self.participant.mesh

    # --- MeetingDriver ------------------------------------------------------------------------
    async def join(self, intent: MeetingIntent) -> MeetingState:
        assert self.participant is not None
        self._start_source()
        try:
            await self.participant.join(intent.room)
        except BaseException:
            self._stop_source()
            raise
        if self._stats_task is None:
            self._stats_task = asyncio.create_task(self._refresh_stats())
        state = self.participant.meeting_state()
        assert state is not None
        return state

    async def leave(self) -> None:
        assert self.participant is not None
        await self.participant.leave()
        await self._stopped()

    async def forget(self) -> None:
        if self.participant is not None:
            await self.participant.forget()
        await self._stopped()

    def on_down(self, payload: bytes) -> None:
        if self.participant is not None:
            self.participant.handle(payload)

    def set_audio(self, mic: bool, volume: int | None) -> None:
        media = self.profile.media
        if media.mic:
            self.mesh.set_mic(mic)
        if media.speaker:  # a board with no speaker has no volume to set
            self.mesh.set_volume(100 if volume is None else volume)

    def audio_stats(self) -> list[PeerAudioStats]:
        return list(self._stats)

    def speaker(self) -> AudioSink:
        """Announcements play into the same sinks as the meeting (levels, `heard`, the
        recorder), as the stream `announce`."""
        return self.mesh.sink

    def duck(self, on: bool) -> None:
        self._duck_for("announce", on)

    def _duck_for(self, cause: str, on: bool) -> None:
        """The meeting ducked while an announcement or the ring plays (docs/protocol.md
        §14): down when the first starts, back up when the last ends."""
        was = bool(self._ducked_by)
        if on:
            self._ducked_by.add(cause)
        else:
            self._ducked_by.discard(cause)
        if self.participant is None or was == bool(self._ducked_by):
            return
        if self._ducked_by:
            self.mesh.ducking.duck()
        else:
            self.mesh.ducking.release()

    def ring(self, seconds: int) -> None:
        if self._ringer is not None:
            self._ringer.cancel()
            self._ringer = None
        if seconds > 0:
            self._ringer = asyncio.get_running_loop().create_task(self._play_ring(seconds))
        else:
            self._duck_for("ring", False)

    @property
    def ringing(self) -> bool:
        return self._ringer is not None and not self._ringer.done()

    async def _play_ring(self, seconds: float) -> None:
        """The ring tone into what the device hears (its speaker's sinks, as peer
        RING_PEER), paced in real time: generated here, nothing comes over the network.
        The meeting is ducked while it rings, its silent gaps too (as on the firmware)."""
        if self._output is None:
            return
        self._duck_for("ring", True)
        try:
            t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE
            start = time.monotonic()
            n = 0
            while n * FRAME_S < seconds:
                phase = (n * FRAME_S) % (RING_ON_S + RING_OFF_S)
                if phase < RING_ON_S:
                    x = np.sum([np.sin(2 * np.pi * f * (t + n * FRAME_S)) for f in RING_HZ], axis=0)
                    samples = (x * RING_AMPLITUDE * (FULL_SCALE - 1)).astype(np.int16)
                else:
                    samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
                self._output.on_frame(RING_PEER, make_frame(samples, n * FRAME_SAMPLES))
                n += 1
                await asyncio.sleep(max(0.0, start + n * FRAME_S - time.monotonic()))
        finally:
            # A ring that replaced this one ducks on its own: the meeting stays down.
            if self._ringer is None or self._ringer is asyncio.current_task():
                self._duck_for("ring", False)

    def capabilities(self) -> Capabilities:
        return self.profile.media.capabilities()

    async def close(self) -> None:
        self.ring(0)
        await self._stopped()
        if self.participant is not None:
            await self.participant.close()

    # --- what the device heard ----------------------------------------------------------------
    def peer_pids(self) -> dict[str, str]:
        """Participant id -> pid of every current peer."""
        if self.participant is None:
            return {}
        return {p: info.pid for p, info in self.participant.peers.items()}

    def hears_tone(self, peer: str, freq_hz: float, last_s: float = 1.0) -> bool:
        samples = self.heard.samples(peer, last_s)
        return samples.size > 0 and hears(samples, freq_hz)

    def hearing(self, tones: Mapping[str, float], min_share: float) -> DeviceHearing:
        """Which of `tones` (device -> Hz) hold at least `min_share` of the power of some
        stream received over the last second, and every stream's level."""
        names = self.peer_pids()
        heard: set[str] = set()
        levels: dict[str, float] = {}
        devices, freqs = list(tones), list(tones.values())
        for participant, entry in self.levels.peers.items():
            levels[names.get(participant, participant)] = entry.level
            samples = self.heard.samples(participant, 1.0)
            if samples.size:
                shares = tone_shares(samples, freqs)
                heard |= {d for d, share in zip(devices, shares, strict=True) if share >= min_share}
        firsts = [p.audible_at for p in self.levels.peers.values() if p.audible_at]
        return DeviceHearing(heard, levels, min(firsts) if firsts else None)

    def markers(self) -> tuple[list[float], dict[str, list[float]]]:
        """For the latency bench: when the markers this device sent were spoken, and when
        the markers in each stream it kept reached it (by the stream's sender pid)."""
        source = self.source
        sent = source.sent_markers() if isinstance(source, ToneSource) else []
        names = self.peer_pids()
        arrivals = {names.get(p, p): self.heard.marker_arrivals(p) for p in self.heard.peers()}
        return sent, arrivals

    # --- inside -------------------------------------------------------------------------------
    def _source_for(self, peer: str) -> MediaStreamTrack | None:
        return self._shared(peer) if self._shared is not None else None

    def _start_source(self) -> None:
        if self._shared is not None or not self.profile.media.mic:
            return
        if self.profile.wav is not None:
            track: MediaStreamTrack = WavSource(self.profile.wav)
        elif self.profile.tone_hz is not None:
            track = ToneSource(
                self.profile.tone_hz,
                self.profile.tone_amplitude,
                marker_every_s=self.profile.marker_every_s,
            )
        else:
            return  # silence: send nothing at all
        self._shared = SharedSource(track)
        self.source = track

    def _stop_source(self) -> None:
        if self._shared is not None:
            self._shared.stop()
            self._shared = None
            self.source = None

    async def _stopped(self) -> None:
        self._stop_source()
        self._stats = []
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None

    async def _publish(self, topic: str, payload: bytes) -> None:
        client = self.device._client if self.device is not None else None
        if client is None:
            raise FleetError("not connected to the broker")
        publish_nowait(client, topic, payload, qos=1)

    def _changed(self) -> None:
        if self.device is not None and self.participant is not None:
            self.device.meeting_changed(self.participant.meeting_state())

    async def _refresh_stats(self) -> None:
        while True:
            try:
                self._stats = await self.mesh.stats()
            except Exception as exc:  # stats are best effort; the call goes on
                log.debug("stats failed: %s", exc)
            await asyncio.sleep(STATS_INTERVAL_S)


def audio_drivers(
    ids: Sequence[str], profile: AudioProfile | None = None
) -> Callable[[str], AudioMeetingDriver]:
    """A driver factory for SimFleet: every device its own tone (`tone_for` its index), at
    an amplitude a mix of the whole fleet holds without clipping."""
    base = profile or AudioProfile()
    index = {device_id: n for n, device_id in enumerate(ids)}
    amplitude = min(base.tone_amplitude, tone_amplitude(len(ids)))
    return lambda device_id: AudioMeetingDriver(
        replace(base, tone_hz=tone_for(index.get(device_id, 0)), tone_amplitude=amplitude)
    )
