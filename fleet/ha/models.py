"""Payloads of the Home Assistant topics under `{prefix}/ha/`: state docs and entity commands.

State docs carry exactly what the entities show, so every discovery template is
a plain `{{ value_json.x }}`. Absent values are written as `null` (not left out):
Home Assistant renders them as `None`, which a sensor or select shows as unknown,
where a missing key would be a template error.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, TypedDict

from fleet.errors import PayloadTooLarge, ProtocolError
from fleet.protocol.messages import Message, RoomName, State, Telemetry
from fleet.protocol.topics import NAME_RULES

# Commands are a word or a room name; anything longer is not from Home Assistant.
MAX_COMMAND_BYTES = 256
# An announcement's text (a notify entity's message): at most this many characters, and
# the bytes of that many 4-byte characters.
MAX_ANNOUNCE_CHARS = 1000
_ROOM_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# A call select's option: a device id, or `group:` and a group name.
_CALL_OPTION_RE = re.compile(r"(?:group:)?[a-z0-9][a-z0-9-]{0,63}")

OnOff = Literal["ON", "OFF"]


class SwitchPayload(StrEnum):
    ON = "ON"
    OFF = "OFF"


PRESS = "PRESS"


class HaDeviceState(Message):
    """Retained on `ha/dev/{id}/state`."""

    in_meeting: OnOff
    # The room the device is in, else the one its "In meeting" switch joins.
    room: RoomName | None = None
    rssi: int | None = None  # dBm
    heap: int | None = None  # free heap, bytes
    uptime: int | None = None  # seconds since boot
    jitter: float | None = None  # ms, the worst peer's; null outside a meeting
    loss: float | None = None  # %, the worst peer's; null outside a meeting
    dnd: OnOff = "OFF"  # do-not-disturb, as the device reports it
    # Whom the device called from Home Assistant (a call select option) until it hangs up.
    call: str | None = None


class HaFleetState(Message):
    """Retained on `ha/fleet/state`."""

    room: RoomName  # the room "Join all" uses
    devices: int  # known devices
    online: int
    in_meeting: int  # online devices in a meeting


def encode_state(doc: HaDeviceState | HaFleetState) -> bytes:
    """Compact JSON with nulls kept (see the module doc)."""
    return doc.model_dump_json().encode()


def meeting_of(state: State | None) -> tuple[bool, str | None]:
    """(in a meeting, its room) from a reported state."""
    if state is None or state.meeting is None:
        return False, None
    return True, state.meeting.room


class TeleValues(TypedDict, total=False):
    """A device's sensor values from its last telemetry (none before the first)."""

    rssi: int | None
    heap: int | None
    uptime: int | None
    jitter: float | None
    loss: float | None


def tele_values(tele: Telemetry) -> TeleValues:
    """The sensor values a telemetry sample gives (jitter and loss over the worst peer)."""
    jitters = [a.jitter_ms for a in tele.audio if a.jitter_ms is not None]
    losses = [a.loss for a in tele.audio if a.loss is not None]
    in_meeting = tele.meeting is not None
    return {
        "rssi": tele.wifi.rssi,
        "heap": tele.sys.heap_free,
        "uptime": int(tele.sys.uptime_s) if tele.sys.uptime_s is not None else None,
        "jitter": round(max(jitters), 1) if jitters and in_meeting else None,
        "loss": round(100 * max(losses), 2) if losses and in_meeting else None,
    }


def _text(payload: bytes, what: str, limit: int = MAX_COMMAND_BYTES) -> str:
    if len(payload) > limit:
        raise PayloadTooLarge(what, len(payload), limit)
    try:
        return payload.decode().strip()
    except UnicodeDecodeError as exc:
        raise ProtocolError(what, "payload is not valid UTF-8 text") from exc


def parse_switch(payload: bytes, what: str) -> bool:
    """`ON` or `OFF`, as Home Assistant's switch sends them."""
    text = _text(payload, what)
    try:
        return SwitchPayload(text) is SwitchPayload.ON
    except ValueError:
        raise ProtocolError(what, f"expected ON or OFF, got {text[:32]!r}") from None


def parse_press(payload: bytes, what: str) -> None:
    """`PRESS`, as Home Assistant's button sends it."""
    text = _text(payload, what)
    if text != PRESS:
        raise ProtocolError(what, f"expected {PRESS}, got {text[:32]!r}")


def parse_room(payload: bytes, what: str) -> str:
    """A room name, as Home Assistant's select sends the chosen option."""
    text = _text(payload, what)
    if not _ROOM_RE.fullmatch(text):
        raise ProtocolError(what, f"invalid room name {text[:64]!r}: {NAME_RULES['room']}")
    return text


def parse_message(payload: bytes, what: str) -> str:
    """A notify entity's message: plain text, 1 to MAX_ANNOUNCE_CHARS characters."""
    text = _text(payload, what, 4 * MAX_ANNOUNCE_CHARS)
    if not text:
        raise ProtocolError(what, "empty message")
    if len(text) > MAX_ANNOUNCE_CHARS:
        raise ProtocolError(what, f"message longer than {MAX_ANNOUNCE_CHARS} characters")
    return text


def parse_call_option(payload: bytes, what: str) -> str:
    """A call select's chosen option: a device id or `group:<name>`."""
    text = _text(payload, what)
    if not _CALL_OPTION_RE.fullmatch(text):
        raise ProtocolError(what, f"not a device or group:<name>: {text[:64]!r}")
    return text
