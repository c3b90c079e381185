"""Telemetry ingest against real servers: brokers (amqtt, Mosquitto) and VictoriaMetrics.

Every message the simulated devices send is counted at the source, in the
controller and in the database; a database outage is ridden out; an overflow
is counted and announced; bad payloads are refused without losing the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt

from cli.stack import free_port
from fleet.auth import Role
from fleet.device.sim import SimFleet
from fleet.mqtt import BrokerUrl, payload_bytes
from fleet.protocol import decode, encode
from fleet.protocol.messages import (
    FleetEvent,
    PeerAudioStats,
    SystemTelemetry,
    Telemetry,
    TelemetryMeeting,
)
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.databases import Influx1, VictoriaMetrics, fast_settings, ingesting_controller
from tests.support.databases import influx1 as influx1  # the fixture
from tests.support.databases import victoria as victoria  # the fixture
from tests.support.packets import mqtt_connect, mqtt_packet, mqtt_str
from tests.support.running import Part, register_devices, wait_for

TELE_INTERVAL_S = 0.1


@contextlib.asynccontextmanager
async def counted_fleet(
    handle: BrokerHandle, secrets: dict[str, str], groups: list[str]
) -> AsyncIterator[dict[str, int]]:
    """Simulated devices that count each telemetry message they publish (one per telemetry())."""
    base = BrokerUrl.parse(f"mqtt://{handle.host}:{handle.port}")
    fleet = SimFleet(base, secrets, handle.topics, groups, tele_interval_s=TELE_INTERVAL_S)
    sent: dict[str, int] = {dev.id: 0 for dev in fleet.devices}
    for dev in fleet.devices:

        def counted(
            dev_id: str = dev.id, make: Callable[[], Telemetry] = dev.telemetry
        ) -> Telemetry:
            sent[dev_id] += 1
            return make()

        dev.telemetry = counted  # type: ignore[method-assign]
    part = Part(fleet.run(), "sim-fleet")
    try:
        await fleet.wait_connected(30)
        yield sent
    finally:
        await part.stop()


def per_device_samples(vm: VictoriaMetrics) -> dict[str, int]:
    counts: dict[str, int] = {}
    for series in vm.export('{__name__="device_uptime_s"}'):
        device = series["metric"]["device"]
        counts[device] = counts.get(device, 0) + len(series["values"])
    return counts


async def stored_as_sent(vm: VictoriaMetrics, sent: dict[str, int]) -> None:
    """VictoriaMetrics makes rows searchable a moment after force_flush: poll, then compare."""
    try:
        await wait_for(lambda: per_device_samples(vm) == sent, 15, "the database to hold all")
    except TimeoutError:
        assert per_device_samples(vm) == sent  # shows the difference
        raise


async def run_fleet_for(
    handle: BrokerHandle,
    secrets: dict[str, str],
    seconds: float,
    during: object = None,
    groups: list[str] | None = None,
) -> dict[str, int]:
    async with counted_fleet(handle, secrets, groups or []) as sent:
        await asyncio.sleep(seconds)
        if during is not None:
            await during  # type: ignore[misc]
    return sent


async def test_every_message_arrives_counted_in_and_out(
    any_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 10, groups=["hall"])
    settings = fast_settings(victoria.url)
    async with ingesting_controller(any_broker, tmp_path / "c.db", settings) as (_ctl, ingest):
        sent = await run_fleet_for(any_broker, secrets, 2.0, groups=["hall"])
        total = sum(sent.values())
        assert total >= 10 * 10  # 10 devices, ~20 messages each
        await wait_for(lambda: ingest.stats.messages == total, 10, "every message ingested")
        await wait_for(ingest.flushed.is_set, 10, "everything written")
        stats = ingest.stats
        assert (stats.rejected, stats.dropped, stats.refused) == (0, 0, 0)
        await stored_as_sent(victoria, sent)
        # Tags: device and groups from the registry (the devices' birth messages).
        rssi = victoria.export('{__name__="device_rssi",device="dev-1"}')
        assert [series["metric"].get("groups") for series in rssi] == ["hall"]
        # The fleet's counts and the controller's events arrive too.
        await wait_for(lambda: victoria.count_samples('{__name__="fleet_online"}') > 0, 5)
        # The devices' goodbyes (offline) come after their last telemetry: poll.
        await wait_for(
            lambda: (
                {s["metric"]["kind"] for s in victoria.export('{__name__="fleet_event_count"}')}
                >= {"online", "offline"}
            ),
            10,
            "online and offline events",
        )


async def test_a_database_outage_is_ridden_out(
    amqtt_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 5)
    settings = fast_settings(victoria.url)

    async with ingesting_controller(amqtt_broker, tmp_path / "c.db", settings) as (_ctl, ingest):

        async def outage() -> None:
            await asyncio.to_thread(victoria.stop)
            # Devices keep sending while the database is down; batches fail and come back.
            await wait_for(lambda: ingest.stats.requeued > 0, 15, "a failed batch requeued")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(victoria.start)
            await asyncio.sleep(0.5)

        sent = await run_fleet_for(amqtt_broker, secrets, 0.5, during=outage())
        total = sum(sent.values())
        await wait_for(lambda: ingest.stats.messages == total, 10, "every message ingested")
        await wait_for(ingest.flushed.is_set, 20, "the backlog written")
        assert ingest.stats.dropped == 0
        assert ingest.stats.retries > 0
        await stored_as_sent(victoria, sent)


async def next_event(client: aiomqtt.Client, op: str, timeout: float = 10.0) -> FleetEvent:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            event = decode(FleetEvent, payload_bytes(message))
            if event.op == op:
                return event
    raise AssertionError("no event")


async def test_overflow_is_counted_and_announced(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 5)
    # Nothing listens there: every write fails, and the small buffer overflows.
    dead = fast_settings(f"http://127.0.0.1:{free_port()}", buffer_size=20)
    watcher_secret = amqtt_broker.add_user("watcher", Role.CONTROLLER)
    async with mqtt_client(amqtt_broker, "watcher", watcher_secret) as watcher:
        await watcher.subscribe(amqtt_broker.topics.events, qos=1)
        async with ingesting_controller(
            amqtt_broker, tmp_path / "c.db", dead, report_interval_s=0.3
        ) as (_ctl, ingest):
            sent = await run_fleet_for(amqtt_broker, secrets, 1.0)
            await wait_for(lambda: ingest.stats.messages == sum(sent.values()), 10, "ingested")
            event = await next_event(watcher, "telemetry")
            stats = ingest.stats
            assert stats.written == 0
            assert stats.dropped > 0
            # Every point is accounted for: dropped, waiting, or with the writer.
            assert stats.points == stats.dropped + stats.buffered + stats.inflight
            assert stats.buffered <= 20
    assert (event.kind, event.code, event.ok) == ("error", "telemetry_dropped", False)
    assert "points dropped (buffer of 20 full)" in (event.detail or "")


async def test_bad_telemetry_is_refused_and_loses_nothing_else(
    amqtt_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    secret = amqtt_broker.add_device("esp-raw")
    settings = fast_settings(victoria.url)
    topic = amqtt_broker.topics.tele("esp-raw")
    good = Telemetry(
        ts=1.0,  # an unset clock: stamped on arrival
        sys=SystemTelemetry(uptime_s=5.0),
        meeting=TelemetryMeeting(room="standup", session="s-1", participant="p-1"),
        audio=[PeerAudioStats(peer="p-2", loss=0.01, jitter_ms=3.0, rtt_ms=20.0, level=0.2)],
    )
    bad = [
        b"not json",
        b'{"ts": "yesterday"}',
        b'{"ts": 1, "sys": {"cpu_load": 7}}',  # outside 0..1
        b'{"ts": 1, "audio": "p-2"}',
        # (an oversize payload never gets here: the broker drops it,
        # tests/security/test_broker_attacks.py)
        b"",
    ]
    async with (
        ingesting_controller(amqtt_broker, tmp_path / "c.db", settings) as (ctl, ingest),
        mqtt_client(amqtt_broker, "esp-raw", secret) as device,
    ):
        for payload in [encode(good), *bad, encode(good)]:
            await device.publish(topic, payload, qos=1)
        await wait_for(
            lambda: ingest.stats.messages + ingest.stats.rejected == 2 + len(bad), 10, "all seen"
        )
        assert (ingest.stats.messages, ingest.stats.rejected) == (2, len(bad))
        assert ctl.stats["rejected"] >= len(bad)
        await wait_for(ingest.flushed.is_set, 10, "written")
    await wait_for(lambda: victoria.count_samples('{__name__="audio_peer_loss"}') == 2, 15)
    loss = victoria.export('{__name__="audio_peer_loss"}')
    assert len(loss) == 1
    assert len(loss[0]["values"]) == 2
    assert loss[0]["metric"] == {
        "__name__": "audio_peer_loss",
        "device": "esp-raw",
        "room": "standup",
        "session": "s-1",
        "participant": "p-1",
        "peer": "p-2",
    }


async def test_influx1_outage_is_ridden_out(
    amqtt_broker: BrokerHandle, influx1: Influx1, tmp_path: Path
) -> None:
    """The same through InfluxDB 1.x's /write (the writer of our own)."""
    influx1.create_database("fleet")
    secrets = register_devices(amqtt_broker, 3)
    settings = fast_settings(influx1.url, version=1, database="fleet", bucket=None)

    async with ingesting_controller(amqtt_broker, tmp_path / "c.db", settings) as (_ctl, ingest):

        async def outage() -> None:
            await asyncio.to_thread(influx1.stop)
            await wait_for(lambda: ingest.stats.requeued > 0, 15, "a failed batch requeued")
            await asyncio.sleep(0.5)
            await asyncio.to_thread(influx1.start)

        sent = await run_fleet_for(amqtt_broker, secrets, 0.5, during=outage())
        await wait_for(lambda: ingest.stats.messages == sum(sent.values()), 10, "ingested")
        await wait_for(ingest.flushed.is_set, 20, "the backlog written")
        assert ingest.stats.dropped == 0
    result = influx1.query('SELECT count("uptime_s") FROM "device" GROUP BY "device"', "fleet")
    stored = {s["tags"]["device"]: s["values"][0][1] for s in result["results"][0]["series"]}
    assert stored == sent


async def test_a_burst_then_a_disconnect_loses_nothing(
    any_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """Telemetry sent right before a clean DISCONNECT still arrives (MQTT 3.1.1 4.6).

    The burst and the DISCONNECT leave in one write, so the broker reads the
    DISCONNECT with the burst still to deliver, and the controller takes 2,000
    messages at once.
    """
    secret = any_broker.add_device("esp-burst")
    topic = any_broker.topics.tele("esp-burst")
    settings = fast_settings(victoria.url)
    burst = 2000
    connect = mqtt_connect("esp-burst", "esp-burst", secret)
    frames = b"".join(
        mqtt_packet(
            0x30,
            mqtt_str(topic)
            + encode(Telemetry(ts=time.time(), sys=SystemTelemetry(uptime_s=float(n)))),
        )
        for n in range(burst)
    )
    async with ingesting_controller(any_broker, tmp_path / "c.db", settings) as (_ctl, ingest):
        reader, writer = await asyncio.open_connection(any_broker.host, any_broker.port)
        writer.write(connect)
        assert (await reader.readexactly(4))[3] == 0  # CONNACK: accepted
        writer.write(frames + b"\xe0\x00")  # every PUBLISH, then DISCONNECT
        await writer.drain()
        await reader.read()  # the broker closes the connection
        writer.close()
        await wait_for(lambda: ingest.stats.messages == burst, 20, "every message of the burst")
