"""The read loop: every message of a connection to its handler, a failing handler logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiomqtt

log = logging.getLogger(__name__)


class RestartLink(Exception):
    """Raised by a handler to disconnect cleanly and reconnect after `delay_s` (a reboot)."""

    def __init__(self, delay_s: float = 0.5) -> None:
        super().__init__(f"restart in {delay_s}s")
        self.delay_s = delay_s


OnMessage = Callable[[aiomqtt.Message], Awaitable[None] | None]


async def read_messages(client: aiomqtt.Client, on_message: OnMessage) -> None:
    """Feed every message to the handler until the connection drops (MqttError).

    aiomqtt's iterator makes a task and an asyncio.wait per message; under load most
    messages are already queued, so those are taken straight off its queue.
    """
    messages = client.messages
    queue: asyncio.Queue[aiomqtt.Message] = client._queue
    while True:
        while not queue.empty():
            await dispatch(on_message, queue.get_nowait())
        await dispatch(on_message, await anext(messages))


async def dispatch(handler: OnMessage, message: aiomqtt.Message) -> None:
    try:
        result = handler(message)
        if result is not None:
            await result
    except (asyncio.CancelledError, RestartLink):
        raise
    except Exception:
        log.exception("handler failed on %s; message dropped", message.topic)


def payload_bytes(message: aiomqtt.Message) -> bytes:
    payload: object = message.payload  # aiomqtt declares bytes; guard the rest
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()
