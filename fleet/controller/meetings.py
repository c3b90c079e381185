"""The meeting server: rooms, sessions, participants, and the signalling relay.

It runs inside the controller as a part. A participant (a device or an agent)
talks to it on `meet/{pid}/up` and hears back on `meet/{pid}/down`
(docs/protocol.md §8). Live membership is in memory; rooms and every
session's history are in the controller's SQLite store. SDP and messages are
relayed only between members of the same live session.

A session's media path is a mesh (members connect to each other) or mixed (each
member connects to a Janus AudioBridge, the mixer, and hears the mix of the others).
An `auto` room's session starts as a mesh and moves to mixed once it would grow past
the mesh cap; the mixer's work (room, one handle per member, mutes, failover) is
driven from here through fleet.mixer, in tasks: the MQTT loop never waits on Janus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.controller import transcripts
from fleet.controller.media_records import MediaRecords
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError
from fleet.mixer.audiobridge import BridgeMember
from fleet.mixer.errors import MixerError, MixerUnavailable
from fleet.mixer.pool import Mixer, MixerPool
from fleet.protocol import TopicKind, decode_for, encode
from fleet.protocol.constants import DEFAULT_MESH_CAP, DEFAULT_ROOM_CAP
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
    MeetJoined,
    MeetLeave,
    MeetLeft,
    MeetMedia,
    MeetOffer,
    MeetPeerJoined,
    MeetPeerLeft,
    MeetReject,
    MeetRelayedAnswer,
    MeetRelayedCandidate,
    MeetRelayedOffer,
    MeetSend,
    Message,
    PeerInfo,
    RoomInfo,
    RoomMedia,
    SessionInfo,
)
from fleet.protocol.messages import MIXER_PARTICIPANT as MIXER

if TYPE_CHECKING:
    from fleet.controller.service import Controller

log = logging.getLogger(__name__)

# Rooms are rows a join could otherwise add without end: a cap bounds the store.
DEFAULT_MAX_ROOMS = 1000
# Trickled candidates held per member while its offer reaches the mixer (a browser
# sends a handful; more is a misbehaving client).
MAX_EARLY_CANDIDATES = 32
SERVER_PARTICIPANT = "server"  # `from` of messages sent by the CLI's `fleet say`
MIXER_CAPS = Capabilities(audio=True, mic=True, speaker=True, codecs=["opus", "pcmu", "pcma"])


@dataclass(frozen=True)
class RoomSettings:
    cap: int
    media: RoomMedia
    rate: int


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
    settings: RoomSettings | None = None
    media: MediaPath = MediaPath.MESH
    mixer: str | None = None  # the mixer's name while mixed (None: none reachable)
    # Done once the AudioBridge room exists on `mixer`; offers and joins wait for it.
    ready: asyncio.Future[None] | None = None
    bridge: dict[str, BridgeMember] = field(default_factory=dict)  # by participant id
    # Trickled candidates for the mixer that came before the member's handle existed.
    early_candidates: dict[str, list[MeetCandidate]] = field(default_factory=dict)
    offers: dict[str, int] = field(default_factory=dict)  # offers to the mixer, per member

    def new_participant_id(self) -> str:
        pid = f"p-{self.next_number}"
        self.next_number += 1
        return pid


class MeetingServer(ControllerPart):
    name = "meetings"

    def __init__(
        self,
        room_cap: int = DEFAULT_ROOM_CAP,
        auto_create: bool = False,
        mesh_cap: int = DEFAULT_MESH_CAP,
        mixers: Sequence[str] = (),
        mixer_timeout: float | None = None,
        max_rooms: int = DEFAULT_MAX_ROOMS,
    ) -> None:
        if not 2 <= room_cap <= MAX_ROOM_CAP:
            raise ValueError(f"room cap {room_cap} out of range 2-{MAX_ROOM_CAP}")
        if not 2 <= mesh_cap <= MAX_ROOM_CAP:
            raise ValueError(f"mesh cap {mesh_cap} out of range 2-{MAX_ROOM_CAP}")
        self.room_cap = room_cap
        self.mesh_cap = mesh_cap
        # Rooms come from operators and the API (room-create, and the room of a join or
        # join-all request); a participant's own join creates one only when this is set.
        self.auto_create = auto_create
        self.max_rooms = max_rooms
        self.live: dict[str, LiveSession] = {}  # by room
        self._where: dict[str, tuple[LiveSession, str]] = {}  # pid -> (session, participant)
        self.stats = {"relayed": 0, "refused": 0}
        self.pool = MixerPool(
            mixers,
            on_lost=self._mixer_lost,
            on_up=self._mixer_up,
            on_event=self._mixer_event,
            request_timeout=mixer_timeout,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, controller: Controller) -> None:
        super().attach(controller)
        self.records = MediaRecords(controller.store)
        closed = self.controller.store.end_open_sessions(time.time())
        if closed:
            log.info("closed %d session(s) left open by an earlier run", closed)

    async def run(self) -> None:
        self.pool.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for live in list(self.live.values()):
            await self._destroy_mixer_room(live)
        await self.pool.close()

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
        elif isinstance(message, MeetCandidate):
            await self._relay_candidate(pid, message)
        elif isinstance(message, MeetSend):
            await self._relay_message(pid, message)
        elif isinstance(message, MeetReject):
            await self._relay_reject(pid, message)

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

    async def on_event(self, event: FleetEvent) -> None:
        # A join or join-all request names its room: the API may create it (before any
        # device's join for it can arrive: the event comes as the intent is written).
        if event.kind == EventKind.JOIN and event.room is not None:
            self._room_settings(event.room, create=True)

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        rec = self.controller.registry.devices.get(device_id)
        if device_id in self._where and (rec is None or not rec.online):
            log.info("%s went offline: removed from its session", device_id)
            await self._leave(device_id, tell_self=False)
            return
        where = self._where.get(device_id)
        if where is not None and where[0].media is MediaPath.MIXED:
            live, participant = where
            entry = live.bridge.get(participant)
            if entry is not None and entry.muted != self._muted(device_id):
                self._spawn(self._configure(live, entry, self._muted(device_id)))

    # --- signalling ---------------------------------------------------------------------------
    async def _join(self, pid: str, join: MeetJoin) -> None:
        if pid in self._where:
            await self._leave(pid, tell_self=False)
        settings = self._room_settings(join.room, create=self.auto_create)
        if settings is None:
            await self._refuse(
                pid,
                "unknown_room",
                f"room {join.room!r} does not exist: `fleet rooms create {join.room}`",
            )
            return
        live = self.live.get(join.room)
        if live is not None and len(live.members) >= settings.cap:
            await self._refuse(
                pid,
                "room_full",
                f"room {join.room!r} is at its cap of {settings.cap} participants",
            )
            return
        count = len(live.members) + 1 if live else 1
        mesh_cap = self._mesh_cap(live, join.caps)
        mixed = settings.media is RoomMedia.MIXED or (
            live is not None and live.media is MediaPath.MIXED
        )
        grows_past = not mixed and count > mesh_cap
        if grows_past and settings.media is RoomMedia.MESH:
            await self._refuse(
                pid,
                "room_full",
                f"room {join.room!r} is a mesh room at its mesh cap of {mesh_cap} participants",
            )
            return
        if mixed or grows_past:
            try:
                mixer = self._pick_mixer() if live is None or live.mixer is None else None
            except MixerError as exc:
                if grows_past:
                    detail = f"the session would pass the mesh cap of {mesh_cap}; {exc}"
                else:
                    detail = str(exc)
                await self._refuse(pid, exc.code, detail)
                return
        now = time.time()
        if live is None:
            live = LiveSession(
                id=f"s-{uuid.uuid4().hex[:8]}", room=join.room, started=now, settings=settings
            )
            self.live[join.room] = live
            self.controller.store.start_session(live.id, live.room, now)
            self.records.set_media(live.id, MediaPath.MESH, None)
            await self._event(EventKind.SESSION_START, live, pid)
        member = Member(live.new_participant_id(), pid, join.caps, now)
        others = list(live.members.values())
        live.members[member.participant] = member
        self._where[pid] = (live, member.participant)
        self.controller.store.add_participant(live.id, member.participant, pid, now)
        log.info("%s joined %s as %s (%s)", pid, live.room, member.participant, live.id)
        if grows_past:
            assert mixer is not None
            self._go_mixed(live, mixer, f"{count} members past the mesh cap of {mesh_cap}")
        elif mixed and live.media is MediaPath.MESH:  # a new session of a mixed room
            assert mixer is not None
            live.media = MediaPath.MIXED
            self._place(live, mixer)
        if live.media is MediaPath.MIXED:
            # Told once the mixer's room exists (or that it could not be made).
            self._spawn(self._joined_mixed(live, member))
            return
        await self._send(pid, self._joined(live, member, [m.info() for m in others]))
        for other in others:
            await self._send(other.pid, MeetPeerJoined(type="peer_joined", peer=member.info()))

    def _joined(self, live: LiveSession, member: Member, peers: list[PeerInfo]) -> MeetJoined:
        return MeetJoined(
            type="joined",
            room=live.room,
            session=live.id,
            participant=member.participant,
            peers=peers,
            media=live.media,
        )

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
        live.early_candidates.pop(participant, None)
        live.offers.pop(participant, None)
        entry = live.bridge.pop(participant, None)
        if entry is not None:
            self._spawn(self._bridge_leave(live, entry))
        if live.media is MediaPath.MESH:
            for other in live.members.values():
                await self._send(other.pid, MeetPeerLeft(type="peer_left", participant=participant))
        if not live.members:
            self.live.pop(live.room, None)
            self.controller.store.end_session(live.id, now)
            self.records.forget_session(live.id)
            if live.media is MediaPath.MIXED:
                self._spawn(self._destroy_mixer_room(live))
            await self._event(EventKind.SESSION_END, live, pid)
        log.info("%s left %s (%s)", pid, live.room, live.id)

    def _sender(self, pid: str) -> tuple[LiveSession, str] | None:
        return self._where.get(pid)

    async def _relay_sdp(self, pid: str, message: MeetOffer | MeetAnswer) -> None:
        if message.to == MIXER:
            await self._to_mixer(pid, message)
            return
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

    async def _relay_candidate(self, pid: str, message: MeetCandidate) -> None:
        """Trickle ICE: like an answer, only to a member of the sender's session (or to
        the session's mixer, which gets it as a Janus `trickle`)."""
        if message.to == MIXER:
            where = await self._mixed_sender(pid)
            if where is None:
                return
            live, participant = where
            self.stats["relayed"] += 1
            entry = live.bridge.get(participant)
            if entry is None:  # its offer is still on the way to Janus
                early = live.early_candidates.setdefault(participant, [])
                if len(early) < MAX_EARLY_CANDIDATES:
                    early.append(message)
                return
            self._spawn(self._trickle(live, entry, [message]))
            return
        target = await self._target(pid, message.to)
        if target is None:
            return
        _, sender, member = target
        self.stats["relayed"] += 1
        relayed = MeetRelayedCandidate(
            type="candidate", from_=sender, candidate=message.candidate, mid=message.mid
        )
        await self._send(member.pid, relayed)

    async def _trickle(
        self, live: LiveSession, entry: BridgeMember, candidates: list[MeetCandidate]
    ) -> None:
        mixer = self.pool.get(live.mixer or "")
        if mixer is None or mixer.bridge is None:
            return
        try:
            for c in candidates:
                await mixer.bridge.trickle(entry, c.candidate, c.mid)
        except MixerError as exc:
            member = live.members.get(entry.id)
            if member is not None:
                await self._mixer_error(member.pid, exc)

    async def _relay_reject(self, pid: str, reject: MeetReject) -> None:
        """A participant could not negotiate with `to`: `to` hears it as an error from it."""
        target = await self._target(pid, reject.to)
        if target is None:
            return
        _, sender, member = target
        self.stats["relayed"] += 1
        await self._send(
            member.pid,
            MeetError(type="error", code=reject.code, detail=reject.detail, from_=sender),
        )

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

    # --- the mixed path -----------------------------------------------------------------------
    def _mesh_cap(self, live: LiveSession | None, caps: Capabilities | None) -> int:
        """Members a mesh session may hold: the server's mesh cap, or fewer when a member
        (or the newcomer) holds fewer peer connections (`caps.max_peers`)."""
        limits = [self.mesh_cap]
        members = list(live.members.values()) if live else []
        for c in [caps, *(m.caps for m in members)]:
            if c is not None and c.max_peers is not None:
                limits.append(c.max_peers + 1)
        return min(limits)

    def _pick_mixer(self, exclude: str | None = None) -> Mixer:
        def load(mixer: Mixer) -> int:
            return sum(len(s.members) for s in self.live.values() if s.mixer == mixer.name)

        return self.pool.pick(load, exclude=exclude)

    def _go_mixed(self, live: LiveSession, mixer: Mixer, why: str) -> None:
        """Move the session to `mixer`: its room is made in a task; members already in the
        session renegotiate (MeetMedia) once it exists."""
        live.media = MediaPath.MIXED
        detail = f"mesh -> mixed: {why}"
        self._history(live, "media", None, detail)
        self._spawn(self._event(EventKind.MEDIA, live, None, detail))
        self._place(live, mixer)
        newcomer = list(live.members)[-1]
        existing = [m for p, m in live.members.items() if p != newcomer]
        self._spawn(self._tell_media(live, existing, from_mesh=True))

    def _place(self, live: LiveSession, mixer: Mixer) -> None:
        live.mixer = mixer.name
        live.bridge.clear()
        live.ready = asyncio.create_task(self._make_room(live, mixer), name=f"room-{live.id}")
        live.ready.add_done_callback(_consume)
        self.records.set_media(live.id, live.media, mixer.name)

    async def _make_room(self, live: LiveSession, mixer: Mixer) -> None:
        if mixer.bridge is None:
            raise MixerUnavailable(mixer.name, "not connected")
        assert live.settings is not None
        await mixer.bridge.create_room(live.id, live.settings.rate)
        self._history(live, "mixer", None, f"on {mixer.name} at {live.settings.rate} Hz")

    async def _joined_mixed(self, live: LiveSession, member: Member) -> None:
        try:
            await self._wait_ready(live)
        except MixerError as exc:
            if self._where.get(member.pid) == (live, member.participant):
                await self._leave(member.pid, tell_self=False)
                await self._refuse(member.pid, exc.code, str(exc))
            return
        if self._where.get(member.pid) == (live, member.participant):
            await self._send(member.pid, self._joined(live, member, [self._mixer_info(live)]))

    async def _tell_media(
        self, live: LiveSession, members: list[Member], from_mesh: bool = False
    ) -> None:
        """After the room exists: every member in `members` drops its peers and offers to
        the mixer. A mixer that could not make the room is reported to each as an error;
        a session that was moving from its mesh stays a mesh (its members still hold it)."""
        try:
            await self._wait_ready(live)
        except MixerError as exc:
            if from_mesh:
                live.media, live.mixer, live.ready = MediaPath.MESH, None, None
                self.records.set_media(live.id, MediaPath.MESH, None)
                self._history(live, "media", None, f"stays mesh: {exc}")
            for member in members:
                await self._mixer_error(member.pid, exc)
            return
        media = MeetMedia(type="media", media=live.media, peers=[self._mixer_info(live)])
        for member in members:
            if live.members.get(member.participant) is member:
                await self._send(member.pid, media)

    async def _wait_ready(self, live: LiveSession) -> None:
        while True:
            ready = live.ready
            if ready is None:
                raise MixerUnavailable("none", "the session has no mixer now")
            try:
                await asyncio.shield(ready)
            except MixerError:
                if live.ready is ready or live.ready is None:  # not moved: this is the answer
                    raise
            if live.ready is ready:  # not moved to another mixer meanwhile
                return

    def _mixer_info(self, live: LiveSession) -> PeerInfo:
        return PeerInfo(participant=MIXER, pid=live.mixer or "mixer", caps=MIXER_CAPS)

    async def _mixed_sender(self, pid: str) -> tuple[LiveSession, str] | None:
        """The sender's mixed session and participant id; refused (and None) otherwise."""
        where = self._sender(pid)
        if where is None:
            await self._refuse(pid, "not_in_session", "send join first")
            return None
        live, _ = where
        if live.media is not MediaPath.MIXED:
            await self._refuse(pid, "unknown_participant", f"session {live.id} has no mixer")
            return None
        return where

    async def _to_mixer(self, pid: str, message: MeetOffer | MeetAnswer) -> None:
        where = await self._mixed_sender(pid)
        if where is None:
            return
        live, participant = where
        if isinstance(message, MeetAnswer):
            await self._refuse(pid, "bad_request", "the mixer takes offers, it never offers")
            return
        # Imported here: aiortc loads only once a session is mixed.
        from fleet.media import sdp as sdp_check
        from fleet.media.errors import MediaError

        try:
            offered = sdp_check.codec_names(
                sdp_check.parse_remote(participant, message.sdp, "offer")
            )
        except MediaError as exc:
            await self._refuse(pid, "bad_request", str(exc))
            return
        codec = next((c for c in ("opus", "pcmu", "pcma") if c in offered), None)
        if codec is None:
            await self._refuse(
                pid, "bad_request", f"the mixer mixes opus, pcmu, pcma; offered {offered}"
            )
            return
        self.stats["relayed"] += 1
        # From now on this member's candidates belong to the new offer: held until its
        # handle exists (the old handle, if any, goes).
        old = live.bridge.pop(participant, None)
        live.early_candidates[participant] = []
        live.offers[participant] = live.offers.get(participant, 0) + 1
        self._spawn(self._bridge_join(live, participant, message.sdp, codec, old))

    async def _bridge_join(
        self,
        live: LiveSession,
        participant: str,
        sdp: str,
        codec: str,
        old: BridgeMember | None = None,
    ) -> None:
        member = live.members.get(participant)
        number = live.offers.get(participant)
        if member is None:
            if old is not None:
                await self._bridge_leave(live, old)
            return
        try:
            await self._wait_ready(live)
            mixer = self.pool.get(live.mixer or "")
            if mixer is None or mixer.bridge is None:
                raise MixerUnavailable(live.mixer or "none", "not connected")
            ready = live.ready
            if old is not None:
                await mixer.bridge.leave(old)
            muted = self._muted(member.pid)
            entry, answer = await mixer.bridge.join(
                live.id, participant, member.pid, sdp, codec, muted
            )
        except MixerError as exc:
            await self._mixer_error(member.pid, exc)
            return
        if (
            live.members.get(participant) is not member
            or live.ready is not ready
            or live.offers.get(participant) != number
        ):
            # It left, the session moved, or it offered again, meanwhile.
            await mixer.bridge.leave(entry)
            return
        live.bridge[participant] = entry
        early = live.early_candidates.pop(participant, [])
        if early:
            self._spawn(self._trickle(live, entry, early))
        self._history(
            live,
            "mixer_join",
            participant,
            f"{member.pid} via {codec}" + (", muted" if muted else ""),
        )
        await self._send(member.pid, MeetRelayedAnswer(type="answer", from_=MIXER, sdp=answer))

    async def _bridge_leave(self, live: LiveSession, entry: BridgeMember) -> None:
        mixer = self.pool.get(live.mixer or "")
        if mixer is not None and mixer.bridge is not None:
            await mixer.bridge.leave(entry)
        self._history(live, "mixer_leave", entry.id, None)

    async def _configure(self, live: LiveSession, entry: BridgeMember, muted: bool) -> None:
        mixer = self.pool.get(live.mixer or "")
        if mixer is None or mixer.bridge is None:
            return
        try:
            await mixer.bridge.configure(entry, muted)
        except MixerError as exc:
            log.warning("cannot %s %s: %s", "mute" if muted else "unmute", entry.id, exc)
            return
        self._history(live, "muted" if muted else "unmuted", entry.id, None)

    def _muted(self, pid: str) -> bool:
        """A member is muted in the mix when its device reports `mic: false` (agents, with
        no device state, never are)."""
        rec = self.controller.registry.devices.get(pid)
        return bool(rec and rec.state and rec.state.mic is False)

    async def _destroy_mixer_room(self, live: LiveSession) -> None:
        mixer = self.pool.get(live.mixer or "")
        if mixer is None or mixer.bridge is None or live.ready is None:
            return
        try:
            await mixer.bridge.destroy_room(live.id)
        except MixerError as exc:
            log.info("room %s on %s not destroyed: %s", live.id, mixer.name, exc)

    async def _mixer_error(self, pid: str, exc: MixerError) -> None:
        log.warning("mixer error for %s: %s", pid, exc)
        await self._send(
            pid, MeetError(type="error", code=exc.code, detail=str(exc)[:256], from_=MIXER)
        )

    def _mixer_lost(self, mixer: Mixer) -> None:
        reason = mixer.error.reason if mixer.error else "lost"
        self._spawn(self._mixer_news(mixer, False, f"{mixer.name} down: {reason}"))
        for live in list(self.live.values()):
            if live.mixer == mixer.name:
                self._move(live, f"{mixer.name} lost")

    def _mixer_up(self, mixer: Mixer) -> None:
        self._spawn(self._mixer_news(mixer, True, f"{mixer.name} up at {mixer.url}"))
        self._spawn(self._sweep(mixer))
        for live in list(self.live.values()):
            if live.media is MediaPath.MIXED and live.mixer is None:
                self._move(live, f"{mixer.name} is up")

    def _move(self, live: LiveSession, why: str) -> None:
        """The session's mixer is gone: on to another one, every member renegotiating."""
        old = live.mixer
        try:
            mixer = self._pick_mixer(exclude=old)
        except MixerError as exc:
            live.mixer, live.ready = None, None
            live.bridge.clear()
            self.records.set_media(live.id, MediaPath.MIXED, None)
            detail = f"{why}; no mixer to move to: {exc.reason}"
            self._history(live, "mixer", None, detail)
            self._spawn(self._event(EventKind.MEDIA, live, None, detail))
            for member in live.members.values():
                self._spawn(self._mixer_error(member.pid, exc))
            return
        self._place(live, mixer)
        detail = f"{why}; moved to {mixer.name}"
        self._history(live, "mixer", None, detail)
        self._spawn(self._event(EventKind.MEDIA, live, None, detail))
        self._spawn(self._tell_media(live, list(live.members.values())))

    async def _sweep(self, mixer: Mixer) -> None:
        """Destroy the rooms an earlier run of ours left on this mixer (sessions it closed)."""
        if mixer.bridge is None:
            return
        ours = {live.id for live in self.live.values()}
        for room in await mixer.bridge.rooms():
            if room.startswith("s-") and room not in ours:
                with contextlib.suppress(MixerError):
                    await mixer.bridge.destroy_room(room)

    async def _mixer_news(self, mixer: Mixer, ok: bool, detail: str) -> None:
        await self.controller.emit(
            FleetEvent(ts=time.time(), kind=EventKind.MIXER, op=mixer.name, ok=ok, detail=detail)
        )

    def _mixer_event(self, mixer: str, room: str, member: str, event: dict[str, Any]) -> None:
        live = next((s for s in self.live.values() if s.id == room and s.mixer == mixer), None)
        if live is None:
            return
        kind = str(event.get("event"))
        detail = ", ".join(f"{k}={v}" for k, v in event.items() if k != "event") or None
        self._history(live, kind, member, detail)
        if kind == "talking":
            pid = live.members[member].pid if member in live.members else None
            self._spawn(self._event(EventKind.TALKING, live, pid, member))

    def _history(
        self, live: LiveSession, kind: str, participant: str | None, detail: str | None
    ) -> None:
        self.records.add_event(live.id, kind[:32], participant, detail[:256] if detail else None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        name = f"meetings-{getattr(coro, '__name__', 'task').lstrip('_')}"
        task = asyncio.create_task(self._guarded(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("meeting server task failed")

    # --- the API ------------------------------------------------------------------------------
    async def _api_room_create(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        cap = request.cap or self.room_cap
        if self.controller.store.room(request.room) is None and self._full():
            return _refused(ApiOp.ROOM_CREATE.value, "too_many_rooms", self._full_detail())
        self.controller.store.save_room(request.room, cap)
        media, rate = self.records.room(request.room)
        self.records.save_room(request.room, request.media or media, request.rate or rate)
        return ApiResult(
            op=ApiOp.ROOM_CREATE.value,
            ok=True,
            room=request.room,
            rooms=[self._room_info(request.room)],
        )

    async def _api_room_rm(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        op = ApiOp.ROOM_RM.value
        if self._room_settings(request.room, create=False) is None:
            return _refused(op, "unknown_room", f"room {request.room!r} does not exist")
        if request.room in self.live:
            return _refused(op, "room_busy", f"room {request.room!r} has a live session")
        self.controller.store.delete_room(request.room)
        self.records.delete_room(request.room)
        return ApiResult(op=op, ok=True, room=request.room)

    async def _api_rooms(self, request: ApiRequest) -> ApiResult:
        # One page by name, after `after`; `next` is where the following page starts.
        rows = self.controller.store.rooms(after=request.after, limit=request.limit + 1)
        more = len(rows) > request.limit
        rows = rows[: request.limit]
        return ApiResult(
            op=ApiOp.ROOMS.value,
            ok=True,
            rooms=[self._room_info(name, (cap, created)) for name, cap, created in rows],
            next=rows[-1][0] if more else None,
        )

    async def _api_sessions(self, request: ApiRequest) -> ApiResult:
        assert request.room is not None
        stored = self.controller.store.sessions(request.room, request.limit)
        sessions = _fit([self.records.complete(s, events=n == 0) for n, s in enumerate(stored)])
        if not sessions and self._room_settings(request.room, create=False) is None:
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
            await self._send(member.pid, delivered)
        return ApiResult(
            op=op, ok=True, room=request.room, detail=f"sent to {len(live.members)} member(s)"
        )

    # --- helpers ------------------------------------------------------------------------------
    def _room_settings(self, room: str, create: bool = False) -> RoomSettings | None:
        stored = self.controller.store.room(room)
        if stored is not None:
            media, rate = self.records.room(room)
            return RoomSettings(stored[0], media, rate)
        if not create or self._full():
            return None
        self.controller.store.save_room(room, self.room_cap)
        media, rate = self.records.room(room)
        return RoomSettings(self.room_cap, media, rate)

    def _full(self) -> bool:
        return self.controller.store.room_count() >= self.max_rooms

    def _full_detail(self) -> str:
        return f"the server holds its limit of {self.max_rooms} rooms; remove one first"

    def _room_info(self, room: str, stored: tuple[int, float] | None = None) -> RoomInfo:
        stored = stored or self.controller.store.room(room)
        cap, created = stored or (self.room_cap, time.time())
        media, rate = self.records.room(room)
        live = self.live.get(room)
        return RoomInfo(
            room=room,
            created=created,
            cap=cap,
            session=live.id if live else None,
            members=len(live.members) if live else 0,
            media=media,
            rate=rate,  # type: ignore[arg-type]
            session_media=live.media if live else None,
        )

    async def _send(self, pid: str, message: Message) -> None:
        await self.controller.publish(self.controller.topics.meet_down(pid), encode(message))

    async def _refuse(self, pid: str, code: str, detail: str) -> None:
        self.stats["refused"] += 1
        log.info("meeting request from %s refused: %s: %s", pid, code, detail)
        await self._send(pid, MeetError(type="error", code=code, detail=detail[:256]))

    async def _event(
        self, kind: EventKind, live: LiveSession, pid: str | None, detail: str | None = None
    ) -> None:
        await self.controller.emit(
            FleetEvent(
                ts=time.time(),
                kind=kind,
                room=live.room,
                session=live.id,
                device=pid,
                detail=detail[:256] if detail else None,
            )
        )


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


def _consume(future: asyncio.Future[None]) -> None:
    """A room that could not be made is reported to whoever waits; nobody may be waiting."""
    if not future.cancelled():
        future.exception()
