"""NVS partition images: built with esp-idf-nvs-partition-gen, read back by a small parser
of the documented NVS format (the generator has no reader)."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from fleet.provisioning.errors import ProvisioningError
from fleet.provisioning.nvs_schema import NVS_NAMESPACE, DeviceConfig
from fleet.provisioning.tools import load_tool

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


def build_nvs_image(config: DeviceConfig, size: int) -> bytes:
    """The NVS partition image (exactly `size` bytes) holding the device's ``fleet`` keys.

    Built with the generator's Python API (nvs_open / write_entry / nvs_close) rather than
    its CSV entry point: that one calls sys.exit() on bad input and would need quoting for
    passwords with commas or quotes.
    """
    gen = load_tool("esp_idf_nvs_partition_gen.nvs_partition_gen")
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
