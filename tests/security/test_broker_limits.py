"""What a user may cost a broker (docs/protocol.md §11.3), on both brokers: sessions held
by one user, offline queues, login floods against a chosen secret, sockets that never
send CONNECT, and the WebSocket listener's bind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import socket
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest

import broker.amqtt.embedded as embedded
import broker.mosquitto.config as mosquitto_config
from broker.amqtt.embedded import EmbeddedBroker
from broker.amqtt.plugins import FleetAuthPlugin
from broker.mosquitto.process import MosquittoBroker, free_port
from fleet.auth import CHOSEN_SECRET_ITERATIONS, CredentialStore, Role
from fleet.auth.limits import SESSIONS_PER_USER, STRETCHED_CHECK_BURST, STRETCHED_CHECKS_PER_S
from tests.support.brokers import BrokerHandle, mqtt_client, require_mosquitto
from tests.support.running import wait_for

pytestmark = pytest.mark.timeout(120)


async def _connects(
    handle: BrokerHandle, user: str, secret: str, client_id: str, subscribe: str | None = None
) -> bool:
    """A persistent-session CONNECT (and a subscription), then a clean goodbye."""
    try:
        async with mqtt_client(handle, user, secret, client_id=client_id, clean_session=False) as c:
            if subscribe is not None:
                await c.subscribe(subscribe, qos=1)
            return True
    except aiomqtt.MqttError:
        return False


# --- sessions per user --------------------------------------------------------------------------


async def test_a_home_assistant_user_holds_a_bounded_number_of_sessions(
    any_broker: BrokerHandle,
) -> None:
    h = any_broker
    ha = h.add_user("ha", Role.HOMEASSISTANT)
    ctl = h.add_user("ctl", Role.CONTROLLER)
    states = f"{h.topics.prefix}/dev/+/state"
    # MQTT 3.1.1 clean sessions end at their goodbye: they hold nothing afterwards.
    for _ in range(SESSIONS_PER_USER + 2):
        async with mqtt_client(h, "ha", ha, client_id=uuid.uuid4().hex[:22]):
            pass
    held = [uuid.uuid4().hex[:22] for _ in range(SESSIONS_PER_USER)]
    for client_id in held:  # random ids, as Home Assistant's; each left persistent
        assert await _connects(h, "ha", ha, client_id, subscribe=states), client_id
    # One more session is refused; the sessions it holds may come back.
    assert not await _connects(h, "ha", ha, uuid.uuid4().hex[:22], subscribe=states)
    assert await _connects(h, "ha", ha, held[0])
    # The controller role (an operator's CLI opens a session per command) is not bounded.
    for n in range(SESSIONS_PER_USER + 2):
        assert await _connects(h, "ctl", ctl, f"ctl-cli-{n}")


async def test_an_offline_home_assistant_session_queues_nothing(any_broker: BrokerHandle) -> None:
    """An attacker's persistent sessions, subscribed to busy topics and left offline, grew
    the broker without bound; now nothing is queued for them."""
    h = any_broker
    ha = h.add_user("ha", Role.HOMEASSISTANT)
    dev = h.add_device("dev-a")
    state = h.topics.state("dev-a")
    assert await _connects(h, "ha", ha, "ha-away", subscribe=state)
    async with mqtt_client(h, "dev-a", dev) as device:
        for n in range(50):
            await device.publish(state, f'{{"rev": {n}}}'.encode(), qos=1)
    got: list[bytes] = []
    async with mqtt_client(h, "ha", ha, client_id="ha-away", clean_session=False) as back:
        async with mqtt_client(h, "dev-a", dev) as device:
            await device.publish(state, b'{"rev": 999}', qos=1)  # live: still subscribed
        async with asyncio.timeout(10):
            async for message in back.messages:
                got.append(bytes(message.payload))  # type: ignore[arg-type]
                if got[-1] == b'{"rev": 999}':
                    break
    assert got == [b'{"rev": 999}']


async def test_an_offline_device_queue_is_bounded_by_bytes(
    any_broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices keep an offline queue (commands); its bytes are bounded, here at 1 MiB."""
    bound = 1024 * 1024
    monkeypatch.setattr(mosquitto_config, "MAX_QUEUED_BYTES", bound)
    monkeypatch.setattr(embedded, "QUEUED_BYTES_PER_CLIENT", bound)
    h = any_broker
    await h.restart()
    dev = h.add_device("dev-a")
    ctl = h.add_user("ctl", Role.CONTROLLER)
    cmd = h.topics.cmd("dev-a")
    assert await _connects(h, "dev-a", dev, "dev-a", subscribe=cmd)
    big = b"x" * 60_000
    sent = 60  # 3.6 MB
    async with mqtt_client(h, "ctl", ctl) as pub:
        for _ in range(sent):
            await pub.publish(cmd, big, qos=1)
        await pub.publish(cmd, b"end", qos=1)  # dropped too: the queue is full
    got = 0
    async with mqtt_client(h, "dev-a", dev, clean_session=False) as back:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):  # until quiet: how many were queued
                async for _message in back.messages:
                    got += 1
    assert 0 < got <= bound // len(big) + 1


# --- login floods against a chosen secret ---------------------------------------------------


def _connect_packet(client_id: str, username: str, password: str) -> bytes:
    def text(value: str) -> bytes:
        raw = value.encode()
        return len(raw).to_bytes(2, "big") + raw

    body = text("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")
    body += text(client_id) + text(username) + text(password)
    return bytes([0x10, len(body)]) + body


async def _connack(port: int, packet: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(packet)
        return (await asyncio.wait_for(reader.readexactly(4), 10))[3]
    finally:
        writer.transport.abort()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_login_flood_against_a_chosen_secret_costs_the_broker_little(
    any_broker: BrokerHandle,
) -> None:
    """Wrong passwords for a user whose secret was chosen (stretched): past a small budget
    they are refused without a full check, and the user's own clients still get in."""
    h = any_broker
    h.add_user("ops", Role.CONTROLLER, secret="a chosen passphrase")
    ops = "a chosen passphrase"
    assert await _connack(h.port, _connect_packet("ops-cli-1", "ops", ops)) == 0  # known now
    flood = 200
    pid = h.backend.proc.pid if h.kind == "mosquitto" else None  # type: ignore[attr-defined]
    cpu_before = _cpu_s(pid) if pid else 0.0
    started = time.monotonic()
    for n in range(flood):  # a new guess each time, from a new client id
        assert await _connack(h.port, _connect_packet(f"ops-x{n}", "ops", f"guess-{n}")) == 5
    elapsed = time.monotonic() - started
    # During the flood the user's own password gets in, under a new client id too.
    assert await _connack(h.port, _connect_packet("ops-cli-2", "ops", ops)) == 0
    full_checks_allowed = STRETCHED_CHECK_BURST + STRETCHED_CHECKS_PER_S * elapsed + 2
    if h.kind == "mosquitto":
        # What one full check costs, measured here (OpenSSL's PBKDF2, as Mosquitto's).
        t0 = time.process_time()
        hashlib.pbkdf2_hmac("sha512", b"guess", b"0123456789ab", CHOSEN_SECRET_ITERATIONS, 64)
        one = time.process_time() - t0
        spent = _cpu_s(pid) - cpu_before  # type: ignore[arg-type]
        # Unguarded, every guess costs a full check; a flood now costs a fraction of that.
        assert spent < max(full_checks_allowed * one * 2, flood * one / 4), (spent, one)
    else:
        broker = h.backend.broker._broker  # type: ignore[attr-defined]
        (auth,) = [p for p in broker.plugins_manager.plugins if isinstance(p, FleetAuthPlugin)]
        assert auth.guard.unhashed_refusals >= flood - full_checks_allowed


# --- sockets that never send CONNECT, and the WebSocket bind (Mosquitto's process) ------------


def _refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


@pytest.mark.mosquitto
async def test_mosquitto_bounds_sockets_that_never_connect(
    creds_store: CredentialStore, tmp_path: Path
) -> None:
    """Mosquitto 2.0.11 holds a socket that sends nothing for about 90 s, and its
    max_connections miscounts: its descriptor limit is the bound that holds. At it,
    further sockets are closed at once while the clients it has are served, and a socket
    freed makes room again. (The network edge limits who may fill it, docs/architecture.md.)"""
    require_mosquitto()
    ctl = creds_store.add("ctl", Role.CONTROLLER)
    bound = 16
    async with MosquittoBroker(
        creds_store.path, port=0, workdir=tmp_path / "mq", max_connections=bound
    ) as mq:
        limits = await asyncio.to_thread(Path(f"/proc/{mq.pid}/limits").read_text)
        files = next(int(line.split()[3]) for line in limits.splitlines() if "open files" in line)
        assert files == bound + mosquitto_config.FD_HEADROOM
        async with aiomqtt.Client(
            "127.0.0.1", mq.port, username="ctl", password=ctl, identifier="ctl-1"
        ) as client:
            idle = [socket.create_connection(("127.0.0.1", mq.port)) for _ in range(files + 50)]
            try:
                for sock in idle:
                    sock.setblocking(False)

                refused: list[socket.socket] = []

                def past_the_bound_closed() -> bool:
                    ready, _w, _x = select.select(idle, [], [], 0)
                    for sock in ready:
                        if sock.recv(1) == b"":
                            idle.remove(sock)
                            refused.append(sock)
                    return len(refused) >= 50

                await wait_for(past_the_bound_closed, what="sockets past the bound closed")
                assert idle  # the ones within the bound stay open
                # The client it had is still served.
                await client.subscribe("fleet/v1/probe", qos=1)
                await client.publish("fleet/v1/probe", b"still here", qos=1)
                async with asyncio.timeout(10):
                    message = await anext(aiter(client.messages))
                assert message.payload == b"still here"
                for sock in [*refused, *idle[:20]]:
                    sock.close()
                del idle[:20]
                await wait_for(
                    lambda: _mqtt_connects(mq.port, "ctl", ctl), what="a freed socket's room"
                )
            finally:
                for sock in idle:
                    sock.close()


def _mqtt_connects(port: int, username: str, password: str) -> bool:
    """A plain CONNECT answered with CONNACK 0 (blocking, short)."""
    packet = _connect_packet(f"{username}-{uuid.uuid4().hex[:6]}", username, password)
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as sock:
        sock.settimeout(2)
        sock.sendall(packet)
        return sock.recv(4)[3:4] == b"\x00"
    return False


async def _websocket_bind_holds(ws_port: int) -> None:
    assert _refused("127.0.0.2", ws_port)
    assert not _refused("127.0.0.1", ws_port)


@pytest.mark.mosquitto
async def test_mosquitto_websocket_listener_keeps_its_bind(
    creds_store: CredentialStore, tmp_path: Path
) -> None:
    require_mosquitto()
    ctl = creds_store.add("ctl", Role.CONTROLLER)
    async with MosquittoBroker(
        creds_store.path, port=0, ws_port=free_port(), workdir=tmp_path / "mq"
    ) as mq:
        assert mq.ws_port is not None
        await _websocket_bind_holds(mq.ws_port)
        async with aiomqtt.Client(
            "127.0.0.1",
            mq.ws_port,
            username="ctl",
            password=ctl,
            identifier="ctl-ws",
            transport="websockets",
        ):
            pass


async def test_embedded_websocket_listener_keeps_its_bind(creds_store: CredentialStore) -> None:
    async with EmbeddedBroker(creds_store.path, port=0, ws_port=0) as broker:
        assert broker.ws_port is not None
        await _websocket_bind_holds(broker.ws_port)
