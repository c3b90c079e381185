"""The `fleet` command as a user runs it: a subprocess (`fleet`), or in-process through
typer's CliRunner (the `runner` fixture)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support import ROOT


async def fleet(*args: str, home: Path, timeout: float = 60) -> tuple[int, str, str]:
    """Run `fleet ARGS`; returns (exit code, stdout, stderr)."""
    env = {**os.environ, "FLEET_HOME": str(home), "COLUMNS": "200"}
    env.pop("FLEET_BROKER", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def interruptible() -> None:
    """`preexec_fn` of a child a test stops with SIGINT (Ctrl-C): a shell's background job,
    a CI runner's among them, starts with SIGINT ignored, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def runner() -> CliRunner:
    """typer's CliRunner: `fleet` in this process (re-exported by tests/conftest.py)."""
    return CliRunner()
