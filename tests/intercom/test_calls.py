"""Calls with real audio: two devices talk in a private room, a third hears nothing of
it; after the hangup everyone is back where it was. Rings time out or are answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet.device.audio import audio_drivers
from fleet.device.sim import SimFleet
from fleet.device.tones import RING_HZ, RING_PEER
from fleet.intercom import Intercom
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest, DeviceOutcome, RoomKind
from tests.intercom.support import call_fleet
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

pytestmark = pytest.mark.timeout(120)


async def test_a_call_carries_audio_both_ways_and_nothing_to_a_third_device_then_all_go_back(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(any_broker, tmp_path, 4) as f:
        # dev-1 and dev-3 are in a meeting; dev-4 is in none.
        for device in ("dev-1", "dev-3"):
            joined = await f.request(ApiOp.JOIN, device=device, room="standup", timeout_s=20)
            assert joined.ok, joined
        await f.talking("dev-1", "dev-3")
        standup_peers = dict(f.driver("dev-3").peer_pids())

        result = await f.request(ApiOp.CALL, device="dev-1", to="dev-2", priority="urgent")
        assert (result.ok, result.done) == (True, True), result
        call = result.call
        assert call is not None
        assert call.startswith("call-")
        assert {d.device: d.outcome for d in result.devices} == {
            "dev-1": DeviceOutcome.JOINED,
            "dev-2": DeviceOutcome.JOINED,
        }
        await f.in_room(call, "dev-1", "dev-2")
        await f.in_room("standup", "dev-3")
        await f.talking("dev-1", "dev-2")

        # The call's room is listed as a call, and only its two members are in its session.
        rooms = await f.request(ApiOp.ROOMS)
        listed = {r.room: r for r in rooms.rooms}
        assert listed[call].kind is RoomKind.CALL
        assert listed["standup"].kind is RoomKind.MEETING
        sessions = await f.request(ApiOp.SESSIONS, room=call)
        assert {p.pid for p in sessions.sessions[0].participants} == {"dev-1", "dev-2"}

        # Nothing of the call reaches dev-3 (left alone in standup) nor dev-4 (in nothing):
        # dev-3 has no peer, and the stream it had from dev-1 stopped before the call.
        assert f.dev("dev-3").meeting is not None
        assert f.dev("dev-3").meeting.peers == []
        assert f.driver("dev-3").peer_pids() == {}
        assert f.driver("dev-4").peer_pids() == {}
        assert f.dev("dev-4").meeting is None
        from_dev1 = [p for p, pid in standup_peers.items() if pid == "dev-1"]
        before = {p: f.driver("dev-3").levels.peers[p].frames for p in from_dev1}
        # dev-1 and dev-2 keep talking for a while (a second of fresh audio each way) ...
        marks = {
            (d, p): f.driver(d).heard.received_samples(p)
            for d in ("dev-1", "dev-2")
            for p in f.driver(d).peer_pids()
        }
        await wait_for(
            lambda: all(
                f.driver(d).heard.received_samples(p) >= n + 48_000 for (d, p), n in marks.items()
            ),
            timeout=20,
            what="a second more of the call",
        )
        # ... and dev-3 got not one frame more from dev-1 meanwhile, and none from dev-2.
        assert {p: f.driver("dev-3").levels.peers[p].frames for p in from_dev1} == before
        assert "dev-2" not in set(standup_peers.values())

        # A device that is not a member cannot join the call's private room.
        intruder = await f.request(ApiOp.JOIN, device="dev-4", room=call, timeout_s=10)
        assert not intruder.ok
        await wait_for(
            lambda: "private" in (f.dev("dev-4").error or ""), what="dev-4 refused the room"
        )
        assert f.dev("dev-4").meeting is None

        hung = await f.request(ApiOp.HANGUP, call=call)
        assert hung.ok, hung
        # Both go back to what they were doing: dev-1 to standup, where it hears dev-3.
        await f.in_room("standup", "dev-1", "dev-3")
        await f.in_room(None, "dev-2")
        await f.talking("dev-1", "dev-3")
        rooms = await f.request(ApiOp.ROOMS)
        assert call not in {r.room for r in rooms.rooms}
        again = await f.request(ApiOp.HANGUP, call=call)
        assert not again.ok
        assert again.code == "unknown_call"


async def test_an_unanswered_ring_times_out_and_nobody_joins(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 2) as f:
        pending = asyncio.create_task(
            f.request(ApiOp.CALL, device="dev-1", to="dev-2", ring=True, timeout_s=3)
        )
        # dev-2 rings: a tone it makes itself, heard by nobody else.
        await wait_for(lambda: f.dev("dev-2").ringing is not None, what="dev-2 rings")
        await wait_for(
            lambda: f.driver("dev-2").hears_tone(RING_PEER, RING_HZ[0], last_s=0.5),
            what="the ring tone",
        )
        assert f.dev("dev-1").ringing is None
        result = await pending
        assert (result.ok, result.done, result.code) == (False, True, "no_answer"), result
        outcomes = {d.device: d.outcome for d in result.devices}
        assert outcomes["dev-2"] is DeviceOutcome.NO_ANSWER
        assert DeviceOutcome.JOINED not in outcomes.values()
        await wait_for(lambda: f.dev("dev-2").ringing is None, what="the ring stops")
        # Nobody joined: neither device was ever in the call's room, which is gone.
        assert f.room("dev-1") is None
        assert f.room("dev-2") is None
        assert f.dev("dev-1").state_changes == f.dev("dev-2").state_changes == 0  # no intent
        rooms = await f.request(ApiOp.ROOMS)
        assert result.call not in {r.room for r in rooms.rooms}


async def test_an_answered_ring_joins_both(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 2) as f:
        pending = asyncio.create_task(
            f.request(ApiOp.CALL, device="dev-1", to="dev-2", ring=True, timeout_s=60)
        )
        await wait_for(lambda: f.dev("dev-2").ringing is not None, what="dev-2 rings")
        assert f.room("dev-1") is None  # the caller waits for the answer outside the room
        answered = await f.request(ApiOp.ANSWER, device="dev-2")
        assert answered.ok, answered
        result = await pending
        assert (result.ok, result.code) == (True, "ok"), result
        assert {d.device: d.outcome for d in result.devices} == {
            "dev-1": DeviceOutcome.JOINED,
            "dev-2": DeviceOutcome.JOINED,
        }
        await f.in_room(result.call, "dev-1", "dev-2")
        await wait_for(lambda: f.dev("dev-2").ringing is None, what="the ring stops")
        await f.talking("dev-1", "dev-2")
        hung = await f.request(ApiOp.HANGUP, device="dev-2")
        assert hung.ok, hung
        await f.in_room(None, "dev-1", "dev-2")


async def test_a_call_to_a_group_joins_every_device_of_it(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 3, groups=("kitchen",)) as f:
        result = await f.request(ApiOp.CALL, device="dev-1", group="kitchen")
        assert result.ok, result
        assert {d.device for d in result.devices} == {"dev-1", "dev-2", "dev-3"}
        await f.in_room(result.call, "dev-1", "dev-2", "dev-3")
        await f.talking("dev-1", "dev-2")
        await f.talking("dev-1", "dev-3")
        # One member leaving (a later intent takes it) leaves the call to the others ...
        left = await f.request(ApiOp.LEAVE, device="dev-3", timeout_s=20)
        assert left.ok, left
        await f.in_room(None, "dev-3")
        assert f.room("dev-1") == result.call
        # ... and the last but one leaving ends it: the last goes back too.
        left = await f.request(ApiOp.LEAVE, device="dev-2", timeout_s=20)
        assert left.ok, left
        await f.in_room(None, "dev-1", "dev-2")
        gone = await f.request(ApiOp.HANGUP, call=result.call)
        assert gone.code == "unknown_call"


async def test_a_restarted_controller_still_ends_its_calls(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 3)
    ids = list(secrets)
    db = tmp_path / "ctl.db"
    async with (
        sim_fleet(amqtt_broker, secrets, driver_factory=audio_drivers(ids)) as fleet,
        operator(amqtt_broker) as op,
    ):
        assert isinstance(fleet, SimFleet)
        async with controller(amqtt_broker, db, parts=[MeetingServer(), Intercom()]) as ctl:
            await wait_for(lambda: len(ctl.registry.devices) == 3, what="the fleet")
            joined = await op.request(ApiOp.JOIN, ApiRequest(device="dev-1", room="standup"))
            assert joined.ok, joined
            result = await op.request(ApiOp.CALL, ApiRequest(device="dev-1", to="dev-2"))
            assert result.ok, result
            await wait_for(
                lambda: all(
                    (fleet[d].meeting.room if fleet[d].meeting else None) == result.call
                    for d in ("dev-1", "dev-2")
                ),
                timeout=20,
                what="both in the call",
            )
        async with controller(amqtt_broker, db, parts=[MeetingServer(), Intercom()]):
            hung = await op.request(ApiOp.HANGUP, ApiRequest(device="dev-2"))
            assert hung.ok, hung
            assert hung.call == result.call
            await wait_for(
                lambda: (
                    [fleet[d].meeting.room if fleet[d].meeting else None for d in ids]
                    == ["standup", None, None]
                ),
                timeout=20,
                what="dev-1 back in standup, dev-2 in nothing",
            )
