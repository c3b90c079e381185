"""What the assistant can do to the fleet, through the automation API with its own scoped
credentials (an `agent` broker user: fleet/auth/acl.py), each answered in a sentence.

Devices, groups and rooms are called by their names spoken as words: `dev-1` is "dev
one", `living-room` is "living room".
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass

from fleet.client import FleetClient
from fleet.errors import FleetError
from fleet.meetings.participant import LocalParticipant
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult

log = logging.getLogger(__name__)

API_TIMEOUT_S = 8.0  # an answer waits at most this long for the fleet to converge
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
_TEENS += ["seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    if n < 10:
        return _ONES[n]
    if n < 20:
        return _TEENS[n - 10]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones])
    return " ".join(_ONES[int(d)] for d in str(n))


def spoken(name: str) -> str:
    """An id as words: "dev-12" → "dev twelve", "living-room" → "living room"."""
    parts = re.findall(r"[a-z]+|[0-9]+", name.lower())
    return " ".join(number_words(int(p)) if p.isdigit() else p for p in parts)


@dataclass(frozen=True)
class Target:
    kind: str  # "device" or "group"
    name: str


class ApiLink:
    """The agent's API client, opened again when its broker connection was lost (a
    FleetClient is one-shot; the agent lives through broker restarts)."""

    def __init__(self, url: BrokerUrl, topics: Topics, client_id: str) -> None:
        self.url, self.topics, self.client_id = url, topics, client_id
        self._client: FleetClient | None = None

    async def ensure(self) -> FleetClient:
        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        client = FleetClient(self.url, self.topics, client_id=self.client_id)
        await client.__aenter__()
        self._client = client
        return client

    @property
    def client(self) -> FleetClient:
        if self._client is None:
            raise FleetError("the API client is not open")
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


class FleetActions:
    def __init__(self, link: ApiLink, participant: LocalParticipant) -> None:
        self.link = link
        self.participant = participant
        self.known_rooms: set[str] = set()  # refreshed by refresh_rooms()

    # --- vocabulary ---------------------------------------------------------------------------
    def targets(self) -> dict[str, Target]:
        """Spoken name → device or group, from the registry (devices win a clash)."""
        out: dict[str, Target] = {}
        for rec in self.link.client.registry.devices.values():
            for group in rec.groups:
                out.setdefault(spoken(group), Target("group", group))
        for device_id in self.link.client.registry.devices:
            out[spoken(device_id)] = Target("device", device_id)
        return out

    def rooms(self) -> dict[str, str]:
        """Spoken room name → room: rooms devices are in or were sent to, and ours."""
        names = {self.participant.room} if self.participant.room else set()
        for rec in self.link.client.registry.devices.values():
            if rec.state and rec.state.meeting:
                names.add(rec.state.meeting.room)
        names |= self.known_rooms
        return {spoken(n): n for n in names if n}

    async def refresh_rooms(self) -> None:
        try:
            client = await self.link.ensure()
            result = await client.request(ApiOp.ROOMS, ApiRequest(timeout_s=API_TIMEOUT_S))
        except FleetError as exc:
            log.info("room list unavailable: %s", exc)
            return
        if result.ok:
            self.known_rooms = {r.room for r in result.rooms}

    # --- actions ------------------------------------------------------------------------------
    async def leave(self, pid: str) -> str:
        if pid not in self.link.client.registry.devices:
            return f"{spoken(pid)} is not a device I can send out."
        result = await self._ask(ApiOp.LEAVE, ApiRequest(device=pid, timeout_s=API_TIMEOUT_S))
        return f"Goodbye, {spoken(pid)}." if result.ok else _failed(result)

    async def set_mic(self, target: Target, on: bool) -> str:
        word = "unmuted" if on else "muted"
        if target.kind == "device":
            rec = self.link.client.registry.devices.get(target.name)
            meeting = rec.state.meeting if rec and rec.state else None
            if meeting is None:
                return f"{spoken(target.name)} is not in a meeting."
            request = ApiRequest(
                device=target.name, room=meeting.room, mic=on, timeout_s=API_TIMEOUT_S
            )
            result = await self._ask(ApiOp.JOIN, request)
        else:
            room = self.participant.room
            if room is None:
                return "I am not in a room."
            request = ApiRequest(group=target.name, room=room, mic=on, timeout_s=API_TIMEOUT_S)
            result = await self._ask(ApiOp.JOIN_ALL, request)
        return f"{spoken(target.name)} is {word}." if result.ok else _failed(result)

    async def join_all(self, room: str) -> str:
        result = await self._ask(ApiOp.JOIN_ALL, ApiRequest(room=room, timeout_s=API_TIMEOUT_S))
        if not result.ok:
            return _failed(result)
        joined = result.counts.get("converged", 0)
        return f"Everyone is joining {spoken(room)}. {_devices(joined)} joined."

    def online(self) -> str:
        count = sum(1 for rec in self.link.client.registry.devices.values() if rec.online)
        return f"{_devices(count)} {'is' if count == 1 else 'are'} online."

    def room(self) -> str:
        room = self.participant.room
        return f"This is room {spoken(room)}." if room else "I am not in a room."

    async def _ask(self, op: ApiOp, request: ApiRequest) -> ApiResult:
        result = await (await self.link.ensure()).request(op, request)
        log.info(
            "%s %s: %s %s", op.value, request.device or request.group, result.code, result.detail
        )
        return result


def _devices(n: int) -> str:
    return f"{number_words(n).capitalize()} device{'' if n == 1 else 's'}"


def _failed(result: ApiResult) -> str:
    return f"That did not work: {result.code.replace('_', ' ')}."
