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

READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
STREAM_LIMIT = 16 * 1024 * 1024  # a hearing report of thousands of devices is one line


@dataclass
class WorkerSpec:
    url: str  # the broker, without credentials
    prefix: str
    secrets: dict[str, str]  # device id -> broker secret
    tones: dict[str, float]  # device id -> the tone it sends
    groups: list[str] = field(default_factory=list)
    tele_interval_s: float = 10.0
    amplitude: float = 0.3
    capture_s: float = 2.0  # seconds of received audio kept per peer for the FFT; 0: levels only


class SimWorkers:
    """`procs` child processes running `secrets`' devices between them."""

    def __init__(
        self,
        url: BrokerUrl,
        topics: Topics,
        secrets: dict[str, str],
        tones: dict[str, float],
        procs: int,
        groups: Sequence[str] = (),
        tele_interval_s: float = 10.0,
        amplitude: float = 0.3,
        capture_s: float = 2.0,
    ) -> None:
        if procs < 1:
            raise ValueError("at least one worker process")
        ids = list(secrets)
        self.device_ids = ids
        self.tones = dict(tones)
        share = [ids[n::procs] for n in range(procs)]
        self.specs = [
            WorkerSpec(
                url=str(url),
                prefix=topics.prefix,
                secrets={i: secrets[i] for i in part},
                tones={i: tones[i] for i in part},
                groups=list(groups),
                tele_interval_s=tele_interval_s,
                amplitude=amplitude,
                capture_s=capture_s,
            )
            for part in share
            if part
        ]
        self._procs: list[asyncio.subprocess.Process] = []
        self._lock = asyncio.Lock()

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
        async with asyncio.timeout(timeout):
            for proc in self._procs:
                reply = await self._read(proc)
                if not reply.get("ready"):
                    raise FleetError(f"sim worker {proc.pid} did not start: {reply}")

    async def hearing(self, min_share: float) -> dict[str, DeviceHearing]:
        """What every device hears now (AudioMeetingDriver.hearing in each worker)."""
        from fleet.device.audio import DeviceHearing

        replies = await self._ask({"op": "hearing", "tones": self.tones, "min_share": min_share})
        out: dict[str, DeviceHearing] = {}
        for reply in replies:
            for device, got in reply["devices"].items():
                out[device] = DeviceHearing(
                    set(got["heard"]), got["levels"], got.get("first_audio_at")
                )
        return out

    async def _ask(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        async with self._lock, asyncio.timeout(REQUEST_TIMEOUT_S):
            line = json.dumps(request).encode() + b"\n"
            for proc in self._procs:
                assert proc.stdin is not None
                proc.stdin.write(line)
            return [await self._read(proc) for proc in self._procs]

    async def _read(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise FleetError(f"sim worker {proc.pid} exited (status {code})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise FleetError(f"sim worker {proc.pid}: {reply['error']}")
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
    spec = WorkerSpec(**json.loads(await reader.readline()))
    fleet = SimFleet(
        BrokerUrl.parse(spec.url),
        spec.secrets,
        Topics(spec.prefix),
        groups=spec.groups,
        tele_interval_s=spec.tele_interval_s,
        driver_factory=lambda device_id: AudioMeetingDriver(
            AudioProfile(
                tone_hz=spec.tones[device_id],
                tone_amplitude=spec.amplitude,
                keep_s=spec.capture_s,
            )
        ),
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
            if request.get("op") != "hearing":
                _reply({"error": f"unknown op {request.get('op')!r}"})
                continue
            devices = {}
            for dev in fleet.devices:
                assert isinstance(dev.driver, AudioMeetingDriver)
                got = dev.driver.hearing(request["tones"], request["min_share"])
                devices[dev.id] = asdict(got) | {"heard": sorted(got.heard)}
            _reply({"devices": devices})
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
