"""Meetings: rooms, their sessions and members, on the server (the controller's meeting
part) and on the participant's side.

The terms, each with its class, are in docs/architecture.md ("Meetings: the terms").
"""

from fleet.meetings.part import DEFAULT_MAX_ROOMS, DEFAULT_MESH_CAP, MeetingServer
from fleet.meetings.participant import (
    LocalParticipant,
    MeetingRefused,
    RemoteParticipant,
    participant_link,
)
from fleet.meetings.records import MeetingRecords
from fleet.meetings.room import DEFAULT_ROOM_CAP, Room
from fleet.meetings.session import Member, Roster, Session

__all__ = [
    "DEFAULT_MAX_ROOMS",
    "DEFAULT_MESH_CAP",
    "DEFAULT_ROOM_CAP",
    "LocalParticipant",
    "MeetingRecords",
    "MeetingRefused",
    "MeetingServer",
    "Member",
    "RemoteParticipant",
    "Room",
    "Roster",
    "Session",
    "participant_link",
]
