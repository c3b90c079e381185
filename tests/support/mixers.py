"""Real Janus mixers for tests: a network namespace of the module's own (WebRTC needs an
address that is not loopback), this process's event loop thread inside it, and Janus
processes started there on free ports and stopped after.

    from tests.support.mixers import janus as janus  # the fixtures (module-scoped)
    from tests.support.mixers import mixed_net as mixed_net

(tests/mixed/conftest.py does this for every module of its folder.)

Then `janus.url` is the WebSocket URL to give `MeetingServer(mixers=[...])`, and every
broker, controller and simulated device the test starts lives in the namespace too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from fleet.mixer.process import JanusConfig, JanusProcess, spawn_janus, wait_listening_sync
from tests.support.netns import Netns, netns

_rtp_ranges = itertools.count()


@pytest.fixture(scope="module")
def mixed_net() -> Iterator[Netns]:
    """The module's namespace, with the test thread inside it for the module's duration."""
    with netns("mix") as space, space.inside():
        yield space


def start_janus_in(
    space: Netns,
    folder: Path,
    name: str = "janus-1",
    ws_port: int = 0,
    api_secret: str | None = None,
) -> JanusProcess:
    """A Janus in `space` (the caller's thread must be inside it), on free ports (or on
    `ws_port`, with `api_secret`: a mixer restarted where and as the pool knows it)."""
    # Each process its own RTP range, so two mixers never race for a port.
    n = next(_rtp_ranges) % 8
    low = 20000 + n * 4000
    config = JanusConfig(
        folder, ws_port, media_ip=space.address, rtp_ports=(low, low + 1999), name=name
    )
    if api_secret is not None:
        config.api_secret = api_secret
    running = spawn_janus(config)
    wait_listening_sync(running)
    return running


@contextlib.contextmanager
def janus_process(
    space: Netns,
    folder: Path,
    name: str = "janus-1",
    ws_port: int = 0,
    api_secret: str | None = None,
) -> Iterator[JanusProcess]:
    running = start_janus_in(space, folder, name, ws_port, api_secret)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def janus(mixed_net: Netns, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusProcess]:
    """One Janus for the module, in its namespace."""
    with janus_process(mixed_net, tmp_path_factory.mktemp("janus")) as running:
        yield running


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll an async condition (one that asks the mixer) until it holds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 (the mixer has no event for it)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


@contextlib.asynccontextmanager
async def fake_mixer(behaviour: str) -> AsyncIterator[str]:
    """A WebSocket server that is no Janus, for the error paths; yields its URL.

    - "silent": takes the connection and answers nothing;
    - "garbage": answers the session and handle requests as Janus does, and every plugin
      request with a reply that is no AudioBridge answer;
    - "not-json": answers everything with text that is not JSON;
    - "no-rooms": a healthy-looking AudioBridge (it lists no rooms) that refuses to
      create any.
    """

    async def serve(ws: ServerConnection) -> None:
        async for raw in ws:
            if behaviour == "silent":
                continue
            if behaviour == "not-json":
                await ws.send("<html>502 Bad Gateway</html>")
                continue
            message = json.loads(raw)
            reply: dict[str, object] = {"transaction": message.get("transaction")}
            if message.get("janus") in ("create", "attach"):
                reply.update(janus="success", data={"id": 1234})
            elif message.get("janus") == "message" and behaviour == "no-rooms":
                request = message["body"]["request"]
                data = (
                    {"audiobridge": "success", "list": []}
                    if request == "list"
                    else {"audiobridge": "event", "error_code": 490, "error": "no rooms today"}
                )
                reply.update(janus="success", plugindata={"plugin": "audiobridge", "data": data})
            elif message.get("janus") == "message":
                reply.update(janus="success", plugindata={"plugin": "x", "data": "nonsense"})
            else:
                reply.update(janus="ack")
            await ws.send(json.dumps(reply))

    async with websockets.serve(serve, "127.0.0.1", 0, subprotocols=["janus-protocol"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def tcp_forward(host: str, target: tuple[str, int]) -> AsyncIterator[int]:
    """Listen on `host` (a free port, yielded) and pipe every connection to `target`:
    a broker bound to 127.0.0.1 reached from another namespace."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
