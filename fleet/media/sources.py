"""Audio sources: aiortc tracks giving 20 ms frames of 48 kHz mono s16, paced in real time.

A source behaves like a microphone: frame k (samples k*960 .. k*960+959) is handed out
when its last sample has been "captured", so sample n exists from `mouth_time(n)` on.
That clock is what the latency bench measures against.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from av.container import InputContainer

from fleet.media.analysis import find_markers
from fleet.media.errors import MediaError
from fleet.media.frames import (
    FRAME_S,
    FRAME_SAMPLES,
    FULL_SCALE,
    SAMPLE_RATE,
    make_frame,
    next_audio_frame,
)

# A latency marker: the tone stops for MARKER_GAP_S, a loud burst of MARKER_BURST_S plays,
# then silence again for MARKER_TAIL_S. The silence before it makes the onset unmistakable
# after Opus or G.711, and find_markers() locates it to the sample.
MARKER_GAP_S = 0.030
MARKER_BURST_S = 0.005
MARKER_TAIL_S = 0.015
MARKER_AMPLITUDE = 0.9
MAX_LOOP_S = 5  # a source repeating less often is not replayed (fleet.media.encoding)


class PacedSource(MediaStreamTrack):
    """Base of every source: subclasses render samples, this class paces and stamps them."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._t0: float | None = None  # monotonic time of sample 0
        self._index = 0  # next sample to hand out

    def render(self, start: int, count: int) -> np.ndarray | None:
        """Samples start..start+count-1 as int16, or None when the source has ended."""
        raise NotImplementedError

    def mouth_time(self, sample: int) -> float | None:
        """When sample `sample` was "spoken" (time.monotonic()), once the source has started."""
        return None if self._t0 is None else self._t0 + sample / SAMPLE_RATE

    def repeats(self) -> SourceLoop | None:
        """How the audio repeats, when it does: a sender may then encode one loop once
        and replay its packets (fleet.media.encoding) instead of encoding every frame."""
        return None

    async def recv(self) -> av.AudioFrame:
        start = await self.next_frame()
        samples = self.render(start, FRAME_SAMPLES) if self.readyState == "live" else None
        if samples is None:
            self.stop()
            raise MediaStreamError
        return make_frame(samples, start)

    async def next_frame(self) -> int:
        """Wait until the next frame has been "captured"; its first sample's index. This
        is the microphone's clock alone: `recv` renders the frame, a sender replaying a
        loop's packets (`repeats()`) does not need to."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            # The first frame is due at once, as if its 20 ms had just been captured.
            self._t0 = time.monotonic() - FRAME_S
        due = self._t0 + (self._index + FRAME_SAMPLES) / SAMPLE_RATE
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.readyState != "live":
            raise MediaStreamError
        start = self._index
        self._index += FRAME_SAMPLES
        return start


@dataclass(frozen=True)
class SourceLoop:
    """A source whose frame k + period equals frame k for every k >= period: what it
    sends is told apart by `key`, the same for every source that sounds the same."""

    key: tuple[object, ...]
    period: int  # frames


class SilenceSource(PacedSource):
    def render(self, start: int, count: int) -> np.ndarray:
        return np.zeros(count, dtype=np.int16)


class ToneSource(PacedSource):
    """A sine at `freq_hz`; with `marker_every_s`, a latency marker at every multiple of it."""

    def __init__(
        self, freq_hz: float, amplitude: float = 0.3, marker_every_s: float | None = None
    ) -> None:
        super().__init__()
        if not 0 < freq_hz < SAMPLE_RATE / 2:
            raise MediaError(f"tone frequency {freq_hz} Hz is outside 0..{SAMPLE_RATE // 2} Hz")
        if not 0 <= amplitude <= 1:
            raise MediaError(f"tone amplitude {amplitude} is outside 0..1")
        self.freq_hz = freq_hz
        self.amplitude = amplitude
        self._table = self._sine(0, SAMPLE_RATE, amplitude) if float(freq_hz).is_integer() else None
        self.marker_every = 0
        self.marker_offset = 0  # where find_markers() sees the onset, after a marker's start
        if marker_every_s is not None:
            span = MARKER_GAP_S + MARKER_BURST_S + MARKER_TAIL_S
            if marker_every_s <= 2 * span:
                raise MediaError(f"markers need to be more than {2 * span:.3f}s apart")
            self.marker_every = round(marker_every_s * SAMPLE_RATE)
            self.marker_offset = self._find_own_onset()

    def repeats(self) -> SourceLoop | None:
        if self._table is None:
            return None
        # A whole-Hz tone repeats every second; markers at every multiple of marker_every
        # (from the first on) repeat with it, so from one period on the audio is periodic.
        period = math.lcm(SAMPLE_RATE, self.marker_every or SAMPLE_RATE)
        if period % FRAME_SAMPLES or period > MAX_LOOP_S * SAMPLE_RATE:
            return None  # no frame grid, or cheaper to encode live than to hold
        key = ("tone", self.freq_hz, self.amplitude, self.marker_every)
        return SourceLoop(key, period // FRAME_SAMPLES)

    def render(self, start: int, count: int) -> np.ndarray:
        if self._table is not None:  # whole-Hz tone: one second holds whole cycles
            at = start % SAMPLE_RATE
            if at + count <= SAMPLE_RATE:
                out = self._table[at : at + count].copy()
            else:
                out = np.take(self._table, np.arange(at, at + count), mode="wrap")
        else:
            out = self._sine(start, count, self.amplitude)
        if self.marker_every and self._near_marker(start, start + count):
            self._stamp_markers(start, out)
        return out

    def _sine(self, start: int, count: int, amplitude: float) -> np.ndarray:
        n = np.arange(start, start + count, dtype=np.float64)
        x = amplitude * np.sin(2 * np.pi * self.freq_hz * n / SAMPLE_RATE)
        return (x * (FULL_SCALE - 1)).astype(np.int16)

    def marker_samples(self, upto: int) -> list[int]:
        """Sample indices where markers sent before sample `upto` are detected."""
        if not self.marker_every:
            return []
        starts = range(self.marker_every, upto, self.marker_every)
        return [s + self.marker_offset for s in starts if s + self.marker_offset < upto]

    def sent_markers(self) -> list[float]:
        """Mouth times (time.monotonic()) of the markers handed out so far."""
        times = (self.mouth_time(s) for s in self.marker_samples(self._index))
        return [t for t in times if t is not None]

    def _near_marker(self, start: int, end: int) -> bool:
        """Whether [start, end) overlaps a marker's silence or burst (markers at k*every,
        k >= 1): a multiple of `every` lies strictly between start-burst-tail and end+gap."""
        lo = start - round((MARKER_BURST_S + MARKER_TAIL_S) * SAMPLE_RATE)
        hi = end + round(MARKER_GAP_S * SAMPLE_RATE)
        k = (hi - 1) // self.marker_every
        return k >= 1 and k > lo // self.marker_every

    def _stamp_markers(self, start: int, out: np.ndarray) -> None:
        gap = round(MARKER_GAP_S * SAMPLE_RATE)
        burst = round(MARKER_BURST_S * SAMPLE_RATE)
        tail = round(MARKER_TAIL_S * SAMPLE_RATE)
        n = np.arange(start, start + out.size, dtype=np.int64)
        # Position relative to the nearest marker start.
        k = np.rint(n / self.marker_every)
        rel = n - (k * self.marker_every).astype(np.int64)
        active = k >= 1
        silent = active & (((rel >= -gap) & (rel < 0)) | ((rel >= burst) & (rel < burst + tail)))
        loud = active & (rel >= 0) & (rel < burst)
        out[silent] = 0
        wave_ = np.sin(2 * np.pi * self.freq_hz * rel[loud] / SAMPLE_RATE)
        out[loud] = (MARKER_AMPLITUDE * (FULL_SCALE - 1) * wave_).astype(np.int16)

    def _find_own_onset(self) -> int:
        start = self.marker_every - FRAME_SAMPLES * 4
        found = find_markers(self.render(start, FRAME_SAMPLES * 8))
        if len(found) != 1:
            raise MediaError(f"a {self.freq_hz} Hz tone cannot carry a detectable marker")
        return start + found[0] - self.marker_every


class WavSource(PacedSource):
    """A sound file (WAV or anything FFmpeg reads), brought to 48 kHz mono; loops or ends."""

    def __init__(self, path: str | Path, loop: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        self.samples = load_audio(self.path)

    def render(self, start: int, count: int) -> np.ndarray | None:
        total = self.samples.size
        if self.loop:
            idx = np.arange(start, start + count) % total
            return self.samples[idx]
        if start >= total:
            return None
        chunk = self.samples[start : start + count]
        return np.pad(chunk, (0, count - chunk.size))


def decode_mono(container: InputContainer) -> np.ndarray:
    """Every audio frame of an open PyAV container as 48 kHz mono int16 (empty if none)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks = [
        out.to_ndarray().reshape(-1)
        for frame in container.decode(audio=0)
        for out in resampler.resample(frame)
    ]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)


def load_audio(path: Path) -> np.ndarray:
    """A whole sound file as 48 kHz mono int16; MediaError when it cannot be read."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            samples = decode_mono(container)
    except (OSError, av.FFmpegError) as exc:
        raise MediaError(f"cannot read audio file {path}: {exc}") from exc
    if samples.size == 0:
        raise MediaError(f"{path}: no audio samples")
    return samples


class PushSource(PacedSource):
    """Plays what is pushed into it (an agent's output), silence when nothing is queued.

    At most `max_buffer_s` is held: a producer running ahead loses its oldest audio, not
    memory.
    """

    def __init__(self, max_buffer_s: float = 1.0) -> None:
        super().__init__()
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._queued = 0
        self._max = round(max_buffer_s * SAMPLE_RATE)

    @property
    def queued_samples(self) -> int:
        return self._queued

    def push(self, samples: np.ndarray | av.AudioFrame) -> None:
        """48 kHz mono s16 samples (an ndarray, or a frame as sinks receive them)."""
        data = samples.to_ndarray().reshape(-1) if isinstance(samples, av.AudioFrame) else samples
        data = np.asarray(data, dtype=np.int16).reshape(-1)
        self._chunks.append(data)
        self._queued += data.size
        while self._queued - self._chunks[0].size >= self._max:
            self._queued -= self._chunks.popleft().size
        if self._queued > self._max:
            drop = self._queued - self._max
            self._chunks[0] = self._chunks[0][drop:]
            self._queued -= drop

    def clear(self) -> int:
        """Drop everything queued (an agent interrupted); returns the samples dropped."""
        dropped = self._queued
        self._chunks.clear()
        self._queued = 0
        return dropped

    def render(self, start: int, count: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int16)
        filled = 0
        while filled < count and self._chunks:
            head = self._chunks[0]
            take = min(count - filled, head.size)
            out[filled : filled + take] = head[:take]
            filled += take
            if take == head.size:
                self._chunks.popleft()
            else:
                self._chunks[0] = head[take:]
            self._queued -= take
        return out


class SharedSource:
    """One source sent to every peer: `source_for` for MediaMesh, through aiortc's MediaRelay
    (the source is read once per frame, whatever the number of peers).

    Each call gives a SharedTrack; a mesh recognises the tracks of one SharedSource and
    reads (and encodes) one of them for all its peers (fleet.media.encoding). Stop it when
    the meeting ends: the relay keeps reading a live source.
    """

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self._relay = MediaRelay()

    def __call__(self, peer: str) -> SharedTrack:
        return SharedTrack(self)

    def subscribe(self) -> MediaStreamTrack:
        """A relay subscription: the source's frames, read once for every subscriber."""
        return self._relay.subscribe(self.track)

    def stop(self) -> None:
        self.track.stop()


class SharedTrack(MediaStreamTrack):
    """What SharedSource gives each peer: the source's frames through the relay (which it
    joins at its first read, so one never read costs nothing), and `shared`, by which a
    mesh knows the tracks that carry the same audio."""

    kind = "audio"

    def __init__(self, shared: SharedSource) -> None:
        super().__init__()
        self.shared = shared
        self._proxy: MediaStreamTrack | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._proxy is None:
            self._proxy = self.shared.subscribe()
        try:
            return await next_audio_frame(self._proxy)
        except MediaStreamError:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        if self._proxy is not None:
            self._proxy.stop()
