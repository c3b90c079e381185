"""Broker URLs: `mqtt://user:pass@host:port`, TLS and WebSocket schemes, a fixed MQTT version."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fleet.errors import ConfigError

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
