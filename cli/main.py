"""The `fleet` command: thin typer shells over the `fleet` package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli import broker, creds, flash, intercom, meetings, ops, services, telemetry, web
from cli.common import Exit, FleetGroup, command_group, fail, setup_logging
from fleet.protocol.constants import PROTOCOL_VERSION

app = command_group(
    "Run fleets of ESP32 audio devices in meetings.",
    name="fleet",
    cls=FleetGroup,
    pretty_exceptions_enable=False,
)
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


@app.callback()
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


app.command("up")(services.up)
app.command("demo")(services.demo)
app.command("controller")(services.controller)
app.command("ingest")(services.ingest)
app.command("sim")(services.sim)
app.command("web")(web.web)
app.command("devices")(ops.devices)
app.command("join-all")(ops.join_all)
app.command("leave-all")(ops.leave_all)
app.command("join")(ops.join)
app.command("leave")(ops.leave)
app.command("cmd")(ops.cmd)
app.command("sessions")(meetings.sessions)
app.command("say")(meetings.say)
app.command("call")(intercom.call)
app.command("answer")(intercom.answer)
app.command("hangup")(intercom.hangup)
app.command("flash")(flash.flash)
app.command("provision")(flash.provision)
app.command("image")(flash.image)
app.add_typer(protocol_app, name="protocol")
app.add_typer(creds.app, name="creds")
app.add_typer(broker.app, name="broker")
app.add_typer(meetings.app, name="rooms")
app.add_typer(meetings.agent_app, name="agent")
app.add_typer(telemetry.app, name="telemetry")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
