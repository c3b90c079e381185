"""Mixers as a pool: each one's connection kept up in the background, the least-loaded
healthy one chosen for a new mixed session, a dead one noticed within seconds
(a closed socket at once, a silent one by its keepalive) and reported to the owner,
who moves that mixer's sessions elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.mixer.address import MixerAddress
from fleet.mixer.audiobridge import AudioBridge
from fleet.mixer.errors import INSTALL_HINT, MixerError, MixerFailed, MixerUnavailable
from fleet.mixer.janus import JanusConnection

log = logging.getLogger(__name__)

RECONNECT_S = 1.0

# (mixer name, room, member, event) from any mixer's AudioBridge
EventSink = Callable[[str, str, str, dict[str, Any]], None]


@dataclass(eq=False)
class Mixer:
    name: str
    url: str  # without its secret: what logs, events and errors show
    api_secret: str | None = field(default=None, repr=False)
    bridge: AudioBridge | None = None  # while connected
    error: MixerError | None = None  # why it is not healthy (None: never tried yet)
    up: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def healthy(self) -> bool:
        return self.bridge is not None and self.bridge.janus.lost is None


def mixer_name(index: int) -> str:
    return f"janus-{index + 1}"


class MixerPool:
    """`async with MixerPool(urls, on_lost=..., on_up=...)`. Mixers are named janus-1,
    janus-2, ... in the order given (the name is the mixer's `pid` in `joined`). A URL
    carries its mixer's API secret (`ws://:SECRET@HOST:PORT`), or gets `api_secret`."""

    def __init__(
        self,
        urls: Sequence[str],
        on_lost: Callable[[Mixer], None] | None = None,
        on_up: Callable[[Mixer], None] | None = None,
        on_event: EventSink | None = None,
        request_timeout: float | None = None,
        api_secret: str | None = None,
    ) -> None:
        addresses = [MixerAddress.parse(url, api_secret) for url in urls]
        self.mixers = [
            Mixer(mixer_name(n), a.display, a.api_secret) for n, a in enumerate(addresses)
        ]
        self._on_lost = on_lost
        self._on_up = on_up
        self._on_event = on_event
        self._request_timeout = request_timeout
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> MixerPool:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._keep(m), name=f"mixer-{m.name}") for m in self.mixers
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until every mixer has been tried once (up, or failed)."""
        async with asyncio.timeout(timeout):
            while any(m.bridge is None and m.error is None for m in self.mixers):  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    def get(self, name: str) -> Mixer | None:
        return next((m for m in self.mixers if m.name == name), None)

    def pick(self, load: Callable[[Mixer], int], exclude: str | None = None) -> Mixer:
        """The healthy mixer of least `load` (first given on a tie); MixerUnavailable (or
        MixerFailed, when the only mixers answer garbage or nothing) when there is none."""
        healthy = [m for m in self.mixers if m.healthy and m.name != exclude]
        if healthy:
            return min(healthy, key=load)
        if not self.mixers:
            raise MixerUnavailable("none", f"no mixer configured: {INSTALL_HINT}")
        errors = [m.error for m in self.mixers if m.name != exclude and m.error is not None]
        failed = next((e for e in errors if isinstance(e, MixerFailed)), None)
        if failed is not None:
            raise MixerFailed(failed.mixer, failed.reason)
        names = ", ".join(f"{m.name} ({m.url})" for m in self.mixers)
        why = "; ".join(e.reason for e in errors)[:120] or "not connected yet"
        raise MixerUnavailable(names, f"not reachable: {why}")

    async def _keep(self, mixer: Mixer) -> None:
        """Connect, hold the connection until it is lost, report, reconnect."""
        while True:
            janus = JanusConnection(mixer.url, mixer.name, api_secret=mixer.api_secret)
            if self._request_timeout is not None:
                janus.request_timeout = self._request_timeout
            try:
                await janus.open()
                bridge = AudioBridge(janus, self._events_of(mixer), admin_key=mixer.api_secret)
                await bridge.rooms()  # the plugin is there and answers sensibly
            except MixerError as exc:
                await janus.close()
                if mixer.error is None or str(mixer.error) != str(exc):
                    log.warning("%s", exc)
                mixer.error = exc
                mixer.up.set()  # tried: wait_ready returns
                await asyncio.sleep(RECONNECT_S)
                continue
            mixer.bridge, mixer.error = bridge, None
            mixer.up.set()
            log.info("mixer %s up at %s", mixer.name, mixer.url)
            if self._on_up is not None:
                self._on_up(mixer)
            try:
                await janus.closed.wait()
            finally:
                mixer.bridge = None
                mixer.error = MixerUnavailable(mixer.name, janus.lost or "connection closed")
                await janus.close()
            if self._on_lost is not None:
                self._on_lost(mixer)
            await asyncio.sleep(RECONNECT_S)

    def _events_of(self, mixer: Mixer) -> Callable[[str, str, dict[str, Any]], None] | None:
        sink = self._on_event
        if sink is None:
            return None
        return lambda room, member, event: sink(mixer.name, room, member, event)
