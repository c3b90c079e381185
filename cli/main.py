"""The `fleet` command: thin typer shells over the `fleet` package."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cli import announce, broker, creds, flash, intercom, meetings, ops, services, telemetry, web
from cli.common import Exit, FleetGroup, command_group, fail, setup_logging
from fleet.protocol.constants import PROTOCOL_VERSION

protocol_app = command_group("The wire contract (docs/protocol.md).")


def _print_version(wanted: bool) -> None:
    if not wanted:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("espfleet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        release = "unknown"
    typer.echo(f"fleet {release} (protocol v{PROTOCOL_VERSION})")
    raise typer.Exit()


def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    setup_logging(verbose)


@protocol_app.command("schema")
def schema(
    name: Annotated[str | None, typer.Argument(help="One message (status, desired, ...).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write NAME.schema.json files here.")] = None,
) -> None:
    """Print the JSON Schema of every message (or of NAME)."""
    from fleet.protocol import json_schemas

    schemas = json_schemas()
    if name is not None:
        if name not in schemas:
            fail(f"unknown message {name!r}; known: {', '.join(schemas)}", Exit.USAGE)
        schemas = {name: schemas[name]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for key, value in schemas.items():
            (out / f"{key}.schema.json").write_text(json.dumps(value, indent=2) + "\n")
        typer.echo(f"wrote {len(schemas)} schemas to {out}")
        return
    typer.echo(json.dumps(schemas if name is None else schemas[name], indent=2))


COMMANDS: dict[str, Callable[..., None]] = {
    "up": services.up,
    "demo": services.demo,
    "controller": services.controller,
    "ingest": services.ingest,
    "sim": services.sim,
    "web": web.web,
    "devices": ops.devices,
    "join-all": ops.join_all,
    "leave-all": ops.leave_all,
    "join": ops.join,
    "leave": ops.leave,
    "cmd": ops.cmd,
    "announce": announce.announce,
    "dnd": announce.dnd,
    "sessions": meetings.sessions,
    "say": meetings.say,
    "call": intercom.call,
    "answer": intercom.answer,
    "hangup": intercom.hangup,
    "flash": flash.flash,
    "provision": flash.provision,
    "image": flash.image,
}
GROUPS = {
    "protocol": protocol_app,
    "creds": creds.app,
    "broker": broker.app,
    "rooms": meetings.app,
    "agent": meetings.agent_app,
    "telemetry": telemetry.app,
}


def build_app(only: str | None = None) -> typer.Typer:
    """The `fleet` app; with `only`, one command or group of it and nothing else.

    Typer turns every command it holds into click's form before it runs any (about 0.1 s
    for them all), so a run that names its command gets an app of that command alone: its
    usage, help and errors are the same, as they depend on the command only."""
    fleet = command_group(
        "Run fleets of ESP32 audio devices in meetings.",
        name="fleet",
        cls=FleetGroup,
        pretty_exceptions_enable=False,
    )
    fleet.callback()(_main)
    for name, command in COMMANDS.items():
        if only in (None, name):
            fleet.command(name)(command)
    for name, group in GROUPS.items():
        if only in (None, name):
            fleet.add_typer(group, name=name)
    return fleet


app = build_app()


def _named_command(argv: list[str]) -> str | None:
    """The command or group `argv` names, when it names one before any other word."""
    for arg in argv:
        if arg in ("-v", "--verbose"):
            continue
        return arg if arg in COMMANDS or arg in GROUPS else None
    return None


def main() -> None:
    build_app(_named_command(sys.argv[1:]))(prog_name="fleet")


if __name__ == "__main__":
    main()
