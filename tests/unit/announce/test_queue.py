"""A device's announcement queue (fleet.announce.queue): one plays, normal ones queue,
an urgent one cuts off a normal one and waits ahead of the normal ones behind another
urgent one."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.announce.queue import DeviceQueue
from fleet.protocol.messages import Priority

NORMAL, URGENT = Priority.NORMAL, Priority.URGENT


@dataclass(eq=False)
class Item:
    name: str
    priority: Priority


def test_the_first_plays_and_normal_ones_queue_in_order() -> None:
    q: DeviceQueue[Item] = DeviceQueue()
    a, b, c = Item("a", NORMAL), Item("b", NORMAL), Item("c", NORMAL)
    assert q.offer(a).start
    assert not q.offer(b).start
    assert not q.offer(c).start
    assert q.playing is a
    assert q.finished(a) is b
    assert q.finished(b) is c
    assert q.finished(c) is None
    assert q.idle


def test_an_urgent_one_cuts_off_a_normal_one_and_the_queue_follows_it() -> None:
    q: DeviceQueue[Item] = DeviceQueue()
    a, b, u = Item("a", NORMAL), Item("b", NORMAL), Item("u", URGENT)
    q.offer(a)
    q.offer(b)
    offered = q.offer(u)
    assert offered.start
    assert offered.interrupted is a
    assert q.playing is u
    assert list(q.waiting) == [b]
    assert q.finished(u) is b


def test_an_urgent_one_waits_behind_an_urgent_one_ahead_of_normal_ones() -> None:
    q: DeviceQueue[Item] = DeviceQueue()
    u1, n1, n2, u2, u3 = (
        Item("u1", URGENT),
        Item("n1", NORMAL),
        Item("n2", NORMAL),
        Item("u2", URGENT),
        Item("u3", URGENT),
    )
    q.offer(u1)
    q.offer(n1)
    q.offer(n2)
    assert not q.offer(u2).start
    assert not q.offer(u3).start
    assert [i.name for i in q.waiting] == ["u2", "u3", "n1", "n2"]
    # A normal one never cuts off an urgent one.
    assert q.playing is u1


def test_a_waiting_one_that_ends_leaves_the_queue_and_drain_takes_everything() -> None:
    q: DeviceQueue[Item] = DeviceQueue()
    a, b, c = Item("a", NORMAL), Item("b", NORMAL), Item("c", NORMAL)
    q.offer(a)
    q.offer(b)
    q.offer(c)
    assert q.finished(b) is None  # not playing: nothing starts
    assert [i.name for i in q.waiting] == ["c"]
    assert q.drain() == [a, c]
    assert q.idle
