"""MQTT 5 on the embedded defaults: `fleet up`'s default broker (Mosquitto) with an
MQTT 5 Home Assistant beside 3.1.1 devices, amqtt refusing MQTT 5 at once, and what MQTT 5
adds where it pays: command expiry, reason codes, reply topics, shared telemetry ingest."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

from broker.amqtt.embedded import EmbeddedBroker
from broker.local import MosquittoBroker
from cli.broker import app as broker_app
from cli.stack import StackConfig, free_port, running_stack
from fleet.auth import CredentialStore, Role, hash_secret
from fleet.client import FleetClient
from fleet.controller.service import Controller
from fleet.errors import PublishRefused, SubscribeRefused
from fleet.ha import HomeAssistantPart
from fleet.mqtt import BrokerUrl, MqttVersion, open_client, payload_bytes, publish, subscribe
from fleet.protocol import Topics, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    DeviceOutcome,
    Status,
    SystemTelemetry,
    Telemetry,
    WifiTelemetry,
)
from fleet.telemetry.ingest import TelemetryIngest
from fleet.telemetry.worker import IngestWorker
from tests.support import ROOT
from tests.support.brokers import (
    BrokerHandle,
    external_handle,
    mosquitto_bin,
    mqtt_client,
    port_open,
    require_mosquitto,
)
from tests.support.cli import interruptible
from tests.support.databases import VictoriaMetrics, fast_settings
from tests.support.databases import victoria as victoria  # the fixture
from tests.support.packets import mqtt_str
from tests.support.running import Part, controller, operator, register_devices, wait_for

HA_USER = "ha"


def mqtt5_connect(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 5 CONNECT as Home Assistant 2026 sends it: with properties (session expiry)."""
    props = bytes([0x11]) + (0).to_bytes(4, "big")  # session expiry interval 0
    variable = mqtt_str("MQTT") + bytes([5, 0xC2]) + (60).to_bytes(2, "big")
    variable += bytes([len(props)]) + props
    body = variable + mqtt_str(client_id) + mqtt_str(username) + mqtt_str(password)
    assert len(body) < 128  # one byte of remaining length
    return bytes([0x10, len(body)]) + body


# --- amqtt, the fallback -------------------------------------------------------------------------


async def test_amqtt_refuses_mqtt5_at_once_with_one_log_line(
    creds_store: CredentialStore, caplog: pytest.LogCaptureFixture
) -> None:
    secret = creds_store.add(HA_USER, Role.HOMEASSISTANT)
    async with EmbeddedBroker(creds_store.path, port=0) as broker:
        caplog.clear()
        # The amqtt logger's own level too: a CLI run in this process may have raised it.
        with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="amqtt"):
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.write(mqtt5_connect("ha-5", HA_USER, secret))
            await writer.drain()
            async with asyncio.timeout(0.1):  # refused at once, not after a hang
                connack = await reader.readexactly(4)
                rest = await reader.read()  # and the broker closes the connection
            writer.close()
            assert connack == bytes([0x20, 0x02, 0x00, 0x01])  # unacceptable protocol version
            assert rest == b""
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "MQTT 5" in lines[0].getMessage()
        assert "0x01" in lines[0].getMessage()
        assert lines[0].exc_info is None  # no traceback
        # Our own clients fall back to 3.1.1 there by themselves.
        url = BrokerUrl.parse(f"mqtt://{HA_USER}:{secret}@127.0.0.1:{broker.port}")
        async with open_client(url, client_id="ha-auto", version=MqttVersion.AUTO) as client:
            assert not client.mqtt5


# --- fleet up's default broker -------------------------------------------------------------------


@contextlib.contextmanager
def fleet_up(home: Path, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "FLEET_HOME": str(home), "PYTHONPATH": str(ROOT)}
    log = (home.parent / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        preexec_fn=interruptible,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_mqtt5_home_assistant_beside_311_devices_on_fleet_ups_default_broker(
    tmp_path: Path,
) -> None:
    require_mosquitto()
    home, port = tmp_path / "home", free_port()
    with fleet_up(home, port, "--devices", "2", "--no-audio", "--tele-interval", "1"):
        creds = home / "credentials.json"
        await wait_for(creds.exists, 30, "fleet up's credentials")
        # What the docs say to do: a homeassistant user, added while the stack runs.
        secret = CredentialStore(creds).add(HA_USER, Role.HOMEASSISTANT)
        url = BrokerUrl.parse(f"mqtt://{HA_USER}:{secret}@127.0.0.1:{port}")
        client = None
        async with contextlib.AsyncExitStack() as stack:
            deadline = time.monotonic() + 30
            while client is None:  # the broker picks the new user up within a second
                try:
                    client = await stack.enter_async_context(
                        open_client(url, client_id="ha-test", version=MqttVersion.V5)
                    )
                except aiomqtt.MqttError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert client.mqtt5
            t = Topics()
            await subscribe(client, [("homeassistant/#", 1), (t.ha_everything, 1)])
            last: dict[str, bytes] = {}

            async def read() -> None:
                async for message in client.messages:
                    last[message.topic.value] = payload_bytes(message)

            reader = Part(read(), "ha-reader")
            try:

                def configs() -> dict[str, dict[str, object]]:
                    return {
                        k: json.loads(v)
                        for k, v in last.items()
                        if k.startswith("homeassistant/device/") and v
                    }

                await wait_for(lambda: len(configs()) == 3, 30, "every discovery config")
                names = sorted(str(c["dev"]["name"]) for c in configs().values())  # type: ignore[index]
                assert names == ["dev-1", "dev-2", "espfleet"]
                await publish(client, t.ha_fleet_set("join_all"), b"PRESS")
                for dev in ("dev-1", "dev-2"):
                    await wait_for(
                        lambda dev=dev: (
                            t.ha_device_state(dev) in last
                            and json.loads(last[t.ha_device_state(dev)])["in_meeting"] == "ON"
                        ),
                        20,
                        f"{dev} in the meeting",
                    )
            finally:
                await reader.stop()
        log = (home / "mosquitto" / "mosquitto.log").read_text()
        # Side by side on one broker: the devices on 3.1.1 (p2), Home Assistant on 5.
        assert "as dev-1 (p2," in log
        assert "as ha-test (p5," in log


async def test_set_groups_reaches_fleet_ups_mosquitto_at_once(tmp_path: Path) -> None:
    """The README's flow on the default broker: the controller's group grant is in
    Mosquitto's ACL before the device subscribes to its new group's desired doc."""
    require_mosquitto()
    config = StackConfig(
        home=tmp_path / "home", devices=2, port=free_port(), audio=False, engine="mosquitto"
    )
    async with running_stack(config) as stack:
        assert isinstance(stack.broker, MosquittoBroker)
        await stack.wait_ready()
        async with FleetClient(stack.operator_url, stack.controller.topics) as op:
            moved = await op.request(
                ApiOp.CMD,
                ApiRequest(device="dev-2", cmd_op="set_groups", args={"groups": ["kitchen"]}),
            )
            assert moved.ok, moved.detail
            result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="lunch", group="kitchen"))
        assert result.ok, result.detail
        assert [d.device for d in result.devices] == ["dev-2"]
        assert stack.broker.reloads >= 1


# --- MQTT 5 where it pays (Mosquitto) ------------------------------------------------------------


@contextlib.asynccontextmanager
async def mqtt5_client(handle: BrokerHandle, user: str, secret: str) -> AsyncIterator[object]:
    url = BrokerUrl.parse(handle.url(user, secret))
    async with open_client(url, client_id=f"{user}-5", version=MqttVersion.V5) as client:
        yield client


async def test_acl_refusals_reach_an_mqtt5_client_as_reason_codes(
    mosquitto_broker: BrokerHandle,
) -> None:
    t = mosquitto_broker.topics
    secret = mosquitto_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    async with mqtt5_client(mosquitto_broker, HA_USER, secret) as client:
        with pytest.raises(PublishRefused) as refused:
            await publish(client, t.api("cmd"), b'{"device": "dev-1", "cmd_op": "reboot"}')
        assert refused.value.code == 0x87  # not authorised
        assert "Not authorized" in str(refused.value)
        # An allowed publish on the same connection still goes through.
        await publish(client, t.api("leave-all"), b'{"id": "x"}')


async def test_a_refused_subscription_is_an_error(amqtt_broker: BrokerHandle) -> None:
    """amqtt refuses a forbidden filter with SUBACK 0x80 (3.1.1). Mosquitto 2.0's acl_file
    grants every subscription and checks reads per message, so there is nothing to raise."""
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-9")
    url = BrokerUrl.parse(amqtt_broker.url("dev-9", secret))
    async with open_client(url, client_id="dev-9", version=MqttVersion.AUTO) as client:
        forbidden = t.cmd("dev-1")
        with pytest.raises(SubscribeRefused) as refused:
            await subscribe(client, [(forbidden, 1)])
        assert refused.value.topic == forbidden


async def test_an_expired_command_is_never_delivered(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    """A device whose link dropped silently: the controller still sees it online and sends;
    the broker queues for its session. Back after the ttl, it must not get the command."""
    t = mosquitto_broker.topics
    secret = mosquitto_broker.add_device("dev-1")
    async with (
        controller(mosquitto_broker, tmp_path / "ctl.db") as ctl,
        operator(mosquitto_broker) as op,
    ):
        async with mqtt_client(mosquitto_broker, "dev-1", secret, clean_session=False) as dev:
            await dev.subscribe(t.cmd("dev-1"), qos=1)
            await dev.publish(
                t.status("dev-1"), encode(Status(online=True, fw="1")), qos=1, retain=True
            )
            await wait_for(lambda: "dev-1" in ctl.registry.devices, what="dev-1 known")
        # Its link dropped silently (the keep-alive has not run out): still "online" to the
        # controller, its session kept. The broker marks a device offline at any end of its
        # connection it sees, so a controller-role user restores the stale view here.
        await wait_for(lambda: not ctl.registry.devices["dev-1"].online, what="the broker's word")
        stand_in = mosquitto_broker.add_user("stand-in", Role.CONTROLLER)
        async with mqtt_client(mosquitto_broker, "stand-in", stand_in) as c:
            birth = encode(Status(online=True, fw="1"))
            await c.publish(t.status("dev-1"), birth, qos=1, retain=True)
        await wait_for(lambda: ctl.registry.devices["dev-1"].online, what="stale online view")
        stale = await op.request(
            ApiOp.CMD,
            ApiRequest(id="stale-1", device="dev-1", cmd_op="ping", ttl_ms=1000, timeout_s=1),
        )
        assert stale.code == "timed_out"  # nobody acked within the ttl
        await asyncio.sleep(1.2)  # past the message's whole-second expiry
        fresh = Part(
            op.request(ApiOp.CMD, ApiRequest(id="fresh-1", device="dev-1", cmd_op="ping")),
            "fresh-request",
        )
        try:
            await wait_for(
                lambda: (
                    ctl.commands.open_jobs.get("fresh-1") is not None
                    and ctl.commands.open_jobs["fresh-1"].status is DeviceOutcome.SENT
                ),
                what="the fresh command sent (queued at the broker: the marker)",
            )
            async with (
                mqtt_client(mosquitto_broker, "dev-1", secret, clean_session=False) as dev,
                asyncio.timeout(10),
            ):
                first = await anext(aiter(dev.messages))
        finally:
            await fresh.stop()
        # The session's queue, in order: the expired command is gone, the fresh one is there.
        assert json.loads(payload_bytes(first))["id"] == "fresh-1"


async def test_api_results_come_back_on_the_reply_topic(mosquitto_broker: BrokerHandle) -> None:
    """An MQTT 5 operator asks with a response topic: its results come there, not to every
    reader of api/result."""
    t = mosquitto_broker.topics
    secret = mosquitto_broker.add_user("bystander", Role.CONTROLLER)
    async with (
        controller(mosquitto_broker, mosquitto_broker.store.path.parent / "c.db"),
        mqtt_client(mosquitto_broker, "bystander", secret) as bystander,
        operator(mosquitto_broker) as op,
    ):
        await bystander.subscribe(t.api_result, qos=1)
        assert op.mqtt5
        result = await op.request(ApiOp.LEAVE_ALL, ApiRequest(id="via-reply"))
        assert result.ok
        # A 3.1.1 request (no response topic) is answered on api/result, as before: the
        # bystander sees that one, and not the MQTT 5 one before it.
        await bystander.publish(t.api("leave-all"), b'{"id": "plain"}', qos=1)
        async with asyncio.timeout(10):
            async for message in bystander.messages:
                seen = ApiResult.model_validate_json(payload_bytes(message))
                assert seen.id != "via-reply"
                if seen.id == "plain" and seen.done:
                    break


async def test_two_controller_processes_share_the_ingest(
    mosquitto_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """The controller and an ingest worker on one shared subscription: every message stored
    once, split between them."""
    t = mosquitto_broker.topics
    settings = fast_settings(victoria.url)
    main = TelemetryIngest(settings, share="tele")
    secrets = register_devices(mosquitto_broker, 4)
    worker_secret = mosquitto_broker.add_user("ingest-1", Role.CONTROLLER)
    worker = IngestWorker(
        BrokerUrl.parse(mosquitto_broker.url("ingest-1", worker_secret)),
        settings,
        "tele",
        t,
        client_id="ingest-1",
    )
    sent = 0
    # Home Assistant's part reads telemetry too: from the same share, not a plain copy.
    ha = HomeAssistantPart()
    async with controller(mosquitto_broker, tmp_path / "c.db", parts=[main, ha]):
        running = Part(worker.run(), "ingest-worker")
        try:
            await wait_for(worker.connected.is_set, what="the worker's share")
            async with contextlib.AsyncExitStack() as stack:
                devices = [
                    await stack.enter_async_context(mqtt_client(mosquitto_broker, d, s))
                    for d, s in secrets.items()
                ]
                for n in range(100):
                    for dev, device_id in zip(devices, secrets, strict=True):
                        tele = Telemetry(
                            ts=1.7e9 + n,
                            wifi=WifiTelemetry(rssi=-50),
                            sys=SystemTelemetry(uptime_s=float(n)),
                        )
                        await dev.publish(t.tele(device_id), encode(tele), qos=0)
                        sent += 1
            total = lambda: main.stats.messages + worker.ingest.stats.messages  # noqa: E731
            await wait_for(lambda: total() == sent, 15, "every message ingested")
            await asyncio.sleep(0.3)  # a duplicate would come right behind
            assert total() == sent
            # Split between the two: neither did it all.
            assert 0 < main.stats.messages < sent
            assert 0 < worker.ingest.stats.messages < sent
            await wait_for(main.flushed.is_set, 10, "the controller wrote its share")
            await wait_for(worker.ingest.flushed.is_set, 10, "the worker wrote its share")
            match = '{__name__="device_uptime_s"}'
            await wait_for(lambda: victoria.count_samples(match) == sent, 15, "all stored")
            assert victoria.count_samples(match) == sent  # and none twice
        finally:
            await running.stop()


async def test_shared_ingest_on_amqtt_is_a_clear_error(
    amqtt_broker: BrokerHandle, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """amqtt has no shared subscriptions: the controller stops, saying so."""
    ingest = TelemetryIngest(fast_settings(victoria.url), share="tele")
    ctl = Controller(
        BrokerUrl.parse(amqtt_broker.controller_url()),
        tmp_path / "c.db",
        amqtt_broker.topics,
        parts=[ingest],
    )
    with pytest.raises(ExceptionGroup) as stopped:
        await asyncio.wait_for(ctl.run(), 15)
    assert stopped.group_contains(SubscribeRefused, depth=None)
    assert "$share/tele/" in str(_leaves(stopped.value)[0])


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for exc in group.exceptions
        for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    ]


# --- one broker for the home: Home Assistant's Mosquitto add-on ----------------------------------


def _go_auth_compare(password: str, stored: str) -> bool:
    """mosquitto-go-auth's PBKDF2 check as the add-on configures it (base64 salt, key as long
    as the stored hash), written from its hashing/pbkdf2.go."""
    kind, algorithm, iterations, salt, digest = stored.split("$")
    assert (kind, algorithm) == ("PBKDF2", "sha512")
    expected = base64.b64decode(digest)
    key = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations), len(expected)
    )
    return key == expected


async def test_ha_addon_files_carry_the_fleet_beside_the_home(tmp_path: Path) -> None:
    require_mosquitto()
    store = CredentialStore(tmp_path / "credentials.json")
    prefix = "fleet/v1"
    secrets = {
        "dev-1": store.add("dev-1", Role.DEVICE),
        "controller": store.add("controller", Role.CONTROLLER),
    }
    out = tmp_path / "addon"
    result = CliRunner().invoke(
        broker_app,
        ["ha-addon", str(out), "--creds", str(store.path), "--home-user", "zigbee2mqtt"],
    )
    assert result.exit_code == 0, result.output
    logins = (out / "logins.yaml").read_text()
    hashes = dict(re.findall(r'username: "([^"]+)"\n  password: "([^"]+)"', logins))
    assert set(hashes) == set(secrets)
    for user, secret in secrets.items():
        assert _go_auth_compare(secret, hashes[user]), user
        assert not _go_auth_compare(secret + "x", hashes[user])
    assert logins.count("password_pre_hashed: true") == 2

    # The add-on's Mosquitto, as far as it runs here: its system user `homeassistant` and a
    # home user in the password file beside ours, our conf from /share (path made local).
    share = out / "share" / "mosquitto"
    conf = share / "espfleet.conf"
    conf.write_text(conf.read_text().replace("/share/mosquitto", str(share)))
    home = {"homeassistant": "ha-pass", "zigbee2mqtt": "z-pass"}
    passwd = tmp_path / "pw"
    passwd.write_text(
        "".join(f"{c.username}:{c.hash}\n" for c in store.list())
        + "".join(f"{user}:{hash_secret(pw)}\n" for user, pw in home.items())
    )
    passwd.chmod(0o600)
    port = free_port()
    main_conf = tmp_path / "mosquitto.conf"
    main_conf.write_text(
        ("user root\n" if os.geteuid() == 0 else "")
        + f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
        + f"listener {port} 127.0.0.1\ninclude_dir {share}\n"
    )
    handle = external_handle(port, store, prefix, kind="mosquitto")
    t = Topics(prefix)
    proc = await asyncio.create_subprocess_exec(
        mosquitto_bin(),
        "-c",
        str(main_conf),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: port_open("127.0.0.1", port), what="mosquitto up")
        async with (
            mqtt_client(handle, "homeassistant", home["homeassistant"]) as ha,
            mqtt_client(handle, "zigbee2mqtt", home["zigbee2mqtt"]) as z2m,
            mqtt_client(handle, "dev-1", secrets["dev-1"]) as dev,
        ):
            await ha.subscribe("#", qos=1)  # the home's own users: everything
            await z2m.publish("zigbee2mqtt/bridge/state", b"online", qos=1)
            await dev.publish(t.status("dev-2"), b'{"online": true}', qos=1)  # not its own
            await dev.publish(t.status("dev-1"), b'{"online": true}', qos=1)  # the marker
            got: list[str] = []
            async with asyncio.timeout(10):
                async for message in ha.messages:
                    got.append(message.topic.value)
                    if message.topic.value == t.status("dev-1"):
                        break
        assert "zigbee2mqtt/bridge/state" in got
        assert t.status("dev-2") not in got  # the fleet's ACL holds for devices
    finally:
        proc.terminate()
        await proc.wait()


def test_ha_addon_refuses_the_addons_reserved_names(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    store.add("homeassistant", Role.HOMEASSISTANT)
    result = CliRunner().invoke(
        broker_app, ["ha-addon", str(tmp_path / "o"), "--creds", str(store.path)]
    )
    assert result.exit_code == 1
    assert "reserves" in result.output
