"""A device's credential cannot fake its presence nor its convergence, on both brokers.

Presence is the broker's word: whatever ends a device's connection (a clean DISCONNECT
too, which suppresses the will), the broker publishes its offline status, retained. A
retained birth left behind is therefore never the last word, and a refused login
naming a live device does not mark it offline. A reported rev above every rev the
controller handed out is a lie: recorded (log and error event) and refused, so it
converges nothing, live or read back after a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from fleet.auth import Role
from fleet.controller.store import REV_CEILING
from fleet.meetings import MeetingServer
from fleet.mqtt import payload_bytes
from fleet.protocol import decode, encode
from fleet.protocol.messages import ApiOp, ApiRequest, DeviceOutcome, State, Status
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.databases import EventRecorder
from tests.support.running import controller, one_device, operator, register_devices, wait_for


async def retained_status(handle: BrokerHandle, device_id: str) -> Status | None:
    """What the broker retains on the device's status topic now, read by a fresh
    controller-role subscriber."""
    secret = handle.add_user(f"peek-{device_id}", Role.CONTROLLER)
    async with mqtt_client(handle, f"peek-{device_id}", secret) as c:
        await c.subscribe(handle.topics.status(device_id), qos=1)
        # Our own marker after it: the retained status, if any, comes first.
        marker = handle.topics.sync(f"peek-{device_id}")
        await c.subscribe(marker, qos=1)
        await c.publish(marker, b'{"token": "x"}', qos=1)
        async with asyncio.timeout(10):
            async for message in c.messages:
                if message.topic.value == marker:
                    return None
                return decode(Status, payload_bytes(message))
    return None


async def test_a_birth_left_behind_by_a_clean_disconnect_is_not_the_last_word(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = any_broker
    secrets = register_devices(h, 2)
    t = h.topics
    async with controller(h, tmp_path / "ctl.db", parts=[MeetingServer()]) as ctl:
        await wait_for(lambda: ctl.synced, what="synced")
        # dev-1 with its own credential: a retained birth, then a clean DISCONNECT.
        async with mqtt_client(h, "dev-1", secrets["dev-1"]) as dev:
            birth = encode(Status(online=True, fw="forged"))
            await dev.publish(t.status("dev-1"), birth, qos=1, retain=True)
            await wait_for(
                lambda: (rec := ctl.registry.devices.get("dev-1")) is not None and rec.online,
                what="the birth is seen",
            )
        await wait_for(lambda: not ctl.registry.devices["dev-1"].online, what="offline again")
        status = await retained_status(h, "dev-1")
        assert status is not None
        assert status.online is False

    # A controller that starts now reads it offline, and a join-all does not wait for it.
    async with (
        controller(h, tmp_path / "ctl.db", parts=[MeetingServer(auto_create=True)]) as ctl,
        one_device(h, "dev-2", secrets["dev-2"]),
        operator(h) as op,
    ):
        await wait_for(lambda: ctl.synced, what="synced")
        assert not ctl.registry.devices["dev-1"].online
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=20))
        assert joined.ok, joined
        outcomes = {d.device: d.outcome for d in joined.devices}
        assert outcomes == {"dev-1": DeviceOutcome.PENDING, "dev-2": DeviceOutcome.CONVERGED}


async def test_a_refused_login_naming_a_live_device_leaves_it_online(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = any_broker
    secrets = register_devices(h, 1)
    async with (
        controller(h, tmp_path / "ctl.db", parts=[MeetingServer()]) as ctl,
        one_device(h, "dev-1", secrets["dev-1"]),
    ):
        await wait_for(lambda: ctl.synced and ctl.registry.devices["dev-1"].online)
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_client(h, "dev-1", "a wrong password"):
                pass
        status = await retained_status(h, "dev-1")
        assert status is not None
        assert status.online is True
        assert ctl.registry.devices["dev-1"].online


async def test_a_reported_rev_above_the_counter_is_recorded_and_converges_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = any_broker
    secrets = register_devices(h, 1)
    t = h.topics
    recorder = EventRecorder()
    async with (
        controller(
            h, tmp_path / "ctl.db", parts=[MeetingServer(auto_create=True), recorder]
        ) as ctl,
        operator(h) as op,
        mqtt_client(h, "dev-1", secrets["dev-1"]) as dev,
    ):
        await wait_for(lambda: ctl.synced, what="synced")
        await dev.publish(t.status("dev-1"), encode(Status(online=True)), qos=1, retain=True)
        lie = State(rev=REV_CEILING, meeting=None)
        await dev.publish(t.state("dev-1"), encode(lie), qos=1, retain=True)

        def recorded() -> list[str | None]:
            return [e.device for e in recorder.events if e.code == "rev_ahead"]

        await wait_for(lambda: recorded() == ["dev-1"], what="the lie is recorded")
        assert ctl.registry.devices["dev-1"].rev is None
        assert ctl.store.last_rev() < REV_CEILING
        # Sent again, it is refused again and recorded once.
        await dev.publish(t.state("dev-1"), encode(lie), qos=1, retain=True)
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=1))
        assert [(d.device, d.outcome) for d in joined.devices] == [("dev-1", DeviceOutcome.WAITING)]
        assert recorded() == ["dev-1"]

    # Read back by a controller that starts later: refused once the fleet is read.
    recorder.events.clear()
    async with controller(h, tmp_path / "ctl.db", parts=[MeetingServer(), recorder]) as ctl:
        await wait_for(lambda: ctl.synced, what="synced")
        assert ctl.registry.devices["dev-1"].state is None
        assert [e.device for e in recorder.events if e.code == "rev_ahead"] == ["dev-1"]
