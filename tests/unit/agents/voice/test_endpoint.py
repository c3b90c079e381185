"""fleet.agents.voice.endpoint: where a speaker's turn starts and ends, by pocketsphinx's
real WebRTC VAD on synthetic audio (a voiced buzz: a 140 Hz fundamental and its
harmonics, syllable-modulated) fed at synthetic arrival times."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from fleet.agents.voice.endpoint import EndpointConfig, Endpointer, Utterance
from fleet.media.frames import SAMPLE_RATE

T0 = 100.0  # the arrival time of the first sample
VAD_FRAME_S = 0.03


def voiced(seconds: float, f0: float = 140.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buzz = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 25))
    buzz *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2  # four syllables a second
    return np.asarray(buzz / np.max(np.abs(buzz)) * 12000, dtype=np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


@dataclass
class Heard:
    starts: list[float] = field(default_factory=list)
    turns: list[Utterance] = field(default_factory=list)
    in_turn: bool = False


def listen(audio: np.ndarray, chunk: int = 960, config: EndpointConfig | None = None) -> Heard:
    """Feed `audio` in chunks of `chunk` samples, each arriving as its last sample would."""
    heard = Heard()
    endpointer = Endpointer(heard.starts.append, heard.turns.append, config)
    now = T0
    for i in range(0, audio.size, chunk):
        part = audio[i : i + chunk]
        now += part.size / SAMPLE_RATE
        endpointer.feed(part, now)
    heard.in_turn = endpointer.in_turn
    return heard


def test_silence_is_no_turn() -> None:
    heard = listen(silence(3))
    assert (heard.starts, heard.turns, heard.in_turn) == ([], [], False)


def test_one_second_of_speech_is_one_turn_with_its_preroll() -> None:
    heard = listen(np.concatenate([silence(1), voiced(1), silence(1)]))
    speech_start, speech_end = T0 + 1, T0 + 2
    assert len(heard.starts) == 1
    (turn,) = heard.turns
    assert heard.starts[0] == turn.start
    # It starts within the VAD's first frames of speech, and ends after the speech did,
    # before the end_s of silence that closes it has run out.
    assert speech_start - VAD_FRAME_S <= turn.start <= speech_start + 0.09 + VAD_FRAME_S
    assert speech_end <= turn.end <= speech_end + EndpointConfig().end_s
    # The samples carry the pre-roll before the start (the first phoneme) and the speech.
    assert turn.samples.dtype == np.int16
    assert turn.samples.size / SAMPLE_RATE >= 1.0 + EndpointConfig().preroll_s
    assert not heard.in_turn


def test_how_the_audio_is_chunked_changes_nothing() -> None:
    audio = np.concatenate([silence(1), voiced(1), silence(1)])
    heard = [listen(audio, chunk) for chunk in (960, 700, 1441, audio.size)]
    shapes = {
        tuple((round(u.start, 6), round(u.end, 6), u.samples.size) for u in h.turns) for h in heard
    }
    assert len(shapes) == 1, shapes


def test_a_short_burst_starts_a_turn_but_is_no_turn() -> None:
    """A cough: barge-in may act on its start, but it never reaches the recognizer."""
    heard = listen(np.concatenate([silence(0.5), voiced(0.15), silence(1)]))
    assert len(heard.starts) == 1
    assert heard.turns == []
    assert not heard.in_turn


def test_two_utterances_are_two_turns_in_order() -> None:
    audio = np.concatenate([silence(0.5), voiced(0.8), silence(1), voiced(0.6), silence(1)])
    heard = listen(audio)
    first, second = heard.turns
    assert heard.starts == [first.start, second.start]
    assert first.end < second.start
    assert T0 + 1.3 <= first.end <= T0 + 1.3 + EndpointConfig().end_s
    assert T0 + 2.3 - VAD_FRAME_S <= second.start <= T0 + 2.3 + 0.09 + VAD_FRAME_S


def test_a_turn_is_cut_at_its_longest_and_the_speech_goes_on_in_the_next() -> None:
    config = EndpointConfig(max_turn_s=4.0)
    heard = listen(np.concatenate([silence(0.5), voiced(6), silence(1)]), config=config)
    first, second = heard.turns
    # Pre-roll and speech, 4 s in all (in whole VAD frames).
    assert abs(first.samples.size / SAMPLE_RATE - 4.0) < VAD_FRAME_S
    assert second.start == pytest.approx(first.end)  # no speech lost between them
    assert len(heard.starts) == 2


def test_a_later_end_s_ends_a_turn_later() -> None:
    audio = np.concatenate([silence(0.5), voiced(1), silence(0.3), voiced(0.5), silence(1.5)])
    quick = listen(audio, config=EndpointConfig(end_s=0.15))
    patient = listen(audio, config=EndpointConfig(end_s=0.6))
    assert len(quick.turns) == 2  # the pause ends the first turn
    assert len(patient.turns) == 1  # the pause is inside one turn
    assert patient.turns[0].end > quick.turns[0].end
