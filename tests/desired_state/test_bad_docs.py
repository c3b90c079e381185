"""Bad desired docs (`dev/{id}/desired`, `grp/{g}/desired` -> device) keep the applied
intent (protocol.md 4.2 rule 2), and a device reporting the max rev stops no desired op; on
both brokers (the rig: tests/support/bad_input.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fleet.protocol import TopicKind, encode
from fleet.protocol.messages import (
    MAX_REV,
    ApiRequest,
    State,
)
from tests.support.bad_input import RAW_DEVICE, SILENCE_S, Rig, js, raw_device, raw_rig, rig, soon
from tests.support.brokers import BrokerHandle
from tests.support.running import wait_for

# --- dev/{id}/desired and grp/{g}/desired -> device -------------------------------------------


def bad_docs(rev: int) -> list[tuple[str, bytes]]:
    """Desired docs that must be refused; each would move the device to 'evil' if taken."""
    evil = {"room": "evil"}
    return [
        ("malformed JSON", b'{"rev": %d, "meeting": {"room": "evil"}' % rev),
        ("JSON array", js([{"rev": rev, "meeting": evil}])),
        ("JSON string", js("evil")),
        ("JSON number", js(rev)),
        ("string for rev", js({"rev": str(rev), "meeting": evil})),
        ("float for rev", b'{"rev": %d.0, "meeting": {"room": "evil"}}' % rev),
        ("rev beyond 2^53-1", js({"rev": MAX_REV + 1, "meeting": evil})),
        ("string for mic", js({"rev": rev, "meeting": {"room": "evil", "mic": "false"}})),
        ("invalid room", js({"rev": rev, "meeting": {"room": "Evil!"}})),
        ("NaN until", b'{"rev": %d, "meeting": {"room": "evil", "until": NaN}}' % rev),
        ("missing rev", js({"meeting": evil})),
        ("missing room", js({"rev": rev, "meeting": {"mic": False}})),
        ("non-UTF-8", b'{"rev": %d, "meeting": {"room": "evil"}, "note": "\xff"}' % rev),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + js({"rev": rev, "meeting": evil})),
    ]


GROUP_CASES = {"malformed JSON", "JSON array", "string for rev", "missing rev", "64 KiB + 1"}


def scope_of(r: Rig, topic: str) -> tuple[str, str]:
    parsed = r.topics.parse(topic)
    assert parsed is not None
    return ("dev" if parsed.kind is TopicKind.DESIRED else "grp"), parsed.name


async def refuse_doc(r: Rig, topic: str, targets: Sequence[str], payload: bytes, what: str) -> None:
    """Publish a bad retained doc; every target keeps its intent and only logs the refusal
    (protocol.md 4.2 rule 2): its state does not change."""
    before = r.snapshot()
    rejected = r.ctl.stats["rejected"]
    scope, name = scope_of(r, topic)
    stored = r.ctl.store.desired_rev(scope, name)
    await r.wire.send(topic, payload, retain=True)
    for device_id in targets:
        dev, was = r.dev(device_id), before[device_id]
        # A command after the doc: once it is answered, the doc has been handled.
        mark = r.wire.mark()
        await r.wire.send(r.topics.cmd(device_id), js({"id": f"b-{mark}", "op": "ping"}))
        assert (await r.next_ack(device_id, mark, f"ping after {what}")).ok
        now = (dev.reconciler.applied, dev.meeting, dev.state_changes, dev.connects, dev.error)
        assert now == (was.applied, was.meeting, was.state_changes, was.connects, None), (
            f"{what}: {device_id} changed its intent or its state"
        )
    others = {k: v for k, v in before.items() if k not in targets}
    assert r.snapshot(exclude=targets) == others, f"{what} reached other devices"
    # The controller reads desired topics too: it refuses to adopt the doc.
    await soon(lambda: r.ctl.stats["rejected"] == rejected + 1, f"ctl refuses {what}")
    assert r.ctl.store.desired_rev(scope, name) == stored
    await r.healthy(what)
    assert r.ctl.stats["rejected"] == rejected + 1, f"{what}: more was rejected"


async def accept_doc(r: Rig, topic: str, targets: Sequence[str], what: str) -> None:
    """A doc with unknown fields (top level and nested) is applied by the targets only."""
    before = r.snapshot()
    rev = r.ctl.store.last_rev() + 100
    doc = {"rev": rev, "meeting": {"room": "extra", "mic": False, "colour": "red"}, "v2": [1]}
    await r.wire.send(topic, js(doc), retain=True)
    for device_id in targets:
        dev = r.dev(device_id)
        await wait_for(
            lambda dev=dev: dev.reconciler.applied.rev == rev, what=f"{device_id} takes {what}"
        )
        assert dev.meeting is not None, what
        assert (dev.meeting.room, dev.mic, dev.error) == ("extra", False, None), what
    assert r.snapshot(exclude=targets) == {k: v for k, v in before.items() if k not in targets}
    scope, name = scope_of(r, topic)
    # Adopted, so the controller's next rev is above it and the health check can win.
    await soon(lambda: r.ctl.store.desired_rev(scope, name) == rev, f"ctl adopts {what}")


async def clear_changes_nothing(r: Rig, topic: str, targets: Sequence[str]) -> None:
    """An empty retained payload clears the doc that was applied: nothing changes, no error."""
    before = r.snapshot()
    rejected = r.ctl.stats["rejected"]
    await r.wire.send(topic, b"", retain=True)
    for device_id in targets:  # a command after the clear marks it as handled
        mark = r.wire.mark()
        await r.wire.send(r.topics.cmd(device_id), js({"id": f"m-{device_id}", "op": "ping"}))
        ack = await r.next_ack(device_id, mark, "ping after the clear")
        assert ack.ok
    assert r.snapshot() == before, f"clearing {topic} changed a device"
    assert r.ctl.stats["rejected"] == rejected
    await r.healthy(f"clearing {topic}")


async def test_device_desired_bad_docs_keep_the_applied_intent(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    async with rig(any_broker, tmp_path) as r:
        await r.healthy("setup")  # dev-1 is in a meeting: a refused doc must keep it there
        topic = r.topics.desired("dev-1")
        for name, payload in bad_docs(r.ctl.store.last_rev() + 100):
            await refuse_doc(r, topic, ["dev-1"], payload, f"dev/dev-1/desired {name}")
        await accept_doc(r, topic, ["dev-1"], "dev/dev-1/desired with unknown fields")
        await clear_changes_nothing(r, topic, ["dev-1"])


async def test_group_desired_bad_docs_keep_the_applied_intent(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    fleets = (("g", 2, ["g1"]), ("o", 2, ()))
    async with rig(any_broker, tmp_path, fleets=fleets) as r:
        await r.healthy("setup")
        members = ["g-1", "g-2"]
        topic = r.topics.group_desired("g1")
        for name, payload in bad_docs(r.ctl.store.last_rev() + 100):
            if name in GROUP_CASES:
                await refuse_doc(r, topic, members, payload, f"grp/g1/desired {name}")
        everyone = [d.id for d in r.devices]
        for name, payload in bad_docs(r.ctl.store.last_rev() + 100)[:2]:
            await refuse_doc(
                r, r.topics.group_desired("all"), everyone, payload, f"grp/all/desired {name}"
            )
        await accept_doc(r, topic, members, "grp/g1/desired with unknown fields")
        await clear_changes_nothing(r, topic, members)


async def test_a_device_reporting_the_max_rev_does_not_stop_desired_ops(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    secret = any_broker.add_device(RAW_DEVICE)
    async with raw_rig(any_broker, tmp_path) as r, raw_device(r, secret) as raw:
        rejected = r.ctl.stats["rejected"]
        await raw.publish(
            r.topics.state(RAW_DEVICE), encode(State(rev=MAX_REV)), qos=1, retain=True
        )
        # Above every rev the controller handed out: a lie, refused (no progress).
        await wait_for(lambda: r.ctl.stats["rejected"] > rejected)
        assert r.ctl.registry.devices[RAW_DEVICE].rev != MAX_REV
        mark = r.wire.mark()
        request = ApiRequest(id="r-after-max", room="standup", group="sim", timeout_s=5)
        await r.wire.send(r.topics.api("join-all"), encode(request))
        got = await r.next_result(mark, "a join-all after a max rev", timeout=SILENCE_S)
        assert (got.ok, got.code) == (True, "accepted"), got
        await r.healthy("a device reporting the max rev")
