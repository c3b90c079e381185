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

import contextlib
import functools
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from filelock import FileLock

from fleet.auth import CredentialStore
from fleet.client import FleetClient
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, AudioProfile
from fleet.device.bulk import BulkFleet
from fleet.device.sim import SimFleet
from fleet.device.tones import tone_for
from fleet.media.config import MediaConfig
from tests.support.brokers import amqtt_handle
from tests.support.firmware_qemu import (
    QEMU_DEFAULTS,
    EmulatorCrashed,
    Firmware,
    Qemu,
    Tools,
    build_firmware,
    factory_image,
    find_tools,
    qemu_has_machine,
)
from tests.support.running import controller, operator, sim_fleet, wait_for

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


@dataclass
class S3Rig:
    """The S3 booted on a fresh broker with a real controller: `op` is an operator,
    `fleet` the simulated device (its tone `sim_tone`) when one was asked for."""

    ctl: Controller
    op: FleetClient
    qemu: Qemu
    fleet: SimFleet | BulkFleet | None
    sim_tone: float


@contextlib.asynccontextmanager
async def s3_rig(
    tools: S3Tools,
    tmp_path: Path,
    dev: str,
    *,
    codec: str = "pcmu",
    parts: list[ControllerPart] | None = None,
    sim: str | None = None,
) -> AsyncIterator[S3Rig]:
    """Build (cached) and flash the S3 image as device `dev`, start broker, controller (with
    `parts`), the simulated device `sim` if named (codec `codec`) and an operator, boot QEMU
    and wait for the S3's birth. On the way out: no crash in the serial log (its tail is
    printed when the test failed), QEMU killed, broker stopped."""
    s3_firmware = s3_build(tools, codec)
    handle = amqtt_handle(CredentialStore(tmp_path / "home" / "credentials.json"), PREFIX)
    await handle.start()
    qemu: Qemu | None = None
    try:
        flash = tmp_path / f"{dev}.flash.bin"
        factory_image(s3_firmware, flash, dev, handle.port, handle.store.path)
        secrets = {sim: handle.add_device(sim)} if sim else {}
        handle.backend.sync()  # `fleet image` issued the device's credential
        sim_tone = tone_for(0)

        def driver(device_id: str) -> AudioMeetingDriver:
            media = MediaConfig(codecs=(codec,))
            return AudioMeetingDriver(AudioProfile(media=media, tone_hz=sim_tone))

        async with contextlib.AsyncExitStack() as stack:
            ctl = await stack.enter_async_context(
                controller(handle, tmp_path / "ctl.db", parts=parts)
            )
            fleet = (
                await stack.enter_async_context(sim_fleet(handle, secrets, driver_factory=driver))
                if sim
                else None
            )
            op = await stack.enter_async_context(operator(handle))
            qemu = Qemu(tools.base, flash, tmp_path / f"{dev}.serial", "esp32s3", tools.qemu)
            await qemu.start()
            await wait_for(
                lambda: (r := ctl.registry.devices.get(dev)) is not None and r.online,
                timeout=WAIT_S,
                what="the S3's birth",
            )
            yield S3Rig(ctl, op, qemu, fleet, sim_tone)
            log = qemu.text()
            assert not any(crash in log for crash in CRASH_MARKS), log[-6000:]
    except BaseException as exc:
        raise_for_crash(qemu, exc)
        raise
    finally:
        if qemu is not None:
            await qemu.kill()
        await handle.stop()
