"""Telemetry and fleet events as InfluxDB line protocol (one format for 1.x, 2.x, 3.x).

Measurements (docs/grafana.md lists every field):

- ``device``: one point per telemetry message; tags ``device`` and ``groups``.
- ``audio_peer``: one point per entry of ``Telemetry.audio``; tags ``device``,
  ``room``, ``session``, ``participant``, ``peer``.
- ``fleet``: the registry's counts (devices, online, in meeting), written periodically.
- ``fleet_event``: one point per FleetEvent, for Grafana annotations.

A field keeps one type forever (InfluxDB refuses a write that changes it), so
integer model fields are always written as integers (``5i``) and float fields
always as floats (``5.0``), whatever the JSON number looked like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

from fleet.protocol.messages import FleetEvent, Telemetry

# A device clock further off than this (unset RTC, no SNTP yet) is not trusted:
# the point is stamped with the controller's receive time instead.
MAX_CLOCK_SKEW_S = 3600.0

# A backslash in a tag value would escape whatever follows it (a trailing one would eat the
# separator), so it becomes '/': tag values are ids and names, never paths.
_TAG_ESCAPES = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\\": "/", "\n": r"\ ", "\r": r"\ "}
)


def escape_tag(value: str) -> str:
    """Tag values: comma, equals sign and space escaped; newlines and backslashes replaced."""
    return value.translate(_TAG_ESCAPES)


def escape_string_field(value: str) -> str:
    """A string field value, quoted: backslash and double quote escaped."""
    body = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
    return f'"{body}"'


def _tags(tags: Iterable[tuple[str, str | None]]) -> str:
    # An empty tag value is not allowed in line protocol: absent tags are left out.
    # Keys are sorted, as InfluxDB recommends for write performance.
    return "".join(f",{k}={escape_tag(v)}" for k, v in sorted(tags) if v)


def _int(name: str, value: int | None) -> str | None:
    return None if value is None else f"{name}={int(value)}i"


def _float(name: str, value: float | None) -> str | None:
    if value is None or not math.isfinite(value):
        return None
    return f"{name}={float(value)!r}"


def _join_fields(fields: Sequence[str | None]) -> str:
    return ",".join(f for f in fields if f is not None)


def to_ns(ts: float) -> int:
    # Via microseconds: a double holds a Unix time to about a microsecond, and
    # int(ts * 1e9) would print that float noise into the timestamp.
    return round(ts * 1e6) * 1000


def timestamp_ns(device_ts: float, received: float) -> int:
    return to_ns(device_ts if abs(device_ts - received) <= MAX_CLOCK_SKEW_S else received)


def device_tags(device: str, groups: Sequence[str]) -> str:
    """`,device=...,groups=...`: the tag set of a device's points."""
    group_tag = ",".join(sorted(g for g in groups if g != "all"))
    return _tags((("device", device), ("groups", group_tag)))


def telemetry_lines(
    device: str,
    groups: Sequence[str],
    tele: Telemetry,
    received: float | None = None,
    tags: str | None = None,
) -> list[str]:
    """The `device` point and one `audio_peer` point per peer of one telemetry message.

    `tags` is `device_tags(device, groups)` when the caller keeps it (it is the
    same for every message of a device); this runs once per message, so it is
    written out rather than built from helpers.
    """
    now = time.time() if received is None else received
    ts = timestamp_ns(tele.ts, now)
    wifi, sys = tele.wifi, tele.sys
    meeting = tele.meeting
    # Pydantic has checked the types and refused NaN and infinities.
    f = []
    if wifi.rssi is not None:
        f.append(f"rssi={wifi.rssi}i")
    if wifi.channel is not None:
        f.append(f"channel={wifi.channel}i")
    f.append(f"wifi_reconnects={wifi.reconnects}i")
    if sys.heap_free is not None:
        f.append(f"heap_free={sys.heap_free}i")
    if sys.heap_min is not None:
        f.append(f"heap_min={sys.heap_min}i")
    if sys.uptime_s is not None:
        f.append(f"uptime_s={float(sys.uptime_s)!r}")
    if sys.cpu_load is not None:
        f.append(f"cpu_load={float(sys.cpu_load)!r}")
    f.append(f"mqtt_reconnects={sys.mqtt_reconnects}i")
    f.append(f"in_meeting={0 if meeting is None else 1}i")
    f.append(f"peers={len(tele.audio)}i")
    if tags is None:
        tags = device_tags(device, groups)
    lines = [f"device{tags} {','.join(f)} {ts}"]
    if not tele.audio:
        return lines
    room = meeting.room if meeting else None
    session = meeting.session if meeting else None
    participant = meeting.participant if meeting else None
    for peer in tele.audio:
        peer_fields = _join_fields(
            (
                _float("loss", peer.loss),
                _float("jitter_ms", peer.jitter_ms),
                _float("rtt_ms", peer.rtt_ms),
                _float("level", peer.level),
                _float("bitrate_kbps", peer.bitrate_kbps),
                _int("packets_sent", peer.packets_sent),
                _int("packets_received", peer.packets_received),
                _int("packets_lost", peer.packets_lost),
            )
        )
        peer_tags = _tags(
            (
                ("device", device),
                ("room", room),
                ("session", session),
                ("participant", participant),
                ("peer", peer.peer),
            )
        )
        lines.append(f"audio_peer{peer_tags} {peer_fields} {ts}")
    return lines


def fleet_line(devices: int, online: int, in_meeting: int, ts: float | None = None) -> str:
    stamp = to_ns(time.time() if ts is None else ts)
    return f"fleet devices={devices}i,online={online}i,in_meeting={in_meeting}i {stamp}"


def event_line(event: FleetEvent) -> str:
    """One `fleet_event` point; `text` is what a Grafana annotation shows."""
    tags = _tags(
        (
            ("kind", event.kind),
            ("device", event.device),
            ("group", event.group),
            ("room", event.room),
            ("op", event.op),
        )
    )
    fields = _join_fields(
        (
            f"text={escape_string_field(event_text(event))}",
            "count=1i",  # a number to count and graph (VictoriaMetrics keeps strings as 0)
            None if event.ok is None else f"ok={'true' if event.ok else 'false'}",
            None if event.code is None else f"code={escape_string_field(event.code)}",
            None if event.session is None else f"session={escape_string_field(event.session)}",
            _int("rev", event.rev),
        )
    )
    return f"fleet_event{tags} {fields} {to_ns(event.ts)}"


def event_text(event: FleetEvent) -> str:
    """A one-line summary: 'join group all -> standup (join-all, rev 42)'."""
    parts = [event.kind]
    target = event.device or (f"group {event.group}" if event.group else None)
    if target:
        parts.append(target)
    if event.room:
        parts.append(f"-> {event.room}")
    extra = [x for x in (event.op, event.code) if x]
    if event.rev is not None:
        extra.append(f"rev {event.rev}")
    if extra:
        parts.append(f"({', '.join(extra)})")
    text = " ".join(parts)
    return f"{text}: {event.detail}" if event.detail else text
