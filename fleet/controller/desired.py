"""Desired state: the intents the controller writes, and their lapses.

One retained desired doc per device or group, last writer wins by rev. A doc is
written to SQLite before the broker sees it, re-asserted on every (re)connect (a
broker that forgets retained messages loses no intent), adopted from the wire when
the store lost it, and ended when its `until` passes. Before a meeting intent is
written, every part may prepare its room or refuse it (`ControllerPart.before_intent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleet.controller.events import FleetEvents
from fleet.controller.inventory import within_budget
from fleet.controller.link import ControllerLink
from fleet.controller.parts import ControllerPart
from fleet.controller.store import DesiredRecord, Store
from fleet.errors import RequestRefused
from fleet.mqtt import MqttClient, publish_nowait
from fleet.protocol import TopicKind, Topics, encode
from fleet.protocol.messages import (
    MAX_LISTED_DEVICES,
    ApiOp,
    ApiRequest,
    ApiResult,
    Desired,
    DeviceOutcome,
    DeviceResult,
    EventKind,
    FleetEvent,
    MeetingIntent,
)
from fleet.registry import Registry

log = logging.getLogger(__name__)

DESIRED_OPS = frozenset({ApiOp.JOIN_ALL, ApiOp.LEAVE_ALL, ApiOp.JOIN, ApiOp.LEAVE, ApiOp.DND})


class DesiredState:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        topics: Topics,
        link: ControllerLink,
        events: FleetEvents,
        parts: Sequence[ControllerPart],
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._link = link
        self._events = events
        self._parts = parts
        # Revs of lapsed docs kept after their end: a device reporting one in a meeting
        # is told to leave (end_late_follower).
        self._ended_revs = store.ended_revs()

    def topic(self, scope: str, name: str) -> str:
        return self._topics.desired(name) if scope == "dev" else self._topics.group_desired(name)

    async def reassert(self, client: MqttClient) -> None:
        """Every desired doc again: the broker may have restarted and forgotten them."""
        for scope, name, payload in self._store.desired_payloads():
            await client.publish(self.topic(scope, name), payload, qos=1, retain=True)

    def adopt(self, kind: TopicKind, name: str, doc: Desired) -> None:
        """A retained doc seen on the wire: keep revs ahead of it, and keep it if we lost it."""
        self._store.raise_rev_floor(doc.rev)
        scope = "dev" if kind is TopicKind.DESIRED else "grp"
        known = self._store.desired_rev(scope, name)
        if known is None or known < doc.rev:
            self._store.save_desired(scope, name, doc)

    # --- intents ------------------------------------------------------------------------------
    async def start(self, op: ApiOp, request: ApiRequest) -> DesiredTracker:
        """Write the intent of a join, leave, join-all, leave-all or dnd request and follow
        it."""
        if op is ApiOp.DND:
            return await self._start_dnd(request)
        if op in (ApiOp.JOIN, ApiOp.LEAVE):
            device = request.device or ""
            if device not in self._registry.devices:
                raise RequestRefused(
                    "unknown_device", f"unknown device {device!r}: it never announced itself"
                )
            scope, name, targets, group = "dev", device, [device], None
        else:
            scope, name, group = "grp", request.group, request.group
            targets = [rec.id for rec in self._registry.targets(request.group)]
        meeting = None
        until = None
        if op in (ApiOp.JOIN_ALL, ApiOp.JOIN):
            assert request.room is not None
            until = time.time() + request.for_s if request.for_s else None
            meeting = MeetingIntent(room=request.room, mic=request.mic, until=until)
        doc = await self.write(scope, name, meeting, op=op.value, request=request)
        return DesiredTracker.start(
            op,
            request,
            doc.rev,
            targets,
            self._registry,
            room=request.room if meeting else None,
            group=group,
            until=until,
        )

    async def _start_dnd(self, request: ApiRequest) -> DesiredTracker:
        """Do-not-disturb on or off (§14): the device's own doc gets `dnd`, and the meeting
        intent it follows now (its own doc's or a group's, whichever rev wins), so the new
        rev moves it nowhere."""
        device = request.device or ""
        rec = self._registry.devices.get(device)
        if rec is None:
            raise RequestRefused(
                "unknown_device", f"unknown device {device!r}: it never announced itself"
            )
        sources = [("dev", device), ("grp", "all"), *(("grp", g) for g in rec.groups)]
        docs = [d for d in (self._store.desired_doc(*src) for src in sources) if d is not None]
        winning = max(docs, key=lambda d: d.rev, default=None)
        meeting = winning.meeting if winning is not None else None
        doc = self._store.write_desired("dev", device, meeting, time.time(), dnd=bool(request.on))
        await self._publish_doc("dev", device, doc, op=ApiOp.DND.value, kind=EventKind.DND)
        return DesiredTracker.start(
            ApiOp.DND,
            request,
            doc.rev,
            [device],
            self._registry,
            room=meeting.room if meeting else None,
            group=None,
            until=meeting.until if meeting else None,
        )

    async def write(
        self,
        scope: str,
        name: str,
        meeting: MeetingIntent | None,
        op: str | None = None,
        request: ApiRequest | None = None,
        dnd: bool | None = None,
    ) -> Desired:
        if meeting is not None:
            for part in self._parts:
                await part.before_intent(meeting.room, request)  # RequestRefused stops it
        doc = self._store.write_desired(scope, name, meeting, time.time(), dnd=dnd)
        await self._publish_doc(scope, name, doc, op=op)
        return doc

    async def _publish_doc(
        self, scope: str, name: str, doc: Desired, op: str | None, kind: str | None = None
    ) -> None:
        meeting = doc.meeting
        if self._link.client is not None:  # else re-asserted on the next connect
            await self._link.client.publish(
                self.topic(scope, name), encode(doc), qos=1, retain=True
            )
        await self._events.emit(
            FleetEvent(
                ts=doc.ts or time.time(),
                kind=kind or (EventKind.JOIN if meeting else EventKind.LEAVE),
                device=name if scope == "dev" else None,
                detail=f"dnd {'on' if doc.dnd else 'off'}" if kind == EventKind.DND else None,
                group=name if scope == "grp" else None,
                room=meeting.room if meeting else None,
                op=op,
                rev=doc.rev,
            )
        )

    # --- lapses -------------------------------------------------------------------------------
    async def expire(self, now: float) -> None:
        """End every intent whose `until` passed, without touching later intents.

        Each lapse is one change in the store (Store.lapse): its targets with no newer
        intent (`_lapse_followers`) get a leave of their own, with revs allocated
        together, before any await, and the lapsed doc stays, marked ended. So an intent
        written while the leaves go out has a higher rev than all of them, and a crash
        half way leaves the store whole: the next connect re-asserts every leave. A
        group-wide leave with a fresh rev would outrank, and so interrupt, any newer
        intent a device got since (a `join` of one device during a `join-all --for`);
        the kept doc instead outranks the older ones of a device unknown now.
        """
        for rec in self._store.lapsed(now):
            followers = self._lapse_followers(rec)
            leaves = self._store.lapse(rec, followers, now)
            if leaves is None:
                continue  # replaced since it was read: the next tick sees the new one
            self._ended_revs = self._store.ended_revs()
            log.info(
                "intent rev %d for %s/%s lapsed: %d device(s) told to leave",
                rec.doc.rev,
                rec.scope,
                rec.name,
                len(leaves),
            )
            self._publish_leaves(followers, leaves)
            await self._events.emit(
                FleetEvent(
                    ts=now,
                    kind=EventKind.LEAVE,
                    device=rec.name if rec.scope == "dev" else None,
                    group=rec.name if rec.scope == "grp" else None,
                    op="expiry",
                    rev=leaves[-1].rev if leaves else rec.doc.rev,
                    detail=f"rev {rec.doc.rev} lapsed; {len(leaves)} device(s) told to leave",
                )
            )

    @property
    def has_ended(self) -> bool:
        """Some lapsed intent is kept: devices that report its rev may need a leave."""
        return bool(self._ended_revs)

    def end_late_follower(self, device_id: str) -> None:
        """A device that shows up in the meeting of an ended intent (one without a set clock,
        unknown to us at the lapse) is told to leave, unless it has a newer intent."""
        rec = self._registry.devices.get(device_id)
        if rec is None or rec.room is None or rec.rev not in self._ended_revs:
            return
        if self._has_newer_intent(device_id, rec.rev, self._store.desired_revs()):
            return
        leave = self._store.write_desired("dev", device_id, None, time.time())
        log.info("%s is in the meeting of ended rev %d: told to leave", device_id, rec.rev)
        self._publish_leaves([device_id], [leave])

    def _publish_leaves(self, devices: list[str], leaves: list[Desired]) -> None:
        if self._link.client is not None:
            for device_id, leave in zip(devices, leaves, strict=True):
                publish_nowait(
                    self._link.client, self._topics.desired(device_id), encode(leave), 1, True
                )

    def _lapse_followers(self, lapsed: DesiredRecord) -> list[str]:
        """The devices a lapse tells to leave: its targets (and whoever reports its rev)
        that have no newer intent, judged by what we wrote, not by what they report yet:
        a device that has not yet reported a newer `join` must not be pulled out of it."""
        rev = lapsed.doc.rev
        devices = self._registry.devices
        if lapsed.scope == "grp":
            targets = {r.id for r in self._registry.targets(lapsed.name)}
            targets.update(d for d, r in devices.items() if r.rev == rev)
        else:
            targets = {lapsed.name}
        newest = self._store.desired_revs()
        newest.pop((lapsed.scope, lapsed.name), None)
        return sorted(t for t in targets if not self._has_newer_intent(t, rev, newest))

    def _has_newer_intent(
        self, device_id: str, rev: int, newest: dict[tuple[str, str], int]
    ) -> bool:
        """Whether a doc newer than `rev` applies to the device (or it reports one)."""
        rec = self._registry.devices.get(device_id)
        if rec is not None and (rec.rev or 0) > rev:
            return True
        groups = rec.groups if rec is not None else []
        return (
            newest.get(("dev", device_id), 0) > rev
            or newest.get(("grp", "all"), 0) > rev
            or any(newest.get(("grp", g), 0) > rev for g in groups)
        )


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
        devices = within_budget(listed)
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


def _detail(counts: dict[str, int], total: int) -> str:
    if total == 0:
        return "no devices targeted"
    parts = [f"{n} {name}" for name, n in sorted(counts.items())]
    return f"{total} devices: " + ", ".join(parts)
