"""Publishing: wait for the PUBACK or not, and what MQTT 5 adds (nothing of it on 3.1.1):
message expiry, and a response topic with correlation data for request/reply."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.errors import PublishRefused
from fleet.mqtt.client import CONNECT_TIMEOUT_S, MqttClient, reason_name


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
        raise PublishRefused(topic, code.value, reason_name(code))


def publish_nowait(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    *,
    correlation: bytes | None = None,
) -> None:
    """Queue a publish without waiting for its PUBACK.

    paho still tracks a QoS 1 message until the broker acknowledges it and sends
    it again after a reconnect; a device reporting its state has no reason to
    block on that (the firmware does not either). Waiting per message costs a
    future and a timer in aiomqtt, which dominates when a thousand simulated
    devices share one event loop. aiomqtt exposes no such call, so this reaches
    the paho client it wraps. `correlation` (MQTT 5 only) answers a request that asked
    for it.
    """
    mqtt5 = isinstance(client, MqttClient) and client.mqtt5
    props = _publish_properties(None, None, correlation) if mqtt5 else None
    info = client._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
    if info.rc != 0:
        raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
    if qos and isinstance(client, MqttClient) and client.mqtt5 and not info.is_published():
        client._unawaited[info.mid] = topic  # so a refusal can name it
