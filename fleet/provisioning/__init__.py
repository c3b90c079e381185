"""Flashing and provisioning ESP32 devices: partition tables, NVS images, esptool.

A device learns who it is from the NVS namespace ``fleet`` (`nvs_schema`). This package
builds that namespace as an NVS partition image and reads images back (`nvs_image`),
finds the NVS partition in an ESP-IDF partition table (`partitions`), reads what a build
left for flashing (`build_info`), and drives esptool's Python API (`board`) to write a
build, write one device's NVS image (`provisioner`), or merge a single factory image per
device (`factory_image`). Provisioning issues the device's broker credential
(`credential`) and embeds its secret in the image.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# What `fleet flash --help` shows as defaults loads at once; the rest (the NVS and
# partition codecs, the credential, pydantic) on first use of one of its names.
from fleet.provisioning.board import DEFAULT_BAUD, DEFAULT_CONNECT_ATTEMPTS

if TYPE_CHECKING:
    from fleet.provisioning.board import (
        DEFAULT_BAUD,
        DEFAULT_CONNECT_ATTEMPTS,
        ROM_BAUD,
        FlashResult,
        flash,
    )
    from fleet.provisioning.build_info import (
        FLASHER_ARGS,
        BuildInfo,
        FlashFile,
        default_partition_table,
        read_flasher_args,
    )
    from fleet.provisioning.errors import BoardNotFound, FlashFailed, ProvisioningError
    from fleet.provisioning.factory_image import merged_image
    from fleet.provisioning.nvs_image import (
        NVS_PAGE,
        NvsEntry,
        NvsValue,
        build_nvs_image,
        parse_nvs_image,
        read_nvs_entries,
    )
    from fleet.provisioning.nvs_schema import (
        FIRMWARE_KEYS,
        MAX_GROUPS,
        NVS_MAX_STRING_BYTES,
        NVS_NAMESPACE,
        NVS_PARTITION_NAME,
        DeviceConfig,
        FirmwareKey,
        device_broker_url,
        normalize_groups,
    )
    from fleet.provisioning.partitions import (
        APP_TYPE,
        DATA_TYPE,
        NVS_SUBTYPE,
        PARTITION_TABLE_MAX_BYTES,
        PARTITION_TABLE_OFFSET,
        PARTITION_TABLE_SECTOR,
        Partition,
        PartitionTable,
        parse_partition_binary,
        parse_partition_csv,
        read_partition_table,
    )
    from fleet.provisioning.provisioner import ProvisionResult, provision

_MODULES = (
    "board",
    "build_info",
    "errors",
    "factory_image",
    "nvs_image",
    "nvs_schema",
    "partitions",
    "provisioner",
)


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            found = vars(importlib.import_module(f"{__name__}.{module}"))
            if name in found:
                return found[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APP_TYPE",
    "DATA_TYPE",
    "DEFAULT_BAUD",
    "DEFAULT_CONNECT_ATTEMPTS",
    "FIRMWARE_KEYS",
    "FLASHER_ARGS",
    "MAX_GROUPS",
    "NVS_MAX_STRING_BYTES",
    "NVS_NAMESPACE",
    "NVS_PAGE",
    "NVS_PARTITION_NAME",
    "NVS_SUBTYPE",
    "PARTITION_TABLE_MAX_BYTES",
    "PARTITION_TABLE_OFFSET",
    "PARTITION_TABLE_SECTOR",
    "ROM_BAUD",
    "BoardNotFound",
    "BuildInfo",
    "DeviceConfig",
    "FirmwareKey",
    "FlashFailed",
    "FlashFile",
    "FlashResult",
    "NvsEntry",
    "NvsValue",
    "Partition",
    "PartitionTable",
    "ProvisionResult",
    "ProvisioningError",
    "build_nvs_image",
    "default_partition_table",
    "device_broker_url",
    "flash",
    "merged_image",
    "normalize_groups",
    "parse_nvs_image",
    "parse_partition_binary",
    "parse_partition_csv",
    "provision",
    "read_flasher_args",
    "read_nvs_entries",
    "read_partition_table",
]
