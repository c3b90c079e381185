"""The `fleet` command as a user runs it: a subprocess against real servers and devices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker.amqtt.embedded import EmbeddedBroker
from fleet.auth import CredentialStore, Role
from tests.support.brokers import BrokerHandle, free_port
from tests.support.cli import fleet
from tests.support.running import controller, operator_url, register_devices, sim_fleet


async def test_protocol_schema_prints_every_message(tmp_path: Path) -> None:
    code, out, _ = await fleet("protocol", "schema", home=tmp_path)
    assert code == 0
    schemas = json.loads(out)
    assert {"status", "desired", "state", "cmd", "ack", "tele", "api_request", "api_result"} <= set(
        schemas
    )
    code, out, _ = await fleet("protocol", "schema", "desired", home=tmp_path)
    assert code == 0
    assert "rev" in json.loads(out)["properties"]
    code, _, err = await fleet("protocol", "schema", "nonsense", home=tmp_path)
    assert code == 2
    assert "unknown message" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["join-all", "Bad Room"], "room"),
        (["join-all", "standup", "--for", "soon"], "not a duration"),
        (["join-all", "standup", "--timeout", "0"], "timeout"),
        (["join", "Not_A_Device", "standup"], "invalid device id"),
        (["cmd", "dev-1", "ping", "--arg", "novalue"], "KEY=VALUE"),
        (["devices", "--broker", "gopher://x"], "unsupported broker URL scheme"),
        (["sim", "--devices", "0"], "0 is not in the range 1<=x<=20000"),
    ],
)
async def test_bad_arguments_exit_2_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = await fleet(*args, home=tmp_path)
    assert code == 2, (out, err)
    assert message in (err + out)
    assert "Traceback" not in err


async def test_unreachable_broker_exits_3(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    code, _, err = await fleet(
        "join-all", "standup", "--broker", f"mqtt://u:p@127.0.0.1:{port}", home=tmp_path
    )
    assert code == 3
    assert "cannot connect to broker" in err
    assert ":p@" not in err  # the password never shows


async def test_no_controller_exits_3(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    url = str(operator_url(amqtt_broker))
    code, _, err = await fleet(
        "join-all", "standup", "--broker", url, "--prefix", amqtt_broker.prefix, home=tmp_path
    )
    assert code == 3
    assert "no controller answered" in err


async def test_fleet_operations_end_to_end(any_broker: BrokerHandle, tmp_path: Path) -> None:
    secrets = register_devices(any_broker, 3)
    url = str(operator_url(any_broker))
    common = ("--broker", url, "--prefix", any_broker.prefix)
    async with controller(any_broker, tmp_path / "ctl.db"), sim_fleet(any_broker, secrets) as sims:
        code, out, err = await fleet("join-all", "standup", "--json", *common, home=tmp_path)
        assert code == 0, err
        result = json.loads(out)
        assert result["counts"] == {"converged": 3}
        assert {d["device"] for d in result["devices"]} == set(secrets)
        assert all(dev.meeting and dev.meeting.room == "standup" for dev in sims.devices)

        code, out, err = await fleet("leave", "dev-2", *common, home=tmp_path)
        assert code == 0, err
        assert "dev-2" in out
        assert "converged" in out

        code, out, _ = await fleet("devices", "--json", *common, home=tmp_path)
        assert code == 0
        rooms = {d["device"]: d["room"] for d in json.loads(out)}
        assert rooms == {"dev-1": "standup", "dev-2": None, "dev-3": "standup"}

        code, out, _ = await fleet("cmd", "dev-1", "ping", "--json", *common, home=tmp_path)
        assert code == 0
        assert json.loads(out)["devices"][0]["result"]["uptime_s"] >= 0

        # An op no device knows is a usage error, caught before anything is sent.
        code, out, err = await fleet("cmd", "dev-1", "selfdestruct", *common, home=tmp_path)
        assert code == 2
        assert "unknown op 'selfdestruct': use one of ping, identify" in err

        code, _, err = await fleet("join", "nodev", "standup", *common, home=tmp_path)
        assert code == 4
        assert "unknown device" in err

        code, out, err = await fleet("leave-all", *common, home=tmp_path)
        assert code == 0, err
        assert all(dev.meeting is None for dev in sims.devices)


async def test_tls_and_secure_websocket_broker_urls(
    creds_store: CredentialStore, topic_prefix: str, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """`mqtts://` and `wss://` (trusting FLEET_CA_FILE) reach the embedded broker's listeners."""
    cert, key = tls_files
    secret = creds_store.add("ops", Role.CONTROLLER)
    async with EmbeddedBroker(
        creds_store.path, port=0, ws_port=0, prefix=topic_prefix, certfile=cert, keyfile=key
    ) as broker:
        for url, extra_env in (
            (f"mqtts://ops:{secret}@127.0.0.1:{broker.port}", {"FLEET_CA_FILE": str(cert)}),
            # With a certificate the WebSocket listener is TLS too.
            (f"wss://ops:{secret}@127.0.0.1:{broker.ws_port}/", {"FLEET_CA_FILE": str(cert)}),
        ):
            os.environ.update(extra_env)
            try:
                code, out, err = await fleet(
                    "devices", "--json", "--broker", url, "--prefix", topic_prefix, home=tmp_path
                )
            finally:
                for key_name in extra_env:
                    os.environ.pop(key_name, None)
            assert code == 0, err
            assert json.loads(out) == []
        # Without the CA the certificate is not trusted: a clear error, exit 3.
        code, _, err = await fleet(
            "devices",
            "--broker",
            f"mqtts://ops:{secret}@127.0.0.1:{broker.port}",
            "--prefix",
            topic_prefix,
            home=tmp_path,
        )
        assert code == 3
        assert "cannot connect to broker" in err


async def test_plain_websocket_broker_url(
    creds_store: CredentialStore, topic_prefix: str, tmp_path: Path
) -> None:
    secret = creds_store.add("ops", Role.CONTROLLER)
    async with EmbeddedBroker(creds_store.path, port=0, ws_port=0, prefix=topic_prefix) as broker:
        url = f"ws://ops:{secret}@127.0.0.1:{broker.ws_port}/"
        code, out, err = await fleet(
            "devices", "--json", "--broker", url, "--prefix", topic_prefix, home=tmp_path
        )
    assert code == 0, err
    assert json.loads(out) == []
