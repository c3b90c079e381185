"""The meeting server: rooms, sessions, participants and the signalling relay, on both brokers.

Participants here speak the signalling protocol only (no media): SDP bodies
are opaque to the server, so plain strings show what it relays and to whom.
Real audio is in tests/meetings/test_audio.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.meetings import MeetingServer
from fleet.meetings.participant import LocalParticipant, MeetingRefused, participant_link
from fleet.mqtt import BrokerUrl, payload_bytes
from fleet.protocol import TopicKind, decode_for, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    MeetCandidate,
    MeetDelivered,
    MeetError,
    MeetLeave,
    MeetOffer,
    MeetRelayedCandidate,
    MeetRelayedOffer,
)
from tests.support.brokers import BrokerHandle, connect_and_drop, mqtt_client
from tests.support.running import controller, one_device, operator, register_devices, wait_for

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@contextlib.asynccontextmanager
async def peer(handle: BrokerHandle, pid: str) -> AsyncIterator[LocalParticipant]:
    """A signalling-only participant with device credentials of its own."""
    secret = handle.add_device(pid)
    url = BrokerUrl.parse(handle.url(pid, secret))
    async with participant_link(url, pid, handle.topics) as p:
        yield p


async def sessions(op: object, room: str) -> list:  # type: ignore[type-arg]
    result = await op.request(ApiOp.SESSIONS, ApiRequest(room=room))  # type: ignore[attr-defined]
    assert result.ok, result
    return list(result.sessions)


async def test_join_relay_leave_and_history(any_broker: BrokerHandle, tmp_path: Path) -> None:
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        operator(any_broker) as op,
        peer(any_broker, "ann") as ann,
        peer(any_broker, "bob") as bob,
        peer(any_broker, "cid") as cid,
    ):
        joined_a = await ann.join("standup")
        assert joined_a.peers == []
        joined_b = await bob.join("standup")
        assert joined_b.session == joined_a.session
        assert [p.pid for p in joined_b.peers] == ["ann"]
        await wait_for(lambda: bob.participant in ann.peers, what="ann told of bob")
        assert ann.peers[joined_b.participant].pid == "bob"

        await bob.say(text="marker", to=joined_a.participant)
        await wait_for(lambda: ann.inbox, what="ann gets bob's marker")
        assert ann.inbox[0].from_ == joined_b.participant
        assert ann.inbox[0].text == "marker"

        # A third member in another room cannot reach them.
        joined_c = await cid.join("retro")
        assert joined_c.session != joined_a.session
        await cid.send(MeetOffer(type="offer", to=joined_a.participant, sdp=SDP))
        await wait_for(lambda: cid.errors, what="cid refused")
        assert cid.errors[-1].code == "unknown_participant"

        await bob.leave()
        await wait_for(lambda: not ann.peers, what="ann told bob left")
        await ann.leave()
        history = await sessions(op, "standup")
        assert len(history) == 1
        s = history[0]
        assert s.session == joined_a.session
        assert s.ended is not None
        assert [(m.pid, m.left is not None) for m in s.participants] == [
            ("ann", True),
            ("bob", True),
        ]
        assert all(m.duration_s >= 0 for m in s.participants)
        retro = await sessions(op, "retro")
        assert retro[0].ended is None  # cid is still there
        assert retro[0].participants[0].left is None


async def test_sdp_is_relayed_only_inside_the_session(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        peer(any_broker, "ann") as ann,
        peer(any_broker, "bob") as bob,
        peer(any_broker, "eve") as eve,
    ):
        a = await ann.join("standup")
        b = await bob.join("standup")
        got: list[MeetRelayedOffer] = []
        original = ann.handle

        def spy(payload: bytes) -> None:
            message = decode_for(TopicKind.MEET_DOWN, payload)
            if isinstance(message, MeetRelayedOffer):
                got.append(message)
            else:
                original(payload)

        ann.handle = spy  # type: ignore[method-assign]
        await bob.send(MeetOffer(type="offer", to=a.participant, sdp=SDP))
        await wait_for(lambda: got, what="offer relayed to ann")
        assert got[0].from_ == b.participant
        assert got[0].sdp == SDP

        # Not in any session: refused. Then in another session: the same participant
        # id exists there (p-1), yet it is not ann.
        await eve.send(MeetOffer(type="offer", to=a.participant, sdp=SDP))
        await wait_for(lambda: eve.errors, what="eve refused")
        assert eve.errors[-1].code == "not_in_session"
        e = await eve.join("retro")
        assert e.participant == a.participant  # ids are per session
        await eve.send(MeetOffer(type="offer", to="p-2", sdp=SDP))
        await wait_for(lambda: len(eve.errors) == 2, what="eve refused again")
        assert eve.errors[-1].code == "unknown_participant"
        # A marker offer from bob, sent after eve's refusals: anything that crossed
        # sessions would have reached ann before it.
        await bob.send(MeetOffer(type="offer", to=a.participant, sdp=SDP + "a=marker\r\n"))
        await wait_for(lambda: len(got) >= 2, what="bob's marker")
        assert [m.sdp for m in got] == [SDP, SDP + "a=marker\r\n"], "nothing crossed sessions"


async def test_room_cap_refuses_with_a_clear_error(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with (
        controller(
            any_broker, tmp_path / "ctl.db", parts=[MeetingServer(room_cap=2, auto_create=True)]
        ),
        operator(any_broker) as op,
        peer(any_broker, "ann") as ann,
        peer(any_broker, "bob") as bob,
        peer(any_broker, "cid") as cid,
    ):
        await ann.join("standup")
        await bob.join("standup")
        with pytest.raises(MeetingRefused) as refused:
            await cid.join("standup")
        assert refused.value.code == "room_full"
        assert "cap of 2" in refused.value.detail
        assert cid.session is None
        # A room created with a bigger cap takes a third member.
        created = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="big", cap=3))
        assert created.ok
        assert created.rooms[0].cap == 3
        for p in (ann, bob, cid):
            await p.join("big")
        listed = await op.request(ApiOp.ROOMS, ApiRequest())
        rooms = {r.room: r for r in listed.rooms}
        assert rooms["big"].members == 3
        assert rooms["standup"].members == 0
        busy = await op.request(ApiOp.ROOM_RM, ApiRequest(room="big"))
        assert (busy.ok, busy.code) == (False, "room_busy")
        gone = await op.request(ApiOp.ROOM_RM, ApiRequest(room="standup"))
        assert gone.ok
        unknown = await op.request(ApiOp.ROOM_RM, ApiRequest(room="nowhere"))
        assert (unknown.ok, unknown.code) == (False, "unknown_room")


async def test_rooms_come_from_operators_and_the_api_by_default(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with (
        controller(any_broker, tmp_path / "ctl.db", parts=[MeetingServer()]),
        operator(any_broker) as op,
        peer(any_broker, "ann") as ann,
    ):
        with pytest.raises(MeetingRefused) as refused:
            await ann.join("standup")
        assert refused.value.code == "unknown_room"
        assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="standup"))).ok
        assert (await ann.join("standup")).room == "standup"
        # The room of a join-all request is created with the intent (here: no devices).
        with pytest.raises(MeetingRefused):
            await ann.join("retro")
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro", timeout_s=2))).ok
        assert (await ann.join("retro")).room == "retro"


async def test_rooms_are_bounded_and_listed_by_page(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db", parts=[MeetingServer(max_rooms=25)]),
        operator(amqtt_broker) as op,
        peer(amqtt_broker, "ann") as ann,
    ):
        names = [f"r{n:02d}" for n in range(25)]
        for name in names:
            assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=name))).ok
        over = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="one-more"))
        assert (over.ok, over.code) == (False, "too_many_rooms")
        again = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="r03", cap=4))
        assert again.ok, "changing an existing room's cap is no new room"
        # Nor may a join-all's room, nor (with auto-create) a participant's join, pass it.
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="new-one", timeout_s=2))).ok
        with pytest.raises(MeetingRefused) as refused:
            await ann.join("new-one")
        assert refused.value.code == "unknown_room"
        listed: list[str] = []
        after = None
        while True:
            page = await op.request(ApiOp.ROOMS, ApiRequest(limit=10, after=after))
            assert page.ok
            assert len(page.rooms) <= 10
            listed += [r.room for r in page.rooms]
            if page.next is None:
                break
            after = page.next
        assert listed == names


async def test_messages_reach_every_other_member_once(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        operator(any_broker) as op,
        peer(any_broker, "ann") as ann,
        peer(any_broker, "bob") as bob,
        peer(any_broker, "cid") as cid,
        peer(any_broker, "dan") as dan,
    ):
        for p in (ann, bob, cid):
            await p.join("standup")
        await dan.join("elsewhere")
        await ann.say(text="hello all")
        await ann.say(data=b"\x00\x01\x02")
        said = await op.request(ApiOp.SAY, ApiRequest(room="standup", text="from the cli"))
        assert said.ok
        await wait_for(lambda: len(bob.inbox) == 3 and len(cid.inbox) == 3, what="deliveries")
        # A last message to each room: anything extra the server sent arrived before it.
        for room in ("standup", "elsewhere"):
            assert (await op.request(ApiOp.SAY, ApiRequest(room=room, text="end"))).ok
        everyone = (ann, bob, cid, dan)
        await wait_for(lambda: all(p.inbox and p.inbox[-1].text == "end" for p in everyone))
        for p in everyone:
            p.inbox.pop()
        for p in (bob, cid):
            # ann's two come in order; the CLI's travels another path, so anywhere.
            texts = [(m.from_, m.text, m.data_b64) for m in p.inbox]
            assert [t for t in texts if t[0] != "server"] == [
                (ann.participant, "hello all", None),
                (ann.participant, None, "AAEC"),
            ]
            assert ("server", "from the cli", None) in texts
        # The sender does not get its own message; the server's reaches it.
        assert [m.text for m in ann.inbox] == ["from the cli"]
        assert dan.inbox == []
        nobody = await op.request(ApiOp.SAY, ApiRequest(room="empty", text="hi"))
        assert (nobody.ok, nobody.code) == (False, "no_session")


async def test_a_dead_agent_and_an_offline_device_are_removed(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 1)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        operator(any_broker) as op,
        peer(any_broker, "ann") as ann,
    ):
        first = await ann.join("standup")
        # An agent process that dies: its will (a leave on its up topic) removes it.
        ghost_secret = any_broker.add_device("ghost")
        t = any_broker.topics
        async with mqtt_client(any_broker, "ghost", ghost_secret) as ghost:
            await ghost.subscribe(t.meet_down("ghost"), qos=1)
            await ghost.publish(t.meet_up("ghost"), b'{"type": "join", "room": "standup"}', 1)
            await wait_for(lambda: len(ann.peers) == 1, what="ghost joined")
        # (leaving the context disconnects cleanly: no will; the server still has it)
        assert len(ann.peers) == 1
        code = await connect_and_drop(
            any_broker, "ghost", ghost_secret, t.meet_up("ghost"), encode(MeetLeave(type="leave"))
        )
        assert code == 0
        await wait_for(lambda: not ann.peers, what="ghost removed by its will")

        # A device whose status turns offline is removed too.
        async with one_device(any_broker, "dev-1", secrets["dev-1"]) as dev:
            await wait_for(lambda: "dev-1" in ctl.registry.devices, what="dev-1 known")
            assert dev.connection is not None
            await dev.connection.publish(
                t.meet_up("dev-1"), b'{"type": "join", "room": "standup"}', qos=1
            )
            await wait_for(lambda: len(ann.peers) == 1, what="dev-1 joined")
        await wait_for(lambda: not ann.peers, what="dev-1 removed when offline")

        # The last member leaving ends the session; a new join starts another.
        await ann.leave()
        second = await ann.join("standup")
        assert second.session != first.session
        history = await sessions(op, "standup")
        assert [s.session for s in history] == [second.session, first.session]
        assert history[1].ended is not None
        assert {m.pid for m in history[1].participants} == {"ann", "ghost", "dev-1"}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"type": "teleport", "room": "x"}',
        b'{"type": "join"}',
        b'{"type": "join", "room": "Bad Room!"}',
        b'{"type": "offer", "to": "p-1"}',
        b'{"type": "offer", "to": "p-1", "sdp": ""}',
        b'{"type": "message", "to": "p-1"}',
        b"",
    ],
    ids=[
        "malformed",
        "unknown-type",
        "no-room",
        "bad-room",
        "no-sdp",
        "empty-sdp",
        "empty-message",
        "empty",
    ],
)
async def test_bad_signalling_gets_an_error_and_breaks_nothing(
    any_broker: BrokerHandle, tmp_path: Path, payload: bytes
) -> None:
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        peer(any_broker, "ann") as ann,
        peer(any_broker, "bob") as bob,
    ):
        await ann.join("standup")
        await bob.join("standup")
        secret = any_broker.add_device("mal")
        t = any_broker.topics
        async with mqtt_client(any_broker, "mal", secret) as mal:
            await mal.subscribe(t.meet_down("mal"), qos=1)
            await mal.publish(t.meet_up("mal"), payload, qos=1)
            async with asyncio.timeout(10):
                async for message in mal.messages:
                    error = decode_for(TopicKind.MEET_DOWN, payload_bytes(message))
                    break
        assert isinstance(error, MeetError)
        assert error.code == "bad_request"
        assert error.detail
        # The session is untouched and still relays.
        await ann.say(text="still here")
        await wait_for(lambda: bob.inbox, what="relay still works")
        assert isinstance(bob.inbox[0], MeetDelivered)
        assert len(ctl.parts[0].live["standup"].members) == 2  # type: ignore[attr-defined]


async def test_sessions_left_open_by_a_crash_are_closed_on_start(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    db = tmp_path / "ctl.db"
    async with peer(any_broker, "ann") as ann:
        async with controller(any_broker, db):
            await ann.join("standup")
        # The controller went away while ann was in; a new one closes that session.
        async with controller(any_broker, db), operator(any_broker) as op:
            history = await sessions(op, "standup")
            assert history[0].ended is not None
            assert history[0].participants[0].left is not None


async def test_candidates_are_relayed_only_inside_the_session(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """Trickle ICE (§8.6): a candidate, and the end of them, go to the one member named,
    with the sender as `from`; outside the session they are refused; bad ones too."""
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        peer(any_broker, "ann") as ann,
        peer(any_broker, "bob") as bob,
        peer(any_broker, "eve") as eve,
    ):
        a = await ann.join("standup")
        b = await bob.join("standup")
        got: list[MeetRelayedCandidate | MeetDelivered] = []

        def spy(payload: bytes) -> None:
            message = decode_for(TopicKind.MEET_DOWN, payload)
            if isinstance(message, MeetRelayedCandidate | MeetDelivered):
                got.append(message)

        ann.handle = spy  # type: ignore[method-assign]
        line = "candidate:1 1 udp 2122260223 10.1.0.2 50000 typ host"
        await bob.send(MeetCandidate(type="candidate", to=a.participant, candidate=line))
        await bob.send(MeetCandidate(type="candidate", to=a.participant, candidate=None))
        await wait_for(lambda: len(got) == 2, what="two candidates relayed to ann")
        assert got == [
            MeetRelayedCandidate(type="candidate", from_=b.participant, candidate=line, mid="0"),
            MeetRelayedCandidate(type="candidate", from_=b.participant, candidate=None, mid="0"),
        ]
        # Outside the session: refused, never relayed.
        await eve.send(MeetCandidate(type="candidate", to=a.participant, candidate=line))
        await wait_for(lambda: eve.errors, what="eve refused")
        assert eve.errors[-1].code == "not_in_session"
        await eve.join("retro")
        await eve.send(MeetCandidate(type="candidate", to="p-2", candidate=line))
        await wait_for(lambda: len(eve.errors) == 2, what="eve refused again")
        assert eve.errors[-1].code == "unknown_participant"
        # A mesh session has no mixer to trickle to.
        await bob.send(MeetCandidate(type="candidate", to="mixer", candidate=line))
        await wait_for(lambda: bob.errors, what="bob refused")
        assert bob.errors[-1].code == "unknown_participant"
        # Malformed: an oversize candidate, a number for a candidate, no `to`.
        for bad in (
            {"type": "candidate", "to": a.participant, "candidate": "x" * 2000},
            {"type": "candidate", "to": a.participant, "candidate": 5},
            {"type": "candidate", "candidate": line},
        ):
            await bob.publish_up(json.dumps(bad).encode())
        await wait_for(lambda: len(bob.errors) == 4, what="three bad candidates refused")
        assert [e.code for e in bob.errors[1:]] == ["bad_request"] * 3
        # A marker sent after everything: what reached ann is the two candidates only.
        await bob.say(text="marker")
        await wait_for(lambda: len(got) == 3, what="the marker")
        assert isinstance(got[2], MeetDelivered)
        assert got[2].text == "marker"
