"""Meetings: rooms, session history, messages to a room, and agents that join."""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    BrokerOpt,
    Exit,
    IceServerOpt,
    JsonOpt,
    PrefixOpt,
    api_request,
    command_group,
    complete_rooms,
    connection,
    console,
    fail,
    name_error,
    plural,
    print_json,
    remember_names,
    run,
    run_service,
)
from fleet.protocol.constants import MAX_ROOM_CAP, ApiOp, RoomMedia
from fleet.protocol.topics import is_valid_id

# What a command runs (MQTT, the payload models, rich's tables, aiortc) loads when it runs.
if TYPE_CHECKING:
    from fleet.protocol.messages import ApiRequest, ApiResult, RoomInfo

app = command_group("Rooms the fleet meets in.")
agent_app = command_group("Python participants that join rooms.")

AGENT_MODES = ("echo", "tone", "play", "record", "assistant", "transcribe")
RoomArg = Annotated[str, typer.Argument(help="Room name.", autocompletion=complete_rooms)]


class _JsonLines(logging.Formatter):
    """One JSON object per line for scripts: when, and what the agent did."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": round(record.created, 3), "event": record.getMessage()})


def report_agents(as_json: bool = False) -> None:
    """What agents do (joining, peers, leaving, files written, turns) goes to stdout."""
    report = logging.StreamHandler(sys.stdout)
    plain = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    report.setFormatter(_JsonLines() if as_json else plain)
    agents_log = logging.getLogger("fleet.agents")
    agents_log.addHandler(report)
    agents_log.setLevel(logging.INFO)
    agents_log.propagate = False


def _ask(broker: str | None, prefix: str | None, op: ApiOp, request: ApiRequest) -> ApiResult:
    from fleet.client import FleetClient

    url, topics = connection(broker, prefix)

    async def go() -> ApiResult:
        async with FleetClient(url, topics) as fleet:
            return await fleet.request(op, request)

    result = run(go())
    if not result.ok:
        fail(f"{result.code}: {result.detail}", Exit.REFUSED, reason=result.code)
    return result


def _when(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ts).strftime(fmt) if ts else "-"


def _clock(ts: float | None) -> str:
    return _when(ts, "%H:%M:%S")


def _rooms_table(result: ApiResult) -> None:
    from rich.table import Table

    remember_names(rooms=[r.room for r in result.rooms])
    table = Table(title=plural(len(result.rooms), "room"))
    for column in ("room", "kind", "cap", "media", "rate", "live session", "members", "created"):
        table.add_column(column)
    for r in result.rooms:
        live = f"{r.session} ({r.session_media.value})" if r.session and r.session_media else ""
        table.add_row(
            r.room,
            r.kind.value,
            str(r.cap),
            r.media.value,
            f"{r.rate // 1000} kHz",
            live,
            str(r.members),
            _when(r.created),
        )
    console.print(table)


@app.command("create")
def rooms_create(
    room: RoomArg,
    cap: Annotated[
        int | None, typer.Option(min=2, max=MAX_ROOM_CAP, help="Most participants at once.")
    ] = None,
    media: Annotated[
        RoomMedia | None,
        typer.Option(
            help="mesh: members connect to each other (up to the mesh cap); mixed: each to "
            "the mixer (Janus); auto: mesh, then mixed past the mesh cap.",
            show_default="auto",
        ),
    ] = None,
    rate: Annotated[
        int | None,
        typer.Option(help="The mix's sampling rate: 16000 or 48000.", show_default="16000"),
    ] = None,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a room (or change its cap, media mode or mix rate)."""
    request = api_request(room=room, cap=cap, media=media, rate=rate)
    result = _ask(broker, prefix, ApiOp.ROOM_CREATE, request)
    print_json(result) if as_json else _rooms_table(result)


@app.command("ls")
def rooms_ls(broker: BrokerOpt = None, prefix: PrefixOpt = None, as_json: JsonOpt = False) -> None:
    """List rooms with their live sessions (every page of them)."""
    from fleet.client import FleetClient

    url, topics = connection(broker, prefix)

    async def go() -> ApiResult:
        rooms: list[RoomInfo] = []
        async with FleetClient(url, topics) as fleet:
            result = await fleet.request(ApiOp.ROOMS, api_request(limit=100))
            rooms += result.rooms
            while result.ok and result.next is not None:
                page = api_request(limit=100, after=result.next)
                result = await fleet.request(ApiOp.ROOMS, page)
                rooms += result.rooms
        # Every page in one result, for the table and --json alike (not re-validated).
        return result.model_copy(update={"rooms": rooms, "next": None})

    result = run(go())
    if not result.ok:
        fail(f"{result.code}: {result.detail}", Exit.REFUSED)
    print_json(result) if as_json else _rooms_table(result)


@app.command("rm")
def rooms_rm(
    room: RoomArg, broker: BrokerOpt = None, prefix: PrefixOpt = None, as_json: JsonOpt = False
) -> None:
    """Remove a room (not while a session is live in it). Its history stays."""
    result = _ask(broker, prefix, ApiOp.ROOM_RM, api_request(room=room))
    print_json(result) if as_json else console.print(f"room {room} removed", highlight=False)


def sessions(
    room: RoomArg,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Newest sessions to list.")] = 20,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    transcript: Annotated[
        bool, typer.Option("--transcript", help="Who said what in the newest session.")
    ] = False,
) -> None:
    """Past and live sessions of a room, with participants and durations."""
    if transcript:
        _transcript(broker, prefix, room, as_json)
        return
    result = _ask(broker, prefix, ApiOp.SESSIONS, api_request(room=room, limit=limit))
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    table = Table(title=f"room {room}: {plural(len(result.sessions), 'session')}")
    # Who first (the device or agent), then the id the session gave it.
    columns = (
        "session",
        "media",
        "started",
        "ended",
        "length",
        "member",
        "as",
        "joined",
        "left",
        "in",
    )
    for column in columns:
        table.add_column(column)
    for s in result.sessions:
        ended = _clock(s.ended) if s.ended else "live"
        media = s.media.value + (f" ({s.mixer})" if s.mixer else "")
        head = (s.session, media, _when(s.started), ended, f"{s.duration_s:.0f}s")
        for p in s.participants:
            left = _clock(p.left) if p.left else "still in"
            table.add_row(
                *head, p.pid, p.participant, _when(p.joined), left, f"{p.duration_s:.0f}s"
            )
            head = ("", "", "", "", "")  # the session's columns once, on its first row
        if not s.participants:
            table.add_row(*head, "", "", "", "", "")
        if s.omitted:
            table.add_row("", "", "", "", "", f"... {s.omitted} more not listed", "", "", "", "")
    console.print(table)
    # The newest session's media history: path changes, the mixer, failovers.
    changes = [e for s in result.sessions[:1] for e in s.events if e.kind in ("media", "mixer")]
    for event in changes:
        console.print(f"{_clock(event.ts)} {event.kind}: {event.detail or ''}", highlight=False)


def _transcript(broker: str | None, prefix: str | None, room: str, as_json: bool) -> None:
    result = _ask(broker, prefix, ApiOp.TRANSCRIPT, api_request(room=room))
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    table = Table(title=f"room {room}, session {result.detail}: {len(result.transcript)} lines")
    for column in ("time", "length", "participant", "pid", "said"):
        table.add_column(column)
    for line in result.transcript:
        table.add_row(
            _clock(line.start),
            f"{line.end - line.start:.1f}s",
            line.participant,
            line.pid,
            line.text,
        )
    console.print(table)


def say(
    room: RoomArg,
    text: Annotated[str, typer.Argument(help="The message.")],
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a text message to every member of the room's live session."""
    result = _ask(broker, prefix, ApiOp.SAY, api_request(room=room, text=text))
    print_json(result) if as_json else console.print(result.detail, highlight=False)


@agent_app.command("join")
def agent_join(
    room: RoomArg,
    mode: Annotated[
        str,
        typer.Option(
            help="echo, tone, play, record, assistant (a voice assistant that runs the fleet) "
            "or transcribe (writes who said what into the session history).",
            autocompletion=lambda incomplete: [m for m in AGENT_MODES if m.startswith(incomplete)],
        ),
    ] = "echo",
    file: Annotated[Path | None, typer.Option(help="WAV file for --mode play.")] = None,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Folder for --mode record's WAV files.")
    ] = None,
    freq: Annotated[float, typer.Option(help="Tone frequency for --mode tone, Hz.")] = 1000.0,
    plugin: Annotated[
        str | None, typer.Option(help="Your own agent, module:Class (an fleet.agents.Agent).")
    ] = None,
    agent_id: Annotated[
        str | None,
        typer.Option("--id", help="Participant id (= the broker user for device credentials)."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Leave after this many seconds.")
    ] = None,
    ice_server: IceServerOpt = None,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join ROOM as a Python participant until Ctrl-C (or --duration)."""
    from fleet.agents.runner import build_agent, load_plugin, run_agent
    from fleet.errors import FleetError

    pid = agent_id or f"agent-{(plugin and 'plugin') or mode}-{secrets.token_hex(3)}"
    if not is_valid_id(pid):
        fail(f"--id: {name_error('device', pid)}", Exit.USAGE)
    api_request(room=room)  # the room name, checked as the protocol checks it
    try:
        agent = load_plugin(plugin) if plugin else build_agent(mode, file, directory, freq)
    except FleetError as exc:  # a bad mode or plugin, a WAV file that will not load
        fail(str(exc), Exit.USAGE)
    url, topics = connection(broker, prefix)
    joining = f"agent {pid} ({agent.name}) joining {room} on {url.redacted()}"
    if as_json:
        sys.stdout.write(json.dumps({"ts": round(time.time(), 3), "event": joining}) + "\n")
    else:
        console.print(joining, highlight=False)
    report_agents(as_json)
    run_service(run_agent(url, pid, room, agent, topics, duration, tuple(ice_server or ())))
