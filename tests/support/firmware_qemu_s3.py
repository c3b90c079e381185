"""The ESP32-S3 image with the virtual audio board, built with ESP-IDF and booted in
Espressif's QEMU (machine esp32s3, QEMU 9.x), for tests/firmware/test_qemu_s3.py and
tests/mixed/test_qemu_s3.py.

On top of tests/support/firmware_qemu.py (ESP-IDF, `fleet image`, the Qemu runner) it finds what the
S3 needs besides: an xtensa-esp32s3-elf toolchain, a qemu-system-xtensa with the esp32s3
machine, and, without the component manager, the audio components. `find_s3_tools()` gives
them or one line saying what is missing.

Environment (defaults: what firmware/scripts/ builds under ~/.cache/espfleet):
  FLEET_XTENSA_BIN      folder with xtensa-esp32s3-elf-gcc (else PATH, else
                        ~/.cache/espfleet/xtensa-wrap/bin from xtensa_wrappers.sh)
  FLEET_QEMU_XTENSA     qemu-system-xtensa with the esp32s3 machine (else PATH, else
                        ~/.cache/espfleet/qemu92x/install/bin, build_qemu_xtensa.sh's)
  FLEET_S3_COMPONENTS   folder with esp_peer, esp_libsrtp, esp_codec_dev, esp_audio_codec
                        (s3_components.sh's; default ~/.cache/espfleet/s3-components); not
                        needed when the ESP component manager is on
  FLEET_QEMU_S3_BUILD   the cached build directory (default
                        ~/.cache/espfleet/fw-build/esp32s3-virtual)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from filelock import FileLock

from tests.support.firmware_qemu import (
    QEMU_DEFAULTS,
    EmulatorCrashed,
    Firmware,
    Qemu,
    Tools,
    build_firmware,
    find_tools,
    qemu_has_machine,
)

CACHE = Path.home() / ".cache" / "espfleet"
S3_BUILD_DIR = Path(
    os.environ.get("FLEET_QEMU_S3_BUILD", str(CACHE / "fw-build" / "esp32s3-virtual"))
)
VIRTUAL_DEFAULTS = "sdkconfig.defaults.virtual"
COMPONENTS = ("esp_peer", "esp_libsrtp", "esp_codec_dev", "esp_audio_codec")
GCC = "xtensa-esp32s3-elf-gcc"
PREFIX = "fleet/v1"  # the firmware's
DEVICE_TONE_HZ = 1000.0  # sdkconfig.defaults.virtual: CONFIG_FLEET_VIRTUAL_TONE_HZ
WAIT_S = 60.0  # an emulated S3 on a busy machine: boot, DTLS handshake
CRASH_MARKS = ("Guru Meditation", "abort() was called", "stack overflow", "assert failed")
METER = re.compile(r"vboard: speaker rms (-?[0-9.]+) dBFS peak ([0-9]+) Hz")
BIN_HZ = 8000 / 512  # the meter's FFT bin at the virtual board's 8 kHz


@dataclass(frozen=True)
class S3Tools:
    base: Tools  # its env carries the xtensa toolchain and the components for idf_build.sh
    qemu: Path


def _xtensa_bin() -> Path | None:
    given = os.environ.get("FLEET_XTENSA_BIN")
    if given:
        return Path(given) if (Path(given) / GCC).is_file() else None
    on_path = shutil.which(GCC)
    if on_path:
        return Path(on_path).parent
    default = CACHE / "xtensa-wrap" / "bin"
    return default if (default / GCC).is_file() else None


def _qemu_xtensa() -> Path | None:
    given = os.environ.get("FLEET_QEMU_XTENSA")
    candidates = [Path(given)] if given else []
    if not given:
        on_path = shutil.which("qemu-system-xtensa")
        candidates += [Path(on_path)] if on_path else []
        candidates.append(CACHE / "qemu92x" / "install" / "bin" / "qemu-system-xtensa")
    return next((q for q in candidates if q.is_file() and qemu_has_machine(q, "esp32s3")), None)


# The marks of every S3 test. QEMU 9.2's esp32s3 machine sometimes dies in a meeting's ICE
# or DTLS set-up (glibc's "corrupted size vs. prev_size" on its own heap, or silently):
# such a test runs again, up to twice, on that alone (`raise_for_crash`).
S3_MARKS = [
    pytest.mark.firmware_qemu_s3,
    pytest.mark.timeout(3600),
    pytest.mark.flaky(reruns=2, only_rerun=["EmulatorCrashed"]),
]


def raise_for_crash(qemu: Qemu | None, exc: BaseException) -> None:
    """For a failed S3 test: print the serial log's tail, and raise EmulatorCrashed (from
    `exc`) when QEMU itself died."""
    if qemu is None:
        return
    print(f"S3 serial log (tail):\n{qemu.text()[-8000:]}")
    crash = qemu.crashed()
    if crash is not None and isinstance(exc, Exception):
        raise EmulatorCrashed(f"qemu-system-xtensa died: {crash}") from exc


def s3_tools_or_skip() -> S3Tools:
    """The S3 tools, for a test module's top; skips the module with one line when the tier
    is off (FLEET_FIRMWARE_QEMU=0) or a tool is missing."""
    if os.environ.get("FLEET_FIRMWARE_QEMU") == "0":
        pytest.skip("firmware_qemu_s3: off (FLEET_FIRMWARE_QEMU=0)", allow_module_level=True)
    tools = find_s3_tools()
    if isinstance(tools, str):
        pytest.skip(f"firmware_qemu_s3: {tools}", allow_module_level=True)
    return tools


@functools.cache
def find_s3_tools() -> S3Tools | str:
    """The tools, or one line saying what is missing."""
    base = find_tools()
    if isinstance(base, str):
        return base
    xtensa = _xtensa_bin()
    if xtensa is None:
        return f"no {GCC}: set FLEET_XTENSA_BIN (firmware/scripts/xtensa_wrappers.sh)"
    qemu = _qemu_xtensa()
    if qemu is None:
        return (
            "no Espressif QEMU with an esp32s3 machine: set FLEET_QEMU_XTENSA="
            "path/to/qemu-system-xtensa (firmware/scripts/build_qemu_xtensa.sh)"
        )
    env = dict(base.env)
    env["PATH"] = f"{xtensa}{os.pathsep}{env.get('PATH', '')}"
    folder = Path(os.environ.get("FLEET_S3_COMPONENTS", str(CACHE / "s3-components")))
    if all((folder / c / "CMakeLists.txt").is_file() for c in COMPONENTS):
        env["FLEET_IDF_EXTRA_COMPONENT_DIRS"] = ";".join(str(folder / c) for c in COMPONENTS)
    elif env.get("IDF_COMPONENT_MANAGER", "1") == "0" or "FLEET_IDF_ENV" in env:
        return (
            f"no audio components in {folder}: set FLEET_S3_COMPONENTS "
            "(firmware/scripts/s3_components.sh) or use the ESP component manager"
        )
    return S3Tools(replace(base, env=env), qemu)


def build_s3_firmware(tools: S3Tools, codec: str = "pcmu") -> Firmware:
    """The esp32s3 image: QEMU network, virtual audio board offering `codec` (pcmu, the
    board's default, or opus), each in a build directory of its own (idf_build.sh,
    incremental)."""
    defaults: tuple[str, ...] = (QEMU_DEFAULTS, VIRTUAL_DEFAULTS)
    build_dir = S3_BUILD_DIR
    if codec != "pcmu":
        build_dir = S3_BUILD_DIR.with_name(f"{S3_BUILD_DIR.name}-{codec}")
        extra = S3_BUILD_DIR.with_name(f"{build_dir.name}.defaults")
        extra.write_text(f"CONFIG_FLEET_VIRTUAL_CODEC_{codec.upper()}=y\n")
        defaults += (str(extra),)
    return build_firmware(tools.base, build_dir, "esp32s3", defaults)


_builds: dict[str, Firmware] = {}


def s3_build(tools: S3Tools, codec: str = "pcmu") -> Firmware:
    """One build per codec and session; a lock keeps parallel workers from building twice."""
    if codec not in _builds:
        S3_BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(S3_BUILD_DIR) + ".lock"):
            _builds[codec] = build_s3_firmware(tools, codec)
    return _builds[codec]


def meter_readings(log: str) -> list[tuple[float, int]]:
    """The virtual board's meter lines in `log`: (rms in dBFS, peak in Hz), oldest first."""
    return [(float(rms), int(peak)) for rms, peak in METER.findall(log)]


def reading_hears(reading: tuple[float, int], freq_hz: float) -> bool:
    """A level well above silence, its peak at freq_hz."""
    rms, peak = reading
    return rms > -40.0 and abs(peak - freq_hz) <= 2 * BIN_HZ


def meter_hears(log: str, freq_hz: float) -> bool:
    """The virtual board's last meter line hears freq_hz."""
    readings = meter_readings(log)
    return bool(readings) and reading_hears(readings[-1], freq_hz)


def meter_heard(log: str, freq_hz: float) -> bool:
    """Any meter line of `log` (a slice of the serial log: what came after a mark) heard
    freq_hz; for a sound that plays a few seconds and stops."""
    return any(reading_hears(r, freq_hz) for r in meter_readings(log))
