"""Brains: a turn's text → what to do and what to answer.

`FleetBrain` (offline) understands a small grammar of fleet intents and nothing else: a
phrase that is no command gets no answer and changes nothing (people in a meeting talk to
each other, not only to the assistant). `LLMBrain` offers the same actions to any
OpenAI-compatible chat model as tools, and answers free questions too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.agents.voice.actions import FleetActions, spoken
from fleet.speech.http import post

log = logging.getLogger(__name__)

HELP = (
    "I can run the fleet. Say: leave the meeting. Mute the kitchen, or unmute it. "
    "Everyone join standup. How many devices are online. Or, what room is this."
)


@dataclass(frozen=True)
class Turn:
    """One speaker's turn: who (participant id and pid), what, when (time.time())."""

    participant: str
    pid: str
    text: str
    start: float
    end: float


class Brain(Protocol):
    def phrases(self) -> list[str] | None:
        """Everything this brain understands (a speech-to-text grammar), or None: anything."""
        ...

    async def respond(self, turn: Turn) -> str | None:
        """Carry the turn out; the answer to say, or None to stay silent."""
        ...


class FleetBrain:
    def __init__(self, actions: FleetActions) -> None:
        self.actions = actions

    def phrases(self) -> list[str]:
        names = list(self.actions.targets())
        rooms = list(self.actions.rooms())
        out = [
            "leave the meeting",
            "everyone leave the meeting",
            "how many devices are online",
            "what room is this",
            "what can you do",
        ]
        for name in names:
            out += [f"mute {name}", f"mute the {name}", f"unmute {name}", f"unmute the {name}"]
        out += [f"everyone join {room}" for room in rooms]
        return out

    async def respond(self, turn: Turn) -> str | None:
        words = turn.text.lower().split()
        text = " ".join(words)
        a = self.actions
        if text == "leave the meeting":
            return await a.leave(turn.pid)
        if text == "how many devices are online":
            return a.online()
        if text == "what room is this":
            return a.room()
        if text == "what can you do":
            return HELP
        if words[:1] in (["mute"], ["unmute"]):
            name = " ".join(words[2:] if words[1:2] == ["the"] else words[1:])
            target = a.targets().get(name)
            if target is not None:
                return await a.set_mic(target, on=words[0] == "unmute")
        if words[:2] == ["everyone", "join"]:
            room = a.rooms().get(" ".join(words[2:]))
            if room is not None:
                return await a.join_all(room)
        return None  # no command: nothing changes, nothing is said


# --- with an LLM --------------------------------------------------------------------------

Tool = Callable[[dict[str, Any]], Awaitable[str]]

SYSTEM_PROMPT = (
    "You are the voice assistant of a fleet of audio devices in a meeting. Answer in one or "
    "two short spoken sentences, no markup. Use the tools to act on the fleet; call devices, "
    "groups and rooms by the names the tools list."
)
MAX_TOOL_ROUNDS = 3


def _tool(name: str, description: str, **params: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
                "required": list(params),
            },
        },
    }


class LLMBrain:
    """An OpenAI-compatible chat completion with the fleet actions as tools."""

    def __init__(
        self, actions: FleetActions, url: str, key: str | None, model: str, timeout_s: float
    ) -> None:
        self.actions = actions
        self.url = url.rstrip("/") + "/chat/completions"
        self.key, self.model, self.timeout_s = key, model, timeout_s

    def phrases(self) -> None:
        return None

    def tools(self) -> list[dict[str, Any]]:
        return [
            _tool("leave_meeting", "Send the speaker's own device out of the meeting."),
            _tool(
                "set_mic",
                "Mute or unmute a device or group.",
                target="device or group name",
                on="'true' to unmute, 'false' to mute",
            ),
            _tool("everyone_join", "Send every device to a room.", room="room name"),
            _tool("devices_online", "How many devices are online."),
            _tool("current_room", "The room this meeting is in."),
        ]

    async def respond(self, turn: Turn) -> str | None:
        a = self.actions
        context = (
            f"Devices and groups: {', '.join(a.targets()) or 'none'}. "
            f"Rooms: {', '.join(a.rooms()) or 'none'}. The speaker is {spoken(turn.pid)}."
        )
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"{SYSTEM_PROMPT} {context}"},
            {"role": "user", "content": turn.text},
        ]
        for _ in range(MAX_TOOL_ROUNDS):
            body = {"model": self.model, "messages": messages, "tools": self.tools()}
            answer = await post(self.url, self.key, self.timeout_s, json=body)
            message = _first_message(answer)
            calls = message.get("tool_calls") or []
            if not calls:
                content = message.get("content")
                return content.strip() if isinstance(content, str) and content.strip() else None
            messages.append(message)
            for call in calls:
                result = await self._call(turn, call)
                messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": result})
        return None

    async def _call(self, turn: Turn, call: dict[str, Any]) -> str:
        function = call.get("function") or {}
        name = function.get("name")
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError:
            args = {}
        a = self.actions
        log.info("LLM calls %s(%s)", name, args)
        if name == "leave_meeting":
            return await a.leave(turn.pid)
        if name == "set_mic":
            target = a.targets().get(spoken(str(args.get("target", ""))))
            if target is None:
                return f"no device or group called {args.get('target')!r}"
            return await a.set_mic(target, on=str(args.get("on", "")).lower() == "true")
        if name == "everyone_join":
            room = a.rooms().get(spoken(str(args.get("room", ""))))
            return await a.join_all(room) if room else f"no room called {args.get('room')!r}"
        if name == "devices_online":
            return a.online()
        if name == "current_room":
            return a.room()
        return f"no tool called {name!r}"


def _first_message(answer: Any) -> dict[str, Any]:  # a JSON document of unknown shape
    from fleet.agents.voice.audio import VoiceError

    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise VoiceError("the LLM answered without a message") from None
    if not isinstance(message, dict):
        raise VoiceError("the LLM answered without a message")
    return message
