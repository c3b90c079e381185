"""Real Janus mixers for tests: a network namespace of the module's own (WebRTC needs an
address that is not loopback), this process's event loop thread inside it, and Janus
processes started there on free ports and stopped after.

    from mixers import janus as janus  # the fixtures (module-scoped)
    from mixers import mixed_net as mixed_net

Then `janus.url` is the WebSocket URL to give `MeetingServer(mixers=[...])`, and every
broker, controller and simulated device the test starts lives in the namespace too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from netns import Netns, netns

from fleet.mixer.process import JanusConfig, JanusProcess, spawn_janus, wait_listening_sync

_rtp_ranges = itertools.count()


@pytest.fixture(scope="module")
def mixed_net() -> Iterator[Netns]:
    """The module's namespace, with the test thread inside it for the module's duration."""
    with netns("mix") as space, space.inside():
        yield space


def start_janus_in(space: Netns, folder: Path, name: str = "janus-1") -> JanusProcess:
    """A Janus in `space` (the caller's thread must be inside it), on free ports."""
    # Each process its own RTP range, so two mixers never race for a port.
    n = next(_rtp_ranges) % 8
    low = 20000 + n * 4000
    config = JanusConfig(
        folder, media_ip=space.address, rtp_ports=(low, low + 1999), name=name, debug_level=3
    )
    running = spawn_janus(config)
    wait_listening_sync(running)
    return running


@contextlib.contextmanager
def janus_process(space: Netns, folder: Path, name: str = "janus-1") -> Iterator[JanusProcess]:
    running = start_janus_in(space, folder, name)
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
