"""Decoding an announcement's frames (docs/protocol.md §14) to the one internal format,
48 kHz mono s16: Opus (48 kHz mono, 20 ms) or G.711 mu-law (8 kHz, 160 bytes)."""

from __future__ import annotations

import av
import numpy as np

from fleet.media.errors import MediaError
from fleet.media.frames import FRAME_SAMPLES, SAMPLE_RATE, samples_of

G711_RATE = 8_000


class ClipDecoder:
    """One stream's frames → 48 kHz mono int16, one 20 ms frame each (a frame that will not
    decode plays as silence: the clip goes on)."""

    def __init__(self, codec: str) -> None:
        if codec == "opus":
            context = av.CodecContext.create("libopus", "r")
            context.sample_rate = SAMPLE_RATE
            self._resampler: av.AudioResampler | None = None
        elif codec == "pcmu":
            context = av.CodecContext.create("pcm_mulaw", "r")
            context.sample_rate = G711_RATE
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        else:
            raise MediaError(f"no decoder for announcement codec {codec!r}")
        context.format = "s16"
        context.layout = "mono"
        self._context = context
        self._pending = np.zeros(0, dtype=np.int16)

    def decode(self, payload: bytes) -> np.ndarray:
        try:
            frames = self._context.decode(av.Packet(payload))
        except av.FFmpegError:
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        pieces = []
        for frame in frames:
            if self._resampler is not None:
                pieces += [samples_of(f).copy() for f in self._resampler.resample(frame)]
            else:
                pieces.append(_mono(frame))
        data = np.concatenate([self._pending, *pieces]) if pieces else self._pending
        # The resampler holds a few samples back: each call hands out whole 20 ms frames.
        if data.size < FRAME_SAMPLES:
            self._pending = data
            return np.zeros(0, dtype=np.int16)
        self._pending = data[FRAME_SAMPLES:]
        return data[:FRAME_SAMPLES]


def _mono(frame: av.AudioFrame) -> np.ndarray:
    data = samples_of(frame)
    channels = len(frame.layout.channels)
    if channels == 1:
        return data.copy()
    mono: np.ndarray = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return mono
