"""Home Assistant's announcement and intercom entities: the fleet's and each group's notify,
a device's do-not-disturb switch, call select and hang-up button.

A client under the `homeassistant` user plays Home Assistant against a controller with
the parts `fleet up` runs (the meeting server, announcements, the intercom, Home
Assistant's part), simulated devices that really play and hear audio (dev-1 and dev-2 in
the kitchen, dev-3 upstairs) and both brokers. What an entity does is judged where it
ends up: what the devices were sent (their commands and desired docs, read on the wire),
what they played or whom they meet, and the results on `api/result`, as an automation
reads them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from fleet.agents.voice.stt import PocketSphinxSTT
from fleet.announce import AnnouncePart
from fleet.auth import Role
from fleet.controller.service import Controller
from fleet.device.announce import ANNOUNCE_STREAM
from fleet.device.audio import AudioMeetingDriver, audio_drivers
from fleet.device.sim import SimulatedDevice
from fleet.device.tones import tone_for
from fleet.ha import HomeAssistantPart, HomeAssistantSettings
from fleet.ha.discovery import MAX_CALL_DEVICES, Discovery, Shown, call_options, group_entity
from fleet.intercom import Intercom
from fleet.media.analysis import hears
from fleet.media.frames import SAMPLE_RATE
from fleet.meetings import MeetingServer
from fleet.mqtt import payload_bytes
from fleet.protocol import TopicKind, Topics, encode
from fleet.protocol.constants import CALL_ROOM_PREFIX
from fleet.protocol.messages import (
    AnnounceArgs,
    ApiOp,
    ApiRequest,
    ApiResult,
    Command,
    Desired,
    DeviceOutcome,
    Priority,
    Status,
)
from fleet.protocol.topics import DEFAULT_HA_PREFIX
from tests.announce.support import recognize
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import (
    Part,
    controller,
    operator,
    register_devices,
    sim_fleet,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

HA_USER = "ha"
WIRE_USER = "wire"
GROUPS = ("kitchen", "upstairs-hall")
IDS = ("dev-1", "dev-2", "dev-3")
KITCHEN = ("dev-1", "dev-2")
PHRASES = ["lunch is ready", "the door is open", "please go home", "stop the music"]
CHIME_HZ = 880.0  # the chime's first tone (docs/protocol.md §14)


@dataclass
class Ha:
    client: aiomqtt.Client
    last: dict[str, bytes] = field(default_factory=dict)
    results: list[ApiResult] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)

    def doc(self, topic: str) -> dict[str, Any]:
        return json.loads(self.last[topic])  # type: ignore[no-any-return]

    def ours(self) -> list[ApiResult]:
        """Results of the requests Home Assistant's entities made (ids of its part)."""
        return [r for r in self.results if (r.id or "").startswith("ha-")]

    async def final(self, op: ApiOp, timeout: float = 60) -> ApiResult:
        """The final result of the next request of `op` an entity made."""

        def fresh() -> list[ApiResult]:
            return [
                r for r in self.ours() if r.done and r.op == op.value and r.id not in self.taken
            ]

        await wait_for(lambda: bool(fresh()), timeout=timeout, what=f"the result of {op.value}")
        result = fresh()[0]
        self.taken.add(result.id or "")
        return result


@dataclass
class HaFleet:
    ctl: Controller
    part: HomeAssistantPart
    ha: Ha
    devices: dict[str, SimulatedDevice]
    # What the controller sent the devices, in order: (topic kind, device, payload).
    wire: list[tuple[TopicKind, str, bytes]] = field(default_factory=list)

    def commands(self, op: str) -> list[tuple[str, Command]]:
        got = [(d, Command.model_validate_json(p)) for k, d, p in self.wire if k is TopicKind.CMD]
        return [(d, c) for d, c in got if c.op == op]

    def announced(self, ann: str | None) -> dict[str, AnnounceArgs]:
        """Who was sent announcement `ann`'s command, with its args."""
        sent = {
            d: AnnounceArgs.model_validate(c.args, strict=False)
            for d, c in self.commands("announce")
        }
        return {d: a for d, a in sent.items() if a.ann == ann}

    def desired(self, device: str) -> list[Desired]:
        return [
            Desired.model_validate_json(p)
            for k, d, p in self.wire
            if k is TopicKind.DESIRED and d == device and p
        ]

    def driver(self, device: str) -> AudioMeetingDriver:
        driver = self.devices[device].driver
        assert isinstance(driver, AudioMeetingDriver)
        return driver

    def room(self, device: str) -> str | None:
        meeting = self.devices[device].meeting
        return meeting.room if meeting is not None else None

    def played(self, device: str, result: ApiResult) -> np.ndarray:
        """The announcement audio `device` played last, as long as `result` says it played."""
        ms = next(d.result for d in result.devices if d.device == device)
        assert ms is not None
        return self.driver(device).heard.samples(ANNOUNCE_STREAM, ms["played_ms"] / 1000)

    def hears(self, listener: str, speaker: str) -> bool:
        """`listener` hears `speaker`'s tone over the last second, from a current peer."""
        driver = self.driver(listener)
        tone = tone_for(IDS.index(speaker))
        return any(
            pid == speaker and driver.hears_tone(participant, tone)
            for participant, pid in driver.peer_pids().items()
        )

    async def in_room(self, room: str | None, *devices: str) -> None:
        await wait_for(
            lambda: all(self.room(d) == room for d in devices),
            timeout=30,
            what=f"{', '.join(devices)} in {room}",
        )

    async def talking(self, a: str, b: str) -> None:
        await wait_for(
            lambda: self.hears(a, b) and self.hears(b, a),
            timeout=30,
            what=f"{a} and {b} hear each other",
        )


@contextlib.asynccontextmanager
async def fleet_with_ha(handle: BrokerHandle, db: Path) -> AsyncIterator[HaFleet]:
    t = handle.topics
    kitchen = register_devices(handle, len(KITCHEN), groups=["kitchen"])
    hall = {"dev-3": handle.add_device("dev-3", groups=["upstairs-hall"])}
    ha_secret = handle.add_user(HA_USER, Role.HOMEASSISTANT)
    wire_secret = handle.add_user(WIRE_USER, Role.CONTROLLER)
    server = MeetingServer(auto_create=True)
    part = HomeAssistantPart(HomeAssistantSettings(tele_interval_s=0, fleet_interval_s=0.05))
    # The parts build_controller puts together (web logins and telemetry aside).
    parts = [server, AnnouncePart(rooms=server), Intercom(), part]
    drivers = audio_drivers(IDS)
    async with (
        controller(handle, db, parts=parts) as ctl,
        mqtt_client(handle, WIRE_USER, wire_secret) as wire,
        sim_fleet(handle, kitchen, groups=["kitchen"], driver_factory=drivers) as kit,
        sim_fleet(handle, hall, groups=["upstairs-hall"], driver_factory=drivers) as up,
        mqtt_client(handle, HA_USER, ha_secret, client_id="ha-intercom") as client,
    ):
        ha = Ha(client)
        devices = {d.id: d for d in [*kit.devices, *up.devices]}
        f = HaFleet(ctl, part, ha, devices)

        async def read() -> None:
            async for m in client.messages:
                ha.last[m.topic.value] = payload_bytes(m)
                if m.topic.value == t.api_result:
                    ha.results.append(ApiResult.model_validate_json(payload_bytes(m)))

        async def watch() -> None:
            async for m in wire.messages:
                parsed = t.parse(m.topic.value)
                if parsed is not None:
                    f.wire.append((parsed.kind, parsed.name, payload_bytes(m)))

        reader, watcher = Part(read(), "ha-reader"), Part(watch(), "wire-watcher")
        try:
            for kind in (TopicKind.CMD, TopicKind.DESIRED):
                await wire.subscribe(t.all_devices(kind), qos=1)
            for flt in ("homeassistant/#", t.ha_everything, t.api_result):
                await client.subscribe(flt, qos=1)
            await client.subscribe(t.all_devices(TopicKind.STATE), qos=1)
            await wait_for(
                lambda: all(t.ha_device_state(d) in ha.last for d in IDS), what="state docs"
            )
            await wait_for(
                lambda: all(
                    d in ctl.registry.devices and ctl.registry.devices[d].online for d in IDS
                ),
                what="the controller knows every device",
            )
            yield f
        finally:
            await watcher.stop()
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
    async with fleet_with_ha(any_broker, tmp_path / "ctl.db") as f:
        ha = f.ha
        want_calls = call_options("dev-1", ["dev-1", "dev-2", "dev-3"], GROUPS)
        assert want_calls == [
            "dev-2",
            "dev-3",
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
    assert call_options("dev-1", many, ["kitchen", "all"]) == ["group:kitchen"]
    # Nobody to offer (a call is never to every device): no call select at all.
    assert call_options("dev-1", many, []) == []
    discovery = Discovery(Topics(), DEFAULT_HA_PREFIX)
    shown = Shown("1.0", "esp32-s3")
    assert "call" not in discovery.device_config("dev-1", shown, ["lobby"])["cmps"]
    with_groups = discovery.device_config("dev-1", shown, ["lobby"], ["group:kitchen"])
    assert with_groups["cmps"]["call"]["options"] == ["group:kitchen"]
    assert len(call_options("dev-1", many[:MAX_CALL_DEVICES], [])) == MAX_CALL_DEVICES - 1
    assert group_entity("a" * 64).startswith("g_")
    assert len(group_entity("a" * 64)) <= 32


def outcomes(result: ApiResult) -> dict[str, DeviceOutcome]:
    return {d.device: d.outcome for d in result.devices}


async def test_notify_entities_are_played_by_every_device_or_a_groups(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    stt = PocketSphinxSTT(reject_below=-1e9)
    async with fleet_with_ha(any_broker, tmp_path / "ctl.db") as f:
        ha = f.ha
        await wait_for(
            lambda: "g_upstairs_hall" in _controller_config(ha)["cmps"], what="the groups' notify"
        )
        # The fleet's notify: every device plays it, the chime first.
        await ha.client.publish(t.ha_fleet_set("announce"), "lunch is ready", qos=1)
        everyone = await ha.final(ApiOp.ANNOUNCE)
        assert everyone.ok, everyone
        assert outcomes(everyone) == dict.fromkeys(IDS, DeviceOutcome.PLAYED)
        assert everyone.group is None  # no group named: every device
        sent = f.announced(everyone.ann)
        assert set(sent) == set(IDS)
        assert {a.priority for a in sent.values()} == {Priority.NORMAL}
        for device in IDS:
            samples = f.played(device, everyone)
            assert hears(samples[: round(0.12 * SAMPLE_RATE)], CHIME_HZ), device
            assert await recognize(stt, samples, PHRASES) == "lunch is ready", device

        # A group's notify: that group's devices, and no other.
        await ha.client.publish(t.ha_fleet_set("g_kitchen"), "the door is open", qos=1)
        kitchen = await ha.final(ApiOp.ANNOUNCE)
        assert kitchen.ok, kitchen
        assert kitchen.group == "kitchen"
        assert outcomes(kitchen) == dict.fromkeys(KITCHEN, DeviceOutcome.PLAYED)
        assert set(f.announced(kitchen.ann)) == set(KITCHEN)
        for device in KITCHEN:
            heard = f.played(device, kitchen)
            assert await recognize(stt, heard, PHRASES) == "the door is open", device
        assert f.devices["dev-3"].announcer.by_ann(kitchen.ann or "") is None

        # Any text Home Assistant sends (UTF-8), to the other group.
        await ha.client.publish(t.ha_fleet_set("g_upstairs_hall"), "Kettle's on ☕", qos=1)
        upstairs = await ha.final(ApiOp.ANNOUNCE)
        assert upstairs.ok, upstairs
        assert outcomes(upstairs) == {"dev-3": DeviceOutcome.PLAYED}

        # The urgent notify: urgent on the wire, played everywhere.
        await ha.client.publish(t.ha_fleet_set("announce_urgent"), "stop the music", qos=1)
        urgent = await ha.final(ApiOp.ANNOUNCE)
        assert urgent.ok, urgent
        assert outcomes(urgent) == dict.fromkeys(IDS, DeviceOutcome.PLAYED)
        sent = f.announced(urgent.ann)
        assert set(sent) == set(IDS)
        assert {a.priority for a in sent.values()} == {Priority.URGENT}
        heard = f.played("dev-3", urgent)
        assert await recognize(stt, heard, PHRASES) == "stop the music"
        assert all(r.ok for r in ha.ours())
        assert f.part.stats["refused"] == 0


async def test_the_dnd_switch_sets_the_devices_dnd_and_announcements_skip_it(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    stt = PocketSphinxSTT(reject_below=-1e9)
    async with fleet_with_ha(any_broker, tmp_path / "ctl.db") as f:
        ha = f.ha
        dev1, dev2 = f.devices["dev-1"], f.devices["dev-2"]
        state1, state2 = t.ha_device_state("dev-1"), t.ha_device_state("dev-2")
        await ha.client.publish(t.ha_device_set("dev-1", "dnd"), "ON", qos=1)
        on = await ha.final(ApiOp.DND)
        assert on.ok, on
        await ha.client.publish(t.ha_device_set("dev-2", "dnd"), "OFF", qos=1)
        off = await ha.final(ApiOp.DND)
        assert off.ok, off
        # The devices' own desired docs carry it, on the wire.
        assert [d.dnd for d in f.desired("dev-1")] == [True]
        assert [d.dnd for d in f.desired("dev-2")] == [False]
        await wait_for(lambda: dev1.dnd, what="dev-1 in do-not-disturb")
        await wait_for(lambda: ha.doc(state1)["dnd"] == "ON", what="dev-1's switch shows on")
        rec = f.ctl.registry.devices["dev-1"]
        assert rec.state is not None
        assert rec.state.dnd
        assert not dev2.dnd
        assert ha.doc(state2)["dnd"] == "OFF"

        # A normal announcement skips it; an urgent one plays through.
        await ha.client.publish(t.ha_fleet_set("announce"), "please go home", qos=1)
        normal = await ha.final(ApiOp.ANNOUNCE)
        assert normal.ok, normal
        assert outcomes(normal) == {
            "dev-1": DeviceOutcome.SKIPPED,
            "dev-2": DeviceOutcome.PLAYED,
            "dev-3": DeviceOutcome.PLAYED,
        }
        assert set(f.announced(normal.ann)) == {"dev-2", "dev-3"}
        assert dev1._announcer is None  # never asked to play anything
        await ha.client.publish(t.ha_fleet_set("announce_urgent"), "stop the music", qos=1)
        urgent = await ha.final(ApiOp.ANNOUNCE)
        assert outcomes(urgent) == dict.fromkeys(IDS, DeviceOutcome.PLAYED), urgent
        assert await recognize(stt, f.played("dev-1", urgent), PHRASES) == "stop the music"

        # Off again: the device and the switch follow.
        await ha.client.publish(t.ha_device_set("dev-1", "dnd"), "OFF", qos=1)
        assert (await ha.final(ApiOp.DND)).ok
        await wait_for(lambda: not dev1.dnd, what="dev-1 out of do-not-disturb")
        await wait_for(lambda: ha.doc(state1)["dnd"] == "OFF", what="dev-1's switch shows off")
        assert f.part.stats["refused"] == 0


async def test_the_call_select_and_the_hang_up_button(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = any_broker.topics
    async with fleet_with_ha(any_broker, tmp_path / "ctl.db") as f, operator(any_broker) as op:
        ha = f.ha
        state = t.ha_device_state("dev-1")
        # dev-1 is in a meeting before it calls: it goes back to it after.
        joined = await op.request(ApiOp.JOIN, ApiRequest(device="dev-1", room="standup"))
        assert joined.ok, joined
        await f.in_room("standup", "dev-1")

        await ha.client.publish(t.ha_device_set("dev-1", "call"), "dev-2", qos=1)
        call = await ha.final(ApiOp.CALL)
        assert call.ok, call
        assert call.call is not None
        assert call.call.startswith(CALL_ROOM_PREFIX)
        await f.in_room(call.call, "dev-1", "dev-2")
        await f.talking("dev-1", "dev-2")
        assert f.commands("ring") == []  # auto-answer, the default
        assert f.room("dev-3") is None
        await wait_for(lambda: ha.doc(state)["call"] == "dev-2", what="the select shows dev-2")

        await ha.client.publish(t.ha_device_set("dev-1", "hangup"), "PRESS", qos=1)
        hung = await ha.final(ApiOp.HANGUP)
        assert hung.ok, hung
        assert hung.call == call.call
        await f.in_room("standup", "dev-1")
        await f.in_room(None, "dev-2")
        await wait_for(lambda: ha.doc(state)["call"] is None, what="the select back to unknown")

        # A group: dev-3 calls the kitchen (dev-1 out of its meeting first, or it would
        # be rung instead: §14.7).
        assert (await op.request(ApiOp.LEAVE, ApiRequest(device="dev-1"))).ok
        await f.in_room(None, "dev-1")
        await ha.client.publish(t.ha_device_set("dev-3", "call"), "group:kitchen", qos=1)
        group_call = await ha.final(ApiOp.CALL)
        assert group_call.ok, group_call
        assert group_call.group == "kitchen"
        assert group_call.call is not None
        await f.in_room(group_call.call, "dev-1", "dev-2", "dev-3")
        await ha.client.publish(t.ha_device_set("dev-3", "hangup"), "PRESS", qos=1)
        hung = await ha.final(ApiOp.HANGUP)
        assert (hung.ok, hung.call) == (True, group_call.call), hung
        await f.in_room(None, *IDS)
        assert f.part.stats["refused"] == 0


async def test_bad_intercom_commands_are_refused(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    t = amqtt_broker.topics
    async with fleet_with_ha(amqtt_broker, tmp_path / "ctl.db") as f:
        ha, part = f.ha, f.part
        bad: list[tuple[str, bytes]] = [
            (t.ha_device_set("dev-1", "call"), b"dev-1"),  # itself
            (t.ha_device_set("dev-1", "call"), b"ghost"),
            (t.ha_device_set("dev-1", "call"), b"group:nobody"),
            (t.ha_device_set("dev-1", "call"), b"Group:Kitchen"),
            (t.ha_device_set("dev-1", "call"), b"group:all"),  # a call is never to everyone
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
        # Nothing was asked of the controller, nothing sent to a device.
        assert ha.ours() == []
        assert [k for k, _d, _p in f.wire if k in (TopicKind.CMD, TopicKind.DESIRED)] == []
        # A good one still goes through: the longest text an announcement takes.
        text = ("please go home " * 67)[:1000]
        await ha.client.publish(t.ha_fleet_set("announce"), text, qos=1)
        await wait_for(
            lambda: any(r.op == "announce" and r.ok for r in ha.ours()), what="the good one"
        )
        await wait_for(
            lambda: {d for d, _c in f.commands("announce")} == set(IDS), what="sent to all"
        )


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
