"""The local participant: one participant's own side of the meeting protocol
(docs/protocol.md §8), and what it knows of the remote participants, the other members
of its session.

It joins a room through the meeting server, opens a peer connection to every
peer `joined` names (the members already there, or in a mixed session the one
mixer; `media` moves it from one to the other without leaving the session;
the newcomer offers, so two members never offer to each other at once),
answers offers from later members (their ICE candidates may trickle in after the
SDP: docs/protocol.md §8.6), closes a peer when it
leaves, and keeps what a device reports: room, session, participant, peers.

Transport is the caller's: a simulated device hands over its own MQTT link,
an agent its own. `handle()` is called from the MQTT message loop and never
waits on the network: SDP work runs in tasks, so the loop keeps delivering the
answers those tasks wait for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiomqtt

from fleet.errors import FleetError, ProtocolError
from fleet.mqtt import (
    BrokerUrl,
    LastWill,
    own_client_id,
    payload_bytes,
    publish_nowait,
    run_link,
)
from fleet.protocol import TopicKind, Topics, decode_for, encode
from fleet.protocol.messages import (
    Capabilities,
    MediaPath,
    MeetAnswer,
    MeetCandidate,
    MeetDelivered,
    MeetError,
    MeetingState,
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
    PeerInfo,
)

# A remote participant as the local one knows it: its participant id in the session, its
# pid, and what its media side can do (the mixer, in a mixed session, is one too).
RemoteParticipant = PeerInfo

if TYPE_CHECKING:
    from fleet.media.mesh import MediaMesh

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
JOIN_TIMEOUT_S = 10.0


class MeetingRefused(FleetError):
    """The meeting server said no (room_full, unknown_room, ...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class LocalParticipant:
    """This process's member of a session: joins, leaves, negotiates media with each
    remote participant through `mesh` (publishing its audio and subscribing to theirs),
    and reports where it is."""

    def __init__(
        self,
        pid: str,
        topics: Topics,
        publish: Publish,
        mesh: MediaMesh | None = None,
        caps: Capabilities | None = None,
        on_change: Callable[[], Any] | None = None,
        on_lost: Callable[[], Any] | None = None,
    ) -> None:
        self.pid = pid  # its own id, the one in its topics: a device id or a user name
        self.topics = topics
        self._publish = publish
        self.mesh = mesh
        self.caps = caps
        self._on_change = on_change
        # The server no longer knows our session (it restarted): join again, or let the
        # owner do it (a device re-applies its intent).
        self._on_lost = on_lost
        self.room: str | None = None
        self.wanted_room: str | None = None  # what the caller asked: join()ed, not left
        self.session: str | None = None
        self.participant: str | None = None  # the id its session gave it (p-N)
        self.media = MediaPath.MESH
        self.peers: dict[str, RemoteParticipant] = {}  # by participant id
        self.inbox: list[MeetDelivered] = []
        self.errors: list[MeetError] = []
        self.peer_errors: dict[str, str] = {}
        self._pending_join: asyncio.Future[MeetJoined] | None = None
        self._pending_leave: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish_up(self, payload: bytes) -> None:
        """Raw bytes on its own `meet/{pid}/up`, as any peer could send them."""
        await self._publish(self.topics.meet_up(self.pid), payload)

    @property
    def remote_participants(self) -> dict[str, RemoteParticipant]:
        """The other members this one connects to, by participant id (the mixer alone in
        a mixed session)."""
        return self.peers

    # --- what the caller asks -----------------------------------------------------------------
    async def join(self, room: str, timeout: float = JOIN_TIMEOUT_S) -> MeetJoined:
        """Join `room`; returns the server's `joined`, raises MeetingRefused on its error."""
        if self.session is not None:
            await self._drop_all_peers()
        loop = asyncio.get_running_loop()
        self._pending_join = loop.create_future()
        self.room = self.wanted_room = room
        await self.send(MeetJoin(type="join", room=room, caps=self.caps))
        try:
            async with asyncio.timeout(timeout):
                return await self._pending_join
        except TimeoutError:
            self.room = None
            raise FleetError(
                f"the meeting server did not answer a join within {timeout}s"
            ) from None
        finally:
            self._pending_join = None

    async def leave(self, timeout: float = 5.0) -> None:
        self.wanted_room = None
        if self.session is None and self.room is None:
            return
        self._pending_leave = asyncio.get_running_loop().create_future()
        try:
            await self.send(MeetLeave(type="leave"))
            async with asyncio.timeout(timeout):
                await self._pending_leave
        except (TimeoutError, FleetError) as exc:
            log.info("%s: leave not confirmed (%s); leaving locally", self.pid, exc)
        finally:
            self._pending_leave = None
            await self._forget_session()

    async def say(
        self, text: str | None = None, data: bytes | None = None, to: str | None = None
    ) -> None:
        """A message to one member (`to`, a participant id) or to every other member."""
        data_b64 = base64.b64encode(data).decode() if data is not None else None
        await self.send(MeetSend(type="message", to=to, text=text, data_b64=data_b64))

    def meeting_state(self) -> MeetingState | None:
        if self.room is None:
            return None
        return MeetingState(
            room=self.room,
            session=self.session,
            participant=self.participant,
            peers=sorted(self.peers),
            peer_errors=dict(sorted(self.peer_errors.items())[:64]) or None,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.mesh is not None:
            await self.mesh.close()

    # --- what the server says -----------------------------------------------------------------
    def handle(self, payload: bytes) -> None:
        """A message from meet/{pid}/down. Bad input is logged and dropped."""
        try:
            message = decode_for(TopicKind.MEET_DOWN, payload)
        except ProtocolError as exc:
            log.warning("%s: dropped meeting message: %s", self.pid, exc)
            return
        if isinstance(message, MeetJoined):
            self._on_joined(message)
        elif isinstance(message, MeetMedia):
            if self.session is not None:
                self._spawn(self._renegotiate(message), "server")
        elif isinstance(message, MeetPeerJoined):
            self.peers[message.peer.participant] = message.peer
            self._changed()
        elif isinstance(message, MeetPeerLeft):
            self.peers.pop(message.participant, None)
            self._spawn(self._remove_peer(message.participant), message.participant)
            self._changed()
        elif isinstance(message, MeetRelayedOffer):
            if self.mesh is not None:
                self.mesh.expect_description(message.from_)
            self._spawn(self._answer(message.from_, message.sdp), message.from_, reject=True)
        elif isinstance(message, MeetRelayedAnswer):
            if self.mesh is not None:
                self.mesh.expect_description(message.from_)
            self._spawn(self._accept_answer(message.from_, message.sdp), message.from_, reject=True)
        elif isinstance(message, MeetRelayedCandidate):
            if self.mesh is not None:
                # In a task like the SDP work; the order of a peer's candidates is kept by
                # the mesh (held until its SDP is applied).
                self._spawn(
                    self.mesh.add_candidate(message.from_, message.candidate, message.mid),
                    message.from_,
                )
        elif isinstance(message, MeetLeft):
            if self._pending_leave is not None and not self._pending_leave.done():
                self._pending_leave.set_result(None)
        elif isinstance(message, MeetError):
            self._on_error(message)
        elif isinstance(message, MeetDelivered):
            self.inbox.append(message)

    def _on_joined(self, joined: MeetJoined) -> None:
        self.room, self.session, self.participant = joined.room, joined.session, joined.participant
        self.media = joined.media
        self.peers = {p.participant: p for p in joined.peers}
        self.peer_errors.clear()
        for peer in joined.peers:
            self._spawn(self._offer(peer), peer.participant, reject=True)
        if self._pending_join is not None and not self._pending_join.done():
            self._pending_join.set_result(joined)
        self._changed()

    async def _renegotiate(self, media: MeetMedia) -> None:
        """The session's media path changed: every peer connection goes, the session stays,
        and we offer to the new peers (the mixer, or the members)."""
        log.info("%s: session %s is now %s", self.pid, self.session, media.media.value)
        await self._drop_all_peers()
        for peer_id in self.mesh.peers() if self.mesh is not None else []:
            await self._remove_peer(peer_id)  # one whose offer came in as the path changed
        self.media = media.media
        self.peers = {p.participant: p for p in media.peers}
        self.peer_errors.clear()
        for peer in media.peers:
            self._spawn(self._offer(peer), peer.participant)
        self._changed()

    def _on_error(self, error: MeetError) -> None:
        self.errors.append(error)
        if error.from_ is not None and self._pending_join is None:
            # About one peer (the mixer, or a member that could not negotiate with us: a
            # relayed MeetReject): that peer's media failed, the session goes on.
            log.warning("%s: %s: %s: %s", self.pid, error.from_, error.code, error.detail)
            self.peer_errors[error.from_] = f"{error.code}: {error.detail}"[:256]
            self._changed()
            return
        if self._pending_join is not None and not self._pending_join.done():
            if error.code == "not_in_session":
                # The server's answer to a late message (an SDP answer, a candidate) of the
                # session just left, not to this join, which it never refuses so: moving
                # straight from one room to another (a call's hangup) sees it.
                log.info("%s: late message refused: %s", self.pid, error.detail)
                return
            self.room = None
            self._pending_join.set_exception(MeetingRefused(error.code, error.detail))
        elif error.code == "session_lost" and self.session is not None:
            log.info("%s: %s", self.pid, error.detail)
            if self._on_lost is not None:
                self._on_lost()
            else:
                self._spawn(self._rejoin(), "server")
        else:
            log.warning("%s: meeting server error %s: %s", self.pid, error.code, error.detail)

    # --- peer negotiation (in tasks) ----------------------------------------------------------
    async def _offer(self, peer: PeerInfo) -> None:
        if self.mesh is None:
            return
        sdp = await self.mesh.create_offer(peer.participant, peer.caps)
        await self._send_sdp(peer.participant, sdp, offer=True)

    async def _answer(self, peer_id: str, sdp: str) -> None:
        if self.mesh is None:
            return
        peer = self.peers.get(peer_id)
        answer = await self.mesh.accept_offer(peer_id, peer.caps if peer else None, sdp)
        await self._send_sdp(peer_id, answer, offer=False)

    async def _send_sdp(self, to: str, sdp: str, *, offer: bool) -> None:
        """Our offer or answer: complete, or (MediaConfig.trickle) with its candidates
        trickled after it (docs/protocol.md §8.6)."""
        candidates: list[tuple[str, str]] = []
        if self.mesh is not None and self.mesh.config.trickle:
            from fleet.media.sdp import split_candidates  # aiortc's: only with a mesh

            sdp, candidates = split_candidates(sdp)
        await self.send(
            MeetOffer(type="offer", to=to, sdp=sdp)
            if offer
            else MeetAnswer(type="answer", to=to, sdp=sdp)
        )
        for mid, candidate in candidates:
            await self.send(MeetCandidate(type="candidate", to=to, candidate=candidate, mid=mid))
        if candidates:
            mids = dict.fromkeys(mid for mid, _ in candidates)
            for mid in mids:
                await self.send(MeetCandidate(type="candidate", to=to, candidate=None, mid=mid))

    async def _accept_answer(self, peer_id: str, sdp: str) -> None:
        if self.mesh is not None:
            await self.mesh.accept_answer(peer_id, sdp)

    async def _remove_peer(self, peer_id: str) -> None:
        if self.mesh is not None:
            await self.mesh.remove_peer(peer_id)

    async def _drop_all_peers(self) -> None:
        for peer_id in list(self.peers):
            await self._remove_peer(peer_id)
        self.peers.clear()

    async def _rejoin(self) -> None:
        room = self.room
        await self._forget_session()
        if room is not None:
            await self.join(room)

    async def forget(self) -> None:
        """Drop the session locally with no word to the server (it dropped us already)."""
        await self._forget_session()

    async def _forget_session(self) -> None:
        await self._drop_all_peers()
        self.room = self.session = self.participant = None
        self.media = MediaPath.MESH
        self._changed()

    # --- plumbing -----------------------------------------------------------------------------
    async def send(self, message: Any) -> None:
        """Any up message, as is (tests use it to send what a well-behaved peer would not)."""
        await self._publish(self.topics.meet_up(self.pid), encode(message))

    def _spawn(self, coro: Awaitable[None], peer: str, reject: bool = False) -> None:
        task = asyncio.ensure_future(self._guarded(coro, peer, reject))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Awaitable[None], peer: str, reject: bool) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one peer's failure must not end the meeting for the rest
            log.warning("%s: negotiation with %s failed: %s", self.pid, peer, exc)
            self.peer_errors[peer] = str(exc)[:256]
            self._changed()
            if reject and self.session is not None:
                # The other side would wait for ever: tell it why (docs/protocol.md §8.2).
                with contextlib.suppress(FleetError):
                    await self.send(
                        MeetReject(
                            type="reject", to=peer, code="negotiation_failed", detail=str(exc)[:256]
                        )
                    )

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


@contextlib.asynccontextmanager
async def participant_link(
    url: BrokerUrl,
    pid: str,
    topics: Topics,
    mesh: MediaMesh | None = None,
    caps: Capabilities | None = None,
    connect_timeout: float = 10.0,
    stay: bool = False,
    on_change: Callable[[], Any] | None = None,
) -> AsyncIterator[LocalParticipant]:
    """A participant with an MQTT link of its own (an agent, a test peer).

    Its last will is a `leave` on its own up topic: if the process dies, the
    server removes it from its session and tells the others, as it does for a
    device whose status turns offline.

    With `stay` the link outlives the broker: it reconnects (with backoff) and joins
    its room again, as a device re-applies its intent. Without it, a lost link ends it.
    """
    client_ref: list[aiomqtt.Client] = []

    async def publish(topic: str, payload: bytes) -> None:
        if not client_ref:
            raise FleetError("not connected to the broker")
        publish_nowait(client_ref[0], topic, payload, qos=1)

    participant = LocalParticipant(pid, topics, publish, mesh, caps, on_change=on_change)
    connects = 0

    async def on_connect(client: aiomqtt.Client) -> None:
        nonlocal connects
        client_ref[:] = [client]
        await client.subscribe(topics.meet_down(pid), qos=1)
        connects += 1
        if connects > 1 and participant.wanted_room is not None:
            # The broker restarted (or the link dropped): the server may have dropped us
            # with our will, or still hold a session we can no longer signal in. Join
            # again; the server replaces our old membership.
            participant._spawn(rejoin(participant.wanted_room), "server")

    async def rejoin(room: str) -> None:
        delay = 0.5
        while client_ref:
            log.info("%s: reconnected; joining %s again", pid, room)
            try:
                await participant._forget_session()
                await participant.join(room)
                return
            except MeetingRefused as exc:
                log.warning("%s: could not join %s again: %s", pid, room, exc)
                return
            except FleetError as exc:  # the server is not back yet: try again
                log.info("%s: %s", pid, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def on_disconnect() -> None:
        client_ref.clear()

    async def on_message(message: aiomqtt.Message) -> None:
        participant.handle(payload_bytes(message))

    connected = asyncio.Event()
    link = asyncio.create_task(
        run_link(
            url,
            # Its own user's id is the pid; another user (an operator) may use only ids it
            # owns (protocol.md §11): `{user}-{pid}`.
            client_id=pid if url.username in (None, pid) else own_client_id(url.username, pid),
            on_connect=on_connect,
            on_message=on_message,
            on_disconnect=on_disconnect,
            will=LastWill(topics.meet_up(pid), encode(MeetLeave(type="leave")), retain=False),
            connected=connected,
            retry=stay,
        ),
        name=f"{pid}-link",
    )
    try:
        waiter = asyncio.create_task(connected.wait())
        done, _ = await asyncio.wait(
            {link, waiter}, timeout=connect_timeout, return_when="FIRST_COMPLETED"
        )
        waiter.cancel()
        if link in done:
            link.result()  # raises BrokerUnavailable
        if not connected.is_set():
            raise FleetError(f"{pid}: no connection to {url.redacted()} in {connect_timeout}s")
        yield participant
    finally:
        with contextlib.suppress(Exception):
            if participant.session is not None and client_ref:
                await participant.leave(timeout=2.0)
        await participant.close()
        link.cancel()
        with contextlib.suppress(asyncio.CancelledError, FleetError):
            await link
