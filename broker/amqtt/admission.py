"""Who the embedded broker lets in before any MQTT is read: bounds and a login rate limit.

A socket costs a file descriptor and a task from accept until it closes. Without
bounds, idle sockets that never send CONNECT exhaust the broker's descriptors, and a
client flooding wrong passwords makes the broker hash and log for each one. So:

- at most `max_connections` sockets in all (below the descriptor limit);
- at most `max_pending_per_address` sockets per source address that have not
  finished CONNECT yet (each also times out, see broker/amqtt/embedded.py);
- a client id that fails `failed_login_burst` logins from one source address faster than
  `failed_logins_per_s` refills is refused (CONNACK 5) without its password being
  checked, until its budget has refilled one login. The budget is per address *and*
  client id, so a flood from one address does not lock out a legitimate client with
  its own id on the same address (an operator's CLI beside a misbehaving script);
  what a flood of fresh ids costs is bounded by the cost of a check
  (fleet/auth/logins.py) and, beyond that, by the network edge.

All of it is plain counting per event: O(1) per connection.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

# Descriptors the broker keeps for itself beyond client sockets (files, the database,
# listeners, the event loop).
_FD_HEADROOM = 256
DEFAULT_MAX_PENDING_PER_ADDRESS = 256
DEFAULT_FAILED_LOGINS_PER_S = 2.0
DEFAULT_FAILED_LOGIN_BURST = 20
_FAILURE_TABLE_LIMIT = 100_000  # failure buckets remembered; the oldest go first past it


def default_max_connections() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if soft != resource.RLIM_INFINITY else 1_000_000
    return max(16, limit - _FD_HEADROOM)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Admission:
    max_connections: int = field(default_factory=default_max_connections)
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS
    failed_logins_per_s: float = DEFAULT_FAILED_LOGINS_PER_S
    failed_login_burst: int = DEFAULT_FAILED_LOGIN_BURST
    connections: int = 0
    refused: int = 0  # sockets closed at accept, for logs and tests
    _pending: dict[str, int] = field(default_factory=dict)
    _failures: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    def admit(self, address: str) -> bool:
        """Count a new socket from `address`; False (and nothing counted) to close it now."""
        if (
            self.connections >= self.max_connections
            or self._pending.get(address, 0) >= self.max_pending_per_address
        ):
            self.refused += 1
            return False
        self.connections += 1
        self._pending[address] = self._pending.get(address, 0) + 1
        return True

    def connected(self, address: str) -> None:
        """The socket from `address` finished CONNECT (or gave up on it)."""
        left = self._pending.get(address, 0) - 1
        if left > 0:
            self._pending[address] = left
        else:
            self._pending.pop(address, None)

    def closed(self) -> None:
        self.connections -= 1

    def login_failed(self, address: str, client_id: str) -> None:
        now = time.monotonic()
        key = (address, client_id)
        bucket = self._refill(key, now)
        if bucket is None:
            if len(self._failures) >= _FAILURE_TABLE_LIMIT:
                del self._failures[next(iter(self._failures))]
            bucket = _Bucket(float(self.failed_login_burst), now)
            self._failures[key] = bucket
        # Not below zero: failures admitted together (a device whose credentials are not
        # there yet) must not lock it out for longer than a refill of one.
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def may_try_login(self, address: str, client_id: str) -> bool:
        """False while `client_id` from `address` has spent its failed-login budget."""
        bucket = self._refill((address, client_id), time.monotonic())
        return bucket is None or bucket.tokens >= 1.0

    def _refill(self, key: tuple[str, str], now: float) -> _Bucket | None:
        bucket = self._failures.get(key)
        if bucket is None:
            return None
        bucket.tokens = min(
            float(self.failed_login_burst),
            bucket.tokens + (now - bucket.stamp) * self.failed_logins_per_s,
        )
        bucket.stamp = now
        if bucket.tokens >= self.failed_login_burst:
            del self._failures[key]  # back to a full budget: forget it
            return None
        return bucket
