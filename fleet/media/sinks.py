"""Audio sinks: where a participant's decoded remote audio goes, per peer.

The mesh hands every sink 48 kHz mono s16 frames (fleet.media.frames), after the speaker
volume, from the event loop: on_frame must not block.
"""

from __future__ import annotations

import collections
import re
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import av
import numpy as np

from fleet.media.analysis import find_markers
from fleet.media.errors import MediaError
from fleet.media.frames import SAMPLE_RATE, rms, samples_of


@runtime_checkable
class AudioSink(Protocol):
    def on_frame(self, peer: str, frame: av.AudioFrame) -> None: ...
    def close(self) -> None: ...


class NullSink:
    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        pass

    def close(self) -> None:
        pass


class FanoutSink:
    def __init__(self, *sinks: AudioSink) -> None:
        self.sinks = sinks

    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        for sink in self.sinks:
            sink.on_frame(peer, frame)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


AUDIBLE = 0.001  # RMS of full scale (-60 dBFS): more than a decoder's idle output


@dataclass
class PeerLevel:
    frames: int = 0
    samples: int = 0
    first_frame_at: float | None = None  # time.monotonic() of the first frame
    last_frame_at: float | None = None
    # time.monotonic() of the first frame above AUDIBLE (decoders start with silence)
    audible_at: float | None = None
    window: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=10))

    @property
    def level(self) -> float:
        """RMS (0..1 of full scale) over the last `window` frames (200 ms)."""
        if not self.window:
            return 0.0
        return float(np.sqrt(np.mean(np.square(self.window))))


class LevelMeter:
    """Per-peer level, frame and sample counts, and when each peer was first heard."""

    def __init__(self) -> None:
        self.peers: dict[str, PeerLevel] = {}

    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        now = time.monotonic()
        entry = self.peers.setdefault(peer, PeerLevel())
        if entry.first_frame_at is None:
            entry.first_frame_at = now
        entry.last_frame_at = now
        entry.frames += 1
        entry.samples += frame.samples
        level = rms(samples_of(frame))
        entry.window.append(level)
        if entry.audible_at is None and level >= AUDIBLE:
            entry.audible_at = now

    def level(self, peer: str) -> float:
        entry = self.peers.get(peer)
        return entry.level if entry else 0.0

    def close(self) -> None:
        pass


class CaptureSink:
    """Keeps the last `keep_s` seconds of every peer in memory, with each frame's arrival
    time, for analysis (fleet.media.analysis) and latency measurement."""

    def __init__(self, keep_s: float = 10.0) -> None:
        self.keep = round(keep_s * SAMPLE_RATE)
        self._chunks: dict[str, collections.deque[tuple[int, float, np.ndarray]]] = {}
        self._received: dict[str, int] = {}  # samples received per peer, ever

    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        data = samples_of(frame).copy()
        chunks = self._chunks.setdefault(peer, collections.deque())
        start = self._received.get(peer, 0)
        chunks.append((start, time.monotonic(), data))
        self._received[peer] = start + data.size
        while chunks and start + data.size - (chunks[0][0] + chunks[0][2].size) > self.keep:
            chunks.popleft()

    def peers(self) -> list[str]:
        return sorted(self._chunks)

    def received_samples(self, peer: str) -> int:
        return self._received.get(peer, 0)

    def samples(self, peer: str, last_s: float | None = None) -> np.ndarray:
        chunks = self._chunks.get(peer)
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        data = np.concatenate([c[2] for c in chunks])
        if last_s is not None:
            data = data[-round(last_s * SAMPLE_RATE) :]
        return data

    def marker_arrivals(self, peer: str) -> list[float]:
        """time.monotonic() at which each marker (ToneSource marker_every_s) in the kept
        audio reached this sink: the frame's arrival plus the marker's offset in the frame,
        the moment a speaker fed at arrival would play it."""
        chunks = self._chunks.get(peer)
        if not chunks:
            return []
        base = chunks[0][0]
        data = np.concatenate([c[2] for c in chunks])
        starts = np.array([c[0] - base for c in chunks])
        out = []
        for index in find_markers(data):
            k = int(np.searchsorted(starts, index, side="right")) - 1
            out.append(chunks[k][1] + (index - starts[k]) / SAMPLE_RATE)
        return out

    def close(self) -> None:
        pass


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class WavRecorder:
    """One 48 kHz mono 16-bit WAV per peer in `directory` ({peer}.wav, written as audio
    arrives), and with `mix` a _mix.wav of everyone, peers placed by when their audio
    arrived (kept in memory, written on close)."""

    def __init__(self, directory: str | Path, per_peer: bool = True, mix: bool = False) -> None:
        if not per_peer and not mix:
            raise MediaError("a WavRecorder needs per_peer or mix")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaError(f"cannot create recording directory {directory}: {exc}") from exc
        self.per_peer = per_peer
        self.mix = mix
        self._files: dict[str, wave.Wave_write] = {}
        self.paths: dict[str, Path] = {}  # per peer
        self.mix_path = self.directory / "_mix.wav" if mix else None
        self._start = time.monotonic()
        self._mix = np.zeros(0, dtype=np.int32)
        self._mix_pos: dict[str, int] = {}  # where each peer's next sample goes in the mix
        self.closed = False

    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        if self.closed:
            return
        data = samples_of(frame)
        if self.per_peer:
            self._file(peer).writeframes(data.tobytes())
        if self.mix:
            pos = self._mix_pos.get(peer)
            if pos is None:  # a peer's first frame lands where the recording clock is now
                pos = max(0, round((time.monotonic() - self._start) * SAMPLE_RATE) - data.size)
            end = pos + data.size
            if end > self._mix.size:
                grown = np.zeros(max(end, self._mix.size * 2), dtype=np.int32)
                grown[: self._mix.size] = self._mix
                self._mix = grown
            self._mix[pos:end] += data
            self._mix_pos[peer] = end

    def _file(self, peer: str) -> wave.Wave_write:
        handle = self._files.get(peer)
        if handle is None:
            path = self.directory / f"{_UNSAFE.sub('_', peer) or 'peer'}.wav"
            handle = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(SAMPLE_RATE)
            self._files[peer] = handle
            self.paths[peer] = path
        return handle

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for handle in self._files.values():
            handle.close()
        if self.mix_path is not None:
            length = max(self._mix_pos.values(), default=0)
            with wave.open(str(self.mix_path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SAMPLE_RATE)
                out.writeframes(np.clip(self._mix[:length], -32768, 32767).astype("<i2").tobytes())
