"""A small async client of Janus Gateway's API over its WebSocket transport.

One WebSocket carries one Janus session; requests carry a transaction id and get their
answer (`success`, `error`, or `ack` then an event) matched by it. Plugin events that
answer nothing (a participant joined, someone is talking, the PeerConnection is up)
are routed by `sender`, the handle they concern, to that handle's listener. A keepalive
every few seconds holds the session and notices a mixer that stopped answering.

Every message carries the mixer's API secret when it has one (Janus's `api_secret`), and
the connection sends our own Origin (a generated Janus refuses any other).

Why WebSocket (docs/architecture.md): Janus pushes events, so nothing polls; one TCP
connection per mixer carries every request and event; a dead mixer shows as a closed
socket at once; and the `websockets` library is already installed (amqtt uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin, Subprotocol

from fleet.mixer.address import CLIENT_ORIGIN
from fleet.mixer.errors import MixerFailed, MixerUnavailable

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("janus-protocol")
REQUEST_TIMEOUT_S = 5.0  # a request (and an async request's event) must be answered by then
KEEPALIVE_S = 2.0  # also how quickly a mixer that stopped answering is noticed
MAX_MESSAGE_BYTES = 1 << 20
CLOSE_TIMEOUT_S = 1.0

Event = dict[str, Any]
Listener = Callable[[Event], None]


class JanusConnection:
    """One Janus session over one WebSocket. Use as `async with JanusConnection(url) as j`."""

    def __init__(
        self,
        url: str,
        name: str = "janus",
        request_timeout: float = REQUEST_TIMEOUT_S,
        keepalive_s: float = KEEPALIVE_S,
        on_lost: Callable[[str], None] | None = None,
        api_secret: str | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self._api_secret = api_secret
        self.request_timeout = request_timeout
        self.keepalive_s = keepalive_s
        self._on_lost = on_lost
        self._ws: ClientConnection | None = None
        self.session_id: int | None = None
        self._pending: dict[str, asyncio.Future[Event]] = {}
        # transactions whose `ack` is only a receipt: the answer comes as an event
        self._wants_event: set[str] = set()
        self._listeners: dict[int, Listener] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self.lost: str | None = None  # why the connection ended, once it has
        self.closed = asyncio.Event()

    async def __aenter__(self) -> JanusConnection:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the connection ---------------------------------------------------------------------
    async def open(self) -> None:
        try:
            async with asyncio.timeout(self.request_timeout):
                self._ws = await websockets.connect(
                    self.url,
                    subprotocols=[SUBPROTOCOL],
                    origin=Origin(CLIENT_ORIGIN),
                    max_size=MAX_MESSAGE_BYTES,
                    open_timeout=self.request_timeout,
                    # A mixer that stopped answering will not answer the close either.
                    close_timeout=CLOSE_TIMEOUT_S,
                    ping_interval=None,  # Janus's keepalive below does this job
                )
        except TimeoutError:
            raise MixerUnavailable(self.name, f"no answer from {self.url}") from None
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            raise MixerUnavailable(self.name, f"cannot connect to {self.url}: {exc}") from exc
        self._tasks.append(asyncio.create_task(self._read(), name=f"{self.name}-read"))
        try:
            created = await self.request({"janus": "create"})
            self.session_id = int(_data(created, self.name)["id"])
        except MixerFailed as exc:
            await self.close()
            if " 403 " in exc.reason:
                hint = "wrong API secret" if self._api_secret else "it wants an API secret"
                raise MixerFailed(self.name, f"{exc.reason} ({hint}: --mixer-secret)") from exc
            raise
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._keepalive(), name=f"{self.name}-keepalive"))

    async def close(self) -> None:
        if self._ws is not None and self.lost is None and self.session_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send({"janus": "destroy"}), 1.0)
        self._end("closed")
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for task in self._tasks:
            if task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    # --- requests -----------------------------------------------------------------------------
    async def request(
        self, message: dict[str, Any], handle: int | None = None, want_event: bool = False
    ) -> Event:
        """Send and wait for the answer: `success` (or, with want_event, the plugin event
        that follows the `ack`). MixerFailed on a Janus or plugin error, a garbled answer,
        or none within the request timeout; MixerUnavailable when the link is gone."""
        if self.lost is not None:
            raise MixerUnavailable(self.name, self.lost)
        transaction = f"{next(self._ids)}-{secrets.token_hex(4)}"
        body = {**message, "transaction": transaction}
        if self.session_id is not None and message.get("janus") != "create":
            body["session_id"] = self.session_id
        if handle is not None:
            body["handle_id"] = handle
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        if want_event:
            self._wants_event.add(transaction)
        try:
            await self._send(body)
            async with asyncio.timeout(self.request_timeout):
                answer = await future
        except TimeoutError:
            raise MixerFailed(
                self.name,
                f"no answer to {_what(message)} within {self.request_timeout:g}s",
            ) from None
        finally:
            self._pending.pop(transaction, None)
            self._wants_event.discard(transaction)
        if answer.get("janus") == "error":
            error = answer.get("error") or {}
            raise MixerFailed(
                self.name, f"{_what(message)} refused: {error.get('code')} {error.get('reason')}"
            )
        return answer

    async def attach(self, plugin: str, listener: Listener | None = None) -> int:
        answer = await self.request({"janus": "attach", "plugin": plugin})
        handle = int(_data(answer, self.name)["id"])
        if listener is not None:
            self._listeners[handle] = listener
        return handle

    async def detach(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        if self.lost is None:
            await self.request({"janus": "detach"}, handle=handle)

    def listen(self, handle: int, listener: Listener | None) -> None:
        if listener is None:
            self._listeners.pop(handle, None)
        else:
            self._listeners[handle] = listener

    # --- inside -------------------------------------------------------------------------------
    async def _send(self, body: dict[str, Any]) -> None:
        if self._ws is None:
            raise MixerUnavailable(self.name, "not connected")
        if self._api_secret is not None:
            body = {**body, "apisecret": self._api_secret}
        try:
            await self._ws.send(json.dumps(body))
        except websockets.exceptions.WebSocketException as exc:
            self._end(f"connection lost: {exc}")
            raise MixerUnavailable(self.name, self.lost or "connection lost") from exc

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "the mixer closed the connection"
        try:
            async for raw in self._ws:
                self._dispatch(raw)
        except websockets.exceptions.ConnectionClosed as exc:
            reason = f"connection lost: {exc}"
        except Exception as exc:
            reason = f"connection failed: {exc}"
            log.exception("%s: reading failed", self.name)
        self._end(reason)

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("%s sent something that is not JSON: %.80r", self.name, raw)
            return
        if not isinstance(message, dict):
            log.warning("%s sent a JSON %s, not an object", self.name, type(message).__name__)
            return
        kind = message.get("janus")
        transaction = message.get("transaction")
        future = self._pending.get(transaction) if isinstance(transaction, str) else None
        if future is not None and not future.done():
            if kind == "ack" and transaction in self._wants_event:
                return  # a receipt; the event with the same transaction answers
            if kind in ("success", "error", "ack", "event"):
                future.set_result(message)
                return
        sender = message.get("sender")
        listener = self._listeners.get(sender) if isinstance(sender, int) else None
        if listener is not None:
            try:
                listener(message)
            except Exception:  # one listener's bug must not stop the reader
                log.exception("%s: event listener failed on %s", self.name, kind)
        elif kind not in ("ack", "success"):
            log.debug("%s: unrouted %s", self.name, kind)

    async def _keepalive(self) -> None:
        while self.lost is None:
            await asyncio.sleep(self.keepalive_s)
            try:
                await self.request({"janus": "keepalive"})
            except MixerUnavailable:
                return
            except MixerFailed as exc:
                self._end(f"stopped answering: {exc}")
                if self._ws is not None:
                    with contextlib.suppress(Exception):
                        await self._ws.close()
                return

    def _end(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MixerUnavailable(self.name, reason))
        if reason != "closed":
            log.warning("%s: %s", self.name, reason)
            if self._on_lost is not None:
                self._on_lost(reason)


def _data(answer: Event, name: str) -> dict[str, Any]:
    data = answer.get("data")
    if answer.get("janus") != "success" or not isinstance(data, dict) or "id" not in data:
        raise MixerFailed(name, f"unexpected answer: {json.dumps(answer)[:120]}")
    return data


def _what(message: dict[str, Any]) -> str:
    body = message.get("body")
    if isinstance(body, dict) and "request" in body:
        return f"{body['request']!r}"
    return f"{message.get('janus')!r}"
