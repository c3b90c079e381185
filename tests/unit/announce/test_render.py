"""The announcement renderer (fleet.announce.render): the chime as documented, speech from
espeak-ng or a WAV, 48 kHz mono, encoded once per codec in 20 ms frames that decode back
(fleet.media.clips) to what was rendered."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.announce.render import (
    CHIME_AMPLITUDE,
    Renderer,
    RenderError,
    chime,
    encode_frames,
)
from fleet.media.analysis import hears
from fleet.media.clips import ClipDecoder
from fleet.media.frames import FRAME_SAMPLES, SAMPLE_RATE, rms
from fleet.protocol.messages import AnnounceCodec
from fleet.speech.audio import wav_bytes


def decoded(frames: list[bytes], codec: AnnounceCodec) -> np.ndarray:
    decoder = ClipDecoder(codec.value)
    return np.concatenate([decoder.decode(f) for f in frames])


def test_the_chime_is_880_then_660_hz_at_the_documented_length_and_level() -> None:
    samples = chime()
    assert samples.size == round(2 * (0.120 + 0.020) * SAMPLE_RATE)
    tone = round(0.120 * SAMPLE_RATE)
    first, second = samples[:tone], samples[round(0.140 * SAMPLE_RATE) :][:tone]
    assert hears(first, 880)
    assert not hears(first, 660)
    assert hears(second, 660)
    assert not hears(second, 880)
    peak = np.abs(samples).max() / 32767
    assert CHIME_AMPLITUDE * 0.95 < peak <= CHIME_AMPLITUDE + 1e-3
    gap = samples[tone : tone + round(0.020 * SAMPLE_RATE)]
    assert not gap.any()


@pytest.mark.parametrize("codec", list(AnnounceCodec))
def test_frames_are_20_ms_each_and_decode_back_to_the_sound(codec: AnnounceCodec) -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # one second of 440 Hz
    tone = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype(np.int16)
    frames = encode_frames(tone, codec)
    assert len(frames) == SAMPLE_RATE // FRAME_SAMPLES
    if codec is AnnounceCodec.PCMU:
        assert {len(f) for f in frames} == {160}
    back = decoded(frames, codec)
    assert back.size > 0.9 * SAMPLE_RATE
    assert hears(back[: back.size // 2], 440)
    assert 0.7 < rms(back[4800:-4800]) / rms(tone) < 1.3


async def test_a_wav_is_played_at_48_khz_after_the_chime_in_every_codec_asked() -> None:
    t = np.arange(16000) / 16000  # one second at 16 kHz
    tone = (np.sin(2 * np.pi * 500 * t) * 0.3 * 32767).astype(np.int16)
    clip = await Renderer().render(
        sound=wav_bytes(tone, 16000), codecs=[AnnounceCodec.OPUS, AnnounceCodec.PCMU]
    )
    assert set(clip.frames) == {AnnounceCodec.OPUS, AnnounceCodec.PCMU}
    expected = chime().size + SAMPLE_RATE
    assert abs(clip.samples.size - expected) < FRAME_SAMPLES
    assert clip.duration_ms == len(clip.frames[AnnounceCodec.OPUS]) * 20
    assert abs(clip.duration_ms - expected * 1000 / SAMPLE_RATE) <= 20
    assert hears(clip.samples[-SAMPLE_RATE // 2 :], 500)
    bare = await Renderer().render(sound=wav_bytes(tone, 16000), chime_first=False)
    assert abs(bare.samples.size - SAMPLE_RATE) < FRAME_SAMPLES


async def test_speech_from_espeak() -> None:
    clip = await Renderer().render(text="lunch is ready", chime_first=False)
    assert clip.samples.size > SAMPLE_RATE // 2
    assert rms(clip.samples) > 0.01
    assert list(clip.frames) == [AnnounceCodec.OPUS]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "text or a sound, not both"),
        ({"text": "hi", "sound": b"RIFF"}, "text or a sound, not both"),
        ({"sound": b"ID3 not a wav at all"}, "not a WAV file"),
        ({"sound": b"RIFF\x00\x00\x00\x00WAVEjunk"}, "not audio"),
    ],
)
async def test_bad_input_is_a_render_error(fields: dict[str, object], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        await Renderer().render(**fields)  # type: ignore[arg-type]
