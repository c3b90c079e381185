"""Benchmarks that print figures (never timed asserts). Run each from the repository's root
as a module, `python -m bench.NAME`, so the `fleet` packages and the tests' shared support
(`tests.support`) import as packages; a bench's worker processes run the same way."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs `module` (``bench.NAME``) as a worker process of a bench."""
    return [sys.executable, "-m", module, *args]
