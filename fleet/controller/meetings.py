"""The meeting server: rooms, sessions, participants, and the signalling relay.

It runs inside the controller as a part. A participant (a device or an agent)
talks to it on `meet/{pid}/up` and hears back on `meet/{pid}/down`
(docs/protocol.md §8). Live membership is in memory; rooms and every
session's history are in the controller's SQLite store. SDP and messages are
relayed only between members of the same live session.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet.controller import transcripts
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError
from fleet.protocol import TopicKind, decode_for, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    Capabilities,
    EventKind,
    FleetEvent,
    MeetAnswer,
    MeetDelivered,
    MeetError,
    MeetJoin,
    MeetJoined,
    MeetLeave,
    MeetLeft,
    MeetOffer,
    MeetPeerJoined,
    MeetPeerLeft,
    MeetRelayedAnswer,
    MeetRelayedOffer,
    MeetSend,
    Message,
    PeerInfo,
    RoomInfo,
)

if TYPE_CHECKING:
    from fleet.controller.service import Controller

log = logging.getLogger(__name__)

# Each member of a mesh holds one peer connection per other member; an ESP32-S3 manages
# 2-3 (DESIGN.md), a Python participant a handful.
DEFAULT_ROOM_CAP = 6
SERVER_PARTICIPANT = "server"  # `from` of messages sent by the CLI's `fleet say`


@dataclass
class Member:
    participant: str
    pid: str
    caps: Capabilities | None
    joined: float

    def info(self) -> PeerInfo:
        return PeerInfo(participant=self.participant, pid=self.pid, caps=self.caps)


@dataclass
class LiveSession:
    id: str
    room: str
    started: float
    members: dict[str, Member] = field(default_factory=dict)  # by participant id
    next_number: int = 1

    def new_participant_id(self) -> str:
        pid = f"p-{self.next_number}"
        self.next_number += 1
        return pid


class MeetingServer(ControllerPart):
    name = "meetings"

    def __init__(self, room_cap: int = DEFAULT_ROOM_CAP, auto_create: bool = True) -> None:
        if not 2 <= room_cap <= 64:
            raise ValueError(f"room cap {room_cap} out of range 2-64")
        self.room_cap = room_cap
        self.auto_create = auto_create
        self.live: dict[str, LiveSession] = {}  # by room
        self._where: dict[str, tuple[LiveSession, str]] = {}  # pid -> (session, participant)
        self.stats = {"relayed": 0, "refused": 0}

    def attach(self, controller: Controller) -> None:
        super().attach(controller)
        closed = self.controller.store.end_open_sessions(time.time())
        if closed:
            log.info("closed %d session(s) left open by an earlier run", closed)

    # --- the part's hooks ---------------------------------------------------------------------
    def subscriptions(self) -> Mapping[str, int]:
        return {self.controller.topics.all_meet_up: 1}

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        return {
            ApiOp.ROOM_CREATE: self._api_room_create,
            ApiOp.ROOM_RM: self._api_room_rm,
            ApiOp.ROOMS: self._api_rooms,
            ApiOp.SESSIONS: self._api_sessions,
            ApiOp.SAY: self._api_say,
            ApiOp.TRANSCRIBE: lambda r: transcripts.transcribe(self.controller.store, self.live, r),
            ApiOp.TRANSCRIPT: lambda r: transcripts.transcript(self.controller.store, r),
        }

    async def on_message(self, topic: str, payload: bytes) -> None:
        parsed = self.controller.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.MEET_UP:
            return
        pid = parsed.name
        try:
            message = decode_for(TopicKind.MEET_UP, payload)
        except ProtocolError as exc:
            await self._refuse(pid, "bad_request", exc.reason)
            raise
        if isinstance(message, MeetJoin):
            await self._join(pid, message)
        elif isinstance(message, MeetLeave):
            await self._leave(pid, tell_self=True)
        elif isinstance(message, MeetOffer | MeetAnswer):
            await self._relay_sdp(pid, message)
        elif isinstance(message, MeetSend):
            await self._relay_message(pid, message)

    async def on_synced(self) -> None:
        """Tell devices that report a session this server does not know (it restarted, or
        it closed the session while they were cut off) to join again."""
        known = {live.id for live in self.live.values()}
        for rec in list(self.controller.registry.devices.values()):
            meeting = rec.state.meeting if rec.state else None
            if rec.online and meeting and meeting.session and meeting.session not in known:
                await self._refuse(
                    rec.id, "session_lost", f"session {meeting.session} is over; join again"
                )

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        rec = self.controller.registry.devices.get(device_id)
        if device_id in self._where and (rec is None or not rec.online):
            log.info("%s went offline: removed from its session", device_id)
            await self._leave(device_id, tell_self=False)

    # --- signalling ---------------------------------------------------------------------------
    async def _join(self, pid: str, join: MeetJoin) -> None:
        if pid in self._where:
            await self._leave(pid, tell_self=False)
        cap = self._room_cap(join.room)
        if cap is None:
            await self._refuse(pid, "unknown_room", f"room {join.room!r} does not exist")
            return
        live = self.live.get(join.room)
        if live is not None and len(live.members) >= cap:
            await self._refuse(
                pid, "room_full", f"room {join.room!r} is at its cap of {cap} participants"
            )
            return
        now = time.time()
        if live is None:
            live = LiveSession(id=f"s-{uuid.uuid4().hex[:8]}", room=join.room, started=now)
            self.live[join.room] = live
            self.controller.store.start_session(live.id, live.room, now)
            await self._event(EventKind.SESSION_START, live, pid)
        member = Member(live.new_participant_id(), pid, join.caps, now)
        others = list(live.members.values())
        live.members[member.participant] = member
        self._where[pid] = (live, member.participant)
        self.controller.store.add_participant(live.id, member.participant, pid, now)
        await self._send(
            pid,
            MeetJoined(
                type="joined",
                room=live.room,
                session=live.id,
                participant=member.participant,
                peers=[m.info() for m in others],
            ),
        )
        for other in others:
            await self._send(other.pid, MeetPeerJoined(type="peer_joined", peer=member.info()))
        log.info("%s joined %s as %s (%s)", pid, live.room, member.participant, live.id)

    async def _leave(self, pid: str, tell_self: bool) -> None:
        where = self._where.pop(pid, None)
        if where is None:
            if tell_self:
                await self._send(pid, MeetLeft(type="left"))  # leaving twice is harmless
            return
        live, participant = where
        live.members.pop(participant, None)
        now = time.time()
        self.controller.store.remove_participant(live.id, participant, now)
        if tell_self:
            await self._send(pid, MeetLeft(type="left", session=live.id))
        for other in live.members.values():
            await self._send(other.pid, MeetPeerLeft(type="peer_left", participant=participant))
        if not live.members:
            self.live.pop(live.room, None)
            self.controller.store.end_session(live.id, now)
            await self._event(EventKind.SESSION_END, live, pid)
        log.info("%s left %s (%s)", pid, live.room, live.id)

    def _sender(self, pid: str) -> tuple[LiveSession, str] | None:
        return self._where.get(pid)

    async def _relay_sdp(self, pid: str, message: MeetOffer | MeetAnswer) -> None:
        target = await self._target(pid, message.to)
        if target is None:
            return
        _, sender, member = target
        relayed: Message
        if isinstance(message, MeetOffer):
            relayed = MeetRelayedOffer(type="offer", from_=sender, sdp=message.sdp)
        else:
            relayed = MeetRelayedAnswer(type="answer", from_=sender, sdp=message.sdp)
        self.stats["relayed"] += 1
        await self._send(member.pid, relayed)

    async def _relay_message(self, pid: str, message: MeetSend) -> None:
        if message.to is not None:
            target = await self._target(pid, message.to)
            if target is None:
                return
            _, sender, member = target
            receivers = [member]
        else:
            where = self._sender(pid)
            if where is None:
                await self._refuse(pid, "not_in_session", "send join first")
                return
            live, sender = where
            receivers = [m for p, m in live.members.items() if p != sender]
        delivered = MeetDelivered(
            type="message", from_=sender, text=message.text, data_b64=message.data_b64
        )
        for member in receivers:
            await self._send(member.pid, delivered)

    async def _target(self, pid: str, to: str) -> tuple[LiveSession, str, Member] | None:
        """The member `to` of the sender's session; refused (and None) otherwise."""
        where = self._sender(pid)
        if where is None:
            await self._refuse(pid, "not_in_session", "send join first")
            return None
        live, sender = where
        member = live.members.get(to)
        if member is None or to == sender:
            await self._refuse(pid, "unknown_participant", f"{to} is not in session {live.id}")
            return None
        return live, sender, member

    # --- the API ------------------------------------------------------------------------------
    async def _api_room_create(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        cap = request.cap or self.room_cap
        self.controller.store.save_room(request.room, cap)
        return ApiResult(
            op=ApiOp.ROOM_CREATE.value,
            ok=True,
            room=request.room,
            rooms=[self._room_info(request.room)],
        )

    async def _api_room_rm(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        op = ApiOp.ROOM_RM.value
        if self._room_cap(request.room, create=False) is None:
            return _refused(op, "unknown_room", f"room {request.room!r} does not exist")
        if request.room in self.live:
            return _refused(op, "room_busy", f"room {request.room!r} has a live session")
        self.controller.store.delete_room(request.room)
        return ApiResult(op=op, ok=True, room=request.room)

    async def _api_rooms(self, request: ApiRequest) -> ApiResult:
        names = [name for name, _, _ in self.controller.store.rooms()]
        # A room created on first join is stored then; a live one is always listed.
        names += [room for room in self.live if room not in names]
        return ApiResult(
            op=ApiOp.ROOMS.value, ok=True, rooms=[self._room_info(n) for n in sorted(names)[:256]]
        )

    async def _api_sessions(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        sessions = self.controller.store.sessions(request.room, request.limit)
        return ApiResult(op=ApiOp.SESSIONS.value, ok=True, room=request.room, sessions=sessions)

    async def _api_say(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        op = ApiOp.SAY.value
        live = self.live.get(request.room)
        if live is None:
            return _refused(op, "no_session", f"room {request.room!r} has no live session")
        delivered = MeetDelivered(type="message", from_=SERVER_PARTICIPANT, text=request.text)
        for member in live.members.values():
            await self._send(member.pid, delivered)
        return ApiResult(
            op=op, ok=True, room=request.room, detail=f"sent to {len(live.members)} member(s)"
        )

    # --- helpers ------------------------------------------------------------------------------
    def _room_cap(self, room: str, create: bool = True) -> int | None:
        for name, cap, _ in self.controller.store.rooms():
            if name == room:
                return cap
        if not (create and self.auto_create):
            return None
        self.controller.store.save_room(room, self.room_cap)
        return self.room_cap

    def _room_info(self, room: str) -> RoomInfo:
        stored = {name: (cap, created) for name, cap, created in self.controller.store.rooms()}
        cap, created = stored.get(room, (self.room_cap, time.time()))
        live = self.live.get(room)
        return RoomInfo(
            room=room,
            created=created,
            cap=cap,
            session=live.id if live else None,
            members=len(live.members) if live else 0,
        )

    async def _send(self, pid: str, message: Message) -> None:
        await self.controller.publish(self.controller.topics.meet_down(pid), encode(message))

    async def _refuse(self, pid: str, code: str, detail: str) -> None:
        self.stats["refused"] += 1
        log.info("meeting request from %s refused: %s: %s", pid, code, detail)
        await self._send(pid, MeetError(type="error", code=code, detail=detail[:256]))

    async def _event(self, kind: EventKind, live: LiveSession, pid: str) -> None:
        await self.controller.emit(
            FleetEvent(ts=time.time(), kind=kind, room=live.room, session=live.id, device=pid)
        )


def _refused(op: str, code: str, detail: str) -> ApiResult:
    return ApiResult(op=op, ok=False, code=code, detail=detail)
