"""Who may publish, subscribe to and receive which topic (docs/protocol.md §11, Security).

The rules, by role:

- controller: everything under the prefix, and ``homeassistant/#``.
- device (username == device id): publishes only its own ``dev/{id}/status|state|ack|tele``,
  ``meet/{id}/up`` and its button's requests ``api/by/{id}/call|answer|hangup``; reads
  only ``dev/{id}/desired``, ``dev/{id}/cmd``, ``dev/{id}/ann`` (announcements, which only
  the controller writes), ``meet/{id}/down`` and ``grp/{g}/desired`` for its groups and
  ``all``, by exact subscription (no wildcards).
- homeassistant: publishes the ops of ``api/{op}`` in HOMEASSISTANT_API_OPS (meetings,
  calls, announce, dnd) and of its own ``api/by/{username}/{op}``, ``homeassistant/status``
  and its entities' command topics (``ha/dev/+/+/set``, ``ha/fleet/+/set``); reads
  ``homeassistant/#``, device status/state/tele, ``api/result`` and ``ha/#``. So it
  cannot forge the state docs under ``ha/`` nor write discovery.
- agent (username == participant id): publishes its own ``meet/{id}/up`` and the ops of
  ``api/{op}`` and ``api/by/{id}/{op}`` in AGENT_API_OPS; reads ``meet/{id}/down``,
  device status/state and ``api/result``; both on ``sync/{id}-api`` (its API client's
  loopback); on Mosquitto it also reads ``api/reply/{id}-api`` (MQTT 5 results; amqtt
  speaks 3.1.1 only).
- web (one person's browser, username == its participant pid): publishes only
  ``meet/{name}/up`` and the person's API ops (``WEB_API_OPS``: meetings, rooms,
  sessions, say, announce, dnd, call, hangup) on ``api/{op}`` or ``api/by/{name}/{op}``;
  reads ``meet/{name}/down``, device status/state/tele, ``api/result`` and ``events``:
  the read-only fleet view.
  Nothing at all once its credentials expire (checked per message, so an open page goes
  deaf and mute at its expiry; the broker then closes it).
- anonymous or unknown role: nothing.

A wildcard subscription is allowed only when every topic it can match is readable.
``api/by/{user}/{op}`` is writable by that user only: the controller counts requests
against the user the topic names (docs/protocol.md §9).

`Acl.allows` runs once per message per subscriber inside amqtt, so it does no regex work:
exact topics are set lookups, the few wildcard rules are pre-split filters.
"""

from __future__ import annotations

import time
from typing import Literal

from fleet.auth.credentials import Credential
from fleet.auth.roles import (
    AGENT_API_OPS,
    DEVICE_API_OPS,
    HOMEASSISTANT_API_OPS,
    WEB_API_OPS,
    Role,
)
from fleet.protocol.topics import Topics

AclAction = Literal["publish", "subscribe", "receive"]

_DEVICE_WRITE = ("status", "state", "ack", "tele")
_DEVICE_READ = ("desired", "cmd", "ann")
_HA_DEVICE_READ = ("status", "state", "tele")
# Enum member lookup costs ~0.2 us on Python 3.11; module constants are plain globals.
_DEVICE, _CONTROLLER, _HOMEASSISTANT = Role.DEVICE, Role.CONTROLLER, Role.HOMEASSISTANT
_AGENT = Role.AGENT
_WEB = Role.WEB
_CACHE_LIMIT = 100_000  # entries per cache; cleared wholesale past this (cheap to rebuild)

Filter = tuple[str, ...]


def filter_covers(pattern: Filter, sub: Filter) -> bool:
    """True when every topic the filter `sub` matches is also matched by `pattern`.

    Both are split on '/'. An exact topic is a filter without wildcards. Conservative:
    '+' in `sub` is covered only by '+' or '#' in `pattern`.
    """
    n = len(sub)
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= n:
            return False
        s = sub[i]
        if s == "#":
            return False
        if p != "+" and (s == "+" or s != p):
            return False
    return n == len(pattern)


def split_filter(topic: str) -> Filter:
    return tuple(topic.split("/"))


class Acl:
    """Pure, cached authorisation for one topic prefix."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        p = topics.prefix
        self.prefix = p
        self._ha_status = "homeassistant/status"

        self._controller_read: tuple[Filter, ...] = (
            split_filter(f"{p}/#"),
            ("homeassistant", "#"),
        )
        self._ha_write_exact = frozenset(
            {f"{p}/api/{op.value}" for op in HOMEASSISTANT_API_OPS} | {self._ha_status}
        )
        self._ha_ops = frozenset(op.value for op in HOMEASSISTANT_API_OPS)
        self._agent_ops = frozenset(op.value for op in AGENT_API_OPS)
        self._web_ops = frozenset(op.value for op in WEB_API_OPS)
        self._ha_write: tuple[Filter, ...] = (
            split_filter(topics.ha_all_device_sets),
            split_filter(topics.ha_all_fleet_sets),
        )
        self._ha_read_cache: dict[str, bool] = {}
        self._ha_read: tuple[Filter, ...] = (
            ("homeassistant", "#"),
            *(split_filter(f"{p}/dev/+/{k}") for k in _HA_DEVICE_READ),
            split_filter(f"{p}/api/result"),
            split_filter(f"{p}/ha/#"),
        )
        self._agent_api = frozenset(f"{p}/api/{op.value}" for op in AGENT_API_OPS)
        self._agent_read: tuple[Filter, ...] = (
            *(split_filter(f"{p}/dev/+/{k}") for k in ("status", "state")),
            split_filter(f"{p}/api/result"),
        )
        self._web_write_exact = frozenset(f"{p}/api/{op.value}" for op in WEB_API_OPS)
        self._web_read: tuple[Filter, ...] = (
            *(split_filter(f"{p}/dev/+/{k}") for k in _HA_DEVICE_READ),
            split_filter(topics.api_result),
            split_filter(topics.events),
        )
        # (username, groups) -> (writable topics, readable topics)
        self._device_cache: dict[tuple[str, tuple[str, ...]], tuple[frozenset[str], frozenset[str]]]
        self._device_cache = {}

    # --- the one entry point ----------------------------------------------------------------
    def allows(self, cred: Credential | None, action: AclAction, topic: str) -> bool:
        if cred is None or not topic:
            return False
        role = cred.role
        if role is _DEVICE:
            write, read = self._device_sets(cred)
            if action == "publish":
                return topic in write
            # Exact topics only: a device subscription is never a wildcard.
            return topic in read
        if role is _CONTROLLER:
            if action == "subscribe" and ("+" in topic or "#" in topic):
                return self._covered(topic, self._controller_read)
            # The same topics as the filters `{prefix}/#` and `homeassistant/#` match.
            return (topic.startswith(self.prefix) and _under(topic, self.prefix)) or (
                topic.startswith("homeassistant") and _under(topic, "homeassistant")
            )
        if role is _HOMEASSISTANT:
            if action == "publish":
                return (
                    topic in self._ha_write_exact
                    or self._covered(topic, self._ha_write)
                    or self._own_request(cred, topic, self._ha_ops)
                )
            # Home Assistant receives every device's state: remember answers per topic.
            allowed = self._ha_read_cache.get(topic)
            if allowed is None:
                if len(self._ha_read_cache) >= _CACHE_LIMIT:
                    self._ha_read_cache.clear()
                allowed = self._covered(topic, self._ha_read)
                self._ha_read_cache[topic] = allowed
            return allowed
        if role is _AGENT:
            own = (f"{self.prefix}/sync/{cred.username}-api",)
            if action == "publish":
                mine = (*own, self.topics.meet_up(cred.username))
                return (
                    topic in self._agent_api
                    or topic in mine
                    or self._own_request(cred, topic, self._agent_ops)
                )
            if topic in (*own, self.topics.meet_down(cred.username)):
                return True
            return self._covered(topic, self._agent_read)
        if role is _WEB:
            if cred.expired(time.time()):
                return False
            meet = f"{self.prefix}/meet/{cred.username}/"
            if action == "publish":
                return (
                    topic == meet + "up"
                    or topic in self._web_write_exact
                    or self._own_request(cred, topic, self._web_ops)
                )
            return topic == meet + "down" or self._covered(topic, self._web_read)
        return False

    # --- helpers ------------------------------------------------------------------------------
    def _own_request(self, cred: Credential, topic: str, ops: frozenset[str]) -> bool:
        """`api/by/{the user's own name}/{op}` for an op of its role."""
        head = f"{self.prefix}/api/by/{cred.username}/"
        return topic.startswith(head) and topic[len(head) :] in ops

    @staticmethod
    def _covered(topic: str, patterns: tuple[Filter, ...]) -> bool:
        sub = split_filter(topic)
        return any(filter_covers(p, sub) for p in patterns)

    def _device_sets(self, cred: Credential) -> tuple[frozenset[str], frozenset[str]]:
        key = (cred.username, tuple(cred.groups))
        sets = self._device_cache.get(key)
        if sets is None:
            if len(self._device_cache) >= _CACHE_LIMIT:
                self._device_cache.clear()
            sets = self._build_device_sets(cred.username, key[1])
            self._device_cache[key] = sets
        return sets

    def _build_device_sets(
        self, device_id: str, groups: tuple[str, ...]
    ) -> tuple[frozenset[str], frozenset[str]]:
        base = f"{self.prefix}/dev/{device_id}/"
        write = {base + k for k in _DEVICE_WRITE}
        write.add(f"{self.prefix}/meet/{device_id}/up")
        write.update(self.topics.api_by(device_id, op.value) for op in DEVICE_API_OPS)
        read = {base + k for k in _DEVICE_READ}
        read.add(f"{self.prefix}/meet/{device_id}/down")
        for g in ("all", *groups):
            read.add(f"{self.prefix}/grp/{g}/desired")
        return frozenset(write), frozenset(read)


def _under(topic: str, root: str) -> bool:
    """`topic` is `root` itself or below it (what the filter ``root/#`` matches)."""
    return len(topic) == len(root) or topic[len(root)] == "/"
