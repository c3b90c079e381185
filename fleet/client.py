"""An operator's connection to the fleet: the registry and the automation API.

The `fleet` CLI is a thin shell over this class. It learns the fleet from
retained status/state topics (no controller needed for that), sends API
requests to the controller, and follows the devices' reported revs for
progress while it waits for the controller's final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType

import aiomqtt

from fleet.errors import (
    BrokerUnavailable,
    ControllerUnavailable,
    ProtocolError,
    SubscribeRefused,
)
from fleet.mqtt import (
    BrokerUrl,
    MqttClient,
    MqttVersion,
    Reply,
    open_client,
    own_client_id,
    payload_bytes,
    publish,
    subscribe,
)
from fleet.protocol import TopicKind, Topics, decode, decode_for, encode, is_valid_id
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, OperatorKey, State, Sync
from fleet.registry import Registry

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT_S = 5.0  # how long the controller may take to acknowledge a request
# The acceptance queues behind whatever reached us first: at 10,000 devices, the fan-out's
# state reports. While we are still reading those, the controller is not silent: keep
# waiting (up to the request's own timeout) as long as messages were read this recently.
BACKLOG_S = 0.5
RESULT_GRACE_S = 5.0  # beyond the request's own timeout, for the final result to arrive
SYNC_TIMEOUT_S = 10.0

PROGRESS_INTERVAL_S = 0.05
Progress = Callable[[int, int], None]  # (converged, online targets)


class FleetClient:
    """`async with FleetClient(url) as fleet:` then `await fleet.request(...)`."""

    def __init__(
        self, url: BrokerUrl, topics: Topics | None = None, client_id: str | None = None
    ) -> None:
        self.url = url
        self.topics = topics or Topics()
        # A client id the broker lets this user have (protocol.md §11).
        self.client_id = client_id or own_client_id(url.username, f"cli-{uuid.uuid4().hex[:10]}")
        self.registry = Registry()
        self._client: MqttClient | None = None
        self._connection: contextlib.AbstractAsyncContextManager[MqttClient] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._results: dict[str, asyncio.Queue[ApiResult]] = {}
        self._synced: dict[str, asyncio.Event] = {}
        self._watch: Convergence | None = None
        self._last_read = 0.0
        # The controller's operator key, when this user may read it (controller role):
        # our join and join-all intents carry it, so they may create their room.
        self.operator_key: str | None = None

    async def __aenter__(self) -> FleetClient:
        connection = open_client(self.url, client_id=self.client_id, version=MqttVersion.AUTO)
        try:
            client = await connection.__aenter__()
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(self.url.redacted(), str(exc)) from exc
        self._connection, self._client = connection, client
        self._reader = asyncio.create_task(self._read(client), name="fleet-client-reader")
        t = self.topics
        # MQTT 5: results come to our own reply topic (response topic + correlation data),
        # not everyone's on api/result.
        results = self._reply_topic if client.mqtt5 else t.api_result
        # Status and state only feed the registry and progress display (the verdict is the
        # controller's QoS 1 result), so QoS 0 spares the broker an ack flow per device.
        await subscribe(
            client,
            [
                (results, 1),
                (t.all_devices(TopicKind.STATUS), 0),
                (t.all_devices(TopicKind.STATE), 0),
                (self._sync_topic, 1),
            ],
        )
        # Only controller-role users may read it: refused (3.1.1) or silent for the others.
        with contextlib.suppress(SubscribeRefused):
            await subscribe(client, [(t.operator_key, 1)])
        await self.sync()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._connection is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._connection.__aexit__(exc_type, exc, tb)
        self._client = self._connection = None

    @property
    def _reply_topic(self) -> str:
        return self.topics.api_reply(self.client_id)

    @property
    def connected(self) -> bool:
        """False once the broker connection is lost (this client does not reconnect)."""
        return self._client is not None and self._reader is not None and not self._reader.done()

    @property
    def mqtt5(self) -> bool:
        """Whether its connection speaks MQTT 5 (results then come on its reply topic)."""
        return self._client is not None and self._client.mqtt5

    @property
    def _sync_topic(self) -> str:
        return self.topics.sync(self.client_id)

    async def sync(self) -> None:
        """Wait until the retained messages of our subscriptions have arrived.

        A broker sends a subscription's retained messages before it handles the
        next packet of the same connection, so a message published to our own
        private loopback topic arrives after them.
        """
        assert self._client is not None
        token = uuid.uuid4().hex
        event = self._synced[token] = asyncio.Event()
        await self._client.publish(self._sync_topic, encode(Sync(token=token)), qos=1)
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                await event.wait()
        except TimeoutError as exc:
            raise BrokerUnavailable(self.url.redacted(), "no loopback message came back") from exc
        finally:
            self._synced.pop(token, None)

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self._on_message(message.topic.value, payload_bytes(message))
        except aiomqtt.MqttError as exc:
            log.warning("connection to the broker lost: %s", exc)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._last_read = time.monotonic()
        if topic == self._reply_topic:
            self._on_result(topic, payload)
            return
        if topic == self.topics.operator_key:
            with contextlib.suppress(ProtocolError):
                self.operator_key = decode(OperatorKey, payload).key if payload else None
            return
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        try:
            if parsed.kind is TopicKind.SYNC:
                event = self._synced.get(decode(Sync, payload).token)
                if event is not None:
                    event.set()
            elif parsed.kind in (TopicKind.STATUS, TopicKind.STATE):
                message = decode_for(parsed.kind, payload) if payload else None
                self.registry.update(parsed.kind, parsed.name, message)
                if self._watch is not None and parsed.kind is TopicKind.STATE:
                    self._watch.observe(parsed.name, message)
            elif parsed.kind is TopicKind.API_RESULT:
                self._on_result(topic, payload)
        except ProtocolError as exc:
            log.debug("ignored %s: %s", topic, exc)

    def _on_result(self, topic: str, payload: bytes) -> None:
        try:
            result = decode(ApiResult, payload)
        except ProtocolError as exc:
            log.warning("ignored %s: %s", topic, exc)
            return
        queue = self._results.get(result.id or "")
        if queue is not None:
            queue.put_nowait(result)

    async def request(
        self,
        op: ApiOp,
        request: ApiRequest,
        progress: Progress | None = None,
    ) -> ApiResult:
        """Send one API request; return the controller's final result.

        For desired-state ops, `progress(converged, online_targets)` is called every
        PROGRESS_INTERVAL_S while the devices report the new rev (counted as their
        state messages arrive, O(1) each). Raises ControllerUnavailable when no
        controller acknowledges in time.
        """
        assert self._client is not None
        request_id = request.id or uuid.uuid4().hex[:12]
        request = request.model_copy(update={"id": request_id})
        if op in (ApiOp.JOIN, ApiOp.JOIN_ALL) and request.operator_key is None:
            if self.operator_key is None:
                await self.sync()  # a controller that started since may have published it
            request = request.model_copy(update={"operator_key": self.operator_key})
        queue: asyncio.Queue[ApiResult] = asyncio.Queue()
        self._results[request_id] = queue
        try:
            # PublishRefused (MQTT 5) when the broker's ACL does not let this user send it.
            await publish(
                self._client,
                self._request_topic(op),
                encode(request),
                reply=Reply(self._reply_topic, request_id.encode()),
            )
            first = await self._accepted(queue, op, request.timeout_s)
            if first.done:
                return first  # refused, or converged at once
            if first.rev is not None and op is not ApiOp.CMD:
                targets = (
                    [request.device]
                    if request.device
                    else [r.id for r in self.registry.targets(request.group)]
                )
                self._watch = Convergence(first.rev, targets, self.registry)
            wait_s = request.timeout_s + RESULT_GRACE_S
            return await self._follow(queue, op, wait_s, progress)
        finally:
            self._results.pop(request_id, None)
            self._watch = None

    def _request_topic(self, op: ApiOp) -> str:
        """`api/by/{user}/{op}`: the controller counts the request against this user (its
        own bound, protocol.md §9); `api/{op}`, shared by everyone, without a username."""
        user = self.url.username
        if user and is_valid_id(user):
            return self.topics.api_by(user, op.value)
        return self.topics.api(op.value)

    async def _accepted(
        self, queue: asyncio.Queue[ApiResult], op: ApiOp, limit_s: float
    ) -> ApiResult:
        """The controller's first answer; ControllerUnavailable if it stays silent."""
        started = time.monotonic()
        wait_s = ACCEPT_TIMEOUT_S
        while True:
            try:
                async with asyncio.timeout(wait_s):
                    return await queue.get()
            except TimeoutError:
                now = time.monotonic()
                if now - self._last_read > BACKLOG_S or now - started > limit_s:
                    raise ControllerUnavailable(op.value, ACCEPT_TIMEOUT_S) from None
                wait_s = BACKLOG_S  # still reading a backlog: the answer may be in it

    async def _follow(
        self,
        queue: asyncio.Queue[ApiResult],
        op: ApiOp,
        wait_s: float,
        progress: Progress | None,
    ) -> ApiResult:
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ControllerUnavailable(op.value, wait_s)
            try:
                async with asyncio.timeout(min(PROGRESS_INTERVAL_S, remaining)):
                    result = await queue.get()
                if result.done:
                    return result
            except TimeoutError:
                pass
            if progress is not None and self._watch is not None:
                progress(len(self._watch.converged), self._watch.online)


class Convergence:
    """Which targets have reported a rev, counted as state messages arrive."""

    def __init__(self, rev: int, targets: list[str], registry: Registry) -> None:
        self.rev = rev
        self.targets = frozenset(targets)
        self.online = sum(
            1 for t in targets if t in registry.devices and registry.devices[t].online
        )
        self.converged = {
            t for t in targets if t in registry.devices and (registry.devices[t].rev or -1) >= rev
        }

    def observe(self, device_id: str, state: State | None) -> None:
        if state is not None and state.rev >= self.rev and device_id in self.targets:
            self.converged.add(device_id)
