"""`fleet web`: the web console for a running fleet (docs/protocol.md §11.2)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from cli.common import BrokerOpt, Exit, PrefixOpt, connection, console, fail, run_service
from fleet.protocol.constants import DEFAULT_WEB_TTL_S, MAX_WEB_TTL_S


def web(
    ws_url: Annotated[
        str | None,
        typer.Option(
            help="The broker's MQTT-over-WebSocket URL as browsers reach it, e.g. "
            "ws://fleet.example:8083/ (Mosquitto: a `listener 8083` with `protocol websockets`).",
            show_default="ws://<this console's host>:--ws-port/",
        ),
    ] = None,
    ws_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The broker's WebSocket port, on the console's host."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address the console binds.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The console's port.")] = 8080,
    operator: Annotated[
        str, typer.Option(help="The controller-role user people sign in as.")
    ] = "operator",
    ttl: Annotated[
        float,
        typer.Option(min=1, max=MAX_WEB_TTL_S, help="Seconds a browser's credentials last."),
    ] = DEFAULT_WEB_TTL_S,
    broker: BrokerOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Serve the web console: the fleet live, its meetings, talking from the browser.

    People sign in with the operator's secret; each browser gets credentials of its own
    that the controller mints and the broker ends after --ttl seconds."""
    import asyncio

    from fleet.web.server import ConsoleConfig, WebConsole  # aiohttp

    if ws_url is None and ws_port is None:
        fail("give --ws-url or --ws-port: where browsers reach the broker's WebSocket", Exit.USAGE)
    if ws_url is not None and not ws_url.startswith(("ws://", "wss://")):
        fail(f"--ws-url {ws_url!r}: expected ws://HOST:PORT/ or wss://...", Exit.USAGE)
    url, topics = connection(broker, prefix)
    config = ConsoleConfig(
        broker=dataclasses.replace(url, username=None, password=None),
        topics=topics,
        ws_url=ws_url,
        ws_port=ws_port,
        operator=operator,
        ttl_s=ttl,
    )

    async def go() -> None:
        async with WebConsole(config, host, port) as site:
            console.print(f"web console on {site.url}; Ctrl-C stops it", highlight=False)
            await asyncio.Event().wait()

    run_service(go())
