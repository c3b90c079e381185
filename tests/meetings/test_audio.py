"""Meetings with real audio: simulated devices join through the control plane, signal
through the meeting server and talk through aiortc; what each hears is checked by FFT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.agents import EchoAgent, RecorderAgent
from fleet.agents.runner import agent_in_room
from fleet.client import FleetClient
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, AudioProfile, audio_drivers, tone_for
from fleet.device.sim import MeetingDriver, SimFleet, device_ids
from fleet.media.analysis import hears
from fleet.media.config import MediaConfig
from fleet.media.sinks import CaptureSink, FanoutSink
from fleet.media.sources import load_audio
from fleet.meetings.participant import participant_link
from fleet.mqtt import BrokerUrl
from fleet.protocol import decode, encode
from fleet.protocol.messages import ApiOp, ApiRequest, DeviceOutcome, MeetOffer, Telemetry
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

pytestmark = pytest.mark.timeout(120)


@dataclass
class Meeting:
    ctl: Controller
    fleet: SimFleet
    op: FleetClient
    ids: list[str]

    @property
    def drivers(self) -> dict[str, AudioMeetingDriver]:
        return drivers(self.fleet)


@contextlib.asynccontextmanager
async def meeting(
    handle: BrokerHandle,
    tmp_path: Path,
    count: int,
    factory: Callable[[str], MeetingDriver] | None = None,
) -> AsyncIterator[Meeting]:
    """A controller, `count` simulated devices with real audio (their own tones unless
    `factory` says otherwise) and an operator client."""
    secrets = register_devices(handle, count)
    ids = list(secrets)
    async with (
        controller(handle, tmp_path / "ctl.db") as ctl,
        sim_fleet(handle, secrets, driver_factory=factory or audio_drivers(ids)) as fleet,
        operator(handle) as op,
    ):
        yield Meeting(ctl, fleet, op, ids)


def tones(count: int) -> dict[str, float]:
    """Each simulated device's tone, as audio_drivers assigns them."""
    return {device_id: tone_for(n) for n, device_id in enumerate(device_ids(count))}


def drivers(fleet: SimFleet) -> dict[str, AudioMeetingDriver]:
    return {d.id: d.driver for d in fleet.devices}  # type: ignore[misc]


def heard_pids(driver: AudioMeetingDriver, freqs: dict[str, float]) -> set[str]:
    """The devices whose tone this driver hears (over the last second of each peer)."""
    out = set()
    for participant in driver.heard.peers():
        for pid, freq in freqs.items():
            if driver.hears_tone(participant, freq):
                out.add(pid)
    return out


async def test_three_devices_each_hear_the_other_two_and_not_themselves(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    freqs = tones(3)
    async with meeting(amqtt_broker, tmp_path, 3) as m:
        ctl, fleet, op, ids = m.ctl, m.fleet, m.op, m.ids
        result = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=20))
        assert result.ok, result
        assert {d.outcome for d in result.devices} == {DeviceOutcome.CONVERGED}
        by_id = drivers(fleet)
        # Births announce what each board can do.
        caps = {r.id: r.status.caps for r in ctl.registry.devices.values() if r.status}
        assert all(c is not None and c.audio and c.mic and c.speaker for c in caps.values())
        # Reported state names the session, the device's participant id and both peers.
        states = {d.id: d.meeting for d in fleet.devices}
        sessions = {s.session for s in states.values() if s}
        assert len(sessions) == 1
        await wait_for(
            lambda: all(len(s.peers) == 2 for s in (d.meeting for d in fleet.devices) if s),
            what="every device reports two peers",
        )

        def everyone_hears_the_others() -> bool:
            return all(
                heard_pids(drv, freqs) == set(ids) - {device_id} for device_id, drv in by_id.items()
            )

        await wait_for(everyone_hears_the_others, timeout=20, what="each hears the other two")
        for device_id, drv in by_id.items():
            heard = heard_pids(drv, freqs)
            assert device_id not in heard, f"{device_id} hears itself"
            assert heard == set(ids) - {device_id}

        history = await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))
        live = history.sessions[0]
        assert live.ended is None
        assert {p.pid for p in live.participants} == set(ids)

        left = await op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=20))
        assert left.ok, left
        await wait_for(lambda: "standup" not in ctl.parts[0].live, what="session ends")  # type: ignore[attr-defined]
        ended = (await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions[0]
        assert ended.ended is not None
        assert all(p.left is not None for p in ended.participants)
        assert all(not drv.mesh.peers() for drv in by_id.values())


async def receive(driver: AudioMeetingDriver, packets: int, timeout: float = 10.0) -> None:
    """Until `driver` has received `packets` more RTP packets from its one peer: a wait on
    the stream itself, so what the check after it looks for had time to arrive."""

    async def received() -> int:
        return sum(s.packets_received for s in await driver.mesh.stats())

    target = await received() + packets
    async with asyncio.timeout(timeout):
        while await received() < target:  # noqa: ASYNC110 (stats are polled; no event)
            await asyncio.sleep(0.05)


def _device_driver(tone_hz: float, **media: object) -> AudioMeetingDriver:
    return AudioMeetingDriver(AudioProfile(media=MediaConfig(**media), tone_hz=tone_hz))  # type: ignore[arg-type]


def agent_url(handle: BrokerHandle, pid: str) -> BrokerUrl:
    return BrokerUrl.parse(handle.url(pid, handle.add_device(pid)))


async def test_echo_agent_returns_a_device_its_own_tone(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with meeting(amqtt_broker, tmp_path, 1) as m:
        fleet, op = m.fleet, m.op
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="echo-test"))).ok
        async with agent_in_room(
            agent_url(amqtt_broker, "agent-echo"),
            "agent-echo",
            "echo-test",
            EchoAgent(),
            amqtt_broker.topics,
        ) as echo:
            drv = drivers(fleet)["dev-1"]
            await wait_for(
                lambda: (
                    echo.participant in drv.heard.peers()
                    and drv.hears_tone(echo.participant, tone_for(0))
                ),  # type: ignore[arg-type]
                timeout=20,
                what="dev-1 hears its own tone back",
            )


async def test_recorder_agent_writes_every_participants_tone(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    recorder = RecorderAgent(tmp_path / "rec")
    async with meeting(amqtt_broker, tmp_path, 2) as m:
        op, ids = m.op, m.ids
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="rec"))).ok
        async with agent_in_room(
            agent_url(amqtt_broker, "agent-rec"),
            "agent-rec",
            "rec",
            recorder,
            amqtt_broker.topics,
        ):
            await wait_for(
                lambda: (
                    len(recorder.recorder.paths) == 2
                    and all(p.stat().st_size > 48_000 * 2 for p in recorder.recorder.paths.values())
                ),
                timeout=20,
                what="a second of each device recorded",
            )
    # Leaving closed the files; each holds its device's tone and the mix holds both.
    paths = recorder.recorder.paths
    by_pid = {name.split("-", 2)[-1]: path for name, path in paths.items()}
    assert set(by_pid) == set(ids)
    for n, device_id in enumerate(ids):
        samples = load_audio(by_pid[device_id])
        assert hears(samples, tone_for(n)), device_id
        assert not hears(samples, tone_for(1 - n)), device_id
    assert recorder.recorder.mix_path is not None
    mix = load_audio(recorder.recorder.mix_path)
    assert all(hears(mix, tone_for(n)) for n in range(2))


async def test_a_pcmu_only_device_talks_with_an_opus_device(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    factories = {
        "dev-1": lambda: _device_driver(tone_for(0), codecs=("pcmu",)),
        "dev-2": lambda: _device_driver(tone_for(1), codecs=("opus", "pcmu")),
    }
    async with meeting(amqtt_broker, tmp_path, 2, lambda d: factories[d]()) as m:
        fleet, op = m.fleet, m.op
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="g711"))).ok
        by_id = drivers(fleet)
        freqs = {"dev-1": tone_for(0), "dev-2": tone_for(1)}
        await wait_for(
            lambda: (
                heard_pids(by_id["dev-1"], freqs) == {"dev-2"}
                and heard_pids(by_id["dev-2"], freqs) == {"dev-1"}
            ),
            timeout=20,
            what="both hear each other",
        )
        for drv in by_id.values():
            stats = await drv.mesh.stats()
            assert [s.codec for s in stats] == ["PCMU"] or [s.codec for s in stats] == ["pcmu"]


async def test_a_send_only_device_is_heard_but_sent_nothing(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    factories = {
        "dev-1": lambda: _device_driver(tone_for(0), speaker=False),  # a mic, no speaker
        "dev-2": lambda: _device_driver(tone_for(1)),
    }
    async with meeting(amqtt_broker, tmp_path, 2, lambda d: factories[d]()) as m:
        fleet, op = m.fleet, m.op
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="one-way"))).ok
        by_id = drivers(fleet)
        await wait_for(
            lambda: heard_pids(by_id["dev-2"], {"dev-1": tone_for(0)}) == {"dev-1"},
            timeout=20,
            what="dev-2 hears the send-only dev-1",
        )
        # A second of dev-1's stream at dev-2: a stream the other way would be under way.
        await receive(by_id["dev-2"], 50)
        assert by_id["dev-1"].heard.peers() == []
        sent_to_send_only = await by_id["dev-2"].mesh.stats()
        assert [s.packets_sent for s in sent_to_send_only] == [0]
        received = await by_id["dev-1"].mesh.stats()
        assert [s.packets_received for s in received] == [0]


async def test_garbage_sdp_to_a_device_breaks_nothing(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    freqs = tones(2)
    async with (
        meeting(amqtt_broker, tmp_path, 2) as m,
        participant_link(
            agent_url(amqtt_broker, "mallory"), "mallory", amqtt_broker.topics
        ) as mallory,
    ):
        fleet, op = m.fleet, m.op
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok
        by_id = drivers(fleet)
        await wait_for(
            lambda: heard_pids(by_id["dev-1"], freqs) == {"dev-2"}, timeout=20, what="audio"
        )
        joined = await mallory.join("standup")
        dev1 = next(p.participant for p in joined.peers if p.pid == "dev-1")
        for garbage in ("v=0\r\nthis is not sdp", "x" * 1000, "v=0\r\nm=video 9 RTP/AVP 0\r\n"):
            await mallory.send(MeetOffer(type="offer", to=dev1, sdp=garbage))
        drv1 = by_id["dev-1"]
        await wait_for(lambda: mallory.participant in drv1.participant.peer_errors, what="refused")  # type: ignore[union-attr]
        # dev-1 still hears dev-2, and reports its state as before.
        drv1.heard = CaptureSink(keep_s=2.0)
        drv1.mesh.sink = FanoutSink(drv1.levels, drv1.heard)
        await wait_for(
            lambda: heard_pids(drv1, freqs) == {"dev-2"}, timeout=10, what="audio goes on"
        )
        assert fleet["dev-1"].error is None


async def test_mic_from_the_desired_state_mutes_and_unmutes(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with meeting(amqtt_broker, tmp_path, 2) as m:
        fleet, op = m.fleet, m.op
        muted = await op.request(ApiOp.JOIN, ApiRequest(device="dev-1", room="r", mic=False))
        assert muted.ok
        assert (await op.request(ApiOp.JOIN, ApiRequest(device="dev-2", room="r"))).ok
        by_id = drivers(fleet)
        listener, speaker = by_id["dev-2"], by_id["dev-1"]
        await wait_for(
            lambda: heard_pids(speaker, {"dev-2": tone_for(1)}) == {"dev-2"},
            timeout=20,
            what="dev-1 hears dev-2",
        )
        await wait_for(lambda: listener.heard.peers(), what="dev-2 receives dev-1's stream")
        peer = listener.heard.peers()[0]
        await receive(listener, 50)  # a second of the muted stream
        assert listener.levels.level(peer) < 0.01, "a muted mic sends silence"
        assert fleet["dev-1"].current_state().mic is False
        assert (await op.request(ApiOp.JOIN, ApiRequest(device="dev-1", room="r"))).ok
        await wait_for(
            lambda: listener.hears_tone(peer, tone_for(0), last_s=0.5),
            timeout=10,
            what="unmuted: dev-2 hears dev-1's tone",
        )
        assert fleet["dev-1"].current_state().mic is True


async def test_peer_stats_go_into_the_devices_telemetry(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with meeting(amqtt_broker, tmp_path, 2) as m:
        fleet, op = m.fleet, m.op
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="stats"))).ok
        dev = fleet["dev-1"]
        await wait_for(
            lambda: any(s.packets_received > 0 for s in dev.telemetry().audio),
            timeout=15,
            what="stats in telemetry",
        )
        tele = decode(Telemetry, encode(dev.telemetry()))
        assert tele.meeting is not None
        assert tele.meeting.room == "stats"
        assert tele.meeting.session == dev.meeting.session  # type: ignore[union-attr]
        (stats,) = tele.audio
        assert stats.peer in dev.meeting.peers  # type: ignore[union-attr]
        assert stats.packets_sent > 0
        assert stats.codec is not None
        assert stats.codec.lower() == "opus"
        assert (await op.request(ApiOp.LEAVE_ALL, ApiRequest())).ok
        assert dev.telemetry().audio == []
        assert dev.telemetry().meeting is None


async def test_a_controller_restart_brings_devices_back_into_one_session(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(amqtt_broker, 2)
    ids = list(secrets)
    freqs = {device_id: tone_for(n) for n, device_id in enumerate(ids)}
    db = tmp_path / "ctl.db"
    async with sim_fleet(amqtt_broker, secrets, driver_factory=audio_drivers(ids)) as fleet:
        async with controller(amqtt_broker, db), operator(amqtt_broker) as op:
            assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok
            old = fleet["dev-1"].meeting.session  # type: ignore[union-attr]
        # A new controller has no live session; the devices are told and join again.
        async with controller(amqtt_broker, db) as ctl:
            await wait_for(
                lambda: (
                    "standup" in ctl.parts[0].live  # type: ignore[attr-defined]
                    and len(ctl.parts[0].live["standup"].members) == 2
                ),  # type: ignore[attr-defined]
                timeout=20,
                what="both devices back in one session",
            )
            new = ctl.parts[0].live["standup"].id  # type: ignore[attr-defined]
            assert new != old
            await wait_for(
                lambda: all(d.meeting and d.meeting.session == new for d in fleet.devices),
                what="states name the new session",
            )
            by_id = drivers(fleet)
            for drv in by_id.values():
                drv.heard = CaptureSink(keep_s=2.0)
                drv.mesh.sink = FanoutSink(drv.levels, drv.heard)
            await wait_for(
                lambda: all(heard_pids(drv, freqs) == set(ids) - {i} for i, drv in by_id.items()),
                timeout=20,
                what="audio flows again",
            )
