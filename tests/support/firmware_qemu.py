"""The real firmware, built with ESP-IDF for the ESP32-C3 and booted in Espressif's QEMU.

The firmware_qemu tier (tests/firmware/test_qemu.py) and bench/firmware_qemu.py use this:
  - `find_tools()`: an ESP-IDF and Espressif's QEMU, or one line saying what is missing;
  - `build_firmware()`: firmware/scripts/idf_build.sh for esp32c3 with the QEMU network
    (sdkconfig.defaults.qemu), incremental in a cached build directory, and a second image
    that differs only in its version string (for OTA);
  - `factory_image()`: one device's image by `fleet image` (the build plus its NVS), padded
    to the flash size QEMU wants;
  - `Qemu`: one emulated device on that image (its flash file keeps NVS writes and OTA
    slots across restarts, as a board's flash does), its serial log in a file;
  - `SntpResponder` and `ImageServer`: what the device reaches on the host as 10.0.2.2.

Where things are found (environment variables):
  IDF_PATH          an ESP-IDF whose tools are on PATH (export.sh done); else
  FLEET_IDF_ENV     a script to source for it (default ~/.cache/espfleet/esp-sdk/env.sh)
  FLEET_QEMU        Espressif's qemu-system-riscv32 (default: of those with the esp32c3
                    machine, on PATH, in ~/.cache/espfleet/esp-sdk/qemu92-install/bin/ or
                    .../qemu-install/bin/, the first of version 9 or later, else the first)
  FLEET_QEMU_BUILD  the cached build directory (default ~/.cache/espfleet/fw-build/esp32c3-qemu)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
SDK = Path.home() / ".cache" / "espfleet" / "esp-sdk"
BUILD_DIR = Path(
    os.environ.get(
        "FLEET_QEMU_BUILD", str(Path.home() / ".cache" / "espfleet" / "fw-build" / "esp32c3-qemu")
    )
)
FLASH_SIZE = 4 * 1024 * 1024  # sdkconfig.defaults: CONFIG_ESPTOOLPY_FLASHSIZE_4MB
HOST_FROM_GUEST = "10.0.2.2"  # QEMU's user network: the host's 127.0.0.1
GUEST_IP = "10.0.2.15"
OTA_VERSION_SUFFIX = "-ota"
QEMU_DEFAULTS = "sdkconfig.defaults.qemu"
BUILD_TIMEOUT_S = 3600  # a cold build on 2 busy cores


@dataclass(frozen=True)
class Tools:
    env: dict[str, str] = field(repr=False)  # for idf_build.sh
    idf_path: Path
    qemu: Path


def qemu_has_machine(qemu: Path, machine: str) -> bool:
    try:
        out = subprocess.run(
            [str(qemu), "-machine", "help"], capture_output=True, text=True, timeout=30
        ).stdout
    except OSError:
        return False
    return re.search(rf"^{machine}\s", out, re.MULTILINE) is not None


# Espressif's QEMU before 9 (its esp32c3 interrupt matrix) turns a peripheral's level into
# one pulse, which is lost when it comes while the CPU has interrupts masked: the Ethernet
# MAC's line then stays high and is never delivered again, and the device goes deaf.
FIRST_GOOD_QEMU = (9, 0)


def _qemu_version(qemu: Path) -> tuple[int, int]:
    try:
        out = subprocess.run(
            [str(qemu), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except OSError:
        return (0, 0)
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@functools.cache
def find_tools() -> Tools | str:
    """The tools, or one line saying what is missing."""
    env = dict(os.environ)
    if env.get("IDF_PATH") and shutil.which("idf.py"):
        idf_path = Path(env["IDF_PATH"])
    else:
        env_sh = Path(os.environ.get("FLEET_IDF_ENV", str(SDK / "env.sh")))
        if not env_sh.is_file():
            return "no ESP-IDF: set IDF_PATH (after export.sh) or FLEET_IDF_ENV=path/to/env.sh"
        out = subprocess.run(
            ["bash", "-c", '. "$1" > /dev/null && printf %s "$IDF_PATH"', "-", str(env_sh)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        if not out:
            return f"{env_sh} did not set IDF_PATH"
        idf_path = Path(out)
        env["FLEET_IDF_ENV"] = str(env_sh)
        env.pop("IDF_PATH", None)
    qemu_env = os.environ.get("FLEET_QEMU")
    candidates = [Path(qemu_env)] if qemu_env else []
    if not qemu_env:
        on_path = shutil.which("qemu-system-riscv32")
        candidates += [Path(on_path)] if on_path else []
        candidates.append(SDK / "qemu92-install" / "bin" / "qemu-system-riscv32")
        candidates.append(SDK / "qemu-install" / "bin" / "qemu-system-riscv32")
    usable = [q for q in candidates if q.is_file() and qemu_has_machine(q, "esp32c3")]
    good = [q for q in usable if _qemu_version(q) >= FIRST_GOOD_QEMU]
    qemu = (good or usable or [None])[0]
    if qemu is None:
        return (
            "no Espressif QEMU with an esp32c3 machine: set FLEET_QEMU=path/to/qemu-system-riscv32"
        )
    return Tools(env, idf_path, qemu)


# --- the build -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Firmware:
    build_dir: Path
    app: Path  # the app image of the build (what `fleet image` lays into ota_0)
    version: str
    ota_app: Path  # the same app, version + OTA_VERSION_SUFFIX
    ota_version: str
    build_s: float


def build_firmware(
    tools: Tools,
    build_dir: Path = BUILD_DIR,
    target: str = "esp32c3",
    defaults: tuple[str, ...] = (QEMU_DEFAULTS,),
) -> Firmware:
    """idf_build.sh (incremental), then the OTA variant of its app image.

    The build directory is shared (by test workers, benches, other checkouts; the callers
    hold its file lock while it builds): what flashing needs is copied out, so a later build
    in it cannot change an image under a running test."""
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(FIRMWARE / "scripts" / "idf_build.sh"), str(build_dir), target, *defaults],
        env=tools.env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"firmware build failed:\n{proc.stderr[-4000:]}")
    built = Path(proc.stdout.strip().splitlines()[-1])
    images = Path(tempfile.mkdtemp(prefix="fleet-fw-"))
    flasher = json.loads((build_dir / "flasher_args.json").read_text())
    for rel in ["flasher_args.json", *flasher["flash_files"].values()]:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / rel, images / rel)
    app = images / built.relative_to(build_dir)
    version = app_version(app.read_bytes())
    ota_version = version + OTA_VERSION_SUFFIX
    ota_app = images / f"espfleet-{ota_version}.bin"
    ota_app.write_bytes(with_version(app.read_bytes(), ota_version))
    return Firmware(images, app, version, ota_app, ota_version, time.monotonic() - t0)


# An ESP-IDF app image: a 24-byte header, then segments (8-byte header each); the first
# segment starts with esp_app_desc_t (magic, secure_version, 8 reserved bytes, version[32]);
# after the segments a checksum byte (XOR of all segment data, seeded 0xEF) ends a 16-byte
# line, and a SHA-256 of everything before follows when the header says so (byte 23).
_APP_DESC_MAGIC = 0xABCD5432
_DESC_AT = 24 + 8
_VERSION_AT = _DESC_AT + 16


def app_version(image: bytes) -> str:
    (magic,) = struct.unpack_from("<I", image, _DESC_AT)
    if magic != _APP_DESC_MAGIC:
        raise ValueError("not an ESP-IDF app image (no esp_app_desc_t in its first segment)")
    return image[_VERSION_AT : _VERSION_AT + 32].split(b"\0", 1)[0].decode()


def with_version(image: bytes, version: str) -> bytes:
    """The same image with another version string; checksum and SHA-256 made right again."""
    app_version(image)  # checks the layout
    if image[23] != 1:
        raise ValueError("the image has no appended SHA-256")
    raw = version.encode()
    if len(raw) > 31:
        raise ValueError("a version holds at most 31 bytes")
    out = bytearray(image[:-32])
    old = out[_VERSION_AT : _VERSION_AT + 32]
    new = raw.ljust(32, b"\0")
    out[_VERSION_AT : _VERSION_AT + 32] = new
    delta = 0
    for a, b in zip(old, new, strict=True):
        delta ^= a ^ b
    out[-1] ^= delta  # the checksum byte ends the data before the hash
    return bytes(out) + hashlib.sha256(out).digest()


def factory_image(
    fw: Firmware,
    out: Path,
    device_id: str,
    broker_port: int,
    creds: Path,
    groups: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> None:
    """`fleet image` for one device on the QEMU network, padded to the whole flash."""
    cmd = [sys.executable, "-m", "cli.main", "image", "--device-id", device_id]
    cmd += ["--wifi-ssid", "qemu", "--wifi-password", ""]
    cmd += ["--broker", f"mqtt://{HOST_FROM_GUEST}:{broker_port}"]
    cmd += ["--ntp", HOST_FROM_GUEST, "--build-dir", str(fw.build_dir), "--out", str(out)]
    cmd += ["--creds", str(creds), "--replace"]
    for g in groups:
        cmd += ["--group", g]
    run_env = dict(env or os.environ)
    run_env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=run_env)
    if proc.returncode != 0:
        raise RuntimeError(f"fleet image failed: {proc.stdout}{proc.stderr}")
    with out.open("r+b") as f:  # QEMU takes a flash file of the chip's flash size
        f.seek(0, os.SEEK_END)
        f.write(b"\xff" * (FLASH_SIZE - f.tell()))


# --- QEMU --------------------------------------------------------------------------------------


def efuse_blob(idf_path: Path, target: str = "esp32c3") -> bytes:
    """The eFuse contents `idf.py qemu` gives the target (esp32c3, esp32s3: chip revision v0.3)."""
    src = (idf_path / "tools" / "idf_py_actions" / "qemu_ext.py").read_text()
    block = src[src.index(f"'{target}': QemuTarget(") :]
    block = block[: block.index("')),")]
    return bytes.fromhex("".join(re.findall(r"'([0-9a-f]+)'", block)))


class EmulatorCrashed(Exception):
    """QEMU itself died (its host process aborted) while a test waited on the guest: a fault
    of the emulator's, not of the firmware, which the guest cannot cause. The S3 tier's
    tests run again on it (pytest-rerunfailures, `only_rerun`), and only on it."""


class Qemu:
    """One emulated ESP32-C3 (or ESP32-S3: target, qemu) on a flash file: start, kill, again."""

    def __init__(
        self,
        tools: Tools,
        flash: Path,
        log: Path,
        target: str = "esp32c3",
        qemu: Path | None = None,
    ) -> None:
        self.tools = tools
        self.flash = flash
        self.log_path = log
        self.efuse = flash.with_suffix(".efuse.bin")
        self.target = target
        self.qemu = qemu or tools.qemu  # qemu-system-xtensa for the esp32s3
        self.efuse.write_bytes(efuse_blob(tools.idf_path, target))
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._logs: list[Path] = []

    async def start(self) -> None:
        assert self.proc is None, "already running"
        log = self.log_path.with_name(f"{self.log_path.stem}.{len(self._logs)}.log")
        self._logs.append(log)
        t = self.target
        args = [str(self.qemu), "-nographic", "-machine", t]
        args += ["-drive", f"file={self.flash},if=mtd,format=raw"]
        args += ["-drive", f"file={self.efuse},if=none,format=raw,id=efuse"]
        args += ["-global", f"driver=nvram.{t}.efuse,property=drive,value=efuse"]
        args += ["-global", f"driver=timer.{t}.timg,property=wdt_disable,value=true"]
        args += ["-nic", "user,model=open_eth"]
        with log.open("wb") as out:
            self.started_at = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    async def kill(self) -> None:
        """Power off: no goodbye, the broker publishes the will."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def crashed(self) -> str | None:
        """How QEMU ended by itself on a signal (glibc's heap checks abort it), if it did:
        its exit and the last line it wrote; None while it runs or after `kill`."""
        if self.proc is None or self.proc.returncode is None or self.proc.returncode >= 0:
            return None
        lines = self.text().strip().splitlines()
        return f"exit {self.proc.returncode}, last line {lines[-1] if lines else ''!r}"

    def text(self) -> str:
        """The serial output of every run so far, ANSI colours removed."""
        raw = b"".join(p.read_bytes() for p in self._logs if p.exists())
        return re.sub(r"\x1b\[[0-9;]*m", "", raw.decode(errors="replace")).replace("\r", "")


# --- what the device reaches on the host -------------------------------------------------------

NTP_EPOCH_OFFSET = 2208988800  # 1900 -> 1970


class SntpResponder:
    """An SNTP server on 127.0.0.1:123 (the guest's 10.0.2.2:123) answering from this clock.

    LWIP's SNTP client uses the standard port only. If another process already serves it
    (a second test worker, a system NTP daemon), that one answers instead.
    """

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.served = 0
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", 123))
        except OSError:
            sock.close()
            return False
        self.sock = sock
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)
        self._thread.start()
        return True

    def _serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data, addr = self.sock.recvfrom(512)
            except OSError:
                return
            if len(data) < 48:
                continue
            now = time.time() + NTP_EPOCH_OFFSET
            secs, frac = int(now), int((now % 1) * 2**32)
            # LI 0, version of the request, mode 4 (server); stratum 1; the client's transmit
            # time as our originate time; receive and transmit = now.
            version = (data[0] >> 3) & 7
            reply = struct.pack(
                "!BBbb11I",
                (version << 3) | 4,
                1,
                6,
                -20,
                0,
                0,
                int.from_bytes(b"LOCL", "big"),
                secs,
                frac,
                *struct.unpack("!II", data[40:48]),
                secs,
                frac,
                secs,
                frac,
            )
            self.sock.sendto(reply, addr)
            self.served += 1

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class ImageServer:
    """Plain HTTP on 127.0.0.1 serving named byte strings (the OTA images)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        """The file's URL as the device sees it."""
        return f"http://{HOST_FROM_GUEST}:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def sntp() -> Iterator[SntpResponder]:
    responder = SntpResponder()
    responder.start()
    try:
        yield responder
    finally:
        responder.stop()
