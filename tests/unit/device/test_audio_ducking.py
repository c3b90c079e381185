"""A simulated device's meeting ducking (docs/protocol.md §14): an announcement and the
ring each duck the meeting, and it comes back up only when neither plays."""

from __future__ import annotations

import asyncio
import contextlib
import time

from fleet.device.audio import AudioMeetingDriver
from fleet.device.sim import SimDeviceConfig, SimulatedDevice
from fleet.media.ducking import DUCK_GAIN
from fleet.mqtt import BrokerUrl
from tests.support.running import wait_for


def driver() -> AudioMeetingDriver:
    d = AudioMeetingDriver()
    SimulatedDevice(
        SimDeviceConfig("dev-1", "secret"), BrokerUrl.parse("mqtt://127.0.0.1:1"), driver=d
    )
    return d


def heading_for(d: AudioMeetingDriver) -> float:
    """The gain the meeting's ramp ends at."""
    return d.mesh.ducking.gain(time.monotonic() + 10)


async def test_the_ring_ducks_the_meeting_until_it_stops() -> None:
    d = driver()
    assert heading_for(d) == 1.0
    d.ring(30)
    await wait_for(lambda: heading_for(d) == DUCK_GAIN, what="ducked while it rings")
    first = d._ringer
    assert first is not None
    d.ring(30)  # rung again: the new ring takes over, still ducked once the first has ended
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert d.ringing
    assert heading_for(d) == DUCK_GAIN
    d.ring(0)
    assert heading_for(d) == 1.0
    await d.close()


async def test_ring_and_announcement_together_keep_it_ducked_until_both_end() -> None:
    d = driver()
    d.ring(30)
    await wait_for(lambda: heading_for(d) == DUCK_GAIN, what="ducked while it rings")
    d.duck(True)  # an announcement starts ...
    d.duck(False)  # ... and ends while it still rings
    assert heading_for(d) == DUCK_GAIN
    d.duck(True)  # another one, and the ring stops under it
    d.ring(0)
    assert heading_for(d) == DUCK_GAIN
    d.duck(False)
    assert heading_for(d) == 1.0
    await d.close()
