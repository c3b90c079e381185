"""`fleet call`, `fleet answer`, `fleet hangup` and `fleet rooms ls` as a user runs them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cli.common import Exit
from tests.intercom.support import call_fleet
from tests.support.brokers import BrokerHandle
from tests.support.cli import fleet
from tests.support.running import operator_url, wait_for

pytestmark = pytest.mark.timeout(120)


async def test_call_answer_hangup_and_rooms_from_the_command_line(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    common = ("--broker", str(operator_url(amqtt_broker)), "--prefix", amqtt_broker.prefix)
    async with call_fleet(amqtt_broker, tmp_path, 2) as f:
        code, out, err = await fleet("call", "dev-1", "dev-2", "--json", *common, home=tmp_path)
        assert code == Exit.OK, err
        result = json.loads(out)
        call = result["call"]
        assert call.startswith("call-")
        assert {d["device"]: d["outcome"] for d in result["devices"]} == {
            "dev-1": "joined",
            "dev-2": "joined",
        }
        await f.in_room(call, "dev-1", "dev-2")
        code, out, err = await fleet("rooms", "ls", *common, home=tmp_path)
        assert code == Exit.OK, err
        assert call in out
        assert " call " in out
        code, out, err = await fleet("rooms", "ls", "--json", *common, home=tmp_path)
        assert {r["room"]: r["kind"] for r in json.loads(out)["rooms"]} == {call: "call"}
        code, out, err = await fleet("hangup", "dev-2", *common, home=tmp_path)
        assert code == Exit.OK, err
        assert "hung up" in out
        await f.in_room(None, "dev-1", "dev-2")

        # A ring answered from the command line, while `fleet call --ring` waits for it.
        ringing = asyncio.create_task(
            fleet("call", "dev-1", "dev-2", "--ring", "--timeout", "60", *common, home=tmp_path)
        )
        await wait_for(lambda: f.dev("dev-2").ringing is not None, timeout=30, what="dev-2 rings")
        code, out, err = await fleet("answer", "dev-2", *common, home=tmp_path)
        assert code == Exit.OK, err
        code, out, err = await ringing
        assert code == Exit.OK, err
        assert "joined" in out
        code, out, err = await fleet(
            "hangup", f.dev("dev-1").in_call() or "?", *common, home=tmp_path
        )
        assert code == Exit.OK, err

        # Unanswered: exit 1 (it ran, nobody came); refused: exit 4; bad arguments: exit 2.
        code, out, err = await fleet(
            "call", "dev-1", "dev-2", "--ring", "--timeout", "1", *common, home=tmp_path
        )
        assert (code, "no_answer" in out) == (Exit.NOT_CONVERGED, True), (out, err)
        code, out, err = await fleet("call", "dev-1", "dev-1", *common, home=tmp_path)
        assert (code, "itself" in err) == (Exit.REFUSED, True), err
        code, out, err = await fleet("hangup", "call-00000000", *common, home=tmp_path)
        assert (code, "unknown_call" in err) == (Exit.REFUSED, True), err
        code, out, err = await fleet("call", "dev-1", *common, home=tmp_path)
        assert code == Exit.USAGE, err
