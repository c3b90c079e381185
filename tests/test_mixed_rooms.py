"""Mixed rooms with a real Janus AudioBridge: simulated devices join through the control
plane, offer to the mixer through the meeting server, and hear the mix of the others
(checked by FFT). Everything runs in a network namespace of the module's own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from brokers import BrokerHandle
from mixers import janus as janus  # the fixtures (module-scoped)
from mixers import mixed_net as mixed_net
from mixers import until
from running import controller, operator, register_devices, sim_fleet, wait_for

from fleet.client import FleetClient
from fleet.controller.meetings import MeetingServer
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
from fleet.device.sim import MeetingDriver, SimFleet
from fleet.media.config import MediaConfig
from fleet.media.sinks import CaptureSink, FanoutSink
from fleet.mixer.process import JanusProcess
from fleet.protocol.messages import (
    MIXER_PARTICIPANT,
    ApiOp,
    ApiRequest,
    DeviceOutcome,
    MediaPath,
    RoomMedia,
)

pytestmark = pytest.mark.timeout(180)

# G.711 at the mixer's 16 kHz: the cheapest codec for eight members on two shared cores.
G711 = MediaConfig(codecs=("pcmu",))


@dataclass
class Meeting:
    ctl: Controller
    server: MeetingServer
    fleet: SimFleet
    op: FleetClient
    ids: list[str]
    tones: dict[str, float]

    @property
    def drivers(self) -> dict[str, AudioMeetingDriver]:
        return {d.id: d.driver for d in self.fleet.devices}  # type: ignore[misc]


# The mixer sums seven tones: at 0.12 of full scale each they never clip.
AMPLITUDE = 0.12


def driver(tone_hz: float, media: MediaConfig = G711) -> AudioMeetingDriver:
    return AudioMeetingDriver(
        AudioProfile(media=media, tone_hz=tone_hz, tone_amplitude=AMPLITUDE, keep_s=2.0)
    )


@contextlib.asynccontextmanager
async def meeting(
    handle: BrokerHandle,
    tmp_path: Path,
    count: int,
    mixers: Sequence[str],
    factory: Callable[[str, float], MeetingDriver] | None = None,
    **server: object,
) -> AsyncIterator[Meeting]:
    secrets = register_devices(handle, count)
    ids = list(secrets)
    tones = {device_id: tone_for(n) for n, device_id in enumerate(ids)}
    make = factory or (lambda _id, tone: driver(tone))
    meetings = MeetingServer(mixers=list(mixers), **server)  # type: ignore[arg-type]
    async with (
        controller(handle, tmp_path / "ctl.db", parts=[meetings]) as ctl,
        sim_fleet(handle, secrets, driver_factory=lambda d: make(d, tones[d])) as fleet,
        operator(handle) as op,
    ):
        await meetings.pool.wait_ready()
        yield Meeting(ctl, meetings, fleet, op, ids, tones)  # type: ignore[arg-type]


def heard(drv: AudioMeetingDriver, tones: dict[str, float], last_s: float = 1.0) -> set[str]:
    """The devices whose tone this driver hears, from any peer (the mixer, in a mix)."""
    return {
        pid
        for peer in drv.heard.peers()
        for pid, freq in tones.items()
        if drv.hears_tone(peer, freq, last_s)
    }


def fresh_ears(drv: AudioMeetingDriver) -> None:
    """Forget what was heard so far: what follows is only what arrives from now on."""
    drv.heard = CaptureSink(keep_s=2.0)
    drv.mesh.sink = FanoutSink(drv.levels, drv.heard)


async def everyone_hears_the_others(m: Meeting, ids: Sequence[str], timeout: float = 30) -> None:
    def check() -> bool:
        return all(heard(m.drivers[i], {j: m.tones[j] for j in ids}) == set(ids) - {i} for i in ids)

    try:
        await wait_for(check, timeout=timeout, what="each device hears every other one")
    except TimeoutError:
        got = {i: sorted(heard(m.drivers[i], m.tones)) for i in ids}
        raise AssertionError(f"what each hears: {got}") from None


async def create_room(op: FleetClient, room: str, media: RoomMedia, **fields: object) -> None:
    created = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=room, media=media, **fields))  # type: ignore[arg-type]
    assert created.ok, created


async def test_eight_devices_in_a_mixed_room_each_hear_the_other_seven(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    async with meeting(amqtt_broker, tmp_path, 8, [janus.url]) as m:
        await create_room(m.op, "all-hands", RoomMedia.MIXED)
        result = await m.op.request(ApiOp.JOIN_ALL, ApiRequest(room="all-hands", timeout_s=30))
        assert result.ok, result
        assert {d.outcome for d in result.devices} == {DeviceOutcome.CONVERGED}
        # One session, each member with exactly one peer: the mixer.
        sessions = {d.meeting.session for d in m.fleet.devices if d.meeting}
        assert len(sessions) == 1
        assert all(d.meeting and d.meeting.peers == [MIXER_PARTICIPANT] for d in m.fleet.devices)
        assert all(drv.mesh.peers() == [MIXER_PARTICIPANT] for drv in m.drivers.values())
        await everyone_hears_the_others(m, m.ids)
        for device_id, drv in m.drivers.items():
            assert device_id not in heard(drv, m.tones), f"{device_id} hears itself"
        # The AudioBridge holds the eight; the history names the mixer and its joins.
        live = m.server.live["all-hands"]
        bridge = m.server.pool.mixers[0].bridge
        assert bridge is not None
        listed = await bridge.participants(live.id)
        assert sorted(p["id"] for p in listed) == sorted(live.members)
        history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="all-hands"))).sessions[0]
        assert history.media is MediaPath.MIXED
        assert history.mixer == "janus-1"
        joins = [e.participant for e in history.events if e.kind == "mixer_join"]
        assert sorted(joins) == sorted(live.members)

        left = await m.op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=20))
        assert left.ok, left
        await wait_for(lambda: "all-hands" not in m.server.live, what="the session ends")

        async def destroyed() -> bool:
            return live.id not in await bridge.rooms()

        await until(destroyed, what="the AudioBridge room is destroyed")
