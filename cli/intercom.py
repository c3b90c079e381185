"""Intercom calls: call, answer, hangup (docs/protocol.md §14.7)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    BrokerOpt,
    Exit,
    JsonOpt,
    PrefixOpt,
    api_request,
    complete_devices,
    connection,
    fail,
    print_json,
    require_name,
    run,
)
from fleet.protocol.constants import CALL_ROOM_PREFIX, MAX_RING_S, ApiOp, Priority

# What a command runs (MQTT, the payload models, rich's tables) loads when it runs.
if TYPE_CHECKING:
    from fleet.protocol.messages import ApiRequest, ApiResult

DeviceArg = Annotated[
    str, typer.Argument(help="Device id.", autocompletion=complete_devices, show_default=False)
]
# The call's outcome when it ran but reached nobody: like a join whose devices did not
# converge. Refusals (unknown device, busy, dnd) are the controller's, as elsewhere.
_NOT_REACHED = ("no_answer", "hung_up", "timeout")


def _ask(broker: str | None, prefix: str | None, op: ApiOp, request: ApiRequest) -> ApiResult:
    from fleet.client import FleetClient

    url, topics = connection(broker, prefix)

    async def go() -> ApiResult:
        async with FleetClient(url, topics) as fleet:
            return await fleet.request(op, request)

    interrupted = "stopped waiting; the call goes on (`fleet hangup` ends it)"
    return run(go(), interrupted=interrupted)


def _report(result: ApiResult, as_json: bool, elapsed: float) -> None:
    if as_json:
        print_json(result)
    elif not result.ok and not result.devices:
        fail(f"{result.op} refused ({result.code}): {result.detail}", _exit_code(result))
    else:
        _table(result, elapsed)
    raise typer.Exit(_exit_code(result))


def _exit_code(result: ApiResult) -> int:
    if result.ok:
        return Exit.OK
    return Exit.NOT_CONVERGED if result.code in _NOT_REACHED else Exit.REFUSED


def _table(result: ApiResult, elapsed: float) -> None:
    from cli.outcomes import print_outcomes

    print_outcomes(
        result,
        elapsed,
        title=f"{result.op} {result.call or ''}".strip(),
        styles={"joined": "green", "ringing": "yellow", "waiting": "yellow"},
        refused_code=_exit_code(result),
    )


def call(
    device: DeviceArg,
    to: Annotated[
        str | None,
        typer.Argument(help="The device called (or --group).", autocompletion=complete_devices),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Call every device of this group instead.")
    ] = None,
    ring: Annotated[
        bool,
        typer.Option(
            "--ring", help="Ring the callee(s) and wait for an answer (default: join at once)."
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=1, max=MAX_RING_S, help="Seconds a ring waits for an answer."
        ),
    ] = 30.0,
    priority: Annotated[
        Priority,
        typer.Option(help="urgent: through do-not-disturb, and out of a meeting at once."),
    ] = Priority.NORMAL,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Call from DEVICE to TO (a device) or to every device of --group: a private two-way
    session, joined at once or, with --ring, when the callee answers."""
    if (to is None) == (group is None):
        fail("name the device called (TO) or --group, not both", Exit.USAGE)
    fields: dict[str, object] = dict(
        device=require_name("device", device), ring=ring, timeout_s=timeout, priority=priority
    )
    if to is not None:
        fields["to"] = require_name("device", to)
    else:
        assert group is not None
        fields["group"] = require_name("group", group)
    started = time.monotonic()
    result = _ask(broker, prefix, ApiOp.CALL, api_request(**fields))
    _report(result, as_json, time.monotonic() - started)


def answer(
    device: DeviceArg,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer the call ringing on DEVICE: it joins the call."""
    started = time.monotonic()
    request = api_request(device=require_name("device", device))
    result = _ask(broker, prefix, ApiOp.ANSWER, request)
    _report(result, as_json, time.monotonic() - started)


def hangup(
    target: Annotated[
        str,
        typer.Argument(
            help="The call (call-...) or a device in it.",
            autocompletion=complete_devices,
            show_default=False,
        ),
    ],
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End a call: every member goes back to what it was doing before it."""
    started = time.monotonic()
    if target.startswith(CALL_ROOM_PREFIX):
        request = api_request(call=require_name("room", target))
    else:
        request = api_request(device=require_name("device", target))
    result = _ask(broker, prefix, ApiOp.HANGUP, request)
    _report(result, as_json, time.monotonic() - started)
