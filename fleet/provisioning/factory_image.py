"""One factory image per device: the build and the device's NVS, merged to flash at 0."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fleet.auth import CredentialStore
from fleet.files import atomic_write
from fleet.provisioning.board import esptool_output, esptool_reason
from fleet.provisioning.build_info import check_overlaps, read_flasher_args
from fleet.provisioning.credential import check_store, issued_credential, open_store
from fleet.provisioning.errors import ProvisioningError
from fleet.provisioning.nvs_image import build_nvs_image
from fleet.provisioning.nvs_schema import DeviceConfig
from fleet.provisioning.partitions import read_partition_table
from fleet.provisioning.provisioner import ProvisionResult
from fleet.provisioning.tools import load_tool


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
    call_to: str | None = None,
    output: TextIO | None = None,
) -> ProvisionResult:
    """One factory image for one device: the build plus its NVS, to flash at offset 0.

    esptool's merge_bin lays the flasher_args files and the device's NVS image at their
    offsets, 0xFF between them (so otadata and the like come out erased). The file holds
    the device's secret and Wi-Fi password: it is written with mode 0600.

    The NVS offset comes from the build's own partition-table.bin (what the image carries);
    a `partitions` table given as well must agree with it.
    """
    config = DeviceConfig(
        device_id, broker_url, wifi_ssid, wifi_password, tuple(groups), ntp, call_to
    )
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
    check_overlaps(
        [(f.offset, f.size, f.name) for f in build.files] + [(nvs.offset, nvs.size, "nvs")],
        f"{build.build_dir}",
    )
    store = open_store(creds_store)
    replaced = check_store(store, config.device_id, replace)
    out = Path(out_path)
    merge_bin = load_tool("esptool.cmds").merge_bin
    fatal = load_tool("esp_pylib.errors").FatalError

    with issued_credential(store, config, replace) as secret:
        image = build_nvs_image(config.with_secret(secret), nvs.size)
        parts: list[tuple[int, Any]] = [(f.offset, str(f.path)) for f in build.files]
        parts.append((nvs.offset, image))
        try:
            with esptool_output(output):
                merged = merge_bin(
                    parts,
                    build.chip,
                    output=None,  # bytes back, so the file is written 0600 and atomically
                    flash_mode=build.flash_mode,
                    flash_size=build.flash_size,
                    flash_freq=build.flash_freq,
                )
        except (fatal, OSError) as exc:
            raise ProvisioningError(f"merging the image failed: {esptool_reason(exc)}") from None
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
