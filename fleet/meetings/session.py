"""A session, one live instance of a room, and its members, as the meeting server holds
them in memory (their history is in MeetingRecords).

Two ids name a member, and they are not the same thing:
- `pid` is the member's own id, the one in its topics (`meet/{pid}/up`): a device id, or
  an agent's or a browser's user name. It is the same in every session.
- `participant` (`p-1`, `p-2`, ...) is the id the session gave it on joining, unique in
  that session only. Peers address each other by it (`to`, `from`); the mixer is
  `mixer`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fleet.meetings.room import Room
from fleet.mixer.audiobridge import BridgeMember, BridgeRoom
from fleet.protocol.messages import (
    Capabilities,
    EventKind,
    FleetEvent,
    MediaPath,
    MeetCandidate,
    MeetJoined,
    PeerInfo,
)


@dataclass
class Member:
    participant: str  # its id in this session (p-N)
    pid: str  # its own id: device id, agent or user name
    caps: Capabilities | None  # what its media side can do, from its join
    joined: float

    def info(self) -> PeerInfo:
        return PeerInfo(participant=self.participant, pid=self.pid, caps=self.caps)


@dataclass(eq=False)  # one session is itself: compared by identity
class Session:
    id: str  # s-xxxxxxxx
    room: Room  # the room's settings as they were when the session started
    started: float
    members: dict[str, Member] = field(default_factory=dict)  # by participant id
    next_number: int = 1
    media: MediaPath = MediaPath.MESH
    mixer: str | None = None  # the mixer's name while mixed (None: none reachable)
    mixer_room: BridgeRoom | None = None  # its AudioBridge room there (a new one per placement)
    # Done once the AudioBridge room exists on `mixer`; offers and joins wait for it.
    ready: asyncio.Future[None] | None = None
    bridge: dict[str, BridgeMember] = field(default_factory=dict)  # by participant id
    # Trickled candidates for the mixer that came before the member's handle existed.
    early_candidates: dict[str, list[MeetCandidate]] = field(default_factory=dict)
    offers: dict[str, int] = field(default_factory=dict)  # offers to the mixer, per member

    def new_participant_id(self) -> str:
        participant = f"p-{self.next_number}"
        self.next_number += 1
        return participant

    def joined(self, member: Member, peers: list[PeerInfo]) -> MeetJoined:
        """The server's answer to `member`'s join: whom it connects to."""
        return MeetJoined(
            type="joined",
            room=self.room.name,
            session=self.id,
            participant=member.participant,
            peers=peers,
            media=self.media,
        )

    def event(self, kind: EventKind, pid: str | None, detail: str | None = None) -> FleetEvent:
        """A fleet event about this session (its start and end, media changes, talking)."""
        return FleetEvent(
            ts=time.time(),
            kind=kind,
            room=self.room.name,
            session=self.id,
            device=pid,
            detail=detail[:256] if detail else None,
        )


class Roster:
    """The live sessions, by room name, and where each member is, by pid."""

    def __init__(self) -> None:
        self.by_room: dict[str, Session] = {}
        self.by_pid: dict[str, tuple[Session, str]] = {}  # pid -> (session, participant id)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.by_room.values()))

    def where(self, pid: str) -> tuple[Session, str] | None:
        return self.by_pid.get(pid)

    def is_in(self, member: Member, session: Session) -> bool:
        """`member` is still in `session` (it did not leave, or join again, meanwhile)."""
        return self.by_pid.get(member.pid) == (session, member.participant)

    def open(self, session: Session) -> None:
        self.by_room[session.room.name] = session

    def admit(self, session: Session, member: Member) -> None:
        session.members[member.participant] = member
        self.by_pid[member.pid] = (session, member.participant)

    def remove(self, pid: str) -> tuple[Session, str] | None:
        """Take `pid` out of its session (the session stays, even empty: see `end`)."""
        where = self.by_pid.pop(pid, None)
        if where is not None:
            where[0].members.pop(where[1], None)
        return where

    def end(self, session: Session) -> None:
        self.by_room.pop(session.room.name, None)
