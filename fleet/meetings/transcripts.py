"""Session transcripts: lines an agent (`fleet agent join --mode transcribe`) appends, kept
in the session history beside its participants (docs/protocol.md §8.5).

The meeting server serves the two ops; a line is taken only for a live session of the
request's room, from one of that session's members, so a transcript never names someone
who was not there.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet.meetings.records import MeetingRecords
from fleet.meetings.session import Session
from fleet.protocol.messages import MAX_TRANSCRIPT_LINES, ApiOp, ApiRequest, ApiResult

MAX_TRANSCRIPT_BYTES = 40 * 1024
LINE_OVERHEAD = 120  # the encoded fields around a line's text


async def transcribe(
    records: MeetingRecords, live: Mapping[str, Session], request: ApiRequest
) -> ApiResult:
    assert request.room is not None
    assert request.line is not None
    op, line = ApiOp.TRANSCRIBE.value, request.line
    session = live.get(request.room)
    if session is None or session.id != line.session:
        return _refused(
            op, "no_session", f"{line.session} is not the live session of {request.room}"
        )
    member = session.members.get(line.participant)
    if member is None or member.pid != line.pid:
        return _refused(
            op, "unknown_participant", f"{line.participant} ({line.pid}) is not in {line.session}"
        )
    if line.end < line.start:
        return _refused(op, "bad_request", "a line ends before it starts")
    records.add_transcript_line(line)
    return ApiResult(op=op, ok=True, room=request.room)


async def transcript(records: MeetingRecords, request: ApiRequest) -> ApiResult:
    assert request.room is not None
    op = ApiOp.TRANSCRIPT.value
    session = request.session or records.newest_session(request.room)
    if session is None or records.session_room(session) != request.room:
        return _refused(op, "no_session", f"no session {session or ''} in room {request.room!r}")
    lines = records.transcript(session, MAX_TRANSCRIPT_LINES)
    # The newest lines that fit a result well inside the protocol's payload limit.
    size = 0
    for keep in range(len(lines) - 1, -1, -1):
        size += len(lines[keep].text.encode()) + LINE_OVERHEAD
        if size > MAX_TRANSCRIPT_BYTES:
            lines = lines[keep + 1 :]
            break
    return ApiResult(op=op, ok=True, room=request.room, detail=session, transcript=lines)


def _refused(op: str, code: str, detail: str) -> ApiResult:
    return ApiResult(op=op, ok=False, code=code, detail=detail[:256])
