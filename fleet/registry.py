"""The fleet as seen from retained status and state topics.

Built only from what the broker retains, so a restarted controller or a CLI
command knows the fleet with no database. Each record keeps the device's last
birth, so what it is (firmware, board, groups) outlives its will; a CLI that only
sees the will asks the controller (`devices` op). Convergence rules live here
too, so the controller's final results and the CLI's progress bar agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleet.protocol import TopicKind
from fleet.protocol.messages import DeviceInfo, DeviceOutcome, DeviceResult, State, Status


@dataclass(slots=True)
class DeviceRecord:
    id: str
    status: Status | None = None
    state: State | None = None
    last_seen: float = field(default_factory=time.time)
    # Its last birth: what it is (firmware, board, groups) stays known while it is offline,
    # when the retained status is the will.
    birth: Status | None = None

    @property
    def online(self) -> bool:
        return self.status is not None and self.status.online

    @property
    def groups(self) -> list[str]:
        return list(self.birth.groups or []) if self.birth else []

    @property
    def fw(self) -> str | None:
        return self.birth.fw if self.birth else None

    @property
    def hw(self) -> str | None:
        return self.birth.hw if self.birth else None

    @property
    def rev(self) -> int | None:
        return self.state.rev if self.state else None

    @property
    def room(self) -> str | None:
        if self.state and self.state.meeting:
            return self.state.meeting.room
        return None

    def in_group(self, group: str) -> bool:
        return group == "all" or group in self.groups

    def outcome(self, rev: int) -> DeviceOutcome:
        """Where this device stands against an intent published with `rev`."""
        if self.state is not None and self.state.rev >= rev:
            if self.state.rev == rev and self.state.error:
                return DeviceOutcome.FAILED
            return DeviceOutcome.CONVERGED
        return DeviceOutcome.WAITING if self.online else DeviceOutcome.PENDING

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            device=self.id, online=self.online, fw=self.fw, hw=self.hw, groups=self.groups
        )

    def result(self, rev: int) -> DeviceResult:
        outcome = self.outcome(rev)
        error = self.state.error if self.state and outcome is DeviceOutcome.FAILED else None
        return DeviceResult(
            device=self.id,
            outcome=outcome,
            online=self.online,
            rev=self.rev,
            room=self.room,
            detail=error,
        )


class Registry:
    def __init__(self) -> None:
        self.devices: dict[str, DeviceRecord] = {}

    def record(self, device_id: str) -> DeviceRecord:
        rec = self.devices.get(device_id)
        if rec is None:
            rec = self.devices[device_id] = DeviceRecord(device_id)
        return rec

    def update(self, kind: TopicKind, device_id: str, message: Status | State | None) -> bool:
        """Apply a status or state message (None: the retained topic was cleared).

        Returns True when the device's presence changed (came online or went offline).
        """
        if kind is TopicKind.STATUS:
            assert message is None or isinstance(message, Status)
            if message is None:
                self.devices.pop(device_id, None)
                return True
            rec = self.record(device_id)
            was_online = rec.online
            rec.status = message
            if message.online:
                rec.birth = message
            rec.last_seen = time.time()
            return was_online != rec.online
        if kind is TopicKind.STATE:
            assert message is None or isinstance(message, State)
            rec = self.record(device_id)
            rec.state = message
            rec.last_seen = time.time()
        return False

    def targets(self, group: str) -> list[DeviceRecord]:
        return sorted(
            (rec for rec in self.devices.values() if rec.in_group(group)), key=lambda r: r.id
        )

    def online_count(self) -> int:
        return sum(1 for rec in self.devices.values() if rec.online)

    def in_meeting_count(self) -> int:
        return sum(1 for rec in self.devices.values() if rec.online and rec.room)


def count_outcomes(results: Iterable[DeviceResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for res in results:
        counts[res.outcome.value] = counts.get(res.outcome.value, 0) + 1
    return counts
