"""fleet.mixer.audiobridge, the parts that need no Janus: how an answer's plugin data is
checked, which of a member's handle events reach the meeting server, and the mix rates a
room may have. Requests against a real Janus are in tests/mixed/."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.mixer.audiobridge import RATES, AudioBridge, BridgeMember, plugin_data
from fleet.mixer.errors import MixerFailed
from fleet.mixer.janus import JanusConnection


def answer(data: object) -> dict[str, Any]:
    return {"janus": "success", "plugindata": {"plugin": "janus.plugin.audiobridge", "data": data}}


def test_plugin_data_is_the_answers_data() -> None:
    data = {"audiobridge": "success", "list": [{"room": "s-1"}]}
    assert plugin_data(answer(data), "list", "janus-1") == data


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ({"janus": "success"}, "'list' answered without plugin data"),
        ({"janus": "success", "plugindata": "nonsense"}, "'list' answered without plugin data"),
        (answer(["not", "a", "dict"]), "'list' answered without plugin data"),
        (answer({"error_code": 485, "error": "No such room"}), "'list' refused: 485 No such room"),
        (answer({"audiobridge": "error"}), "'list' refused: None"),
    ],
)
def test_an_answer_without_data_or_with_an_error_is_a_mixer_failure(
    reply: dict[str, Any], says: str
) -> None:
    with pytest.raises(MixerFailed) as caught:
        plugin_data(reply, "list", "janus-2")
    assert caught.value.mixer == "janus-2"
    assert caught.value.reason == says


def events_of(bridge_events: list[tuple[str, str, dict[str, Any]]]) -> AudioBridge:
    janus = JanusConnection("ws://127.0.0.1:1", "janus-1")
    return AudioBridge(
        janus, lambda room, member, event: bridge_events.append((room, member, event))
    )


def test_a_members_media_events_reach_the_meeting_server_with_their_detail() -> None:
    got: list[tuple[str, str, dict[str, Any]]] = []
    bridge = events_of(got)
    member = BridgeMember(room="s-1", id="p-1", handle=7, codec="opus")
    bridge.member_event(member, {"janus": "webrtcup", "session_id": 1, "sender": 7})
    bridge.member_event(member, {"janus": "hangup", "reason": "DTLS alert", "sender": 7})
    bridge.member_event(member, {"janus": "slowlink", "uplink": True, "lost": 12, "mid": "0"})
    assert got == [
        ("s-1", "p-1", {"event": "webrtcup"}),
        ("s-1", "p-1", {"event": "hangup", "reason": "DTLS alert"}),
        ("s-1", "p-1", {"event": "slowlink", "uplink": True, "lost": 12}),
    ]


def test_talking_is_taken_only_from_the_talkers_own_handle() -> None:
    """Janus tells every member's handle who talks: each notification is passed on once."""
    got: list[tuple[str, str, dict[str, Any]]] = []
    bridge = events_of(got)
    p1 = BridgeMember(room="s-1", id="p-1", handle=7, codec="opus")
    p2 = BridgeMember(room="s-1", id="p-2", handle=8, codec="pcmu")
    for what in ("talking", "stopped-talking"):
        event = {"janus": "event", "plugindata": {"data": {"audiobridge": what, "id": "p-2"}}}
        bridge.member_event(p1, event)
        bridge.member_event(p2, event)
    assert got == [
        ("s-1", "p-2", {"event": "talking"}),
        ("s-1", "p-2", {"event": "stopped-talking"}),
    ]


def test_other_events_are_not_passed_on() -> None:
    got: list[tuple[str, str, dict[str, Any]]] = []
    bridge = events_of(got)
    member = BridgeMember(room="s-1", id="p-1", handle=7, codec="opus")
    bridge.member_event(member, {"janus": "media", "type": "audio", "receiving": True})
    bridge.member_event(member, {"janus": "event", "plugindata": {"data": "garbage"}})
    bridge.member_event(
        member, {"janus": "event", "plugindata": {"data": {"audiobridge": "joined"}}}
    )
    bridge.member_event(member, {"janus": "event"})
    assert got == []
    # Without a listener nothing is passed on at all (and nothing breaks).
    AudioBridge(JanusConnection("ws://127.0.0.1:1")).member_event(member, {"janus": "hangup"})


async def test_a_room_is_created_only_at_a_mix_rate_the_meeting_server_uses() -> None:
    """Refused before any request: this bridge's connection never opened."""
    bridge = AudioBridge(JanusConnection("ws://127.0.0.1:1", "janus-1"))
    assert RATES == (16000, 48000)
    for rate in (8000, 24000, 44100):
        with pytest.raises(ValueError, match=f"mix rate {rate} is not one of"):
            await bridge.create_room("s-1", rate)
    assert bridge.name == "janus-1"
