"""Credential store, $7$ hashes (Mosquitto-compatible), logins on real brokers, `fleet creds`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

import broker.mosquitto.process as mosquitto_process
from broker.local import BrokerEngine
from cli.creds import app as creds_app
from cli.stack import StackConfig, running_stack
from fleet.auth import (
    CHOSEN_SECRET_ITERATIONS,
    GENERATED_SECRET_ITERATIONS,
    CredentialStore,
    Role,
    credentials,
    default_credentials_path,
    hash_secret,
    verify_secret,
)
from fleet.errors import CredentialsError
from tests.support.brokers import BrokerHandle, free_port, mqtt_client, require_mosquitto

# --- hashes ----------------------------------------------------------------------------------


def test_hash_has_mosquittos_shape() -> None:
    encoded = hash_secret("s3cret", 101)
    tag, iterations, salt, digest = encoded.split("$")[1:]
    assert (tag, iterations) == ("7", "101")
    assert len(salt) == 16  # 12 bytes, base64
    assert len(digest) == 88  # 64 bytes, base64 with padding
    assert verify_secret(encoded, "s3cret")
    assert not verify_secret(encoded, "s3creT")
    assert hash_secret("s3cret", 101) != encoded  # fresh salt each time


@pytest.mark.parametrize(
    "bad",
    ["", "plain", "$6$abc$def", "$7$0$AAAA$AAAA", "$7$x$AAAA$AAAA", "$7$101$@@@@$AAAA"],
)
def test_malformed_hashes_never_verify(bad: str) -> None:
    assert not verify_secret(bad, "anything")


def _mosquitto_passwd() -> str:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto_passwd is not installed; CI needs the mosquitto package")
        pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
    return tool


@pytest.mark.mosquitto
def test_verifies_hashes_made_by_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    subprocess.run(
        [_mosquitto_passwd(), "-c", "-b", str(pwfile), "dev-1", "pass word:1"], check=True
    )
    user, encoded = pwfile.read_text().strip().split(":", 1)
    assert user == "dev-1"
    assert encoded.startswith("$7$")
    assert verify_secret(encoded, "pass word:1")
    assert not verify_secret(encoded, "pass word:2")


async def test_our_hashes_log_in_on_both_brokers(any_broker: BrokerHandle) -> None:
    generated = any_broker.add_device("dev-1")
    chosen = any_broker.add_user("ops", Role.CONTROLLER, secret="correct horse battery")
    assert any_broker.store.get("dev-1").iterations == GENERATED_SECRET_ITERATIONS  # type: ignore[union-attr]
    assert any_broker.store.get("ops").iterations == CHOSEN_SECRET_ITERATIONS  # type: ignore[union-attr]
    async with mqtt_client(any_broker, "dev-1", generated) as dev:
        await dev.publish(any_broker.topics.state("dev-1"), b'{"rev":0}', qos=1)
    async with mqtt_client(any_broker, "ops", "correct horse battery", client_id="ops-1") as ops:
        await ops.publish(any_broker.topics.api("join"), b"{}", qos=1)
    assert chosen == "correct horse battery"


async def test_wrong_password_is_refused(any_broker: BrokerHandle) -> None:
    secret = any_broker.add_device("dev-1")
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(any_broker, "dev-1", secret + "x"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(any_broker, "nobody", secret, client_id="nobody"):
            pass


async def test_anonymous_is_refused(any_broker: BrokerHandle) -> None:
    any_broker.add_device("dev-1")
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(any_broker, None, None, client_id="anon-1"):
            pass


# --- the store -------------------------------------------------------------------------------


def test_round_trip(creds_store: CredentialStore) -> None:
    s_dev = creds_store.add("dev-1", Role.DEVICE, groups=["kitchen", "all", "kitchen", "hall"])
    s_ctl = creds_store.add("controller", "controller")
    s_ha = creds_store.add("homeassistant", Role.HOMEASSISTANT, secret="a passphrase")
    assert s_ha == "a passphrase"
    assert len(s_dev) >= 32
    assert s_dev != s_ctl

    again = CredentialStore(creds_store.path)
    dev = again.get("dev-1")
    assert dev is not None
    assert (dev.role, dev.groups) == (Role.DEVICE, ["kitchen", "hall"])  # 'all' is implicit
    assert [c.username for c in again.list()] == ["controller", "dev-1", "homeassistant"]
    assert again.verify("dev-1", s_dev) == dev
    assert again.verify("dev-1", s_ctl) is None
    assert again.verify("ghost", s_dev) is None
    assert again.verify("homeassistant", "a passphrase") is not None


def test_file_is_private_and_holds_no_secret(creds_store: CredentialStore) -> None:
    secret = creds_store.add("dev-1", Role.DEVICE)
    raw = creds_store.path.read_text()
    assert secret not in raw
    assert json.loads(raw)["users"][0]["hash"].startswith("$7$")
    assert stat.S_IMODE(creds_store.path.stat().st_mode) == 0o600
    leftovers = [p.name for p in creds_store.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_existing_user_needs_replace(creds_store: CredentialStore) -> None:
    old = creds_store.add("dev-1", Role.DEVICE)
    with pytest.raises(CredentialsError, match="already exists"):
        creds_store.add("dev-1", Role.DEVICE)
    new = creds_store.add("dev-1", Role.DEVICE, replace=True)
    assert creds_store.verify("dev-1", new) is not None
    assert creds_store.verify("dev-1", old) is None


@pytest.mark.parametrize(
    ("username", "role", "groups", "message"),
    [
        ("Dev-1", Role.DEVICE, (), "invalid device id"),
        ("dev_1", Role.DEVICE, (), "invalid device id"),
        ("-dev", Role.DEVICE, (), "invalid device id"),
        ("x" * 65, Role.DEVICE, (), "invalid device id"),
        ("has space", Role.CONTROLLER, (), "invalid username"),
        ("ops", Role.CONTROLLER, ("kitchen",), "only devices have groups"),
        ("dev-1", Role.DEVICE, ("Bad Group",), "invalid group name 'Bad Group': use 1-64"),
        ("dev-1", "robot", (), "unknown role"),
    ],
)
def test_bad_users_are_refused(
    creds_store: CredentialStore, username: str, role: str, groups: tuple[str, ...], message: str
) -> None:
    with pytest.raises(CredentialsError, match=message):
        creds_store.add(username, role, groups=groups)
    assert not creds_store.path.exists()


def test_controller_names_may_use_underscores(creds_store: CredentialStore) -> None:
    creds_store.add("ops_team", Role.CONTROLLER)
    assert creds_store.get("ops_team") is not None


def test_remove_and_set_groups(creds_store: CredentialStore) -> None:
    creds_store.add("dev-1", Role.DEVICE)
    creds_store.add("ops", Role.CONTROLLER)
    assert creds_store.set_groups("dev-1", ["garden"]).groups == ["garden"]
    assert CredentialStore(creds_store.path).get("dev-1").groups == ["garden"]  # type: ignore[union-attr]
    with pytest.raises(CredentialsError, match="unknown user"):
        creds_store.set_groups("dev-9", ["garden"])
    with pytest.raises(CredentialsError, match="only devices"):
        creds_store.set_groups("ops", ["garden"])
    assert creds_store.remove("dev-1") is True
    assert creds_store.remove("dev-1") is False
    assert creds_store.get("dev-1") is None


def test_add_devices_in_bulk(creds_store: CredentialStore) -> None:
    ids = [f"dev-{i:05d}" for i in range(10_000)]
    generation = creds_store.generation
    secrets = creds_store.add_devices(ids, groups=["floor-1"])
    assert creds_store.generation == generation + 1  # one write
    assert list(secrets) == ids
    assert len(set(secrets.values())) == len(ids)
    fresh = CredentialStore(creds_store.path)
    assert len(fresh) == 10_000
    assert fresh.verify("dev-04242", secrets["dev-04242"]) is not None
    assert fresh.get("dev-00007").groups == ["floor-1"]  # type: ignore[union-attr]
    with pytest.raises(CredentialsError, match="already exists"):
        creds_store.add_devices(["new-1", "dev-00001"])
    assert creds_store.get("new-1") is None  # all or nothing
    with pytest.raises(CredentialsError, match="twice"):
        creds_store.add_devices(["new-2", "new-2"])


def test_reload_when_another_process_writes(creds_store: CredentialStore) -> None:
    assert creds_store.get("dev-1") is None
    other = CredentialStore(creds_store.path)  # e.g. `fleet creds add` next to a broker
    secret = other.add("dev-1", Role.DEVICE)
    assert creds_store.verify("dev-1", secret) is not None
    other.set_groups("dev-1", ["hall"])  # same size, maybe same mtime tick: inode differs
    assert creds_store.get("dev-1").groups == ["hall"]  # type: ignore[union-attr]
    other.remove("dev-1")
    assert creds_store.get("dev-1") is None


class _CountingAdapter:
    """Wraps the store's validator and counts the users it validates."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.validated = 0

    def validate_python(self, users: list[object]) -> object:
        self.validated += len(users)
        return self.inner.validate_python(users)  # type: ignore[attr-defined]


def test_a_reload_validates_only_changed_users(
    creds_store: CredentialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 20,000 users a full re-validation took 113-182 ms of the broker's event loop."""
    creds_store.add_devices([f"dev-{i}" for i in range(500)])
    reader = CredentialStore(creds_store.path)
    assert len(reader) == 500
    counting = _CountingAdapter(credentials._USERS_ADAPTER)
    monkeypatch.setattr(credentials, "_USERS_ADAPTER", counting)
    creds_store.set_groups("dev-7", ["hall"])
    creds_store.add("dev-new", Role.DEVICE)
    assert reader.refresh()
    assert counting.validated == 2  # dev-7 and dev-new; the 499 others are reused
    assert reader.get("dev-7").groups == ["hall"]  # type: ignore[union-attr]
    assert reader.get("dev-new") is not None
    # A broken entry is still reported where it is in the file.
    doc = json.loads(creds_store.path.read_text())
    doc["users"][3]["role"] = "root"
    creds_store.path.write_text(json.dumps(doc))
    with pytest.raises(CredentialsError, match=r"users\.3\.role"):
        reader.refresh()


async def test_reloads_run_off_the_event_loop(
    creds_store: CredentialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds_store.add("dev-1", Role.DEVICE)
    reader = CredentialStore(creds_store.path)
    parse = CredentialStore._parse

    def slow_parse(self: CredentialStore, raw: bytes) -> object:
        time.sleep(0.3)  # a big file
        return parse(self, raw)

    monkeypatch.setattr(CredentialStore, "_parse", slow_parse)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert await reader.refresh_async()
    finally:
        task.cancel()
    assert ticks >= 5  # the loop kept running while the file was parsed
    assert reader.get("dev-1", refresh=False) is not None
    assert not await reader.refresh_async()  # unchanged: nothing read


def test_concurrent_writers_do_not_lose_updates(creds_store: CredentialStore) -> None:
    a, b = CredentialStore(creds_store.path), CredentialStore(creds_store.path)
    a.add("dev-1", Role.DEVICE)
    b.add("dev-2", Role.DEVICE)  # b had never read the file: it reloads under the lock
    a.add("dev-3", Role.DEVICE)
    assert {c.username for c in CredentialStore(creds_store.path).list()} == {
        "dev-1",
        "dev-2",
        "dev-3",
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "'users' list"),
        (b'{"version": 9, "users": []}', "unsupported version"),
        (b'{"version": 1, "users": [{"username": "dev-1", "role": "device"}]}', "users.0.hash"),
        (
            b'{"version": 1, "users": [{"username": "x", "role": "device", "hash": "plain"}]}',
            "users.0.hash",
        ),
    ],
)
def test_corrupt_file_is_a_clear_error(
    creds_store: CredentialStore, content: bytes, message: str
) -> None:
    creds_store.path.parent.mkdir(parents=True, exist_ok=True)
    creds_store.path.write_bytes(content)
    with pytest.raises(CredentialsError, match=message) as info:
        creds_store.list()
    assert str(creds_store.path) in str(info.value)
    with pytest.raises(CredentialsError):  # and it stays an error, no silent empty store
        creds_store.get("dev-1")
    with pytest.raises(CredentialsError):  # nor is the broken file overwritten
        creds_store.add("dev-2", Role.DEVICE)
    assert creds_store.path.read_bytes() == content


def test_duplicate_users_in_file(creds_store: CredentialStore) -> None:
    creds_store.add("dev-1", Role.DEVICE)
    doc = json.loads(creds_store.path.read_text())
    doc["users"].append(doc["users"][0])
    creds_store.path.write_text(json.dumps(doc))
    with pytest.raises(CredentialsError, match="appears twice"):
        CredentialStore(creds_store.path).list()


def test_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "nope" / "credentials.json")
    assert store.list() == []
    assert store.verify("dev-1", "x") is None


def test_write_mosquitto_passwd(creds_store: CredentialStore, tmp_path: Path) -> None:
    creds_store.add("dev-1", Role.DEVICE)
    creds_store.add("ops", Role.CONTROLLER)
    path = creds_store.write_mosquitto_passwd(tmp_path / "passwd")
    lines = path.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["ops", "dev-1"]
    assert lines[1].split(":", 1)[1] == creds_store.get("dev-1").hash  # type: ignore[union-attr]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    assert default_credentials_path() == tmp_path / "home" / "credentials.json"
    monkeypatch.delenv("FLEET_HOME")
    assert default_credentials_path() == Path.home() / ".espfleet" / "credentials.json"


# --- fleet creds -------------------------------------------------------------------------------


def test_cli_add_list_groups_rm(runner: CliRunner, tmp_path: Path) -> None:
    file = str(tmp_path / "c.json")
    res = runner.invoke(
        creds_app, ["add", "dev-1", "--role", "device", "-g", "a,b", "--file", file]
    )
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip().splitlines()[-1]
    assert CredentialStore(file).verify("dev-1", secret) is not None

    res = runner.invoke(creds_app, ["add", "ops", "--role", "controller", "--json", "--file", file])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["role"] == "controller"
    assert CredentialStore(file).verify("ops", data["secret"]) is not None

    res = runner.invoke(creds_app, ["list", "--file", file])
    assert res.exit_code == 0
    assert "dev-1" in res.stdout
    assert "a, b" in res.stdout
    assert "$7$" not in res.stdout

    res = runner.invoke(creds_app, ["groups", "dev-1", "hall,garden", "--file", file])
    assert res.exit_code == 0, res.output
    res = runner.invoke(creds_app, ["list", "--json", "--file", file])
    users = {u["username"]: u for u in json.loads(res.stdout)}
    assert users["dev-1"]["groups"] == ["hall", "garden"]
    assert all("hash" not in u for u in users.values())

    res = runner.invoke(creds_app, ["rm", "dev-1", "--file", file])
    assert res.exit_code == 0
    assert CredentialStore(file).get("dev-1") is None


def test_cli_failures_exit_1_with_a_message(runner: CliRunner, tmp_path: Path) -> None:
    file = str(tmp_path / "c.json")
    res = runner.invoke(creds_app, ["rm", "ghost", "--file", file])
    assert res.exit_code == 1
    assert "unknown user 'ghost'" in res.stderr
    res = runner.invoke(creds_app, ["add", "Bad", "--role", "device", "--file", file])
    assert res.exit_code == 1
    assert "invalid device id" in res.stderr
    res = runner.invoke(creds_app, ["add", "ops", "--role", "device", "-g", "x", "--file", file])
    assert res.exit_code == 0
    res = runner.invoke(creds_app, ["add", "ops", "--role", "device", "--file", file])
    assert res.exit_code == 1
    assert "already exists" in res.stderr
    Path(file).write_text("garbage")
    res = runner.invoke(creds_app, ["list", "--file", file])
    assert res.exit_code == 1
    assert "corrupt" in res.stderr


def test_cli_uses_fleet_home(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_HOME", str(tmp_path))
    res = runner.invoke(
        creds_app, ["add", "ops", "--role", "controller", "--secret", "Xq9-chosen-Zz"]
    )
    assert res.exit_code == 0, res.output
    assert "Xq9-chosen-Zz" not in res.stdout  # a chosen secret is not echoed
    assert CredentialStore(tmp_path / "credentials.json").verify("ops", "Xq9-chosen-Zz") is not None


@pytest.mark.mosquitto
async def test_a_user_added_to_a_running_stack_connects_at_once(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fleet creds add` against `fleet up`'s Mosquitto, then a connect at once: the
    password and the client id are checked against the new user (the client-id plugin
    refused it until the broker's file watcher caught up); `fleet creds rm` likewise
    takes effect before it returns. The watcher is slowed so that only `fleet creds`
    itself can make the broker follow."""
    require_mosquitto()
    monkeypatch.setattr(mosquitto_process, "WATCH_INTERVAL_S", 3600.0)
    home = tmp_path / "home"
    config = StackConfig(
        home=home,
        devices=0,
        port=free_port(),
        audio=False,
        mixer=False,
        engine=BrokerEngine.MOSQUITTO,
    )
    file = str(home / "credentials.json")
    async with running_stack(config) as stack:
        await stack.wait_ready()

        async def connects(secret: str) -> bool:
            try:
                async with aiomqtt.Client(
                    config.host,
                    config.port,
                    username="ha",
                    password=secret,
                    identifier="ha-x",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=10,
                ):
                    return True
            except aiomqtt.MqttError:
                return False

        res = runner.invoke(
            creds_app, ["add", "ha", "--role", "homeassistant", "--json", "--file", file]
        )
        assert res.exit_code == 0, res.output
        secret = json.loads(res.stdout)["secret"]
        assert await connects(secret)
        res = runner.invoke(creds_app, ["rm", "ha", "--file", file])
        assert res.exit_code == 0, res.output
        assert not await connects(secret)
