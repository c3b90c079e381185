"""Click on "talk" in the web console -> first audio from the room in the browser.

Headless Debian Chromium (Playwright) signs in to `fleet up`'s stack (embedded broker
with WebSocket, controller, simulated devices with real audio), in a network namespace
of its own; the devices are in a mesh room. Each run clicks "talk" and reads the page's
own figure (performance.now() from the click to the first analyser frame above -40 dBFS
from any peer), then hangs up. Trickle ICE (the offer leaves before gathering ends, the
page's default) and vanilla ICE (one complete SDP, what the protocol had before) are
both measured; target: trickle median under 250 ms on loopback.

    python -m bench.web_talk --runs 7 --devices 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from cli.stack import StackConfig, free_port, running_stack, stack_console
from fleet.client import FleetClient
from fleet.protocol.messages import ApiOp, ApiRequest
from fleet.web.chromium import launch, tone_wav
from tests.support.netns import netns  # the namespace helper the tests use


async def wait_js(page, expr: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not (value := await page.evaluate(expr)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return value


async def measure(runs: int, devices: int) -> dict[str, list[float]]:
    home = Path(tempfile.mkdtemp(prefix="web-talk-"))
    config = StackConfig(
        home=home, devices=devices, port=free_port(), ws_port=free_port(), mixer=False
    )
    out: dict[str, list[float]] = {"trickle": [], "vanilla": []}
    async with (
        running_stack(config) as stack,
        stack_console(stack, "127.0.0.1", 0) as console,
        async_playwright() as pw,
    ):
        await stack.wait_ready()
        async with FleetClient(stack.operator_url, stack.controller.topics) as op:
            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="bench"))
            assert joined.ok, joined
        browser = await launch(pw, home / "chromium", tone_wav(home / "mic.wav", 3000.0))
        try:
            page = await browser.new_page()
            await page.goto(console.url)
            await page.fill("#password", stack.operator_url.password or "")
            await page.click("#sign-in")
            await wait_js(page, "document.body.dataset.phase == 'live'")
            await page.fill("#room", "bench")
            for n in range(runs * 2):
                mode = "trickle" if n % 2 == 0 else "vanilla"
                await page.evaluate(f"location.hash = '{mode}'")
                await page.click("#talk")
                ms = await wait_js(page, "window.fleetConsole.talk.firstAudioMs")
                out[mode].append(float(ms))
                await page.click("#talk")  # hang up
                await wait_js(page, "!window.fleetConsole.talk")
                await asyncio.sleep(0.3)  # the devices drop the old peer before the next run
        finally:
            await browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per ICE mode")
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    with netns("wtb") as space, space.inside():
        figures = asyncio.run(measure(args.runs, args.devices))
    med = {mode: statistics.median(ms) for mode, ms in figures.items()}
    for mode, ms in figures.items():
        print(
            f"talk -> first audio, {mode:7s} ICE, {args.devices} devices: "
            f"median {med[mode]:.0f} ms over {len(ms)} runs (min {min(ms):.0f}, max {max(ms):.0f})"
        )
    print(f"vanilla / trickle: {med['vanilla'] / med['trickle']:.2f}x; target trickle < 250 ms")


if __name__ == "__main__":
    main()
