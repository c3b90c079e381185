"""The roles a broker user has, and the API ops each role may request (docs/protocol.md §11).

A controller-role user may request every op; a device only the intercom's (DEVICE_API_OPS),
for itself, on its own `api/by/{id}/{op}`. The lists are the policy
both brokers enforce on ``api/{op}`` topics (`fleet.auth.acl` for the embedded broker,
the generated Mosquitto ACL file for Mosquitto).
"""

from __future__ import annotations

from enum import StrEnum

from fleet.protocol.constants import ApiOp


class Role(StrEnum):
    DEVICE = "device"
    CONTROLLER = "controller"
    HOMEASSISTANT = "homeassistant"
    AGENT = "agent"  # a Python participant that may also use some API ops (AGENT_API_OPS)
    # One person's browser (a signed-in operator's console): minted by the controller
    # (web-login), short-lived; its username is its client id and its participant pid.
    WEB = "web"


# The ops an agent-role user may request (§11): meetings, rooms and sessions to read, and
# transcripts, and announcements; no commands, no room management.
AGENT_API_OPS = (
    ApiOp.JOIN_ALL,
    ApiOp.LEAVE_ALL,
    ApiOp.JOIN,
    ApiOp.LEAVE,
    ApiOp.ROOMS,
    ApiOp.SESSIONS,
    ApiOp.TRANSCRIBE,
    ApiOp.TRANSCRIPT,
    ApiOp.ANNOUNCE,
)

# The ops a person's browser (web role) may request (§11.2): meetings and the fleet view,
# announcements, a device's do-not-disturb and calls between devices. The person signed
# in with the operator's secret, and these move devices no further than a join-all does.
WEB_API_OPS = (
    ApiOp.JOIN_ALL,
    ApiOp.LEAVE_ALL,
    ApiOp.JOIN,
    ApiOp.LEAVE,
    ApiOp.ROOMS,
    ApiOp.SESSIONS,
    ApiOp.SAY,
    ApiOp.ANNOUNCE,
    ApiOp.DND,
    ApiOp.CALL,
    ApiOp.HANGUP,
)

# The ops a homeassistant-role user may request (§11): meetings, calls, announcements
# and do-not-disturb; no commands (reboot, OTA) and no room management.
HOMEASSISTANT_API_OPS = (
    ApiOp.JOIN_ALL,
    ApiOp.LEAVE_ALL,
    ApiOp.JOIN,
    ApiOp.LEAVE,
    ApiOp.ANNOUNCE,
    ApiOp.DND,
    ApiOp.CALL,
    ApiOp.ANSWER,
    ApiOp.HANGUP,
)

# The ops a device may request (§14.7), its button's: only on its own `api/by/{id}/{op}`,
# and the controller acts on them only for the device itself.
DEVICE_API_OPS = (ApiOp.CALL, ApiOp.ANSWER, ApiOp.HANGUP)
