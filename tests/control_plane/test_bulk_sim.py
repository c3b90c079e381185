"""The bulk device engine (fleet/device/bulk.py) where it differs from SimFleet: its own
transport and dispatch, its shared caches, and `fleet sim` running it as a process.

The device-side scenarios themselves run against it in
tests/control_plane/test_device_conformance.py ("bulk") and
tests/control_plane/test_scenarios.py (engine "bulk").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from broker.amqtt.embedded import EmbeddedBroker
from fleet.auth import CredentialStore, Role
from fleet.device.bulk import BulkFleet
from fleet.mqtt import BrokerUrl, make_client
from fleet.protocol import Topics
from fleet.protocol.messages import Ack, ApiOp, ApiRequest, State, Status, decode
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for


async def test_a_waiting_handler_keeps_the_devices_messages_in_order(
    any_broker: BrokerHandle,
) -> None:
    """set_groups waits for a SUBACK (the one handler that becomes a task); a ping and a
    desired doc sent right behind it must still be handled after it, in order."""
    h = any_broker
    secrets = register_devices(h, 1)
    h.store.set_groups("dev-1", ["lobby"])
    await h.sync()
    t = h.topics
    ctl = h.controller_url().split("://")[1].split("@")[0].split(":")
    async with (
        mqtt_client(h, ctl[0], ctl[1], client_id=f"{ctl[0]}-order") as wire,
        sim_fleet(h, secrets, engine="bulk") as fleet,
    ):
        await wire.subscribe([(t.ack("dev-1"), 1), (t.state("dev-1"), 1)])
        await wire.publish(t.group_desired("lobby"), b"", qos=1, retain=True)
        for payload in (
            {"id": "g1", "op": "set_groups", "args": {"groups": ["lobby"]}},
            {"id": "p1", "op": "ping"},
        ):
            await wire.publish(t.cmd("dev-1"), json.dumps(payload).encode(), qos=1)
        doc = {"rev": 7, "meeting": {"room": "lunch"}}
        await wire.publish(t.desired("dev-1"), json.dumps(doc).encode(), qos=1)
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for message in wire.messages:
                if message.topic.value == t.ack("dev-1"):
                    seen.append(decode(Ack, bytes(message.payload)).id)
                elif decode(State, bytes(message.payload)).rev == 7:
                    seen.append("state rev 7")
                    break
        assert seen == ["g1", "p1", "state rev 7"]
        assert fleet["dev-1"].groups == ["lobby"]
        await wire.publish(t.desired("dev-1"), b"", qos=1, retain=True)


async def test_shared_caches_keep_each_devices_own_state(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    """The same join-all for everyone is decoded and encoded once, but a device with an
    intent of its own reports its own state, and the others do not."""
    h = amqtt_broker
    secrets = register_devices(h, 3)
    async with (
        controller(h, tmp_path / "ctl.db"),
        sim_fleet(h, secrets, engine="bulk"),
        operator(h) as op,
    ):
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=10))
        assert joined.ok, joined.detail
        own = await op.request(ApiOp.JOIN, ApiRequest(device="dev-2", room="retro", mic=False))
        assert own.ok, own.detail
        await op.sync()
        states = {d: op.registry.devices[d].state for d in secrets}
        rooms = {d: (s.rev, s.meeting.room, s.mic) for d, s in states.items() if s and s.meeting}
        assert rooms == {
            **{d: (joined.rev, "standup", True) for d in secrets},
            "dev-2": (own.rev, "retro", False),
        }


async def test_fleet_sim_runs_the_bulk_engine_and_says_goodbye_on_sigterm(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    """The real `fleet sim` process: devices come online, converge, and a SIGTERM ends it
    cleanly with every device's retained status saying offline."""
    h = mosquitto_broker
    secrets = register_devices(h, 20)
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    env = {**os.environ, "FLEET_HOME": str(tmp_path)}
    env.pop("FLEET_BROKER", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "sim",
        "--devices",
        "20",
        "--secrets",
        str(tmp_path / "secrets.json"),
        "--broker",
        f"mqtt://{h.host}:{h.port}",
        "--prefix",
        h.prefix,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with controller(h, tmp_path / "ctl.db") as ctl, operator(h) as op:
            await wait_for(lambda: ctl.registry.online_count() == 20, 30, "20 devices online")
            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=20))
            assert joined.ok, joined.detail
            assert joined.counts == {"converged": 20}
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]
            assert "bulk engine" in out.decode()
            await wait_for(lambda: ctl.registry.online_count() == 0, 10, "every goodbye")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # A goodbye, not the will: the broker logged a DISCONNECT from each of them.
    log = h.backend.log_text()  # type: ignore[attr-defined]
    assert all(f"Client {d} disconnected." in log for d in secrets), log[-2000:]
    async with mqtt_client(h, "watch", h.add_user("watch", Role.CONTROLLER)) as watch:
        await watch.subscribe(h.topics.status("dev-7"), qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(watch.messages))
        assert decode(Status, bytes(message.payload)) == Status(online=False)


async def test_a_refused_login_is_retried_until_the_broker_lets_it_in(
    any_broker: BrokerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A CONNACK refusal neither stops the fleet nor the device: it retries with backoff."""
    h = any_broker
    caplog.set_level(logging.INFO, logger="fleet.device.bulk")
    secret = "a-secret-the-broker-does-not-know-yet"
    fleet = BulkFleet(BrokerUrl.parse(f"mqtt://{h.host}:{h.port}"), {"dev-1": secret}, h.topics)
    task = asyncio.create_task(fleet.run())

    def refusals() -> int:
        return sum(
            1
            for r in caplog.records
            if r.getMessage().startswith("dev-1: connection to") and "failed" in r.getMessage()
        )

    try:
        # Two refused attempts (the broker said no, and the device tried again).
        await wait_for(lambda: refusals() >= 2, timeout=15, what="two refused logins")
        assert not task.done()
        assert not fleet["dev-1"].connected.is_set()
        h.store.add("dev-1", Role.DEVICE, secret=secret)
        await h.sync()
        async with asyncio.timeout(15):
            await fleet["dev-1"].connected.wait()
        assert fleet["dev-1"].connects == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_bulk_devices_over_tls_and_secure_websocket(
    creds_store: CredentialStore, topic_prefix: str, tls_files: tuple[Path, Path]
) -> None:
    """mqtts:// and wss:// (paho's TLS socket and WebSocket wrapper buffer bytes the selector
    cannot see): the devices connect, and a desired doc reaches them and their state back."""
    cert, key = tls_files
    topics = Topics(topic_prefix)
    secrets = creds_store.add_devices(["dev-1", "dev-2"])
    ops = creds_store.add("ops", Role.CONTROLLER)
    async with EmbeddedBroker(
        creds_store.path, port=0, ws_port=0, prefix=topic_prefix, certfile=cert, keyfile=key
    ) as broker:
        for url in (f"mqtts://127.0.0.1:{broker.port}", f"wss://127.0.0.1:{broker.ws_port}/"):
            base = dataclasses.replace(BrokerUrl.parse(url), ca_file=str(cert))
            fleet = BulkFleet(base, secrets, topics)
            task = asyncio.create_task(fleet.run())
            try:
                await fleet.wait_connected(15)
                async with make_client(
                    dataclasses.replace(base.with_credentials("ops", ops), path="/"),
                    client_id="ops-tls",
                ) as ops_client:
                    doc = {"rev": 3, "meeting": {"room": "secure"}}
                    await ops_client.publish(
                        topics.group_desired("all"), json.dumps(doc).encode(), qos=1, retain=True
                    )
                    devices = fleet.devices
                    await wait_for(
                        lambda devices=devices: all(
                            d.meeting is not None and d.meeting.room == "secure" for d in devices
                        ),
                        what=f"devices in the room over {url}",
                    )
                    await ops_client.publish(topics.group_desired("all"), b"", qos=1, retain=True)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
