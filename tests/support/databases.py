"""Real time-series databases for tests, from Debian's packages, as subprocesses.

- `VictoriaMetrics` (`victoria-metrics`): accepts influxdb-client's `/api/v2/write`,
  names series `measurement_field`, keeps string fields as 0, and needs
  `/internal/force_flush` before what was written can be read back.
- `Influx1` (`influxdb`, 1.6): `/write` and `/query` (InfluxQL), the API Grafana's
  InfluxQL datasource uses.

Each listens on 127.0.0.1 free ports with a temporary data folder, can be stopped
and started again on the same port with the same data (an outage), and is stopped
by its fixture. Missing binaries skip the test, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.stack import free_port
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import FleetEvent
from fleet.telemetry import InfluxSettings, TelemetryIngest
from tests.support.brokers import BrokerHandle
from tests.support.running import Part

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
VM_BIN = "victoria-metrics"
INFLUXD_BIN = "influxd"


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    message = f"{name} is not installed (apt-get install {package}; scripts/setup.sh --dev does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI needs it")
    pytest.skip(message)


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """A database subprocess that can be stopped and started again on the same port."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        try:
            status, _ = http("GET", f"{self.url}{self.health_path}", timeout=1)
        except OSError:
            return False
        return status in (200, 204)

    health_path = "/health"

    def start(self) -> None:
        if self.proc is not None:
            return
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not come up:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""


class VictoriaMetrics(Server):
    name = "victoria-metrics"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = require_binary(VM_BIN, "victoria-metrics")

    def command(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr={HOST}:{self.port}",
            "-loggerLevel=ERROR",
            "-retentionPeriod=1y",
        ]

    def flush(self) -> None:
        status, body = http("GET", f"{self.url}/internal/force_flush")
        assert status in (200, 204), body

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every stored series matching a series selector, with its raw samples."""
        self.flush()
        query = urllib.parse.urlencode({"match[]": match})
        status, body = http("GET", f"{self.url}/api/v1/export?{query}", timeout=60)
        assert status == 200, body
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def count_samples(self, match: str) -> int:
        return sum(len(series["values"]) for series in self.export(match))


class Influx1(Server):
    name = "influxd"
    health_path = "/ping"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = require_binary(INFLUXD_BIN, "influxdb")
        self.rpc_port = free_port()
        self.config_path = workdir / "influxd.conf"
        data = workdir / "data"
        # Every listener on 127.0.0.1 free ports: the HTTP API and the RPC service
        # (backup/restore, default :8088), which binds even when unused.
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "{HOST}:{self.rpc_port}"
[meta]
  dir = "{data / "meta"}"
[data]
  dir = "{data / "data"}"
  wal-dir = "{data / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "{HOST}:{self.port}"
  log-enabled = false
[logging]
  level = "warn"
"""
        )

    def command(self) -> list[str]:
        return [self.binary, "run", "-config", str(self.config_path)]

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        status, body = http("POST", f"{self.url}/query?{urllib.parse.urlencode(params)}")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')


def fast_settings(url: str, **overrides: object) -> InfluxSettings:
    """Small batches and short waits, so a test sees retries and flushes in seconds."""
    values: dict[str, object] = dict(
        url=url,
        bucket="fleet",
        org="espfleet",
        token="t",
        batch_size=100,
        flush_interval_ms=100,
        retry_interval_ms=100,
        max_retry_delay_ms=400,
        max_retries=1,
        timeout_ms=1000,
        fleet_interval_s=0.5,
    )
    values.update(overrides)
    return InfluxSettings(**values)  # type: ignore[arg-type]


class EventRecorder(ControllerPart):
    """Keeps every fleet event the controller emits."""

    name = "event-recorder"

    def __init__(self) -> None:
        self.events: list[FleetEvent] = []

    async def on_event(self, event: FleetEvent) -> None:
        self.events.append(event)


@contextlib.asynccontextmanager
async def ingesting_controller(
    handle: BrokerHandle,
    db: Path,
    settings: InfluxSettings,
    report_interval_s: float = 10.0,
    recorder: EventRecorder | None = None,
) -> AsyncIterator[tuple[Controller, TelemetryIngest]]:
    ingest = TelemetryIngest(settings, report_interval_s=report_interval_s)
    parts: list[ControllerPart] = [ingest] if recorder is None else [ingest, recorder]
    ctl = Controller(BrokerUrl.parse(handle.controller_url()), db, handle.topics, parts=parts)
    part = Part(ctl.run(), "controller")
    try:
        async with asyncio.timeout(10):
            await ctl.connected.wait()
        yield ctl, ingest
    finally:
        await part.stop()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    with running(server):
        yield server


@pytest.fixture
def influx1(tmp_path: Path) -> Iterator[Influx1]:
    server = Influx1(tmp_path / "influx")
    with running(server):
        yield server
