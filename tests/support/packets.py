"""Raw MQTT packets, for tests that must write what a client library would not (a will
without DISCONNECT, a burst and DISCONNECT in one write, a lying length, MQTT 5 by hand)."""

from __future__ import annotations


def mqtt_str(value: str | bytes) -> bytes:
    """An MQTT UTF-8 string (or binary data): a two-byte length, then the bytes."""
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def mqtt_packet(kind: int, body: bytes, length: int | None = None) -> bytes:
    """The fixed header (`kind`, then the remaining length as a varint) and `body`; `length`
    declares another remaining length than the body's own."""
    n = len(body) if length is None else length
    encoded = bytearray()
    while True:
        byte, n = n % 128, n // 128
        encoded.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([kind]) + bytes(encoded) + body


def mqtt_connect(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session, a user and a password, keep-alive 30 s."""
    body = mqtt_str("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")
    return mqtt_packet(0x10, body + mqtt_str(client_id) + mqtt_str(username) + mqtt_str(password))
