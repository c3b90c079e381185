"""Simulated audio devices in worker processes, so a big fleet uses every core.

One Python process runs one event loop on one core; a device in a meeting costs about
1% of a core in aiortc (fleet/media/README.md), and the broker, the controller and Janus
want their share too. `SimWorkers` splits a fleet over child processes
(`python -m fleet.device.workers`), each a `SimFleet` of `AudioMeetingDriver`s on its
own loop, and asks them what their devices hear.

The parent talks to each child over its stdin and stdout, one JSON object a line: the
child's first input line is its `WorkerSpec`; it answers `{"ready": true}` once every
device is connected, then one reply per request (`{"op": "hearing", "tones": {...}}`).
A child ends when its stdin closes, so it never outlives the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics

if TYPE_CHECKING:
    from fleet.device.audio import DeviceHearing

log = logging.getLogger(__name__)

IN_PROCESS_UP_TO = 8  # audio devices one process runs beside the broker and controller
READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
STREAM_LIMIT = 16 * 1024 * 1024  # a hearing report of thousands of devices is one line


@dataclass
class DeviceSound:
    """What one worker device sends, and what it keeps of what it hears."""

    tone_hz: float
    amplitude: float = 0.3
    keep_s: float = 2.0  # received audio kept per stream for the FFT; 0: levels only
    marker_every_s: float | None = None  # latency markers in the tone (bench/mixed_room.py)


@dataclass
class WorkerSpec:
    url: str  # the broker, without credentials
    prefix: str
    secrets: dict[str, str]  # device id -> broker secret
    sounds: dict[str, DeviceSound]
    groups: list[str] = field(default_factory=list)
    tele_interval_s: float = 10.0


def auto_procs(devices: int, audio: bool = True) -> int:
    """Worker processes for a fleet of `devices`: none for a small one (they run in the
    stack's own process), else one per core."""
    if not audio or devices <= IN_PROCESS_UP_TO:
        return 0
    return min(devices, os.cpu_count() or 1)


class SimWorkers:
    """`procs` child processes running `secrets`' devices between them."""

    def __init__(
        self,
        url: BrokerUrl,
        topics: Topics,
        secrets: dict[str, str],
        sounds: dict[str, DeviceSound],
        procs: int,
        groups: Sequence[str] = (),
        tele_interval_s: float = 10.0,
    ) -> None:
        if procs < 1:
            raise ValueError("at least one worker process")
        ids = list(secrets)
        self.tones = {i: sounds[i].tone_hz for i in ids}
        share = [ids[n::procs] for n in range(procs)]
        self.specs = [
            WorkerSpec(
                url=str(url),
                prefix=topics.prefix,
                secrets={i: secrets[i] for i in part},
                sounds={i: sounds[i] for i in part},
                groups=list(groups),
                tele_interval_s=tele_interval_s,
            )
            for part in share
            if part
        ]
        self._procs: list[asyncio.subprocess.Process] = []
        self._lock = asyncio.Lock()
        self._ready = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def __aenter__(self) -> SimWorkers:
        try:
            for spec in self.specs:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "fleet.device.workers",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=STREAM_LIMIT,
                )
                self._procs.append(proc)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(asdict(spec)).encode() + b"\n")
                await proc.stdin.drain()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_connected(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every worker's devices are connected to the broker."""
        if self._ready:
            return
        async with self._lock, asyncio.timeout(timeout):
            for proc in self._procs:
                reply = await self._read(proc)
                if reply.get("ready") is not True:
                    raise FleetError(f"sim worker {proc.pid} did not start: {reply}")
        self._ready = True

    async def watch(self) -> None:
        """Run while every worker runs; FleetError once one has exited (`fleet up` stops)."""
        waits = {asyncio.ensure_future(proc.wait()): proc for proc in self._procs}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        proc = waits[done.pop()]
        raise FleetError(f"sim worker {proc.pid} exited (status {proc.returncode})")

    async def hearing(self, min_share: float) -> dict[str, DeviceHearing]:
        """What every device hears now (AudioMeetingDriver.hearing in each worker)."""
        from fleet.device.audio import DeviceHearing

        replies = await self.ask({"op": "hearing", "tones": self.tones, "min_share": min_share})
        out: dict[str, DeviceHearing] = {}
        for reply in replies:
            for device, got in reply["devices"].items():
                out[device] = DeviceHearing(set(got["heard"]), got["levels"], got["audible_at"])
        return out

    async def markers(self) -> dict[str, tuple[list[float], dict[str, list[float]]]]:
        """Per device: when its markers were spoken, and when each stream's reached it
        (AudioMeetingDriver.markers; one monotonic clock for every process of a host)."""
        out = {}
        for reply in await self.ask({"op": "markers"}):
            for device, (sent, arrivals) in reply["devices"].items():
                out[device] = (sent, arrivals)
        return out

    async def ask(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """One request to every worker; their replies (FleetError if one refuses it)."""
        async with self._lock, asyncio.timeout(REQUEST_TIMEOUT_S):
            line = json.dumps(request).encode() + b"\n"
            for proc in self._procs:
                assert proc.stdin is not None
                proc.stdin.write(line)
            # Every reply is read before one is found wanting: none is left for the next ask.
            replies = [await self._read(proc) for proc in self._procs]
        for proc, reply in zip(self._procs, replies, strict=True):
            if "error" in reply:
                raise FleetError(f"sim worker {proc.pid}: {reply['error']}")
        return replies

    async def _read(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise FleetError(f"sim worker {proc.pid} exited (status {code})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()  # the worker's cue to stop
        for proc in self._procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._procs = []


# --- the child side ---------------------------------------------------------------------------


async def _serve() -> None:
    from fleet.device.audio import AudioMeetingDriver, AudioProfile
    from fleet.device.sim import SimFleet

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    raw = json.loads(await reader.readline())
    spec = WorkerSpec(**raw | {"sounds": {i: DeviceSound(**d) for i, d in raw["sounds"].items()}})

    def driver(device_id: str) -> AudioMeetingDriver:
        sound = spec.sounds[device_id]
        return AudioMeetingDriver(
            AudioProfile(
                tone_hz=sound.tone_hz,
                tone_amplitude=sound.amplitude,
                keep_s=sound.keep_s,
                marker_every_s=sound.marker_every_s,
            )
        )

    fleet = SimFleet(
        BrokerUrl.parse(spec.url),
        spec.secrets,
        Topics(spec.prefix),
        groups=spec.groups,
        tele_interval_s=spec.tele_interval_s,
        driver_factory=driver,
    )
    running = asyncio.create_task(fleet.run(), name="sim-fleet")
    try:
        ready = asyncio.create_task(fleet.wait_connected(READY_TIMEOUT_S))
        await asyncio.wait({ready, running}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # raises what stopped the fleet
        ready.result()
        _reply({"ready": True})
        while line := await reader.readline():
            request = json.loads(line)
            drivers = {d.id: d.driver for d in fleet.devices}
            devices: dict[str, Any] = {}
            for device_id, drv in drivers.items():
                assert isinstance(drv, AudioMeetingDriver)
                if request.get("op") == "hearing":
                    got = drv.hearing(request["tones"], request["min_share"])
                    devices[device_id] = asdict(got) | {"heard": sorted(got.heard)}
                elif request.get("op") == "markers":
                    devices[device_id] = drv.markers()
            if request.get("op") in ("hearing", "markers"):
                _reply({"devices": devices})
            else:
                _reply({"error": f"unknown op {request.get('op')!r}"})
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="sim-worker %(levelname)s %(message)s")
    # Ctrl-C reaches the whole process group: the parent stops us by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_serve())
    except Exception as exc:  # told to the parent, which waits for a line
        _reply({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
