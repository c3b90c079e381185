"""Real brokers for integration tests: amqtt in-process, Mosquitto as a subprocess.

Use the fixtures from conftest.py (`amqtt_broker`, `mosquitto_broker`, `any_broker`); they
hand out a `BrokerHandle`. Every test gets its own topic prefix (`topic_prefix`), and the
broker's ACL is built for that prefix.

Credentials: add users through the handle (`add_device`, `add_user`, `controller_url`)
or change `handle.store` and then `await handle.sync()`. amqtt re-reads the file on the
next connect anyway; Mosquitto only reads it at start and on SIGHUP, which `sync()` sends
(and `url()` does it for you when the store changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import aiomqtt
import pytest

from broker.amqtt.embedded import EmbeddedBroker
from broker.mosquitto.config import write_mosquitto_config
from cli.stack import free_port
from fleet.auth import CredentialStore, Role
from fleet.protocol.topics import Topics
from tests.support.packets import mqtt_packet, mqtt_str

MOSQUITTO_BIN = Path("/usr/sbin/mosquitto")
HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RELOAD_TIMEOUT_S = 5.0
CONTROLLER_USER = "test-controller"


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/v1"


def mosquitto_available() -> bool:
    return MOSQUITTO_BIN.exists() or shutil.which("mosquitto") is not None


def require_mosquitto() -> None:
    """Skip without the mosquitto binary, except in CI (CI=true) where it must be installed."""
    if mosquitto_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("mosquitto is not installed (apt-get install mosquitto); CI needs it")
    pytest.skip(
        "mosquitto is not installed: /usr/sbin/mosquitto missing (apt-get install mosquitto)"
    )


def mosquitto_bin() -> str:
    return str(MOSQUITTO_BIN) if MOSQUITTO_BIN.exists() else (shutil.which("mosquitto") or "")


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class Backend(Protocol):
    """What a BrokerHandle drives: one broker kind."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def sync(self) -> None: ...


@dataclass
class BrokerHandle:
    """A running broker for a test: where it is, its users, and its lifecycle."""

    kind: str  # "amqtt" or "mosquitto"
    host: str
    port: int
    store: CredentialStore
    prefix: str
    backend: Backend = field(repr=False, kw_only=True)
    # Mosquitto runs with persistence (as deployed), so retained messages survive
    # restart(); amqtt keeps them in memory only.
    retains_across_restart: bool = field(default=False, kw_only=True)
    # amqtt refuses a forbidden SUBSCRIBE with SUBACK 0x80. Mosquitto 2.0's acl_file grants
    # every SUBACK and applies read rights per message (retained ones included), so there
    # a forbidden subscription simply never delivers anything.
    refuses_subscribe: bool = field(default=True, kw_only=True)
    _controller_secret: str | None = field(default=None, init=False, repr=False)

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def url(self, username: str, secret: str) -> str:
        """``mqtt://user:secret@127.0.0.1:port`` (syncs changed credentials to Mosquitto)."""
        self.backend.sync()
        user, pw = quote(username, safe=""), quote(secret, safe="")
        return f"mqtt://{user}:{pw}@{self.host}:{self.port}"

    def controller_url(self) -> str:
        """URL of a controller-role user (created on the first call)."""
        if self._controller_secret is None:
            self._controller_secret = self.store.add(CONTROLLER_USER, Role.CONTROLLER)
        return self.url(CONTROLLER_USER, self._controller_secret)

    def add_device(self, device_id: str, groups: Sequence[str] = ()) -> str:
        """Add a device credential and return its secret (synced to the broker)."""
        secret = self.store.add(device_id, Role.DEVICE, groups=groups)
        self.backend.sync()
        return secret

    def add_user(self, username: str, role: Role | str, secret: str | None = None) -> str:
        """Add any user and return its secret (synced to the broker)."""
        secret = self.store.add(username, role, secret)
        self.backend.sync()
        return secret

    async def sync(self) -> None:
        """Make the broker see the store's current users and groups."""
        await asyncio.to_thread(self.backend.sync)

    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        await self.backend.stop()

    async def restart(self) -> None:
        """Stop and start the same broker on the same port with the same users."""
        await self.stop()
        await self.start()


class ExternalBackend:
    """A broker the test started some other way (a CLI subprocess, a raw FleetBroker)."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def sync(self) -> None:
        pass


def external_handle(
    port: int, store: CredentialStore, prefix: str, kind: str = "amqtt", host: str = HOST
) -> BrokerHandle:
    return BrokerHandle(kind, host, port, store, prefix, backend=ExternalBackend())


# --- amqtt ------------------------------------------------------------------------------------


class AmqttBackend:
    """EmbeddedBroker in this process; it re-reads the credentials file by itself."""

    def __init__(self, store: CredentialStore, prefix: str, port: int) -> None:
        self.store = store
        self.prefix = prefix
        self.port = port
        self.broker: EmbeddedBroker | None = None

    async def start(self) -> None:
        if self.broker is None:
            broker = EmbeddedBroker(self.store.path, host=HOST, port=self.port, prefix=self.prefix)
            await broker.start()
            self.broker = broker

    async def stop(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            await broker.stop()

    def sync(self) -> None:
        pass


def amqtt_handle(store: CredentialStore, prefix: str, port: int | None = None) -> BrokerHandle:
    backend = AmqttBackend(store, prefix, port or free_port())
    return BrokerHandle("amqtt", HOST, backend.port, store, prefix, backend=backend)


# --- mosquitto --------------------------------------------------------------------------------


class MosquittoBackend:
    """One mosquitto subprocess from `write_mosquitto_config`, restartable on its port."""

    def __init__(self, store: CredentialStore, prefix: str, workdir: Path, port: int) -> None:
        self.store = store
        self.prefix = prefix
        self.workdir = workdir
        self.port = port
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # start/stop run in threads that outlive a cancelled caller (a chaos task cancelled
        # mid-start): one at a time, or two starts race and one mosquitto is orphaned.
        self._lifecycle = threading.Lock()
        self._synced_generation = -1

    def _write(self) -> Path:
        self.store.refresh()
        conf = write_mosquitto_config(
            self.workdir / "conf",
            self.store,
            prefix=self.prefix,
            port=self.port,
            bind=HOST,
            persistence_dir=self.workdir / "data",
            # As root, mosquitto would switch to its own user and fail to read 0600 files.
            run_as="root" if os.geteuid() == 0 else None,
        )
        self._synced_generation = self.store.generation
        return conf

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def start_sync(self) -> None:
        with self._lifecycle:
            self._start_locked()

    def _start_locked(self) -> None:
        if self.proc is not None:
            return
        conf = self._write()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_bin(), "-c", str(conf)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=_raise_nofile_limit,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(HOST, self.port):
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"mosquitto exited with {code}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self._stop_locked()
                raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()}")
            time.sleep(0.02)

    def stop_sync(self) -> None:
        with self._lifecycle:
            self._stop_locked()

    def kill_sync(self) -> None:
        """SIGKILL, no goodbye (chaos); after a start under way has finished."""
        with self._lifecycle:
            proc, self.proc = self.proc, None
            if proc is not None:
                proc.kill()
                proc.wait()

    def _stop_locked(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def sync(self) -> None:
        """Rewrite passwd/acl if the store changed and wait until mosquitto reloaded them."""
        self.store.refresh()
        if self.store.generation == self._synced_generation:
            return
        self._write()
        if self.proc is None or self.proc.poll() is not None:
            return  # start() reads the new files
        before = self.log_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        # Mosquitto logs this while it reloads in its single-threaded loop, so any packet
        # sent afterwards is handled with the new users and ACL.
        while self.log_text().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload its config:\n{self.log_text()}")
            time.sleep(0.005)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def mosquitto_handle(
    store: CredentialStore, prefix: str, workdir: Path, port: int | None = None
) -> BrokerHandle:
    workdir.mkdir(parents=True, exist_ok=True)
    backend = MosquittoBackend(store, prefix, workdir, port or free_port())
    return BrokerHandle(
        "mosquitto",
        HOST,
        backend.port,
        store,
        prefix,
        backend=backend,
        retains_across_restart=True,
        refuses_subscribe=False,
    )


# --- clients --------------------------------------------------------------------------------

SUBACK_FAILURE = 0x80


@contextlib.asynccontextmanager
async def mqtt_client(
    handle: BrokerHandle,
    username: str | None,
    secret: str | None,
    *,
    client_id: str | None = None,
    will: aiomqtt.Will | None = None,
    clean_session: bool = True,
) -> AsyncIterator[aiomqtt.Client]:
    """An MQTT 3.1.1 client; a device's client id defaults to its username (the ACL wants it)."""
    ident = client_id if client_id is not None else (username or f"anon-{uuid.uuid4().hex[:8]}")
    async with aiomqtt.Client(
        handle.host,
        handle.port,
        username=username,
        password=secret,
        identifier=ident,
        protocol=aiomqtt.ProtocolVersion.V311,
        will=will,
        clean_session=clean_session,
        keepalive=30,
        timeout=10,
    ) as client:
        yield client


def subscribe_failed(result: Sequence[object]) -> bool:
    """True when a SUBACK refused the (single) filter: return code 0x80."""
    code = result[0]
    return int(getattr(code, "value", code)) >= SUBACK_FAILURE  # type: ignore[call-overload]


async def subscribe_forbidden(
    handle: BrokerHandle, client: aiomqtt.Client, topic_filter: str
) -> None:
    """Subscribe to a filter the ACL forbids: SUBACK 0x80 where the broker checks it."""
    result = await client.subscribe(topic_filter, qos=1)
    if handle.refuses_subscribe:
        assert subscribe_failed(result), f"{handle.kind} granted {topic_filter}: {result}"


async def connect_and_drop(
    handle: BrokerHandle,
    username: str,
    secret: str,
    will_topic: str,
    will_payload: bytes,
    *,
    client_id: str | None = None,
) -> int:
    """CONNECT (MQTT 3.1.1, QoS 1 retained will) on a raw socket, then drop the socket
    without DISCONNECT so the broker fires the will. Returns the CONNACK return code."""
    flags = 0x80 | 0x40 | 0x20 | (1 << 3) | 0x04 | 0x02  # user, pw, will retain/qos1/flag, clean
    variable = mqtt_str("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    payload = b"".join(
        mqtt_str(v) for v in (client_id or username, will_topic, will_payload, username, secret)
    )
    body = variable + payload
    reader, writer = await asyncio.open_connection(handle.host, handle.port)
    try:
        writer.write(mqtt_packet(0x10, body))
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), 10)
    finally:
        writer.transport.abort()  # no DISCONNECT: an abnormal end
    return connack[3]


async def collect(
    client: aiomqtt.Client, until_topic: str, settle_s: float = 0.5, timeout_s: float = 10.0
) -> list[aiomqtt.Message]:
    """Messages up to and including the first on `until_topic` (a marker), then `settle_s` more.

    Whatever a broker was going to deliver before the marker has arrived by then; the
    extra wait catches stragglers without asserting on timing.
    """
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            got.append(message)
            if message.topic.value == until_topic:
                break
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settle_s):
            async for message in client.messages:
                got.append(message)
    return got


def _raise_nofile_limit() -> None:
    """In the child: a broker for thousands of devices needs as many descriptors."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
