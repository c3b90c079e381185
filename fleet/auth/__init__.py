"""Who may do what: broker users and their secrets, roles, the topic ACL, client ids.

The policy both brokers enforce (docs/protocol.md §11); the brokers themselves live in
`broker/`. Importing this package loads no broker, and only the roles at once: the
credentials (pydantic models) and the ACL load on first use of one of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fleet.auth.roles import (
    AGENT_API_OPS,
    DEVICE_API_OPS,
    HOMEASSISTANT_API_OPS,
    WEB_API_OPS,
    Role,
)

if TYPE_CHECKING:
    from fleet.auth.acl import Acl, AclAction, filter_covers, split_filter
    from fleet.auth.clientids import clientids_text, may_use, owner, reserved
    from fleet.auth.credentials import (
        Credential,
        CredentialStore,
        default_credentials_path,
    )
    from fleet.auth.hashing import (
        CHOSEN_SECRET_ITERATIONS,
        GENERATED_SECRET_ITERATIONS,
        generate_secret,
        hash_secret,
        verify_secret,
    )

_MODULE_OF = {
    "Acl": "acl",
    "AclAction": "acl",
    "filter_covers": "acl",
    "split_filter": "acl",
    "clientids_text": "clientids",
    "may_use": "clientids",
    "owner": "clientids",
    "reserved": "clientids",
    "Credential": "credentials",
    "CredentialStore": "credentials",
    "default_credentials_path": "credentials",
    "CHOSEN_SECRET_ITERATIONS": "hashing",
    "GENERATED_SECRET_ITERATIONS": "hashing",
    "generate_secret": "hashing",
    "hash_secret": "hashing",
    "verify_secret": "hashing",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AGENT_API_OPS",
    "CHOSEN_SECRET_ITERATIONS",
    "DEVICE_API_OPS",
    "GENERATED_SECRET_ITERATIONS",
    "HOMEASSISTANT_API_OPS",
    "WEB_API_OPS",
    "Acl",
    "AclAction",
    "Credential",
    "CredentialStore",
    "Role",
    "clientids_text",
    "default_credentials_path",
    "filter_covers",
    "generate_secret",
    "hash_secret",
    "may_use",
    "owner",
    "reserved",
    "split_filter",
    "verify_secret",
]
