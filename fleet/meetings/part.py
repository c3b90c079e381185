"""The meeting server: the controller part that owns rooms and sessions.

A participant (a device, an agent, a browser) talks to it on `meet/{pid}/up` and hears
back on `meet/{pid}/down` (docs/protocol.md §8). It admits joins (a room's cap and media
mode, the members' own peer limits), opens and ends sessions, dispatches the rest of a
member's messages to the mesh relay (fleet.meetings.relay) or, for the mixer, to the
mixed sessions (fleet.meetings.mixed), and serves the rooms, sessions, say and
transcript API ops. Live sessions are in memory (fleet.meetings.session); rooms and
every session's history are in the controller's SQLite file (fleet.meetings.records).

An `auto` room's session starts as a mesh and moves to mixed once it would grow past
the mesh cap.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from fleet.controller.parts import ControllerPart, submitted_by_part
from fleet.errors import ProtocolError, RequestRefused
from fleet.meetings import transcripts
from fleet.meetings.mixed import MixedSessions
from fleet.meetings.records import MeetingRecords
from fleet.meetings.relay import MeshRelay
from fleet.meetings.room import DEFAULT_RATE, DEFAULT_ROOM_CAP, Room
from fleet.meetings.session import Member, Roster, Session
from fleet.mixer.errors import MixerError
from fleet.mixer.pool import MixerPool
from fleet.protocol import TopicKind, decode_for, encode
from fleet.protocol.constants import CALL_ROOM_PREFIX
from fleet.protocol.constants import DEFAULT_MESH_CAP as DEFAULT_MESH_CAP
from fleet.protocol.messages import (
    MAX_LISTED_BYTES,
    MAX_ROOM_CAP,
    ApiOp,
    ApiRequest,
    ApiResult,
    Capabilities,
    EventKind,
    FleetEvent,
    MediaPath,
    MeetAnswer,
    MeetCandidate,
    MeetDelivered,
    MeetError,
    MeetJoin,
    MeetLeave,
    MeetLeft,
    MeetOffer,
    MeetPeerJoined,
    MeetPeerLeft,
    MeetReject,
    MeetSend,
    Message,
    OperatorKey,
    ParticipantRecord,
    RoomMedia,
    SessionEvent,
    SessionInfo,
)
from fleet.protocol.messages import MIXER_PARTICIPANT as MIXER

if TYPE_CHECKING:
    from fleet.controller.host import PartHost
    from fleet.controller.store import Store
    from fleet.registry import DeviceRecord

log = logging.getLogger(__name__)

# Rooms are rows a join could otherwise add without end.
DEFAULT_MAX_ROOMS = 1000
SERVER_PARTICIPANT = "server"  # `from` of messages sent by the CLI's `fleet say`


class MeetingServer(ControllerPart):
    name = "meetings"
    records: MeetingRecords  # set when attached to its controller

    def __init__(
        self,
        room_cap: int = DEFAULT_ROOM_CAP,
        auto_create: bool = False,
        mesh_cap: int = DEFAULT_MESH_CAP,
        mixers: Sequence[str] = (),
        mixer_timeout: float | None = None,
        max_rooms: int = DEFAULT_MAX_ROOMS,
        mixer_secret: str | None = None,
    ) -> None:
        if not 2 <= room_cap <= MAX_ROOM_CAP:
            raise ValueError(f"room cap {room_cap} out of range 2-{MAX_ROOM_CAP}")
        if not 2 <= mesh_cap <= MAX_ROOM_CAP:
            raise ValueError(f"mesh cap {mesh_cap} out of range 2-{MAX_ROOM_CAP}")
        self.room_cap = room_cap
        self.mesh_cap = mesh_cap
        # Rooms come from operators (room-create, and the room of an operator's join or
        # join-all); a participant's own join, or anyone's intent, creates one only when
        # this is set.
        self.auto_create = auto_create
        self.max_rooms = max_rooms
        self.roster = Roster()
        self.live: dict[str, Session] = self.roster.by_room
        self._where: dict[str, tuple[Session, str]] = self.roster.by_pid
        self.stats = {"relayed": 0, "refused": 0}
        self.relay = MeshRelay(self, self.stats)
        self.mixed = MixedSessions(
            self.roster,
            self,
            self.stats,
            muted=self._muted,
            join_failed=self._mixed_join_failed,
            mixers=mixers,
            mixer_timeout=mixer_timeout,
            mixer_secret=mixer_secret,
        )

    @property
    def pool(self) -> MixerPool:
        return self.mixed.pool

    def attach(self, host: PartHost) -> None:
        super().attach(host)
        self.records = self.mixed.records = MeetingRecords(self._store())
        self._operator_key = self.records.operator_key()
        closed = self.records.end_open_sessions(time.time())
        if closed:
            log.info("closed %d session(s) left open by an earlier run", closed)

    async def run(self) -> None:
        self.mixed.start()

    async def close(self) -> None:
        await self.mixed.close()

    # --- the part's hooks ---------------------------------------------------------------------
    def subscriptions(self) -> Mapping[str, int]:
        return {self._meet_up_filter(): 1}

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        return {
            ApiOp.ROOM_CREATE: self._api_room_create,
            ApiOp.ROOM_RM: self._api_room_rm,
            ApiOp.ROOMS: self._api_rooms,
            ApiOp.SESSIONS: self._api_sessions,
            ApiOp.SAY: self._api_say,
            ApiOp.TRANSCRIBE: lambda r: transcripts.transcribe(self.records, self.live, r),
            ApiOp.TRANSCRIPT: lambda r: transcripts.transcript(self.records, r),
        }

    async def on_connect(self) -> None:
        # Retained for controller-role readers only (the ACL): the proof an operator's
        # intent carries. Published again on every connect (the broker may have lost it).
        key = encode(OperatorKey(key=self._operator_key))
        # Acknowledged before the controller counts as connected: a client that syncs after
        # that holds the key.
        await self.host.publish(self.host.topics.operator_key, key, qos=1, retain=True, wait=True)

    async def before_intent(self, room: str, request: ApiRequest | None) -> None:
        """A join or join-all intent names its room. An unknown room is created here,
        before any device's join for it can arrive, when the server creates rooms on
        joins (`auto_create`) or the intent is an operator's (it carries the operator key
        only controller-role users can read, or it is the controller's own or one a part
        submitted, such as Home Assistant's entity presses, which that part limits to
        rooms it knows); otherwise the intent is refused, as a participant's own join
        would be."""
        if self.records.room(room) is not None:
            return
        if _reserved(room):
            raise RequestRefused(
                "unknown_room", f"room {room!r} does not exist (calls make their own rooms)"
            )
        if not (self.auto_create or self._from_operator(request)):
            raise RequestRefused(
                "unknown_room",
                f"room {room!r} does not exist: an operator creates it "
                f"(`fleet rooms create {room}`, or `fleet join-all {room}`)",
            )
        self._room(room, create=True)  # past the room limit: not made (joins get unknown_room)

    def _from_operator(self, request: ApiRequest | None) -> bool:
        if request is None or submitted_by_part():  # the controller's own, or a part's
            return True
        given = request.operator_key
        return given is not None and hmac.compare_digest(given, self._operator_key)

    async def on_message(self, topic: str, payload: bytes) -> None:
        pid = self._meet_up_pid(topic)
        if pid is None:
            return
        try:
            message = decode_for(TopicKind.MEET_UP, payload)
        except ProtocolError as exc:
            await self.refuse(pid, "bad_request", exc.reason)
            raise
        if isinstance(message, MeetJoin):
            await self._join(pid, message)
            return
        if isinstance(message, MeetLeave):
            await self._leave(pid, tell_self=True)
            return
        where = self.roster.where(pid)
        if where is None:
            await self.refuse(pid, "not_in_session", "send join first")
            return
        live, sender = where
        if isinstance(message, MeetOffer | MeetAnswer):
            if message.to == MIXER:
                await self.mixed.offer(pid, live, sender, message)
            else:
                await self.relay.sdp(pid, live, sender, message)
        elif isinstance(message, MeetCandidate):
            if message.to == MIXER:
                await self.mixed.candidate(pid, live, sender, message)
            else:
                await self.relay.candidate(pid, live, sender, message)
        elif isinstance(message, MeetSend):
            await self.relay.message(pid, live, sender, message)
        elif isinstance(message, MeetReject):
            await self.relay.reject(pid, live, sender, message)

    async def on_synced(self) -> None:
        """Tell devices that report a session this server does not know (it restarted, or
        it closed the session while they were cut off) to join again."""
        known = {live.id for live in self.roster}
        for rec in self._devices():
            meeting = rec.state.meeting if rec.state else None
            if rec.online and meeting and meeting.session and meeting.session not in known:
                await self.refuse(
                    rec.id, "session_lost", f"session {meeting.session} is over; join again"
                )

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        rec = self._device(device_id)
        where = self.roster.where(device_id)
        if where is not None and (rec is None or not rec.online):
            log.info("%s went offline: removed from its session", device_id)
            await self._leave(device_id, tell_self=False)
            return
        if where is not None and where[0].media is MediaPath.MIXED:
            self.mixed.mic_changed(where[0], where[1], self._muted(device_id))

    # --- joining and leaving ------------------------------------------------------------------
    async def _join(self, pid: str, join: MeetJoin) -> None:
        if self.roster.where(pid) is not None:
            await self._leave(pid, tell_self=False)
        room = self._room(join.room, create=self.auto_create and not _reserved(join.room))
        if room is None:
            await self.refuse(
                pid,
                "unknown_room",
                f"room {join.room!r} does not exist: `fleet rooms create {join.room}`",
            )
            return
        if not room.admits(pid):
            await self.refuse(
                pid, "private_room", f"room {join.room!r} is a private call: members only"
            )
            return
        live = self.live.get(join.room)
        if live is not None and len(live.members) >= room.cap:
            await self.refuse(
                pid, "room_full", f"room {join.room!r} is at its cap of {room.cap} participants"
            )
            return
        count = len(live.members) + 1 if live else 1
        mesh_cap = self._mesh_cap(live, join.caps)
        mixed = room.media is RoomMedia.MIXED or (
            live is not None and live.media is MediaPath.MIXED
        )
        grows_past = not mixed and count > mesh_cap
        if grows_past and room.media is RoomMedia.MESH:
            await self.refuse(
                pid,
                "room_full",
                f"room {join.room!r} is a mesh room at its mesh cap of {mesh_cap} participants",
            )
            return
        mixer = None
        if mixed or grows_past:
            try:
                mixer = self.mixed.pick() if live is None or live.mixer is None else None
            except MixerError as exc:
                if grows_past:
                    detail = f"the session would pass the mesh cap of {mesh_cap}; {exc}"
                else:
                    detail = str(exc)
                await self.refuse(pid, exc.code, detail)
                return
        now = time.time()
        if live is None:
            live = Session(id=f"s-{uuid.uuid4().hex[:8]}", room=room, started=now)
            self.roster.open(live)
            self.records.start_session(live.id, room.name, now)
            await self.emit(live.event(EventKind.SESSION_START, pid))
        member = Member(live.new_participant_id(), pid, join.caps, now)
        others = list(live.members.values())
        self.roster.admit(live, member)
        self.records.add_member(live.id, member.participant, pid, now)
        log.info("%s joined %s as %s (%s)", pid, room.name, member.participant, live.id)
        if grows_past:
            assert mixer is not None
            self.mixed.go_mixed(live, mixer, f"{count} members past the mesh cap of {mesh_cap}")
        elif mixed and live.media is MediaPath.MESH:  # a new session of a mixed room
            assert mixer is not None
            live.media = MediaPath.MIXED
            self.mixed.place(live, mixer)
        if live.media is MediaPath.MIXED:
            self.mixed.welcome(live, member)
            return
        await self.send(pid, live.joined(member, [m.info() for m in others]))
        for other in others:
            await self.send(other.pid, MeetPeerJoined(type="peer_joined", peer=member.info()))

    async def _leave(self, pid: str, tell_self: bool) -> None:
        where = self.roster.remove(pid)
        if where is None:
            if tell_self:
                await self.send(pid, MeetLeft(type="left"))  # leaving twice is harmless
            return
        live, participant = where
        now = time.time()
        self.records.remove_member(live.id, participant, now)
        if tell_self:
            await self.send(pid, MeetLeft(type="left", session=live.id))
        self.mixed.member_left(live, participant)
        if live.media is MediaPath.MESH:
            for other in live.members.values():
                await self.send(other.pid, MeetPeerLeft(type="peer_left", participant=participant))
        if not live.members:
            self.roster.end(live)
            self.records.end_session(live.id, now)
            self.mixed.session_ended(live)
            await self.emit(live.event(EventKind.SESSION_END, pid))
        log.info("%s left %s (%s)", pid, live.room.name, live.id)

    async def _mixed_join_failed(self, pid: str, exc: MixerError) -> None:
        await self._leave(pid, tell_self=False)
        await self.refuse(pid, exc.code, str(exc))

    def _mesh_cap(self, live: Session | None, caps: Capabilities | None) -> int:
        """Members a mesh session may hold: the server's mesh cap, or fewer when a member
        (or the newcomer) holds fewer peer connections (`caps.max_peers`)."""
        limits = [self.mesh_cap]
        members = list(live.members.values()) if live else []
        for c in [caps, *(m.caps for m in members)]:
            if c is not None and c.max_peers is not None:
                limits.append(c.max_peers + 1)
        return min(limits)

    # --- rooms --------------------------------------------------------------------------------
    def room_members(self, room: str) -> list[str] | None:
        """The pids in `room`'s live session ([] when none is live); None when there is no
        such room (what an announcement to a room reaches, fleet.announce)."""
        live = self.live.get(room)
        if live is not None:
            return [member.pid for member in live.members.values()]
        return [] if self._room(room) is not None else None

    def _room(self, name: str, create: bool = False) -> Room | None:
        """The room, or (with `create`, within the server's room limit) a new one with the
        server's cap; None otherwise."""
        room = self.records.room(name)
        if room is not None or not create or self._full():
            return room
        return self.records.save_room(Room(name, cap=self.room_cap))

    def _full(self) -> bool:
        return self.records.room_count() >= self.max_rooms

    def _full_detail(self) -> str:
        return f"the server holds its limit of {self.max_rooms} rooms; remove one first"

    # --- the API ------------------------------------------------------------------------------
    async def _api_room_create(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        existing = self.records.room(request.room)
        if _reserved(request.room):
            return _refused(
                ApiOp.ROOM_CREATE.value,
                "reserved_room",
                f"room names starting {CALL_ROOM_PREFIX!r} are for calls (`fleet call`)",
            )
        if existing is None and self._full():
            return _refused(ApiOp.ROOM_CREATE.value, "too_many_rooms", self._full_detail())
        room = self.records.save_room(
            Room(
                request.room,
                cap=request.cap or self.room_cap,
                media=request.media or (existing.media if existing else RoomMedia.AUTO),
                rate=request.rate or (existing.rate if existing else DEFAULT_RATE),
            )
        )
        return ApiResult(
            op=ApiOp.ROOM_CREATE.value,
            ok=True,
            room=request.room,
            rooms=[room.info(self.live.get(room.name))],
        )

    async def _api_room_rm(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        op = ApiOp.ROOM_RM.value
        if self._room(request.room) is None:
            return _refused(op, "unknown_room", f"room {request.room!r} does not exist")
        if request.room in self.live:
            return _refused(op, "room_busy", f"room {request.room!r} has a live session")
        self.records.delete_room(request.room)
        return ApiResult(op=op, ok=True, room=request.room)

    async def _api_rooms(self, request: ApiRequest) -> ApiResult:
        # One page by name, after `after`; `next` is where the following page starts.
        rooms = self.records.rooms(after=request.after, limit=request.limit + 1)
        more = len(rooms) > request.limit
        rooms = rooms[: request.limit]
        return ApiResult(
            op=ApiOp.ROOMS.value,
            ok=True,
            rooms=[room.info(self.live.get(room.name)) for room in rooms],
            next=rooms[-1].name if more else None,
        )

    async def _api_sessions(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        sessions = _fit(self.records.sessions(request.room, request.limit))
        if not sessions and self._room(request.room) is None:
            return _refused(
                ApiOp.SESSIONS.value, "unknown_room", f"room {request.room!r} does not exist"
            )
        return ApiResult(op=ApiOp.SESSIONS.value, ok=True, room=request.room, sessions=sessions)

    async def _api_say(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        op = ApiOp.SAY.value
        live = self.live.get(request.room)
        if live is None:
            return _refused(op, "no_session", f"room {request.room!r} has no live session")
        delivered = MeetDelivered(type="message", from_=SERVER_PARTICIPANT, text=request.text)
        for member in live.members.values():
            await self.send(member.pid, delivered)
        return ApiResult(
            op=op, ok=True, room=request.room, detail=f"sent to {len(live.members)} member(s)"
        )

    # --- the outbox (fleet.meetings.outbox) ---------------------------------------------------
    async def refuse(self, pid: str, code: str, detail: str) -> None:
        self.stats["refused"] += 1
        log.info("meeting request from %s refused: %s: %s", pid, code, detail)
        await self.send(pid, MeetError(type="error", code=code, detail=detail[:256]))

    def _muted(self, pid: str) -> bool:
        """A member is muted in the mix when its device reports `mic: false` (agents, with
        no device state, never are)."""
        rec = self._device(pid)
        return bool(rec and rec.state and rec.state.mic is False)

    # --- the host: every use of it is here ----------------------------------------------
    def _store(self) -> Store:
        return self.host.store

    def _meet_up_filter(self) -> str:
        return self.host.topics.all_meet_up

    def _meet_up_pid(self, topic: str) -> str | None:
        """The pid of a `meet/{pid}/up` topic; None for any other."""
        parsed = self.host.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.MEET_UP:
            return None
        return parsed.name

    async def send(self, pid: str, message: Message) -> None:
        await self.host.publish(self.host.topics.meet_down(pid), encode(message))

    async def emit(self, event: FleetEvent) -> None:
        await self.host.emit(event)

    def _device(self, device_id: str) -> DeviceRecord | None:
        return self.host.registry.devices.get(device_id)

    def _devices(self) -> list[DeviceRecord]:
        return list(self.host.registry.devices.values())


def _reserved(room: str) -> bool:
    """A call's room name: made by the intercom only, never by a join or room-create."""
    return room.startswith(CALL_ROOM_PREFIX)


def _refused(op: str, code: str, detail: str) -> ApiResult:
    return ApiResult(op=op, ok=False, code=code, detail=detail)


def _fit(sessions: list[SessionInfo], budget: int = MAX_LISTED_BYTES) -> list[SessionInfo]:
    """The newest sessions that fit `budget` encoded bytes: a 256-member room's history
    would pass the payload limit. Within a session, events and then the latest joiners
    go first; what is left out is counted in `omitted`."""
    out: list[SessionInfo] = []
    for info in sessions:
        room = budget - sum(len(encode(s)) for s in out)
        while len(encode(info)) > room and (info.events or info.participants):
            kept: list[SessionEvent] | list[ParticipantRecord]
            if info.events:  # the newest half stays
                field, kept = "events", info.events[len(info.events) // 2 + 1 :]
            else:  # the first half to join stays
                field, kept = "participants", info.participants[: len(info.participants) // 2]
            dropped = len(getattr(info, field)) - len(kept)
            info = info.model_copy(update={field: kept, "omitted": info.omitted + dropped})
        if len(encode(info)) > room:
            break
        out.append(info)
    return out
