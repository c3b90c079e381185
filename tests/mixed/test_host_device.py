"""fleet-host-device --audio in a mixed room: one connection to a real Janus AudioBridge,
through which it hears the two simulated devices (not itself) and they hear it.

Needs Janus; skips without it. The module's network namespace is the mixer fixtures'
(tests/mixed/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
from fleet.media.analysis import hears
from fleet.media.config import MediaConfig
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest, RoomMedia
from tests.support.brokers import BrokerHandle
from tests.support.firmware_build import (
    HOST_TONE_HZ,
    RATE,
    Build,
    Device,
    build,
    requires_toolchain,
    speaker_tail,
)
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

__all__ = ["build"]  # the session-scoped fixture, found here by pytest
pytestmark = [requires_toolchain, pytest.mark.timeout(180)]
HOST_ID = "fw-mix-1"


async def test_host_device_meets_through_the_mixer(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: object, build: Build
) -> None:
    handle = amqtt_broker
    secrets = register_devices(handle, 2)
    ids = list(secrets)
    speaker = tmp_path / "speaker.wav"
    args = ["--broker", handle.url(HOST_ID, handle.add_device(HOST_ID)), "--id", HOST_ID]
    args += ["--prefix", handle.prefix, "--audio", "--codecs", "opus,pcmu"]
    args += ["--tone", str(HOST_TONE_HZ), "--speaker-wav", str(speaker)]
    host = Device(build.device_asan, args, tmp_path / "host-device.log")
    meetings = MeetingServer(mixers=[janus.url])  # type: ignore[attr-defined]

    def driver(device_id: str) -> AudioMeetingDriver:
        tone = tone_for(ids.index(device_id))
        profile = AudioProfile(media=MediaConfig(codecs=("opus",)), tone_hz=tone)
        return AudioMeetingDriver(profile)

    async with (
        controller(handle, tmp_path / "ctl.db", parts=[meetings]) as ctl,
        sim_fleet(handle, secrets, driver_factory=driver) as fleet,
        operator(handle) as op,
    ):
        await meetings.pool.wait_ready()
        await host.start()
        try:
            await wait_for(
                lambda: (r := ctl.registry.devices.get(HOST_ID)) is not None and r.online,
                what="the host device's birth",
            )
            made = await op.request(
                ApiOp.ROOM_CREATE, ApiRequest(room="fw-mix", media=RoomMedia.MIXED)
            )
            assert made.ok, made
            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="fw-mix", timeout_s=30))
            assert joined.ok, joined
            sims = [d.driver for d in fleet.devices]

            def sims_hear_host() -> bool:
                return all(s.hears_tone("mixer", HOST_TONE_HZ) for s in sims)  # type: ignore[attr-defined]

            def host_hears_sims() -> bool:
                tail = speaker_tail(speaker)
                return len(tail) == RATE and all(hears(tail, tone_for(n)) for n in range(2))

            await wait_for(sims_hear_host, timeout=40, what="the sims hear the host in the mix")
            await wait_for(host_hears_sims, timeout=30, what="the host hears both in the mix")
            assert not hears(speaker_tail(speaker), HOST_TONE_HZ)  # the mix leaves itself out
            log = host.text()
            assert "1 peers (mixed)" in log, log[-3000:]
            assert "offer to mixer sent" in log
        finally:
            await host.stop()
    log = host.text()
    assert "Sanitizer" not in log, log[-4000:]
