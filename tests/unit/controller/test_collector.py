"""The controller's collector settings (fleet/controller/collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from fleet.controller import collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()


@pytest.mark.usefixtures("thresholds")
def test_tune_raises_the_young_threshold_and_leaves_a_disabled_collector_alone() -> None:
    gc.set_threshold(700, 10, 10)
    collector.tune()
    assert gc.get_threshold() == (
        collector.YOUNG_THRESHOLD,
        collector.MIDDLE_THRESHOLD,
        collector.OLD_THRESHOLD,
    )
    gc.set_threshold(0, 10, 10)  # a process that turned it off keeps it off
    collector.tune()
    assert gc.get_threshold()[0] == 0


@pytest.mark.usefixtures("thresholds")
def test_settle_freezes_what_is_alive_and_collects_cycles_first() -> None:
    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle, garbage once dropped: not to be frozen
    gone = weakref.ref(a)
    del a, b
    kept = [Node() for _ in range(100)]
    collector.settle()
    assert gone() is None
    assert gc.get_freeze_count() >= len(kept)
