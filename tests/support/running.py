"""Run real platform parts inside a test: a controller, simulated devices, an operator client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fleet.auth import Role
from fleet.client import FleetClient
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.device.bulk import BulkFleet
from fleet.device.sim import MeetingDriver, SimDeviceConfig, SimFleet, SimulatedDevice, device_ids
from fleet.meetings import MeetingServer
from fleet.mqtt import BrokerUrl
from tests.support.brokers import BrokerHandle

OPERATOR = "operator"


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll until predicate() holds; TimeoutError naming `what` otherwise."""
    try:
        async with asyncio.timeout(timeout):
            # Polling on purpose: the conditions are spread over objects with no events.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}") from None


class Part:
    """A background task with a name, cancelled and awaited on stop."""

    def __init__(self, coro: object, name: str) -> None:
        self.task = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def controller(
    handle: BrokerHandle,
    db: Path,
    manage_credentials: bool = True,
    parts: Sequence[ControllerPart] | None = None,
) -> AsyncIterator[Controller]:
    ctl = Controller(
        BrokerUrl.parse(handle.controller_url()),
        db,
        handle.topics,
        credentials=handle.store if manage_credentials else None,
        # Signalling tests join rooms freely; test_meetings checks the default (API only).
        parts=[MeetingServer(auto_create=True)] if parts is None else parts,
    )
    part = Part(ctl.run(), "controller")
    try:
        async with asyncio.timeout(10):
            await ctl.connected.wait()
        yield ctl
    finally:
        await part.stop()


def register_devices(
    handle: BrokerHandle, count: int, groups: Sequence[str] = (), prefix: str = "dev"
) -> dict[str, str]:
    ids = device_ids(count, prefix)
    secrets = handle.store.add_devices(ids, groups=groups)
    handle.backend.sync()
    return secrets


@contextlib.asynccontextmanager
async def sim_fleet(
    handle: BrokerHandle,
    secrets: dict[str, str],
    groups: Sequence[str] = (),
    tele_interval_s: float = 30.0,
    driver_factory: Callable[[str], MeetingDriver] | None = None,
    engine: str = "aiomqtt",
) -> AsyncIterator[SimFleet | BulkFleet]:
    """Simulated devices; engine "bulk" is `fleet sim`'s default (fleet/device/bulk.py), with
    no audio: a `driver_factory` (devices that meet for real) needs the aiomqtt engine."""
    base = BrokerUrl.parse(f"mqtt://{handle.host}:{handle.port}")
    fleet: SimFleet | BulkFleet
    if engine == "bulk":
        assert driver_factory is None, "the bulk engine has no audio"
        fleet = BulkFleet(
            base, secrets, handle.topics, groups=groups, tele_interval_s=tele_interval_s
        )
    else:
        fleet = SimFleet(
            base,
            secrets,
            handle.topics,
            groups=groups,
            tele_interval_s=tele_interval_s,
            driver_factory=driver_factory,
        )
    part = Part(fleet.run(), "sim-fleet")
    try:
        await fleet.wait_connected(30)
        yield fleet
    finally:
        await part.stop()


@contextlib.asynccontextmanager
async def one_device(
    handle: BrokerHandle, device_id: str, secret: str, groups: Sequence[str] = ()
) -> AsyncIterator[SimulatedDevice]:
    base = BrokerUrl.parse(f"mqtt://{handle.host}:{handle.port}")
    dev = SimulatedDevice(
        SimDeviceConfig(device_id, secret, list(groups), 30.0), base, handle.topics
    )
    part = Part(dev.run(), device_id)
    try:
        async with asyncio.timeout(10):
            await dev.connected.wait()
        yield dev
    finally:
        await part.stop()


_operator_secrets: dict[Path, str] = {}  # per credentials file, i.e. per test


def operator_url(handle: BrokerHandle) -> BrokerUrl:
    """An operator (controller-role) user, as the CLI has."""
    key = handle.store.path
    if key not in _operator_secrets:
        _operator_secrets[key] = handle.add_user(OPERATOR, Role.CONTROLLER)
    return BrokerUrl.parse(handle.url(OPERATOR, _operator_secrets[key]))


@contextlib.asynccontextmanager
async def operator(handle: BrokerHandle) -> AsyncIterator[FleetClient]:
    async with FleetClient(operator_url(handle), handle.topics) as client:
        yield client
