"""Meeting benchmark: join-all to audio, mouth-to-ear latency, CPU per stream, for N devices.

For each N (2, 4 and 6 by default) a fresh process runs the whole platform on
embedded defaults (amqtt broker, controller with its meeting server, N
simulated devices with real aiortc audio, each sending its own tone with a
latency marker every 0.5 s) on loopback, and:

  join-to-audio  the time from sending join-all (through the automation API, as
                 `fleet join-all` does) until every device has received audio from
                 every other one (the first decoded frame of its last peer);
  mouth-to-ear   per one-way stream, from when a marker was "spoken" at the
                 sender's microphone (sample index / 48 kHz from the source's
                 start) to when its onset reached the receiver's speaker path
                 (located to the sample in the received audio); median and p95
                 over every stream and marker;
  CPU/stream     the process's CPU time (every thread) over a steady window,
                 divided by the N*(N-1) one-way streams, as % of one core. Both
                 ends of every stream (encode and decode), the broker and the
                 controller are in the process.

    python -m bench.meeting                      # 2, 4 and 6 devices
    python -m bench.meeting --devices 4 --runs 3 --window 10

Targets, on loopback: join-to-audio under 0.5 s for 4 devices,
mouth-to-ear under 100 ms, at most 7% of one core per stream (a bare aiortc
pair: about 6.5%, bench/media_pair.py). Prints figures; asserts nothing. All N
devices share one Python process here, so past the process's one core (6
devices are 30 streams) the figures show that machine limit, not the
platform's: a real fleet runs one device per board.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import module_command

MARKER_EVERY_S = 0.5


async def one_run(devices: int, window_s: float) -> dict[str, float | int | None]:
    from cli.stack import StackConfig, free_port, running_stack
    from fleet.client import FleetClient
    from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
    from fleet.media.analysis import marker_latencies
    from fleet.protocol.messages import ApiOp, ApiRequest

    config = StackConfig(
        home=Path(tempfile.mkdtemp(prefix="fleet-bench-")),
        devices=devices,
        port=free_port(),
        room_cap=max(devices, 2),
        mesh_cap=max(devices, 2),  # a mesh at every size: this bench measures the mesh
        mixer=False,
        tele_interval_s=60,
    )
    async with running_stack(config) as stack:
        for n, dev in enumerate(stack.fleet.devices):
            drv = dev.driver
            assert isinstance(drv, AudioMeetingDriver)
            drv.profile = AudioProfile(tone_hz=tone_for(n), marker_every_s=MARKER_EVERY_S)
        drivers = [d.driver for d in stack.fleet.devices]
        await stack.wait_ready()
        async with FleetClient(stack.operator_url, stack.controller.topics) as client:
            sent = time.monotonic()
            result = await client.request(ApiOp.JOIN_ALL, ApiRequest(room="bench", timeout_s=30))
            converged = time.monotonic() - sent

            def firsts() -> list[float] | None:
                out = []
                for drv in drivers:
                    peers = drv.levels.peers  # type: ignore[attr-defined]
                    if len(peers) < devices - 1:
                        return None
                    out += [p.first_frame_at for p in peers.values()]
                return out  # type: ignore[return-value]

            deadline = time.monotonic() + 30
            # Polling: first frames land in sinks of many devices, with no event to wait on.
            while (arrivals := firsts()) is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            join_to_audio = max(arrivals) - sent if arrivals else None

            await asyncio.sleep(1.0)  # past the start-up transients
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(window_s)
            cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
            streams = devices * (devices - 1)

            latencies: list[float] = []
            for receiver in drivers:
                names = receiver.peer_pids()  # type: ignore[attr-defined]
                for participant, pid in names.items():
                    sender = next(d for d in stack.fleet.devices if d.id == pid).driver
                    source = sender.source  # type: ignore[attr-defined]
                    if source is None:
                        continue
                    latencies += marker_latencies(
                        source.sent_markers(),
                        receiver.heard.marker_arrivals(participant),  # type: ignore[attr-defined]
                    )
            await client.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=30))
    latencies.sort()
    return {
        "devices": devices,
        "converged_ok": int(result.ok),
        "join_converged_s": converged,
        "join_to_audio_s": join_to_audio,
        "m2e_median_ms": statistics.median(latencies) * 1000 if latencies else None,
        "m2e_p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000 if latencies else None,
        "markers": len(latencies),
        "cpu_per_stream_pct": 100 * cpu_s / wall_s / streams,
        "cpu_total_pct": 100 * cpu_s / wall_s,
        "streams": streams,
    }


def child(devices: int, window_s: float) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(one_run(devices, window_s))))


def fmt(value: float | int | None, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--runs", type=int, default=1, help="fresh processes per N")
    parser.add_argument("--window", type=float, default=8.0, help="CPU window, seconds")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.window)
        return
    rows = []
    for n in args.devices:
        for _ in range(args.runs):
            out = subprocess.run(
                module_command("bench.meeting", "--child", str(n), "--window", str(args.window)),
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                print(f"{n} devices: run failed\n{out.stderr[-2000:]}")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{'devices':>7} {'streams':>7} {'join→converged':>14} {'join→audio':>10} "
        f"{'m2e median':>10} {'m2e p95':>8} {'CPU/stream':>10} {'CPU total':>9}"
    )
    for r in rows:
        print(
            f"{r['devices']:>7} {r['streams']:>7} {fmt(r['join_converged_s'], ' s'):>14} "
            f"{fmt(r['join_to_audio_s'], ' s'):>10} {fmt(r['m2e_median_ms'], ' ms', digits=1):>10} "
            f"{fmt(r['m2e_p95_ms'], ' ms', digits=1):>8} "
            f"{fmt(r['cpu_per_stream_pct'], '%', digits=1):>10} "
            f"{fmt(r['cpu_total_pct'], '%', digits=0):>9}"
        )
    print(
        "targets: join→audio < 0.5 s (4 devices), mouth-to-ear < 100 ms, CPU/stream <= 7% of a "
        "core. Every device shares this one process; other load on the machine moves the figures."
    )


if __name__ == "__main__":
    main()
