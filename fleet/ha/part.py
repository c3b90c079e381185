"""The controller part that puts the fleet into Home Assistant and obeys its entities.

Cost at fleet scale: a device's discovery config is built and published when the
device first appears and again only when what it shows changes (firmware, board,
the list of rooms); its state doc only when a value in it changes, and values
that come from telemetry at most every `tele_interval_s` per device. Counts for
the controller's sensors are kept incrementally and published at most every
`fleet_interval_s`. Only a Home Assistant restart (`online` on its status topic),
a reconnect of the controller, or a new room re-publishes everything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet.controller.host import PartHost
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError
from fleet.ha import DEFAULT_ROOM
from fleet.ha.discovery import (
    GROUP_OPTION,
    MAX_CALL_DEVICES,
    Discovery,
    Shown,
    call_options,
    group_entity,
)
from fleet.ha.models import (
    HaDeviceState,
    HaFleetState,
    TeleValues,
    encode_state,
    meeting_of,
    parse_call_option,
    parse_message,
    parse_press,
    parse_room,
    parse_switch,
    tele_values,
)
from fleet.meetings.records import MeetingRecords
from fleet.mqtt import LastWill
from fleet.protocol import TopicKind, decode
from fleet.protocol.constants import CALL_ROOM_PREFIX
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    EventKind,
    FleetEvent,
    Telemetry,
)
from fleet.protocol.topics import DEFAULT_HA_PREFIX, HaTopicKind, ParsedHaTopic, ha_birth

if TYPE_CHECKING:
    from fleet.registry import DeviceRecord

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
# Telemetry-driven state updates per device at most this often (meeting changes go at once).
TELE_INTERVAL_S = 30.0
# The controller's counters (online, in meetings) at most this often: a join-all of
# 10,000 devices changes them 10,000 times.
FLEET_INTERVAL_S = 0.5
# How often rooms made through the API (`fleet rooms create`) are looked for.
ROOMS_POLL_S = 5.0
# Discovery configs re-published per tick when the room list changed (every device's
# select lists the rooms), once no join-all is converging: a join-all into a new room
# must not pay for 10,000 configs while its devices report.
CONFIGS_PER_TICK = 200
IDENTIFY_S = 5
# Commands that arrive before the retained fleet has been read wait; past this many, dropped.
MAX_HELD = 256


@dataclass(frozen=True, slots=True)
class HomeAssistantSettings:
    ha_prefix: str = DEFAULT_HA_PREFIX
    room: str = DEFAULT_ROOM  # the room "Join all" and a switch without a last room use
    tele_interval_s: float = TELE_INTERVAL_S
    fleet_interval_s: float = FLEET_INTERVAL_S
    rooms_poll_s: float = ROOMS_POLL_S

    def __post_init__(self) -> None:
        ha_birth(self.ha_prefix)  # validates the prefix
        parse_room(self.room.encode(), "default room")


@dataclass(slots=True)
class _Device:
    # What its published discovery config shows: firmware and board, and the room list
    # (by generation). None: no config published on this connection yet.
    shown: Shown | None = None
    rooms_gen: int = -1
    state: bytes = b""  # the state doc published last
    meeting: tuple[bool, str | None] = (False, None)  # its meeting part
    state_at: float = 0.0
    last_room: str | None = None
    tele: TeleValues = field(default_factory=TeleValues)
    tele_shown: bool = False  # telemetry values have gone out: from now on, throttled
    counted: tuple[bool, bool] = (False, False)  # (online, in a meeting) in the fleet counters
    call: str | None = None  # whom it called from Home Assistant (a call select option)
    in_call: bool = False  # its reported meeting is a call's room


# Keys of what the part keeps in the controller's SQLite store (meta table): the room of
# "Join all", and each device's last room (its "In meeting" switch joins it).
ROOM_KEY = "ha.room"
LAST_ROOM_KEY = "ha.last_room."


class HomeAssistantPart(ControllerPart):
    name = "homeassistant"

    def __init__(self, settings: HomeAssistantSettings | None = None) -> None:
        self.settings = settings or HomeAssistantSettings()  # validated as it was made
        self.room = self.settings.room
        self._devices: dict[str, _Device] = {}
        self._rooms: set[str] = {self.room}
        self._groups: set[str] = set()  # every group a device's birth named ("all" aside)
        self._group_keys: dict[str, str] = {}  # a group notify entity's key -> its group
        # Bumped whenever what a select offers changes (rooms, groups, the devices a call
        # select lists): configs published under an older generation are re-published.
        self._rooms_gen = 0
        self._stale_configs: dict[str, None] = {}  # devices whose config lists old rooms
        # Devices that changed since the last tick: their state docs go out once a tick.
        self._changed: dict[str, None] = {}
        self._controller_stale = False  # the controller's config lists old rooms
        self._fleet_dirty = False
        self._fleet_state = b""
        self._online = 0
        self._in_meeting = 0
        self._room_adopted = False
        self._held: list[tuple[ParsedHaTopic, str, bytes]] = []
        self._last_rooms: dict[str, str] = {}  # kept in SQLite: device -> its last room
        self._unsaved: dict[str, str] = {}  # store keys written at the next tick
        self.stats = {"commands": 0, "refused": 0, "configs": 0, "states": 0}

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms its room selects offer (the default room and every room known)."""
        return frozenset(self._rooms)

    def attach(self, host: PartHost) -> None:
        super().attach(host)
        kept = host.store.meta("ha.")
        room = kept.get(ROOM_KEY)
        if room is not None and _valid_room(room):
            self.room = room
            self._room_adopted = True  # SQLite wins over our old retained fleet state
            self._rooms.add(room)
        self._last_rooms = {
            key.removeprefix(LAST_ROOM_KEY): value
            for key, value in kept.items()
            if key.startswith(LAST_ROOM_KEY) and _valid_room(value)
        }
        self.discovery = Discovery(host.topics, self.settings.ha_prefix)
        t = host.topics
        self._birth = ha_birth(self.settings.ha_prefix)
        self._tele_filter = t.all_devices(TopicKind.TELE)
        self._filters = {
            t.ha_all_device_sets: 1,
            t.ha_all_fleet_sets: 1,
            t.ha_fleet_state: 1,
            self._birth: 1,
            self._tele_filter: 0,  # published at QoS 0
        }

    # --- the part's hooks ---------------------------------------------------------------------
    def subscriptions(self) -> Mapping[str, int]:
        return self._filters

    def will(self) -> LastWill:
        return LastWill(self.host.topics.ha_status, OFFLINE, qos=1, retain=True)

    async def on_connect(self) -> None:
        # A new connection: nothing published on the old one counts (the broker may have
        # restarted and forgotten it), so everything goes out again once synced.
        self._refresh_rooms()
        await self._pub(self.host.topics.ha_status, ONLINE)
        await self._publish_controller()

    async def on_synced(self) -> None:
        await self.publish_all()
        held, self._held = self._held, []
        for parsed, topic, payload in held:
            try:
                await self._command(parsed, topic, payload)
            except ProtocolError as exc:
                log.warning("homeassistant dropped held command on %s: %s", topic, exc)

    async def on_closing(self) -> None:
        await self.host.publish(self.host.topics.ha_status, OFFLINE, qos=1, retain=True, wait=True)

    async def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._birth:
            await self._on_ha_status(payload)
            return
        t = self.host.topics
        parsed = t.parse(topic)
        if parsed is not None:
            if parsed.kind is TopicKind.TELE:
                await self._on_tele(parsed.name, payload)
            return
        ha = t.parse_ha(topic)
        if ha is None:
            raise ProtocolError(f"Home Assistant topic {topic[:128]!r}", "not one of ours")
        if ha.kind is HaTopicKind.FLEET_STATE:
            self._adopt_room(payload)
        elif ha.kind in (HaTopicKind.DEVICE_SET, HaTopicKind.FLEET_SET):
            if not self.host.synced:
                if len(self._held) < MAX_HELD:
                    self._held.append((ha, topic, payload))
                else:
                    log.warning("homeassistant: command on %s dropped, %d held", topic, MAX_HELD)
                return
            await self._command(ha, topic, payload)

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        if not self.host.synced:
            return  # on_synced publishes the whole fleet
        if device_id not in self.host.registry.devices:
            self._changed.pop(device_id, None)
            await self._remove(device_id)
            return
        # Coalesced: a fan-out changes a device's state twice or more within a second;
        # its doc is built and sent once, at the next tick, from what it is then.
        self._changed[device_id] = None

    async def _publish_changed(self) -> None:
        changed, self._changed = self._changed, {}
        devices = self.host.registry.devices
        for device_id in changed:
            rec = devices.get(device_id)
            if rec is not None:
                await self._publish_device(device_id, rec)

    async def on_event(self, event: FleetEvent) -> None:
        if event.kind == EventKind.JOIN and event.room:
            self._note_room(event.room)

    async def run(self) -> None:
        next_rooms = time.monotonic() + self.settings.rooms_poll_s
        while True:
            await asyncio.sleep(self.settings.fleet_interval_s)
            try:
                if time.monotonic() >= next_rooms:
                    next_rooms = time.monotonic() + self.settings.rooms_poll_s
                    self._refresh_rooms()
                if self._changed and self.host.synced:
                    await self._publish_changed()
                if self._controller_stale and self.host.synced:
                    await self._publish_controller()
                if self._stale_configs and self.host.synced and not self.host.converging:
                    await self._publish_stale_configs()
                if self._fleet_dirty:
                    await self._publish_fleet_state()
                self._save()
            except Exception:  # a bad moment must not end the part
                log.exception("homeassistant: periodic work failed")

    # --- publishing ---------------------------------------------------------------------------
    async def publish_all(self) -> None:
        """Discovery, availability and state of the controller and every device, again."""
        await self._pub(self.host.topics.ha_status, ONLINE)
        await self._publish_controller()
        for device_id, rec in list(self.host.registry.devices.items()):
            dev = self._device(device_id)
            dev.shown = None
            dev.state = b""
            await self._publish_device(device_id, rec)
        await self._publish_fleet_state(force=True)

    async def _publish_stale_configs(self) -> None:
        devices = self.host.registry.devices
        for device_id in list(self._stale_configs)[:CONFIGS_PER_TICK]:
            del self._stale_configs[device_id]
            rec, dev = devices.get(device_id), self._devices.get(device_id)
            if rec is not None and dev is not None:
                await self._publish_config(device_id, rec, dev)

    async def _publish_config(self, device_id: str, rec: DeviceRecord, dev: _Device) -> None:
        shown = Shown(rec.fw, rec.hw)
        if (dev.shown, dev.rooms_gen) == (shown, self._rooms_gen):
            return
        dev.shown, dev.rooms_gen = shown, self._rooms_gen
        devices = self.host.registry.devices
        listed = list(devices) if len(devices) <= MAX_CALL_DEVICES else []
        calls = call_options(device_id, listed, self._groups)
        config = self.discovery.device_config(device_id, shown, self._rooms, calls)
        await self._pub(self.discovery.device_config_topic(device_id), _json(config))
        self.stats["configs"] += 1

    async def _publish_controller(self) -> None:
        self._controller_stale = False
        d = self.discovery
        config = d.controller_config(self._rooms, self._groups)
        await self._pub(d.controller_config_topic, _json(config))
        self.stats["configs"] += 1

    async def _publish_device(self, device_id: str, rec: DeviceRecord, tele: bool = False) -> None:
        dev = self._device(device_id)
        in_meeting, room = meeting_of(rec.state)
        if room is not None:
            self._set_last_room(device_id, dev, room)
            self._note_room(room)
        for group in rec.groups:
            self._note_group(group)
        in_call = room is not None and room.startswith(CALL_ROOM_PREFIX)
        if dev.in_call and not in_call:
            dev.call = None  # the call it was in ended
        dev.in_call = in_call
        # A new device or a new firmware or board: its config at once. A config that only
        # lists old rooms waits in _stale_configs for the periodic task. A will (no
        # firmware, no board) changes nothing it shows.
        if dev.shown != Shown(rec.fw, rec.hw):
            await self._publish_config(device_id, rec, dev)
        self._count(dev, rec.online, rec.online and in_meeting)
        meeting = (in_meeting, room)
        values = dev.tele.copy()
        if not in_meeting:
            values["jitter"] = values["loss"] = None
        # Built from what was validated already (the device's state, its telemetry, the
        # chosen room): not validated again, once per device per tick of a fan-out.
        doc = HaDeviceState.model_construct(
            in_meeting="ON" if in_meeting else "OFF",
            room=room or dev.last_room or self.room,
            dnd="ON" if _reported_dnd(rec) else "OFF",
            call=dev.call,
            **values,
        )
        payload = encode_state(doc)
        if payload == dev.state:
            return
        now = time.monotonic()
        recent = now - dev.state_at < self.settings.tele_interval_s
        if tele and dev.tele_shown and meeting == dev.meeting and recent:
            return  # only telemetry moved, and it went out recently: the next sample will do
        dev.state, dev.meeting, dev.state_at = payload, meeting, now
        dev.tele_shown = dev.tele_shown or bool(dev.tele)
        # QoS 0: one per device per change of a fan-out, and a lost one is re-sent with
        # everything after a reconnect (retained, so Home Assistant still reads the last).
        await self._pub(self.host.topics.ha_device_state(device_id), payload, qos=0)
        self.stats["states"] += 1

    async def _publish_fleet_state(self, force: bool = False) -> None:
        self._fleet_dirty = False
        doc = HaFleetState(
            room=self.room,
            devices=len(self.host.registry.devices),
            online=self._online,
            in_meeting=self._in_meeting,
        )
        payload = encode_state(doc)
        if payload != self._fleet_state or force:
            self._fleet_state = payload
            await self._pub(self.host.topics.ha_fleet_state, payload)

    async def _remove(self, device_id: str) -> None:
        """The device left the registry (its retained status was cleared): Home Assistant
        forgets it too (an empty retained config removes the device and its entities)."""
        dev = self._devices.pop(device_id, None)
        if dev is None:
            return
        self._count(dev, False, False)
        self._devices_changed()
        await self._pub(self.discovery.device_config_topic(device_id), b"")
        # At the QoS of the state docs before it: MQTT keeps order only within one QoS.
        await self._pub(self.host.topics.ha_device_state(device_id), b"", qos=0)
        self._fleet_dirty = True
        log.info("homeassistant: removed %s", device_id)

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device(last_room=self._last_rooms.get(device_id))
            self._devices_changed()
        return dev

    def _set_last_room(self, device_id: str, dev: _Device, room: str) -> None:
        if dev.last_room != room:
            dev.last_room = self._last_rooms[device_id] = room
            self._unsaved[LAST_ROOM_KEY + device_id] = room

    def _save(self) -> None:
        """Room choices into SQLite, in one transaction per tick (a join-all moves many)."""
        if self._unsaved:
            unsaved, self._unsaved = self._unsaved, {}
            self.host.store.save_meta(unsaved)

    async def close(self) -> None:
        self._save()

    async def _pub(self, topic: str, payload: bytes, qos: int = 1) -> None:
        await self.host.publish(topic, payload, qos=qos, retain=True)

    def _count(self, dev: _Device, online: bool, in_meeting: bool) -> None:
        was_online, was_in = dev.counted
        if (was_online, was_in) == (online, in_meeting):
            return
        self._online += int(online) - int(was_online)
        self._in_meeting += int(in_meeting) - int(was_in)
        dev.counted = (online, in_meeting)
        self._fleet_dirty = True

    # --- rooms --------------------------------------------------------------------------------
    def _note_room(self, room: str) -> bool:
        if room in self._rooms:
            return False
        self._rooms.add(room)
        self._rooms_gen += 1
        # Every select lists the rooms: re-published from the periodic task, a slice per
        # tick, not from inside the handler of one message of a fan-out.
        self._stale_configs.update(dict.fromkeys(self._devices))
        self._controller_stale = True
        return True

    def _choices_changed(self, controller: bool) -> None:
        self._rooms_gen += 1
        # Re-published from the periodic task, a slice per tick, not from inside the
        # handler of one message of a fan-out.
        self._stale_configs.update(dict.fromkeys(self._devices))
        self._controller_stale = self._controller_stale or controller

    def _devices_changed(self) -> None:
        """A device appeared or left: the call selects list the devices of a small fleet."""
        if len(self.host.registry.devices) <= MAX_CALL_DEVICES + 1:
            self._choices_changed(controller=False)

    def _note_group(self, group: str) -> None:
        if group == "all" or group in self._groups:
            return
        self._groups.add(group)
        self._group_keys[group_entity(group)] = group
        self._choices_changed(controller=True)  # its notify entity, and the call selects

    def _refresh_rooms(self) -> None:
        for name in MeetingRecords(self.host.store).room_names():
            self._note_room(name)

    def _adopt_room(self, payload: bytes) -> None:
        """Our own retained fleet state, read back once after a restart: keep the room the
        user chose for "Join all" last time."""
        if self._room_adopted or self.host.synced or not payload:
            return
        self._room_adopted = True
        try:
            room = decode(HaFleetState, payload).room
        except ProtocolError as exc:
            log.info("homeassistant: ignored retained fleet state: %s", exc)
            return
        self.room = room
        self._unsaved[ROOM_KEY] = room
        self._note_room(room)

    # --- Home Assistant's side ----------------------------------------------------------------
    async def _on_ha_status(self, payload: bytes) -> None:
        text = payload.strip()
        if text == ONLINE:
            if self.host.synced:
                log.info("homeassistant: Home Assistant (re)started; publishing everything")
                await self.publish_all()
        elif text != OFFLINE:
            raise ProtocolError(self._birth, f"expected online or offline, got {text[:32]!r}")

    async def _on_tele(self, device_id: str, payload: bytes) -> None:
        rec = self.host.registry.devices.get(device_id)
        if rec is None:
            return  # telemetry of a device that never announced itself shows nowhere
        dev = self._device(device_id)
        if dev.tele_shown and time.monotonic() - dev.state_at < self.settings.tele_interval_s:
            return  # its state went out recently; not worth decoding this sample
        tele = decode(Telemetry, payload)
        dev.tele = tele_values(tele)
        if self.host.synced:
            await self._publish_device(device_id, rec, tele=True)

    async def _command(self, parsed: ParsedHaTopic, topic: str, payload: bytes) -> None:
        self.stats["commands"] += 1
        what = f"Home Assistant command on {topic}"
        try:
            if parsed.kind is HaTopicKind.FLEET_SET:
                await self._fleet_command(parsed.entity, payload, what)
            else:
                await self._device_command(parsed.device, parsed.entity, payload, what)
        except ProtocolError as exc:
            self.stats["refused"] += 1
            await self.host.emit(
                FleetEvent(
                    ts=time.time(),
                    kind=EventKind.ERROR,
                    device=parsed.device or None,
                    op=f"ha:{parsed.entity}",
                    ok=False,
                    code="bad_request",
                    detail=exc.reason[:256],
                )
            )
            # Home Assistant shows what the state doc says: send it again, unchanged, so a
            # select that moved in the UI moves back.
            if parsed.kind is HaTopicKind.FLEET_SET:
                await self._publish_fleet_state(force=True)
            elif (dev := self._devices.get(parsed.device)) is not None and dev.state:
                await self._pub(self.host.topics.ha_device_state(parsed.device), dev.state, qos=0)
            raise

    async def _fleet_command(self, entity: str, payload: bytes, what: str) -> None:
        if entity == "join_all":
            parse_press(payload, what)
            await self._submit(ApiOp.JOIN_ALL, room=self.room)
        elif entity == "leave_all":
            parse_press(payload, what)
            await self._submit(ApiOp.LEAVE_ALL)
        elif entity == "room":
            self.room = self._known_room(payload, what)
            self._unsaved[ROOM_KEY] = self.room
            await self._publish_fleet_state(force=True)
        elif entity in ("announce", "announce_urgent"):
            text = parse_message(payload, what)
            urgent = entity == "announce_urgent"
            await self._submit(ApiOp.ANNOUNCE, text=text, priority="urgent" if urgent else "normal")
        elif entity in self._group_keys:
            text = parse_message(payload, what)
            await self._submit(ApiOp.ANNOUNCE, text=text, group=self._group_keys[entity])
        else:
            raise ProtocolError(what, f"no fleet entity {entity!r}")

    async def _device_command(self, device_id: str, entity: str, payload: bytes, what: str) -> None:
        rec = self.host.registry.devices.get(device_id)
        if rec is None:
            raise ProtocolError(what, f"unknown device {device_id!r}")
        dev = self._device(device_id)
        in_meeting, room = meeting_of(rec.state)
        if entity == "meeting":
            if parse_switch(payload, what):
                target = room or dev.last_room or self.room
                await self._submit(ApiOp.JOIN, device=device_id, room=target)
            else:
                await self._submit(ApiOp.LEAVE, device=device_id)
        elif entity == "room":
            chosen = self._known_room(payload, what)
            self._set_last_room(device_id, dev, chosen)
            if in_meeting and chosen != room:
                await self._submit(ApiOp.JOIN, device=device_id, room=chosen)
            await self._publish_device(device_id, rec)
        elif entity == "identify":
            parse_press(payload, what)
            await self._submit(
                ApiOp.CMD, device=device_id, cmd_op="identify", args={"seconds": IDENTIFY_S}
            )
        elif entity == "leave":
            parse_press(payload, what)
            await self._submit(ApiOp.LEAVE, device=device_id)
        elif entity == "dnd":
            await self._submit(ApiOp.DND, device=device_id, on=parse_switch(payload, what))
        elif entity == "call":
            option = parse_call_option(payload, what)
            group = option.removeprefix(GROUP_OPTION) if option.startswith(GROUP_OPTION) else None
            if group is not None:
                if group not in self._groups:  # never "all": a call is not to every device
                    raise ProtocolError(what, f"unknown group {group[:64]!r}")
                await self._submit(ApiOp.CALL, device=device_id, group=group)
            else:
                if option == device_id or option not in self.host.registry.devices:
                    raise ProtocolError(what, f"no other device {option[:64]!r} to call")
                await self._submit(ApiOp.CALL, device=device_id, to=option)
            dev.call = option
            await self._publish_device(device_id, rec)
        elif entity == "hangup":
            parse_press(payload, what)
            await self._submit(ApiOp.HANGUP, device=device_id)
            dev.call = None
            await self._publish_device(device_id, rec)
        else:
            raise ProtocolError(what, f"no device entity {entity!r}")

    def _known_room(self, payload: bytes, what: str) -> str:
        room = parse_room(payload, what)
        if room not in self._rooms:
            raise ProtocolError(what, f"unknown room {room!r}")
        return room

    async def _submit(self, op: ApiOp, **fields: object) -> None:
        """The same request the CLI sends: its results go to api/result as for any caller."""
        # Validated as JSON, as a request on api/{op} is: enum fields take their values.
        body = json.dumps({"id": f"ha-{uuid.uuid4().hex[:12]}", **fields})
        request = ApiRequest.model_validate_json(body)
        log.info("homeassistant: %s %s", op.value, fields)
        await self.host.submit(op, request)


def _reported_dnd(rec: DeviceRecord) -> bool:
    """The device's do-not-disturb as its state reports it (False before it reports one)."""
    return rec.state is not None and rec.state.dnd


def _valid_room(room: str) -> bool:
    try:
        parse_room(room.encode(), "kept room")
    except ProtocolError:
        return False
    return True


def _json(config: dict[str, object]) -> bytes:
    return json.dumps(config, separators=(",", ":")).encode()
