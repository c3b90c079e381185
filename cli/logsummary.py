"""A terminal log that stays readable with a fleet in one process.

`fleet up` runs dozens of devices: one refused join-all would otherwise print a warning
per device, and one frozen peer a traceback per timed-out publish. The filter lets the
first of each kind of message through, counts the rest for a while, and then says how
many it held back; expected network conditions lose their traceback.
"""

from __future__ import annotations

import logging
import time

WINDOW_S = 10.0  # how long a kind of message is held back after it was shown
# Exceptions that are conditions of a network, not bugs: their message says enough.
EXPECTED = (TimeoutError, ConnectionError, OSError)


class SummarizingFilter(logging.Filter):
    def __init__(self, window_s: float = WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, int, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EXPECTED):
            record.msg = f"{record.msg} ({record.exc_info[1]!r})"
            record.exc_info = None
            record.exc_text = None
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.msg)  # the template, not its arguments
        now = time.monotonic()
        shown_at, held = self._seen.get(key, (-self.window_s, 0))
        if now - shown_at < self.window_s:
            self._seen[key] = (shown_at, held + 1)
            return False
        if len(self._seen) > 1000:  # kinds of message are few; keep the table small anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.window_s:g}s)"
        return True
