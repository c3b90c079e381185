"""Inbound routing: every message on the controller's link, to whom it concerns.

The read loop hands each message to `accept`, which only puts it in its lane
(fleet.controller.lanes): API requests and Home Assistant's entity commands in the
requests lane (a queue per requester: the user named by `api/by/{user}/{op}`, one
shared by the older `api/{op}`, one for entity commands), meeting signalling in the
signalling lane (a queue per pid), everything else in the reports lane. Each lane is
served by its own task(s), so device reports and signalling never wait behind requests,
and every lane is bounded: a request or signalling message past its sender's bound is
answered `busy` (at most a few answers a second per sender; the rest are counted).
Requests are served by several workers, one request per requester at a time, so a slow
one (a join waits for its desired doc's PUBACK) holds up only its own requester.

Served, a message first goes to the parts whose filters match (remembered per topic),
then, when it is one of the fleet's own topics, to the controller's module for its kind:
device reports to the registry, acks to the commands, desired docs to the desired
state, requests to the API, the sync marker back to the controller. A request or
signalling message that came retained is refused and cleared, never carried out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TypeVar

import aiomqtt

from fleet.controller.api import AutomationApi
from fleet.controller.commands import Commands
from fleet.controller.desired import DesiredState
from fleet.controller.lanes import (
    Budget,
    FairLane,
    LaneDepth,
    ReportLane,
    serve_fair,
    stop_if_cancelled,
)
from fleet.controller.link import ControllerLink
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError
from fleet.mqtt import payload_bytes, publish_nowait, reply_of
from fleet.protocol import ParsedTopic, TopicKind, Topics, decode, decode_for, encode
from fleet.protocol.messages import Ack, MeetError, State, Status, probe_id
from fleet.protocol.topics import NEVER_RETAINED_KINDS, HaTopicKind

log = logging.getLogger(__name__)

# Topics whose parts and parse are remembered, in bytes of topic names plus a dict entry's
# cost; cleared wholesale past it (a 20,000-device fleet's topics take about 6 MB).
ROUTE_CACHE_BYTES = 16 * 1024 * 1024
ROUTE_ENTRY_OVERHEAD = 160
MAX_CLEARING = 1024

# The lanes' bounds (bytes count payload and topic).
# Requests: a queue per requester, served by a few workers, one request per requester at
# a time. Beyond a requester's bound its requests are answered `busy`.
REQUEST_WORKERS = 8
REQUESTS_PER_REQUESTER = 256
REQUEST_BYTES_PER_REQUESTER = 1024 * 1024
REQUEST_BYTES = 16 * 1024 * 1024
# Signalling: a queue per pid (a member's offer and its candidates stay in order).
SIGNALS_PER_PID = 64
SIGNAL_BYTES_PER_PID = 256 * 1024
SIGNAL_BYTES = 64 * 1024 * 1024
# Reports: state-like topics coalesce (bounded by the fleet's topics); the rest (acks,
# telemetry) are bounded here and dropped, counted, past it.
REPORTS_NOT_COALESCED = 100_000
REPORT_BYTES = 64 * 1024 * 1024
REPORT_BATCH = 256  # reports served between two turns of the other lanes
# Answers to a flood: `busy` results (or signalling errors) per sender, and log lines.
BUSY_ANSWERS_PER_S = 5.0
BUSY_ANSWERS_BURST = 20.0
# Requesters that are not a user named by the topic.
SHARED_REQUESTER = "(api/{op})"  # every sender of the older form, together
HA_COMMANDS = "(ha entities)"  # Home Assistant's entity commands (homeassistant users)
# Retained state: the latest message of the topic is all that matters.
COALESCING_KINDS = frozenset(
    {TopicKind.STATUS, TopicKind.STATE, TopicKind.DESIRED, TopicKind.GROUP_DESIRED}
)

Item = tuple[aiomqtt.Message, ParsedTopic | None]
_T = TypeVar("_T")

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
        self._parsed: dict[str, ParsedTopic | None] = {}
        self._routes_bytes = 0
        self._clearing: dict[str, None] = {}  # retained requests we cleared: topics
        self.reports: ReportLane[Item] = ReportLane(REPORTS_NOT_COALESCED, REPORT_BYTES)
        self.signalling: FairLane[Item] = FairLane(
            SIGNALS_PER_PID, SIGNAL_BYTES_PER_PID, SIGNAL_BYTES
        )
        self.requests: FairLane[Item] = FairLane(
            REQUESTS_PER_REQUESTER, REQUEST_BYTES_PER_REQUESTER, REQUEST_BYTES
        )
        # Requests wait while the controller re-reads the fleet after a (re)connect.
        self._requests_open = asyncio.Event()
        self._requests_open.set()
        self._busy_answers = Budget(BUSY_ANSWERS_PER_S, BUSY_ANSWERS_BURST)
        self._warnings = Budget(0.1, 1)
        self._api_head = f"{topics.prefix}/api/"
        self._ha_head = f"{topics.prefix}/ha/"
        for key in ("busy", "dropped"):
            stats.setdefault(key, 0)

    @property
    def routed_topics(self) -> list[str]:
        """The topics whose parts are remembered now."""
        return list(self._routes)

    def depths(self) -> dict[str, LaneDepth]:
        """What each lane holds now, its peak, and what it refused (a public view)."""
        return {
            "reports": self.reports.depth,
            "signalling": self.signalling.depth,
            "requests": self.requests.depth,
        }

    def hold_requests(self) -> None:
        """Requests wait in their lane (bounded) until `open_requests`."""
        self._requests_open.clear()

    def open_requests(self) -> None:
        self._requests_open.set()

    # --- the read loop's side: classify, never wait -------------------------------------------
    def accept(self, message: aiomqtt.Message) -> None:
        """Put a message in its lane, or answer `busy` / count it when the lane refuses."""
        topic = message.topic.value
        payload = payload_bytes(message)
        size = len(payload) + len(topic)
        parsed = self._parse(topic)
        kind = parsed.kind if parsed is not None else None
        if kind is TopicKind.API or (parsed is None and topic.startswith(self._api_head)):
            requester = parsed.requester if parsed is not None and parsed.requester else ""
            key = requester or SHARED_REQUESTER
            if not self.requests.offer(key, (message, parsed), size):
                self._request_refused(key, message, parsed, payload)
            return
        if kind is TopicKind.MEET_UP:
            assert parsed is not None
            if not self.signalling.offer(parsed.name, (message, parsed), size):
                self._signal_refused(parsed.name)
            return
        if kind is TopicKind.API_RESULT and not self._parts_for(message.topic):
            return  # our own results, back through `api/+`: nobody's business here
        if parsed is None and topic.startswith(self._ha_head) and self._ha_command(topic):
            if not self.requests.offer(HA_COMMANDS, (message, parsed), size):
                self._stats["busy"] += 1
                self._warn(HA_COMMANDS, "Home Assistant entity commands past their bound")
            return
        coalesce = kind in COALESCING_KINDS or message.retain
        if not self.reports.offer(topic, (message, parsed), size, coalesce):
            self._stats["dropped"] += 1
            self._warn("reports", f"reports lane full: dropped a message on {topic[:128]}")

    def _parse(self, topic: str) -> ParsedTopic | None:
        """`Topics.parse`, remembered per topic (a fleet's topics recur with every report;
        parsed topics are frozen), within the routes' byte bound."""
        try:
            return self._parsed[topic]
        except KeyError:
            pass
        parsed = self._topics.parse(topic)
        self._remember(self._parsed, topic, parsed)
        return parsed

    def _remember(self, cache: dict[str, _T], topic: str, value: _T) -> None:
        """Keep `value` for `topic` in one of the per-topic caches, bounded together by
        bytes: topic names are up to 64 KiB each. Past the bound both start again."""
        cost = len(topic) + ROUTE_ENTRY_OVERHEAD
        if self._routes_bytes + cost > ROUTE_CACHE_BYTES:
            self._routes.clear()
            self._parsed.clear()
            self._routes_bytes = 0
        cache[topic] = value
        self._routes_bytes += cost

    def _ha_command(self, topic: str) -> bool:
        ha = self._topics.parse_ha(topic)
        return ha is not None and ha.kind in (HaTopicKind.DEVICE_SET, HaTopicKind.FLEET_SET)

    def _request_refused(
        self, key: str, message: aiomqtt.Message, parsed: ParsedTopic | None, payload: bytes
    ) -> None:
        self._stats["busy"] += 1
        self._warn(key, f"API requester {key} is past its bound: answering busy")
        if not self._busy_answers.take(key):
            return
        if parsed is not None:
            op = parsed.name
        else:
            op = message.topic.value.removeprefix(self._api_head).rpartition("/")[2]
        reply = reply_of(message) if self._link.mqtt5 else None
        self._api.busy(
            probe_id(payload),
            op[:32],
            reply,
            f"the controller holds too many requests from {key}; retry later",
        )

    def _signal_refused(self, pid: str) -> None:
        self._stats["busy"] += 1
        self._warn(("signalling", pid), f"signalling from {pid} is past its bound: dropped")
        client = self._link.client
        if client is None or not self._busy_answers.take(("signalling", pid)):
            return
        refusal = MeetError(type="error", code="busy", detail="too many messages; slow down")
        try:
            publish_nowait(client, self._topics.meet_down(pid), encode(refusal), qos=1)
        except aiomqtt.MqttError as exc:
            log.debug("busy answer to %s not sent: %s", pid, exc)

    def _warn(self, key: Hashable, text: str) -> None:
        if self._warnings.take(key):
            log.warning("%s", text)

    # --- the lanes' side ----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the lanes for the controller's lifetime."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._serve_reports(), name="inbound-reports")
            tg.create_task(serve_fair(self.signalling, self._serve), name="inbound-signalling")
            for n in range(REQUEST_WORKERS):
                tg.create_task(self._serve_requests(), name=f"inbound-requests-{n}")

    async def _serve_reports(self) -> None:
        while True:
            stop_if_cancelled()
            for message, parsed in await self.reports.take(REPORT_BATCH):
                await self._route(message, parsed)
            await asyncio.sleep(0)  # a turn for the other lanes between batches

    async def _serve(self, _key: Hashable, item: Item) -> None:
        await self._route(*item)

    async def _serve_requests(self) -> None:
        while True:
            await self._requests_open.wait()
            stop_if_cancelled()
            key, (message, parsed) = await self.requests.take()
            try:
                await self._route(message, parsed)
            finally:
                self.requests.done(key)
            await asyncio.sleep(0)

    async def _route(self, message: aiomqtt.Message, parsed: ParsedTopic | None) -> None:
        try:
            await self.route(message, parsed)
        except (aiomqtt.MqttError, OSError) as exc:  # disconnected meanwhile
            log.info("message on %s not handled: %s", message.topic.value[:128], exc)
        except Exception:
            log.exception("handler failed on %s; message dropped", message.topic.value[:128])

    async def route(self, message: aiomqtt.Message, parsed: ParsedTopic | None) -> None:
        """Hand one message to the parts whose filters match, then to its module."""
        self._stats["messages"] += 1
        if self._link.mqtt5 and (reply := reply_of(message)):
            self._api.note_reply(message.topic.value, payload_bytes(message), reply)
        topic = message.topic.value
        payload = payload_bytes(message)
        if self._never_retained(topic, parsed):
            if message.retain and payload:
                await self._refuse_retained(topic, parsed, payload)
                return
            if not payload and self._clearing.pop(topic, None) is not None:
                return  # our own clearing of a retained request, delivered back
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

    def _never_retained(self, topic: str, parsed: ParsedTopic | None) -> bool:
        """`Topics.never_retained`, without parsing the topic again."""
        if parsed is not None:
            return parsed.kind in NEVER_RETAINED_KINDS
        return topic.startswith(self._api_head) or (
            topic.startswith(self._ha_head) and self._ha_command(topic)
        )

    async def _refuse_retained(
        self, topic: str, parsed: ParsedTopic | None, payload: bytes
    ) -> None:
        """A request or signalling message that came retained: carried out it would fire
        again on every restart (a retained leave-all), so it is refused and cleared."""
        self._stats["rejected"] += 1
        log.warning("refused a retained message on %s: requests are never retained", topic)
        if self._link.client is not None:
            if len(self._clearing) < MAX_CLEARING:
                self._clearing[topic] = None
            publish_nowait(self._link.client, topic, b"", qos=1, retain=True)
        op = topic.removeprefix(self._api.root)
        if parsed is not None and parsed.kind is TopicKind.API:
            op = parsed.name
        if op != topic:
            await self._api.error(
                probe_id(payload), op[:32], "retained", "API requests must not be retained"
            )

    def _parts_for(self, topic: aiomqtt.Topic) -> tuple[ControllerPart, ...]:
        """The parts whose filters match `topic`, remembered per topic: matching every
        part's filters costs more than the rest of routing a state report."""
        parts = self._routes.get(topic.value)
        if parts is None:
            parts = tuple(
                p for p in self._parts if any(topic.matches(f) for f in p.subscriptions())
            )
            self._remember(self._routes, topic.value, parts)
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
            await self._api.receive(parsed.name, payload, parsed.requester)
        elif kind is TopicKind.SYNC:
            await self._on_sync(parsed.name, payload)
