"""Private files and folders: the platform's home holds secrets (client.json, the database).

They are created with their final mode (0600 files, 0700 folders) rather than chmodded
after being written, so no other user can open them in between.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def default_home() -> Path:
    """`$FLEET_HOME`, else `~/.espfleet`: credentials, database, client file."""
    home = os.environ.get("FLEET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".espfleet"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) 0700; an existing folder loses group and other rights."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_DIR)
    return path


def private_file(path: Path) -> None:
    """Make sure `path` exists with mode 0600 (created so, or narrowed if it was wider)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a 0600 temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates the file with mode 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
