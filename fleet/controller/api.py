"""The automation API: requests on `api/{op}`, results on `api/result` or MQTT 5 replies.

A request is parsed by the protocol models, held while the controller re-reads the
retained fleet (acting on a partial registry could hand out a rev already in use),
recorded in the audit log, and run by the part that serves its op or by the
controller's own modules (desired state, commands, the inventory). Desired-state and
command requests get an `accepted` result at once and a final one when their devices
converge, fail or time out. A request that named an MQTT 5 response topic of ours
(`api/reply/...`) gets its results there, with its correlation data.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

import aiomqtt

from fleet.controller.commands import Commands, CommandTracker
from fleet.controller.desired import DESIRED_OPS, DesiredState, DesiredTracker
from fleet.controller.events import FleetEvents
from fleet.controller.inventory import inventory
from fleet.controller.link import ControllerLink
from fleet.controller.parts import ControllerPart, requested_by
from fleet.controller.store import Store
from fleet.errors import FleetError, ProtocolError, RequestRefused
from fleet.mqtt import Reply, publish, publish_nowait
from fleet.protocol import Topics, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    EventKind,
    FleetEvent,
    api_request_from_payload,
    probe_id,
)
from fleet.registry import Registry

log = logging.getLogger(__name__)

# API requests held until synced, in payload bytes; past it a request is refused (busy).
HELD_REQUESTS_BYTES = 8 * 1024 * 1024
MAX_REPLIES = 10_000  # open requests with a response topic; beyond, results go to api/result


class AutomationApi:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        topics: Topics,
        link: ControllerLink,
        events: FleetEvents,
        parts: Sequence[ControllerPart],
        desired: DesiredState,
        commands: Commands,
        synced: Callable[[], bool],
        stats: dict[str, int],
    ) -> None:
        self._store = store
        self._registry = registry
        self._topics = topics
        self._link = link
        self._events = events
        self._parts = parts
        self._desired = desired
        self._commands = commands
        self._synced = synced
        self._stats = stats
        self.root = f"{topics.prefix}/api/"
        # MQTT 5 requests that named a response topic: their results go there (by request id).
        self._replies: dict[str, Reply] = {}
        self._desired_trackers: list[DesiredTracker] = []
        self._announcing: set[int] = set()  # trackers whose acceptance is on its way
        self._command_trackers: list[CommandTracker] = []
        self._held_requests: list[tuple[str, bytes, str]] = []
        self._held_bytes = 0

    @property
    def held(self) -> tuple[int, int]:
        """Requests held until the fleet has been read: how many, and their bytes."""
        return len(self._held_requests), self._held_bytes

    # --- requests in --------------------------------------------------------------------------
    def note_reply(self, topic: str, payload: bytes, reply: Reply) -> None:
        """Remember where an API request wants its results: only our own reply topics
        (`api/reply/...`), so no requester can make the controller publish elsewhere."""
        request_id = probe_id(payload)
        if not request_id or not topic.startswith(self.root):
            return
        if not self._topics.is_api_reply(reply.topic):
            log.warning("API request %s: ignored response topic %r", request_id, reply.topic[:128])
            return
        if len(self._replies) < MAX_REPLIES:
            self._replies[request_id] = reply

    async def refuse_unknown_topic(self, topic: str, payload: bytes) -> None:
        """Under api/ but no op we know (nor one that could be): answer, don't ignore."""
        op = topic.removeprefix(self.root)
        if op != topic and "/" not in op and self._synced():
            await self.error(
                probe_id(payload), op[:32], "unknown_op", f"unknown API op {op[:32]!r}"
            )

    async def receive(self, op_name: str, payload: bytes, requester: str = "") -> None:
        """A request on api/{op_name} (or api/by/{requester}/{op_name}): run now, or held
        until the fleet has been read."""
        if self._synced():
            with requested_by(requester):
                await self._on_api(op_name, payload)
        elif self._held_bytes + len(payload) > HELD_REQUESTS_BYTES:
            await self.error(
                probe_id(payload),
                op_name,
                "busy",
                "the controller is re-reading the fleet and holds enough requests; retry",
            )
        else:
            self._held_requests.append((op_name, payload, requester))
            self._held_bytes += len(payload)

    async def run_held(self) -> None:
        """The fleet has been read: the requests that waited for it, in order."""
        held, self._held_requests, self._held_bytes = self._held_requests, [], 0
        for op_name, request, requester in held:
            with requested_by(requester):
                await self._on_api(op_name, request)

    async def _on_api(self, op_name: str, payload: bytes) -> None:
        try:
            op = ApiOp(op_name)
        except ValueError:
            await self.error(
                probe_id(payload), op_name, "unknown_op", f"unknown API op {op_name!r}"
            )
            return
        try:
            request = api_request_from_payload(op, payload)
        except ProtocolError as exc:
            await self.error(probe_id(payload), op.value, "bad_request", exc.reason)
            return
        await self.submit(op, request)

    async def submit(self, op: ApiOp, request: ApiRequest) -> None:
        """Run an API request as if it came on api/{op}; its results go to api/result."""
        try:
            await self._run(op, request)
        except FleetError as exc:
            await self.error(request.id, op.value, "failed", str(exc))

    async def _run(self, op: ApiOp, request: ApiRequest) -> None:
        if request.id is None:
            request = request.model_copy(update={"id": uuid.uuid4().hex[:12]})
        elif self._store.operation_exists(request.id):
            # A reused id would merge two actions into one audit row and leave the first
            # without a final result: refused, and the first one's row left as it is.
            await self.error(
                request.id,
                op.value,
                "duplicate_id",
                f"id {request.id!r} names an earlier request; every request needs its own",
                record=False,
            )
            return
        self._store.save_operation(request.id or "", op.value, encode(request).decode(), rev=None)
        try:
            await self._dispatch(op, request)
        except RequestRefused as exc:
            await self.error(request.id, op.value, exc.code, exc.detail)

    async def _dispatch(self, op: ApiOp, request: ApiRequest) -> None:
        for part in self._parts:
            handler = part.api_ops().get(op)
            if handler is not None:
                result = await handler(request)
                await self.publish_result(result.model_copy(update={"id": request.id}))
                return
        if op in DESIRED_OPS:
            tracker = await self._desired.start(op, request)
            # Followed at once: reports are served while the acceptance goes out, and a
            # device that converges meanwhile must count. Its final result waits for the
            # acceptance, which comes first.
            self._desired_trackers.append(tracker)
            self._announcing.add(id(tracker))
            try:
                self._store.save_operation(
                    request.id or "", op.value, encode(request).decode(), tracker.rev
                )
                await self.publish_result(tracker.result(self._registry, final=False))
            finally:
                self._announcing.discard(id(tracker))
            await self.finish_done()
        elif op is ApiOp.CMD:
            ctracker = await self._commands.start(request)
            await self.publish_result(ctracker.result(final=False))
            self._command_trackers.append(ctracker)
        elif op is ApiOp.DEVICES:
            await self.publish_result(inventory(self._registry, request))
        else:
            await self.error(request.id, op.value, "unknown_op", f"no part serves {op.value!r}")

    # --- operations in progress ---------------------------------------------------------------
    @property
    def converging(self) -> bool:
        return bool(self._desired_trackers)

    def observe(self, device_id: str) -> None:
        """A device's report may move the desired-state operations that target it."""
        for tracker in self._desired_trackers:
            if device_id in tracker.target_set:
                tracker.observe(device_id, self._registry)

    async def finish_done(self) -> None:
        """Publish the final result of every tracker that converged or timed out.

        Finished trackers are detached before the first await, so the tick loop
        and a message handler can never both publish the same final result.
        """
        mono = time.monotonic()
        finals: list[ApiResult] = []
        open_desired: list[DesiredTracker] = []
        for tracker in self._desired_trackers:
            if id(tracker) in self._announcing:
                open_desired.append(tracker)
            elif tracker.done or mono >= tracker.deadline:
                finals.append(tracker.result(self._registry, final=True))
            else:
                open_desired.append(tracker)
        self._desired_trackers = open_desired
        open_commands: list[CommandTracker] = []
        for ctracker in self._command_trackers:
            if ctracker.done:
                finals.append(ctracker.result(final=True))
            else:
                open_commands.append(ctracker)
        self._command_trackers = open_commands
        for result in finals:
            await self.publish_result(result)

    # --- results out --------------------------------------------------------------------------
    async def publish_result(self, result: ApiResult, record: bool = True) -> None:
        if record and result.done and result.id:
            self._store.save_operation(
                result.id, result.op, "", result.rev, encode(result).decode()
            )
        client = self._link.answering
        if client is not None:
            reply = self._replies.get(result.id or "")
            if reply is None:
                await client.publish(self._topics.api_result, encode(result), qos=1)
                return
            if result.done:
                del self._replies[result.id or ""]
            await publish(client, reply.topic, encode(result), correlation=reply.correlation)

    def busy(self, request_id: str | None, op: str, reply: Reply | None, detail: str) -> None:
        """A request refused at the door, its requester past its bound: one `busy` result,
        not recorded and no event (a flood would turn into as many), not awaited."""
        client = self._link.answering
        if client is None:
            return
        result = ApiResult(id=request_id, op=op, ok=False, code="busy", detail=detail[:256])
        topic, correlation = self._topics.api_result, None
        if reply is not None and self._topics.is_api_reply(reply.topic):
            topic, correlation = reply.topic, reply.correlation
        try:
            publish_nowait(client, topic, encode(result), qos=1, correlation=correlation)
        except aiomqtt.MqttError as exc:
            log.debug("busy answer not sent: %s", exc)

    async def error(
        self, request_id: str | None, op: str, code: str, detail: str, record: bool = True
    ) -> None:
        log.warning("API %s refused: %s", op, detail)
        self._stats["rejected"] += 1
        await self._events.emit(
            FleetEvent(
                ts=time.time(),
                kind=EventKind.ERROR,
                op=op[:256],
                ok=False,
                code=code,
                detail=detail[:256],
            )
        )
        await self.publish_result(
            ApiResult(id=request_id, op=op[:256], ok=False, code=code, detail=detail[:256]),
            record=record,
        )
