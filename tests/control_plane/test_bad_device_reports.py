"""A device's own garbage on `status`, `state` and `ack` is logged and dropped: the registry
keeps its last good record; unknown fields are accepted. On both brokers (the rig:
tests/support/bad_input.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleet.protocol import TopicKind
from fleet.protocol.messages import (
    MAX_REV,
)
from tests.support.bad_input import RAW_DEVICE, js, raw_device, raw_rig, soon
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

# --- dev/{id}/status, state, ack -> controller (a device's own garbage) ------------------------

SHAPES = [
    ("malformed JSON", b'{"online": true, "rev": 1'),
    ("JSON array", js([{"online": True, "rev": 1}])),
    ("JSON string", js("online")),
    ("JSON number", b"1"),
]
ANY = {"online": True, "rev": 1, "id": "a", "ok": True, "code": "ok"}  # valid on all three
SIZES = [
    ("non-UTF-8", b'{"online": true, "rev": 1, "id": "a", "ok": true, "code": "ok", "x": "\xff"}'),
]
DEVICE_GARBAGE: dict[TopicKind, list[tuple[str, bytes]]] = {
    TopicKind.STATUS: [
        *SHAPES,
        ("string for online", js({"online": "true"})),
        ("missing online", js({"fw": "evil"})),
        ("invalid group", js({"online": True, "groups": ["Evil Group"]})),
        *SIZES,
    ],
    TopicKind.STATE: [
        *SHAPES,
        ("string for rev", js({"rev": "1"})),
        ("rev beyond 2^53-1", js({"rev": MAX_REV + 1})),
        ("string for mic", js({"rev": 0, "mic": "no"})),
        ("missing rev", js({"meeting": None})),
        *SIZES,
    ],
    TopicKind.ACK: [
        *SHAPES,
        ("empty", b""),
        ("string for ok", js({"id": "a-1", "ok": "true", "code": "ok"})),
        ("unknown code", js({"id": "a-1", "ok": True, "code": "great"})),
        ("missing id", js({"ok": True, "code": "ok"})),
        *SIZES,
    ],
}


async def test_device_garbage_on_status_state_ack_is_logged_and_dropped(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        t = r.topics
        for kind, cases in DEVICE_GARBAGE.items():
            topic = t.device(kind, RAW_DEVICE)
            for name, payload in cases:
                what = f"dev/{RAW_DEVICE}/{kind.value} {name}"
                rec = r.ctl.registry.devices[RAW_DEVICE]
                good = (rec.status, rec.state)
                before = r.snapshot()
                rejected = r.ctl.stats["rejected"]
                await raw.publish(topic, payload, qos=1, retain=kind is not TopicKind.ACK)
                await asyncio.gather(
                    soon(lambda n=rejected: r.ctl.stats["rejected"] > n, f"ctl drops {what}"),
                    r.op.sync(),  # the operator has read past it
                    r.healthy(what),
                )
                rec = r.ctl.registry.devices[RAW_DEVICE]
                assert (rec.status, rec.state) == good, f"{what} replaced the last good record"
                r.assert_only_the_health_check_changed(before, what)
                op_rec = r.op.registry.devices[RAW_DEVICE]
                assert (op_rec.status, op_rec.state) == good, f"{what} reached the operator"
                assert r.ctl.stats["rejected"] == rejected + 1, f"{what}: more was rejected"

        # Unknown fields are accepted, nested ones too, on every one of these topics.
        status = {"online": True, "fw": "raw-2.0", "caps": {"audio": True, "v2": 1}, "colour": 1}
        await raw.publish(t.status(RAW_DEVICE), js(status), qos=1, retain=True)
        state = {"rev": 0, "mic": False, "meeting": {"room": "extra", "v2": 1}, "colour": 1}
        await raw.publish(t.state(RAW_DEVICE), js(state), qos=1, retain=True)
        rejected = r.ctl.stats["rejected"]
        ack = {"id": "nobodys-job", "ok": True, "code": "ok", "colour": 1}
        await raw.publish(t.ack(RAW_DEVICE), js(ack), qos=1)
        await raw.publish(t.ack(RAW_DEVICE), b"{", qos=1)  # a marker: exactly one rejection
        await wait_for(lambda: r.ctl.stats["rejected"] > rejected, what="the marker")
        assert r.ctl.stats["rejected"] == rejected + 1
        rec = r.ctl.registry.devices[RAW_DEVICE]
        assert rec.online
        assert rec.status is not None
        assert rec.status.fw == "raw-2.0"
        assert rec.state is not None
        assert (rec.state.mic, rec.room) == (False, "extra")
        await r.healthy("unknown fields from a device")
