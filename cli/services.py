"""Long-running parts: `fleet up`, `fleet controller`, `fleet sim`, and `fleet demo`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.local import BrokerEngine
from cli.common import (
    BrokerOpt,
    Exit,
    IceServerOpt,
    PrefixOpt,
    connection,
    console,
    fail,
    grouped,
    name_error,
    option_group,
    plural,
    require_id,
    run,
    run_service,
)
from cli.telemetry import InfluxOptions
from fleet.device.tones import TONE_SLOTS
from fleet.errors import FleetError, ProtocolError
from fleet.ha import DEFAULT_ROOM
from fleet.mixer.errors import INSTALL_HINT, MixerUnavailable
from fleet.protocol.constants import DEFAULT_MESH_CAP, DEFAULT_ROOM_CAP, MAX_ROOM_CAP, ApiOp
from fleet.protocol.topics import DEFAULT_HA_PREFIX, is_valid_id

# The parts these commands start (broker, controller, devices, aiortc, the web console)
# load when one runs: the command tree, --help and the other commands stay light.
if TYPE_CHECKING:
    from cli.stack import Stack
    from fleet.client import FleetClient
    from fleet.device.sim import MeetingDriver
    from fleet.ha import HomeAssistantSettings
    from fleet.protocol.messages import ApiRequest, ApiResult

LISTED_DEVICES = 6  # a join's result lists every device up to this many, then only failures


class SimEngine(StrEnum):
    BULK = "bulk"
    AIOMQTT = "aiomqtt"


HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="FLEET_HOME",
        help="Folder for credentials, database, client file.",
        show_default="~/.espfleet",
    ),
]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="Broker TCP port.")]
GroupOpt = Annotated[
    list[str] | None, typer.Option("--group", help="Group of the simulated devices (repeatable).")
]
TeleIntervalOpt = Annotated[float, typer.Option(min=0.5, help="Telemetry period, seconds.")]


@option_group
@dataclass
class HomeAssistantOptions:
    """The Home Assistant options of `fleet up` and `fleet controller`."""

    enabled: Annotated[
        bool,
        typer.Option(
            "--ha/--no-ha",
            help="Home Assistant: MQTT discovery of every device and the controller, entity "
            "state and commands under PREFIX/ha/ (docs/home-assistant.md).",
        ),
    ] = True
    prefix: Annotated[
        str,
        typer.Option("--ha-prefix", help="Home Assistant's discovery prefix (its MQTT setting)."),
    ] = DEFAULT_HA_PREFIX
    room: Annotated[
        str,
        typer.Option(
            "--ha-room", help='Room of Home Assistant\'s "Join all" until one is chosen there.'
        ),
    ] = DEFAULT_ROOM

    def settings(self) -> HomeAssistantSettings | None:
        from fleet.ha import HomeAssistantSettings

        if not self.enabled:
            return None
        try:
            return HomeAssistantSettings(ha_prefix=self.prefix, room=self.room)
        except (ValueError, ProtocolError) as exc:
            fail(f"--ha-prefix/--ha-room: {exc}", Exit.USAGE)


EngineOpt = Annotated[
    BrokerEngine,
    typer.Option(
        help="The local broker: mosquitto (MQTT 5 and 3.1.1), amqtt (in-process, 3.1.1 "
        "only), auto = mosquitto when installed.",
    ),
]
IngestShareOpt = Annotated[
    str | None,
    typer.Option(
        help="Split the telemetry ingest with `fleet ingest --share NAME` processes (a "
        "shared subscription; needs a broker that has them: Mosquitto).",
    ),
]
RoomCapOpt = Annotated[
    int, typer.Option(min=2, max=MAX_ROOM_CAP, help="Default member cap of a room.")
]
MeshCapOpt = Annotated[
    int,
    typer.Option(
        min=2,
        max=MAX_ROOM_CAP,
        help="Most members of a mesh session; an auto room's session moves to the mixer past it.",
    ),
]


@grouped
def up(
    *,
    devices: Annotated[int, typer.Option(min=0, max=20000, help="Simulated devices.")] = 3,
    port: PortOpt = 1883,
    ws_port: Annotated[
        int | None, typer.Option(help="Also listen for MQTT over WebSocket.")
    ] = None,
    web: Annotated[
        bool,
        typer.Option(
            help="Serve the web console (on --web-port; WebSocket on a free port unless --ws-port)."
        ),
    ] = False,
    web_port: Annotated[int, typer.Option(min=0, max=65535, help="The web console's port.")] = 8080,
    host: Annotated[str, typer.Option(help="Address the broker binds.")] = "127.0.0.1",
    engine: EngineOpt = BrokerEngine.AUTO,
    group: GroupOpt = None,
    tele_interval: TeleIntervalOpt = 10.0,
    audio: Annotated[
        bool, typer.Option(help="Devices meet with real audio (off: the state names the room).")
    ] = True,
    room_cap: RoomCapOpt = DEFAULT_ROOM_CAP,
    sim_procs: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="Worker processes for the audio devices (0: in this process).",
            show_default="0 up to 8 devices, else one per core",
        ),
    ] = None,
    mesh_cap: MeshCapOpt = DEFAULT_MESH_CAP,
    mixer: Annotated[
        bool,
        typer.Option(
            help="Start a local Janus (the mixer of mixed rooms) when it is installed "
            "(apt-get install janus)."
        ),
    ] = True,
    ha: HomeAssistantOptions,
    home: HomeOpt = None,
    prefix: PrefixOpt = None,
    influx: InfluxOptions,
) -> None:
    """Run broker + controller + N simulated devices until Ctrl-C."""
    import asyncio
    import contextlib

    from cli.stack import StackConfig, free_port, running_stack, stack_console
    from fleet.device.workers import auto_procs
    from fleet.mixer.address import MixerAddress
    from fleet.settings import load_settings

    settings = load_settings(home=home, prefix=prefix)
    if web and ws_port is None:
        ws_port = free_port(host)
    config = StackConfig(
        home=settings.home,
        devices=devices,
        host=host,
        port=port,
        ws_port=ws_port,
        prefix=settings.prefix,
        groups=_groups(group),
        tele_interval_s=tele_interval,
        audio=audio,
        room_cap=room_cap,
        mesh_cap=mesh_cap,
        mixer=mixer,
        influx=influx.ingest(),
        home_assistant=ha.settings(),
        sim_procs=auto_procs(devices, audio) if sim_procs is None else sim_procs,
        engine=engine,
    )

    async def go() -> None:
        started = time.monotonic()
        async with running_stack(config) as stack:
            await stack.wait_ready()
            client_file = settings.write_client_file(stack.operator_url)
            websocket = f", MQTT over WebSocket on {host}:{ws_port}" if ws_port else ""
            mixing = (
                f"mixer {MixerAddress.parse(stack.mixer_url).display}"
                if stack.mixer_url
                else "no mixer (mixed rooms refused; apt-get install janus)"
            )
            async with contextlib.AsyncExitStack() as extra:
                if web:
                    site = await extra.enter_async_context(stack_console(stack, host, web_port))
                    console.print(
                        f"web console on {site.url} (sign in with the operator's secret "
                        f"from {client_file})",
                        highlight=False,
                    )
                console.print(
                    f"[green]up[/] in {time.monotonic() - started:.1f}s: "
                    f"{_broker_line(stack.broker, host)}{websocket}, controller, {mixing}, "
                    f"{plural(devices, 'simulated device')}. "
                    f"CLI commands find it through {client_file}. Ctrl-C stops everything.",
                    highlight=False,
                )
                # The parts run until Ctrl-C; one that ends on its own is a failure to report.
                await asyncio.wait(stack.tasks, return_when=asyncio.FIRST_COMPLETED)
                raise stack.failed() or RuntimeError("a part of the stack stopped")

    run_service(go())


@grouped
def controller(
    *,
    db: Annotated[
        Path | None, typer.Option(help="SQLite database.", show_default="FLEET_HOME/controller.db")
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="MQTT client id: the broker username or `USERNAME-NAME`.",
            show_default="the broker username",
        ),
    ] = None,
    creds: Annotated[
        Path | None,
        typer.Option(
            help="The embedded broker's credentials file: set_groups then grants the new "
            "groups in the broker's ACL before the device subscribes them, and the web "
            "console's sign-in (web-login) mints browsers' credentials there."
        ),
    ] = None,
    room_cap: RoomCapOpt = DEFAULT_ROOM_CAP,
    mesh_cap: MeshCapOpt = DEFAULT_MESH_CAP,
    mixer: Annotated[
        list[str] | None,
        typer.Option(
            help="A Janus WebSocket API URL (ws://HOST:PORT), the mixer of mixed rooms; "
            "repeatable (a pool: new sessions go to the least loaded). Default: FLEET_MIXERS. "
            "A URL may carry its own API secret: ws://:SECRET@HOST:PORT.",
            show_default=False,
        ),
    ] = None,
    mixer_secret: Annotated[
        str | None,
        typer.Option(
            help="The API secret (Janus's api_secret, also the AudioBridge's admin_key) of "
            "the --mixer URLs that carry none. Default: FLEET_MIXER_SECRET.",
            show_default=False,
        ),
    ] = None,
    auto_create: Annotated[
        bool,
        typer.Option(
            help="Let every join and join-all create its room (off: only operators create "
            "rooms: `fleet rooms create`, and an operator's join or join-all)."
        ),
    ] = False,
    ha: HomeAssistantOptions,
    ingest_share: IngestShareOpt = None,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    influx: InfluxOptions,
) -> None:
    """Run the controller: registry, desired state, commands, meetings, the automation API,
    telemetry, Home Assistant discovery."""
    from fleet.auth import CredentialStore
    from fleet.controller.factory import ControllerSettings, build_controller
    from fleet.settings import load_settings

    if client_id is not None:
        require_id("--client-id", client_id, "client id")
    url, topics = connection(broker, prefix)
    if ingest_share is not None:
        require_id("--ingest-share", ingest_share, "share group")
    if ingest_share is not None and not influx.settings().enabled:
        fail("--ingest-share splits the telemetry ingest: it needs --influx-url", Exit.USAGE)
    ingest_settings = influx.ingest()
    home_assistant = ha.settings()
    path = db or load_settings().home / "controller.db"
    console.print(f"controller on {url.redacted()}, store {path}", highlight=False)
    store = CredentialStore(creds) if creds is not None else None
    mixers = list(mixer or load_settings().mixers)
    bad = [m for m in mixers if not m.startswith(("ws://", "wss://"))]
    if bad:
        fail(f"--mixer {bad[0]!r}: expected ws://HOST:PORT (Janus's WebSocket API)", Exit.USAGE)
    settings = ControllerSettings(
        url,
        path,
        topics,
        client_id=client_id,
        room_cap=room_cap,
        mesh_cap=mesh_cap,
        auto_create=auto_create,
        mixers=mixers,
        mixer_secret=mixer_secret or load_settings().mixer_secret,
        credentials=store,
        influx=ingest_settings,
        ingest_share=ingest_share,
        home_assistant=home_assistant,
    )
    run_service(build_controller(settings).run())


def sim(
    devices: Annotated[int, typer.Option(min=1, max=20000, help="How many devices.")] = 10,
    id_prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-1, PREFIX-2, ...")] = "dev",
    start: Annotated[int, typer.Option(min=0, help="First device number.")] = 1,
    group: GroupOpt = None,
    creds: Annotated[
        Path | None,
        typer.Option(
            help="Credentials file to register the devices in (a local broker's).",
            show_default="FLEET_HOME/credentials.json",
        ),
    ] = None,
    secrets: Annotated[
        Path | None, typer.Option(help="JSON {device id: secret} for a remote broker.")
    ] = None,
    tele_interval: TeleIntervalOpt = 10.0,
    audio: Annotated[
        bool, typer.Option(help="Meet with real audio (aiortc); off: the state names the room.")
    ] = False,
    codec: Annotated[
        list[str] | None,
        typer.Option(help="Codecs offered, in preference order (repeatable): opus, pcmu, pcma."),
    ] = None,
    mic: Annotated[bool, typer.Option(help="The devices have a microphone.")] = True,
    speaker: Annotated[bool, typer.Option(help="The devices have a speaker.")] = True,
    ice_server: IceServerOpt = None,
    engine: Annotated[
        SimEngine | None,
        typer.Option(
            help="bulk: plain paho clients on one loop (thousands per process; no audio); "
            "aiomqtt: one aiomqtt client per device, as `fleet up` runs them. "
            "Default: bulk, aiomqtt with --audio.",
            show_default=False,
        ),
    ] = None,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Run N simulated devices that speak exactly the device side of the protocol."""
    from fleet.auth import CredentialStore, default_credentials_path
    from fleet.device.bulk import BulkFleet
    from fleet.device.sim import SimFleet, device_ids

    ids = device_ids(devices, id_prefix, start)
    bad = [i for i in ids if not is_valid_id(i)]
    if bad:
        fail(f"--id-prefix {id_prefix!r}: {name_error('device', bad[0])}", Exit.USAGE)
    url, topics = connection(broker, prefix)
    if secrets is not None:
        try:
            known = json.loads(secrets.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read {secrets}: {exc}", Exit.USAGE)
        missing = [i for i in ids if i not in known]
        if missing:
            fail(f"{secrets} has no secret for {', '.join(missing[:5])}", Exit.USAGE)
        device_secrets = {i: str(known[i]) for i in ids}
    else:
        store = CredentialStore(creds or default_credentials_path())
        device_secrets = store.add_devices(ids, groups=_groups(group), replace=True)
    if engine is None:
        engine = SimEngine.AIOMQTT if audio else SimEngine.BULK
    drivers = None
    if audio:
        if engine is SimEngine.BULK:
            fail("the bulk engine has no audio: use --engine aiomqtt with --audio", Exit.USAGE)
        from fleet.device.audio import AudioProfile, audio_drivers
        from fleet.media.config import MediaConfig
        from fleet.media.errors import MediaError

        try:
            media = MediaConfig(
                codecs=tuple(codec) if codec else MediaConfig.codecs,
                mic=mic,
                speaker=speaker,
                ice_servers=tuple(ice_server or ()),
            )
        except MediaError as exc:
            fail(str(exc), Exit.USAGE)
        drivers = audio_drivers(ids, AudioProfile(media=media))
    elif codec or not mic or not speaker or ice_server:
        fail("--codec, --no-mic, --no-speaker and --ice-server need --audio", Exit.USAGE)
    fleet: SimFleet | BulkFleet
    if engine is SimEngine.BULK:
        fleet = BulkFleet(
            url, device_secrets, topics, groups=_groups(group), tele_interval_s=tele_interval
        )
    else:
        fleet = SimFleet(
            url,
            device_secrets,
            topics,
            groups=_groups(group),
            tele_interval_s=tele_interval,
            driver_factory=drivers,
        )
    console.print(
        f"{devices} simulated devices on {url.redacted()} ({engine.value} engine)",
        highlight=False,
    )
    run_service(fleet.run())


def demo(
    devices: Annotated[
        int,
        typer.Option(
            min=2,
            max=TONE_SLOTS,
            help="Simulated devices, each its own tone; past the mesh cap (4) they meet in "
            "a mixed room, through a local Janus.",
        ),
    ] = 3,
    room: Annotated[str, typer.Option(help="Room the devices meet in.")] = "standup",
    listen: Annotated[
        float, typer.Option(min=1, max=60, help="Seconds to wait for everyone to hear everyone.")
    ] = 15.0,
    port: PortOpt = 0,
    home: HomeOpt = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="assistant: a device speaks a command to the voice assistant instead; "
            "passes when the fleet changed and the spoken answer was heard."
        ),
    ] = None,
) -> None:
    """The main job on embedded defaults: start everything, meet with real audio, check that
    every device hears every other, leave, report, stop."""
    from cli.demo import demo_room, hearing_table, needs_mixer, wait_until_everyone_hears
    from cli.stack import StackConfig, free_port, running_stack
    from fleet.client import FleetClient
    from fleet.device.workers import IN_PROCESS_UP_TO, auto_procs
    from fleet.protocol.messages import ApiRequest, MediaPath
    from fleet.settings import load_settings

    if agent not in (None, "assistant"):
        fail(f"--agent {agent!r}: the demo knows only 'assistant'", Exit.USAGE)
    settings = load_settings(home=home)
    agents = int(agent is not None)
    if agent == "assistant" and auto_procs(devices):
        # The assistant demo speaks through devices of its own process.
        fail(f"--agent assistant: at most {IN_PROCESS_UP_TO} devices", Exit.USAGE)

    config = StackConfig(
        home=settings.home,
        devices=devices,
        port=port or free_port(),
        tele_interval_s=2.0,
        mixer=needs_mixer(devices + agents),
        sim_procs=auto_procs(devices),
    )
    if agent == "assistant":
        config.driver_factory = _speaking_devices()

    async def go() -> bool:
        async with running_stack(config) as stack:
            if config.mixer and stack.mixer_url is None:
                raise MixerUnavailable(
                    "local",
                    f"{devices} devices meet in a mixed room, which needs Janus: {INSTALL_HINT}",
                )
            started = time.monotonic()
            await stack.wait_ready()
            console.print(
                f"broker, controller and {devices} devices up in {time.monotonic() - started:.2f}s",
                highlight=False,
            )
            async with FleetClient(stack.operator_url, stack.controller.topics) as fleet:
                seats = demo_room(room, devices, agents)
                await _step(fleet, ApiOp.ROOM_CREATE, seats)
                sent = time.monotonic()
                joined = await _step(fleet, ApiOp.JOIN_ALL, ApiRequest(room=room, timeout_s=20))
                if agent == "assistant":
                    passed = joined.ok and await _assistant_step(stack, room)
                    left = await _step(fleet, ApiOp.LEAVE_ALL, ApiRequest(timeout_s=20))
                    return passed and left.ok
                hearing = await wait_until_everyone_hears(stack.workers or stack.fleet, listen)
                if hearing.complete:
                    console.print(
                        f"every device hears every other {hearing.at - sent:.2f}s after join-all",
                        highlight=False,
                    )
                console.print(hearing_table(hearing))
                left = await _step(fleet, ApiOp.LEAVE_ALL, ApiRequest(timeout_s=20))
                history = await fleet.request(ApiOp.SESSIONS, ApiRequest(room=room, limit=1))
            for s in history.sessions:
                members = ", ".join(f"{p.pid} ({p.duration_s:.1f}s)" for p in s.participants)
                if len(s.participants) > LISTED_DEVICES:
                    members = f"{len(s.participants)} participants"
                state = "ended" if s.ended else "still live"
                path = f"mixed on {s.mixer}" if s.media is MediaPath.MIXED else "mesh"
                console.print(
                    f"session {s.session} in {s.room} ({path}): {s.duration_s:.1f}s, {state}; "
                    f"{members}",
                    highlight=False,
                )
            return joined.ok and hearing.complete and left.ok

    try:
        ok = run(go())
    except MixerUnavailable as exc:
        fail(str(exc), Exit.UNREACHABLE)
    console.print("[green]demo passed[/]" if ok else "[red]demo failed[/]")
    raise typer.Exit(Exit.OK if ok else Exit.NOT_CONVERGED)


def _speaking_devices() -> Callable[[str], MeetingDriver]:
    from fleet.agents.voice.tts import EspeakTTS
    from fleet.device.speech import SpeakingDriver

    try:
        tts = EspeakTTS()
    except FleetError as exc:
        fail(str(exc), Exit.USAGE)
    return lambda _: SpeakingDriver(tts)


async def _assistant_step(stack: Stack, room: str) -> bool:
    from cli.demo import assistant_demo, assistant_table
    from cli.meetings import report_agents

    report_agents()
    check = await assistant_demo(stack, room, lambda line: console.print(line, highlight=False))
    console.print(assistant_table(check))
    return check.ok


async def _step(fleet: FleetClient, op: ApiOp, request: ApiRequest) -> ApiResult:
    from fleet.protocol.messages import DeviceOutcome

    started = time.monotonic()
    result = await fleet.request(op, request)
    style = "green" if result.ok else "red"
    console.print(
        f"{op.value:<9} rev {result.rev}: [{style}]{result.code}[/] ({result.detail}) "
        f"in {time.monotonic() - started:.2f}s",
        highlight=False,
    )
    for d in result.devices:
        # A big fleet lists only the devices that did not converge.
        if len(result.devices) <= LISTED_DEVICES or d.outcome is not DeviceOutcome.CONVERGED:
            console.print(f"  {d.device}: {d.outcome.value}, room {d.room or '-'}", highlight=False)
    return result


def _broker_line(broker: object, host: str) -> str:
    from broker.local import MosquittoBroker

    port = getattr(broker, "port", "?")
    if isinstance(broker, MosquittoBroker):
        return f"Mosquitto (MQTT 5 and 3.1.1) on {host}:{port}, log {broker.log_path}"
    return f"amqtt (MQTT 3.1.1 only) on {host}:{port}"


def _groups(group: list[str] | None) -> list[str]:
    groups = list(dict.fromkeys(group or []))
    bad = [g for g in groups if not is_valid_id(g)]
    if bad:
        fail(f"--group: {name_error('group', bad[0])}", Exit.USAGE)
    return groups


@grouped
def ingest(
    *,
    share: Annotated[
        str, typer.Option(help="The share group, as the controller's --ingest-share.")
    ] = "ingest",
    client_id: Annotated[str, typer.Option(help="MQTT client id (one per process).")] = (
        "fleet-ingest"
    ),
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
    influx: InfluxOptions,
) -> None:
    """Take a share of the telemetry ingest beside `fleet controller --ingest-share`
    (telemetry only: desired state, meetings and Home Assistant stay with the controller)."""
    from fleet.telemetry.worker import IngestWorker

    require_id("--share", share, "share group")
    require_id("--client-id", client_id, "client id")
    url, topics = connection(broker, prefix)
    settings = influx.settings()
    if not settings.enabled:
        fail("fleet ingest needs a database: --influx-url (or FLEET_INFLUX_URL)", Exit.USAGE)
    console.print(
        f"ingest share {share!r} on {url.redacted()}: {settings.describe()}",
        highlight=False,
        soft_wrap=True,
    )
    run_service(IngestWorker(url, settings, share, topics, client_id=client_id).run())
