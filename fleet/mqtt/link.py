"""One MQTT connection kept up: reconnects with backoff, `on_connect` after each, the read
loop in between, `on_close` before a deliberate disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

from fleet.errors import BrokerUnavailable
from fleet.mqtt.client import LastWill, MqttClient, open_client
from fleet.mqtt.reader import OnMessage, RestartLink, read_messages
from fleet.mqtt.url import BrokerUrl, MqttVersion

log = logging.getLogger(__name__)

# Reconnect backoff: fast first retry (broker restarts are short), capped so a
# fleet does not hammer a broker that is down, jittered so it does not stampede.
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 10.0

OnConnect = Callable[[MqttClient], Awaitable[None]]


async def run_link(
    url: BrokerUrl,
    *,
    client_id: str,
    on_connect: OnConnect,
    on_message: OnMessage,
    on_disconnect: Callable[[], None] | None = None,
    on_close: OnConnect | None = None,
    will: LastWill | None = None,
    connected: asyncio.Event | None = None,
    retry: bool = True,
    max_queued_incoming: int | None = None,
    version: MqttVersion = MqttVersion.V311,
) -> None:
    """Keep one MQTT connection up until cancelled.

    With `retry=False` the first failure raises BrokerUnavailable, which is what a
    one-shot CLI command wants; long-running parts retry with jittered backoff.
    `on_close` runs before a deliberate disconnect (cancellation or RestartLink),
    while the connection is still up: the place for a graceful "offline".
    """
    delay = RECONNECT_FIRST_S
    while True:
        try:
            async with open_client(
                url,
                client_id=client_id,
                will=will,
                max_queued_incoming=max_queued_incoming,
                version=version,
            ) as client:
                delay = RECONNECT_FIRST_S
                try:
                    await on_connect(client)
                    if connected is not None:
                        connected.set()
                    await read_messages(client, on_message)
                except (asyncio.CancelledError, RestartLink):
                    if on_close is not None:
                        await close_quietly(on_close, client)
                    raise
        except RestartLink as restart:
            if connected is not None:
                connected.clear()
            if on_disconnect is not None:
                on_disconnect()
            await asyncio.sleep(restart.delay_s)
            continue
        except aiomqtt.MqttError as exc:
            if connected is not None:
                connected.clear()
            if on_disconnect is not None:
                on_disconnect()
            if not retry:
                raise BrokerUnavailable(url.redacted(), str(exc)) from exc
            log.info("%s: connection to %s lost (%s); retrying", client_id, url.redacted(), exc)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, RECONNECT_MAX_S)


async def close_quietly(on_close: OnConnect, client: MqttClient) -> None:
    try:
        async with asyncio.timeout(2):
            await on_close(client)
    except Exception as exc:  # best effort: we are going away anyway
        log.debug("on_close failed: %s", exc)


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
