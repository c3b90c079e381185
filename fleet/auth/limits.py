"""What a user may cost a broker (docs/protocol.md §11.3), on both brokers: a login, the
sessions it holds, the messages queued for it.

A chosen secret is stretched (`CHOSEN_SECRET_ITERATIONS`): a wrong guess costs the broker
the full stretch, so a flood of guesses against one user would hold a core. `LoginGuard`
makes failed logins cheap without weakening the stored hash: a password that logged in
before, or failed before, is recognised by one keyed digest (kept in memory only, under a
key of this process), and each user gets a budget of full checks (`STRETCHED_CHECK_BURST`,
refilled at `STRETCHED_CHECKS_PER_S`); past it an unknown password is refused unhashed.
A client that logged in once keeps getting in during a flood against its own name; online
guessing is capped at the refill rate. Generated secrets are cheap to check
(`GENERATED_SECRET_ITERATIONS`) and need no guard. broker/mosquitto/clientid.c applies the
same rule with the same numbers.

Sessions: a homeassistant or agent user may connect with ids that belong to nobody, so it
could open any number of sessions; `SESSIONS_PER_USER` bounds those it holds (connected,
or persistent and not expired yet). Only devices and controller-role users get messages
queued while offline (`queues_offline`): the others read retained state when they return.

Publishes: a homeassistant, agent or web user publishes requests, entity commands and
its own signalling, a few a second at most; `PublishBudget` gives each such user
`PUBLISH_BURST` publishes at once, refilled at `PUBLISHES_PER_S`, over all its sessions,
and the broker drops the rest (MQTT 5: PUBACK 0x87), so a flood from one user costs the
controller no more than that rate. Devices and controller-role users are not bounded.

Queues: every client's queue of undelivered messages is bounded by count and bytes
(`QUEUED_MESSAGES_PER_CLIENT`, `QUEUED_BYTES_PER_CLIENT`). They are deep because the
controller must not lose a message of a fleet-wide fan-out while it is connected (it
uses clean sessions, so it never has an offline queue): at 10,000 devices its connect
replays about 30,000 retained docs of a few hundred bytes each, about 15 MiB. Mosquitto
applies one bound to every client, so the roles that may not queue offline get their
shallow offline queues from `queues_offline` (zero), not from the bound.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field

from fleet.auth.credentials import Credential
from fleet.auth.hashing import GENERATED_SECRET_ITERATIONS
from fleet.auth.roles import Role

# Full checks of a stretched hash per user: a burst, then this many a second.
STRETCHED_CHECK_BURST = 10
STRETCHED_CHECKS_PER_S = 2.0
# Wrong passwords remembered per user (a misconfigured client retrying costs a digest).
FAILURES_REMEMBERED = 16
# Sessions a homeassistant or agent user may hold at once (connected, or persistent and
# not expired): Home Assistant holds one (a new random id after each restart), an agent
# two or three.
SESSIONS_PER_USER = 32
# A persistent session (MQTT 3.1.1 clean session off, or an MQTT 5 session expiry) ends
# this long after its client left (Mosquitto's persistent_client_expiration; it takes
# whole hours). Nothing in the fleet depends on broker sessions.
SESSION_EXPIRY_S = 3600
# Publishes of a homeassistant, agent or web user: a burst, then this many a second.
PUBLISH_BURST = 500
PUBLISHES_PER_S = 50.0
QUEUED_MESSAGES_PER_CLIENT = 100_000
QUEUED_BYTES_PER_CLIENT = 32 * 1024 * 1024


def session_bounded(role: Role) -> bool:
    """True for users whose sessions `SESSIONS_PER_USER` bounds (devices and web users own
    exactly one client id; controller-role users are the operator and its CLI runs)."""
    return role in (Role.HOMEASSISTANT, Role.AGENT)


def queues_offline(role: Role) -> bool:
    """True for users that get QoS 1 messages queued while offline (devices: commands;
    the controller role: anything it subscribed to). The others get nothing while away."""
    return role in (Role.DEVICE, Role.CONTROLLER)


def publish_bounded(role: Role) -> bool:
    """True for users whose publishes `PublishBudget` bounds (the clients of people and
    automations; devices publish their own few topics, controller-role users are ours)."""
    return role in (Role.HOMEASSISTANT, Role.AGENT, Role.WEB)


class PublishBudget:
    """Publishes per user: `PUBLISH_BURST` at once, refilled at `PUBLISHES_PER_S`."""

    def __init__(self, burst: float = PUBLISH_BURST, rate: float = PUBLISHES_PER_S) -> None:
        self.burst = burst
        self.rate = rate
        self._users: dict[str, tuple[float, float]] = {}
        self.refused = 0

    def take(self, username: str) -> bool:
        now = time.monotonic()
        tokens, stamp = self._users.get(username, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1:
            self._users[username] = (tokens, now)
            self.refused += 1
            return False
        if len(self._users) > 100_000:  # users come and go (web logins): full ones go first
            self._users = {k: v for k, v in self._users.items() if v[0] < self.burst}
        self._users[username] = (tokens - 1, now)
        return True


def stretched(cred: Credential) -> bool:
    """True when a check of `cred`'s hash costs more than a generated secret's."""
    return cred.iterations > GENERATED_SECRET_ITERATIONS


@dataclass
class _Account:
    hash: str  # the hash this state is for: a new secret starts afresh
    tokens: float
    stamp: float
    good: bytes | None = None
    bad: collections.deque[bytes] = field(
        default_factory=lambda: collections.deque(maxlen=FAILURES_REMEMBERED)
    )


class LoginGuard:
    """Decides what a login against a stretched hash may cost (see the module doc).

    ``known(cred, password)`` answers True (the password that logged in before), False
    (known wrong, or the user's budget of full checks is spent) or None (hash it now and
    ``record`` the result).
    """

    def __init__(
        self,
        burst: int = STRETCHED_CHECK_BURST,
        per_s: float = STRETCHED_CHECKS_PER_S,
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self._key = os.urandom(32)
        self._accounts: dict[str, _Account] = {}
        self.unhashed_refusals = 0  # for logs, tests and benches

    def known(self, cred: Credential, password: str) -> bool | None:
        account = self._account(cred)
        digest = self._digest(cred.username, password)
        if account.good is not None and hmac.compare_digest(account.good, digest):
            return True
        if digest in account.bad:
            self.unhashed_refusals += 1
            return False
        now = time.monotonic()
        account.tokens = min(float(self.burst), account.tokens + (now - account.stamp) * self.per_s)
        account.stamp = now
        if account.tokens < 1.0:
            self.unhashed_refusals += 1
            return False
        account.tokens -= 1.0
        return None

    def record(self, cred: Credential, password: str, ok: bool) -> None:
        account = self._account(cred)
        digest = self._digest(cred.username, password)
        if ok:
            account.good = digest
        elif digest not in account.bad:
            account.bad.append(digest)

    def forget(self, usernames: set[str]) -> None:
        """Drop the state of users that are gone."""
        for name in [n for n in self._accounts if n not in usernames]:
            del self._accounts[name]

    def _account(self, cred: Credential) -> _Account:
        account = self._accounts.get(cred.username)
        if account is None or account.hash != cred.hash:
            account = _Account(cred.hash, float(self.burst), time.monotonic())
            self._accounts[cred.username] = account
        return account

    def _digest(self, username: str, password: str) -> bytes:
        msg = username.encode() + b"\0" + password.encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()
