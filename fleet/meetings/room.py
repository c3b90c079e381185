"""A room: a named place to talk and its settings. It outlives its sessions (one live
at a time, the rest history); it is created by an operator (`room-create`, or an
operator's join or join-all that names it), or by anyone's join or intent where the
server allows it (`auto_create`). A call's room (kind `call`, made by the intercom) is
private: only its members may join it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.protocol.constants import DEFAULT_ROOM_CAP as DEFAULT_ROOM_CAP
from fleet.protocol.messages import DEFAULT_MIX_RATE, MixRate, RoomInfo, RoomKind, RoomMedia

if TYPE_CHECKING:
    from fleet.meetings.session import Session

DEFAULT_RATE: MixRate = DEFAULT_MIX_RATE


@dataclass(frozen=True, slots=True)
class Room:
    name: str  # the wire's `room` (roomId)
    cap: int = DEFAULT_ROOM_CAP  # most members its session holds
    media: RoomMedia = RoomMedia.AUTO  # how its sessions' audio flows (mesh, mixed, auto)
    rate: MixRate = DEFAULT_RATE  # the mixer's sample rate when a session is mixed
    created: float = 0.0
    kind: RoomKind = RoomKind.MEETING
    # A private room's members (pids); only they may join it. Empty: anyone may.
    members: frozenset[str] = frozenset()

    def admits(self, pid: str) -> bool:
        return self.kind is RoomKind.MEETING or pid in self.members

    def info(self, live: Session | None) -> RoomInfo:
        """What the API lists of the room, with its live session if any."""
        return RoomInfo(
            room=self.name,
            created=self.created,
            cap=self.cap,
            session=live.id if live else None,
            members=len(live.members) if live else 0,
            media=self.media,
            rate=self.rate,
            session_media=live.media if live else None,
            kind=self.kind,
        )
