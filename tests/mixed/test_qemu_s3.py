"""The ESP32-S3 image with the virtual audio board in QEMU's esp32s3 machine, in a mixed
room: one esp_peer connection to a real Janus AudioBridge, through which it hears a
simulated device and the simulated device hears it (PCMU), checked by FFT on each side.

Everything runs in the mixer fixtures' network namespace (tests/mixed/conftest.py), QEMU included:
its user network reaches the broker on the namespace's 127.0.0.1 and Janus on its address.
Skips with one line without the S3 tools (tests/support/firmware_qemu_s3.py) or without Janus.
"""

from __future__ import annotations

from pathlib import Path

from fleet.auth import CredentialStore
from fleet.device.audio import AudioMeetingDriver, AudioProfile
from fleet.device.tones import tone_for
from fleet.media.config import MediaConfig
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest, RoomMedia
from tests.support.brokers import amqtt_handle
from tests.support.firmware_qemu import Qemu, factory_image
from tests.support.firmware_qemu_s3 import (
    CRASH_MARKS,
    DEVICE_TONE_HZ,
    PREFIX,
    S3_MARKS,
    WAIT_S,
    meter_hears,
    raise_for_crash,
    s3_build,
    s3_tools_or_skip,
)
from tests.support.running import controller, operator, sim_fleet, wait_for

TOOLS = s3_tools_or_skip()

pytestmark = S3_MARKS
DEV = "qemu-s3-mix"
SIM = "sim-s3-mix"
ROOM = "s3-mix"


async def test_s3_virtual_board_meets_through_janus(janus: object, tmp_path: Path) -> None:
    s3_firmware = s3_build(TOOLS)
    handle = amqtt_handle(CredentialStore(tmp_path / "home" / "credentials.json"), PREFIX)
    await handle.start()
    qemu: Qemu | None = None
    try:
        flash = tmp_path / f"{DEV}.flash.bin"
        factory_image(s3_firmware, flash, DEV, handle.port, handle.store.path)
        secrets = {SIM: handle.add_device(SIM)}
        handle.backend.sync()
        sim_tone = tone_for(0)
        meetings = MeetingServer(mixers=[janus.url])  # type: ignore[attr-defined]

        def driver(device_id: str) -> AudioMeetingDriver:
            media = MediaConfig(codecs=("pcmu",))  # type: ignore[arg-type]
            return AudioMeetingDriver(AudioProfile(media=media, tone_hz=sim_tone))

        async with (
            controller(handle, tmp_path / "ctl.db", parts=[meetings]) as ctl,
            sim_fleet(handle, secrets, driver_factory=driver) as fleet,
            operator(handle) as op,
        ):
            await meetings.pool.wait_ready()
            qemu = Qemu(TOOLS.base, flash, tmp_path / f"{DEV}.serial", "esp32s3", TOOLS.qemu)
            await qemu.start()
            await wait_for(
                lambda: (r := ctl.registry.devices.get(DEV)) is not None and r.online,
                timeout=WAIT_S,
                what="the S3's birth",
            )
            made = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=ROOM, media=RoomMedia.MIXED))
            assert made.ok, made
            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room=ROOM, timeout_s=60))
            assert joined.ok, joined
            sim = fleet.devices[0].driver
            assert isinstance(sim, AudioMeetingDriver)
            await wait_for(
                lambda: sim.hears_tone("mixer", DEVICE_TONE_HZ),
                timeout=WAIT_S,
                what="the sim hears the S3 in the mix",
            )
            await wait_for(
                lambda: meter_hears(qemu.text() if qemu else "", sim_tone),
                timeout=WAIT_S,
                what="the S3's speaker meter peaks at the sim's tone, through the mixer",
            )
            log = qemu.text()
            assert "1 peers (mixed)" in log, log[-4000:]
            assert "peer mixer: pcmu" in log, log[-4000:]
            assert not any(mark in log for mark in CRASH_MARKS), log[-6000:]
    except BaseException as exc:
        raise_for_crash(qemu, exc)
        raise
    finally:
        if qemu is not None:
            await qemu.kill()
        await handle.stop()
