"""`fleet telemetry ...` and the InfluxDB options `fleet controller` and `fleet up` share."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    BrokerOpt,
    Exit,
    JsonOpt,
    PrefixOpt,
    command_group,
    connection,
    console,
    err_console,
    fail,
    option_group,
    require_name,
    run_service,
)
from fleet.errors import ConfigError, UnknownDevice

# What a command runs (MQTT, the payload models, the InfluxDB client) loads when it runs.
if TYPE_CHECKING:
    from fleet.telemetry.config import InfluxSettings
    from fleet.telemetry.tail import EventItem, TeleItem

app = command_group("Device telemetry: live view, InfluxDB, Grafana.")

_ENV = "Env: FLEET_INFLUX_{}."


@option_group
@dataclass
class InfluxOptions:
    """The InfluxDB options of `fleet up`, `fleet controller` and `fleet ingest`."""

    url: Annotated[
        str | None,
        typer.Option(
            "--influx-url",
            help="InfluxDB URL (http://host:8086); telemetry is off without it. "
            + _ENV.format("URL"),
            show_default=False,
        ),
    ] = None
    version: Annotated[
        int | None,
        typer.Option(
            "--influx-version",
            help="2: the /api/v2/write API (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics); "
            "1: InfluxDB 1.x /write. " + _ENV.format("VERSION"),
            show_default="2",
        ),
    ] = None
    token: Annotated[
        str | None,
        typer.Option("--influx-token", help="API token (2.x/3.x). " + _ENV.format("TOKEN")),
    ] = None
    org: Annotated[
        str | None, typer.Option("--influx-org", help="Organisation (2.x). " + _ENV.format("ORG"))
    ] = None
    bucket: Annotated[
        str | None,
        typer.Option(
            "--influx-bucket", help="Bucket (2.x), database (3.x). " + _ENV.format("BUCKET")
        ),
    ] = None
    database: Annotated[
        str | None,
        typer.Option("--influx-database", help="Database (1.x). " + _ENV.format("DATABASE")),
    ] = None
    user: Annotated[
        str | None, typer.Option("--influx-user", help="User (1.x). " + _ENV.format("USER"))
    ] = None
    password: Annotated[
        str | None,
        typer.Option("--influx-password", help="Password (1.x). " + _ENV.format("PASSWORD")),
    ] = None
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--influx-batch-size", help="Points per write. " + _ENV.format("BATCH_SIZE"), min=1
        ),
    ] = None
    flush_interval_ms: Annotated[
        int | None,
        typer.Option(
            "--influx-flush-interval",
            help="Milliseconds before a partial batch is written. "
            + _ENV.format("FLUSH_INTERVAL_MS"),
            min=10,
        ),
    ] = None
    buffer_size: Annotated[
        int | None,
        typer.Option(
            "--influx-buffer",
            help="Points kept while the database is unreachable; beyond, the oldest are dropped "
            "(counted and reported). " + _ENV.format("BUFFER_SIZE"),
            min=1,
        ),
    ] = None

    def settings(self) -> InfluxSettings:
        from fleet.telemetry.config import load_influx_settings

        try:
            return load_influx_settings(**vars(self))
        except ConfigError as exc:
            fail(str(exc), Exit.USAGE)

    def ingest(self) -> InfluxSettings | None:
        """The telemetry ingest's settings, or None when no database is configured."""
        settings = self.settings()
        if not settings.enabled:
            return None
        if settings.version == 2:
            try:
                import influxdb_client  # noqa: F401
            except ImportError:
                fail(
                    "--influx-version 2 needs influxdb-client: pip install -e '.[telemetry]'",
                    Exit.USAGE,
                )
        console.print(settings.describe(), highlight=False)
        return settings


@app.command("tail")
def tail(
    device: Annotated[str | None, typer.Argument(help="Only this device.")] = None,
    events: Annotated[
        bool, typer.Option("--events", help="Also show fleet events (joins, drops, errors).")
    ] = False,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after this many messages.")
    ] = None,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Live telemetry as devices send it (one line, or one JSON object, per message)."""
    from fleet.client import FleetClient
    from fleet.telemetry.tail import Refused, follow

    if device is not None:
        require_name("device", device)
    url, topics = connection(broker, prefix)

    async def go() -> None:
        if device is not None:
            await _check_known(device)
        shown = 0
        async for item in follow(url, topics, device, events):
            if isinstance(item, Refused):
                err_console.print(f"[yellow]refused[/] {item.topic}: {item.reason}")
                continue
            _show(item, as_json)
            shown += 1
            if count is not None and shown >= count:
                return

    async def _check_known(device: str) -> None:
        # A typo would otherwise wait forever for telemetry that never comes.
        async with FleetClient(url, topics) as fleet:
            record = fleet.registry.devices.get(device)
            known = len(fleet.registry.devices)
        if record is None:
            raise UnknownDevice(device, known)
        if not record.online:
            err_console.print(f"{device} is offline: waiting for it to come back", highlight=False)

    run_service(go())


def _show(item: TeleItem | EventItem, as_json: bool) -> None:
    from fleet.telemetry.tail import TeleItem, summary

    if as_json:
        if isinstance(item, TeleItem):
            doc = {
                "device": item.device,
                "received": item.received,
                "tele": item.tele.model_dump(mode="json", exclude_none=True),
            }
        else:
            doc = {
                "received": item.received,
                "event": item.event.model_dump(mode="json", exclude_none=True),
            }
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
        return
    stamp = time.strftime("%H:%M:%S", time.localtime(item.received))
    if isinstance(item, TeleItem):
        console.print(f"{stamp} [bold]{item.device}[/]  {summary(item)}", highlight=False)
    else:
        from fleet.telemetry.points import event_text

        style = "red" if item.event.ok is False else "cyan"
        console.print(f"{stamp} [{style}]event[/] {event_text(item.event)}", highlight=False)


@app.command("dashboards")
def dashboards(
    out: Annotated[Path, typer.Option(help="Folder for the dashboard JSON files.")] = Path(
        "dashboards"
    ),
) -> None:
    """Generate the Grafana dashboards (InfluxQL) as JSON files."""
    try:
        from fleet.telemetry.dashboards import write_dashboards
    except ImportError as exc:
        fail(f"{exc}; install the telemetry extra: pip install -e '.[telemetry]'", Exit.USAGE)
    for path in write_dashboards(out):
        console.print(f"wrote {path}", highlight=False)
