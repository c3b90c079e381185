"""Home Assistant's announcement and intercom entities: the fleet's and each group's notify,
a device's do-not-disturb switch, call select and hang-up button.

A client under the `homeassistant` user plays Home Assistant against a real controller,
simulated devices (in two groups) and both brokers. The ops themselves are served by
the announcement and call parts; here a stand-in part in front of them records the
requests the entities produce and answers each, so the test sees both the request the
controller runs and its result on `api/result`, as Home Assistant reads it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from fleet.auth import Role
from fleet.controller.parts import ControllerPart
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.ha.discovery import MAX_CALL_DEVICES, call_options, group_entity
from fleet.meetings import MeetingServer
from fleet.mqtt import payload_bytes
from fleet.protocol import TopicKind, encode
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult, Status
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import Part, controller, register_devices, sim_fleet, wait_for

HA_USER = "ha"
GROUPS = ("kitchen", "upstairs-hall")
OPS = (ApiOp.ANNOUNCE, ApiOp.DND, ApiOp.CALL, ApiOp.ANSWER, ApiOp.HANGUP)


class OpsStandIn(ControllerPart):
    """Serves the announcement and call ops in front of any other part: records each request
    and answers it."""

    name = "ops-stand-in"

    def __init__(self) -> None:
        self.requests: list[tuple[ApiOp, ApiRequest]] = []

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        def serve(op: ApiOp) -> Callable[[ApiRequest], Awaitable[ApiResult]]:
            async def handle(request: ApiRequest) -> ApiResult:
                self.requests.append((op, request))
                return ApiResult(op=op.value, ok=True)

            return handle

        return {op: serve(op) for op in OPS}

    def of(self, op: ApiOp) -> list[ApiRequest]:
        return [r for o, r in self.requests if o is op]


@dataclass
class Ha:
    client: aiomqtt.Client
    last: dict[str, bytes] = field(default_factory=dict)
    results: list[ApiResult] = field(default_factory=list)

    def doc(self, topic: str) -> dict[str, Any]:
        return json.loads(self.last[topic])  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def fleet_with_ha(
    handle: BrokerHandle, db: Path
) -> AsyncIterator[tuple[OpsStandIn, HomeAssistantPart, Ha]]:
    t = handle.topics
    secrets = register_devices(handle, 3, groups=GROUPS)
    ha_secret = handle.add_user(HA_USER, Role.HOMEASSISTANT)
    stand_in = OpsStandIn()
    part = HomeAssistantPart(HomeAssistantSettings(tele_interval_s=0, fleet_interval_s=0.05))
    async with (
        controller(handle, db, parts=[stand_in, MeetingServer(), part]),
        sim_fleet(handle, secrets, groups=GROUPS),
        mqtt_client(handle, HA_USER, ha_secret, client_id="ha-intercom") as client,
    ):
        ha = Ha(client)

        async def read() -> None:
            async for m in client.messages:
                ha.last[m.topic.value] = payload_bytes(m)
                if m.topic.value == t.api_result:
                    ha.results.append(ApiResult.model_validate_json(payload_bytes(m)))

        reader = Part(read(), "ha-reader")
        try:
            for flt in ("homeassistant/#", t.ha_everything, t.api_result):
                await client.subscribe(flt, qos=1)
            await client.subscribe(t.all_devices(TopicKind.STATE), qos=1)
            await wait_for(
                lambda: all(t.ha_device_state(d) in ha.last for d in secrets), what="state docs"
            )
            yield stand_in, part, ha
        finally:
            await reader.stop()


def _configs(ha: Ha) -> dict[str, dict[str, Any]]:
    return {
        t: json.loads(p) for t, p in ha.last.items() if t.startswith("homeassistant/device/") and p
    }


def _controller_config(ha: Ha) -> dict[str, Any]:
    return next(c for c in _configs(ha).values() if "via_device" not in c["dev"])


def _device_config(ha: Ha, device: str) -> dict[str, Any]:
    return next(c for c in _configs(ha).values() if c["dev"]["name"] == device)


async def test_discovery_of_notify_dnd_call_and_hangup(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with fleet_with_ha(any_broker, tmp_path / "ctl.db") as (_stand_in, _part, ha):
        want_calls = call_options("dev-1", ["dev-1", "dev-2", "dev-3"], GROUPS)
        assert want_calls == [
            "dev-2",
            "dev-3",
            "group:all",
            "group:kitchen",
            "group:upstairs-hall",
        ]
        await wait_for(
            lambda: (
                len(_configs(ha)) == 4
                and {group_entity(g) for g in GROUPS} <= set(_controller_config(ha)["cmps"])
                and _device_config(ha, "dev-1")["cmps"]["call"]["options"] == want_calls
            ),
            what="the groups' notify entities and the full call select",
        )
        fleet_cmps = _controller_config(ha)["cmps"]
        notify = {k: c for k, c in fleet_cmps.items() if c["p"] == "notify"}
        assert set(notify) == {"announce", "announce_urgent", "g_kitchen", "g_upstairs_hall"}
        assert notify["announce"]["default_entity_id"] == "notify.espfleet_fleet_announce"
        assert notify["g_upstairs_hall"]["default_entity_id"] == (
            "notify.espfleet_announce_upstairs_hall"
        )
        assert notify["g_kitchen"]["name"] == "Announce to kitchen"
        for key, cmp in notify.items():
            # What Home Assistant's MQTT notify schema takes: a command topic (it publishes
            # the message there), no state.
            assert cmp["command_topic"] == t.ha_fleet_set(key)
            assert "state_topic" not in cmp
            assert cmp["unique_id"]

        cmps = _device_config(ha, "dev-1")["cmps"]
        assert cmps["dnd"]["p"] == "switch"
        assert cmps["dnd"]["command_topic"] == t.ha_device_set("dev-1", "dnd")
        assert cmps["dnd"]["state_topic"] == t.ha_device_state("dev-1")
        assert cmps["dnd"]["value_template"] == "{{ value_json.dnd }}"
        assert cmps["call"]["p"] == "select"
        assert cmps["call"]["command_topic"] == t.ha_device_set("dev-1", "call")
        assert cmps["call"]["value_template"] == "{{ value_json.call }}"
        assert cmps["hangup"]["p"] == "button"
        assert cmps["hangup"]["command_topic"] == t.ha_device_set("dev-1", "hangup")
        assert cmps["hangup"]["default_entity_id"] == "button.espfleet_dev_1_hangup"
        doc = ha.doc(t.ha_device_state("dev-1"))
        assert (doc["dnd"], doc["call"]) == ("OFF", None)


def test_call_selects_list_devices_of_small_fleets_only() -> None:
    many = [f"dev-{n}" for n in range(MAX_CALL_DEVICES + 1)]
    assert call_options("dev-1", many, ["kitchen"]) == ["group:all", "group:kitchen"]
    assert len(call_options("dev-1", many[:MAX_CALL_DEVICES], [])) == MAX_CALL_DEVICES
    assert group_entity("a" * 64).startswith("g_")
    assert len(group_entity("a" * 64)) <= 32


async def test_entity_commands_become_the_right_requests(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with fleet_with_ha(any_broker, tmp_path / "ctl.db") as (stand_in, part, ha):
        await wait_for(
            lambda: "g_kitchen" in _controller_config(ha)["cmps"], what="the group's notify"
        )
        await ha.client.publish(t.ha_fleet_set("announce"), "Dinner is ready", qos=1)
        await ha.client.publish(t.ha_fleet_set("announce_urgent"), "Fire drill now", qos=1)
        await ha.client.publish(t.ha_fleet_set("g_kitchen"), "Kettle's on ☕", qos=1)
        await wait_for(lambda: len(stand_in.of(ApiOp.ANNOUNCE)) == 3, what="three announcements")
        everyone, urgent, kitchen = stand_in.of(ApiOp.ANNOUNCE)
        assert (everyone.text, everyone.priority, everyone.group, everyone.device) == (
            "Dinner is ready",
            "normal",
            "all",
            None,
        )
        assert everyone.chime
        assert (urgent.text, urgent.priority, urgent.group) == ("Fire drill now", "urgent", "all")
        assert (kitchen.text, kitchen.priority, kitchen.group) == (
            "Kettle's on ☕",
            "normal",
            "kitchen",
        )

        await ha.client.publish(t.ha_device_set("dev-1", "dnd"), "ON", qos=1)
        await ha.client.publish(t.ha_device_set("dev-2", "dnd"), "OFF", qos=1)
        await wait_for(lambda: len(stand_in.of(ApiOp.DND)) == 2, what="two dnd requests")
        assert [(r.device, r.on) for r in stand_in.of(ApiOp.DND)] == [
            ("dev-1", True),
            ("dev-2", False),
        ]

        state = t.ha_device_state("dev-1")
        await ha.client.publish(t.ha_device_set("dev-1", "call"), "dev-2", qos=1)
        await wait_for(lambda: ha.doc(state)["call"] == "dev-2", what="the select shows dev-2")
        await ha.client.publish(t.ha_device_set("dev-3", "call"), "group:kitchen", qos=1)
        await wait_for(lambda: len(stand_in.of(ApiOp.CALL)) == 2, what="two calls")
        to_device, to_group = stand_in.of(ApiOp.CALL)
        assert (to_device.device, to_device.to) == ("dev-1", "dev-2")
        assert not to_device.ring  # auto-answer, the default
        assert (to_group.device, to_group.to, to_group.group) == ("dev-3", None, "kitchen")

        await ha.client.publish(t.ha_device_set("dev-1", "hangup"), "PRESS", qos=1)
        await wait_for(lambda: len(stand_in.of(ApiOp.HANGUP)) == 1, what="a hang-up")
        assert stand_in.of(ApiOp.HANGUP)[0].device == "dev-1"
        assert stand_in.of(ApiOp.HANGUP)[0].call is None
        await wait_for(lambda: ha.doc(state)["call"] is None, what="the select back to unknown")

        # Each went out as the controller's request on the wire: its result on api/result,
        # with an id of Home Assistant's part, as an automation reads it.
        ids = {r.id for _op, r in stand_in.requests}
        assert all(i and i.startswith("ha-") for i in ids)
        await wait_for(
            lambda: ids <= {r.id for r in ha.results if r.done}, what="a result for each"
        )
        assert {r.op for r in ha.results if r.id in ids} == {"announce", "dnd", "call", "hangup"}
        assert all(r.ok for r in ha.results if r.id in ids)
        assert part.stats["refused"] == 0


async def test_bad_intercom_commands_are_refused(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = amqtt_broker.topics
    async with fleet_with_ha(amqtt_broker, tmp_path / "ctl.db") as (stand_in, part, ha):
        bad: list[tuple[str, bytes]] = [
            (t.ha_device_set("dev-1", "call"), b"dev-1"),  # itself
            (t.ha_device_set("dev-1", "call"), b"ghost"),
            (t.ha_device_set("dev-1", "call"), b"group:nobody"),
            (t.ha_device_set("dev-1", "call"), b"Group:Kitchen"),
            (t.ha_device_set("dev-1", "dnd"), b"yes"),
            (t.ha_device_set("dev-1", "hangup"), b"NOW"),
            (t.ha_fleet_set("announce"), b"   "),
            (t.ha_fleet_set("announce"), ("x" * 1001).encode()),
            (t.ha_fleet_set("announce"), b"\xff\xfe"),
            (t.ha_fleet_set("g_nobody"), b"hello"),
        ]
        for topic, payload in bad:
            await ha.client.publish(topic, payload, qos=1)
        await wait_for(lambda: part.stats["refused"] == len(bad), what="every one refused")
        assert stand_in.requests == []
        # A good one still goes through.
        await ha.client.publish(t.ha_fleet_set("announce"), "x" * 1000, qos=1)
        await wait_for(lambda: len(stand_in.of(ApiOp.ANNOUNCE)) == 1, what="the good one")


async def test_dnd_switch_shows_what_the_device_reports(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-d")
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    part = HomeAssistantPart(HomeAssistantSettings(tele_interval_s=0, fleet_interval_s=0.05))
    async with (
        controller(amqtt_broker, tmp_path / "ctl.db", parts=[part]),
        mqtt_client(amqtt_broker, HA_USER, ha_secret, client_id="ha-dnd") as ha,
        mqtt_client(amqtt_broker, "dev-d", secret) as dev,
    ):
        docs: list[dict[str, Any]] = []

        async def read() -> None:
            async for m in ha.messages:
                if payload_bytes(m):
                    docs.append(json.loads(payload_bytes(m)))

        reader = Part(read(), "ha-reader")
        try:
            await ha.subscribe(t.ha_device_state("dev-d"), qos=1)
            await dev.publish(t.status("dev-d"), encode(Status(online=True, fw="1.0")), 1, True)
            await dev.publish(t.state("dev-d"), b'{"rev": 1, "dnd": true}', 1, True)
            await wait_for(lambda: bool(docs) and docs[-1]["dnd"] == "ON", what="dnd on")
            await dev.publish(t.state("dev-d"), b'{"rev": 2, "dnd": false}', 1, True)
            await wait_for(lambda: docs[-1]["dnd"] == "OFF", what="dnd off")
        finally:
            await reader.stop()
