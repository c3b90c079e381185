"""Home Assistant on its defaults: what its MQTT integration does when the user only fills
in broker, user and password.

It connects with a random client id (22 letters and digits) and MQTT 5 (amqtt speaks
3.1.1 only: there Home Assistant is set to 3.1.1, as docs/home-assistant.md says),
subscribes to discovery (`homeassistant/+/+/config`, `homeassistant/+/+/+/config`), sends
its birth (`online` on `homeassistant/status`), and then, per discovered entity,
subscribes to the exact state and availability topics its config names and publishes on
its command topic. The test checks that every entity the docs promise is discovered
with a config it can use under the `ha` user's ACL, and that the entities' commands
reach the controller and act.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import jinja2

from fleet.auth import Role
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.meetings import MeetingServer
from fleet.mqtt import payload_bytes
from tests.support import ROOT
from tests.support.brokers import BrokerHandle
from tests.support.running import Part, controller, register_devices, sim_fleet, wait_for

HA_USER = "ha"
DISCOVERY = ("homeassistant/+/+/config", "homeassistant/+/+/+/config")
BIRTH = "homeassistant/status"
DEVICES = 3
GROUPS = ("kitchen", "upstairs-hall")
# What each platform's schema requires, beyond `p` and `unique_id` (Home Assistant's MQTT
# platform schemas).
REQUIRED = {
    "switch": ("command_topic",),
    "select": ("command_topic", "options"),
    "button": ("command_topic",),
    "sensor": ("state_topic",),
    "notify": ("command_topic",),
}
# Options a device-based config shares with its components (Home Assistant's SHARED_OPTIONS).
SHARED = ("availability", "availability_mode", "state_topic", "command_topic")


def random_client_id() -> str:
    """Home Assistant's client id when the field is left empty."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=22))


def promised_entities() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(name, platform) of every entity the docs' "What you see" tables list: a device's
    and the controller's; a row named with `{group}` is one entity per group."""
    docs = (ROOT / "docs" / "home-assistant.md").read_text()
    section = docs.split("## What you see", 1)[1].split("\n## ", 1)[0]
    device_part, controller_part = section.split("The controller is one more device", 1)
    row = re.compile(r"^\| ([^|]+?) \| (switch|select|button|sensor|notify) \|", re.M)

    def rows(text: str) -> set[tuple[str, str]]:
        return {
            (m[1].replace("{group}", g), m[2])
            for m in row.finditer(text)
            for g in (GROUPS if "{group}" in m[1] else ("",))
        }

    return rows(device_part), rows(controller_part)


@dataclass
class HomeAssistant:
    """The integration's view: the last payload of every topic it subscribed to."""

    client: aiomqtt.Client
    last: dict[str, bytes] = field(default_factory=dict)

    def configs(self) -> dict[str, dict[str, Any]]:
        return {
            t: json.loads(p)
            for t, p in self.last.items()
            if t.startswith("homeassistant/") and t.endswith("/config") and p
        }


async def _read(ha: HomeAssistant) -> None:
    async for message in ha.client.messages:
        ha.last[message.topic.value] = payload_bytes(message)


@contextlib.asynccontextmanager
async def home_assistant(handle: BrokerHandle, secret: str) -> AsyncIterator[HomeAssistant]:
    v5 = handle.kind == "mosquitto"
    async with aiomqtt.Client(
        handle.host,
        handle.port,
        username=HA_USER,
        password=secret,
        identifier=random_client_id(),
        will=aiomqtt.Will(BIRTH, b"offline"),  # its default will
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        keepalive=60,
        timeout=10,
    ) as client:
        ha = HomeAssistant(client)
        reader = Part(_read(ha), "ha-reader")
        try:
            for flt in DISCOVERY:
                await client.subscribe(flt, qos=0)
            await client.publish(BIRTH, b"online", qos=0)
            yield ha
        finally:
            await reader.stop()


def _render(template: str, payload: bytes) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    variables: dict[str, Any] = {"value": payload.decode()}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(payload)
    return env.from_string(template).render(**variables)


def _components(configs: dict[str, dict[str, Any]]) -> list[tuple[bool, str, dict[str, Any]]]:
    """(of a device, key, merged config) of every discovered component."""
    out = []
    for config in configs.values():
        shared = {k: config[k] for k in SHARED if k in config}
        for key, cmp in config["cmps"].items():
            out.append(("via_device" in config["dev"], key, shared | cmp))
    return out


def _command_payload(cmp: dict[str, Any]) -> bytes:
    """What Home Assistant publishes for the entity's default action."""
    platform = cmp["p"]
    if platform == "switch":
        return str(cmp.get("payload_on", "ON")).encode()
    if platform == "button":
        return str(cmp.get("payload_press", "PRESS")).encode()
    if platform == "select":
        return str(cmp["options"][0]).encode()
    if platform == "notify":
        return b"Hello from Home Assistant"
    raise AssertionError(f"no command for {platform}")


async def test_home_assistant_on_its_defaults_discovers_and_drives_everything(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    secrets = register_devices(any_broker, DEVICES, groups=GROUPS)
    ha_secret = any_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    part = HomeAssistantPart(HomeAssistantSettings(tele_interval_s=0, fleet_interval_s=0.05))
    async with (
        controller(any_broker, tmp_path / "ctl.db", parts=[MeetingServer(), part]),
        sim_fleet(any_broker, secrets, groups=GROUPS) as fleet,
        home_assistant(any_broker, ha_secret) as ha,
    ):
        device_promise, controller_promise = promised_entities()
        assert device_promise
        assert controller_promise

        def shown(config: dict[str, Any]) -> set[tuple[str, str]]:
            return {(c["name"], c["p"]) for c in config["cmps"].values()}

        def complete() -> bool:
            # Every config as it settles: the groups' notify entities, and the call selects
            # listing every other device and group.
            configs = ha.configs()
            return len(configs) == DEVICES + 1 and all(
                shown(c) == controller_promise
                if "via_device" not in c["dev"]
                else shown(c) == device_promise
                and len(c["cmps"]["call"]["options"]) == DEVICES - 1 + len(GROUPS)
                for c in configs.values()
            )

        await wait_for(complete, what="every entity the docs promise, in every config")
        configs = ha.configs()

        components = _components(configs)
        # As Home Assistant does for each entity: subscribe to its state and availability
        # topics, exactly as named (no wildcard), and read them under the `ha` user's ACL.
        read_topics: set[str] = set()
        for _of_device, key, cmp in components:
            for required in ("unique_id", "name", *REQUIRED[cmp["p"]]):
                assert cmp.get(required), (key, required)
            if "state_topic" in cmp:
                read_topics.add(cmp["state_topic"])
            read_topics.update(a["topic"] for a in cmp.get("availability", ()))
        for topic in sorted(read_topics):
            await ha.client.subscribe(topic, qos=0)
        await wait_for(
            lambda: all(ha.last.get(topic) for topic in read_topics),
            what="a retained payload on every state and availability topic",
        )
        for _of_device, key, cmp in components:
            if "state_topic" in cmp:
                value = _render(cmp["value_template"], ha.last[cmp["state_topic"]])
                assert value != "", (key, cmp["value_template"])
                if cmp["p"] == "switch":
                    assert value in ("ON", "OFF"), (key, value)
                if cmp["p"] == "select":
                    # Home Assistant's select reads "None" (a null) as no option: unknown.
                    assert value in (*cmp["options"], "None"), (key, value, cmp["options"])
            for avail in cmp.get("availability", ()):
                payload = ha.last[avail["topic"]]
                if "value_template" in avail:
                    payload = _render(avail["value_template"], payload).encode()
                assert payload == str(avail.get("payload_available", "online")).encode()

        # Every command topic is one the broker lets this user publish: each command
        # reaches the controller's part (which counts it) and none is refused.
        commands = [(key, cmp) for _d, key, cmp in components if "command_topic" in cmp]
        assert part.stats["refused"] == 0
        for _key, cmp in commands:
            if cmp["command_topic"] == t.ha_fleet_set("leave_all"):
                continue  # pressed last, below, once the rest has been seen to act
            before = part.stats["commands"]
            await ha.client.publish(cmp["command_topic"], _command_payload(cmp), qos=1)
            await wait_for(
                lambda before=before: part.stats["commands"] > before,  # type: ignore[misc]
                what=f"the controller got {cmp['command_topic']}",
            )
        assert part.stats["refused"] == 0

        # And the buttons act: Identify on each device, Join all, then Leave all.
        await wait_for(
            lambda: all(d.identify_until > 0 for d in fleet.devices), what="every device identifies"
        )
        await ha.client.publish(t.ha_fleet_set("join_all"), b"PRESS", qos=1)
        await wait_for(
            lambda: all(d.meeting is not None for d in fleet.devices), what="all in the meeting"
        )
        await wait_for(
            lambda: all(
                _render("{{ value_json.in_meeting }}", ha.last[t.ha_device_state(d)]) == "ON"
                for d in secrets
            ),
            what="every In meeting switch shows on",
        )
        await ha.client.publish(t.ha_fleet_set("leave_all"), b"PRESS", qos=1)
        await wait_for(lambda: all(d.meeting is None for d in fleet.devices), what="all left")
        assert part.stats["refused"] == 0
