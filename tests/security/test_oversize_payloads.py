"""What the brokers do with payloads over 64 KiB (protocol.md §1.4, §11): a larger payload
reaches no subscriber and its sender stays connected; a packet past the brokers' packet
limit closes the sender's connection (the rig: tests/support/bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest

from fleet.protocol import encode
from fleet.protocol.messages import (
    State,
)
from tests.support.bad_input import HUGE, OVERSIZE, RAW_DEVICE, js, raw_device, raw_rig, sized
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

# --- what the brokers do with payloads over 64 KiB ---------------------------------------------


async def test_brokers_stop_oversize_payloads_before_any_receiver(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """64 KiB + 1 goes to nobody and its sender stays connected; 200 KB closes the sender's
    connection; the controller and the devices notice nothing of either."""
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        t = r.topics
        # controller-role sender -> device, then -> controller: only the valid ones answer
        mark = r.wire.mark()
        await r.wire.send(t.cmd("dev-1"), sized({"id": "c-big", "op": "ping"}, OVERSIZE))
        await r.wire.send(t.cmd("dev-1"), js({"id": "c-after", "op": "ping"}))
        assert (await r.next_ack("dev-1", mark, "the next command")).id == "c-after"
        mark = r.wire.mark()
        await r.wire.send(t.api("join-all"), sized({"id": "r-big", "room": "evil"}, OVERSIZE))
        await r.wire.send(t.api("leave"), js({"id": "r-after"}))
        assert (await r.next_result(mark, "the next request")).id == "r-after"
        # device sender -> controller: the oversize status never reaches it
        rejected = r.ctl.stats["rejected"]
        await raw.publish(t.status(RAW_DEVICE), sized({"online": True}, OVERSIZE), qos=1)
        await raw.publish(t.state(RAW_DEVICE), encode(State(rev=0, mic=False)), qos=1, retain=True)
        await wait_for(lambda: r.ctl.registry.devices[RAW_DEVICE].state == State(rev=0, mic=False))
        assert r.ctl.stats["rejected"] == rejected
        # past the packet limit the broker hangs up on the sender
        with pytest.raises(aiomqtt.MqttError):  # its PUBACK never comes: the socket closed
            await raw.publish(t.tele(RAW_DEVICE), sized({"ts": 1}, HUGE), qos=1, timeout=5)
        await r.healthy("oversize publishes")
