"""Pydantic models for every payload on the wire, and the one encode/decode pair.

Rules (docs/protocol.md): JSON objects in UTF-8; unknown fields are ignored so
newer controllers can talk to older firmware; wrong types are refused (strict
mode: "5" is not an int); absent optional fields mean null; payloads above
MAX_PAYLOAD_BYTES are refused before parsing.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from fleet.errors import PayloadTooLarge, ProtocolError

# The names of the contract that need no model live in `constants`; they are part of
# this module's names too.
from fleet.protocol.constants import (
    DEFAULT_WEB_TTL_S as DEFAULT_WEB_TTL_S,
)
from fleet.protocol.constants import (
    MAX_ROOM_CAP as MAX_ROOM_CAP,
)
from fleet.protocol.constants import (
    MAX_WEB_TTL_S as MAX_WEB_TTL_S,
)
from fleet.protocol.constants import (
    PROTOCOL_VERSION as PROTOCOL_VERSION,
)
from fleet.protocol.constants import (
    ApiOp as ApiOp,
)
from fleet.protocol.constants import (
    CommandOp as CommandOp,
)
from fleet.protocol.constants import (
    RoomMedia as RoomMedia,
)
from fleet.protocol.topics import ID_PATTERN, ROOM_PATTERN, TopicKind

MAX_PAYLOAD_BYTES = 64 * 1024

DeviceId = Annotated[str, StringConstraints(pattern=rf"^{ID_PATTERN}$")]
GroupName = Annotated[str, StringConstraints(pattern=rf"^{ID_PATTERN}$")]
RoomName = Annotated[str, StringConstraints(pattern=rf"^{ROOM_PATTERN}$")]
CommandId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ShortText = Annotated[str, StringConstraints(max_length=256)]
# Revs stay within 2^53 - 1 so firmware that parses JSON numbers as doubles holds them exactly.
MAX_REV = 2**53 - 1
Rev = Annotated[int, Field(ge=0, le=MAX_REV)]
# Counters stay within 2^53 - 1 too: exact in a double, and within SQLite's and InfluxDB's
# 64-bit integers (an unbounded int used to overflow the audit log and leave a phantom job).
Count = Annotated[int, Field(ge=0, le=MAX_REV)]
# A command lives at most a day (a longer one is a mistake or an attack, not a plan).
MAX_TTL_MS = 86_400_000
TtlMs = Annotated[int, Field(gt=0, le=MAX_TTL_MS)]
# An intent lasts at most a year (`for_s`).
MAX_FOR_S = 366 * 86_400
RoomCap = Annotated[int, Field(ge=2, le=MAX_ROOM_CAP)]
# The reserved participant id of a mixed session's mixer (members are p-N).
MIXER_PARTICIPANT = "mixer"


class Message(BaseModel):
    # defer_build: a model's validator is built on its first use, not at import, so a
    # program that speaks a few messages (the CLI) does not pay for all of them.
    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
        defer_build=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # protocol.md 1.4: an explicit null and an absent field are alike, so a null in a
        # field with a default takes the default (strict mode would refuse it otherwise).
        if isinstance(data, dict) and None in data.values():
            defaulted = _defaulted_keys(cls)
            return {k: v for k, v in data.items() if v is not None or k not in defaulted}
        return data


@cache
def _defaulted_keys(model: type[BaseModel]) -> frozenset[str]:
    """Wire keys (names and aliases) of fields whose default is not None."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        if info.is_required() or (info.default_factory is None and info.default is None):
            continue
        keys.add(name)
        if info.alias:
            keys.add(info.alias)
    return frozenset(keys)


# --- presence -------------------------------------------------------------------------------


class Capabilities(Message):
    audio: bool = False
    mic: bool = False
    speaker: bool = False
    codecs: list[Annotated[str, StringConstraints(max_length=16)]] = Field(
        default_factory=list, max_length=8
    )
    # How many peer connections the participant holds at once (an ESP32-S3: 2-3). A mesh
    # session never grows past any member's limit: an `auto` one moves to the mixer.
    max_peers: Annotated[int, Field(ge=1, le=MAX_ROOM_CAP)] | None = None


class Status(Message):
    """Retained on dev/{id}/status: the birth message, or the LWT `{online: false}`."""

    online: bool
    fw: ShortText | None = None
    hw: ShortText | None = None
    ip: ShortText | None = None
    caps: Capabilities | None = None
    # Absent (not []) in the LWT, so it is exactly {"online": false}.
    groups: list[GroupName] | None = Field(default=None, max_length=32)
    ts: float | None = None


# --- desired and reported state ---------------------------------------------------------------


class MeetingIntent(Message):
    room: RoomName
    mic: bool = True
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    # Unix time after which this intent lapses: the device leaves, the controller writes a leave.
    until: float | None = None


class Desired(Message):
    """Retained on dev/{id}/desired and grp/{group}/desired. Highest rev wins."""

    rev: Rev
    meeting: MeetingIntent | None = None
    ts: float | None = None


class MeetingState(Message):
    room: RoomName
    session: ShortText | None = None
    participant: ShortText | None = None
    peers: list[ShortText] = Field(default_factory=list, max_length=64)
    # Peers (participant ids) the media could not be negotiated with, and why.
    peer_errors: dict[ShortText, ShortText] | None = Field(default=None, max_length=64)


class State(Message):
    """Retained on dev/{id}/state: what the device has applied."""

    rev: Rev
    meeting: MeetingState | None = None
    mic: bool = True
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    error: ShortText | None = None
    ts: float | None = None


# --- imperative commands ----------------------------------------------------------------------


class IdentifyArgs(Message):
    seconds: Annotated[int, Field(ge=1, le=300)] = 5


class OtaArgs(Message):
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2048)]


class SetGroupsArgs(Message):
    groups: Annotated[list[GroupName], Field(max_length=32)]


class NoArgs(Message):
    pass


# The args of each op (§6.1). Devices ignore unknown args; clients check them before
# sending, so a typo in a key is caught where a person can fix it.
COMMAND_ARGS: dict[CommandOp, type[Message]] = {
    CommandOp.PING: NoArgs,
    CommandOp.IDENTIFY: IdentifyArgs,
    CommandOp.REBOOT: NoArgs,
    CommandOp.OTA: OtaArgs,
    CommandOp.SET_GROUPS: SetGroupsArgs,
}


class AckCode(StrEnum):
    OK = "ok"
    ACCEPTED = "accepted"  # received, still running; a final ack follows
    UNKNOWN_OP = "unknown_op"
    BAD_ARGS = "bad_args"
    EXPIRED = "expired"
    FAILED = "failed"
    BAD_REQUEST = "bad_request"  # the command payload itself did not parse


# Codes by which a device refuses a command without trying it.
REJECT_CODES = frozenset(
    {AckCode.UNKNOWN_OP, AckCode.BAD_ARGS, AckCode.EXPIRED, AckCode.BAD_REQUEST}
)


class Command(Message):
    """On dev/{id}/cmd (not retained). `op` is a plain string so unknown ops can be refused."""

    id: CommandId
    op: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_ms: TtlMs = 30_000
    ts: float | None = (
        None  # issue time; with ttl_ms a device with a set clock drops stale commands
    )


class Ack(Message):
    """On dev/{id}/ack. `done: false` marks a progress ack (code `accepted`)."""

    id: CommandId
    ok: bool
    code: AckCode
    detail: ShortText = ""
    done: bool = True
    result: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Ack:
        # ok exactly for "ok" and "accepted"; a progress ack (done: false) only as "accepted".
        if self.ok != (self.code in (AckCode.OK, AckCode.ACCEPTED)):
            raise ValueError(f"ok={self.ok} does not fit code {self.code.value!r}")
        if not self.done and self.code is not AckCode.ACCEPTED:
            raise ValueError("done: false is only for code 'accepted'")
        return self


# --- telemetry --------------------------------------------------------------------------------


class WifiTelemetry(Message):
    rssi: int | None = None
    channel: int | None = None
    reconnects: Count = 0


class SystemTelemetry(Message):
    heap_free: int | None = None
    heap_min: int | None = None
    uptime_s: float | None = None
    cpu_load: Annotated[float, Field(ge=0, le=1)] | None = None
    mqtt_reconnects: Count = 0


class PeerAudioStats(Message):
    peer: ShortText  # the remote participant id
    packets_sent: Count = 0
    packets_received: Count = 0
    packets_lost: Count = 0
    loss: Annotated[float, Field(ge=0, le=1)] | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    level: float | None = None  # received audio level, 0..1 (RMS of full scale)
    bitrate_kbps: float | None = None
    codec: ShortText | None = None


class TelemetryMeeting(Message):
    room: RoomName
    session: ShortText | None = None
    participant: ShortText | None = None
    peer_errors: dict[ShortText, ShortText] | None = Field(default=None, max_length=64)


class Telemetry(Message):
    """On dev/{id}/tele (not retained), every few seconds."""

    ts: float
    wifi: WifiTelemetry = Field(default_factory=WifiTelemetry)
    sys: SystemTelemetry = Field(default_factory=SystemTelemetry)
    meeting: TelemetryMeeting | None = None
    audio: list[PeerAudioStats] = Field(default_factory=list, max_length=64)


# --- meeting signalling (meet/{pid}/up and meet/{pid}/down) -----------------------------------


class MediaPath(StrEnum):
    """How a live session's audio travels."""

    MESH = "mesh"  # every member holds a peer connection to every other member
    MIXED = "mixed"  # every member holds one connection, to the mixer (mix-minus)


MixRate = Literal[16000, 48000]
DEFAULT_MIX_RATE: MixRate = 16000

Sdp = Annotated[str, StringConstraints(min_length=1, max_length=32 * 1024)]
MessageText = Annotated[str, StringConstraints(max_length=4096)]
MessageData = Annotated[str, StringConstraints(max_length=8192)]


class PeerInfo(Message):
    participant: ShortText
    pid: DeviceId
    caps: Capabilities | None = None


class MeetJoin(Message):
    type: Literal["join"]
    room: RoomName
    caps: Capabilities | None = None


class MeetLeave(Message):
    type: Literal["leave"]


class MeetOffer(Message):
    type: Literal["offer"]
    to: ShortText  # participant id of the receiver
    sdp: Sdp


class MeetAnswer(Message):
    type: Literal["answer"]
    to: ShortText
    sdp: Sdp


class MeetSend(Message):
    """A text or binary (base64) message to one participant (`to`) or the whole session."""

    type: Literal["message"]
    to: ShortText | None = None
    text: MessageText | None = None
    data_b64: MessageData | None = None

    @model_validator(mode="after")
    def _has_content(self) -> MeetSend:
        if self.text is None and self.data_b64 is None:
            raise ValueError("a message needs text or data_b64")
        return self


class MeetReject(Message):
    """A participant cannot answer (or accept) the SDP of `to`: the server tells `to` as an
    `error` with `from` naming the sender, so the other side does not wait for ever."""

    type: Literal["reject"]
    to: ShortText
    code: ShortText = "negotiation_failed"
    detail: ShortText = ""


# One ICE candidate: the value of an SDP `a=candidate:` line ("candidate:..." as browsers
# give it, with or without the prefix), at most what such a line can hold.
IceCandidate = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
MediaId = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class MeetCandidate(Message):
    """Trickle ICE (§8.6): one more candidate of the sender's offer or answer to `to`, or
    (`candidate` null) the end of its candidates."""

    type: Literal["candidate"]
    to: ShortText
    candidate: IceCandidate | None = None
    mid: MediaId = "0"


MeetUp = Annotated[
    MeetJoin | MeetLeave | MeetOffer | MeetAnswer | MeetCandidate | MeetSend | MeetReject,
    Field(discriminator="type"),
]


class MeetJoined(Message):
    type: Literal["joined"]
    room: RoomName
    session: ShortText
    participant: ShortText
    peers: list[PeerInfo] = Field(default_factory=list, max_length=64)
    # mixed: `peers` is exactly the mixer (participant "mixer")
    media: MediaPath = MediaPath.MESH


class MeetMedia(Message):
    """The session's media path changed: drop every peer, stay in the session, offer to
    each of `peers` as after `joined`."""

    type: Literal["media"]
    media: MediaPath
    peers: list[PeerInfo] = Field(default_factory=list, max_length=64)


class MeetPeerJoined(Message):
    type: Literal["peer_joined"]
    peer: PeerInfo


class MeetPeerLeft(Message):
    type: Literal["peer_left"]
    participant: ShortText


class MeetRelayedOffer(Message):
    type: Literal["offer"]
    from_: ShortText = Field(alias="from")
    sdp: Sdp


class MeetRelayedAnswer(Message):
    type: Literal["answer"]
    from_: ShortText = Field(alias="from")
    sdp: Sdp


class MeetRelayedCandidate(Message):
    type: Literal["candidate"]
    from_: ShortText = Field(alias="from")
    candidate: IceCandidate | None = None
    mid: MediaId = "0"


class MeetLeft(Message):
    type: Literal["left"]
    session: ShortText | None = None


class MeetError(Message):
    type: Literal["error"]
    code: ShortText
    detail: ShortText = ""
    # The participant the error concerns (a relayed MeetReject); absent: the server itself.
    from_: ShortText | None = Field(default=None, alias="from")


class MeetDelivered(Message):
    type: Literal["message"]
    from_: ShortText = Field(alias="from")
    text: MessageText | None = None
    data_b64: MessageData | None = None


MeetDown = Annotated[
    MeetJoined
    | MeetMedia
    | MeetPeerJoined
    | MeetPeerLeft
    | MeetRelayedOffer
    | MeetRelayedAnswer
    | MeetRelayedCandidate
    | MeetLeft
    | MeetError
    | MeetDelivered,
    Field(discriminator="type"),
]


# --- the automation API (api/{op} and api/result) ---------------------------------------------


class TranscriptLine(Message):
    """Who said what, and when (time.time() of the speech's start and end), in a session."""

    session: ShortText
    participant: ShortText
    pid: DeviceId
    start: float
    end: float
    text: MessageText


MAX_TRANSCRIPT_LINES = 200


class ApiRequest(Message):
    """On api/{op}. Which fields matter depends on the op (docs/protocol.md)."""

    id: CommandId | None = None
    room: RoomName | None = None
    group: GroupName = "all"
    device: DeviceId | None = None
    mic: bool = True
    # Seconds the intent lasts (join-all --for); the controller writes a leave when it passes.
    for_s: Annotated[float, Field(gt=0, le=MAX_FOR_S)] | None = None
    # Seconds the controller waits for devices to converge before its final result.
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    cmd_op: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_ms: TtlMs = 30_000
    # room-create: the room's member cap (absent: the server's default)
    cap: RoomCap | None = None
    # room-create: the room's media mode and mix rate (absent: auto, 16000)
    media: RoomMedia | None = None
    rate: MixRate | None = None
    # say: the text delivered to every member of the room's live session
    text: MessageText | None = None
    # sessions: how many of the newest sessions to list; rooms: how many rooms per page
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    # rooms, devices: list the names that sort after this one (the previous page's `next`)
    after: RoomName | None = None
    # transcribe: one line of the session's transcript
    line: TranscriptLine | None = None
    # transcript: which session (absent: the room's newest)
    session: ShortText | None = None

    # announce (§14): how it plays; `text` is the words, to `device`, `group` or none (all)
    priority: Literal["normal", "urgent"] = "normal"
    chime: bool = True
    # dnd (§14): do-not-disturb on or off for `device`
    on: bool | None = None
    # call (§14): `device` calls `to` (a device) or `group`, rung first with `ring`;
    # answer, hangup: the call's id (its room)
    to: DeviceId | None = None
    ring: bool = False
    call: RoomName | None = None

    # join, join-all: the controller's operator key (ctl/operator-key), which only
    # controller-role users can read: such an intent may create its room (§8.4)
    operator_key: Annotated[str, StringConstraints(max_length=128)] | None = None

    # web-login: the $7$ hash of the secret the caller chose (the secret never travels)
    # and how long the credentials last
    secret_hash: Annotated[str, StringConstraints(max_length=256)] | None = None
    ttl_s: Annotated[float, Field(ge=1, le=MAX_WEB_TTL_S)] = DEFAULT_WEB_TTL_S


# Fields each API op needs beyond the defaults.
API_REQUIRED_FIELDS: dict[ApiOp, tuple[str, ...]] = {
    ApiOp.JOIN_ALL: ("room",),
    ApiOp.LEAVE_ALL: (),
    ApiOp.JOIN: ("device", "room"),
    ApiOp.LEAVE: ("device",),
    ApiOp.CMD: ("device", "cmd_op"),
    ApiOp.ROOM_CREATE: ("room",),
    ApiOp.ROOM_RM: ("room",),
    ApiOp.ROOMS: (),
    ApiOp.SESSIONS: ("room",),
    ApiOp.SAY: ("room", "text"),
    ApiOp.TRANSCRIBE: ("room", "line"),
    ApiOp.TRANSCRIPT: ("room",),
    ApiOp.WEB_LOGIN: ("secret_hash",),
    ApiOp.DEVICES: (),
    ApiOp.ANNOUNCE: (),
    ApiOp.DND: ("device", "on"),
    ApiOp.CALL: ("device",),
    ApiOp.ANSWER: (),
    ApiOp.HANGUP: (),
}


class DeviceOutcome(StrEnum):
    CONVERGED = "converged"
    PENDING = "pending"  # offline: converges when it comes back
    WAITING = "waiting"  # online, not yet reported the rev
    FAILED = "failed"  # reported the rev with an error
    # command outcomes
    QUEUED = "queued"  # device offline: held by the controller until it is back
    SENT = "sent"  # published to the device, no ack yet
    DELIVERED = "delivered"  # the device acked receipt (code accepted), still running
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


class DeviceResult(Message):
    device: DeviceId
    outcome: DeviceOutcome
    online: bool
    rev: Rev | None = None
    room: RoomName | None = None
    code: ShortText | None = None
    detail: ShortText | None = None
    result: dict[str, Any] | None = None  # a command's result (e.g. ping's uptime)


MAX_LISTED_DEVICES = 256
# A listed device costs ~90 bytes, but up to ~450 with a long detail: the list also stops
# at this many encoded bytes, so a result stays well inside MAX_PAYLOAD_BYTES.
MAX_LISTED_BYTES = 32 * 1024


class DeviceInfo(Message):
    """What the controller knows of a device: its presence and its last birth's firmware,
    board and groups (None and [] when it has seen none)."""

    device: DeviceId
    online: bool
    fw: ShortText | None = None
    hw: ShortText | None = None
    groups: list[GroupName] = Field(default_factory=list, max_length=32)


class RoomInfo(Message):
    room: RoomName
    created: float
    cap: RoomCap
    session: ShortText | None = None  # the live session, if any
    members: Count = 0
    media: RoomMedia = RoomMedia.AUTO
    rate: MixRate = DEFAULT_MIX_RATE
    session_media: MediaPath | None = None  # the live session's path now


class ParticipantRecord(Message):
    participant: ShortText
    pid: DeviceId
    joined: float
    left: float | None = None  # null while still in the session
    duration_s: float


class SessionEvent(Message):
    """What happened to a session's media: a path change, the mixer's joins, leaves,
    talking, a member's mute, a mixer failover."""

    ts: float
    kind: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    participant: ShortText | None = None
    detail: ShortText | None = None


MAX_SESSION_EVENTS = 100


class SessionInfo(Message):
    session: ShortText
    room: RoomName
    started: float
    ended: float | None = None  # null while live
    duration_s: float
    participants: list[ParticipantRecord] = Field(default_factory=list, max_length=256)
    media: MediaPath = MediaPath.MESH  # the path now (live) or at the end
    mixer: ShortText | None = None  # the mixer of a mixed session
    # the newest MAX_SESSION_EVENTS, oldest first
    events: list[SessionEvent] = Field(default_factory=list, max_length=MAX_SESSION_EVENTS)
    omitted: Count = 0  # participants and events left out to keep a result small


class ApiResult(Message):
    """On api/result. `done: false` is the acceptance (rev and targets); the final one follows."""

    id: CommandId | None = None
    op: ShortText
    ok: bool
    done: bool = True
    code: ShortText = "ok"
    detail: ShortText = ""
    rev: Rev | None = None
    room: RoomName | None = None
    group: GroupName | None = None
    until: float | None = None
    # Every target up to MAX_LISTED_DEVICES; past that only those not converged (capped),
    # so a result stays far below MAX_PAYLOAD_BYTES. `counts` always covers every target.
    devices: list[DeviceResult] = Field(default_factory=list, max_length=256)
    omitted: Count = 0
    counts: dict[str, Count] = Field(default_factory=dict)
    # the meeting server's ops
    rooms: list[RoomInfo] = Field(default_factory=list, max_length=256)
    # devices: what the controller knows of each, one page (MAX_LISTED_DEVICES at most)
    inventory: list[DeviceInfo] = Field(default_factory=list, max_length=MAX_LISTED_DEVICES)
    # rooms, devices: more follow; ask again with `after` set to this
    next: RoomName | None = None
    sessions: list[SessionInfo] = Field(default_factory=list, max_length=100)
    transcript: list[TranscriptLine] = Field(default_factory=list, max_length=MAX_TRANSCRIPT_LINES)
    # web-login: the broker user (= client id = participant pid) minted, valid until `until`
    username: ShortText | None = None


class Sync(Message):
    """On sync/{client id}: a client's loopback marker (see Topics.sync)."""

    token: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class OperatorKey(Message):
    """On ctl/operator-key (retained, controller-role readers only): what an operator's
    join or join-all carries in `operator_key` to create its room."""

    key: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class EventKind(StrEnum):
    JOIN = "join"  # a join/join-all intent was written
    LEAVE = "leave"  # a leave/leave-all intent was written, or one lapsed
    COMMAND = "command"  # a command job reached its final outcome
    ONLINE = "online"
    OFFLINE = "offline"
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    MEDIA = "media"  # a session's media path changed or its mixer failed over (`detail`)
    MIXER = "mixer"  # a mixer went down or came back (`detail` names it)
    TALKING = "talking"  # the mixer heard a member start talking (`detail`: its participant)
    ERROR = "error"  # a refused API request or another fault worth an annotation


class FleetEvent(Message):
    """On events (not retained): what happened, for logs and dashboard annotations.

    `kind` is an EventKind value; receivers MUST accept kinds they do not know.
    """

    ts: float
    kind: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    device: DeviceId | None = None
    group: GroupName | None = None
    room: RoomName | None = None
    session: ShortText | None = None
    op: ShortText | None = None
    ok: bool | None = None
    code: ShortText | None = None
    detail: ShortText | None = None
    rev: Rev | None = None


# --- the codec --------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)

MODEL_FOR_KIND: dict[TopicKind, Any] = {
    TopicKind.STATUS: Status,
    TopicKind.DESIRED: Desired,
    TopicKind.GROUP_DESIRED: Desired,
    TopicKind.STATE: State,
    TopicKind.CMD: Command,
    TopicKind.ACK: Ack,
    TopicKind.TELE: Telemetry,
    TopicKind.MEET_UP: MeetUp,
    TopicKind.MEET_DOWN: MeetDown,
    TopicKind.API: ApiRequest,
    TopicKind.API_RESULT: ApiResult,
    TopicKind.SYNC: Sync,
    TopicKind.EVENTS: FleetEvent,
}


@cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def encode(message: BaseModel) -> bytes:
    """Serialise a message: compact JSON, aliases (`from`), nulls left out."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


@overload
def decode(model: type[M], payload: bytes | bytearray | str, what: str = "") -> M: ...


# An Annotated union (MeetUp, MeetDown) is no class: its members are told apart by the caller.
@overload
def decode(model: object, payload: bytes | bytearray | str, what: str = "") -> Any: ...


def decode(model: object, payload: bytes | bytearray | str, what: str = "") -> Any:
    """Parse and validate raw bytes; ProtocolError (never ValidationError) on bad input."""
    label = what or _model_name(model)
    if isinstance(payload, str):
        try:
            payload = payload.encode()
        except UnicodeEncodeError as exc:
            raise ProtocolError(label, "payload is not valid UTF-8 text") from exc
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(label, len(payload), MAX_PAYLOAD_BYTES)
    try:
        return _adapter(model).validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError(label, _summarise(exc)) from exc


def decode_for(kind: TopicKind, payload: bytes | bytearray | str) -> Any:
    """Decode by topic kind (the model is fixed by the topic)."""
    return decode(MODEL_FOR_KIND[kind], payload, what=f"{kind.value} payload")


def _model_name(model: Any) -> str:
    if isinstance(model, type):
        return model.__name__
    # an Annotated union such as MeetUp: name its members
    members = getattr(getattr(model, "__origin__", None), "__args__", ())
    return " | ".join(getattr(m, "__name__", "?") for m in members) or "message"


def api_request_from_payload(op: ApiOp, payload: bytes) -> ApiRequest:
    """Parse an API request; a bare room name (or a JSON string) is a join-all for that room."""
    what = f"{op.value} request"
    stripped = payload.strip()
    if not stripped:
        # Not "{}": an empty leave-all must not quietly become a fleet-wide leave.
        raise ProtocolError(what, "empty payload; send a JSON object ({} for no fields)")
    if op is ApiOp.JOIN_ALL and not stripped.startswith(b"{"):
        try:
            text = stripped.decode()
            room = json.loads(text) if text.startswith('"') else text
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(what, "a bare room name must be plain UTF-8 text") from exc
        if not isinstance(room, str):
            raise ProtocolError(what, "a bare room name must be a string")
        return decode(ApiRequest, json.dumps({"room": room}), what=what)
    request = decode(ApiRequest, stripped, what=what)
    absent = [name for name in API_REQUIRED_FIELDS[op] if getattr(request, name) is None]
    if absent:
        raise ProtocolError(f"{op.value} request", f"missing field(s): {', '.join(absent)}")
    return request


def probe_id(payload: bytes | bytearray, limit: int = MAX_PAYLOAD_BYTES) -> str | None:
    """Best effort: the `id` of a payload that failed validation, so the error can name it."""
    if len(payload) > limit or bytes(payload[:3]) == b"\xef\xbb\xbf":
        return None  # JSON text has no byte-order mark; the decoder refuses it too
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    candidate = value.get("id") if isinstance(value, dict) else None
    if isinstance(candidate, str) and 0 < len(candidate) <= 64:
        return candidate
    return None


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema for every message, keyed by name (for `fleet protocol schema`)."""
    named: dict[str, Any] = {
        "status": Status,
        "desired": Desired,
        "state": State,
        "cmd": Command,
        "ack": Ack,
        "tele": Telemetry,
        "meet_up": MeetUp,
        "meet_down": MeetDown,
        "api_request": ApiRequest,
        "api_result": ApiResult,
        "sync": Sync,
        "event": FleetEvent,
    }
    return {
        name: _adapter(model).json_schema(by_alias=True, mode="validation")
        for name, model in named.items()
    }
