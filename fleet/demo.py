"""What the demo shows: who hears whom in a meeting of simulated devices, by FFT."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from rich.table import Table

from fleet.controller.meetings import DEFAULT_MESH_CAP
from fleet.device.audio import AudioMeetingDriver, DeviceHearing
from fleet.device.sim import SimFleet
from fleet.device.workers import SimWorkers
from fleet.protocol.messages import ApiRequest, RoomMedia

POLL_S = 0.1
COMPACT_ABOVE = 5  # devices heard: beyond, the table counts them instead of naming them


@dataclass
class Hearing:
    tones: dict[str, float]  # device -> the tone it sends
    heard: dict[str, set[str]] = field(default_factory=dict)  # device -> devices it hears
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    complete: bool = False
    at: float = 0.0  # time.monotonic() when everyone heard everyone

    def missing(self) -> dict[str, set[str]]:
        everyone = set(self.tones)
        return {
            d: (everyone - {d}) - self.heard.get(d, set())
            for d in self.tones
            if (everyone - {d}) - self.heard.get(d, set())
        }

    def hears_itself(self) -> list[str]:
        return [d for d, heard in self.heard.items() if d in heard]


def min_share(devices: int) -> float:
    """How much of a stream's power a tone needs to count as heard: a mesh peer's stream is
    one tone, a mix of N-1 tones gives each about 1/(N-1)."""
    return min(0.05, 0.25 / max(1, devices - 1))


def listen(fleet: SimFleet) -> Hearing:
    """Who each audio device hears now, over the last second of every stream it receives."""
    drivers = {d.id: d.driver for d in fleet.devices if isinstance(d.driver, AudioMeetingDriver)}
    tones = {i: drv.profile.tone_hz for i, drv in drivers.items() if drv.profile.tone_hz}
    share = min_share(len(tones))
    return _hearing(tones, {i: drv.hearing(tones, share) for i, drv in drivers.items()})


async def listen_workers(workers: SimWorkers) -> Hearing:
    """`listen` for devices in worker processes."""
    tones = workers.tones
    return _hearing(tones, await workers.hearing(min_share(len(tones))))


def _hearing(tones: dict[str, float], devices: dict[str, DeviceHearing]) -> Hearing:
    hearing = Hearing(tones=tones)
    for device_id, got in devices.items():
        hearing.heard[device_id] = got.heard
        hearing.levels[device_id] = got.levels
    return hearing


async def wait_until_everyone_hears(fleet: SimFleet | SimWorkers, timeout_s: float) -> Hearing:
    """Poll until every device hears every other one's tone (and none its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        hearing = listen(fleet) if isinstance(fleet, SimFleet) else await listen_workers(fleet)
        if not hearing.missing() and not hearing.hears_itself():
            hearing.complete = True
            hearing.at = time.monotonic()
            return hearing
        if time.monotonic() >= deadline:
            return hearing
        await asyncio.sleep(POLL_S)


def hearing_table(hearing: Hearing) -> Table:
    table = Table(title="who hears whom (FFT of each peer's last second)")
    for column in ("device", "sends", "hears", "levels", "missing"):
        table.add_column(column)
    missing = hearing.missing()
    others = len(hearing.tones) - 1
    for device_id, tone in sorted(hearing.tones.items()):
        heard = sorted(hearing.heard.get(device_id, set()))
        levels = hearing.levels.get(device_id, {})
        if others > COMPACT_ABOVE:
            itself = " and itself" if device_id in heard else ""
            hears = f"{len(set(heard) - {device_id})} of the other {others}{itself}"
        else:
            hears = ", ".join(f"{d} ({hearing.tones[d]:.0f} Hz)" for d in heard)
        table.add_row(
            device_id,
            f"{tone:.0f} Hz",
            hears,
            ", ".join(f"{pid} {lvl:.2f}" for pid, lvl in sorted(levels.items())),
            "[red]" + ", ".join(sorted(missing[device_id])) + "[/]" if device_id in missing else "",
        )
    return table


# --- a demo past the mesh cap: a mixed room ---------------------------------------------------


def needs_mixer(devices: int) -> bool:
    """A demo of more devices than a mesh holds meets in a mixed room."""
    return devices > DEFAULT_MESH_CAP


def demo_room(room: str, devices: int) -> ApiRequest:
    """The room the demo creates: a mixed one past the mesh cap (auto would start a mesh
    and move every member to the mixer a moment later)."""
    media = RoomMedia.MIXED if needs_mixer(devices) else RoomMedia.AUTO
    return ApiRequest(room=room, media=media, cap=max(devices, 2))
