"""The cheap audio path of big simulated rooms: looped tones encoded once and replayed,
decoding in the event loop. Real codecs (libopus, G.711 through PyAV), no network."""

from __future__ import annotations

import av
import numpy as np
import pytest
from aiortc.rtp import RtpPacket

from fleet.media.analysis import find_markers, hears
from fleet.media.encoding import looped_packets
from fleet.media.frames import FRAME_SAMPLES, SAMPLE_RATE, Normalizer
from fleet.media.receiving import InOrderBuffer, MonoOpusDecoder
from fleet.media.sources import ToneSource


class Encoded:
    def __init__(self, data: bytes, timestamp: int) -> None:
        self.data, self.timestamp = data, timestamp


def decode(codec: str, payloads: list[bytes]) -> np.ndarray:
    if codec == "opus":
        decoder = MonoOpusDecoder()
        frames = [f for i, p in enumerate(payloads) for f in decoder.decode(Encoded(p, i * 960))]
    else:
        context = av.CodecContext.create({"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}[codec], "r")
        context.format, context.layout, context.sample_rate = "s16", "mono", 8000
        frames = [f for p in payloads for f in context.decode(av.Packet(p))]
    normalize = Normalizer()
    return np.concatenate([d for f in frames for d in normalize(f)])


@pytest.mark.parametrize("codec", ["opus", "pcmu", "pcma"])
def test_a_replayed_tone_keeps_its_frequency_and_markers_past_its_loop(codec: str) -> None:
    tone = ToneSource(440.0, marker_every_s=0.5)
    loop = tone.repeats()
    assert loop is not None
    assert loop.period == 50  # one second
    looped = looped_packets(tone, loop, codec, 32)
    frames = 5 * loop.period  # well past the two encoded periods
    chunks = [looped.packet(k, muted=False) for k in range(frames)]
    assert [c.pts for c in chunks[:3]] == [0, looped.step, 2 * looped.step]
    audio = decode(codec, [bytes(c) for c in chunks])
    assert hears(audio[-SAMPLE_RATE:], 440.0)
    sent = tone.marker_samples(frames * FRAME_SAMPLES)
    found = find_markers(audio)
    assert len(found) == len(sent) == 9
    # Codec delay shifts every marker alike; the replay adds no jump at the loop's seams.
    shifts = [f - s for f, s in zip(found, sent, strict=True)]
    assert max(shifts) - min(shifts) <= 4, shifts
    assert abs(shifts[0]) < 0.01 * SAMPLE_RATE


def test_a_muted_replay_is_silence_and_one_sound_is_encoded_once_per_process() -> None:
    tone = ToneSource(1010.0, amplitude=0.2)
    loop = tone.repeats()
    assert loop is not None
    first = looped_packets(tone, loop, "opus", 32)
    assert looped_packets(ToneSource(1010.0, amplitude=0.2), loop, "opus", 32) is first
    assert looped_packets(tone, loop, "opus", 24) is not first
    muted = decode("opus", [bytes(first.packet(k, muted=True)) for k in range(20)])
    assert np.abs(muted).max() < 30


def test_tones_that_do_not_repeat_soon_are_encoded_live() -> None:
    assert ToneSource(440.5).repeats() is None  # not whole cycles in a second
    assert ToneSource(440.0, marker_every_s=0.37).repeats() is None  # repeats after 37 s
    assert (
        ToneSource(440.0, marker_every_s=0.4).repeats()
        == ToneSource(440.0, marker_every_s=0.4).repeats()
    )


def test_the_mixers_stream_plays_each_packet_on_arrival_and_drops_late_ones() -> None:
    buffer = InOrderBuffer()

    def played(seq: int) -> bool:

        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        packet._data = bytes([seq % 256])  # type: ignore[attr-defined]  # what depayload sets
        _, frame = buffer.add(packet)
        return frame is not None and frame.data == bytes([seq % 256])

    assert [played(s) for s in (7, 9, 8, 8, 10)] == [True, True, False, False, True]
    # Sequence numbers wrap at 65536: the next packet after 65535 is 0.
    buffer = InOrderBuffer()
    assert [played(s) for s in (65534, 65535, 0, 1, 65535)] == [True, True, True, True, False]
