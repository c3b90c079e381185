"""The intercom: the controller part that serves calls (docs/protocol.md §14.7).

A call is a meeting in a private room of its own (`call-<random>`, kind `call`, that
only its members may join), so its audio takes the meeting machinery unchanged. The
part writes each member's OWN desired doc to join the room, remembering the meeting
intent that was in effect for it before (its own doc's or a group's, whichever rev
won), and writes that intent back when the call ends: a device that was in a meeting
goes back to it.

A callee is joined at once (auto-answer), or rung (`ring` command) and joined when it
answers: when the caller asks for a ring, when the callee is in a meeting and the call
is not urgent, or when it has do-not-disturb on and the call is urgent (a normal call
does not reach it: outcome `dnd`). A ringing call's caller joins with the first answer;
nobody answering within the timeout ends the call (`no_answer`) with nobody moved.

A call ends on `hangup`, when its ring is not answered, or when at most one member is
left in it (another intent took the others: a later join, leave or join-all wins, as
everywhere in the fleet). Live calls are kept in the controller's store
(fleet.intercom.records), so a restarted controller still ends them and puts their
members back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from fleet.controller.parts import ControllerPart, requester
from fleet.errors import RequestRefused
from fleet.intercom.call import Call, CallMember
from fleet.intercom.records import CallRecords
from fleet.meetings.records import MeetingRecords
from fleet.meetings.room import Room
from fleet.protocol import encode
from fleet.protocol.constants import CALL_ROOM_PREFIX, MAX_RING_S
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    Command,
    CommandOp,
    Desired,
    DeviceOutcome,
    EventKind,
    FleetEvent,
    MeetingIntent,
    Priority,
    RingArgs,
    RoomKind,
)
from fleet.registry import count_outcomes

if TYPE_CHECKING:
    from fleet.controller.host import PartHost

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often unanswered rings are checked against their deadline
RING_TTL_MS = 10_000
# The ops of the desired-state writes the intercom makes: its own events are not a
# member's intent moving on.
WRITE_OPS = frozenset({"call", "call-answer", "call-end"})


class Intercom(ControllerPart):
    name = "intercom"
    records: MeetingRecords  # the meeting tables, where a call's room is kept

    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}
        self._call_of: dict[str, str] = {}  # device -> the call it is a member of

    def attach(self, host: PartHost) -> None:
        super().attach(host)
        self.records = MeetingRecords(self.host.store)
        # Calls an earlier run left live: still ended, and their members put back, here.
        self.kept = CallRecords(self.host.store)
        for call in self.kept.calls():
            self.calls[call.id] = call
            for member in call.members.values():
                live = (DeviceOutcome.RINGING, DeviceOutcome.WAITING, DeviceOutcome.JOINED)
                if member.outcome in live:
                    self._call_of[member.device] = call.id
        if self.calls:
            log.info("%d call(s) carried over from an earlier run", len(self.calls))

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        return {
            ApiOp.CALL: self._api_call,
            ApiOp.ANSWER: self._api_answer,
            ApiOp.HANGUP: self._api_hangup,
        }

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if not self.host.synced:
                continue  # a ring that lapsed while we were away ends once the fleet is read
            now = time.time()
            for call in list(self.calls.values()):
                if call.ring_until is not None and now >= call.ring_until:
                    await self._ring_timed_out(call)

    async def on_event(self, event: FleetEvent) -> None:
        """A member's intent moved on (a join, leave or join-all written since the call's
        own): it left the call; a call with one member left ends."""
        if event.kind not in (EventKind.JOIN, EventKind.LEAVE) or event.op in WRITE_OPS:
            return
        if event.rev is None or not self.calls:
            return
        for call in list(self.calls.values()):
            gone = [
                m
                for m in call.joined
                if (m.rev or 0) < event.rev
                and self._concerns(event, m.device)
                and not self._still_in(m, call.id)
            ]
            for member in gone:
                log.info(
                    "%s left call %s: a later intent (rev %d)", member.device, call.id, event.rev
                )
                member.rev = None
                member.previous = None  # its new intent stands: nothing to restore
                self._call_of.pop(member.device, None)
            if gone and len(call.joined) <= 1 and not call.ringing:
                await self._end(call, DeviceOutcome.NO_ANSWER, "a member left")
            elif gone:
                self.kept.save(call)

    def _concerns(self, event: FleetEvent, device_id: str) -> bool:
        if event.device is not None:
            return event.device == device_id
        rec = self.host.registry.devices.get(device_id)
        return event.group is not None and rec is not None and rec.in_group(event.group)

    # --- call ---------------------------------------------------------------------------------
    async def _api_call(self, request: ApiRequest) -> ApiResult:
        op = ApiOp.CALL.value
        caller = request.device or ""
        self._only_for_itself(caller, "call")
        devices = self.host.registry.devices
        rec = devices.get(caller)
        if rec is None:
            raise RequestRefused("unknown_device", f"unknown device {caller!r}")
        if not rec.online:
            raise RequestRefused("offline", f"{caller} is offline")
        if caller in self._call_of:
            raise RequestRefused("busy", f"{caller} is already in call {self._call_of[caller]}")
        callees, group = self._callees(request, caller)
        urgent = request.priority is Priority.URGENT
        members: dict[str, CallMember] = {caller: CallMember(caller, DeviceOutcome.WAITING)}
        for device_id in callees:
            members[device_id] = self._reach(device_id, request.ring, urgent)
        reachable = [
            m
            for d, m in members.items()
            if d != caller and m.outcome in (DeviceOutcome.JOINED, DeviceOutcome.RINGING)
        ]
        if not reachable:
            outcomes = {m.outcome.value for d, m in members.items() if d != caller}
            callees_reached = [m.result("") for d, m in members.items() if d != caller]
            code = outcomes.pop() if len(outcomes) == 1 else "unreachable"
            return ApiResult(
                op=op,
                ok=False,
                code=code,
                detail=f"nobody to call: {_summary(members, caller)}",
                group=group,
                devices=callees_reached,
                counts=count_outcomes(callees_reached),
            )
        call = Call(
            id=self._new_room_name(),
            caller=caller,
            members=members,
            priority=request.priority,
            group=group,
        )
        self.records.save_room(
            Room(
                call.id,
                cap=max(2, 1 + len(reachable)),
                kind=RoomKind.CALL,
                members=frozenset([caller, *(m.device for m in reachable)]),
                created=time.time(),
            )
        )
        self.calls[call.id] = call
        for member in [members[caller], *reachable]:
            self._call_of[member.device] = call.id
        for member in reachable:
            member.previous = self._intent_now(member.device)
        members[caller].previous = self._intent_now(caller)
        ringing = [m for m in reachable if m.outcome is DeviceOutcome.RINGING]
        if ringing:
            timeout = min(request.timeout_s, float(MAX_RING_S))
            call.ring_s = min(MAX_RING_S, math.ceil(timeout))
            call.ring_until = time.time() + timeout
            call.pending = request.id
        for member in reachable:
            if member.outcome is DeviceOutcome.JOINED:
                await self._join(call, member, "call")
        if any(m.joined for m in reachable):
            await self._join(call, members[caller], "call")
        self.kept.save(call)
        for member in ringing:
            await self._ring(member.device, call.id, call.ring_s)
        await self._event(call, "call", f"{caller} called {_summary(members, caller)}")
        log.info("call %s: %s", call.id, _summary(members, caller))
        return call.api_result(
            op,
            ok=True,
            done=not ringing,
            code="accepted" if ringing else "ok",
            detail=_summary(members, caller),
            group=group,
        )

    def _callees(self, request: ApiRequest, caller: str) -> tuple[list[str], str | None]:
        devices = self.host.registry.devices
        if request.to is not None:
            if request.to == caller:
                raise RequestRefused("bad_request", f"{caller} cannot call itself")
            if request.to not in devices:
                raise RequestRefused("unknown_device", f"unknown device {request.to!r}")
            return [request.to], None
        group = request.group
        if group == "all":  # the field's default: every device is an announcement's target
            raise RequestRefused(
                "bad_request", "a call needs `to` (a device) or `group` (not all devices)"
            )
        callees = sorted(d for d, rec in devices.items() if rec.in_group(group) and d != caller)
        if not callees:
            raise RequestRefused("unknown_group", f"group {group!r} has no device to call")
        return callees, group

    def _reach(self, device_id: str, ring: bool, urgent: bool) -> CallMember:
        """How the call reaches a callee, by the priority rules (§14.7)."""
        rec = self.host.registry.devices[device_id]
        if not rec.online:
            return CallMember(device_id, DeviceOutcome.OFFLINE, online=False)
        if device_id in self._call_of:
            return CallMember(device_id, DeviceOutcome.BUSY)
        own = self.host.store.desired_doc("dev", device_id)
        dnd = bool(own is not None and own.dnd)
        if dnd and not urgent:
            return CallMember(device_id, DeviceOutcome.DND)
        # By its intent, not its report: a report may lag (a call just hung up).
        in_meeting = self._intent_now(device_id) is not None
        if ring or dnd or (in_meeting and not urgent):
            return CallMember(device_id, DeviceOutcome.RINGING)
        return CallMember(device_id, DeviceOutcome.JOINED)

    def _new_room_name(self) -> str:
        while True:
            name = f"{CALL_ROOM_PREFIX}{secrets.token_hex(4)}"
            if name not in self.calls and self.records.room(name) is None:
                return name

    # --- answer -------------------------------------------------------------------------------
    async def _api_answer(self, request: ApiRequest) -> ApiResult:
        op = ApiOp.ANSWER.value
        device = request.device or self._requesting_device()
        if request.call is not None:
            call = self.calls.get(request.call)
            if call is None:
                raise RequestRefused("unknown_call", f"no call {request.call!r}")
            if device is None:
                ringing = call.ringing
                if len(ringing) != 1:
                    raise RequestRefused(
                        "bad_request", f"call {call.id} rings {len(ringing)} devices: name one"
                    )
                device = ringing[0].device
        elif device is not None:
            call_id = self._call_of.get(device)
            call = self.calls.get(call_id) if call_id else None
            if call is None:
                raise RequestRefused("not_ringing", f"{device} has no call ringing")
        else:
            raise RequestRefused("bad_request", "answer needs `device` or `call`")
        self._only_for_itself(device, "answer")
        member = call.members.get(device)
        if member is None or member.outcome is not DeviceOutcome.RINGING:
            raise RequestRefused("not_ringing", f"{device} is not ringing in call {call.id}")
        await self._join(call, member, "call-answer")
        caller = call.members[call.caller]
        if not caller.joined:
            await self._join(call, caller, "call-answer")
        if not call.ringing:
            call.ring_until = None
        self.kept.save(call)
        await self._finish_pending(call, ok=True, code="ok")
        log.info("call %s: %s answered", call.id, device)
        return call.api_result(
            op,
            ok=True,
            detail=f"{device} answered",
        )

    # --- hangup -------------------------------------------------------------------------------
    async def _api_hangup(self, request: ApiRequest) -> ApiResult:
        op = ApiOp.HANGUP.value
        device = request.device or (None if request.call else self._requesting_device())
        if request.call is not None:
            call = self.calls.get(request.call)
            if call is None:
                raise RequestRefused("unknown_call", f"no call {request.call!r}")
        elif device is not None:
            call_id = self._call_of.get(device)
            call = self.calls.get(call_id) if call_id else None
            if call is None:
                raise RequestRefused("not_in_call", f"{device} is in no call")
        else:
            raise RequestRefused("bad_request", "hangup needs `call` or `device`")
        acting = self._requesting_device()
        if acting is not None and acting not in call.members:
            raise RequestRefused("forbidden", f"{acting} is not a member of call {call.id}")
        by = acting or device or "the operator"
        await self._end(call, DeviceOutcome.NO_ANSWER, f"hung up by {by}", code="hung_up")
        return call.api_result(
            op,
            ok=True,
            detail=f"hung up by {by}",
        )

    # --- ending -------------------------------------------------------------------------------
    async def _ring_timed_out(self, call: Call) -> None:
        call.ring_until = None
        for member in call.ringing:
            member.outcome = DeviceOutcome.NO_ANSWER
            await self._ring(member.device, call.id, 0)
            self._call_of.pop(member.device, None)
        if call.answered:
            self.kept.save(call)
            return  # a group call: those that answered talk on
        log.info("call %s: no answer", call.id)
        await self._end(call, DeviceOutcome.NO_ANSWER, "no answer")

    async def _end(
        self, call: Call, unanswered: DeviceOutcome, why: str, code: str = "no_answer"
    ) -> None:
        """Stop the ringing, put every member back where it was, remove the room."""
        if self.calls.pop(call.id, None) is None:
            return
        self.kept.delete(call.id)
        for member in call.members.values():
            if self._call_of.get(member.device) == call.id:
                del self._call_of[member.device]
            if member.outcome is DeviceOutcome.RINGING:
                member.outcome = unanswered
                await self._ring(member.device, call.id, 0)
            elif member.outcome is DeviceOutcome.WAITING:
                member.outcome = unanswered
            if member.joined:
                await self._restore(member, call.id)
        self.records.delete_room(call.id)  # its live session ends as its members leave
        answered = call.answered or any(
            m.outcome is DeviceOutcome.JOINED for m in call.members.values()
        )
        if answered:
            await self._finish_pending(call, ok=True, code="ok")
        else:
            await self._finish_pending(call, ok=False, code=code, detail=why)
        await self._event(call, "call_end", why)
        log.info("call %s ended: %s", call.id, why)

    async def _finish_pending(
        self, call: Call, ok: bool, code: str, detail: str | None = None
    ) -> None:
        if call.pending is None:
            return
        request_id, call.pending = call.pending, None
        await self.host.publish_result(
            call.api_result(
                ApiOp.CALL.value,
                id=request_id,
                ok=ok,
                code=code,
                detail=detail or _summary(call.members, call.caller),
                group=call.group,
            )
        )

    # --- desired docs -------------------------------------------------------------------------
    async def _join(self, call: Call, member: CallMember, op: str) -> None:
        doc = await self.host.write_own_intent(member.device, MeetingIntent(room=call.id), op)
        member.rev = doc.rev
        member.outcome = DeviceOutcome.JOINED

    async def _restore(self, member: CallMember, call_id: str) -> None:
        """Write back the intent the member had before the call, unless a newer intent
        took it since (a later join, leave or join-all stands)."""
        if member.rev is None or not self._still_in(member, call_id):
            member.rev = None
            return
        member.rev = None
        previous = member.previous
        if previous is not None and previous.until is not None and previous.until <= time.time():
            previous = None  # it lapsed during the call
        await self.host.write_own_intent(member.device, previous, "call-end")

    def _still_in(self, member: CallMember, call_id: str) -> bool:
        """The call's intent is still the one in effect for the member: its own doc names
        the call's room (a later write of that doc that kept the room, such as a `dnd`
        change, keeps it in) and no group doc outranks it."""
        own = self.host.store.desired_doc("dev", member.device)
        if own is None or own.meeting is None or own.meeting.room != call_id:
            return False
        member.rev = own.rev
        revs = self.host.store.desired_revs()
        rec = self.host.registry.devices.get(member.device)
        groups = ["all", *(rec.groups if rec else [])]
        return not any(revs.get(("grp", g), 0) > own.rev for g in groups)

    def _intent_now(self, device_id: str) -> MeetingIntent | None:
        """The meeting intent in effect for the device: its own doc's or a group's,
        whichever has the highest rev (what the device applies); None once lapsed."""
        rec = self.host.registry.devices.get(device_id)
        store = self.host.store
        docs: list[Desired] = [
            d
            for d in (
                store.desired_doc("dev", device_id),
                *(store.desired_doc("grp", g) for g in ["all", *(rec.groups if rec else [])]),
            )
            if d is not None
        ]
        if not docs:
            return None
        meeting = max(docs, key=lambda d: d.rev).meeting
        if meeting is not None and meeting.until is not None and meeting.until <= time.time():
            return None
        return meeting

    # --- the devices --------------------------------------------------------------------------
    async def _ring(self, device_id: str, call_id: str, seconds: int) -> None:
        """The `ring` command (§14.7); nobody waits for its ack (a device that misses it
        still joins on answer)."""
        command = Command(
            id=f"ring-{uuid.uuid4().hex[:10]}",
            op=CommandOp.RING.value,
            args=RingArgs(call=call_id, seconds=seconds).model_dump(),
            ttl_ms=RING_TTL_MS,
            ts=time.time(),
        )
        await self.host.publish(self.host.topics.cmd(device_id), encode(command))

    def _requesting_device(self) -> str | None:
        """The device that sent this request on its own `api/by/{id}/{op}` (its button);
        None for operators, Home Assistant and the controller's own."""
        user = requester()
        return user if user and user in self.host.registry.devices else None

    def _only_for_itself(self, device: str | None, what: str) -> None:
        acting = self._requesting_device()
        if acting is not None and acting != device:
            raise RequestRefused(
                "forbidden", f"device {acting} may {what} only for itself, not for {device}"
            )

    async def _event(self, call: Call, kind: str, detail: str) -> None:
        await self.host.emit(
            FleetEvent(
                ts=time.time(),
                kind=kind,
                device=call.caller,
                group=call.group,
                room=call.id,
                op=ApiOp.CALL.value,
                detail=detail[:256],
            )
        )


def _summary(members: Mapping[str, CallMember], caller: str) -> str:
    parts = [f"{d} {m.outcome.value}" for d, m in members.items() if d != caller]
    return ", ".join(parts) or "nobody"
