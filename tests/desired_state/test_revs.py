"""Revs a misbehaving device or a careless API client must not break: a device reporting
the ceiling rev, a counter raised to the ceiling, and a rev reported only once what it
asks holds. Each runs on amqtt and Mosquitto where the broker matters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fleet.controller import service
from fleet.controller.store import REV_CEILING
from fleet.device.sim import MeetingDriver, SimulatedDevice
from fleet.meetings.participant import LocalParticipant
from fleet.mqtt import payload_bytes
from fleet.protocol import TopicKind, decode, encode
from fleet.protocol.messages import ApiOp, ApiRequest, MeetingIntent, MeetingState, State, Status
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for
from tests.support.wire import wire

# --- device-reported revs never move the counter -----------------------------------------------


async def test_a_device_reporting_the_ceiling_rev_stops_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 3)
    rogue = secrets.pop("dev-3")
    t = any_broker.topics
    async with sim_fleet(any_broker, secrets) as fleet, operator(any_broker) as op:
        # dev-3 misbehaves: it retains a state at the highest rev a controller believes.
        async with mqtt_client(any_broker, "dev-3", rogue) as c:
            await c.publish(t.status("dev-3"), encode(Status(online=True)), qos=1, retain=True)
            forged = encode(State(rev=REV_CEILING, meeting=None))
            await c.publish(t.state("dev-3"), forged, qos=1, retain=True)
        # A controller re-reading the fleet (a restart) must not take the rev from it.
        async with controller(any_broker, tmp_path / "ctl.db") as ctl:
            await wait_for(lambda: ctl.synced, what="synced")
            assert ctl.registry.devices["dev-3"].rev is None  # a lie, refused
            assert ctl.store.last_rev() < REV_CEILING - 2**40
            lapsing = await op.request(
                ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=0.5, timeout_s=3)
            )
            assert lapsing.rev is not None
            assert fleet["dev-1"].meeting is not None
            left = await op.request(ApiOp.LEAVE, ApiRequest(device="dev-1"))
            assert left.ok, left.detail
            await wait_for(lambda: fleet["dev-2"].meeting is None, what="the lapse")
            await asyncio.sleep(3 * service.TICK_S)  # ticks after the lapse ran
            again = await op.request(ApiOp.JOIN, ApiRequest(device="dev-2", room="retro"))
            assert again.ok, "the controller still serves after the lapse"
            assert fleet["dev-2"].meeting is not None


async def test_a_rev_at_the_ceiling_refuses_intents_but_never_stops_the_controller(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    """A desired doc (only controller-role users write them) may raise the counter, even to
    the ceiling: then intents are refused with a clear error, and a pending lapse that can
    get no rev leaves the controller running."""
    secrets = register_devices(amqtt_broker, 2)
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(amqtt_broker, secrets),
        operator(amqtt_broker) as op,
        wire(amqtt_broker) as w,
    ):
        pending = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=0.6))
        assert pending.ok
        doc = {"rev": REV_CEILING, "meeting": None}
        await w.publish(amqtt_broker.topics.group_desired("x"), json.dumps(doc), qos=1, retain=True)
        await wait_for(lambda: ctl.store.last_rev() == REV_CEILING, what="floor raised")
        refused = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro"))
        assert (refused.ok, refused.code) == (False, "failed")
        assert "ceiling" in refused.detail
        await asyncio.sleep(0.6 + 3 * service.TICK_S)  # the lapse is due and ticks run past it
        rooms = await op.request(ApiOp.ROOMS, ApiRequest())
        assert rooms.ok, "the controller still answers"


# --- a device reports a rev once what it asks holds --------------------------------------------


class SignallingDriver(MeetingDriver):
    """A device that meets through the real meeting server, without media."""

    waits_for_server = True

    def attach(self, device: SimulatedDevice) -> None:
        self.device = device

        async def publish(topic: str, payload: bytes) -> None:
            assert device.connection is not None
            await device.connection.publish(topic, payload, qos=1)

        self.participant = LocalParticipant(
            device.id,
            device.topics,
            publish,
            on_change=lambda: device.meeting_changed(self.participant.meeting_state()),
        )

    async def join(self, intent: MeetingIntent) -> MeetingState:
        await self.participant.join(intent.room)
        state = self.participant.meeting_state()
        assert state is not None
        return state

    async def leave(self) -> None:
        await self.participant.leave()

    async def forget(self) -> None:
        await self.participant.forget()

    def on_down(self, payload: bytes) -> None:
        self.participant.handle(payload)


async def test_leave_all_reports_a_rev_only_once_devices_left(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 4)  # a mesh: the mesh cap is 4
    states: list[tuple[str, State]] = []
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        sim_fleet(any_broker, secrets, driver_factory=lambda _: SignallingDriver()),
        operator(any_broker) as op,
        wire(any_broker) as w,
    ):
        await w.subscribe(any_broker.topics.all_devices(TopicKind.STATE), qos=1)

        async def read() -> None:
            async for message in w.messages:
                parsed = any_broker.topics.parse(message.topic.value)
                assert parsed is not None
                states.append((parsed.name, decode(State, payload_bytes(message))))

        reader = asyncio.create_task(read())
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))
        assert joined.ok
        left = await op.request(ApiOp.LEAVE_ALL, ApiRequest())
        assert left.ok
        assert all(d.room is None for d in left.devices), left.devices
        reader.cancel()
    claims = [(d, s.meeting) for d, s in states if s.rev == left.rev and s.meeting is not None]
    assert claims == [], "a state claimed the leave's rev while still in the meeting"
    claims = [(d, s.meeting) for d, s in states if s.rev == joined.rev and s.meeting is None]
    assert claims == [], "a state claimed the join's rev before joining"
