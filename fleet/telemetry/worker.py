"""`fleet ingest`: a process that takes its share of the telemetry ingest, and nothing else.

The controller (`fleet controller --ingest-share NAME`) keeps desired state, commands,
the meeting server and Home Assistant, and ingests its share; each `IngestWorker`
started with the same NAME ingests another share (a shared subscription: the broker
hands every `tele` message to one member of the group). A worker reads the devices'
retained status for their group tags, writes telemetry points only (the fleet counts
and events are the controller's), and announces its own losses as fleet events.
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from fleet.controller.store import Store
from fleet.errors import FleetError, ProtocolError
from fleet.mqtt import (
    BrokerUrl,
    MqttClient,
    MqttVersion,
    payload_bytes,
    publish_nowait,
    run_link,
    subscribe,
)
from fleet.protocol import TopicKind, Topics, decode_for, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    Desired,
    FleetEvent,
    MeetingIntent,
    Status,
)
from fleet.registry import Registry
from fleet.telemetry.config import InfluxSettings
from fleet.telemetry.ingest import TelemetryIngest

log = logging.getLogger(__name__)


class IngestWorker:
    """The `PartHost` of one TelemetryIngest: a link of its own, a registry built from the
    devices' retained status, a store in memory (a worker keeps nothing) and no API."""

    def __init__(
        self,
        url: BrokerUrl,
        settings: InfluxSettings,
        share: str,
        topics: Topics | None = None,
        client_id: str = "fleet-ingest",
    ) -> None:
        self.url = url
        self._topics = topics or Topics()
        self.client_id = client_id
        self._registry = Registry()
        self._store = Store(":memory:")
        self.connected = asyncio.Event()
        self._client: MqttClient | None = None
        self.ingest = TelemetryIngest(settings, share=share, fleet_counts=False)
        self.ingest.attach(self)

    # --- the PartHost -------------------------------------------------------------------------
    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def store(self) -> Store:
        return self._store

    @property
    def synced(self) -> bool:
        return False  # a worker sends no sync marker: it never claims to hold the whole fleet

    @property
    def converging(self) -> bool:
        return False

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False
    ) -> bool:
        if self._client is None:
            return False
        if wait:
            await self._client.publish(topic, payload, qos=qos, retain=retain)
        else:
            publish_nowait(self._client, topic, payload, qos=qos, retain=retain)
        return True

    async def publish_result(self, result: ApiResult) -> None:
        log.warning("an ingest worker serves no API: a %s result dropped", result.op)

    async def submit(self, op: ApiOp, request: ApiRequest) -> None:
        log.warning("an ingest worker serves no API: %s dropped", op.value)

    async def write_own_intent(
        self, device_id: str, meeting: MeetingIntent | None, op: str
    ) -> Desired:
        raise FleetError("an ingest worker writes no desired state")

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    run_link(
                        self.url,
                        client_id=self.client_id,
                        on_connect=self._on_connect,
                        on_message=self._on_message,
                        on_disconnect=self._on_disconnect,
                        connected=self.connected,
                        version=MqttVersion.AUTO,
                    ),
                    name="ingest-worker-link",
                )
                tg.create_task(self.ingest.run(), name="ingest-worker-drain")
        finally:
            await self.ingest.close()
            self._store.close()

    async def _on_connect(self, client: MqttClient) -> None:
        self._client = client
        # Status for the tag sets (a device's groups), and the share of telemetry.
        filters = [(self._topics.all_devices(TopicKind.STATUS), 0)]
        await subscribe(client, [*filters, *self.ingest.subscriptions().items()])

    def _on_disconnect(self) -> None:
        self._client = None

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parsed = self._topics.parse(topic)
        if parsed is None:
            return
        payload = payload_bytes(message)
        if parsed.kind is TopicKind.TELE:
            try:
                await self.ingest.on_message(topic, payload)
            except ProtocolError as exc:  # counted in the part's stats
                log.warning("telemetry dropped message on %s: %s", topic, exc)
            return
        if parsed.kind is not TopicKind.STATUS:
            return
        try:
            status: Status | None = decode_for(parsed.kind, payload) if payload else None
        except ProtocolError as exc:
            log.debug("ignored %s: %s", topic, exc)
            return
        self._registry.update(parsed.kind, parsed.name, status)
        await self.ingest.on_device_changed(parsed.name, True)

    async def emit(self, event: FleetEvent) -> None:
        """The worker's own events (points lost): as a point and on the events topic."""
        await self.ingest.on_event(event)
        if self._client is not None:
            try:
                publish_nowait(self._client, self._topics.events, encode(event), qos=1)
            except aiomqtt.MqttError as exc:
                log.debug("event not published: %s", exc)
