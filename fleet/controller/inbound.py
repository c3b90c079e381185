"""Inbound routing: every message on the controller's link, to whom it concerns.

A message first goes to the parts whose filters match (remembered per topic), then,
when it is one of the fleet's own topics, to the controller's module for its kind:
device reports to the registry, acks to the commands, desired docs to the desired
state, requests to the API, the sync marker back to the controller. A request or
signalling message that came retained is refused and cleared, never carried out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt

from fleet.controller.api import AutomationApi
from fleet.controller.commands import Commands
from fleet.controller.desired import DesiredState
from fleet.controller.link import ControllerLink
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError
from fleet.mqtt import payload_bytes, publish_nowait, reply_of
from fleet.protocol import ParsedTopic, TopicKind, Topics, decode, decode_for
from fleet.protocol.messages import Ack, State, Status, probe_id

log = logging.getLogger(__name__)

# Topics whose parts are remembered, in bytes of topic names plus a dict entry's cost;
# cleared wholesale past it (a 20,000-device fleet's topics take about 3 MB).
ROUTE_CACHE_BYTES = 16 * 1024 * 1024
ROUTE_ENTRY_OVERHEAD = 160
MAX_CLEARING = 1024

# A device's status or state (None: its retained topic was cleared), with the raw payload.
OnReport = Callable[[TopicKind, str, Status | State | None, bytes], Awaitable[None]]


class Inbound:
    def __init__(
        self,
        topics: Topics,
        link: ControllerLink,
        parts: Sequence[ControllerPart],
        api: AutomationApi,
        desired: DesiredState,
        commands: Commands,
        on_report: OnReport,
        on_sync: Callable[[str, bytes], Awaitable[None]],
        stats: dict[str, int],
    ) -> None:
        self._topics = topics
        self._link = link
        self._parts = parts
        self._api = api
        self._desired = desired
        self._commands = commands
        self._on_report = on_report
        self._on_sync = on_sync
        self._stats = stats
        self._routes: dict[str, tuple[ControllerPart, ...]] = {}
        self._routes_bytes = 0
        self._clearing: dict[str, None] = {}  # retained requests we cleared: topics

    @property
    def routed_topics(self) -> list[str]:
        """The topics whose parts are remembered now."""
        return list(self._routes)

    async def on_message(self, message: aiomqtt.Message) -> None:
        self._stats["messages"] += 1
        if self._link.mqtt5 and (reply := reply_of(message)):
            self._api.note_reply(message.topic.value, payload_bytes(message), reply)
        topic = message.topic.value
        payload = payload_bytes(message)
        if self._topics.never_retained(topic):
            if message.retain and payload:
                await self._refuse_retained(topic, payload)
                return
            if not payload and self._clearing.pop(topic, None) is not None:
                return  # our own clearing of a retained request, delivered back
        parsed = self._topics.parse(topic)
        for part in self._parts_for(message.topic):
            try:
                await part.on_message(topic, payload)
            except ProtocolError as exc:
                self._stats["rejected"] += 1
                log.warning("%s dropped message on %s: %s", part.name, topic, exc)
        if parsed is None:
            await self._api.refuse_unknown_topic(topic, payload)
            return
        try:
            await self._handle(parsed, payload)
        except ProtocolError as exc:
            self._stats["rejected"] += 1
            log.warning("dropped message on %s: %s", topic, exc)

    async def _refuse_retained(self, topic: str, payload: bytes) -> None:
        """A request or signalling message that came retained: carried out it would fire
        again on every restart (a retained leave-all), so it is refused and cleared."""
        self._stats["rejected"] += 1
        log.warning("refused a retained message on %s: requests are never retained", topic)
        if self._link.client is not None:
            if len(self._clearing) < MAX_CLEARING:
                self._clearing[topic] = None
            publish_nowait(self._link.client, topic, b"", qos=1, retain=True)
        op = topic.removeprefix(self._api.root)
        if op != topic:
            await self._api.error(
                probe_id(payload), op[:32], "retained", "API requests must not be retained"
            )

    def _parts_for(self, topic: aiomqtt.Topic) -> tuple[ControllerPart, ...]:
        """The parts whose filters match `topic`, remembered per topic: matching every
        part's filters costs more than the rest of routing a state report."""
        parts = self._routes.get(topic.value)
        if parts is None:
            # Bounded by bytes: topic names are up to 64 KiB each.
            cost = len(topic.value) + ROUTE_ENTRY_OVERHEAD
            if self._routes_bytes + cost > ROUTE_CACHE_BYTES:
                self._routes.clear()
                self._routes_bytes = 0
            parts = tuple(
                p for p in self._parts if any(topic.matches(f) for f in p.subscriptions())
            )
            self._routes[topic.value] = parts
            self._routes_bytes += cost
        return parts

    async def _handle(self, parsed: ParsedTopic, payload: bytes) -> None:
        kind = parsed.kind
        if kind in (TopicKind.STATUS, TopicKind.STATE):
            message: Status | State | None = decode_for(kind, payload) if payload else None
            await self._on_report(kind, parsed.name, message, payload)
        elif kind is TopicKind.ACK:
            if await self._commands.on_ack(parsed.name, decode(Ack, payload)):
                await self._api.finish_done()
        elif kind in (TopicKind.DESIRED, TopicKind.GROUP_DESIRED):
            if payload:
                self._desired.adopt(kind, parsed.name, decode_for(kind, payload))
        elif kind is TopicKind.API:
            await self._api.receive(parsed.name, payload)
        elif kind is TopicKind.SYNC:
            await self._on_sync(parsed.name, payload)
