"""Bad commands (`dev/{id}/cmd` -> device) get a clear ack and lose nothing else, on both
brokers (the rig: tests/support/bad_input.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fleet.protocol import MAX_PAYLOAD_BYTES
from tests.support.bad_input import js, rig, sized
from tests.support.brokers import BrokerHandle

# --- dev/{id}/cmd -> device --------------------------------------------------------------------


@dataclass(frozen=True)
class CmdCase:
    name: str
    payload: bytes
    id: str = "?"
    code: str = "bad_request"
    detail: str = ""


P = {"id": "c-p", "op": "ping"}  # a valid ping
C = CmdCase
CMD_CASES = [
    C("malformed JSON", b'{"id": "c-1", "op": "ping"'),
    C("JSON array", js([P])),
    C("JSON string", js("ping")),
    C("JSON number", b"7"),
    C("empty", b""),
    C("string for int", js({**P, "id": "c-ttl", "ttl_ms": "5000"}), "c-ttl", detail="ttl_ms"),
    C("args not an object", js({**P, "id": "c-args", "args": "now"}), "c-args", detail="args"),
    C("id not a string", js({**P, "id": 5}), detail="id"),
    C("missing op", js({"id": "c-noop"}), "c-noop", detail="op"),
    C("missing id", js({"op": "ping"}), detail="id"),
    C("non-UTF-8", b'{"id": "c-utf8", "op": "ping", "args": {"x": "\xff"}}'),
    # JSON text has no byte-order mark: refused, and its id is not read either (as the C core).
    C("UTF-8 BOM", b"\xef\xbb\xbf" + js({**P, "id": "c-bom"}), "?"),
    C("unknown op", js({"id": "c-sd", "op": "selfdestruct"}), "c-sd", "unknown_op", "selfdestruct"),
    C(
        "identify seconds string",
        js({"id": "c-i1", "op": "identify", "args": {"seconds": "x"}}),
        "c-i1",
        "bad_args",
    ),
    C(
        "identify seconds 301",
        js({"id": "c-i2", "op": "identify", "args": {"seconds": 301}}),
        "c-i2",
        "bad_args",
    ),
    C(
        "ota ftp url",
        js({"id": "c-o", "op": "ota", "args": {"url": "ftp://fw/x.bin"}}),
        "c-o",
        "bad_args",
        "url",
    ),
    C(
        "set_groups bad name",
        js({"id": "c-g", "op": "set_groups", "args": {"groups": ["K!"]}}),
        "c-g",
        "bad_args",
    ),
]
CMD_ACCEPTED = [
    ("unknown fields", js({**P, "id": "c-x", "args": {"unused": 1}, "colour": "blue"})),
    ("exactly 64 KiB", sized({**P, "id": "c-64k"}, MAX_PAYLOAD_BYTES)),
]


async def test_cmd_bad_commands_get_a_clear_ack_and_lose_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        cmd = r.topics.cmd("dev-1")
        for case in CMD_CASES:
            what = f"cmd {case.name}"
            before = r.snapshot()
            mark = r.wire.mark()
            await r.wire.send(cmd, case.payload)
            # A valid command and a join-all right behind it.
            ack, _, _ = await asyncio.gather(
                r.next_ack("dev-1", mark, what), r.ping("dev-1", what), r.healthy(what)
            )
            assert (ack.id, ack.ok, ack.code, ack.done) == (case.id, False, case.code, True), (
                f"{what}: {ack}"
            )
            assert case.detail in ack.detail, f"{what}: unclear {ack.detail!r}"
            assert ack.detail, f"{what}: no detail"
            r.assert_only_the_health_check_changed(before, what)
            assert r.foreign_acks("dev-1", mark) == [ack], f"{what}: one ack, nothing else"
        for name, payload in CMD_ACCEPTED:
            mark = r.wire.mark()
            await r.wire.send(cmd, payload)
            ack = await r.next_ack("dev-1", mark, name)
            assert (ack.ok, ack.code) == (True, "ok"), f"cmd {name}: {ack}"
        await r.healthy("accepted commands")


async def test_cmd_refusal_of_a_large_command_carries_its_id(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        payload = js({"id": "c-5k", "op": "ping", "ttl_ms": "soon", "args": {"b": "x" * 5000}})
        mark = r.wire.mark()
        await r.wire.send(r.topics.cmd("dev-1"), payload)
        ack = await r.next_ack("dev-1", mark, "a 5 KB bad command")
        assert (ack.code, ack.ok) == ("bad_request", False)
        assert ack.id == "c-5k"


async def test_cmd_identify_refuses_non_integer_seconds(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    """Spec 6.1: `seconds` is an integer 1-300; `true`, 2.5 and 0.5 are bad_args (no coercion)."""
    async with rig(any_broker, tmp_path) as r:
        for n, seconds in enumerate([True, 2.5, 0.5]):
            cid = f"c-ident-{n}"
            mark = r.wire.mark()
            payload = js({"id": cid, "op": "identify", "args": {"seconds": seconds}})
            await r.wire.send(r.topics.cmd("dev-1"), payload)
            ack = await r.next_ack("dev-1", mark, f"identify {seconds!r}")
            assert (ack.id, ack.ok, ack.code) == (cid, False, "bad_args"), f"{seconds!r}: {ack}"
