"""Mixer failures, as the meeting server reports them (`error` codes of docs/protocol.md §8)."""

from __future__ import annotations

from fleet.errors import FleetError

INSTALL_HINT = (
    "install Janus (`apt-get install janus`, as scripts/setup.sh does) and run "
    "`fleet up`, or start one and give `fleet controller --mixer ws://HOST:PORT`"
)


class MixerError(FleetError):
    """Root of mixer errors; `code` is the meeting error code a participant gets."""

    code = "mixer_failed"

    def __init__(self, mixer: str, reason: str) -> None:
        super().__init__(f"mixer {mixer}: {reason}")
        self.mixer = mixer
        self.reason = reason


class MixerUnavailable(MixerError):
    """No mixer is configured, or it cannot be reached."""

    code = "mixer_unavailable"


class MixerFailed(MixerError):
    """The mixer answered garbage, an error, or nothing in time."""

    code = "mixer_failed"


class RoomGone(MixerFailed):
    """The mixer answers, but the session's room on it is gone (destroyed behind the
    meeting server's back): the session moves to a new room."""
