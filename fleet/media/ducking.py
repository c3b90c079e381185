"""Ducking: a gain on what a device plays from its meeting, ramped in time, so an
announcement is heard over the meeting (docs/protocol.md §14: x0.25, 50 ms down, 200 ms
back up). Kept by time, not by frames, so every peer's stream follows the same ramp."""

from __future__ import annotations

import time

DUCK_GAIN = 0.25  # -12 dB
DUCK_DOWN_S = 0.050
DUCK_UP_S = 0.200


class Ducking:
    def __init__(self) -> None:
        self._from = 1.0
        self._to = 1.0
        self._start = 0.0
        self._ramp_s = 0.0

    def set(self, target: float, ramp_s: float, now: float | None = None) -> None:
        """Move linearly from the gain now to `target` over `ramp_s` seconds."""
        now = time.monotonic() if now is None else now
        self._from = self.gain(now)
        self._to = target
        self._start = now
        self._ramp_s = ramp_s

    def duck(self) -> None:
        self.set(DUCK_GAIN, DUCK_DOWN_S)

    def release(self) -> None:
        self.set(1.0, DUCK_UP_S)

    def gain(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._ramp_s <= 0 or now >= self._start + self._ramp_s:
            return self._to
        done = max(0.0, now - self._start) / self._ramp_s
        return self._from + (self._to - self._from) * done
