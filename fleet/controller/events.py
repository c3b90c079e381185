"""Fleet events: every part hears each one, and it goes out on the `events` topic."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiomqtt

from fleet.controller.link import ControllerLink
from fleet.controller.parts import ControllerPart
from fleet.mqtt import publish_nowait
from fleet.protocol import Topics, encode
from fleet.protocol.messages import FleetEvent

log = logging.getLogger(__name__)


class FleetEvents:
    def __init__(self, topics: Topics, link: ControllerLink, parts: Sequence[ControllerPart]):
        self._topics = topics
        self._link = link
        self._parts = parts

    async def emit(self, event: FleetEvent) -> None:
        """Hand the event to every part, then publish it."""
        for part in self._parts:
            try:
                await part.on_event(event)
            except Exception:
                log.exception("part %s failed on event %s", part.name, event.kind)
        if self._link.client is not None:
            # Not awaited: an event is a record, and Python 3.11's wait_for (inside aiomqtt's
            # publish) can swallow a cancellation that lands as the PUBACK arrives.
            try:
                publish_nowait(self._link.client, self._topics.events, encode(event), qos=1)
            except aiomqtt.MqttError as exc:
                log.debug("event %s not published: %s", event.kind, exc)
