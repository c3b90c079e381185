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
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker.credentials import CredentialStore, Role
from broker.embedded import EmbeddedBroker
from fleet.controller.meetings import DEFAULT_MESH_CAP, DEFAULT_ROOM_CAP, MeetingServer
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.controller.web_login import WebLogins
from fleet.device.sim import MeetingDriver, SimFleet, device_ids
from fleet.files import private_dir
from fleet.mixer.process import maybe_local_janus
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics

log = logging.getLogger(__name__)


def audio_drivers(ids: Sequence[str]) -> Callable[[str], MeetingDriver]:
    # Imported here: aiortc and numpy load only for a fleet that meets for real.
    from fleet.device.audio import audio_drivers as make

    return make(ids)


CONTROLLER_USER = "controller"
OPERATOR_USER = "operator"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    parts: Sequence[ControllerPart] = ()  # controller features (telemetry ingest, ...)


@dataclass
class Stack:
    config: StackConfig
    broker: EmbeddedBroker
    controller: Controller
    fleet: SimFleet
    operator_url: BrokerUrl
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    mixer_url: str | None = None  # the local Janus, when one runs

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            await self.controller.connected.wait()
            await self.fleet.wait_connected(timeout)

    def failed(self) -> BaseException | None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None


@contextlib.asynccontextmanager
async def running_stack(config: StackConfig) -> AsyncIterator[Stack]:
    home = config.home
    private_dir(home)  # credentials, the database, client.json
    store = CredentialStore(home / "credentials.json")
    controller_secret = store.add(CONTROLLER_USER, Role.CONTROLLER, replace=True)
    operator_secret = store.add(OPERATOR_USER, Role.CONTROLLER, replace=True)
    ids = device_ids(config.devices, config.id_prefix)
    secrets = store.add_devices(ids, groups=config.groups, replace=True) if ids else {}
    topics = Topics(config.prefix)
    base = BrokerUrl(scheme="mqtt", host=config.host, port=config.port)
    async with (
        EmbeddedBroker(
            store.path,
            host=config.host,
            port=config.port,
            ws_port=config.ws_port,
            prefix=config.prefix,
        ) as broker,
        maybe_local_janus(home / "janus", config.mixer) as mixer_url,
    ):
        meetings = MeetingServer(
            room_cap=config.room_cap,
            mesh_cap=config.mesh_cap,
            mixers=[mixer_url] if mixer_url else [],
        )
        controller = Controller(
            base.with_credentials(CONTROLLER_USER, controller_secret),
            home / "controller.db",
            topics,
            credentials=store,
            parts=[meetings, WebLogins(store), *config.parts],
        )
        fleet = SimFleet(
            base,
            secrets,
            topics,
            groups=list(config.groups),
            tele_interval_s=config.tele_interval_s,
            driver_factory=audio_drivers(ids) if config.audio else None,
        )
        stack = Stack(
            config,
            broker,
            controller,
            fleet,
            base.with_credentials(OPERATOR_USER, operator_secret),
            mixer_url=mixer_url,
        )
        stack.tasks = [asyncio.create_task(controller.run(), name="controller")]
        if fleet.devices:  # an empty fleet's task would end at once
            stack.tasks.append(asyncio.create_task(fleet.run(), name="sim-fleet"))
        try:
            yield stack
        finally:
            for task in stack.tasks:
                task.cancel()
            await asyncio.gather(*stack.tasks, return_exceptions=True)
