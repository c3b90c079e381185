"""Fleet operations: devices, join-all, leave-all, join, leave, cmd."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import (
    BrokerOpt,
    Exit,
    JsonOpt,
    PrefixOpt,
    TimeoutOpt,
    api_request,
    connection,
    console,
    fail,
    parse_duration,
    print_json,
    run,
)
from fleet.client import FleetClient
from fleet.protocol import is_valid_id
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, DeviceOutcome
from fleet.registry import Registry


def devices(broker: BrokerOpt = None, prefix: PrefixOpt = None, as_json: JsonOpt = False) -> None:
    """List the fleet: presence, firmware, groups, applied rev and meeting."""
    url, topics = connection(broker, prefix)

    async def go() -> Registry:
        async with FleetClient(url, topics) as fleet:
            return fleet.registry

    registry = run(go())
    records = sorted(registry.devices.values(), key=lambda r: r.id)
    if as_json:
        print_json(
            [
                {
                    "device": r.id,
                    "online": r.online,
                    "fw": r.status.fw if r.status else None,
                    "groups": r.groups,
                    "rev": r.rev,
                    "room": r.room,
                    "error": r.state.error if r.state else None,
                }
                for r in records
            ]
        )
        return
    table = Table(title=f"{len(records)} devices, {registry.online_count()} online")
    for column in ("device", "online", "fw", "groups", "rev", "meeting", "error"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id,
            "[green]yes[/]" if r.online else "[red]no[/]",
            r.status.fw if r.status and r.status.fw else "",
            ",".join(r.groups),
            "" if r.rev is None else str(r.rev),
            r.room or "",
            (r.state.error or "") if r.state else "",
        )
    console.print(table)


def join_all(
    room: Annotated[str, typer.Argument(help="Room to join.")],
    group: Annotated[str, typer.Option(help="Only devices in this group.")] = "all",
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
    group: Annotated[str, typer.Option(help="Only devices in this group.")] = "all",
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell every device (of a group) to leave its meeting."""
    _desired_op(ApiOp.LEAVE_ALL, dict(group=group), timeout, broker, prefix, as_json)


def join(
    device: Annotated[str, typer.Argument(help="Device id.")],
    room: Annotated[str, typer.Argument(help="Room to join.")],
    mic: Annotated[bool, typer.Option("--mic/--no-mic", help="Microphone on.")] = True,
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell one device to join ROOM (newer than any earlier join-all, so it wins)."""
    _desired_op(
        ApiOp.JOIN,
        dict(device=_device(device), room=room, mic=mic),
        timeout,
        broker,
        prefix,
        as_json,
    )


def leave(
    device: Annotated[str, typer.Argument(help="Device id.")],
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell one device to leave its meeting."""
    _desired_op(ApiOp.LEAVE, dict(device=_device(device)), timeout, broker, prefix, as_json)


def cmd(
    device: Annotated[str, typer.Argument(help="Device id.")],
    op: Annotated[str, typer.Argument(help="ping, identify, reboot, ota or set_groups.")],
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
    """Run an imperative command on one device and wait for its final answer."""
    args = _parse_args(arg or [])
    try:
        request = ApiRequest(
            device=_device(device), cmd_op=op, args=args, ttl_ms=int(ttl * 1000), timeout_s=ttl
        )
    except ValueError as exc:
        fail(f"invalid command: {exc}", Exit.USAGE)
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


def _device(device_id: str) -> str:
    if not is_valid_id(device_id):
        raise typer.BadParameter(f"{device_id!r} is not a device id ([a-z0-9][a-z0-9-]{{0,63}})")
    return device_id


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--arg {pair!r} must look like KEY=VALUE")
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
    request = api_request(timeout_s=timeout, **fields)
    url, topics = connection(broker, prefix)
    show_progress = not as_json and sys.stderr.isatty()

    async def go() -> ApiResult:
        async with FleetClient(url, topics) as fleet:
            if not show_progress:
                return await fleet.request(op, request)
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
    result = run(go())
    if as_json:
        print_json(result)
    else:
        _summary(result, time.monotonic() - started)
    raise typer.Exit(_exit_code(result))


def _exit_code(result: ApiResult) -> int:
    if result.ok:
        return Exit.OK
    if result.code in ("bad_request", "unknown_device", "unknown_op"):
        return Exit.REFUSED
    return Exit.NOT_CONVERGED


_STYLE = {
    DeviceOutcome.CONVERGED: "green",
    DeviceOutcome.SUCCEEDED: "green",
    DeviceOutcome.PENDING: "yellow",
    DeviceOutcome.QUEUED: "yellow",
    DeviceOutcome.WAITING: "red",
    DeviceOutcome.FAILED: "red",
    DeviceOutcome.REJECTED: "red",
    DeviceOutcome.TIMED_OUT: "red",
}


def _summary(result: ApiResult, elapsed: float) -> None:
    if not result.ok and not result.devices:
        fail(f"{result.op} refused ({result.code}): {result.detail}", _exit_code(result))
    if result.devices:
        table = Table(
            title=f"{result.op} rev {result.rev}" + (f" → {result.room}" if result.room else "")
        )
        for column in ("device", "outcome", "online", "rev", "room", "detail"):
            table.add_column(column)
        for d in result.devices:
            style = _STYLE.get(d.outcome, "white")
            table.add_row(
                d.device,
                f"[{style}]{d.outcome.value}[/]",
                "yes" if d.online else "no",
                "" if d.rev is None else str(d.rev),
                d.room or "",
                d.detail or "",
            )
        if result.omitted:
            table.caption = f"and {result.omitted} more, all converged"
        console.print(table)
    style = "green" if result.ok else "red"
    console.print(f"[{style}]{result.code}[/]: {result.detail} in {elapsed:.2f}s", highlight=False)
    pending = [d.device for d in result.devices if d.outcome is DeviceOutcome.PENDING]
    if pending:
        console.print(
            f"[yellow]{len(pending)} offline device(s) will converge when they come back:[/] "
            + ", ".join(pending[:20])
            + (" …" if len(pending) > 20 else ""),
            highlight=False,
        )
