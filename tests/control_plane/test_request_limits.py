"""What the controller refuses or bounds in its inboxes: retained requests and signalling are
refused and cleared; the route cache and held requests stay inside their byte bounds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fleet.auth import Role
from fleet.controller import api, inbound
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.meetings import MeetingServer
from fleet.mqtt import payload_bytes
from fleet.protocol import decode, encode
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, MeetJoin, Sync
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, operator, register_devices, sim_fleet, wait_for
from tests.support.wire import retained, wire

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
                assert meetings.roster.where("ghost") is None
                assert all(d.meeting is not None for d in fleet.devices), "nobody left"
                # Cleared on the controller's main connection, which may come after the
                # refusal (sent on the requests' own connection): waited for.
                for topic in (t.api("leave-all"), t.ha_fleet_set("leave_all"), t.meet_up("ghost")):
                    await _until_cleared(any_broker, topic)
                assert not [r for r in results if r.op == "leave-all" and r.ok]
            reader.cancel()


async def _until_cleared(handle: BrokerHandle, topic: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            # Polling on purpose: the broker has no event for a retained message cleared.
            while await retained(handle, topic):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{topic} still retained after {timeout}s") from None


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
