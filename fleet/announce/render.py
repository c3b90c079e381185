"""Rendering an announcement once: chime + speech (or a WAV), 48 kHz mono, then encoded
once per codec its targets need (Opus; G.711 mu-law for a device without Opus), as the
20 ms frames that travel on dev/{id}/ann (docs/protocol.md §14).

Decoding and encoding run in a worker thread: a minute of speech costs the event loop
nothing while the controller serves the fleet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fleet.errors import FleetError
from fleet.media.encoding import FrameEncoder
from fleet.media.frames import FRAME_SAMPLES, SAMPLE_RATE, make_frame
from fleet.protocol.messages import ANNOUNCE_FRAME_MS, MAX_ANNOUNCE_MS, AnnounceCodec
from fleet.speech.audio import VoiceError, decode_audio
from fleet.speech.tts import TextToSpeech

# The chime (§14): two tones, 880 Hz then 660 Hz, 120 ms each, 20 ms gaps, 0.3 of full scale.
CHIME_TONES_HZ = (880.0, 660.0)
CHIME_TONE_S = 0.120
CHIME_GAP_S = 0.020
CHIME_AMPLITUDE = 0.3
CHIME_FADE_S = 0.005  # edges ramped, so the tones start and stop without a click
OPUS_KBPS = 32  # speech, as the meeting's own streams


class RenderError(FleetError):
    """The announcement's audio cannot be made (no TTS, a sound that is not audio)."""


def chime() -> np.ndarray:
    """The chime as 48 kHz mono int16."""
    n = round(CHIME_TONE_S * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    fade = round(CHIME_FADE_S * SAMPLE_RATE)
    envelope = np.ones(n)
    envelope[:fade] = np.linspace(0, 1, fade)
    envelope[-fade:] = np.linspace(1, 0, fade)
    gap = np.zeros(round(CHIME_GAP_S * SAMPLE_RATE))
    parts: list[np.ndarray] = []
    for hz in CHIME_TONES_HZ:
        parts += [np.sin(2 * np.pi * hz * t) * envelope * CHIME_AMPLITUDE * 32767, gap]
    return np.concatenate(parts).astype(np.int16)


def is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def encode_frames(samples: np.ndarray, codec: AnnounceCodec) -> list[bytes]:
    """48 kHz mono int16 → one encoded payload per 20 ms frame (the last padded)."""
    pad = (-samples.size) % FRAME_SAMPLES
    data = np.concatenate([samples.astype(np.int16), np.zeros(pad, dtype=np.int16)])
    count = data.size // FRAME_SAMPLES
    encoder = FrameEncoder(codec.value, opus_kbps=OPUS_KBPS)
    out: list[bytes] = []
    # Opus holds a few ms back (its look-ahead): a silent frame after the end flushes it.
    for n in range(count + 1):
        frame = data[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES]
        if frame.size == 0:
            frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        out += [bytes(p) for p in encoder.encode(make_frame(frame, n * FRAME_SAMPLES))]
    return out[:count] if len(out) > count else out


@dataclass(frozen=True)
class Clip:
    """One announcement's audio: its samples and its frames in every codec asked for."""

    samples: np.ndarray
    frames: dict[AnnounceCodec, list[bytes]] = field(default_factory=dict)

    @property
    def duration_ms(self) -> int:
        count = max((len(f) for f in self.frames.values()), default=0)
        return max(1, count * ANNOUNCE_FRAME_MS)


class Renderer:
    """Text or a WAV → a Clip. Without a TTS engine given, the one FLEET_VOICE_* names
    (espeak-ng by default) is made on first use."""

    def __init__(self, tts: TextToSpeech | None = None) -> None:
        self._tts = tts

    def _engine(self) -> TextToSpeech:
        if self._tts is None:
            from fleet.speech.settings import SpeechSettings

            try:
                self._tts = SpeechSettings().build_tts()
            except FleetError as exc:
                raise RenderError(f"no text-to-speech: {exc}") from exc
        return self._tts

    async def render(
        self,
        *,
        text: str | None = None,
        sound: bytes | None = None,
        chime_first: bool = True,
        codecs: Iterable[AnnounceCodec] = (AnnounceCodec.OPUS,),
    ) -> Clip:
        if (text is None) == (sound is None):
            raise RenderError("an announcement needs text or a sound, not both")
        if text is not None:
            try:
                spoken = await self._engine().synthesize(text)
            except VoiceError as exc:
                raise RenderError(f"text-to-speech failed: {exc}") from exc
        else:
            assert sound is not None
            spoken = await asyncio.to_thread(_decode_wav, sound)
        return await asyncio.to_thread(_assemble, spoken, chime_first, tuple(codecs))


def _decode_wav(sound: bytes) -> np.ndarray:
    if not is_wav(sound):
        raise RenderError("the sound is not a WAV file (RIFF/WAVE)")
    try:
        return decode_audio(sound, "the sound")
    except VoiceError as exc:
        raise RenderError(str(exc)) from exc


def _assemble(spoken: np.ndarray, chime_first: bool, codecs: tuple[AnnounceCodec, ...]) -> Clip:
    samples = np.concatenate([chime(), spoken]) if chime_first else spoken
    if samples.size > MAX_ANNOUNCE_MS * SAMPLE_RATE // 1000:
        raise RenderError(f"the announcement is longer than {MAX_ANNOUNCE_MS // 1000} s")
    return Clip(samples, {codec: encode_frames(samples, codec) for codec in dict.fromkeys(codecs)})
