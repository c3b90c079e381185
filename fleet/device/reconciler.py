"""Desired-state reconciliation: of the retained docs a device sees, the highest rev wins.

Pure logic, no I/O: the simulated device uses it, and the C core
(firmware/components/fleet_core) implements the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.protocol.messages import Desired, MeetingIntent


@dataclass(frozen=True, slots=True)
class Applied:
    rev: int
    meeting: MeetingIntent | None


class Reconciler:
    def __init__(self) -> None:
        self._docs: dict[str, Desired] = {}
        self.applied = Applied(rev=0, meeting=None)

    def offer(self, source: str, doc: Desired | None) -> None:
        """Remember the latest doc per source topic; None clears it (empty retained payload)."""
        if doc is None:
            self._docs.pop(source, None)
        else:
            self._docs[source] = doc

    def forget_sources(self, keep: set[str]) -> None:
        for source in list(self._docs):
            if source not in keep:
                del self._docs[source]

    def best(self) -> Desired | None:
        return max(self._docs.values(), key=lambda d: d.rev, default=None)

    def reconcile(self, now: float, clock_set: bool = True) -> Applied | None:
        """The new applied intent, or None when nothing changes.

        A higher rev replaces the applied intent; a lower one never does. An
        intent whose `until` has passed lapses to "no meeting" (same rev), but
        only on a device whose clock is set.
        """
        rev, meeting = self.applied.rev, self.applied.meeting
        best = self.best()
        if best is not None and best.rev > rev:
            rev, meeting = best.rev, best.meeting
        if clock_set and meeting is not None and meeting.until is not None and now >= meeting.until:
            meeting = None
        candidate = Applied(rev, meeting)
        if candidate == self.applied:
            return None
        self.applied = candidate
        return candidate
