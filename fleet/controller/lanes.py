"""The controller's inbound lanes: queues with bounded memory, each served by its own task.

The read loop only classifies a message and puts it in its lane; the lanes are served
side by side, so what one kind of sender does cannot hold up another:

- `ReportLane`: device reports (status, state, ack, tele), desired docs, the sync marker
  and everything else. One ordered queue, served in bounded batches. A report whose
  topic holds retained state (status, state, desired docs) replaces an unserved one of
  the same topic in place: only the latest per topic matters, so those are bounded by
  the fleet's topics and never dropped, and one topic's reports are served in order.
  Other messages (acks, telemetry) are bounded by count and bytes; past that they are
  dropped and counted.
- `FairLane`: one FIFO per key (a participant's pid for signalling, a requester for the
  API), each bounded by count and bytes, and all of them by bytes; keys are served in
  turn, at most one message per key at a time, so a key's messages keep their order and
  a busy key gets its share, never more. An offer past a bound is refused: the caller
  answers `busy`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class LaneDepth:
    """What a lane holds now, the most it held, and what it refused."""

    items: int = 0
    bytes: int = 0
    peak_items: int = 0
    peak_bytes: int = 0
    refused: int = 0
    served: int = 0

    def add(self, size: int) -> None:
        self.items += 1
        self.bytes += size
        self.peak_items = max(self.peak_items, self.items)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def remove(self, size: int) -> None:
        self.items -= 1
        self.bytes -= size
        self.served += 1


class ReportLane(Generic[T]):
    """One ordered queue; state-like topics coalesce in place, the rest are bounded."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items  # of the messages that do not coalesce
        self.max_bytes = max_bytes
        # Keys: a topic for a coalescing message, a sequence number for the others.
        # Values: the item, its size, and whether it counts against the FIFO bounds.
        self._queue: OrderedDict[str | int, tuple[T, int, bool]] = OrderedDict()
        self._seq = 0
        self._fifo_items = 0
        self._fifo_bytes = 0
        self.depth = LaneDepth()
        self._ready = asyncio.Event()

    def offer(self, topic: str, item: T, size: int, coalesce: bool) -> bool:
        """Queue `item`; False when it was refused (a non-coalescing one past the bounds)."""
        if coalesce:
            old = self._queue.get(topic)
            if old is not None:
                # In place: the latest report, where the first unserved one stood.
                self._queue[topic] = (item, size, False)
                self.depth.bytes += size - old[1]
                self.depth.peak_bytes = max(self.depth.peak_bytes, self.depth.bytes)
                return True
            self._queue[topic] = (item, size, False)
        else:
            if self._fifo_items >= self.max_items or self._fifo_bytes + size > self.max_bytes:
                self.depth.refused += 1
                return False
            self._seq += 1
            self._queue[self._seq] = (item, size, True)
            self._fifo_items += 1
            self._fifo_bytes += size
        self.depth.add(size)
        self._ready.set()
        return True

    async def take(self, limit: int) -> list[T]:
        """Up to `limit` items, oldest first; waits for one."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        batch: list[T] = []
        queue = self._queue
        while queue and len(batch) < limit:
            _key, (item, size, fifo) = queue.popitem(last=False)
            if fifo:
                self._fifo_items -= 1
                self._fifo_bytes -= size
            self.depth.remove(size)
            batch.append(item)
        return batch


class FairLane(Generic[T]):
    """A FIFO per key, served in turn, one item per key at a time."""

    def __init__(self, per_key_items: int, per_key_bytes: int, max_bytes: int) -> None:
        self.per_key_items = per_key_items
        self.per_key_bytes = per_key_bytes
        self.max_bytes = max_bytes
        self._queues: dict[Hashable, deque[tuple[T, int]]] = {}
        self._bytes: dict[Hashable, int] = {}
        self._turns: deque[Hashable] = deque()  # keys with items, not being served
        self._serving: set[Hashable] = set()
        self.depth = LaneDepth()
        self._ready = asyncio.Event()

    def offer(self, key: Hashable, item: T, size: int) -> bool:
        """Queue `item` under `key`; False when a bound refuses it."""
        queue = self._queues.get(key)
        held = self._bytes.get(key, 0)
        if (
            (queue is not None and len(queue) >= self.per_key_items)
            or held + size > self.per_key_bytes
            or self.depth.bytes + size > self.max_bytes
        ):
            self.depth.refused += 1
            return False
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append((item, size))
        self._bytes[key] = held + size
        if len(queue) == 1 and key not in self._serving:
            self._turns.append(key)
            self._ready.set()
        self.depth.add(size)
        return True

    def queued(self, key: Hashable) -> int:
        queue = self._queues.get(key)
        return len(queue) if queue else 0

    @property
    def keys(self) -> int:
        """Keys with items waiting or being served."""
        return len(self._queues.keys() | self._serving)

    async def take(self) -> tuple[Hashable, T]:
        """The next key's oldest item; the key is being served until `done(key)`."""
        while not self._turns:
            self._ready.clear()
            await self._ready.wait()
        key = self._turns.popleft()
        queue = self._queues[key]
        item, size = queue.popleft()
        left = self._bytes[key] - size
        if queue:
            self._bytes[key] = left
        else:
            del self._queues[key], self._bytes[key]
        self._serving.add(key)
        self.depth.remove(size)
        return key, item

    def done(self, key: Hashable) -> None:
        self._serving.discard(key)
        if key in self._queues:
            self._turns.append(key)
            self._ready.set()


class Budget:
    """A token bucket: `rate` a second, up to `burst` at once (answers to a flood)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable) -> bool:
        now = time.monotonic()
        tokens, at = self._tokens.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._tokens) > 10_000:  # keys come and go; the full buckets are forgettable
            self._tokens = {k: v for k, v in self._tokens.items() if v[0] < self.burst}
        if tokens < 1:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1, now)
        return True


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop. Python 3.11's wait_for (in
    aiomqtt's publish) can swallow a cancellation that lands as its PUBACK arrives; a
    serving loop would then carry on for ever and its task group never end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def serve_fair(
    lane: FairLane[T], handle: Callable[[Hashable, T], Awaitable[None]], every: int = 64
) -> None:
    """Serve a lane for ever: one item at a time, yielding to the loop every `every` items
    (handlers that never suspend would otherwise keep the other lanes waiting)."""
    served = 0
    while True:
        stop_if_cancelled()
        key, item = await lane.take()
        try:
            await handle(key, item)
        finally:
            lane.done(key)
        served += 1
        if served % every == 0:
            await asyncio.sleep(0)
