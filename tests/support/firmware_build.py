"""The firmware's host build, shared by every test module that needs it, and helpers to run
fleet-host-device (the real C core as a Linux process) against a real broker.

`build` is a session-scoped fixture: firmware/host is configured and built with the
project's own CMake files once per test session (per process), however many modules use
it. A module imports the fixture (`from firmware_build import build`) and marks itself
with `requires_toolchain`. Needs the Debian packages in firmware/host/DEPENDENCIES;
without a C compiler or cmake those modules skip, except in CI (CI=true), where they fail.

Env: FLEET_FIRMWARE_BUILD reuses a build directory (handy while working on the C code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client

HOST_DIR = ROOT / "firmware" / "host"
WAIT_S = 10.0

IN_CI = os.environ.get("CI") == "true"
_TOOLS = [shutil.which(t) for t in ("cmake", "cc", "pkg-config")]
requires_toolchain = pytest.mark.skipif(
    not all(_TOOLS) and not IN_CI,
    reason="needs cmake, a C compiler and pkg-config (see firmware/host/DEPENDENCIES)",
)


@dataclass(frozen=True)
class Build:
    dir: Path

    @property
    def tests(self) -> Path:
        return self.dir / "fleet_core_tests"

    @property
    def tests_asan(self) -> Path:
        return self.dir / "fleet_core_tests_asan"

    @property
    def core_lib(self) -> Path:
        """fleet_core as a device builds it (the IDF component's sources)."""
        return self.dir / "fleet_core" / "libfleet_core.a"

    @property
    def controller_lib(self) -> Path:
        """The controller's side of the codec, which only the tests and fuzzers link."""
        return self.dir / "fleet_core" / "libfleet_core_controller.a"

    @property
    def device(self) -> Path:
        return self.dir / "fleet-host-device"

    @property
    def device_asan(self) -> Path:
        return self.dir / "fleet-host-device-asan"

    @property
    def fuzzer(self) -> Path:
        return self.dir / "fuzz" / "fleet_fuzz"

    @property
    def media_tests(self) -> Path:
        return self.dir / "media_core_tests"

    @property
    def media_tests_asan(self) -> Path:
        return self.dir / "media_core_tests_asan"

    @property
    def media_fuzzer(self) -> Path:
        return self.dir / "fuzz" / "media_fuzz"


def run_tool(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


# One build per process: a fixture imported into several modules gets one FixtureDef per
# module (and so one session-scoped cache each); this cache is what they share.
_builds: dict[str, Build] = {}


def build_firmware(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Configure and build firmware/host, once per process."""
    if "host" not in _builds:
        out = Path(os.environ.get("FLEET_FIRMWARE_BUILD") or tmp_path_factory.mktemp("fw-build"))
        steps = (
            ["cmake", "-S", str(HOST_DIR), "-B", str(out), "-DCMAKE_BUILD_TYPE=Debug"],
            ["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2)],
        )
        for cmd in steps:
            proc = run_tool(cmd, timeout=600)
            assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
        _builds["host"] = Build(out)
    return _builds["host"]


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """firmware/host, configured and built once for the whole session."""
    return build_firmware(tmp_path_factory)


RV32_TOOLS = ("riscv64-unknown-elf-gcc", "qemu-system-riscv32")
QEMU_RV32 = [
    "qemu-system-riscv32",
    "-M",
    "virt",
    "-bios",
    "none",
    "-nographic",
    "-monitor",
    "none",
    "-semihosting-config",
    "enable=on,target=native",
    "-kernel",
]


def build_rv32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unit tests built for rv32imc (firmware/host/rv32_tests.sh), once per process."""
    if "rv32" not in _builds:
        missing = [t for t in RV32_TOOLS if shutil.which(t) is None]
        if missing:
            if IN_CI:
                pytest.fail(f"missing {missing} (see firmware/host/DEPENDENCIES)")
            pytest.skip(f"missing {missing} (see firmware/host/DEPENDENCIES)")
        out = tmp_path_factory.mktemp("fw-rv32")
        env = {**os.environ, **_cjson_env()}
        proc = run_tool(["bash", str(HOST_DIR / "rv32_tests.sh"), str(out)], timeout=600, env=env)
        assert proc.returncode == 0, f"rv32 build failed:\n{proc.stdout}\n{proc.stderr}"
        _builds["rv32"] = Build(out)
    return _builds["rv32"].dir


def _cjson_env() -> dict[str, str]:
    """CJSON_SRC for fleet_core's rv32 tests: the caller's, else the cached copy that
    fetch_cjson.sh keeps (fetched through pip on first use, as scripts/setup.sh --dev does).
    Empty when it cannot be had, so only the fleet_core ELF is missing (and that test skips,
    or fails in CI)."""
    if os.environ.get("CJSON_SRC"):
        return {}
    proc = run_tool(
        ["bash", str(HOST_DIR / "fetch_cjson.sh")],
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if proc.returncode != 0:
        _cjson_failure.append(proc.stderr.strip()[-2000:])
        return {}
    return {"CJSON_SRC": proc.stdout.strip()}


_cjson_failure: list[str] = []


def cjson_failure() -> str:
    """Why the rv32 fleet_core tests could not be built (fetch_cjson.sh's error), if so."""
    return "\n".join(_cjson_failure)


# --- a controller-side view of the wire ---------------------------------------------------------


class Inbox:
    """Every message the controller-side client receives, with waiting helpers."""

    def __init__(
        self,
        client: aiomqtt.Client,
        respond: Callable[[aiomqtt.Message], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._respond = respond  # answers some messages, as a server would
        self._event = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._event.set()
            if self._respond is not None:
                await self._respond(message)

    async def wait(
        self, topic: str, pred: Callable[[bytes], bool] = lambda _: True, *, start: int = 0
    ) -> bytes:
        """The first payload on `topic` (from index `start`) for which pred holds."""
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            for m in self.messages[start:]:
                if m.topic.value == topic and pred(bytes(m.payload)):
                    return bytes(m.payload)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                seen = [(m.topic.value, bytes(m.payload)[:200]) for m in self.messages]
                raise AssertionError(f"nothing matching on {topic} within {WAIT_S}s; saw {seen}")
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    def on(self, topic: str, start: int = 0) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages[start:] if m.topic.value == topic]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def controller_inbox(handle: BrokerHandle, topics: list[str]) -> AsyncIterator[Inbox]:
    user = f"fw-ctl-{uuid.uuid4().hex[:8]}"
    secret = handle.add_user(user, "controller")
    async with mqtt_client(handle, user, secret) as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        inbox = Inbox(client)
        try:
            yield inbox
        finally:
            await inbox.close()


# --- fleet-host-device as a subprocess -----------------------------------------------------------


class Device:
    """fleet-host-device (ASan build) as a subprocess, its log in a file."""

    def __init__(self, exe: Path, args: list[str], log: Path) -> None:
        self.exe, self.args, self.log = exe, args, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"}
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.exe),
                *self.args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), WAIT_S)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()


# --- the audio host device's speaker -----------------------------------------------------------

HOST_TONE_HZ = 1850.0  # far from the simulated devices' 400 and 575 Hz and their harmonics
RATE = 48_000  # the speaker's WAV


def speaker_tail(path: Path, seconds: float = 1.0) -> np.ndarray:
    """The last seconds the host device's speaker played (its WAV grows as it plays)."""
    data = path.read_bytes()[44:] if path.exists() else b""
    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    return samples[-int(RATE * seconds) :]
