"""The controller's inbound lanes under a flood, on both brokers.

An allowed user (an agent) floods the automation API with 20,000 `rooms` requests at
QoS 0, in the shared `api/{op}` form and in its own `api/by/{user}/{op}`; meanwhile a
device's state report is processed, its meeting join answered and an operator's request
served, the flooder is answered `busy`, and what the controller holds stays within its
lanes' bounds. A participant flooding its own signalling topic holds up nobody else
either. The brokers pass only a user's publish budget of either flood (fleet/auth/limits.py);
the controller's lanes bound what gets through. Nobody may send requests in another
user's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from fleet.auth import Role
from fleet.client import FleetClient
from fleet.controller import inbound
from fleet.controller.service import Controller
from fleet.mqtt import payload_bytes
from fleet.protocol import ParsedTopic, TopicKind, Topics, decode, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    MeetingState,
    MeetJoin,
    MeetLeave,
    State,
    Status,
)
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import OPERATOR, controller, operator, wait_for

FLOOD = 20_000
FLOODER = "flood-agent"
DEVICE = "lane-dev"
ROOM = "standup"


def test_a_request_topic_names_its_requester() -> None:
    t = Topics()
    assert t.api_by("ha", "join-all") == "fleet/v1/api/by/ha/join-all"
    assert t.parse("fleet/v1/api/by/ha/join-all") == ParsedTopic(TopicKind.API, "join-all", "ha")
    assert t.parse("fleet/v1/api/join-all") == ParsedTopic(TopicKind.API, "join-all", "")
    assert t.never_retained(t.api_by("ha", "join"))
    with pytest.raises(ValueError, match="invalid user"):
        t.api_by("Not A User", "join")


@contextlib.asynccontextmanager
async def raw_device(handle: BrokerHandle, secret: str) -> AsyncIterator[aiomqtt.Client]:
    """A device by hand: its birth and state, and its own meeting inbox."""
    t = handle.topics
    async with mqtt_client(handle, DEVICE, secret) as dev:
        await dev.subscribe(t.meet_down(DEVICE), qos=1)
        status = Status(online=True, fw="lanes-1")
        await dev.publish(t.status(DEVICE), encode(status), qos=1, retain=True)
        await dev.publish(t.state(DEVICE), encode(State(rev=0, mic=True)), qos=1, retain=True)
        yield dev


async def next_down(dev: aiomqtt.Client, kind: str, timeout: float = 30) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        async for message in dev.messages:
            doc = json.loads(payload_bytes(message))
            if doc.get("type") == kind:
                return doc  # type: ignore[no-any-return]
    raise AssertionError("the device's inbox closed")


def flood(client: aiomqtt.Client, topic: str, count: int, payload: bytes = b"") -> None:
    """`count` messages at QoS 0 as fast as the client can queue them (no waiting);
    requests with ids of their own unless `payload` says otherwise."""
    for n in range(count):
        client._client.publish(topic, payload or b'{"id": "f-%d"}' % n, qos=0)


def assert_bounded(ctl: Controller) -> None:
    """What the controller held stayed within its lanes' bounds."""
    requests = ctl.inbound.depths()["requests"]
    # The flooder's queue and the operator's: each within a requester's bound.
    assert requests.peak_items <= 2 * inbound.REQUESTS_PER_REQUESTER, requests
    assert requests.peak_bytes <= inbound.REQUEST_BYTES, requests
    assert ctl.stats["busy"] == requests.refused
    # The broker let through only the flooder's budget (fleet/auth/limits.py).
    assert requests.served + requests.refused < FLOOD // 2, requests


async def flood_passed(attacker: aiomqtt.Client, op: FleetClient, topic: str) -> None:
    """Once this returns, the controller has read whatever of the flood the broker let
    through: a QoS 1 publish after it is acknowledged once the broker handled the flood,
    and an operator's request after that reaches the controller behind all of it."""
    await attacker.publish(topic, b'{"id": "f-marker"}', qos=1, timeout=120)
    assert (await op.request(ApiOp.ROOMS, ApiRequest())).ok


@pytest.mark.parametrize("form", ["shared", "own"])
async def test_an_api_flood_holds_up_no_report_join_or_other_requester(
    any_broker: BrokerHandle, tmp_path: Path, form: str
) -> None:
    t = any_broker.topics
    device_secret = any_broker.add_device(DEVICE)
    flooder_secret = any_broker.add_user(FLOODER, Role.AGENT)
    topic = t.api("rooms") if form == "shared" else t.api_by(FLOODER, "rooms")
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        operator(any_broker) as op,
        raw_device(any_broker, device_secret) as dev,
        mqtt_client(any_broker, FLOODER, flooder_secret, client_id=f"{FLOODER}-x") as attacker,
    ):
        await wait_for(lambda: DEVICE in ctl.registry.devices and ctl.synced, what="the device")
        created = await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=ROOM))
        assert created.ok, created
        await attacker.subscribe(t.api_result, qos=0)

        flood(attacker, topic, FLOOD)
        # Behind the flood on the wire: a state report, a meeting join, another requester.
        moved = State(rev=0, mic=False)
        await dev.publish(t.state(DEVICE), encode(moved), qos=1, retain=True)
        await dev.publish(t.meet_up(DEVICE), encode(MeetJoin(type="join", room=ROOM)), qos=1)
        joined, rooms = await asyncio.gather(
            next_down(dev, "joined"), op.request(ApiOp.ROOMS, ApiRequest())
        )
        assert joined["session"], joined
        assert rooms.ok, rooms
        assert [r.room for r in rooms.rooms] == [ROOM], rooms
        await wait_for(lambda: ctl.registry.devices[DEVICE].state == moved, 30, "the state report")

        await flood_passed(attacker, op, topic)
        assert_bounded(ctl)
        if ctl.inbound.depths()["requests"].refused:
            async with asyncio.timeout(30):
                async for message in attacker.messages:
                    result = decode(ApiResult, payload_bytes(message))
                    if result.code == "busy" and (result.id or "").startswith("f-"):
                        break
        # The device reports its meeting; the fleet goes on.
        in_room = State(rev=0, mic=False, meeting=MeetingState(room=ROOM))
        await dev.publish(t.state(DEVICE), encode(in_room), qos=1, retain=True)
        await wait_for(lambda: ctl.registry.devices[DEVICE].room == ROOM, 30, "in the room")


async def test_a_signalling_flood_holds_up_no_one_else(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    device_secret = any_broker.add_device(DEVICE)
    flooder_secret = any_broker.add_user(FLOODER, Role.AGENT)
    async with (
        controller(any_broker, tmp_path / "ctl.db") as ctl,
        raw_device(any_broker, device_secret) as dev,
        mqtt_client(any_broker, FLOODER, flooder_secret, client_id=f"{FLOODER}-x") as attacker,
    ):
        await wait_for(lambda: DEVICE in ctl.registry.devices and ctl.synced, what="the device")
        await attacker.subscribe(t.meet_down(FLOODER), qos=0)
        flood(attacker, t.meet_up(FLOODER), 5_000, encode(MeetLeave(type="leave")))
        await dev.publish(t.meet_up(DEVICE), encode(MeetJoin(type="join", room=ROOM)), qos=1)
        joined = await next_down(dev, "joined")
        assert joined["session"], joined
        # A QoS 1 publish after the flood: once acknowledged, the broker handled it all.
        # The device's leave after it reaches the controller behind whatever of the flood
        # got through: once answered, that is all in the lane or served.
        await attacker.publish(
            t.meet_up(FLOODER), encode(MeetLeave(type="leave")), qos=1, timeout=120
        )
        await dev.publish(t.meet_up(DEVICE), encode(MeetLeave(type="leave")), qos=1)
        await next_down(dev, "left")
        signalling = ctl.inbound.depths()["signalling"]
        await wait_for(lambda: signalling.items == 0, 60, "the flood served")
        assert signalling.peak_items <= inbound.SIGNALS_PER_PID + 1, signalling
        assert signalling.served + signalling.refused < 5_000 // 2, "the broker's budget"
        if signalling.refused:  # the broker delivered faster than the server answered
            busy = await next_down(attacker, "error")  # the first error: no other is sent
            assert busy["code"] == "busy", busy
            assert ctl.stats["busy"] == signalling.refused


async def test_nobody_sends_requests_in_another_users_name(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """`api/by/{user}/...` is that user's alone: the brokers drop anyone else's publish."""
    t = any_broker.topics
    flooder_secret = any_broker.add_user(FLOODER, Role.AGENT)
    operator_secret = any_broker.add_user(OPERATOR, Role.CONTROLLER)
    async with (
        mqtt_client(any_broker, OPERATOR, operator_secret, client_id=f"{OPERATOR}-w") as watch,
        mqtt_client(any_broker, FLOODER, flooder_secret, client_id=f"{FLOODER}-x") as agent,
    ):
        await watch.subscribe(f"{t.prefix}/api/by/#", qos=1)
        await agent.publish(t.api_by(OPERATOR, "rooms"), b"{}", qos=1)  # not its name
        await agent.publish(t.api_by(FLOODER, "room-create"), b"{}", qos=1)  # not its op
        await agent.publish(t.api_by(FLOODER, "rooms"), b"{}", qos=1)  # the marker
        got: list[str] = []
        async with asyncio.timeout(10):
            async for message in watch.messages:
                got.append(message.topic.value)
                if message.topic.value == t.api_by(FLOODER, "rooms"):
                    break
        assert got == [t.api_by(FLOODER, "rooms")]
