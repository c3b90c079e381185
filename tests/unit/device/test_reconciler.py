"""fleet.device.reconciler: of the retained docs a device sees, the highest rev wins; an
intent lapses at its `until` on a device whose clock is set."""

from __future__ import annotations

from fleet.device.reconciler import Applied, Reconciler
from fleet.protocol.messages import Desired, MeetingIntent

DEV = "fleet/v1/dev/dev-1/desired"
ALL = "fleet/v1/grp/all/desired"
KITCHEN = "fleet/v1/grp/kitchen/desired"


def join(rev: int, room: str, until: float | None = None, mic: bool = True) -> Desired:
    return Desired(rev=rev, meeting=MeetingIntent(room=room, until=until, mic=mic))


def leave(rev: int) -> Desired:
    return Desired(rev=rev, meeting=None)


def test_a_new_device_has_applied_nothing_and_nothing_changes_without_docs() -> None:
    r = Reconciler()
    assert r.applied == Applied(rev=0, meeting=None)
    assert r.best() is None
    assert r.reconcile(now=0.0) is None


def test_the_highest_rev_wins_whichever_topic_it_came_on() -> None:
    r = Reconciler()
    r.offer(ALL, join(5, "standup"))
    r.offer(DEV, join(3, "focus"))
    r.offer(KITCHEN, join(4, "lunch"))
    applied = r.reconcile(now=0.0)
    assert applied == Applied(5, MeetingIntent(room="standup"))
    assert r.applied == applied
    # A newer doc on another topic replaces it.
    r.offer(DEV, leave(6))
    assert r.reconcile(now=0.0) == Applied(6, None)


def test_a_lower_rev_never_replaces_the_applied_intent() -> None:
    r = Reconciler()
    r.offer(DEV, join(7, "standup"))
    r.reconcile(now=0.0)
    r.offer(DEV, leave(6))  # an older doc retained late: the device's own topic now holds it
    assert r.reconcile(now=0.0) is None
    assert r.applied == Applied(7, MeetingIntent(room="standup"))


def test_a_tie_with_the_applied_rev_changes_nothing() -> None:
    """Two docs of one rev (a group's and the device's): the first applied stays."""
    r = Reconciler()
    r.offer(ALL, join(4, "standup"))
    assert r.reconcile(now=0.0) == Applied(4, MeetingIntent(room="standup"))
    r.offer(DEV, join(4, "other"))
    assert r.reconcile(now=0.0) is None
    assert r.applied.meeting == MeetingIntent(room="standup")


def test_a_tie_between_sources_picks_the_first_offered() -> None:
    r = Reconciler()
    r.offer(KITCHEN, join(9, "kitchen"))
    r.offer(ALL, join(9, "all"))
    best = r.best()
    assert best is not None
    assert best.meeting == MeetingIntent(room="kitchen")


def test_an_intent_lapses_at_its_until_at_the_same_rev() -> None:
    r = Reconciler()
    r.offer(ALL, join(3, "standup", until=100.0))
    assert r.reconcile(now=99.9) == Applied(3, MeetingIntent(room="standup", until=100.0))
    assert r.reconcile(now=99.95) is None  # nothing changed yet
    assert r.reconcile(now=100.0) == Applied(3, None)
    assert r.reconcile(now=200.0) is None  # lapsed once, stays lapsed


def test_an_intent_already_past_its_until_is_never_joined() -> None:
    r = Reconciler()
    r.offer(ALL, join(3, "standup", until=50.0))
    assert r.reconcile(now=60.0) == Applied(3, None)


def test_without_a_set_clock_an_intent_does_not_lapse_until_the_clock_is_set() -> None:
    r = Reconciler()
    r.offer(ALL, join(3, "standup", until=50.0))
    assert r.reconcile(now=60.0, clock_set=False) == Applied(
        3, MeetingIntent(room="standup", until=50.0)
    )
    assert r.reconcile(now=61.0, clock_set=False) is None
    assert r.reconcile(now=62.0, clock_set=True) == Applied(3, None)


def test_a_lapsed_intent_is_not_revived_by_the_same_doc_again() -> None:
    """The lapsed doc stays retained: seeing it again (a reconnect) does not rejoin."""
    r = Reconciler()
    doc = join(3, "standup", until=10.0)
    r.offer(ALL, doc)
    r.reconcile(now=20.0)
    r.offer(ALL, doc)
    assert r.reconcile(now=20.0) is None
    assert r.applied == Applied(3, None)


def test_after_a_lapse_an_older_intent_never_comes_back() -> None:
    r = Reconciler()
    r.offer(KITCHEN, join(2, "retro"))
    r.offer(ALL, join(3, "standup", until=10.0))
    assert r.reconcile(now=5.0) == Applied(3, MeetingIntent(room="standup", until=10.0))
    assert r.reconcile(now=10.0) == Applied(3, None)
    assert r.reconcile(now=11.0) is None  # rev 2's retro is outranked for good


def test_a_newer_intent_beats_a_lapse_pending() -> None:
    r = Reconciler()
    r.offer(ALL, join(3, "standup", until=10.0))
    r.reconcile(now=5.0)
    r.offer(DEV, join(4, "focus"))
    assert r.reconcile(now=11.0) == Applied(4, MeetingIntent(room="focus"))


def test_a_mic_change_at_a_higher_rev_is_a_change() -> None:
    r = Reconciler()
    r.offer(ALL, join(1, "standup"))
    r.reconcile(now=0.0)
    r.offer(ALL, join(2, "standup", mic=False))
    assert r.reconcile(now=0.0) == Applied(2, MeetingIntent(room="standup", mic=False))


def test_clearing_and_forgetting_sources() -> None:
    r = Reconciler()
    r.offer(ALL, join(5, "standup"))
    r.offer(KITCHEN, join(6, "lunch"))
    r.offer(KITCHEN, None)  # an empty retained payload clears the topic
    best = r.best()
    assert best is not None
    assert best.rev == 5
    r.offer(DEV, join(1, "focus"))
    r.forget_sources({DEV})  # left the groups: only its own topic counts
    best = r.best()
    assert best is not None
    assert best.rev == 1
    # Forgetting a source never lowers what was applied.
    r.reconcile(now=0.0)
    assert r.applied.rev == 1
    r.offer(ALL, join(5, "standup"))
    assert r.reconcile(now=0.0) == Applied(5, MeetingIntent(room="standup"))
    r.forget_sources(set())
    assert r.best() is None
    assert r.reconcile(now=0.0) is None
    assert r.applied.rev == 5
