"""Speech audio: sample-rate conversion between the mesh's 48 kHz and what the speech
stages use, sound files to samples and back, and the error a speech stage raises."""

from __future__ import annotations

import io

import av
import numpy as np

from fleet.errors import FleetError
from fleet.media.sources import decode_mono

STT_RATE = 16_000


class VoiceError(FleetError):
    """A voice stage failed (a backend down, slow or answering nonsense)."""


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono int16 from one rate to another (libswresample, one shot)."""
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(np.int16, copy=False)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate_in
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def decode_audio(data: bytes, what: str) -> np.ndarray:
    """Sound file bytes (WAV, MP3, ...) → 48 kHz mono int16."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            samples = decode_mono(container)
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise VoiceError(f"{what}: not audio: {exc}") from exc
    if samples.size == 0:
        raise VoiceError(f"{what}: no audio samples")
    return samples


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()
