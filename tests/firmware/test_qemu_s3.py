"""The ESP32-S3 image with the virtual audio board (a tone for a microphone, a level meter
for a speaker) and the real esp_peer, booted in Espressif's QEMU (machine esp32s3), in a
meeting with a simulated device: PCMU, and Opus, both ways, checked by FFT on each side — the
simulated device's capture on the host, the virtual board's meter in the serial log. And an
announcement (protocol.md §14) from the real controller to the S3, outside any meeting and
over its meeting (ducked): the API says it played, the meter heard the sound's tone.

WebRTC needs an address besides loopback: broker, controller, simulated device and QEMU
run in a network namespace of the test's own (tests/firmware/test_host_audio.py's). The guest is
10.0.2.15 behind QEMU's user network; its ICE checks reach the simulated device's host
candidate through that NAT, which the simulated device answers as a peer-reflexive one.

Skips with one line when the S3 toolchain, QEMU's esp32s3 machine or ESP-IDF is missing
(tests/support/firmware_qemu_s3.py says where each is looked for).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fleet.announce import AnnouncePart
from fleet.auth import CredentialStore
from fleet.client import FleetClient
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, AudioProfile
from fleet.device.bulk import BulkFleet
from fleet.device.sim import SimFleet
from fleet.device.tones import tone_for
from fleet.media.config import MediaConfig
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest, DeviceOutcome, Priority
from fleet.speech.audio import wav_bytes
from tests.firmware.test_host_audio import own_network_namespace
from tests.support.brokers import amqtt_handle
from tests.support.firmware_qemu import Qemu, factory_image
from tests.support.firmware_qemu_s3 import (
    CRASH_MARKS,
    DEVICE_TONE_HZ,
    METER,
    PREFIX,
    S3_MARKS,
    WAIT_S,
    meter_heard,
    meter_hears,
    s3_rig,
    meter_readings,
    raise_for_crash,
    reading_hears,
    s3_build,
    s3_tools_or_skip,
)
from tests.support.running import controller, operator, sim_fleet, wait_for

TOOLS = s3_tools_or_skip()

pytestmark = S3_MARKS

DEV = "qemu-s3"
SIM = "sim-s3-1"
ROOM = "s3-audio"


@pytest.fixture
def netns() -> Iterator[str]:
    with own_network_namespace() as name:
        yield name


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
async def test_s3_virtual_board_talks_with_a_simulated_device(
    netns: str, tmp_path: Path, codec: str
) -> None:
    async with s3_rig(TOOLS, tmp_path, DEV, codec=codec, sim=SIM) as rig:
        op, qemu, sim_tone = rig.op, rig.qemu, rig.sim_tone
        assert rig.fleet is not None
        # The simulated device first: the S3 joins last and offers (protocol.md 8.1).
        first = await op.request(ApiOp.JOIN, ApiRequest(room=ROOM, device=SIM, timeout_s=30))
        assert first.ok, first
        joined = await op.request(ApiOp.JOIN, ApiRequest(room=ROOM, device=DEV, timeout_s=60))
        assert joined.ok, joined
        sim = rig.fleet.devices[0].driver
        assert isinstance(sim, AudioMeetingDriver)

        def sim_hears_device() -> bool:
            names = {pid: p for p, pid in sim.peer_pids().items()}
            return DEV in names and sim.hears_tone(names[DEV], DEVICE_TONE_HZ)

        await wait_for(sim_hears_device, timeout=WAIT_S, what="the sim hears the S3's tone")
        await wait_for(
            lambda: meter_hears(qemu.text(), sim_tone),
            timeout=WAIT_S,
            what="the S3's speaker meter peaks at the sim's tone",
        )
        assert f"peer p-1: {codec}" in qemu.text(), qemu.text()[-4000:]


# The announced sound: a tone on an FFT bin of the meter's (48 x 15.625 Hz), far from the
# virtual microphone's 1000 Hz, so what the meter hears can only be the announcement.
ANN_TONE_HZ = 750.0
ANN_RATE = 8000  # 2.5 s of 16-bit mono at 8 kHz: 40 KB, under the API's 46 KiB for a sound
ANN_MS = 2500
ANN_FRAME_MS = 20
QUIET = 0.1  # -23 dBFS: under the meeting's tone unless the meeting is ducked


def tone_wav(freq_hz: float, ms: int, amplitude: float, rate: int = ANN_RATE) -> bytes:
    """A WAV file of one tone (`amplitude` of full scale), its edges ramped over 10 ms."""
    t = np.arange(rate * ms // 1000) / rate
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.010)
    samples = (amplitude * 32767 * ramp * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")
    return wav_bytes(samples, rate)


def announcing_parts() -> list[ControllerPart]:
    """The parts as fleet.controller.factory builds them: announcements reach a room's
    members through the meeting server."""
    meetings = MeetingServer(auto_create=True)
    return [meetings, AnnouncePart(rooms=meetings)]


async def announce_tone(op: FleetClient, qemu: Qemu, amplitude: float = 0.5) -> int:
    """Announce ANN_TONE_HZ to the S3 and check it played: (a) the API's final result says
    `played`, the device's final ack with every frame of the clip in played_ms; (b) the
    virtual board's meter heard the tone after the request went out (and not before).
    Returns where in the serial log the announcement's readings start."""
    mark = len(qemu.text())
    assert not meter_heard(qemu.text(), ANN_TONE_HZ), qemu.text()[-4000:]
    sound = base64.b64encode(tone_wav(ANN_TONE_HZ, ANN_MS, amplitude)).decode()
    result = await op.request(
        ApiOp.ANNOUNCE,
        ApiRequest(
            sound_b64=sound, chime=False, device=DEV, priority=Priority.NORMAL, timeout_s=120
        ),
    )
    assert result.ok, result
    assert result.done, result
    assert [(d.device, d.outcome) for d in result.devices] == [(DEV, DeviceOutcome.PLAYED)], result
    # None dropped: the device counts 20 ms per frame played.
    played_ms = (result.devices[0].result or {}).get("played_ms")
    assert isinstance(played_ms, int), result
    assert ANN_MS <= played_ms <= ANN_MS + ANN_FRAME_MS, result
    # The meter logs once a second: a second of the clip lies wholly within its 2.5 s.
    await wait_for(
        lambda: meter_heard(qemu.text()[mark:], ANN_TONE_HZ),
        timeout=WAIT_S,
        what=f"the S3's speaker meter peaks at the announcement's {ANN_TONE_HZ} Hz",
    )
    assert f"announcement {result.ann} playing" in qemu.text(), qemu.text()[-4000:]
    return mark


async def test_s3_plays_an_announcement_outside_a_meeting(tmp_path: Path) -> None:
    async with s3_rig(TOOLS, tmp_path, DEV, parts=announcing_parts()) as rig:
        birth = rig.ctl.registry.devices[DEV].birth
        caps = birth.caps if birth else None
        assert caps is not None, birth
        assert caps.speaker, caps
        assert caps.codecs == ["pcmu"], caps
        # The speaker runs in no meeting: its meter reads, and hears no announcement yet.
        await wait_for(
            lambda: METER.search(rig.qemu.text()) is not None,
            timeout=WAIT_S,
            what="a meter reading of the S3's speaker",
        )
        await announce_tone(rig.op, rig.qemu)


async def test_s3_plays_an_announcement_over_its_meeting(netns: str, tmp_path: Path) -> None:
    """In a meeting with a simulated device (PCMU): the announcement plays over the ducked
    meeting, and the S3 stays in it: its meter hears the simulated device again after.

    The announcement is quieter than the meeting (0.1 of full scale against the sim's
    0.3): the meter's peak is the announcement's tone only if the meeting is ducked
    (x 0.25, protocol.md 14.4), and the level while it plays is below the meeting's."""
    async with s3_rig(TOOLS, tmp_path, DEV, parts=announcing_parts(), sim=SIM) as rig:
        op, qemu, sim_tone = rig.op, rig.qemu, rig.sim_tone
        first = await op.request(ApiOp.JOIN, ApiRequest(room=ROOM, device=SIM, timeout_s=30))
        assert first.ok, first
        joined = await op.request(ApiOp.JOIN, ApiRequest(room=ROOM, device=DEV, timeout_s=60))
        assert joined.ok, joined

        def meter_hears_sim() -> bool:
            return meter_hears(qemu.text(), sim_tone)

        await wait_for(meter_hears_sim, timeout=WAIT_S, what="the S3 hears the sim")

        def a_second_of_meeting() -> bool:
            # Two readings in a row: the last one's whole second is the meeting's.
            last = meter_readings(qemu.text())[-2:]
            return len(last) == 2 and all(reading_hears(r, sim_tone) for r in last)

        await wait_for(a_second_of_meeting, timeout=WAIT_S, what="a second of the sim")
        meeting_rms, _ = meter_readings(qemu.text())[-1]
        mark = await announce_tone(op, qemu, amplitude=QUIET)
        during = [
            rms
            for rms, peak in meter_readings(qemu.text()[mark:])
            if reading_hears((rms, peak), ANN_TONE_HZ)
        ]
        assert during, qemu.text()[-4000:]
        # A second wholly within it: the ducked meeting (-12 dB) under the quiet tone,
        # well below the meeting alone (unducked, both together would be above it).
        assert min(during) < meeting_rms - 3.0, (meeting_rms, during)
        # Back to the meeting, unducked: the last reading is the sim's tone again.
        await wait_for(meter_hears_sim, timeout=WAIT_S, what="the S3 hears the sim again")
        assert rig.ctl.registry.devices[DEV].room == ROOM
