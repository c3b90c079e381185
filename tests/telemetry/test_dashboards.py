"""The Grafana dashboards: committed as generated, and every query they hold returns series.

The data comes from the real pipeline (simulated devices and a device speaking
raw MQTT -> broker -> controller -> InfluxDB 1.x's /write); the queries run
against that InfluxDB with Grafana's macros and template variables filled in as
Grafana fills them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from fleet.errors import ConfigError
from fleet.protocol import encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    PeerAudioStats,
    Status,
    SystemTelemetry,
    Telemetry,
    TelemetryMeeting,
    WifiTelemetry,
)
from fleet.telemetry.dashboards import generate
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.databases import EventRecorder, Influx1, fast_settings, ingesting_controller
from tests.support.databases import influx1 as influx1  # the fixture
from tests.support.grafana import DB, fill, queries_of
from tests.support.running import operator, register_devices, sim_fleet, wait_for

DASHBOARDS = ROOT / "dashboards"
AUDIO_DEVICE = "esp-audio"


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    generated = generate()
    committed = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert set(committed) == set(generated), "run: fleet telemetry dashboards --out dashboards"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} drifted; run: fleet telemetry dashboards"


def test_provisioning_points_at_the_dashboards_and_an_influxql_datasource() -> None:
    prov = DASHBOARDS / "provisioning"
    (source,) = yaml.safe_load((prov / "datasources" / "espfleet-influxdb.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "influxdb"
    assert "dbName" in source["jsonData"]  # InfluxQL (a Flux datasource would say version)
    (provider,) = yaml.safe_load((prov / "dashboards" / "espfleet.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    for text in generate().values():
        board = json.loads(text)
        (ds_var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert ds_var["query"] == source["type"]


# --- every query against real data ----------------------------------------------------------


def grafana_regex_escape(value: str) -> str:
    """What Grafana's InfluxDB datasource does to a variable value inside a /regex/."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def tag_values(influx: Influx1, query: str) -> list[str]:
    result = influx.query(query, DB)["results"][0]
    return [value for _key, value in result["series"][0]["values"]] if "series" in result else []


async def publish_audio_device(handle: BrokerHandle, secret: str, rounds: int) -> None:
    """A device in a meeting with two peers, speaking raw MQTT (as the firmware would)."""
    topics = handle.topics
    async with mqtt_client(handle, AUDIO_DEVICE, secret) as device:
        await device.publish(
            topics.status(AUDIO_DEVICE), encode(Status(online=True, fw="1.0")), qos=1, retain=True
        )
        for n in range(rounds):
            tele = Telemetry(
                ts=time.time(),
                wifi=WifiTelemetry(rssi=-60 - n, reconnects=0),
                sys=SystemTelemetry(
                    heap_free=170_000, heap_min=150_000, uptime_s=10.0 + n, cpu_load=0.3
                ),
                meeting=TelemetryMeeting(room="standup", session="s-1", participant="p-audio"),
                audio=[
                    PeerAudioStats(
                        peer=peer,
                        packets_received=100 * n,
                        packets_lost=n,
                        loss=0.01 * n,
                        jitter_ms=3.0 + n,
                        rtt_ms=20.0,
                        level=0.2,
                        bitrate_kbps=32.0,
                    )
                    for peer in ("p-2", "p-3")
                ],
            )
            await device.publish(topics.tele(AUDIO_DEVICE), encode(tele), qos=1)
            await asyncio.sleep(0.05)
        # The graceful goodbye: offline, so fleet operations do not wait for it.
        await device.publish(
            topics.status(AUDIO_DEVICE), encode(Status(online=False)), qos=1, retain=True
        )


async def test_every_dashboard_query_returns_series(
    amqtt_broker: BrokerHandle, influx1: Influx1, tmp_path: Path
) -> None:
    influx1.create_database(DB)
    settings = fast_settings(influx1.url, version=1, database=DB, bucket=None)
    start_ms = int(time.time() * 1000) - 60_000
    secrets = register_devices(amqtt_broker, 3)
    audio_secret = amqtt_broker.add_device(AUDIO_DEVICE)
    async with ingesting_controller(amqtt_broker, tmp_path / "c.db", settings) as (_ctl, ingest):
        async with (
            sim_fleet(amqtt_broker, secrets, tele_interval_s=0.2),
            operator(amqtt_broker) as op,
        ):
            await publish_audio_device(amqtt_broker, audio_secret, rounds=5)
            await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=10))
            await op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=10))
            await op.request(ApiOp.JOIN, ApiRequest(device="nobody", room="standup"))  # an error
            await wait_for(lambda: ingest.stats.messages >= 20, 10, "telemetry")
        await wait_for(ingest.flushed.is_set, 10, "everything written")
        assert (ingest.stats.refused, ingest.stats.dropped) == (0, 0)
    end_ms = int(time.time() * 1000) + 60_000

    devices = tag_values(influx1, 'SHOW TAG VALUES FROM "device" WITH KEY = "device"')
    assert set(devices) == {"dev-1", "dev-2", "dev-3", AUDIO_DEVICE}
    # Each board with one concrete value per variable, and with "All" where a board offers it.
    choices: list[dict[str, str]] = [
        {"device": grafana_regex_escape(AUDIO_DEVICE), "room": "standup", "session": "s-1"},
        {"device": grafana_regex_escape(AUDIO_DEVICE), "room": ".*", "session": ".*"},
    ]
    ran = 0
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for variables in choices:
            for what, raw in queries_of(board):
                query = fill(raw, variables, start_ms, end_ms)
                result = influx1.query(query, DB)["results"][0]
                assert "error" not in result, f"{path.name} {what}: {result['error']}\n{query}"
                assert result.get("series"), f"{path.name} {what} returned no series:\n{query}"
                ran += 1
    assert ran >= 2 * 30  # every panel, variable and annotation of three dashboards, twice


async def test_the_database_refusing_points_is_counted_and_reported(
    amqtt_broker: BrokerHandle, influx1: Influx1, tmp_path: Path
) -> None:
    # No such database: InfluxDB answers 404, which no retry mends.
    settings = fast_settings(influx1.url, version=1, database="missing", bucket=None)
    secrets = register_devices(amqtt_broker, 2)
    recorder = EventRecorder()
    ctl = ingesting_controller(
        amqtt_broker, tmp_path / "c.db", settings, report_interval_s=0.2, recorder=recorder
    )
    async with ctl as (_ctl, ingest), sim_fleet(amqtt_broker, secrets, tele_interval_s=0.1):
        await wait_for(lambda: ingest.stats.refused > 0, 10, "a refused batch")
        await wait_for(
            lambda: any(e.op == "telemetry" for e in recorder.events), 10, "the report event"
        )
    assert ingest.stats.written == 0
    assert ingest.stats.retries == 0  # a 404 is not retried
    (report, *_) = [e for e in recorder.events if e.op == "telemetry"]
    assert (report.kind, report.code) == ("error", "telemetry_refused")
    assert "database not found" in (report.detail or "")


def test_influx1_needs_a_database() -> None:
    with pytest.raises(ConfigError, match="needs a database"):
        fast_settings("http://127.0.0.1:1", version=1, database=None).check()
