"""Home Assistant: a paho (aiomqtt) client under the `homeassistant` user plays Home Assistant
against a real controller, simulated devices and both brokers.

It checks the discovery configs the way Home Assistant reads them (required keys
per component, unique ids, every named topic published and readable by that
user), drives the entities and the plain API, and feeds them bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import jinja2
import pytest

from fleet.auth import Acl, Role
from fleet.controller.service import Controller
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.ha.discovery import DEVICE_ENTITIES, FLEET_ENTITIES, Discovery, Shown, call_options
from fleet.meetings import MeetingServer
from fleet.mqtt import payload_bytes
from fleet.protocol import TopicKind, Topics, encode
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    PeerAudioStats,
    State,
    Status,
    SystemTelemetry,
    Telemetry,
    TelemetryMeeting,
    WifiTelemetry,
)
from tests.support import ROOT
from tests.support.brokers import BrokerHandle, connect_and_drop, mqtt_client
from tests.support.running import (
    Part,
    controller,
    one_device,
    operator,
    register_devices,
    sim_fleet,
    wait_for,
)

HA_USER = "homeassistant"
HA_PREFIX = "homeassistant"
# What Home Assistant requires of each platform's config (beyond `p` and, for entities of a
# device, `unique_id`), from its MQTT schemas.
REQUIRED = {
    "switch": ("command_topic",),
    "select": ("command_topic", "options"),
    "button": ("command_topic",),
    "sensor": ("state_topic",),
    "notify": ("command_topic",),
}
# Options a device discovery config may share with all its components (Home Assistant's
# SHARED_OPTIONS).
SHARED = (
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "command_topic",
    "payload_available",
    "payload_not_available",
    "state_topic",
)
TEMPLATE_RE = re.compile(r"\{\{ value_json\.([a-z_]+) \}\}")
ENTITY_ID_RE = re.compile(r"([a-z_]+)\.[a-z0-9_]+")


@dataclass
class HaClient:
    """Home Assistant's view: the last payload per topic, and how often each came."""

    client: aiomqtt.Client
    topics: Topics
    last: dict[str, bytes] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    results: list[ApiResult] = field(default_factory=list)

    def configs(self) -> dict[str, dict[str, Any]]:
        return {
            t: json.loads(p)
            for t, p in self.last.items()
            if t.startswith(f"{HA_PREFIX}/device/") and p
        }

    def doc(self, topic: str) -> dict[str, Any]:
        return json.loads(self.last[topic])  # type: ignore[no-any-return]

    def value(self, topic: str, key: str) -> Any:
        """One key of a state doc; None while the doc has not arrived."""
        return self.doc(topic).get(key) if self.last.get(topic) else None

    async def press(self, topic: str, payload: bytes | str = b"PRESS") -> None:
        await self.client.publish(topic, payload, qos=1)

    async def result(self, request_id: str, done: bool = True) -> ApiResult:
        await wait_for(
            lambda: any(r.id == request_id and r.done is done for r in self.results),
            what=f"result of {request_id}",
        )
        return next(r for r in self.results if r.id == request_id and r.done is done)

    def results_for(self, op: str) -> list[ApiResult]:
        return [r for r in self.results if r.op == op]


async def _read(ha: HaClient) -> None:
    async for message in ha.client.messages:
        topic = message.topic.value
        payload = payload_bytes(message)
        ha.last[topic] = payload
        ha.counts[topic] = ha.counts.get(topic, 0) + 1
        if topic == ha.topics.api_result:
            ha.results.append(ApiResult.model_validate_json(payload))


@contextlib.asynccontextmanager
async def home_assistant(handle: BrokerHandle, secret: str) -> AsyncIterator[HaClient]:
    t = handle.topics
    async with mqtt_client(handle, HA_USER, secret, client_id=f"{HA_USER}-test") as client:
        ha = HaClient(client, t)
        for flt in (
            f"{HA_PREFIX}/#",
            t.ha_everything,
            t.all_devices(TopicKind.STATUS),
            t.all_devices(TopicKind.STATE),
            t.all_devices(TopicKind.TELE),
            t.api_result,
        ):
            await client.subscribe(flt, qos=1)
        reader = Part(_read(ha), "ha-reader")
        try:
            yield ha
        finally:
            await reader.stop()


def ha_part() -> HomeAssistantPart:
    return HomeAssistantPart(HomeAssistantSettings(tele_interval_s=0, fleet_interval_s=0.05))


@contextlib.asynccontextmanager
async def platform(
    handle: BrokerHandle, db: Path, devices: int = 3
) -> AsyncIterator[tuple[Controller, Any, HaClient, dict[str, str]]]:
    """Controller (meetings + Home Assistant), simulated devices, Home Assistant's client."""
    secrets = register_devices(handle, devices)
    ha_secret = handle.add_user(HA_USER, Role.HOMEASSISTANT)
    async with (
        home_assistant(handle, ha_secret) as ha,
        controller(handle, db, parts=[MeetingServer(), ha_part()]) as ctl,
        sim_fleet(handle, secrets) as fleet,
    ):
        await wait_for(lambda: len(ha.configs()) == devices + 1, what="every discovery config")
        t = handle.topics
        await wait_for(
            lambda: all(t.ha_device_state(d) in ha.last for d in secrets), what="state docs"
        )
        yield ctl, fleet, ha, secrets


def in_meeting(ha: HaClient, device: str) -> str:
    return str(ha.doc(ha.topics.ha_device_state(device))["in_meeting"])


# --- discovery ----------------------------------------------------------------------------------


async def test_discovery_configs_are_valid_and_their_topics_readable(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    acl = Acl(t)
    async with platform(any_broker, tmp_path / "ctl.db") as (_ctl, _fleet, ha, secrets):
        ha_cred = any_broker.store.get(HA_USER)
        configs = ha.configs()
        unique_ids: list[str] = []
        entity_ids: list[str] = []
        controller_ids: list[str] = []
        devices_seen: set[str] = set()
        for topic, config in configs.items():
            assert re.fullmatch(rf"{HA_PREFIX}/device/[A-Za-z0-9_-]+/config", topic), topic
            assert {"dev", "o", "cmps"} <= config.keys(), topic
            assert "object_id" not in json.dumps(config)  # Home Assistant drops it in 2026.4
            assert config["o"]["name"] == "espfleet"
            dev = config["dev"]
            assert dev["identifiers"]
            for key in ("name", "model", "manufacturer", "sw_version"):
                assert isinstance(dev[key], str), (topic, key)
                assert dev[key], (topic, key)
            if "via_device" in dev:
                devices_seen.add(dev["name"])
                expected = {e.key for e in DEVICE_ENTITIES}
            else:
                controller_ids = dev["identifiers"]
                expected = {e.key for e in FLEET_ENTITIES}
            assert set(config["cmps"]) == expected
            for key, cmp in config["cmps"].items():
                merged = {k: config[k] for k in SHARED if k in config} | cmp
                platform_name = merged["p"]
                for required in (
                    "unique_id",
                    "default_entity_id",
                    "name",
                    *REQUIRED[platform_name],
                ):
                    assert merged.get(required), (topic, key, required)
                unique_ids.append(merged["unique_id"])
                m = ENTITY_ID_RE.fullmatch(merged["default_entity_id"])
                assert m is not None, merged["default_entity_id"]
                assert m[1] == platform_name, merged["default_entity_id"]
                entity_ids.append(merged["default_entity_id"])
                if platform_name == "select":
                    assert all(isinstance(o, str) for o in merged["options"])
                if "state_topic" in merged:
                    # Published by the platform (we got it, as the homeassistant user) and
                    # the template reads a key the doc has.
                    assert merged["state_topic"] in ha.last, merged["state_topic"]
                    assert acl.allows(ha_cred, "receive", merged["state_topic"])
                    tm = TEMPLATE_RE.fullmatch(merged["value_template"])
                    assert tm, merged["value_template"]
                    assert tm[1] in ha.doc(merged["state_topic"]), (key, tm[1])
                if "command_topic" in merged:
                    assert acl.allows(ha_cred, "publish", merged["command_topic"])
                    assert merged["command_topic"].startswith(f"{t.prefix}/ha/")
                avail = merged.get("availability", [])
                assert avail, (topic, key)
                for a in avail:
                    assert a["topic"] in ha.last, a["topic"]
                    assert acl.allows(ha_cred, "receive", a["topic"])
                    assert _available(a, ha.last[a["topic"]]), (a, ha.last[a["topic"]])
                if platform_name == "sensor" and key == "rssi":
                    assert merged["device_class"] == "signal_strength"
                    assert merged["unit_of_measurement"] == "dBm"
        assert devices_seen == set(secrets)
        assert len(unique_ids) == len(set(unique_ids)), "unique ids repeat"
        assert len(entity_ids) == len(set(entity_ids)), "entity ids repeat"
        for config in configs.values():
            if "via_device" in config["dev"]:
                assert config["dev"]["via_device"] in controller_ids
        assert ha.last[t.ha_status] == b"online"
        await wait_for(lambda: ha.doc(t.ha_fleet_state)["online"] == 3, what="online count")
        assert ha.doc(t.ha_fleet_state)["devices"] == 3


def _available(avail: dict[str, Any], payload: bytes) -> bool:
    """Home Assistant's reading of one availability topic (the templates used here)."""
    value = payload.decode()
    if "value_template" in avail:
        value = "online" if json.loads(payload).get("online") else "offline"
    return value == avail.get("payload_available", "online")


# --- entities drive the fleet -------------------------------------------------------------------


async def test_join_all_button_and_one_switch(any_broker: BrokerHandle, tmp_path: Path) -> None:
    t = any_broker.topics
    async with platform(any_broker, tmp_path / "ctl.db") as (_ctl, fleet, ha, secrets):
        await ha.press(t.ha_fleet_set("join_all"))
        await wait_for(
            lambda: all(
                d.meeting is not None and d.meeting.room == "standup" for d in fleet.devices
            ),
            what="every device in standup",
        )
        await wait_for(lambda: all(in_meeting(ha, d) == "ON" for d in secrets), what="switches on")
        await wait_for(lambda: ha.doc(t.ha_fleet_state)["in_meeting"] == 3, what="fleet count")
        final = [r for r in ha.results_for("join-all") if r.done]
        assert final
        assert final[-1].ok
        assert final[-1].counts == {"converged": 3}
        assert final[-1].id
        assert final[-1].id.startswith("ha-")

        await ha.press(t.ha_device_set("dev-2", "meeting"), b"OFF")
        await wait_for(lambda: fleet["dev-2"].meeting is None, what="dev-2 leaves")
        await wait_for(lambda: in_meeting(ha, "dev-2") == "OFF", what="its switch off")
        assert fleet["dev-1"].meeting is not None
        assert fleet["dev-3"].meeting is not None
        assert ha.doc(t.ha_device_state("dev-2"))["room"] == "standup"  # the switch's room
        await wait_for(lambda: ha.doc(t.ha_fleet_state)["in_meeting"] == 2, what="fleet count")

        await ha.press(t.ha_device_set("dev-2", "meeting"), b"ON")
        await wait_for(lambda: fleet["dev-2"].meeting is not None, what="dev-2 back")

        await ha.press(t.ha_device_set("dev-3", "leave"))
        await wait_for(lambda: fleet["dev-3"].meeting is None, what="dev-3 leaves")
        await ha.press(t.ha_device_set("dev-1", "identify"))
        await wait_for(lambda: fleet["dev-1"].identify_until > 0, what="dev-1 identifies")
        await ha.press(t.ha_fleet_set("leave_all"))
        await wait_for(lambda: all(d.meeting is None for d in fleet.devices), what="all left")


async def test_room_selects(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    t = amqtt_broker.topics
    async with (
        platform(amqtt_broker, tmp_path / "ctl.db") as (_ctl, fleet, ha, _secrets),
        operator(amqtt_broker) as op,
    ):
        assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="retro"))).ok
        await wait_for(
            lambda: "retro" in ha.configs()[_fleet_config(ha)]["cmps"]["room"]["options"],
            timeout=15,
            what="the new room in the select",
        )
        await ha.press(t.ha_fleet_set("room"), b"retro")
        await wait_for(lambda: ha.doc(t.ha_fleet_state)["room"] == "retro", what="room chosen")
        await ha.press(t.ha_fleet_set("join_all"))
        await wait_for(
            lambda: all(d.meeting and d.meeting.room == "retro" for d in fleet.devices),
            what="all in retro",
        )
        # A device's select moves it while it is in a meeting (as Home Assistant shows it).
        await wait_for(
            lambda: ha.doc(t.ha_device_state("dev-1"))["room"] == "retro", what="dev-1 in retro"
        )
        assert in_meeting(ha, "dev-1") == "ON"
        await ha.press(t.ha_device_set("dev-1", "room"), b"standup")
        await wait_for(
            lambda: fleet["dev-1"].meeting is not None and fleet["dev-1"].meeting.room == "standup",
            what="dev-1 moves",
        )


def _fleet_config(ha: HaClient) -> str:
    return next(t for t, c in ha.configs().items() if "via_device" not in c["dev"])


async def test_homeassistant_online_and_controller_reconnect_republish(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with platform(any_broker, tmp_path / "ctl.db") as (ctl, _fleet, ha, secrets):
        config_topics = list(ha.configs())
        before = {topic: ha.counts[topic] for topic in config_topics}
        states = [t.ha_device_state(d) for d in secrets] + [t.ha_fleet_state, t.ha_status]
        states_before = {topic: ha.counts[topic] for topic in states}
        await ha.client.publish(f"{HA_PREFIX}/status", b"online", qos=1)
        await wait_for(
            lambda: all(ha.counts[c] > before[c] for c in config_topics), what="configs again"
        )
        await wait_for(
            lambda: all(ha.counts[s] > states_before[s] for s in states), what="states again"
        )
        # Bad input there is logged and dropped.
        rejected = ctl.stats["rejected"]
        await ha.client.publish(f"{HA_PREFIX}/status", b"sideways", qos=1)
        await wait_for(lambda: ctl.stats["rejected"] > rejected, what="refused")

        # The controller's own reconnect (a broker restart) publishes everything again.
        before = {topic: ha.counts[topic] for topic in config_topics}
        assert ctl.link.client is not None
        ctl.link.client._client.disconnect()  # paho drops the link; aiomqtt reconnects
        await wait_for(
            lambda: all(ha.counts[c] > before[c] for c in config_topics),
            timeout=20,
            what="configs after reconnect",
        )


async def test_controller_availability_goes_offline_when_it_stops(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    ha_secret = any_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    async with home_assistant(any_broker, ha_secret) as ha:
        async with controller(any_broker, tmp_path / "ctl.db", parts=[ha_part()]) as ctl:
            await wait_for(lambda: ha.last.get(t.ha_status) == b"online", what="online")
            assert ctl.parts[0].will() is not None  # the broker says offline if it dies
        await wait_for(lambda: ha.last.get(t.ha_status) == b"offline", what="offline")


async def test_removed_device_loses_its_config(any_broker: BrokerHandle, tmp_path: Path) -> None:
    t = any_broker.topics
    secret = any_broker.add_device("dev-gone")
    ha_secret = any_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    async with (
        home_assistant(any_broker, ha_secret) as ha,
        controller(any_broker, tmp_path / "ctl.db", parts=[ha_part()]) as ctl,
    ):
        async with one_device(any_broker, "dev-gone", secret):
            await wait_for(lambda: t.ha_device_state("dev-gone") in ha.last, what="announced")
        config_topic = next(topic for topic in ha.configs() if "dev-gone" in topic)
        # Deleting a device from the registry: its retained status is cleared.
        async with _controller_client(any_broker) as cleaner:
            await cleaner.publish(t.status("dev-gone"), b"", qos=1, retain=True)
        await wait_for(lambda: ha.last.get(config_topic) == b"", what="empty retained config")
        assert "dev-gone" not in ctl.registry.devices
        # At QoS 0, after the QoS 1 config: MQTT orders messages within one QoS only.
        await wait_for(
            lambda: ha.last[t.ha_device_state("dev-gone")] == b"", what="empty state doc"
        )
    # A newcomer (Home Assistant restarting) finds no config for it.
    async with home_assistant(any_broker, ha_secret) as fresh:
        await fresh.client.publish(f"{HA_PREFIX}/status", b"offline", qos=1)
        await asyncio.sleep(0.5)
        assert config_topic not in fresh.configs()


@contextlib.asynccontextmanager
async def _controller_client(handle: BrokerHandle) -> AsyncIterator[aiomqtt.Client]:
    secret = handle.add_user("cleaner", Role.CONTROLLER)
    async with mqtt_client(handle, "cleaner", secret, client_id="cleaner") as client:
        yield client


async def test_telemetry_sensors(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    """A hand-driven device: its telemetry becomes the sensors' values; jitter and loss
    only while it is in a meeting."""
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-t")
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    tele = Telemetry(
        ts=1.0,
        wifi=WifiTelemetry(rssi=-61),
        sys=SystemTelemetry(heap_free=123456, uptime_s=99.7),
        meeting=TelemetryMeeting(room="standup"),
        audio=[
            PeerAudioStats(peer="p-1", jitter_ms=4.25, loss=0.01),
            PeerAudioStats(peer="p-2", jitter_ms=9.0, loss=0.002),
        ],
    )
    async with (
        home_assistant(amqtt_broker, ha_secret) as ha,
        controller(amqtt_broker, tmp_path / "ctl.db", parts=[ha_part()]) as ctl,
        mqtt_client(amqtt_broker, "dev-t", secret) as dev,
    ):
        await dev.publish(t.status("dev-t"), encode(Status(online=True, fw="1.0")), 1, True)
        state = State.model_validate({"rev": 1, "meeting": {"room": "standup"}})
        await dev.publish(t.state("dev-t"), encode(state), 1, True)
        await wait_for(lambda: t.ha_device_state("dev-t") in ha.last, what="state doc")
        await dev.publish(t.tele("dev-t"), encode(tele))
        want = {"rssi": -61, "heap": 123456, "uptime": 99, "jitter": 9.0, "loss": 1.0}
        doc = t.ha_device_state("dev-t")
        await wait_for(lambda: ha.doc(doc).items() >= want.items(), what=f"sensors {want}")
        assert ha.doc(doc)["in_meeting"] == "ON"
        await dev.publish(t.state("dev-t"), encode(State(rev=2)), 1, True)
        await wait_for(lambda: ha.doc(doc)["in_meeting"] == "OFF", what="left")
        assert ha.doc(doc)["jitter"] is None
        assert ha.doc(doc)["loss"] is None
        assert ha.doc(doc)["rssi"] == -61
        # Bad telemetry is dropped (the controller counts it); the last good values stay,
        # and the next good sample (another heap value) still comes through.
        rejected = ctl.stats["rejected"]
        await dev.publish(t.tele("dev-t"), b'{"ts": "soon"}')
        await wait_for(lambda: ctl.stats["rejected"] > rejected, what="bad telemetry refused")
        assert ha.doc(doc)["heap"] == 123456
        later = tele.model_copy(update={"meeting": None, "sys": SystemTelemetry(heap_free=98765)})
        await dev.publish(t.tele("dev-t"), encode(later))
        await wait_for(lambda: ha.doc(doc)["heap"] == 98765, what="the next good sample")


# --- the plain API ------------------------------------------------------------------------------


async def test_api_topics_answer_the_homeassistant_user(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with (
        platform(any_broker, tmp_path / "ctl.db") as (_ctl, fleet, ha, secrets),
        operator(any_broker) as op,
    ):
        # Home Assistant meets in rooms an operator made (its intents create none).
        for room in ("standup", "retro"):
            assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room=room))).ok
        await ha.client.publish(t.api("join-all"), b"standup", qos=1)  # a bare room name
        await wait_for(lambda: any(r.done for r in ha.results_for("join-all")), what="result")
        bare = next(r for r in ha.results_for("join-all") if r.done)
        assert bare.ok
        assert bare.room == "standup"
        assert bare.group == "all"
        assert bare.counts == {"converged": 3}

        body = json.dumps({"id": "ha-1", "room": "retro", "group": "all"})
        await ha.client.publish(t.api("join-all"), body, qos=1)
        accepted = await ha.result("ha-1", done=False)
        final = await ha.result("ha-1")
        assert accepted.code == "accepted"
        assert final.ok
        assert final.room == "retro"
        assert {d.device for d in final.devices} == set(secrets)
        # The same information as `fleet join-all --json` (the CLI's request and result).
        cli = await op.request(ApiOp.JOIN_ALL, ApiRequest(room="retro"))
        assert cli.model_dump(exclude={"id", "rev", "detail", "devices"}) == final.model_dump(
            exclude={"id", "rev", "detail", "devices"}
        )

        await ha.client.publish(t.api("leave"), json.dumps({"id": "ha-2", "device": "dev-1"}))
        assert (await ha.result("ha-2")).ok
        assert fleet["dev-1"].meeting is None
        await ha.client.publish(
            t.api("join"), json.dumps({"id": "ha-3", "device": "dev-1", "room": "standup"})
        )
        assert (await ha.result("ha-3")).ok
        await ha.client.publish(t.api("leave-all"), json.dumps({"id": "ha-4"}))
        final = await ha.result("ha-4")
        assert final.ok
        assert final.counts == {"converged": 3}
        assert all(d.meeting is None for d in fleet.devices)


async def test_malformed_api_payloads_get_errors_and_change_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with platform(any_broker, tmp_path / "ctl.db") as (ctl, fleet, ha, _secrets):
        rev_before = ctl.store.next_rev()  # consumes one rev; later ones are strictly above
        docs_before = [(d.scope, d.name, d.doc) for d in ctl.store.desired_docs()]
        bad: list[tuple[str, bytes | str, str]] = [
            ("join-all", json.dumps({"id": "b-1", "room": 5}), "bad_request"),
            ("join-all", json.dumps({"id": "b-2", "room": "Bad Room!"}), "bad_request"),
            ("join-all", b"not a room\n either", "bad_request"),
            ("join", json.dumps({"id": "b-3", "device": "dev-1"}), "bad_request"),
            ("join", json.dumps({"id": "b-4", "device": "ghost", "room": "x"}), "unknown_device"),
            ("leave", json.dumps({"id": "b-5", "device": 7}), "bad_request"),
            ("leave-all", b"", "bad_request"),
            # (over 64 KiB the broker drops it: tests/security/test_oversize_payloads.py)
            ("leave-all", b"\xff\xfe", "bad_request"),
        ]
        for op, payload, _code in bad:
            await ha.client.publish(t.api(op), payload, qos=1)
        await wait_for(
            lambda: len([r for r in ha.results if not r.ok]) >= len(bad), what="every error"
        )
        errors = [r for r in ha.results if not r.ok]
        assert [(r.op, r.code) for r in errors] == [(op, code) for op, _p, code in bad]
        assert {r.id for r in errors if r.id} == {"b-1", "b-2", "b-3", "b-4", "b-5"}
        # Forbidden to this user: the broker drops it, nobody answers, nothing happens.
        await ha.client.publish(t.api("cmd"), json.dumps({"device": "dev-1", "cmd_op": "reboot"}))
        await ha.client.publish(t.api("leave-all"), json.dumps({"id": "marker"}), qos=1)
        marker = await ha.result("marker")
        assert not ha.results_for("cmd")
        # Nothing was written before the marker: its rev is the first one after ours.
        assert marker.rev == rev_before + 1
        docs_after = [(d.scope, d.name, d.doc) for d in ctl.store.desired_docs()]
        assert len(docs_after) == len(docs_before) + 1
        assert all(d.meeting is None for d in fleet.devices)
        assert all(d.connected.is_set() for d in fleet.devices)  # no reboot went out


# --- bad input on the entity topics -------------------------------------------------------------


async def test_bad_entity_commands_are_refused_and_change_nothing(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    events: list[dict[str, Any]] = []
    watcher_secret = any_broker.add_user("watcher", Role.CONTROLLER)
    async with (
        platform(any_broker, tmp_path / "ctl.db") as (ctl, fleet, ha, _secrets),
        mqtt_client(any_broker, "watcher", watcher_secret, client_id="watcher") as watcher,
    ):
        await watcher.subscribe(t.events, qos=1)
        await watcher.subscribe(f"{t.prefix}/dev/+/desired", qos=1)
        await watcher.subscribe(f"{t.prefix}/grp/+/desired", qos=1)
        writes: list[str] = []

        async def watch() -> None:
            async for m in watcher.messages:
                if m.topic.value == t.events:
                    events.append(json.loads(payload_bytes(m)))
                elif not m.retain:
                    writes.append(m.topic.value)

        watching = Part(watch(), "watch")
        try:
            bad: list[tuple[str, bytes]] = [
                (t.ha_device_set("dev-1", "meeting"), b"maybe"),
                (t.ha_device_set("dev-1", "meeting"), b"on"),
                (t.ha_device_set("ghost", "meeting"), b"ON"),
                (t.ha_device_set("dev-1", "reboot"), b"PRESS"),
                (t.ha_device_set("dev-1", "room"), b"nowhere"),
                (t.ha_device_set("dev-1", "room"), b"Bad Room!"),
                (t.ha_device_set("dev-1", "identify"), b"PRESS" * 100),
                (t.ha_device_set("dev-1", "leave"), b"\xff\xfe"),
                (t.ha_fleet_set("join_all"), b"PUSH"),
                (t.ha_fleet_set("room"), b"nowhere"),
                (t.ha_fleet_set("explode"), b"PRESS"),
                (f"{t.prefix}/ha/dev/dev-1/meeting/set/extra", b"ON"),
            ]
            part = ctl.parts[1]
            assert isinstance(part, HomeAssistantPart)
            for topic, payload in bad:
                await ha.client.publish(topic, payload, qos=1)
            # The last one is no command topic at all (the ACL drops it); the rest are refused.
            await wait_for(lambda: part.stats["refused"] == len(bad) - 1, what="all refused")
            await wait_for(
                lambda: (
                    len([e for e in events if e.get("op", "").startswith("ha:")]) == len(bad) - 1
                ),
                what="an error event each",
            )
            assert writes == [], "a refused command wrote a desired doc"
            assert all(d.meeting is None for d in fleet.devices)
            assert fleet["dev-1"].identify_until == 0
            assert ha.doc(t.ha_fleet_state)["room"] == "standup"
            # And the controller carries on: a good command still works.
            await ha.press(t.ha_device_set("dev-1", "meeting"), b"ON")
            await wait_for(lambda: fleet["dev-1"].meeting is not None, what="dev-1 joins")
        finally:
            await watching.stop()


async def test_homeassistant_cannot_write_desired_docs_or_forge_state(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with platform(any_broker, tmp_path / "ctl.db") as (ctl, fleet, ha, _secrets):
        state_before = ha.last[t.ha_device_state("dev-1")]
        await ha.client.publish(
            t.desired("dev-1"), b'{"rev": 9007199254740991, "meeting": {"room": "hijack"}}', 1, True
        )
        await ha.client.publish(t.group_desired("all"), b'{"rev": 9000000, "meeting": null}', 1)
        await ha.client.publish(t.cmd("dev-1"), b'{"id": "x", "op": "reboot"}', qos=1)
        await ha.client.publish(t.ha_device_state("dev-1"), b'{"in_meeting": "ON"}', 1, True)
        await ha.client.publish(t.ha_status, b"offline", qos=1, retain=True)
        await ha.client.publish(f"{HA_PREFIX}/device/evil/config", b'{"dev": {}}', 1, True)
        # A marker that is allowed and answered: everything before it has been handled.
        await ha.client.publish(t.api("leave-all"), json.dumps({"id": "marker"}), qos=1)
        await ha.result("marker")
        await asyncio.sleep(0.3)
        assert all(d.meeting is None for d in fleet.devices)
        assert ctl.store.desired_rev("dev", "dev-1") is None
        assert ha.last[t.ha_device_state("dev-1")] == state_before
        assert ha.last[t.ha_status] == b"online"
        assert f"{HA_PREFIX}/device/evil/config" not in ha.last


@pytest.mark.parametrize("payload", [b"online", b"offline"])
async def test_ha_status_before_sync_is_harmless(
    amqtt_broker: BrokerHandle, tmp_path: Path, payload: bytes
) -> None:
    """Home Assistant's birth while the controller is still reading the fleet waits for it."""
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    async with home_assistant(amqtt_broker, ha_secret) as ha:
        await ha.client.publish(f"{HA_PREFIX}/status", payload, qos=1, retain=True)
        async with controller(amqtt_broker, tmp_path / "ctl.db", parts=[ha_part()]):
            await wait_for(lambda: len(ha.configs()) == 1, what="the controller's config")


async def test_join_all_room_survives_a_controller_restart(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = amqtt_broker.topics
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    async with home_assistant(amqtt_broker, ha_secret) as ha:
        async with (
            controller(amqtt_broker, tmp_path / "ctl.db") as ctl,
            operator(amqtt_broker) as op,
        ):
            assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="retro"))).ok
            del ctl
        async with controller(amqtt_broker, tmp_path / "ctl.db", parts=[ha_part()]):
            await wait_for(lambda: t.ha_fleet_state in ha.last, what="fleet state")
            await ha.press(t.ha_fleet_set("room"), b"retro")
            await wait_for(lambda: ha.doc(t.ha_fleet_state)["room"] == "retro", what="chosen")
        async with controller(amqtt_broker, tmp_path / "ctl.db", parts=[ha_part()]) as ctl:
            await wait_for(lambda: ctl.synced, what="synced")
            part = ctl.parts[0]
            assert isinstance(part, HomeAssistantPart)
            assert part.room == "retro"
            await wait_for(lambda: ha.last.get(t.ha_status) == b"online", what="online again")
            assert ha.doc(t.ha_fleet_state)["room"] == "retro"


# --- what a real Home Assistant showed ------------------------------------------------------


def _render(template: str, payload: bytes) -> str:
    """Home Assistant's reading of an MQTT value template (Jinja2; `value_json` only when
    the payload is JSON). StrictUndefined raises where Home Assistant logs
    "Template variable error: 'value_json' is undefined"."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    variables: dict[str, Any] = {"value": payload.decode()}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(payload)
    return env.from_string(template).render(**variables)


def test_availability_template_reads_an_empty_status_as_offline() -> None:
    """A deleted device's status is an empty retained message: no template error."""
    config = Discovery(Topics()).device_config("dev-1", Shown("1.0", "box"), ["standup"])
    template = config["availability"][0]["value_template"]
    assert _render(template, encode(Status(online=True, fw="1.0"))) == "online"
    assert _render(template, b'{"online": false}') == "offline"
    assert _render(template, b"") == "offline"


async def test_a_will_does_not_change_the_device_model(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-w")
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    async with (
        home_assistant(amqtt_broker, ha_secret) as ha,
        controller(amqtt_broker, tmp_path / "ctl.db", parts=[ha_part()]) as ctl,
    ):
        async with mqtt_client(amqtt_broker, "dev-w", secret) as dev:
            birth = Status(online=True, fw="2.1.0", hw="esp32s3-box")
            await dev.publish(t.status("dev-w"), encode(birth), 1, True)
            await wait_for(lambda: ha.value(t.ha_fleet_state, "online") == 1, what="online")
        config_topic = next(topic for topic in ha.configs() if "dev-w" in topic)
        configs_before = ha.counts[config_topic]
        # The link drops: the broker publishes the will, {"online": false}, no fw, no hw.
        code = await connect_and_drop(
            amqtt_broker, "dev-w", secret, t.status("dev-w"), b'{"online": false}'
        )
        assert code == 0
        await wait_for(lambda: not ctl.registry.devices["dev-w"].online, what="offline")
        # The fleet counters go out after the device's own publishes: a marker.
        await wait_for(lambda: ha.doc(t.ha_fleet_state)["online"] == 0, what="counted offline")
        assert ha.counts[config_topic] == configs_before, "the will re-published the config"
        dev_block = ha.configs()[config_topic]["dev"]
        assert (dev_block["model"], dev_block["sw_version"]) == ("esp32s3-box", "2.1.0")


async def test_room_choices_are_kept_in_sqlite(amqtt_broker: BrokerHandle, tmp_path: Path) -> None:
    """The Room of "Join all" and a device's last room survive a restart of everything, with
    a broker that forgets retained messages (amqtt)."""
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-1")
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    db = tmp_path / "ctl.db"
    async with (
        home_assistant(amqtt_broker, ha_secret) as ha,
        controller(amqtt_broker, db, parts=[MeetingServer(), ha_part()]) as ctl,
        one_device(amqtt_broker, "dev-1", secret),
        operator(amqtt_broker) as op,
    ):
        assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="retro"))).ok
        assert (await op.request(ApiOp.ROOM_CREATE, ApiRequest(room="lunch"))).ok
        part = ctl.parts[1]
        assert isinstance(part, HomeAssistantPart)
        await wait_for(lambda: {"retro", "lunch"} <= part.rooms, timeout=15, what="rooms")
        await ha.press(t.ha_fleet_set("room"), b"retro")
        await ha.press(t.ha_device_set("dev-1", "room"), b"lunch")
        state = t.ha_device_state("dev-1")
        await wait_for(lambda: ha.doc(state)["room"] == "lunch", what="dev-1's room chosen")
        await wait_for(lambda: ha.doc(t.ha_fleet_state)["room"] == "retro", what="fleet room")
    await amqtt_broker.restart()  # every retained message gone
    async with (
        home_assistant(amqtt_broker, ha_secret) as ha,
        controller(amqtt_broker, db, parts=[MeetingServer(), ha_part()]) as ctl,
        one_device(amqtt_broker, "dev-1", secret) as dev,
    ):
        await wait_for(lambda: t.ha_fleet_state in ha.last, what="fleet state")
        assert ha.doc(t.ha_fleet_state)["room"] == "retro"
        await wait_for(lambda: state in ha.last, what="dev-1's state doc")
        assert ha.doc(state)["room"] == "lunch"
        await ha.press(t.ha_device_set("dev-1", "meeting"), b"ON")  # joins its last room
        await wait_for(
            lambda: dev.meeting is not None and dev.meeting.room == "lunch", what="dev-1 in lunch"
        )


def test_the_documented_entity_ids_are_the_proposed_ones() -> None:
    """Every entity id the docs' example automations name is one discovery proposes
    (`default_entity_id`, honoured by Home Assistant 2025.10 and newer)."""
    docs = (ROOT / "docs" / "home-assistant.md").read_text()
    # The home's own entities the examples trigger on.
    home = {"zone.home", "binary_sensor.front_door_bell", "binary_sensor.kitchen_intercom_button"}
    named = set(re.findall(r"entity_id: ([a-z_]+\.[a-z0-9_]+)", docs)) - home
    assert named
    d = Discovery(Topics())
    ids = [f"dev-{n}" for n in (1, 2, 3)]
    configs = [d.controller_config(["standup"])] + [
        d.device_config(i, Shown(), ["standup"], call_options(i, ids, [])) for i in ids
    ]
    proposed = {cmp["default_entity_id"] for c in configs for cmp in c["cmps"].values()}
    assert named <= proposed, named - proposed
    assert "2025.10" in docs  # the docs say which versions these ids need


async def test_first_sensor_values_are_not_held_by_the_throttle(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    """The 30 s telemetry throttle spares later samples, not the first: RSSI shows at once."""
    t = amqtt_broker.topics
    secret = amqtt_broker.add_device("dev-t")
    ha_secret = amqtt_broker.add_user(HA_USER, Role.HOMEASSISTANT)
    part = HomeAssistantPart(HomeAssistantSettings(fleet_interval_s=0.05))  # tele: 30 s
    assert part.settings.tele_interval_s == 30
    async with (
        home_assistant(amqtt_broker, ha_secret) as ha,
        controller(amqtt_broker, tmp_path / "ctl.db", parts=[part]),
        mqtt_client(amqtt_broker, "dev-t", secret) as dev,
    ):
        await dev.publish(t.status("dev-t"), encode(Status(online=True, fw="1.0")), 1, True)
        await dev.publish(t.state("dev-t"), encode(State(rev=0)), 1, True)
        doc = t.ha_device_state("dev-t")
        await wait_for(lambda: doc in ha.last, what="state doc")
        tele = Telemetry(ts=1.0, wifi=WifiTelemetry(rssi=-61), sys=SystemTelemetry(heap_free=1))
        await dev.publish(t.tele("dev-t"), encode(tele))
        await wait_for(lambda: ha.doc(doc)["rssi"] == -61, timeout=5, what="the first RSSI")
