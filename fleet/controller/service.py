"""The controller: registry, desired-state writes, commands as jobs, the automation API.

One MQTT link; every inbound message is classified by the topic matcher,
parsed by the protocol models, and handled here. Bad input is logged and, where
a caller waits (API requests), answered with an error result; nothing else is
lost. Desired docs live in SQLite and are re-asserted on every (re)connect, so
a broker that forgets its retained messages (amqtt keeps them in memory) loses
no intent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiomqtt

from fleet.controller.operations import CommandTracker, DesiredTracker, inventory
from fleet.controller.parts import ControllerPart
from fleet.controller.store import DesiredRecord, Job, Store
from fleet.errors import FleetError, ProtocolError
from fleet.mqtt import (
    BrokerUrl,
    MqttClient,
    MqttVersion,
    Reply,
    payload_bytes,
    publish,
    publish_nowait,
    reply_of,
    run_link,
    subscribe,
)
from fleet.protocol import (
    ID_RULE,
    ParsedTopic,
    TopicKind,
    Topics,
    decode,
    decode_for,
    encode,
    is_valid_id,
)
from fleet.protocol.messages import (
    REJECT_CODES,
    Ack,
    ApiOp,
    ApiRequest,
    ApiResult,
    Command,
    CommandOp,
    Desired,
    DeviceOutcome,
    EventKind,
    FleetEvent,
    MeetingIntent,
    State,
    Status,
    Sync,
    api_request_from_payload,
    probe_id,
)
from fleet.registry import Registry

log = logging.getLogger(__name__)


class GroupAcl(Protocol):
    """Where device credentials keep the groups the broker lets a device read."""

    def set_groups(self, username: str, groups: list[str]) -> Any: ...


TICK_S = 0.2
DEFAULT_CLIENT_ID = "fleet-controller"  # only for a broker without usernames
# Topics whose parts are remembered, in bytes of topic names plus a dict entry's cost;
# cleared wholesale past it (a 20,000-device fleet's topics take about 3 MB).
ROUTE_CACHE_BYTES = 16 * 1024 * 1024
ROUTE_ENTRY_OVERHEAD = 160
# API requests held until synced, in payload bytes; past it a request is refused (busy).
HELD_REQUESTS_BYTES = 8 * 1024 * 1024
MAX_CLEARING = 1024
MAX_REPLIES = 10_000  # open requests with a response topic; beyond, results go to api/result


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
        self.topics = topics or Topics()
        # The broker binds client ids to users (protocol.md §11): by default the username.
        client_id = client_id or url.username or DEFAULT_CLIENT_ID
        if not is_valid_id(client_id):
            raise ValueError(f"invalid controller client id {client_id!r}: {ID_RULE}")
        self.client_id = client_id
        self._api_root = f"{self.topics.prefix}/api/"
        # With the embedded broker the controller keeps device credentials' groups in step
        # with set_groups, so the broker lets the device read its new groups' desired docs.
        self.credentials = credentials
        self.store = Store(store_path)
        self.registry = Registry()
        # What each device is (firmware, board, groups) outlives its will and our restarts:
        # an offline device stays listed and in its groups when the broker lost its birth.
        for device_id, birth in self.store.births():
            with contextlib.suppress(FleetError):  # a row from an older schema: forget it
                self.registry.record(device_id).birth = decode(Status, birth)
        # Revs of lapsed docs kept after their end: a device reporting one in a meeting
        # is told to leave (_end_late_follower).
        self._ended_revs = self.store.ended_revs()
        self.connected = asyncio.Event()
        self._client: MqttClient | None = None
        # MQTT 5 requests that named a response topic: their results go there (by request id).
        self._replies: dict[str, Reply] = {}
        self._desired_trackers: list[DesiredTracker] = []
        self._command_trackers: list[CommandTracker] = []
        self._jobs: dict[str, Job] = {job.id: job for job in self.store.open_jobs()}
        self.stats = {"messages": 0, "rejected": 0}
        # Until the retained fleet state has been read after a (re)connect, API requests
        # wait: acting on a partial registry could hand out a rev that is already in use.
        self._synced = False
        self._sync_token = ""
        self._held_requests: list[tuple[str, bytes]] = []
        self._held_bytes = 0
        self.parts = list(parts)
        self._routes: dict[str, tuple[ControllerPart, ...]] = {}
        self._routes_bytes = 0
        self._clearing: dict[str, None] = {}  # retained requests we cleared: topics
        for part in self.parts:
            part.attach(self)

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    run_link(
                        self.url,
                        client_id=self.client_id,
                        on_connect=self._on_connect,
                        on_message=self._on_message,
                        on_disconnect=self._on_disconnect,
                        on_close=self._on_close,
                        will=next((w for p in self.parts if (w := p.will()) is not None), None),
                        connected=self.connected,
                        version=MqttVersion.AUTO,
                    ),
                    name="controller-link",
                )
                tg.create_task(self._tick_loop(), name="controller-ticks")
                for part in self.parts:
                    tg.create_task(part.run(), name=f"controller-{part.name}")
        finally:
            for part in self.parts:
                try:
                    await part.close()
                except Exception:
                    log.exception("part %s failed to close", part.name)
            self.store.close()

    async def _on_connect(self, client: MqttClient) -> None:
        t = self.topics
        self._client = client
        self._synced = False
        filters = {
            t.all_devices(TopicKind.STATUS): 1,
            t.all_devices(TopicKind.STATE): 1,
            t.all_devices(TopicKind.ACK): 1,
            t.all_devices(TopicKind.DESIRED): 1,
            t.all_group_desired: 1,
            t.all_api_requests: 1,
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
        await subscribe(client, list(filters.items()))  # SubscribeRefused: a clear stop
        self._sync_token = uuid.uuid4().hex  # a stale marker from an earlier connection is not it
        await client.publish(t.sync(self.client_id), encode(Sync(token=self._sync_token)), qos=1)
        # Re-assert every desired doc: the broker may have restarted and forgotten them.
        for scope, name, payload in self.store.desired_payloads():
            await client.publish(self._desired_topic(scope, name), payload, qos=1, retain=True)
        for part in self.parts:
            await part.on_connect()
        log.info("controller connected to %s", self.url.redacted())

    def _on_disconnect(self) -> None:
        self._client = None

    async def _on_close(self, client: aiomqtt.Client) -> None:
        for part in self.parts:
            try:
                await part.on_closing()
            except Exception as exc:  # best effort: we are going away anyway
                log.debug("part %s failed to say goodbye: %s", part.name, exc)

    # --- inbound ------------------------------------------------------------------------------
    async def _on_message(self, message: aiomqtt.Message) -> None:
        self.stats["messages"] += 1
        if self._client is not None and self._client.mqtt5 and (reply := reply_of(message)):
            self._note_reply(message.topic.value, payload_bytes(message), reply)
        topic = message.topic.value
        payload = payload_bytes(message)
        if self.topics.never_retained(topic):
            if message.retain and payload:
                await self._refuse_retained(topic, payload)
                return
            if not payload and self._clearing.pop(topic, None) is not None:
                return  # our own clearing of a retained request, delivered back
        parsed = self.topics.parse(topic)
        for part in self._parts_for(message.topic):
            try:
                await part.on_message(topic, payload)
            except ProtocolError as exc:
                self.stats["rejected"] += 1
                log.warning("%s dropped message on %s: %s", part.name, topic, exc)
        if parsed is None:
            op = topic.removeprefix(self._api_root)
            if op != topic and "/" not in op and self._synced:
                # Under api/ but no op we know (nor one that could be): answer, don't ignore.
                await self._api_error(
                    probe_id(payload), op[:32], "unknown_op", f"unknown API op {op[:32]!r}"
                )
            return
        try:
            await self._handle(parsed, payload)
        except ProtocolError as exc:
            self.stats["rejected"] += 1
            log.warning("dropped message on %s: %s", topic, exc)

    async def _refuse_retained(self, topic: str, payload: bytes) -> None:
        """A request or signalling message that came retained: carried out it would fire
        again on every restart (a retained leave-all), so it is refused and cleared."""
        self.stats["rejected"] += 1
        log.warning("refused a retained message on %s: requests are never retained", topic)
        if self._client is not None:
            if len(self._clearing) < MAX_CLEARING:
                self._clearing[topic] = None
            publish_nowait(self._client, topic, b"", qos=1, retain=True)
        op = topic.removeprefix(self._api_root)
        if op != topic:
            await self._api_error(
                probe_id(payload), op[:32], "retained", "API requests must not be retained"
            )

    def _note_reply(self, topic: str, payload: bytes, reply: Reply) -> None:
        """Remember where an API request wants its results: only our own reply topics
        (`api/reply/...`), so no requester can make the controller publish elsewhere."""
        request_id = probe_id(payload)
        if not request_id or not topic.startswith(self._api_root):
            return
        if not self.topics.is_api_reply(reply.topic):
            log.warning("API request %s: ignored response topic %r", request_id, reply.topic[:128])
            return
        if len(self._replies) < MAX_REPLIES:
            self._replies[request_id] = reply

    def _parts_for(self, topic: aiomqtt.Topic) -> tuple[ControllerPart, ...]:
        """The parts whose filters match `topic`, remembered per topic: matching every
        part's filters costs more than the rest of routing a state report."""
        parts = self._routes.get(topic.value)
        if parts is None:
            # Bounded by bytes, not entries: one topic name may take up to 64 KiB.
            cost = len(topic.value) + ROUTE_ENTRY_OVERHEAD
            if self._routes_bytes + cost > ROUTE_CACHE_BYTES:
                self._routes.clear()
                self._routes_bytes = 0
            parts = tuple(p for p in self.parts if any(topic.matches(f) for f in p.subscriptions()))
            self._routes[topic.value] = parts
            self._routes_bytes += cost
        return parts

    async def _handle(self, parsed: ParsedTopic, payload: bytes) -> None:
        kind = parsed.kind
        if kind in (TopicKind.STATUS, TopicKind.STATE):
            message: Status | State | None = decode_for(kind, payload) if payload else None
            if kind is TopicKind.STATUS:
                self._keep_birth(parsed.name, message, payload)
            # A reported rev never moves the counter: a device could push it to the ceiling
            # and stop every intent. Only desired docs, which only we write, raise it.
            presence_changed = self.registry.update(kind, parsed.name, message)
            await self._device_changed(parsed.name, presence_changed)
        elif kind is TopicKind.ACK:
            await self._on_ack(parsed.name, decode(Ack, payload))
        elif kind in (TopicKind.DESIRED, TopicKind.GROUP_DESIRED):
            if payload:
                self._adopt_desired(kind, parsed.name, decode_for(kind, payload))
        elif kind is TopicKind.API:
            if self._synced:
                await self._on_api(parsed.name, payload)
            elif self._held_bytes + len(payload) > HELD_REQUESTS_BYTES:
                await self._api_error(
                    probe_id(payload),
                    parsed.name,
                    "busy",
                    "the controller is re-reading the fleet and holds enough requests; retry",
                )
            else:
                self._held_requests.append((parsed.name, payload))
                self._held_bytes += len(payload)
        elif (
            kind is TopicKind.SYNC
            and parsed.name == self.client_id
            and decode(Sync, payload).token == self._sync_token
        ):
            self._synced = True
            for part in self.parts:
                await part.on_synced()
            held, self._held_requests, self._held_bytes = self._held_requests, [], 0
            for op_name, request in held:
                await self._on_api(op_name, request)

    def _keep_birth(self, device_id: str, status: Status | State | None, payload: bytes) -> None:
        """Store a birth that says something new (not only a new `ts`: a fleet reconnecting
        after a broker restart writes nothing); a cleared status deletes the device."""
        if status is None:
            self.store.forget_birth(device_id)
            return
        if not isinstance(status, Status) or not status.online:
            return
        rec = self.registry.devices.get(device_id)
        known = rec.birth if rec is not None else None
        if known is None or known.model_copy(update={"ts": None}) != status.model_copy(
            update={"ts": None}
        ):
            self.store.save_birth(device_id, payload)

    def _adopt_desired(self, kind: TopicKind, name: str, doc: Desired) -> None:
        """A retained doc seen on the wire: keep revs ahead of it, and keep it if we lost it."""
        self.store.raise_rev_floor(doc.rev)
        scope = "dev" if kind is TopicKind.DESIRED else "grp"
        known = self.store.desired_rev(scope, name)
        if known is None or known < doc.rev:
            self.store.save_desired(scope, name, doc)

    async def _device_changed(self, device_id: str, presence_changed: bool) -> None:
        for tracker in self._desired_trackers:
            if device_id in tracker.target_set:
                tracker.observe(device_id, self.registry)
        rec = self.registry.devices.get(device_id)
        if presence_changed and rec is not None and self._synced:
            await self.emit(
                FleetEvent(
                    ts=time.time(),
                    kind=EventKind.ONLINE if rec.online else EventKind.OFFLINE,
                    device=device_id,
                )
            )
        for part in self.parts:
            await part.on_device_changed(device_id, presence_changed)
        if self._synced and self._ended_revs:
            self._end_late_follower(device_id)
        if presence_changed and rec is not None and rec.online:
            # Commands held while it was offline go out now, unless they went stale.
            for job in list(self._jobs.values()):
                if job.device == device_id and job.status is DeviceOutcome.QUEUED:
                    await self._send_job(job)
        await self._finish_done()

    # --- desired state ------------------------------------------------------------------------
    def _desired_topic(self, scope: str, name: str) -> str:
        return self.topics.desired(name) if scope == "dev" else self.topics.group_desired(name)

    async def _publish_desired(self, scope: str, name: str, doc: Desired) -> None:
        if self._client is None:
            return  # re-asserted on the next connect
        await self._client.publish(
            self._desired_topic(scope, name), encode(doc), qos=1, retain=True
        )

    async def write_desired(
        self,
        scope: str,
        name: str,
        meeting: MeetingIntent | None,
        op: str | None = None,
        request: ApiRequest | None = None,
    ) -> Desired:
        if meeting is not None:
            for part in self.parts:
                await part.before_intent(meeting.room, request)
        doc = self.store.write_desired(scope, name, meeting, time.time())
        await self._publish_desired(scope, name, doc)
        await self.emit(
            FleetEvent(
                ts=doc.ts or time.time(),
                kind=EventKind.JOIN if meeting else EventKind.LEAVE,
                device=name if scope == "dev" else None,
                group=name if scope == "grp" else None,
                room=meeting.room if meeting else None,
                op=op,
                rev=doc.rev,
            )
        )
        return doc

    async def _expire_meetings(self, now: float) -> None:
        """End every intent whose `until` passed, without touching later intents.

        Each lapse is one change in the store (Store.lapse): its targets with no newer
        intent (`_lapse_followers`) get a leave of their own, with revs allocated
        together, before any await, and the lapsed doc stays, marked ended. So an intent
        written while the leaves go out has a higher rev than all of them, and a crash
        half way leaves the store whole: the next connect re-asserts every leave. A
        group-wide leave with a fresh rev would outrank, and so interrupt, any newer
        intent a device got since (a `join` of one device during a `join-all --for`);
        the kept doc instead outranks the older ones of a device unknown now.
        """
        for rec in self.store.lapsed(now):
            followers = self._lapse_followers(rec)
            leaves = self.store.lapse(rec, followers, now)
            if leaves is None:
                continue  # replaced since it was read: the next tick sees the new one
            self._ended_revs = self.store.ended_revs()
            log.info(
                "intent rev %d for %s/%s lapsed: %d device(s) told to leave",
                rec.doc.rev,
                rec.scope,
                rec.name,
                len(leaves),
            )
            self._publish_leaves(followers, leaves)
            await self.emit(
                FleetEvent(
                    ts=now,
                    kind=EventKind.LEAVE,
                    device=rec.name if rec.scope == "dev" else None,
                    group=rec.name if rec.scope == "grp" else None,
                    op="expiry",
                    rev=leaves[-1].rev if leaves else rec.doc.rev,
                    detail=f"rev {rec.doc.rev} lapsed; {len(leaves)} device(s) told to leave",
                )
            )

    def _publish_leaves(self, devices: list[str], leaves: list[Desired]) -> None:
        if self._client is not None:
            for device_id, leave in zip(devices, leaves, strict=True):
                publish_nowait(self._client, self.topics.desired(device_id), encode(leave), 1, True)

    def _end_late_follower(self, device_id: str) -> None:
        """A device that shows up in the meeting of an ended intent (one without a set clock,
        unknown to us at the lapse) is told to leave, unless it has a newer intent."""
        rec = self.registry.devices.get(device_id)
        if rec is None or rec.room is None or rec.rev not in self._ended_revs:
            return
        if self._has_newer_intent(device_id, rec.rev, self.store.desired_revs()):
            return
        leave = self.store.write_desired("dev", device_id, None, time.time())
        log.info("%s is in the meeting of ended rev %d: told to leave", device_id, rec.rev)
        self._publish_leaves([device_id], [leave])

    def _lapse_followers(self, lapsed: DesiredRecord) -> list[str]:
        """The devices a lapse tells to leave: its targets (and whoever reports its rev)
        that have no newer intent, judged by what we wrote, not by what they report yet:
        a device that has not yet reported a newer `join` must not be pulled out of it."""
        rev = lapsed.doc.rev
        devices = self.registry.devices
        if lapsed.scope == "grp":
            targets = {r.id for r in self.registry.targets(lapsed.name)}
            targets.update(d for d, r in devices.items() if r.rev == rev)
        else:
            targets = {lapsed.name}
        newest = self.store.desired_revs()
        newest.pop((lapsed.scope, lapsed.name), None)
        return sorted(t for t in targets if not self._has_newer_intent(t, rev, newest))

    def _has_newer_intent(
        self, device_id: str, rev: int, newest: dict[tuple[str, str], int]
    ) -> bool:
        """Whether a doc newer than `rev` applies to the device (or it reports one)."""
        rec = self.registry.devices.get(device_id)
        if rec is not None and (rec.rev or 0) > rev:
            return True
        groups = rec.groups if rec is not None else []
        return (
            newest.get(("dev", device_id), 0) > rev
            or newest.get(("grp", "all"), 0) > rev
            or any(newest.get(("grp", g), 0) > rev for g in groups)
        )

    # --- the automation API -------------------------------------------------------------------
    async def _on_api(self, op_name: str, payload: bytes) -> None:
        try:
            op = ApiOp(op_name)
        except ValueError:
            await self._api_error(
                probe_id(payload), op_name, "unknown_op", f"unknown API op {op_name!r}"
            )
            return
        try:
            request = api_request_from_payload(op, payload)
        except ProtocolError as exc:
            await self._api_error(probe_id(payload), op.value, "bad_request", exc.reason)
            return
        await self.submit(op, request)

    async def _run_api(self, op: ApiOp, request: ApiRequest) -> None:
        if request.id is None:
            request = request.model_copy(update={"id": uuid.uuid4().hex[:12]})
        elif self.store.operation_exists(request.id):
            # A reused id would merge two actions into one audit row and leave the first
            # without a final result: refused, and the first one's row left as it is.
            await self._api_error(
                request.id,
                op.value,
                "duplicate_id",
                f"id {request.id!r} names an earlier request; every request needs its own",
                record=False,
            )
            return
        self.store.save_operation(request.id or "", op.value, encode(request).decode(), rev=None)
        for part in self.parts:
            handler = part.api_ops().get(op)
            if handler is not None:
                result = await handler(request)
                await self._publish_result(result.model_copy(update={"id": request.id}))
                return
        if op in (ApiOp.JOIN_ALL, ApiOp.LEAVE_ALL, ApiOp.JOIN, ApiOp.LEAVE):
            await self._start_desired_op(op, request)
        elif op is ApiOp.CMD:
            await self._start_command(request)
        elif op is ApiOp.DEVICES:
            await self._publish_result(inventory(self.registry, request))
        else:
            await self._api_error(
                request.id, op.value, "unknown_op", f"no part serves {op.value!r}"
            )

    async def _start_desired_op(self, op: ApiOp, request: ApiRequest) -> None:
        if op in (ApiOp.JOIN, ApiOp.LEAVE):
            device = request.device or ""
            if device not in self.registry.devices:
                await self._api_error(
                    request.id,
                    op.value,
                    "unknown_device",
                    f"unknown device {device!r}: it never announced itself",
                )
                return
            scope, name, targets, group = "dev", device, [device], None
        else:
            scope, name, group = "grp", request.group, request.group
            targets = [rec.id for rec in self.registry.targets(request.group)]
        meeting = None
        until = None
        if op in (ApiOp.JOIN_ALL, ApiOp.JOIN):
            assert request.room is not None
            until = time.time() + request.for_s if request.for_s else None
            meeting = MeetingIntent(room=request.room, mic=request.mic, until=until)
        doc = await self.write_desired(scope, name, meeting, op=op.value, request=request)
        tracker = DesiredTracker.start(
            op,
            request,
            doc.rev,
            targets,
            self.registry,
            room=request.room if meeting else None,
            group=group,
            until=until,
        )
        self.store.save_operation(request.id or "", op.value, encode(request).decode(), doc.rev)
        await self._publish_result(tracker.result(self.registry, final=False))
        self._desired_trackers.append(tracker)
        await self._finish_done()

    async def _start_command(self, request: ApiRequest) -> None:
        device = request.device or ""
        rec = self.registry.devices.get(device)
        if rec is None:
            await self._api_error(
                request.id,
                ApiOp.CMD.value,
                "unknown_device",
                f"unknown device {device!r}: it never announced itself",
            )
            return
        now = time.time()
        job = Job(
            id=request.id or uuid.uuid4().hex[:12],
            device=device,
            op=request.cmd_op or "",
            args=dict(request.args),
            ttl_ms=request.ttl_ms,
            created=now,
            expires=now + request.ttl_ms / 1000,
        )
        if job.op == CommandOp.SET_GROUPS.value and self.credentials is not None:
            await self._grant_groups(job)
        self.store.save_job(job)  # first: a job the log cannot hold is never sent
        self._jobs[job.id] = job
        tracker = CommandTracker(request, job, online=rec.online)
        if rec.online:
            await self._send_job(job)
        await self._publish_result(tracker.result(final=False))
        self._command_trackers.append(tracker)

    async def _grant_groups(self, job: Job) -> None:
        groups = job.args.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            return  # the device refuses it with bad_args
        assert self.credentials is not None
        try:
            # In a thread: it rewrites the whole credentials file (~0.1 s at 20,000 users).
            await asyncio.to_thread(
                self.credentials.set_groups, job.device, [g for g in groups if g != "all"]
            )
        except Exception as exc:  # the device then fails to subscribe and says so
            log.warning("could not grant groups %s to %s: %s", groups, job.device, exc)

    async def _send_job(self, job: Job) -> None:
        if self._client is None or time.time() >= job.expires:
            return
        cmd = Command(
            id=job.id,
            op=job.op,
            args=job.args,
            ttl_ms=max(1, int((job.expires - time.time()) * 1000)),
            ts=time.time(),
        )
        # MQTT 5: the broker drops the command once its ttl passed (a device back from a
        # network drop with its session queue must not reboot an hour late).
        await publish(
            self._client,
            self.topics.cmd(job.device),
            encode(cmd),
            qos=1,
            expiry_s=cmd.ttl_ms / 1000,
        )
        job.status = DeviceOutcome.SENT
        self.store.save_job(job)

    async def _on_ack(self, device_id: str, ack: Ack) -> None:
        job = self._jobs.get(ack.id)
        if job is None or job.device != device_id or job.final:
            log.debug("ack %s from %s matches no open job", ack.id, device_id)
            return
        if not ack.done:
            job.status = DeviceOutcome.DELIVERED
        elif ack.ok:
            job.status = DeviceOutcome.SUCCEEDED
        elif ack.code in REJECT_CODES:
            job.status = DeviceOutcome.REJECTED
        else:
            job.status = DeviceOutcome.FAILED
        job.code = ack.code.value
        job.detail = ack.detail or job.detail
        job.result = ack.result if ack.result is not None else job.result
        self.store.save_job(job)
        if job.final:
            self._jobs.pop(job.id, None)
            await self._job_event(job)
        await self._finish_done()

    # --- results ------------------------------------------------------------------------------
    async def _finish_done(self) -> None:
        """Publish the final result of every tracker that converged or timed out.

        Finished trackers are detached before the first await, so the tick loop
        and a message handler can never both publish the same final result.
        """
        mono = time.monotonic()
        finals: list[ApiResult] = []
        open_desired: list[DesiredTracker] = []
        for tracker in self._desired_trackers:
            if tracker.done or mono >= tracker.deadline:
                finals.append(tracker.result(self.registry, final=True))
            else:
                open_desired.append(tracker)
        self._desired_trackers = open_desired
        open_commands: list[CommandTracker] = []
        for ctracker in self._command_trackers:
            if ctracker.done:
                finals.append(ctracker.result(final=True))
            else:
                open_commands.append(ctracker)
        self._command_trackers = open_commands
        for result in finals:
            await self._publish_result(result)

    async def _publish_result(self, result: ApiResult, record: bool = True) -> None:
        if record and result.done and result.id:
            self.store.save_operation(result.id, result.op, "", result.rev, encode(result).decode())
        if self._client is not None:
            reply = self._replies.get(result.id or "")
            if reply is None:
                await self._client.publish(self.topics.api_result, encode(result), qos=1)
                return
            if result.done:
                del self._replies[result.id or ""]
            await publish(self._client, reply.topic, encode(result), correlation=reply.correlation)

    async def _api_error(
        self, request_id: str | None, op: str, code: str, detail: str, record: bool = True
    ) -> None:
        log.warning("API %s refused: %s", op, detail)
        self.stats["rejected"] += 1
        await self.emit(
            FleetEvent(
                ts=time.time(),
                kind=EventKind.ERROR,
                op=op[:256],
                ok=False,
                code=code,
                detail=detail[:256],
            )
        )
        await self._publish_result(
            ApiResult(id=request_id, op=op[:256], ok=False, code=code, detail=detail[:256]),
            record=record,
        )

    # --- for parts ----------------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = False
    ) -> bool:
        """Queue a publish on the controller's link; False (nothing sent) while disconnected.

        Not awaited to its PUBACK unless `wait`: parts publish from message handlers, and
        paho resends an unacknowledged QoS 1 message by itself.
        """
        if self._client is None:
            return False
        if wait:
            await self._client.publish(topic, payload, qos=qos, retain=retain)
        else:
            publish_nowait(self._client, topic, payload, qos=qos, retain=retain)
        return True

    @property
    def converging(self) -> bool:
        """A desired-state operation is still waiting for devices: work that can wait
        (Home Assistant's room lists) stays out of its way."""
        return bool(self._desired_trackers)

    @property
    def synced(self) -> bool:
        """The retained fleet has been read since the last (re)connect."""
        return self._synced

    async def submit(self, op: ApiOp, request: ApiRequest) -> None:
        """Run an API request as if it came on api/{op}; its results go to api/result."""
        try:
            await self._run_api(op, request)
        except FleetError as exc:
            await self._api_error(request.id, op.value, "failed", str(exc))

    async def emit(self, event: FleetEvent) -> None:
        """Publish a fleet event and hand it to every part."""
        for part in self.parts:
            try:
                await part.on_event(event)
            except Exception:
                log.exception("part %s failed on event %s", part.name, event.kind)
        if self._client is not None:
            # Not awaited: an event is a record, and Python 3.11's wait_for (inside aiomqtt's
            # publish) can swallow a cancellation that lands as the PUBACK arrives.
            try:
                publish_nowait(self._client, self.topics.events, encode(event), qos=1)
            except aiomqtt.MqttError as exc:
                log.debug("event %s not published: %s", event.kind, exc)

    async def _job_event(self, job: Job) -> None:
        await self.emit(
            FleetEvent(
                ts=time.time(),
                kind=EventKind.COMMAND,
                device=job.device,
                op=job.op[:256],
                ok=job.status is DeviceOutcome.SUCCEEDED,
                code=job.code,
                detail=job.detail[:256] if job.detail else None,
            )
        )

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
        for job in list(self._jobs.values()):
            if now >= job.expires and not job.final:
                job.status = DeviceOutcome.TIMED_OUT
                job.code = "timed_out"
                job.detail = f"no final ack within {job.ttl_ms} ms"
                self.store.save_job(job)
                self._jobs.pop(job.id, None)
                await self._job_event(job)
        if self._synced:
            # Only on the whole retained fleet: a partial registry would miss followers.
            await self._expire_meetings(now)
        await self._finish_done()
