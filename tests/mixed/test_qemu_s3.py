"""The ESP32-S3 image with the virtual audio board in QEMU's esp32s3 machine, in a mixed
room: one esp_peer connection to a real Janus AudioBridge, through which it hears a
simulated device and the simulated device hears it (PCMU), checked by FFT on each side.

Everything runs in the mixer fixtures' network namespace (tests/mixed/conftest.py), QEMU included:
its user network reaches the broker on the namespace's 127.0.0.1 and Janus on its address.
Skips with one line without the S3 tools (tests/support/firmware_qemu_s3.py) or without Janus.
"""

from __future__ import annotations

from pathlib import Path

from fleet.device.audio import AudioMeetingDriver
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest, RoomMedia
from tests.support.firmware_qemu_s3 import (
    DEVICE_TONE_HZ,
    S3_MARKS,
    WAIT_S,
    meter_hears,
    s3_rig,
    s3_tools_or_skip,
)
from tests.support.running import wait_for

TOOLS = s3_tools_or_skip()

pytestmark = S3_MARKS
DEV = "qemu-s3-mix"
SIM = "sim-s3-mix"
ROOM = "s3-mix"


async def test_s3_virtual_board_meets_through_janus(janus: object, tmp_path: Path) -> None:
    meetings = MeetingServer(mixers=[janus.url])  # type: ignore[attr-defined]
    async with s3_rig(TOOLS, tmp_path, DEV, parts=[meetings], sim=SIM) as rig:
        op, qemu = rig.op, rig.qemu
        assert rig.fleet is not None
        await meetings.pool.wait_ready()
        made = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=ROOM, media=RoomMedia.MIXED))
        assert made.ok, made
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room=ROOM, timeout_s=60))
        assert joined.ok, joined
        sim = rig.fleet.devices[0].driver
        assert isinstance(sim, AudioMeetingDriver)
        await wait_for(
            lambda: sim.hears_tone("mixer", DEVICE_TONE_HZ),
            timeout=WAIT_S,
            what="the sim hears the S3 in the mix",
        )
        await wait_for(
            lambda: meter_hears(qemu.text(), rig.sim_tone),
            timeout=WAIT_S,
            what="the S3's speaker meter peaks at the sim's tone, through the mixer",
        )
        log = qemu.text()
        assert "1 peers (mixed)" in log, log[-4000:]
        assert "peer mixer: pcmu" in log, log[-4000:]
