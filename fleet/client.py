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
import uuid
from collections.abc import Callable
from types import TracebackType

import aiomqtt

from fleet.errors import BrokerUnavailable, ControllerUnavailable, ProtocolError
from fleet.mqtt import BrokerUrl, make_client, payload_bytes
from fleet.protocol import TopicKind, Topics, decode, decode_for, encode
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult
from fleet.registry import Registry

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT_S = 5.0  # how long the controller may take to acknowledge a request
RESULT_GRACE_S = 5.0  # beyond the request's own timeout, for the final result to arrive
SYNC_TIMEOUT_S = 10.0

Progress = Callable[[ApiResult | None, Registry], None]


class FleetClient:
    """`async with FleetClient(url) as fleet:` then `await fleet.request(...)`."""

    def __init__(
        self, url: BrokerUrl, topics: Topics | None = None, client_id: str | None = None
    ) -> None:
        self.url = url
        self.topics = topics or Topics()
        self.client_id = client_id or f"fleet-cli-{uuid.uuid4().hex[:10]}"
        self.registry = Registry()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._results: dict[str, asyncio.Queue[ApiResult]] = {}
        self._synced: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FleetClient:
        client = make_client(self.url, client_id=self.client_id)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(self.url.redacted(), str(exc)) from exc
        self._client = client
        self._reader = asyncio.create_task(self._read(client), name="fleet-client-reader")
        t = self.topics
        await client.subscribe(
            [
                (t.api_result, 1),
                (t.all_devices(TopicKind.STATUS), 1),
                (t.all_devices(TopicKind.STATE), 1),
                (self._sync_topic, 1),
            ]
        )
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
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(exc_type, exc, tb)
        self._client = None

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
        await self._client.publish(self._sync_topic, token.encode(), qos=1)
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
        if topic == self._sync_topic:
            event = self._synced.get(payload.decode(errors="replace"))
            if event is not None:
                event.set()
            return
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        try:
            if parsed.kind in (TopicKind.STATUS, TopicKind.STATE):
                message = decode_for(parsed.kind, payload) if payload else None
                self.registry.update(parsed.kind, parsed.name, message)
                self._changed.set()
            elif parsed.kind is TopicKind.API_RESULT:
                result = decode(ApiResult, payload)
                queue = self._results.get(result.id or "")
                if queue is not None:
                    queue.put_nowait(result)
        except ProtocolError as exc:
            log.debug("ignored %s: %s", topic, exc)

    async def request(
        self,
        op: ApiOp,
        request: ApiRequest,
        progress: Progress | None = None,
    ) -> ApiResult:
        """Send one API request; return the controller's final result.

        `progress` is called with the acceptance and then on every registry change.
        Raises ControllerUnavailable when no controller acknowledges in time.
        """
        assert self._client is not None
        request_id = request.id or uuid.uuid4().hex[:12]
        request = request.model_copy(update={"id": request_id})
        queue: asyncio.Queue[ApiResult] = asyncio.Queue()
        self._results[request_id] = queue
        try:
            await self._client.publish(self.topics.api(op.value), encode(request), qos=1)
            try:
                async with asyncio.timeout(ACCEPT_TIMEOUT_S):
                    first = await queue.get()
            except TimeoutError as exc:
                raise ControllerUnavailable(op.value, ACCEPT_TIMEOUT_S) from exc
            if first.done:
                return first  # refused, or converged at once
            if progress is not None:
                progress(first, self.registry)
            return await self._follow(queue, first, request.timeout_s + RESULT_GRACE_S, progress)
        finally:
            self._results.pop(request_id, None)

    async def _follow(
        self,
        queue: asyncio.Queue[ApiResult],
        accepted: ApiResult,
        wait_s: float,
        progress: Progress | None,
    ) -> ApiResult:
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    self._changed.clear()
                    getter = asyncio.ensure_future(queue.get())
                    changed = asyncio.ensure_future(self._changed.wait())
                    done, _ = await asyncio.wait(
                        {getter, changed}, return_when=asyncio.FIRST_COMPLETED
                    )
                    changed.cancel()
                    if getter in done:
                        result = getter.result()
                        if result.done:
                            return result
                    else:
                        getter.cancel()
                    if progress is not None:
                        progress(accepted, self.registry)
        except TimeoutError as exc:
            raise ControllerUnavailable(accepted.op, wait_s) from exc
