"""What every `fleet` command shares: options, exit codes, running a coroutine."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Coroutine
from enum import IntEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from fleet.errors import (
    BrokerUnavailable,
    ConfigError,
    ControllerUnavailable,
    CredentialsError,
    FleetError,
)
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics
from fleet.protocol.messages import ApiRequest
from fleet.settings import load_settings

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


class Exit(IntEnum):
    OK = 0
    NOT_CONVERGED = 1  # the operation ran, but not every online target got there
    USAGE = 2  # bad arguments (typer's own code for usage errors)
    UNREACHABLE = 3  # no broker, or no controller answered
    REFUSED = 4  # the controller refused the request (unknown device, bad request)


BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        envvar="FLEET_BROKER",
        help="Broker URL, e.g. mqtt://user:pass@host:1883 (mqtts:// for TLS, ws:// for "
        "WebSocket). Default: the one `fleet up` wrote to FLEET_HOME, else mqtt://127.0.0.1:1883.",
        show_default=False,
    ),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option("--prefix", envvar="FLEET_PREFIX", help="Topic root.", show_default="fleet/v1"),
]
IceServerOpt = Annotated[
    list[str] | None,
    typer.Option(help="STUN/TURN server URL for the audio (repeatable); default: none."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, max=3600, help="Seconds to wait for devices to converge."),
]


def connection(broker: str | None, prefix: str | None) -> tuple[BrokerUrl, Topics]:
    try:
        settings = load_settings(prefix=prefix)
        return settings.broker_url(broker), settings.topics()
    except ConfigError as exc:
        fail(str(exc), Exit.USAGE)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; platform errors become a message and an exit code."""
    try:
        return asyncio.run(coro)
    except FleetError as exc:
        _fail_for(exc)
    except BaseExceptionGroup as group:
        # A long-running part's task group stopped on a platform error (a broker that
        # refused the controller's subscription): the error, not a traceback.
        leaf = _first_fleet_error(group)
        if leaf is None:
            raise
        _fail_for(leaf)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _fail_for(exc: FleetError) -> NoReturn:
    if isinstance(exc, BrokerUnavailable | ControllerUnavailable):
        fail(str(exc), Exit.UNREACHABLE)
    if isinstance(exc, ConfigError | CredentialsError):
        fail(str(exc), Exit.USAGE)
    fail(str(exc), Exit.REFUSED)


def _first_fleet_error(group: BaseExceptionGroup[BaseException]) -> FleetError | None:
    for exc in group.exceptions:
        if isinstance(exc, FleetError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (leaf := _first_fleet_error(exc)):
            return leaf
    return None


def run_service(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a long-lived part until SIGINT (Ctrl-C) or SIGTERM, then stop it cleanly, exit 0."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        for sig in stop_signals:
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            err_console.print("stopped", highlight=False)
        finally:
            for sig in stop_signals:
                loop.remove_signal_handler(sig)

    run(main())


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(int(code))


def api_request(**fields: Any) -> ApiRequest:
    """An API request from command-line values; a value the protocol refuses exits 2."""
    try:
        return ApiRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(f"invalid request: {where}: {first['msg']}", Exit.USAGE)


def print_json(value: BaseModel | list[Any] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        text = value.model_dump_json(by_alias=True, exclude_none=True, indent=2)
    else:
        text = json.dumps(value, indent=2, default=str)
    sys.stdout.write(text + "\n")


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1h', '1h30m' -> seconds."""
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        m = _DURATION.fullmatch(text)
        if not text or m is None or not any(m.groups()):
            raise typer.BadParameter(
                f"{text!r} is not a duration; use e.g. 90s, 15m, 1h or 1h30m"
            ) from None
        hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
        value = hours * 3600 + minutes * 60 + seconds
    if value <= 0:
        raise typer.BadParameter("a duration must be positive")
    return value


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # amqtt logs every refused publish at INFO and connection noise at WARNING.
    logging.getLogger("amqtt").setLevel(logging.ERROR if not verbose else logging.INFO)
    logging.getLogger("transitions").setLevel(logging.WARNING)
