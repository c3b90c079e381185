"""The fleet's MQTT broker side: users and ACL, the embedded amqtt broker, Mosquitto config.

Importing this package stays light (no amqtt): the broker itself lives in
`broker.embedded`, the Mosquitto files in `broker.mosquitto`.
"""

from broker.acl import Acl
from broker.credentials import (
    Credential,
    CredentialStore,
    Role,
    default_credentials_path,
)

__all__ = ["Acl", "Credential", "CredentialStore", "Role", "default_credentials_path"]
