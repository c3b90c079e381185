"""The `fleet` command loads only what a command runs: `--version`, `--help` and shell
completion start without the broker, the payload models, MQTT, audio or the web server.

Checked by the modules a fresh interpreter holds after the command, not by timing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Third-party packages a light command must not import: each costs more to load than
# the command takes to run.
HEAVY_PACKAGES = {
    "aiohttp",
    "aiomqtt",
    "aiortc",
    "amqtt",
    "asyncio",
    "av",
    "dns",
    "esptool",
    "influxdb_client",
    "numpy",
    "paho",
    "pocketsphinx",
    "pydantic",
    "pydantic_settings",
    "rich",
    "sqlite3",
}
# The project's own modules that pull those in (or are features a light command needs not).
HEAVY_MODULES = (
    "broker.amqtt",
    "broker.mosquitto",
    "fleet.agents",
    "fleet.auth.credentials",
    "fleet.client",
    "fleet.controller",
    "fleet.device.sim",
    "fleet.ha.part",
    "fleet.media",
    "fleet.meetings",
    "fleet.mqtt",
    "fleet.protocol.messages",
    "fleet.settings",
    "fleet.telemetry",
    "fleet.web",
    "cli.stack",
    "cli.demo",
)

_PROBE = """
import json, sys
sys.argv = ["fleet", *json.loads(sys.argv[1])]
from cli.main import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def modules_after(args: list[str], env: dict[str, str] | None = None) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
        check=False,
    )
    marker = run.stderr.rpartition("\nMODULES ")[2]
    assert marker, run.stderr
    return set(json.loads(marker))


def heavy(modules: set[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if m.split(".")[0] in HEAVY_PACKAGES
        or any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)
    )


def heavy_but_typers(modules: set[str]) -> list[str]:
    return [m for m in heavy(modules) if m.split(".")[0] != "pydantic"]


@pytest.mark.parametrize(
    "args", [["--version"], ["--help"], []], ids=["version", "help", "no-args"]
)
def test_light_commands_import_nothing_heavy(args: list[str]) -> None:
    assert heavy(modules_after(args)) == []


@pytest.mark.parametrize(
    "args",
    [["up", "--help"], ["devices", "--help"], ["creds", "add", "--help"], ["rooms", "--help"]],
    ids=lambda args: "-".join(args),
)
def test_a_commands_help_imports_nothing_heavy_of_ours(args: list[str]) -> None:
    # Past the top level (and in completion) typer itself coerces option values through
    # pydantic: that much is typer's; nothing else heavy may come along.
    assert heavy_but_typers(modules_after(args)) == []


def test_completion_imports_nothing_heavy(tmp_path: Path) -> None:
    (tmp_path / "names.json").write_text(json.dumps({"devices": ["dev-1", "dev-2"]}))
    env = {
        "FLEET_HOME": str(tmp_path),
        "_FLEET_COMPLETE": "complete_bash",
        "COMP_WORDS": "fleet join dev-",
        "COMP_CWORD": "2",
    }
    assert heavy_but_typers(modules_after([], env)) == []


def test_the_probe_sees_a_heavy_command() -> None:
    # The check above means something: a command that does run its parts loads them.
    loaded = modules_after(["protocol", "schema", "status"])
    assert "fleet.protocol.messages" in loaded
    assert "pydantic" in loaded
