"""The controller's one MQTT connection as its modules share it."""

from __future__ import annotations

from fleet.mqtt import MqttClient, publish_nowait


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

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False
    ) -> bool:
        """Queue a publish; False (nothing sent) while disconnected.

        Not awaited to its PUBACK unless `wait`: parts publish from message handlers, and
        paho resends an unacknowledged QoS 1 message by itself.
        """
        if self.client is None:
            return False
        if wait:
            await self.client.publish(topic, payload, qos=qos, retain=retain)
        else:
            publish_nowait(self.client, topic, payload, qos=qos, retain=retain)
        return True
