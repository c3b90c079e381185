"""Bad API requests (`api/{op}` -> controller) get one clear refusal and lose nothing else,
on both brokers (the rig: tests/support/bad_input.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fleet.protocol import MAX_PAYLOAD_BYTES, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
)
from tests.support.bad_input import ANSWER_TIMEOUT_S, SILENCE_S, js, rig, sized
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

# --- api/{op} -> controller -------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCase:
    name: str
    op: str
    payload: bytes
    code: str = "bad_request"
    id: str | None = None  # the id the refusal must carry (None: unreadable)
    detail: str = ""  # a part of the detail that makes the refusal clear


J = {"device": "dev-1", "room": "evil"}  # the fields of a join that would be valid
A = ApiCase
API_CASES = [
    A("malformed JSON", "join", b'{"id": "r-1", "device": "dev-1", "room": '),
    A("JSON array", "join", js([{"id": "r-arr", **J}])),
    A("JSON string", "leave", js("dev-1")),
    A("JSON number", "cmd", b"42"),
    A("JSON array on join-all", "join-all", js(["evil"])),  # not a bare room name either
    A("string for bool", "join", js({"id": "r-mic", **J, "mic": "true"}), id="r-mic", detail="mic"),
    A(
        "string for number",
        "join",
        js({"id": "r-t", **J, "timeout_s": "5"}),
        id="r-t",
        detail="timeout_s",
    ),
    A(
        "float for int",
        "cmd",
        js({"id": "r-ttl", "device": "dev-1", "cmd_op": "ping", "ttl_ms": 1.5}),
        id="r-ttl",
        detail="ttl_ms",
    ),
    A(
        "invalid device id",
        "leave",
        js({"id": "r-dev", "device": "dev-1\n"}),
        id="r-dev",
        detail="device",
    ),
    A("id not a string", "join", js({"id": 7, **J}), detail="id"),
    A("missing room", "join", js({"id": "r-nr", "device": "dev-1"}), id="r-nr", detail="room"),
    A("missing device", "leave", js({"id": "r-nd"}), id="r-nd", detail="device"),
    A("missing cmd_op", "cmd", js({"id": "r-no", "device": "dev-1"}), id="r-no", detail="cmd_op"),
    A("non-UTF-8 JSON", "join", b'{"id": "r-utf8", "device": "dev-1", "room": "\xff\xfe"}'),
    A("non-UTF-8 bare room", "join-all", b"\xffevil\xfe", detail="UTF-8"),
    A("empty", "join", b""),
    A("unknown op", "selfdestruct", b"\x00\xff{", "unknown_op", detail="selfdestruct"),
    A(
        "unknown device",
        "join",
        js({"id": "r-g1", **J, "device": "ghost-1"}),
        "unknown_device",
        "r-g1",
        "ghost-1",
    ),
    A(
        "unknown device",
        "leave",
        js({"id": "r-g2", "device": "ghost-1"}),
        "unknown_device",
        "r-g2",
        "ghost-1",
    ),
    A(
        "unknown device",
        "cmd",
        js({"id": "r-g3", "device": "ghost-1", "cmd_op": "ping"}),
        "unknown_device",
        "r-g3",
        "ghost-1",
    ),
]

# Accepted although odd: unknown fields, exactly the size limit, a bare room name.
API_ACCEPTED = [
    ("unknown fields", "join", js({"id": "a-x", **J, "device": "dev-2", "v2": {"x": 1}})),
    ("exactly 64 KiB", "join-all", sized({"id": "a-64k", "room": "big"}, MAX_PAYLOAD_BYTES)),
    ("unknown fields", "cmd", js({"id": "a-c", "device": "dev-3", "cmd_op": "ping", "v2": True})),
    ("bare room name", "join-all", b"  standup\n"),
]


async def test_api_bad_requests_get_one_clear_refusal_and_lose_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        for case in API_CASES:
            what = f"api/{case.op} {case.name}"
            before = r.snapshot()
            rev = r.ctl.store.last_rev()
            rejected = r.ctl.stats["rejected"]
            mark = r.wire.mark()
            await r.wire.send(r.topics.api(case.op), case.payload)
            # A valid request right behind it: the controller handles them in this order.
            got, _ = await asyncio.gather(r.next_result(mark, what), r.healthy(what))
            assert (got.op, got.ok, got.done, got.code, got.id) == (
                case.op,
                False,
                True,
                case.code,
                case.id,
            ), f"{what}: {got}"
            assert case.detail in got.detail, f"{what}: unclear {got.detail!r}"
            assert got.detail, f"{what}: no detail"
            assert r.ctl.stats["rejected"] == rejected + 1, what
            assert r.ctl.store.last_rev() == rev + 1, f"{what} wrote a desired doc"
            r.assert_only_the_health_check_changed(before, what)
            assert r.foreign_results(mark) == [got], f"{what}: one refusal, nothing else"
        # Requests naming a device that never announced itself left no trace.
        assert r.ctl.store.desired_rev("dev", "ghost-1") is None
        assert not [job for job in r.ctl.store.jobs() if job.device == "ghost-1"]

        for name, op, payload in API_ACCEPTED:
            what = f"api/{op} {name}"
            mark = r.wire.mark()
            await r.wire.send(r.topics.api(op), payload)
            first = await r.next_result(mark, what)
            assert (first.ok, first.done, first.code) == (True, False, "accepted"), what
            await r.wire.until(
                lambda rid=first.id, n=mark: any(x.done for x in r.wire.results(n) if x.id == rid),
                ANSWER_TIMEOUT_S,
                f"final result of {what}",
            )
            final = [x for x in r.wire.results(mark) if x.id == first.id and x.done]
            assert [(x.ok, x.code) for x in final] == [(True, "ok")], f"{what}: {final}"
            await r.healthy(what)
        assert r.dev("dev-2").reconciler.applied.rev > 0

        # Garbage on api/result (any controller-role client may publish there) is nobody's
        # request. Last, because the wire reads api/result too.
        await r.wire.send(r.topics.api_result, b"\xff{not a result")
        await r.healthy("garbage on api/result")


async def test_api_burst_of_malformed_requests_interleaved_with_valid_ones(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        refused: dict[str, tuple[str, str]] = {}  # request id -> (op, code)
        valid: dict[str, str] = {}  # request id -> op
        idless = Counter[tuple[str, str]]()
        rejected = r.ctl.stats["rejected"]
        burst: list[tuple[str, bytes]] = []
        last_room = ""
        for i in range(200):
            rid = f"b-{i}"
            match i % 5:
                case 0:
                    op, payload = "join", b'{"id": "%s", "device": "dev-1", "room": ' % rid.encode()
                    idless["join", "bad_request"] += 1
                case 1:
                    op = "join"
                    payload = js({"id": rid, "device": "dev-2", "room": "evil", "mic": "no"})
                    refused[rid] = (op, "bad_request")
                case 2:
                    op, payload = "cmd", js({"id": rid, "device": "dev-3"})
                    refused[rid] = (op, "bad_request")
                case 3:
                    op, payload = "join", js({"id": rid, "device": "ghost-9", "room": "evil"})
                    refused[rid] = (op, "unknown_device")
                case _:
                    op, payload = "selfdestruct", b"\xff" + rid.encode()
                    idless["selfdestruct", "unknown_op"] += 1
            burst.append((r.topics.api(op), payload))
            if i % 10 == 9:  # and a valid one: 20 in all
                k = i // 10
                vid = r.new_id("v")
                if k % 2 == 0:
                    last_room = f"burst-{k}"
                    req, vop = ApiRequest(id=vid, room=last_room, timeout_s=20), ApiOp.JOIN_ALL
                else:
                    req = ApiRequest(id=vid, device=f"dev-{k % 3 + 1}", cmd_op="ping")
                    vop = ApiOp.CMD
                burst.append((r.topics.api(vop.value), encode(req)))
                valid[vid] = vop.value
        mark = r.wire.mark()
        for topic, payload in burst:  # each waits for the broker's PUBACK, not for an answer
            await r.wire.send(topic, payload)

        def answered() -> bool:
            results = r.wire.results(mark)
            done = {x.id for x in results if x.done}
            blank = sum(1 for x in results if x.id is None)
            return set(valid) | set(refused) <= done and blank >= idless.total()

        await r.wire.until(answered, 30, "every request answered")
        results = r.wire.results(mark)
        by_id: dict[str | None, list[ApiResult]] = {}
        for x in results:
            by_id.setdefault(x.id, []).append(x)
        for vid, vop in valid.items():
            got = [(x.op, x.ok, x.done, x.code) for x in by_id[vid]]
            assert got == [(vop, True, False, "accepted"), (vop, True, True, "ok")], vid
        for rid, (op, code) in refused.items():
            got = [(x.op, x.ok, x.done, x.code) for x in by_id[rid]]
            assert got == [(op, False, True, code)], rid
        blank = Counter((x.op, x.code) for x in by_id.get(None, []) if not x.ok)
        assert blank == idless
        assert len(results) == 2 * len(valid) + len(refused) + idless.total()
        assert r.ctl.stats["rejected"] == rejected + 200
        assert all(d.meeting and d.meeting.room == last_room for d in r.devices)
        await r.healthy("the burst")


async def test_api_unknown_op_refusal_carries_the_request_id(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("selfdestruct"), js({"id": "r-sd", "device": "dev-1"}))
        got = await r.next_result(mark, "api/selfdestruct")
        assert (got.code, got.ok) == ("unknown_op", False)
        assert got.id == "r-sd", "a caller matches results by id: it never sees this refusal"


async def test_api_refusal_of_a_large_request_carries_its_id(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        payload = js(
            {
                "id": "r-5k",
                "device": "dev-1",
                "room": "evil",
                "mic": "yes",
                "args": {"b": "x" * 5000},
            }
        )
        assert 4096 < len(payload) < MAX_PAYLOAD_BYTES
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("join"), payload)
        got = await r.next_result(mark, "a 5 KB bad request")
        assert (got.code, got.ok) == ("bad_request", False)
        assert got.id == "r-5k"


async def test_api_empty_leave_all_is_refused_not_executed(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        await r.healthy("setup")
        before = r.snapshot()
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("leave-all"), b"")
        got = await r.next_result(mark, "an empty api/leave-all")
        assert (got.op, got.ok, got.done, got.code) == ("leave-all", False, True, "bad_request")
        assert r.snapshot() == before


async def test_api_join_all_takes_a_json_string_room(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        mark = r.wire.mark()
        await r.wire.send(r.topics.api("join-all"), js("standup"))
        got = await r.next_result(mark, 'api/join-all "standup"')
        assert (got.ok, got.code, got.room) == (True, "accepted", "standup"), got
        await wait_for(lambda: all(d.meeting and d.meeting.room == "standup" for d in r.devices))


async def test_api_op_outside_the_op_pattern_is_refused(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        mark = r.wire.mark()
        topic = f"{r.topics.prefix}/api/Join-All"
        await r.wire.send(topic, js({"id": "r-upper", "room": "evil"}))
        got = await r.next_result(mark, "api/Join-All", timeout=SILENCE_S)
        assert (got.ok, got.code, got.id) == (False, "unknown_op", "r-upper")
