"""A small fleet that calls for real: a controller with the meeting server and the
intercom, simulated devices with real audio (each its own tone) and an operator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fleet.client import FleetClient
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, audio_drivers, tone_for
from fleet.device.sim import SimFleet, SimulatedDevice
from fleet.intercom import Intercom
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for


@dataclass
class CallFleet:
    ctl: Controller
    fleet: SimFleet
    op: FleetClient
    ids: list[str]

    def dev(self, device_id: str) -> SimulatedDevice:
        return self.fleet[device_id]

    def driver(self, device_id: str) -> AudioMeetingDriver:
        driver = self.fleet[device_id].driver
        assert isinstance(driver, AudioMeetingDriver)
        return driver

    def tone(self, device_id: str) -> float:
        return tone_for(self.ids.index(device_id))

    def hears(self, listener: str, speaker: str) -> bool:
        """`listener` hears `speaker`'s tone over the last second, from a current peer."""
        driver = self.driver(listener)
        return any(
            pid == speaker and driver.hears_tone(participant, self.tone(speaker))
            for participant, pid in driver.peer_pids().items()
        )

    def room(self, device_id: str) -> str | None:
        meeting = self.dev(device_id).meeting
        return meeting.room if meeting is not None else None

    async def request(self, op: ApiOp, **fields: object) -> ApiResult:
        return await self.op.request(op, ApiRequest.model_validate(fields, strict=False))

    async def in_room(self, room: str | None, *devices: str, timeout: float = 20) -> None:
        await wait_for(
            lambda: all(self.room(d) == room for d in devices),
            timeout=timeout,
            what=f"{', '.join(devices)} in {room}",
        )

    async def talking(self, a: str, b: str, timeout: float = 20) -> None:
        """`a` and `b` hear each other."""
        await wait_for(
            lambda: self.hears(a, b) and self.hears(b, a),
            timeout=timeout,
            what=f"{a} and {b} hear each other",
        )


@contextlib.asynccontextmanager
async def call_fleet(
    handle: BrokerHandle, tmp_path: Path, count: int = 3, groups: tuple[str, ...] = ()
) -> AsyncIterator[CallFleet]:
    secrets = register_devices(handle, count, groups=groups)
    ids = list(secrets)
    async with (
        controller(
            handle, tmp_path / "ctl.db", parts=[MeetingServer(auto_create=True), Intercom()]
        ) as ctl,
        sim_fleet(handle, secrets, groups=groups, driver_factory=audio_drivers(ids)) as fleet,
        operator(handle) as op,
    ):
        assert isinstance(fleet, SimFleet)
        await wait_for(
            lambda: all(d in ctl.registry.devices and ctl.registry.devices[d].online for d in ids),
            what="the controller knows every device",
        )
        yield CallFleet(ctl, fleet, op, ids)
