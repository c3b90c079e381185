"""Two `fleet up` in one FLEET_HOME: the second refuses, clearly, and touches nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tests.support import ROOT
from tests.support.brokers import free_port


async def start_up(home: Path, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "FLEET_HOME": str(home), "COLUMNS": "200"}
    env.pop("FLEET_BROKER", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cli.main", "up", "--devices", "1", "--no-audio", "--no-ha"),
        *("--port", str(port)),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_up(proc: asyncio.subprocess.Process) -> None:
    """Until `fleet up` says it is up (its client file is written by then)."""
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while b"up" not in (line := await proc.stdout.readline())[:8]:
            assert line, "fleet up ended before it was up"


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    async with asyncio.timeout(30):
        await proc.wait()


def home_files(home: Path) -> dict[str, bytes | None]:
    """Every file of the home with its bytes; the running stack's own database (it writes
    there whenever a device's birth changes) by name only."""
    return {
        p.name: None if p.name.startswith("controller.db") else p.read_bytes()
        for p in home.iterdir()
        if p.is_file()
    }


async def test_a_second_fleet_up_in_one_home_refuses_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = await start_up(home, free_port())
    try:
        await wait_up(first)
        files = home_files(home)
        assert "client.json" in files
        second = await start_up(home, free_port())
        async with asyncio.timeout(60):
            out, err = await second.communicate()
        assert second.returncode == 4, (out, err)  # Exit.REFUSED
        text = " ".join(err.decode().split())
        assert f"in use by process {first.pid}" in text, text
        assert "Traceback" not in text
        assert home_files(home) == files, "the refused second stack wrote into the home"
        assert first.returncode is None, "the first one still runs"
        # The kernel drops the lock with its holder, even on kill -9: a new start works.
        await stop(first, signal.SIGKILL)
        third = await start_up(home, free_port())
        try:
            await wait_up(third)
        finally:
            await stop(third)
    finally:
        await stop(first)
