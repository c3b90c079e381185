"""`fleet telemetry tail` and `fleet controller --influx-*` as a user runs them (subprocesses)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.protocol import encode
from fleet.protocol.messages import Telemetry, WifiTelemetry
from tests.support import ROOT
from tests.support.brokers import CONTROLLER_USER, BrokerHandle, mqtt_client
from tests.support.cli import fleet
from tests.support.databases import VictoriaMetrics
from tests.support.databases import victoria as victoria  # the fixture
from tests.support.running import operator_url, register_devices, sim_fleet, wait_for


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["telemetry", "tail", "Not_A_Device"], "invalid device id"),
        (["controller", "--influx-url", "http://db:8086", "--influx-version", "1"], "database"),
        (["controller", "--influx-url", "db:8086", "--influx-bucket", "b"], "http(s)://"),
        (["up", "--influx-url", "http://db:1", "--influx-batch-size", "0"], "batch-size"),
    ],
)
async def test_bad_telemetry_arguments_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = await fleet(*args, home=tmp_path)
    assert code == 2, (out, err)
    assert message in (err + out)
    assert "Traceback" not in err


async def test_tail_one_device_as_json(any_broker: BrokerHandle, tmp_path: Path) -> None:
    secrets = register_devices(any_broker, 2)
    url = str(operator_url(any_broker))
    async with sim_fleet(any_broker, secrets, tele_interval_s=0.1):
        code, out, err = await fleet(
            "telemetry",
            "tail",
            "dev-1",
            "--json",
            "--count",
            "3",
            "--broker",
            url,
            "--prefix",
            any_broker.prefix,
            home=tmp_path,
            timeout=30,
        )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert {line["device"] for line in lines} == {"dev-1"}
    for line in lines:
        tele = Telemetry.model_validate(line["tele"])  # the protocol's own shape
        assert tele.wifi.rssi is not None


async def test_tail_shows_readable_lines_and_refuses_bad_payloads(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = amqtt_broker.add_device("esp-raw")
    topic = amqtt_broker.topics.tele("esp-raw")
    good = encode(Telemetry(ts=1.0, wifi=WifiTelemetry(rssi=-67)))
    url = str(operator_url(amqtt_broker))
    tail = asyncio.create_task(
        fleet(
            "telemetry",
            "tail",
            "--count",
            "2",
            "--broker",
            url,
            "--prefix",
            amqtt_broker.prefix,
            home=tmp_path,
            timeout=30,
        )
    )
    async with mqtt_client(amqtt_broker, "esp-raw", secret) as device:
        # Until the tail has seen two good ones: it may subscribe after the first few.
        while not tail.done():
            await device.publish(topic, b'{"ts": "not a number"}', qos=1)
            await device.publish(topic, good, qos=1)
            await asyncio.sleep(0.1)
    code, out, err = await tail
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert all("esp-raw" in line and "rssi -67 dBm" in line for line in lines)
    assert "refused" in err
    assert "ts: Input should be a valid number" in err


@contextlib.asynccontextmanager
async def controller_process(env: dict[str, str], *args: str) -> AsyncIterator[Path]:
    log = Path(env["FLEET_HOME"]) / "controller.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "controller",
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        yield log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
        assert proc.returncode == 0, log.read_text()


async def test_controller_writes_telemetry_configured_by_environment(
    amqtt_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 3)
    env = {
        **os.environ,
        "FLEET_HOME": str(tmp_path),
        "FLEET_BROKER": amqtt_broker.controller_url(),
        "FLEET_PREFIX": amqtt_broker.prefix,
        "FLEET_INFLUX_URL": victoria.url,
        "FLEET_INFLUX_BUCKET": "fleet",
        "FLEET_INFLUX_FLUSH_INTERVAL_MS": "100",
    }
    async with (
        controller_process(env, "--client-id", f"{CONTROLLER_USER}-sub") as log,
        sim_fleet(amqtt_broker, secrets, tele_interval_s=0.1),
    ):
        await wait_for(lambda: "telemetry to InfluxDB 2.x API" in log.read_text(), 20)
        await wait_for(
            lambda: victoria.count_samples('{__name__="device_rssi"}') >= 10, 20, "telemetry"
        )
    series = victoria.export('{__name__="device_rssi"}')
    assert {s["metric"]["device"] for s in series} == {"dev-1", "dev-2", "dev-3"}
