"""Provisioning a board: its credential in the store, its NVS image on its flash."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fleet.auth import CredentialStore
from fleet.provisioning.board import (
    DEFAULT_BAUD,
    DEFAULT_CONNECT_ATTEMPTS,
    connected_board,
    esptool_output,
    reset_board,
)
from fleet.provisioning.credential import check_store, issued_credential, open_store
from fleet.provisioning.errors import FlashFailed, ProvisioningError
from fleet.provisioning.nvs_image import build_nvs_image
from fleet.provisioning.nvs_schema import NVS_PARTITION_NAME, DeviceConfig
from fleet.provisioning.partitions import (
    PARTITION_TABLE_MAX_BYTES,
    PARTITION_TABLE_OFFSET,
    Partition,
    parse_partition_binary,
    read_partition_table,
)
from fleet.provisioning.tools import load_tool

if TYPE_CHECKING:
    from esptool.loader import ESPLoader


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
    fatal = load_tool("esp_pylib.errors").FatalError
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
    call_to: str | None = None,
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
    config = DeviceConfig(
        device_id, broker_url, wifi_ssid, wifi_password, tuple(groups), ntp, call_to
    )
    nvs = read_partition_table(partitions_csv, table_offset=table_offset).nvs()
    store = open_store(creds_store)
    replaced = check_store(store, config.device_id, replace)
    cmds = load_tool("esptool.cmds")

    with (
        esptool_output(output),
        connected_board(port, chip, baud, connect_attempts=connect_attempts) as esp,
    ):
        checked = _check_board_table(esp, port, table_offset, nvs)
        with issued_credential(store, config, replace) as secret:
            image = build_nvs_image(config.with_secret(secret), nvs.size)
            cmds.write_flash(esp, [(nvs.offset, image)])  # "keep": the bootloader is untouched
        reset_board(cmds, esp, "hard-reset")  # boot the firmware with its new identity
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
