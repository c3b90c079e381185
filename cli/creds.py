"""`fleet creds`: broker users (devices, the controller, Home Assistant)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import command_group, console, escape, fail
from fleet.auth import Role
from fleet.errors import CredentialsError

# The credentials file's models (pydantic) and the broker load when a command runs.
if TYPE_CHECKING:
    from fleet.auth import Credential, CredentialStore

app = command_group("Manage broker users: one per device, plus the controller and Home Assistant.")

FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help="Credentials file (default: $FLEET_HOME or ~/.espfleet, then credentials.json).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _store(path: Path | None) -> CredentialStore:
    from fleet.auth import CredentialStore, default_credentials_path

    return CredentialStore(path or default_credentials_path())


def _changed(store: CredentialStore) -> None:
    """The Mosquitto of a `fleet up` on this file reads the change before we return, so
    a user just added connects at once (amqtt reads the file itself at each login)."""
    from broker.mosquitto.process import reload_running

    reload_running(store)


def _split_groups(values: list[str] | None) -> list[str]:
    groups: list[str] = []
    for value in values or ():
        groups.extend(g.strip() for g in value.split(",") if g.strip())
    return groups


def _public(cred: Credential) -> dict[str, object]:
    """What may be shown: never the hash."""
    return {"username": cred.username, "role": cred.role.value, "groups": list(cred.groups)}


@app.command()
def add(
    username: Annotated[str, typer.Argument(help="Device id for a device, else a user name.")],
    role: Annotated[Role, typer.Option("--role", help="What the user is.", case_sensitive=False)],
    group: Annotated[
        list[str] | None,
        typer.Option("--group", "-g", help="Group of a device (repeat, or comma-separate)."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="Use this secret instead of generating one."),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing user.")] = False,
    as_json: JsonOption = False,
    file: FileOption = None,
) -> None:
    """Add a user and print its secret (shown only this once)."""
    store = _store(file)
    try:
        secret_out = store.add(username, role, secret, _split_groups(group), replace=replace)
        cred = store.get(username)
    except CredentialsError as exc:
        fail(str(exc))
    _changed(store)
    assert cred is not None
    if as_json:
        console.print_json(json.dumps(_public(cred) | {"secret": secret_out}))
        return
    groups = f" in groups {', '.join(cred.groups)}" if cred.groups else ""
    console.print(
        f"Added {cred.role.value} [bold]{escape(username)}[/bold]{escape(groups)} to {store.path}"
    )
    if secret is None:
        console.print("Secret (shown only now; store it on the device):")
        console.print(secret_out, markup=False, highlight=False)


@app.command("rm")
def remove(
    username: Annotated[str, typer.Argument(help="User to remove.")],
    file: FileOption = None,
) -> None:
    """Remove a user; its connections are refused from the next CONNECT on."""
    store = _store(file)
    try:
        removed = store.remove(username)
    except CredentialsError as exc:
        fail(str(exc))
    if not removed:
        fail(f"unknown user {username!r} in {store.path}")
    _changed(store)
    console.print(f"Removed [bold]{escape(username)}[/bold]")


@app.command("list")
def list_users(as_json: JsonOption = False, file: FileOption = None) -> None:
    """List users with their role and groups (never their hashes)."""
    store = _store(file)
    try:
        creds = store.list()
    except CredentialsError as exc:
        fail(str(exc))
    if as_json:
        console.print_json(json.dumps([_public(c) for c in creds]))
        return
    if not creds:
        console.print(f"No users in {store.path}; add one with `fleet creds add NAME --role ...`.")
        return
    from rich.table import Table

    table = Table("username", "role", "groups", title=str(store.path), title_justify="left")
    for cred in creds:
        table.add_row(escape(cred.username), cred.role.value, escape(", ".join(cred.groups)))
    console.print(table)


@app.command()
def groups(
    username: Annotated[str, typer.Argument(help="Device id.")],
    group_list: Annotated[
        str, typer.Argument(metavar="GROUPS", help="Comma-separated groups; '' clears them.")
    ],
    file: FileOption = None,
) -> None:
    """Set a device's groups (which grp/{g}/desired docs it may read)."""
    store = _store(file)
    try:
        cred = store.set_groups(username, _split_groups([group_list]))
    except CredentialsError as exc:
        fail(str(exc))
    _changed(store)
    shown = ", ".join(cred.groups) or "(none besides 'all')"
    console.print(f"[bold]{escape(username)}[/bold] groups: {escape(shown)}")
