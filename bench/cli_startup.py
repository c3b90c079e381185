"""How fast the `fleet` command answers, as ratios to a bare `python -c pass`.

Each figure is the median of repeated runs of the real command in a subprocess (the
venv's `fleet` script), interleaved with the bare interpreter's runs so that the load of
a shared machine weighs on both alike: wall time, and CPU time (user + system, from
the child's rusage), which a busy machine inflates far less than wall time.

  fleet --version, fleet --help   target: at most 0.15 s above bare Python
  fleet devices --json            target: at most 0.4 s wall, against a running
                                  50-device stack (`fleet up` on free ports, a temp
                                  FLEET_HOME, started by this bench)
  fleet join-all ROOM --json      target: overhead at most 0.3 s: wall minus the
                                  controller's own time to converge, which this bench
                                  watches on the broker (from the request on api/join-all
                                  to the last device's state with the new rev)

    python -m bench.cli_startup
    git worktree add /tmp/cli-before <rev>
    python -m bench.cli_startup --before /tmp/cli-before   # the same figures for <rev>

`--before` runs the older tree's CLI (PYTHONPATH set to it) against the same stack,
which runs this tree's `fleet up`. Both trees are byte-compiled first, as an installed
package is. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import ROOT
from cli.stack import free_port
from fleet.mqtt import BrokerUrl, MqttVersion, open_client, own_client_id, subscribe
from fleet.protocol import TopicKind, Topics, decode
from fleet.protocol.messages import State

DEVICES = 50
UP_TIMEOUT_S = 120.0
TARGETS = {"--version": 0.15, "--help": 0.15}  # seconds above bare Python
DEVICES_TARGET_S = 0.4
JOIN_OVERHEAD_TARGET_S = 0.3


@dataclass
class Runs:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    extra: list[float] = field(default_factory=list)  # join-all: the controller's own time

    @property
    def wall_s(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_s(self) -> float:
        return statistics.median(self.cpu)


def timed(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall, cpu, exit status) of one run; output discarded."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def fleet_command() -> list[str]:
    script = Path(sys.executable).with_name("fleet")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cli.main import main; main()"]


def tree_env(tree: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    env.update(PYTHONPATH=str(tree), FLEET_HOME=str(home), COLUMNS="80", NO_COLOR="1")
    env.pop("FLEET_BROKER", None)
    env.pop("FLEET_PREFIX", None)
    return env


def byte_compile(tree: Path) -> None:
    for package in ("cli", "fleet", "broker"):
        compileall.compile_dir(tree / package, quiet=1)


def interleaved(
    commands: dict[str, tuple[list[str], dict[str, str]]], runs: int
) -> dict[str, Runs]:
    """Each command `runs` times (after one warm-up each), round-robin."""
    results = {name: Runs() for name in commands}
    for cmd, env in commands.values():
        timed(cmd, env)
    for _ in range(runs):
        for name, (cmd, env) in commands.items():
            wall, cpu, code = timed(cmd, env)
            if code != 0:
                raise SystemExit(f"{name}: exit {code} ({' '.join(cmd)})")
            results[name].wall.append(wall)
            results[name].cpu.append(cpu)
    return results


@contextlib.contextmanager
def running_up(home: Path, devices: int) -> Iterator[tuple[BrokerUrl, Topics]]:
    """`fleet up` with `devices` simulated devices (no audio, no mixer, no Home Assistant)
    on a free port in `home`; yields the operator's URL from the client file it writes."""
    port = free_port()
    cmd = [
        *fleet_command(),
        *("up", "--devices", str(devices), "--no-audio", "--no-mixer", "--no-ha"),
        *("--port", str(port), "--home", str(home)),
    ]
    proc = subprocess.Popen(
        cmd, env=tree_env(ROOT, home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("up in") or time.monotonic() > deadline:
                break
        if proc.poll() is not None or not (home / "client.json").exists():
            raise SystemExit(f"fleet up did not come up (exit {proc.poll()})")
        doc = json.loads((home / "client.json").read_text())
        yield BrokerUrl.parse(doc["broker"]), Topics(doc["prefix"])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Watch:
    """The controller's own time to converge a join-all, seen on the broker: from the
    request (api/join-all or api/by/{user}/join-all) to the last target's state with a
    newer rev in the room."""

    def __init__(self, url: BrokerUrl, topics: Topics) -> None:
        self.url, self.topics = url, topics
        self.revs: dict[str, int] = {}
        self.rooms: dict[str, str | None] = {}
        self._request_at: float | None = None
        self._base: dict[str, int] = {}
        self._room = ""
        self._last_at = 0.0
        self._done = asyncio.Event()
        self.ready = asyncio.Event()

    def expect(self, room: str) -> None:
        self._request_at, self._room, self._done = None, room, asyncio.Event()

    async def converged_s(self) -> float:
        await self._done.wait()
        assert self._request_at is not None
        return self._last_at - self._request_at

    async def run(self) -> None:
        client_id = own_client_id(self.url.username, "bench-watch")
        async with open_client(self.url, client_id=client_id, version=MqttVersion.AUTO) as client:
            t = self.topics
            requests = [(t.api("join-all"), 0), (t.all_api_requests_by, 0)]
            await subscribe(client, [*requests, (t.all_devices(TopicKind.STATE), 0)])
            self.ready.set()
            async for message in client.messages:
                self._on(message.topic.value, bytes(message.payload), time.perf_counter())

    def _on(self, topic: str, payload: bytes, at: float) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None or not payload:
            return
        if parsed.kind is TopicKind.API:
            if parsed.name != "join-all":
                return
            self._request_at, self._base = at, dict(self.revs)
            return
        state = decode(State, payload)
        self.revs[parsed.name] = state.rev
        self.rooms[parsed.name] = state.meeting.room if state.meeting else None
        if self._request_at is None or self._done.is_set():
            return
        if state.rev > self._base.get(parsed.name, -1):
            self._last_at = at
        if all(
            self.revs[d] > self._base.get(d, -1) and self.rooms[d] == self._room for d in self.revs
        ):
            self._done.set()


async def join_all_runs(
    url: BrokerUrl,
    topics: Topics,
    commands: dict[str, tuple[list[str], dict[str, str]]],
    runs: int,
) -> dict[str, Runs]:
    watch = Watch(url, topics)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.ready.wait(), 30)
        await asyncio.sleep(1.0)  # every device's retained state read
        results = {name: Runs() for name in commands}
        turn = 0
        for n in range(runs + 1):  # the first round warms up
            for name, (cmd, env) in commands.items():
                room = f"bench-{turn % 2}"
                turn += 1
                watch.expect(room)
                wall, cpu, code = await asyncio.to_thread(
                    timed, [*cmd, "join-all", room, "--json"], env
                )
                if code != 0:
                    raise SystemExit(f"join-all ({name}): exit {code}")
                controller_s = await asyncio.wait_for(watch.converged_s(), 30)
                if n:
                    results[name].wall.append(wall)
                    results[name].cpu.append(cpu)
                    results[name].extra.append(controller_s)
        return results
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def line(label: str, runs: Runs, bare: Runs, target: str) -> str:
    above = runs.wall_s - bare.wall_s
    cpu_above = runs.cpu_s - bare.cpu_s
    return (
        f"  {label:<24} wall {runs.wall_s * 1000:6.0f} ms = {runs.wall_s / bare.wall_s:5.1f}x bare"
        f" (+{above:.3f} s); cpu {runs.cpu_s * 1000:5.0f} ms = {runs.cpu_s / bare.cpu_s:5.1f}x"
        f" (+{cpu_above:.3f} s)  {target}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an older checkout (git worktree) to compare")
    parser.add_argument("--runs", type=int, default=15, help="runs of each command")
    parser.add_argument("--devices", type=int, default=DEVICES)
    args = parser.parse_args()

    trees = {"after": ROOT}
    if args.before is not None:
        trees = {"before": args.before.resolve(), **trees}
    for tree in trees.values():
        byte_compile(tree)
    fleet = fleet_command()
    home = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    try:
        envs = {name: tree_env(tree, home) for name, tree in trees.items()}
        print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.runs} runs each")

        static = {"bare": ([sys.executable, "-c", "pass"], envs["after"])}
        for name, env in envs.items():
            for flag in TARGETS:
                static[f"{name} {flag}"] = ([*fleet, flag], env)
        results = interleaved(static, args.runs)
        bare = results["bare"]
        print(
            f"bare python -c pass: wall {bare.wall_s * 1000:.0f} ms, cpu {bare.cpu_s * 1000:.0f} ms"
        )
        for name in trees:
            print(f"{name}:")
            for flag, target in TARGETS.items():
                print(line(f"fleet {flag}", results[f"{name} {flag}"], bare, f"target +{target} s"))

        with running_up(home, args.devices) as (url, topics):
            live = {"bare": static["bare"]}
            live.update({name: ([*fleet, "devices", "--json"], env) for name, env in envs.items()})
            devices = interleaved(live, args.runs)
            bare = devices["bare"]
            joins = asyncio.run(
                join_all_runs(url, topics, {n: (fleet, e) for n, e in envs.items()}, args.runs)
            )
        print(f"against `fleet up --devices {args.devices} --no-audio` (Mosquitto when installed):")
        for name in trees:
            print(f"{name}:")
            print(
                line(
                    "fleet devices --json", devices[name], bare, f"target {DEVICES_TARGET_S} s wall"
                )
            )
            j = joins[name]
            controller = statistics.median(j.extra)
            overhead = statistics.median(w - c for w, c in zip(j.wall, j.extra, strict=True))
            print(
                f"  {'fleet join-all --json':<24} wall {j.wall_s * 1000:6.0f} ms, controller's own"
                f" {controller * 1000:.0f} ms: overhead {overhead:.3f} s"
                f" = {overhead / bare.wall_s:.1f}x bare  target {JOIN_OVERHEAD_TARGET_S} s"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
