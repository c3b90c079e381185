"""Sign-in attempts per source address: a budget that refills (the console's /login).

Each attempt costs the broker a login with the operator's secret, and each wrong one is
a guess at it. An address gets `burst` attempts, then one every ``1 / per_s`` seconds; a
sign-in that succeeds gives its attempt back, so people signing in are never held up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

DEFAULT_BURST = 10
DEFAULT_PER_S = 1.0
_TABLE_LIMIT = 10_000  # addresses remembered; the oldest go first past it


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class SignInAttempts:
    burst: int = DEFAULT_BURST
    per_s: float = DEFAULT_PER_S
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, address: str) -> float:
        """Spend one attempt of `address`: 0.0 when it may try now, else the seconds until
        it may (nothing spent)."""
        now = time.monotonic()
        bucket = self._buckets.pop(address, None)  # re-inserted last: the table stays LRU
        if bucket is None:
            if len(self._buckets) >= _TABLE_LIMIT:
                del self._buckets[next(iter(self._buckets))]
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.per_s)
        bucket.stamp = now
        self._buckets[address] = bucket
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / self.per_s
        bucket.tokens -= 1.0
        return 0.0

    def refund(self, address: str) -> None:
        """Give back the attempt `address` spent (it signed in)."""
        bucket = self._buckets.get(address)
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """The Retry-After header's value for a wait (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait_s)))
