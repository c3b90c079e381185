"""What the meeting server keeps about media, beside the store's rooms and sessions
(same SQLite file): each room's media mode and mix rate, each session's media path
and mixer, and the session's media history (path changes, the mixer's joins, leaves
and talking, mutes, failovers)."""

from __future__ import annotations

import sqlite3
import time

from fleet.controller.store import Store
from fleet.protocol.messages import (
    DEFAULT_MIX_RATE,
    MAX_SESSION_EVENTS,
    MediaPath,
    RoomMedia,
    SessionEvent,
    SessionInfo,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS room_media (
    name TEXT PRIMARY KEY,
    media TEXT NOT NULL,
    rate INTEGER NOT NULL
);
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


class MediaRecords:
    def __init__(self, store: Store) -> None:
        self._db: sqlite3.Connection = store._db  # one file, one connection
        self._db.executescript(SCHEMA)
        self._counts: dict[str, int] = {}

    # --- rooms --------------------------------------------------------------------------------
    def save_room(self, name: str, media: RoomMedia, rate: int) -> None:
        self._db.execute(
            "INSERT INTO room_media (name, media, rate) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET media=excluded.media, rate=excluded.rate",
            (name, media.value, rate),
        )

    def room(self, name: str) -> tuple[RoomMedia, int]:
        row = self._db.execute(
            "SELECT media, rate FROM room_media WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            return RoomMedia.AUTO, DEFAULT_MIX_RATE
        return RoomMedia(row[0]), int(row[1])

    def delete_room(self, name: str) -> None:
        self._db.execute("DELETE FROM room_media WHERE name=?", (name,))

    # --- sessions -----------------------------------------------------------------------------
    def set_media(self, session: str, media: MediaPath, mixer: str | None) -> None:
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

    def forget_session(self, session: str) -> None:
        self._counts.pop(session, None)

    def complete(self, info: SessionInfo, events: bool = True) -> SessionInfo:
        """A session as the store lists it, with its media path, mixer and newest events."""
        row = self._db.execute(
            "SELECT media, mixer FROM session_media WHERE session=?", (info.session,)
        ).fetchone()
        events = [
            SessionEvent(ts=ts, kind=kind, participant=participant, detail=detail)
            for ts, kind, participant, detail in self._db.execute(
                "SELECT ts, kind, participant, detail FROM session_events WHERE session=?"
                " ORDER BY ts DESC, rowid DESC LIMIT ?",
                (info.session, MAX_SESSION_EVENTS if events else 0),
            )
        ][::-1]
        media, mixer = (MediaPath(row[0]), row[1]) if row else (MediaPath.MESH, None)
        return info.model_copy(update={"media": media, "mixer": mixer, "events": events})
