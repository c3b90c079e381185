"""Mosquitto as a child process, configured from the fleet's credentials file.

`MosquittoBroker` writes mosquitto.conf, passwd, acl and the client-id plugin's list
(`broker/mosquitto/config.py`) into a folder of the fleet's home, runs mosquitto as a
child process, and rewrites the files and sends SIGHUP whenever the credentials file
changes (the controller granting groups on `set_groups`, or a file watcher).

`fleet creds` in another process changes the credentials file; the watcher would
follow within WATCH_INTERVAL_S, so a user just added would be refused meanwhile (by the
client-id plugin first, whose list is as stale as the password file). So `fleet creds`
calls `reload_running`: the running broker's record in its folder (`running.json`: its
pid and prefix) lets it rewrite the users' files and send the SIGHUP itself before it
returns. Writers take a lock in that folder, so an older view never overwrites a newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import json
import logging
import os
import resource
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from broker.mosquitto.config import (
    CONF_NAME,
    FD_HEADROOM,
    write_mosquitto_config,
    write_user_files,
)
from fleet.auth import Credential, CredentialStore
from fleet.errors import ConfigError, CredentialsError
from fleet.files import atomic_write
from fleet.protocol.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
WATCH_INTERVAL_S = 0.5  # how often the credentials file is looked at
LOG_NAME = "mosquitto.log"
RUN_RECORD_NAME = "running.json"  # the running broker's pid and prefix, for `fleet creds`
LOCK_NAME = ".reload.lock"
INSTALL_HINT = "install it with `apt-get install mosquitto`, or use `--engine amqtt`"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str | None:
    """The mosquitto executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    for path in MOSQUITTO_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mosquitto")


class MosquittoBroker:
    """mosquitto as a child process, configured from the fleet's credentials file."""

    mqtt5 = True

    def __init__(
        self,
        creds_path: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        ws_port: int | None = None,
        prefix: str = DEFAULT_PREFIX,
        certfile: Path | str | None = None,
        keyfile: Path | str | None = None,
        workdir: Path | None = None,
        max_connections: int | None = None,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ConfigError("TLS needs both certfile and keyfile")
        self.binary = mosquitto_binary()
        if self.binary is None:
            raise ConfigError(f"mosquitto is not installed: {INSTALL_HINT}")
        self.store = CredentialStore(creds_path)
        self.host = host
        self.port = port
        self.ws_port = ws_port
        self.prefix = Topics(prefix).prefix  # validates
        self.certfile = Path(certfile).resolve() if certfile is not None else None
        self.keyfile = Path(keyfile).resolve() if keyfile is not None else None
        self.workdir = Path(workdir or self.store.path.parent / "mosquitto").expanduser()
        self.log_path = self.workdir / LOG_NAME
        # Sockets in all, those that never send CONNECT included (default: as many as the
        # descriptor limit allows, config.py); the child's descriptor limit follows it.
        self.max_connections = max_connections
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._seen: tuple[int, int] | None = None
        self.reloads = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.certfile else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- configuration --------------------------------------------------------------------------
    def write_config(self) -> Path:
        """mosquitto.conf, passwd and acl from the credentials file as it is now."""
        with _reload_lock(self.workdir):
            return self._write_config()

    def _write_config(self) -> Path:
        self._seen = _file_stamp(self.store.path)
        self.store.refresh()
        return write_mosquitto_config(
            self.workdir,
            self.store,
            prefix=self.prefix,
            port=self.port,
            bind=self.host,
            ws_port=self.ws_port,
            # Started as root, mosquitto would switch to its own user, which cannot read
            # the 0600 files this process wrote: it keeps the user it was started as.
            run_as="root" if os.geteuid() == 0 else None,
            certfile=self.certfile,
            keyfile=self.keyfile,
            max_connections=self.max_connections,
        )

    def _max_files(self) -> int | None:
        """The child's descriptor limit: its sockets' bound plus headroom (None: the hard
        limit)."""
        if self.max_connections is None:
            return None
        return self.max_connections + FD_HEADROOM

    def reload(self) -> None:
        """Rewrite the files and have mosquitto read them again (SIGHUP)."""
        with _reload_lock(self.workdir):
            self._write_config()
            if self.running and self._proc is not None:
                self._proc.send_signal(signal.SIGHUP)
                self.reloads += 1

    def set_groups(self, username: str, groups: list[str]) -> Credential:
        """The controller's `set_groups` grant (`GroupAcl`): stored, then in the ACL at once,
        before the device is told to subscribe to its new groups."""
        cred = self.store.set_groups(username, groups)
        self.reload()
        return cred

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.running:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        if self.ws_port == 0:
            self.ws_port = free_port(self.host)
        try:
            conf = self.write_config()
        except OSError as exc:
            raise ConfigError(
                f"cannot write the mosquitto config in {self.workdir}: {exc}"
            ) from exc
        where = f"{self.host}:{self.port}"
        for taken in (self.port, self.ws_port):
            if taken is not None and not _port_free(self.host, taken):
                raise ConfigError(
                    f"port {taken} on {self.host} is in use (a system mosquitto? "
                    "`systemctl disable --now mosquitto`, or pick another --port)"
                )
        log_file = self.log_path.open("wb")  # a fresh log per start
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary or "mosquitto",
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                # Its own session: a Ctrl-C or a SIGTERM to the whole group reaches only us,
                # and we stop it after the controller and devices have said goodbye.
                start_new_session=True,
                preexec_fn=functools.partial(_prepare_child, self._max_files()),
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        # Both listeners: Mosquitto opens the WebSocket one after the TCP one.
        while not all(
            [await _port_open(self.host, p) for p in (self.port, self.ws_port) if p is not None]
        ):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                code = self._proc.returncode
                await self.stop()
                raise ConfigError(
                    f"mosquitto did not start on {where} (exit code {code}): "
                    f"{self.log_tail() or 'no output'} (log: {self.log_path})"
                )
            await asyncio.sleep(0.02)
        record = {"pid": self._proc.pid, "prefix": self.prefix}
        atomic_write(self.workdir / RUN_RECORD_NAME, json.dumps(record).encode())
        self._watcher = asyncio.create_task(self._watch_credentials(), name="mosquitto-creds")

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; safe to call twice."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        proc, self._proc = self._proc, None
        with contextlib.suppress(OSError):
            (self.workdir / RUN_RECORD_NAME).unlink()
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def wait(self) -> None:
        """Return never while mosquitto runs; raise ConfigError when it exits by itself."""
        proc = self._proc
        if proc is None:
            raise ConfigError("mosquitto is not running")
        code = await proc.wait()
        raise ConfigError(f"mosquitto exited with code {code}: {self.log_tail()}")

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await self.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    async def _watch_credentials(self) -> None:
        """`fleet creds` in another terminal changes the file: mosquitto follows within
        WATCH_INTERVAL_S (amqtt re-reads the file by itself)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if _file_stamp(self.store.path) == self._seen:
                continue
            try:
                await asyncio.to_thread(self.reload)
                log.info("credentials changed: mosquitto reloaded its users and ACL")
            except Exception as exc:  # a half-written or broken file: keep the last good one
                log.warning("mosquitto keeps its users: %s", exc)


def reload_running(store: CredentialStore, workdir: Path | None = None) -> bool:
    """Have the Mosquitto that `fleet up` or `fleet broker run` runs from `store`'s file
    read its users now: True when one runs and was told (SIGHUP sent before this
    returns, so a CONNECT sent after is checked against the new users).

    `workdir` defaults to the broker's own default, beside the credentials file.
    """
    workdir = Path(workdir or store.path.parent / "mosquitto").expanduser()
    try:
        record = json.loads((workdir / RUN_RECORD_NAME).read_bytes())
        pid, prefix = int(record["pid"]), str(record["prefix"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # none runs here (or it was killed before it could say goodbye)
    if not _runs_config(pid, workdir / CONF_NAME):
        return False
    try:
        with _reload_lock(workdir):
            store.refresh()
            write_user_files(workdir.resolve(), store, prefix)
            os.kill(pid, signal.SIGHUP)
    except (OSError, CredentialsError) as exc:  # the broker's watcher still follows
        log.warning("could not make mosquitto (pid %d) read its users: %s", pid, exc)
        return False
    return True


def _runs_config(pid: int, conf: Path) -> bool:
    """True when process `pid` is a mosquitto started with `conf` (not a reused pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(conf.resolve()).encode() in args


@contextlib.contextmanager
def _reload_lock(workdir: Path) -> Iterator[None]:
    """Serialises writing the broker's files and signalling it, across processes."""
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(workdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _port_open(host: str, port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


_PR_SET_PDEATHSIG = 1


def _prepare_child(max_files: int | None) -> None:
    """In the child: no orphan holding the port after the parent is killed, and its
    descriptor limit: the bound on its sockets that holds on Mosquitto 2.0.11 (whose
    max_connections miscounts), at `max_files` or the hard limit."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    with contextlib.suppress(Exception):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = (
            hard
            if max_files is None or (hard != resource.RLIM_INFINITY and max_files > hard)
            else max_files
        )
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
