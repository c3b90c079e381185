"""The firmware tier: the real image (ESP-IDF, esp32c3, the QEMU network) booted in
Espressif's QEMU against a real broker and the real controller.

What the host device passes in test_conformance.py, where it applies to a device that is
booted rather than started: its birth; join-all, leave and leave-all converging, the rev
reported only once the meeting server confirmed the join; offline (QEMU killed) and back
converging to the latest intent; ping, identify, set_groups kept over a reboot, reboot with
the same identity; OTA to a second image served over HTTP, and broken images refused; the
protocol's errors for malformed commands and oversize payloads.

One build per session (tests/support/firmware_qemu.py: incremental, cached under
~/.cache/espfleet); each test provisions its own factory image with `fleet image` and
boots it. Skips with one line when ESP-IDF or Espressif's QEMU is not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from tests.support.brokers import BrokerHandle, amqtt_handle, mosquitto_handle, mqtt_client, require_mosquitto
from filelock import FileLock
from tests.support.firmware_qemu import (
    BUILD_DIR,
    GUEST_IP,
    Firmware,
    ImageServer,
    Qemu,
    Tools,
    build_firmware,
    factory_image,
    find_tools,
    sntp,
)
from tests.support.running import controller, operator, wait_for
from tests.control_plane.test_device_conformance import BAD_COMMANDS, MAX_PAYLOAD, padded_doc

from fleet.auth import CredentialStore
from fleet.protocol.messages import (
    Ack,
    AckCode,
    ApiOp,
    ApiRequest,
    DeviceOutcome,
    MeetJoined,
    State,
    Status,
    Telemetry,
    decode,
    encode,
)
from fleet.protocol.topics import Topics

if os.environ.get("FLEET_FIRMWARE_QEMU") == "0":
    pytest.skip("firmware_qemu: off (FLEET_FIRMWARE_QEMU=0)", allow_module_level=True)
TOOLS = find_tools()
if isinstance(TOOLS, str):
    pytest.skip(f"firmware_qemu: {TOOLS}", allow_module_level=True)

# A cold build takes minutes: the module's timeout covers the session build's first use;
# every wait inside a test has its own bound (WAIT_S).
pytestmark = [pytest.mark.firmware_qemu, pytest.mark.timeout(3600)]

PREFIX = "fleet/v1"  # the firmware's (fleet_config_t.prefix NULL); each test has its own broker
DEV = "qemu-1"
GROUP = "kitchen"
WAIT_S = 30.0  # emulated boots, DHCP and flash writes, on a busy machine
OTA_WAIT_S = 120.0
CRASH_MARKS = (
    "Guru Meditation",
    "abort() was called",
    "stack overflow",
    "assert failed",
)  # a 700 KB download and flash write in emulation


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def firmware() -> Firmware:
    """The image, built once per session; a lock keeps parallel workers from building twice."""
    assert isinstance(TOOLS, Tools)
    BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(BUILD_DIR) + ".lock"):
        return build_firmware(TOOLS)


@pytest.fixture(scope="module")
def clock() -> Iterator[None]:
    """SNTP at the guest's 10.0.2.2: telemetry waits for a set clock."""
    with sntp():
        yield


@pytest_asyncio.fixture(params=["amqtt", "mosquitto"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerHandle]:
    """A broker of this test's own on a free port of 127.0.0.1 (the guest's 10.0.2.2)."""
    store = CredentialStore(tmp_path / "fleet-home" / "credentials.json")
    if request.param == "mosquitto":
        require_mosquitto()
        handle = mosquitto_handle(store, PREFIX, tmp_path / "mosquitto")
    else:
        handle = amqtt_handle(store, PREFIX)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


class Watch:
    """A controller-role client on the device's topics, with waits by predicate."""

    def __init__(self, client: aiomqtt.Client, device_id: str, serve_joins: bool) -> None:
        t = Topics(PREFIX)
        self.client = client
        self.status_t, self.state_t, self.ack_t = (
            t.status(device_id),
            t.state(device_id),
            t.ack(device_id),
        )
        self.tele_t, self.cmd_t, self.desired_t = (
            t.tele(device_id),
            t.cmd(device_id),
            t.desired(device_id),
        )
        self.up_t, self.down_t = t.meet_up(device_id), t.meet_down(device_id)
        self.topics = t
        self.messages: list[aiomqtt.Message] = []
        self.serve_joins = serve_joins
        self._event = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._event.set()
            if self.serve_joins and message.topic.value == self.up_t:
                await self._answer(json.loads(bytes(message.payload)))

    async def _answer(self, up: dict[str, Any]) -> None:
        """As a meeting server alone in the room would (without a controller)."""
        if up.get("type") == "join":
            joined = MeetJoined(type="joined", room=up["room"], session="s-q", participant="p-q")
            await self.client.publish(self.down_t, encode(joined), qos=1)

    def mark(self) -> int:
        return len(self.messages)

    def on(self, topic: str, start: int = 0) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages[start:] if m.topic.value == topic]

    async def wait(
        self,
        topic: str,
        pred: Callable[[bytes], bool] = lambda _: True,
        start: int = 0,
        timeout: float = WAIT_S,
    ) -> tuple[int, bytes]:
        """The index and payload of the first message on `topic` from `start` where pred holds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.messages[start:], start):
                if m.topic.value == topic and pred(bytes(m.payload)):
                    return i, bytes(m.payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(m.topic.value, bytes(m.payload)[:120]) for m in self.messages[start:]]
                raise AssertionError(f"nothing matching on {topic} in {timeout}s; saw {seen}")
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    async def status(self, pred: Callable[[Status], bool], start: int = 0) -> Status:
        _, raw = await self.wait(
            self.status_t, lambda p: bool(p) and pred(decode(Status, p)), start
        )
        return decode(Status, raw)

    async def state(
        self, pred: Callable[[State], bool], start: int = 0, timeout: float = WAIT_S
    ) -> tuple[int, State]:
        i, raw = await self.wait(self.state_t, lambda p: pred(decode(State, p)), start, timeout)
        return i, decode(State, raw)

    async def publish(self, topic: str, payload: bytes | dict[str, Any], retain: bool) -> None:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        await self.client.publish(topic, raw, qos=1, retain=retain)

    async def command(
        self,
        cmd: dict[str, Any] | bytes,
        pred: Callable[[Ack], bool] = lambda _: True,
        timeout: float = WAIT_S,
    ) -> Ack:
        """Send a command; the first ack (with its id, where it has one) for which pred holds."""
        start = self.mark()
        await self.publish(self.cmd_t, cmd, retain=False)
        want = cmd.get("id") if isinstance(cmd, dict) else None

        def match(p: bytes) -> bool:
            ack = decode(Ack, p)
            return (want is None or ack.id == want) and pred(ack)

        _, raw = await self.wait(self.ack_t, match, start, timeout)
        return decode(Ack, raw)

    async def ping(self) -> float:
        ack = await self.command({"id": f"ping-{uuid.uuid4().hex[:6]}", "op": "ping"})
        assert ack.code is AckCode.OK, ack
        assert ack.result is not None
        return float(ack.result["uptime_s"])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watch(
    handle: BrokerHandle, device_id: str = DEV, serve_joins: bool = False
) -> AsyncIterator[Watch]:
    user = f"watch-{uuid.uuid4().hex[:6]}"
    secret = handle.add_user(user, "controller")
    async with mqtt_client(handle, user, secret) as client:
        w = Watch(client, device_id, serve_joins)
        for t in (w.status_t, w.state_t, w.ack_t, w.tele_t, w.up_t, w.down_t):
            await client.subscribe(t, qos=1)
        try:
            yield w
        finally:
            await w.close()


class Board:
    """One emulated device: its factory image by `fleet image`, and QEMU on it."""

    def __init__(self, fw: Firmware, handle: BrokerHandle, workdir: Path) -> None:
        assert isinstance(TOOLS, Tools)
        self.fw = fw
        flash = workdir / f"{DEV}.flash.bin"
        factory_image(fw, flash, DEV, handle.port, handle.store.path, (GROUP,))
        handle.backend.sync()  # `fleet image` issued the credential
        self.qemu = Qemu(TOOLS, flash, workdir / f"{DEV}.serial")

    def log(self) -> str:
        return self.qemu.text()[-6000:]


@pytest_asyncio.fixture
async def board(
    firmware: Firmware, broker: BrokerHandle, tmp_path: Path, clock: None
) -> AsyncIterator[Board]:
    b = Board(firmware, broker, tmp_path)
    try:
        yield b
    finally:
        await b.qemu.kill()
        log = b.qemu.text()
        # A crash of the firmware shows on its console, even where the test passed.
        for crash in CRASH_MARKS:
            assert crash not in log, log[-6000:]


async def boot(b: Board, w: Watch) -> Status:
    """Start QEMU and wait for the device's birth."""
    start = w.mark()
    await b.qemu.start()
    try:
        return await w.status(lambda s: s.online, start)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- serial:\n{b.log()}") from None


# --- presence, desired state and meetings under the real controller ---------------------------


async def test_online_join_leave_converge(
    board: Board, broker: BrokerHandle, tmp_path: Path
) -> None:
    h = broker
    async with controller(h, tmp_path / "ctl.db") as ctl, operator(h) as op, watch(h) as w:
        birth = await boot(board, w)
        # The birth says what the device is: the image's version, the board, its groups.
        assert birth.fw == board.fw.version
        assert birth.hw == "esp32c3-devkit"
        assert birth.ip == GUEST_IP
        assert birth.groups == [GROUP]
        assert birth.caps is not None
        assert not birth.caps.audio
        await wait_for(
            lambda: DEV in ctl.registry.devices and ctl.registry.devices[DEV].online,
            WAIT_S,
            "the controller sees it online",
        )

        # join-all: converged once the device reports the rev, after the meeting server
        # (the controller) confirmed its join.
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=WAIT_S))
        assert joined.ok, joined.detail
        assert joined.counts == {"converged": 1}
        i_state, st = await w.state(lambda s: s.rev == joined.rev)
        assert st.meeting is not None
        assert st.meeting.room == "standup"
        i_join, _ = await w.wait(w.up_t, lambda p: json.loads(p).get("type") == "join")
        i_joined, _ = await w.wait(w.down_t, lambda p: json.loads(p).get("type") == "joined")
        assert i_join < i_joined < i_state

        left = await op.request(ApiOp.LEAVE, ApiRequest(device=DEV, timeout_s=WAIT_S))
        assert left.ok, left.detail
        assert left.counts == {"converged": 1}
        _, st = await w.state(lambda s: s.rev == left.rev)
        assert st.meeting is None

        again = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro", timeout_s=WAIT_S))
        assert again.counts == {"converged": 1}
        out = await op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=WAIT_S))
        assert out.ok, out.detail
        assert out.counts == {"converged": 1}
        [d] = out.devices
        assert (d.device, d.outcome, d.room) == (DEV, DeviceOutcome.CONVERGED, None)

        # Telemetry runs (its clock came from the SNTP server provisioned with --ntp).
        _, raw = await w.wait(w.tele_t)
        tele = decode(Telemetry, raw)
        assert tele.sys.heap_free is not None
        assert tele.sys.heap_free > 0


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_rev_is_reported_only_once_the_join_is_confirmed(
    board: Board, broker: BrokerHandle
) -> None:
    """No meeting server answers here until the test does."""
    async with watch(broker) as w:
        await boot(board, w)
        await w.state(lambda s: True)
        start = w.mark()
        await w.publish(w.desired_t, {"rev": 7, "meeting": {"room": "standup"}}, retain=True)
        await w.wait(w.up_t, lambda p: json.loads(p).get("type") == "join", start)
        await w.ping()  # a barrier: whatever it had to say about rev 7 came before this ack
        assert all(decode(State, p).rev != 7 for p in w.on(w.state_t, start))

        joined = MeetJoined(type="joined", room="standup", session="s-q", participant="p-q")
        await w.publish(w.down_t, encode(joined), retain=False)
        _, st = await w.state(lambda s: s.rev == 7, start)
        assert st.meeting is not None
        assert (st.meeting.room, st.meeting.session, st.meeting.participant) == (
            "standup",
            "s-q",
            "p-q",
        )


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_offline_and_back_converges_to_the_latest_intent(
    board: Board, broker: BrokerHandle, tmp_path: Path
) -> None:
    h = broker
    async with controller(h, tmp_path / "ctl.db") as ctl, operator(h) as op, watch(h) as w:
        await boot(board, w)
        await wait_for(
            lambda: DEV in ctl.registry.devices and ctl.registry.devices[DEV].online,
            WAIT_S,
            "online",
        )
        first = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=WAIT_S))
        assert first.counts == {"converged": 1}

        # Power off: the broker publishes the will (keepalive 10 s, so up to 15 s).
        start = w.mark()
        await board.qemu.kill()
        await w.status(lambda s: not s.online, start)
        await wait_for(lambda: not ctl.registry.devices[DEV].online, WAIT_S, "offline")
        latest = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro", timeout_s=1))
        assert latest.counts == {"pending": 1}

        # Back: the retained docs bring it to the latest intent.
        await boot(board, w)
        await w.state(lambda s: s.rev == latest.rev and s.meeting is not None)
        rec = ctl.registry.devices[DEV]
        await wait_for(
            lambda: (rec.online, rec.rev, rec.room) == (True, latest.rev, "retro"),
            WAIT_S,
            "converged in the registry",
        )


# --- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_commands_and_the_protocols_errors(board: Board, broker: BrokerHandle) -> None:
    async with watch(broker, serve_joins=True) as w:
        await boot(board, w)
        await w.state(lambda s: True)
        assert await w.ping() > 0

        ack = await w.command({"id": "i1", "op": "identify", "args": {"seconds": 2}})
        assert (ack.ok, ack.code, ack.done) == (True, AckCode.OK, True)
        ack = await w.command({"id": "i2", "op": "identify", "args": {"seconds": 0}})
        assert (ack.ok, ack.code) == (False, AckCode.BAD_ARGS)
        ack = await w.command({"id": "u1", "op": "selfdestruct"})
        assert (ack.ok, ack.code, ack.done) == (False, AckCode.UNKNOWN_OP, True)
        for payload, ack_id in BAD_COMMANDS:
            ack = await w.command(payload, lambda a, ack_id=ack_id: a.id == ack_id)
            assert (ack.ok, ack.code, ack.done) == (False, AckCode.BAD_REQUEST, True), payload
        for cmd in (
            {"id": "o1", "op": "ota"},
            {"id": "o2", "op": "ota", "args": {"url": "ftp://fw.local/x.bin"}},
            {"id": "g1", "op": "set_groups", "args": {"groups": ["Kitchen"]}},
        ):
            ack = await w.command(cmd)
            assert (ack.ok, ack.code) == (False, AckCode.BAD_ARGS), cmd
        # A repeated id gets the same ack and runs nothing.
        again = await w.command({"id": "u1", "op": "ping"})
        assert (again.ok, again.code) == (False, AckCode.UNKNOWN_OP)

        # Oversize: a desired doc over 64 KiB is refused (esp-mqtt hands it over in
        # fragments; the port refuses it by its length), exactly 64 KiB still applies.
        await w.publish(w.desired_t, {"rev": 2, "meeting": {"room": "standup"}}, retain=True)
        await w.state(lambda s: s.rev == 2)
        start = w.mark()
        await w.publish(w.desired_t, padded_doc(30, "too-big", MAX_PAYLOAD + 1), retain=False)
        await w.ping()
        assert all(decode(State, p).rev == 2 for p in w.on(w.state_t, start))
        await w.publish(w.desired_t, padded_doc(31, "just-fits", MAX_PAYLOAD), retain=False)
        _, st = await w.state(lambda s: s.rev == 31, start)
        assert st.meeting is not None
        assert st.meeting.room == "just-fits"
        assert board.qemu.alive


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_set_groups_kept_over_a_reboot_with_the_same_identity(
    board: Board, broker: BrokerHandle
) -> None:
    h = broker
    # The broker lets a device read only its credential's groups: widen it first.
    h.store.set_groups(DEV, [GROUP, "lab"])
    await h.sync()
    async with watch(h) as w:
        birth = await boot(board, w)
        uptime = await w.ping()
        ack = await w.command({"id": "g1", "op": "set_groups", "args": {"groups": [GROUP, "lab"]}})
        assert (ack.ok, ack.code) == (True, AckCode.OK), ack
        assert ack.result == {"groups": [GROUP, "lab"]}
        await w.status(lambda s: s.online and s.groups == [GROUP, "lab"])

        start = w.mark()
        accepted = await w.command({"id": "r1", "op": "reboot"})
        assert (accepted.ok, accepted.code, accepted.done) == (True, AckCode.ACCEPTED, False)
        # Goodbye, a new boot, and the final ack from it.
        await w.status(lambda s: not s.online, start)
        reborn = await w.status(lambda s: s.online, start)
        _, raw = await w.wait(w.ack_t, lambda p: decode(Ack, p).done is True, start)
        final = decode(Ack, raw)
        assert (final.id, final.ok, final.code) == ("r1", True, AckCode.OK)
        assert await w.ping() < uptime + 60  # a new boot's uptime
        # The same identity (id, credential, board), and the groups from NVS.
        assert (reborn.fw, reborn.hw, reborn.ip) == (birth.fw, birth.hw, birth.ip)
        assert reborn.groups == [GROUP, "lab"]
        # It listens to its new group's desired doc again.
        await w.publish(w.topics.group_desired("lab"), {"rev": 40, "meeting": None}, retain=True)
        await w.state(lambda s: s.rev == 40)
        assert board.qemu.text().count("Calling app_main()") == 2


async def final_ack(w: Watch, cmd_id: str, start: int) -> Ack:
    """The final ack (done) of a long command, however long the download and restart take."""

    def done(p: bytes) -> bool:
        ack = decode(Ack, p)
        return ack.id == cmd_id and ack.done

    _, raw = await w.wait(w.ack_t, done, start, OTA_WAIT_S)
    return decode(Ack, raw)


# --- OTA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
async def test_ota_to_a_second_image_and_broken_images_refused(
    board: Board, broker: BrokerHandle
) -> None:
    fw = board.fw
    images = ImageServer()
    good = fw.ota_app.read_bytes()
    images.files["garbage.bin"] = bytes(range(256)) * 256
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF  # its SHA-256 no longer matches
    images.files["corrupt.bin"] = bytes(corrupt)
    images.files["good.bin"] = good
    try:
        async with watch(broker) as w:
            birth = await boot(board, w)
            assert birth.fw == fw.version
            for name in ("garbage.bin", "corrupt.bin"):
                start = w.mark()
                url = images.url(name)
                ack = await w.command({"id": f"ota-{name}", "op": "ota", "args": {"url": url}})
                assert (ack.ok, ack.code, ack.done) == (True, AckCode.ACCEPTED, False)
                final = await final_ack(w, f"ota-{name}", start)
                assert (final.ok, final.code) == (False, AckCode.FAILED), final
                assert "failed" in final.detail
            # Still the old image, never restarted.
            assert board.qemu.text().count("Calling app_main()") == 1
            assert "/corrupt.bin" in images.requests

            start = w.mark()
            url = images.url("good.bin")
            ack = await w.command({"id": "ota-good", "op": "ota", "args": {"url": url}})
            assert (ack.ok, ack.code, ack.done) == (True, AckCode.ACCEPTED, False)
            final = await final_ack(w, "ota-good", start)
            assert (final.ok, final.code) == (True, AckCode.OK), final
            assert final.result == {"fw": fw.ota_version}
            reborn = await w.status(lambda s: s.online and s.fw == fw.ota_version, start)
            assert reborn.hw == birth.hw
            # The new version runs from the other OTA slot.
            assert "Loaded app from partition at offset 0x200000" in board.qemu.text()
    finally:
        images.close()
