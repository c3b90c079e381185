"""What provisioning raises: bad input, no board answering, a board that failed."""

from __future__ import annotations

from fleet.errors import ConfigError, FleetError


class ProvisioningError(ConfigError):
    """Input that cannot be flashed: a value, a partition table, a build directory."""


class BoardNotFound(FleetError):
    """No ESP board answered on a serial port (absent, busy, or not in download mode)."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(f"no board answered on {port}: {reason}")
        self.port = port
        self.reason = reason


class FlashFailed(FleetError):
    """A board answered, but the operation failed (wrong chip, layout, write or verify)."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(f"flashing the board on {port} failed: {reason}")
        self.port = port
        self.reason = reason
