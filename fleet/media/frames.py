"""The one audio format inside fleet.media: 48 kHz mono signed 16-bit, 20 ms frames.

Sources produce it, and every decoded remote frame is brought to it before a sink sees
it (aiortc decodes Opus to stereo, G.711 to 8 kHz), so sinks and analysis never convert.
"""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc import MediaStreamTrack

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
FULL_SCALE = 32768.0


def make_frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    """An s16 mono 48 kHz frame holding `samples` (int16), stamped with `pts` samples."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


async def next_audio_frame(track: MediaStreamTrack) -> av.AudioFrame:
    """An audio track's next frame (aiortc types `recv` for every kind of media)."""
    frame = await track.recv()
    if not isinstance(frame, av.AudioFrame):
        raise TypeError(f"an audio track gave a {type(frame).__name__}")
    return frame


def samples_of(frame: av.AudioFrame) -> np.ndarray:
    """A packed s16 frame's samples (channels interleaved) as a 1-D int16 array: a view
    of the frame's memory, not a copy (PyAV's to_ndarray costs five times as much)."""
    count = frame.samples * len(frame.layout.channels)
    # memoryview: numpy's stubs for 3.11 take no buffer-protocol object but the built-ins
    return np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=count)


def is_internal(frame: av.AudioFrame) -> bool:
    """Whether `frame` is in the one internal format already (48 kHz mono s16)."""
    return (
        frame.sample_rate == SAMPLE_RATE
        and frame.format.name == "s16"
        and len(frame.layout.channels) == 1
    )


def rms(samples: np.ndarray) -> float:
    """Root mean square as a fraction of full scale (0..1)."""
    if samples.size == 0:
        return 0.0
    x = samples.astype(np.float32)
    return float(np.sqrt(np.dot(x, x) / x.size) / FULL_SCALE)


def scale(samples: np.ndarray, gain: float) -> np.ndarray:
    if gain == 1.0:
        return samples
    clipped: np.ndarray = np.clip(samples.astype(np.float32) * gain, -32768, 32767)
    return clipped.astype(np.int16)


class Normalizer:
    """Brings one remote stream's decoded frames to 48 kHz mono s16.

    Opus (aiortc decodes it to 48 kHz stereo) is folded to mono in numpy as (L+R)/2, which
    gives back the sender's level for a mono-coded stream (ours, fleet.media.encoding;
    browsers'; ESP boards'), decoded as two equal channels. Stock aiortc upmixes mono at
    -3 dB a channel before its stereo encode: such a peer is heard 3 dB low. Anything else
    (G.711 at 8 kHz) goes through libswresample, which keeps filter state across frames,
    hence one per stream.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None

    def __call__(self, frame: av.AudioFrame) -> list[np.ndarray]:
        if frame.sample_rate == SAMPLE_RATE and frame.format.name == "s16":
            data = samples_of(frame)
            channels = len(frame.layout.channels)
            if channels == 1:
                return [data]
            if channels == 2:
                mono = data[0::2].astype(np.int32)
                mono += data[1::2]
                mono >>= 1  # the mean of two int16 fits an int16
                return [mono.astype(np.int16)]
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        return [samples_of(f) for f in self._resampler.resample(frame)]
