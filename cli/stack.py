"""The whole platform in one process on embedded defaults: broker, controller, simulated devices.

`fleet up` runs it until Ctrl-C; `fleet demo` runs it, drives one meeting
through join-all and leave-all, and reports. Credentials are made fresh in the
platform's home folder, and a client file there lets later CLI commands find
this broker with no flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker.amqtt.embedded import EmbeddedBroker
from broker.local import BrokerEngine, MosquittoBroker, free_port, local_broker
from fleet.auth import CredentialStore, Role
from fleet.controller.factory import ControllerSettings, build_controller
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.device.sim import MeetingDriver, SimFleet, device_ids
from fleet.device.tones import tone_amplitude, tone_for
from fleet.device.workers import DeviceSound, SimWorkers
from fleet.errors import FleetError
from fleet.files import private_dir
from fleet.ha import HomeAssistantSettings
from fleet.homelock import home_lock
from fleet.meetings import DEFAULT_MESH_CAP, DEFAULT_ROOM_CAP
from fleet.mixer.process import maybe_local_janus
from fleet.mqtt import BrokerUrl, MqttVersion
from fleet.protocol import Topics
from fleet.telemetry import InfluxSettings
from fleet.web.server import ConsoleConfig, WebConsole

log = logging.getLogger(__name__)


def audio_drivers(ids: Sequence[str]) -> Callable[[str], MeetingDriver]:
    # Imported here: aiortc and numpy load only for a fleet that meets for real.
    from fleet.device.audio import audio_drivers as make

    return make(ids)


CONTROLLER_USER = "controller"
OPERATOR_USER = "operator"
__all__ = ["Stack", "StackConfig", "free_port", "running_stack", "stack_console"]


@dataclass
class StackConfig:
    home: Path
    devices: int = 3
    host: str = "127.0.0.1"
    port: int = 1883
    ws_port: int | None = None
    prefix: str = "fleet/v1"
    groups: Sequence[str] = ()
    tele_interval_s: float = 10.0
    id_prefix: str = "dev"
    audio: bool = True  # simulated devices meet for real (aiortc); off: the state names the room
    room_cap: int = DEFAULT_ROOM_CAP
    mesh_cap: int = DEFAULT_MESH_CAP
    mixer: bool = True  # start a local Janus for mixed rooms when it is installed
    influx: InfluxSettings | None = None  # the controller's telemetry ingest, when enabled
    home_assistant: HomeAssistantSettings | None = None  # None: no Home Assistant part
    parts: Sequence[ControllerPart] = ()  # further controller parts (a test's own)
    # Audio devices run in this many worker processes (fleet.device.workers); 0: here.
    sim_procs: int = 0
    mixers: Sequence[str] = ()  # further mixers (Janus WebSocket URLs), e.g. a bench's own
    # What each worker device sends and keeps (absent: its own tone, tone_amplitude).
    sounds: Mapping[str, DeviceSound] | None = None
    engine: BrokerEngine = BrokerEngine.AUTO  # Mosquitto when installed, else amqtt
    # How each simulated device meets (default: with a tone of its own, when `audio`).
    driver_factory: Callable[[str], MeetingDriver] | None = None


@dataclass
class Stack:
    config: StackConfig
    broker: MosquittoBroker | EmbeddedBroker
    controller: Controller
    fleet: SimFleet
    operator_url: BrokerUrl
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    mixer_url: str | None = None  # the local Janus, when one runs (its URL holds its secret)
    workers: SimWorkers | None = None  # the devices, when they run in worker processes

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            await self.controller.connected.wait()
            await self.fleet.wait_connected(timeout)
            if self.workers is not None:
                await self.workers.wait_connected(timeout)

    def add_user(self, username: str, role: Role) -> BrokerUrl:
        """A broker user of the stack's own (an agent, say), usable at once: Mosquitto is
        made to read it now (its file watcher would take a while; amqtt reads per login)."""
        store = CredentialStore(self.config.home / "credentials.json")
        secret = store.add(username, role, replace=True)
        if isinstance(self.broker, MosquittoBroker):
            self.broker.reload()
        return self.operator_url.with_credentials(username, secret)

    def failed(self) -> BaseException | None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None


@contextlib.asynccontextmanager
async def running_stack(config: StackConfig) -> AsyncIterator[Stack]:
    # First, before any file in the home is written: HomeBusy if another stack runs there.
    with home_lock(config.home):
        async with _running_stack(config) as stack:
            yield stack


@contextlib.asynccontextmanager
async def _running_stack(config: StackConfig) -> AsyncIterator[Stack]:
    home = config.home
    private_dir(home)  # credentials, the database, client.json
    store = CredentialStore(home / "credentials.json")
    controller_secret = store.add(CONTROLLER_USER, Role.CONTROLLER, replace=True)
    operator_secret = store.add(OPERATOR_USER, Role.CONTROLLER, replace=True)
    ids = device_ids(config.devices, config.id_prefix)
    secrets = store.add_devices(ids, groups=config.groups, replace=True) if ids else {}
    topics = Topics(config.prefix)
    async with (
        local_broker(
            config.engine,
            store.path,
            host=config.host,
            port=config.port,
            ws_port=config.ws_port,
            prefix=config.prefix,
        ) as broker,
        maybe_local_janus(home / "janus", config.mixer) as mixer_url,
    ):
        # amqtt speaks 3.1.1 only: say so in the URLs (and the client file), so that no
        # client asks it for MQTT 5 first.
        mqtt = MqttVersion.AUTO if isinstance(broker, MosquittoBroker) else MqttVersion.V311
        base = BrokerUrl(scheme="mqtt", host=config.host, port=broker.port, mqtt=mqtt)
        controller = build_controller(
            ControllerSettings(
                base.with_credentials(CONTROLLER_USER, controller_secret),
                home / "controller.db",
                topics,
                room_cap=config.room_cap,
                mesh_cap=config.mesh_cap,
                mixers=[*([mixer_url] if mixer_url else []), *config.mixers],
                credentials=store,
                # Mosquitto reads its ACL from files: the broker rewrites them on a grant.
                group_acl=broker if isinstance(broker, MosquittoBroker) else None,
                reload_credentials=_reloader(broker),
                influx=config.influx,
                home_assistant=config.home_assistant,
                parts=config.parts,
            )
        )
        workers = sim_workers(config, base, topics, secrets)
        fleet = SimFleet(
            base,
            {} if workers is not None else secrets,
            topics,
            groups=list(config.groups),
            tele_interval_s=config.tele_interval_s,
            driver_factory=config.driver_factory or (audio_drivers(ids) if config.audio else None),
        )
        stack = Stack(
            config,
            broker,
            controller,
            fleet,
            base.with_credentials(OPERATOR_USER, operator_secret),
            mixer_url=mixer_url,
            workers=workers,
        )
        stack.tasks = [asyncio.create_task(controller.run(), name="controller")]
        if isinstance(broker, MosquittoBroker):  # a broker that dies is a failure to report
            stack.tasks.append(asyncio.create_task(broker.wait(), name="mosquitto"))
        if fleet.devices:  # an empty fleet's task would end at once
            stack.tasks.append(asyncio.create_task(fleet.run(), name="sim-fleet"))
        try:
            async with contextlib.AsyncExitStack() as children:
                if workers is not None:
                    await children.enter_async_context(workers)
                    stack.tasks.append(asyncio.create_task(workers.watch(), name="sim-workers"))
                yield stack
        finally:
            for task in stack.tasks:
                task.cancel()
            await asyncio.gather(*stack.tasks, return_exceptions=True)


def _reloader(broker: object) -> Callable[[], None] | None:
    return broker.reload if isinstance(broker, MosquittoBroker) else None


def sim_workers(
    config: StackConfig, base: BrokerUrl, topics: Topics, secrets: dict[str, str]
) -> SimWorkers | None:
    """The worker processes of an audio fleet that asked for them (config.sim_procs)."""
    if not (config.audio and config.sim_procs and secrets):
        return None
    ids = list(secrets)
    amplitude = tone_amplitude(len(ids))
    sounds = {i: DeviceSound(tone_for(n), amplitude) for n, i in enumerate(ids)}
    sounds.update(config.sounds or {})
    return SimWorkers(
        base,
        topics,
        secrets,
        sounds,
        procs=min(config.sim_procs, len(ids)),
        groups=config.groups,
        tele_interval_s=config.tele_interval_s,
    )


def stack_console(stack: Stack, host: str, port: int) -> WebConsole:
    """The console of a `fleet up` stack: its broker, its WebSocket port, its operator."""
    cfg = stack.config
    if stack.broker.ws_port is None:
        raise FleetError("the web console needs the broker's WebSocket listener (--ws-port)")
    config = ConsoleConfig(
        broker=BrokerUrl(scheme="mqtt", host=cfg.host, port=stack.broker.port),
        topics=Topics(cfg.prefix),
        ws_port=stack.broker.ws_port,
        operator=stack.operator_url.username or "operator",
    )
    return WebConsole(config, host, port)
