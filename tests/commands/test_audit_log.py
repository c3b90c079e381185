"""The audit log is true: each operation's row, its rev and result, and each job as it ran."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fleet.mqtt import payload_bytes
from fleet.protocol import decode
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, DeviceOutcome
from tests.support.brokers import BrokerHandle
from tests.support.running import controller, operator, register_devices, sim_fleet
from tests.support.wire import wire

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
