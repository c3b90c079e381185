"""The controller's SQLite store: the rev counter, desired docs, the command audit log,
operator actions, each device's last birth and parts' small settings. The meeting tables
are in the same file, kept by fleet.meetings.records on this store's connection.

SQLite is the embedded default: one file, no server. Writes are small and
rare (one per operator action, a few per command), so they run inline.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.files import private_file
from fleet.protocol import encode
from fleet.protocol.messages import (
    MAX_REV,
    Desired,
    DeviceOutcome,
    MeetingIntent,
    decode,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS desired (
    scope TEXT NOT NULL CHECK (scope IN ('dev', 'grp')),
    name TEXT NOT NULL,
    rev INTEGER NOT NULL,
    doc TEXT NOT NULL,
    updated REAL NOT NULL,
    until REAL,
    ended REAL,
    PRIMARY KEY (scope, name)
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    op TEXT NOT NULL,
    args TEXT NOT NULL,
    ttl_ms INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    status TEXT NOT NULL,
    code TEXT,
    detail TEXT,
    result TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_device ON commands (device, created);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    op TEXT NOT NULL,
    request TEXT NOT NULL,
    rev INTEGER,
    created REAL NOT NULL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS births (
    device TEXT PRIMARY KEY,
    status TEXT NOT NULL
);
"""

# A billion operations a second for a century stays below 2^62; 2^53 - 1 is the wire limit.
# Revs seen above this are a misbehaving writer, not history to respect.
REV_CEILING = MAX_REV - 2**32
# A fresh counter (no database) starts at the clock in microseconds: above every rev an
# earlier counter handed out unless it averaged over a million revs a second, so even a
# lost database with a broker that lost its retained docs reuses no rev. Good to 2255.
REVS_PER_SECOND = 1_000_000


class RevExhausted(FleetError):
    def __init__(self, rev: int) -> None:
        super().__init__(f"the rev counter is at {rev}, at its ceiling; no rev left to hand out")
        self.rev = rev


# Final command states: nothing changes a job once it is in one of these.
FINAL_JOB_STATES = frozenset(
    {
        DeviceOutcome.SUCCEEDED,
        DeviceOutcome.FAILED,
        DeviceOutcome.REJECTED,
        DeviceOutcome.TIMED_OUT,
    }
)


@dataclass(frozen=True, slots=True)
class DesiredRecord:
    scope: str  # "dev" or "grp"
    name: str
    doc: Desired


@dataclass(slots=True)
class Job:
    id: str
    device: str
    op: str
    args: dict[str, Any]
    ttl_ms: int
    created: float
    expires: float
    status: DeviceOutcome = DeviceOutcome.QUEUED
    code: str | None = None
    detail: str | None = None
    result: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_JOB_STATES


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # SQLite gives its -wal and -shm files the database file's mode: 0600 for all
            # (ones left by an older version are narrowed too).
            private_file(self.path)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    private_file(side)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(desired)")}
        if "until" not in columns:  # a database from before lapses were indexed
            self._db.execute("ALTER TABLE desired ADD COLUMN until REAL")
            for scope, name, doc in self._db.execute("SELECT scope, name, doc FROM desired"):
                self._db.execute(
                    "UPDATE desired SET until=? WHERE scope=? AND name=?",
                    (_until(decode(Desired, doc)), scope, name),
                )
        if "ended" not in columns:  # a database from before lapsed docs were kept
            self._db.execute("ALTER TABLE desired ADD COLUMN ended REAL")
        self._db.execute("CREATE INDEX IF NOT EXISTS desired_until ON desired (until)")
        row = self._db.execute("SELECT value FROM meta WHERE key='rev'").fetchone()
        # Cached: the database is read once, written on every allocation.
        self._rev = int(row[0]) if row else int(time.time() * REVS_PER_SECOND)

    def close(self) -> None:
        self._db.close()

    # --- revs -------------------------------------------------------------------------------
    def last_rev(self) -> int:
        return self._rev

    def next_rev(self) -> int:
        """Allocate a rev; durable before it is used, so revs never go backwards."""
        with self._tx():
            return self._allocate(1)

    def _allocate(self, count: int) -> int:
        """The first of `count` new revs, written inside the caller's transaction."""
        if self._rev + count > REV_CEILING:
            raise RevExhausted(self._rev)
        self._write_rev(self._rev + count)
        first, self._rev = self._rev + 1, self._rev + count
        return first

    def raise_rev_floor(self, seen: int) -> None:
        """Never hand out a rev at or below one of a desired doc seen on the wire (e.g.
        after a lost DB). Only for desired docs: only the controller writes them; a rev a
        device reports never moves the counter.

        A rev above REV_CEILING is not believed: no controller gets there by counting,
        and it would leave no revs to hand out.
        """
        if self._rev < seen <= REV_CEILING:
            with self._tx():
                self._write_rev(seen)
            self._rev = seen

    def _write_rev(self, rev: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('rev', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(rev),),
        )

    # --- desired docs -----------------------------------------------------------------------
    def save_desired(self, scope: str, name: str, doc: Desired) -> None:
        self._db.execute(
            "INSERT INTO desired (scope, name, rev, doc, updated, until, ended) "
            "VALUES (?,?,?,?,?,?,NULL) "
            "ON CONFLICT(scope, name) DO UPDATE SET rev=excluded.rev, doc=excluded.doc, "
            "updated=excluded.updated, until=excluded.until, ended=NULL",
            (scope, name, doc.rev, encode(doc).decode(), time.time(), _until(doc)),
        )

    def write_desired(
        self,
        scope: str,
        name: str,
        meeting: MeetingIntent | None,
        ts: float,
        dnd: bool | None = None,
    ) -> Desired:
        """A new doc with a new rev, saved in one transaction with the rev's allocation."""
        with self._tx():
            doc = Desired(rev=self._allocate(1), meeting=meeting, ts=ts, dnd=dnd)
            self.save_desired(scope, name, doc)
        return doc

    def lapse(self, lapsed: DesiredRecord, followers: list[str], ts: float) -> list[Desired] | None:
        """End a lapsed intent as one change: every follower gets a leave with a rev of its
        own, and the lapsed doc stays, marked ended, all in one transaction. A crash leaves
        all of it or none, and an intent written after it has a higher rev than every one
        of its leaves. None when the doc was replaced since it was read.

        The doc stays (retained) because a device unknown now, which comes back later,
        must find it: it outranks the older intents it would otherwise fall back to, and
        its `until` makes it no meeting there (section 4.3)."""
        with self._tx():
            current = self._db.execute(
                "SELECT rev FROM desired WHERE scope=? AND name=?", (lapsed.scope, lapsed.name)
            ).fetchone()
            if current is None or current[0] != lapsed.doc.rev:
                return None  # replaced since it was read: the newer intent stands
            self._db.execute(
                "UPDATE desired SET until=NULL, ended=? WHERE scope=? AND name=?",
                (ts, lapsed.scope, lapsed.name),
            )
            first = self._allocate(len(followers)) if followers else 0
            leaves = [Desired(rev=first + n, meeting=None, ts=ts) for n in range(len(followers))]
            for device_id, leave in zip(followers, leaves, strict=True):
                self.save_desired("dev", device_id, leave)  # on a device's own doc: replaces it
        return leaves

    def ended_revs(self) -> set[int]:
        """The revs of lapsed docs kept after their end (Store.lapse)."""
        rows = self._db.execute("SELECT rev FROM desired WHERE ended IS NOT NULL").fetchall()
        return {int(row[0]) for row in rows}

    def lapsed(self, now: float) -> list[DesiredRecord]:
        """Docs whose `until` has passed: an index lookup, no decoding of the others."""
        rows = self._db.execute(
            "SELECT scope, name, doc FROM desired WHERE until <= ? ORDER BY rev", (now,)
        ).fetchall()
        return [DesiredRecord(scope, name, decode(Desired, doc)) for scope, name, doc in rows]

    def desired_rev(self, scope: str, name: str) -> int | None:
        row = self._db.execute(
            "SELECT rev FROM desired WHERE scope=? AND name=?", (scope, name)
        ).fetchone()
        return int(row[0]) if row else None

    def desired_doc(self, scope: str, name: str) -> Desired | None:
        row = self._db.execute(
            "SELECT doc FROM desired WHERE scope=? AND name=?", (scope, name)
        ).fetchone()
        return decode(Desired, row[0]) if row else None

    def delete_desired(self, scope: str, name: str) -> None:
        self._db.execute("DELETE FROM desired WHERE scope=? AND name=?", (scope, name))

    def desired_docs(self) -> list[DesiredRecord]:
        rows = self._db.execute("SELECT scope, name, doc FROM desired ORDER BY rev").fetchall()
        return [DesiredRecord(scope, name, decode(Desired, doc)) for scope, name, doc in rows]

    def desired_revs(self) -> dict[tuple[str, str], int]:
        """(scope, name) -> rev of every doc, without decoding any."""
        rows = self._db.execute("SELECT scope, name, rev FROM desired").fetchall()
        return {(scope, name): rev for scope, name, rev in rows}

    def desired_payloads(self) -> list[tuple[str, str, bytes]]:
        """(scope, name, encoded doc) of every doc, by rev: what a re-assert publishes."""
        rows = self._db.execute("SELECT scope, name, doc FROM desired ORDER BY rev").fetchall()
        return [(scope, name, doc.encode()) for scope, name, doc in rows]

    # --- what each device is (its last birth) -------------------------------------------------
    def save_birth(self, device_id: str, payload: bytes) -> None:
        self._db.execute(
            "INSERT INTO births (device, status) VALUES (?, ?) "
            "ON CONFLICT(device) DO UPDATE SET status=excluded.status",
            (device_id, payload.decode()),
        )

    def forget_birth(self, device_id: str) -> None:
        self._db.execute("DELETE FROM births WHERE device=?", (device_id,))

    def births(self) -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT device, status FROM births ORDER BY device").fetchall()
        return [(device_id, status.encode()) for device_id, status in rows]

    # --- command jobs (the audit log) -------------------------------------------------------
    def save_job(self, job: Job) -> None:
        self._db.execute(
            "INSERT INTO commands (id, device, op, args, ttl_ms, created, expires, status, code,"
            " detail, result, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET status=excluded.status, code=excluded.code,"
            " detail=excluded.detail, result=excluded.result, updated=excluded.updated",
            (
                job.id,
                job.device,
                job.op,
                json.dumps(job.args),
                job.ttl_ms,
                job.created,
                job.expires,
                job.status.value,
                job.code,
                job.detail,
                json.dumps(job.result) if job.result is not None else None,
                time.time(),
            ),
        )

    def open_jobs(self) -> list[Job]:
        final = tuple(s.value for s in FINAL_JOB_STATES)
        rows = self._db.execute(
            "SELECT id, device, op, args, ttl_ms, created, expires, status, code, detail, result"
            f" FROM commands WHERE status NOT IN ({','.join('?' * len(final))}) ORDER BY created",
            final,
        ).fetchall()
        return [_job(row) for row in rows]

    def jobs(self, device: str | None = None, limit: int = 100) -> list[Job]:
        sql = (
            "SELECT id, device, op, args, ttl_ms, created, expires, status, code, detail, result"
            " FROM commands"
        )
        params: tuple[Any, ...] = ()
        if device is not None:
            sql += " WHERE device=?"
            params = (device,)
        sql += " ORDER BY created DESC LIMIT ?"
        return [_job(row) for row in self._db.execute(sql, (*params, limit)).fetchall()]

    # --- operator actions -------------------------------------------------------------------
    def save_operation(
        self, op_id: str, op: str, request: str, rev: int | None, result: str | None = None
    ) -> None:
        self._db.execute(
            "INSERT INTO operations (id, op, request, rev, created, result) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(id) DO UPDATE SET rev=COALESCE(excluded.rev, operations.rev),"
            " result=COALESCE(excluded.result, operations.result)",
            (op_id, op, request, rev, time.time(), result),
        )

    def operation_exists(self, op_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM operations WHERE id=?", (op_id,)).fetchone()
        return (
            row is not None
            or self._db.execute("SELECT 1 FROM commands WHERE id=?", (op_id,)).fetchone()
            is not None
        )

    def operations(self, limit: int = 100) -> list[tuple[str, str, int | None, str | None]]:
        """(id, op, rev, final result) of the newest operator actions."""
        return list(
            self._db.execute(
                "SELECT id, op, rev, result FROM operations ORDER BY created DESC LIMIT ?",
                (limit,),
            )
        )

    # --- small settings of controller parts (the meta table, keys with a part's prefix) ----
    def meta(self, prefix: str) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
        return {key: value for key, value in rows}

    def save_meta(self, items: dict[str, str]) -> None:
        with self._tx():
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                list(items.items()),
            )

    # --- for the tables of other domains in the same file (fleet.meetings.records) ----------
    @property
    def connection(self) -> sqlite3.Connection:
        """The one connection to the file: a second one would contend for its write lock."""
        return self._db

    def transaction(self) -> sqlite3.Connection:
        """`with store.transaction(): ...` writes all of it or none."""
        return self._tx()

    def _tx(self) -> sqlite3.Connection:
        # `with connection:` commits or rolls back; BEGIN IMMEDIATE serialises writers.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db


def _until(doc: Desired) -> float | None:
    return doc.meeting.until if doc.meeting is not None else None


def _job(row: tuple[Any, ...]) -> Job:
    jid, device, op, args, ttl_ms, created, expires, status, code, detail, result = row
    return Job(
        id=jid,
        device=device,
        op=op,
        args=json.loads(args),
        ttl_ms=ttl_ms,
        created=created,
        expires=expires,
        status=DeviceOutcome(status),
        code=code,
        detail=detail,
        result=json.loads(result) if result else None,
    )
