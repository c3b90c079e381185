"""Topic builders and the one compiled matcher for the fleet's MQTT namespace.

Every topic string the platform uses is written here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_PREFIX = "fleet/v1"
ID_PATTERN = r"[a-z0-9][a-z0-9-]{0,63}"
ROOM_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
# What each kind of name allows, in words, for error messages people read.
ID_RULE = "use 1-64 of a-z, 0-9 and '-', starting with a letter or digit"
NAME_RULES = {
    "device": ID_RULE,
    "group": ID_RULE,
    "room": "use 1-64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
}
# Matched with fullmatch: a Python `$` would also accept a trailing newline.
ID_RE = re.compile(ID_PATTERN)
API_OP_PATTERN = r"[a-z][a-z-]{0,31}"
_API_OP_RE = re.compile(API_OP_PATTERN)
# A prefix is one or more plain topic levels: no wildcards, no empty levels, no leading '$'.
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
DEFAULT_HA_PREFIX = "homeassistant"
# Home Assistant entity keys in command topics (`ha/dev/{id}/{entity}/set`): snake_case.
HA_ENTITY_PATTERN = r"[a-z][a-z0-9_]{0,31}"
_HA_ENTITY_RE = re.compile(HA_ENTITY_PATTERN)
# A discovery object id: what Home Assistant accepts as a topic level there.
_HA_NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class TopicKind(StrEnum):
    STATUS = "status"
    DESIRED = "desired"
    STATE = "state"
    CMD = "cmd"
    ACK = "ack"
    TELE = "tele"
    GROUP_DESIRED = "group_desired"
    MEET_UP = "meet_up"
    MEET_DOWN = "meet_down"
    API = "api"
    API_RESULT = "api_result"
    SYNC = "sync"
    EVENTS = "events"
    ANNOUNCE = "ann"  # dev/{id}/ann: an announcement's audio chunks (§14)


DEVICE_TOPIC_KINDS = (
    TopicKind.STATUS,
    TopicKind.DESIRED,
    TopicKind.STATE,
    TopicKind.CMD,
    TopicKind.ACK,
    TopicKind.TELE,
    TopicKind.ANNOUNCE,
)


# Requests and signalling act once, when sent: one that comes retained would act again on
# every (re)subscribe (a retained leave-all empties every meeting at each controller
# restart). Receivers refuse these kinds when they arrive retained (docs/protocol.md §1.5).
NEVER_RETAINED_KINDS = frozenset(
    {TopicKind.CMD, TopicKind.ACK, TopicKind.TELE, TopicKind.MEET_UP, TopicKind.MEET_DOWN}
    | {TopicKind.ANNOUNCE}
    | {TopicKind.API, TopicKind.API_RESULT, TopicKind.SYNC, TopicKind.EVENTS}
)


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    # device id, group name, participant peer id or API op, depending on kind
    name: str
    # An API request's requester: the broker user named by `api/by/{user}/{op}`, which the
    # brokers' ACL lets only that user write; "" for the shared form `api/{op}`.
    requester: str = ""


def is_valid_id(value: str) -> bool:
    return bool(ID_RE.fullmatch(value))


class HaTopicKind(StrEnum):
    """Topics of the Home Assistant integration under `{prefix}/ha/` (docs/home-assistant.md)."""

    DEVICE_SET = "device_set"  # ha/dev/{id}/{entity}/set: a device entity's command
    FLEET_SET = "fleet_set"  # ha/fleet/{entity}/set: a controller entity's command
    DEVICE_STATE = "device_state"  # ha/dev/{id}/state
    FLEET_STATE = "fleet_state"  # ha/fleet/state
    STATUS = "status"  # ha/status: the controller's availability


@dataclass(frozen=True, slots=True)
class ParsedHaTopic:
    kind: HaTopicKind
    device: str  # "" for the fleet's topics
    entity: str  # "" for state and status topics


class Topics:
    """Builds and parses topics under one prefix (default ``fleet/v1``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        prefix = prefix.strip("/")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"invalid topic prefix {prefix!r}: plain levels only, no wildcards")
        self.prefix = prefix
        p = re.escape(prefix)
        self._matcher = re.compile(
            rf"{p}/(?:"
            rf"dev/(?P<dev>{ID_PATTERN})/(?P<dev_kind>status|desired|state|cmd|ack|tele|ann)"
            rf"|grp/(?P<grp>{ID_PATTERN})/desired"
            rf"|meet/(?P<pid>{ID_PATTERN})/(?P<dir>up|down)"
            rf"|api/(?P<api>{API_OP_PATTERN})"
            rf"|api/by/(?P<by>{ID_PATTERN})/(?P<by_op>{API_OP_PATTERN})"
            rf"|sync/(?P<sync>{ID_PATTERN})"
            r"|(?P<events>events)"
            r")"
        )
        self._ha_matcher = re.compile(
            rf"{p}/ha/(?:"
            rf"dev/(?P<dev>{ID_PATTERN})/(?:(?P<dev_entity>{HA_ENTITY_PATTERN})/set|(?P<dev_state>state))"
            rf"|fleet/(?:(?P<fleet_entity>{HA_ENTITY_PATTERN})/set|(?P<fleet_state>state))"
            r"|(?P<status>status)"
            r")"
        )

    # --- builders -------------------------------------------------------------------------
    def device(self, kind: TopicKind, device_id: str) -> str:
        if kind not in DEVICE_TOPIC_KINDS:
            raise ValueError(f"{kind} is not a device topic")
        _check_id(device_id, "device id")
        return f"{self.prefix}/dev/{device_id}/{kind.value}"

    def status(self, device_id: str) -> str:
        return self.device(TopicKind.STATUS, device_id)

    def desired(self, device_id: str) -> str:
        return self.device(TopicKind.DESIRED, device_id)

    def state(self, device_id: str) -> str:
        return self.device(TopicKind.STATE, device_id)

    def cmd(self, device_id: str) -> str:
        return self.device(TopicKind.CMD, device_id)

    def ack(self, device_id: str) -> str:
        return self.device(TopicKind.ACK, device_id)

    def tele(self, device_id: str) -> str:
        return self.device(TopicKind.TELE, device_id)

    def announce(self, device_id: str) -> str:
        """An announcement's audio for one device, controller -> device (§14)."""
        return self.device(TopicKind.ANNOUNCE, device_id)

    def group_desired(self, group: str) -> str:
        _check_id(group, "group")
        return f"{self.prefix}/grp/{group}/desired"

    def meet_up(self, pid: str) -> str:
        _check_id(pid, "participant peer id")
        return f"{self.prefix}/meet/{pid}/up"

    def meet_down(self, pid: str) -> str:
        _check_id(pid, "participant peer id")
        return f"{self.prefix}/meet/{pid}/down"

    def api(self, op: str) -> str:
        if op == "result" or not _API_OP_RE.fullmatch(op):
            raise ValueError(f"invalid API op {op!r}: must match {API_OP_PATTERN}, not 'result'")
        return f"{self.prefix}/api/{op}"

    def api_by(self, user: str, op: str) -> str:
        """A request of broker user `user`: only that user may write here (the brokers'
        ACL), so the controller knows whom to count it against (docs/protocol.md §9)."""
        _check_id(user, "user")
        if op == "result" or not _API_OP_RE.fullmatch(op):
            raise ValueError(f"invalid API op {op!r}: must match {API_OP_PATTERN}, not 'result'")
        return f"{self.prefix}/api/by/{user}/{op}"

    @property
    def api_result(self) -> str:
        return f"{self.prefix}/api/result"

    def api_reply(self, client_id: str) -> str:
        """A client's own inbox for API results: the response topic of its MQTT 5
        requests (docs/protocol.md §13)."""
        _check_id(client_id, "client id")
        return f"{self.prefix}/api/reply/{client_id}"

    def is_api_reply(self, topic: str) -> bool:
        head = f"{self.prefix}/api/reply/"
        return topic.startswith(head) and ID_RE.fullmatch(topic[len(head) :]) is not None

    def sync(self, client_id: str) -> str:
        """A client's private loopback: a message sent here comes back after the
        retained messages of its earlier subscriptions, so it marks "caught up"."""
        _check_id(client_id, "client id")
        return f"{self.prefix}/sync/{client_id}"

    @property
    def operator_key(self) -> str:
        """Retained by the controller, readable by controller-role users only (the ACL):
        the key an intent carries to show it comes from one, so it may create its room."""
        return f"{self.prefix}/ctl/operator-key"

    @property
    def events(self) -> str:
        """The controller's fleet events (join, leave, command, session...), not retained."""
        return f"{self.prefix}/events"

    # --- the Home Assistant integration (`{prefix}/ha/...`) ----------------------------------
    @property
    def ha_status(self) -> str:
        """The controller's availability for Home Assistant: `online`/`offline`, retained."""
        return f"{self.prefix}/ha/status"

    def ha_device_state(self, device_id: str) -> str:
        _check_id(device_id, "device id")
        return f"{self.prefix}/ha/dev/{device_id}/state"

    def ha_device_set(self, device_id: str, entity: str) -> str:
        _check_id(device_id, "device id")
        _check_entity(entity)
        return f"{self.prefix}/ha/dev/{device_id}/{entity}/set"

    @property
    def ha_fleet_state(self) -> str:
        return f"{self.prefix}/ha/fleet/state"

    def ha_fleet_set(self, entity: str) -> str:
        _check_entity(entity)
        return f"{self.prefix}/ha/fleet/{entity}/set"

    @property
    def ha_all_device_sets(self) -> str:
        return f"{self.prefix}/ha/dev/+/+/set"

    @property
    def ha_all_fleet_sets(self) -> str:
        return f"{self.prefix}/ha/fleet/+/set"

    @property
    def ha_everything(self) -> str:
        return f"{self.prefix}/ha/#"

    def parse_ha(self, topic: str) -> ParsedHaTopic | None:
        """Classify a topic under `{prefix}/ha/`; None for anything else."""
        m = self._ha_matcher.fullmatch(topic)
        if m is None:
            return None
        if m["dev"]:
            if m["dev_state"]:
                return ParsedHaTopic(HaTopicKind.DEVICE_STATE, m["dev"], "")
            return ParsedHaTopic(HaTopicKind.DEVICE_SET, m["dev"], m["dev_entity"])
        if m["fleet_entity"]:
            return ParsedHaTopic(HaTopicKind.FLEET_SET, "", m["fleet_entity"])
        if m["fleet_state"]:
            return ParsedHaTopic(HaTopicKind.FLEET_STATE, "", "")
        return ParsedHaTopic(HaTopicKind.STATUS, "", "")

    def never_retained(self, topic: str) -> bool:
        """A request or signalling topic, whose message must never come retained."""
        parsed = self.parse(topic)
        if parsed is not None:
            return parsed.kind in NEVER_RETAINED_KINDS
        if topic.startswith(f"{self.prefix}/api/"):
            return True  # an op nobody knows is still a request
        ha = self.parse_ha(topic)
        return ha is not None and ha.kind in (HaTopicKind.DEVICE_SET, HaTopicKind.FLEET_SET)

    # --- subscription filters -------------------------------------------------------------
    def all_devices(self, kind: TopicKind) -> str:
        if kind not in DEVICE_TOPIC_KINDS:
            raise ValueError(f"{kind} is not a device topic")
        return f"{self.prefix}/dev/+/{kind.value}"

    @property
    def all_group_desired(self) -> str:
        return f"{self.prefix}/grp/+/desired"

    @property
    def all_meet_up(self) -> str:
        return f"{self.prefix}/meet/+/up"

    @property
    def all_api_requests(self) -> str:
        return f"{self.prefix}/api/+"

    @property
    def all_api_requests_by(self) -> str:
        """Every user's own request topics, `api/by/{user}/{op}`."""
        return f"{self.prefix}/api/by/+/+"

    @property
    def everything(self) -> str:
        return f"{self.prefix}/#"

    # --- parsing --------------------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic | None:
        """Classify a topic; None for anything outside the fleet's namespace."""
        m = self._matcher.fullmatch(topic)
        if m is None:
            return None
        if m["dev"]:
            return ParsedTopic(TopicKind(m["dev_kind"]), m["dev"])
        if m["grp"]:
            return ParsedTopic(TopicKind.GROUP_DESIRED, m["grp"])
        if m["pid"]:
            kind = TopicKind.MEET_UP if m["dir"] == "up" else TopicKind.MEET_DOWN
            return ParsedTopic(kind, m["pid"])
        if m["sync"]:
            return ParsedTopic(TopicKind.SYNC, m["sync"])
        if m["events"]:
            return ParsedTopic(TopicKind.EVENTS, "events")
        if m["by"]:
            return ParsedTopic(TopicKind.API, m["by_op"], m["by"])
        op = m["api"]
        if op == "result":
            return ParsedTopic(TopicKind.API_RESULT, "result")
        return ParsedTopic(TopicKind.API, op)


def ha_discovery_config(ha_prefix: str, node: str) -> str:
    """Home Assistant's device-based discovery topic: `{ha_prefix}/device/{node}/config`."""
    _check_ha_prefix(ha_prefix)
    if not _HA_NODE_RE.fullmatch(node):
        raise ValueError(f"invalid discovery object id {node!r}: must match [A-Za-z0-9_-]+")
    return f"{ha_prefix}/device/{node}/config"


def ha_birth(ha_prefix: str) -> str:
    """Where Home Assistant announces itself (`online`) and its will (`offline`)."""
    _check_ha_prefix(ha_prefix)
    return f"{ha_prefix}/status"


def _check_ha_prefix(ha_prefix: str) -> None:
    if not _PREFIX_RE.fullmatch(ha_prefix):
        raise ValueError(f"invalid discovery prefix {ha_prefix!r}: plain levels only")


def _check_entity(entity: str) -> None:
    if not _HA_ENTITY_RE.fullmatch(entity):
        raise ValueError(f"invalid entity key {entity!r}: must match {HA_ENTITY_PATTERN}")


def _check_id(value: str, what: str) -> None:
    if not ID_RE.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: {ID_RULE}")
