"""The meeting tables: rooms and their settings, every session's history (members,
media path and mixer, media events, transcript).

They live in the controller's SQLite file, on the store's one connection, and this
module creates them. Names and columns are those of earlier versions (the store used to
hold `rooms`, `sessions`, `participants`, `transcript`), so an existing database keeps
working: a room with no `room_media` row has the default media mode and rate.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import cast

from fleet.controller.store import Store
from fleet.meetings.room import DEFAULT_RATE, Room
from fleet.protocol.messages import (
    MAX_SESSION_EVENTS,
    MediaPath,
    MixRate,
    ParticipantRecord,
    RoomKind,
    RoomMedia,
    SessionEvent,
    SessionInfo,
    TranscriptLine,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    cap INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS room_media (
    name TEXT PRIMARY KEY,
    media TEXT NOT NULL,
    rate INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS room_access (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    members TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS sessions_room ON sessions (room, started);
CREATE TABLE IF NOT EXISTS participants (
    session TEXT NOT NULL,
    participant TEXT NOT NULL,
    pid TEXT NOT NULL,
    joined REAL NOT NULL,
    left REAL,
    PRIMARY KEY (session, participant)
);
CREATE TABLE IF NOT EXISTS transcript (
    session TEXT NOT NULL,
    participant TEXT NOT NULL,
    pid TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transcript_session ON transcript (session, start);
CREATE TABLE IF NOT EXISTS session_media (
    session TEXT PRIMARY KEY,
    media TEXT NOT NULL,
    mixer TEXT
);
CREATE TABLE IF NOT EXISTS session_events (
    session TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    participant TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS session_events_session ON session_events (session, ts);
"""
# A session keeps at most this many events (talking is chatty); the oldest go first.
KEPT_EVENTS = 1000
MIXER_KEY = "meetings.mixer_key"
OPERATOR_KEY = "meetings.operator_key"
# Members listed per session in its history.
LISTED_MEMBERS = 256

ROOM_COLUMNS = (
    "SELECT rooms.name, rooms.cap, rooms.created, room_media.media, room_media.rate,"
    " room_access.kind, room_access.members"
    " FROM rooms LEFT JOIN room_media ON room_media.name = rooms.name"
    " LEFT JOIN room_access ON room_access.name = rooms.name"
)


class MeetingRecords:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db: sqlite3.Connection = store.connection  # one file, one connection
        self._db.executescript(SCHEMA)
        self._counts: dict[str, int] = {}  # events written per live session since a trim

    # --- the server's keys ---------------------------------------------------------------------
    def mixer_key(self) -> bytes:
        """The key the secret and pin of every AudioBridge room are derived from: random
        once, then kept, so a later run can still destroy the rooms an earlier one left."""
        return bytes.fromhex(self._kept_secret(MIXER_KEY))

    def operator_key(self) -> str:
        """The key an operator's intent carries to create its room (fleet.meetings.part):
        random once, then kept, so clients that read it before a restart still hold it."""
        return self._kept_secret(OPERATOR_KEY)

    def _kept_secret(self, name: str) -> str:
        kept = self._store.meta(name).get(name)
        if kept is None:
            kept = secrets.token_hex(32)
            self._store.save_meta({name: kept})
        return kept

    # --- rooms --------------------------------------------------------------------------------
    def room(self, name: str) -> Room | None:
        row = self._db.execute(f"{ROOM_COLUMNS} WHERE rooms.name=?", (name,)).fetchone()
        return _room(row) if row else None

    def rooms(self, after: str | None = None, limit: int = -1) -> list[Room]:
        """The rooms after `after`, by name (limit -1: all)."""
        rows = self._db.execute(
            f"{ROOM_COLUMNS} WHERE rooms.name > ? ORDER BY rooms.name LIMIT ?",
            (after or "", limit),
        )
        return [_room(row) for row in rows]

    def room_names(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM rooms ORDER BY name")]

    def room_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM rooms").fetchone()[0])

    def save_room(self, room: Room) -> Room:
        """Create the room or change its settings (its creation time stays); the room as
        stored."""
        with self._store.transaction():
            self._db.execute(
                "INSERT INTO rooms (name, cap, created) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET cap=excluded.cap",
                (room.name, room.cap, room.created or time.time()),
            )
            self._db.execute(
                "INSERT INTO room_media (name, media, rate) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET media=excluded.media, rate=excluded.rate",
                (room.name, room.media.value, room.rate),
            )
            if room.kind is RoomKind.MEETING:
                self._db.execute("DELETE FROM room_access WHERE name=?", (room.name,))
            else:
                self._db.execute(
                    "INSERT INTO room_access (name, kind, members) VALUES (?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET kind=excluded.kind,"
                    " members=excluded.members",
                    (room.name, room.kind.value, " ".join(sorted(room.members))),
                )
        stored = self.room(room.name)
        assert stored is not None
        return stored

    def delete_room(self, name: str) -> None:
        with self._store.transaction():
            self._db.execute("DELETE FROM rooms WHERE name=?", (name,))
            self._db.execute("DELETE FROM room_media WHERE name=?", (name,))
            self._db.execute("DELETE FROM room_access WHERE name=?", (name,))

    # --- sessions and their members -----------------------------------------------------------
    def start_session(self, session: str, room: str, started: float) -> None:
        with self._store.transaction():
            self._db.execute(
                "INSERT INTO sessions (id, room, started) VALUES (?, ?, ?)",
                (session, room, started),
            )
            self._set_media(session, MediaPath.MESH, None)

    def end_session(self, session: str, ended: float) -> None:
        with self._store.transaction():
            self._db.execute("UPDATE sessions SET ended=? WHERE id=?", (ended, session))
            self._db.execute(
                "UPDATE participants SET left=? WHERE session=? AND left IS NULL", (ended, session)
            )
        self._counts.pop(session, None)

    def end_open_sessions(self, ended: float) -> int:
        """Close sessions a previous run left open (their members' links are gone)."""
        open_ids = [r[0] for r in self._db.execute("SELECT id FROM sessions WHERE ended IS NULL")]
        for session in open_ids:
            self.end_session(session, ended)
        return len(open_ids)

    def add_member(self, session: str, participant: str, pid: str, joined: float) -> None:
        self._db.execute(
            "INSERT INTO participants (session, participant, pid, joined) VALUES (?, ?, ?, ?)",
            (session, participant, pid, joined),
        )

    def remove_member(self, session: str, participant: str, left: float) -> None:
        self._db.execute(
            "UPDATE participants SET left=? WHERE session=? AND participant=?",
            (left, session, participant),
        )

    def set_media(self, session: str, media: MediaPath, mixer: str | None) -> None:
        self._set_media(session, media, mixer)

    def _set_media(self, session: str, media: MediaPath, mixer: str | None) -> None:
        self._db.execute(
            "INSERT INTO session_media (session, media, mixer) VALUES (?, ?, ?)"
            " ON CONFLICT(session) DO UPDATE SET media=excluded.media, mixer=excluded.mixer",
            (session, media.value, mixer),
        )

    def add_event(
        self,
        session: str,
        kind: str,
        participant: str | None = None,
        detail: str | None = None,
        ts: float | None = None,
    ) -> None:
        """One entry of the session's media history."""
        self._db.execute(
            "INSERT INTO session_events (session, ts, kind, participant, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (session, time.time() if ts is None else ts, kind, participant, detail),
        )
        count = self._counts.get(session, 0) + 1
        self._counts[session] = count
        if count > KEPT_EVENTS:  # trim in steps, not on every insert
            self._db.execute(
                "DELETE FROM session_events WHERE rowid IN (SELECT rowid FROM session_events"
                " WHERE session=? ORDER BY ts LIMIT ?)",
                (session, count - KEPT_EVENTS // 2),
            )
            self._counts[session] = KEPT_EVENTS // 2

    def sessions(self, room: str, limit: int = 20, now: float | None = None) -> list[SessionInfo]:
        """The room's newest sessions first, live ones included, each with its members, its
        media path and mixer, and (the newest session only) its newest media events."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT id, room, started, ended FROM sessions WHERE room=?"
            " ORDER BY started DESC LIMIT ?",
            (room, limit),
        ).fetchall()
        return [
            self._session(sid, sroom, started, ended, now, events=n == 0)
            for n, (sid, sroom, started, ended) in enumerate(rows)
        ]

    def _session(
        self, sid: str, room: str, started: float, ended: float | None, now: float, events: bool
    ) -> SessionInfo:
        members = [
            ParticipantRecord(
                participant=participant,
                pid=pid,
                joined=joined,
                left=left,
                duration_s=round((left if left is not None else now) - joined, 3),
            )
            for participant, pid, joined, left in self._db.execute(
                "SELECT participant, pid, joined, left FROM participants WHERE session=?"
                " ORDER BY joined LIMIT ?",
                (sid, LISTED_MEMBERS),
            )
        ]
        row = self._db.execute(
            "SELECT media, mixer FROM session_media WHERE session=?", (sid,)
        ).fetchone()
        history = [
            SessionEvent(ts=ts, kind=kind, participant=participant, detail=detail)
            for ts, kind, participant, detail in self._db.execute(
                "SELECT ts, kind, participant, detail FROM session_events WHERE session=?"
                " ORDER BY ts DESC, rowid DESC LIMIT ?",
                (sid, MAX_SESSION_EVENTS if events else 0),
            )
        ][::-1]
        media, mixer = (MediaPath(row[0]), row[1]) if row else (MediaPath.MESH, None)
        return SessionInfo(
            session=sid,
            room=room,
            started=started,
            ended=ended,
            duration_s=round((ended if ended is not None else now) - started, 3),
            participants=members,
            media=media,
            mixer=mixer,
            events=history,
        )

    # --- transcripts --------------------------------------------------------------------------
    def add_transcript_line(self, line: TranscriptLine) -> None:
        self._db.execute(
            "INSERT INTO transcript (session, participant, pid, start, end, text)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (line.session, line.participant, line.pid, line.start, line.end, line.text),
        )

    def transcript(self, session: str, limit: int) -> list[TranscriptLine]:
        """The session's last `limit` lines, oldest first."""
        rows = self._db.execute(
            "SELECT participant, pid, start, end, text FROM transcript WHERE session=?"
            " ORDER BY start DESC LIMIT ?",
            (session, limit),
        ).fetchall()
        return [
            TranscriptLine(session=session, participant=p, pid=pid, start=a, end=b, text=t)
            for p, pid, a, b, t in reversed(rows)
        ]

    def session_room(self, session: str) -> str | None:
        row = self._db.execute("SELECT room FROM sessions WHERE id=?", (session,)).fetchone()
        return str(row[0]) if row else None

    def newest_session(self, room: str) -> str | None:
        row = self._db.execute(
            "SELECT id FROM sessions WHERE room=? ORDER BY started DESC LIMIT 1", (room,)
        ).fetchone()
        return str(row[0]) if row else None


def _room(
    row: tuple[str, int, float, str | None, int | None, str | None, str | None],
) -> Room:
    name, cap, created, media, rate, kind, members = row
    return Room(
        kind=RoomKind(kind) if kind is not None else RoomKind.MEETING,
        members=frozenset(members.split()) if members else frozenset(),
        name=name,
        cap=int(cap),
        media=RoomMedia(media) if media is not None else RoomMedia.AUTO,
        rate=cast("MixRate", int(rate)) if rate is not None else DEFAULT_RATE,
        created=float(created),
    )
