"""Build the Mosquitto client-id plugin (broker/mosquitto/clientid.c) once per source.

The plugin is compiled with gcc against Debian's ``mosquitto-dev`` and ``libmosquitto-dev``
headers into a cache folder, named by a hash of its source, so every generated config
reuses one build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from fleet.errors import ConfigError

SOURCE = Path(__file__).with_name("clientid.c")
HEADERS = (Path("/usr/include/mosquitto_broker.h"), Path("/usr/include/mosquitto.h"))
INSTALL_HINT = "apt-get install gcc libc6-dev mosquitto-dev libmosquitto-dev"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "espfleet"


def clientid_plugin() -> Path:
    """The built plugin's path; builds it first when this source has not been built yet."""
    source = SOURCE.read_bytes()
    out = cache_dir() / f"fleet_clientid-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if out.exists():
        return out
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None or not all(header.exists() for header in HEADERS):
        raise ConfigError(
            "the Mosquitto config needs its client-id plugin built, which takes a C compiler"
            f" and Mosquitto's plugin headers: {INSTALL_HINT}"
        )
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".fleet_clientid.", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", tmp, str(SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ConfigError(
                f"cannot build the Mosquitto client-id plugin ({INSTALL_HINT}):\n{result.stderr}"
            )
        os.chmod(tmp, 0o755)  # mosquitto may run as its own user
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
