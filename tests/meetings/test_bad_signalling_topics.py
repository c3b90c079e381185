"""Garbage on `meet/{pid}/up` and `meet/{pid}/down` crashes nothing, on both brokers (the
rig: tests/support/bad_input.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleet.protocol import encode
from fleet.protocol.messages import (
    State,
)
from tests.support.bad_input import RAW_DEVICE, js, raw_device, raw_rig
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

# --- meet/{pid}/up and meet/{pid}/down: not served yet, must crash nothing ---------------------

MEET_GARBAGE = [
    ("malformed JSON", b'{"type": "join", "room": '),
    ("empty", b""),
    ("unknown type", js({"type": "selfdestruct"})),
    ("non-UTF-8", b'{"type": "message", "text": "\xff\xfe"}'),
    ("valid join", js({"type": "join", "room": "evil"})),
]


async def test_meeting_topics_take_garbage_without_crashing_anything(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        for name, payload in MEET_GARBAGE:
            before = r.snapshot()
            await raw.publish(r.topics.meet_up(RAW_DEVICE), payload, qos=1)
            await r.wire.send(r.topics.meet_up("dev-1"), payload)  # a controller-role writer
            await r.wire.send(r.topics.meet_down("dev-1"), payload)
            mark = r.wire.mark()  # a command after it marks the down message as handled
            await r.wire.send(r.topics.cmd("dev-1"), js({"id": f"m-{r.rounds}", "op": "ping"}))
            ack, _ = await asyncio.gather(
                r.next_ack("dev-1", mark, f"ping after meet {name}"), r.healthy(f"meet {name}")
            )
            assert ack.ok, f"meet {name}: {ack}"
            r.assert_only_the_health_check_changed(before, f"meet {name}")
        # The raw device is still on its connection: its next state lands.
        await raw.publish(
            r.topics.state(RAW_DEVICE), encode(State(rev=0, mic=False)), qos=1, retain=True
        )
        await wait_for(lambda: r.ctl.registry.devices[RAW_DEVICE].state == State(rev=0, mic=False))
