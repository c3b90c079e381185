"""Janus's AudioBridge plugin, as the meeting server uses it: one room per mixed
session, one plugin handle (one PeerConnection) per member.

Facts this follows (measured against Janus 1.1.2): a complete SDP from aiortc is
accepted as is, and a browser's offer without candidates is completed by `trickle`
messages; `join` and `configure` are answered by an event after an ack; a G.711-only
offer is answered `inactive` unless the join names the codec; `prebuffer: 0` means
permanent silence, 2 packets (40 ms) is the low-latency choice (the default 6 adds ~120
ms); the mix sent to each member leaves that member out.

Nobody but the meeting server may use a room: each is private, made with the plugin's
`admin_key` (the mixer's API secret), a `secret` to destroy it and a `pin` to join it,
both the server's own per room (`BridgeRoom`), and no plain-RTP members. A room that
is destroyed anyway is told to each member's handle (`destroyed`), which `on_event`
passes on; a request naming a room that is gone raises `RoomGone`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleet.mixer.errors import MixerFailed, RoomGone
from fleet.mixer.janus import Event, JanusConnection

log = logging.getLogger(__name__)

PLUGIN = "janus.plugin.audiobridge"
PREBUFFER_PACKETS = 2
RATES = (16000, 48000)
G711 = ("pcmu", "pcma")
NO_SUCH_ROOM = 485  # JANUS_AUDIOBRIDGE_ERROR_NO_SUCH_ROOM


@dataclass(frozen=True, slots=True)
class BridgeRoom:
    """One AudioBridge room as the meeting server made it: an id that says nothing of the
    session, the secret that destroys it and the pin that joins it."""

    id: str
    secret: str
    pin: str


@dataclass
class BridgeMember:
    """One member's handle in one room."""

    room: str
    id: str  # its AudioBridge participant id (the meeting's participant id)
    handle: int
    codec: str
    muted: bool = False


class AudioBridge:
    """The AudioBridge on one Janus connection. `on_event(room, event)` hears the
    room's notifications (joins, leaves, talking) once each, from the member's own handle."""

    def __init__(
        self,
        janus: JanusConnection,
        on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.janus = janus
        self.on_event = on_event
        self._admin_key = admin_key  # the plugin's, when it has one: creates rooms, lists all
        self._control: int | None = None

    @property
    def name(self) -> str:
        return self.janus.name

    async def _admin(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous request on the control handle; the plugin's data, checked."""
        if self._control is None:
            self._control = await self.janus.attach(PLUGIN)
        answer = await self.janus.request({"janus": "message", "body": body}, self._control)
        return plugin_data(answer, body["request"], self.name)

    def _keyed(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "admin_key": self._admin_key} if self._admin_key else body

    async def create_room(
        self, room: BridgeRoom, rate: int = 16000, rtp_members: bool = False
    ) -> None:
        if rate not in RATES:
            raise ValueError(f"mix rate {rate} is not one of {RATES}")
        await self._admin(
            self._keyed(
                {
                    "request": "create",
                    "room": room.id,
                    "secret": room.secret,
                    "pin": room.pin,
                    "sampling_rate": rate,
                    "is_private": True,
                    "permanent": False,
                    "default_prebuffering": PREBUFFER_PACKETS,
                    "audiolevel_event": True,
                    "audio_active_packets": 50,  # a second of 20 ms packets
                    "audio_level_average": 40,
                    "allow_rtp_participants": rtp_members,
                }
            )
        )

    async def destroy_room(self, room: BridgeRoom) -> None:
        await self._admin({"request": "destroy", "room": room.id, "secret": room.secret})

    async def rooms(self) -> list[str]:
        """Every room's id (private ones too, with the admin key)."""
        data = await self._admin(self._keyed({"request": "list"}))
        return [str(r.get("room")) for r in data.get("list", []) if isinstance(r, dict)]

    async def participants(self, room: str) -> list[dict[str, Any]]:
        data = await self._admin({"request": "listparticipants", "room": room})
        listed = data.get("participants", [])
        return [p for p in listed if isinstance(p, dict)]

    async def join(
        self,
        room: BridgeRoom,
        member: str,
        display: str,
        sdp: str,
        codec: str,
        muted: bool = False,
    ) -> tuple[BridgeMember, str]:
        """A new handle for `member`, joined with its offer; (the member, the SDP answer)."""
        entry: BridgeMember | None = None

        def listener(event: Event) -> None:
            if entry is not None:
                self.member_event(entry, event)

        handle = await self.janus.attach(PLUGIN, listener)
        body: dict[str, Any] = {
            "request": "join",
            "room": room.id,
            "pin": room.pin,
            "id": member,
            "display": display[:64],
            "muted": muted,
            "prebuffer": PREBUFFER_PACKETS,
        }
        if codec in G711:
            body["codec"] = codec
        try:
            answer = await self.janus.request(
                {"janus": "message", "body": body, "jsep": {"type": "offer", "sdp": sdp}},
                handle,
                want_event=True,
            )
            data = plugin_data(answer, "join", self.name)
            if data.get("audiobridge") != "joined":
                raise MixerFailed(self.name, f"join answered {data.get('audiobridge')!r}")
            jsep = answer.get("jsep")
            if not isinstance(jsep, dict) or jsep.get("type") != "answer" or not jsep.get("sdp"):
                raise MixerFailed(self.name, "join answered without an SDP answer")
        except BaseException:
            await self._detach_quietly(handle)
            raise
        entry = BridgeMember(room.id, member, handle, codec, muted)
        return entry, str(jsep["sdp"])

    async def configure(self, member: BridgeMember, muted: bool) -> None:
        answer = await self.janus.request(
            {"janus": "message", "body": {"request": "configure", "muted": muted}},
            member.handle,
            want_event=True,
        )
        plugin_data(answer, "configure", self.name)
        member.muted = muted

    async def trickle(self, member: BridgeMember, candidate: str | None, mid: str) -> None:
        """One more ICE candidate of the member's offer (None: its last one), for Janus to
        check (trickle ICE, docs/protocol.md §8.6)."""
        if candidate is None:
            body: dict[str, Any] = {"completed": True}
        else:
            line = candidate if candidate.startswith("candidate:") else f"candidate:{candidate}"
            body = {"candidate": line, "sdpMid": mid}
        await self.janus.request({"janus": "trickle", "candidate": body}, member.handle)

    async def leave(self, member: BridgeMember) -> None:
        """Detach the member's handle: Janus hangs up and drops it from the room."""
        await self._detach_quietly(member.handle)

    async def _detach_quietly(self, handle: int) -> None:
        try:
            await self.janus.detach(handle)
        except Exception as exc:  # a mixer that is gone has dropped the handle anyway
            log.debug("%s: detach %s: %s", self.name, handle, exc)

    def member_event(self, member: BridgeMember, event: Event) -> None:
        """What a member's own handle heard, passed to `on_event` once (hangups, media up,
        slow links, the member's own talking and stopped talking)."""
        if self.on_event is None:
            return
        kind = event.get("janus")
        if kind in ("webrtcup", "hangup", "slowlink"):
            detail = {k: v for k, v in event.items() if k in ("reason", "uplink", "lost")}
            self.on_event(member.room, member.id, {"event": kind, **detail})
            return
        data = (event.get("plugindata") or {}).get("data")
        if not isinstance(data, dict):
            return
        what = data.get("audiobridge")
        if what == "destroyed":  # the room is gone, with every member in it
            self.on_event(member.room, member.id, {"event": "destroyed"})
            return
        # Talking notifications go to every member's handle: take each from the talker's own.
        if what in ("talking", "stopped-talking") and str(data.get("id")) == member.id:
            self.on_event(member.room, member.id, {"event": what})


def plugin_data(answer: Event, request: str, name: str) -> dict[str, Any]:
    """The plugin's data in a Janus answer to `request`; MixerFailed when it has none or
    says it refused."""
    plugindata = answer.get("plugindata")
    data = plugindata.get("data") if isinstance(plugindata, dict) else None
    if not isinstance(data, dict):
        raise MixerFailed(name, f"{request!r} answered without plugin data")
    if data.get("error_code") == NO_SUCH_ROOM:
        raise RoomGone(name, f"{request!r} refused: {NO_SUCH_ROOM} {data.get('error', '')}".strip())
    if "error_code" in data or data.get("audiobridge") == "error":
        raise MixerFailed(
            name, f"{request!r} refused: {data.get('error_code')} {data.get('error', '')}".strip()
        )
    return data
