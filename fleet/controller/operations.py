"""Tracking of operator actions (join-all, leave, cmd...) until they converge or time out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from fleet.controller.store import Job
from fleet.protocol.messages import (
    MAX_LISTED_BYTES,
    MAX_LISTED_DEVICES,
    ApiOp,
    ApiRequest,
    ApiResult,
    DeviceOutcome,
    DeviceResult,
    Message,
)
from fleet.registry import Registry

M = TypeVar("M", bound=Message)


@dataclass(slots=True)
class DesiredTracker:
    """Follows one desired-state write until every online target reports its rev."""

    op: ApiOp
    request: ApiRequest
    rev: int
    targets: list[str]
    deadline: float
    room: str | None = None
    group: str | None = None
    until: float | None = None
    waiting: set[str] = field(default_factory=set)
    # Membership is checked on every state report of the fleet: a set, not the list.
    target_set: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def start(
        cls,
        op: ApiOp,
        request: ApiRequest,
        rev: int,
        targets: list[str],
        registry: Registry,
        *,
        room: str | None,
        group: str | None,
        until: float | None,
    ) -> DesiredTracker:
        tracker = cls(
            op=op,
            request=request,
            rev=rev,
            targets=targets,
            deadline=time.monotonic() + request.timeout_s,
            room=room,
            group=group,
            until=until,
        )
        tracker.target_set = frozenset(targets)
        for device_id in targets:
            tracker.observe(device_id, registry)
        return tracker

    def observe(self, device_id: str, registry: Registry) -> None:
        rec = registry.devices.get(device_id)
        if rec is not None and rec.outcome(self.rev) is DeviceOutcome.WAITING:
            self.waiting.add(device_id)
        else:
            self.waiting.discard(device_id)

    @property
    def done(self) -> bool:
        return not self.waiting

    def result(self, registry: Registry, *, final: bool) -> ApiResult:
        # Counted for every target, but a DeviceResult is built only for the listed ones:
        # at 10,000 targets building them all cost a few hundred ms per result, and the
        # final result is the verdict the operator waits for.
        records = [rec for rec in map(registry.devices.get, self.targets) if rec is not None]
        list_all = len(records) <= MAX_LISTED_DEVICES
        counts: dict[str, int] = {}
        listed: list[DeviceResult] = []
        for rec in records:
            outcome = rec.outcome(self.rev)
            counts[outcome.value] = counts.get(outcome.value, 0) + 1
            if len(listed) < MAX_LISTED_DEVICES and (
                list_all or outcome is not DeviceOutcome.CONVERGED
            ):
                listed.append(rec.result(self.rev))
        devices = _within_budget(listed)
        failed = counts.get(DeviceOutcome.FAILED.value, 0)
        waiting = counts.get(DeviceOutcome.WAITING.value, 0)
        if not final:
            code, ok = "accepted", True
        elif failed:
            code, ok = "failed", False
        elif waiting:
            code, ok = "timeout", False
        else:
            code, ok = "ok", True
        return ApiResult(
            id=self.request.id,
            op=self.op.value,
            ok=ok,
            done=final,
            code=code,
            detail=_detail(counts, len(records)),
            rev=self.rev,
            room=self.room,
            group=self.group,
            until=self.until,
            devices=devices,
            omitted=len(records) - len(devices),
            counts=counts,
        )


@dataclass(slots=True)
class CommandTracker:
    """Follows one imperative command until its job reaches a final state."""

    request: ApiRequest
    job: Job
    online: bool

    @property
    def done(self) -> bool:
        return self.job.final

    def result(self, *, final: bool) -> ApiResult:
        job = self.job
        outcome = DeviceResult(
            device=job.device,
            outcome=job.status,
            online=self.online,
            code=job.code,
            detail=job.detail,
            result=job.result,
        )
        ok = job.status is DeviceOutcome.SUCCEEDED if final else True
        return ApiResult(
            id=self.request.id,
            op=ApiOp.CMD.value,
            ok=ok,
            done=final,
            code=(job.code or job.status.value) if final else "accepted",
            detail=job.detail or "",
            devices=[outcome],
            counts={job.status.value: 1},
        )


def _within_budget(devices: Sequence[M]) -> list[M]:
    listed: list[M] = []
    size = 0
    for device in devices[:MAX_LISTED_DEVICES]:
        size += len(device.model_dump_json(exclude_none=True)) + 1
        if size > MAX_LISTED_BYTES:
            break
        listed.append(device)
    return listed


def inventory(registry: Registry, request: ApiRequest) -> ApiResult:
    """The `devices` op: one page, by id after `request.after`, of what the registry knows
    of each device; `next` is where the following page starts."""
    ids = sorted(d for d in registry.devices if request.after is None or d > request.after)
    page = _within_budget([registry.devices[d].info() for d in ids[:MAX_LISTED_DEVICES]])
    more = len(page) < len(ids)
    return ApiResult(
        id=request.id,
        op=ApiOp.DEVICES.value,
        ok=True,
        inventory=page,
        next=page[-1].device if more and page else None,
    )


def _detail(counts: dict[str, int], total: int) -> str:
    if total == 0:
        return "no devices targeted"
    parts = [f"{n} {name}" for name, n in sorted(counts.items())]
    return f"{total} devices: " + ", ".join(parts)
