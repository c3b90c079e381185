"""Announcements and do-not-disturb: `fleet announce`, `fleet dnd` (docs/protocol.md §14)."""

from __future__ import annotations

import base64
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    fail,
    print_json,
    require_name,
    run,
)
from fleet.protocol.constants import ApiOp, Priority

if TYPE_CHECKING:
    from fleet.protocol.messages import ApiResult, DeviceResult

# The protocol's limits (fleet.protocol.messages), here without loading the models.
MAX_TEXT = 1000
MAX_SOUND_BYTES = 46 * 1024
# Codes by which the controller refuses an announcement before anything plays.
REFUSED = ("bad_request", "unknown_device", "unknown_room", "unknown_op", "busy")


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


def announce(
    words: Annotated[
        list[str] | None,
        typer.Argument(
            help="What to say, to one device (or to --group, --room or --all); "
            "with --sound, only [DEVICE].",
            show_default=False,
            metavar="[DEVICE] TEXT",
            autocompletion=complete_devices,
        ),
    ] = None,
    group: Annotated[str | None, typer.Option(help="Every device of this group.")] = None,
    room: Annotated[
        str | None,
        typer.Option(
            help="The devices in this room's live session.", autocompletion=complete_rooms
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every known device.")] = False,
    sound: Annotated[
        Path | None,
        typer.Option(help="Play this WAV file (at most 46 KiB) instead of speaking TEXT."),
    ] = None,
    priority: Annotated[
        Priority,
        typer.Option(help="urgent plays through do-not-disturb and cuts off a normal one."),
    ] = Priority.NORMAL,
    chime: Annotated[bool, typer.Option("--chime/--no-chime", help="The chime first.")] = True,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            max=3600,
            help="Seconds to wait for every target's outcome (queued ones play in turn).",
        ),
    ] = 300.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Say TEXT (or play a sound) on devices, over their meeting if they are in one; wait
    until every target has played it (or was skipped, offline or failed)."""
    args = list(words or [])
    fields: dict[str, object] = {"priority": priority, "chime": chime, "timeout_s": timeout}
    if sound is not None:
        if len(args) > 1:
            fail("with --sound, give at most a DEVICE (no TEXT)", Exit.USAGE)
        fields["sound_b64"] = _sound(sound)
        device = args[0] if args else None
    else:
        if not args:
            fail("say what: give TEXT (or --sound FILE)", Exit.USAGE)
        if len(args) > 2:
            fail("give [DEVICE] TEXT: quote a TEXT of several words", Exit.USAGE)
        device = args[0] if len(args) == 2 else None
        text = args[-1].strip()
        if not text:
            fail("TEXT is empty", Exit.USAGE)
        if len(text) > MAX_TEXT:
            fail(f"TEXT is {len(text)} characters; at most {MAX_TEXT}", Exit.USAGE)
        fields["text"] = text
    targets = [
        name
        for name, given in (
            ("DEVICE", device is not None),
            ("--group", group is not None),
            ("--room", room is not None),
            ("--all", all_),
        )
        if given
    ]
    if len(targets) != 1:
        fail(
            "name one target: a DEVICE, --group, --room or --all"
            + (f" (not {' and '.join(targets)})" if targets else ""),
            Exit.USAGE,
        )
    if device is not None:
        fields["device"] = require_name("device", device)
    if group is not None:
        fields["group"] = require_name("group", group)
    if room is not None:
        fields["room"] = require_name("room", room)
    result, elapsed = _ask(ApiOp.ANNOUNCE, fields, broker, prefix)
    if as_json:
        print_json(result)
    else:
        _table(result, elapsed)
    raise typer.Exit(_exit_code(result))


def dnd(
    device: Annotated[
        str, typer.Argument(help="Device id.", autocompletion=complete_devices, show_default=False)
    ],
    state: Annotated[Switch, typer.Argument(help="on or off.", show_default=False)],
    timeout: TimeoutOpt = 30.0,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn a device's do-not-disturb on or off: normal announcements skip it, urgent ones
    do not. Its meeting is left as it is."""
    from cli.ops import _desired_op

    fields = {"device": require_name("device", device), "on": state is Switch.ON}
    _desired_op(ApiOp.DND, fields, timeout, broker, prefix, as_json)


# --- helpers ----------------------------------------------------------------------------------


def _sound(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        fail(f"--sound {path}: {exc.strerror or exc}", Exit.USAGE)
    if len(data) > MAX_SOUND_BYTES:
        fail(f"--sound {path}: {len(data)} bytes; at most {MAX_SOUND_BYTES}", Exit.USAGE)
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        fail(f"--sound {path}: not a WAV file", Exit.USAGE)
    return base64.b64encode(data).decode()


def _ask(
    op: ApiOp, fields: dict[str, object], broker: str | None, prefix: str | None
) -> tuple[ApiResult, float]:
    from fleet.client import FleetClient

    request = api_request(**fields)
    url, topics = connection(broker, prefix)

    async def go() -> ApiResult:
        async with FleetClient(url, topics) as fleet:
            return await fleet.request(op, request)

    started = time.monotonic()
    result = run(
        go(),
        interrupted="stopped waiting; an announcement the controller accepted still plays",
    )
    return result, time.monotonic() - started


def _exit_code(result: ApiResult) -> int:
    if result.ok:
        return Exit.OK
    if result.code in REFUSED:
        return Exit.REFUSED
    return Exit.NOT_CONVERGED


def _table(result: ApiResult, elapsed: float) -> None:
    from cli.outcomes import print_outcomes

    def played(d: DeviceResult) -> str:
        ms = (d.result or {}).get("played_ms")
        return f"{ms / 1000:.1f}s" if isinstance(ms, int) else ""

    print_outcomes(
        result,
        elapsed,
        title=f"announcement {result.ann or ''}".strip(),
        styles={"played": "green", "skipped": "yellow", "offline": "yellow"},
        columns={"played": played, "detail": lambda d: d.detail or ""},
        refused_code=_exit_code(result),
    )
