"""Call benchmark: from `call` to two-way audio, over several calls.

One process runs the platform on embedded defaults (amqtt broker, the controller with
its meeting server and intercom, simulated devices with real aiortc audio, each its
own tone) on loopback. Each call is sent through the automation API, as `fleet call`
does (auto-answer), from dev-1 to dev-2, and timed until both ends have received
audible audio from the other (the first decoded frame above the audible level on each
side), then hung up; both devices are back out of the call before the next.

    python -m bench.call                 # 10 calls
    python -m bench.call --calls 20
    python -m bench.call --meeting       # the caller is in a meeting with a third device
    python -m bench.call --ring          # rung first: timed from the answer instead

Target: call -> two-way audio under 400 ms. Prints figures; asserts nothing. Everything
shares this one process; other load on the machine moves the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


async def run(calls: int, meeting: bool, ring: bool) -> list[float]:
    from cli.stack import StackConfig, free_port, running_stack
    from fleet.client import FleetClient
    from fleet.device.audio import AudioMeetingDriver
    from fleet.protocol.messages import ApiOp, ApiRequest

    config = StackConfig(
        home=Path(tempfile.mkdtemp(prefix="fleet-bench-call-")),
        devices=3,
        port=free_port(),
        mixer=False,
        tele_interval_s=60,
    )
    async with running_stack(config) as stack:
        devices = {d.id: d for d in stack.fleet.devices}
        drivers = {d.id: d.driver for d in stack.fleet.devices}
        a, b, c = sorted(devices)
        await stack.wait_ready()

        async def until(predicate: object, timeout: float = 30) -> None:
            deadline = time.monotonic() + timeout
            # Polling: the conditions are spread over devices with no event to wait on.
            while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]  # noqa: ASYNC110
                await asyncio.sleep(0.002)

        def room(device: str) -> str | None:
            m = devices[device].meeting
            return m.room if m is not None else None

        def heard_at(listener: str, speaker: str) -> float | None:
            drv = drivers[listener]
            assert isinstance(drv, AudioMeetingDriver)
            for participant, pid in drv.peer_pids().items():
                entry = drv.levels.peers.get(participant)
                if pid == speaker and entry is not None and entry.audible_at is not None:
                    return entry.audible_at
            return None

        latencies: list[float] = []
        back = "standup" if meeting else None  # where the caller goes after each call
        async with FleetClient(stack.operator_url, stack.controller.topics) as client:
            if meeting:
                for device in (a, c):
                    await client.request(
                        ApiOp.JOIN, ApiRequest(device=device, room="standup", timeout_s=30)
                    )
                await until(lambda: room(a) == room(c) == "standup")
            for _ in range(calls):
                for drv in (drivers[a], drivers[b]):
                    assert isinstance(drv, AudioMeetingDriver)
                    drv.levels.peers.clear()  # participant ids repeat in every new session
                if ring:
                    pending = asyncio.create_task(
                        client.request(ApiOp.CALL, ApiRequest(device=a, to=b, ring=True))
                    )
                    await until(lambda: devices[b].ringing is not None)
                    sent = time.monotonic()
                    await client.request(ApiOp.ANSWER, ApiRequest(device=b))
                    result = await pending
                else:
                    sent = time.monotonic()
                    result = await client.request(ApiOp.CALL, ApiRequest(device=a, to=b))
                if not result.ok:
                    print(f"call refused: {result.code}: {result.detail}")
                    break
                await until(lambda: heard_at(a, b) is not None and heard_at(b, a) is not None)
                both = [heard_at(a, b), heard_at(b, a)]
                if all(t is not None for t in both):
                    latencies.append(max(t for t in both if t is not None) - sent)
                await client.request(ApiOp.HANGUP, ApiRequest(call=result.call))
                await until(lambda: room(a) == back and room(b) is None)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument(
        "--meeting", action="store_true", help="the caller is in a meeting before each call"
    )
    parser.add_argument("--ring", action="store_true", help="ring first, and time from the answer")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    latencies = sorted(asyncio.run(run(args.calls, args.meeting, args.ring)))
    if not latencies:
        print("no call reached two-way audio")
        return
    median = statistics.median(latencies) * 1000
    p95 = latencies[int(0.95 * (len(latencies) - 1))] * 1000
    where = "caller in a meeting" if args.meeting else "caller idle"
    start = "answer" if args.ring else "call"
    print(f"{start} -> two-way audio ({where}), {len(latencies)} calls:")
    print(
        f"  median {median:.0f} ms   p95 {p95:.0f} ms   min {latencies[0] * 1000:.0f} ms   "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    print("target: call -> two-way audio < 400 ms (loopback)")


if __name__ == "__main__":
    main()
