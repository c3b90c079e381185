"""What a controller part may use of its host: `PartHost`.

A part (the meeting server, Home Assistant, telemetry ingest, web logins) is handed
its host once, in `ControllerPart.attach`, and reaches the fleet only through these
members. The controller implements it; so does a process that runs one part alone
(`fleet ingest`, fleet/telemetry/worker.py). Nothing here imports a part or the
controller, so parts and the controller do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from fleet.controller.store import Store
from fleet.protocol import Topics
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    Desired,
    FleetEvent,
    MeetingIntent,
)
from fleet.registry import DeviceRecord


class FleetView(Protocol):
    """The registry, read-only: what the host knows of each device."""

    @property
    def devices(self) -> Mapping[str, DeviceRecord]: ...

    def online_count(self) -> int: ...

    def in_meeting_count(self) -> int: ...


class PartHost(Protocol):
    @property
    def topics(self) -> Topics:
        """The topic builder of the fleet's prefix."""
        ...

    @property
    def registry(self) -> FleetView:
        """Every device the host has seen: its status, state and last birth."""
        ...

    @property
    def store(self) -> Store:
        """The host's SQLite store, where a part keeps its own rows (rooms and sessions,
        Home Assistant's choices)."""
        ...

    @property
    def synced(self) -> bool:
        """The retained fleet has been read since the last (re)connect."""
        ...

    @property
    def converging(self) -> bool:
        """A desired-state operation still waits for devices: work that can wait stays
        out of its way."""
        ...

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False
    ) -> bool:
        """Publish on the host's link; False (nothing sent) while disconnected."""
        ...

    async def emit(self, event: FleetEvent) -> None:
        """Publish a fleet event and hand it to every part."""
        ...

    async def publish_result(self, result: ApiResult) -> None:
        """A later result of a request a part accepted (its op handler answered with
        `done: false`): to the requester's reply topic or api/result, recorded when final."""
        ...

    async def submit(self, op: ApiOp, request: ApiRequest) -> None:
        """Run an API request as if it came on api/{op}; its results go to api/result."""
        ...

    async def write_own_intent(
        self, device_id: str, meeting: MeetingIntent | None, op: str
    ) -> Desired:
        """Write the device's own desired doc (dev/{id}/desired) with `meeting` and a new
        rev, keeping its `dnd`; parts are asked first (`before_intent`)."""
        ...
