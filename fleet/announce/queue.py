"""What plays on one device, and what waits (docs/protocol.md §14).

Pure logic, no I/O, so the rules are tested on their own: one announcement plays on a
device at a time; another waits behind it (urgent ones ahead of normal ones, each in
the order they came), except that an urgent one cuts off a normal one that is playing:
the cut one ends (its device fails it, `interrupted by <ann>`) and the urgent one starts.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from fleet.protocol.messages import Priority


class Queued(Protocol):
    @property
    def priority(self) -> Priority: ...


T = TypeVar("T", bound=Queued)


@dataclass(frozen=True, slots=True)
class Offered(Generic[T]):
    """What offering an announcement to a device does."""

    start: bool  # it plays now
    interrupted: T | None = None  # the one it cuts off (start is then True)


@dataclass(slots=True)
class DeviceQueue(Generic[T]):
    playing: T | None = None
    waiting: deque[T] = field(default_factory=deque)

    def offer(self, item: T) -> Offered[T]:
        if self.playing is None:
            self.playing = item
            return Offered(start=True)
        if _urgent(item) and not _urgent(self.playing):
            cut, self.playing = self.playing, item
            return Offered(start=True, interrupted=cut)
        if _urgent(item):
            # Ahead of every normal one waiting, behind the urgent ones.
            at = next((n for n, w in enumerate(self.waiting) if not _urgent(w)), None)
            if at is None:
                self.waiting.append(item)
            else:
                self.waiting.insert(at, item)
        else:
            self.waiting.append(item)
        return Offered(start=False)

    def finished(self, item: T) -> T | None:
        """`item` is over (played, failed, cut off or dropped): the next to start, if that
        frees the device."""
        if self.playing is item:
            self.playing = self.waiting.popleft() if self.waiting else None
            return self.playing
        with contextlib.suppress(ValueError):
            self.waiting.remove(item)
        return None

    def drain(self) -> list[T]:
        """Everything queued or playing, taken out (the device went offline)."""
        items = ([self.playing] if self.playing is not None else []) + list(self.waiting)
        self.playing = None
        self.waiting.clear()
        return items

    @property
    def idle(self) -> bool:
        return self.playing is None and not self.waiting


def _urgent(item: Queued) -> bool:
    return item.priority is Priority.URGENT
