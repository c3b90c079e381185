"""One platform per home folder: `fleet up` (and `fleet demo`) hold a lock on FLEET_HOME.

Two stacks on one home would overwrite each other's credentials and client file and
share one controller database, after which every CLI command points at whichever wrote
last. The lock is an flock on `FLEET_HOME/stack.lock`: the kernel drops it when the
holder exits, even on kill -9, so a stale lock never blocks a new start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fleet.errors import FleetError

LOCK_NAME = "stack.lock"


class HomeBusy(FleetError):
    def __init__(self, home: Path, holder: str) -> None:
        who = f"process {holder}" if holder else "another process"
        super().__init__(
            f"{home} is in use by {who} running `fleet up` or `fleet demo`; stop it first, "
            "or give this one a home of its own (--home or FLEET_HOME)"
        )
        self.home = home
        self.holder = holder


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold `home` for this process; HomeBusy when another process holds it."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise HomeBusy(home, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
