"""Mixed sessions: every member holds one connection to a Janus AudioBridge (the mixer)
and hears the mix of the others.

This places a session on a mixer of the pool (the least loaded), makes its AudioBridge
room, joins each member's offer to it (one handle per member, muted while its device
reports `mic: false`), hands it the member's trickled candidates, and when a mixer dies
moves its sessions to another one, every member renegotiating. All of it runs in tasks:
the MQTT loop never waits on Janus. Each step goes into the session's media history.

A session's AudioBridge room is named by a random id (never the session id, which state
reports show), and its secret and pin are derived from a key only the server holds. A
room that disappears anyway (destroyed behind our back: Janus's `destroyed` event on a
member's handle, a request answered "no such room", or the periodic look at each
mixer's rooms) moves the session to a new room, as a dead mixer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from fleet.meetings.outbox import Outbox
from fleet.meetings.records import MeetingRecords
from fleet.meetings.session import Member, Roster, Session
from fleet.mixer.audiobridge import BridgeMember, BridgeRoom
from fleet.mixer.errors import MixerError, MixerUnavailable, RoomGone
from fleet.mixer.pool import Mixer, MixerPool
from fleet.protocol.messages import MIXER_PARTICIPANT as MIXER
from fleet.protocol.messages import (
    Capabilities,
    EventKind,
    FleetEvent,
    MediaPath,
    MeetAnswer,
    MeetCandidate,
    MeetError,
    MeetMedia,
    MeetOffer,
    MeetRelayedAnswer,
    PeerInfo,
)

log = logging.getLogger(__name__)

# Trickled candidates held per member while its offer reaches the mixer (a browser
# sends a handful; more is a misbehaving client).
MAX_EARLY_CANDIDATES = 32
MIXER_CAPS = Capabilities(audio=True, mic=True, speaker=True, codecs=["opus", "pcmu", "pcma"])
ROOM_PREFIX = "m-"  # our rooms' ids: the prefix and 16 random hex digits
ROOM_CHECK_S = 2.0  # how often each mixer's rooms are compared with our sessions


class MixedSessions:
    records: MeetingRecords  # set when the server is attached to its controller

    def __init__(
        self,
        roster: Roster,
        outbox: Outbox,
        stats: dict[str, int],
        muted: Callable[[str], bool],
        join_failed: Callable[[str, MixerError], Awaitable[None]],
        mixers: Sequence[str] = (),
        mixer_timeout: float | None = None,
        mixer_secret: str | None = None,
    ) -> None:
        self._roster = roster
        self._outbox = outbox
        self._stats = stats  # the server's counters: "relayed"
        self._muted = muted  # a member's mic is off (by pid)
        self._join_failed = join_failed  # its session's mixer room could not be made
        self.pool = MixerPool(
            mixers,
            on_lost=self._mixer_lost,
            on_up=self._mixer_up,
            on_event=self._mixer_event,
            request_timeout=mixer_timeout,
            api_secret=mixer_secret,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._key: bytes | None = None
        # A bench loads the mixer with plain-RTP members; no room of a fleet admits them.
        self.allow_rtp_members = False

    def start(self) -> None:
        self.pool.start()
        if self._watch is None and self.pool.mixers:
            self._watch = asyncio.create_task(self._watch_rooms(), name="mixer-rooms")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for live in self._roster:
            await self._destroy_mixer_room(live)
        await self.pool.close()

    # --- what the server asks -----------------------------------------------------------------
    def pick(self, exclude: str | None = None) -> Mixer:
        """The least-loaded healthy mixer (MixerError when there is none)."""

        def load(mixer: Mixer) -> int:
            return sum(len(s.members) for s in self._roster if s.mixer == mixer.name)

        return self.pool.pick(load, exclude=exclude)

    def go_mixed(self, live: Session, mixer: Mixer, why: str) -> None:
        """Move the session to `mixer`: its room is made in a task; members already in the
        session renegotiate (MeetMedia) once it exists."""
        live.media = MediaPath.MIXED
        detail = f"mesh -> mixed: {why}"
        self._history(live, "media", None, detail)
        self._spawn(self._outbox.emit(live.event(EventKind.MEDIA, None, detail)))
        self.place(live, mixer)
        newcomer = list(live.members)[-1]
        existing = [m for p, m in live.members.items() if p != newcomer]
        self._spawn(self._tell_media(live, existing, from_mesh=True))

    def place(self, live: Session, mixer: Mixer) -> None:
        live.mixer = mixer.name
        live.mixer_room = self._new_room()
        live.bridge.clear()
        live.ready = asyncio.create_task(self._make_room(live, mixer), name=f"room-{live.id}")
        live.ready.add_done_callback(_consume)
        self.records.set_media(live.id, live.media, mixer.name)

    def welcome(self, live: Session, member: Member) -> None:
        """`member` joined a mixed session: told once the mixer's room exists (or that it
        could not be made)."""
        self._spawn(self._joined_mixed(live, member))

    async def offer(
        self, pid: str, live: Session, participant: str, message: MeetOffer | MeetAnswer
    ) -> None:
        """A member's offer to the mixer: joined to the session's AudioBridge room."""
        if not await self._is_mixed(pid, live):
            return
        if isinstance(message, MeetAnswer):
            await self._outbox.refuse(pid, "bad_request", "the mixer takes offers, it never offers")
            return
        # Imported here: aiortc loads only once a session is mixed.
        from fleet.media import sdp as sdp_check
        from fleet.media.errors import MediaError

        try:
            offered = sdp_check.codec_names(
                sdp_check.parse_remote(participant, message.sdp, "offer")
            )
        except MediaError as exc:
            await self._outbox.refuse(pid, "bad_request", str(exc))
            return
        codec = next((c for c in ("opus", "pcmu", "pcma") if c in offered), None)
        if codec is None:
            await self._outbox.refuse(
                pid, "bad_request", f"the mixer mixes opus, pcmu, pcma; offered {offered}"
            )
            return
        self._stats["relayed"] += 1
        # From now on this member's candidates belong to the new offer: held until its
        # handle exists (the old handle, if any, goes).
        old = live.bridge.pop(participant, None)
        live.early_candidates[participant] = []
        live.offers[participant] = live.offers.get(participant, 0) + 1
        self._spawn(self._bridge_join(live, participant, message.sdp, codec, old))

    async def candidate(
        self, pid: str, live: Session, participant: str, message: MeetCandidate
    ) -> None:
        """A member's trickled candidate for the mixer: a Janus `trickle`, held until the
        member's handle exists."""
        if not await self._is_mixed(pid, live):
            return
        self._stats["relayed"] += 1
        entry = live.bridge.get(participant)
        if entry is None:  # its offer is still on the way to Janus
            early = live.early_candidates.setdefault(participant, [])
            if len(early) < MAX_EARLY_CANDIDATES:
                early.append(message)
            return
        self._spawn(self._trickle(live, entry, [message]))

    def member_left(self, live: Session, participant: str) -> None:
        live.early_candidates.pop(participant, None)
        live.offers.pop(participant, None)
        entry = live.bridge.pop(participant, None)
        if entry is not None:
            self._spawn(self._bridge_leave(live, entry))

    def session_ended(self, live: Session) -> None:
        if live.media is MediaPath.MIXED:
            self._spawn(self._destroy_mixer_room(live))

    def mic_changed(self, live: Session, participant: str, muted: bool) -> None:
        entry = live.bridge.get(participant)
        if entry is not None and entry.muted != muted:
            self._spawn(self._configure(live, entry, muted))

    def mixer_info(self, live: Session) -> PeerInfo:
        return PeerInfo(participant=MIXER, pid=live.mixer or "mixer", caps=MIXER_CAPS)

    # --- the session's room and its members on the mixer ----------------------------------------
    def _room_keys(self, room_id: str) -> BridgeRoom:
        """The room's secret and pin, derived from the server's key: a later run holding
        the same key can still destroy it."""
        if self._key is None:
            self._key = self.records.mixer_key()

        def derive(what: str) -> str:
            message = f"{what}:{room_id}".encode()
            return hmac.new(self._key or b"", message, hashlib.sha256).hexdigest()[:32]

        return BridgeRoom(room_id, derive("secret"), derive("pin"))

    def _new_room(self) -> BridgeRoom:
        return self._room_keys(f"{ROOM_PREFIX}{secrets.token_hex(8)}")

    async def _make_room(self, live: Session, mixer: Mixer) -> None:
        if mixer.bridge is None or live.mixer_room is None:
            raise MixerUnavailable(mixer.name, "not connected")
        await mixer.bridge.create_room(
            live.mixer_room, live.room.rate, rtp_members=self.allow_rtp_members
        )
        self._history(live, "mixer", None, f"on {mixer.name} at {live.room.rate} Hz")

    async def _joined_mixed(self, live: Session, member: Member) -> None:
        try:
            await self._wait_ready(live)
        except MixerError as exc:
            if self._roster.is_in(member, live):
                await self._join_failed(member.pid, exc)
            return
        if self._roster.is_in(member, live):
            await self._outbox.send(member.pid, live.joined(member, [self.mixer_info(live)]))

    async def _tell_media(
        self, live: Session, members: list[Member], from_mesh: bool = False
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
        media = MeetMedia(type="media", media=live.media, peers=[self.mixer_info(live)])
        for member in members:
            if live.members.get(member.participant) is member:
                await self._outbox.send(member.pid, media)

    async def _wait_ready(self, live: Session) -> None:
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

    async def _is_mixed(self, pid: str, live: Session) -> bool:
        """The sender's session is mixed; refused (and False) otherwise."""
        if live.media is not MediaPath.MIXED:
            await self._outbox.refuse(pid, "unknown_participant", f"session {live.id} has no mixer")
            return False
        return True

    async def _bridge_join(
        self,
        live: Session,
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
            if mixer is None or mixer.bridge is None or live.mixer_room is None:
                raise MixerUnavailable(live.mixer or "none", "not connected")
            ready, room = live.ready, live.mixer_room
            if old is not None:
                await mixer.bridge.leave(old)
            muted = self._muted(member.pid)
            entry, answer = await mixer.bridge.join(
                room, participant, member.pid, sdp, codec, muted
            )
        except RoomGone as exc:
            # Every member offers again to the session's new room: no error to tell.
            if live.ready is ready and live.mixer_room is room:
                self._room_lost(live, f"room gone on {live.mixer}: {exc.reason}")
            return
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
        await self._outbox.send(
            member.pid, MeetRelayedAnswer(type="answer", from_=MIXER, sdp=answer)
        )

    async def _trickle(
        self, live: Session, entry: BridgeMember, candidates: list[MeetCandidate]
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

    async def _bridge_leave(self, live: Session, entry: BridgeMember) -> None:
        mixer = self.pool.get(live.mixer or "")
        if mixer is not None and mixer.bridge is not None:
            await mixer.bridge.leave(entry)
        self._history(live, "mixer_leave", entry.id, None)

    async def _configure(self, live: Session, entry: BridgeMember, muted: bool) -> None:
        mixer = self.pool.get(live.mixer or "")
        if mixer is None or mixer.bridge is None:
            return
        try:
            await mixer.bridge.configure(entry, muted)
        except MixerError as exc:
            log.warning("cannot %s %s: %s", "mute" if muted else "unmute", entry.id, exc)
            return
        self._history(live, "muted" if muted else "unmuted", entry.id, None)

    async def _destroy_mixer_room(self, live: Session) -> None:
        mixer = self.pool.get(live.mixer or "")
        room = live.mixer_room
        if mixer is None or mixer.bridge is None or live.ready is None or room is None:
            return
        try:
            await mixer.bridge.destroy_room(room)
        except MixerError as exc:
            log.info("room of %s on %s not destroyed: %s", live.id, mixer.name, exc)

    async def _mixer_error(self, pid: str, exc: MixerError) -> None:
        log.warning("mixer error for %s: %s", pid, exc)
        await self._outbox.send(
            pid, MeetError(type="error", code=exc.code, detail=str(exc)[:256], from_=MIXER)
        )

    # --- the pool's news ----------------------------------------------------------------------
    def _mixer_lost(self, mixer: Mixer) -> None:
        reason = mixer.error.reason if mixer.error else "lost"
        self._spawn(self._mixer_news(mixer, False, f"{mixer.name} down: {reason}"))
        for live in self._roster:
            if live.mixer == mixer.name:
                self._move(live, f"{mixer.name} lost")

    def _mixer_up(self, mixer: Mixer) -> None:
        self._spawn(self._mixer_news(mixer, True, f"{mixer.name} up at {mixer.url}"))
        self._spawn(self._sweep(mixer))
        for live in self._roster:
            if live.media is MediaPath.MIXED and live.mixer is None:
                self._move(live, f"{mixer.name} is up")

    def _room_lost(self, live: Session, why: str) -> None:
        """The session's room vanished from a mixer that still answers: the session moves to
        a new room (on the least-loaded mixer, this one included)."""
        log.warning("session %s of room %s: %s", live.id, live.room.name, why)
        mixer = self.pool.get(live.mixer or "")
        entries = list(live.bridge.values())
        live.bridge.clear()
        if mixer is not None and mixer.bridge is not None:
            bridge = mixer.bridge
            for entry in entries:  # their handles outlive the room: let them go
                self._spawn(bridge.leave(entry))
        self._move(live, why, same_mixer_ok=True)

    def _move(self, live: Session, why: str, same_mixer_ok: bool = False) -> None:
        """The session's mixer (or its room there) is gone: on to another one, every member
        renegotiating."""
        old = live.mixer
        try:
            mixer = self.pick(exclude=None if same_mixer_ok else old)
        except MixerError as exc:
            live.mixer, live.ready, live.mixer_room = None, None, None
            live.bridge.clear()
            self.records.set_media(live.id, MediaPath.MIXED, None)
            detail = f"{why}; no mixer to move to: {exc.reason}"
            self._history(live, "mixer", None, detail)
            self._spawn(self._outbox.emit(live.event(EventKind.MEDIA, None, detail)))
            for member in live.members.values():
                self._spawn(self._mixer_error(member.pid, exc))
            return
        self.place(live, mixer)
        detail = f"{why}; moved to {mixer.name}"
        self._history(live, "mixer", None, detail)
        self._spawn(self._outbox.emit(live.event(EventKind.MEDIA, None, detail)))
        self._spawn(self._tell_media(live, list(live.members.values())))

    async def _sweep(self, mixer: Mixer) -> None:
        """Destroy the rooms an earlier run of ours left on this mixer (sessions it closed)."""
        if mixer.bridge is None:
            return
        ours = {live.mixer_room.id for live in self._roster if live.mixer_room is not None}
        for room in await mixer.bridge.rooms():
            if room.startswith(ROOM_PREFIX) and room not in ours:
                with contextlib.suppress(MixerError):
                    await mixer.bridge.destroy_room(self._room_keys(room))

    async def _watch_rooms(self) -> None:
        """Every few seconds, each mixer's rooms against our sessions on it: a room that
        is gone (destroyed with every member's handle, or before anyone joined) moves its
        session. A mixer that stops answering is the pool's to notice."""
        while True:
            await asyncio.sleep(ROOM_CHECK_S)
            for mixer in self.pool.mixers:
                try:
                    await self._check_rooms(mixer)
                except MixerError as exc:
                    log.debug("rooms of %s not checked: %s", mixer.name, exc)

    async def _check_rooms(self, mixer: Mixer) -> None:
        bridge = mixer.bridge
        if bridge is None or not mixer.healthy:
            return
        # Only rooms made before the listing is asked for: those must be in it.
        placed = [
            (live, live.ready, live.mixer_room)
            for live in self._roster
            if live.mixer == mixer.name
            and live.mixer_room is not None
            and live.ready is not None
            and live.ready.done()
            and not live.ready.cancelled()
            and live.ready.exception() is None
        ]
        if not placed:
            return
        listed = set(await bridge.rooms())
        for live, ready, room in placed:
            gone = room is not None and room.id not in listed
            if gone and live.ready is ready and live.mixer_room is room and live.members:
                self._room_lost(live, f"room gone from {mixer.name}")

    async def _mixer_news(self, mixer: Mixer, ok: bool, detail: str) -> None:
        await self._outbox.emit(
            FleetEvent(ts=time.time(), kind=EventKind.MIXER, op=mixer.name, ok=ok, detail=detail)
        )

    def _mixer_event(self, mixer: str, room: str, member: str, event: dict[str, Any]) -> None:
        live = next(
            (
                s
                for s in self._roster
                if s.mixer == mixer and s.mixer_room is not None and s.mixer_room.id == room
            ),
            None,
        )
        if live is None:
            return
        kind = str(event.get("event"))
        if kind == "destroyed":
            self._room_lost(live, f"room destroyed on {mixer}")
            return
        detail = ", ".join(f"{k}={v}" for k, v in event.items() if k != "event") or None
        self._history(live, kind, member, detail)
        if kind == "talking":
            pid = live.members[member].pid if member in live.members else None
            self._spawn(self._outbox.emit(live.event(EventKind.TALKING, pid, member)))

    # --- plumbing -----------------------------------------------------------------------------
    def _history(
        self, live: Session, kind: str, participant: str | None, detail: str | None
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


def _consume(future: asyncio.Future[None]) -> None:
    """A room that could not be made is reported to whoever waits; nobody may be waiting."""
    if not future.cancelled():
        future.exception()
