"""Intercom calls (docs/protocol.md §14.7): a private two-way session between two devices,
or a device and a group, in a room of its own that only its members may join."""

from fleet.intercom.part import Intercom

__all__ = ["Intercom"]
