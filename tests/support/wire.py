"""A raw controller-role client on the wire, and what a fresh subscriber is given."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiomqtt

from fleet.mqtt import BrokerUrl, payload_bytes
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import operator_url


@contextlib.asynccontextmanager
async def wire(handle: BrokerHandle, url: BrokerUrl | None = None) -> AsyncIterator[aiomqtt.Client]:
    """A raw client with controller-role rights: the operator's, or `url`'s user's."""
    url = url or operator_url(handle)
    client_id = f"{url.username}-wire-{time.time_ns()}"
    async with mqtt_client(handle, url.username, url.password, client_id=client_id) as c:
        yield c


async def retained_messages(
    handle: BrokerHandle, topic: str, url: BrokerUrl | None = None
) -> list[aiomqtt.Message]:
    """What a new subscriber to `topic` is given before a marker published after it
    subscribed: the retained message, if there is one (the marker proves the wait)."""
    marker = b"marker-%d" % time.time_ns()
    got: list[aiomqtt.Message] = []
    async with wire(handle, url) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, marker, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if payload_bytes(message) == marker:
                    return got
                got.append(message)
    return got


async def retained(handle: BrokerHandle, topic: str) -> list[bytes]:
    """The payloads of `retained_messages`."""
    return [payload_bytes(m) for m in await retained_messages(handle, topic)]
