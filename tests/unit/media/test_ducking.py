"""Ducking (fleet.media.ducking): x0.25 in 50 ms, back to 1 in 200 ms, linear, by time."""

from __future__ import annotations

import pytest

from fleet.media.ducking import DUCK_DOWN_S, DUCK_GAIN, DUCK_UP_S, Ducking


def test_it_ramps_down_and_back_up_by_the_documented_figures() -> None:
    d = Ducking()
    assert d.gain(0.0) == 1.0
    assert (DUCK_GAIN, DUCK_DOWN_S, DUCK_UP_S) == (0.25, 0.050, 0.200)
    d.set(DUCK_GAIN, DUCK_DOWN_S, now=10.0)
    assert d.gain(10.0) == 1.0
    assert d.gain(10.025) == pytest.approx(0.625)
    assert d.gain(10.05) == DUCK_GAIN
    assert d.gain(11.0) == DUCK_GAIN
    d.set(1.0, DUCK_UP_S, now=12.0)
    assert d.gain(12.1) == pytest.approx(0.625)
    assert d.gain(12.2) == 1.0


def test_a_new_ramp_starts_from_where_the_gain_is() -> None:
    d = Ducking()
    d.set(DUCK_GAIN, DUCK_DOWN_S, now=0.0)
    d.set(1.0, DUCK_UP_S, now=0.025)  # released half way down
    assert d.gain(0.025) == pytest.approx(0.625)
    assert d.gain(0.225) == 1.0
