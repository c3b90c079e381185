"""Secrets and their hashes in Mosquitto's ``$7$`` PBKDF2-SHA512 format.

The same hashes feed the embedded amqtt broker, a generated Mosquitto ``password_file``
and Home Assistant's Mosquitto add-on, so no device is ever re-keyed to change brokers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets

# Generated secrets are secrets.token_urlsafe(24): 192 random bits that no amount of
# offline guessing reaches, so stretching buys nothing. 101 is mosquitto_passwd's own
# default and keeps a connect cheap (~75 us): the amqtt broker verifies on its event
# loop, and a whole fleet reconnects at once after a broker restart.
GENERATED_SECRET_ITERATIONS = 101
# A secret a person chose can be guessed; stretch it (~15 ms per check, off the loop).
CHOSEN_SECRET_ITERATIONS = 20_000
_SALT_BYTES = 12  # what mosquitto_passwd uses
_HASH_BYTES = 64  # SHA-512 output
_MAX_ITERATIONS = 10_000_000  # refuse absurd counts from a tampered file (CPU exhaustion)
HASH_RE = re.compile(r"^\$7\$([0-9]{1,9})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")


def hash_secret(secret: str, iterations: int = CHOSEN_SECRET_ITERATIONS) -> str:
    """Hash in Mosquitto's format: ``$7$<iterations>$<b64 salt>$<b64 pbkdf2-sha512>``."""
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, _HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(encoded: str, secret: str) -> bool:
    """Check `secret` against a ``$7$`` hash in constant time; False for any malformed hash."""
    m = HASH_RE.match(encoded)
    if m is None:
        return False
    iterations = int(m[1])
    if not 0 < iterations <= _MAX_ITERATIONS:
        return False
    try:
        salt = base64.b64decode(m[2], validate=True)
        expected = base64.b64decode(m[3], validate=True)
    except binascii.Error:
        return False
    if not expected:
        return False
    actual = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(actual, expected)


def generate_secret() -> str:
    return secrets.token_urlsafe(24)


# Checked against for unknown users so a miss costs about what a hit costs.
DUMMY_HASH = hash_secret(generate_secret(), GENERATED_SECRET_ITERATIONS)
