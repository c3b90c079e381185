"""The wire contract: docs/protocol.md against fleet.protocol (no network).

(a) every example in the spec decodes with the model it names and round-trips;
(b) topic builders and the matcher agree, for every kind and prefix;
(c) bad input is a ProtocolError, never pydantic's ValidationError;
(d) every example also validates against the published JSON Schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from fleet.errors import PayloadTooLarge, ProtocolError
from fleet.protocol import (
    DEFAULT_PREFIX,
    MAX_PAYLOAD_BYTES,
    ParsedTopic,
    TopicKind,
    Topics,
    decode,
    decode_for,
    encode,
    is_valid_id,
    json_schemas,
)
from fleet.protocol import messages as m
from tests.support import ROOT

DOC = ROOT / "docs" / "protocol.md"

# Every payload model, the topic kind it travels on, and its key in json_schemas().
MODELS: dict[str, tuple[type[BaseModel], TopicKind, str]] = {
    "Status": (m.Status, TopicKind.STATUS, "status"),
    "Desired": (m.Desired, TopicKind.DESIRED, "desired"),
    "State": (m.State, TopicKind.STATE, "state"),
    "Command": (m.Command, TopicKind.CMD, "cmd"),
    "Ack": (m.Ack, TopicKind.ACK, "ack"),
    "Telemetry": (m.Telemetry, TopicKind.TELE, "tele"),
    "MeetJoin": (m.MeetJoin, TopicKind.MEET_UP, "meet_up"),
    "MeetLeave": (m.MeetLeave, TopicKind.MEET_UP, "meet_up"),
    "MeetOffer": (m.MeetOffer, TopicKind.MEET_UP, "meet_up"),
    "MeetAnswer": (m.MeetAnswer, TopicKind.MEET_UP, "meet_up"),
    "MeetCandidate": (m.MeetCandidate, TopicKind.MEET_UP, "meet_up"),
    "MeetSend": (m.MeetSend, TopicKind.MEET_UP, "meet_up"),
    "MeetReject": (m.MeetReject, TopicKind.MEET_UP, "meet_up"),
    "MeetJoined": (m.MeetJoined, TopicKind.MEET_DOWN, "meet_down"),
    "MeetMedia": (m.MeetMedia, TopicKind.MEET_DOWN, "meet_down"),
    "MeetPeerJoined": (m.MeetPeerJoined, TopicKind.MEET_DOWN, "meet_down"),
    "MeetPeerLeft": (m.MeetPeerLeft, TopicKind.MEET_DOWN, "meet_down"),
    "MeetRelayedOffer": (m.MeetRelayedOffer, TopicKind.MEET_DOWN, "meet_down"),
    "MeetRelayedAnswer": (m.MeetRelayedAnswer, TopicKind.MEET_DOWN, "meet_down"),
    "MeetRelayedCandidate": (m.MeetRelayedCandidate, TopicKind.MEET_DOWN, "meet_down"),
    "MeetLeft": (m.MeetLeft, TopicKind.MEET_DOWN, "meet_down"),
    "MeetError": (m.MeetError, TopicKind.MEET_DOWN, "meet_down"),
    "MeetDelivered": (m.MeetDelivered, TopicKind.MEET_DOWN, "meet_down"),
    "ApiRequest": (m.ApiRequest, TopicKind.API, "api_request"),
    "ApiResult": (m.ApiResult, TopicKind.API_RESULT, "api_result"),
    "Sync": (m.Sync, TopicKind.SYNC, "sync"),
    "FleetEvent": (m.FleetEvent, TopicKind.EVENTS, "event"),
}

_MARKER_RE = re.compile(r"<!-- example: (\S+) -->")
_EXAMPLE_RE = re.compile(r"<!-- example: (\w+) -->\n```json\n(.*?)\n```\n", re.DOTALL)


def _examples() -> list[tuple[str, str, int]]:
    text = DOC.read_text(encoding="utf-8")
    return [
        (match[1], match[2], text.count("\n", 0, match.start()) + 1)
        for match in _EXAMPLE_RE.finditer(text)
    ]


EXAMPLES = _examples()
EXAMPLE_PARAMS = [
    pytest.param(model, body, id=f"{model}@L{line}") for model, body, line in EXAMPLES
]


# --- (a) the examples in the spec -------------------------------------------------------------


def test_doc_has_examples() -> None:
    assert len(EXAMPLES) >= len(MODELS)


def test_every_marker_is_followed_by_a_json_block() -> None:
    text = DOC.read_text(encoding="utf-8")
    markers = _MARKER_RE.findall(text)
    assert len(markers) == len(EXAMPLES), "an example marker without a ```json block right after"
    unknown = sorted(set(markers) - set(MODELS))
    assert not unknown, f"examples name unknown models: {unknown}"


def test_every_model_has_an_example() -> None:
    missing = sorted(set(MODELS) - {model for model, _, _ in EXAMPLES})
    assert not missing, f"models without an example in docs/protocol.md: {missing}"


@pytest.mark.parametrize(("model_name", "body"), EXAMPLE_PARAMS)
def test_example_decodes(model_name: str, body: str) -> None:
    model, kind, _ = MODELS[model_name]
    assert isinstance(json.loads(body), dict)
    msg = decode(model, body.encode())
    assert type(msg) is model
    # The topic fixes the model: a union (meet up/down) must pick the named member.
    by_topic = decode_for(kind, body.encode())
    assert type(by_topic) is model
    assert by_topic == msg


@pytest.mark.parametrize(("model_name", "body"), EXAMPLE_PARAMS)
def test_example_round_trips(model_name: str, body: str) -> None:
    model, kind, _ = MODELS[model_name]
    msg = decode(model, body.encode())
    wire = encode(msg)
    assert isinstance(wire, bytes)
    again = decode(model, wire)
    assert again == msg
    assert encode(again) == wire
    assert decode_for(kind, wire) == msg
    # Compact JSON, nulls left out, wire names (from, not from_).
    obj = json.loads(wire)
    assert None not in obj.values()
    assert "from_" not in obj


def test_required_examples_are_present() -> None:
    bodies = {(model, json.dumps(json.loads(body), sort_keys=True)) for model, body, _ in EXAMPLES}
    assert ("Status", '{"online": false}') in bodies, "the LWT example is missing"
    group_leaves = [
        body
        for model, body, _ in EXAMPLES
        if model == "Desired"
        and "meeting" in json.loads(body)
        and json.loads(body)["meeting"] is None
    ]
    assert group_leaves, "a desired doc with meeting: null is missing"
    acks = [json.loads(body) for model, body, _ in EXAMPLES if model == "Ack"]
    assert {"accepted", "ok", "unknown_op", "bad_args", "bad_request", "expired"} <= {
        a["code"] for a in acks
    }
    assert any(a["code"] == "accepted" and a["done"] is False for a in acks)
    assert any(a["id"] == "?" for a in acks)
    ops = {json.loads(body)["op"] for model, body, _ in EXAMPLES if model == "Command"}
    assert ops == {op.value for op in m.CommandOp}
    results = [json.loads(body) for model, body, _ in EXAMPLES if model == "ApiResult"]
    assert any(r.get("done") is False for r in results)
    assert any(r.get("done", True) and r["ok"] for r in results)
    assert any(r.get("code") == "bad_request" for r in results)
    assert any(r.get("omitted", 0) > 0 for r in results), "a capped result is missing"
    assert [model for model, _, _ in EXAMPLES].count("Sync") >= 1


def test_example_results_count_every_target() -> None:
    """`counts` covers every target: listed devices plus `omitted`."""
    for model, body, _ in EXAMPLES:
        if model != "ApiResult":
            continue
        result = decode(m.ApiResult, body.encode())
        if not result.devices and not result.omitted:
            continue  # a refusal targets nobody
        assert sum(result.counts.values()) == len(result.devices) + result.omitted, body
        listed = {d.outcome.value for d in result.devices}
        assert listed <= set(result.counts), body
        if result.omitted:
            # Only devices that have not converged are listed once the cap applies.
            assert all(d.outcome is not m.DeviceOutcome.CONVERGED for d in result.devices)


def test_example_acks_are_consistent() -> None:
    """Normative (docs/protocol.md section 6): ok exactly for ok/accepted; done false only
    with accepted. The Ack model does not enforce it, so the examples are checked here."""
    for model, body, _ in EXAMPLES:
        if model != "Ack":
            continue
        ack = decode(m.Ack, body.encode())
        assert ack.ok == (ack.code in (m.AckCode.OK, m.AckCode.ACCEPTED)), body
        assert ack.done or ack.code is m.AckCode.ACCEPTED, body


def test_doc_states_the_listed_devices_cap() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert m.MAX_LISTED_DEVICES == 256
    assert f"`MAX_LISTED_DEVICES` = **{m.MAX_LISTED_DEVICES}**" in text
    assert m.ApiResult.model_fields["omitted"].default == 0


def test_doc_topic_table_names_every_kind() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [kind.name for kind in TopicKind if f"| `{kind.name}` |" not in text]
    assert not missing, f"topic kinds missing from the topic table: {missing}"


def test_doc_mentions_every_enum_value() -> None:
    text = DOC.read_text(encoding="utf-8")
    values = [*m.AckCode, *m.CommandOp, *m.ApiOp, *m.DeviceOutcome]
    missing = [v.value for v in values if f"`{v.value}`" not in text]
    assert not missing, f"enum values the spec does not name: {missing}"


# --- (b) topics -------------------------------------------------------------------------------

DEVICE_KINDS = [
    TopicKind.STATUS,
    TopicKind.DESIRED,
    TopicKind.STATE,
    TopicKind.CMD,
    TopicKind.ACK,
    TopicKind.TELE,
]
PREFIXES = [DEFAULT_PREFIX, "site-a/fleet/v1", "x", "Lab_2.home/fleet"]


def _all_topics(t: Topics, name: str) -> list[tuple[str, ParsedTopic]]:
    built = [(t.device(kind, name), ParsedTopic(kind, name)) for kind in DEVICE_KINDS]
    built += [
        (t.status(name), ParsedTopic(TopicKind.STATUS, name)),
        (t.desired(name), ParsedTopic(TopicKind.DESIRED, name)),
        (t.state(name), ParsedTopic(TopicKind.STATE, name)),
        (t.cmd(name), ParsedTopic(TopicKind.CMD, name)),
        (t.ack(name), ParsedTopic(TopicKind.ACK, name)),
        (t.tele(name), ParsedTopic(TopicKind.TELE, name)),
        (t.group_desired(name), ParsedTopic(TopicKind.GROUP_DESIRED, name)),
        (t.meet_up(name), ParsedTopic(TopicKind.MEET_UP, name)),
        (t.meet_down(name), ParsedTopic(TopicKind.MEET_DOWN, name)),
        (t.api_result, ParsedTopic(TopicKind.API_RESULT, "result")),
        (t.sync(name), ParsedTopic(TopicKind.SYNC, name)),
        (t.events, ParsedTopic(TopicKind.EVENTS, "events")),
    ]
    built += [(t.api(op.value), ParsedTopic(TopicKind.API, op.value)) for op in m.ApiOp]
    return built


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("name", ["dev-1", "a", "0", "esp-kitchen-1", "a" * 64, "all"])
def test_builders_and_parse_round_trip(prefix: str, name: str) -> None:
    t = Topics(prefix)
    seen = set()
    for topic, expected in _all_topics(t, name):
        assert topic.startswith(f"{prefix}/")
        assert "+" not in topic
        assert "#" not in topic
        assert t.parse(topic) == expected, topic
        seen.add(expected.kind)
    assert seen == set(TopicKind)


def test_topic_strings_are_the_documented_ones() -> None:
    t = Topics()
    assert t.prefix == "fleet/v1"
    assert t.status("d1") == "fleet/v1/dev/d1/status"
    assert t.desired("d1") == "fleet/v1/dev/d1/desired"
    assert t.state("d1") == "fleet/v1/dev/d1/state"
    assert t.cmd("d1") == "fleet/v1/dev/d1/cmd"
    assert t.ack("d1") == "fleet/v1/dev/d1/ack"
    assert t.tele("d1") == "fleet/v1/dev/d1/tele"
    assert t.group_desired("all") == "fleet/v1/grp/all/desired"
    assert t.meet_up("p1") == "fleet/v1/meet/p1/up"
    assert t.meet_down("p1") == "fleet/v1/meet/p1/down"
    assert t.api("join-all") == "fleet/v1/api/join-all"
    assert t.api_result == "fleet/v1/api/result"
    assert t.sync("fleet-controller") == "fleet/v1/sync/fleet-controller"
    assert t.events == "fleet/v1/events"


def test_subscription_filters() -> None:
    t = Topics("site/fleet/v1")
    for kind in DEVICE_KINDS:
        assert t.all_devices(kind) == f"site/fleet/v1/dev/+/{kind.value}"
    assert t.all_group_desired == "site/fleet/v1/grp/+/desired"
    assert t.all_meet_up == "site/fleet/v1/meet/+/up"
    assert t.all_api_requests == "site/fleet/v1/api/+"
    assert t.everything == "site/fleet/v1/#"
    # A filter is not a topic: parse refuses wildcards.
    for flt in (
        t.all_devices(TopicKind.STATUS),
        t.all_group_desired,
        t.all_meet_up,
        t.all_api_requests,
        t.everything,
    ):
        assert t.parse(flt) is None


@pytest.mark.parametrize(
    "kind",
    [
        TopicKind.GROUP_DESIRED,
        TopicKind.MEET_UP,
        TopicKind.API,
        TopicKind.API_RESULT,
        TopicKind.SYNC,
    ],
)
def test_non_device_kinds_refused_by_device_builders(kind: TopicKind) -> None:
    t = Topics()
    with pytest.raises(ValueError, match="not a device topic"):
        t.device(kind, "dev-1")
    with pytest.raises(ValueError, match="not a device topic"):
        t.all_devices(kind)


def test_prefix_slashes_are_stripped() -> None:
    t = Topics("/site/fleet/v1/")
    assert t.prefix == "site/fleet/v1"
    assert t.status("d") == "site/fleet/v1/dev/d/status"


def test_custom_prefix_does_not_parse_other_prefixes() -> None:
    default, custom = Topics(), Topics("site-a/fleet/v1")
    assert custom.parse(default.status("d1")) is None
    assert default.parse(custom.status("d1")) is None
    # The prefix is matched literally, not as a regex: '.' is not a wildcard.
    dotted = Topics("a.b")
    assert dotted.parse("a.b/dev/d1/status") == ParsedTopic(TopicKind.STATUS, "d1")
    assert dotted.parse("axb/dev/d1/status") is None


BAD_IDS = [
    "",
    "Dev-1",
    "-dev",
    "dev_1",
    "dev.1",
    "dev 1",
    "dev/1",
    "dev+",
    "+",
    "#",
    "$sys",
    "é",
    "a" * 65,
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_refused_by_builders(bad: str) -> None:
    t = Topics()
    assert not is_valid_id(bad)
    builders = [
        t.status,
        t.desired,
        t.state,
        t.cmd,
        t.ack,
        t.tele,
        t.group_desired,
        t.meet_up,
        t.meet_down,
        t.sync,
    ]
    for build in builders:
        with pytest.raises(ValueError, match="invalid"):
            build(bad)
    for kind in DEVICE_KINDS:
        with pytest.raises(ValueError, match="invalid"):
            t.device(kind, bad)


@pytest.mark.parametrize("bad", [b for b in BAD_IDS if b and "/" not in b])
def test_invalid_ids_not_parsed(bad: str) -> None:
    t = Topics()
    for topic in (
        f"fleet/v1/dev/{bad}/status",
        f"fleet/v1/grp/{bad}/desired",
        f"fleet/v1/meet/{bad}/up",
        f"fleet/v1/sync/{bad}",
    ):
        assert t.parse(topic) is None, topic


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fleet/v1",
        "fleet/v1/",
        "fleet/v2/dev/d1/status",
        "other/dev/d1/status",
        "fleet/v1/dev/d1",
        "fleet/v1/dev/d1/status/extra",
        "fleet/v1/dev/d1/status/",
        "/fleet/v1/dev/d1/status",
        "fleet/v1//dev/d1/status",
        "fleet/v1/dev/d1/bogus",
        "fleet/v1/dev/d1/Status",
        "fleet/v1/dev//status",
        "fleet/v1/grp/g1/state",
        "fleet/v1/meet/p1/sideways",
        "fleet/v1/api/",
        "fleet/v1/api/Join",
        "fleet/v1/api/join/now",
        "fleet/v1/api/1join",
        "fleet/v1/api/" + "a" * 33,
        "fleet/v1/sync",
        "fleet/v1/sync/",
        "fleet/v1/sync/ctl/extra",
        "fleet/v1/sync/Fleet-Controller",
        "fleet/v1/dev/d1/sync",
        "fleet/v1/events/",
        "fleet/v1/events/join",
        "fleet/v1/Events",
        "$SYS/broker/uptime",
        "$share/g/fleet/v1/dev/d1/status",
        "homeassistant/status",
        "fleet/v1/ha/anything",
    ],
)
def test_foreign_topics_not_parsed(topic: str) -> None:
    assert Topics().parse(topic) is None


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "/",
        "//",
        "fleet//v1",
        "fleet/+",
        "+/v1",
        "fleet/#",
        "#",
        "$SYS",
        "$share/x/fleet",
        "fleet v1",
        "fleet/v1/é",
        "fleet/v1+",
    ],
)
def test_invalid_prefixes_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid topic prefix"):
        Topics(prefix)


def test_trailing_newline_refused_everywhere() -> None:
    t = Topics()
    assert not is_valid_id("dev-1\n")
    assert t.parse("fleet/v1/dev/dev-1/status\n") is None
    with pytest.raises(ValueError, match="invalid"):
        t.status("dev-1\n")
    with pytest.raises(ValueError, match="invalid topic prefix"):
        Topics("fleet/v1\n")


@pytest.mark.parametrize("op", ["x/#", "+", "result", "Join", ""])
def test_api_builder_refuses_bad_ops(op: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Topics().api(op)


def test_model_for_every_kind() -> None:
    assert set(m.MODEL_FOR_KIND) == set(TopicKind)


# --- (c) bad input ----------------------------------------------------------------------------

MALFORMED = [
    b"",
    b" ",
    b"{",
    b"}",
    b"not json",
    b"standup",
    b"[]",
    b"null",
    b"42",
    b'"text"',
    b"{'online': true}",
    b'{"online": true,}',
    b'{"online": true} trailing',
    b'{"online": true}{"online": false}',
    b"\xff\xfe\x00",
    b'{"fw": "\xff"}',
    b'\xef\xbb\xbf{"online": true}',
    b"[" * 5000,
]


@pytest.mark.parametrize("payload", MALFORMED)
@pytest.mark.parametrize("kind", list(TopicKind))
def test_malformed_json_is_a_protocol_error(kind: TopicKind, payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_for(kind, payload)
    assert not isinstance(info.value, ValidationError)
    assert info.value.what
    assert info.value.reason
    assert kind.value in str(info.value)


WRONG_TYPES: list[tuple[type[Any] | Any, dict[str, Any]]] = [
    (m.Status, {"online": "false"}),
    (m.Status, {"online": "true"}),
    (m.Status, {"online": 1}),
    (m.Status, {"online": None}),
    (m.Status, {"online": True, "groups": "kitchen"}),
    (m.Status, {"online": True, "groups": [1]}),
    (m.Status, {"online": True, "caps": "audio"}),
    (m.Status, {"online": True, "caps": {"mic": "yes"}}),
    (m.Status, {"online": True, "fw": 14}),
    (m.Status, {"online": True, "ts": "1767268800"}),
    (m.Desired, {"rev": "5"}),
    (m.Desired, {"rev": 5.0}),
    (m.Desired, {"rev": 5.5}),
    (m.Desired, {"rev": True}),
    (m.Desired, {"rev": None}),
    (m.Desired, {"rev": 5, "meeting": "standup"}),
    (m.Desired, {"rev": 5, "meeting": {"room": "standup", "mic": "false"}}),
    (m.Desired, {"rev": 5, "meeting": {"room": "standup", "volume": "50"}}),
    (m.Desired, {"rev": 5, "meeting": {"room": "standup", "volume": 50.5}}),
    (m.Desired, {"rev": 5, "meeting": {"room": "standup", "until": "soon"}}),
    (m.State, {"rev": "7"}),
    (m.State, {"rev": 7, "mic": 0}),
    (m.State, {"rev": 7, "meeting": {"room": "r", "peers": "p-1"}}),
    (m.State, {"rev": 7, "meeting": {"room": "r", "peers": [1]}}),
    (m.Command, {"id": 5, "op": "ping"}),
    (m.Command, {"id": "c1", "op": "ping", "args": []}),
    (m.Command, {"id": "c1", "op": "ping", "ttl_ms": "30000"}),
    (m.Command, {"id": "c1", "op": "ping", "ttl_ms": 1.5}),
    (m.Ack, {"id": "c1", "ok": "true", "code": "ok"}),
    (m.Ack, {"id": "c1", "ok": True, "code": "done"}),
    (m.Ack, {"id": "c1", "ok": True, "code": "ok", "done": 1}),
    (m.Ack, {"id": "c1", "ok": True, "code": "ok", "result": "pong"}),
    (m.Telemetry, {"ts": "now"}),
    (m.Telemetry, {"ts": 1.0, "wifi": {"rssi": -58.5}}),
    (m.Telemetry, {"ts": 1.0, "audio": {"peer": "p-1"}}),
    (m.MeetJoin, {"type": "join", "room": 5}),
    (m.MeetOffer, {"type": "offer", "to": "p-1", "sdp": 5}),
    (m.ApiRequest, {"timeout_s": "30"}),
    (m.ApiRequest, {"mic": "false"}),
    (m.ApiRequest, {"args": "seconds=5"}),
    (m.ApiResult, {"op": "join", "ok": True, "counts": {"converged": "2"}}),
    (m.ApiResult, {"op": "join", "ok": True, "omitted": "3"}),
    (m.ApiResult, {"op": "join", "ok": True, "omitted": 3.0}),
    (m.Sync, {"token": 5}),
    (m.Sync, {"token": None}),
    (
        m.ApiResult,
        {"op": "join", "ok": True, "devices": [{"device": "d1", "outcome": "x", "online": True}]},
    ),
]

MISSING_REQUIRED: list[tuple[type[Any] | Any, dict[str, Any]]] = [
    (m.Status, {}),
    (m.Status, {"fw": "1.0"}),
    (m.Desired, {}),
    (m.Desired, {"meeting": None}),
    (m.Desired, {"rev": 1, "meeting": {"mic": True}}),
    (m.State, {"meeting": None}),
    (m.State, {"rev": 1, "meeting": {"session": "s"}}),
    (m.Command, {"op": "ping"}),
    (m.Command, {"id": "c1"}),
    (m.Ack, {"id": "c1", "ok": True}),
    (m.Ack, {"ok": True, "code": "ok"}),
    (m.Telemetry, {}),
    (m.Telemetry, {"ts": 1.0, "audio": [{"loss": 0.1}]}),
    (m.Telemetry, {"ts": 1.0, "meeting": {"session": "s"}}),
    (m.MeetJoin, {"type": "join"}),
    (m.MeetOffer, {"type": "offer", "to": "p-1"}),
    (m.MeetOffer, {"type": "offer", "sdp": "v=0"}),
    (m.MeetAnswer, {"type": "answer", "sdp": "v=0"}),
    (m.MeetJoined, {"type": "joined", "room": "r", "session": "s"}),
    (
        m.MeetJoined,
        {"type": "joined", "room": "r", "session": "s", "participant": "p", "peers": [{}]},
    ),
    (m.MeetPeerJoined, {"type": "peer_joined"}),
    (m.MeetPeerLeft, {"type": "peer_left"}),
    (m.MeetRelayedOffer, {"type": "offer", "sdp": "v=0"}),
    (m.MeetRelayedOffer, {"type": "offer", "to": "p-1", "sdp": "v=0"}),
    (m.MeetRelayedAnswer, {"type": "answer", "sdp": "v=0"}),
    (m.MeetError, {"type": "error"}),
    (m.MeetDelivered, {"type": "message", "text": "hi"}),
    (m.ApiResult, {"ok": True}),
    (m.ApiResult, {"op": "join"}),
    (m.ApiResult, {"op": "join", "ok": True, "devices": [{"device": "d1", "outcome": "pending"}]}),
    (m.Sync, {}),
]

OUT_OF_RANGE: list[tuple[type[Any] | Any, dict[str, Any]]] = [
    (m.Status, {"online": True, "groups": ["Kitchen"]}),
    (m.Status, {"online": True, "groups": [f"g{i}" for i in range(33)]}),
    (m.Status, {"online": True, "fw": "x" * 257}),
    (m.Status, {"online": True, "caps": {"codecs": ["opus"] * 9}}),
    (m.Desired, {"rev": -1}),
    (m.Desired, {"rev": 1, "meeting": {"room": "Standup"}}),
    (m.Desired, {"rev": 1, "meeting": {"room": ".standup"}}),
    (m.Desired, {"rev": 1, "meeting": {"room": "a" * 65}}),
    (m.Desired, {"rev": 1, "meeting": {"room": "r", "volume": 101}}),
    (m.Desired, {"rev": 1, "meeting": {"room": "r", "volume": -1}}),
    (m.State, {"rev": 1, "meeting": {"room": "r", "peers": ["p"] * 65}}),
    (m.Command, {"id": "", "op": "ping"}),
    (m.Command, {"id": "c" * 65, "op": "ping"}),
    (m.Command, {"id": "c1", "op": ""}),
    (m.Command, {"id": "c1", "op": "ping", "ttl_ms": 0}),
    (m.Telemetry, {"ts": 1.0, "sys": {"cpu_load": 1.5}}),
    (m.Telemetry, {"ts": 1.0, "audio": [{"peer": "p", "loss": -0.1}]}),
    (m.MeetOffer, {"type": "offer", "to": "p-1", "sdp": ""}),
    (m.MeetOffer, {"type": "offer", "to": "p-1", "sdp": "x" * (32 * 1024 + 1)}),
    (m.MeetSend, {"type": "message", "text": "x" * 4097}),
    (
        m.MeetJoined,
        {
            "type": "joined",
            "room": "r",
            "session": "s",
            "participant": "p",
            "peers": [{"participant": "p", "pid": "Not-An-Id"}],
        },
    ),
    (m.ApiRequest, {"timeout_s": 0}),
    (m.ApiRequest, {"timeout_s": 3601}),
    (m.ApiRequest, {"for_s": 0}),
    (m.ApiRequest, {"device": "Dev 3"}),
    (m.ApiRequest, {"group": "all!"}),
    (m.ApiRequest, {"id": ""}),
    (m.ApiRequest, {"ttl_ms": -5}),
    (m.ApiResult, {"op": "join", "ok": True, "omitted": -1}),
    (m.ApiResult, {"op": "join", "ok": True, "counts": {"converged": -1}}),
    (
        m.ApiResult,
        {
            "op": "join-all",
            "ok": True,
            "devices": [
                {"device": f"d{i}", "outcome": "waiting", "online": True}
                for i in range(m.MAX_LISTED_DEVICES + 1)
            ],
        },
    ),
    (m.Sync, {"token": ""}),
    (m.Sync, {"token": "t" * 65}),
]


def _bad_param(model: Any, payload: dict[str, Any]) -> Any:
    name = getattr(model, "__name__", "model")
    return pytest.param(model, payload, id=f"{name}:{json.dumps(payload)[:60]}")


@pytest.mark.parametrize(
    ("model", "payload"),
    [_bad_param(*case) for case in WRONG_TYPES + MISSING_REQUIRED + OUT_OF_RANGE],
)
def test_invalid_payloads_are_protocol_errors(model: Any, payload: dict[str, Any]) -> None:
    raw = json.dumps(payload).encode()
    with pytest.raises(ProtocolError) as info:
        decode(model, raw)
    assert not isinstance(info.value, ValidationError)
    assert not isinstance(info.value, PayloadTooLarge)
    assert isinstance(info.value.__cause__, ValidationError)


def test_protocol_error_names_the_field() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(m.Desired, b'{"rev": "5"}')
    assert info.value.what == "Desired"
    assert "rev" in info.value.reason
    with pytest.raises(ProtocolError) as info:
        decode_for(TopicKind.STATUS, b'{"online": "false"}')
    assert info.value.what == "status payload"
    assert "online" in info.value.reason


def _padded(payload: bytes, size: int) -> bytes:
    """A valid JSON payload padded with trailing whitespace to exactly `size` bytes."""
    return payload + b" " * (size - len(payload))


def test_payload_at_the_limit_is_accepted() -> None:
    raw = _padded(b'{"online": false}', MAX_PAYLOAD_BYTES)
    assert len(raw) == MAX_PAYLOAD_BYTES == 64 * 1024
    assert decode(m.Status, raw) == m.Status(online=False)


@pytest.mark.parametrize("kind", list(TopicKind))
def test_oversize_payload_refused_before_parsing(kind: TopicKind) -> None:
    valid = _padded(b'{"online": false}', MAX_PAYLOAD_BYTES + 1)
    garbage = b"\xff" * (MAX_PAYLOAD_BYTES + 1)
    for raw in (valid, garbage, bytearray(valid), valid.decode()):
        with pytest.raises(PayloadTooLarge) as info:
            decode_for(kind, raw)
        assert info.value.size == MAX_PAYLOAD_BYTES + 1
        assert info.value.limit == MAX_PAYLOAD_BYTES
        assert isinstance(info.value, ProtocolError)
        assert info.value.__cause__ is None


def test_oversize_counts_utf8_bytes_not_characters() -> None:
    # 'é' is two bytes in UTF-8: a str under the limit in characters can be over it in bytes.
    body = '{"online": true, "fw": "' + "é" * (MAX_PAYLOAD_BYTES // 2) + '"}'
    assert len(body) < MAX_PAYLOAD_BYTES < len(body.encode())
    with pytest.raises(PayloadTooLarge):
        decode(m.Status, body)


def test_unknown_fields_are_ignored() -> None:
    raw = json.dumps(
        {
            "online": True,
            "fw": "1.0",
            "future": {"nested": [1, 2]},
            "caps": {"audio": True, "stereo": True},
        }
    ).encode()
    msg = decode(m.Status, raw)
    assert msg == m.Status(online=True, fw="1.0", caps=m.Capabilities(audio=True))
    wire = json.loads(encode(msg))
    assert "future" not in wire
    assert "stereo" not in wire["caps"]
    cmd = decode(m.Command, b'{"id": "c1", "op": "ping", "priority": 9}')
    assert cmd == m.Command(id="c1", op="ping")
    up = decode_for(TopicKind.MEET_UP, b'{"type": "leave", "reason": "bye"}')
    assert up == m.MeetLeave(type="leave")


def test_absent_optional_is_null() -> None:
    assert decode(m.Desired, b'{"rev": 3}') == decode(m.Desired, b'{"rev": 3, "meeting": null}')
    state = decode(m.State, b'{"rev": 3, "error": null}')
    assert state.meeting is None
    assert state.error is None
    assert state.mic is True
    ack = decode(m.Ack, b'{"id": "c1", "ok": true, "code": "ok"}')
    assert ack.done is True
    assert ack.detail == ""
    assert ack.result is None
    cmd = decode(m.Command, b'{"id": "c1", "op": "ping"}')
    assert cmd.args == {}
    assert cmd.ttl_ms == 30_000
    assert cmd.ts is None
    req = decode(m.ApiRequest, b"{}")
    assert req.group == "all"
    assert req.timeout_s == 30.0
    assert req.id is None


def test_integer_accepted_for_number_and_unicode_text() -> None:
    assert decode(m.Telemetry, b'{"ts": 1767268805}').ts == 1767268805.0
    assert decode(m.Status, '{"online": true, "hw": "Küche ☕"}').hw == "Küche ☕"
    raw = '{"online": true, "hw": "Küche ☕"}'.encode()
    assert decode(m.Status, raw).hw == "Küche ☕"


def test_lwt_and_leave_encode_small() -> None:
    # The LWT is exactly the documented {"online": false}, byte for byte.
    assert encode(m.Status(online=False)) == b'{"online":false}'
    assert json.loads(encode(m.Desired(rev=9))) == {"rev": 9}


def test_alias_from_on_the_wire() -> None:
    msg = m.MeetRelayedOffer(type="offer", from_="p-1", sdp="v=0")
    assert json.loads(encode(msg)) == {"type": "offer", "from": "p-1", "sdp": "v=0"}
    assert m.MeetRelayedOffer(type="offer", **{"from": "p-1"}, sdp="v=0") == msg


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (m.MeetRelayedOffer, {"type": "offer", "sdp": "v=0"}),
        (m.MeetRelayedAnswer, {"type": "answer", "sdp": "v=0"}),
        (m.MeetDelivered, {"type": "message", "text": "hi"}),
    ],
)
def test_from_underscore_is_tolerated_on_input(model: Any, body: dict[str, Any]) -> None:
    """`from_` is accepted on input (populate_by_name), not part of the contract:
    senders write `from`, and encode() always does."""
    by_alias = decode(model, json.dumps({**body, "from": "p-1"}).encode())
    by_name = decode(model, json.dumps({**body, "from_": "p-1"}).encode())
    assert by_name == by_alias
    wire = json.loads(encode(by_name))
    assert wire["from"] == "p-1"
    assert "from_" not in wire
    assert "from_" not in json.dumps(json_schemas()["meet_down"])


def test_api_result_cap_keeps_results_far_below_the_payload_limit() -> None:
    """The reason for MAX_LISTED_DEVICES: 1,000 ordinary entries would not fit in 64 KiB."""

    def entry(i: int) -> m.DeviceResult:
        return m.DeviceResult(
            device=f"esp-kitchen-{i}",
            outcome=m.DeviceOutcome.WAITING,
            online=True,
            rev=44,
            room="all-hands",
        )

    def size(n: int) -> int:
        result = m.ApiResult(
            id="r-1ca4",
            op="join-all",
            ok=True,
            done=False,
            code="accepted",
            rev=45,
            room="all-hands",
            group="all",
            devices=[entry(i) for i in range(n)],
            omitted=1000 - n,
            counts={"waiting": 1000},
        )
        return len(encode(result))

    assert size(m.MAX_LISTED_DEVICES) < MAX_PAYLOAD_BYTES // 2
    # Built without validation: the model itself refuses more than MAX_LISTED_DEVICES.
    uncapped = m.ApiResult.model_construct(
        id="r-1ca4", op="join-all", ok=True, devices=[entry(i) for i in range(1000)]
    )
    assert len(encode(uncapped)) > MAX_PAYLOAD_BYTES
    assert m.ApiResult(op="join", ok=True).omitted == 0


@pytest.mark.parametrize("kind", [TopicKind.MEET_UP, TopicKind.MEET_DOWN])
@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "bogus"}',
        b'{"type": "JOIN", "room": "r"}',
        b'{"type": null}',
        b'{"type": 1}',
        b'{"room": "standup"}',
        b"{}",
    ],
)
def test_unknown_meet_type_refused(kind: TopicKind, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_for(kind, payload)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (TopicKind.MEET_DOWN, b'{"type": "join", "room": "r"}'),
        (TopicKind.MEET_DOWN, b'{"type": "leave"}'),
        (TopicKind.MEET_UP, b'{"type": "joined", "room": "r", "session": "s", "participant": "p"}'),
        (TopicKind.MEET_UP, b'{"type": "peer_left", "participant": "p"}'),
        (TopicKind.MEET_UP, b'{"type": "error", "code": "room_full"}'),
        (TopicKind.MEET_UP, b'{"type": "left"}'),
    ],
)
def test_meet_types_only_in_their_direction(kind: TopicKind, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_for(kind, payload)


def test_offer_direction_is_fixed_by_to_and_from() -> None:
    up = decode_for(TopicKind.MEET_UP, b'{"type": "offer", "to": "p-2", "sdp": "v=0"}')
    assert isinstance(up, m.MeetOffer)
    down = decode_for(TopicKind.MEET_DOWN, b'{"type": "offer", "from": "p-1", "sdp": "v=0"}')
    assert isinstance(down, m.MeetRelayedOffer)
    with pytest.raises(ProtocolError):  # an up-style offer on the down topic
        decode_for(TopicKind.MEET_DOWN, b'{"type": "offer", "to": "p-2", "sdp": "v=0"}')


def test_bare_room_name_is_not_an_api_request_payload() -> None:
    # The spec lets api/join-all take a bare room name; the controller handles that before
    # decode(), which (correctly) refuses anything that is not a JSON object.
    for raw in (b"standup", b'"standup"'):
        with pytest.raises(ProtocolError):
            decode_for(TopicKind.API, raw)


def test_reject_codes_match_the_spec() -> None:
    assert {c.value for c in m.REJECT_CODES} == {"unknown_op", "bad_args", "expired", "bad_request"}
    assert {c.value for c in m.AckCode} == {
        "ok",
        "accepted",
        "unknown_op",
        "bad_args",
        "expired",
        "failed",
        "bad_request",
    }
    assert {op.value for op in m.CommandOp} == {"ping", "identify", "reboot", "ota", "set_groups"}
    assert {op.value for op in m.ApiOp} == {
        "join-all",
        "leave-all",
        "join",
        "leave",
        "cmd",
        "room-create",
        "room-rm",
        "rooms",
        "sessions",
        "say",
        "transcribe",
        "transcript",
        "web-login",
        "devices",
        "announce",
        "dnd",
        "call",
        "answer",
        "hangup",
    }


@pytest.mark.parametrize(
    "payload",
    [
        b'{"rev": 1, "meeting": {"room": "r", "until": Infinity}}',
        b'{"rev": 1, "ts": NaN}',
        b'{"rev": 1, "ts": 1e400}',
    ],
)
def test_non_finite_numbers_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(m.Desired, payload)


def test_str_payload_with_lone_surrogate_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(m.Status, '{"online": true, "fw": "\ud800"}')


# --- (d) JSON Schema --------------------------------------------------------------------------

SCHEMA_NAMES = {
    "status",
    "desired",
    "state",
    "cmd",
    "ack",
    "tele",
    "meet_up",
    "meet_down",
    "api_request",
    "api_result",
    "sync",
    "event",
}


def test_json_schemas_cover_every_message() -> None:
    schemas = json_schemas()
    assert set(schemas) == SCHEMA_NAMES
    assert {schema_name for _, _, schema_name in MODELS.values()} == SCHEMA_NAMES
    for model_name, (_, _, schema_name) in MODELS.items():
        schema = schemas[schema_name]
        titles = {schema.get("title")} | set(schema.get("$defs", {}))
        assert model_name in titles, f"{model_name} not in schema {schema_name}"
    json.dumps(schemas)  # serialisable as is


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        schema = root["$defs"][ref.removeprefix("#/$defs/")]
    return schema


_JSON_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    """A small JSON Schema check for the keywords pydantic emits (used without jsonschema)."""
    schema = _resolve(schema, root)
    if "anyOf" in schema or "oneOf" in schema:
        branches = schema.get("anyOf") or schema["oneOf"]
        matching = [b for b in branches if not _errors(value, b, root, path)]
        if not matching:
            return [f"{path}: matches no branch"]
        if "oneOf" in schema and len(matching) > 1:
            return [f"{path}: matches {len(matching)} oneOf branches"]
        return []
    errs: list[str] = []
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is not None:
        ok = isinstance(value, _JSON_TYPES[kind])
    else:
        ok = True
    if not ok:
        return [f"{path}: {value!r} is not {kind}"]
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errs.append(f"{path}: longer than maxLength")
        if len(value) < schema.get("minLength", 0):
            errs.append(f"{path}: shorter than minLength")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{path}: above maximum")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errs.append(f"{path}: not above exclusiveMinimum")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errs.append(f"{path}: not below exclusiveMaximum")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errs.append(f"{path}: more than maxItems")
        for i, item in enumerate(value):
            errs += _errors(item, schema.get("items", {}), root, f"{path}[{i}]")
    if isinstance(value, dict):
        errs += [
            f"{path}: missing {key!r}" for key in schema.get("required", []) if key not in value
        ]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errs += _errors(item, props[key], root, f"{path}.{key}")
            elif isinstance(extra, dict):
                errs += _errors(item, extra, root, f"{path}.{key}")
    return errs


def _schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return _errors(value, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(value)]


@pytest.mark.parametrize(("model_name", "body"), EXAMPLE_PARAMS)
def test_example_validates_against_json_schema(model_name: str, body: str) -> None:
    schema = json_schemas()[MODELS[model_name][2]]
    value = json.loads(body)
    assert _schema_errors(value, schema) == []
    # The encoded form (nulls left out, defaults written) validates too.
    encoded = json.loads(encode(decode(MODELS[model_name][0], body.encode())))
    assert _schema_errors(encoded, schema) == []


@pytest.mark.parametrize(
    ("schema_name", "value"),
    [
        ("status", {}),
        ("status", {"online": "false"}),
        ("desired", {"rev": -1}),
        ("desired", {"rev": 1, "meeting": {"room": "Standup"}}),
        ("ack", {"id": "c1", "ok": True, "code": "done"}),
        ("cmd", {"id": "", "op": "ping"}),
        ("meet_up", {"type": "bogus"}),
        ("meet_up", {"type": "offer", "to": "p-1"}),
        ("meet_down", {"type": "offer", "to": "p-1", "sdp": "v=0"}),
        ("api_request", {"timeout_s": 0}),
        ("api_result", {"op": "join", "ok": True, "devices": [{"device": "d1"}]}),
        ("api_result", {"op": "join", "ok": True, "omitted": -1}),
        ("sync", {}),
        ("sync", {"token": ""}),
        ("event", {"kind": "join"}),
        ("event", {"ts": 1.0, "kind": ""}),
    ],
)
def test_json_schema_refuses_what_the_models_refuse(schema_name: str, value: Any) -> None:
    schema = json_schemas()[schema_name]
    assert _schema_errors(value, schema), f"schema {schema_name} accepted {value}"
    kind = {
        "status": TopicKind.STATUS,
        "desired": TopicKind.DESIRED,
        "ack": TopicKind.ACK,
        "cmd": TopicKind.CMD,
        "meet_up": TopicKind.MEET_UP,
        "meet_down": TopicKind.MEET_DOWN,
        "api_request": TopicKind.API,
        "api_result": TopicKind.API_RESULT,
        "sync": TopicKind.SYNC,
        "event": TopicKind.EVENTS,
    }[schema_name]
    with pytest.raises(ProtocolError):
        decode_for(kind, json.dumps(value).encode())


@pytest.mark.parametrize(
    ("schema_name", "value"),
    [
        ("meet_down", {"type": "media", "media": "p2p"}),
        ("meet_down", {"type": "media"}),
        ("meet_down", {"type": "media", "media": "mixed", "peers": [{"participant": "mixer"}]}),
        (
            "meet_down",
            {"type": "joined", "room": "r", "session": "s", "participant": "p", "media": "both"},
        ),
        ("meet_down", {"type": "error", "code": "mixer_failed", "from": 7}),
        ("meet_up", {"type": "media", "media": "mixed"}),
        ("api_request", {"media": "hybrid"}),
        ("api_request", {"rate": 44100}),
        ("api_request", {"rate": "16000"}),
        ("api_request", {"cap": 257}),
        ("status", {"online": True, "caps": {"max_peers": 0}}),
        (
            "api_result",
            {
                "op": "rooms",
                "ok": True,
                "rooms": [{"room": "r", "created": 1, "cap": 6, "media": "p2p"}],
            },
        ),
        (
            "api_result",
            {
                "op": "sessions",
                "ok": True,
                "sessions": [
                    {
                        "session": "s",
                        "room": "r",
                        "started": 1,
                        "duration_s": 1,
                        "events": [{"ts": 1, "kind": ""}],
                    }
                ],
            },
        ),
    ],
)
def test_mixed_room_fields_are_refused_when_malformed(schema_name: str, value: Any) -> None:
    test_json_schema_refuses_what_the_models_refuse(schema_name, value)
