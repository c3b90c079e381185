"""The mesh relay: SDP, trickled candidates, rejects and messages from one member to
another of the same live session, and to no one else (docs/protocol.md §8).

The meeting server hands each message over with its sender already placed (in a live
session, as a participant id); messages to the mixer go to fleet.meetings.mixed.
"""

from __future__ import annotations

from fleet.meetings.outbox import Outbox
from fleet.meetings.session import Member, Session
from fleet.protocol.messages import (
    MeetAnswer,
    MeetCandidate,
    MeetDelivered,
    MeetError,
    MeetOffer,
    MeetReject,
    MeetRelayedAnswer,
    MeetRelayedCandidate,
    MeetRelayedOffer,
    MeetSend,
    Message,
)


class MeshRelay:
    def __init__(self, outbox: Outbox, stats: dict[str, int]) -> None:
        self._outbox = outbox
        self._stats = stats  # the server's counters: "relayed"

    async def sdp(
        self, pid: str, live: Session, sender: str, message: MeetOffer | MeetAnswer
    ) -> None:
        member = await self._target(pid, live, sender, message.to)
        if member is None:
            return
        relayed: Message
        if isinstance(message, MeetOffer):
            relayed = MeetRelayedOffer(type="offer", from_=sender, sdp=message.sdp)
        else:
            relayed = MeetRelayedAnswer(type="answer", from_=sender, sdp=message.sdp)
        self._stats["relayed"] += 1
        await self._outbox.send(member.pid, relayed)

    async def candidate(self, pid: str, live: Session, sender: str, message: MeetCandidate) -> None:
        """Trickle ICE: like an answer, only to a member of the sender's session."""
        member = await self._target(pid, live, sender, message.to)
        if member is None:
            return
        self._stats["relayed"] += 1
        relayed = MeetRelayedCandidate(
            type="candidate", from_=sender, candidate=message.candidate, mid=message.mid
        )
        await self._outbox.send(member.pid, relayed)

    async def reject(self, pid: str, live: Session, sender: str, reject: MeetReject) -> None:
        """A participant could not negotiate with `to`: `to` hears it as an error from it."""
        member = await self._target(pid, live, sender, reject.to)
        if member is None:
            return
        self._stats["relayed"] += 1
        await self._outbox.send(
            member.pid,
            MeetError(type="error", code=reject.code, detail=reject.detail, from_=sender),
        )

    async def message(self, pid: str, live: Session, sender: str, message: MeetSend) -> None:
        """A message to one member (`to`) or to every other member."""
        if message.to is not None:
            member = await self._target(pid, live, sender, message.to)
            if member is None:
                return
            receivers = [member]
        else:
            receivers = [m for p, m in live.members.items() if p != sender]
        delivered = MeetDelivered(
            type="message", from_=sender, text=message.text, data_b64=message.data_b64
        )
        for member in receivers:
            await self._outbox.send(member.pid, delivered)

    async def _target(self, pid: str, live: Session, sender: str, to: str) -> Member | None:
        """The member `to` of the sender's session; refused (and None) otherwise."""
        member = live.members.get(to)
        if member is None or to == sender:
            await self._outbox.refuse(
                pid, "unknown_participant", f"{to} is not in session {live.id}"
            )
            return None
        return member
