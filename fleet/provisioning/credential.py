"""The device's broker credential, issued for one image and removed again if that fails.

The secret is never printed and exists only as a hash in the store, in the device's flash
and in a factory image file (written 0600). If writing fails, the credential just created
is removed again, so the store holds no user whose secret nobody has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fleet.auth import CredentialStore, Role
from fleet.errors import CredentialsError
from fleet.provisioning.errors import ProvisioningError
from fleet.provisioning.nvs_schema import DeviceConfig


def open_store(creds: CredentialStore | Path | str) -> CredentialStore:
    return creds if isinstance(creds, CredentialStore) else CredentialStore(creds)


def check_store(store: CredentialStore, device_id: str, replace: bool) -> bool:
    """Refuse before touching a board; True when an existing device credential is replaced."""
    existing = store.get(device_id)
    if existing is None:
        return False
    if existing.role is not Role.DEVICE:
        raise ProvisioningError(
            f"{device_id!r} is a {existing.role.value} user in {store.path}, not a device; "
            "pick another device id"
        )
    if not replace:
        raise ProvisioningError(
            f"device {device_id!r} already has a credential in {store.path}; "
            "re-provisioning issues a new secret, so ask to replace it (--replace)"
        )
    return True


@contextlib.contextmanager
def issued_credential(store: CredentialStore, config: DeviceConfig, replace: bool) -> Iterator[str]:
    """Issue the device's credential; remove it again if the body fails.

    Nobody else holds a secret issued here, so a credential whose image never reached a
    device (or a file) would be an orphan. With `replace`, the previous credential is gone
    at that point too: the store keeps hashes only, so it cannot be put back.
    """
    secret = store.add(config.device_id, Role.DEVICE, None, config.groups, replace=replace)
    try:
        yield secret
    except BaseException as exc:
        try:
            store.remove(config.device_id)
        except CredentialsError as undo:
            exc.add_note(f"and removing the new credential failed too: {undo}")
        raise
