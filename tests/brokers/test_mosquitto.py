"""The Mosquitto configuration: its content, a real mosquitto running it, fan-out limits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

from broker.mosquitto.config import (
    MAX_QUEUED_BYTES,
    MAX_QUEUED_MESSAGES,
    default_max_connections,
    mosquitto_acl,
    write_mosquitto_config,
)
from cli.broker import app as broker_app
from fleet.auth import HOMEASSISTANT_API_OPS, CredentialStore, Role
from tests.support.brokers import (
    BrokerHandle,
    collect,
    external_handle,
    free_port,
    mosquitto_bin,
    mqtt_client,
    port_open,
    require_mosquitto,
)

P = "fleet/v1"


@pytest.fixture
def users(creds_store: CredentialStore) -> CredentialStore:
    creds_store.add("dev-1", Role.DEVICE, groups=["hall", "floor-2"])
    creds_store.add("dev-2", Role.DEVICE)
    creds_store.add("controller", Role.CONTROLLER)
    creds_store.add("homeassistant", Role.HOMEASSISTANT)
    creds_store.add("agent-1", Role.AGENT)
    return creds_store


# --- content -------------------------------------------------------------------------------------


def test_config_files(users: CredentialStore, tmp_path: Path) -> None:
    conf = write_mosquitto_config(
        tmp_path / "mq", users, port=1999, ws_port=9001, persistence_dir=tmp_path / "data"
    )
    text = conf.read_text().splitlines()
    for line in (
        "allow_anonymous false",
        "per_listener_settings false",
        f"password_file {tmp_path / 'mq' / 'passwd'}",
        f"acl_file {tmp_path / 'mq' / 'acl'}",
        "listener 1999 127.0.0.1",
        "listener 9001 127.0.0.1",
        "protocol websockets",
        "socket_domain ipv4",  # or libwebsockets listens on every address
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        "persistent_client_expiration 1h",
        "persistence true",
        f"persistence_location {tmp_path / 'data'}/",
    ):
        assert line in text
    assert not any(line.startswith("user ") for line in text)
    # Every listener is bounded, below the descriptor limit.
    bounds = [int(line.split()[1]) for line in text if line.startswith("max_connections ")]
    assert len(bounds) == 2
    assert sum(bounds) == default_max_connections()
    passwd = (tmp_path / "mq" / "passwd").read_text()
    assert f"dev-1:{users.get('dev-1').hash}" in passwd  # type: ignore[union-attr]
    for name in ("passwd", "acl", "mosquitto.conf"):
        assert (tmp_path / "mq" / name).stat().st_mode & 0o077 == 0


def test_acl_text(users: CredentialStore) -> None:
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in mosquitto_acl(users, P).splitlines():
        if line.startswith("user "):
            current = line.split(" ", 1)[1]
            sections[current] = []
        elif line and not line.startswith("#"):
            sections[current].append(line)
    # No pattern lines: they would give every user (Home Assistant too) device rights.
    assert sections[""] == []
    own = [
        *(f"topic write {P}/dev/dev-1/{k}" for k in ("status", "state", "ack", "tele")),
        f"topic write {P}/meet/dev-1/up",
        # its call button's requests, on its own api/by/{id}/{op} only
        *(f"topic write {P}/api/by/dev-1/{op}" for op in ("call", "answer", "hangup")),
        f"topic read {P}/dev/dev-1/desired",
        f"topic read {P}/dev/dev-1/cmd",
        f"topic read {P}/dev/dev-1/ann",
        f"topic read {P}/meet/dev-1/down",
    ]
    assert sections["dev-1"] == [
        *own,
        f"topic read {P}/grp/all/desired",
        f"topic read {P}/grp/hall/desired",
        f"topic read {P}/grp/floor-2/desired",
    ]
    assert sections["dev-2"][-1] == f"topic read {P}/grp/all/desired"
    assert sections["controller"] == [f"topic readwrite {P}/#", "topic readwrite homeassistant/#"]
    ha = sections["homeassistant"]
    assert {f"topic write {P}/api/{op.value}" for op in HOMEASSISTANT_API_OPS} <= set(ha)
    assert f"topic write {P}/api/cmd" not in ha
    assert {f"topic write {P}/ha/dev/+/+/set", f"topic write {P}/ha/fleet/+/set"} <= set(ha)
    assert f"topic read {P}/ha/#" in ha
    assert f"topic write {P}/api/result" not in ha
    assert f"topic read {P}/dev/+/state" in ha
    # An agent meets as itself (as fleet/auth/acl.py lets it), and only as itself.
    agent = sections["agent-1"]
    assert {
        f"topic write {P}/meet/agent-1/up",
        f"topic read {P}/meet/agent-1/down",
        f"topic read {P}/api/reply/agent-1-api",  # its API client's MQTT 5 results
    } <= set(agent)
    assert not [line for line in agent if "/meet/" in line and "agent-1" not in line]


def test_run_as(users: CredentialStore, tmp_path: Path) -> None:
    conf = write_mosquitto_config(tmp_path, users, run_as="root")
    assert "user root" in conf.read_text().splitlines()


# --- a real mosquitto ----------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_cli_config_runs_in_mosquitto(users: CredentialStore, tmp_path: Path) -> None:
    require_mosquitto()
    port = free_port()
    out_dir = tmp_path / "generated"
    args = ["mosquitto-config", str(out_dir), "--creds", str(users.path), "--port", str(port)]
    if os.geteuid() == 0:
        args += ["--run-as", "root"]  # else mosquitto drops to its own user, can't read 0600
    res = CliRunner().invoke(broker_app, args)
    assert res.exit_code == 0, res.output
    assert "5 users" in res.stdout
    conf = out_dir / "mosquitto.conf"
    proc = subprocess.Popen(
        [mosquitto_bin(), "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "mosquitto did not start listening"
            time.sleep(0.02)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert b"Error" not in out, out.decode()


def test_cli_config_failure_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    creds = tmp_path / "c.json"
    res = CliRunner().invoke(broker_app, ["mosquitto-config", str(blocker), "--creds", str(creds)])
    assert res.exit_code == 1
    assert "error" in res.stderr


@pytest.mark.mosquitto
async def test_fan_out_beyond_the_default_queue(mosquitto_broker: BrokerHandle) -> None:
    """Mosquitto's default max_queued_messages (1000) would drop most of these QoS 1 states."""
    t = mosquitto_broker.topics
    count = 2_500
    url_ctl = mosquitto_broker.add_user("ctl", Role.CONTROLLER)
    async with mqtt_client(mosquitto_broker, "ctl", url_ctl, client_id="ctl-pub") as pub:
        await asyncio.gather(
            *(
                pub.publish(t.state(f"dev-{i}"), b'{"rev":1}', qos=1, retain=True)
                for i in range(count)
            )
        )
    async with aiomqtt.Client(
        mosquitto_broker.host,
        mosquitto_broker.port,
        username="ctl",
        password=url_ctl,
        identifier="ctl-sub",
        max_inflight_messages=20,
    ) as sub:
        await sub.subscribe(f"{t.prefix}/dev/+/state", qos=1)
        seen: set[str] = set()
        async with asyncio.timeout(30):
            async for message in sub.messages:
                seen.add(message.topic.value)
                if len(seen) == count:
                    break
    assert len(seen) == count


@pytest.mark.mosquitto
async def test_sync_reloads_users_without_restart(mosquitto_broker: BrokerHandle) -> None:
    secret = mosquitto_broker.add_device("dev-a")  # after start: sent with SIGHUP
    async with mqtt_client(mosquitto_broker, "dev-a", secret):
        pass
    mosquitto_broker.store.remove("dev-a")
    await mosquitto_broker.sync()
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(mosquitto_broker, "dev-a", secret):
            pass


@pytest.mark.mosquitto
async def test_restart_keeps_retained_messages(mosquitto_broker: BrokerHandle) -> None:
    t = mosquitto_broker.topics
    ctl = mosquitto_broker.add_user("ctl", Role.CONTROLLER)
    async with mqtt_client(mosquitto_broker, "ctl", ctl, client_id="ctl-1") as controller:
        await controller.publish(t.desired("dev-a"), b'{"rev":7}', qos=1, retain=True)
    await mosquitto_broker.restart()
    assert mosquitto_broker.retains_across_restart
    secret = mosquitto_broker.add_device("dev-a")
    async with mqtt_client(mosquitto_broker, "dev-a", secret) as dev:
        await dev.subscribe(t.desired("dev-a"), qos=1)
        got = await collect(dev, until_topic=t.desired("dev-a"), settle_s=0)
    assert got[0].payload == b'{"rev":7}'


@pytest.mark.mosquitto
async def test_external_handle_points_at_a_running_broker(
    mosquitto_broker: BrokerHandle,
) -> None:
    ctl = mosquitto_broker.add_user("ctl", Role.CONTROLLER)
    handle = external_handle(
        mosquitto_broker.port, mosquitto_broker.store, mosquitto_broker.prefix, kind="mosquitto"
    )
    async with mqtt_client(handle, "ctl", ctl, client_id="ctl-x") as client:
        await client.publish(handle.topics.api_result, b"{}", qos=1)
