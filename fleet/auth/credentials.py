"""Broker users: per-device credentials, the controller and Home Assistant.

The store is one JSON file (mode 0600, written atomically). Hashes use Mosquitto's
``$7$`` PBKDF2-SHA512 format (`fleet.auth.hashing`), so the same file feeds the embedded
amqtt broker and a generated Mosquitto ``password_file`` without re-keying any device.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from fleet.auth.hashing import (
    CHOSEN_SECRET_ITERATIONS,
    DUMMY_HASH,
    GENERATED_SECRET_ITERATIONS,
    HASH_RE,
    generate_secret,
    hash_secret,
    verify_secret,
)
from fleet.auth.roles import Role
from fleet.errors import CredentialsError
from fleet.files import atomic_write, default_home
from fleet.protocol.topics import ID_PATTERN, NAME_RULES

FILE_VERSION = 1
CREDENTIALS_FILENAME = "credentials.json"

DEVICE_NAME_PATTERN = ID_PATTERN
USER_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
USER_NAME_RULE = "use 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
_DEVICE_NAME_RE = re.compile(rf"^{DEVICE_NAME_PATTERN}$")
_USER_NAME_RE = re.compile(rf"^{USER_NAME_PATTERN}$")

GroupName = Annotated[str, StringConstraints(pattern=rf"^{ID_PATTERN}$")]


class Credential(BaseModel):
    """One broker user. For a device the username is its device id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str
    role: Role
    hash: Annotated[str, Field(pattern=HASH_RE.pattern)]
    groups: list[GroupName] = Field(default_factory=list, max_length=32)
    # Unix time after which the user is refused (web users only, who always have one).
    expires: float | None = None

    @model_validator(mode="after")
    def _check_name_and_groups(self) -> Credential:
        check_username(self.username, self.role)
        if self.groups and self.role is not Role.DEVICE:
            raise ValueError(f"only devices have groups, not a {self.role.value} user")
        if (self.expires is not None) != (self.role is Role.WEB):
            raise ValueError("web users, and only they, have an expiry time")
        return self

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    @property
    def iterations(self) -> int:
        return int(self.hash.split("$", 3)[2])


def check_username(username: str, role: Role | str) -> None:
    """Raise ValueError when `username` is not a valid name for `role`."""
    if Role(role) in (
        Role.DEVICE,
        Role.AGENT,
        Role.WEB,
    ):  # participants named by id, topic segments
        if not _DEVICE_NAME_RE.match(username):
            raise ValueError(f"invalid device id {username!r}: {NAME_RULES['device']}")
    elif not _USER_NAME_RE.match(username):
        raise ValueError(f"invalid username {username!r}: {USER_NAME_RULE}")


def default_credentials_path() -> Path:
    """``$FLEET_HOME/credentials.json``, else ``~/.espfleet/credentials.json``."""
    return default_home() / CREDENTIALS_FILENAME


# --- the store --------------------------------------------------------------------------------

_USERS_ADAPTER: TypeAdapter[list[Credential]] = TypeAdapter(list[Credential])


class CredentialStore:
    """Users in a JSON file, re-read whenever the file changes on disk.

    A broker holds one store for its lifetime, so ``fleet creds add`` in another process
    takes effect on the next connect without a restart. Writers serialise on a lock file
    next to the store so two CLI invocations cannot lose each other's update.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self._users: dict[str, Credential] = {}
        self._signature: tuple[int, int, int] | None = None
        self._load_error: CredentialsError | None = None
        self._reloading: asyncio.Future[bool] | None = None
        # Bumped whenever the users change (load or write); caches key on it.
        self.generation = 0

    def __repr__(self) -> str:
        return f"CredentialStore({str(self.path)!r}, users={len(self._users)})"

    # --- reading ------------------------------------------------------------------------------
    def _disk_signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialsError(f"cannot read credentials file {self.path}: {exc}") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def refresh_async(self) -> bool:
        """`refresh` for an event loop: a changed file is read and parsed in a worker thread.

        Only the stat() runs on the loop. Concurrent callers share one reload.
        """
        if self._disk_signature() == self._signature:
            return self.refresh()  # nothing to read; raises a corrupt file's error again
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(asyncio.to_thread(self.refresh))
        return await asyncio.shield(self._reloading)

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last look; True when users were reloaded.

        Raises CredentialsError while the file on disk is corrupt (the last good users stay
        in memory for callers that pass ``refresh=False``).
        """
        signature = self._disk_signature()
        if signature == self._signature:
            if self._load_error is not None:
                raise self._load_error
            return False
        self._signature = signature
        self._load_error = None
        if signature is None:
            users: dict[str, Credential] = {}
        else:
            try:
                users = self._parse(self.path.read_bytes())
            except CredentialsError as exc:
                self._load_error = exc
                raise
            except OSError as exc:
                self._signature = None  # try again next time
                raise CredentialsError(f"cannot read credentials file {self.path}: {exc}") from exc
        self._users = users
        self.generation += 1
        return True

    def _parse(self, raw: bytes) -> dict[str, Credential]:
        where = f"credentials file {self.path} is corrupt"
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{where}: not JSON ({exc}); fix or remove it") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("users"), list):
            raise CredentialsError(f"{where}: expected an object with a 'users' list")
        if doc.get("version") != FILE_VERSION:
            raise CredentialsError(
                f"{where}: unsupported version {doc.get('version')!r} (expected {FILE_VERSION})"
            )
        # Incremental: an entry equal to the user loaded before is that user; only new or
        # changed entries go through validation (most reloads change one device's groups).
        raw_users: list[Any] = doc["users"]
        creds: list[Credential | None] = [_unchanged(item, self._users) for item in raw_users]
        fresh = [i for i, cred in enumerate(creds) if cred is None]
        try:
            validated = _USERS_ADAPTER.validate_python([raw_users[i] for i in fresh])
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = [str(p) for p in first["loc"]]
            if loc and loc[0].isdigit():
                loc[0] = str(fresh[int(loc[0])])  # the index in the file, not in `fresh`
            raise CredentialsError(f"{where}: users.{'.'.join(loc)}: {first['msg']}") from exc
        for i, valid in zip(fresh, validated, strict=True):
            creds[i] = valid
        users: dict[str, Credential] = {}
        for cred in creds:
            assert cred is not None
            if cred.username in users:
                raise CredentialsError(f"{where}: user {cred.username!r} appears twice")
            users[cred.username] = cred
        return users

    @property
    def users(self) -> Mapping[str, Credential]:
        """The users as last loaded (no refresh), by name; do not modify."""
        return self._users

    def get(self, username: str, *, refresh: bool = True) -> Credential | None:
        if refresh:
            self.refresh()
        return self._users.get(username)

    def list(self) -> list[Credential]:
        self.refresh()
        return sorted(self._users.values(), key=lambda c: (c.role != Role.CONTROLLER, c.username))

    def __len__(self) -> int:
        self.refresh()
        return len(self._users)

    def verify(self, username: str, password: str, *, refresh: bool = True) -> Credential | None:
        """The user's credential when `password` is right, else None (unknown user included)."""
        cred = self.get(username, refresh=refresh)
        if cred is None:
            verify_secret(DUMMY_HASH, password)
            return None
        return cred if verify_secret(cred.hash, password) else None

    # --- writing ------------------------------------------------------------------------------
    def add(
        self,
        username: str,
        role: Role | str,
        secret: str | None = None,
        groups: Sequence[str] = (),
        *,
        replace: bool = False,
    ) -> str:
        """Add a user and return its secret (generated when `secret` is None)."""
        role = _role(role)
        if secret is not None and not secret:
            raise CredentialsError("an empty secret is not allowed")
        secret_out = secret if secret is not None else generate_secret()
        iterations = GENERATED_SECRET_ITERATIONS if secret is None else CHOSEN_SECRET_ITERATIONS
        cred = _build(username, role, hash_secret(secret_out, iterations), groups)
        with self._writing():
            if username in self._users and not replace:
                raise CredentialsError(
                    f"user {username!r} already exists; remove it first or replace it"
                )
            self._users[username] = cred
        return secret_out

    def add_devices(
        self, ids: Sequence[str], groups: Sequence[str] = (), *, replace: bool = False
    ) -> dict[str, str]:
        """Add many devices with generated secrets in one file write; returns id -> secret.

        Refuses (adding none) if any id repeats, or exists already unless `replace`
        (which re-keys existing devices, never other users).
        """
        seen: set[str] = set()
        for device_id in ids:
            if device_id in seen:
                raise CredentialsError(f"device {device_id!r} is listed twice")
            seen.add(device_id)
        out: dict[str, str] = {}
        new: list[Credential] = []
        group_list = list(groups)
        for device_id in ids:
            secret = generate_secret()
            new.append(
                _build(
                    device_id,
                    Role.DEVICE,
                    hash_secret(secret, GENERATED_SECRET_ITERATIONS),
                    group_list,
                )
            )
            out[device_id] = secret
        with self._writing():
            clash = [
                d
                for d in ids
                if d in self._users and not (replace and self._users[d].role is Role.DEVICE)
            ]
            if clash:
                more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
                raise CredentialsError(f"user {clash[0]!r}{more} already exists")
            for cred in new:
                self._users[cred.username] = cred
        return out

    def add_web(self, username: str, secret_hash: str, expires: float) -> Credential:
        """A person's browser user with the hash of a secret its requester chose; expired
        web users go in the same write."""
        cred = _build(username, Role.WEB, secret_hash, (), expires=expires)
        with self._writing():
            if username in self._users:
                raise CredentialsError(f"user {username!r} already exists")
            self._drop_expired(time.time())
            self._users[username] = cred
        return cred

    def remove_expired(self, now: float) -> int:
        """Forget web users whose credentials have lapsed; how many went."""
        if not any(c.expired(now) for c in self._users.values()):
            return 0
        with self._writing():
            return self._drop_expired(now)

    def _drop_expired(self, now: float) -> int:
        gone = [name for name, c in self._users.items() if c.expired(now)]
        for name in gone:
            del self._users[name]
        return len(gone)

    def remove(self, username: str) -> bool:
        with self._writing():
            return self._users.pop(username, None) is not None

    def set_groups(self, username: str, groups: Sequence[str]) -> Credential:
        with self._writing():
            cred = self._users.get(username)
            if cred is None:
                raise CredentialsError(f"unknown user {username!r}")
            if cred.role is not Role.DEVICE:
                raise CredentialsError(
                    f"{username!r} is a {cred.role.value} user; only devices have groups"
                )
            updated = _build(username, cred.role, cred.hash, groups)
            self._users[username] = updated
        return updated

    def write_mosquitto_passwd(self, path: Path | str) -> Path:
        """Write a Mosquitto ``password_file`` (``user:$7$...`` lines) with the same hashes."""
        path = Path(path)
        lines = "".join(f"{c.username}:{c.hash}\n" for c in self.list())
        atomic_write(path, lines.encode())
        return path

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Lock, load the latest file, let the caller mutate, then write (only if no error)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.refresh()
            before = dict(self._users)
            try:
                yield
            except BaseException:
                self._users = before
                raise
            if self._users != before:
                self._save()
        finally:
            os.close(fd)  # closing releases the flock

    def _save(self) -> None:
        doc: dict[str, Any] = {
            "version": FILE_VERSION,
            "users": [c.model_dump(mode="json", exclude_none=True) for c in self._users.values()],
        }
        atomic_write(self.path, json.dumps(doc, indent=1).encode() + b"\n")
        st = self.path.stat()
        self._signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        self._load_error = None
        self.generation += 1


def _unchanged(item: Any, known: Mapping[str, Credential]) -> Credential | None:
    """The already validated user equal to the raw file entry `item`, if there is one."""
    if not isinstance(item, dict) or not 3 <= len(item) <= 4:
        return None
    name = item.get("username")
    cred = known.get(name) if isinstance(name, str) else None
    if (
        cred is None
        or item.get("role") != cred.role.value
        or item.get("hash") != cred.hash
        or item.get("groups", []) != cred.groups
        or (len(item) == 4 and "groups" not in item)
    ):
        return None
    return cred


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise CredentialsError(f"unknown role {role!r}: choose one of {choices}") from None


def _build(
    username: str,
    role: Role,
    hash_: str,
    groups: Sequence[str],
    expires: float | None = None,
) -> Credential:
    # Keep the first occurrence of each group; 'all' is implicit for every device.
    uniq = [g for i, g in enumerate(groups) if g != "all" and g not in groups[:i]]
    try:
        return Credential(username=username, role=role, hash=hash_, groups=uniq, expires=expires)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "string_pattern_mismatch" and first["loc"][0] == "groups":
            loc, msg = "", f"invalid group name {first['input']!r}: {NAME_RULES['group']}"
        raise CredentialsError(
            f"cannot add {username!r}: {loc + ': ' if loc else ''}{msg}"
        ) from exc
