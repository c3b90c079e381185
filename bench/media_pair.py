"""Media pair benchmark: CPU per one-way audio stream and mouth-to-ear latency.

Each scenario runs in a fresh process (so one's leftovers cannot bill the next) on
loopback, with a 440 Hz ToneSource carrying a latency marker every 0.5 s:

  bare        two aiortc RTCPeerConnections, aiortc defaults (jitter buffer 4 frames),
              the receiver reads frames itself: the floor
  mesh        two MediaMesh participants, one sending (mic only), one listening
              (speaker only), MediaConfig defaults
  mesh-jf4    the same with jitter_frames=4 (aiortc's own buffer depth, as `bare`)
  mesh-2way   two full MediaMesh participants: two streams, one each way

CPU: the process's CPU time (all threads: aiortc encodes in an executor and decodes in a
thread) over the measuring window, divided by stream-seconds, as % of one core.
Both ends of a stream run in the process, so a figure is encode + decode + transport.

Mouth-to-ear: a marker's onset is located to the sample in the source (sample n is
"spoken" at the source's start + n/48000, as from a microphone) and in the received
audio (the frame's arrival at the sink + the onset's offset in it, when a speaker fed
at arrival would play it). It includes the 20 ms of packetization a microphone frame
costs; "after framing" subtracts those 20 ms.

    python bench/media_pair.py                 # all scenarios, 10 s each
    python bench/media_pair.py --seconds 20 --scenarios bare mesh

Targets (issue 6): mouth-to-ear under 100 ms on loopback; at most 7% of one core per
stream (a bare aiortc pair measures about 6.5%). Prints figures; asserts nothing.
On a shared machine the figures move with the load: run it on a quiet one to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from fleet.media import (  # noqa: E402
    CaptureSink,
    MediaConfig,
    MediaMesh,
    NullSink,
    SharedSource,
    ToneSource,
)
from fleet.media.analysis import marker_latencies  # noqa: E402
from fleet.media.frames import FRAME_S, Normalizer, make_frame  # noqa: E402

SCENARIOS = ("bare", "mesh", "mesh-jf4", "mesh-2way")
WARMUP_S = 1.5
MARKER_EVERY_S = 0.5


async def bare_pair(capture: CaptureSink, tone: ToneSource) -> tuple[int, object]:
    """aiortc alone: one peer connection sends the tone, the other reads what arrives."""
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender.addTransceiver(tone, direction="sendonly")
    tasks: list[asyncio.Task[None]] = []

    @receiver.on("track")
    def on_track(track: object) -> None:
        tasks.append(asyncio.ensure_future(read(track)))

    async def read(track: object) -> None:
        normalize, count = Normalizer(), 0
        while True:
            try:
                frame = await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                return
            for data in normalize(frame):
                capture.on_frame("sender", make_frame(data, count))
                count += data.size

    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)

    async def close() -> None:
        await sender.close()
        await receiver.close()
        for task in tasks:
            task.cancel()

    return 1, close


async def mesh_pair(
    capture: CaptureSink, tone: ToneSource, two_way: bool, jitter_frames: int | None
) -> tuple[int, object]:
    extra = {} if jitter_frames is None else {"jitter_frames": jitter_frames}
    talk_cfg = MediaConfig(speaker=two_way, **extra)
    hear_cfg = MediaConfig(mic=two_way, **extra)
    shared = SharedSource(tone)
    back = SharedSource(ToneSource(1010.0)) if two_way else None
    talker = MediaMesh(talk_cfg, shared, NullSink())
    listener = MediaMesh(hear_cfg, back or (lambda peer: None), capture)
    offer = await talker.create_offer("listener", hear_cfg.capabilities())
    answer = await listener.accept_offer("sender", talk_cfg.capabilities(), offer)
    await talker.accept_answer("listener", answer)

    async def close() -> None:
        await talker.close()
        await listener.close()
        shared.stop()
        if back is not None:
            back.stop()

    return (2 if two_way else 1), close


async def run_scenario(name: str, seconds: float) -> dict[str, object]:
    capture = CaptureSink(keep_s=seconds + WARMUP_S + 5)
    tone = ToneSource(440.0, marker_every_s=MARKER_EVERY_S)
    started = time.monotonic()
    if name == "bare":
        streams, close = await bare_pair(capture, tone)
    else:
        jf = 4 if name == "mesh-jf4" else None
        streams, close = await mesh_pair(capture, tone, name == "mesh-2way", jf)
    while capture.received_samples("sender") == 0:
        if time.monotonic() - started > 15:
            raise SystemExit(f"{name}: no audio within 15 s")
        await asyncio.sleep(0.005)
    first_audio_s = time.monotonic() - started
    await asyncio.sleep(WARMUP_S)

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0

    latencies = marker_latencies(tone.sent_markers(), capture.marker_arrivals("sender"))
    await close()  # type: ignore[operator]
    tone.stop()
    return {
        "scenario": name,
        "streams": streams,
        "seconds": wall,
        "cpu_s": cpu,
        "cpu_pct_per_stream": 100 * cpu / (wall * streams),
        "first_audio_ms": first_audio_s * 1000,
        "latency_ms": [x * 1000 for x in latencies],
    }


def child(name: str, seconds: float) -> None:
    print(json.dumps(asyncio.run(run_scenario(name, seconds))))


def describe(latencies: list[float]) -> str:
    if not latencies:
        return "no markers detected"
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return (
        f"median {statistics.median(latencies):6.1f}  p95 {q[18]:6.1f}  "
        f"min {min(latencies):6.1f}  max {max(latencies):6.1f}  (n={len(latencies)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds)
        return

    results = {}
    for name in args.scenarios:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr.strip()}", file=sys.stderr)
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"media pair on loopback, {args.seconds:g} s measured per scenario; "
        f"{os.cpu_count()} cores, load average now {load} (a busy machine inflates both "
        "CPU time and latency tails)"
    )
    print("\nCPU per one-way stream (process CPU time / stream-seconds, % of one core):")
    bare = results.get("bare", {}).get("cpu_pct_per_stream")
    for name, r in results.items():
        ratio = f"  x{r['cpu_pct_per_stream'] / bare:.2f} of bare" if bare else ""
        print(
            f"  {name:10} {r['streams']} stream(s)  {r['cpu_pct_per_stream']:5.2f} %"
            f"  ({r['cpu_s']:.2f} s CPU in {r['seconds']:.1f} s){ratio}"
        )
    print("\nMouth-to-ear latency, ms (marker onset, sample-exact; includes 20 ms framing):")
    for name, r in results.items():
        print(f"  {name:10} {describe(r['latency_ms'])}")
    print("\n  after framing (minus the 20 ms a microphone frame takes to fill):")
    for name, r in results.items():
        after = [x - FRAME_S * 1000 for x in r["latency_ms"]]
        if after:
            print(f"  {name:10} median {statistics.median(after):6.1f}")
    print("\nFirst audio after negotiation starts (no signalling hop), ms:")
    for name, r in results.items():
        print(f"  {name:10} {r['first_audio_ms']:6.1f}")
    print("\nTargets: mouth-to-ear < 100 ms; <= 7 % of one core per stream.")


if __name__ == "__main__":
    main()
