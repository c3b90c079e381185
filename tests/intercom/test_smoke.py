from __future__ import annotations

from pathlib import Path

from fleet.protocol.messages import ApiOp, DeviceOutcome
from tests.intercom.support import call_fleet
from tests.support.brokers import BrokerHandle


async def test_smoke(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 2) as f:
        result = await f.request(ApiOp.CALL, device="dev-1", to="dev-2")
        assert result.ok, result
        assert result.call and result.call.startswith("call-")
        assert {d.device: d.outcome for d in result.devices} == {
            "dev-1": DeviceOutcome.JOINED,
            "dev-2": DeviceOutcome.JOINED,
        }
        await f.in_room(result.call, "dev-1", "dev-2")
        await f.talking("dev-1", "dev-2")
        hung = await f.request(ApiOp.HANGUP, call=result.call)
        assert hung.ok, hung
        await f.in_room(None, "dev-1", "dev-2")
