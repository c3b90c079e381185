"""Mixed rooms with a real Janus AudioBridge: simulated devices join through the control
plane, offer to the mixer through the meeting server, and hear the mix of the others
(checked by FFT). Everything runs in a network namespace of the module's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.stack import StackConfig, free_port, running_stack
from fleet.auth import Role
from fleet.client import FleetClient
from fleet.controller.parts import ControllerPart
from fleet.controller.service import Controller
from fleet.device.audio import AudioMeetingDriver, AudioProfile, audio_drivers, tone_for
from fleet.device.sim import MeetingDriver, SimFleet
from fleet.media.config import MediaConfig
from fleet.media.sinks import CaptureSink, FanoutSink
from fleet.meetings import MeetingServer
from fleet.meetings.participant import LocalParticipant, MeetingRefused, participant_link
from fleet.meetings.session import Session
from fleet.mixer.errors import MixerUnavailable
from fleet.mixer.process import JanusProcess, maybe_local_janus, require_janus
from fleet.mqtt import BrokerUrl, payload_bytes
from fleet.protocol import Topics, decode
from fleet.protocol.messages import (
    MIXER_PARTICIPANT,
    ApiOp,
    ApiRequest,
    Capabilities,
    DeviceOutcome,
    MediaPath,
    MeetAnswer,
    MeetOffer,
    PeerAudioStats,
    RoomMedia,
    Telemetry,
)
from fleet.telemetry import TelemetryIngest
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.cli import fleet
from tests.support.databases import EventRecorder, Influx1, fast_settings
from tests.support.databases import influx1 as influx1  # the fixture
from tests.support.grafana import DB, fill, queries_of
from tests.support.impair import Impairment, impaired
from tests.support.mixers import fake_mixer, janus_process, tcp_forward, until
from tests.support.netns import Netns
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

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
    extra: Sequence[ControllerPart] = (),
    **server: object,
) -> AsyncIterator[Meeting]:
    secrets = register_devices(handle, count)
    ids = list(secrets)
    tones = {device_id: tone_for(n) for n, device_id in enumerate(ids)}
    make = factory or (lambda _id, tone: driver(tone))
    # Rooms by first join: these scenarios are about media, not who may make rooms.
    meetings = MeetingServer(mixers=list(mixers), auto_create=True, **server)  # type: ignore[arg-type]
    async with (
        controller(handle, tmp_path / "ctl.db", parts=[meetings, *extra]) as ctl,
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


def room_of(live: Session) -> str:
    """The id of the session's AudioBridge room (never the session id)."""
    assert live.mixer_room is not None
    return live.mixer_room.id


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
        listed = await bridge.participants(room_of(live))
        assert sorted(p["id"] for p in listed) == sorted(live.members)
        history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="all-hands"))).sessions[0]
        assert history.media is MediaPath.MIXED
        assert history.mixer == "janus-1"
        joins = [e.participant for e in history.events if e.kind == "mixer_join"]
        assert sorted(joins) == sorted(live.members)
        # Janus's own word on each member's connection, routed by its handle.
        up = {e.participant for e in history.events if e.kind == "webrtcup"}
        assert up == set(live.members)

        left = await m.op.request(ApiOp.LEAVE_ALL, ApiRequest(timeout_s=20))
        assert left.ok, left
        await wait_for(lambda: "all-hands" not in m.server.live, what="the session ends")

        async def destroyed() -> bool:
            return room_of(live) not in await bridge.rooms()

        await until(destroyed, what="the AudioBridge room is destroyed")


async def test_a_pcmu_only_member_and_an_opus_member_hear_each_other_through_the_mixer(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    media = {"dev-1": MediaConfig(codecs=("pcmu",)), "dev-2": MediaConfig(codecs=("opus",))}
    async with meeting(
        amqtt_broker, tmp_path, 2, [janus.url], lambda d, tone: driver(tone, media[d])
    ) as m:
        await create_room(m.op, "g711", RoomMedia.MIXED)
        assert (await m.op.request(ApiOp.JOIN_ALL, ApiRequest(room="g711", timeout_s=20))).ok
        await everyone_hears_the_others(m, m.ids)
        codecs = {i: [s.codec for s in await d.mesh.stats()] for i, d in m.drivers.items()}
        assert {i: [c.lower() for c in v if c] for i, v in codecs.items()} == {
            "dev-1": ["pcmu"],
            "dev-2": ["opus"],
        }
        live = m.server.live["g711"]
        by_pid = {live.members[p].pid: e.codec for p, e in live.bridge.items()}
        assert by_pid == {"dev-1": "pcmu", "dev-2": "opus"}


async def test_mic_false_takes_a_member_out_of_everyones_mix_and_true_puts_it_back(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    async with meeting(amqtt_broker, tmp_path, 3, [janus.url]) as m:
        await create_room(m.op, "quiet", RoomMedia.MIXED)
        for device_id in m.ids:
            muted = device_id == "dev-1"
            joined = await m.op.request(
                ApiOp.JOIN, ApiRequest(device=device_id, room="quiet", mic=not muted)
            )
            assert joined.ok, joined
        live = m.server.live["quiet"]
        bridge = m.server.pool.mixers[0].bridge
        assert bridge is not None
        speaker = next(p for p, mem in live.members.items() if mem.pid == "dev-1")

        async def mixer_says(muted: bool) -> bool:
            listed = {p["id"]: p.get("muted") for p in await bridge.participants(room_of(live))}
            return len(listed) == 3 and listed[speaker] is muted

        await until(lambda: mixer_says(True), 20, "the mixer holds dev-1 muted")
        listeners = ["dev-2", "dev-3"]
        await everyone_hears_the_others(m, listeners)
        await asyncio.sleep(0.5)  # dev-1 would be in the mix by now
        for device_id in listeners:
            assert "dev-1" not in heard(m.drivers[device_id], m.tones)
        assert heard(m.drivers["dev-1"], m.tones) == set(listeners)
        assert m.fleet["dev-1"].current_state().mic is False

        assert (await m.op.request(ApiOp.JOIN, ApiRequest(device="dev-1", room="quiet"))).ok
        await until(lambda: mixer_says(False), 10, "the mixer unmutes dev-1")
        await everyone_hears_the_others(m, m.ids, timeout=10)
        history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="quiet"))).sessions[0]
        kinds = [(e.kind, e.participant) for e in history.events]
        assert ("unmuted", speaker) in kinds


def fleet_sim(
    handle: BrokerHandle, secrets: dict[str, str], home: Path, broker: str | None = None
) -> list[str]:
    """`fleet sim --audio` for these devices, as a command for another process."""
    broker = broker or f"mqtt://{handle.host}:{handle.port}"
    path = home / "secrets.json"
    path.write_text(json.dumps(secrets))
    return [
        sys.executable, "-m", "cli.main", "sim", "--audio", "--devices", str(len(secrets)),
        "--id-prefix", next(iter(secrets)).rsplit("-", 1)[0], "--secrets", str(path),
        "--broker", broker, "--prefix", handle.prefix,
        "--tele-interval", "1", "--codec", "pcmu",
    ]  # fmt: skip


async def test_a_member_whose_process_is_killed_leaves_the_mixer_and_the_history(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    doomed = register_devices(amqtt_broker, 1, prefix="doomed")
    async with meeting(amqtt_broker, tmp_path, 2, [janus.url]) as m:
        await create_room(m.op, "standup", RoomMedia.MIXED)
        assert (await m.op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok
        # A simulated device in a process of its own, to kill.
        proc = subprocess.Popen(fleet_sim(amqtt_broker, doomed, tmp_path), cwd=ROOT)  # noqa: ASYNC220
        try:
            await wait_for(
                lambda: (rec := m.ctl.registry.devices.get("doomed-1")) is not None and rec.online,
                timeout=20,
                what="the doomed device is online",
            )
            joined = await m.op.request(ApiOp.JOIN, ApiRequest(device="doomed-1", room="standup"))
            assert joined.ok, joined
            live = m.server.live["standup"]
            gone = next(p for p, mem in live.members.items() if mem.pid == "doomed-1")
            await wait_for(lambda: gone in live.bridge, timeout=20, what="it joined the mixer")
            bridge = m.server.pool.mixers[0].bridge
            assert bridge is not None

            async def listed() -> set[str]:
                return {p["id"] for p in await bridge.participants(room_of(live))}

            assert gone in await listed()
        finally:
            proc.kill()
            proc.wait(10)

        async def removed() -> bool:
            return gone not in await listed()

        await until(removed, 15, "the killed member is out of the AudioBridge room")
        assert await listed() == set(live.members)  # the two others stay
        history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions[0]
        record = next(p for p in history.participants if p.participant == gone)
        assert record.left is not None
        assert ("mixer_leave", gone) in [(e.kind, e.participant) for e in history.events]
        await everyone_hears_the_others(m, m.ids, timeout=10)


async def test_an_auto_room_growing_past_the_mesh_cap_moves_to_the_mixer_in_session(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    async with meeting(amqtt_broker, tmp_path, 8, [janus.url], mesh_cap=4) as m:
        first, rest = m.ids[:3], m.ids[3:]
        for device_id in first:
            assert (await m.op.request(ApiOp.JOIN, ApiRequest(device=device_id, room="grow"))).ok
        live = m.server.live["grow"]
        assert live.media is MediaPath.MESH
        await wait_for(
            lambda: all(len(m.drivers[i].mesh.peers()) == 2 for i in first), what="a mesh of 3"
        )
        await everyone_hears_the_others(m, first)
        before = {i: (m.fleet[i].meeting.session, m.fleet[i].meeting.participant) for i in first}  # type: ignore[union-attr]
        for device_id in rest:
            assert (await m.op.request(ApiOp.JOIN, ApiRequest(device=device_id, room="grow"))).ok
        assert live.media is MediaPath.MIXED
        await wait_for(
            lambda: all(d.mesh.peers() == [MIXER_PARTICIPANT] for d in m.drivers.values()),
            timeout=20,
            what="every member holds one connection, to the mixer",
        )
        for drv in m.drivers.values():
            fresh_ears(drv)
        await everyone_hears_the_others(m, m.ids)
        # Nobody left: same session, same participant ids, no leave in the history.
        after = {i: (m.fleet[i].meeting.session, m.fleet[i].meeting.participant) for i in first}  # type: ignore[union-attr]
        assert after == before
        history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="grow"))).sessions
        assert len(history) == 1
        assert history[0].media is MediaPath.MIXED
        assert all(p.left is None for p in history[0].participants)
        assert len(history[0].participants) == 8
        changes = [e.detail for e in history[0].events if e.kind == "media"]
        assert changes == ["mesh -> mixed: 4 members past the mesh cap of 4"] or changes == [
            "mesh -> mixed: 5 members past the mesh cap of 4"
        ]
        rooms = (await m.op.request(ApiOp.ROOMS, ApiRequest())).rooms
        assert [(r.media, r.session_media) for r in rooms] == [(RoomMedia.AUTO, MediaPath.MIXED)]


async def test_sessions_spread_over_two_mixers_and_move_when_one_dies(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess, mixed_net: Netns
) -> None:
    recorder = EventRecorder()
    with janus_process(mixed_net, tmp_path / "janus-2", "janus-2") as second:
        async with meeting(
            amqtt_broker, tmp_path, 4, [janus.url, second.url], extra=[recorder]
        ) as m:
            rooms = {"east": m.ids[:2], "west": m.ids[2:]}
            for room, members in rooms.items():
                await create_room(m.op, room, RoomMedia.MIXED)
                for device_id in members:
                    assert (
                        await m.op.request(ApiOp.JOIN, ApiRequest(device=device_id, room=room))
                    ).ok
            placed = {room: m.server.live[room].mixer for room in rooms}
            assert placed == {"east": "janus-1", "west": "janus-2"}
            for members in rooms.values():
                await everyone_hears_the_others(m, members)
            west = m.server.live["west"]
            ids_before = {i: m.fleet[i].meeting.participant for i in rooms["west"]}  # type: ignore[union-attr]

            second.kill()
            await wait_for(
                lambda: west.mixer == "janus-1", timeout=10, what="west moves to janus-1"
            )
            for device_id in rooms["west"]:
                fresh_ears(m.drivers[device_id])
            await everyone_hears_the_others(m, rooms["west"], timeout=20)
            assert m.server.live["west"] is west  # the same session
            assert {i: m.fleet[i].meeting.participant for i in rooms["west"]} == ids_before  # type: ignore[union-attr]
            assert m.server.live["east"].mixer == "janus-1"
            history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="west"))).sessions[0]
            assert history.mixer == "janus-1"
            moves = [e.detail for e in history.events if e.kind == "mixer"]
            assert "janus-2 lost; moved to janus-1" in moves
            assert moves[-1] == "on janus-1 at 16000 Hz"
            assert all(p.left is None for p in history.participants)
            # Fleet events tell the tale: janus-2 went down, and west moved.
            news = [(e.kind, e.op, e.ok) for e in recorder.events if e.kind == "mixer"]
            assert ("mixer", "janus-2", False) in news
            moved = [e for e in recorder.events if e.kind == "media" and e.room == "west"]
            assert [e.detail for e in moved] == ["janus-2 lost; moved to janus-1"]


async def test_a_session_whose_only_mixer_dies_waits_and_moves_when_one_is_back(
    amqtt_broker: BrokerHandle, tmp_path: Path, mixed_net: Netns
) -> None:
    with janus_process(mixed_net, tmp_path / "j-a") as first:
        async with meeting(amqtt_broker, tmp_path, 2, [first.url]) as m:
            await create_room(m.op, "solo", RoomMedia.MIXED)
            assert (await m.op.request(ApiOp.JOIN_ALL, ApiRequest(room="solo"))).ok
            await everyone_hears_the_others(m, m.ids)
            live = m.server.live["solo"]
            first.kill()
            await wait_for(lambda: live.mixer is None, what="the session has no mixer")
            parts = [d.participant for d in m.drivers.values()]
            await wait_for(
                lambda: all(
                    p and "mixer_unavailable" in p.peer_errors.get("mixer", "") for p in parts
                ),
                what="members are told",
            )
            with janus_process(
                mixed_net,
                tmp_path / "j-b",
                ws_port=first.config.ws_port,
                api_secret=first.api_secret,
            ):
                await wait_for(lambda: live.mixer == "janus-1", timeout=15, what="back on janus-1")
                for drv in m.drivers.values():
                    fresh_ears(drv)
                await everyone_hears_the_others(m, m.ids, timeout=20)
                assert m.server.live["solo"] is live


# --- a mixer that is missing, silent or talking nonsense ----------------------------------


@contextlib.asynccontextmanager
async def signalling_only(
    handle: BrokerHandle, tmp_path: Path, mixers: Sequence[str], **server: object
) -> AsyncIterator[tuple[MeetingServer, FleetClient, Callable[[str], object]]]:
    """A controller with these mixers, an operator, and signalling-only participants."""
    # Rooms by first join: these scenarios are about media, not who may make rooms.
    meetings = MeetingServer(mixers=list(mixers), auto_create=True, **server)  # type: ignore[arg-type]
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(controller(handle, tmp_path / "c.db", parts=[meetings]))
        op = await stack.enter_async_context(operator(handle))

        async def member(pid: str) -> LocalParticipant:
            url = BrokerUrl.parse(handle.url(pid, handle.add_device(pid)))
            return await stack.enter_async_context(participant_link(url, pid, handle.topics))

        await meetings.pool.wait_ready()
        yield meetings, op, member


async def test_without_a_mixer_a_mixed_join_says_how_to_install_one_and_mesh_works(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with signalling_only(amqtt_broker, tmp_path, [], mesh_cap=2) as (server, op, member):
        await create_room(op, "big", RoomMedia.MIXED)
        ann, bob, cid = await member("ann"), await member("bob"), await member("cid")
        with pytest.raises(MeetingRefused) as refused:
            await ann.join("big")
        assert refused.value.code == "mixer_unavailable"
        assert "apt-get install janus" in refused.value.detail
        assert ann.session is None
        # Mesh rooms go on; an auto room past the mesh cap is refused the same way.
        assert (await ann.join("small")).media is MediaPath.MESH
        assert [p.participant for p in (await bob.join("small")).peers] == [ann.participant]
        with pytest.raises(MeetingRefused) as past_cap:
            await cid.join("small")
        assert past_cap.value.code == "mixer_unavailable"
        assert "mesh cap of 2" in past_cap.value.detail
        assert len(server.live["small"].members) == 2


async def test_a_member_that_holds_one_peer_moves_an_auto_session_to_the_mixer(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    async with signalling_only(amqtt_broker, tmp_path, [janus.url]) as (_server, op, member):
        ann, bob, cid = await member("ann"), await member("bob"), await member("cid")
        cid.caps = Capabilities(audio=True, mic=True, speaker=True, codecs=["pcmu"], max_peers=1)
        assert (await ann.join("pair")).media is MediaPath.MESH
        assert (await bob.join("pair")).media is MediaPath.MESH
        # cid holds one connection: a mesh of three would need two.
        joined = await cid.join("pair")
        assert joined.media is MediaPath.MIXED
        assert [p.participant for p in joined.peers] == [MIXER_PARTICIPANT]
        await wait_for(
            lambda: ann.media is MediaPath.MIXED and bob.media is MediaPath.MIXED,
            what="the others are told to move to the mixer",
        )
        assert list(ann.peers) == list(bob.peers) == [MIXER_PARTICIPANT]
        assert ann.session == bob.session == cid.session
        history = (await op.request(ApiOp.SESSIONS, ApiRequest(room="pair"))).sessions[0]
        (change,) = [e.detail for e in history.events if e.kind == "media"]
        assert change == "mesh -> mixed: 3 members past the mesh cap of 2"


@pytest.mark.parametrize("behaviour", ["silent", "garbage", "not-json"])
async def test_a_mixer_that_answers_nonsense_or_nothing_fails_the_join_clearly(
    amqtt_broker: BrokerHandle, tmp_path: Path, behaviour: str
) -> None:
    async with (
        fake_mixer(behaviour) as url,
        signalling_only(amqtt_broker, tmp_path, [url], mixer_timeout=1.0) as (server, op, member),
    ):
        await create_room(op, "big", RoomMedia.MIXED)
        ann = await member("ann")
        async with asyncio.timeout(5):  # a join result, never a hang
            with pytest.raises(MeetingRefused) as refused:
                await ann.join("big")
        assert refused.value.code == "mixer_failed", refused.value
        expected = {
            "silent": "no answer to 'create' within 1s",
            "garbage": "answered without plugin data",
            "not-json": "no answer to 'create' within 1s",
        }[behaviour]
        assert expected in refused.value.detail
        assert "big" not in server.live
        assert (await ann.join("mesh-room")).media is MediaPath.MESH


async def test_bad_signalling_to_the_mixer_is_refused_and_breaks_nothing(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    async with signalling_only(amqtt_broker, tmp_path, [janus.url]) as (server, op, member):
        await create_room(op, "big", RoomMedia.MIXED)
        ann, bob = await member("ann"), await member("bob")
        await bob.send(MeetOffer(type="offer", to=MIXER_PARTICIPANT, sdp="v=0\r\n"))
        joined = await ann.join("big")
        assert joined.media is MediaPath.MIXED
        assert [(p.participant, p.pid) for p in joined.peers] == [(MIXER_PARTICIPANT, "janus-1")]
        bad = [
            MeetAnswer(type="answer", to=MIXER_PARTICIPANT, sdp="v=0\r\n"),
            MeetOffer(type="offer", to=MIXER_PARTICIPANT, sdp="v=0\r\nthis is not sdp"),
            MeetOffer(type="offer", to=MIXER_PARTICIPANT, sdp="v=0\r\nm=video 9 RTP/AVP 0\r\n"),
        ]
        for message in bad:
            await ann.send(message)
        await bob.join("mesh")
        await bob.send(MeetOffer(type="offer", to=MIXER_PARTICIPANT, sdp="v=0\r\n"))
        await wait_for(lambda: len(ann.errors) == 3 and len(bob.errors) == 2, what="refusals")
        assert [e.code for e in ann.errors] == ["bad_request"] * 3
        assert "never offers" in ann.errors[0].detail
        assert [e.code for e in bob.errors] == ["not_in_session", "unknown_participant"]
        # Nothing reached the mixer, and ann is still in her session.
        live = server.live["big"]
        assert live.bridge == {}
        assert (await op.request(ApiOp.ROOMS, ApiRequest())).rooms[0].members == 1
        assert ann.session == live.id


# --- a member behind a bad network ----------------------------------------------------------


def hearing(samples: list[Telemetry]) -> list[PeerAudioStats]:
    """The audio stats of every sample since the first packets arrived."""
    stats = [tele.audio[0] for tele in samples]
    first = next((n for n, s in enumerate(stats) if s.packets_received > 0), len(stats))
    return stats[first:]


# As `tc netem delay 50ms 50ms loss 10%` would (this kernel has no netem): tests/support/impair.py.
LOSSY = Impairment(loss=0.10, delay_s=0.050, jitter_s=0.050)


async def test_a_member_behind_loss_and_jitter_keeps_hearing_and_its_telemetry_shows_it(
    amqtt_broker: BrokerHandle,
    tmp_path: Path,
    janus: JanusProcess,
    mixed_net: Netns,
    influx1: Influx1,
) -> None:
    influx1.create_database(DB)
    ingest = TelemetryIngest(fast_settings(influx1.url, version=1, database=DB, bucket=None))
    link = mixed_net.peer_namespace("l")
    secrets = register_devices(amqtt_broker, 2)
    lossy = register_devices(amqtt_broker, 1, prefix="lossy")
    watcher = amqtt_broker.add_user("watcher", Role.CONTROLLER)
    meetings = MeetingServer(mixers=[janus.url], auto_create=True)
    samples: list[Telemetry] = []
    async with (
        contextlib.AsyncExitStack() as stack,
        controller(amqtt_broker, tmp_path / "c.db", parts=[meetings, ingest]),
        sim_fleet(amqtt_broker, secrets, driver_factory=audio_drivers(list(secrets))) as fleet,
        operator(amqtt_broker) as op,
        tcp_forward(link.gateway, (amqtt_broker.host, amqtt_broker.port)) as port,
        mqtt_client(amqtt_broker, "watcher", watcher) as watch,
    ):
        stack.enter_context(impaired(mixed_net, link, LOSSY))
        await meetings.pool.wait_ready()
        await watch.subscribe(amqtt_broker.topics.tele("lossy-1"), qos=0)
        await create_room(op, "flaky", RoomMedia.MIXED)
        assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="flaky", timeout_s=20))).ok
        # The lossy member: its own process in the other namespace, its group desired
        # state (join-all) waiting for it.
        command = fleet_sim(amqtt_broker, lossy, tmp_path, f"mqtt://{link.gateway}:{port}")
        proc = subprocess.Popen(["ip", "netns", "exec", link.netns, *command], cwd=ROOT)  # noqa: ASYNC220
        try:

            async def collect() -> None:
                async for message in watch.messages:
                    tele = decode(Telemetry, payload_bytes(message))
                    if tele.meeting and tele.audio:
                        samples.append(tele)

            reader = asyncio.create_task(collect())
            try:
                await wait_for(
                    lambda: len(hearing(samples)) >= 5, timeout=60, what="5 s of audio telemetry"
                )
            finally:
                reader.cancel()
        finally:
            proc.kill()
            proc.wait(10)
        live = meetings.live["flaky"]
        # It keeps hearing the mix: a level from the mixer in every sample once connected.
        stats = hearing(samples)
        assert {s.peer for s in stats} == {MIXER_PARTICIPANT}
        assert all((s.level or 0) > 0.05 for s in stats), stats
        received = [s.packets_received for s in stats]
        assert received == sorted(received)
        assert received[-1] > received[0]
        # Its loss and jitter, from its own telemetry.
        loss = sum(s.loss or 0 for s in stats) / len(stats)
        jitter = sum(s.jitter_ms or 0 for s in stats) / len(stats)
        assert 0.04 < loss < 0.25, loss
        assert jitter > 10, jitter
        assert LOSSY.counts["dropped"] > 0
        # The others, on a clean link, hear the mix with no loss to speak of.
        clean = [s for d in fleet.devices for s in d.telemetry().audio]
        assert all((s.loss or 0) < 0.02 for s in clean), clean
        await wait_for(ingest.flushed.is_set, 10, "telemetry written")
    # The meeting-quality panels show it (Grafana's queries, variables filled in).
    board = json.loads((ROOT / "dashboards" / "meeting-quality.json").read_text())
    now_ms = int(time.time() * 1000)
    shown: dict[str, float] = {}
    for title, query in queries_of(board):
        filled = fill(query, {"room": "flaky", "session": live.id}, now_ms - 600_000, now_ms)
        result = influx1.query(filled, DB)["results"][0]
        assert "error" not in result, f"{title}: {result['error']}"
        for series in result.get("series", []):
            if series.get("tags", {}).get("peer") == MIXER_PARTICIPANT and title in (
                "panel 'Packet loss'",
                "panel 'Jitter'",
            ):
                values = [v[1] for v in series["values"] if v[1] is not None]
                shown[title] = max(shown.get(title, 0.0), max(values, default=0.0))
    assert shown["panel 'Packet loss'"] > 0.04, shown
    assert shown["panel 'Jitter'"] > 10, shown


async def test_a_mesh_session_whose_mixer_refuses_the_room_stays_a_mesh(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with (
        fake_mixer("no-rooms") as url,
        signalling_only(amqtt_broker, tmp_path, [url], mesh_cap=2) as (server, op, member),
    ):
        ann, bob, cid = await member("ann"), await member("bob"), await member("cid")
        await ann.join("pair")
        await bob.join("pair")
        with pytest.raises(MeetingRefused) as refused:
            await cid.join("pair")
        assert refused.value.code == "mixer_failed"
        assert "no rooms today" in refused.value.detail
        await wait_for(lambda: ann.errors and bob.errors, what="the members hear why")
        assert [(e.code, e.from_) for e in ann.errors] == [("mixer_failed", MIXER_PARTICIPANT)]
        live = server.live["pair"]
        assert (live.media, list(live.members)) == (MediaPath.MESH, ["p-1", "p-2"])
        assert ann.media is MediaPath.MESH
        assert list(ann.peers) == [bob.participant]
        history = (await op.request(ApiOp.SESSIONS, ApiRequest(room="pair"))).sessions[0]
        assert history.media is MediaPath.MESH
        assert [e.detail for e in history.events if e.kind == "media"][-1].startswith(
            "stays mesh: mixer janus-1: 'create' refused: 490 no rooms today"
        )


# --- fleet up's own mixer --------------------------------------------------------------------


async def test_the_stack_runs_a_local_janus_and_its_mixed_rooms_meet(
    tmp_path: Path, mixed_net: Netns
) -> None:
    config = StackConfig(home=tmp_path / "home", devices=2, port=free_port(), tele_interval_s=60)
    async with running_stack(config) as stack:
        await stack.wait_ready()
        assert stack.mixer_url is not None
        assert (tmp_path / "home" / "janus" / "janus.jcfg").exists()
        cli = ("--broker", str(stack.operator_url), "--prefix", config.prefix)
        code, out, err = await fleet(
            "rooms", "create", "standup", "--media", "mixed", "--rate", "48000", *cli, home=tmp_path
        )
        assert code == 0, err
        assert "mixed" in out
        assert "48 kHz" in out
        async with FleetClient(stack.operator_url, Topics(config.prefix)) as op:
            assert (await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))).ok
            drivers = {d.id: d.driver for d in stack.fleet.devices}
            tones = {device_id: tone_for(n) for n, device_id in enumerate(drivers)}
            await wait_for(
                lambda: all(
                    heard(drv, tones) == set(tones) - {i}  # type: ignore[arg-type]
                    for i, drv in drivers.items()
                ),
                timeout=20,
                what="both hear each other through the local mixer",
            )
            history = (await op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions
            assert history[0].mixer == "janus-1"
            code, out, err = await fleet("sessions", "standup", *cli, home=tmp_path)
            assert code == 0, err
            assert "mixed (janus-1)" in out
            assert "on janus-1 at 48000 Hz" in out
        port = int(stack.mixer_url.rsplit(":", 1)[1])
    with socket.socket() as sock:  # Janus stopped with the stack
        assert sock.connect_ex(("127.0.0.1", port)) != 0


async def test_without_janus_installed_the_stack_runs_without_a_mixer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleet.mixer.process.janus_binary", lambda: None)
    async with maybe_local_janus(tmp_path) as url:
        assert url is None
    with pytest.raises(MixerUnavailable, match="apt-get install janus"):
        require_janus()
