"""Media pair benchmark: CPU per one-way audio stream and mouth-to-ear latency.

Each scenario runs in a fresh process (so one's leftovers cannot bill the next) on
loopback, with a 440 Hz ToneSource carrying a latency marker every 0.5 s:

  bare        two aiortc RTCPeerConnections, aiortc defaults (jitter buffer 4 frames,
              aiortc's own encoder), the receiver reads frames itself: the floor
  mesh        two MediaMesh participants, one sending (mic only), one listening
              (speaker only), MediaConfig defaults
  mesh-jf4    the same with jitter_frames=4 (aiortc's own buffer depth, as `bare`)
  mesh-2way   two full MediaMesh participants: two streams, one each way
  bare-fan3   one source to three listeners with aiortc alone: MediaRelay into three
              sending peer connections (each encodes), three receiving ones
  mesh-fan3   one MediaMesh talker to three listening meshes (one encode for the three)

CPU, two ways:

  process CPU time (default): all threads (aiortc decodes in a thread, and encodes in
      an executor when it encodes) over the measuring window, divided by
      stream-seconds, as % of one core. Both ends of a stream run in the process, so a
      figure is encode + decode + transport. Other load on the machine inflates it
      (shared caches, hyperthreads, frequency): compare each scenario with `bare` of the
      same run (the "x of bare" column), and with --repeat N take the minimum of
      interleaved runs, which contention can only raise.
  --callgrind: the scenario runs under valgrind's callgrind, instrumented only during
      the window (callgrind_control), and the figure is instructions executed (every
      thread) per one-way stream-frame received, a count the machine's load does not
      move. Under valgrind the process cannot keep real time, so sources hand frames out
      as fast as it runs: the count leaves out what idle waits and wake-ups cost in real
      time; it compares scenarios, it is not a CPU share.

Mouth-to-ear: a marker's onset is located to the sample in the source (sample n is
"spoken" at the source's start + n/48000, as from a microphone) and in the received
audio (the frame's arrival at the sink + the onset's offset in it, when a speaker fed
at arrival would play it). It includes the 20 ms of packetization a microphone frame
costs; "after framing" subtracts those 20 ms.

    python -m bench.media_pair                 # every scenario, 10 s each
    python -m bench.media_pair --seconds 20 --scenarios bare mesh --repeat 3
    python -m bench.media_pair --callgrind --seconds 20 --scenarios bare mesh mesh-fan3

Targets: mouth-to-ear under 100 ms on loopback; at most 7% of one core per
stream (a bare aiortc pair measures about 6.5%). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import av
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

from bench import module_command
from fleet.media import (
    CaptureSink,
    MediaConfig,
    MediaMesh,
    SharedSource,
    ToneSource,
)
from fleet.media.analysis import marker_latencies
from fleet.media.frames import FRAME_S, FRAME_SAMPLES, Normalizer, make_frame

SCENARIOS = ("bare", "mesh", "mesh-jf4", "mesh-2way", "bare-fan3", "mesh-fan3")
WARMUP_S = 1.5
MARKER_EVERY_S = 0.5
FAN = 3

Close = Callable[[], Awaitable[None]]


class Renamed:
    """A sink that files every frame under one name (listeners all call their talker
    "sender"; the shared capture keeps them apart)."""

    def __init__(self, sink: CaptureSink, name: str) -> None:
        self.sink, self.name = sink, name

    def on_frame(self, peer: str, frame: av.AudioFrame) -> None:
        self.sink.on_frame(self.name, frame)

    def close(self) -> None:
        pass


def listener_name(i: int) -> str:
    return "sender" if i == 0 else f"sender-{i + 1}"


async def bare_links(capture: CaptureSink, tone: ToneSource, fan: int) -> tuple[int, Close]:
    """aiortc alone: `fan` sending peer connections (the tone through a MediaRelay when
    more than one), each to a receiving one that reads the frames itself."""
    relay = MediaRelay() if fan > 1 else None
    pcs: list[RTCPeerConnection] = []
    tasks: list[asyncio.Task[None]] = []

    async def read(track: object, name: str) -> None:
        normalize, count = Normalizer(), 0
        while True:
            try:
                frame = await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                return
            for data in normalize(frame):
                capture.on_frame(name, make_frame(data, count))
                count += data.size

    for i in range(fan):
        sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs += [sender, receiver]
        sender.addTransceiver(relay.subscribe(tone) if relay else tone, direction="sendonly")
        name = listener_name(i)
        receiver.on(
            "track", lambda track, name=name: tasks.append(asyncio.ensure_future(read(track, name)))
        )
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)

    async def close() -> None:
        for pc in pcs:
            await pc.close()
        for task in tasks:
            task.cancel()

    return fan, close


async def mesh_links(
    capture: CaptureSink, tone: ToneSource, two_way: bool, jitter_frames: int | None, fan: int
) -> tuple[int, Close]:
    extra = {} if jitter_frames is None else {"jitter_frames": jitter_frames}
    talk_cfg = MediaConfig(speaker=two_way, **extra)
    hear_cfg = MediaConfig(mic=two_way, **extra)
    shared = SharedSource(tone)
    back = SharedSource(ToneSource(1010.0)) if two_way else None
    talker = MediaMesh(talk_cfg, shared, Renamed(capture, "listener"))
    listeners = []
    for i in range(fan):
        listener = MediaMesh(
            hear_cfg, back or (lambda peer: None), Renamed(capture, listener_name(i))
        )
        listeners.append(listener)
        offer = await talker.create_offer(f"listener-{i}", hear_cfg.capabilities())
        answer = await listener.accept_offer("talker", talk_cfg.capabilities(), offer)
        await talker.accept_answer(f"listener-{i}", answer)

    async def close() -> None:
        encoded = talker.sending()
        await talker.close()
        for listener in listeners:
            await listener.close()
        shared.stop()
        if back is not None:
            back.stop()
        if fan > 1:
            print(f"talker encoded: {encoded}", file=sys.stderr)

    return fan + (1 if two_way else 0), close


def callgrind(command: str) -> None:
    """Switch callgrind's instrumentation of this process on, or dump and switch it off."""
    pid = str(os.getpid())
    args = ["-i", "on"] if command == "on" else ["--dump=window"]
    subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)
    if command == "dump":
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)


async def run_scenario(name: str, seconds: float, instrumented: bool) -> dict[str, object]:
    capture = CaptureSink(keep_s=seconds + WARMUP_S + 5)
    tone = ToneSource(440.0, marker_every_s=MARKER_EVERY_S)
    fan = FAN if name.endswith("-fan3") else 1
    started = time.monotonic()
    if name.startswith("bare"):
        streams, close = await bare_links(capture, tone, fan)
    else:
        jf = 4 if name == "mesh-jf4" else None
        streams, close = await mesh_links(capture, tone, name == "mesh-2way", jf, fan)
    limit = 15 * (20 if instrumented else 1)
    while capture.received_samples("sender") == 0:
        if time.monotonic() - started > limit:
            raise SystemExit(f"{name}: no audio within {limit} s")
        await asyncio.sleep(0.005)
    first_audio_s = time.monotonic() - started
    await asyncio.sleep(WARMUP_S)

    def received() -> int:
        return sum(capture.received_samples(p) for p in capture.peers())

    if instrumented:
        callgrind("on")
    got0, cpu0, wall0 = received(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    stream_frames = (received() - got0) / FRAME_SAMPLES
    if instrumented:
        callgrind("dump")

    latencies = marker_latencies(tone.sent_markers(), capture.marker_arrivals("sender"))
    await close()
    tone.stop()
    return {
        "scenario": name,
        "streams": streams,
        "seconds": wall,
        "cpu_s": cpu,
        "cpu_pct_per_stream": 100 * cpu / (wall * streams),
        "stream_frames": stream_frames,
        "first_audio_ms": first_audio_s * 1000,
        "latency_ms": [x * 1000 for x in latencies],
    }


def child(name: str, seconds: float, instrumented: bool) -> None:
    print(json.dumps(asyncio.run(run_scenario(name, seconds, instrumented))))


def run_child(name: str, seconds: float, use_callgrind: bool) -> dict[str, object] | None:
    command = module_command("bench.media_pair", "--child", name, "--seconds", str(seconds))
    workdir = None
    if use_callgrind:
        workdir = tempfile.mkdtemp(prefix="media-pair-cg-")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/cg.%p",
            *command,
            "--instrumented",
        ]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"{name}: failed\n{out.stderr.strip()[-3000:]}", file=sys.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if workdir is not None:
        result["instructions"] = window_instructions(Path(workdir))
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def window_instructions(workdir: Path) -> int | None:
    """The `totals:` of the dump callgrind("dump") asked for (its header names it)."""
    for path in workdir.glob("cg.*"):
        text = path.read_text(errors="replace")
        if "desc: Trigger: dump window" not in text[:4000]:
            continue
        for line in text.splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    return None


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
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs per scenario")
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under valgrind instead"
    )
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--instrumented", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.instrumented)
        return
    if args.callgrind and shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")

    runs: dict[str, list[dict[str, object]]] = {name: [] for name in args.scenarios}
    for _ in range(args.repeat):
        for name in args.scenarios:  # interleaved, so a burst of load hits every scenario
            result = run_child(name, args.seconds, args.callgrind)
            if result is not None:
                runs[name].append(result)
    runs = {name: rs for name, rs in runs.items() if rs}

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"media pair on loopback, {args.seconds:g} s measured per run, {args.repeat} run(s) "
        f"per scenario; {os.cpu_count()} cores, load average now {load}"
    )
    if args.callgrind:
        report_instructions(runs)
    else:
        report_cpu(runs)
        report_latency(runs)


def report_cpu(runs: dict[str, list[dict[str, object]]]) -> None:
    print("\nCPU per one-way stream (process CPU time / stream-seconds, % of one core):")
    figures = {n: [float(r["cpu_pct_per_stream"]) for r in rs] for n, rs in runs.items()}  # type: ignore[arg-type]
    bare = figures.get("bare")
    for name, values in figures.items():
        streams = runs[name][0]["streams"]
        low, mid = min(values), statistics.median(values)
        ratio = (
            f"  x{low / min(bare):.2f} of bare (min), x{mid / statistics.median(bare):.2f} (median)"
            if bare
            else ""
        )
        spread = f"  median {mid:5.2f}, min {low:5.2f} of {len(values)}" if len(values) > 1 else ""
        print(f"  {name:10} {streams} stream(s)  {mid:5.2f} %{spread}{ratio}")


def report_instructions(runs: dict[str, list[dict[str, object]]]) -> None:
    print(
        "\nInstructions per one-way stream-frame (20 ms) received, every thread, callgrind "
        "(load-independent; under valgrind sources run flat out, so no idle wake-ups):"
    )
    per: dict[str, float] = {}
    for name, rs in runs.items():
        counts = [
            int(r["instructions"]) / float(r["stream_frames"])  # type: ignore[arg-type]
            for r in rs
            if r.get("instructions") and float(r["stream_frames"]) > 0  # type: ignore[arg-type]
        ]
        if counts:
            per[name] = statistics.median(counts)
    bare = per.get("bare")
    for name, value in per.items():
        frames = statistics.median(float(r["stream_frames"]) for r in runs[name])  # type: ignore[arg-type]
        ratio = f"  x{value / bare:.2f} of bare" if bare else ""
        print(
            f"  {name:10} {value / 1e6:6.2f} M instructions/stream-frame "
            f"({frames:.0f} stream-frames in the window){ratio}"
        )


def report_latency(runs: dict[str, list[dict[str, object]]]) -> None:
    latency = {n: [x for r in rs for x in r["latency_ms"]] for n, rs in runs.items()}  # type: ignore[union-attr]
    print("\nMouth-to-ear latency, ms (marker onset, sample-exact; includes 20 ms framing):")
    for name, values in latency.items():
        print(f"  {name:10} {describe(values)}")
    print("\n  after framing (minus the 20 ms a microphone frame takes to fill):")
    for name, values in latency.items():
        if values:
            print(f"  {name:10} median {statistics.median(values) - FRAME_S * 1000:6.1f}")
    print("\nFirst audio after negotiation starts (no signalling hop), ms:")
    for name, rs in runs.items():
        first = statistics.median(float(r["first_audio_ms"]) for r in rs)  # type: ignore[arg-type]
        print(f"  {name:10} {first:6.1f}")
    print("\nTargets: mouth-to-ear < 100 ms; <= 7 % of one core per stream.")


if __name__ == "__main__":
    main()
