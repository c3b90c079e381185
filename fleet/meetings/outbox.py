"""What the relay and the mixed sessions say goes out through the meeting server, the one
piece that holds the controller's link."""

from __future__ import annotations

from typing import Protocol

from fleet.protocol.messages import FleetEvent, Message


class Outbox(Protocol):
    async def send(self, pid: str, message: Message) -> None:
        """One message on `meet/{pid}/down`."""

    async def refuse(self, pid: str, code: str, detail: str) -> None:
        """An error to `pid` about its last request (counted and logged)."""

    async def emit(self, event: FleetEvent) -> None:
        """A fleet event (logs, dashboards, other parts)."""
