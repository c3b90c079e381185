"""Secrets on disk: the home folder 0700, the database and its WAL
files 0600, client.json 0600 from its creation on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.controller.store import Store
from fleet.mqtt import BrokerUrl
from fleet.settings import FleetSettings


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what most shells give: files 0644, folders 0755 by default
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_controller_database_and_wal_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    store = Store(db)
    try:
        store.next_rev()  # a write: the WAL and its index exist now
        files = [db, db.with_name("controller.db-wal"), db.with_name("controller.db-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


def test_an_old_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    Store(db).close()
    db.chmod(0o644)
    Store(db).close()
    assert mode(db) == 0o600


def test_client_file_is_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It holds the operator password: created 0600, not written 0644 and chmodded after."""

    def no_chmod(self: Path, mode: int, **_: object) -> None:
        raise AssertionError(f"{self} chmodded to {oct(mode)} after it was written")

    monkeypatch.setattr(Path, "chmod", no_chmod)
    home = tmp_path / "home"
    settings = FleetSettings(home=home)
    path = settings.write_client_file(BrokerUrl.parse("mqtt://operator:s3cret@127.0.0.1:1883"))
    assert mode(path) == 0o600
    assert mode(home) == 0o700
    assert not [p.name for p in home.iterdir() if p != path]  # no temp file left


def test_an_existing_home_becomes_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    FleetSettings(home=home).write_client_file(BrokerUrl.parse("mqtt://127.0.0.1:1883"))
    assert mode(home) == 0o700
