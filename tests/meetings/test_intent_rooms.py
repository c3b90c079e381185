"""Who may create a room with a join or join-all intent, on both brokers.

A participant's own join creates its room only with `--auto-create`; the room of an
intent follows the same setting, except for an operator's: a controller-role user reads
the controller's operator key (`ctl/operator-key`, retained, readable by that role
alone) and its intents carry it. Home Assistant, agent and web users cannot read it, so
a join or join-all of theirs naming a new room is refused with `unknown_room`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt

from fleet.auth import Role
from fleet.auth.hashing import GENERATED_SECRET_ITERATIONS, generate_secret, hash_secret
from fleet.client import FleetClient
from fleet.meetings import MeetingServer
from fleet.mqtt import BrokerUrl, payload_bytes
from fleet.protocol import decode
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, one_device, operator


@contextlib.asynccontextmanager
async def raw_requester(
    handle: BrokerHandle, username: str, secret: str, client_id: str
) -> AsyncIterator[tuple[aiomqtt.Client, dict[str, asyncio.Future[ApiResult]]]]:
    """A user that publishes API requests by hand and reads api/result: (client, waiting
    results by request id)."""
    waiting: dict[str, asyncio.Future[ApiResult]] = {}
    async with mqtt_client(handle, username, secret, client_id=client_id) as client:
        await client.subscribe(handle.topics.api_result, qos=1)

        async def read() -> None:
            async for message in client.messages:
                result = decode(ApiResult, payload_bytes(message))
                future = waiting.get(result.id or "")
                if future is not None and not future.done() and result.done:
                    future.set_result(result)

        reader = asyncio.create_task(read())
        try:
            yield client, waiting
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def ask(
    client: aiomqtt.Client,
    waiting: dict[str, asyncio.Future[ApiResult]],
    handle: BrokerHandle,
    op: ApiOp,
    body: dict[str, object],
) -> ApiResult:
    request_id = str(body["id"])
    waiting[request_id] = asyncio.get_running_loop().create_future()
    await client.publish(handle.topics.api(op.value), json.dumps(body).encode(), qos=1)
    return await asyncio.wait_for(waiting[request_id], 10)


async def room_names(op: FleetClient) -> set[str]:
    return {r.room for r in (await op.request(ApiOp.ROOMS, ApiRequest(limit=100))).rooms}


async def test_only_an_operators_intent_creates_its_room_by_default(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = any_broker
    ha_secret = h.add_user("ha", Role.HOMEASSISTANT)
    agent_secret = h.add_user("agent-x", Role.AGENT)
    web_secret = generate_secret()
    h.store.add_web(
        "web-1a2b", hash_secret(web_secret, GENERATED_SECRET_ITERATIONS), time.time() + 600
    )
    device_secret = h.add_device("dev-1")
    agent_url = BrokerUrl.parse(h.url("agent-x", agent_secret))
    async with (
        controller(h, tmp_path / "ctl.db", parts=[MeetingServer()]) as ctl,
        one_device(h, "dev-1", device_secret),
        operator(h) as op,
        FleetClient(agent_url, h.topics, client_id="agent-x-api") as agent,
        raw_requester(h, "ha", ha_secret, "ha-raw") as (ha, ha_waiting),
        raw_requester(h, "web-1a2b", web_secret, "web-1a2b") as (web, web_waiting),
    ):
        assert op.operator_key is not None, "a controller-role user reads the operator key"
        assert agent.operator_key is None, "an agent does not"
        refused = [
            await ask(ha, ha_waiting, h, ApiOp.JOIN_ALL, {"id": "h1", "room": "ha-room"}),
            await ask(
                ha, ha_waiting, h, ApiOp.JOIN, {"id": "h2", "device": "dev-1", "room": "ha-2"}
            ),
            await ask(web, web_waiting, h, ApiOp.JOIN_ALL, {"id": "w1", "room": "web-room"}),
            await agent.request(ApiOp.JOIN_ALL, ApiRequest(room="agent-room", timeout_s=2)),
            await agent.request(
                ApiOp.JOIN, ApiRequest(device="dev-1", room="agent-2", timeout_s=2)
            ),
            # A key made up, or one of the right length, is no key.
            await ask(
                ha,
                ha_waiting,
                h,
                ApiOp.JOIN_ALL,
                {"id": "h3", "room": "ha-room", "operator_key": "0" * 64},
            ),
        ]
        for result in refused:
            assert (result.ok, result.code) == (False, "unknown_room"), result
            assert "fleet rooms create" in (result.detail or "")
        assert await room_names(op) == set()
        assert ctl.store.desired_docs() == [], "no refused intent was written"

        # The operator's intent creates its room; then anyone may meet there.
        joined = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="standup", timeout_s=10))
        assert joined.ok, joined
        assert await room_names(op) == {"standup"}
        again = await ask(ha, ha_waiting, h, ApiOp.JOIN_ALL, {"id": "h4", "room": "standup"})
        assert again.ok, again


async def test_with_auto_create_anyones_intent_creates_its_room(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = any_broker
    ha_secret = h.add_user("ha", Role.HOMEASSISTANT)
    async with (
        controller(h, tmp_path / "ctl.db", parts=[MeetingServer(auto_create=True)]),
        operator(h) as op,
        raw_requester(h, "ha", ha_secret, "ha-raw") as (ha, waiting),
    ):
        made = await ask(ha, waiting, h, ApiOp.JOIN_ALL, {"id": "h1", "room": "kitchen"})
        assert made.ok, made
        assert await room_names(op) == {"kitchen"}
