"""Run a local Janus with a config of our own: only the AudioBridge plugin and the
WebSocket transport, bound to 127.0.0.1 on a free port (`fleet up`, the tests).

The config folder is generated: janus.jcfg (media address, RTP port range, a private
plugins and transports folder holding only what we use), the WebSocket transport's and
the AudioBridge's config (string room ids).

Nobody but the controller may use it: every run gets a fresh API secret (Janus's
`api_secret`, which every request must carry, and the AudioBridge's `admin_key`, which
creating and listing rooms need), the WebSocket API takes only our client's Origin
(`enforce_cors`), and the admin API is off. The secret is in the URL the pool is given
(`JanusProcess.url`, `ws://:SECRET@HOST:PORT`) and in no log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fleet.mixer.address import CLIENT_ORIGIN, MixerAddress
from fleet.mixer.errors import INSTALL_HINT, MixerUnavailable

log = logging.getLogger(__name__)

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
PLUGINS = ("libjanus_audiobridge.so",)
TRANSPORTS = ("libjanus_websockets.so",)
START_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


def janus_binary() -> str | None:
    return shutil.which("janus") or ("/usr/bin/janus" if Path("/usr/bin/janus").exists() else None)


def janus_lib() -> Path | None:
    """Where the Debian package puts plugins and transports (any multiarch triplet)."""
    candidates = [JANUS_LIB, *Path("/usr/lib").glob("*/janus")]
    for path in candidates:
        if (path / "plugins" / PLUGINS[0]).exists():
            return path
    return None


def require_janus() -> tuple[str, Path]:
    binary, lib = janus_binary(), janus_lib()
    if binary is None or lib is None:
        raise MixerUnavailable("local", f"janus is not installed: {INSTALL_HINT}")
    return binary, lib


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def media_address() -> str | None:
    """The first IPv4 address not on loopback (None: none, WebRTC cannot work here)."""
    import ifaddr  # aioice's dependency, so already installed

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    return None


@dataclass
class JanusConfig:
    folder: Path
    ws_port: int = 0  # 0: a free one
    host: str = "127.0.0.1"  # where the WebSocket API listens
    media_ip: str | None = None  # where media goes (None: the first non-loopback address)
    rtp_ports: tuple[int, int] = (20000, 40000)
    name: str = "janus-1"
    debug_level: int = 3
    ice_enforce: str | None = None  # interfaces or addresses ICE may use (None: all)
    # Every request must carry it; a fresh one per run (a config written again keeps it).
    # Plain-RTP members (a bench's load; off: no room of ours admits them anyway).
    rtp_members: bool = False
    api_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    def write(self, lib: Path) -> Path:
        """Write the config folder; returns janus.jcfg."""
        if not self.ws_port:
            self.ws_port = free_port(self.host)
        media_ip = self.media_ip or media_address()
        if media_ip is None:
            raise MixerUnavailable(
                self.name, "no network address but loopback: WebRTC media needs one"
            )
        self.media_ip = media_ip
        folder = self.folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # the configs hold the API secret
        for sub, names in (("plugins", PLUGINS), ("transports", TRANSPORTS)):
            target = folder / sub
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                link = target / name
                if not link.exists():
                    link.symlink_to(lib / sub / name)
        (folder / "events").mkdir(exist_ok=True)
        (folder / "loggers").mkdir(exist_ok=True)
        low, high = self.rtp_ports
        # Enforcing an address makes libnice reach only that address's own subnet (a member
        # routed from elsewhere gets no answer): by default Janus gathers every interface.
        enforce = f'\n    ice_enforce_list = "{self.ice_enforce}"' if self.ice_enforce else ""
        _private_write(
            folder / "janus.jcfg",
            f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{folder}/plugins"
    transports_folder = "{folder}/transports"
    events_folder = "{folder}/events"
    loggers_folder = "{folder}/loggers"
    debug_level = {self.debug_level}
    api_secret = "{self.api_secret}"
    token_auth = false
    admin_secret = "{secrets.token_urlsafe(24)}"
    interface = "{media_ip}"
    session_timeout = 30
    server_name = "{self.name}"
}}
media: {{
    rtp_port_range = "{low}-{high}"
}}
nat: {{
    nice_debug = false{enforce}
}}
events: {{
    broadcast = false
}}
""",
        )
        _private_write(
            folder / "janus.transport.websockets.jcfg",
            f"""general: {{
    json = "compact"
    ws = true
    ws_port = {self.ws_port}
    ws_ip = "{self.host}"
    wss = false
}}
admin: {{
    admin_ws = false
    admin_wss = false
}}
cors: {{
    allow_origin = "{CLIENT_ORIGIN}"
    enforce_cors = true
}}
""",
        )
        # Rooms are made (and all listed) with the key; plain RTP has its own port range.
        rtp = (
            f'\n    local_ip = "{media_ip}"\n    rtp_port_range = "{high + 1}-{high + 2000}"'
            if self.rtp_members
            else ""
        )
        _private_write(
            folder / "janus.plugin.audiobridge.jcfg",
            f"""general: {{
    string_ids = true
    events = false
    admin_key = "{self.api_secret}"
    lock_rtp_forward = true
    lock_play_file = true{rtp}
}}
""",
        )
        return folder / "janus.jcfg"

    @property
    def url(self) -> str:
        """The WebSocket API's URL, without the secret: for logs."""
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def address(self) -> MixerAddress:
        return MixerAddress(self.url, self.api_secret)


def _private_write(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds the API secret)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


@dataclass
class JanusProcess:
    """A running Janus; stop() ends it (terminate, then kill)."""

    config: JanusConfig
    process: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """What to give the pool (`MeetingServer(mixers=[...])`, `--mixer`): the API's URL
        with the run's secret in it, `ws://:SECRET@HOST:PORT`."""
        return self.config.address.text()

    @property
    def api_secret(self) -> str:
        return self.config.api_secret

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """As a crash would: SIGKILL, no goodbye."""
        if self.alive():
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn_janus(config: JanusConfig) -> JanusProcess:
    """Write the config and start Janus; it listens a moment later (wait_listening)."""
    binary, lib = require_janus()
    jcfg = config.write(lib)
    log_path = config.folder / "janus.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-C", str(jcfg), "-F", str(config.folder), "-o"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    return JanusProcess(config, process, log_path)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies (no orphaned Janus)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _listening(running: JanusProcess) -> bool:
    if not running.alive():
        raise MixerUnavailable(running.config.name, f"janus exited at start:\n{running.log_tail()}")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((running.config.host, running.config.ws_port)) == 0


def wait_listening_sync(running: JanusProcess, timeout: float = START_TIMEOUT_S) -> None:
    """As wait_listening, for code with no event loop (a test fixture)."""
    deadline = time.monotonic() + timeout
    while not _listening(running):
        if time.monotonic() > deadline:
            running.stop()
            raise MixerUnavailable(
                running.config.name,
                f"janus did not listen within {timeout:g}s:\n{running.log_tail()}",
            )
        time.sleep(0.05)


async def start_janus(config: JanusConfig, timeout: float = START_TIMEOUT_S) -> JanusProcess:
    """Start Janus and wait until its WebSocket port accepts connections."""
    running = spawn_janus(config)
    try:
        async with asyncio.timeout(timeout):
            while not _listening(running):  # noqa: ASYNC110 (a port, no event to wait on)
                await asyncio.sleep(0.05)
    except TimeoutError:
        running.stop()
        raise MixerUnavailable(
            config.name, f"janus did not listen within {timeout:g}s:\n{running.log_tail()}"
        ) from None
    except BaseException:
        running.stop()
        raise
    return running


@contextlib.asynccontextmanager
async def local_janus(config: JanusConfig) -> AsyncIterator[JanusProcess]:
    running = await start_janus(config)
    try:
        yield running
    finally:
        running.stop()


@contextlib.asynccontextmanager
async def maybe_local_janus(folder: Path, enabled: bool = True) -> AsyncIterator[str | None]:
    """`fleet up`'s mixer: a local Janus when it is installed and this host has an address
    for media; its URL (with its secret), or None (logged with the reason: mesh rooms work
    without it, a mixed join is refused with `mixer_unavailable`)."""
    if not enabled:
        yield None
        return
    try:
        running = await start_janus(JanusConfig(folder))
    except MixerUnavailable as exc:
        log.warning("no local mixer: %s", exc.reason.splitlines()[0])
        yield None
        return
    log.info("local mixer %s at %s (media on %s)", running.config.name, running.config.url,
             running.config.media_ip)  # fmt: skip
    try:
        yield running.url
    finally:
        running.stop()
