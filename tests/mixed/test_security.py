"""The mixer is the meeting server's alone, and a room taken from under it comes back.

With a real Janus in a network namespace of the module's own: a client without the
run's API secret (anyone else on the machine, or a web page through a browser) can
neither list, join nor destroy a room; even with the API secret a room wants its own
pin and secret, which only the server holds, and admits no plain-RTP member. A room
destroyed behind the server's back, or a mixer that stops answering, is noticed within
seconds and the session moves, with audio back (checked by FFT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from fleet.client import FleetClient
from fleet.device.audio import AudioMeetingDriver, AudioProfile, tone_for
from fleet.device.sim import SimFleet
from fleet.media.config import MediaConfig
from fleet.media.sinks import CaptureSink, FanoutSink
from fleet.meetings import MeetingServer
from fleet.meetings.participant import participant_link
from fleet.meetings.session import Session
from fleet.mixer.address import CLIENT_ORIGIN, MixerAddress
from fleet.mixer.audiobridge import AudioBridge
from fleet.mixer.janus import JanusConnection
from fleet.mixer.process import JanusProcess
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import MIXER_PARTICIPANT, ApiOp, ApiRequest, MediaPath, RoomMedia
from tests.support.brokers import BrokerHandle
from tests.support.databases import EventRecorder
from tests.support.mixers import janus_process
from tests.support.netns import Netns
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for

pytestmark = pytest.mark.timeout(180)

G711 = MediaConfig(codecs=("pcmu",))
AMPLITUDE = 0.12


@dataclass
class Meeting:
    server: MeetingServer
    fleet: SimFleet
    op: FleetClient
    ids: list[str]
    tones: dict[str, float]
    recorder: EventRecorder

    @property
    def drivers(self) -> dict[str, AudioMeetingDriver]:
        return {d.id: d.driver for d in self.fleet.devices}  # type: ignore[misc]


@contextlib.asynccontextmanager
async def mixed_meeting(
    handle: BrokerHandle, tmp_path: Path, mixers: Sequence[str], count: int = 2
) -> AsyncIterator[Meeting]:
    """`count` audio devices in the mixed room "standup", on these mixers."""
    secrets = register_devices(handle, count)
    ids = list(secrets)
    tones = {device_id: tone_for(n) for n, device_id in enumerate(ids)}
    recorder = EventRecorder()
    server = MeetingServer(mixers=list(mixers))
    profile = {
        d: AudioProfile(media=G711, tone_hz=tones[d], tone_amplitude=AMPLITUDE, keep_s=2.0)
        for d in ids
    }
    async with (
        controller(handle, tmp_path / "ctl.db", parts=[server, recorder]),
        sim_fleet(handle, secrets, driver_factory=lambda d: AudioMeetingDriver(profile[d])) as fl,
        operator(handle) as op,
    ):
        await server.pool.wait_ready()
        made = await op.request(
            ApiOp.ROOM_CREATE, ApiRequest(room="standup", media=RoomMedia.MIXED)
        )
        assert made.ok, made
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=30))
        assert joined.ok, joined
        meeting = Meeting(server, fl, op, ids, tones, recorder)  # type: ignore[arg-type]
        await everyone_hears_the_others(meeting)
        yield meeting


def heard(drv: AudioMeetingDriver, tones: dict[str, float]) -> set[str]:
    return {
        pid
        for peer in drv.heard.peers()
        for pid, f in tones.items()
        if drv.hears_tone(peer, f, 1.0)
    }


async def everyone_hears_the_others(m: Meeting, timeout: float = 30) -> None:
    def check() -> bool:
        return all(heard(m.drivers[i], m.tones) == set(m.ids) - {i} for i in m.ids)

    await wait_for(check, timeout=timeout, what="each device hears the other through the mixer")


def fresh_ears(m: Meeting) -> None:
    """Forget what was heard so far: what follows is only what arrives from now on."""
    for drv in m.drivers.values():
        drv.heard = CaptureSink(keep_s=2.0)
        drv.mesh.sink = FanoutSink(drv.levels, drv.heard)


def room_of(live: Session) -> str:
    assert live.mixer_room is not None
    return live.mixer_room.id


class RawJanus:
    """A client of Janus's WebSocket API that knows only what it is told: an outsider."""

    def __init__(self, ws: Any, secret: str | None) -> None:
        self.ws = ws
        self.secret = secret
        self.n = 0
        self.session: int | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, secret: str | None = None, origin: str | None = CLIENT_ORIGIN
    ) -> AsyncIterator[RawJanus]:
        async with websockets.connect(
            url,
            subprotocols=["janus-protocol"],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            open_timeout=5,
        ) as ws:
            yield cls(ws, secret)

    async def ask(self, message: dict[str, Any], handle: int | None = None) -> dict[str, Any]:
        self.n += 1
        body = {**message, "transaction": f"t{self.n}"}
        if self.secret is not None:
            body["apisecret"] = self.secret
        if self.session is not None:
            body["session_id"] = self.session
        if handle is not None:
            body["handle_id"] = handle
        await self.ws.send(json.dumps(body))
        async with asyncio.timeout(5):
            while True:
                answer: dict[str, Any] = json.loads(await self.ws.recv())
                if answer.get("transaction") == body["transaction"] and answer["janus"] != "ack":
                    return answer

    async def plugin(self, request: dict[str, Any], handle: int) -> dict[str, Any]:
        answer = await self.ask({"janus": "message", "body": request}, handle)
        data: dict[str, Any] = answer["plugindata"]["data"]
        return data


async def test_an_outsider_can_neither_list_join_nor_destroy_a_mixed_room(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    address = MixerAddress.parse(janus.url)
    assert address.api_secret
    assert address.url == janus.config.url
    async with mixed_meeting(amqtt_broker, tmp_path, [janus.url]) as m:
        live = m.server.live["standup"]
        room = room_of(live)
        # The room's name says nothing of the session that state reports show.
        assert live.id.removeprefix("s-") not in room

        # A web page, through a visitor's browser: another Origin, or none, is refused.
        for origin in ("http://evil.example", None):
            with pytest.raises(websockets.exceptions.InvalidMessage):
                async with RawJanus.connect(address.url, origin=origin):
                    pass
        # Anyone else on the machine: no API secret, no session, nothing at all.
        async with RawJanus.connect(address.url) as outsider:
            refused = await outsider.ask({"janus": "create"})
            assert refused["error"]["code"] == 403
            refused = await outsider.ask({"janus": "attach", "plugin": "janus.plugin.audiobridge"})
            assert refused["janus"] == "error"
        async with RawJanus.connect(address.url, secret="guess") as guesser:
            assert (await guesser.ask({"janus": "create"}))["janus"] == "error"

        # Even with the API secret, a room wants the server's own pin and secret.
        async with RawJanus.connect(address.url, secret=address.api_secret) as insider:
            insider.session = (await insider.ask({"janus": "create"}))["data"]["id"]
            handle = (await insider.ask({"janus": "attach", "plugin": "janus.plugin.audiobridge"}))[
                "data"
            ]["id"]
            assert (await insider.plugin({"request": "list"}, handle))["list"] == []
            for name in (live.id, room):
                join = {"request": "join", "room": name, "id": "eve", "display": "eve"}
                refused = await insider.plugin(join, handle)
                assert "error_code" in refused, refused
                refused = await insider.plugin({**join, "pin": "0000"}, handle)
                assert "error_code" in refused, refused
                rtp = {**join, "rtp": {"ip": "127.0.0.1", "port": 9}}
                assert "error_code" in await insider.plugin(rtp, handle)
                for destroy in ({}, {"secret": "guess"}):
                    body = {"request": "destroy", "room": name, **destroy}
                    assert "error_code" in await insider.plugin(body, handle)
            made = {"request": "create", "room": "m-eve", "is_private": False}
            assert "error_code" in await insider.plugin(made, handle)

        # Nothing of it touched the meeting.
        assert m.server.live["standup"] is live
        assert room_of(live) == room
        fresh_ears(m)
        await everyone_hears_the_others(m, timeout=10)


async def destroy_behind_its_back(janus: JanusProcess, live: Session) -> None:
    """Destroy the session's room as someone holding its secret would, on a connection of
    our own: the meeting server is not told."""
    address = MixerAddress.parse(janus.url)
    assert live.mixer_room is not None
    async with JanusConnection(address.url, "intruder", api_secret=address.api_secret) as conn:
        await AudioBridge(conn, admin_key=address.api_secret).destroy_room(live.mixer_room)


async def test_a_room_destroyed_behind_the_servers_back_moves_its_session_with_audio_back(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    async with mixed_meeting(amqtt_broker, tmp_path, [janus.url]) as m:
        live = m.server.live["standup"]
        before = room_of(live)
        participants = {d.id: d.meeting.participant for d in m.fleet.devices if d.meeting}
        await destroy_behind_its_back(janus, live)
        await wait_for(
            lambda: live.mixer_room is not None and live.mixer_room.id != before,
            timeout=5,
            what="the session moves to a new room",
        )
        fresh_ears(m)
        await everyone_hears_the_others(m, timeout=20)
        # The same session and members; the history and the fleet's events say why.
        assert m.server.live["standup"] is live
        assert {d.id: d.meeting.participant for d in m.fleet.devices if d.meeting} == participants
        assert all(d.mesh.peers() == [MIXER_PARTICIPANT] for d in m.drivers.values())
        history = (await m.op.request(ApiOp.SESSIONS, ApiRequest(room="standup"))).sessions[0]
        moves = [e.detail for e in history.events if e.kind == "mixer"]
        assert "room destroyed on janus-1; moved to janus-1" in moves
        assert all(p.left is None for p in history.participants)
        media = [e.detail for e in m.recorder.events if e.kind == "media"]
        assert media == ["room destroyed on janus-1; moved to janus-1"]


async def test_a_room_destroyed_before_anyone_reached_it_is_noticed_by_the_periodic_check(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess
) -> None:
    server = MeetingServer(mixers=[janus.url])
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db", parts=[server]),
        operator(amqtt_broker) as op,
    ):
        await server.pool.wait_ready()
        made = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="quiet", media=RoomMedia.MIXED))
        assert made.ok, made
        url = BrokerUrl.parse(amqtt_broker.url("ann", amqtt_broker.add_device("ann")))
        async with participant_link(url, "ann", amqtt_broker.topics) as ann:
            joined = await ann.join("quiet")  # signalling only: no offer, no handle on Janus
            assert joined.media is MediaPath.MIXED
            live = server.live["quiet"]
            assert live.ready is not None
            await asyncio.wait_for(asyncio.shield(live.ready), 10)
            before = room_of(live)
            await destroy_behind_its_back(janus, live)
            await wait_for(
                lambda: live.mixer_room is not None and live.mixer_room.id != before,
                timeout=6,
                what="the periodic check notices the room is gone",
            )
            bridge = server.pool.mixers[0].bridge
            assert bridge is not None
            await asyncio.wait_for(asyncio.shield(live.ready), 10)
            assert room_of(live) in await bridge.rooms()
            history = (await op.request(ApiOp.SESSIONS, ApiRequest(room="quiet"))).sessions[0]
            moves = [e.detail for e in history.events if e.kind == "mixer"]
            assert "room gone from janus-1; moved to janus-1" in moves
            assert [p.pid for p in history.participants if p.left is None] == ["ann"]


async def test_a_mixer_that_stops_answering_loses_its_sessions_to_another(
    amqtt_broker: BrokerHandle, tmp_path: Path, janus: JanusProcess, mixed_net: Netns
) -> None:
    with janus_process(mixed_net, tmp_path / "janus-2", "janus-2") as second:
        # The second mixer first: the session goes to it.
        async with mixed_meeting(amqtt_broker, tmp_path, [second.url, janus.url]) as m:
            live = m.server.live["standup"]
            assert live.mixer == "janus-1"  # the pool's first: the second Janus process
            os.kill(second.pid, signal.SIGSTOP)  # alive, its socket open, answering nothing
            try:
                await wait_for(
                    lambda: live.mixer == "janus-2", timeout=15, what="the session moves"
                )
                fresh_ears(m)
                await everyone_hears_the_others(m, timeout=20)
                assert m.server.live["standup"] is live
                news = [(e.kind, e.op, e.ok) for e in m.recorder.events if e.kind == "mixer"]
                assert ("mixer", "janus-1", False) in news
            finally:
                os.kill(second.pid, signal.SIGCONT)
