"""Each device's last birth, kept in the store: what a device is (firmware, board,
groups) outlives its will and the controller's restarts, so an offline device stays
listed and in its groups when the broker lost its birth."""

from __future__ import annotations

import contextlib

from fleet.controller.store import Store
from fleet.errors import FleetError
from fleet.protocol import decode
from fleet.protocol.messages import State, Status
from fleet.registry import Registry


class Births:
    def __init__(self, store: Store, registry: Registry) -> None:
        self._store = store
        self._registry = registry

    def load(self) -> None:
        """Every kept birth into the registry."""
        for device_id, birth in self._store.births():
            with contextlib.suppress(FleetError):  # a row from an older schema: forget it
                self._registry.record(device_id).birth = decode(Status, birth)

    def keep(self, device_id: str, status: Status | State | None, payload: bytes) -> None:
        """Store a birth that says something new (not only a new `ts`: a fleet reconnecting
        after a broker restart writes nothing); a cleared status deletes the device.
        Called before the registry takes the status, to compare with what it knew."""
        if status is None:
            self._store.forget_birth(device_id)
            return
        if not isinstance(status, Status) or not status.online:
            return
        rec = self._registry.devices.get(device_id)
        known = rec.birth if rec is not None else None
        if known is None or known.model_copy(update={"ts": None}) != status.model_copy(
            update={"ts": None}
        ):
            self._store.save_birth(device_id, payload)
