"""fleet.meetings.transcripts: a line is taken only for the room's live session from one of
its members; a transcript is returned oldest first, its newest lines within the line and
byte limits. The records are the real tables, in an in-memory SQLite store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet.controller.store import Store
from fleet.meetings.records import MeetingRecords
from fleet.meetings.room import Room
from fleet.meetings.session import Member, Session
from fleet.meetings.transcripts import (
    LINE_OVERHEAD,
    MAX_TRANSCRIPT_BYTES,
    transcribe,
    transcript,
)
from fleet.protocol.messages import MAX_TRANSCRIPT_LINES, ApiRequest, TranscriptLine

ROOM = "standup"


@pytest.fixture
def records() -> Iterator[MeetingRecords]:
    store = Store(":memory:")
    try:
        yield MeetingRecords(store)
    finally:
        store.close()


def live_session(records: MeetingRecords, sid: str = "s-1", room: str = ROOM) -> Session:
    session = Session(id=sid, room=Room(room), started=1000.0)
    records.start_session(sid, room, 1000.0)
    for n, pid in enumerate(("dev-1", "dev-2"), start=1):
        session.members[f"p-{n}"] = Member(f"p-{n}", pid, None, 1000.0)
        records.add_member(sid, f"p-{n}", pid, 1000.0)
    return session


def line(
    start: float,
    text: str = "hello",
    participant: str = "p-1",
    pid: str = "dev-1",
    session: str = "s-1",
) -> TranscriptLine:
    return TranscriptLine(
        session=session, participant=participant, pid=pid, start=start, end=start + 1, text=text
    )


async def say(records: MeetingRecords, live: dict[str, Session], said: TranscriptLine) -> str:
    result = await transcribe(records, live, ApiRequest(room=ROOM, line=said))
    assert result.op == "transcribe"
    return "ok" if result.ok else result.code


async def test_a_members_lines_come_back_oldest_first(records: MeetingRecords) -> None:
    live = {ROOM: live_session(records)}
    for said in (line(1005, "second"), line(1001, "first"), line(1009, "third", "p-2", "dev-2")):
        assert await say(records, live, said) == "ok"
    result = await transcript(records, ApiRequest(room=ROOM))
    assert (result.ok, result.op, result.room, result.detail) == (True, "transcript", ROOM, "s-1")
    assert [(t.text, t.pid) for t in result.transcript] == [
        ("first", "dev-1"),
        ("second", "dev-1"),
        ("third", "dev-2"),
    ]


async def test_a_line_for_no_live_session_is_refused(records: MeetingRecords) -> None:
    assert await say(records, {}, line(1001)) == "no_session"
    live = {ROOM: live_session(records)}
    assert await say(records, live, line(1001, session="s-old")) == "no_session"
    assert (await transcript(records, ApiRequest(room=ROOM))).transcript == []


async def test_a_line_from_someone_not_in_the_session_is_refused(records: MeetingRecords) -> None:
    live = {ROOM: live_session(records)}
    assert await say(records, live, line(1001, participant="p-9")) == "unknown_participant"
    # The right participant id with another pid: the line names someone who was not there.
    assert await say(records, live, line(1001, participant="p-1", pid="dev-2")) == (
        "unknown_participant"
    )
    assert (await transcript(records, ApiRequest(room=ROOM))).transcript == []


async def test_a_line_that_ends_before_it_starts_is_a_bad_request(
    records: MeetingRecords,
) -> None:
    live = {ROOM: live_session(records)}
    backwards = line(1001).model_copy(update={"end": 1000.5})
    assert await say(records, live, backwards) == "bad_request"


async def test_the_transcript_is_of_the_newest_session_unless_one_is_named(
    records: MeetingRecords,
) -> None:
    first = live_session(records, "s-1")
    await say(records, {ROOM: first}, line(1001, "in the first"))
    second = Session(id="s-2", room=Room(ROOM), started=2000.0)
    second.members["p-1"] = Member("p-1", "dev-1", None, 2000.0)
    records.start_session("s-2", ROOM, 2000.0)
    await say(records, {ROOM: second}, line(2001, "in the second", session="s-2"))
    newest = await transcript(records, ApiRequest(room=ROOM))
    assert (newest.detail, [t.text for t in newest.transcript]) == ("s-2", ["in the second"])
    named = await transcript(records, ApiRequest(room=ROOM, session="s-1"))
    assert (named.detail, [t.text for t in named.transcript]) == ("s-1", ["in the first"])


async def test_a_session_of_another_room_or_a_room_without_sessions_is_no_session(
    records: MeetingRecords,
) -> None:
    live_session(records, "s-1", room="retro")
    other = await transcript(records, ApiRequest(room=ROOM, session="s-1"))
    assert (other.ok, other.code) == (False, "no_session")
    none = await transcript(records, ApiRequest(room=ROOM))
    assert (none.ok, none.code) == (False, "no_session")
    assert len(none.detail) <= 256


async def test_only_the_newest_lines_up_to_the_line_limit_come_back(
    records: MeetingRecords,
) -> None:
    live = {ROOM: live_session(records)}
    for n in range(MAX_TRANSCRIPT_LINES + 5):
        assert await say(records, live, line(1000 + n, f"line {n}")) == "ok"
    lines = (await transcript(records, ApiRequest(room=ROOM))).transcript
    assert len(lines) == MAX_TRANSCRIPT_LINES
    assert lines[0].text == "line 5"
    assert lines[-1].text == f"line {MAX_TRANSCRIPT_LINES + 4}"


async def test_long_lines_are_cut_to_the_newest_that_fit_the_byte_limit(
    records: MeetingRecords,
) -> None:
    live = {ROOM: live_session(records)}
    text = "x" * 4000
    for n in range(20):
        assert await say(records, live, line(1000 + n, f"{n:02d}{text}")) == "ok"
    lines = (await transcript(records, ApiRequest(room=ROOM))).transcript
    fit = MAX_TRANSCRIPT_BYTES // (len(text) + 2 + LINE_OVERHEAD)
    assert len(lines) == fit
    assert [t.text[:2] for t in lines] == [f"{n:02d}" for n in range(20 - fit, 20)]
    assert sum(len(t.text.encode()) + LINE_OVERHEAD for t in lines) <= MAX_TRANSCRIPT_BYTES
