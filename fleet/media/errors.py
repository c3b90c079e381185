"""The media layer's errors: one root, and the refusal of what a participant cannot do."""

from __future__ import annotations

from fleet.errors import FleetError


class MediaError(FleetError):
    """A peer connection, codec, source or sink that cannot do what was asked."""


class MediaNotSupported(MediaError):
    """Asked for audio a participant's capabilities rule out (e.g. playing on a board with
    no speaker)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"not supported: {what}: {reason}")
        self.what = what
        self.reason = reason
