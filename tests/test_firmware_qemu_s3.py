"""The ESP32-S3 image with the virtual audio board (a tone for a microphone, a level meter
for a speaker) and the real esp_peer, booted in Espressif's QEMU (machine esp32s3), in a
meeting with a simulated device: PCMU, and Opus, both ways, checked by FFT on each side — the
simulated device's capture on the host, the virtual board's meter in the serial log.

WebRTC needs an address besides loopback: broker, controller, simulated device and QEMU
run in a network namespace of the test's own (test_firmware_audio's). The guest is
10.0.2.15 behind QEMU's user network; its ICE checks reach the simulated device's host
candidate through that NAT, which the simulated device answers as a peer-reflexive one.

Skips with one line when the S3 toolchain, QEMU's esp32s3 machine or ESP-IDF is missing
(tests/firmware_qemu_s3.py says where each is looked for).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import amqtt_handle
from filelock import FileLock
from firmware_qemu import Firmware, Qemu, factory_image
from firmware_qemu_s3 import S3_BUILD_DIR, S3Tools, build_s3_firmware, find_s3_tools
from running import controller, operator, sim_fleet, wait_for
from test_firmware_audio import own_network_namespace

from fleet.auth import CredentialStore
from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
from fleet.media.config import MediaConfig
from fleet.protocol.messages import ApiOp, ApiRequest

if os.environ.get("FLEET_FIRMWARE_QEMU") == "0":
    pytest.skip("firmware_qemu_s3: off (FLEET_FIRMWARE_QEMU=0)", allow_module_level=True)
TOOLS = find_s3_tools()
if isinstance(TOOLS, str):
    pytest.skip(f"firmware_qemu_s3: {TOOLS}", allow_module_level=True)

pytestmark = [pytest.mark.firmware_qemu_s3, pytest.mark.timeout(3600)]

PREFIX = "fleet/v1"
DEV = "qemu-s3"
SIM = "sim-s3-1"
ROOM = "s3-audio"
DEVICE_TONE_HZ = 1000.0  # sdkconfig.defaults.virtual: CONFIG_FLEET_VIRTUAL_TONE_HZ
WAIT_S = 60.0  # an emulated S3 on a busy machine: boot, DTLS handshake
METER = re.compile(r"vboard: speaker rms (-?[0-9.]+) dBFS peak ([0-9]+) Hz")
BIN_HZ = 8000 / 512  # the meter's FFT bin at the virtual board's 8 kHz
CRASH_MARKS = ("Guru Meditation", "abort() was called", "stack overflow", "assert failed")


@functools.cache
def s3_build(codec: str) -> Firmware:
    """One build per codec and session; a lock keeps parallel workers from building twice."""
    assert isinstance(TOOLS, S3Tools)
    S3_BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(S3_BUILD_DIR) + ".lock"):
        return build_s3_firmware(TOOLS, codec)


@pytest.fixture(scope="session")
def s3_firmware() -> Firmware:
    """The virtual board's default build (PCMU)."""
    return s3_build("pcmu")


@pytest.fixture
def netns() -> Iterator[str]:
    with own_network_namespace() as name:
        yield name


def meter_hears(log: str, freq_hz: float) -> bool:
    """The virtual board's last meter line: a level well above silence, its peak at freq_hz."""
    readings = METER.findall(log)
    if not readings:
        return False
    rms, peak = readings[-1]
    return float(rms) > -40.0 and abs(int(peak) - freq_hz) <= 2 * BIN_HZ


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
async def test_s3_virtual_board_talks_with_a_simulated_device(
    netns: str, tmp_path: Path, codec: str
) -> None:
    assert isinstance(TOOLS, S3Tools)
    s3_firmware = s3_build(codec)
    handle = amqtt_handle(CredentialStore(tmp_path / "home" / "credentials.json"), PREFIX)
    await handle.start()
    qemu: Qemu | None = None
    try:
        flash = tmp_path / f"{DEV}.flash.bin"
        factory_image(s3_firmware, flash, DEV, handle.port, handle.store.path)
        secrets = {SIM: handle.add_device(SIM)}
        handle.backend.sync()  # `fleet image` issued the device's credential
        sim_tone = tone_for(0)

        def driver(device_id: str) -> AudioMeetingDriver:
            media = MediaConfig(codecs=(codec,))  # type: ignore[arg-type]
            return AudioMeetingDriver(AudioProfile(media=media, tone_hz=sim_tone))

        async with (
            controller(handle, tmp_path / "ctl.db") as ctl,
            sim_fleet(handle, secrets, driver_factory=driver) as fleet,
            operator(handle) as op,
        ):
            qemu = Qemu(TOOLS.base, flash, tmp_path / f"{DEV}.serial", "esp32s3", TOOLS.qemu)
            await qemu.start()
            await wait_for(
                lambda: (r := ctl.registry.devices.get(DEV)) is not None and r.online,
                timeout=WAIT_S,
                what="the S3's birth",
            )
            # The simulated device first: the S3 joins last and offers (protocol.md 8.1).
            first = await op.request(ApiOp.JOIN, ApiRequest(room=ROOM, device=SIM, timeout_s=30))
            assert first.ok, first
            joined = await op.request(ApiOp.JOIN, ApiRequest(room=ROOM, device=DEV, timeout_s=60))
            assert joined.ok, joined
            sim = fleet.devices[0].driver
            assert isinstance(sim, AudioMeetingDriver)

            def sim_hears_device() -> bool:
                names = {pid: p for p, pid in sim.peer_pids().items()}
                return DEV in names and sim.hears_tone(names[DEV], DEVICE_TONE_HZ)

            await wait_for(sim_hears_device, timeout=WAIT_S, what="the sim hears the S3's tone")
            await wait_for(
                lambda: meter_hears(qemu.text() if qemu else "", sim_tone),
                timeout=WAIT_S,
                what="the S3's speaker meter peaks at the sim's tone",
            )
            log = qemu.text()
            assert f"peer p-1: {codec}" in log, log[-4000:]
            assert not any(mark in log for mark in CRASH_MARKS), log[-6000:]
    except BaseException:
        if qemu is not None:
            print(f"S3 serial log (tail):\n{qemu.text()[-8000:]}")
        raise
    finally:
        if qemu is not None:
            await qemu.kill()
        await handle.stop()
