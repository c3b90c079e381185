"""The ``fleet`` NVS namespace as the firmware reads it, and one device's values for it.

firmware/main/config_nvs.c reads string keys device_id, secret, broker_url, wifi_ssid,
wifi_pass, groups, ntp and call_to. `FIRMWARE_KEYS` mirrors its table and buffer sizes;
`DeviceConfig` holds one device's values, checked against those limits. A new key is
added here (and in config_nvs.c) and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleet.protocol import is_valid_id
from fleet.protocol.topics import NAME_RULES
from fleet.provisioning.errors import ProvisioningError

NVS_NAMESPACE = "fleet"
NVS_PARTITION_NAME = "nvs"  # nvs_flash_init() opens the partition labelled "nvs"


@dataclass(frozen=True, slots=True)
class FirmwareKey:
    """One key of the ``fleet`` namespace as config_nvs.c reads it (always nvs_get_str)."""

    name: str
    max_bytes: int  # the C buffer less its NUL: a longer value is refused by the device
    required: bool


# The order and limits of config_nvs.c's keys[] table and config_nvs.h's buffers;
# tests/firmware/test_provisioning.py reads the C sources and fails when they drift apart.
FIRMWARE_KEYS: tuple[FirmwareKey, ...] = (
    FirmwareKey("device_id", 64, True),  # char device_id[FLEET_ID_MAX + 1]
    FirmwareKey("secret", 127, True),  # char secret[128]
    FirmwareKey("broker_url", 255, True),  # char broker_url[256]
    FirmwareKey("wifi_ssid", 32, True),  # char wifi_ssid[33]
    FirmwareKey("wifi_pass", 64, False),  # char wifi_pass[65]
    FirmwareKey("groups", 32 * 65 - 1, False),  # FLEET_MAX_GROUPS * (FLEET_ID_MAX + 1)
    FirmwareKey("ntp", 63, False),  # char ntp[64]
    FirmwareKey("call_to", 70, False),  # char call_to[FLEET_ID_MAX + 7]
)
CALL_TO_GROUP = "group:"  # call_to names a group with this prefix, else a device
_KEY_LIMITS = {k.name: k.max_bytes for k in FIRMWARE_KEYS}
MAX_GROUPS = 32  # FLEET_MAX_GROUPS: split_groups() silently drops the rest
# A version-2 NVS string (with its NUL) must fit one 4000-byte span; the firmware's
# buffers are far smaller, so every value is checked against both.
NVS_MAX_STRING_BYTES = 4000
# esp-mqtt only speaks these; the firmware builds without WebSocket transport
# (CONFIG_MQTT_TRANSPORT_WEBSOCKET=n in firmware/sdkconfig.defaults).
_DEVICE_SCHEMES = {"mqtt": "mqtt", "tcp": "mqtt", "mqtts": "mqtts", "ssl": "mqtts"}


def _utf8_len(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # e.g. undecodable bytes from argv (surrogateescape)
        raise ProvisioningError(f"{what} is not valid UTF-8 text") from None


def _check_text(key: str, value: str, *, what: str) -> None:
    if "\x00" in value:
        raise ProvisioningError(f"{what} contains a NUL character; the device would cut it short")
    size = _utf8_len(value, what)
    limit = min(_KEY_LIMITS[key], NVS_MAX_STRING_BYTES - 1)
    if size > limit:
        raise ProvisioningError(
            f"{what} is {size} bytes; the firmware's NVS key {key!r} holds at most {limit}"
        )


def device_broker_url(url: str) -> str:
    """The broker URL as the device stores it: ``mqtt[s]://host:port``, nothing else.

    The device logs in as its own id with its own secret, so a user or password in the URL
    is refused rather than silently dropped; so are paths, queries and WebSocket schemes.
    """
    from fleet.mqtt.url import BrokerUrl  # here: fleet.mqtt loads the MQTT client (aiomqtt)

    parsed = BrokerUrl.parse(url)  # ConfigError for bad schemes, hosts, ports
    scheme = _DEVICE_SCHEMES.get(parsed.scheme)
    if scheme is None:
        raise ProvisioningError(
            f"broker URL {url!r}: the firmware has no WebSocket transport; use mqtt:// or mqtts://"
        )
    if parsed.username is not None or parsed.password is not None:
        raise ProvisioningError(
            f"broker URL {parsed.redacted()!r} carries a user; the device logs in with its own "
            "id and secret, so give the URL without user:password@"
        )
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProvisioningError(f"broker URL {url!r}: an MQTT URL has no path, query or fragment")
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host  # IPv6 literal
    return f"{scheme}://{host}:{parsed.port}"


def normalize_groups(groups: Sequence[str]) -> tuple[str, ...]:
    """Split commas, drop blanks, repeats and ``all`` (implicit for every device), check ids.

    The same list goes into the device's NVS and its credential (the ACL's source of truth
    for which group topics it may read), so both must agree.
    """
    out: list[str] = []
    for item in groups:
        for group in (g.strip() for g in item.split(",")):
            if not group or group == "all" or group in out:
                continue
            if not is_valid_id(group):
                raise ProvisioningError(f"invalid group name {group!r}: {NAME_RULES['group']}")
            out.append(group)
    if len(out) > MAX_GROUPS:
        raise ProvisioningError(
            f"{len(out)} groups; the firmware keeps at most {MAX_GROUPS} (besides 'all')"
        )
    return tuple(out)


@dataclass(frozen=True)
class DeviceConfig:
    """Everything a device needs in NVS, validated against the firmware's limits.

    Construct it without a secret to check the inputs before anything is issued; the
    credential's secret is added with `with_secret` just before the image is built.
    Validation normalises: groups (see `normalize_groups`) and the broker URL (see
    `device_broker_url`), so the values written are exactly the values read back.
    """

    device_id: str
    broker_url: str
    wifi_ssid: str
    wifi_password: str = ""
    groups: tuple[str, ...] = ()
    ntp: str | None = None
    # where the device's call button calls: a device id or "group:NAME" (None: nowhere)
    call_to: str | None = None
    secret: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not is_valid_id(self.device_id):
            raise ProvisioningError(f"invalid device id {self.device_id!r}: {NAME_RULES['device']}")
        url = device_broker_url(self.broker_url)
        _check_text("broker_url", url, what="broker URL")
        object.__setattr__(self, "broker_url", url)
        object.__setattr__(self, "groups", normalize_groups(self.groups))
        _check_text("groups", ",".join(self.groups), what="the group list")
        ssid_bytes = _utf8_len(self.wifi_ssid, "Wi-Fi SSID")
        if not 1 <= ssid_bytes <= 32:
            raise ProvisioningError(
                f"Wi-Fi SSID is {ssid_bytes} bytes; 802.11 allows 1 to 32 bytes"
            )
        _check_text("wifi_ssid", self.wifi_ssid, what="Wi-Fi SSID")
        password = self.wifi_password
        password_bytes = _utf8_len(password, "Wi-Fi password")
        if password and not 8 <= password_bytes <= 63:
            # WPA2 passphrases are 8-63 characters. A 64-hex-digit PSK is refused too: the
            # firmware strlcpy()s into the 64-byte wifi_config_t field and would cut it.
            raise ProvisioningError(
                f"Wi-Fi password is {password_bytes} bytes; WPA2 needs 8 to 63 "
                "(or none at all for an open network)"
            )
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
            raise ProvisioningError("Wi-Fi password contains control characters")
        _check_text("wifi_pass", password, what="Wi-Fi password")
        if self.ntp is not None:
            if not self.ntp or any(c.isspace() or c == "," for c in self.ntp):
                raise ProvisioningError(f"NTP server {self.ntp!r} is not a host name")
            _check_text("ntp", self.ntp, what="NTP server")
        if self.call_to is not None:
            target = self.call_to.removeprefix(CALL_TO_GROUP)
            if not is_valid_id(target):
                raise ProvisioningError(
                    f"call target {self.call_to!r} is not a device id or group:NAME: "
                    f"{NAME_RULES['device']}"
                )
        if self.secret is not None:
            if not self.secret:
                raise ProvisioningError("the device secret is empty")
            _check_text("secret", self.secret, what="the device secret")

    def with_secret(self, secret: str) -> DeviceConfig:
        return dataclasses.replace(self, secret=secret)

    def nvs_values(self) -> dict[str, str]:
        """Key -> string, in the order config_nvs.c reads them.

        wifi_pass and groups are written even when empty, so the image states every value
        the device will use; ntp only when given (the firmware then uses its Kconfig default),
        call_to only when given (the call button then calls nobody).
        """
        if self.secret is None:
            raise ProvisioningError("the device has no secret yet: issue a credential first")
        values = {
            "device_id": self.device_id,
            "secret": self.secret,
            "broker_url": self.broker_url,
            "wifi_ssid": self.wifi_ssid,
            "wifi_pass": self.wifi_password,
            "groups": ",".join(self.groups),
        }
        if self.ntp is not None:
            values["ntp"] = self.ntp
        if self.call_to is not None:
            values["call_to"] = self.call_to
        return values
