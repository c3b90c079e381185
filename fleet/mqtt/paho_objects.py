"""paho's per-message objects, made cheap (applied once, when fleet.mqtt is imported).

Profiled in the controller during a fan-out (bench/fanout.py --profile), about half of
its CPU went into two paho 2.1 constructors that run for every message:

- `Properties.__init__` builds its tables (two dicts of ~30 entries, each type looked
  up with `list.index`) for every MQTT 5 PUBLISH received, though they never change.
  Here every Properties shares one copy of them (paho only reads them); and `clear`,
  which `unpack` runs first, no longer derives every property's attribute name again.
- `MQTTMessageInfo.__init__` makes a `threading.Condition` (a lock and a deque) for every
  message sent and every message received (each MQTTMessage holds one). Here they share
  one Condition, notified with `notify_all` so any thread waiting in
  `wait_for_publish` still wakes and re-checks its own message.
"""

from __future__ import annotations

import threading
from typing import Any

from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TABLES = ("types", "names", "properties")


def _share_property_tables() -> None:
    template = Properties(PacketTypes.PUBLISH)
    if not all(isinstance(getattr(template, name, None), list | dict) for name in _TABLES):
        return  # not the paho this was written for: leave it as it is
    types, names, properties = (getattr(template, name) for name in _TABLES)

    def init(self: Properties, packetType: int) -> None:
        set_attr = object.__setattr__
        set_attr(self, "packetType", packetType)
        set_attr(self, "types", types)
        set_attr(self, "names", names)
        set_attr(self, "properties", properties)

    attributes = tuple(name.replace(" ", "") for name in names)

    def clear(self: Properties) -> None:
        values = self.__dict__
        for name in attributes:
            values.pop(name, None)

    Properties.__init__ = init  # type: ignore[method-assign]
    Properties.clear = clear  # type: ignore[method-assign]


def _share_publish_conditions() -> None:
    info_class: Any = paho_client.MQTTMessageInfo
    if set(info_class.__slots__) != {"_condition", "_iterpos", "_published", "mid", "rc"}:
        return
    shared = threading.Condition()

    def init(self: Any, mid: int) -> None:
        self.mid = mid
        self._published = False
        self._condition = shared
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def set_as_published(self: Any) -> None:
        with shared:
            self._published = True
            shared.notify_all()

    info_class.__init__ = init
    info_class._set_as_published = set_as_published


_share_property_tables()
_share_publish_conditions()
