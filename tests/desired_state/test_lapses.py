"""Intents for a while (`for_s`): they lapse as one change that a newer intent beats, and a
device the controller never saw does not fall back to an older intent after a lapse."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from fleet.controller import service
from fleet.device.sim import SimDeviceConfig, SimulatedDevice
from fleet.mqtt import BrokerUrl
from fleet.protocol import decode, encode
from fleet.protocol.messages import ApiOp, ApiRequest, Desired
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for
from tests.support.wire import retained, wire

# --- expiry is one change that a newer intent beats --------------------------------------------


async def test_joins_during_an_expiry_are_never_undone(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 200)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(any_broker, secrets, engine="bulk") as fleet,
        operator(any_broker) as op,
        wire(any_broker) as w,
    ):
        lapsing = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=1.0))
        assert lapsing.ok, lapsing.detail
        assert lapsing.until is not None
        # Around the lapse, one device after another is told to join a room of its own:
        # each is that device's last intent, whenever it lands in the expiry.
        await asyncio.sleep(max(0.0, lapsing.until - time.time() - 0.15))
        pinned = [f"dev-{n}" for n in range(1, 200, 3)]
        for device_id in pinned:
            request = ApiRequest(id=f"pin-{device_id}", device=device_id, room="focus")
            await w.publish(any_broker.topics.api("join"), encode(request), qos=1)
            await asyncio.sleep(0.006)
        await wait_for(
            lambda: all((d.meeting is None) == (d.id not in pinned) for d in fleet.devices),
            timeout=20,
            what="pinned devices in focus, the rest out",
        )
        await asyncio.sleep(4 * service.TICK_S)  # a late leave would land by now: check again
        await op.sync()
        stray = [
            d.id
            for d in fleet.devices
            if (d.meeting.room if d.meeting else None) != ("focus" if d.id in pinned else None)
        ]
        assert stray == [], f"{len(stray)} devices not in their last intent: {stray[:8]}"
        # The lapsed doc stays, ended, where a device that comes back will find it.
        assert ctl.store.desired_rev("grp", "all") == lapsing.rev
        assert ctl.store.ended_revs() == {lapsing.rev}
        kept = await retained(any_broker, any_broker.topics.group_desired("all"))
        assert [decode(Desired, doc).rev for doc in kept] == [lapsing.rev]


async def test_a_device_unknown_at_a_lapse_never_falls_back_to_an_older_intent(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """A device the controller has never seen (off during both intents) comes up after an
    intent lapsed: it must not fall back to the older intent the lapsed one outranked. With a
    set clock it stays out at the lapsed rev; without one (a board before SNTP) it joins the
    lapsed meeting and is told to leave."""
    t = any_broker.topics
    secrets = register_devices(any_broker, 3, groups=("kitchen",))
    late = {"dev-3": secrets.pop("dev-3")}
    async with (
        sim_fleet(any_broker, secrets, groups=("kitchen",)) as fleet,
        operator(any_broker) as op,
        controller(any_broker, tmp_path / "ctl.db") as ctl,
    ):
        older = await op.request(ApiOp.JOIN_ALL, ApiRequest(group="kitchen", room="retro"))
        assert older.ok, older.detail
        lapsing = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=0.5))
        assert lapsing.ok, lapsing.detail
        assert lapsing.rev is not None
        await wait_for(lambda: lapsing.rev in ctl.store.ended_revs(), what="the lapse")
        await wait_for(lambda: all(d.meeting is None for d in fleet.devices), what="all out")
        assert "dev-3" not in ctl.registry.devices

        base = BrokerUrl.parse(f"mqtt://{any_broker.host}:{any_broker.port}")
        config = SimDeviceConfig("dev-3", late["dev-3"], ["kitchen"], 30.0)
        for clock_set in (True, False):
            dev = SimulatedDevice(config, base, t)
            dev.clock_set = clock_set
            task = asyncio.create_task(dev.run())
            try:
                await wait_for(lambda d=dev: d.reported_rev > 0, what="dev-3 applies a doc")
                applied = dev.reconciler.applied.rev
                assert applied >= lapsing.rev, f"fell back to rev {applied}"
                if clock_set:
                    assert dev.meeting is None
                    assert dev.reported_rev == lapsing.rev
                else:
                    # It joined the lapsed meeting: the controller sees it there.
                    await wait_for(
                        lambda d=dev: d.meeting is None and d.reported_rev > lapsing.rev,
                        what="the leave for a device in an ended intent's meeting",
                    )
                    assert ctl.store.desired_rev("dev", "dev-3") == dev.reported_rev
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


# --- a group's intent lapses; a later one for one device survives it ----------------------------


async def test_join_all_for_a_while_lapses(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    secrets = register_devices(amqtt_broker, 3)
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db"),
        sim_fleet(amqtt_broker, secrets) as fleet,
        operator(amqtt_broker) as op,
    ):
        result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=1.0))
        assert result.ok
        assert result.until is not None
        # A later, unbounded intent for one device must survive the lapse of the group's,
        # without so much as a blip: dev-2 is never told to leave.
        pinned = await op.request(ApiOp.JOIN, ApiRequest(device="dev-2", room="focus"))
        assert pinned.ok
        changes = fleet["dev-2"].state_changes
        await wait_for(
            lambda: fleet["dev-1"].meeting is None and fleet["dev-3"].meeting is None,
            timeout=5,
            what="the intent lapses",
        )
        # The controller's leave (not only the devices' own clocks) ends it: new revs.
        await wait_for(
            lambda: all(
                (fleet[d].reconciler.applied.rev or 0) > (pinned.rev or 0)
                for d in ("dev-1", "dev-3")
            ),
            timeout=5,
            what="the controller's leave",
        )
        assert fleet["dev-2"].meeting is not None
        assert fleet["dev-2"].meeting.room == "focus"
        assert fleet["dev-2"].state_changes == changes
        assert fleet["dev-2"].reconciler.applied.rev == pinned.rev
        # A device that reboots now finds no lapsed group doc to rejoin.
        await op.request(ApiOp.CMD, ApiRequest(device="dev-1", cmd_op="reboot"))
        await wait_for(lambda: fleet["dev-1"].connected.is_set(), what="dev-1 back")
        assert fleet["dev-1"].meeting is None
