"""A board on a serial port through esptool's Python API, and writing a build to it."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

from fleet.provisioning.errors import BoardNotFound, FlashFailed
from fleet.provisioning.tools import load_tool

if TYPE_CHECKING:
    from esptool.loader import ESPLoader

    from fleet.provisioning.build_info import FlashFile

DEFAULT_BAUD = 460800  # idf.py flash's default; the ROM syncs at 115200 first
ROM_BAUD = 115200
DEFAULT_CONNECT_ATTEMPTS = 7  # esptool's own default; each attempt takes about 0.8 s


@contextlib.contextmanager
def esptool_output(output: TextIO | None) -> Iterator[None]:
    """Send esptool's chatter (progress, notes, warnings) to `output`, or nowhere.

    esptool prints through a process-wide logger that follows the live sys.stdout and
    sys.stderr; redirecting both keeps a caller's stdout clean (``--json``) without
    reconfiguring esptool's global logger for the rest of the process.
    """
    sink = output if output is not None else io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def esptool_reason(exc: BaseException) -> str:
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
def connected_board(
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
    errors are FlashFailed. Call inside `esptool_output`.
    """
    serial = load_tool("serial")
    cmds = load_tool("esptool.cmds")
    not_in_rom = load_tool("esptool.util").NotImplementedInROMError
    # esptool's FatalError derives from esp_pylib's, which helpers raise directly.
    errors = (
        load_tool("esp_pylib.errors").FatalError,
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
            raise FlashFailed(port, esptool_reason(exc)) from None
        raise BoardNotFound(port, esptool_reason(exc)) from None
    with rom:  # closes the serial port, which the stub loader object shares
        try:
            esp = cmds.run_stub(rom) if stub else rom
            if baud > ROM_BAUD:
                with contextlib.suppress(not_in_rom):  # ESP8266's ROM cannot change baud
                    esp.change_baud(baud)
            cmds.attach_flash(esp)
            yield esp
        except errors as exc:
            raise FlashFailed(port, esptool_reason(exc)) from None


def reset_board(cmds: ModuleType, esp: ESPLoader, mode: str) -> None:
    """Reset after a write that esptool verified; a failed reset is not a failed write.

    esptool warns by itself when it cannot drive RTS/DTR; the board then needs its reset
    button, but its flash (and, for provisioning, the issued credential) is good.
    """
    with contextlib.suppress(load_tool("esp_pylib.errors").FatalError, OSError):
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
    # Here, not at the top: `fleet flash --help` reads this module's defaults only.
    from fleet.provisioning.build_info import read_flasher_args

    build = read_flasher_args(build_dir)
    cmds = load_tool("esptool.cmds")

    with (
        esptool_output(output),
        connected_board(
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
        reset_board(cmds, esp, build.after)
    return FlashResult(port, build.chip, build.files)
