"""A call and its members: who was called, how each answered, and what each was doing
before (the meeting intent it goes back to when the call ends)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fleet.protocol.messages import (
    ApiResult,
    DeviceOutcome,
    DeviceResult,
    MeetingIntent,
    Priority,
)
from fleet.registry import count_outcomes


@dataclass(slots=True)
class CallMember:
    device: str
    outcome: DeviceOutcome
    online: bool = True
    # The meeting intent in effect for the device before the call (its own doc's or a
    # group's, whichever rev won): written back to its own doc when the call ends.
    previous: MeetingIntent | None = None
    # The rev of the own doc the call wrote to join it; None while it has not joined.
    rev: int | None = None

    @property
    def joined(self) -> bool:
        return self.rev is not None

    def result(self, room: str) -> DeviceResult:
        return DeviceResult(
            device=self.device,
            outcome=self.outcome,
            online=self.online,
            rev=self.rev,
            room=room if self.joined else None,
        )


@dataclass(slots=True)
class Call:
    id: str  # its room's name, `call-<random>`
    caller: str
    members: dict[str, CallMember]  # the caller's first
    priority: Priority = Priority.NORMAL
    group: str | None = None
    # A ringing call: when it gives up on the callees still ringing (time.time(), kept
    # across a controller restart).
    ring_until: float | None = None
    ring_s: int = 0
    # The request whose final result waits for an answer (the acceptance went out).
    pending: str | None = None
    started: float = field(default_factory=time.time)

    @property
    def ringing(self) -> list[CallMember]:
        return [m for m in self.members.values() if m.outcome is DeviceOutcome.RINGING]

    @property
    def joined(self) -> list[CallMember]:
        return [m for m in self.members.values() if m.joined]

    @property
    def answered(self) -> bool:
        """Some callee is in (joined at once, or answered its ring)."""
        return any(m.joined for d, m in self.members.items() if d != self.caller)

    def results(self) -> list[DeviceResult]:
        return [m.result(self.id) for m in self.members.values()]

    def api_result(self, op: str, **fields: Any) -> ApiResult:
        """A result about this call: its room and every member's outcome, and `fields`."""
        results = self.results()
        return ApiResult(
            op=op,
            room=self.id,
            call=self.id,
            devices=results,
            counts=count_outcomes(results),
            **fields,
        )
