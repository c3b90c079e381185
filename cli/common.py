"""What every `fleet` command shares: options, exit codes, running a coroutine."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast, get_type_hints

import typer
from typer.core import TyperGroup

from cli.logsummary import SummarizingFilter

try:  # typer 0.29+ carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on click
    # the same module under its older home, which mypy takes for a second definition
    from click import exceptions as click_errors  # type: ignore[no-redef]

from fleet.errors import (
    BrokerUnavailable,
    ConfigError,
    ControllerUnavailable,
    CredentialsError,
    FleetError,
)
from fleet.files import default_home
from fleet.protocol.topics import ID_RULE, NAME_RULES, is_valid_id

# Only what every command needs loads with the command tree: typer, the names. A command
# imports what it runs (rich, pydantic models, MQTT, the broker, aiortc) when it runs, so
# --help, --version and completion start in a blink.
if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError
    from rich.console import Console

    from fleet.mqtt import BrokerUrl
    from fleet.protocol import Topics
    from fleet.protocol.messages import ApiRequest

T = TypeVar("T")
C = TypeVar("C", bound=type)


@functools.cache
def _rich_console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


class _LazyConsole:
    """rich's Console, made on its first use (rich costs more to import than most commands
    take to run)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(_rich_console(self._stderr), name)


console = cast("Console", _LazyConsole(stderr=False))
err_console = cast("Console", _LazyConsole(stderr=True))


def escape(markup: str) -> str:
    """rich's markup escape, rich loaded only when something is printed with it."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


class _Output:
    # Set when the command line holds --json: errors then also go to stdout as a JSON
    # object, so a script reading stdout always gets JSON.
    json = False


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
CredsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--creds",
        help="Credentials file (default: $FLEET_HOME or ~/.espfleet, then credentials.json).",
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, max=3600, help="Seconds to wait for devices to converge."),
]


# --- option groups ---------------------------------------------------------------------------
# Options that travel together (the InfluxDB connection, Home Assistant) are one dataclass,
# defined once; a command takes the group as one parameter and typer still sees (and --help
# still lists) each option, in the place the group stands.
_OPTION_GROUPS: set[type] = set()


def option_group(cls: C) -> C:
    """Mark a dataclass as an option group: each field is an `Annotated` typer option that
    names its own flags (``--influx-url``), with the field's default."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to be an option group")
    _OPTION_GROUPS.add(cls)
    return cls


def grouped(command: Callable[..., T]) -> Callable[..., T]:
    """`command` as typer should see it: each parameter typed with an option group becomes
    that group's options (named ``<parameter>_<field>``); the command gets the group built."""
    hints = get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, dict[str, str]]] = {}
    for param in inspect.signature(command).parameters.values():
        hint = hints.get(param.name, param.annotation)
        if not (isinstance(hint, type) and hint in _OPTION_GROUPS):
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hint))
            continue
        fields = get_type_hints(hint, include_extras=True)
        spread: dict[str, str] = {}
        for field in dataclasses.fields(hint):
            name = f"{param.name}_{field.name}"
            spread[name] = field.name
            default = (
                inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
            )
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=fields[field.name],
                )
            )
        groups[param.name] = (hint, spread)

    @functools.wraps(command)
    def run_command(**values: Any) -> T:
        for name, (group, spread) in groups.items():
            values[name] = group(**{field: values.pop(flat) for flat, field in spread.items()})
        return command(**values)

    vars(run_command)["__signature__"] = inspect.Signature(params)  # what typer reads
    run_command.__annotations__ = {p.name: p.annotation for p in params}
    return run_command


def connection(broker: str | None, prefix: str | None) -> tuple[BrokerUrl, Topics]:
    from fleet.settings import load_settings

    try:
        settings = load_settings(prefix=prefix)
        return settings.broker_url(broker), settings.topics()
    except ConfigError as exc:
        fail(str(exc), Exit.USAGE)


def run(coro: Coroutine[Any, Any, T], interrupted: str | None = None) -> T:
    """Run a command's coroutine; platform errors become a message and an exit code.

    `interrupted` is said on Ctrl-C (exit 130): what still holds, and how to undo it.
    """
    import asyncio

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
        if interrupted:
            err_console.print(f"[yellow]interrupted:[/] {escape(interrupted)}", highlight=False)
        raise typer.Exit(130) from None


def _fail_for(exc: FleetError) -> NoReturn:
    if isinstance(exc, BrokerUnavailable):
        fail(str(exc) + _credentials_hint(exc), Exit.UNREACHABLE)
    if isinstance(exc, ControllerUnavailable):
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


def _credentials_hint(exc: BrokerUnavailable) -> str:
    reason = exc.reason.lower()
    if "authori" not in reason and "password" not in reason:
        return ""
    from fleet.settings import CLIENT_FILE

    return (
        "; credentials come from --broker mqtt://USER:PASS@HOST:PORT or FLEET_BROKER, else from "
        f"the file `fleet up` writes ({default_home() / CLIENT_FILE}); "
        "`fleet creds add NAME --role operator` makes a user"
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- names for shell completion ----------------------------------------------------------------
# Completion must answer at once, so it never connects: it reads the device ids and rooms
# the last commands saw, kept in FLEET_HOME.
NAMES_FILE = "names.json"


def remember_names(**names: list[str]) -> None:
    """Keep what a command just saw (devices=[...], rooms=[...]) for completion."""
    path = default_home() / NAMES_FILE
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
        known.update({kind: list(values)[:5000] for kind, values in names.items()})
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(json.dumps(known))
    except (OSError, ValueError):
        pass  # completion is a convenience; never fail a command for it


def _remembered(kind: str, incomplete: str) -> list[str]:
    try:
        values = json.loads((default_home() / NAMES_FILE).read_text()).get(kind, [])
    except (OSError, ValueError, AttributeError):
        return []
    return [v for v in values if isinstance(v, str) and v.startswith(incomplete)]


def complete_devices(incomplete: str) -> list[str]:
    return _remembered("devices", incomplete)


def complete_rooms(incomplete: str) -> list[str]:
    return _remembered("rooms", incomplete)


def run_service(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a long-lived part until SIGINT (Ctrl-C) or SIGTERM, then stop it cleanly, exit 0."""
    import asyncio

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


def fail(message: str, code: int = 1, reason: str | None = None) -> NoReturn:
    """The one voice of every error: `error: ...` on one line of stderr, the exit code,
    and with --json a JSON object on stdout (`reason` is the controller's code, if any)."""
    # One line whatever the terminal width: scripts and log readers grep for it.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if _Output.json:
        name = Exit(code).name.lower() if code in Exit._value2member_map_ else "error"
        error = {"ok": False, "error": message, "code": reason or name, "exit_code": int(code)}
        sys.stdout.write(json.dumps(error) + "\n")
    raise typer.Exit(int(code))


def describe_invalid(exc: ValidationError) -> str:
    """A protocol model's refusal in words: what was wrong and what is allowed."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    where = ".".join(str(p) for p in first["loc"]) or "request"
    if first["type"] == "string_pattern_mismatch":
        kind = field.removesuffix("s")  # groups.0 is a group name
        if kind in NAME_RULES:
            return name_error(kind, str(first.get("input")))
        return f"invalid {where}: {first.get('input')!r} is not of the allowed form"
    return f"invalid {where}: {first['msg'][:1].lower()}{first['msg'][1:]}"


def name_error(kind: str, value: str) -> str:
    return f"invalid {kind} {'id' if kind == 'device' else 'name'} {value!r}: {NAME_RULES[kind]}"


def require_id(option: str, value: str, what: str) -> str:
    """`value` if it is a valid id (a client id, a share group), else exit 2 saying what
    is allowed, in the words of `name_error`."""
    if not is_valid_id(value):
        fail(f"{option}: invalid {what} {value!r}: {ID_RULE}", Exit.USAGE)
    return value


def require_name(kind: str, value: str) -> str:
    """`value` if it is a valid device/group/room name, else exit 2 saying what is allowed."""
    api_request(**{kind: value})
    return value


def api_request(**fields: Any) -> ApiRequest:
    """An API request from command-line values; a value the protocol refuses exits 2."""
    from pydantic import ValidationError

    from fleet.protocol.messages import ApiRequest

    try:
        return ApiRequest(**fields)
    except ValidationError as exc:
        fail(describe_invalid(exc), Exit.USAGE)


class FleetGroup(TyperGroup):
    """The top `fleet` group: usage errors (bad options, missing arguments) speak in the
    same voice as `fail`, instead of typer's boxes; --json makes them JSON on stdout too."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        _Output.json = "--json" in argv
        try:
            try:
                code = super().main(
                    argv,
                    prog_name,
                    complete_var,
                    standalone_mode=False,
                    windows_expand_args=windows_expand_args,
                    **extra,
                )
            except click_errors.NoArgsIsHelpError as exc:
                exc.show()
                code = 0
            except click_errors.UsageError as exc:
                where = exc.ctx.command_path if exc.ctx else "fleet"
                fail(f"{exc.format_message()} (see {where} --help)", Exit.USAGE)
            except click_errors.ClickException as exc:
                fail(exc.format_message(), exc.exit_code)
            except typer.Abort:
                fail("aborted", 1)
        except typer.Exit as exc:
            code = exc.exit_code
        finally:
            _Output.json = False
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def command_group(help: str, **kw: Any) -> typer.Typer:
    """A `fleet` command group: plain help text (no boxes that truncate at 80 columns)."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, **kw)


def print_json(value: BaseModel | list[Any] | dict[str, Any]) -> None:
    if not isinstance(value, list | dict):  # a pydantic model
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
    # A fleet in one process repeats itself: each kind of warning once, then a count. Only
    # on our own handler: a host that set up logging already (a test runner) keeps its own.
    terminal = logging.StreamHandler()
    terminal.addFilter(SummarizingFilter())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[terminal],
    )
    # amqtt logs every refused publish at INFO and connection noise at WARNING.
    logging.getLogger("amqtt").setLevel(logging.ERROR if not verbose else logging.INFO)
    logging.getLogger("transitions").setLevel(logging.WARNING)
