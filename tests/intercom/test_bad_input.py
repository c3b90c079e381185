"""Bad call requests get clear errors, and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.protocol.messages import ApiOp
from tests.intercom.support import call_fleet
from tests.support.brokers import BrokerHandle

pytestmark = pytest.mark.timeout(120)


async def test_bad_call_requests_get_clear_errors(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with call_fleet(amqtt_broker, tmp_path, 2) as f:
        cases: list[tuple[ApiOp, dict[str, object], str, str]] = [
            (ApiOp.CALL, {"device": "dev-9", "to": "dev-1"}, "unknown_device", "dev-9"),
            (ApiOp.CALL, {"device": "dev-1", "to": "dev-9"}, "unknown_device", "dev-9"),
            (ApiOp.CALL, {"device": "dev-1", "to": "dev-1"}, "bad_request", "itself"),
            (ApiOp.CALL, {"device": "dev-1"}, "bad_request", "`to`"),
            (ApiOp.CALL, {"device": "dev-1", "group": "nowhere"}, "unknown_group", "nowhere"),
            (ApiOp.CALL, {"to": "dev-1"}, "bad_request", "device"),
            (ApiOp.HANGUP, {"call": "call-00000000"}, "unknown_call", "call-00000000"),
            (ApiOp.HANGUP, {"device": "dev-1"}, "not_in_call", "dev-1"),
            (ApiOp.HANGUP, {}, "bad_request", "call"),
            (ApiOp.ANSWER, {"device": "dev-2"}, "not_ringing", "dev-2"),
            (ApiOp.ANSWER, {"call": "call-00000000"}, "unknown_call", "call-00000000"),
            (ApiOp.ANSWER, {}, "bad_request", "device"),
        ]
        for op, fields, code, named in cases:
            result = await f.request(op, **fields)
            assert (result.ok, result.code) == (False, code), (op, fields, result)
            assert named in result.detail, (op, fields, result.detail)
        # An operator may not make a room with a call's name (calls make their own).
        made = await f.request(ApiOp.ROOM_CREATE, room="call-12345678")
        assert (made.ok, made.code) == (False, "reserved_room"), made
        assert all(f.room(d) is None for d in f.ids)
        assert not (await f.request(ApiOp.ROOMS)).rooms
