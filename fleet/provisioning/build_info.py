"""What `idf.py build` left for flashing: flasher_args.json, its files, its partition table."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.provisioning.errors import ProvisioningError
from fleet.provisioning.partitions import PARTITION_TABLE_OFFSET
from fleet.provisioning.tools import load_tool

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


def check_overlaps(regions: Sequence[tuple[int, int, str]], where: str) -> None:
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
    check_overlaps([(f.offset, f.size, f.name) for f in files], str(path))

    extra = doc.get("extra_esptool_args") or {}
    if not isinstance(extra, dict):
        raise ProvisioningError(f"{path}: 'extra_esptool_args' must be an object")
    chip = extra.get("chip")
    targets = load_tool("esptool.targets")
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
        Path(__file__).resolve().parents[2] / "firmware" / "partitions.csv",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ProvisioningError(
        "no partition table found (firmware/partitions.csv); name one with --partitions"
    )
