"""Home Assistant discovery payloads: one device-based config per device and one for the fleet.

Device-based discovery (`<ha prefix>/device/<node>/config`, Home Assistant
2024.11+) announces a device with all its entities in one retained message:
`dev` (the device block), `o` (origin: who publishes it) and `cmps` (the
entities, each with `p`, its platform). Entity ids are proposed through
`default_entity_id` (a full entity id, `switch.espfleet_dev_1_meeting`):
`object_id`, which Home Assistant stops honouring in 2026.4, is never written.

Every template reads one key of a state doc written for it (fleet/ha/models.py),
so nothing is left for the user to work out.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fleet.protocol.topics import Topics, ha_discovery_config

MANUFACTURER = "espfleet"
DEVICE_MODEL = "ESP32 audio device"
CONTROLLER_MODEL = "fleet controller"
# Device availability from its retained status (birth `{"online": true}`, will
# `{"online": false}`), turned into Home Assistant's default payloads. An empty payload (the
# status cleared: the device deleted) has no `value_json`: offline, not a template error.
STATUS_TEMPLATE = "{{ 'online' if value_json is defined and value_json.online else 'offline' }}"


def _version() -> str:
    try:
        return version("espfleet")
    except PackageNotFoundError:
        return "0"


SW_VERSION = _version()
ORIGIN = {"name": "espfleet", "sw_version": SW_VERSION}


@dataclass(frozen=True, slots=True)
class Shown:
    """What a device's config shows of its birth: firmware and board (None: not known)."""

    fw: str | None = None
    hw: str | None = None


def _value(key: str) -> str:
    return "{{ value_json.%s }}" % key  # noqa: UP031 - braces would need doubling in an f-string


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity of a discovered device: `key` names it in topics and unique ids."""

    key: str
    platform: str  # switch, select, button, sensor
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    state: bool = True  # reads the state doc (value_template = value_json.<state_key>)
    command: bool = False  # has a command topic
    state_key: str = ""  # defaults to key
    choices: str = "rooms"  # a select's options: "rooms", or "calls" (whom a device may call)


# The entities a device shows. Jitter and loss are null (unknown) outside a meeting.
DEVICE_ENTITIES: tuple[Entity, ...] = (
    Entity(
        "meeting",
        "switch",
        "In meeting",
        {"icon": "mdi:account-voice"},
        command=True,
        state_key="in_meeting",
    ),
    Entity("room", "select", "Room", {"icon": "mdi:door"}, command=True),
    Entity(
        "identify",
        "button",
        "Identify",
        {"device_class": "identify", "entity_category": "config"},
        state=False,
        command=True,
    ),
    Entity("leave", "button", "Leave", {"icon": "mdi:phone-hangup"}, state=False, command=True),
    Entity("dnd", "switch", "Do not disturb", {"icon": "mdi:bell-off"}, command=True),
    # Choosing a device or a group calls it from this device; the state shows whom this
    # device called from Home Assistant until it hangs up (unknown otherwise).
    Entity("call", "select", "Call", {"icon": "mdi:phone"}, command=True, choices="calls"),
    Entity("hangup", "button", "Hang up", {"icon": "mdi:phone-off"}, state=False, command=True),
    Entity(
        "rssi",
        "sensor",
        "RSSI",
        {
            "device_class": "signal_strength",
            "unit_of_measurement": "dBm",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        },
    ),
    Entity(
        "heap",
        "sensor",
        "Free heap",
        {
            "device_class": "data_size",
            "unit_of_measurement": "B",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        },
    ),
    Entity(
        "uptime",
        "sensor",
        "Uptime",
        {
            "device_class": "duration",
            "unit_of_measurement": "s",
            "state_class": "total_increasing",
            "entity_category": "diagnostic",
        },
    ),
    Entity(
        "jitter",
        "sensor",
        "Jitter",
        {
            "device_class": "duration",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "icon": "mdi:chart-bell-curve",
        },
    ),
    Entity(
        "loss",
        "sensor",
        "Packet loss",
        {"unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:lan-disconnect"},
    ),
)

# The entities the controller itself shows.
FLEET_ENTITIES: tuple[Entity, ...] = (
    Entity(
        "join_all",
        "button",
        "Join all",
        {"icon": "mdi:account-multiple-plus"},
        state=False,
        command=True,
    ),
    Entity(
        "leave_all",
        "button",
        "Leave all",
        {"icon": "mdi:account-multiple-remove"},
        state=False,
        command=True,
    ),
    Entity("room", "select", "Room", {"icon": "mdi:door"}, command=True),
    # Home Assistant's notify.send_message publishes the message on the command topic:
    # an announcement to every device (and, below, one entity per group).
    Entity("announce", "notify", "Announce", {"icon": "mdi:bullhorn"}, state=False, command=True),
    Entity(
        "announce_urgent",
        "notify",
        "Urgent announcement",
        {"icon": "mdi:bullhorn-variant"},
        state=False,
        command=True,
    ),
    Entity(
        "online",
        "sensor",
        "Devices online",
        {"state_class": "measurement", "icon": "mdi:access-point-network"},
    ),
    Entity(
        "in_meeting",
        "sensor",
        "Devices in meetings",
        {"state_class": "measurement", "icon": "mdi:account-voice"},
    ),
    Entity("devices", "sensor", "Devices", {"state_class": "measurement", "icon": "mdi:devices"}),
)


# A call select's option for a group (device ids never contain ':').
GROUP_OPTION = "group:"
# A call select lists every other device only up to this fleet size (beyond, the groups
# only): a select of thousands of devices is of no use, and every device's config would
# be re-published whenever a device appears.
MAX_CALL_DEVICES = 64


def group_entity(group: str) -> str:
    """The key of a group's notify entity (a topic level and part of its unique id)."""
    key = "g_" + group.replace("-", "_")
    if len(key) > 32:  # an entity key is at most 32 characters: long names are hashed
        key = "g_" + hashlib.sha1(group.encode()).hexdigest()[:16]
    return key


def group_notify(group: str) -> Entity:
    return Entity(
        group_entity(group),
        "notify",
        f"Announce to {group}",
        {"icon": "mdi:bullhorn"},
        state=False,
        command=True,
    )


def call_options(device_id: str, devices: Sequence[str], groups: Iterable[str]) -> list[str]:
    """Whom a device's call select offers: the other devices (small fleets) and the groups,
    not `all` (a call is to a device or a group, never every device: §14). Empty for a big
    fleet with no groups: the device then shows no call select."""
    others = [d for d in devices if d != device_id] if len(devices) <= MAX_CALL_DEVICES else []
    return sorted(others) + sorted(GROUP_OPTION + g for g in set(groups) - {"all"})


class Discovery:
    """Builds the discovery configs of one fleet (one topic prefix)."""

    def __init__(self, topics: Topics, ha_prefix: str = "homeassistant") -> None:
        self.topics = topics
        self.ha_prefix = ha_prefix
        # Unique ids and discovery nodes must not clash between fleets on one Home
        # Assistant: the topic prefix is part of them.
        self.key = "espfleet_" + re.sub(r"[^A-Za-z0-9]+", "_", topics.prefix).strip("_")
        self.controller_node = f"{self.key}_ctl"

    # --- nodes and ids --------------------------------------------------------------------
    def device_node(self, device_id: str) -> str:
        # Device ids have no '_', so "<key>_dev_<id>" never equals another id's or the controller's.
        return f"{self.key}_dev_{device_id}"

    @staticmethod
    def _entity_id(platform: str, owner: str, key: str) -> str:
        return f"{platform}.espfleet_{owner.replace('-', '_')}_{key}"

    # --- payloads -------------------------------------------------------------------------
    def device_config(
        self,
        device_id: str,
        shown: Shown,
        rooms: Iterable[str],
        calls: Sequence[str] = (),
    ) -> dict[str, Any]:
        t = self.topics
        node = self.device_node(device_id)
        dev: dict[str, Any] = {
            "identifiers": [node],
            "name": device_id,
            "manufacturer": MANUFACTURER,
            "model": shown.hw or DEVICE_MODEL,
            "via_device": self.controller_node,
        }
        if shown.fw:
            dev["sw_version"] = shown.fw
        cmps = {
            e.key: self._component(
                e,
                unique_id=f"{node}_{e.key}",
                entity_id=self._entity_id(e.platform, device_id, e.key),
                state_topic=t.ha_device_state(device_id),
                command_topic=t.ha_device_set(device_id, e.key) if e.command else None,
                options={"rooms": sorted(rooms), "calls": list(calls)},
            )
            for e in DEVICE_ENTITIES
            # Home Assistant refuses a select with no options: none when nobody is callable.
            if e.choices != "calls" or calls
        }
        return {
            "dev": dev,
            "o": ORIGIN,
            "cmps": cmps,
            # Shared by every entity: the device must be online and the controller (which
            # writes the state docs and carries out the commands) too.
            "availability": [
                {"topic": t.status(device_id), "value_template": STATUS_TEMPLATE},
                {"topic": t.ha_status},
            ],
            "availability_mode": "all",
        }

    def controller_config(self, rooms: Iterable[str], groups: Iterable[str] = ()) -> dict[str, Any]:
        t = self.topics
        node = self.controller_node
        name = "espfleet" if t.prefix == "fleet/v1" else f"espfleet {t.prefix}"
        cmps = {
            e.key: self._component(
                e,
                unique_id=f"{node}_{e.key}",
                entity_id=self._entity_id(e.platform, "fleet", e.key),
                state_topic=t.ha_fleet_state,
                command_topic=t.ha_fleet_set(e.key) if e.command else None,
                options={"rooms": sorted(rooms)},
            )
            for e in FLEET_ENTITIES
        }
        for group in sorted(groups):
            e = group_notify(group)
            cmps[e.key] = self._component(
                e,
                unique_id=f"{node}_{e.key}",
                entity_id=f"notify.espfleet_announce_{group.replace('-', '_')}",
                state_topic=t.ha_fleet_state,
                command_topic=t.ha_fleet_set(e.key),
                options={},
            )
        return {
            "dev": {
                "identifiers": [node],
                "name": name,
                "manufacturer": MANUFACTURER,
                "model": CONTROLLER_MODEL,
                "sw_version": SW_VERSION,
            },
            "o": ORIGIN,
            "cmps": cmps,
            "availability": [{"topic": t.ha_status}],
        }

    @staticmethod
    def _component(
        e: Entity,
        *,
        unique_id: str,
        entity_id: str,
        state_topic: str,
        command_topic: str | None,
        options: Mapping[str, list[str]],
    ) -> dict[str, Any]:
        cmp: dict[str, Any] = {
            "p": e.platform,
            "name": e.name,
            "unique_id": unique_id,
            "default_entity_id": entity_id,
            **e.options,
        }
        if e.state:
            cmp["state_topic"] = state_topic
            cmp["value_template"] = _value(e.state_key or e.key)
        if command_topic is not None:
            cmp["command_topic"] = command_topic
            cmp["qos"] = 1
        if e.platform == "select":
            cmp["options"] = options[e.choices]
        return cmp

    # --- topics ---------------------------------------------------------------------------
    def device_config_topic(self, device_id: str) -> str:
        return ha_discovery_config(self.ha_prefix, self.device_node(device_id))

    @property
    def controller_config_topic(self) -> str:
        return ha_discovery_config(self.ha_prefix, self.controller_node)
