"""Which user a client id belongs to (docs/protocol.md §11), on both brokers.

The owner of a client id is the user with the longest name that the id equals or extends
with ``-`` (``controller``, ``controller-2`` and ``controller-cli-1a2b`` belong to
``controller``; ``dev-1-2`` to the device ``dev-1-2`` when it exists, else to
``dev-1``). Nobody connects with an id another user owns, nor with the controller's
own ``fleet-controller`` family (its id on a broker without users), so no user can take
over another's session, whatever the role, while a controller or operator still runs
several connections of its own. An id that belongs to nobody is free for a controller,
Home Assistant or agent user (Home Assistant's default is a random one); a device must
use exactly its id, a person's browser (the web role) its username. The embedded broker
applies `may_use` at CONNECT; Mosquitto applies the same rule in
broker/mosquitto/clientid.c from the list `clientids_text` writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleet.auth.credentials import Credential
from fleet.auth.roles import Role

# The controller's client id where the broker has no usernames: nobody else's to take.
CONTROLLER_CLIENT_ID = "fleet-controller"


def reserved(client_id: str) -> bool:
    """True for ids no user may take: ``fleet-controller`` and ``fleet-controller-...``."""
    return client_id == CONTROLLER_CLIENT_ID or client_id.startswith(CONTROLLER_CLIENT_ID + "-")


def owner(client_id: str, users: Mapping[str, Credential]) -> Credential | None:
    """The user owning `client_id`, or None when no user's name covers it."""
    cred = users.get(client_id)
    if cred is not None:
        return cred
    cut = client_id.rfind("-")
    while cut > 0:
        cred = users.get(client_id[:cut])
        if cred is not None:
            return cred
        cut = client_id.rfind("-", 0, cut)
    return None


def may_use(cred: Credential, client_id: str, users: Mapping[str, Credential]) -> bool:
    """True when `cred`'s user may connect with `client_id`."""
    if cred.role in (Role.DEVICE, Role.WEB):
        return client_id == cred.username
    if reserved(client_id):
        return False
    found = owner(client_id, users)
    return found is None or found.username == cred.username


def clientids_text(creds: Iterable[Credential]) -> str:
    """The plugin's user list, sorted by name in byte order (the plugin binary-searches
    it), one user a line with its ``$7$`` hash last: ``d <name>`` for devices, ``c <name>``
    for controller-role users, ``u <name>`` for homeassistant and agent users (their
    sessions are bounded, fleet/auth/limits.py), ``w <name> <expires>`` for web users."""
    lines = []
    for c in sorted(creds, key=lambda c: c.username):
        if c.role is Role.WEB:
            lines.append(f"w {c.username} {c.expires or 0:.3f} {c.hash}\n")
        else:
            lines.append(f"{_KINDS.get(c.role, 'u')} {c.username} {c.hash}\n")
    return "".join(lines)


_KINDS = {Role.DEVICE: "d", Role.CONTROLLER: "c"}
