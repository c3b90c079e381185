"""Flashing and provisioning ESP32 devices: partition tables, NVS images, esptool.

A device learns who it is from the NVS namespace ``fleet`` (firmware/main/config_nvs.c):
string keys device_id, secret, broker_url, wifi_ssid, wifi_pass, groups and ntp. This
module builds that namespace as an NVS partition image (esp-idf-nvs-partition-gen), reads
images back (a small parser of the documented NVS format: the generator has no reader),
finds the NVS partition in an ESP-IDF partition table (CSV or the built binary), and
drives esptool's Python API to write a build, write one device's NVS image, or merge a
single factory image per device.

Provisioning issues the device's broker credential in the CredentialStore and embeds its
secret in the image; the secret is never printed and exists only as a hash in the store,
in the device's flash and in a factory image file (written 0600). If writing fails, the
credential just created is removed again, so the store holds no user whose secret nobody
has.

esptool and the NVS generator are imported when first needed: importing them costs about
0.2 s each, which every other `fleet` command would pay otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from broker.credentials import CredentialStore, Role, atomic_write
from fleet.errors import ConfigError, CredentialsError, FleetError
from fleet.mqtt import BrokerUrl
from fleet.protocol import is_valid_id
from fleet.protocol.topics import NAME_RULES

if TYPE_CHECKING:
    from esptool.loader import ESPLoader

# --- errors ----------------------------------------------------------------------------------


class ProvisioningError(ConfigError):
    """Input that cannot be flashed: a value, a partition table, a build directory."""


class BoardNotFound(FleetError):
    """No ESP board answered on a serial port (absent, busy, or not in download mode)."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(f"no board answered on {port}: {reason}")
        self.port = port
        self.reason = reason


class FlashFailed(FleetError):
    """A board answered, but the operation failed (wrong chip, layout, write or verify)."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(f"flashing the board on {port} failed: {reason}")
        self.port = port
        self.reason = reason


# --- what the firmware reads -----------------------------------------------------------------

NVS_NAMESPACE = "fleet"
NVS_PARTITION_NAME = "nvs"  # nvs_flash_init() opens the partition labelled "nvs"


@dataclass(frozen=True, slots=True)
class FirmwareKey:
    """One key of the ``fleet`` namespace as config_nvs.c reads it (always nvs_get_str)."""

    name: str
    max_bytes: int  # the C buffer less its NUL: a longer value is refused by the device
    required: bool


# The order and limits of config_nvs.c's keys[] table and config_nvs.h's buffers;
# tests/test_provisioning.py reads the C sources and fails when they drift apart.
FIRMWARE_KEYS: tuple[FirmwareKey, ...] = (
    FirmwareKey("device_id", 64, True),  # char device_id[FLEET_ID_MAX + 1]
    FirmwareKey("secret", 127, True),  # char secret[128]
    FirmwareKey("broker_url", 255, True),  # char broker_url[256]
    FirmwareKey("wifi_ssid", 32, True),  # char wifi_ssid[33]
    FirmwareKey("wifi_pass", 64, False),  # char wifi_pass[65]
    FirmwareKey("groups", 32 * 65 - 1, False),  # FLEET_MAX_GROUPS * (FLEET_ID_MAX + 1)
    FirmwareKey("ntp", 63, False),  # char ntp[64]
)
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
        if self.secret is not None:
            if not self.secret:
                raise ProvisioningError("the device secret is empty")
            _check_text("secret", self.secret, what="the device secret")

    def with_secret(self, secret: str) -> DeviceConfig:
        return dataclasses.replace(self, secret=secret)

    def nvs_values(self) -> dict[str, str]:
        """Key -> string, in the order config_nvs.c reads them.

        wifi_pass and groups are written even when empty, so the image states every value
        the device will use; ntp only when given (the firmware then uses its Kconfig default).
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
        return values


# --- partition tables ------------------------------------------------------------------------

PARTITION_TABLE_OFFSET = 0x8000  # CONFIG_PARTITION_TABLE_OFFSET's default
PARTITION_TABLE_SECTOR = 0x1000  # the table owns its whole flash sector
PARTITION_TABLE_MAX_BYTES = 0xC00  # what the bootloader reads
_ENTRY_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb" + b"\xff" * 14
_ENTRY = struct.Struct("<2sBBLL16sL")

APP_TYPE, DATA_TYPE = 0x00, 0x01
_TYPES = {"app": APP_TYPE, "data": DATA_TYPE}
_SUBTYPES: dict[int, dict[str, int]] = {
    APP_TYPE: {"factory": 0x00, "test": 0x20, **{f"ota_{i}": 0x10 + i for i in range(16)}},
    DATA_TYPE: {
        "ota": 0x00,
        "phy": 0x01,
        "nvs": 0x02,
        "coredump": 0x03,
        "nvs_keys": 0x04,
        "efuse": 0x05,
        "undefined": 0x06,
        "esphttpd": 0x80,
        "fat": 0x81,
        "spiffs": 0x82,
        "littlefs": 0x83,
    },
}
_FLAGS = {"encrypted": 0x1, "readonly": 0x2}
NVS_SUBTYPE = 0x02


def _alignment(ptype: int) -> int:
    # gen_esp32part.py: app images are mapped through the MMU in 64 KiB pages; all else 4 KiB.
    return 0x10000 if ptype == APP_TYPE else 0x1000


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def type_name(self) -> str:
        return next((k for k, v in _TYPES.items() if v == self.type), f"{self.type:#04x}")

    @property
    def subtype_name(self) -> str:
        names = _SUBTYPES.get(self.type, {})
        return next((k for k, v in names.items() if v == self.subtype), f"{self.subtype:#04x}")

    @property
    def readonly(self) -> bool:
        return bool(self.flags & _FLAGS["readonly"])


@dataclass(frozen=True, slots=True)
class PartitionTable:
    partitions: tuple[Partition, ...]
    source: str = "<table>"

    def find(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def nvs(self) -> Partition:
        """The partition nvs_flash_init() uses: labelled ``nvs``, type data, subtype nvs."""
        part = self.find(NVS_PARTITION_NAME)
        if part is None:
            raise ProvisioningError(f"{self.source} has no partition named 'nvs'")
        if (part.type, part.subtype) != (DATA_TYPE, NVS_SUBTYPE):
            raise ProvisioningError(
                f"{self.source}: partition 'nvs' is {part.type_name}/{part.subtype_name}, "
                "not data/nvs"
            )
        if part.size % NVS_PAGE or part.size < 3 * NVS_PAGE:
            # The generator keeps one page spare for NVS's own garbage collection, and the
            # firmware writes (set_groups), so a read-only 1-page NVS would not do either.
            raise ProvisioningError(
                f"{self.source}: partition 'nvs' is {part.size:#x} bytes; NVS needs a "
                f"multiple of {NVS_PAGE:#x}, at least {3 * NVS_PAGE:#x}"
            )
        if part.readonly:
            raise ProvisioningError(
                f"{self.source}: partition 'nvs' is readonly, but the firmware stores its "
                "groups there (set_groups)"
            )
        return part


def _parse_int(text: str) -> int:
    """gen_esp32part's numbers: decimal, 0x-hex, with an optional K or M suffix."""
    text = text.strip()
    for suffix, mult in (("k", 1024), ("m", 1024 * 1024)):
        if text.lower().endswith(suffix):
            return _parse_int(text[:-1]) * mult
    return int(text, 0)


def parse_partition_csv(
    text: str, *, table_offset: int = PARTITION_TABLE_OFFSET, source: str = "<csv>"
) -> PartitionTable:
    """Parse an ESP-IDF partition CSV; blank offsets are computed as gen_esp32part.py does.

    Rules (ESP-IDF v5): rows are ``name, type, subtype, offset, size, flags``; ``#`` starts
    a comment line. The first free byte is right after the table's sector (0x9000 for the
    default table at 0x8000); a blank offset continues from the previous partition's end,
    rounded up to 0x10000 for app partitions and 0x1000 for everything else. Explicit
    offsets must not go backwards. Only types app, data and numeric ones are understood.
    """
    parts: list[Partition] = []
    last_end = table_offset + PARTITION_TABLE_SECTOR
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{line_no}"
        fields = [f.strip() for f in line.split(",")] + [""] * 6
        name, type_text, subtype_text, offset_text, size_text, flags_text = fields[:6]
        if not name or len(name.encode()) > 16:
            raise ProvisioningError(f"{where}: a partition name has 1 to 16 characters")
        try:
            ptype = _TYPES[type_text] if type_text in _TYPES else int(type_text, 0)
        except ValueError:
            raise ProvisioningError(
                f"{where}: unknown partition type {type_text!r} (app, data or a number)"
            ) from None
        if not 0 <= ptype <= 0xFE or ptype in (0x02, 0x03):
            raise ProvisioningError(f"{where}: unsupported partition type {type_text!r}")
        try:
            names = _SUBTYPES.get(ptype, {})
            subtype = names[subtype_text] if subtype_text in names else int(subtype_text, 0)
        except ValueError:
            raise ProvisioningError(
                f"{where}: unknown subtype {subtype_text!r} for type {type_text!r}"
            ) from None
        try:
            offset = _parse_int(offset_text) if offset_text else None
            size = _parse_int(size_text)
        except ValueError:
            raise ProvisioningError(
                f"{where}: offset {offset_text!r} or size {size_text!r} is not a number "
                "(decimal, 0x hex, optional K/M suffix; the size is required)"
            ) from None
        if size <= 0:
            raise ProvisioningError(f"{where}: partition {name!r} has no size")
        flags = 0
        for flag in filter(None, (f.strip() for f in flags_text.split(":"))):
            if flag not in _FLAGS:
                raise ProvisioningError(f"{where}: unknown flag {flag!r} (encrypted, readonly)")
            flags |= _FLAGS[flag]
        if offset is not None and offset < last_end:
            what = "the partition table's sector" if not parts else f"partition {parts[-1].name!r}"
            raise ProvisioningError(
                f"{where}: partition {name!r} at {offset:#x} overlaps {what}, "
                f"which ends at {last_end:#x}"
            )
        align = _alignment(ptype)
        if offset is None:
            offset = -(-last_end // align) * align
        elif offset % align:
            raise ProvisioningError(
                f"{where}: partition {name!r} offset {offset:#x} is not aligned to {align:#x}"
            )
        if any(p.name == name for p in parts):
            raise ProvisioningError(f"{where}: partition name {name!r} appears twice")
        parts.append(Partition(name, ptype, subtype, offset, size, flags))
        last_end = offset + size
    if not parts:
        raise ProvisioningError(f"{source} lists no partitions")
    return PartitionTable(tuple(parts), source)


def parse_partition_binary(data: bytes, *, source: str = "<binary>") -> PartitionTable:
    """Parse a binary partition table (what idf.py writes at 0x8000).

    32-byte rows ``<2sBBLL16sL``: magic AA 50, type, subtype, offset, size, name, flags;
    an optional MD5 row (EB EB, 14 x FF, the digest of the rows before it); then FF rows.
    A table that is all FF (erased flash) parses to no partitions.
    """
    parts: list[Partition] = []
    limit = min(len(data), PARTITION_TABLE_MAX_BYTES)
    for pos in range(0, limit - limit % _ENTRY.size, _ENTRY.size):
        row = data[pos : pos + _ENTRY.size]
        if row == b"\xff" * _ENTRY.size:
            break
        if row[:16] == _MD5_MAGIC:
            if row[16:] != hashlib.md5(data[:pos], usedforsecurity=False).digest():
                raise ProvisioningError(f"{source}: the partition table's MD5 does not match")
            continue
        magic, ptype, subtype, offset, size, name_raw, flags = _ENTRY.unpack(row)
        if magic != _ENTRY_MAGIC:
            raise ProvisioningError(f"{source}: row {pos // _ENTRY.size} is not a partition")
        name = name_raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
        parts.append(Partition(name, ptype, subtype, offset, size, flags))
    return PartitionTable(tuple(parts), source)


def read_partition_table(
    path: Path | str, *, table_offset: int = PARTITION_TABLE_OFFSET
) -> PartitionTable:
    """A partition table from a CSV or a built ``partition-table.bin`` (told by content)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProvisioningError(f"cannot read partition table {path}: {exc.strerror}") from None
    if data.startswith(_ENTRY_MAGIC):
        return parse_partition_binary(data, source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProvisioningError(f"{path} is neither a partition CSV nor a binary table") from None
    return parse_partition_csv(text, table_offset=table_offset, source=str(path))


def default_partition_table(build_dir: Path | str | None = None) -> Path:
    """Where the table comes from when none is named.

    A build directory's own ``partition-table.bin`` (what is on the board), else
    ``firmware/partitions.csv`` in the working directory, else the one in this source tree.
    """
    if build_dir is not None:
        build = read_flasher_args(build_dir)
        if build.partition_table is not None:
            return build.partition_table
    candidates = [
        Path("firmware") / "partitions.csv",
        Path(__file__).resolve().parent.parent / "firmware" / "partitions.csv",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ProvisioningError(
        "no partition table found (firmware/partitions.csv); name one with --partitions"
    )


# --- NVS images ------------------------------------------------------------------------------

NVS_PAGE = 4096
_NVS_ENTRY = 32
_NVS_ENTRIES_PER_PAGE = 126
_NVS_FIRST_ENTRY = 64
_PAGE_ACTIVE, _PAGE_FULL, _PAGE_FREEING, _PAGE_EMPTY = (
    0xFFFFFFFE,
    0xFFFFFFFC,
    0xFFFFFFF8,
    0xFFFFFFFF,
)
_ENTRY_WRITTEN = 0b10  # 2 bits per entry: 11 empty, 10 written, 00 erased
_PRIMITIVES = {
    0x01: "u8",
    0x11: "i8",
    0x02: "u16",
    0x12: "i16",
    0x04: "u32",
    0x14: "i32",
    0x08: "u64",
    0x18: "i64",
}
_SZ, _BLOB, _BLOB_DATA, _BLOB_IDX = 0x21, 0x41, 0x42, 0x48

NvsValue = int | str | bytes


@dataclass(frozen=True, slots=True)
class NvsEntry:
    namespace: str
    key: str
    type: str  # u8 .. i64, "string" (nvs_get_str) or "blob" (nvs_get_blob)
    value: NvsValue


def _import(module: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProvisioningError(
            f"{exc.name or module} is not installed: pip install esptool esp-idf-nvs-partition-gen"
        ) from None


def build_nvs_image(config: DeviceConfig, size: int) -> bytes:
    """The NVS partition image (exactly `size` bytes) holding the device's ``fleet`` keys.

    Built with the generator's Python API (nvs_open / write_entry / nvs_close) rather than
    its CSV entry point: that one calls sys.exit() on bad input and would need quoting for
    passwords with commas or quotes.
    """
    gen = _import("esp_idf_nvs_partition_gen.nvs_partition_gen")
    if size % NVS_PAGE or size < 3 * NVS_PAGE:
        raise ProvisioningError(f"an NVS partition of {size:#x} bytes is too small or unaligned")
    values = config.nvs_values()
    out = io.BytesIO()
    # The generator keeps the last page erased for NVS's garbage collection and fills
    # size - 4096 bytes with pages of its own: pass that so the image is exactly `size`.
    nvs = gen.nvs_open(out, size - NVS_PAGE, gen.Page.VERSION2)
    try:
        gen.write_entry(nvs, NVS_NAMESPACE, "namespace", "", "")
        for key, value in values.items():
            gen.write_entry(nvs, key, "data", "string", value)
    except (gen.InputError, gen.PageFullError, gen.InsufficientSizeError) as exc:
        raise ProvisioningError(f"the NVS values do not fit {size:#x} bytes: {exc}") from None
    gen.nvs_close(nvs)
    image = out.getvalue()
    if len(image) != size:  # a generator change we do not understand: never flash it
        raise ProvisioningError(f"NVS generator made {len(image)} bytes, expected {size}")
    return image


def _nvs_crc(data: bytes) -> int:
    # NVS CRCs are esp_rom_crc32_le(0xffffffff, ...), which is zlib's crc32 seeded with it.
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def read_nvs_entries(image: bytes) -> list[NvsEntry]:
    """Every live item of an NVS image, in flash order, with its NVS type.

    Follows the documented format: 4096-byte pages (header: state, sequence number,
    version, CRC), a 2-bit-per-entry state bitmap, 126 entries of 32 bytes (namespace index,
    type, span, chunk index, CRC, 16-byte key, 8 data bytes), strings and blobs spanning the
    following entries. Namespace names are the u8 items of namespace 0. A later item
    supersedes an earlier one with the same key. Any CRC mismatch is an error: this reader
    verifies images before they are flashed.
    """
    if len(image) % NVS_PAGE:
        raise ProvisioningError(f"an NVS image is whole {NVS_PAGE}-byte pages, not {len(image)}")
    pages: list[tuple[int, int, bytes]] = []
    for index in range(len(image) // NVS_PAGE):
        page = image[index * NVS_PAGE : (index + 1) * NVS_PAGE]
        state, seq = struct.unpack_from("<II", page)
        if state == _PAGE_EMPTY:
            continue
        if state not in (_PAGE_ACTIVE, _PAGE_FULL, _PAGE_FREEING):
            raise ProvisioningError(f"NVS page {index} has state {state:#010x} (corrupt)")
        if struct.unpack_from("<I", page, 28)[0] != _nvs_crc(page[4:28]):
            raise ProvisioningError(f"NVS page {index}: header CRC mismatch")
        pages.append((seq, index, page))

    items: dict[tuple[int, str, int | None], tuple[int, Any]] = {}
    for _seq, index, page in sorted(pages):
        bitmap = page[32:64]
        slot = 0
        while slot < _NVS_ENTRIES_PER_PAGE:
            if (bitmap[slot // 4] >> (2 * (slot % 4))) & 0b11 != _ENTRY_WRITTEN:
                slot += 1
                continue
            where = f"NVS page {index} entry {slot}"
            pos = _NVS_FIRST_ENTRY + slot * _NVS_ENTRY
            entry = page[pos : pos + _NVS_ENTRY]
            ns, typ, span, chunk = entry[:4]
            if struct.unpack_from("<I", entry, 4)[0] != _nvs_crc(entry[:4] + entry[8:]):
                raise ProvisioningError(f"{where}: entry CRC mismatch")
            if span < 1 or slot + span > _NVS_ENTRIES_PER_PAGE:
                raise ProvisioningError(f"{where}: span {span} runs off the page")
            key = entry[8:24].split(b"\x00", 1)[0].decode("utf-8", "replace")
            data = entry[24:32]
            value: Any
            if typ in (_SZ, _BLOB, _BLOB_DATA):
                length, _reserved, crc = struct.unpack_from("<HHI", data)
                if length > (span - 1) * _NVS_ENTRY:
                    raise ProvisioningError(f"{where}: {key!r} is longer than its span")
                value = page[pos + _NVS_ENTRY : pos + _NVS_ENTRY + length]
                if _nvs_crc(value) != crc:
                    raise ProvisioningError(f"{where}: data CRC mismatch for {key!r}")
            elif typ == _BLOB_IDX:
                value = struct.unpack_from("<IBB", data)  # size, chunk count, chunk start
            elif typ in _PRIMITIVES:
                width = typ & 0x0F
                value = int.from_bytes(data[:width], "little", signed=bool(typ & 0x10))
            else:
                raise ProvisioningError(f"{where}: unknown item type {typ:#04x}")
            ident = (ns, key, chunk if typ == _BLOB_DATA else None)
            items.pop(ident, None)  # re-insert so dict order is the latest write's order
            items[ident] = (typ, value)
            slot += span

    names = {value: key for (ns, key, _), (typ, value) in items.items() if ns == 0 and typ == 0x01}
    entries: list[NvsEntry] = []
    for (ns, key, _chunk), (typ, value) in items.items():
        if ns == 0 or typ == _BLOB_DATA:
            continue  # namespace definitions; blob chunks are gathered by their index
        if ns not in names:
            raise ProvisioningError(f"NVS item {key!r} is in namespace {ns}, which has no name")
        if typ == _SZ:
            if not value.endswith(b"\x00"):
                raise ProvisioningError(f"NVS string {key!r} is not NUL-terminated")
            entries.append(
                NvsEntry(names[ns], key, "string", value[:-1].decode("utf-8", "surrogateescape"))
            )
        elif typ == _BLOB:
            entries.append(NvsEntry(names[ns], key, "blob", bytes(value)))
        elif typ == _BLOB_IDX:
            size, count, start = value
            chunks = [items.get((ns, key, start + i)) for i in range(count)]
            if any(c is None for c in chunks):
                raise ProvisioningError(f"NVS blob {key!r} is missing chunks")
            blob = b"".join(c[1] for c in chunks if c is not None)
            if len(blob) != size:
                raise ProvisioningError(f"NVS blob {key!r} is {len(blob)} bytes, index says {size}")
            entries.append(NvsEntry(names[ns], key, "blob", blob))
        else:
            entries.append(NvsEntry(names[ns], key, _PRIMITIVES[typ], value))
    return entries


def parse_nvs_image(image: bytes) -> dict[str, dict[str, NvsValue]]:
    """``{namespace: {key: value}}`` of an NVS image (see `read_nvs_entries`)."""
    out: dict[str, dict[str, NvsValue]] = {}
    for entry in read_nvs_entries(image):
        out.setdefault(entry.namespace, {})[entry.key] = entry.value
    return out


# --- ESP-IDF builds --------------------------------------------------------------------------

FLASHER_ARGS = "flasher_args.json"
_BEFORE = {"default-reset", "usb-reset", "no-reset", "no-reset-no-sync"}
_AFTER = {"hard-reset", "soft-reset", "no-reset", "no-reset-stub", "watchdog-reset"}


@dataclass(frozen=True, slots=True)
class FlashFile:
    offset: int
    path: Path
    size: int
    name: str  # the flasher_args section it belongs to ("bootloader", "app", ...) or the file

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What ``idf.py build`` wrote to flasher_args.json, checked against the disk."""

    build_dir: Path
    chip: str
    files: tuple[FlashFile, ...]
    flash_mode: str = "keep"
    flash_size: str = "keep"
    flash_freq: str = "keep"
    table_offset: int = PARTITION_TABLE_OFFSET
    partition_table: Path | None = None
    before: str = "default-reset"
    after: str = "hard-reset"
    stub: bool = True


def _offset(text: Any, where: str) -> int:
    try:
        value = int(text, 0) if isinstance(text, str) else -1
    except ValueError:
        value = -1
    if value < 0:
        raise ProvisioningError(f"{where}: offset {text!r} is not a number like 0x10000")
    return value


def _check_overlaps(regions: Sequence[tuple[int, int, str]], where: str) -> None:
    ordered = sorted(regions)
    for (a_off, a_size, a_name), (b_off, _b_size, b_name) in itertools.pairwise(ordered):
        if a_off + a_size > b_off:
            raise ProvisioningError(
                f"{where}: {a_name} ({a_off:#x}-{a_off + a_size:#x}) overlaps "
                f"{b_name} at {b_off:#x}"
            )


def read_flasher_args(build_dir: Path | str) -> BuildInfo:
    """Read ``flasher_args.json`` of an ESP-IDF build directory (or a project with build/)."""
    build = Path(build_dir)
    path = build / FLASHER_ARGS
    if not path.is_file() and (build / "build" / FLASHER_ARGS).is_file():
        build, path = build / "build", build / "build" / FLASHER_ARGS
    if not path.is_file():
        raise ProvisioningError(
            f"{path} not found: give an ESP-IDF build directory (run `idf.py build` first)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProvisioningError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProvisioningError(f"{path}: expected a JSON object")
    flash_files = doc.get("flash_files")
    if not isinstance(flash_files, dict) or not flash_files:
        raise ProvisioningError(f"{path}: 'flash_files' must map offsets to files")

    # The named sections ("bootloader": {"offset", "file", "encrypted"}, ...) give each
    # file a name, and tell whether the build wants flash encryption.
    names: dict[str, str] = {}
    for section, value in doc.items():
        if isinstance(value, dict) and isinstance(value.get("file"), str):
            names[value["file"]] = section
            if str(value.get("encrypted", "false")).lower() == "true":
                raise ProvisioningError(
                    f"{path}: {section} is built for flash encryption, which fleet's flashing "
                    "does not do; use `idf.py encrypted-flash`"
                )

    files: list[FlashFile] = []
    for offset_text, rel in flash_files.items():
        offset = _offset(offset_text, str(path))
        if not isinstance(rel, str) or not rel:
            raise ProvisioningError(f"{path}: flash_files[{offset_text!r}] is not a file name")
        file = build / rel
        if not file.is_file():
            raise ProvisioningError(
                f"{path} lists {rel} at {offset:#x}, but {file} is missing; rebuild"
            )
        files.append(FlashFile(offset, file, file.stat().st_size, names.get(rel, rel)))
    files.sort(key=lambda f: f.offset)
    _check_overlaps([(f.offset, f.size, f.name) for f in files], str(path))

    extra = doc.get("extra_esptool_args") or {}
    if not isinstance(extra, dict):
        raise ProvisioningError(f"{path}: 'extra_esptool_args' must be an object")
    chip = extra.get("chip")
    targets = _import("esptool.targets")
    if not isinstance(chip, str) or chip not in targets.CHIP_LIST:
        raise ProvisioningError(
            f"{path}: extra_esptool_args.chip is {chip!r}; expected one of "
            f"{', '.join(targets.CHIP_LIST)}"
        )
    settings = doc.get("flash_settings") or {}
    if not isinstance(settings, dict) or not all(
        isinstance(settings.get(k, "keep"), str) for k in ("flash_mode", "flash_size", "flash_freq")
    ):
        raise ProvisioningError(f"{path}: 'flash_settings' must hold strings")

    table = doc.get("partition-table")
    table_offset, table_file = PARTITION_TABLE_OFFSET, None
    if isinstance(table, dict):
        table_offset = _offset(table.get("offset", "0x8000"), f"{path} partition-table")
        if isinstance(table.get("file"), str) and (build / table["file"]).is_file():
            table_file = build / table["file"]
    # idf.py writes esptool 4's spellings (default_reset); esptool 5 wants default-reset.
    before = str(extra.get("before", "default-reset")).replace("_", "-")
    after = str(extra.get("after", "hard-reset")).replace("_", "-")
    return BuildInfo(
        build_dir=build,
        chip=chip,
        files=tuple(files),
        flash_mode=settings.get("flash_mode", "keep"),
        flash_size=settings.get("flash_size", "keep"),
        flash_freq=settings.get("flash_freq", "keep"),
        table_offset=table_offset,
        partition_table=table_file,
        before=before if before in _BEFORE else "default-reset",
        after=after if after in _AFTER else "hard-reset",
        stub=extra.get("stub", True) is not False,
    )


# --- esptool ---------------------------------------------------------------------------------

DEFAULT_BAUD = 460800  # idf.py flash's default; the ROM syncs at 115200 first
ROM_BAUD = 115200
DEFAULT_CONNECT_ATTEMPTS = 7  # esptool's own default; each attempt takes about 0.8 s


@contextlib.contextmanager
def _esptool_output(output: TextIO | None) -> Iterator[None]:
    """Send esptool's chatter (progress, notes, warnings) to `output`, or nowhere.

    esptool prints through a process-wide logger that follows the live sys.stdout and
    sys.stderr; redirecting both keeps a caller's stdout clean (``--json``) without
    reconfiguring esptool's global logger for the rest of the process.
    """
    sink = output if output is not None else io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _reason(exc: BaseException) -> str:
    """esptool's multi-line messages as one line, without the troubleshooting link."""
    text = str(exc)
    opened = re.search(r"could not open port [^:]*: \[Errno \d+\] ([^:'\"]+)", text)
    if text.startswith("Could not open") and opened:
        hint = re.search(r"Hint: (.+)", text)
        tip = hint[1].strip().rstrip(".") if hint else ""
        extra = f"; {tip[:1].lower()}{tip[1:]}" if tip else ""
        return f"cannot open the port ({opened[1].strip()}){extra}"
    lines = [ln.strip() for ln in text.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("For troubleshooting")]
    return " ".join(kept) or type(exc).__name__


@contextlib.contextmanager
def _board(
    port: str,
    chip: str,
    baud: int,
    *,
    connect_attempts: int,
    before: str = "default-reset",
    stub: bool = True,
) -> Iterator[ESPLoader]:
    """A connected board with its flash attached; esptool's errors become ours.

    Errors while connecting are BoardNotFound (nothing answered); once a board answered,
    errors are FlashFailed. Call inside `_esptool_output`.
    """
    serial = _import("serial")
    cmds = _import("esptool.cmds")
    not_in_rom = _import("esptool.util").NotImplementedInROMError
    # esptool's FatalError derives from esp_pylib's, which helpers raise directly.
    errors = (
        _import("esp_pylib.errors").FatalError,
        serial.SerialException,
        OSError,
        StopIteration,
    )
    try:
        rom = cmds.connect_esp(
            port=port,
            chip=chip,
            initial_baud=min(ROM_BAUD, baud),  # the ROM loader syncs at 115200 at most
            before=before,
            connect_attempts=connect_attempts,
        )
    except errors as exc:
        if "Wrong chip argument" in str(exc):
            raise FlashFailed(port, _reason(exc)) from None
        raise BoardNotFound(port, _reason(exc)) from None
    with rom:  # closes the serial port, which the stub loader object shares
        try:
            esp = cmds.run_stub(rom) if stub else rom
            if baud > ROM_BAUD:
                with contextlib.suppress(not_in_rom):  # ESP8266's ROM cannot change baud
                    esp.change_baud(baud)
            cmds.attach_flash(esp)
            yield esp
        except errors as exc:
            raise FlashFailed(port, _reason(exc)) from None


def _reset(cmds: ModuleType, esp: ESPLoader, mode: str) -> None:
    """Reset after a write that esptool verified; a failed reset is not a failed write.

    esptool warns by itself when it cannot drive RTS/DTR; the board then needs its reset
    button, but its flash (and, for provisioning, the issued credential) is good.
    """
    with contextlib.suppress(_import("esp_pylib.errors").FatalError, OSError):
        cmds.reset_chip(esp, mode)


@dataclass(frozen=True, slots=True)
class FlashResult:
    port: str
    chip: str
    files: tuple[FlashFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "chip": self.chip,
            "files": [
                {"offset": f"{f.offset:#x}", "name": f.name, "path": str(f.path), "size": f.size}
                for f in self.files
            ],
        }


def flash(
    port: str,
    build_dir: Path | str,
    baud: int = DEFAULT_BAUD,
    *,
    connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
    output: TextIO | None = None,
) -> FlashResult:
    """Write an ESP-IDF build (its flasher_args.json files) to the board on `port`.

    NVS is not in flasher_args, so a provisioned device keeps its identity across
    re-flashing. esptool's chatter goes to `output` (None: dropped).
    """
    build = read_flasher_args(build_dir)
    cmds = _import("esptool.cmds")

    with (
        _esptool_output(output),
        _board(
            port,
            build.chip,
            baud,
            connect_attempts=connect_attempts,
            before=build.before,
            stub=build.stub,
        ) as esp,
    ):
        cmds.write_flash(
            esp,
            [(f.offset, str(f.path)) for f in build.files],
            flash_mode=build.flash_mode,
            flash_size=build.flash_size,
            flash_freq=build.flash_freq,
        )
        _reset(cmds, esp, build.after)
    return FlashResult(port, build.chip, build.files)


# --- provisioning ----------------------------------------------------------------------------


def _store(creds: CredentialStore | Path | str) -> CredentialStore:
    return creds if isinstance(creds, CredentialStore) else CredentialStore(creds)


def _check_store(store: CredentialStore, device_id: str, replace: bool) -> bool:
    """Refuse before touching a board; True when an existing device credential is replaced."""
    existing = store.get(device_id)
    if existing is None:
        return False
    if existing.role is not Role.DEVICE:
        raise ProvisioningError(
            f"{device_id!r} is a {existing.role.value} user in {store.path}, not a device; "
            "pick another device id"
        )
    if not replace:
        raise ProvisioningError(
            f"device {device_id!r} already has a credential in {store.path}; "
            "re-provisioning issues a new secret, so ask to replace it (--replace)"
        )
    return True


@contextlib.contextmanager
def _issued_credential(
    store: CredentialStore, config: DeviceConfig, replace: bool
) -> Iterator[str]:
    """Issue the device's credential; remove it again if the body fails.

    Nobody else holds a secret issued here, so a credential whose image never reached a
    device (or a file) would be an orphan. With `replace`, the previous credential is gone
    at that point too: the store keeps hashes only, so it cannot be put back.
    """
    secret = store.add(config.device_id, Role.DEVICE, None, config.groups, replace=replace)
    try:
        yield secret
    except BaseException as exc:
        try:
            store.remove(config.device_id)
        except CredentialsError as undo:
            exc.add_note(f"and removing the new credential failed too: {undo}")
        raise


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    device_id: str
    broker_url: str
    groups: tuple[str, ...]
    nvs: Partition
    creds_path: Path
    replaced: bool
    port: str | None = None
    chip: str | None = None
    board_table_checked: bool = False
    image: Path | None = None
    image_size: int | None = None
    parts: tuple[tuple[int, str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """For ``--json``: never the secret."""
        doc: dict[str, Any] = {
            "device_id": self.device_id,
            "broker_url": self.broker_url,
            "groups": list(self.groups),
            "nvs": {"offset": f"{self.nvs.offset:#x}", "size": f"{self.nvs.size:#x}"},
            "credentials": str(self.creds_path),
            "replaced": self.replaced,
        }
        if self.port is not None:
            doc |= {"port": self.port, "chip": self.chip}
            doc["board_table_checked"] = self.board_table_checked
        if self.image is not None:
            doc |= {"image": str(self.image), "size": self.image_size, "chip": self.chip}
            doc["parts"] = [
                {"offset": f"{off:#x}", "name": name, "size": size}
                for off, name, size in self.parts
            ]
        return doc


def _check_board_table(esp: ESPLoader, port: str, offset: int, nvs: Partition) -> bool:
    """Refuse to write NVS where the board's own partition table has something else.

    Returns False when the table cannot be read (the ESP32-S3/C3 ROM loaders cannot read
    flash, so neither can a board whose stub is disabled, e.g. in secure download mode) or
    is not valid there (erased flash, a table at another offset): NVS is then written
    where the given table says.
    """
    fatal = _import("esp_pylib.errors").FatalError
    if esp.secure_download_mode:
        return False
    try:
        table = parse_partition_binary(
            esp.read_flash(offset, PARTITION_TABLE_MAX_BYTES), source="the board"
        )
    except (ProvisioningError, fatal):
        return False
    if not table.partitions:
        return False
    theirs = table.find(NVS_PARTITION_NAME)
    if theirs is None or (theirs.offset, theirs.size) != (nvs.offset, nvs.size):
        where = f"{theirs.offset:#x} ({theirs.size:#x} bytes)" if theirs else "nowhere"
        raise FlashFailed(
            port,
            f"the board's partition table has nvs at {where}, the given table at "
            f"{nvs.offset:#x} ({nvs.size:#x} bytes); flash the matching build first "
            "or give its table",
        )
    return True


def provision(
    port: str,
    device_id: str,
    wifi_ssid: str,
    wifi_password: str,
    broker_url: str,
    groups: Sequence[str],
    creds_store: CredentialStore | Path | str,
    partitions_csv: Path | str,
    baud: int = DEFAULT_BAUD,
    *,
    replace: bool = False,
    ntp: str | None = None,
    chip: str = "auto",
    table_offset: int = PARTITION_TABLE_OFFSET,
    connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
    output: TextIO | None = None,
) -> ProvisionResult:
    """Give the board on `port` its identity: credential in the store, NVS on the board.

    Order matters for "no orphan users": inputs, the table and the store are checked, then
    the board is connected (BoardNotFound leaves the store untouched), then the credential
    is issued, the NVS image built and written; if that fails the credential is removed.
    `partitions_csv` may also be a built partition-table.bin.
    """
    config = DeviceConfig(device_id, broker_url, wifi_ssid, wifi_password, tuple(groups), ntp)
    nvs = read_partition_table(partitions_csv, table_offset=table_offset).nvs()
    store = _store(creds_store)
    replaced = _check_store(store, config.device_id, replace)
    cmds = _import("esptool.cmds")

    with (
        _esptool_output(output),
        _board(port, chip, baud, connect_attempts=connect_attempts) as esp,
    ):
        checked = _check_board_table(esp, port, table_offset, nvs)
        with _issued_credential(store, config, replace) as secret:
            image = build_nvs_image(config.with_secret(secret), nvs.size)
            cmds.write_flash(esp, [(nvs.offset, image)])  # "keep": the bootloader is untouched
        _reset(cmds, esp, "hard-reset")  # boot the firmware with its new identity
        board_chip = esp.CHIP_NAME
    return ProvisionResult(
        device_id=config.device_id,
        broker_url=config.broker_url,
        groups=config.groups,
        nvs=nvs,
        creds_path=store.path,
        replaced=replaced,
        port=port,
        chip=board_chip,
        board_table_checked=checked,
    )


def merged_image(
    build_dir: Path | str,
    device_id: str,
    wifi_ssid: str,
    wifi_password: str,
    broker_url: str,
    groups: Sequence[str],
    creds_store: CredentialStore | Path | str,
    out_path: Path | str,
    *,
    partitions: Path | str | None = None,
    replace: bool = False,
    ntp: str | None = None,
    output: TextIO | None = None,
) -> ProvisionResult:
    """One factory image for one device: the build plus its NVS, to flash at offset 0.

    esptool's merge_bin lays the flasher_args files and the device's NVS image at their
    offsets, 0xFF between them (so otadata and the like come out erased). The file holds
    the device's secret and Wi-Fi password: it is written with mode 0600.

    The NVS offset comes from the build's own partition-table.bin (what the image carries);
    a `partitions` table given as well must agree with it.
    """
    config = DeviceConfig(device_id, broker_url, wifi_ssid, wifi_password, tuple(groups), ntp)
    build = read_flasher_args(build_dir)
    table_path = Path(partitions) if partitions is not None else build.partition_table
    if table_path is None:
        raise ProvisioningError(
            f"{build.build_dir} has no partition-table.bin; give the partition table"
        )
    nvs = read_partition_table(table_path, table_offset=build.table_offset).nvs()
    if build.partition_table is not None and table_path != build.partition_table:
        built = read_partition_table(build.partition_table).nvs()
        if (built.offset, built.size) != (nvs.offset, nvs.size):
            raise ProvisioningError(
                f"{table_path} puts nvs at {nvs.offset:#x} ({nvs.size:#x} bytes) but the build's "
                f"table at {built.offset:#x} ({built.size:#x} bytes); use the build's table"
            )
    _check_overlaps(
        [(f.offset, f.size, f.name) for f in build.files] + [(nvs.offset, nvs.size, "nvs")],
        f"{build.build_dir}",
    )
    store = _store(creds_store)
    replaced = _check_store(store, config.device_id, replace)
    out = Path(out_path)
    merge_bin = _import("esptool.cmds").merge_bin
    fatal = _import("esp_pylib.errors").FatalError

    with _issued_credential(store, config, replace) as secret:
        image = build_nvs_image(config.with_secret(secret), nvs.size)
        parts: list[tuple[int, Any]] = [(f.offset, str(f.path)) for f in build.files]
        parts.append((nvs.offset, image))
        try:
            with _esptool_output(output):
                merged = merge_bin(
                    parts,
                    build.chip,
                    output=None,  # bytes back, so the file is written 0600 and atomically
                    flash_mode=build.flash_mode,
                    flash_size=build.flash_size,
                    flash_freq=build.flash_freq,
                )
        except (fatal, OSError) as exc:
            raise ProvisioningError(f"merging the image failed: {_reason(exc)}") from None
        assert merged is not None
        try:
            atomic_write(out, merged)
        except OSError as exc:
            raise ProvisioningError(f"cannot write {out}: {exc.strerror or exc}") from None
    names = [(f.offset, f.name, f.size) for f in build.files] + [(nvs.offset, "nvs", nvs.size)]
    return ProvisionResult(
        device_id=config.device_id,
        broker_url=config.broker_url,
        groups=config.groups,
        nvs=nvs,
        creds_path=store.path,
        replaced=replaced,
        chip=build.chip,
        image=out,
        image_size=len(merged),
        parts=tuple(sorted(names)),
    )
