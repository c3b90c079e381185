"""A device's call button: it calls its configured target, answers a ring and hangs up,
each a request on its own `api/by/{id}/{op}`; it cannot act in another device's name."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fleet.auth import Acl, Role, hash_secret
from fleet.auth.credentials import Credential
from fleet.protocol import Topics
from fleet.protocol.messages import ApiOp, ApiRequest
from tests.intercom.support import CallFleet, call_fleet
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

pytestmark = pytest.mark.timeout(120)


def result_of(f: CallFleet, request_id: str) -> dict[str, object] | None:
    """The final result the controller recorded for a request (its audit log)."""
    for op_id, _op, _rev, result in f.ctl.store.operations(limit=1000):
        if op_id == request_id and result:
            parsed: dict[str, object] = json.loads(result)
            return parsed
    return None


async def final(f: CallFleet, request_id: str) -> dict[str, object]:
    await wait_for(lambda: result_of(f, request_id) is not None, what=f"result of {request_id}")
    result = result_of(f, request_id)
    assert result is not None
    return result


async def test_the_button_calls_its_target_and_hangs_up(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(any_broker, tmp_path, 2) as f:
        f.dev("dev-1").config.call_to = "dev-2"
        assert await f.dev("dev-1").press_button() is ApiOp.CALL
        await wait_for(lambda: f.room("dev-1") is not None, what="dev-1 in its call")
        call = f.room("dev-1")
        assert call is not None
        assert call.startswith("call-")
        await f.in_room(call, "dev-2")
        await f.talking("dev-1", "dev-2")
        # The callee's button hangs up: both go back to nothing.
        assert await f.dev("dev-2").press_button() is ApiOp.HANGUP
        await f.in_room(None, "dev-1", "dev-2")


async def test_the_button_answers_a_ring(any_broker: BrokerHandle, tmp_path: Path) -> None:
    async with call_fleet(any_broker, tmp_path, 2) as f:
        pending = asyncio.create_task(
            f.request(ApiOp.CALL, device="dev-1", to="dev-2", ring=True, timeout_s=60)
        )
        await wait_for(lambda: f.dev("dev-2").ringing is not None, what="dev-2 rings")
        assert await f.dev("dev-2").press_button() is ApiOp.ANSWER
        result = await pending
        assert result.ok, result
        await f.in_room(result.call, "dev-1", "dev-2")
        await f.talking("dev-1", "dev-2")


async def test_a_device_cannot_call_in_another_devices_name(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(any_broker, tmp_path, 3) as f:
        dev1 = f.dev("dev-1")
        # On another device's topic: the broker drops it (the ACL), nothing happens.
        forged = await dev1.send_request(
            ApiOp.CALL, ApiRequest(device="dev-2", to="dev-3"), user="dev-2"
        )
        # On its own topic, in another device's name: the controller refuses it.
        named = await dev1.send_request(ApiOp.CALL, ApiRequest(device="dev-2", to="dev-3"))
        refused = await final(f, named)
        assert (refused["ok"], refused["code"]) == (False, "forbidden"), refused
        # Another device's call is not its to hang up, nor another's ring its to answer.
        pending = asyncio.create_task(
            f.request(ApiOp.CALL, device="dev-2", to="dev-3", ring=True, timeout_s=60)
        )
        await wait_for(lambda: f.dev("dev-3").ringing is not None, what="dev-3 rings")
        call = f.dev("dev-3").ringing
        hangup = await dev1.send_request(ApiOp.HANGUP, ApiRequest(call=call))
        assert (await final(f, hangup))["code"] == "forbidden"
        answer = await dev1.send_request(ApiOp.ANSWER, ApiRequest(device="dev-3"))
        assert (await final(f, answer))["code"] == "forbidden"
        assert f.dev("dev-3").ringing == call
        assert result_of(f, forged) is None
        assert all(f.room(d) is None for d in f.ids)
        await f.request(ApiOp.HANGUP, call=call)
        result = await pending
        assert (result.ok, result.code) == (False, "hung_up"), result


def test_the_acl_lets_a_device_request_only_its_own_calls() -> None:
    topics = Topics("fleet/v1")
    acl = Acl(topics)
    dev = Credential(username="dev-1", role=Role.DEVICE, hash=hash_secret("x", 1))
    for op in ("call", "answer", "hangup"):
        assert acl.allows(dev, "publish", f"fleet/v1/api/by/dev-1/{op}")
        assert not acl.allows(dev, "publish", f"fleet/v1/api/by/dev-2/{op}")
        assert not acl.allows(dev, "publish", f"fleet/v1/api/{op}")
    for op in ("join", "leave", "cmd", "join-all", "rooms"):
        assert not acl.allows(dev, "publish", f"fleet/v1/api/by/dev-1/{op}")
    ha = Credential(username="ha", role=Role.HOMEASSISTANT, hash=hash_secret("x", 1))
    for op in ("call", "answer", "hangup"):
        assert acl.allows(ha, "publish", f"fleet/v1/api/{op}")
        assert acl.allows(ha, "publish", f"fleet/v1/api/by/ha/{op}")


async def test_the_button_calls_a_group_target(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 3, groups=("upstairs",)) as f:
        f.dev("dev-1").config.call_to = "group:upstairs"
        assert await f.dev("dev-1").press_button() is ApiOp.CALL
        await wait_for(lambda: f.room("dev-1") is not None, what="dev-1 in its call")
        await f.in_room(f.room("dev-1"), "dev-2", "dev-3")
        await f.talking("dev-1", "dev-3")
        assert await f.dev("dev-1").press_button() is ApiOp.HANGUP
        await f.in_room(None, "dev-1", "dev-2", "dev-3")
