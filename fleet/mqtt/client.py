"""The MQTT client: aiomqtt's, with its protocol version, PUBACK reason codes, a last
will, and the fallback from MQTT 5 to 3.1.1 for brokers that refuse it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho_mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from fleet.errors import SubscribeRefused
from fleet.mqtt.socket_io import buffer_reads, register_writes_on_loop
from fleet.mqtt.url import BrokerUrl, MqttVersion

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0


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
        # aiomqtt registers paho's version 2 callbacks
        on_publish = cast("paho_mqtt.CallbackOnPublish_v2 | None", self._client.on_publish)

        def on_puback(paho: Any, userdata: Any, mid: int, code: ReasonCode, props: Any) -> None:
            waiter = self._acks.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(code)
            topic = self._unawaited.pop(mid, None)
            if topic is not None and code.is_failure:
                log.warning("the broker refused a publish to %s: %s", topic, reason_name(code))
            if on_publish is not None:
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
    register_writes_on_loop(client)
    buffer_reads(client)
    return client


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
    if rc is None:  # only other MqttCodeErrors carry none
        return False
    return int(rc.value if isinstance(rc, ReasonCode) else rc) in _UNSUPPORTED_PROTOCOL


async def subscribe(client: MqttClient, filters: Sequence[tuple[str, int]]) -> None:
    """One SUBSCRIBE; `SubscribeRefused` naming the first filter the broker refused (SUBACK
    0x80 on 3.1.1, a reason code such as 0x87 not authorised on MQTT 5)."""
    codes: Sequence[int | ReasonCode] = await client.subscribe(list(filters))
    for (topic_filter, _qos), code in zip(filters, codes, strict=False):
        value = int(code.value if isinstance(code, ReasonCode) else code)
        if value >= 0x80:
            # 3.1.1's one failure code says no more than that (the ACL, or no such feature).
            if client.mqtt5 and isinstance(code, ReasonCode):
                reason = reason_name(code)
            else:
                reason = "Failure (MQTT 3.1.1 SUBACK)"
            raise SubscribeRefused(topic_filter, value, reason)


def reason_name(code: ReasonCode) -> str:
    try:
        return str(code.getName())
    except Exception:  # a code paho has no name for
        return "Unspecified error"
