"""Home Assistant: MQTT discovery, entity state and entity commands (docs/home-assistant.md).

`HomeAssistantPart` runs inside the controller. It announces every device and
the controller itself through Home Assistant's device-based discovery
(`homeassistant/device/<node>/config`, retained), keeps one retained state doc
per device and one for the fleet under `{prefix}/ha/`, and turns the entities'
commands (`{prefix}/ha/.../set`) into the same API requests the CLI sends.
"""

from fleet.ha.part import HomeAssistantPart, HomeAssistantSettings

__all__ = ["HomeAssistantPart", "HomeAssistantSettings"]
