"""What the demo shows: who hears whom in a meeting of simulated devices, by FFT."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from rich.table import Table

from fleet.device.audio import AudioMeetingDriver
from fleet.device.sim import SimFleet

POLL_S = 0.1


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


def listen(fleet: SimFleet) -> Hearing:
    """Who each audio device hears now, over the last second of every peer."""
    drivers = {d.id: d.driver for d in fleet.devices if isinstance(d.driver, AudioMeetingDriver)}
    tones = {i: drv.profile.tone_hz for i, drv in drivers.items() if drv.profile.tone_hz}
    hearing = Hearing(tones=tones)
    for device_id, drv in drivers.items():
        names = drv.peer_pids()
        heard: set[str] = set()
        levels: dict[str, float] = {}
        for participant in drv.heard.peers():
            pid = names.get(participant, participant)
            levels[pid] = drv.levels.level(participant)
            heard |= {src for src, freq in tones.items() if drv.hears_tone(participant, freq)}
        hearing.heard[device_id] = heard
        hearing.levels[device_id] = levels
    return hearing


async def wait_until_everyone_hears(fleet: SimFleet, timeout_s: float) -> Hearing:
    """Poll until every device hears every other one's tone (and none its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        hearing = listen(fleet)
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
    for device_id, tone in sorted(hearing.tones.items()):
        heard = sorted(hearing.heard.get(device_id, set()))
        levels = hearing.levels.get(device_id, {})
        table.add_row(
            device_id,
            f"{tone:.0f} Hz",
            ", ".join(f"{d} ({hearing.tones[d]:.0f} Hz)" for d in heard if d in hearing.tones),
            ", ".join(f"{pid} {lvl:.2f}" for pid, lvl in sorted(levels.items())),
            "[red]" + ", ".join(sorted(missing[device_id])) + "[/]" if device_id in missing else "",
        )
    return table
