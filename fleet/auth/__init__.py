"""Who may do what: broker users and their secrets, roles, the topic ACL, client ids.

The policy both brokers enforce (docs/protocol.md §11); the brokers themselves live in
`broker/`. Importing this package loads no broker.
"""

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
from fleet.auth.roles import AGENT_API_OPS, HOMEASSISTANT_API_OPS, WEB_API_OPS, Role

__all__ = [
    "AGENT_API_OPS",
    "CHOSEN_SECRET_ITERATIONS",
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
