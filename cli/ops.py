"""Fleet operations: devices, join-all, leave-all, join, leave, cmd."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    BrokerOpt,
    Exit,
    JsonOpt,
    PrefixOpt,
    TimeoutOpt,
    api_request,
    complete_devices,
    complete_rooms,
    connection,
    console,
    describe_invalid,
    err_console,
    escape,
    fail,
    parse_duration,
    plural,
    print_json,
    remember_names,
    require_name,
    run,
)
from fleet.protocol.constants import ApiOp, CommandOp

# What a command runs (MQTT, the payload models, rich's tables) loads when it runs.
if TYPE_CHECKING:
    from fleet.client import FleetClient
    from fleet.protocol.messages import ApiResult
    from fleet.registry import DeviceRecord, Registry

DeviceArg = Annotated[
    str, typer.Argument(help="Device id.", autocompletion=complete_devices, show_default=False)
]
RoomArg = Annotated[str, typer.Argument(help="Room to join.", autocompletion=complete_rooms)]
GroupFilterOpt = Annotated[str, typer.Option(help="Only devices in this group.")]


def natural_key(name: str) -> list[Any]:
    """dev-2 before dev-10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def devices(
    summary: Annotated[
        bool,
        typer.Option(
            "--summary", help="Counts by presence, room, firmware and group instead of a row each."
        ),
    ] = False,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the fleet: presence, firmware, board, groups, applied rev and meeting."""
    from fleet.client import FleetClient

    url, topics = connection(broker, prefix)

    async def go() -> Registry:
        async with FleetClient(url, topics) as fleet:
            if any(r.birth is None for r in fleet.registry.devices.values()):
                await _learn_births(fleet)
            return fleet.registry

    registry = run(go())
    records = sorted(registry.devices.values(), key=lambda r: natural_key(r.id))
    remember_names(devices=[r.id for r in records])
    if summary:
        _summary_view(records, as_json)
        return
    if as_json:
        print_json(
            [
                {
                    "device": r.id,
                    "online": r.online,
                    "fw": r.fw,
                    "board": r.hw,
                    "groups": r.groups,
                    "rev": r.rev,
                    "room": r.room,
                    "error": r.state.error if r.state else None,
                }
                for r in records
            ]
        )
        return
    from rich.table import Table

    table = Table(title=f"{plural(len(records), 'device')}, {registry.online_count()} online")
    for column in ("device", "online", "fw", "board", "groups", "rev", "meeting", "error"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id,
            "[green]yes[/]" if r.online else "[red]no[/]",
            r.fw or "",
            r.hw or "",
            ",".join(r.groups),
            "" if r.rev is None else str(r.rev),
            r.room or "",
            (r.state.error or "") if r.state else "",
        )
    console.print(table)


async def _learn_births(fleet: FleetClient) -> None:
    """An offline device's retained status is its will, without firmware, board or
    groups: take them from the controller, which keeps each device's last birth."""
    from fleet.errors import ControllerUnavailable
    from fleet.protocol.messages import ApiRequest, ApiResult, Status

    after: str | None = None
    while True:
        try:
            page = await fleet.request(ApiOp.DEVICES, ApiRequest(after=after))
        except ControllerUnavailable:
            page = ApiResult(op=ApiOp.DEVICES.value, ok=False, detail="no controller answered")
        if not page.ok:  # none running, or one older than the op
            err_console.print(
                f"[yellow]note:[/] {escape(page.detail)}: offline devices show no firmware,"
                " board or groups",
                highlight=False,
            )
            return
        for info in page.inventory:
            rec = fleet.registry.devices.get(info.device)
            if rec is not None and rec.birth is None and (info.fw or info.hw or info.groups):
                rec.birth = Status(online=True, fw=info.fw, hw=info.hw, groups=info.groups)
        if page.next is None:
            return
        after = page.next


def _summary_view(records: list[DeviceRecord], as_json: bool) -> None:
    counts = {
        "presence": Counter("online" if r.online else "offline" for r in records),
        "room": Counter(r.room or "(none)" for r in records),
        "firmware": Counter(r.fw or "(unknown)" for r in records),
        "group": Counter(g for r in records for g in (r.groups or ["(none)"])),
    }
    if as_json:
        print_json({"devices": len(records), **{k: dict(v) for k, v in counts.items()}})
        return
    from rich.table import Table

    table = Table(title=plural(len(records), "device"))
    for column in ("by", "value", "devices"):
        table.add_column(column)
    for by, counter in counts.items():
        for value, n in sorted(counter.items(), key=lambda kv: (-kv[1], natural_key(kv[0]))):
            table.add_row(by, value, str(n))
    console.print(table)


def join_all(
    room: RoomArg,
    group: GroupFilterOpt = "all",
    for_: Annotated[
        str | None, typer.Option("--for", help="Leave again after this long (90s, 15m, 1h).")
    ] = None,
    mic: Annotated[bool, typer.Option("--mic/--no-mic", help="Microphones on.")] = True,
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell every device (of a group) to join ROOM; wait until they all report it."""
    for_s = parse_duration(for_) if for_ else None
    _desired_op(
        ApiOp.JOIN_ALL,
        dict(room=room, group=group, for_s=for_s, mic=mic),
        timeout,
        broker,
        prefix,
        as_json,
    )


def leave_all(
    group: GroupFilterOpt = "all",
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell every device (of a group) to leave its meeting."""
    _desired_op(ApiOp.LEAVE_ALL, dict(group=group), timeout, broker, prefix, as_json)


def join(
    device: DeviceArg,
    room: RoomArg,
    mic: Annotated[bool, typer.Option("--mic/--no-mic", help="Microphone on.")] = True,
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell one device to join ROOM (newer than any earlier join-all, so it wins)."""
    _desired_op(
        ApiOp.JOIN,
        dict(device=require_name("device", device), room=room, mic=mic),
        timeout,
        broker,
        prefix,
        as_json,
    )


def leave(
    device: DeviceArg,
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell one device to leave its meeting."""
    fields = dict(device=require_name("device", device))
    _desired_op(ApiOp.LEAVE, fields, timeout, broker, prefix, as_json)


# The controller sends `announce` itself, its audio right behind it (`fleet announce`): not
# an op to send alone.
CMD_OPS = [op for op in CommandOp if op is not CommandOp.ANNOUNCE]


def _complete_ops(incomplete: str) -> list[str]:
    return [op.value for op in CMD_OPS if op.value.startswith(incomplete)]


def cmd(
    device: DeviceArg,
    op: Annotated[
        str,
        typer.Argument(
            help="ping, identify, reboot, ota or set_groups.", autocompletion=_complete_ops
        ),
    ],
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", help="KEY=VALUE argument (VALUE parsed as JSON when it can be)."),
    ] = None,
    ttl: Annotated[
        float, typer.Option(min=0.1, max=86400, help="Seconds the command stays valid.")
    ] = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run an imperative command on one device and wait for its final answer.

    Args per op: identify --arg seconds=1..300; ota --arg url=https://...;
    set_groups --arg groups=kitchen,lobby.
    """
    from fleet.client import FleetClient

    args = _checked_args(op, _parse_args(arg or []))
    request = api_request(
        device=require_name("device", device),
        cmd_op=op,
        args=args,
        ttl_ms=int(ttl * 1000),
        timeout_s=ttl,
    )
    url, topics = connection(broker, prefix)

    async def go() -> ApiResult:
        async with FleetClient(url, topics) as fleet:
            return await fleet.request(ApiOp.CMD, request)

    result = run(go())
    if as_json:
        print_json(result)
    else:
        outcome = result.devices[0] if result.devices else None
        style = "green" if result.ok else "red"
        line = f"[{style}]{device}: {outcome.outcome.value if outcome else result.code}[/]"
        if result.detail:
            line += f" - {result.detail}"
        console.print(line, highlight=False)
        if outcome and outcome.result:
            console.print_json(json.dumps(outcome.result))
    raise typer.Exit(_exit_code(result))


# --- helpers ----------------------------------------------------------------------------------


def _checked_args(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Refuse, before anything is sent, an op no device knows, an arg it does not take, or
    a value out of its range (devices ignore unknown args, so a typo would pass silently)."""
    from pydantic import ValidationError

    from fleet.protocol.messages import COMMAND_ARGS

    known = ", ".join(o.value for o in CMD_OPS)
    if op == CommandOp.ANNOUNCE.value:
        fail("announce is sent with its audio: use `fleet announce`", Exit.USAGE)
    if op not in CommandOp._value2member_map_:
        fail(f"unknown op {op!r}: use one of {known}", Exit.USAGE)
    model = COMMAND_ARGS[CommandOp(op)]
    allowed = set(model.model_fields)
    unknown = sorted(set(args) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no args"
        fail(f"{op} does not take {', '.join(unknown)} (it takes {takes})", Exit.USAGE)
    try:
        model.model_validate(args)
    except ValidationError as exc:
        fail(f"{op}: {describe_invalid(exc)}", Exit.USAGE)
    return args


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(f"--arg {pair!r} must look like KEY=VALUE", Exit.USAGE)
        if key == "groups" and raw and not raw.startswith("["):
            args[key] = [g for g in raw.split(",") if g]  # --arg groups=a,b
            continue
        try:
            args[key] = json.loads(raw)
        except ValueError:
            args[key] = raw
    return args


def _desired_op(
    op: ApiOp,
    fields: dict[str, Any],
    timeout: float,
    broker: str | None,
    prefix: str | None,
    as_json: bool,
) -> None:
    from fleet.client import FleetClient

    request = api_request(timeout_s=timeout, **fields)
    url, topics = connection(broker, prefix)
    show_progress = not as_json and sys.stderr.isatty()

    async def go() -> ApiResult:
        async with FleetClient(url, topics) as fleet:
            if not show_progress:
                return await fleet.request(op, request)
            # rich's progress bar costs a scripted (--json, piped) run 60-80 ms to import.
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task(op.value, total=None)

                def progress(converged: int, online: int) -> None:
                    bar.update(task, total=online, completed=min(converged, online))

                return await fleet.request(op, request, progress)

    started = time.monotonic()
    # Ctrl-C stops the waiting, not the intent: the controller has it (or will) either way.
    undo = "fleet leave-all" if op is ApiOp.JOIN_ALL else "a newer join or leave"
    interrupted = (
        f"stopped waiting; a {op.value} the controller accepted stays in force ({undo} undoes it)"
    )
    result = run(go(), interrupted=interrupted)
    group = fields.get("group", "all")
    if result.ok and group != "all" and not sum(result.counts.values()) and not result.devices:
        fail(f"no device is in group {group!r}", Exit.REFUSED, reason="unknown_group")
    if as_json:
        print_json(result)
    else:
        _summary(result, time.monotonic() - started)
    raise typer.Exit(_exit_code(result))


# join-all and the other desired-state ops: an outcome's colour in the table
_DESIRED_STYLES = {
    "converged": "green",
    "succeeded": "green",
    "pending": "yellow",
    "queued": "yellow",
}


def _exit_code(result: ApiResult) -> int:
    if result.ok:
        return Exit.OK
    if result.code in ("bad_request", "unknown_device", "unknown_op", "busy"):
        return Exit.REFUSED
    return Exit.NOT_CONVERGED


def _summary(result: ApiResult, elapsed: float) -> None:
    from cli.outcomes import print_outcomes
    from fleet.protocol.messages import DeviceOutcome

    room = f" → {result.room}" if result.room else ""
    print_outcomes(
        result,
        elapsed,
        title=f"{result.op} rev {result.rev}{room}",
        styles=_DESIRED_STYLES,
        columns={
            "rev": lambda d: "" if d.rev is None else str(d.rev),
            "room": lambda d: d.room or "",
            "detail": lambda d: d.detail or "",
        },
        omitted="and {n} more, all converged",
        refused_code=_exit_code(result),
    )
    if result.until:
        leave_at = datetime.fromtimestamp(result.until).strftime("%H:%M:%S")
        console.print(f"the devices leave at {leave_at} (--for)", highlight=False)
    pending = [d.device for d in result.devices if d.outcome is DeviceOutcome.PENDING]
    if pending:
        console.print(
            f"[yellow]{len(pending)} offline device(s) will converge when they come back:[/] "
            + ", ".join(pending[:20])
            + (" …" if len(pending) > 20 else ""),
            highlight=False,
        )
