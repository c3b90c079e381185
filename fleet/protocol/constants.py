"""The contract's numbers and names that need no payload model: the protocol version,
room limits and defaults, and the enums of ops and media modes.

Kept apart from `messages` (pydantic models) so the CLI's command tree, its --help and
--version, and the broker's roles load without building any model.
"""

from __future__ import annotations

from enum import StrEnum

PROTOCOL_VERSION = 1

# Members of one session: a mixed room holds this many, a mesh far fewer (its mesh cap).
MAX_ROOM_CAP = 256
# A room's cap when its creator names none (a mixed session holds this many).
DEFAULT_ROOM_CAP = 256
# Each member of a mesh holds one peer connection per other member; an ESP32-S3 manages
# 2-3 (~60 KB each), a Python participant a handful. Past this an `auto` session goes mixed.
DEFAULT_MESH_CAP = 4

# Lifetime of a person's browser credentials (web-login): a work day at most.
DEFAULT_WEB_TTL_S = 3600.0
MAX_WEB_TTL_S = 12 * 3600.0


class CommandOp(StrEnum):
    PING = "ping"
    IDENTIFY = "identify"
    REBOOT = "reboot"
    OTA = "ota"
    SET_GROUPS = "set_groups"


class RoomMedia(StrEnum):
    """A room's media mode: its sessions' path, or `auto` (mesh up to the mesh cap)."""

    MESH = "mesh"
    MIXED = "mixed"
    AUTO = "auto"


class ApiOp(StrEnum):
    JOIN_ALL = "join-all"
    LEAVE_ALL = "leave-all"
    JOIN = "join"
    LEAVE = "leave"
    CMD = "cmd"
    # the meeting server's (§8.4)
    ROOM_CREATE = "room-create"
    ROOM_RM = "room-rm"
    ROOMS = "rooms"
    SESSIONS = "sessions"
    SAY = "say"
    # short-lived credentials for one person's browser (§11.2); operators only
    WEB_LOGIN = "web-login"
    # transcripts (§8.5): an agent appends what was said; anyone with the API reads it
    TRANSCRIBE = "transcribe"
    TRANSCRIPT = "transcript"
    # what the controller knows of each device, offline ones too (their last birth)
    DEVICES = "devices"
    # announcements and do-not-disturb (§14)
    ANNOUNCE = "announce"
    DND = "dnd"
    # intercom calls (§14.3): a private room for two devices (or a device and a group)
    CALL = "call"
    ANSWER = "answer"
    HANGUP = "hangup"
