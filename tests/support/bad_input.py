"""The rig that feeds bad input to every inbound topic, on both brokers; its tests live with
the surface they attack (tests/*/test_bad_*.py, tests/security/test_oversize_payloads.py).

Bad input gets a clear error and loses nothing else.

For each topic someone can write into, feed malformed JSON, JSON of the wrong shape,
wrong types, missing fields, unknown fields (accepted), oversize and non-UTF-8 payloads,
empty payloads, unknown ops and unknown devices, and check

- the clear error where a sender waits: an `ApiResult` refusal on `api/result`, an `Ack`
  refusal on `dev/{id}/ack`;
- the log-and-drop where nobody waits (device garbage on status/state/ack; a desired doc
  a device refuses, protocol.md 4.2 rule 2):
  `ctl.stats["rejected"]` grows and the registry keeps the device's last good record;
- that nothing else is lost: right after each bad message a valid request, command or doc
  works end to end, the other devices are untouched and still converge on a join-all, and
  the controller and every device are still on their first connection.

Bad bytes are published with raw aiomqtt clients: a controller-role user for the
controller's inboxes and the devices' desired/cmd inboxes, and a device's own credentials
(client id == device id, a device outside the sim fleet) for what devices publish.

Brokers and big payloads: both brokers enforce the protocol's 64 KiB (protocol.md §1.4,
§11): a larger payload reaches no subscriber and its sender stays connected, a packet
past the brokers' packet limit (200 KB here) closes the sender's connection. Receivers
still refuse oversize payloads themselves (tests/unit/protocol/test_spec.py); over MQTT the
brokers never let one through, so the cases stop at 64 KiB.

"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import aiomqtt

from fleet.auth import Role
from fleet.client import FleetClient
from fleet.controller.service import Controller
from fleet.device.reconciler import Applied
from fleet.device.sim import SimulatedDevice
from fleet.mqtt import cancel_and_wait, payload_bytes
from fleet.protocol import MAX_PAYLOAD_BYTES, TopicKind, Topics, decode, encode
from fleet.protocol.messages import (
    Ack,
    ApiOp,
    ApiRequest,
    ApiResult,
    DeviceOutcome,
    MeetingState,
    State,
    Status,
)
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

OVERSIZE = MAX_PAYLOAD_BYTES + 1  # the first size the protocol refuses
HUGE = 200_000  # well past the protocol's limit; what do the brokers do with it?
WIRE_USER = "raw-writer"
RAW_DEVICE = "raw-1"
ANSWER_TIMEOUT_S = 5.0
SILENCE_S = 1.0  # how long an xfail test waits for an answer that does not come


def js(value: object) -> bytes:
    return json.dumps(value).encode()


async def soon(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """`running.wait_for` with a 2 ms poll: the loops below wait a few hundred times."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - plain attributes, no event to wait on
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


def sized(obj: dict[str, object], size: int) -> bytes:
    """A JSON object of exactly `size` bytes: `obj` padded with an unknown field."""
    base = len(js({**obj, "pad": ""}))
    payload = js({**obj, "pad": "x" * (size - base)})
    assert len(payload) == size
    return payload


# --- the rig: controller, sim devices, operator, raw writer -----------------------------------


class Wire:
    """A raw controller-role client: publishes any bytes, records api/result and every ack."""

    def __init__(self, client: aiomqtt.Client, topics: Topics) -> None:
        self.client = client
        self.topics = topics
        self.inbox: list[tuple[str, bytes]] = []
        self._arrived = asyncio.Event()

    async def read(self) -> None:
        async for message in self.client.messages:
            self.inbox.append((message.topic.value, payload_bytes(message)))
            self._arrived.set()

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until `predicate()` holds, re-checked on every message (no polling)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None

    def mark(self) -> int:
        return len(self.inbox)

    async def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=1, retain=retain)

    def results(self, since: int = 0) -> list[ApiResult]:
        topic = self.topics.api_result
        return [decode(ApiResult, p) for t, p in self.inbox[since:] if t == topic]

    def acks(self, device_id: str, since: int = 0) -> list[Ack]:
        topic = self.topics.ack(device_id)
        return [decode(Ack, p) for t, p in self.inbox[since:] if t == topic]


class DeviceView(NamedTuple):
    applied: Applied
    meeting: MeetingState | None
    mic: bool
    error: str | None
    connects: int
    state_changes: int


@dataclass
class Rig:
    broker: BrokerHandle
    ctl: Controller
    devices: list[SimulatedDevice]
    op: FleetClient
    wire: Wire
    group: str  # the group the health check's join-all targets
    link: object = None  # the controller's MQTT connection when the test started
    connects: dict[str, int] = field(default_factory=dict)
    own_ids: set[str] = field(default_factory=set)  # request/command ids of valid traffic
    rounds: int = 0

    @property
    def topics(self) -> Topics:
        return self.broker.topics

    def dev(self, device_id: str) -> SimulatedDevice:
        return next(d for d in self.devices if d.id == device_id)

    def new_id(self, prefix: str) -> str:
        self.rounds += 1
        rid = f"{prefix}-{self.rounds}"
        self.own_ids.add(rid)
        return rid

    def snapshot(self, exclude: Sequence[str] = ()) -> dict[str, DeviceView]:
        return {
            d.id: DeviceView(
                d.reconciler.applied, d.meeting, d.mic, d.error, d.connects, d.state_changes
            )
            for d in self.devices
            if d.id not in exclude
        }

    def foreign_results(self, since: int) -> list[ApiResult]:
        """Results since `since`, except those of the test's own valid requests."""
        return [r for r in self.wire.results(since) if r.id not in self.own_ids]

    def foreign_acks(self, device_id: str, since: int) -> list[Ack]:
        return [a for a in self.wire.acks(device_id, since) if a.id not in self.own_ids]

    async def next_result(
        self, since: int, what: str, timeout: float = ANSWER_TIMEOUT_S
    ) -> ApiResult:
        await self.wire.until(
            lambda: bool(self.foreign_results(since)), timeout, f"an answer to {what}"
        )
        return self.foreign_results(since)[0]

    async def next_ack(self, device_id: str, since: int, what: str) -> Ack:
        await self.wire.until(
            lambda: bool(self.foreign_acks(device_id, since)),
            ANSWER_TIMEOUT_S,
            f"{device_id}'s ack to {what}",
        )
        return self.foreign_acks(device_id, since)[0]

    def assert_connected(self, what: str) -> None:
        assert self.ctl.connected.is_set(), f"controller disconnected after {what}"
        assert self.ctl.link.client is self.link, f"controller reconnected after {what}"
        connects = {d.id: d.connects for d in self.devices}
        assert connects == self.connects, f"a device reconnected after {what}"
        assert all(d.connected.is_set() for d in self.devices), f"device down after {what}"

    def assert_only_the_health_check_changed(
        self, before: dict[str, DeviceView], what: str
    ) -> None:
        """Each device applied exactly one change since `before`: the health check's join-all."""
        changes = {d.id: d.state_changes - before[d.id].state_changes for d in self.devices}
        assert changes == dict.fromkeys(changes, 1), f"{what} changed a device: {changes}"

    async def healthy(self, what: str) -> None:
        """A join-all converges every sim device; everything is on its first connection."""
        rid = self.new_id("h")
        room = f"ok-{self.rounds}"
        res = await self.op.request(
            ApiOp.JOIN_ALL, ApiRequest(id=rid, room=room, group=self.group, timeout_s=10)
        )
        assert (res.ok, res.counts) == (True, {"converged": len(self.devices)}), f"{what}: {res}"
        stray = [d.id for d in self.devices if not d.meeting or d.meeting.room != room or d.error]
        assert not stray, f"after {what}: {stray} not in {room} without error"
        self.assert_connected(what)

    async def ping(self, device_id: str, what: str) -> None:
        """A valid command through the API, end to end."""
        rid = self.new_id("p")
        res = await self.op.request(ApiOp.CMD, ApiRequest(id=rid, device=device_id, cmd_op="ping"))
        assert (res.ok, res.devices[0].outcome) == (True, DeviceOutcome.SUCCEEDED), f"{what}"


def no_delay(client: aiomqtt.Client) -> None:
    """TCP_NODELAY on a test client's socket, so its back-to-back small writes (a PUBACK,
    then the next PUBLISH) are not held for the peer's delayed ACK (~40 ms each)."""
    sock = client._client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def known(ctl: Controller, device_id: str) -> bool:
    rec = ctl.registry.devices.get(device_id)
    return rec is not None and rec.online and rec.state is not None


@contextlib.asynccontextmanager
async def rig(
    broker: BrokerHandle,
    tmp_path: Path,
    fleets: Sequence[tuple[str, int, Sequence[str]]] = (("dev", 3, ()),),
    group: str = "all",
) -> AsyncIterator[Rig]:
    """Controller + sim fleets (id prefix, count, groups) + operator + raw controller-role wire."""
    registered = [(register_devices(broker, n, groups=g, prefix=p), g) for p, n, g in fleets]
    wire_secret = broker.add_user(WIRE_USER, Role.CONTROLLER)
    async with contextlib.AsyncExitStack() as stack:
        ctl = await stack.enter_async_context(controller(broker, tmp_path / "ctl.db"))
        devices: list[SimulatedDevice] = []
        for secrets, groups in registered:
            fleet = await stack.enter_async_context(sim_fleet(broker, secrets, groups=groups))
            devices += fleet.devices
        op = await stack.enter_async_context(operator(broker))
        client = await stack.enter_async_context(mqtt_client(broker, WIRE_USER, wire_secret))
        no_delay(client)
        wire = Wire(client, broker.topics)
        reader = asyncio.create_task(wire.read(), name="wire-reader")
        stack.push_async_callback(cancel_and_wait, reader)
        t = broker.topics
        await client.subscribe([(t.api_result, 1), (t.all_devices(TopicKind.ACK), 1)])
        await wait_for(
            lambda: all(known(ctl, d.id) for d in devices), what="controller knows the fleet"
        )
        r = Rig(broker, ctl, devices, op, wire, group)
        r.link = ctl.link.client
        r.connects = {d.id: d.connects for d in devices}
        yield r


@contextlib.asynccontextmanager
async def raw_device(r: Rig, secret: str) -> AsyncIterator[aiomqtt.Client]:
    """RAW_DEVICE, connected with its own credentials, with a good birth and state."""
    t = r.topics
    async with mqtt_client(r.broker, RAW_DEVICE, secret) as client:
        no_delay(client)
        good_status = Status(online=True, fw="raw-1.0", hw="raw")
        await client.publish(t.status(RAW_DEVICE), encode(good_status), qos=1, retain=True)
        await client.publish(t.state(RAW_DEVICE), encode(State(rev=0)), qos=1, retain=True)
        await wait_for(lambda: known(r.ctl, RAW_DEVICE), what="controller knows the raw device")
        yield client


def raw_rig(broker: BrokerHandle, tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Rig]:
    """Sim devices in group `sim`, so the health check's join-all leaves RAW_DEVICE out."""
    return rig(broker, tmp_path, fleets=(("dev", 3, ["sim"]),), group="sim")
