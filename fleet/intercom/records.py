"""The calls table: every live call, kept in the controller's SQLite file so that a
restarted controller still knows whom to put back where when a call ends."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fleet.controller.store import Store
from fleet.intercom.call import Call, CallMember
from fleet.protocol.messages import DeviceOutcome, MeetingIntent, Priority

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
"""


class CallRecords:
    def __init__(self, store: Store) -> None:
        self._db: sqlite3.Connection = store.connection  # one file, one connection
        self._db.executescript(SCHEMA)

    def save(self, call: Call) -> None:
        self._db.execute(
            "INSERT INTO calls (id, doc) VALUES (?, ?)"
            " ON CONFLICT(id) DO UPDATE SET doc=excluded.doc",
            (call.id, json.dumps(_dump(call))),
        )

    def delete(self, call_id: str) -> None:
        self._db.execute("DELETE FROM calls WHERE id=?", (call_id,))

    def calls(self) -> list[Call]:
        rows = self._db.execute("SELECT doc FROM calls ORDER BY id").fetchall()
        return [_load(json.loads(row[0])) for row in rows]


def _dump(call: Call) -> dict[str, Any]:
    return {
        "id": call.id,
        "caller": call.caller,
        "members": [
            {
                "device": m.device,
                "outcome": m.outcome.value,
                "online": m.online,
                "previous": m.previous.model_dump(exclude_none=True) if m.previous else None,
                "rev": m.rev,
            }
            for m in call.members.values()
        ],
        "priority": call.priority.value,
        "group": call.group,
        "ring_until": call.ring_until,
        "ring_s": call.ring_s,
        "pending": call.pending,
        "started": call.started,
    }


def _load(doc: dict[str, Any]) -> Call:
    members = {
        m["device"]: CallMember(
            m["device"],
            DeviceOutcome(m["outcome"]),
            online=m["online"],
            previous=MeetingIntent.model_validate(m["previous"]) if m["previous"] else None,
            rev=m["rev"],
        )
        for m in doc["members"]
    }
    return Call(
        id=doc["id"],
        caller=doc["caller"],
        members=members,
        priority=Priority(doc["priority"]),
        group=doc["group"],
        ring_until=doc["ring_until"],
        ring_s=doc["ring_s"],
        pending=doc["pending"],
        started=doc["started"],
    )
