"""Home Assistant: MQTT discovery, entity state and entity commands (docs/home-assistant.md).

`HomeAssistantPart` runs inside the controller. It announces every device and
the controller itself through Home Assistant's device-based discovery
(`homeassistant/device/<node>/config`, retained), keeps one retained state doc
per device and one for the fleet under `{prefix}/ha/`, and turns the entities'
commands (`{prefix}/ha/.../set`) into the same API requests the CLI sends.

The part loads on first use of its names: the CLI's options name `DEFAULT_ROOM` only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.ha.part import HomeAssistantPart, HomeAssistantSettings

# The room of Home Assistant's "Join all" (and of a switch without a last room) until
# one is chosen there.
DEFAULT_ROOM = "standup"


def __getattr__(name: str) -> Any:
    if name in ("HomeAssistantPart", "HomeAssistantSettings"):
        return getattr(importlib.import_module("fleet.ha.part"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_ROOM", "HomeAssistantPart", "HomeAssistantSettings"]
