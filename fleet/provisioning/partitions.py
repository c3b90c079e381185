"""ESP-IDF partition tables: the CSV idf.py builds from, and the binary on the board."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from fleet.provisioning.errors import ProvisioningError
from fleet.provisioning.nvs_image import NVS_PAGE
from fleet.provisioning.nvs_schema import NVS_PARTITION_NAME

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
