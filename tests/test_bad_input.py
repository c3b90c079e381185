"""Bad input gets a clear error and loses nothing else: every inbound topic, both brokers.

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
still refuse oversize payloads themselves (tests/test_protocol.py); over MQTT the
brokers never let one through, so the cases below stop at 64 KiB.

"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import aiomqtt
import pytest
from brokers import BrokerHandle, mqtt_client
from running import controller, operator, register_devices, sim_fleet, wait_for

from fleet.auth import Role
from fleet.client import FleetClient
from fleet.controller.service import Controller
from fleet.device.reconciler import Applied
from fleet.device.sim import SimulatedDevice
from fleet.mqtt import cancel_and_wait, payload_bytes
from fleet.protocol import MAX_PAYLOAD_BYTES, TopicKind, Topics, decode, encode
from fleet.protocol.messages import (
    MAX_REV,
    Ack,
    ApiOp,
    ApiRequest,
    ApiResult,
    DeviceOutcome,
    MeetingState,
    State,
    Status,
)

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


# --- api/{op} -> controller -------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCase:
    name: str
    op: str
    payload: bytes
    code: str = "bad_request"
    id: str | None = None  # the id the refusal must carry (None: unreadable)
    detail: str = ""  # a part of the detail that makes the refusal clear


J = {"device": "dev-1", "room": "evil"}  # the fields of a join that would be valid
A = ApiCase
API_CASES = [
    A("malformed JSON", "join", b'{"id": "r-1", "device": "dev-1", "room": '),
    A("JSON array", "join", js([{"id": "r-arr", **J}])),
    A("JSON string", "leave", js("dev-1")),
    A("JSON number", "cmd", b"42"),
    A("JSON array on join-all", "join-all", js(["evil"])),  # not a bare room name either
    A("string for bool", "join", js({"id": "r-mic", **J, "mic": "true"}), id="r-mic", detail="mic"),
    A(
        "string for number",
        "join",
        js({"id": "r-t", **J, "timeout_s": "5"}),
        id="r-t",
        detail="timeout_s",
    ),
    A(
        "float for int",
        "cmd",
        js({"id": "r-ttl", "device": "dev-1", "cmd_op": "ping", "ttl_ms": 1.5}),
        id="r-ttl",
        detail="ttl_ms",
    ),
    A(
        "invalid device id",
        "leave",
        js({"id": "r-dev", "device": "dev-1\n"}),
        id="r-dev",
        detail="device",
    ),
    A("id not a string", "join", js({"id": 7, **J}), detail="id"),
    A("missing room", "join", js({"id": "r-nr", "device": "dev-1"}), id="r-nr", detail="room"),
    A("missing device", "leave", js({"id": "r-nd"}), id="r-nd", detail="device"),
    A("missing cmd_op", "cmd", js({"id": "r-no", "device": "dev-1"}), id="r-no", detail="cmd_op"),
    A("non-UTF-8 JSON", "join", b'{"id": "r-utf8", "device": "dev-1", "room": "\xff\xfe"}'),
    A("non-UTF-8 bare room", "join-all", b"\xffevil\xfe", detail="UTF-8"),
    A("empty", "join", b""),
    A("unknown op", "selfdestruct", b"\x00\xff{", "unknown_op", detail="selfdestruct"),
    A(
        "unknown device",
        "join",
        js({"id": "r-g1", **J, "device": "ghost-1"}),
        "unknown_device",
        "r-g1",
        "ghost-1",
    ),
    A(
        "unknown device",
        "leave",
        js({"id": "r-g2", "device": "ghost-1"}),
        "unknown_device",
        "r-g2",
        "ghost-1",
    ),
    A(
        "unknown device",
        "cmd",
        js({"id": "r-g3", "device": "ghost-1", "cmd_op": "ping"}),
        "unknown_device",
        "r-g3",
        "ghost-1",
    ),
]

# Accepted although odd: unknown fields, exactly the size limit, a bare room name.
API_ACCEPTED = [
    ("unknown fields", "join", js({"id": "a-x", **J, "device": "dev-2", "v2": {"x": 1}})),
    ("exactly 64 KiB", "join-all", sized({"id": "a-64k", "room": "big"}, MAX_PAYLOAD_BYTES)),
    ("unknown fields", "cmd", js({"id": "a-c", "device": "dev-3", "cmd_op": "ping", "v2": True})),
    ("bare room name", "join-all", b"  standup\n"),
]


async def test_api_bad_requests_get_one_clear_refusal_and_lose_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        for case in API_CASES:
            what = f"api/{case.op} {case.name}"
            before = r.snapshot()
            rev = r.ctl.store.last_rev()
            rejected = r.ctl.stats["rejected"]
            mark = r.wire.mark()
            await r.wire.send(r.topics.api(case.op), case.payload)
            # A valid request right behind it: the controller handles them in this order.
            got, _ = await asyncio.gather(r.next_result(mark, what), r.healthy(what))
            assert (got.op, got.ok, got.done, got.code, got.id) == (
                case.op,
                False,
                True,
                case.code,
                case.id,
            ), f"{what}: {got}"
            assert case.detail in got.detail, f"{what}: unclear {got.detail!r}"
            assert got.detail, f"{what}: no detail"
            assert r.ctl.stats["rejected"] == rejected + 1, what
            assert r.ctl.store.last_rev() == rev + 1, f"{what} wrote a desired doc"
            r.assert_only_the_health_check_changed(before, what)
            assert r.foreign_results(mark) == [got], f"{what}: one refusal, nothing else"
        # Requests naming a device that never announced itself left no trace.
        assert r.ctl.store.desired_rev("dev", "ghost-1") is None
        assert not [job for job in r.ctl.store.jobs() if job.device == "ghost-1"]

        for name, op, payload in API_ACCEPTED:
            what = f"api/{op} {name}"
            mark = r.wire.mark()
            await r.wire.send(r.topics.api(op), payload)
            first = await r.next_result(mark, what)
            assert (first.ok, first.done, first.code) == (True, False, "accepted"), what
            await r.wire.until(
                lambda rid=first.id, n=mark: any(x.done for x in r.wire.results(n) if x.id == rid),
                ANSWER_TIMEOUT_S,
                f"final result of {what}",
            )
            final = [x for x in r.wire.results(mark) if x.id == first.id and x.done]
            assert [(x.ok, x.code) for x in final] == [(True, "ok")], f"{what}: {final}"
            await r.healthy(what)
        assert r.dev("dev-2").reconciler.applied.rev > 0

        # Garbage on api/result (any controller-role client may publish there) is nobody's
        # request. Last, because the wire reads api/result too.
        await r.wire.send(r.topics.api_result, b"\xff{not a result")
        await r.healthy("garbage on api/result")


async def test_api_burst_of_malformed_requests_interleaved_with_valid_ones(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        refused: dict[str, tuple[str, str]] = {}  # request id -> (op, code)
        valid: dict[str, str] = {}  # request id -> op
        idless = Counter[tuple[str, str]]()
        rejected = r.ctl.stats["rejected"]
        burst: list[tuple[str, bytes]] = []
        last_room = ""
        for i in range(200):
            rid = f"b-{i}"
            match i % 5:
                case 0:
                    op, payload = "join", b'{"id": "%s", "device": "dev-1", "room": ' % rid.encode()
                    idless["join", "bad_request"] += 1
                case 1:
                    op = "join"
                    payload = js({"id": rid, "device": "dev-2", "room": "evil", "mic": "no"})
                    refused[rid] = (op, "bad_request")
                case 2:
                    op, payload = "cmd", js({"id": rid, "device": "dev-3"})
                    refused[rid] = (op, "bad_request")
                case 3:
                    op, payload = "join", js({"id": rid, "device": "ghost-9", "room": "evil"})
                    refused[rid] = (op, "unknown_device")
                case _:
                    op, payload = "selfdestruct", b"\xff" + rid.encode()
                    idless["selfdestruct", "unknown_op"] += 1
            burst.append((r.topics.api(op), payload))
            if i % 10 == 9:  # and a valid one: 20 in all
                k = i // 10
                vid = r.new_id("v")
                if k % 2 == 0:
                    last_room = f"burst-{k}"
                    req, vop = ApiRequest(id=vid, room=last_room, timeout_s=20), ApiOp.JOIN_ALL
                else:
                    req = ApiRequest(id=vid, device=f"dev-{k % 3 + 1}", cmd_op="ping")
                    vop = ApiOp.CMD
                burst.append((r.topics.api(vop.value), encode(req)))
                valid[vid] = vop.value
        mark = r.wire.mark()
        for topic, payload in burst:  # each waits for the broker's PUBACK, not for an answer
            await r.wire.send(topic, payload)

        def answered() -> bool:
            results = r.wire.results(mark)
            done = {x.id for x in results if x.done}
            blank = sum(1 for x in results if x.id is None)
            return set(valid) | set(refused) <= done and blank >= idless.total()

        await r.wire.until(answered, 30, "every request answered")
        results = r.wire.results(mark)
        by_id: dict[str | None, list[ApiResult]] = {}
        for x in results:
            by_id.setdefault(x.id, []).append(x)
        for vid, vop in valid.items():
            got = [(x.op, x.ok, x.done, x.code) for x in by_id[vid]]
            assert got == [(vop, True, False, "accepted"), (vop, True, True, "ok")], vid
        for rid, (op, code) in refused.items():
            got = [(x.op, x.ok, x.done, x.code) for x in by_id[rid]]
            assert got == [(op, False, True, code)], rid
        blank = Counter((x.op, x.code) for x in by_id.get(None, []) if not x.ok)
        assert blank == idless
        assert len(results) == 2 * len(valid) + len(refused) + idless.total()
        assert r.ctl.stats["rejected"] == rejected + 200
        assert all(d.meeting and d.meeting.room == last_room for d in r.devices)
        await r.healthy("the burst")


async def test_api_unknown_op_refusal_carries_the_request_id(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("selfdestruct"), js({"id": "r-sd", "device": "dev-1"}))
        got = await r.next_result(mark, "api/selfdestruct")
        assert (got.code, got.ok) == ("unknown_op", False)
        assert got.id == "r-sd", "a caller matches results by id: it never sees this refusal"


async def test_api_refusal_of_a_large_request_carries_its_id(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        payload = js(
            {
                "id": "r-5k",
                "device": "dev-1",
                "room": "evil",
                "mic": "yes",
                "args": {"b": "x" * 5000},
            }
        )
        assert 4096 < len(payload) < MAX_PAYLOAD_BYTES
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("join"), payload)
        got = await r.next_result(mark, "a 5 KB bad request")
        assert (got.code, got.ok) == ("bad_request", False)
        assert got.id == "r-5k"


async def test_api_empty_leave_all_is_refused_not_executed(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        await r.healthy("setup")
        before = r.snapshot()
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("leave-all"), b"")
        got = await r.next_result(mark, "an empty api/leave-all")
        assert (got.op, got.ok, got.done, got.code) == ("leave-all", False, True, "bad_request")
        assert r.snapshot() == before


async def test_api_join_all_takes_a_json_string_room(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("join-all"), js("standup"))
        got = await r.next_result(mark, 'api/join-all "standup"')
        assert (got.ok, got.code, got.room) == (True, "accepted", "standup"), got
        await wait_for(lambda: all(d.meeting and d.meeting.room == "standup" for d in r.devices))


async def test_api_op_outside_the_op_pattern_is_refused(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        mark = r.wire.mark()
        topic = f"{r.topics.prefix}/api/Join-All"
        await r.wire.send(topic, js({"id": "r-upper", "room": "evil"}))
        got = await r.next_result(mark, "api/Join-All", timeout=SILENCE_S)
        assert (got.ok, got.code, got.id) == (False, "unknown_op", "r-upper")


# --- dev/{id}/cmd -> device --------------------------------------------------------------------


@dataclass(frozen=True)
class CmdCase:
    name: str
    payload: bytes
    id: str = "?"
    code: str = "bad_request"
    detail: str = ""


P = {"id": "c-p", "op": "ping"}  # a valid ping
C = CmdCase
CMD_CASES = [
    C("malformed JSON", b'{"id": "c-1", "op": "ping"'),
    C("JSON array", js([P])),
    C("JSON string", js("ping")),
    C("JSON number", b"7"),
    C("empty", b""),
    C("string for int", js({**P, "id": "c-ttl", "ttl_ms": "5000"}), "c-ttl", detail="ttl_ms"),
    C("args not an object", js({**P, "id": "c-args", "args": "now"}), "c-args", detail="args"),
    C("id not a string", js({**P, "id": 5}), detail="id"),
    C("missing op", js({"id": "c-noop"}), "c-noop", detail="op"),
    C("missing id", js({"op": "ping"}), detail="id"),
    C("non-UTF-8", b'{"id": "c-utf8", "op": "ping", "args": {"x": "\xff"}}'),
    # JSON text has no byte-order mark: refused, and its id is not read either (as the C core).
    C("UTF-8 BOM", b"\xef\xbb\xbf" + js({**P, "id": "c-bom"}), "?"),
    C("unknown op", js({"id": "c-sd", "op": "selfdestruct"}), "c-sd", "unknown_op", "selfdestruct"),
    C(
        "identify seconds string",
        js({"id": "c-i1", "op": "identify", "args": {"seconds": "x"}}),
        "c-i1",
        "bad_args",
    ),
    C(
        "identify seconds 301",
        js({"id": "c-i2", "op": "identify", "args": {"seconds": 301}}),
        "c-i2",
        "bad_args",
    ),
    C(
        "ota ftp url",
        js({"id": "c-o", "op": "ota", "args": {"url": "ftp://fw/x.bin"}}),
        "c-o",
        "bad_args",
        "url",
    ),
    C(
        "set_groups bad name",
        js({"id": "c-g", "op": "set_groups", "args": {"groups": ["K!"]}}),
        "c-g",
        "bad_args",
    ),
]
CMD_ACCEPTED = [
    ("unknown fields", js({**P, "id": "c-x", "args": {"unused": 1}, "colour": "blue"})),
    ("exactly 64 KiB", sized({**P, "id": "c-64k"}, MAX_PAYLOAD_BYTES)),
]


async def test_cmd_bad_commands_get_a_clear_ack_and_lose_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        cmd = r.topics.cmd("dev-1")
        for case in CMD_CASES:
            what = f"cmd {case.name}"
            before = r.snapshot()
            mark = r.wire.mark()
            await r.wire.send(cmd, case.payload)
            # A valid command and a join-all right behind it.
            ack, _, _ = await asyncio.gather(
                r.next_ack("dev-1", mark, what), r.ping("dev-1", what), r.healthy(what)
            )
            assert (ack.id, ack.ok, ack.code, ack.done) == (case.id, False, case.code, True), (
                f"{what}: {ack}"
            )
            assert case.detail in ack.detail, f"{what}: unclear {ack.detail!r}"
            assert ack.detail, f"{what}: no detail"
            r.assert_only_the_health_check_changed(before, what)
            assert r.foreign_acks("dev-1", mark) == [ack], f"{what}: one ack, nothing else"
        for name, payload in CMD_ACCEPTED:
            mark = r.wire.mark()
            await r.wire.send(cmd, payload)
            ack = await r.next_ack("dev-1", mark, name)
            assert (ack.ok, ack.code) == (True, "ok"), f"cmd {name}: {ack}"
        await r.healthy("accepted commands")


async def test_cmd_refusal_of_a_large_command_carries_its_id(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        payload = js({"id": "c-5k", "op": "ping", "ttl_ms": "soon", "args": {"b": "x" * 5000}})
        mark = r.wire.mark()
        await r.wire.send(r.topics.cmd("dev-1"), payload)
        ack = await r.next_ack("dev-1", mark, "a 5 KB bad command")
        assert (ack.code, ack.ok) == ("bad_request", False)
        assert ack.id == "c-5k"


async def test_cmd_identify_refuses_non_integer_seconds(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """Spec 6.1: `seconds` is an integer 1-300; `true`, 2.5 and 0.5 are bad_args (no coercion)."""
    async with rig(any_broker, tmp_path) as r:
        for n, seconds in enumerate([True, 2.5, 0.5]):
            cid = f"c-ident-{n}"
            mark = r.wire.mark()
            payload = js({"id": cid, "op": "identify", "args": {"seconds": seconds}})
            await r.wire.send(r.topics.cmd("dev-1"), payload)
            ack = await r.next_ack("dev-1", mark, f"identify {seconds!r}")
            assert (ack.id, ack.ok, ack.code) == (cid, False, "bad_args"), f"{seconds!r}: {ack}"


# --- dev/{id}/desired and grp/{g}/desired -> device -------------------------------------------


def bad_docs(rev: int) -> list[tuple[str, bytes]]:
    """Desired docs that must be refused; each would move the device to 'evil' if taken."""
    evil = {"room": "evil"}
    return [
        ("malformed JSON", b'{"rev": %d, "meeting": {"room": "evil"}' % rev),
        ("JSON array", js([{"rev": rev, "meeting": evil}])),
        ("JSON string", js("evil")),
        ("JSON number", js(rev)),
        ("string for rev", js({"rev": str(rev), "meeting": evil})),
        ("float for rev", b'{"rev": %d.0, "meeting": {"room": "evil"}}' % rev),
        ("rev beyond 2^53-1", js({"rev": MAX_REV + 1, "meeting": evil})),
        ("string for mic", js({"rev": rev, "meeting": {"room": "evil", "mic": "false"}})),
        ("invalid room", js({"rev": rev, "meeting": {"room": "Evil!"}})),
        ("NaN until", b'{"rev": %d, "meeting": {"room": "evil", "until": NaN}}' % rev),
        ("missing rev", js({"meeting": evil})),
        ("missing room", js({"rev": rev, "meeting": {"mic": False}})),
        ("non-UTF-8", b'{"rev": %d, "meeting": {"room": "evil"}, "note": "\xff"}' % rev),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + js({"rev": rev, "meeting": evil})),
    ]


GROUP_CASES = {"malformed JSON", "JSON array", "string for rev", "missing rev", "64 KiB + 1"}


def scope_of(r: Rig, topic: str) -> tuple[str, str]:
    parsed = r.topics.parse(topic)
    assert parsed is not None
    return ("dev" if parsed.kind is TopicKind.DESIRED else "grp"), parsed.name


async def refuse_doc(r: Rig, topic: str, targets: Sequence[str], payload: bytes, what: str) -> None:
    """Publish a bad retained doc; every target keeps its intent and only logs the refusal
    (protocol.md 4.2 rule 2): its state does not change."""
    before = r.snapshot()
    rejected = r.ctl.stats["rejected"]
    scope, name = scope_of(r, topic)
    stored = r.ctl.store.desired_rev(scope, name)
    await r.wire.send(topic, payload, retain=True)
    for device_id in targets:
        dev, was = r.dev(device_id), before[device_id]
        # A command after the doc: once it is answered, the doc has been handled.
        mark = r.wire.mark()
        await r.wire.send(r.topics.cmd(device_id), js({"id": f"b-{mark}", "op": "ping"}))
        assert (await r.next_ack(device_id, mark, f"ping after {what}")).ok
        now = (dev.reconciler.applied, dev.meeting, dev.state_changes, dev.connects, dev.error)
        assert now == (was.applied, was.meeting, was.state_changes, was.connects, None), (
            f"{what}: {device_id} changed its intent or its state"
        )
    others = {k: v for k, v in before.items() if k not in targets}
    assert r.snapshot(exclude=targets) == others, f"{what} reached other devices"
    # The controller reads desired topics too: it refuses to adopt the doc.
    await soon(lambda: r.ctl.stats["rejected"] == rejected + 1, f"ctl refuses {what}")
    assert r.ctl.store.desired_rev(scope, name) == stored
    await r.healthy(what)
    assert r.ctl.stats["rejected"] == rejected + 1, f"{what}: more was rejected"


async def accept_doc(r: Rig, topic: str, targets: Sequence[str], what: str) -> None:
    """A doc with unknown fields (top level and nested) is applied by the targets only."""
    before = r.snapshot()
    rev = r.ctl.store.last_rev() + 100
    doc = {"rev": rev, "meeting": {"room": "extra", "mic": False, "colour": "red"}, "v2": [1]}
    await r.wire.send(topic, js(doc), retain=True)
    for device_id in targets:
        dev = r.dev(device_id)
        await wait_for(
            lambda dev=dev: dev.reconciler.applied.rev == rev, what=f"{device_id} takes {what}"
        )
        assert dev.meeting is not None, what
        assert (dev.meeting.room, dev.mic, dev.error) == ("extra", False, None), what
    assert r.snapshot(exclude=targets) == {k: v for k, v in before.items() if k not in targets}
    scope, name = scope_of(r, topic)
    # Adopted, so the controller's next rev is above it and the health check can win.
    await soon(lambda: r.ctl.store.desired_rev(scope, name) == rev, f"ctl adopts {what}")


async def clear_changes_nothing(r: Rig, topic: str, targets: Sequence[str]) -> None:
    """An empty retained payload clears the doc that was applied: nothing changes, no error."""
    before = r.snapshot()
    rejected = r.ctl.stats["rejected"]
    await r.wire.send(topic, b"", retain=True)
    for device_id in targets:  # a command after the clear marks it as handled
        mark = r.wire.mark()
        await r.wire.send(r.topics.cmd(device_id), js({"id": f"m-{device_id}", "op": "ping"}))
        ack = await r.next_ack(device_id, mark, "ping after the clear")
        assert ack.ok
    assert r.snapshot() == before, f"clearing {topic} changed a device"
    assert r.ctl.stats["rejected"] == rejected
    await r.healthy(f"clearing {topic}")


async def test_device_desired_bad_docs_keep_the_applied_intent(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        await r.healthy("setup")  # dev-1 is in a meeting: a refused doc must keep it there
        topic = r.topics.desired("dev-1")
        for name, payload in bad_docs(r.ctl.store.last_rev() + 100):
            await refuse_doc(r, topic, ["dev-1"], payload, f"dev/dev-1/desired {name}")
        await accept_doc(r, topic, ["dev-1"], "dev/dev-1/desired with unknown fields")
        await clear_changes_nothing(r, topic, ["dev-1"])


async def test_group_desired_bad_docs_keep_the_applied_intent(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    fleets = (("g", 2, ["g1"]), ("o", 2, ()))
    async with rig(any_broker, tmp_path, fleets=fleets) as r:
        await r.healthy("setup")
        members = ["g-1", "g-2"]
        topic = r.topics.group_desired("g1")
        for name, payload in bad_docs(r.ctl.store.last_rev() + 100):
            if name in GROUP_CASES:
                await refuse_doc(r, topic, members, payload, f"grp/g1/desired {name}")
        everyone = [d.id for d in r.devices]
        for name, payload in bad_docs(r.ctl.store.last_rev() + 100)[:2]:
            await refuse_doc(
                r, r.topics.group_desired("all"), everyone, payload, f"grp/all/desired {name}"
            )
        await accept_doc(r, topic, members, "grp/g1/desired with unknown fields")
        await clear_changes_nothing(r, topic, members)


# --- dev/{id}/status, state, ack -> controller (a device's own garbage) ------------------------

SHAPES = [
    ("malformed JSON", b'{"online": true, "rev": 1'),
    ("JSON array", js([{"online": True, "rev": 1}])),
    ("JSON string", js("online")),
    ("JSON number", b"1"),
]
ANY = {"online": True, "rev": 1, "id": "a", "ok": True, "code": "ok"}  # valid on all three
SIZES = [
    ("non-UTF-8", b'{"online": true, "rev": 1, "id": "a", "ok": true, "code": "ok", "x": "\xff"}'),
]
DEVICE_GARBAGE: dict[TopicKind, list[tuple[str, bytes]]] = {
    TopicKind.STATUS: [
        *SHAPES,
        ("string for online", js({"online": "true"})),
        ("missing online", js({"fw": "evil"})),
        ("invalid group", js({"online": True, "groups": ["Evil Group"]})),
        *SIZES,
    ],
    TopicKind.STATE: [
        *SHAPES,
        ("string for rev", js({"rev": "1"})),
        ("rev beyond 2^53-1", js({"rev": MAX_REV + 1})),
        ("string for mic", js({"rev": 0, "mic": "no"})),
        ("missing rev", js({"meeting": None})),
        *SIZES,
    ],
    TopicKind.ACK: [
        *SHAPES,
        ("empty", b""),
        ("string for ok", js({"id": "a-1", "ok": "true", "code": "ok"})),
        ("unknown code", js({"id": "a-1", "ok": True, "code": "great"})),
        ("missing id", js({"ok": True, "code": "ok"})),
        *SIZES,
    ],
}


async def test_device_garbage_on_status_state_ack_is_logged_and_dropped(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        t = r.topics
        for kind, cases in DEVICE_GARBAGE.items():
            topic = t.device(kind, RAW_DEVICE)
            for name, payload in cases:
                what = f"dev/{RAW_DEVICE}/{kind.value} {name}"
                rec = r.ctl.registry.devices[RAW_DEVICE]
                good = (rec.status, rec.state)
                before = r.snapshot()
                rejected = r.ctl.stats["rejected"]
                await raw.publish(topic, payload, qos=1, retain=kind is not TopicKind.ACK)
                await asyncio.gather(
                    soon(lambda n=rejected: r.ctl.stats["rejected"] > n, f"ctl drops {what}"),
                    r.op.sync(),  # the operator has read past it
                    r.healthy(what),
                )
                rec = r.ctl.registry.devices[RAW_DEVICE]
                assert (rec.status, rec.state) == good, f"{what} replaced the last good record"
                r.assert_only_the_health_check_changed(before, what)
                op_rec = r.op.registry.devices[RAW_DEVICE]
                assert (op_rec.status, op_rec.state) == good, f"{what} reached the operator"
                assert r.ctl.stats["rejected"] == rejected + 1, f"{what}: more was rejected"

        # Unknown fields are accepted, nested ones too, on every one of these topics.
        status = {"online": True, "fw": "raw-2.0", "caps": {"audio": True, "v2": 1}, "colour": 1}
        await raw.publish(t.status(RAW_DEVICE), js(status), qos=1, retain=True)
        state = {"rev": 0, "mic": False, "meeting": {"room": "extra", "v2": 1}, "colour": 1}
        await raw.publish(t.state(RAW_DEVICE), js(state), qos=1, retain=True)
        rejected = r.ctl.stats["rejected"]
        ack = {"id": "nobodys-job", "ok": True, "code": "ok", "colour": 1}
        await raw.publish(t.ack(RAW_DEVICE), js(ack), qos=1)
        await raw.publish(t.ack(RAW_DEVICE), b"{", qos=1)  # a marker: exactly one rejection
        await wait_for(lambda: r.ctl.stats["rejected"] > rejected, what="the marker")
        assert r.ctl.stats["rejected"] == rejected + 1
        rec = r.ctl.registry.devices[RAW_DEVICE]
        assert rec.online
        assert rec.status is not None
        assert rec.status.fw == "raw-2.0"
        assert rec.state is not None
        assert (rec.state.mic, rec.room) == (False, "extra")
        await r.healthy("unknown fields from a device")


async def test_a_device_reporting_the_max_rev_does_not_stop_desired_ops(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        rejected = r.ctl.stats["rejected"]
        await raw.publish(
            r.topics.state(RAW_DEVICE), encode(State(rev=MAX_REV)), qos=1, retain=True
        )
        # Above every rev the controller handed out: a lie, refused (no progress).
        await wait_for(lambda: r.ctl.stats["rejected"] > rejected)
        assert r.ctl.registry.devices[RAW_DEVICE].rev != MAX_REV
        mark = r.wire.mark()
        request = ApiRequest(id="r-after-max", room="standup", group="sim", timeout_s=5)
        await r.wire.send(r.topics.api("join-all"), encode(request))
        got = await r.next_result(mark, "a join-all after a max rev", timeout=SILENCE_S)
        assert (got.ok, got.code) == (True, "accepted"), got
        await r.healthy("a device reporting the max rev")


# --- meet/{pid}/up and meet/{pid}/down: not served yet, must crash nothing ---------------------

MEET_GARBAGE = [
    ("malformed JSON", b'{"type": "join", "room": '),
    ("empty", b""),
    ("unknown type", js({"type": "selfdestruct"})),
    ("non-UTF-8", b'{"type": "message", "text": "\xff\xfe"}'),
    ("valid join", js({"type": "join", "room": "evil"})),
]


async def test_meeting_topics_take_garbage_without_crashing_anything(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        for name, payload in MEET_GARBAGE:
            before = r.snapshot()
            await raw.publish(r.topics.meet_up(RAW_DEVICE), payload, qos=1)
            await r.wire.send(r.topics.meet_up("dev-1"), payload)  # a controller-role writer
            await r.wire.send(r.topics.meet_down("dev-1"), payload)
            mark = r.wire.mark()  # a command after it marks the down message as handled
            await r.wire.send(r.topics.cmd("dev-1"), js({"id": f"m-{r.rounds}", "op": "ping"}))
            ack, _ = await asyncio.gather(
                r.next_ack("dev-1", mark, f"ping after meet {name}"), r.healthy(f"meet {name}")
            )
            assert ack.ok, f"meet {name}: {ack}"
            r.assert_only_the_health_check_changed(before, f"meet {name}")
        # The raw device is still on its connection: its next state lands.
        await raw.publish(
            r.topics.state(RAW_DEVICE), encode(State(rev=0, mic=False)), qos=1, retain=True
        )
        await wait_for(lambda: r.ctl.registry.devices[RAW_DEVICE].state == State(rev=0, mic=False))


# --- what the brokers do with payloads over 64 KiB ---------------------------------------------


async def test_brokers_stop_oversize_payloads_before_any_receiver(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """64 KiB + 1 goes to nobody and its sender stays connected; 200 KB closes the sender's
    connection; the controller and the devices notice nothing of either."""
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        t = r.topics
        # controller-role sender -> device, then -> controller: only the valid ones answer
        mark = r.wire.mark()
        await r.wire.send(t.cmd("dev-1"), sized({"id": "c-big", "op": "ping"}, OVERSIZE))
        await r.wire.send(t.cmd("dev-1"), js({"id": "c-after", "op": "ping"}))
        assert (await r.next_ack("dev-1", mark, "the next command")).id == "c-after"
        mark = r.wire.mark()
        await r.wire.send(t.api("join-all"), sized({"id": "r-big", "room": "evil"}, OVERSIZE))
        await r.wire.send(t.api("leave"), js({"id": "r-after"}))
        assert (await r.next_result(mark, "the next request")).id == "r-after"
        # device sender -> controller: the oversize status never reaches it
        rejected = r.ctl.stats["rejected"]
        await raw.publish(t.status(RAW_DEVICE), sized({"online": True}, OVERSIZE), qos=1)
        await raw.publish(t.state(RAW_DEVICE), encode(State(rev=0, mic=False)), qos=1, retain=True)
        await wait_for(lambda: r.ctl.registry.devices[RAW_DEVICE].state == State(rev=0, mic=False))
        assert r.ctl.stats["rejected"] == rejected
        # past the packet limit the broker hangs up on the sender
        with pytest.raises(aiomqtt.MqttError):  # its PUBACK never comes: the socket closed
            await raw.publish(t.tele(RAW_DEVICE), sized({"ts": 1}, HUGE), qos=1, timeout=5)
        await r.healthy("oversize publishes")
