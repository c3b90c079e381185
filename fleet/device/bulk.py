"""Thousands of simulated devices in one process: `fleet sim`'s default engine.

Every device is a `SimulatedDevice` (sim.py) with the same reconciler, command
handling, acks, state and telemetry; only the transport differs. SimFleet runs
each device on aiomqtt, which per message costs a queue hand-off, a task
wake-up, a future and a timer, and per client a keep-alive task waking every
second: about 1 ms of CPU per device per desired change. Here one event loop
drives plain paho clients directly:

- a device's handlers run eagerly from paho's callback; only a handler that
  has to wait (a SUBACK) becomes a task, and later messages for that device
  queue behind it, so each device still sees its messages one at a time, in
  order, as under aiomqtt;
- writes are flushed once per loop pass, without registering a writer with
  the selector unless the kernel's buffer is full;
- one timer serves every device's keep-alive and one serves telemetry;
- identical retained docs are decoded once and identical state reports
  encoded once (a join-all sends the same doc to every device).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from functools import partial
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fleet.device.sim import MeetingDriver, SimDeviceConfig, SimulatedDevice
from fleet.mqtt import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE_S,
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    BrokerUrl,
    RestartLink,
    publish_nowait,
)
from fleet.protocol import Topics, decode, encode
from fleet.protocol.messages import (
    Capabilities,
    Desired,
    MeetingIntent,
    MeetingState,
    State,
    Status,
)

log = logging.getLogger(__name__)

KEEPALIVE_CHECK_S = 1.0  # paho's loop_misc: PINGREQ when due, drop a silent broker
TELEMETRY_TICK_S = 0.1
STATE_TS_REUSE_S = 0.5  # an encoded state is shared only while its `ts` is this fresh
CACHE_ENTRIES = 1024
RECV_CHUNK = 65536
GOODBYE_TIMEOUT_S = 2.0  # as run_link's on_close: best effort, the device is going anyway

Handler = Callable[[], Coroutine[Any, Any, None]]


class _Shared:
    """Fleet-wide caches: a join-all sends one payload to every device."""

    def __init__(self) -> None:
        self.docs: dict[bytes, Desired] = {}
        self.states: dict[tuple[Any, ...], tuple[float, bytes]] = {}
        self.rooms: dict[str, MeetingState] = {}  # frozen models: one per room will do

    def desired(self, payload: bytes) -> Desired:
        doc = self.docs.get(payload)
        if doc is None:
            doc = decode(Desired, payload)  # a ProtocolError is not cached: rare, re-raised
            if len(self.docs) >= CACHE_ENTRIES:
                self.docs.clear()
            self.docs[payload] = doc  # models are frozen: sharing one is safe
        return doc


class _SharedRooms(MeetingDriver):
    """The plain driver (the state names the room), with one MeetingState per room."""

    def __init__(self, shared: _Shared) -> None:
        self._rooms = shared.rooms

    async def join(self, intent: MeetingIntent) -> MeetingState:
        state = self._rooms.get(intent.room)
        if state is None:
            if len(self._rooms) >= CACHE_ENTRIES:
                self._rooms.clear()
            state = self._rooms[intent.room] = await super().join(intent)
        return state


class BulkDevice(SimulatedDevice):
    """A SimulatedDevice with the plain meeting driver, sharing decode/encode work."""

    def __init__(self, config: SimDeviceConfig, url: BrokerUrl, topics: Topics, shared: _Shared):
        super().__init__(config, url, topics, driver=_SharedRooms(shared))
        self._shared = shared

    def _decode_desired(self, payload: bytes) -> Desired:
        return self._shared.desired(payload)

    def _state_payload(self) -> bytes:
        # With the plain driver the meeting state is just the room, so this key is the
        # whole state but its ts; the ts is reused only while it is fresh.
        room = self.meeting.room if self.meeting is not None else None
        key = (self.reported_rev, room, self.mic, self.volume, self.error)
        now = time.time()
        hit = self._shared.states.get(key)
        if hit is not None and now - hit[0] < STATE_TS_REUSE_S:
            return hit[1]
        state = State(
            rev=key[0],
            meeting=self.meeting,
            mic=self.mic,
            volume=self.volume,
            error=self.error,
            ts=now,
        )
        payload = encode(state)
        if len(self._shared.states) >= CACHE_ENTRIES:
            self._shared.states.clear()
        self._shared.states[key] = (now, payload)
        return payload


class _BufferedClient(paho.Client):
    """paho reads each packet with at least three recv() calls (type, length bytes, body);
    one recv of whatever is waiting serves a burst of packets instead."""

    _buf = b""
    _pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            self._buf = super()._sock_recv(RECV_CHUNK)  # BlockingIOError when nothing waits
            self._pos = 0
            if not self._buf:
                return b""  # the peer closed the connection
        end = self._pos + bufsize
        data = self._buf[self._pos : end]
        self._pos = min(end, len(self._buf))
        return data

    def buffered(self) -> bool:
        """Bytes read from the socket that paho has not consumed: the selector cannot see them."""
        if self._sock is None:
            return False
        if self._pos < len(self._buf):
            return True
        pending = getattr(self._sock, "pending", None)  # TLS and WebSocket buffer too
        return pending is not None and pending() > 0


class BulkLink:
    """What SimulatedDevice uses of aiomqtt.Client, on a paho client this fleet drives.

    Like aiomqtt, publish() at QoS 1 waits for the PUBACK and subscribe() and
    unsubscribe() for the broker's answer. The device's hot path (state, acks,
    telemetry) does not come here: it uses publish_nowait on `_client`.
    """

    def __init__(self, client: paho.Client, conn: _Conn) -> None:
        self._client = client  # the name publish_nowait reaches for
        self._conn = conn

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, **_: Any
    ) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            await self._conn.answer(info.rc, info.mid)

    async def subscribe(self, topics: list[tuple[str, int]], *_: Any, **__: Any) -> Any:
        rc, mid = self._client.subscribe(topics)
        return await self._conn.answer(rc, mid)

    async def unsubscribe(self, topics: list[str], *_: Any, **__: Any) -> None:
        rc, mid = self._client.unsubscribe(topics)
        await self._conn.answer(rc, mid)


class _Conn:
    """One device's connection: its paho client, its queue of handlers, its waiters."""

    def __init__(self, dev: BulkDevice) -> None:
        self.dev = dev
        self.client: paho.Client | None = None
        self.link: BulkLink | None = None
        self.busy = False  # a handler is running (suspended in a task)
        self.inbox: deque[Handler] = deque()
        self.waiters: dict[int, asyncio.Future[Any]] = {}
        self.ready: asyncio.Future[None] | None = None  # resolved when booted or failed
        self.writer = False  # a selector writer is registered (kernel buffer was full)
        self.leaving = False  # saying goodbye: inbound messages are no longer handled
        self.delay = RECONNECT_FIRST_S

    def answer(self, rc: MQTTErrorCode, mid: int | None) -> asyncio.Future[Any]:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise aiomqtt.MqttCodeError(rc, "could not send the request")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters[mid] = fut
        return fut

    def fail_waiters(self, reason: str) -> None:
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(aiomqtt.MqttError(reason))
        self.waiters.clear()


class _Resume:
    """Hands a coroutine that suspended outside any task over to a task, mid-flight.

    It re-yields the future the coroutine is waiting on, so the task waits on that
    very future and then resumes the coroutine; a cancellation is thrown into it.
    """

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, None]:
        value = self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = self.coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = self.coro.send(sent)
                except StopIteration:
                    return


async def _resume(coro: Coroutine[Any, Any, None], first: Any) -> None:
    await _Resume(coro, first)


class BulkFleet:
    """N simulated devices on one loop and plain paho clients; the same API as SimFleet."""

    def __init__(
        self,
        url: BrokerUrl,
        secrets: dict[str, str],
        topics: Topics | None = None,
        groups: Sequence[str] | Callable[[str], Sequence[str]] = (),
        tele_interval_s: float = 10.0,
        connect_concurrency: int = 64,
        caps: Capabilities | None = None,
    ) -> None:
        self.url = url
        self.topics = topics or Topics()
        self.tele_interval_s = tele_interval_s
        shared = _Shared()
        self.devices: list[BulkDevice] = []
        for device_id, secret in secrets.items():
            dev_groups = groups(device_id) if callable(groups) else groups
            cfg = SimDeviceConfig(
                device_id, secret, list(dev_groups), tele_interval_s, caps or Capabilities()
            )
            self.devices.append(BulkDevice(cfg, url, self.topics, shared))
        self._conns = [_Conn(dev) for dev in self.devices]
        self._by_id = {conn.dev.id: conn for conn in self._conns}
        self._concurrency = connect_concurrency
        self._gate: asyncio.Semaphore | None = None
        self._dirty: list[paho.Client] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._offline = encode(Status(online=False))

    def __getitem__(self, device_id: str) -> BulkDevice:
        return self._by_id[device_id].dev

    async def wait_connected(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            for dev in self.devices:
                await dev.connected.wait()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gate = asyncio.Semaphore(self._concurrency)
        try:
            async with asyncio.TaskGroup() as tg:
                for conn in self._conns:
                    self._spawn(self._connect(conn))
                tg.create_task(self._keepalive(), name="bulk-keepalive")
                tg.create_task(self._telemetry(), name="bulk-telemetry")
        finally:
            await self._close_all()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- connecting ---------------------------------------------------------------------------
    async def _connect(self, conn: _Conn) -> None:
        """Connect (through the gate, so at most N handshakes at once) until it holds."""
        assert self._gate is not None
        while not self._closing:
            async with self._gate:
                try:
                    await self._open(conn)
                    return
                except (OSError, aiomqtt.MqttError, TimeoutError) as exc:
                    log.info(
                        "%s: connection to %s failed (%s); retrying",
                        conn.dev.id,
                        self.url.redacted(),
                        exc,
                    )
                    self._abandon(conn)
            await asyncio.sleep(conn.delay * (0.5 + random.random()))
            conn.delay = min(conn.delay * 2, RECONNECT_MAX_S)

    async def _open(self, conn: _Conn) -> None:
        dev = conn.dev
        client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=dev.id,
            protocol=paho.MQTTv311,
            clean_session=True,
            transport=self.url.transport,
            reconnect_on_failure=False,
            userdata=conn,
        )
        if dev.url.username is not None:
            client.username_pw_set(dev.url.username, dev.url.password)
        client.will_set(dev.topics.status(dev.id), self._offline, qos=1, retain=True)
        if self.url.tls:
            client.tls_set_context(ssl.create_default_context(cafile=self.url.ca_file))
        if self.url.transport == "websockets":
            client.ws_set_options(path=self.url.path)
        client.on_connect = self._on_connack
        client.on_message = self._on_message
        client.on_subscribe = self._on_answer
        client.on_unsubscribe = self._on_answer
        client.on_publish = self._on_answer
        client.on_disconnect = self._on_disconnect
        client.on_socket_close = self._on_socket_close
        conn.client = client
        conn.link = BulkLink(client, conn)
        conn.ready = self._loop.create_future()
        conn.leaving = False
        # The TCP (and TLS, WebSocket) handshake and CONNECT block: off the loop thread.
        await self._loop.run_in_executor(
            None, partial(client.connect, self.url.host, self.url.port, KEEPALIVE_S)
        )
        if conn.client is not client:
            raise aiomqtt.MqttError("closed while connecting")
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Small packets back to back: without this the second waits for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # From here on the loop thread owns the client: writes go through _flush.
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        assert sock is not None
        self._loop.add_reader(sock.fileno(), self._readable, client)
        if client.want_write():
            self._register_write(client, conn, sock)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await conn.ready
        conn.delay = RECONNECT_FIRST_S

    def _on_connack(self, client: paho.Client, conn: _Conn, _flags: Any, rc: Any, _p: Any) -> None:
        if client is not conn.client or conn.ready is None or conn.ready.done():
            return
        if rc.is_failure:
            conn.ready.set_exception(MqttConnectError(rc))
            return
        self._submit(conn, partial(self._boot, conn, client))

    async def _boot(self, conn: _Conn, client: paho.Client) -> None:
        dev, link = conn.dev, conn.link
        assert link is not None
        try:
            await dev._on_connect(cast("aiomqtt.Client", link))
        except BaseException as exc:
            if conn.ready is not None and not conn.ready.done():
                conn.ready.set_exception(exc)
            raise
        dev.connected.set()
        if conn.ready is not None and not conn.ready.done():
            conn.ready.set_result(None)

    def _on_answer(self, client: paho.Client, conn: _Conn, mid: int, codes: Any, _p: Any) -> None:
        """SUBACK, UNSUBACK, PUBACK (or a QoS 0 publish written): wake whoever waits on it."""
        fut = conn.waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    # --- reading and dispatching --------------------------------------------------------------
    def _readable(self, client: _BufferedClient) -> None:
        try:
            client.loop_read()
            while client.buffered():
                client.loop_read()
        except Exception as exc:  # a broken transport (WebSocket framing...): reconnect
            log.info("%s: read failed: %s", client._client_id.decode(), exc)
            with contextlib.suppress(Exception):
                client._sock_close()  # paho has no public close; it reports on_disconnect
            self._on_disconnect(client, cast("_Conn", client.user_data_get()))

    def _on_message(self, client: paho.Client, conn: _Conn, message: paho.MQTTMessage) -> None:
        if client is conn.client and not conn.leaving:
            # bytes (paho types it bytes | bytearray); the desired-doc cache hashes it
            payload = bytes(message.payload)
            self._submit(conn, partial(conn.dev.handle, message.topic, payload))

    def _submit(self, conn: _Conn, handler: Handler) -> None:
        """Run handlers one at a time per device, eagerly: a task only for one that waits."""
        if conn.busy:
            conn.inbox.append(handler)
            return
        while True:
            coro = handler()
            conn.busy = True
            try:
                first = coro.send(None)
            except StopIteration:
                conn.busy = False
            except BaseException as exc:
                conn.busy = False
                self._failed(conn, exc)
            else:
                task = self._loop.create_task(_resume(coro, first))
                task.add_done_callback(partial(self._resumed, conn))
                return
            if not conn.inbox:
                return
            handler = conn.inbox.popleft()

    def _resumed(self, conn: _Conn, task: asyncio.Task[None]) -> None:
        conn.busy = False
        if not task.cancelled() and task.exception() is not None:
            self._failed(conn, cast("BaseException", task.exception()))
        if conn.inbox:
            self._submit(conn, conn.inbox.popleft())

    def _failed(self, conn: _Conn, exc: BaseException) -> None:
        if isinstance(exc, RestartLink):
            self._restart(conn, exc.delay_s)
        elif isinstance(exc, aiomqtt.MqttError):
            log.debug("%s: handler stopped by the connection: %s", conn.dev.id, exc)
        else:
            log.error("%s: handler failed; message dropped", conn.dev.id, exc_info=exc)

    # --- writing ------------------------------------------------------------------------------
    def _register_write(self, client: paho.Client, _conn: _Conn, _sock: Any) -> None:
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(client)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for client in dirty:
            self._write(client)

    def _write(self, client: paho.Client) -> None:
        conn = cast("_Conn", client.user_data_get())
        client.loop_write()
        sock = client.socket()
        if sock is not None and client.want_write() and not conn.writer:
            conn.writer = True  # the kernel's buffer is full: wait until it drains
            self._loop.add_writer(sock.fileno(), self._write, client)

    def _unregister_write(self, client: paho.Client, conn: _Conn, sock: Any) -> None:
        if conn.writer:
            conn.writer = False
            self._loop.remove_writer(sock.fileno())

    # --- disconnecting ------------------------------------------------------------------------
    def _on_socket_close(self, client: paho.Client, conn: _Conn, sock: Any) -> None:
        self._loop.remove_reader(sock.fileno())
        if conn.writer:
            conn.writer = False
            self._loop.remove_writer(sock.fileno())

    def _on_disconnect(self, client: paho.Client, conn: _Conn, *_: Any) -> None:
        if client is not conn.client:
            return  # a connection this fleet already let go of (restart, shutdown)
        was_up, leaving = conn.dev.connected.is_set(), conn.leaving
        self._drop(conn)
        if conn.ready is not None and not conn.ready.done():
            conn.ready.set_exception(aiomqtt.MqttError("connection lost while connecting"))
        elif was_up and not leaving and not self._closing:  # a reboot reconnects by itself
            log.info("%s: connection to %s lost; retrying", conn.dev.id, self.url.redacted())
            self._spawn(self._reconnect(conn, conn.delay * (0.5 + random.random())))

    def _abandon(self, conn: _Conn) -> None:
        """A connection attempt that failed half-way: close what it opened."""
        client = conn.client
        self._drop(conn)
        if client is not None and client.socket() is not None:
            with contextlib.suppress(Exception):
                client._sock_close()

    def _drop(self, conn: _Conn) -> None:
        """Forget the connection: the device has no link, its queued messages go with it."""
        conn.client = None
        conn.link = None
        conn.inbox.clear()
        conn.fail_waiters("disconnected")
        conn.dev.connected.clear()
        conn.dev._on_disconnect()

    async def _reconnect(self, conn: _Conn, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._connect(conn)

    async def _goodbye(self, conn: _Conn) -> None:
        """The graceful end, as run_link's: {"online": false} (PUBACK awaited), DISCONNECT."""
        client, link = conn.client, conn.link
        if client is None or link is None:
            return
        conn.leaving = True
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await conn.dev._publish_offline(cast("aiomqtt.Client", link))
        except (TimeoutError, aiomqtt.MqttError) as exc:  # the connection may be gone already
            log.debug("%s: no goodbye: %s", conn.dev.id, exc)
        if conn.client is client:
            self._drop(conn)  # what paho reports from here on is expected
            client.disconnect()  # written by the next flush; paho then closes the socket

    def _restart(self, conn: _Conn, delay_s: float) -> None:
        """A reboot: stop handling messages, say goodbye, come back after `delay_s`."""
        conn.leaving = True
        if not self._closing:
            self._spawn(self._reboot(conn, delay_s))

    async def _reboot(self, conn: _Conn, delay_s: float) -> None:
        await self._goodbye(conn)
        await self._reconnect(conn, delay_s)

    async def _close_all(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        goodbyes = []
        for conn in self._conns:
            if conn.client is not None and conn.dev.connected.is_set():
                goodbyes.append(self._goodbye(conn))
            elif conn.client is not None:
                self._abandon(conn)
        await asyncio.gather(*goodbyes)
        self._flush()  # the DISCONNECTs, before the loop goes away

    # --- timers -------------------------------------------------------------------------------
    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_CHECK_S)
            for conn in self._conns:
                client = conn.client
                if client is not None and conn.dev.connected.is_set():
                    client.loop_misc()

    async def _telemetry(self) -> None:
        """Every device's telemetry from one timer, spread over the interval as SimFleet does."""
        now = time.monotonic()
        due: list[tuple[float, int]] = []
        for i, conn in enumerate(self._conns):
            due.append((now + conn.dev._rng.uniform(0, self.tele_interval_s), i))
        heapq.heapify(due)
        while True:
            await asyncio.sleep(TELEMETRY_TICK_S)
            now = time.monotonic()
            while due and due[0][0] <= now:
                at, i = due[0]
                heapq.heapreplace(due, (at + self.tele_interval_s, i))
                dev = self._conns[i].dev
                if dev._client is not None and dev.connected.is_set():
                    try:
                        publish_nowait(
                            dev._client, dev.topics.tele(dev.id), encode(dev.telemetry())
                        )
                    except aiomqtt.MqttError as exc:
                        log.debug("%s: telemetry skipped: %s", dev.id, exc)
