"""The controller's one MQTT connection as its modules share it."""

from __future__ import annotations

import asyncio

from fleet.mqtt import MqttClient, publish_nowait

# QoS 1 messages the client may hold unacknowledged (sent, or queued behind its inflight
# window) before a publisher that does not wait for its PUBACK waits for room. A part's
# bulk (Home Assistant's state docs after a fan-out, ten thousand at once) would otherwise
# queue all at once in front of every later publish on the link: an API result or a desired
# doc, which wait for their PUBACK, would wait for all of them.
BACKLOG = 64
BACKLOG_POLL_S = 0.005


class ControllerLink:
    """The client of the current connection, None between connections: every module
    publishes through it, and a publish while disconnected is skipped (desired docs are
    re-asserted on the next connect)."""

    def __init__(self) -> None:
        self.client: MqttClient | None = None
        # The connection requests come in on, while it is up: their answers go out there,
        # never behind what the main connection holds (a part's bulk, the fleet's acks).
        self.answers: MqttClient | None = None

    @property
    def answering(self) -> MqttClient | None:
        """The client API results go out on: the requests' own connection, else the main."""
        return self.answers if self.answers is not None else self.client

    @property
    def mqtt5(self) -> bool:
        return self.client is not None and self.client.mqtt5

    def backlog(self) -> int:
        """QoS 1 messages the client holds until their PUBACK (0 while disconnected)."""
        client = self.client
        return len(client._client._out_messages) if client is not None else 0

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False
    ) -> bool:
        """Queue a publish; False (nothing sent) while disconnected.

        Not awaited to its PUBACK unless `wait`: parts publish from message handlers, and
        paho resends an unacknowledged QoS 1 message by itself. Past `BACKLOG` messages
        held by the client it first waits for room, so a bulk of publishes is paced by the
        broker's acknowledgements and never stands long in front of a later one.
        """
        # Polled: paho signals no event when a PUBACK makes room.
        while qos and self.client is not None and self.backlog() >= BACKLOG:  # noqa: ASYNC110
            await asyncio.sleep(BACKLOG_POLL_S)
        if self.client is None:
            return False
        if wait:
            await self.client.publish(topic, payload, qos=qos, retain=retain)
        else:
            publish_nowait(self.client, topic, payload, qos=qos, retain=retain)
        return True
