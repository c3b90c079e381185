"""The frictions a new user hit with the CLI, each pinned.

Offline checks run `fleet` in-process through typer's CliRunner; the rest run it as a
subprocess against a real broker, controller and simulated devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

from cli.main import app
from fleet.device.sim import FIRMWARE_VERSION, HARDWARE
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.cli import fleet, interruptible
from tests.support.running import controller, operator_url, sim_fleet, wait_for

ROOM_NAMES_REFUSED = ["Standup", "my room!", "", "a/b"]


def invoke(runner: CliRunner, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args), env={"COLUMNS": "80", "FLEET_BROKER": ""})
    return res.exit_code, res.stdout, res.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert not any(box in stderr for box in "╭╰│"), stderr  # no typer boxes
    return lines[0]


def test_version(runner: CliRunner) -> None:
    code, out, _ = invoke(runner, "--version")
    assert code == 0
    assert out.startswith("fleet ")
    assert "protocol v1" in out


@pytest.mark.parametrize("room", ROOM_NAMES_REFUSED)
def test_a_bad_room_name_says_what_is_allowed_without_a_regex(runner: CliRunner, room: str) -> None:
    code, _, err = invoke(runner, "join-all", room)
    assert code == 2
    line = one_error_line(err)
    assert f"invalid room name {room!r}: use 1-64 of a-z, 0-9" in line
    assert "^[" not in line
    assert "{0,63}" not in line


def test_device_and_room_errors_speak_alike(runner: CliRunner) -> None:
    _, _, device_err = invoke(runner, "join", "Dev_1", "standup")
    _, _, room_err = invoke(runner, "join", "dev-1", "Standup")
    assert one_error_line(device_err).startswith("error: invalid device id 'Dev_1': use 1-64")
    assert one_error_line(room_err).startswith("error: invalid room name 'Standup': use 1-64")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["join-all", "standup", "--timeout", "0"], "'--timeout'"),
        (["join-all", "standup", "--frob"], "No such option: --frob"),
        (["join-all"], "Missing argument 'room'"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_option_errors_are_one_plain_line(runner: CliRunner, args: list[str], words: str) -> None:
    code, _, err = invoke(runner, *args)
    assert code == 2
    line = one_error_line(err)
    assert words in line
    assert "--help)" in line  # where to read more


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["cmd", "dev-2", "frobnicate"], "unknown op 'frobnicate': use one of ping, identify"),
        (["cmd", "dev-2", "set_groups"], "set_groups: invalid groups: field required"),
        (["cmd", "dev-2", "set_groups", "--arg", "groups=Bad_Group"], "invalid group name"),
        (["cmd", "dev-2", "ping", "--arg", "secs=3"], "ping does not take secs (it takes no args)"),
        (["cmd", "dev-2", "identify", "--arg", "secs=3"], "(it takes seconds)"),
        (["cmd", "dev-2", "identify", "--arg", "seconds=0"], "identify: invalid seconds"),
        (["cmd", "dev-2", "ota", "--arg", "url=ftp://x"], "ota: invalid url"),
        (["cmd", "dev-2", "ping", "--arg", "novalue"], "must look like KEY=VALUE"),
    ],
)
def test_commands_are_checked_before_sending(
    runner: CliRunner, args: list[str], words: str
) -> None:
    # No broker is running: every one of these must stop before connecting (exit 2, not 3).
    code, _, err = invoke(runner, *args)
    assert code == 2, err
    assert words in one_error_line(err)


ID_WORDS = "use 1-64 of a-z, 0-9 and '-', starting with a letter or digit"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["controller", "--client-id", "BAD"], f"--client-id: invalid client id 'BAD': {ID_WORDS}"),
        (
            ["controller", "--ingest-share", "BAD", "--influx-url", "http://127.0.0.1:1"],
            f"--ingest-share: invalid share group 'BAD': {ID_WORDS}",
        ),
        (["controller", "--ha-room", "Bad"], "invalid room name 'Bad': use 1-64 of a-z, 0-9, '.'"),
        (["ingest", "--share", "BAD"], f"--share: invalid share group 'BAD': {ID_WORDS}"),
        (["ingest", "--client-id", "a/b"], f"--client-id: invalid client id 'a/b': {ID_WORDS}"),
        (["sim", "--id-prefix", "BAD"], f"invalid device id 'BAD-1': {ID_WORDS}"),
        (["sim", "--group", "Bad_G"], f"--group: invalid group name 'Bad_G': {ID_WORDS}"),
        (["up", "--group", "Bad_G"], f"--group: invalid group name 'Bad_G': {ID_WORDS}"),
        (["creds", "add", "Bad", "--role", "controller"], "invalid username 'Bad': use 1-64"),
        (
            ["creds", "add", "dev-1", "--role", "device", "--group", "Bad_G"],
            f"invalid group name 'Bad_G': {ID_WORDS}",
        ),
        (
            [
                "provision", "--device-id", "dev-1", "--group", "Bad_G", "--port", "/dev/null",
                "--wifi-ssid", "x", "--wifi-password", "y", "--broker", "mqtt://127.0.0.1:1",
            ],
            f"invalid group name 'Bad_G': {ID_WORDS}",
        ),
        (["web", "--ws-port", "8083", "--prefix", "a/+/b"], "invalid topic prefix 'a/+/b'"),
    ],
)  # fmt: skip
def test_every_validated_name_option_says_what_is_allowed(
    args: list[str], says: str, tmp_path: Path
) -> None:
    env = {"COLUMNS": "80", "FLEET_BROKER": "", "FLEET_HOME": str(tmp_path)}
    res = CliRunner().invoke(app, args, env=env)
    # The credential store's refusals exit 1 like its other ones (a user that exists).
    assert res.exit_code == (1 if args[0] == "creds" else 2), res.output
    line = one_error_line(res.stderr)
    assert says in line
    assert "{0,63}" not in line
    assert "[a-z" not in line
    assert not (tmp_path / "credentials.json").exists()  # refused before anything is written


def test_json_errors_are_json_on_stdout(runner: CliRunner) -> None:
    code, out, err = invoke(runner, "join-all", "Standup", "--json")
    assert code == 2
    error = json.loads(out)
    assert error == {
        "ok": False,
        "error": one_error_line(err).removeprefix("error: "),
        "code": "usage",
        "exit_code": 2,
    }
    code, out, _ = invoke(runner, "cmd", "dev-1", "ping", "--bad-option", "--json")
    assert (code, json.loads(out)["code"]) == (2, "usage")


def test_help_fits_80_columns(runner: CliRunner) -> None:
    code, out, _ = invoke(runner, "up", "--help")
    assert code == 0
    for option in ("--influx-flush-interval", "--ha-prefix", "--tele-interval", "--no-audio"):
        assert option in out  # never truncated
    assert "…" not in out
    assert "<bool>" not in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    code, out, _ = invoke(runner, "--help")
    assert code == 0
    # A docstring's own line breaks do not show inside the command list.
    lines = out.splitlines()
    assert all(
        line.startswith("  ") or not line.strip() or line.endswith(":") or line.startswith("Usage")
        for line in lines[lines.index("Commands:") :]
    ), out


def complete(words: str, home: Path) -> list[str]:
    """What bash completion offers for the last word of `words` (typer's real path)."""
    import subprocess

    parts = words.split(" ")
    env = {
        **os.environ,
        "FLEET_HOME": str(home),
        "_FLEET_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1),
    }
    run = subprocess.run(
        [sys.executable, "-c", "from cli.main import app; app(prog_name='fleet')"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return run.stdout.split()


def test_completion_offers_ops_devices_and_rooms_without_connecting(tmp_path: Path) -> None:
    assert complete("fleet cmd dev-1 se", tmp_path) == ["set_groups"]
    assert complete("fleet cmd dev-1 ", tmp_path) == [
        "ping",
        "identify",
        "reboot",
        "ota",
        "set_groups",
        "ring",
    ]
    # Names come from what the last commands saw (FLEET_HOME/names.json): no broker here.
    (tmp_path / "names.json").write_text(
        json.dumps({"devices": ["dev-1", "dev-10", "kitchen"], "rooms": ["standup", "lunch"]})
    )
    assert complete("fleet join dev-", tmp_path) == ["dev-1", "dev-10"]
    assert complete("fleet join dev-1 st", tmp_path) == ["standup"]
    assert complete("fleet sessions l", tmp_path) == ["lunch"]


# --- against a real fleet ------------------------------------------------------------------


async def test_a_real_fleet_reads_right(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    ids = ["dev-1", "dev-2", "dev-10"]
    secrets = {
        device: secret
        for device, secret in amqtt_broker.store.add_devices(ids, groups=["kitchen"]).items()
    }
    amqtt_broker.backend.sync()
    common = ("--broker", str(operator_url(amqtt_broker)), "--prefix", amqtt_broker.prefix)
    fleet_of_three = sim_fleet(amqtt_broker, secrets, groups=["kitchen"])
    async with controller(amqtt_broker, tmp_path / "c.db"), fleet_of_three:
        # Natural order, and the names kept for completion.
        code, out, err = await fleet("devices", "--json", *common, home=tmp_path)
        assert code == 0, err
        assert [d["device"] for d in json.loads(out)] == ["dev-1", "dev-2", "dev-10"]
        assert json.loads((tmp_path / "names.json").read_text())["devices"] == ids
        code, out, _ = await fleet("devices", *common, home=tmp_path)
        assert "3 devices, 3 online" in out
        code, out, _ = await fleet("devices", "--summary", "--json", *common, home=tmp_path)
        assert json.loads(out)["presence"] == {"online": 3}
        assert json.loads(out)["group"] == {"kitchen": 3}

        # A typo in a group is refused, not "ok: no devices targeted".
        code, out, err = await fleet(
            "join-all", "standup", "--group", "nosuchgroup", "--json", *common, home=tmp_path
        )
        assert code == 4, (out, err)
        assert json.loads(out)["code"] == "unknown_group"
        assert "no device is in group 'nosuchgroup'" in err

        # --for says when the devices leave.
        code, out, err = await fleet("join-all", "standup", "--for", "30m", *common, home=tmp_path)
        assert code == 0, err
        assert "the devices leave at" in out

        # Unknown rooms and devices are refused at once (exit 4), not an empty table or a wait.
        code, out, err = await fleet("sessions", "nosuchroom", "--json", *common, home=tmp_path)
        assert code == 4, (out, err)
        assert json.loads(out)["code"] == "unknown_room"
        code, _, err = await fleet("telemetry", "tail", "nosuchdev", *common, home=tmp_path)
        assert code == 4
        assert "unknown device 'nosuchdev'" in one_error_line(err)

        # --json on say and rooms rm.
        code, out, _ = await fleet("say", "standup", "hello", "--json", *common, home=tmp_path)
        assert (code, json.loads(out)["code"]) == (4, "no_session")  # devices without audio
        code, out, _ = await fleet("rooms", "create", "spare", *common, home=tmp_path)
        assert "1 room" in out
        assert "1 rooms" not in out
        code, out, _ = await fleet("rooms", "rm", "spare", "--json", *common, home=tmp_path)
        assert (code, json.loads(out)["room"]) == (0, "spare")
        code, out, _ = await fleet("rooms", "rm", "spare", "--json", *common, home=tmp_path)
        assert (code, json.loads(out)["code"]) == (4, "unknown_room")


async def test_an_offline_device_keeps_its_firmware_and_groups(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    """Its retained status is its will (`{"online": false}`): `fleet devices` takes what it
    is from the controller, which kept its last birth; without one it says what it lacks."""
    h = amqtt_broker
    secrets = h.store.add_devices(["dev-20"], groups=["kitchen"])
    h.backend.sync()
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    common = ("--broker", str(operator_url(h)), "--prefix", h.prefix)
    async with controller(h, tmp_path / "c.db") as ctl:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "cli.main", "sim", "--devices", "1", "--start", "20"),
            *("--secrets", str(tmp_path / "secrets.json"), "--broker", f"mqtt://{h.host}:{h.port}"),
            *("--prefix", h.prefix, "--group", "kitchen"),
            cwd=ROOT,
            env={**os.environ, "FLEET_HOME": str(tmp_path)},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            devices = ctl.registry.devices
            await wait_for(lambda: "dev-20" in devices and devices["dev-20"].rev == 0, timeout=30)
        finally:
            proc.send_signal(signal.SIGKILL)  # no goodbye: the broker sends its will
            await proc.wait()
        await wait_for(lambda: not devices["dev-20"].online, timeout=30, what="its will")
        code, out, err = await fleet("devices", "--json", *common, home=tmp_path)
        assert code == 0, err
        assert json.loads(out) == [
            {
                "device": "dev-20",
                "online": False,
                "fw": FIRMWARE_VERSION,
                "board": HARDWARE,
                "groups": ["kitchen"],
                "rev": 0,
                "room": None,
                "error": None,
            }
        ]
        code, out, _ = await fleet("devices", *common, home=tmp_path)
        row = next(line for line in out.splitlines() if "dev-20" in line)
        assert "no" in row
        assert FIRMWARE_VERSION in row
        assert "kitchen" in row
    # No controller: the retained fleet still lists, and says what it cannot show.
    code, out, err = await fleet("devices", "--json", *common, home=tmp_path)
    assert code == 0, err
    assert json.loads(out)[0]["fw"] is None
    assert "no controller answered" in err
    assert "offline devices show no firmware, board or groups" in err
    # A controller started again on its database still knows what the offline device is.
    async with controller(h, tmp_path / "c.db"):
        code, out, err = await fleet("devices", "--json", *common, home=tmp_path)
        assert code == 0, err
        assert (json.loads(out)[0]["fw"], json.loads(out)[0]["groups"]) == (
            FIRMWARE_VERSION,
            ["kitchen"],
        )


async def test_ctrl_c_during_join_all_says_the_intent_stays(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    # No controller runs, so the command is still waiting for its answer when interrupted.
    url = operator_url(amqtt_broker)
    common = ("--broker", str(url), "--prefix", amqtt_broker.prefix)
    env = {**os.environ, "FLEET_HOME": str(tmp_path), "COLUMNS": "200"}
    watcher = mqtt_client(amqtt_broker, url.username, url.password, client_id=f"{url.username}-w")
    async with watcher as watch:
        # The CLI names itself as the requester (api/by/{user}/{op}).
        await watch.subscribe(amqtt_broker.topics.api_by(url.username, "join-all"), qos=1)
        proc = await _interrupt_once_sent(watch, env, common)
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 130, err
    text = err.decode()
    assert "interrupted: stopped waiting; a join-all the controller accepted stays in force" in text
    assert "fleet leave-all undoes it" in text


async def _interrupt_once_sent(
    watch: aiomqtt.Client, env: dict[str, str], common: tuple[str, ...]
) -> asyncio.subprocess.Process:
    """`fleet join-all`, sent Ctrl-C once its request is on the broker (it is waiting then)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "join-all",
        "standup",
        *common,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=interruptible,
    )
    async with asyncio.timeout(60):
        async for _ in watch.messages:
            break
    proc.send_signal(signal.SIGINT)  # inside its asyncio.run, which turns it into the message
    return proc


async def test_not_authorized_says_where_credentials_come_from(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    url = f"mqtt://127.0.0.1:{amqtt_broker.port}"
    code, _, err = await fleet("devices", "--broker", url, home=tmp_path)
    assert code == 3
    line = one_error_line(err)
    assert "credentials come from --broker mqtt://USER:PASS@HOST:PORT" in line
    assert "fleet creds add NAME --role operator" in line


def test_fleet_up_log_says_each_kind_of_warning_once_then_a_count() -> None:
    import logging

    from cli.logsummary import SummarizingFilter

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    summary = SummarizingFilter(window_s=0.2)
    handler.addFilter(summary)
    log = logging.getLogger("fleet.test.summary")
    log.addHandler(handler)
    log.propagate = False
    try:
        for n in range(44):
            log.warning("dev-%d: meeting refused: room_full", n)
        try:
            raise TimeoutError("Timeout waiting for PUBACK")
        except TimeoutError:
            log.exception("publish failed")
        import time

        time.sleep(0.25)
        log.warning("dev-%d: meeting refused: room_full", 99)
    finally:
        log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages[0] == "dev-0: meeting refused: room_full"
    assert "Timeout waiting for PUBACK" in messages[1]
    assert records[1].exc_info is None  # an expected condition: no traceback
    assert messages[2] == (
        "dev-99: meeting refused: room_full (and 43 more like it in the last 0.2s)"
    )
    assert len(messages) == 3


async def test_agent_join_json_prints_a_json_object_per_line(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    common = ("--broker", str(operator_url(amqtt_broker)), "--prefix", amqtt_broker.prefix)
    async with controller(amqtt_broker, tmp_path / "c.db"):
        code, out, err = await fleet(
            "agent",
            "join",
            "standup",
            "--id",
            "agent-js",
            "--duration",
            "1",
            "--json",
            *common,
            home=tmp_path,
        )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events, out
    assert all(set(e) == {"ts", "event"} for e in events), out
    assert "joining standup" in events[0]["event"]
    assert any("left" in e["event"] or "leaving" in e["event"] for e in events[1:]), out


def test_completion_offers_agent_modes(tmp_path: Path) -> None:
    assert complete("fleet agent join standup --mode tr", tmp_path) == ["transcribe"]
