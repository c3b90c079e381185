"""The priority rules of calls (docs/protocol.md §14.7): do-not-disturb and a meeting
ring instead of joining; urgent goes through both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet.media.ducking import DUCK_GAIN
from fleet.protocol.messages import ApiOp, DeviceOutcome
from tests.intercom.support import CallFleet, call_fleet
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

pytestmark = pytest.mark.timeout(120)


async def set_dnd(f: CallFleet, device: str, on: bool) -> None:
    """The device's own desired doc with `dnd` (what the `dnd` op writes), its meeting
    intent kept."""
    own = f.ctl.store.desired_doc("dev", device)
    meeting = own.meeting if own is not None else None
    await f.ctl.desired.write("dev", device, meeting, op="dnd", dnd=on)


async def test_dnd_refuses_a_normal_call_and_rings_for_an_urgent_one(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 2) as f:
        await set_dnd(f, "dev-2", True)
        normal = await f.request(ApiOp.CALL, device="dev-1", to="dev-2")
        assert (normal.ok, normal.code) == (False, "dnd"), normal
        assert {d.device: d.outcome for d in normal.devices} == {"dev-2": DeviceOutcome.DND}
        assert f.dev("dev-2").ringing is None
        assert f.room("dev-1") is None
        # Urgent: rung through dnd (not joined at once), and it joins when it answers.
        pending = asyncio.create_task(
            f.request(ApiOp.CALL, device="dev-1", to="dev-2", priority="urgent", timeout_s=60)
        )
        await wait_for(lambda: f.dev("dev-2").ringing is not None, what="dev-2 rings")
        assert (await f.request(ApiOp.ANSWER, device="dev-2")).ok
        result = await pending
        assert result.ok, result
        await f.in_room(result.call, "dev-1", "dev-2")
        # The call kept the device's dnd in its own doc, and hanging up keeps it too.
        own = f.ctl.store.desired_doc("dev", "dev-2")
        assert own is not None
        assert own.dnd is True
        assert (await f.request(ApiOp.HANGUP, device="dev-1")).ok
        await f.in_room(None, "dev-1", "dev-2")
        own = f.ctl.store.desired_doc("dev", "dev-2")
        assert own is not None
        assert own.dnd is True
        assert own.meeting is None


async def test_a_device_in_a_meeting_is_rung_by_a_normal_call_and_pulled_by_an_urgent_one(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 3) as f:
        joined = await f.request(ApiOp.JOIN_ALL, room="standup", group="all", timeout_s=20)
        assert joined.ok, joined
        await f.talking("dev-2", "dev-3")
        # Normal: dev-2 rings and stays in its meeting until it answers ...
        pending = asyncio.create_task(f.request(ApiOp.CALL, device="dev-1", to="dev-2"))
        await wait_for(lambda: f.dev("dev-2").ringing is not None, what="dev-2 rings")
        assert f.room("dev-2") == "standup"
        # While it rings, its meeting is ducked, as under an announcement.
        ducking = f.driver("dev-2").mesh.ducking
        await wait_for(lambda: ducking.gain() == DUCK_GAIN, what="dev-2's meeting ducked")
        accepted_call = f.dev("dev-2").ringing
        assert (await f.request(ApiOp.ANSWER, call=accepted_call)).ok
        result = await pending
        assert (result.ok, result.call) == (True, accepted_call), result
        await f.in_room(result.call, "dev-1", "dev-2")
        await wait_for(lambda: ducking.gain() == 1.0, what="the ring over, dev-2 not ducked")
        await f.talking("dev-1", "dev-2")
        # ... and goes back to it (a group's intent) with the caller, after the hangup.
        assert (await f.request(ApiOp.HANGUP, call=result.call)).ok
        await f.in_room("standup", "dev-1", "dev-2", "dev-3")
        await f.talking("dev-2", "dev-3")
        # Urgent: out of the meeting at once, and back in it after.
        urgent = await f.request(ApiOp.CALL, device="dev-3", to="dev-2", priority="urgent")
        assert (urgent.ok, urgent.done) == (True, True), urgent
        assert {d.outcome for d in urgent.devices} == {DeviceOutcome.JOINED}
        await f.in_room(urgent.call, "dev-2", "dev-3")
        await f.in_room("standup", "dev-1")
        await f.talking("dev-2", "dev-3")
        assert (await f.request(ApiOp.HANGUP, device="dev-2")).ok
        await f.in_room("standup", "dev-1", "dev-2", "dev-3")
        # A later join-all still moves everyone: the restored intents are ordinary ones.
        left = await f.request(ApiOp.LEAVE_ALL, group="all", timeout_s=20)
        assert left.ok, left
        await f.in_room(None, "dev-1", "dev-2", "dev-3")


async def test_busy_and_offline_callees(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 3) as f:
        first = await f.request(ApiOp.CALL, device="dev-1", to="dev-2")
        assert first.ok, first
        busy = await f.request(ApiOp.CALL, device="dev-3", to="dev-2")
        assert (busy.ok, busy.code) == (False, "busy"), busy
        caller_busy = await f.request(ApiOp.CALL, device="dev-1", to="dev-3")
        assert (caller_busy.ok, caller_busy.code) == (False, "busy"), caller_busy
        assert (await f.request(ApiOp.HANGUP, call=first.call)).ok
