"""The controller: one MQTT link, a store, a registry, and the modules and parts on them.

`Controller` composes the modules that each do one job (inbound routing, desired
state and lapses, commands as jobs, the automation API, fleet events, births), runs
the link and the tick, and is the `PartHost` of its parts. Bad input is logged and,
where a caller waits (API requests), answered with an error result; nothing else is
lost. Desired docs live in SQLite and are re-asserted on every (re)connect, so a
broker that forgets its retained messages (amqtt keeps them in memory) loses no intent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import aiomqtt

from fleet.controller import collector
from fleet.controller.api import AutomationApi
from fleet.controller.births import Births
from fleet.controller.commands import Commands, GroupAcl
from fleet.controller.desired import DesiredState
from fleet.controller.events import FleetEvents
from fleet.controller.inbound import Inbound
from fleet.controller.link import ControllerLink
from fleet.controller.parts import ControllerPart, part_submission
from fleet.controller.store import Store
from fleet.errors import FleetError
from fleet.mqtt import BrokerUrl, MqttClient, MqttVersion, run_link, subscribe
from fleet.protocol import ID_RULE, TopicKind, Topics, decode, encode, is_valid_id
from fleet.protocol.messages import (
    ApiOp,
    ApiRequest,
    ApiResult,
    Desired,
    EventKind,
    FleetEvent,
    MeetingIntent,
    State,
    Status,
    Sync,
)
from fleet.registry import Registry

log = logging.getLogger(__name__)

TICK_S = 0.2
# The controller's side connections (client id `{client id}-{side}`) and what each reads.
SIDE_FILTERS: dict[str, Callable[[Topics], frozenset[str]]] = {
    "req": lambda t: frozenset(
        {t.all_api_requests, t.all_api_requests_by, t.ha_all_device_sets, t.ha_all_fleet_sets}
    ),
    "sig": lambda t: frozenset({t.all_meet_up}),
}
ANSWERS_SIDE = "req"  # API results go out on the connection their requests came in on
SIDE_LINK_WAIT_S = 10.0
SETTLE_MIN_DEVICES = 1000  # below it the collector has little to walk
DEFAULT_CLIENT_ID = "fleet-controller"  # only for a broker without usernames


class Controller:
    def __init__(
        self,
        url: BrokerUrl,
        store_path: Path | str,
        topics: Topics | None = None,
        client_id: str | None = None,
        credentials: GroupAcl | None = None,
        parts: Sequence[ControllerPart] = (),
    ) -> None:
        self.url = url
        self._topics = topics or Topics()
        # The broker binds client ids to users (protocol.md §11): by default the username.
        client_id = client_id or url.username or DEFAULT_CLIENT_ID
        if not is_valid_id(client_id):
            raise ValueError(f"invalid controller client id {client_id!r}: {ID_RULE}")
        self.client_id = client_id
        self._store = Store(store_path)
        self._registry = Registry()
        self.births = Births(self._store, self._registry)
        self.births.load()
        self.connected = asyncio.Event()
        self._side_up: dict[str, asyncio.Event] = {}
        self.link = ControllerLink()
        self.stats = {"messages": 0, "rejected": 0}
        # Until the retained fleet has been read after a (re)connect, API requests
        # wait: acting on a partial registry could hand out a rev that is already in use.
        self._synced = False
        self._sync_token = ""
        self._settled_devices = 0  # the fleet's size when the collector last froze it
        self._revs_ahead: dict[str, int] = {}  # devices whose reported rev was a lie: that rev
        self.parts = list(parts)
        self.events = FleetEvents(self._topics, self.link, self.parts)
        self.desired = DesiredState(
            self._store, self._registry, self._topics, self.link, self.events, self.parts
        )
        self.commands = Commands(
            self._store, self._registry, self._topics, self.link, self.events, credentials
        )
        self.api = AutomationApi(
            self._store,
            self._registry,
            self._topics,
            self.link,
            self.events,
            self.parts,
            self.desired,
            self.commands,
            synced=lambda: self._synced,
            stats=self.stats,
        )
        self.inbound = Inbound(
            self._topics,
            self.link,
            self.parts,
            self.api,
            self.desired,
            self.commands,
            on_report=self._on_report,
            on_sync=self._on_sync,
            stats=self.stats,
        )
        for part in self.parts:
            part.attach(self)
        # Connections of their own for API requests and for meeting signalling (when the
        # client id leaves room for a suffix): a flood of either waits in its own broker
        # queue and socket, never in front of the devices' reports on the main one.
        self._side_up = {
            side: asyncio.Event()
            for side in SIDE_FILTERS
            if is_valid_id(f"{self.client_id}-{side}") and self._side_filters(side)
        }

    # --- the PartHost -------------------------------------------------------------------------
    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def store(self) -> Store:
        return self._store

    @property
    def synced(self) -> bool:
        """The retained fleet has been read since the last (re)connect."""
        return self._synced

    @property
    def converging(self) -> bool:
        """A desired-state operation is still waiting for devices: work that can wait
        (Home Assistant's room lists) stays out of its way."""
        return self.api.converging

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False
    ) -> bool:
        return await self.link.publish(topic, payload, qos=qos, retain=retain, wait=wait)

    async def emit(self, event: FleetEvent) -> None:
        await self.events.emit(event)

    async def publish_result(self, result: ApiResult) -> None:
        await self.api.publish_result(result)

    async def submit(self, op: ApiOp, request: ApiRequest) -> None:
        with part_submission():
            await self.api.submit(op, request)

    async def write_own_intent(
        self, device_id: str, meeting: MeetingIntent | None, op: str
    ) -> Desired:
        own = self._store.desired_doc("dev", device_id)
        with part_submission():  # the part's own intent, as an operator's
            return await self.desired.write(
                "dev", device_id, meeting, op=op, dnd=own.dnd if own else None
            )

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        collector.tune()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    run_link(
                        self.url,
                        client_id=self.client_id,
                        on_connect=self._on_connect,
                        on_message=self.inbound.accept,
                        on_disconnect=self._on_disconnect,
                        on_close=self._on_close,
                        will=next((w for p in self.parts if (w := p.will()) is not None), None),
                        connected=self.connected,
                        version=MqttVersion.AUTO,
                    ),
                    name="controller-link",
                )
                for side, up in self._side_up.items():
                    tg.create_task(
                        run_link(
                            self.url,
                            client_id=f"{self.client_id}-{side}",
                            on_connect=functools.partial(self._on_side_connect, side),
                            on_message=self.inbound.accept,
                            on_disconnect=functools.partial(self._on_side_disconnect, side),
                            connected=up,
                            version=MqttVersion.AUTO,
                        ),
                        name=f"controller-link-{side}",
                    )
                tg.create_task(self.inbound.run(), name="controller-inbound")
                tg.create_task(self._tick_loop(), name="controller-ticks")
                for part in self.parts:
                    tg.create_task(part.run(), name=f"controller-{part.name}")
        finally:
            for part in self.parts:
                try:
                    await part.close()
                except Exception:
                    log.exception("part %s failed to close", part.name)
            self._store.close()

    def _filters(self) -> dict[str, int]:
        """Every filter the controller reads, with its QoS, over all its connections."""
        t = self._topics
        filters = {
            t.all_devices(TopicKind.STATUS): 1,
            t.all_devices(TopicKind.STATE): 1,
            t.all_devices(TopicKind.ACK): 1,
            t.all_devices(TopicKind.DESIRED): 1,
            t.all_group_desired: 1,
            t.all_api_requests: 1,
            t.all_api_requests_by: 1,
            t.sync(self.client_id): 1,
        }
        for part in self.parts:
            for flt, qos in part.subscriptions().items():
                # Two parts may share a filter (telemetry and Home Assistant both read tele):
                # one subscription at the higher QoS; the broker delivers it once.
                filters[flt] = max(filters.get(flt, 0), qos)
        for shared in [f for f in filters if f.startswith("$share/")]:
            # A shared subscription (telemetry split between processes) brings this
            # process its share for every part: no plain one beside it, which would bring
            # each message once more.
            plain = shared.split("/", 2)[2]
            if plain in filters:
                filters[shared] = max(filters[shared], filters.pop(plain))
        return filters

    def _side_filters(self, side: str) -> list[tuple[str, int]]:
        t = self._topics
        mine = SIDE_FILTERS[side](t)
        return [(f, qos) for f, qos in self._filters().items() if f in mine]

    async def _on_side_connect(self, side: str, client: MqttClient) -> None:
        await subscribe(client, self._side_filters(side))
        if side == ANSWERS_SIDE:
            self.link.answers = client

    def _on_side_disconnect(self, side: str) -> None:
        if side == ANSWERS_SIDE:
            self.link.answers = None

    async def _on_connect(self, client: MqttClient) -> None:
        t = self._topics
        self.link.client = client
        self._synced = False
        self.inbound.hold_requests()
        sides = {f for side in self._side_up for f, _qos in self._side_filters(side)}
        filters = [(f, qos) for f, qos in self._filters().items() if f not in sides]
        await subscribe(client, filters)  # SubscribeRefused: a clear stop
        self._sync_token = uuid.uuid4().hex  # a stale marker from an earlier connection is not it
        await client.publish(t.sync(self.client_id), encode(Sync(token=self._sync_token)), qos=1)
        await self.desired.reassert(client)
        for part in self.parts:
            await part.on_connect()
        try:  # connected means every filter is read: a request sent now is not lost
            async with asyncio.timeout(SIDE_LINK_WAIT_S):
                for up in self._side_up.values():
                    await up.wait()
        except TimeoutError:
            log.warning("the controller's other connections are not up yet; still trying")
        log.info("controller connected to %s", self.url.redacted())

    def _on_disconnect(self) -> None:
        self.link.client = None

    async def _on_close(self, client: aiomqtt.Client) -> None:
        for part in self.parts:
            try:
                await part.on_closing()
            except Exception as exc:  # best effort: we are going away anyway
                log.debug("part %s failed to say goodbye: %s", part.name, exc)

    async def _on_sync(self, name: str, payload: bytes) -> None:
        """Our own marker came back: everything retained before it has been read."""
        if name != self.client_id or decode(Sync, payload).token != self._sync_token:
            return
        self._synced = True
        # States read before the retained desired docs had raised the counter's floor are
        # judged now; each later one as it comes.
        for rec in list(self._registry.devices.values()):
            if rec.state is not None and await self._rev_ahead(rec.id, rec.state.rev):
                rec.state = None
                await self._device_changed(rec.id, False)
        for part in self.parts:
            await part.on_synced()
        await self.api.run_held()
        self.inbound.open_requests()
        if len(self._registry.devices) >= SETTLE_MIN_DEVICES:
            self._settle_collector()

    def _settle_collector(self) -> None:
        collector.settle()
        self._settled_devices = len(self._registry.devices)

    # --- devices ------------------------------------------------------------------------------
    async def _on_report(
        self, kind: TopicKind, device_id: str, message: Status | State | None, payload: bytes
    ) -> None:
        if kind is TopicKind.STATUS:
            self.births.keep(device_id, message, payload)
        # A reported rev never moves the counter: a device could push it to the ceiling
        # and stop every intent. Only desired docs, which only we write, raise it. A rev
        # above every one we handed out is a lie: refused, so it converges nothing.
        if (
            kind is TopicKind.STATE
            and isinstance(message, State)
            and self._synced
            and await self._rev_ahead(device_id, message.rev)
        ):
            return
        presence_changed = self._registry.update(kind, device_id, message)
        await self._device_changed(device_id, presence_changed)

    async def _rev_ahead(self, device_id: str, rev: int) -> bool:
        """True when `rev` is above the counter: no intent of ours ever had it. Recorded
        (a log line and an error event) once per device and rev."""
        counter = self._store.last_rev()
        if rev <= counter:
            self._revs_ahead.pop(device_id, None)
            return False
        self.stats["rejected"] += 1
        if self._revs_ahead.get(device_id) != rev:
            self._revs_ahead[device_id] = rev
            detail = f"reported rev {rev}, above every rev handed out ({counter}): refused"
            log.warning("%s %s", device_id, detail)
            await self.events.emit(
                FleetEvent(
                    ts=time.time(),
                    kind=EventKind.ERROR,
                    device=device_id,
                    ok=False,
                    code="rev_ahead",
                    rev=rev,
                    detail=detail,
                )
            )
        return True

    async def _device_changed(self, device_id: str, presence_changed: bool) -> None:
        self.api.observe(device_id)
        rec = self._registry.devices.get(device_id)
        if presence_changed and rec is not None and self._synced:
            await self.events.emit(
                FleetEvent(
                    ts=time.time(),
                    kind=EventKind.ONLINE if rec.online else EventKind.OFFLINE,
                    device=device_id,
                )
            )
        for part in self.parts:
            await part.on_device_changed(device_id, presence_changed)
        if self._synced and self.desired.has_ended:
            self.desired.end_late_follower(device_id)
        if presence_changed and rec is not None and rec.online:
            await self.commands.send_held(device_id)
        await self.api.finish_done()

    # --- timers -------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick()
            except (aiomqtt.MqttError, OSError) as exc:
                log.info("tick skipped while disconnected: %s", exc)
            except FleetError as exc:  # e.g. RevExhausted: say so, and keep serving
                log.error("tick failed: %s", exc)

    async def _tick(self) -> None:
        now = time.time()
        # The fleet grew (devices came online since the sync): its records are long-lived
        # too. Doubling each time, so a fleet of any size is frozen a few times only.
        devices = len(self._registry.devices)
        grown = devices >= max(SETTLE_MIN_DEVICES, 2 * self._settled_devices)
        if self._synced and grown and not self.api.converging:
            self._settle_collector()
        await self.commands.expire(now)
        if self._synced:
            # Only on the whole retained fleet: a partial registry would miss followers.
            await self.desired.expire(now)
        await self.api.finish_done()
