"""An announcement to a device in a mixed meeting (a real Janus AudioBridge, in a network
namespace of the module's own): it hears the meeting's tone and the announcement, the
meeting is ducked while the announcement plays (by the documented 0.25) and comes back
after it, and the device stays in its meeting. Levels are measured, nothing is timed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
from fleet.device.sim import SimulatedDevice
from fleet.media.config import MediaConfig
from fleet.media.ducking import DUCK_GAIN
from fleet.media.frames import SAMPLE_RATE, rms
from fleet.mixer.process import JanusProcess, require_janus
from fleet.protocol.messages import (
    MIXER_PARTICIPANT,
    ApiOp,
    ApiRequest,
    DeviceOutcome,
    RoomMedia,
)
from tests.announce.support import announcing_controller, heard, recognize
from tests.support.brokers import BrokerHandle
from tests.support.mixers import janus as janus  # the fixtures (module-scoped)
from tests.support.mixers import mixed_net as mixed_net
from tests.support.running import operator, register_devices, sim_fleet, wait_for

pytestmark = pytest.mark.timeout(180)

TEXT = "please go home " * 3
WINDOW_S = 0.4  # the stretch of the meeting's stream whose level is measured
SETTLED_S = 3.0


def meeting_level(drv: AudioMeetingDriver, last_s: float = WINDOW_S) -> float:
    return rms(drv.heard.samples(MIXER_PARTICIPANT, last_s))


async def test_a_device_in_a_mixed_meeting_hears_the_announcement_over_the_ducked_meeting(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    require_janus()
    secrets = register_devices(amqtt_broker, 2)
    tones = {"dev-1": tone_for(0), "dev-2": tone_for(1)}
    # dev-1 takes G.711 only: its announcements come as PCMU; dev-2 speaks Opus.
    media = {"dev-1": MediaConfig(codecs=("pcmu",)), "dev-2": MediaConfig(codecs=("opus",))}

    def driver(device_id: str) -> AudioMeetingDriver:
        profile = AudioProfile(
            media=media[device_id], tone_hz=tones[device_id], tone_amplitude=0.2, keep_s=10.0
        )
        return AudioMeetingDriver(profile)

    stt = PocketSphinxSTT(reject_below=-1e9)
    async with (
        announcing_controller(amqtt_broker, tmp_path / "ctl.db", mixers=[janus.url]) as ctl,
        sim_fleet(amqtt_broker, secrets, driver_factory=driver) as fleet,
        operator(amqtt_broker) as op,
    ):
        server = next(p for p in ctl.parts if p.name == "meetings")
        await server.pool.wait_ready()  # type: ignore[attr-defined]
        created = await op.request(
            ApiOp.ROOM_CREATE, ApiRequest(room="standup", media=RoomMedia.MIXED)
        )
        assert created.ok, created
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=30))).ok
        listener: SimulatedDevice = fleet["dev-1"]
        other: SimulatedDevice = fleet["dev-2"]
        drv = listener.driver
        assert isinstance(drv, AudioMeetingDriver)
        await wait_for(
            lambda: drv.hears_tone(MIXER_PARTICIPANT, tones["dev-2"], 1.0),
            timeout=30,
            what="dev-1 hears dev-2 through the mixer",
        )
        # The mix settles in its first second or so: measured once it has played a while.
        await wait_for(
            lambda: drv.heard.received_samples(MIXER_PARTICIPANT) > SETTLED_S * SAMPLE_RATE,
            timeout=30,
            what="the meeting's stream settles",
        )
        assert listener.meeting is not None
        session = listener.meeting.session
        before = meeting_level(drv)
        assert before > 0.01, before

        task = asyncio.create_task(
            op.request(
                ApiOp.ANNOUNCE, ApiRequest(device="dev-1", text=TEXT, chime=False, timeout_s=60)
            )
        )
        await wait_for(
            lambda: (
                listener._announcer is not None
                and listener.announcer.current is not None
                and listener.announcer.current.first_audio_at is not None
                and time.monotonic() - listener.announcer.current.first_audio_at > 2 * WINDOW_S
            ),
            timeout=30,
            what="the announcement plays on dev-1",
        )
        playing = listener.announcer.current
        during = meeting_level(drv)
        assert listener.announcer.current is playing, "measured while it played"
        # The meeting goes on under it: the tone is still heard.
        assert drv.hears_tone(MIXER_PARTICIPANT, tones["dev-2"], WINDOW_S)

        result = await task
        assert result.ok, result
        assert result.devices[0].outcome is DeviceOutcome.PLAYED
        await wait_for(
            lambda: listener.announcer.current is None and meeting_level(drv, 0.2) > 0.8 * before,
            timeout=10,
            what="the meeting's level back after the announcement",
        )
        after = meeting_level(drv, 0.2)

        ratio = during / before
        assert DUCK_GAIN * 0.6 < ratio < DUCK_GAIN * 1.6, (before, during, after)
        assert after / before > 0.8, (before, during, after)
        # What dev-1 played of the announcement says it; dev-2 heard none and is not ducked.
        assert await recognize(stt, heard(listener), ["please go home", "lunch is ready"], 0) in (
            "please go home",
            "please go home please go home",
            "please go home please go home please go home",
        )
        assert heard(other).size == 0
        assert listener.meeting is not None
        assert listener.meeting.session == session, "it stayed in its meeting"
        assert listener.meeting.peers == [MIXER_PARTICIPANT]
