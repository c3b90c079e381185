"""The controller's garbage collector, tuned for a large, long-lived fleet.

The controller holds every device's records (tens of thousands of objects per thousand
devices) for its lifetime and churns a few short-lived objects for every message. With
CPython's default thresholds (a young collection every 700 allocations) those in-flight
objects are scanned, promoted and scanned again, and the long-lived fleet is walked by
every full collection: measured over a 10,000-device join-all, more than half of the
controller's CPU was the collector's. Here a young collection waits for many more
allocations (what is in flight dies by reference counting first), and the fleet as read
at a sync is frozen: kept out of every later collection (reference counting still frees
what it no longer needs; only reference cycles among frozen objects would stay).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython: 700)
MIDDLE_THRESHOLD = 20  # young collections between middle ones (CPython: 10)
OLD_THRESHOLD = 10  # middle collections between full ones, at most (CPython: 10)


def tune() -> None:
    """The collector's thresholds for a controller process (process-wide)."""
    young, _middle, _old = gc.get_threshold()
    if young and young < YOUNG_THRESHOLD:  # 0: the collector is off; leave it so
        gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def settle() -> None:
    """The objects alive now are long-lived (the fleet just read): collect once, then keep
    them out of later collections."""
    gc.collect()
    gc.freeze()
