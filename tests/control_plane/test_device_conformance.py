"""Device conformance: the Python simulated device (on aiomqtt, and in the bulk engine that
`fleet sim` runs) and the C firmware core (fleet-host-device, ASan+UBSan build) pass the same
wire scenarios, on amqtt and on Mosquitto.

Every scenario is parametrized over `device_kind` ("sim", "bulk", "host") and `any_broker`, drives
the device only through the wire (a raw controller-role MQTT client, `Wire`) and makes the
same assertions for both kinds. Where the kinds legitimately differ (hw and fw strings,
caps, which telemetry fields a host can fill) the tests check a field's presence and type,
not its value. Differences that are defects are tests marked xfail(strict=True) for the
kind(s) that fail them, with the reason spelled out.

The last test runs a mixed fleet (three host devices, three simulated devices) under the
real controller and operator client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from fleet.auth import Role
from fleet.device.bulk import BulkFleet
from fleet.device.sim import SimDeviceConfig, SimulatedDevice
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import (
    Ack,
    AckCode,
    ApiOp,
    ApiRequest,
    Capabilities,
    DeviceOutcome,
    MeetJoined,
    State,
    Status,
    Telemetry,
    decode,
    encode,
)
from tests.support.brokers import AmqttBackend, BrokerHandle, MosquittoBackend
from tests.support.firmware_build import WAIT_S, Build, Inbox, build, requires_toolchain
from tests.support.firmware_build import Device as HostProcess
from tests.support.running import Part, controller, operator, register_devices, sim_fleet, wait_for
from tests.support.wire import retained_messages, wire

__all__ = ["build"]  # the session-scoped fixture (support/firmware_build.py), found by pytest
pytestmark = [requires_toolchain, pytest.mark.timeout(120)]

DEVICE_KINDS = ["sim", "bulk", "host"]
DEV = "conf-1"
GROUP = "kitchen"
TELE_INTERVAL_S = 0.5
LWT = {"online": False}
OFFLINE = Status(online=False)
MAX_PAYLOAD = 64 * 1024
SANITIZER_MARKS = ("Sanitizer", "runtime error")


def xfail_for(request: pytest.FixtureRequest, kinds: Sequence[str], reason: str) -> None:
    """Mark this parametrization xfail(strict) when its device kind is one of `kinds`."""
    if request.getfixturevalue("device_kind") in kinds:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# --- the device under test ---------------------------------------------------------------------


class DeviceUnderTest:
    """Either kind of device with its own credential; started, stopped or killed on demand."""

    def __init__(
        self,
        kind: str,
        handle: BrokerHandle,
        device_id: str,
        secret: str,
        groups: Sequence[str],
        workdir: Path,
        build: Build | None,
        tele_interval_s: float = TELE_INTERVAL_S,
    ) -> None:
        self.kind = kind
        self.tele_interval_s = tele_interval_s
        self.handle = handle
        self.id = device_id
        self.secret = secret
        self.groups = list(groups)
        self.workdir = workdir
        self.build = build
        self._host: HostProcess | None = None
        self._sim: SimulatedDevice | None = None
        self._part: Part | None = None

    async def start(self) -> None:
        """Boot the device: a new process, or a new simulated device (fresh RAM)."""
        if self.kind == "host":
            assert self.build is not None
            args = ["--broker", self.handle.url(self.id, self.secret), "--id", self.id]
            args += ["--prefix", self.handle.prefix, "--tele-interval", str(self.tele_interval_s)]
            for g in self.groups:
                args += ["--group", g]
            self._host = HostProcess(self.build.device_asan, args, self.workdir / f"{self.id}.log")
            await self._host.start()
        elif self.kind == "bulk":
            # The bulk engine with one device: the same device logic, its own transport.
            base = BrokerUrl.parse(f"mqtt://{self.handle.host}:{self.handle.port}")
            fleet = BulkFleet(
                base, {self.id: self.secret}, self.handle.topics, self.groups, self.tele_interval_s
            )
            self._sim = fleet[self.id]
            self._part = Part(fleet.run(), self.id)
        else:
            base = BrokerUrl.parse(f"mqtt://{self.handle.host}:{self.handle.port}")
            config = SimDeviceConfig(self.id, self.secret, self.groups, self.tele_interval_s)
            self._sim = SimulatedDevice(config, base, self.handle.topics, seed=1)
            self._part = Part(self._sim.run(), self.id)

    @property
    def alive(self) -> bool:
        if self._host is not None:
            return self._host.alive
        return self._part is not None and not self._part.task.done()

    async def stop(self) -> None:
        """A clean shutdown: the device says goodbye ({"online": false}) and disconnects."""
        if self._host is not None:
            code = await self._host.signal(signal.SIGTERM)
            assert code == 0, self.log()[-3000:]
        else:
            assert self._part is not None
            await self._part.stop()
        self._forget()

    async def kill(self) -> None:
        """An abrupt end: no goodbye, no DISCONNECT; the broker has to publish the will."""
        if self._host is not None:
            assert await self._host.signal(signal.SIGKILL) == -signal.SIGKILL
        else:
            assert self._sim is not None
            assert self._part is not None
            client = self._sim.connection
            assert client is not None, "the simulated device is not connected"
            # Cut the TCP connection under paho's feet: not a byte more reaches the broker,
            # so the graceful goodbye the cancellation below attempts has nowhere to go.
            client._client.socket().shutdown(socket.SHUT_RDWR)
            await self._part.stop()
        self._forget()

    def _forget(self) -> None:
        self._sim = None
        self._part = None

    def log(self) -> str:
        return self._host.text() if self._host is not None else ""

    async def close(self) -> None:
        if self._host is not None:
            await self._host.stop()
        elif self._part is not None:
            await self._part.stop()
        self._forget()


# --- the wire, from the controller's side ------------------------------------------------------


class Wire:
    """A controller-role client (`any_broker.controller_url()`) on one device's topics."""

    def __init__(self, handle: BrokerHandle, client: aiomqtt.Client, device_id: str) -> None:
        self.handle = handle
        self.url = BrokerUrl.parse(handle.controller_url())  # the controller user's
        self.client = client
        self.id = device_id
        t = handle.topics
        self.t = t
        self.status_t, self.state_t = t.status(device_id), t.state(device_id)
        self.ack_t, self.tele_t = t.ack(device_id), t.tele(device_id)
        self.cmd_t, self.desired_t = t.cmd(device_id), t.desired(device_id)
        self.meet_up_t = t.meet_up(device_id)
        self.inbox = Inbox(client, self._meeting_server)
        self._n = 0

    @property
    def topics(self) -> list[str]:
        return [self.status_t, self.state_t, self.ack_t, self.tele_t, self.meet_up_t]

    async def _meeting_server(self, message: aiomqtt.Message) -> None:
        """Answers a device's join as the meeting server would, alone in the room: a device
        that signals (the C core) reports a join's rev once it is confirmed (section 5)."""
        if message.topic.value != self.meet_up_t:
            return
        up = json.loads(bytes(message.payload))
        if up.get("type") == "join":
            joined = MeetJoined(
                type="joined", room=up["room"], session="s-conf", participant="p-conf"
            )
            await self.client.publish(self.t.meet_down(self.id), encode(joined), qos=1)

    def mark(self) -> int:
        return len(self.inbox.messages)

    def messages(self, topic: str, start: int = 0) -> list[aiomqtt.Message]:
        return [m for m in self.inbox.messages[start:] if m.topic.value == topic]

    def index(self, topic: str, payload: bytes, start: int = 0) -> int:
        for i, m in enumerate(self.inbox.messages[start:], start):
            if m.topic.value == topic and bytes(m.payload) == payload:
                return i
        raise AssertionError(f"{payload!r} not seen on {topic}")

    def new_id(self, stem: str = "c") -> str:
        self._n += 1
        return f"{stem}-{self._n}-{uuid.uuid4().hex[:6]}"

    async def publish(self, topic: str, payload: bytes | dict[str, Any], *, retain: bool) -> None:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        await self.client.publish(topic, raw, qos=1, retain=retain)

    async def desired(self, doc: dict[str, Any] | bytes, topic: str | None = None) -> None:
        """A retained desired doc, on the device's own topic unless told otherwise."""
        await self.publish(topic or self.desired_t, doc, retain=True)

    async def status(self, pred: Callable[[Status], bool], start: int = 0) -> Status:
        return decode(Status, await self.inbox.wait(self.status_t, _on(Status, pred), start=start))

    async def state(self, pred: Callable[[State], bool], start: int = 0) -> State:
        return decode(State, await self.inbox.wait(self.state_t, _on(State, pred), start=start))

    async def state_raw(self, pred: Callable[[State], bool], start: int = 0) -> bytes:
        return await self.inbox.wait(self.state_t, _on(State, pred), start=start)

    async def ack(self, cmd_id: str, start: int, pred: Callable[[Ack], bool] = bool) -> bytes:
        return await self.inbox.wait(
            self.ack_t, _on(Ack, lambda a: a.id == cmd_id and pred(a)), start=start
        )

    async def command(self, cmd: dict[str, Any]) -> Ack:
        """Send a command, return its (first) ack."""
        start = self.mark()
        await self.publish(self.cmd_t, cmd, retain=False)
        return decode(Ack, await self.ack(cmd["id"], start))

    async def raw_command(self, payload: bytes) -> Ack:
        """Send any payload on cmd; return the next ack (one command in flight at a time)."""
        start = self.mark()
        await self.publish(self.cmd_t, payload, retain=False)
        return decode(Ack, await self.inbox.wait(self.ack_t, start=start))

    async def raw_commands(self, payloads: Sequence[bytes | dict[str, Any]]) -> list[Ack]:
        """Send payloads on cmd back to back; their acks, in order (one each).

        One topic each way, QoS 1: the broker keeps both in order (MQTT 3.1.1 4.6).
        """
        start = self.mark()
        for payload in payloads:
            await self.publish(self.cmd_t, payload, retain=False)
        await wait_for(
            lambda: len(self.messages(self.ack_t, start)) >= len(payloads), WAIT_S, "the acks"
        )
        return [decode(Ack, m.payload) for m in self.messages(self.ack_t, start)]

    async def ping(self) -> float:
        """A ping round trip; returns the device's uptime_s.

        Also a barrier: the device handles its messages in order and the broker forwards
        them in order, so whatever it published in reply to anything we sent before has
        reached the inbox by the time this ack does.
        """
        ack = await self.command({"id": self.new_id("ping"), "op": "ping"})
        assert ack.code is AckCode.OK, ack
        assert ack.result is not None
        uptime = ack.result["uptime_s"]
        assert isinstance(uptime, int | float)
        return float(uptime)


def _on(model: Any, pred: Callable[[Any], bool]) -> Callable[[bytes], bool]:
    def check(payload: bytes) -> bool:
        return bool(payload) and bool(pred(decode(model, payload)))

    return check


@contextlib.asynccontextmanager
async def device_wire(handle: BrokerHandle, device_id: str) -> AsyncIterator[Wire]:
    """The controller user's raw client (tests/support/wire.py) on one device's topics."""
    async with wire(handle, BrokerUrl.parse(handle.controller_url())) as client:
        w = Wire(handle, client, device_id)
        for topic in w.topics:
            await client.subscribe(topic, qos=1)
        try:
            yield w
        finally:
            await w.inbox.close()


def assert_connected_as(handle: BrokerHandle, device_id: str) -> None:
    """The broker holds a clean-session MQTT 3.1.1 connection with client id == device id."""
    if isinstance(handle.backend, AmqttBackend):
        broker = handle.backend.broker
        assert broker is not None
        running = broker.amqtt_broker
        assert running is not None
        session, _ = running._sessions[device_id]  # amqtt's own table
        assert session.client_id == device_id
        assert session.username == device_id
        assert session.clean_session is True
        # Its will: {"online": false} retained, QoS 1, on its own status topic.
        assert session.will_flag
        assert session.will_topic == handle.topics.status(device_id)
        assert decode(Status, bytes(session.will_message or b"")) == OFFLINE
        assert session.will_qos == 1
        assert session.will_retain
    else:
        assert isinstance(handle.backend, MosquittoBackend)
        # "p2": MQTT 3.1.1, "c1": clean session, u'...': the username.
        line = re.compile(
            rf"New client connected from \S+ as {re.escape(device_id)} "
            rf"\(p2, c1, k\d+, u'{re.escape(device_id)}'\)"
        )
        assert line.search(handle.backend.log_text()), handle.backend.log_text()[-2000:]


def connection_ends(
    handle: BrokerHandle, device_id: str, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """How the broker saw the device's connections end, in order: "clean" (a DISCONNECT)
    or "abrupt" (the will's case). amqtt needs caplog at DEBUG for "amqtt.broker"."""
    ends: list[str] = []
    if isinstance(handle.backend, MosquittoBackend):
        for line in handle.backend.log_text().splitlines():
            if line.endswith(f" Client {device_id} disconnected."):
                ends.append("clean")
            elif line.endswith(f" Client {device_id} closed its connection."):
                ends.append("abrupt")
    else:
        marker = f"{device_id} Result from wait_disconnect: "
        for record in caplog.records:
            message = record.getMessage()
            if record.name == "amqtt.broker" and message.startswith(marker):
                ends.append("clean" if "DisconnectPacket" in message else "abrupt")
    return ends


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(params=DEVICE_KINDS)
def device_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Lab:
    """The broker, the kind under test, devices of that kind, and their sanitizer logs."""

    def __init__(self, handle: BrokerHandle, kind: str, workdir: Path, build: Build | None) -> None:
        self.handle = handle
        self.kind = kind
        self.workdir = workdir
        self.build = build
        self.devices: list[DeviceUnderTest] = []

    async def device(
        self, device_id: str, groups: Sequence[str] = (), tele_interval_s: float = TELE_INTERVAL_S
    ) -> DeviceUnderTest:
        """A device credential (synced to the broker) and an unstarted device using it."""
        secret = self.handle.store.add(device_id, Role.DEVICE, groups=groups)
        await self.handle.sync()
        dev = DeviceUnderTest(
            self.kind,
            self.handle,
            device_id,
            secret,
            groups,
            self.workdir,
            self.build,
            tele_interval_s,
        )
        self.devices.append(dev)
        return dev

    async def close(self) -> None:
        for dev in self.devices:
            await dev.close()
        for dev in self.devices:
            log = dev.log()
            assert not any(m in log for m in SANITIZER_MARKS), log[-3000:]


@pytest_asyncio.fixture
async def lab(
    any_broker: BrokerHandle, device_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Lab]:
    fw = request.getfixturevalue("build") if device_kind == "host" else None
    lab = Lab(any_broker, device_kind, tmp_path, fw)
    try:
        yield lab
    finally:
        await lab.close()


@pytest_asyncio.fixture
async def booted(lab: Lab) -> AsyncIterator[tuple[DeviceUnderTest, Wire]]:
    """Device DEV (group GROUP) up: its birth and first state seen on the wire."""
    dev = await lab.device(DEV, [GROUP])
    async with device_wire(lab.handle, DEV) as w:
        await dev.start()
        await w.status(lambda s: s.online)
        await w.state(lambda s: True)
        yield dev, w


# --- presence -----------------------------------------------------------------------------------


async def test_birth_is_retained_and_says_what_the_device_is(
    booted: tuple[DeviceUnderTest, Wire],
) -> None:
    dev, w = booted
    [birth_msg] = w.messages(w.status_t)
    assert birth_msg.qos == 1
    birth_raw = bytes(birth_msg.payload)
    birth = decode(Status, birth_raw)
    assert birth.online is True
    assert isinstance(birth.fw, str)
    assert birth.fw
    assert isinstance(birth.hw, str)
    assert birth.hw
    assert isinstance(birth.caps, Capabilities)
    assert isinstance(birth.caps.audio, bool)
    assert birth.groups == [GROUP]
    assert birth.ts is not None
    assert abs(birth.ts - time.time()) < 60
    assert birth.ip is None or isinstance(birth.ip, str)
    raw = json.loads(birth_raw)
    assert raw["online"] is True
    assert isinstance(raw["caps"], dict)
    assert isinstance(raw["caps"]["audio"], bool)
    assert None not in raw.values()  # nulls are left out

    # The birth comes first, then the reported state (rev 0: nothing applied since boot).
    [state_msg] = w.messages(w.state_t)
    assert state_msg.qos == 1
    assert w.index(w.status_t, birth_raw) < w.inbox.messages.index(state_msg)
    state = decode(State, bytes(state_msg.payload))
    assert (state.rev, state.meeting, state.mic, state.error) == (0, None, True, None)

    # Retained: a fresh subscriber gets exactly that birth.
    [kept] = await retained_messages(w.handle, w.status_t, w.url)
    assert kept.retain
    assert bytes(kept.payload) == birth_raw

    assert_connected_as(w.handle, dev.id)


async def test_will_on_abrupt_end_and_goodbye_on_clean_stop(
    booted: tuple[DeviceUnderTest, Wire], caplog: pytest.LogCaptureFixture
) -> None:
    dev, w = booted
    caplog.set_level(logging.DEBUG, logger="amqtt.broker")
    start = w.mark()
    await dev.kill()
    assert await w.status(lambda s: not s.online, start) == OFFLINE
    # The broker saw the connection drop without a DISCONNECT: this is the will.
    ends = functools.partial(connection_ends, w.handle, dev.id, caplog)
    await wait_for(lambda: ends() == ["abrupt"], 5, "the broker to see an abrupt end")
    [kept] = await retained_messages(w.handle, w.status_t, w.url)
    assert kept.retain
    assert decode(Status, kept.payload) == OFFLINE

    # Back again: a new birth, then a clean stop says goodbye itself.
    start = w.mark()
    await dev.start()
    await w.status(lambda s: s.online, start)
    await w.ping()
    start = w.mark()
    await dev.stop()
    # The broker forwards the goodbye after acknowledging it: wait for it, then count.
    await w.status(lambda s: not s.online, start)
    goodbye = w.messages(w.status_t, start)
    assert [decode(Status, m.payload) for m in goodbye] == [OFFLINE]
    assert goodbye[0].qos == 1
    await wait_for(lambda: ends() == ["abrupt", "clean"], 5, "the broker to see a DISCONNECT")
    [kept] = await retained_messages(w.handle, w.status_t, w.url)
    assert kept.retain
    assert decode(Status, kept.payload) == OFFLINE


# --- desired state ------------------------------------------------------------------------------


async def test_highest_rev_wins_and_never_goes_back(
    booted: tuple[DeviceUnderTest, Wire],
) -> None:
    _, w = booted
    own, group, every = w.desired_t, w.t.group_desired(GROUP), w.t.group_desired("all")

    await w.desired({"rev": 5, "meeting": {"room": "standup", "volume": 70}}, own)
    st = await w.state(lambda s: s.rev == 5)
    assert st.meeting is not None
    assert st.meeting.room == "standup"
    assert (st.mic, st.volume) == (True, 70)

    # A group doc with a higher rev wins over the device doc: leave.
    await w.desired({"rev": 7, "meeting": None}, group)
    st = await w.state(lambda s: s.rev == 7)
    assert st.meeting is None

    # grp/all with a higher rev wins in turn.
    await w.desired({"rev": 9, "meeting": {"room": "all-hands", "mic": False}}, every)
    st = await w.state(lambda s: s.rev == 9)
    assert st.meeting is not None
    assert (st.meeting.room, st.mic) == ("all-hands", False)

    # A lower rev on any topic changes nothing; neither does clearing the applied doc
    # (the highest left, rev 8, is still below the applied 9).
    start = w.mark()
    await w.desired({"rev": 8, "meeting": {"room": "late"}}, own)
    await w.desired({"rev": 6, "meeting": {"room": "later"}}, group)
    await w.desired(b"", every)
    await w.ping()
    assert w.messages(w.state_t, start) == []

    # The next higher rev applies, from whichever topic.
    await w.desired({"rev": 10, "meeting": {"room": "standup", "mic": True}}, group)
    st = await w.state(lambda s: s.rev == 10, start)
    assert st.meeting is not None
    assert (st.meeting.room, st.mic) == ("standup", True)


async def test_meeting_until_lapses_at_the_same_rev(
    booted: tuple[DeviceUnderTest, Wire],
) -> None:
    _, w = booted
    # Already past: applied as "no meeting", with the doc's rev.
    past = time.time() - 60
    await w.desired({"rev": 3, "meeting": {"room": "standup", "until": past}})
    st = await w.state(lambda s: s.rev == 3)
    assert st.meeting is None

    # Lapsing while in the meeting: a leave reported with the same rev.
    start = w.mark()
    await w.desired({"rev": 4, "meeting": {"room": "standup", "until": time.time() + 1.5}})
    st = await w.state(lambda s: s.rev == 4, start)
    assert st.meeting is not None
    assert st.meeting.room == "standup"
    st = await w.state(lambda s: s.rev == 4 and s.meeting is None, start)
    assert st.rev == 4


async def test_meeting_until_lapses_on_time(lab: Lab, request: pytest.FixtureRequest) -> None:
    dev = await lab.device(DEV, tele_interval_s=30)
    async with device_wire(lab.handle, DEV) as w:
        await dev.start()
        await w.state(lambda s: True)
        until = time.time() + 0.3
        await w.desired({"rev": 4, "meeting": {"room": "standup", "until": until}})
        await w.state(lambda s: s.rev == 4 and s.meeting is not None)

        def lapsed() -> bool:
            last = w.messages(w.state_t)[-1]
            return decode(State, last.payload).meeting is None

        await wait_for(lapsed, until + 2.0 - time.time(), "the lapse within 2 s of until")


async def test_reported_state_fields(booted: tuple[DeviceUnderTest, Wire]) -> None:
    _, w = booted
    await w.desired({"rev": 11, "meeting": {"room": "standup", "mic": False, "volume": 35}})
    raw = json.loads(await w.state_raw(lambda s: s.rev == 11))
    # `dnd` (§14) is reported by devices that know it, false unless their own doc set it.
    assert set(raw) - {"dnd"} == {"rev", "meeting", "mic", "volume", "ts"}
    assert raw.get("dnd", False) is False
    assert raw["rev"] == 11
    assert raw["meeting"]["room"] == "standup"
    # Alone in the room; a device that signals has the session of the wire's stand-in server.
    assert set(raw["meeting"]) <= {"room", "peers", "session", "participant"}
    assert raw["meeting"].get("peers", []) == []
    assert raw["mic"] is False
    assert raw["volume"] == 35
    assert isinstance(raw["ts"], float)
    assert abs(raw["ts"] - time.time()) < 60

    # A leave: the meeting is left out (null), the rev is the leave's.
    await w.desired({"rev": 12, "meeting": None})
    raw = json.loads(await w.state_raw(lambda s: s.rev == 12))
    assert "meeting" not in raw
    assert "error" not in raw
    assert isinstance(raw["mic"], bool)
    assert isinstance(raw["ts"], float)


async def test_oversize_desired_doc_is_refused(booted: tuple[DeviceUnderTest, Wire]) -> None:
    dev, w = booted
    await w.desired({"rev": 2, "meeting": {"room": "standup"}})
    await w.state(lambda s: s.rev == 2)

    start = w.mark()
    await w.desired(padded_doc(30, "too-big", MAX_PAYLOAD + 1))
    await w.ping()
    assert dev.alive
    assert all(decode(State, m.payload).rev == 2 for m in w.messages(w.state_t, start))

    # Exactly 64 KiB is still a payload.
    await w.desired(padded_doc(31, "just-fits", MAX_PAYLOAD))
    st = await w.state(lambda s: s.rev == 31, start)
    assert st.meeting is not None
    assert st.meeting.room == "just-fits"


def padded_doc(rev: int, room: str, size: int) -> bytes:
    """A valid desired doc of exactly `size` bytes (an unknown field pads it)."""
    head = json.dumps({"rev": rev, "meeting": {"room": room}})[:-1] + ', "pad": "'
    raw = (head + "x" * (size - len(head) - 2) + '"}').encode()
    assert len(raw) == size
    return raw


# --- commands -----------------------------------------------------------------------------------


async def test_ping_and_identify(booted: tuple[DeviceUnderTest, Wire]) -> None:
    _, w = booted
    ack = await w.command({"id": "p1", "op": "ping", "args": {}, "ttl_ms": 30000})
    assert (ack.id, ack.ok, ack.code, ack.done) == ("p1", True, AckCode.OK, True)
    assert ack.result is not None
    assert isinstance(ack.result["uptime_s"], int | float)
    assert ack.result["uptime_s"] >= 0
    assert w.messages(w.ack_t)[-1].qos == 1

    good: list[dict[str, Any]] = [
        {"id": "i1", "op": "identify", "args": {"seconds": 3}},
        {"id": "i2", "op": "identify"},  # seconds defaults to 5
        {"id": "i3", "op": "identify", "args": {"seconds": 300, "color": "red"}},
    ]
    bad = [{"id": f"j{n}", "op": "identify", "args": {"seconds": v}} for n, v in enumerate(BAD_S)]
    acks = await w.raw_commands([*good, *bad])
    assert [(a.id, a.ok, a.code, a.done) for a in acks] == [
        *((c["id"], True, AckCode.OK, True) for c in good),
        *((c["id"], False, AckCode.BAD_ARGS, True) for c in bad),
    ]


BAD_S: list[Any] = [2.5, "x", 0, 301, -1, True, "5", [5]]  # identify's seconds: bad_args


BAD_COMMANDS: list[tuple[bytes, str]] = [
    # (payload, id of the bad_request ack)
    (b"not json", "?"),
    (b'{"id": "b1", "op": "ping"', "?"),
    (b"[1]", "?"),
    (b'"ping"', "?"),
    (b'{"id": 5, "op": "ping"}', "?"),
    (b'{"id": "", "op": "ping"}', "?"),
    (json.dumps({"id": "x" * 65, "op": "ping"}).encode(), "?"),
    (b'{"id": "b2"}', "b2"),
    (b'{"id": "b3", "op": ""}', "b3"),
    (b'{"id": "b4", "op": 5}', "b4"),
    (json.dumps({"id": "b5", "op": "p" * 33}).encode(), "b5"),
    (b'{"id": "b6", "op": "ping", "args": []}', "b6"),
    (b'{"id": "b7", "op": "ping", "ttl_ms": 0}', "b7"),
    (b'{"id": "b8", "op": "ping", "ttl_ms": 1.5}', "b8"),
    (b'{"id": "b9", "op": "ping", "ttl_ms": "30000"}', "b9"),
    (b'{"id": "b10", "op": "ping", "ts": "1"}', "b10"),
    (b'{"id": "b11", "op": "ping"} x', "?"),
]


async def test_rejections(booted: tuple[DeviceUnderTest, Wire]) -> None:
    _, w = booted
    ack = await w.command({"id": "u1", "op": "selfdestruct"})
    assert (ack.ok, ack.code, ack.done) == (False, AckCode.UNKNOWN_OP, True)

    acks = await w.raw_commands([payload for payload, _ in BAD_COMMANDS])
    assert [(a.id, a.ok, a.code, a.done) for a in acks] == [
        (ack_id, False, AckCode.BAD_REQUEST, True) for _, ack_id in BAD_COMMANDS
    ]

    # Stale: ts + ttl_ms in the past of the device's (set) clock; a fresh one runs.
    ack = await w.command({"id": "e1", "op": "ping", "ts": time.time() - 3600, "ttl_ms": 30000})
    assert (ack.ok, ack.code, ack.done) == (False, AckCode.EXPIRED, True)
    ack = await w.command({"id": "e2", "op": "ping", "ts": time.time() - 1, "ttl_ms": 30000})
    assert ack.code is AckCode.OK

    # Required args: ota needs an http(s) url, set_groups a list of valid group names.
    bad_args: list[dict[str, Any]] = [
        {"id": "o1", "op": "ota"},
        {"id": "o2", "op": "ota", "args": {"url": "ftp://fw.local/x.bin"}},
        {"id": "o3", "op": "ota", "args": {"url": 5}},
        {"id": "g1", "op": "set_groups"},
        {"id": "g2", "op": "set_groups", "args": {"groups": "kitchen"}},
        {"id": "g3", "op": "set_groups", "args": {"groups": ["Kitchen"]}},
        {"id": "g4", "op": "set_groups", "args": {"groups": [f"g{n}" for n in range(33)]}},
    ]
    acks = await w.raw_commands(bad_args)
    assert [(a.id, a.ok, a.code) for a in acks] == [
        (c["id"], False, AckCode.BAD_ARGS) for c in bad_args
    ]


async def test_repeated_id_gets_the_same_ack_and_runs_nothing(
    booted: tuple[DeviceUnderTest, Wire],
) -> None:
    _, w = booted
    ping = {"id": "same-1", "op": "ping"}
    start = w.mark()
    await w.command(ping)
    first = await w.ack("same-1", start)
    await asyncio.sleep(0.05)  # uptime moves on: a re-run would answer differently
    start = w.mark()
    await w.command(ping)
    assert await w.ack("same-1", start) == first

    # The remembered answer wins over anything the repeat carries: a rejection stays one,
    # and a command that expired is not revived by a fresh ts.
    bad = {"id": "same-2", "op": "identify", "args": {"seconds": 0}}
    assert (await w.command(bad)).code is AckCode.BAD_ARGS
    assert (await w.command({**bad, "args": {"seconds": 2}})).code is AckCode.BAD_ARGS
    stale = {"id": "same-3", "op": "ping", "ts": time.time() - 3600}
    assert (await w.command(stale)).code is AckCode.EXPIRED
    assert (await w.command({**stale, "ts": time.time()})).code is AckCode.EXPIRED


async def test_reboot_acks_twice_and_a_repeat_does_not_reboot_again(
    booted: tuple[DeviceUnderTest, Wire],
) -> None:
    dev, w = booted
    await w.desired({"rev": 3, "meeting": {"room": "standup"}})
    await w.state(lambda s: s.rev == 3)

    start = w.mark()
    accepted = await w.command({"id": "r1", "op": "reboot", "ttl_ms": 120000})
    assert (accepted.ok, accepted.code, accepted.done) == (True, AckCode.ACCEPTED, False)
    goodbye = await w.status(lambda s: not s.online, start)
    assert goodbye == OFFLINE
    birth = await w.status(lambda s: s.online, start)
    assert birth.groups == [GROUP]
    final_raw = await w.ack("r1", start, lambda a: a.done)
    final = decode(Ack, final_raw)
    assert (final.ok, final.code, final.done) == (True, AckCode.OK, True)
    # The final ack comes from the new boot, after it reconnected and announced itself.
    statuses = w.messages(w.status_t, start)
    assert w.inbox.messages.index(statuses[-1]) < w.index(w.ack_t, final_raw, start)
    # Its applied rev started at 0 again and it re-applied the retained doc.
    st = await w.state(lambda s: s.rev == 3, start)
    assert st.meeting is not None
    assert st.meeting.room == "standup"
    uptime = await w.ping()

    # The same id again: the last ack for it once more, and no second reboot.
    start = w.mark()
    await w.publish(w.cmd_t, {"id": "r1", "op": "reboot", "ttl_ms": 120000}, retain=False)
    assert await w.ack("r1", start) == final_raw
    assert await w.ping() >= uptime
    assert w.messages(w.status_t, start) == []
    assert [bytes(m.payload) for m in w.messages(w.ack_t, start) if b'"r1"' in m.payload] == [
        final_raw
    ]
    assert dev.alive


async def test_set_groups_resubscribes_and_announces(
    booted: tuple[DeviceUnderTest, Wire],
) -> None:
    dev, w = booted
    h = w.handle
    # The broker must let the device read its new group first (protocol.md 6.1).
    h.store.set_groups(dev.id, ["lobby", "hall"])
    await h.sync()
    await w.desired({"rev": 20, "meeting": {"room": "lobby-talk"}}, w.t.group_desired("lobby"))

    start = w.mark()
    ack = await w.command({"id": "g1", "op": "set_groups", "args": {"groups": ["lobby", "hall"]}})
    assert (ack.ok, ack.code, ack.done) == (True, AckCode.OK, True)
    assert ack.result == {"groups": ["lobby", "hall"]}
    birth = await w.status(lambda s: s.online, start)
    assert birth.groups == ["lobby", "hall"]
    st = await w.state(lambda s: s.rev == 20, start)
    assert st.meeting is not None
    assert st.meeting.room == "lobby-talk"

    # It follows its new groups live, and no longer the one it left.
    await w.desired({"rev": 21, "meeting": None}, w.t.group_desired("hall"))
    await w.state(lambda s: s.rev == 21 and s.meeting is None, start)
    start = w.mark()
    await w.desired({"rev": 22, "meeting": {"room": "old-kitchen"}}, w.t.group_desired(GROUP))
    await w.ping()
    assert w.messages(w.state_t, start) == []


# --- telemetry ----------------------------------------------------------------------------------


async def test_telemetry(booted: tuple[DeviceUnderTest, Wire]) -> None:
    _, w = booted
    await w.desired({"rev": 2, "meeting": {"room": "standup"}})
    await w.state(lambda s: s.rev == 2)
    start = w.mark()
    payload = await w.inbox.wait(w.tele_t, start=start)
    msg = next(m for m in w.messages(w.tele_t, start) if bytes(m.payload) == payload)
    assert not msg.retain
    raw = json.loads(payload)
    assert {"ts", "wifi", "sys"} <= set(raw)
    tele = decode(Telemetry, payload)
    assert abs(tele.ts - time.time()) < 60
    assert tele.wifi is not None
    assert isinstance(tele.wifi.reconnects, int)
    assert tele.sys is not None
    assert tele.sys.uptime_s is not None
    assert tele.sys.uptime_s >= 0
    assert isinstance(tele.sys.mqtt_reconnects, int)
    # `meeting` is optional: the C core reports it, the simulated device never does.
    assert tele.meeting is None or tele.meeting.room == "standup"
    # And it keeps coming.
    await w.inbox.wait(w.tele_t, lambda p: p != payload, start=start)


# --- differences: each test states the contract; xfail marks the kind that breaks it ----------


async def test_offline_payload_is_exactly_the_documented_one(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    dev, w = booted
    start = w.mark()
    await dev.kill()
    await w.status(lambda s: not s.online, start)
    assert json.loads(w.messages(w.status_t, start)[-1].payload) == LWT
    start = w.mark()
    await dev.start()
    await w.status(lambda s: s.online, start)
    await w.ping()
    start = w.mark()
    await dev.stop()
    await w.status(lambda s: not s.online, start)
    assert [json.loads(m.payload) for m in w.messages(w.status_t, start)] == [LWT]


async def test_refused_desired_doc_is_only_logged(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    await w.desired({"rev": 2, "meeting": {"room": "standup"}})
    await w.state(lambda s: s.rev == 2)
    start = w.mark()
    # (An oversize doc never reaches a device: the brokers refuse it, tests/security/test_acl.py.)
    for bad in (b'{"rev": 9, "meeting":', b'{"rev": "9"}'):
        await w.publish(w.desired_t, bad, retain=False)
    await w.ping()
    assert w.messages(w.state_t, start) == []


async def test_idle_state_after_a_leave(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    await w.desired({"rev": 1, "meeting": {"room": "standup", "mic": False, "volume": 35}})
    await w.state(lambda s: s.rev == 1)
    await w.desired({"rev": 2, "meeting": None})
    raw = json.loads(await w.state_raw(lambda s: s.rev == 2))
    assert (raw["mic"], "volume" in raw) == (True, False), raw


async def test_malformed_command_with_a_known_id_is_bad_request(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    assert (await w.command({"id": "k1", "op": "ping"})).code is AckCode.OK
    ack = await w.raw_command(b'{"id": "k1", "op": 5}')
    assert (ack.id, ack.code) == ("k1", AckCode.BAD_REQUEST)


async def test_an_id_answered_bad_request_gets_that_answer_again(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    ack = await w.raw_command(b'{"id": "k2", "op": 5}')
    assert (ack.id, ack.code) == ("k2", AckCode.BAD_REQUEST)
    again = await w.command({"id": "k2", "op": "ping"})
    assert again.code is AckCode.BAD_REQUEST


async def test_command_with_a_bom_is_answered_with_id_unknown(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    ack = await w.raw_command(b'\xef\xbb\xbf{"id": "k3", "op": "ping"}')
    assert (ack.id, ack.code) == ("?", AckCode.BAD_REQUEST)


async def test_identify_with_null_seconds_uses_the_default(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    ack = await w.command({"id": "n1", "op": "identify", "args": {"seconds": None}})
    assert ack.code is AckCode.OK


async def test_explicit_null_is_an_absent_field(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    start = w.mark()
    await w.desired({"rev": 4, "meeting": {"room": "standup", "mic": None, "volume": None}})
    await w.state(lambda s: s.rev == 4)  # a signalling device's join is answered first
    await w.ping()
    applied = [decode(State, m.payload) for m in w.messages(w.state_t, start)]
    assert [(st.rev, st.mic) for st in applied if st.rev == 4] == [(4, True)]
    for cmd in (
        {"id": "n2", "op": "ping", "args": None},
        {"id": "n3", "op": "ping", "ttl_ms": None},
    ):
        assert (await w.command(cmd)).code is AckCode.OK, cmd


async def test_set_groups_does_not_store_all(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    _, w = booted
    start = w.mark()
    ack = await w.command({"id": "a1", "op": "set_groups", "args": {"groups": ["all", GROUP]}})
    assert ack.result == {"groups": [GROUP]}
    birth = await w.status(lambda s: s.online, start)
    assert birth.groups == [GROUP]


async def test_set_groups_survives_a_reboot(
    booted: tuple[DeviceUnderTest, Wire], request: pytest.FixtureRequest
) -> None:
    dev, w = booted
    w.handle.store.set_groups(dev.id, ["lobby"])
    await w.handle.sync()
    ack = await w.command({"id": "s1", "op": "set_groups", "args": {"groups": ["lobby"]}})
    assert ack.code is AckCode.OK
    start = w.mark()
    await w.command({"id": "s2", "op": "reboot"})
    await w.ack("s2", start, lambda a: a.done)
    births = [decode(Status, m.payload) for m in w.messages(w.status_t, start)]
    assert births[-1].online
    assert births[-1].groups == ["lobby"]


async def test_telemetry_is_delivered_at_qos_0(booted: tuple[DeviceUnderTest, Wire]) -> None:
    """Devices publish tele at QoS 0; a QoS 1 subscriber gets it at the lower of the two
    (MQTT 3.1.1 3.8.4, protocol.md 1.5), on amqtt as on Mosquitto."""
    _, w = booted
    start = w.mark()
    await w.inbox.wait(w.tele_t, start=start)
    assert [m.qos for m in w.messages(w.tele_t, start)][:1] == [0]


# --- a mixed fleet under the real controller ----------------------------------------------------


async def test_mixed_fleet_with_the_controller(
    any_broker: BrokerHandle, build: Build, tmp_path: Path
) -> None:
    h = any_broker
    sims = register_devices(h, 3, prefix="sim")
    fws = register_devices(h, 3, prefix="fw")
    everyone = [*sims, *fws]
    hosts = {
        d: HostProcess(
            build.device_asan,
            ["--broker", h.url(d, secret), "--id", d, "--prefix", h.prefix, "--tele-interval", "5"],
            tmp_path / f"{d}.log",
        )
        for d, secret in fws.items()
    }
    async with (
        controller(h, tmp_path / "ctl.db") as ctl,
        sim_fleet(h, sims),
        operator(h) as op,
    ):
        reg = ctl.registry.devices

        def seen(device_id: str) -> tuple[bool, int | None, str | None]:
            rec = reg.get(device_id)
            return (False, None, None) if rec is None else (rec.online, rec.rev, rec.room)

        try:
            for proc in hosts.values():
                await proc.start()
            await wait_for(lambda: all(seen(d)[0] for d in everyone), what="six devices online")

            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=20))
            assert joined.ok, joined.detail
            assert joined.counts == {"converged": 6}
            assert {d.device: (d.outcome, d.room, d.rev) for d in joined.devices} == dict.fromkeys(
                everyone, (DeviceOutcome.CONVERGED, "standup", joined.rev)
            )

            # A leave of one host device wins for it only.
            left = await op.request(ApiOp.LEAVE, ApiRequest(device="fw-1", timeout_s=20))
            assert left.ok, left.detail
            assert left.counts == {"converged": 1}
            assert left.rev is not None
            assert joined.rev is not None
            assert left.rev > joined.rev
            expect = {d: (True, joined.rev, "standup") for d in everyone}
            expect["fw-1"] = (True, left.rev, None)
            await wait_for(lambda: {d: seen(d) for d in everyone} == expect, what="leave fw-1")

            # SIGKILL: the will marks it offline; the next join-all waits for it (pending).
            assert await hosts["fw-2"].signal(signal.SIGKILL) == -signal.SIGKILL
            await wait_for(lambda: not seen("fw-2")[0], what="fw-2 offline through its will")
            retro = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro", timeout_s=20))
            assert retro.ok, retro.detail
            assert retro.counts == {"converged": 5, "pending": 1}
            outcomes = {d.device: (d.outcome, d.online) for d in retro.devices}
            assert outcomes.pop("fw-2") == (DeviceOutcome.PENDING, False)
            assert set(outcomes.values()) == {(DeviceOutcome.CONVERGED, True)}

            # Back again, it converges to the latest rev from the retained docs.
            await hosts["fw-2"].start()
            await wait_for(lambda: seen("fw-2") == (True, retro.rev, "retro"), what="fw-2 back")

            # Malformed desired docs: refused, no crash, the device still answers.
            async with device_wire(h, "fw-3") as w:
                for bad in (
                    b'{"rev": 999, "meeting":',
                    b'{"rev": "999"}',
                    padded_doc(999, "huge", 66_000),
                ):
                    await w.publish(w.desired_t, bad, retain=False)
            pinged = await op.request(ApiOp.CMD, ApiRequest(device="fw-3", cmd_op="ping"))
            assert (pinged.ok, pinged.code) == (True, "ok"), pinged.detail
            [fw3] = pinged.devices
            assert fw3.outcome is DeviceOutcome.SUCCEEDED
            assert fw3.result is not None
            assert fw3.result["uptime_s"] > 0
            assert hosts["fw-3"].alive
            assert seen("fw-3") == (True, retro.rev, "retro")
            # The two malformed docs; the oversize one the broker drops before it gets there.
            assert hosts["fw-3"].text().count("refused") >= 2

            # A clean stop of every host device: exit 0 (LeakSanitizer runs at exit).
            for proc in hosts.values():
                assert await proc.signal(signal.SIGTERM) == 0, proc.text()[-3000:]
        finally:
            for proc in hosts.values():
                await proc.stop()
    for d, proc in hosts.items():
        log = proc.text()
        assert not any(m in log for m in SANITIZER_MARKS), f"{d}:\n{log[-3000:]}"
