"""amqtt 0.12.1 plugins: authenticate against the credential store, authorise with Acl.

Both are loaded by dotted path from the broker config's ``plugins`` section (see
broker/amqtt/embedded.py). amqtt calls ``authenticate(session=)`` once per CONNECT and
``topic_filtering(session=, topic=, action=)`` per PUBLISH, per SUBSCRIBE filter and per
message per matching subscriber (RECEIVE), so the topic check stays a dict lookup plus
`Acl.allows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from fleet.auth import Acl, AclAction, Credential, CredentialStore, Role, clientids, verify_secret
from fleet.auth.limits import LoginGuard, PublishBudget, publish_bounded, stretched
from fleet.errors import CredentialsError
from fleet.protocol.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

# PBKDF2 at this many iterations or more runs in a worker thread (hashlib releases the
# GIL); the cheap device hashes stay on the loop, where a thread hop would cost more.
_THREAD_ITERATIONS = 1_000
# The topic plugin re-checks the credentials file at most this often: RECEIVE runs per
# message per subscriber, a stat() there would dominate. Revocations apply within it.
REFRESH_INTERVAL_S = 1.0

_ACTIONS: dict[Action, AclAction] = {
    Action.PUBLISH: "publish",
    Action.SUBSCRIBE: "subscribe",
    Action.RECEIVE: "receive",
}
# Session.attributes key holding the username the CONNECT was authenticated as.
SESSION_USER_KEY = "espfleet.username"


class _StoreMixin:
    """One CredentialStore per credentials file, shared by both plugins of a broker."""

    _stores: dict[Path, CredentialStore] = {}

    @staticmethod
    def _store_for(path: str | Path) -> CredentialStore:
        resolved = Path(path).expanduser().resolve()
        store = _StoreMixin._stores.get(resolved)
        if store is None:
            store = CredentialStore(resolved)
            _StoreMixin._stores[resolved] = store
        return store


class FleetAuthPlugin(BaseAuthPlugin, _StoreMixin):
    """Accept a CONNECT only with a username and the right secret from the store.

    Also refuses a client id that is not the user's to take (fleet/auth/clientids.py: a
    device's is its id; another user's would let it take over that client's session and
    its will),
    and a will topic the user may not publish to (amqtt sends wills without a PUBLISH
    check).
    """

    @dataclass
    class Config:
        credentials_file: str | Path = field(default="")
        allow_anonymous: bool = False
        prefix: str = DEFAULT_PREFIX

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        if not self.config.credentials_file:
            raise CredentialsError("FleetAuthPlugin needs 'credentials_file' in its config")
        self.store = self._store_for(self.config.credentials_file)
        self.acl = Acl(Topics(self.config.prefix))
        self.allow_anonymous = self.config.allow_anonymous
        self._broken_file_logged = False
        self.guard = LoginGuard()

    async def authenticate(self, *, session: Session) -> bool | None:
        username = session.username
        if not username:
            if self.allow_anonymous:
                # Anonymous clients may connect but the ACL grants them nothing.
                session.is_anonymous = True
                session.attributes.pop(SESSION_USER_KEY, None)
                return True
            self.context.logger.info("refused %s: no username", session.client_id)
            return False
        cred = await self._verify(username, session.password or "")
        if cred is None:
            self.context.logger.info("refused %s: bad username or password", session.client_id)
            return False
        if cred.expired(time.time()):
            self.context.logger.info("refused %s: its credentials expired", username)
            return False
        if not clientids.may_use(cred, session.client_id or "", self.store.users):
            self.context.logger.info(
                "refused %s: client id %r belongs to another user or the controller%s",
                username,
                session.client_id,
                " (a device's is its id)" if cred.role is Role.DEVICE else "",
            )
            return False
        if session.will_flag and not self.acl.allows(cred, "publish", session.will_topic or ""):
            self.context.logger.info(
                "refused %s: will topic %r not allowed", username, session.will_topic
            )
            return False
        session.attributes[SESSION_USER_KEY] = username
        return True

    async def _verify(self, username: str, password: str) -> Credential | None:
        try:
            await self.store.refresh_async()
            self._broken_file_logged = False
        except CredentialsError as exc:
            # Keep serving the last good users rather than locking the fleet out.
            if not self._broken_file_logged:
                self.context.logger.error("%s; using the users loaded before", exc)
                self._broken_file_logged = True
        cred = self.store.get(username, refresh=False)
        if cred is None:
            return self.store.verify(username, password, refresh=False)  # dummy work, None
        if not stretched(cred):
            return cred if verify_secret(cred.hash, password) else None
        # A stretched hash: a password seen before, or past the user's budget, is decided
        # without hashing (fleet.auth.limits.py).
        known = self.guard.known(cred, password)
        if known is not None:
            return cred if known else None
        if cred.iterations >= _THREAD_ITERATIONS:
            ok = await asyncio.to_thread(verify_secret, cred.hash, password)
        else:
            ok = verify_secret(cred.hash, password)
        self.guard.record(cred, password, ok)
        return cred if ok else None


class FleetTopicPlugin(BaseTopicPlugin, _StoreMixin):
    """Apply `Acl` to PUBLISH, SUBSCRIBE and RECEIVE."""

    @dataclass
    class Config:
        credentials_file: str | Path = field(default="")
        prefix: str = DEFAULT_PREFIX

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        if not self.config.credentials_file:
            raise CredentialsError("FleetTopicPlugin needs 'credentials_file' in its config")
        self.store = self._store_for(self.config.credentials_file)
        self.acl = Acl(Topics(self.config.prefix))
        self.publishes = PublishBudget()  # per homeassistant, agent and web user
        self._next_refresh = 0.0
        self._reload: asyncio.Future[None] | None = None

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        await self.refresh_for(action)
        return self.check(session, topic, action)

    async def refresh_for(self, action: Action | None) -> None:
        """Before a PUBLISH or SUBSCRIBE check: load a changed file first (off the loop).

        A SUBSCRIBE always looks, so groups granted just before (set_groups) hold for the
        very next subscription; a PUBLISH looks once per interval. RECEIVE, per message
        per subscriber, leaves it to `check` (in the background).
        """
        if action is Action.SUBSCRIBE or (
            action is Action.PUBLISH and time.monotonic() >= self._next_refresh
        ):
            await self.refresh()

    async def refresh(self) -> None:
        """Load a changed credentials file now, parsing it in a worker thread."""
        self._next_refresh = time.monotonic() + REFRESH_INTERVAL_S
        # A broken file is logged by the auth plugin; keep the last good users.
        with contextlib.suppress(CredentialsError):
            await self.store.refresh_async()

    def check(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        """Synchronous core of topic_filtering (the embedded broker calls it directly)."""
        if session is None or topic is None or action is None:
            return False
        now = time.monotonic()
        # Per message the file is looked at once a second at most, and a change is loaded
        # in the background: this check runs per message per subscriber.
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_INTERVAL_S
            if self._reload is None or self._reload.done():
                self._reload = asyncio.ensure_future(self.refresh())
        # The name authenticated at CONNECT, not session.username: amqtt copies a new
        # CONNECT's username onto a persistent session before authenticating it.
        username = session.attributes.get(SESSION_USER_KEY)
        if username is None:
            return False
        cred = self.store.get(username, refresh=False)
        if not self.acl.allows(cred, _ACTIONS[action], topic):
            return False
        if action is Action.PUBLISH and cred is not None and publish_bounded(cred.role):
            return self.publishes.take(username)  # a flood is dropped here, not downstream
        return True
