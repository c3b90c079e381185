"""espfleet: fleets of ESP32 audio devices in meetings.

One thing happens on import, before any module of the package loads paho: paho-mqtt
imports dnspython, when it is installed (aiortc's ICE needs it), only for MQTT-over-DNS-SRV
lookups the fleet never does, and that import costs a short-lived `fleet` command about
55 ms. So paho's own import of `dns.resolver` is answered "not installed" (paho then
leaves SRV out); every other import of dnspython, aiortc's included, is untouched.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoSrvForPaho(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        paho = sys.modules.get("paho.mqtt.client")
        # paho sets HAVE_DNS right after its `import dns.resolver`: before that, the
        # import is paho's own.
        if name == "dns.resolver" and paho is not None and not hasattr(paho, "HAVE_DNS"):
            raise ModuleNotFoundError("not needed by paho here", name=name)
        return None


if "paho.mqtt.client" not in sys.modules:
    sys.meta_path.insert(0, _NoSrvForPaho())
