"""MQTT connections: broker URLs, clients, and a reconnecting message loop.

paho-mqtt drives the wire through aiomqtt. Devices and participants speak MQTT
3.1.1 (as esp-mqtt does); the controller and the operator's tools ask for
`MqttVersion.AUTO`: MQTT 5 where the broker speaks it, else 3.1.1 (a broker that
refuses an MQTT 5 CONNECT is remembered and asked in 3.1.1 at once). What MQTT 5
adds is used only here (docs/protocol.md §13 says what each does on 3.1.1):
`publish` sets message expiry and response topic + correlation data, and raises
`PublishRefused` on a PUBACK reason code; `subscribe` raises `SubscribeRefused` on a
refused filter (SUBACK 0x80 on 3.1.1 too); `reply_of` reads the response topic of a
request.

Callers give a `Link` handler; the loop keeps the connection up,
calls `on_connect` after every (re)connect and feeds each message to
`on_message`. A handler's exception is logged and dropped, never raised into
the loop: one bad message must not take a device or the controller down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho_mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleet.errors import BrokerUnavailable, ConfigError, PublishRefused, SubscribeRefused

log = logging.getLogger(__name__)

# Reconnect backoff: fast first retry (broker restarts are short), capped so a
# fleet does not hammer a broker that is down, jittered so it does not stampede.
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 10.0
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0

_SCHEMES: dict[str, tuple[bool, Literal["tcp", "websockets"], int]] = {
    "mqtt": (False, "tcp", 1883),
    "tcp": (False, "tcp", 1883),
    "mqtts": (True, "tcp", 8883),
    "ssl": (True, "tcp", 8883),
    "ws": (False, "websockets", 8080),
    "wss": (True, "websockets", 8443),
}


class MqttVersion(StrEnum):
    AUTO = "auto"  # MQTT 5 where the broker speaks it, else 3.1.1
    V5 = "5"
    V311 = "3.1.1"


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """`mqtt://user:pass@host:port`, `mqtts://` for TLS, `ws://`/`wss://` for WebSocket.

    `?mqtt=3.1.1` (or `?mqtt=5`) fixes the protocol version of the clients that would
    otherwise try MQTT 5 first (`fleet up --engine amqtt` writes it into its client file).
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    path: str = "/"
    ca_file: str | None = None  # trust anchor for mqtts:// (default: the system store)
    mqtt: MqttVersion = MqttVersion.AUTO

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            known = ", ".join(sorted(_SCHEMES))
            raise ConfigError(f"unsupported broker URL scheme {scheme!r} in {url!r}; use {known}")
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r} names no host")
        try:
            port = parts.port or _SCHEMES[scheme][2]
        except ValueError as exc:
            raise ConfigError(f"broker URL {url!r} has an invalid port") from exc
        wanted = parse_qs(parts.query).get("mqtt", [MqttVersion.AUTO.value])[-1]
        try:
            mqtt = MqttVersion(wanted)
        except ValueError:
            known = ", ".join(v.value for v in MqttVersion)
            raise ConfigError(f"broker URL {url!r}: mqtt={wanted!r}; use {known}") from None
        return cls(
            scheme=scheme,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            path=parts.path or "/mqtt",
            mqtt=mqtt,
        )

    @property
    def tls(self) -> bool:
        return _SCHEMES[self.scheme][0]

    @property
    def transport(self) -> Literal["tcp", "websockets"]:
        return _SCHEMES[self.scheme][1]

    def with_credentials(self, username: str, password: str) -> BrokerUrl:
        return replace(self, username=username, password=password)

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        suffix = self.path if self.transport == "websockets" else ""
        if self.mqtt is not MqttVersion.AUTO:
            suffix += f"?mqtt={self.mqtt.value}"
        return f"{self.scheme}://{auth}{self.host}:{self.port}{suffix}"

    def redacted(self) -> str:
        """The URL for logs and errors: the password never leaves the process."""
        user = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def own_client_id(username: str | None, name: str) -> str:
    """A client id the broker lets `username` use (protocol.md §11): ``{username}-{name}``."""
    return f"{username}-{name}" if username else name


@dataclass(frozen=True, slots=True)
class LastWill:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttClient(aiomqtt.Client):
    """aiomqtt's client, knowing its protocol version and the PUBACK reason codes."""

    def __init__(self, *args: Any, mqtt5: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mqtt5 = mqtt5
        # QoS 1 publishes whose PUBACK someone waits for (`publish`), and on MQTT 5 the
        # topics of the others, to name them when the broker refuses one.
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._unawaited: dict[int, str] = {}
        on_publish = self._client.on_publish

        def on_puback(paho: Any, userdata: Any, mid: int, code: ReasonCode, props: Any) -> None:
            waiter = self._acks.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(code)
            topic = self._unawaited.pop(mid, None)
            if topic is not None and code.is_failure:
                log.warning("the broker refused a publish to %s: %s", topic, _reason(code))
            on_publish(paho, userdata, mid, code, props)

        self._client.on_publish = on_puback


# Brokers (host, port) that refused an MQTT 5 CONNECT in this process: asked in 3.1.1 since.
_V311_BROKERS: set[tuple[str, int]] = set()
# CONNACK codes that mean "not this protocol version": 3.1.1's 0x01 (paho reports it as
# MQTT 5's 0x84, Unsupported Protocol Version).
_UNSUPPORTED_PROTOCOL = {0x01, 0x84}


def _resolve(url: BrokerUrl, version: MqttVersion) -> MqttVersion:
    if version is not MqttVersion.AUTO:
        return version
    if url.mqtt is not MqttVersion.AUTO:
        return url.mqtt
    return MqttVersion.V311 if (url.host, url.port) in _V311_BROKERS else MqttVersion.V5


def make_client(
    url: BrokerUrl,
    *,
    client_id: str,
    will: LastWill | None = None,
    clean_session: bool = True,
    keepalive: int = KEEPALIVE_S,
    max_queued_incoming: int | None = None,
    version: MqttVersion = MqttVersion.V311,
) -> MqttClient:
    """An aiomqtt client; enter it with `async with` (`open_client` falls back from MQTT 5).

    MQTT 5 has no clean session flag: a clean start and a session that ends with the
    connection (no session expiry) are the same thing.
    """
    mqtt5 = _resolve(url, version) is MqttVersion.V5
    tls_context = None
    if url.tls:
        tls_context = ssl.create_default_context(cafile=url.ca_file)
    client = MqttClient(
        url.host,
        url.port,
        mqtt5=mqtt5,
        username=url.username,
        password=url.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
        will=aiomqtt.Will(will.topic, will.payload, will.qos, will.retain) if will else None,
        clean_session=None if mqtt5 else clean_session,
        clean_start=clean_session if mqtt5 else paho_mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        transport=url.transport,
        websocket_path=url.path if url.transport == "websockets" else None,
        tls_context=tls_context,
        keepalive=keepalive,
        timeout=CONNECT_TIMEOUT_S,
        max_queued_incoming_messages=max_queued_incoming,
        # MQTT sends small packets back to back (a PUBLISH, then its PUBACK or the next
        # PUBLISH); with Nagle's algorithm the second waits ~40 ms for a delayed ACK.
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )
    _register_writes_on_loop(client)
    _buffer_reads(client)
    return client


def _register_writes_on_loop(client: aiomqtt.Client) -> None:
    """Let publishes from the event loop's own thread skip aiomqtt's write machinery.

    aiomqtt registers the socket writer with `call_soon_threadsafe` on every
    publish (paho may call from the executor thread that runs `connect`), and
    that writes a byte to the loop's self-pipe each time: a fifth of the CPU of
    a thousand simulated devices. Registering a selector writer per packet is
    costly too (two epoll_ctl calls, a transport lookup): at 10,000 state reports
    the controller's PUBACKs spent more there than in sending. On the loop
    thread the write is done on the next loop pass instead, and a writer is
    registered only when the kernel's buffer is full. Any other thread still
    takes aiomqtt's own path.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    paho = client._client
    threadsafe_register = paho.on_socket_register_write
    aiomqtt_unregister = paho.on_socket_unregister_write
    writer = False  # a selector writer is registered (aiomqtt's, or ours when the buffer filled)

    def flush() -> None:
        nonlocal writer
        try:
            paho.loop_write()
        except Exception as exc:  # a broken pipe: the connection is gone
            disconnected = client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        sock = paho.socket()
        if sock is not None and paho.want_write() and not writer:
            writer = True
            loop.add_writer(sock.fileno(), flush)

    def register(paho_client: Any, userdata: Any, sock: Any) -> None:
        nonlocal writer
        if threading.get_ident() != loop_thread:
            writer = True
            threadsafe_register(paho_client, userdata, sock)
            return
        loop.call_soon(flush)

    def unregister(paho_client: Any, userdata: Any, sock: Any) -> None:
        nonlocal writer
        if writer:
            writer = False
            aiomqtt_unregister(paho_client, userdata, sock)

    paho.on_socket_register_write = register
    paho.on_socket_unregister_write = unregister


class _BufferedReads:
    """A plain TCP socket whose `recv` serves paho's small reads from one large read.

    paho reads a packet in three or more `recv` calls (command byte, length bytes,
    body) and `loop_read` handles one packet per readiness callback, so at a few
    thousand messages a second the loop spends most of its time in syscalls and
    epoll rounds. Reading 64 KiB at once and draining what was read in one callback
    (`_drain_buffered`) cuts that to about one syscall per 64 KiB.
    """

    __slots__ = ("_buf", "_pos", "_sock", "refills")

    CHUNK = 64 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        # Reads from the socket left in this callback; none left looks like "no data",
        # so one busy connection cannot hold the event loop (epoll fires again).
        self.refills = 1

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            if self.refills <= 0:
                raise BlockingIOError
            self.refills -= 1
            data = self._sock.recv(max(size, self.CHUNK))
            if len(data) <= size:
                return data  # includes b"" (peer closed)
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_reads(client: aiomqtt.Client) -> None:
    """Give paho a `_BufferedReads` socket and a `loop_read` that drains it (plain TCP only)."""
    paho = client._client
    opened = paho.on_socket_open
    loop_read = paho.loop_read

    def on_open(paho_client: Any, userdata: Any, sock: Any) -> None:
        if type(sock) is socket.socket:  # not TLS (its own buffering) nor WebSocket
            paho_client._sock = _BufferedReads(sock)
        opened(paho_client, userdata, sock)

    def drain(max_packets: int = 1) -> Any:
        sock = paho._sock
        if not isinstance(sock, _BufferedReads):
            return loop_read(max_packets)
        sock.refills = 4  # at most 256 KiB per callback
        rc = loop_read(max_packets)
        while rc == 0 and paho._sock is sock and sock.buffered:
            rc = loop_read(max_packets)
        return rc

    paho.on_socket_open = on_open
    paho.loop_read = drain
    # paho walks its per-filter callback tree for every message; aiomqtt registers
    # none, so an empty tree is skipped.
    paho._on_message_filtered = _SkipEmptyMatcher()


class _SkipEmptyMatcher(MQTTMatcher):
    def iter_match(self, topic: str) -> Any:
        return super().iter_match(topic) if self._root._children else ()


class RestartLink(Exception):
    """Raised by a handler to disconnect cleanly and reconnect after `delay_s` (a reboot)."""

    def __init__(self, delay_s: float = 0.5) -> None:
        super().__init__(f"restart in {delay_s}s")
        self.delay_s = delay_s


OnConnect = Callable[[MqttClient], Awaitable[None]]
OnMessage = Callable[[aiomqtt.Message], Awaitable[None] | None]


async def run_link(
    url: BrokerUrl,
    *,
    client_id: str,
    on_connect: OnConnect,
    on_message: OnMessage,
    on_disconnect: Callable[[], None] | None = None,
    on_close: OnConnect | None = None,
    will: LastWill | None = None,
    connected: asyncio.Event | None = None,
    retry: bool = True,
    max_queued_incoming: int | None = None,
    version: MqttVersion = MqttVersion.V311,
) -> None:
    """Keep one MQTT connection up until cancelled.

    With `retry=False` the first failure raises BrokerUnavailable, which is what a
    one-shot CLI command wants; long-running parts retry with jittered backoff.
    `on_close` runs before a deliberate disconnect (cancellation or RestartLink),
    while the connection is still up: the place for a graceful "offline".
    """
    delay = RECONNECT_FIRST_S
    while True:
        try:
            async with open_client(
                url,
                client_id=client_id,
                will=will,
                max_queued_incoming=max_queued_incoming,
                version=version,
            ) as client:
                delay = RECONNECT_FIRST_S
                try:
                    await on_connect(client)
                    if connected is not None:
                        connected.set()
                    await _read_messages(client, on_message)
                except (asyncio.CancelledError, RestartLink):
                    if on_close is not None:
                        await _close_quietly(on_close, client)
                    raise
        except RestartLink as restart:
            if connected is not None:
                connected.clear()
            if on_disconnect is not None:
                on_disconnect()
            await asyncio.sleep(restart.delay_s)
            continue
        except aiomqtt.MqttError as exc:
            if connected is not None:
                connected.clear()
            if on_disconnect is not None:
                on_disconnect()
            if not retry:
                raise BrokerUnavailable(url.redacted(), str(exc)) from exc
            log.info("%s: connection to %s lost (%s); retrying", client_id, url.redacted(), exc)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, RECONNECT_MAX_S)


@contextlib.asynccontextmanager
async def open_client(
    url: BrokerUrl, *, version: MqttVersion = MqttVersion.V311, **options: Any
) -> AsyncIterator[MqttClient]:
    """A connected client (`make_client`'s options). With `MqttVersion.AUTO` it tries
    MQTT 5 and, when the broker refuses that protocol version, 3.1.1 at once."""
    async with contextlib.AsyncExitStack() as stack:
        client = make_client(url, version=version, **options)
        try:
            await stack.enter_async_context(client)
        except MqttConnectError as exc:
            if not (client.mqtt5 and version is MqttVersion.AUTO and _wrong_version(exc)):
                raise
            log.info("%s speaks no MQTT 5; using 3.1.1", url.redacted())
            _V311_BROKERS.add((url.host, url.port))
            client = make_client(url, version=version, **options)
            await stack.enter_async_context(client)
        yield client


def _wrong_version(exc: aiomqtt.MqttCodeError) -> bool:
    rc = exc.rc
    return int(rc.value if isinstance(rc, ReasonCode) else rc) in _UNSUPPORTED_PROTOCOL


# --- what MQTT 5 adds (nothing of it on 3.1.1) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Where a request asked to be answered: MQTT 5 response topic and correlation data."""

    topic: str
    correlation: bytes | None = None


def reply_of(message: aiomqtt.Message) -> Reply | None:
    props = message.properties
    topic = getattr(props, "ResponseTopic", None) if props is not None else None
    if not topic:
        return None
    return Reply(topic, getattr(props, "CorrelationData", None))


def _publish_properties(
    expiry_s: float | None, reply: Reply | None, correlation: bytes | None
) -> Properties | None:
    if expiry_s is None and reply is None and correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if expiry_s is not None:
        # Whole seconds on the wire; rounded up, so a command never expires early.
        props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
    if reply is not None:
        props.ResponseTopic = reply.topic
        if reply.correlation is not None:
            props.CorrelationData = reply.correlation
    if correlation is not None:
        props.CorrelationData = correlation
    return props


async def publish(
    client: MqttClient,
    topic: str,
    payload: bytes,
    qos: int = 1,
    retain: bool = False,
    *,
    expiry_s: float | None = None,
    reply: Reply | None = None,
    correlation: bytes | None = None,
) -> None:
    """Publish and, at QoS 1, wait for the PUBACK; `PublishRefused` when its reason code
    says no (MQTT 5: an ACL refusal is 0x87). On 3.1.1 the MQTT 5 extras are left out:
    `expiry_s` (the broker drops the message once it is older), `reply` (a response topic
    and correlation data, so the answer comes back to the asker) and `correlation` (on an
    answer)."""
    props = _publish_properties(expiry_s, reply, correlation) if client.mqtt5 else None
    info = client._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
    if info.rc != 0:
        raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
    if qos == 0:
        return
    waiter = asyncio.get_running_loop().create_future()
    if info.is_published():
        return  # acknowledged already (on_publish ran inside paho's publish)
    client._acks[info.mid] = waiter
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            code = await waiter
    except TimeoutError:
        raise aiomqtt.MqttError(f"no PUBACK for {topic} in {CONNECT_TIMEOUT_S:g}s") from None
    finally:
        client._acks.pop(info.mid, None)
    if code.is_failure:
        raise PublishRefused(topic, code.value, _reason(code))


async def subscribe(client: MqttClient, filters: Sequence[tuple[str, int]]) -> None:
    """One SUBSCRIBE; `SubscribeRefused` naming the first filter the broker refused (SUBACK
    0x80 on 3.1.1, a reason code such as 0x87 not authorised on MQTT 5)."""
    codes = await client.subscribe(list(filters))
    for (topic_filter, _qos), code in zip(filters, codes, strict=False):
        value = int(code.value if isinstance(code, ReasonCode) else code)
        if value >= 0x80:
            # 3.1.1's one failure code says no more than that (the ACL, or no such feature).
            reason = _reason(code) if client.mqtt5 else "Failure (MQTT 3.1.1 SUBACK)"
            raise SubscribeRefused(topic_filter, value, reason)


def _reason(code: ReasonCode) -> str:
    try:
        return str(code.getName())
    except Exception:  # a code paho has no name for
        return "Unspecified error"


async def _read_messages(client: aiomqtt.Client, on_message: OnMessage) -> None:
    """Feed every message to the handler until the connection drops (MqttError).

    aiomqtt's iterator makes a task and an asyncio.wait per message; under load most
    messages are already queued, so those are taken straight off its queue.
    """
    messages = client.messages
    queue: asyncio.Queue[aiomqtt.Message] = client._queue
    while True:
        while not queue.empty():
            await _dispatch(on_message, queue.get_nowait())
        await _dispatch(on_message, await anext(messages))


async def _dispatch(handler: OnMessage, message: aiomqtt.Message) -> None:
    try:
        result = handler(message)
        if result is not None:
            await result
    except (asyncio.CancelledError, RestartLink):
        raise
    except Exception:
        log.exception("handler failed on %s; message dropped", message.topic)


async def _close_quietly(on_close: OnConnect, client: aiomqtt.Client) -> None:
    try:
        async with asyncio.timeout(2):
            await on_close(client)
    except Exception as exc:  # best effort: we are going away anyway
        log.debug("on_close failed: %s", exc)


def publish_nowait(
    client: aiomqtt.Client, topic: str, payload: bytes, qos: int = 0, retain: bool = False
) -> None:
    """Queue a publish without waiting for its PUBACK.

    paho still tracks a QoS 1 message until the broker acknowledges it and sends
    it again after a reconnect; a device reporting its state has no reason to
    block on that (the firmware does not either). Waiting per message costs a
    future and a timer in aiomqtt, which dominates when a thousand simulated
    devices share one event loop. aiomqtt exposes no such call, so this reaches
    the paho client it wraps.
    """
    info = client._client.publish(topic, payload, qos=qos, retain=retain)
    if info.rc != 0:
        raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
    if qos and isinstance(client, MqttClient) and client.mqtt5 and not info.is_published():
        client._unawaited[info.mid] = topic  # so a refusal can name it


def payload_bytes(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
