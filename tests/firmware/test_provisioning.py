"""Flashing and provisioning: NVS images, partition tables, flasher_args, factory images,
and `fleet flash` / `fleet provision` / `fleet image`.

Real esptool and esp-idf-nvs-partition-gen throughout. No board is attached here: the
"no board" cases use a nonexistent port and a pty pair (a real serial device on which
nothing answers), with one connect attempt each (about 0.8 s) to keep the file fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from esp_idf_nvs_partition_gen import nvs_partition_gen as gen
from typer.testing import CliRunner

from cli.main import app
from fleet.auth import CredentialStore, Role
from fleet.errors import ConfigError
from fleet.provisioning import (
    FIRMWARE_KEYS,
    NVS_NAMESPACE,
    BoardNotFound,
    DeviceConfig,
    ProvisioningError,
    build_nvs_image,
    device_broker_url,
    flash,
    merged_image,
    parse_nvs_image,
    parse_partition_binary,
    parse_partition_csv,
    provision,
    read_flasher_args,
    read_nvs_entries,
    read_partition_table,
)
from tests.support import ROOT

FIRMWARE = ROOT / "firmware"
PARTITIONS_CSV = FIRMWARE / "partitions.csv"
# firmware/partitions.csv as (name, type, subtype, offset, size): data=1, app=0;
# nvs=2, ota=0, phy=1; ota_0=0x10, ota_1=0x11.
FIRMWARE_LAYOUT = [
    ("nvs", 1, 0x02, 0x9000, 0x6000),
    ("otadata", 1, 0x00, 0xF000, 0x2000),
    ("phy_init", 1, 0x01, 0x11000, 0x1000),
    ("ota_0", 0, 0x10, 0x20000, 0x1E0000),
    ("ota_1", 0, 0x11, 0x200000, 0x1E0000),
]


def table_bin(layout: list[tuple[str, int, int, int, int]], flags: int = 0) -> bytes:
    """A binary partition table written from ESP-IDF's documented format, not our code."""
    rows = b"".join(
        struct.pack("<2sBBLL16sL", b"\xaa\x50", t, st, off, size, name.encode(), flags)
        for name, t, st, off, size in layout
    )
    rows += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(rows).digest()
    return rows + b"\xff" * (0xC00 - len(rows))


def config(**overrides: object) -> DeviceConfig:
    values: dict[str, object] = dict(
        device_id="kitchen-3",
        broker_url="mqtt://192.168.1.10:1883",
        wifi_ssid="Café Wi-Fi",  # non-ASCII: 11 bytes
        wifi_password='pa,ss "word"',  # commas and quotes would need CSV quoting
        groups=("kitchen", "floor-1"),
        ntp="ntp.example.org",
        call_to="group:kitchen",
    )
    values.update(overrides)
    return DeviceConfig(**values)  # type: ignore[arg-type]


# --- what the firmware reads -----------------------------------------------------------------


def test_firmware_keys_match_the_c_code() -> None:
    """FIRMWARE_KEYS mirrors config_nvs.c's keys[] table and config_nvs.h's buffers."""
    source = (FIRMWARE / "main" / "config_nvs.c").read_text()
    header = (FIRMWARE / "main" / "config_nvs.h").read_text()
    macros: dict[str, str] = {}
    for name in ("fleet_topics.h", "fleet_msg.h"):
        text = (FIRMWARE / "components" / "fleet_core" / "include" / name).read_text()
        macros |= dict(re.findall(r"#define (FLEET_\w+)\s+(\d+)", text))

    def buffer_size(field: str) -> int:
        expr = re.search(rf"char {field}\[([^\]]+)\];", header)
        assert expr is not None, field
        text = re.sub(r"FLEET_\w+", lambda m: macros[m[0]], expr[1])
        assert re.fullmatch(r"[\d\s+*()-]+", text), text
        return int(eval(text))  # digits and arithmetic only, checked above

    table = re.findall(r'\{"(\w+)",\s*cfg->(\w+),\s*sizeof cfg->\w+,\s*(true|false)\}', source)
    assert table, "keys[] table not found in config_nvs.c"
    from_c = [(key, buffer_size(field) - 1, req == "true") for key, field, req in table]
    assert from_c == [(k.name, k.max_bytes, k.required) for k in FIRMWARE_KEYS]
    assert re.search(r'static const char \*NAMESPACE = "(\w+)"', source)[1] == NVS_NAMESPACE  # type: ignore[index]
    # Every read is a string read: the image must hold strings (type SZ), nothing else.
    reads = set(
        re.findall(
            r"nvs_get_(\w+)\(", "".join(p.read_text() for p in (FIRMWARE / "main").glob("*.c"))
        )
    )
    assert reads == {"str"}


# --- NVS images ------------------------------------------------------------------------------


def test_nvs_image_round_trips_exactly_with_the_firmwares_types() -> None:
    cfg = config().with_secret("Zq3-secret_from_the_store")
    image = build_nvs_image(cfg, 0x6000)
    assert len(image) == 0x6000
    assert parse_nvs_image(image) == {
        "fleet": {
            "device_id": "kitchen-3",
            "secret": "Zq3-secret_from_the_store",
            "broker_url": "mqtt://192.168.1.10:1883",
            "wifi_ssid": "Café Wi-Fi",
            "wifi_pass": 'pa,ss "word"',
            "groups": "kitchen,floor-1",
            "ntp": "ntp.example.org",
            "call_to": "group:kitchen",
        }
    }
    entries = read_nvs_entries(image)
    assert [e.key for e in entries] == [k.name for k in FIRMWARE_KEYS]  # the firmware's order
    assert {(e.namespace, e.type) for e in entries} == {("fleet", "string")}


def test_nvs_image_holds_values_at_the_firmwares_limits() -> None:
    groups = tuple(f"{i:02d}" + "g" * 62 for i in range(32))  # 32 x 64 chars: 2079 bytes
    cfg = DeviceConfig(
        device_id="d" * 64,
        broker_url="mqtt://" + "h" * 238 + ":1883",  # 255 bytes
        wifi_ssid="é" * 16,  # 32 bytes
        wifi_password="p" * 63,
        groups=groups,
        call_to="group:" + "c" * 64,  # 70 bytes
    ).with_secret("s" * 127)
    image = build_nvs_image(cfg, 0x3000)  # the smallest read/write NVS
    values = parse_nvs_image(image)["fleet"]
    assert values == cfg.nvs_values()
    assert len(str(values["groups"]).encode()) == 2079
    assert "ntp" not in values  # optional, left to the firmware's default


def test_open_network_and_no_groups_are_written_as_empty_strings() -> None:
    cfg = config(wifi_password="", groups=(), ntp=None).with_secret("x")
    values = parse_nvs_image(build_nvs_image(cfg, 0x6000))["fleet"]
    assert values["wifi_pass"] == ""
    assert values["groups"] == ""


def test_nvs_reader_reads_every_type_the_generator_writes() -> None:
    """The reader is not tailored to our strings: integers, blobs over pages, namespaces."""
    blob = random.Random(5).randbytes(6000)  # a version-2 blob split into chunks
    out = io.BytesIO()
    nvs = gen.nvs_open(out, 0x5000, gen.Page.VERSION2)
    gen.write_entry(nvs, "one", "namespace", "", "")
    for key, enc, value in [
        ("u8", "u8", "255"),
        ("i8", "i8", "-128"),
        ("u16", "u16", "65535"),
        ("i32", "i32", "-2147483648"),
        ("u64", "u64", str(2**64 - 1)),
        ("i64", "i64", str(-(2**63))),
        ("text", "string", "hello"),
    ]:
        gen.write_entry(nvs, key, "data", enc, value)
    gen.write_entry(nvs, "two", "namespace", "", "")
    gen.write_entry(nvs, "blob", "data", "hex2bin", blob.hex())
    gen.write_entry(nvs, "text", "data", "string", "other namespace")
    gen.nvs_close(nvs)
    image = out.getvalue()
    assert parse_nvs_image(image) == {
        "one": {
            "u8": 255,
            "i8": -128,
            "u16": 65535,
            "i32": -(2**31),
            "u64": 2**64 - 1,
            "i64": -(2**63),
            "text": "hello",
        },
        "two": {"blob": blob, "text": "other namespace"},
    }
    assert {e.key: e.type for e in read_nvs_entries(image)}["blob"] == "blob"


def test_nvs_reader_refuses_corrupt_images() -> None:
    image = bytearray(build_nvs_image(config().with_secret("abc"), 0x3000))

    # Entries: 0 namespace, 1-2 device_id (header, data), 3-4 secret, 5.. broker_url.
    def entry(i: int) -> int:
        return 64 + 32 * i  # entries start after the 32-byte header and 32-byte bitmap

    flipped = bytearray(image)
    flipped[entry(4) + 1] ^= 0x01  # the secret's text
    with pytest.raises(ProvisioningError, match="data CRC mismatch for 'secret'"):
        read_nvs_entries(bytes(flipped))
    flipped = bytearray(image)
    flipped[entry(5) + 8] ^= 0x01  # broker_url's key name
    with pytest.raises(ProvisioningError, match="entry 5: entry CRC mismatch"):
        read_nvs_entries(bytes(flipped))
    header = bytearray(image)
    header[4] ^= 0x01  # sequence number, covered by the header CRC
    with pytest.raises(ProvisioningError, match="header CRC"):
        read_nvs_entries(bytes(header))
    with pytest.raises(ProvisioningError, match="whole 4096-byte pages"):
        read_nvs_entries(bytes(image[:100]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device_id": "Kitchen"}, "invalid device id 'Kitchen'"),
        ({"device_id": "-x"}, "invalid device id"),
        ({"wifi_ssid": ""}, "SSID is 0 bytes; 802.11 allows 1 to 32"),
        ({"wifi_ssid": "é" * 17}, "SSID is 34 bytes"),
        ({"wifi_ssid": "a\x00b"}, "NUL"),
        ({"wifi_password": "short"}, "password is 5 bytes; WPA2 needs 8 to 63"),
        ({"wifi_password": "f" * 64}, "password is 64 bytes"),
        ({"wifi_password": "tab\there!"}, "control characters"),
        ({"broker_url": "ws://host:8080"}, "no WebSocket transport"),
        ({"broker_url": "mqtt://ops:pw@host"}, "carries a user"),
        ({"broker_url": "http://host"}, "unsupported broker URL scheme"),
        ({"broker_url": "mqtt://host:99999"}, "invalid port"),
        ({"broker_url": "mqtt://host/path"}, "no path"),
        ({"broker_url": "mqtt://" + "h" * 250}, "holds at most 255"),
        ({"groups": ("Kitchen",)}, "invalid group name 'Kitchen': use 1-64"),
        ({"groups": tuple(f"g{i}" for i in range(33))}, "33 groups; the firmware keeps at most 32"),
        ({"ntp": "pool ntp"}, "not a host name"),
        ({"ntp": "n" * 64}, "holds at most 63"),
        ({"call_to": "Dev 2"}, "call target 'Dev 2' is not a device id or group:NAME"),
        ({"call_to": "group:"}, "call target 'group:' is not"),
    ],
)
def test_invalid_inputs_are_refused_with_clear_messages(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(**overrides)


def test_secret_limits_and_missing_secret() -> None:
    with pytest.raises(ProvisioningError, match="holds at most 127"):
        config().with_secret("s" * 128)
    with pytest.raises(ProvisioningError, match="no secret yet"):
        config().nvs_values()
    with pytest.raises(ProvisioningError, match="too small"):
        build_nvs_image(config().with_secret("x"), 0x2000)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("192.168.1.5", "mqtt://192.168.1.5:1883"),
        ("mqtt://broker.lan", "mqtt://broker.lan:1883"),
        ("mqtts://broker.lan", "mqtts://broker.lan:8883"),
        ("ssl://broker.lan:9999", "mqtts://broker.lan:9999"),
        ("mqtt://[fd00::1]:1884", "mqtt://[fd00::1]:1884"),
    ],
)
def test_broker_url_is_stored_as_esp_mqtt_reads_it(given: str, stored: str) -> None:
    assert device_broker_url(given) == stored


def test_groups_are_normalized_like_the_credential() -> None:
    cfg = config(groups=("kitchen, hall", "all", "hall", "", "garden"))
    assert cfg.groups == ("kitchen", "hall", "garden")


# --- partition tables ------------------------------------------------------------------------


def test_partition_csv_of_the_firmware() -> None:
    table = read_partition_table(PARTITIONS_CSV)
    got = [(p.name, p.type, p.subtype, p.offset, p.size) for p in table.partitions]
    assert got == FIRMWARE_LAYOUT
    nvs = table.nvs()
    assert (nvs.offset, nvs.size, nvs.type_name, nvs.subtype_name) == (
        0x9000,
        0x6000,
        "data",
        "nvs",
    )


def test_partition_csv_computed_offsets_follow_the_idf_rules() -> None:
    # The firmware's table with every offset blank computes to the very same layout.
    text = PARTITIONS_CSV.read_text()
    blanked = re.sub(r"^(\s*\w+,\s*\w+,\s*\w+,)\s*0x[0-9a-fA-F]+,", r"\1 ,", text, flags=re.M)
    assert blanked != text
    table = parse_partition_csv(blanked)
    assert [(p.name, p.offset) for p in table.partitions] == [
        (name, off) for name, _t, _s, off, _size in FIRMWARE_LAYOUT
    ]
    # 4K data alignment, 64K app alignment, K/M sizes, another table offset.
    table = parse_partition_csv(
        "nvs, data, nvs, , 24K\nphy, data, phy, , 0x1800\nfactory, app, factory, , 1M\n"
        "store, data, spiffs, , 64K, readonly\n",
        table_offset=0x10000,
    )
    assert [(p.name, p.offset, p.size) for p in table.partitions] == [
        ("nvs", 0x11000, 0x6000),
        ("phy", 0x17000, 0x1800),
        ("factory", 0x20000, 0x100000),
        ("store", 0x120000, 0x10000),
    ]
    assert table.find("store").readonly  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("nvs, data, nvs, 0x8000, 0x6000\n", "overlaps the partition table's sector"),
        ("a, data, nvs, 0x9000, 0x6000\nb, data, phy, 0xa000, 0x1000\n", "overlaps partition 'a'"),
        (
            "nvs, data, nvs, 0x9000, 0x6000\napp, app, factory, 0x18000, 1M\n",
            "not aligned to 0x10000",
        ),
        ("nvs, data, nvs, 0x9000\n", "the size is required"),
        ("nvs, disk, nvs, , 0x6000\n", "unknown partition type 'disk'"),
        ("nvs, data, nvram, , 0x6000\n", "unknown subtype 'nvram'"),
        ("nvs, data, nvs, , 0x6000, secret\n", "unknown flag 'secret'"),
        ("nvs, data, nvs, , 0x6000\nnvs, data, phy, , 0x1000\n", "appears twice"),
        ("# nothing\n\n", "lists no partitions"),
    ],
)
def test_partition_csv_errors(csv: str, message: str) -> None:
    with pytest.raises(ProvisioningError, match=re.escape(message)):
        parse_partition_csv(csv, source="t.csv")


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("storage, data, nvs, , 0x6000\n", "has no partition named 'nvs'"),
        ("nvs, data, phy, , 0x6000\n", "is data/phy, not data/nvs"),
        ("nvs, data, nvs, , 0x2000\n", "at least 0x3000"),
        ("nvs, data, nvs, , 0x6000, readonly\n", "is readonly"),
    ],
)
def test_nvs_partition_must_suit_the_firmware(csv: str, message: str) -> None:
    with pytest.raises(ProvisioningError, match=re.escape(message)):
        parse_partition_csv(csv).nvs()


def test_binary_partition_table(tmp_path: Path) -> None:
    path = tmp_path / "partition-table.bin"
    path.write_bytes(table_bin(FIRMWARE_LAYOUT))
    table = read_partition_table(path)
    assert table.partitions == read_partition_table(PARTITIONS_CSV).partitions
    bad = bytearray(table_bin(FIRMWARE_LAYOUT))
    bad[20] ^= 0xFF  # nvs size, covered by the MD5 row
    with pytest.raises(ProvisioningError, match="MD5"):
        parse_partition_binary(bytes(bad))
    assert parse_partition_binary(b"\xff" * 0xC00).partitions == ()  # erased flash


# --- builds ----------------------------------------------------------------------------------


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    """A fake ESP-IDF build: small random .bin files and the flasher_args.json idf.py writes."""
    build = tmp_path / "build"
    rng = random.Random(42)
    files = {
        "bootloader/bootloader.bin": rng.randbytes(0x5000),
        "partition_table/partition-table.bin": table_bin(FIRMWARE_LAYOUT),
        "ota_data_initial.bin": rng.randbytes(0x2000),
        "espfleet.bin": rng.randbytes(40_000),
    }
    for rel, data in files.items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_bytes(data)
    doc = {
        "write_flash_args": ["--flash_mode", "dio", "--flash_size", "4MB", "--flash_freq", "80m"],
        "flash_settings": {"flash_mode": "dio", "flash_size": "4MB", "flash_freq": "80m"},
        "flash_files": {
            "0x0": "bootloader/bootloader.bin",
            "0x20000": "espfleet.bin",
            "0x8000": "partition_table/partition-table.bin",
            "0xf000": "ota_data_initial.bin",
        },
        "bootloader": {"offset": "0x0", "file": "bootloader/bootloader.bin", "encrypted": "false"},
        "app": {"offset": "0x20000", "file": "espfleet.bin", "encrypted": "false"},
        "partition-table": {
            "offset": "0x8000",
            "file": "partition_table/partition-table.bin",
            "encrypted": "false",
        },
        "otadata": {"offset": "0xf000", "file": "ota_data_initial.bin", "encrypted": "false"},
        "extra_esptool_args": {
            "after": "hard_reset",
            "before": "default_reset",
            "stub": True,
            "chip": "esp32s3",
        },
    }
    (build / "flasher_args.json").write_text(json.dumps(doc, indent=4))
    return build


def _edit_args(build: Path, edit: object) -> None:
    path = build / "flasher_args.json"
    doc = json.loads(path.read_text())
    edit(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


def test_flasher_args(build_dir: Path) -> None:
    info = read_flasher_args(build_dir)
    assert info.chip == "esp32s3"
    assert [(f.offset, f.name) for f in info.files] == [
        (0x0, "bootloader"),
        (0x8000, "partition-table"),
        (0xF000, "otadata"),
        (0x20000, "app"),
    ]
    assert all(f.path.is_file() for f in info.files)
    assert (info.flash_mode, info.flash_size, info.flash_freq) == ("dio", "4MB", "80m")
    # idf.py's esptool-4 spellings, as esptool 5 wants them
    assert (info.before, info.after, info.stub) == ("default-reset", "hard-reset", True)
    assert info.partition_table == build_dir / "partition_table" / "partition-table.bin"
    # The project directory (with build/ inside) is accepted too.
    assert read_flasher_args(build_dir.parent).build_dir == build_dir


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("flash_files"), "'flash_files' must map offsets to files"),
        (lambda d: d["flash_files"].update({"0x300000": "missing.bin"}), "missing.bin at 0x300000"),
        (lambda d: d["flash_files"].update({"zero": "espfleet.bin"}), "offset 'zero' is not"),
        (lambda d: d["extra_esptool_args"].update(chip="esp99"), "chip is 'esp99'; expected"),
        (lambda d: d["extra_esptool_args"].pop("chip"), "chip is None"),
        (lambda d: d["app"].update(encrypted="true"), "flash encryption"),
        (lambda d: d["flash_files"].update({"0x21000": "espfleet.bin"}), "overlaps"),
    ],
)
def test_flasher_args_errors(build_dir: Path, edit: object, message: str) -> None:
    _edit_args(build_dir, edit)
    with pytest.raises(ProvisioningError, match=re.escape(message)):
        read_flasher_args(build_dir)


def test_flasher_args_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match=r"flasher_args\.json not found.*idf\.py build"):
        read_flasher_args(tmp_path)
    (tmp_path / "flasher_args.json").write_text("{not json")
    with pytest.raises(ProvisioningError, match="is not valid JSON"):
        read_flasher_args(tmp_path)


# --- factory images --------------------------------------------------------------------------


def _make_image(build: Path, store: CredentialStore, out: Path, **kw: object) -> object:
    args: dict[str, object] = dict(
        device_id="kitchen-3",
        wifi_ssid="Café Wi-Fi",
        wifi_password="correct horse",
        broker_url="mqtt://192.168.1.10",
        groups=["kitchen", "floor-1"],
        creds_store=store,
        out_path=out,
    )
    args.update(kw)
    return merged_image(build, **args)  # type: ignore[arg-type]


def test_merged_image_has_every_part_at_its_offset(
    build_dir: Path, creds_store: CredentialStore, tmp_path: Path
) -> None:
    out = tmp_path / "factory" / "kitchen-3.bin"
    result = _make_image(build_dir, creds_store, out)
    merged = out.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the secret
    info = read_flasher_args(build_dir)
    for part in info.files:
        assert merged[part.offset : part.end] == part.path.read_bytes(), part.name
    assert len(merged) == info.files[-1].end  # ends with the app, as idf.py merge-bin does
    assert set(merged[0xC00 + 0x8000 : 0x9000]) == {0xFF}  # gaps are erased flash
    nvs = parse_nvs_image(merged[0x9000:0xF000])
    values = nvs["fleet"]
    secret = str(values.pop("secret"))
    assert values == {
        "device_id": "kitchen-3",
        "broker_url": "mqtt://192.168.1.10:1883",
        "wifi_ssid": "Café Wi-Fi",
        "wifi_pass": "correct horse",
        "groups": "kitchen,floor-1",
    }
    # The secret in the image is the one the broker will accept, with the same groups.
    cred = creds_store.verify("kitchen-3", secret)
    assert cred is not None
    assert cred.role is Role.DEVICE
    assert cred.groups == ["kitchen", "floor-1"]
    assert result.to_json()["image"] == str(out)  # type: ignore[attr-defined]
    assert "secret" not in json.dumps(result.to_json())  # type: ignore[attr-defined]


def test_merged_image_replaces_only_when_asked(
    build_dir: Path, creds_store: CredentialStore, tmp_path: Path
) -> None:
    out = tmp_path / "a.bin"
    _make_image(build_dir, creds_store, out)
    first = str(parse_nvs_image(out.read_bytes()[0x9000:0xF000])["fleet"]["secret"])
    with pytest.raises(ProvisioningError, match=r"already has a credential.*--replace"):
        _make_image(build_dir, creds_store, tmp_path / "b.bin")
    assert not (tmp_path / "b.bin").exists()
    _make_image(build_dir, creds_store, out, replace=True)
    second = str(parse_nvs_image(out.read_bytes()[0x9000:0xF000])["fleet"]["secret"])
    assert first != second
    assert creds_store.verify("kitchen-3", first) is None
    assert creds_store.verify("kitchen-3", second) is not None
    # A non-device user of that name is never replaced by a device.
    creds_store.add("ops", Role.CONTROLLER)
    with pytest.raises(ProvisioningError, match="is a controller user"):
        _make_image(build_dir, creds_store, out, device_id="ops", replace=True)


def test_merged_image_failures_leave_no_credential(
    build_dir: Path, creds_store: CredentialStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ProvisioningError, match="cannot write"):
        _make_image(build_dir, creds_store, blocker / "img.bin")
    assert creds_store.get("kitchen-3") is None  # issued, then removed: no orphan
    # A table that disagrees with the build's is refused before anything is issued.
    other = tmp_path / "other.csv"
    other.write_text("nvs, data, nvs, 0x10000, 0x4000\n")
    with pytest.raises(ProvisioningError, match="use the build's table"):
        _make_image(build_dir, creds_store, tmp_path / "x.bin", partitions=other)
    assert len(creds_store) == 0


# --- no board --------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A pty: a real serial device on which no board answers."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_flash_and_provision_without_a_board_raise_board_not_found(
    build_dir: Path, creds_store: CredentialStore, silent_port: str
) -> None:
    with pytest.raises(BoardNotFound, match="No serial data received") as info:
        flash(silent_port, build_dir, connect_attempts=1)
    assert info.value.port == silent_port
    assert "\n" not in str(info.value)
    with pytest.raises(BoardNotFound, match=r"cannot open the port \(No such file"):
        provision(
            "/dev/nonexistent-port",
            "kitchen-3",
            "home",
            "password1",
            "mqtt://10.0.0.2",
            [],
            creds_store,
            PARTITIONS_CSV,
            connect_attempts=1,
        )
    assert len(creds_store) == 0


@pytest.fixture
def runner(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The shared runner, in a wide terminal with no port or Wi-Fi secret from outside."""
    monkeypatch.setenv("COLUMNS", "400")  # rich would wrap long error lines at 80
    monkeypatch.delenv("ESPPORT", raising=False)
    monkeypatch.delenv("FLEET_WIFI_PASSWORD", raising=False)
    return runner


def _assert_one_line_error(stderr: str, *expected: str) -> None:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("where", ["pty", "nonexistent"])
def test_cli_flash_without_a_board_exits_3(
    runner: CliRunner, build_dir: Path, silent_port: str, where: str
) -> None:
    port = silent_port if where == "pty" else "/dev/nonexistent-port"
    res = runner.invoke(
        app, ["flash", "--port", port, "--connect-attempts", "1", "--quiet", str(build_dir)]
    )
    assert res.exit_code == 3, res.output
    _assert_one_line_error(res.stderr, f"no board answered on {port}: ")
    assert res.stdout == ""


def test_cli_flash_shows_esptool_progress_on_stderr_not_stdout(
    runner: CliRunner, build_dir: Path, silent_port: str
) -> None:
    res = runner.invoke(
        app, ["flash", "-p", silent_port, "--connect-attempts", "1", "--json", str(build_dir)]
    )
    assert res.exit_code == 3
    assert "Connecting" in res.stderr  # esptool's own lines, kept off stdout
    # stdout holds only JSON: here the error object
    error = json.loads(res.stdout)
    assert error["ok"] is False
    assert error["exit_code"] == 3
    assert "no board answered" in error["error"]
    assert res.stderr.rstrip().splitlines()[-1].startswith("error: no board answered")


@pytest.mark.parametrize("where", ["pty", "nonexistent"])
def test_cli_provision_without_a_board_exits_3_and_leaves_no_credential(
    runner: CliRunner, tmp_path: Path, silent_port: str, where: str
) -> None:
    port = silent_port if where == "pty" else "/dev/nonexistent-port"
    creds = tmp_path / "home" / "credentials.json"
    store = CredentialStore(creds)
    store.add("hall-1", Role.DEVICE, "old-secret-of-hall-1")
    old_hash = store.get("hall-1").hash  # type: ignore[union-attr]
    base = ["provision", "--port", port, "--wifi-ssid", "home", "--wifi-password", "password1"]
    base += ["--broker", "mqtt://10.0.0.2", "--creds", str(creds), "--connect-attempts", "1", "-q"]
    res = runner.invoke(app, [*base, "--device-id", "kitchen-3", "-g", "kitchen"])
    assert res.exit_code == 3, res.output
    _assert_one_line_error(res.stderr, f"no board answered on {port}")
    assert store.get("kitchen-3") is None  # no orphan user
    # Re-provisioning an existing device without a board keeps its credential as it was.
    res = runner.invoke(app, [*base, "--device-id", "hall-1", "--replace"])
    assert res.exit_code == 3
    assert store.get("hall-1").hash == old_hash  # type: ignore[union-attr]
    assert store.verify("hall-1", "old-secret-of-hall-1") is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wifi-ssid", ""], "SSID is 0 bytes"),
        (["--wifi-password", "short"], "WPA2 needs 8 to 63"),
        (["--broker", "ws://10.0.0.2"], "no WebSocket transport"),
        (["--device-id", "Bad_Id"], "invalid device id"),
        (["--partitions", "/nonexistent.csv"], "cannot read partition table"),
    ],
)
def test_cli_provision_bad_input_exits_2_before_any_board(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    base = {
        "--port": "/dev/nonexistent-port",
        "--device-id": "kitchen-3",
        "--wifi-ssid": "home",
        "--wifi-password": "password1",
        "--broker": "mqtt://10.0.0.2",
        "--creds": str(tmp_path / "creds.json"),
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    res = runner.invoke(app, ["provision", *[x for kv in base.items() for x in kv]])
    assert res.exit_code == 2, res.output  # not 3: refused before esptool was asked
    _assert_one_line_error(res.stderr, message)
    assert not (tmp_path / "creds.json").exists()


def test_cli_image_end_to_end(runner: CliRunner, build_dir: Path, tmp_path: Path) -> None:
    creds = tmp_path / "home" / "credentials.json"
    out = tmp_path / "kitchen-3.bin"
    args = ["image", "--device-id", "kitchen-3", "--wifi-ssid", "home", "--wifi-password", ""]
    args += ["--broker", "mqtts://broker.lan", "-g", "kitchen,hall", "--ntp", "ntp.lan"]
    args += ["--call-to", "hall-2"]
    args += ["--build-dir", str(build_dir), "--out", str(out), "--creds", str(creds)]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout is only the JSON
    assert doc["device_id"] == "kitchen-3"
    assert doc["chip"] == "esp32s3"
    assert doc["nvs"] == {"offset": "0x9000", "size": "0x6000"}
    assert doc["size"] == out.stat().st_size
    assert [p["name"] for p in doc["parts"]] == [
        "bootloader",
        "partition-table",
        "nvs",
        "otadata",
        "app",
    ]
    values = parse_nvs_image(out.read_bytes()[0x9000:0xF000])["fleet"]
    assert values["broker_url"] == "mqtts://broker.lan:8883"
    assert values["wifi_pass"] == ""
    assert values["groups"] == "kitchen,hall"
    assert values["ntp"] == "ntp.lan"
    assert values["call_to"] == "hall-2"
    store = CredentialStore(creds)
    assert store.verify("kitchen-3", str(values["secret"])) is not None
    assert str(values["secret"]) not in res.output  # never printed

    # Again without --replace: refused (exit 2); with it, a human summary.
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    _assert_one_line_error(res.stderr, "already has a credential", "--replace")
    res = runner.invoke(app, [*args, "--replace"])
    assert res.exit_code == 0, res.output
    assert "credential replaced" in res.stdout
    assert "write-flash 0x0" in res.stdout
