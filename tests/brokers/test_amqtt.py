"""The embedded amqtt broker: lifecycle, listeners, live credential changes, amqtt fixes."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from pathlib import Path

import aiomqtt
import pytest

import broker.amqtt.plugins as plugins
from broker.amqtt.embedded import EmbeddedBroker, FleetBroker
from fleet.auth import CredentialStore, Role
from fleet.errors import ConfigError
from fleet.protocol.topics import Topics
from tests.support.brokers import (
    BrokerHandle,
    collect,
    external_handle,
    free_port,
    mqtt_client,
    port_open,
    subscribe_failed,
)
from tests.support.cli import interruptible


@pytest.fixture
def instant_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the topic plugin see credential changes at once instead of within a second."""
    monkeypatch.setattr(plugins, "REFRESH_INTERVAL_S", 0.0)


# --- behaviour both brokers share (amqtt needed fixes for it) ---------------------------------


async def test_connecting_replays_no_foreign_retained_messages(any_broker: BrokerHandle) -> None:
    """Stock amqtt 0.12.1 sends a newcomer the retained messages of everyone's filters."""
    t = any_broker.topics
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    secret = any_broker.add_device("dev-a")
    async with mqtt_client(any_broker, "ctl", ctl, client_id="ctl-1") as controller:
        await controller.subscribe(t.everything, qos=1)
        await controller.publish(t.desired("dev-b"), b'{"rev":1}', qos=1, retain=True)
        await controller.publish(t.state("dev-b"), b'{"rev":1}', qos=1, retain=True)
        async with mqtt_client(any_broker, "dev-a", secret) as dev:
            await dev.subscribe(t.cmd("dev-a"), qos=1)
            await controller.publish(t.cmd("dev-a"), b'{"id":"1","op":"ping"}', qos=1)
            got = await collect(dev, until_topic=t.cmd("dev-a"))
    assert [m.topic.value for m in got] == [t.cmd("dev-a")]


@pytest.mark.parametrize("clean_session", [True, False])
async def test_refused_connect_leaves_the_live_session_alone(
    any_broker: BrokerHandle, clean_session: bool
) -> None:
    """A CONNECT with a device's client id but a wrong secret must not evict the device."""
    t = any_broker.topics
    ctl = any_broker.add_user("ctl", Role.CONTROLLER)
    secret = any_broker.add_device("dev-a")
    async with (
        mqtt_client(any_broker, "ctl", ctl, client_id="ctl-1") as controller,
        mqtt_client(any_broker, "dev-a", secret, clean_session=False) as dev,
    ):
        assert not subscribe_failed(await dev.subscribe(t.cmd("dev-a"), qos=1))
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_client(
                any_broker, "dev-a", "wrong", client_id="dev-a", clean_session=clean_session
            ):
                pass
        await controller.publish(t.cmd("dev-a"), b'{"id":"1","op":"ping"}', qos=1)
        got = await collect(dev, until_topic=t.cmd("dev-a"), settle_s=0)
    assert [m.topic.value for m in got] == [t.cmd("dev-a")]


# --- amqtt only --------------------------------------------------------------------------------


async def test_device_client_id_must_be_its_id(amqtt_broker: BrokerHandle) -> None:
    secret = amqtt_broker.add_device("dev-a")
    amqtt_broker.add_device("dev-b")
    for client_id in ("dev-b", "dev-a-2", ""):
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_client(amqtt_broker, "dev-a", secret, client_id=client_id):
                pass
    # Other roles may run several connections with their own client ids.
    ctl = amqtt_broker.add_user("ctl", Role.CONTROLLER)
    async with (
        mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-a"),
        mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-b"),
    ):
        pass


async def test_new_and_removed_users_apply_without_restart(
    amqtt_broker: BrokerHandle, instant_refresh: None
) -> None:
    t = amqtt_broker.topics
    cli_store = CredentialStore(amqtt_broker.store.path)  # as `fleet creds add` would
    secret = cli_store.add("dev-late", Role.DEVICE)
    ctl = cli_store.add("ctl", Role.CONTROLLER)
    async with (
        mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-1") as watcher,
        mqtt_client(amqtt_broker, "dev-late", secret) as dev,
    ):
        await watcher.subscribe(t.everything, qos=1)
        cli_store.remove("dev-late")
        # Still connected, but a removed user's messages go nowhere.
        await dev.publish(t.state("dev-late"), b'{"rev":1}', qos=1)
        await watcher.publish(t.api_result, b"{}", qos=1)  # marker
        got = await collect(watcher, until_topic=t.api_result)
    assert [m.topic.value for m in got] == [t.api_result]
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(amqtt_broker, "dev-late", secret):
            pass


async def test_group_change_applies_to_a_connected_device(
    amqtt_broker: BrokerHandle, instant_refresh: None
) -> None:
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-a")
    async with mqtt_client(amqtt_broker, "dev-a", secret) as dev:
        assert subscribe_failed(await dev.subscribe(t.group_desired("hall"), qos=1))
        amqtt_broker.store.set_groups("dev-a", ["hall"])  # then the controller sends set_groups
        assert not subscribe_failed(await dev.subscribe(t.group_desired("hall"), qos=1))


async def test_resumed_session_loses_subscriptions_it_may_no_longer_hold(
    amqtt_broker: BrokerHandle, instant_refresh: None
) -> None:
    t = amqtt_broker.topics
    ctl = amqtt_broker.add_user("ctl", Role.CONTROLLER)
    secret = amqtt_broker.add_device("dev-a", groups=["hall"])
    async with mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-1") as controller:
        await controller.publish(t.group_desired("hall"), b'{"rev":1}', qos=1, retain=True)
        async with mqtt_client(amqtt_broker, "dev-a", secret, clean_session=False) as dev:
            await dev.subscribe(t.group_desired("hall"), qos=1)
            await dev.subscribe(t.cmd("dev-a"), qos=1)
        amqtt_broker.store.set_groups("dev-a", [])
        async with mqtt_client(amqtt_broker, "dev-a", secret, clean_session=False) as dev:
            await controller.publish(t.group_desired("hall"), b'{"rev":2}', qos=1, retain=True)
            await controller.publish(t.cmd("dev-a"), b'{"id":"1","op":"ping"}', qos=1)
            got = await collect(dev, until_topic=t.cmd("dev-a"))
    assert [m.topic.value for m in got] == [t.cmd("dev-a")]


async def test_corrupt_file_keeps_the_last_good_users(amqtt_broker: BrokerHandle) -> None:
    secret = amqtt_broker.add_device("dev-a")
    async with mqtt_client(amqtt_broker, "dev-a", secret):
        pass
    amqtt_broker.store.path.write_text("{ half written")
    async with mqtt_client(amqtt_broker, "dev-a", secret) as dev:
        await dev.publish(amqtt_broker.topics.state("dev-a"), b"{}", qos=1)


async def test_restart_keeps_port_and_users_but_not_retained(amqtt_broker: BrokerHandle) -> None:
    t = amqtt_broker.topics
    ctl = amqtt_broker.add_user("ctl", Role.CONTROLLER)
    async with mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-1") as controller:
        await controller.publish(t.desired("dev-a"), b'{"rev":1}', qos=1, retain=True)
    await amqtt_broker.restart()
    async with mqtt_client(amqtt_broker, "ctl", ctl, client_id="ctl-1") as controller:
        await controller.subscribe(t.everything, qos=1)
        await controller.publish(t.api_result, b"{}", qos=1)
        got = await collect(controller, until_topic=t.api_result, settle_s=0.2)
    assert [m.topic.value for m in got] == [t.api_result]


async def test_stop_twice_frees_the_ports(creds_store: CredentialStore) -> None:
    port, ws_port = free_port(), free_port()
    secret = creds_store.add("ctl", Role.CONTROLLER)
    async with EmbeddedBroker(creds_store.path, port=port, ws_port=ws_port) as broker:
        assert (broker.port, broker.ws_port) == (port, ws_port)
        assert port_open("127.0.0.1", port)
        client = aiomqtt.Client(
            "127.0.0.1", port, username="ctl", password=secret, identifier="ctl"
        )
        async with client:
            await broker.stop()  # with a client connected
            with pytest.raises(aiomqtt.MqttError):
                async for _ in client.messages:
                    pass
        await broker.stop()
    await broker.stop()
    assert not port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", ws_port)
    async with EmbeddedBroker(creds_store.path, port=port, ws_port=ws_port):
        assert port_open("127.0.0.1", port)


async def test_port_zero_reports_the_real_ports(creds_store: CredentialStore) -> None:
    async with EmbeddedBroker(creds_store.path, port=0, ws_port=0) as broker:
        assert broker.port > 0
        assert broker.ws_port is not None
        assert broker.ws_port > 0
        assert port_open("127.0.0.1", broker.port)
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"


async def test_busy_port_is_a_config_error(creds_store: CredentialStore) -> None:
    async with EmbeddedBroker(creds_store.path, port=0) as first:
        with pytest.raises(ConfigError, match="cannot start the broker"):
            async with EmbeddedBroker(creds_store.path, port=first.port):
                pass


async def test_websocket_listener(creds_store: CredentialStore, topic_prefix: str) -> None:
    t = Topics(topic_prefix)
    secret = creds_store.add("dev-a", Role.DEVICE)
    async with (
        EmbeddedBroker(creds_store.path, port=0, ws_port=0, prefix=topic_prefix) as broker,
        aiomqtt.Client(
            "127.0.0.1",
            broker.ws_port or 0,
            username="dev-a",
            password=secret,
            identifier="dev-a",
            transport="websockets",
            websocket_path="/",
        ) as dev,
    ):
        assert not subscribe_failed(await dev.subscribe(t.cmd("dev-a"), qos=1))


async def test_tls_listener(creds_store: CredentialStore, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    secret = creds_store.add("ctl", Role.CONTROLLER)
    context = ssl.create_default_context(cafile=str(cert))
    async with (
        EmbeddedBroker(creds_store.path, port=0, certfile=cert, keyfile=key) as broker,
        aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username="ctl",
            password=secret,
            identifier="ctl-tls",
            tls_context=context,
        ) as client,
    ):
        assert broker.url.startswith("mqtts://")
        await client.publish(f"{broker.prefix}/api/result", b"{}", qos=1)


def test_tls_needs_both_files(creds_store: CredentialStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both"):
        EmbeddedBroker(creds_store.path, certfile=tmp_path / "cert.pem")


async def test_only_our_plugins_are_loaded(creds_store: CredentialStore) -> None:
    broker = EmbeddedBroker(creds_store.path)
    plugin_paths = set(broker.config()["plugins"])
    assert plugin_paths == {
        "broker.amqtt.plugins.FleetAuthPlugin",
        "broker.amqtt.plugins.FleetTopicPlugin",
    }
    fb = FleetBroker(broker.config())
    names = {type(p).__name__ for p in fb.plugins_manager.plugins}
    assert names == {"FleetAuthPlugin", "FleetTopicPlugin"}
    await fb.plugins_manager.close()


async def test_anonymous_allowed_still_gets_nothing(
    creds_store: CredentialStore, topic_prefix: str
) -> None:
    """With allow_anonymous (off in EmbeddedBroker) a client connects but may do nothing."""
    port = free_port()
    config = EmbeddedBroker(creds_store.path, port=port, prefix=topic_prefix).config()
    config["plugins"]["broker.amqtt.plugins.FleetAuthPlugin"]["allow_anonymous"] = True
    amqtt = FleetBroker(config)
    await amqtt.start()
    try:
        handle = external_handle(port, creds_store, topic_prefix)
        async with mqtt_client(handle, None, None, client_id="anon") as anon:
            assert subscribe_failed(await anon.subscribe(f"{topic_prefix}/#", qos=1))
            assert subscribe_failed(await anon.subscribe("homeassistant/status", qos=1))
    finally:
        await amqtt.shutdown()


# --- fleet broker run --------------------------------------------------------------------------


async def test_cli_run_serves_until_interrupted(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "c.json")
    secret = store.add("dev-a", Role.DEVICE)
    port = free_port()
    code = "from cli.broker import app; app(prog_name='fleet broker')"
    args = ["run", "--port", str(port), "--creds", str(store.path), "--prefix", "cli/v1"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=interruptible,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert f"mqtt://127.0.0.1:{port}" in line.decode()
        handle = external_handle(port, store, "cli/v1")
        async with mqtt_client(handle, "dev-a", secret) as dev:
            await dev.publish("cli/v1/dev/dev-a/state", b"{}", qos=1)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Broker stopped" in out.decode()
    assert not port_open("127.0.0.1", port)


async def test_cli_run_fails_cleanly_on_a_busy_port(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "c.json")
    store.add("ctl", Role.CONTROLLER)
    async with EmbeddedBroker(store.path, port=0) as busy:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from cli.broker import app; app(prog_name='fleet broker')",
            "run",
            "--engine",
            "amqtt",
            "--port",
            str(busy.port),
            "--creds",
            str(store.path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "cannot start the broker" in err.decode()
    assert "Traceback" not in err.decode()


async def test_missing_tls_file_is_a_config_error(
    creds_store: CredentialStore, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(
        creds_store.path, port=0, certfile=tmp_path / "no.pem", keyfile=tmp_path / "no.key"
    )
    with pytest.raises(ConfigError, match="cannot start the broker"):
        await broker.start()
    await broker.stop()
