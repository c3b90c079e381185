"""What a misbehaving device, a careless API client or a race must not break: the rev
counter, expiry, retained requests, memory bounds, the audit log, reported convergence
and negotiation failures. Each runs on amqtt and Mosquitto
where the broker matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from brokers import BrokerHandle, mqtt_client
from running import (
    OPERATOR,
    controller,
    operator,
    operator_url,
    register_devices,
    sim_fleet,
    wait_for,
)

from fleet.auth import Role
from fleet.controller import api, inbound, service
from fleet.controller.store import REV_CEILING
from fleet.device.sim import MeetingDriver, SimDeviceConfig, SimulatedDevice
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.media.config import MediaConfig
from fleet.media.mesh import MediaMesh
from fleet.media.sinks import CaptureSink
from fleet.meetings import MeetingServer
from fleet.meetings.participant import LocalParticipant, participant_link
from fleet.mqtt import BrokerUrl, payload_bytes
from fleet.protocol import TopicKind, decode, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    Desired,
    DeviceOutcome,
    MeetingIntent,
    MeetingState,
    MeetJoin,
    MeetOffer,
    State,
    Status,
    Sync,
)

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@contextlib.asynccontextmanager
async def wire(handle: BrokerHandle) -> AsyncIterator[aiomqtt.Client]:
    """A raw client with the operator's (controller-role) rights."""
    url = operator_url(handle)
    async with mqtt_client(
        handle, OPERATOR, url.password, client_id=f"{OPERATOR}-wire-{time.time_ns()}"
    ) as c:
        yield c


async def retained(handle: BrokerHandle, topic: str) -> list[bytes]:
    """What a new subscriber to `topic` is given before a marker published after it
    subscribed: the retained message, if there is one (the marker proves the wait)."""
    marker = b"marker-%d" % time.time_ns()
    got: list[bytes] = []
    async with wire(handle) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, marker, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                payload = payload_bytes(message)
                if payload == marker:
                    return got
                got.append(payload)
    return got


# --- device-reported revs never move the counter -----------------------------------------------


async def test_a_device_reporting_the_ceiling_rev_stops_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 3)
    rogue = secrets.pop("dev-3")
    t = any_broker.topics
    async with sim_fleet(any_broker, secrets) as fleet, operator(any_broker) as op:
        # dev-3 misbehaves: it retains a state at the highest rev a controller believes.
        async with mqtt_client(any_broker, "dev-3", rogue) as c:
            await c.publish(t.status("dev-3"), encode(Status(online=True)), qos=1, retain=True)
            forged = encode(State(rev=REV_CEILING, meeting=None))
            await c.publish(t.state("dev-3"), forged, qos=1, retain=True)
        # A controller re-reading the fleet (a restart) must not take the rev from it.
        async with controller(any_broker, tmp_path / "ctl.db") as ctl:
            await wait_for(lambda: ctl.synced, what="synced")
            assert ctl.registry.devices["dev-3"].rev == REV_CEILING
            assert ctl.store.last_rev() < REV_CEILING - 2**40
            lapsing = await op.request(
                ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=0.5, timeout_s=3)
            )
            assert lapsing.rev is not None
            assert fleet["dev-1"].meeting is not None
            left = await op.request(ApiOp.LEAVE, ApiRequest(device="dev-1"))
            assert left.ok, left.detail
            await wait_for(lambda: fleet["dev-2"].meeting is None, what="the lapse")
            await asyncio.sleep(3 * service.TICK_S)  # ticks after the lapse ran
            again = await op.request(ApiOp.JOIN, ApiRequest(device="dev-2", room="retro"))
            assert again.ok, "the controller still serves after the lapse"
            assert fleet["dev-2"].meeting is not None


async def test_a_rev_at_the_ceiling_refuses_intents_but_never_stops_the_controller(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    """A desired doc (only controller-role users write them) may raise the counter, even to
    the ceiling: then intents are refused with a clear error, and a pending lapse that can
    get no rev leaves the controller running."""
    secrets = register_devices(amqtt_broker, 2)
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(amqtt_broker, secrets),
        operator(amqtt_broker) as op,
        wire(amqtt_broker) as w,
    ):
        pending = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=0.6))
        assert pending.ok
        doc = {"rev": REV_CEILING, "meeting": None}
        await w.publish(amqtt_broker.topics.group_desired("x"), json.dumps(doc), qos=1, retain=True)
        await wait_for(lambda: ctl.store.last_rev() == REV_CEILING, what="floor raised")
        refused = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro"))
        assert (refused.ok, refused.code) == (False, "failed")
        assert "ceiling" in refused.detail
        await asyncio.sleep(0.6 + 3 * service.TICK_S)  # the lapse is due and ticks run past it
        rooms = await op.request(ApiOp.ROOMS, ApiRequest())
        assert rooms.ok, "the controller still answers"


# --- expiry is one change that a newer intent beats --------------------------------------------


async def test_joins_during_an_expiry_are_never_undone(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 200)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(any_broker, secrets, engine="bulk") as fleet,
        operator(any_broker) as op,
        wire(any_broker) as w,
    ):
        lapsing = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=1.0))
        assert lapsing.ok, lapsing.detail
        assert lapsing.until is not None
        # Around the lapse, one device after another is told to join a room of its own:
        # each is that device's last intent, whenever it lands in the expiry.
        await asyncio.sleep(max(0.0, lapsing.until - time.time() - 0.15))
        pinned = [f"dev-{n}" for n in range(1, 200, 3)]
        for device_id in pinned:
            request = ApiRequest(id=f"pin-{device_id}", device=device_id, room="focus")
            await w.publish(any_broker.topics.api("join"), encode(request), qos=1)
            await asyncio.sleep(0.006)
        await wait_for(
            lambda: all((d.meeting is None) == (d.id not in pinned) for d in fleet.devices),
            timeout=20,
            what="pinned devices in focus, the rest out",
        )
        await asyncio.sleep(4 * service.TICK_S)  # a late leave would land by now: check again
        await op.sync()
        stray = [
            d.id
            for d in fleet.devices
            if (d.meeting.room if d.meeting else None) != ("focus" if d.id in pinned else None)
        ]
        assert stray == [], f"{len(stray)} devices not in their last intent: {stray[:8]}"
        # The lapsed doc stays, ended, where a device that comes back will find it.
        assert ctl.store.desired_rev("grp", "all") == lapsing.rev
        assert ctl.store.ended_revs() == {lapsing.rev}
        kept = await retained(any_broker, any_broker.topics.group_desired("all"))
        assert [decode(Desired, doc).rev for doc in kept] == [lapsing.rev]


async def test_a_device_unknown_at_a_lapse_never_falls_back_to_an_older_intent(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """A device the controller has never seen (off during both intents) comes up after an
    intent lapsed: it must not fall back to the older intent the lapsed one outranked. With a
    set clock it stays out at the lapsed rev; without one (a board before SNTP) it joins the
    lapsed meeting and is told to leave."""
    t = any_broker.topics
    secrets = register_devices(any_broker, 3, groups=("kitchen",))
    late = {"dev-3": secrets.pop("dev-3")}
    async with (
        sim_fleet(any_broker, secrets, groups=("kitchen",)) as fleet,
        operator(any_broker) as op,
        controller(any_broker, tmp_path / "ctl.db") as ctl,
    ):
        older = await op.request(ApiOp.JOIN_ALL, ApiRequest(group="kitchen", room="retro"))
        assert older.ok, older.detail
        lapsing = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", for_s=0.5))
        assert lapsing.ok, lapsing.detail
        assert lapsing.rev is not None
        await wait_for(lambda: lapsing.rev in ctl.store.ended_revs(), what="the lapse")
        await wait_for(lambda: all(d.meeting is None for d in fleet.devices), what="all out")
        assert "dev-3" not in ctl.registry.devices

        base = BrokerUrl.parse(f"mqtt://{any_broker.host}:{any_broker.port}")
        config = SimDeviceConfig("dev-3", late["dev-3"], ["kitchen"], 30.0)
        for clock_set in (True, False):
            dev = SimulatedDevice(config, base, t)
            dev.clock_set = clock_set
            task = asyncio.create_task(dev.run())
            try:
                await wait_for(lambda d=dev: d.reported_rev > 0, what="dev-3 applies a doc")
                applied = dev.reconciler.applied.rev
                assert applied >= lapsing.rev, f"fell back to rev {applied}"
                if clock_set:
                    assert dev.meeting is None
                    assert dev.reported_rev == lapsing.rev
                else:
                    # It joined the lapsed meeting: the controller sees it there.
                    await wait_for(
                        lambda d=dev: d.meeting is None and d.reported_rev > lapsing.rev,
                        what="the leave for a device in an ended intent's meeting",
                    )
                    assert ctl.store.desired_rev("dev", "dev-3") == dev.reported_rev
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


# --- retained requests are refused and cleared -------------------------------------------------


async def test_retained_requests_and_signalling_are_refused_and_cleared(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    secrets = register_devices(any_broker, 3)
    ghost_secret = any_broker.add_device("ghost")
    ha_secret = any_broker.add_user("ha", Role.HOMEASSISTANT)
    ha = HomeAssistantPart(HomeAssistantSettings())
    async with sim_fleet(any_broker, secrets) as fleet, operator(any_broker) as op:
        async with controller(any_broker, tmp_path / "ctl.db", parts=[MeetingServer(), ha]):
            joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))
            assert joined.ok
        # While no controller runs: a retained leave-all, a retained Home Assistant
        # leave-all press, and an offline device's retained join.
        async with wire(any_broker) as w:
            await w.publish(t.api("leave-all"), b'{"id": "stale-leave"}', qos=1, retain=True)
        async with mqtt_client(any_broker, "ha", ha_secret) as h:
            await h.publish(t.ha_fleet_set("leave_all"), b"PRESS", qos=1, retain=True)
        async with mqtt_client(any_broker, "ghost", ghost_secret) as g:
            join = encode(MeetJoin(type="join", room="standup"))
            await g.publish(t.meet_up("ghost"), join, qos=1, retain=True)
        results: list[ApiResult] = []
        async with wire(any_broker) as w:
            await w.subscribe(t.api_result, qos=1)

            async def read() -> None:
                async for message in w.messages:
                    results.append(decode(ApiResult, payload_bytes(message)))

            reader = asyncio.create_task(read())
            ha = HomeAssistantPart(HomeAssistantSettings())
            meetings = MeetingServer()
            async with controller(any_broker, tmp_path / "ctl.db", parts=[meetings, ha]) as ctl:
                await wait_for(lambda: ctl.synced, what="synced")
                await wait_for(lambda: any(r.id == "stale-leave" for r in results), what="refusal")
                refusal = next(r for r in results if r.id == "stale-leave")
                assert (refusal.ok, refusal.code) == (False, "retained")
                # A request after them is served; the signalling comes on a connection of
                # its own, so all three were seen once three were refused.
                rooms = await op.request(ApiOp.ROOMS, ApiRequest())
                await wait_for(lambda: ctl.stats["rejected"] >= 3, what="all three refused")
                assert [(r.room, r.members) for r in rooms.rooms] == [("standup", 0)]
                assert "ghost" not in meetings._where
                assert all(d.meeting is not None for d in fleet.devices), "nobody left"
                for topic in (t.api("leave-all"), t.ha_fleet_set("leave_all"), t.meet_up("ghost")):
                    assert await retained(any_broker, topic) == [], f"{topic} still retained"
                assert not [r for r in results if r.op == "leave-all" and r.ok]
            reader.cancel()


# --- memory bounds -----------------------------------------------------------------------------


async def test_route_cache_and_held_requests_are_bounded_by_bytes(
    amqtt_broker: BrokerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound, "ROUTE_CACHE_BYTES", 1_000_000)
    monkeypatch.setattr(api, "HELD_REQUESTS_BYTES", 20_000)
    t = amqtt_broker.topics
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
        operator(amqtt_broker) as op,
        wire(amqtt_broker) as w,
    ):
        await w.subscribe(t.api_result, qos=1)
        for n in range(40):  # 40 x 60 KB topic names: 2.4 MB of keys
            name = f"q{chr(97 + n % 26)}{chr(97 + n // 26)}" + "x" * 60_000
            await w.publish(f"{t.prefix}/api/{name}", b"{}", qos=1)
        await op.request(ApiOp.ROOMS, ApiRequest())  # after them: all were routed
        assert sum(len(k) for k in ctl.inbound.routed_topics) <= 1_000_000
        # Requests while the controller re-reads the fleet wait, within their byte bound.
        ctl._synced = False
        token = ctl._sync_token
        padding = "p" * 3000
        for n in range(10):  # 10 x ~3 KB: half over the bound
            request = {"id": f"held-{n}", "text": padding}
            await w.publish(t.api("rooms"), json.dumps(request), qos=1)
        busy: list[str] = []
        async with asyncio.timeout(10):
            async for message in w.messages:
                result = decode(ApiResult, payload_bytes(message))
                if result.code == "busy" and result.id:
                    busy.append(result.id)
                if len(busy) == 4:
                    break
        assert ctl.api.held[1] <= 20_000
        assert busy == [f"held-{n}" for n in range(6, 10)]
        await w.publish(t.sync(ctl.client_id), encode(Sync(token=token)), qos=1)
        served = await op.request(ApiOp.ROOMS, ApiRequest())
        assert served.ok
        assert ctl.api.held == (0, 0)


# --- the audit log is true ---------------------------------------------------------------------


async def test_audit_log_rows_are_true(any_broker: BrokerHandle, tmp_path: Path) -> None:
    t = any_broker.topics
    secrets = register_devices(any_broker, 2)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        sim_fleet(any_broker, secrets) as fleet,
        operator(any_broker) as op,
        wire(any_broker) as w,
    ):
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(id="op-join", room="standup"))
        assert joined.ok
        reboot = await op.request(
            ApiOp.CMD, ApiRequest(id="op-same", device="dev-1", cmd_op="reboot")
        )
        assert reboot.ok
        connects = fleet["dev-2"].connects
        twin = await op.request(ApiOp.CMD, ApiRequest(id="op-same", device="dev-2", cmd_op="ping"))
        assert (twin.ok, twin.code) == (False, "duplicate_id")
        # A ttl beyond what the models allow is a bad request: no job, nothing sent.
        await w.subscribe(t.api_result, qos=1)
        huge = b'{"id": "op-huge", "device": "dev-2", "cmd_op": "reboot", "ttl_ms": %d}' % 2**64
        await w.publish(t.api("cmd"), huge, qos=1)
        async with asyncio.timeout(10):
            async for message in w.messages:
                result = decode(ApiResult, payload_bytes(message))
                if result.id == "op-huge":
                    break
        assert (result.ok, result.code) == (False, "bad_request")
        rows = {op_id: (name, rev, res) for op_id, name, rev, res in ctl.store.operations()}
        assert rows["op-join"][1] == joined.rev
        assert json.loads(rows["op-join"][2])["code"] == "ok"
        assert rows["op-same"][0] == "cmd"
        assert json.loads(rows["op-same"][2])["devices"][0]["outcome"] == "succeeded"
        jobs = {j.id: j for j in ctl.store.jobs()}
        assert (jobs["op-same"].device, jobs["op-same"].op) == ("dev-1", "reboot")
        assert jobs["op-same"].status is DeviceOutcome.SUCCEEDED
        assert "op-huge" not in jobs
        assert ctl.commands.open_jobs == {}, "no job left open"
        assert fleet["dev-2"].connects == connects, "dev-2 never rebooted"


# --- a device reports a rev once what it asks holds --------------------------------------------


class SignallingDriver(MeetingDriver):
    """A device that meets through the real meeting server, without media."""

    waits_for_server = True

    def attach(self, device: SimulatedDevice) -> None:
        self.device = device

        async def publish(topic: str, payload: bytes) -> None:
            assert device._client is not None
            await device._client.publish(topic, payload, qos=1)

        self.participant = LocalParticipant(
            device.id,
            device.topics,
            publish,
            on_change=lambda: device.meeting_changed(self.participant.meeting_state()),
        )

    async def join(self, intent: MeetingIntent) -> MeetingState:
        await self.participant.join(intent.room)
        state = self.participant.meeting_state()
        assert state is not None
        return state

    async def leave(self) -> None:
        await self.participant.leave()

    async def forget(self) -> None:
        await self.participant.forget()

    def on_down(self, payload: bytes) -> None:
        self.participant.handle(payload)


async def test_leave_all_reports_a_rev_only_once_devices_left(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secrets = register_devices(any_broker, 4)  # a mesh: the mesh cap is 4
    states: list[tuple[str, State]] = []
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        sim_fleet(any_broker, secrets, driver_factory=lambda _: SignallingDriver()),
        operator(any_broker) as op,
        wire(any_broker) as w,
    ):
        await w.subscribe(any_broker.topics.all_devices(TopicKind.STATE), qos=1)

        async def read() -> None:
            async for message in w.messages:
                parsed = any_broker.topics.parse(message.topic.value)
                assert parsed is not None
                states.append((parsed.name, decode(State, payload_bytes(message))))

        reader = asyncio.create_task(read())
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup"))
        assert joined.ok
        left = await op.request(ApiOp.LEAVE_ALL, ApiRequest())
        assert left.ok
        assert all(d.room is None for d in left.devices), left.devices
        reader.cancel()
    claims = [(d, s.meeting) for d, s in states if s.rev == left.rev and s.meeting is not None]
    assert claims == [], "a state claimed the leave's rev while still in the meeting"
    claims = [(d, s.meeting) for d, s in states if s.rev == joined.rev and s.meeting is None]
    assert claims == [], "a state claimed the join's rev before joining"


# --- a negotiation failure travels back --------------------------------------------------------


async def test_a_failed_answer_reaches_the_offerer_as_an_error_from_that_peer(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async def link(pid: str, mesh: MediaMesh | None):  # type: ignore[no-untyped-def]
        secret = any_broker.add_device(pid)
        url = BrokerUrl.parse(any_broker.url(pid, secret))
        return participant_link(url, pid, any_broker.topics, mesh)

    mesh = MediaMesh(MediaConfig(), lambda _: None, CaptureSink(keep_s=1.0))
    async with (
        controller(any_broker, tmp_path / "ctl.db"),
        await link("ann", None) as ann,
        await link("bob", mesh) as bob,
    ):
        await bob.join("standup")
        a = await ann.join("standup")
        b = next(iter(a.peers)).participant
        # An offer bob cannot answer: it names the cause back to ann, as bob's error.
        await ann.send(MeetOffer(type="offer", to=b, sdp=SDP))
        await wait_for(lambda: ann.errors, what="ann hears of bob's failure")
        error = ann.errors[-1]
        assert (error.from_, error.code) == (b, "negotiation_failed")
        assert "bad SDP offer" in error.detail
        assert ann.session is not None, "the failure ends no session"
        assert a.participant in bob.peer_errors
        state = bob.meeting_state()
        assert state is not None
        assert state.peer_errors is not None
        assert a.participant in state.peer_errors
        ann_state = ann.meeting_state()
        assert ann_state is not None
        assert ann_state.peer_errors == {b: f"negotiation_failed: {error.detail}"[:256]}
