"""Follow live telemetry (and optionally fleet events) straight from the broker.

No database involved: this is what `fleet telemetry tail` shows. Bad payloads
are reported as `Refused` items, and the stream goes on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt

from fleet.errors import BrokerUnavailable, ProtocolError
from fleet.mqtt import BrokerUrl, make_client, own_client_id, payload_bytes
from fleet.protocol import TopicKind, Topics, decode
from fleet.protocol.messages import FleetEvent, Telemetry


@dataclass(frozen=True, slots=True)
class TeleItem:
    device: str
    received: float
    tele: Telemetry


@dataclass(frozen=True, slots=True)
class EventItem:
    received: float
    event: FleetEvent


@dataclass(frozen=True, slots=True)
class Refused:
    topic: str
    reason: str


Item = TeleItem | EventItem | Refused


async def follow(
    url: BrokerUrl,
    topics: Topics,
    device: str | None = None,
    events: bool = False,
    client_id: str | None = None,
) -> AsyncIterator[Item]:
    """Yield telemetry of one device (or all) as it arrives; QoS 0, as devices send it."""
    tele_filter = topics.tele(device) if device else topics.all_devices(TopicKind.TELE)
    client = make_client(
        url, client_id=client_id or own_client_id(url.username, f"tail-{time.time_ns() % 10**10}")
    )
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise BrokerUnavailable(url.redacted(), str(exc)) from exc
    try:
        subs = [(tele_filter, 0)] + ([(topics.events, 0)] if events else [])
        await client.subscribe(subs)
        async for message in client.messages:
            topic = message.topic.value
            parsed = topics.parse(topic)
            if parsed is None:
                continue
            try:
                if parsed.kind is TopicKind.TELE:
                    tele = decode(Telemetry, payload_bytes(message))
                    yield TeleItem(parsed.name, time.time(), tele)
                elif parsed.kind is TopicKind.EVENTS:
                    yield EventItem(time.time(), decode(FleetEvent, payload_bytes(message)))
            except ProtocolError as exc:
                yield Refused(topic, str(exc))
    except aiomqtt.MqttError as exc:
        raise BrokerUnavailable(url.redacted(), f"connection lost: {exc}") from exc
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


def summary(item: TeleItem) -> str:
    """One line a person reads: radio, memory, load, uptime, meeting and audio quality."""
    t = item.tele
    parts = []
    if t.wifi.rssi is not None:
        parts.append(f"rssi {t.wifi.rssi} dBm")
    if t.sys.heap_free is not None:
        heap = f"heap {t.sys.heap_free / 1024:.0f} KiB"
        if t.sys.heap_min is not None:
            heap += f" (min {t.sys.heap_min / 1024:.0f})"
        parts.append(heap)
    if t.sys.cpu_load is not None:
        parts.append(f"cpu {t.sys.cpu_load * 100:.0f}%")
    if t.sys.uptime_s is not None:
        parts.append(f"up {_duration(t.sys.uptime_s)}")
    if t.wifi.reconnects or t.sys.mqtt_reconnects:
        parts.append(f"reconnects wifi {t.wifi.reconnects} mqtt {t.sys.mqtt_reconnects}")
    if t.meeting is not None:
        parts.append(f"room {t.meeting.room}")
    for peer in t.audio:
        stats = [
            f"{label} {value}"
            for label, value in (
                ("loss", None if peer.loss is None else f"{peer.loss * 100:.1f}%"),
                ("jitter", None if peer.jitter_ms is None else f"{peer.jitter_ms:.0f} ms"),
                ("rtt", None if peer.rtt_ms is None else f"{peer.rtt_ms:.0f} ms"),
                ("level", None if peer.level is None else f"{peer.level:.2f}"),
            )
            if value is not None
        ]
        parts.append(f"peer {peer.peer}: {', '.join(stats) or 'no stats'}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
