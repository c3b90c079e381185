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

from fleet.errors import ProtocolError
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
from fleet.protocol.messages import FleetEvent, Status
from fleet.registry import Registry
from fleet.telemetry.config import InfluxSettings
from fleet.telemetry.ingest import TelemetryIngest

log = logging.getLogger(__name__)


class IngestWorker:
    """The host TelemetryIngest needs (`topics`, `registry`, `emit`, `url`, `client_id`)."""

    def __init__(
        self,
        url: BrokerUrl,
        settings: InfluxSettings,
        share: str,
        topics: Topics | None = None,
        client_id: str = "fleet-ingest",
    ) -> None:
        self.url = url
        self.topics = topics or Topics()
        self.client_id = client_id
        self.registry = Registry()
        self.connected = asyncio.Event()
        self._client: MqttClient | None = None
        self.ingest = TelemetryIngest(settings, share=share, fleet_counts=False)
        self.ingest.attach(self)  # type: ignore[arg-type]  # the part's view of a host

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

    async def _on_connect(self, client: MqttClient) -> None:
        self._client = client
        # Status for the tag sets (a device's groups), and the share of telemetry.
        filters = [(self.topics.all_devices(TopicKind.STATUS), 0)]
        await subscribe(client, [*filters, *self.ingest.subscriptions().items()])

    def _on_disconnect(self) -> None:
        self._client = None

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        parsed = self.topics.parse(topic)
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
        self.registry.update(parsed.kind, parsed.name, status)  # type: ignore[arg-type]
        await self.ingest.on_device_changed(parsed.name, True)

    async def emit(self, event: FleetEvent) -> None:
        """The worker's own events (points lost): as a point and on the events topic."""
        await self.ingest.on_event(event)
        if self._client is not None:
            try:
                publish_nowait(self._client, self.topics.events, encode(event), qos=1)
            except aiomqtt.MqttError as exc:
                log.debug("event not published: %s", exc)
