"""Announcements: the controller part that renders one, sends it to its targets and
follows each device to its outcome (docs/protocol.md §14).

An `announce` request is rendered once (chime + speech, or a WAV; encoded once per codec
its targets need, fleet.announce.render), then per target device: `offline` if it is
not online, `skipped` if its own desired doc says do-not-disturb and the announcement is
not urgent, else it goes into the device's queue (fleet.announce.queue). When its turn
comes the controller sends the `announce` command on dev/{id}/cmd, then the audio on
dev/{id}/ann: the first second of chunks at once, the rest paced to stay about a second
ahead of real time (a device buffers ~1.2 s at most). The device's acks end it: `ok`
played, `failed` otherwise; no final ack within its ttl fails it too.

The request is answered at once with `done: false` (every target `queued`, `skipped` or
`offline`) and finally, like join-all, with every target's outcome.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fleet.announce.queue import DeviceQueue
from fleet.announce.render import Clip, Renderer, RenderError
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError, RequestRefused
from fleet.protocol import TopicKind, encode
from fleet.protocol.messages import (
    MAX_ANNOUNCE_TEXT,
    MAX_LISTED_DEVICES,
    MAX_SOUND_BYTES,
    Ack,
    AckCode,
    AnnounceArgs,
    AnnounceChunk,
    AnnounceCodec,
    ApiOp,
    ApiRequest,
    ApiResult,
    Command,
    CommandOp,
    DeviceOutcome,
    DeviceResult,
    EventKind,
    FleetEvent,
    Priority,
    decode,
)

log = logging.getLogger(__name__)

CHUNK_FRAMES = 10  # 200 ms a chunk
CHUNK_S = CHUNK_FRAMES * 0.020
LEAD_S = 1.0  # how far ahead of real time the audio is sent
TTL_GRACE_MS = 10_000  # the command's ttl: the clip's length and this
TICK_S = 0.1
FINAL_OUTCOMES = frozenset(
    {DeviceOutcome.PLAYED, DeviceOutcome.SKIPPED, DeviceOutcome.OFFLINE, DeviceOutcome.FAILED}
)


class RoomView(Protocol):
    """The meeting server's public view of a room, as far as announcements need it."""

    def room_members(self, room: str) -> list[str] | None:
        """The pids in the room's live session ([] when none is live); None: no such room."""
        ...


@dataclass(eq=False)
class Delivery:
    """One announcement to one device."""

    announcement: Announcement
    device: str
    codec: AnnounceCodec
    online: bool
    command_id: str = field(default_factory=lambda: f"ann-{uuid.uuid4().hex[:12]}")
    outcome: DeviceOutcome = DeviceOutcome.QUEUED
    code: str | None = None
    detail: str | None = None
    played_ms: int | None = None
    deadline: float = float("inf")  # time.monotonic() by which its final ack is due
    ttl_ms: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def priority(self) -> Priority:
        return self.announcement.priority

    @property
    def final(self) -> bool:
        return self.outcome in FINAL_OUTCOMES

    def result(self) -> DeviceResult:
        return DeviceResult(
            device=self.device,
            outcome=self.outcome,
            online=self.online,
            code=self.code,
            detail=self.detail,
            result={"played_ms": self.played_ms} if self.played_ms is not None else None,
        )


@dataclass(eq=False)
class Announcement:
    id: str
    request: ApiRequest
    priority: Priority
    clip: Clip
    chunks: dict[AnnounceCodec, list[bytes]]  # encoded AnnounceChunk payloads per codec
    deliveries: list[Delivery] = field(default_factory=list)
    accepted_at: float = field(default_factory=time.monotonic)
    reported: bool = False

    @property
    def done(self) -> bool:
        return all(d.final for d in self.deliveries)

    def result(self, *, final: bool) -> ApiResult:
        counts: dict[str, int] = {}
        for d in self.deliveries:
            counts[d.outcome.value] = counts.get(d.outcome.value, 0) + 1
        listed = [d.result() for d in self.deliveries[:MAX_LISTED_DEVICES]]
        failed = counts.get(DeviceOutcome.FAILED.value, 0)
        if not final:
            code, ok = "accepted", True
        elif failed:
            code, ok = "failed", False
        else:
            code, ok = "ok", True
        total = len(self.deliveries)
        detail = (
            f"{total} devices: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            if total
            else "no devices targeted"
        )
        return ApiResult(
            id=self.request.id,
            op=ApiOp.ANNOUNCE.value,
            ok=ok,
            done=final,
            code=code,
            detail=detail,
            room=self.request.room,
            group=self.request.group if self.request.group != "all" else None,
            devices=listed,
            omitted=total - len(listed),
            counts=counts,
            ann=self.id,
        )


class AnnouncePart(ControllerPart):
    name = "announce"

    def __init__(self, renderer: Renderer | None = None, rooms: RoomView | None = None) -> None:
        self.renderer = renderer or Renderer()
        self.rooms = rooms
        self._queues: dict[str, DeviceQueue[Delivery]] = {}
        self._by_command: dict[str, Delivery] = {}
        self._open: list[Announcement] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the part -----------------------------------------------------------------------------
    def subscriptions(self) -> Mapping[str, int]:
        return {self.host.topics.all_devices(TopicKind.ACK): 1}

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        return {ApiOp.ANNOUNCE: self.announce}

    async def on_message(self, topic: str, payload: bytes) -> None:
        parsed = self.host.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.ACK or not payload:
            return
        try:
            ack = decode(Ack, payload)
        except ProtocolError:
            return  # the controller's commands module says so
        delivery = self._by_command.get(ack.id)
        if delivery is None or delivery.device != parsed.name:
            return  # another module's command
        await self._on_ack(delivery, ack)

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        if not presence_changed:
            return
        rec = self.host.registry.devices.get(device_id)
        if rec is not None and rec.online:
            return
        queue = self._queues.pop(device_id, None)
        for delivery in queue.drain() if queue is not None else []:
            started = delivery.outcome is not DeviceOutcome.QUEUED
            self._end(
                delivery,
                DeviceOutcome.OFFLINE,
                detail="went offline while playing" if started else "went offline",
            )
            delivery.online = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick()
            except Exception:  # one bad tick must not end the part
                log.exception("announcements: tick failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- the API op ---------------------------------------------------------------------------
    async def announce(self, request: ApiRequest) -> ApiResult:
        text, sound = _content(request)
        targets = self._targets(request)
        registry = self.host.registry.devices
        ann_id = f"a{uuid.uuid4().hex[:11]}"
        plan: list[tuple[str, bool, DeviceOutcome | None, AnnounceCodec, str | None]] = []
        for device in targets:
            rec = registry.get(device)
            online = rec is not None and rec.online
            codec = _codec_for(
                rec.birth.caps.codecs if rec and rec.birth and rec.birth.caps else []
            )
            if not online:
                plan.append((device, False, DeviceOutcome.OFFLINE, AnnounceCodec.OPUS, None))
            elif codec is None:
                why = "the device decodes neither opus nor pcmu"
                plan.append((device, True, DeviceOutcome.FAILED, AnnounceCodec.OPUS, why))
            elif (
                request.priority is not Priority.URGENT and self.host.store.own_dnd(device) is True
            ):
                plan.append((device, True, DeviceOutcome.SKIPPED, codec, "do-not-disturb"))
            else:
                plan.append((device, True, None, codec, None))
        codecs = {codec for _, _, outcome, codec, _ in plan if outcome is None}
        try:
            clip = await self.renderer.render(
                text=text,
                sound=sound,
                chime_first=request.chime,
                codecs=sorted(codecs) or [AnnounceCodec.OPUS],
            )
        except RenderError as exc:
            raise RequestRefused("bad_request", str(exc)) from exc
        announcement = Announcement(
            id=ann_id,
            request=request,
            priority=request.priority,
            clip=clip,
            chunks={
                c: _chunks(ann_id, c, frames, request.priority) for c, frames in clip.frames.items()
            },
        )
        for device, online, outcome, codec, detail in plan:
            delivery = Delivery(announcement, device, codec, online)
            if outcome is not None:
                delivery.outcome, delivery.detail = outcome, detail
                if outcome is DeviceOutcome.FAILED:
                    delivery.code = "no_codec"
            announcement.deliveries.append(delivery)
        log.info(
            "announcement %s (%s, %d ms) to %d device(s)",
            ann_id,
            request.priority.value,
            clip.duration_ms,
            len(plan),
        )
        for delivery in announcement.deliveries:
            if not delivery.final:
                self._offer(delivery)
        if announcement.done:
            announcement.reported = True
            await self._emit(announcement)
            return announcement.result(final=True)
        self._open.append(announcement)
        return announcement.result(final=False)

    def _targets(self, request: ApiRequest) -> list[str]:
        named = [
            n
            for n, given in (
                ("device", request.device is not None),
                ("group", request.group != "all"),
                ("room", request.room is not None),
            )
            if given
        ]
        if len(named) > 1:
            raise RequestRefused(
                "bad_request", f"name one target (device, group or room), not {' and '.join(named)}"
            )
        registry = self.host.registry
        if request.device is not None:
            if request.device not in registry.devices:
                raise RequestRefused(
                    "unknown_device",
                    f"unknown device {request.device!r}: it never announced itself",
                )
            return [request.device]
        if request.room is not None:
            members = self.rooms.room_members(request.room) if self.rooms is not None else None
            if members is None:
                raise RequestRefused("unknown_room", f"no room named {request.room!r}")
            return sorted(p for p in set(members) if p in registry.devices)
        return sorted(d for d, rec in registry.devices.items() if rec.in_group(request.group))

    # --- a device's queue ---------------------------------------------------------------------
    def _offer(self, delivery: Delivery) -> None:
        queue = self._queues.setdefault(delivery.device, DeviceQueue())
        offered = queue.offer(delivery)
        if offered.interrupted is not None:
            # The device stops it when the new command comes and fails it so; said here
            # at once, so the result does not wait for that ack.
            self._end(
                offered.interrupted,
                DeviceOutcome.FAILED,
                code=AckCode.FAILED.value,
                detail=f"interrupted by {delivery.announcement.id}",
                advance=False,
            )
        if offered.start:
            self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._send(delivery), name=f"announce-{delivery.device}")
        delivery.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, delivery: Delivery) -> None:
        ann = delivery.announcement
        topics = self.host.topics
        duration_ms = ann.clip.duration_ms
        ttl_ms = duration_ms + TTL_GRACE_MS
        args = AnnounceArgs(ann=ann.id, priority=ann.priority, duration_ms=duration_ms)
        command = Command(
            id=delivery.command_id,
            op=CommandOp.ANNOUNCE.value,
            args=args.model_dump(mode="json"),
            ttl_ms=ttl_ms,
            ts=time.time(),
        )
        self._by_command[delivery.command_id] = delivery
        delivery.deadline = time.monotonic() + ttl_ms / 1000
        delivery.ttl_ms = ttl_ms
        if not await self.host.publish(topics.cmd(delivery.device), encode(command), qos=1):
            self._end(delivery, DeviceOutcome.FAILED, detail="the controller is not connected")
            return
        delivery.outcome = DeviceOutcome.SENT
        # Same connection, QoS 1: the command arrives before chunk 0.
        topic = topics.announce(delivery.device)
        started = time.monotonic()
        for n, payload in enumerate(ann.chunks[delivery.codec]):
            delay = started + n * CHUNK_S - LEAD_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if delivery.final:
                return
            if not await self.host.publish(topic, payload, qos=1):
                self._end(delivery, DeviceOutcome.FAILED, detail="the controller lost its link")
                return

    async def _on_ack(self, delivery: Delivery, ack: Ack) -> None:
        if delivery.final:
            return
        if not ack.done:
            delivery.outcome = DeviceOutcome.DELIVERED
            return
        result = ack.result or {}
        played = result.get("played_ms")
        if isinstance(played, int) and not isinstance(played, bool):
            delivery.played_ms = played
        if ack.ok:
            self._end(
                delivery, DeviceOutcome.PLAYED, code=ack.code.value, detail=ack.detail or None
            )
        else:
            self._end(
                delivery, DeviceOutcome.FAILED, code=ack.code.value, detail=ack.detail or None
            )

    def _end(
        self,
        delivery: Delivery,
        outcome: DeviceOutcome,
        code: str | None = None,
        detail: str | None = None,
        advance: bool = True,
    ) -> None:
        """`delivery` reached its outcome: its sending stops, and the device's next starts."""
        if delivery.final:
            return
        delivery.outcome, delivery.code, delivery.detail = outcome, code, detail
        self._by_command.pop(delivery.command_id, None)
        task = delivery.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if not advance:
            return
        queue = self._queues.get(delivery.device)
        if queue is None:
            return
        following = queue.finished(delivery)
        if following is not None:
            self._start(following)
        if queue.idle:
            self._queues.pop(delivery.device, None)

    # --- time ---------------------------------------------------------------------------------
    async def _tick(self) -> None:
        now = time.monotonic()
        for delivery in list(self._by_command.values()):
            if now >= delivery.deadline:
                self._end(
                    delivery,
                    DeviceOutcome.FAILED,
                    code="timed_out",
                    detail=f"no final ack within {delivery.ttl_ms} ms",
                )
        still: list[Announcement] = []
        for announcement in self._open:
            # A tick after its acceptance at least: the acceptance goes out first.
            if announcement.done and now - announcement.accepted_at >= TICK_S:
                announcement.reported = True
                await self.host.publish_result(announcement.result(final=True))
                await self._emit(announcement)
            else:
                still.append(announcement)
        self._open = still

    async def _emit(self, announcement: Announcement) -> None:
        result = announcement.result(final=True)
        await self.host.emit(
            FleetEvent(
                ts=time.time(),
                kind=EventKind.ANNOUNCE,
                op=ApiOp.ANNOUNCE.value,
                ok=result.ok,
                code=result.code,
                detail=f"{announcement.id}: {result.detail}"[:256],
            )
        )


def _content(request: ApiRequest) -> tuple[str | None, bytes | None]:
    """The text or the sound of an announce request, checked."""
    if (request.text is None) == (request.sound_b64 is None):
        raise RequestRefused("bad_request", "an announcement needs text or sound_b64, not both")
    if request.text is not None:
        text = request.text.strip()
        if not text:
            raise RequestRefused("bad_request", "the text is empty")
        if len(text) > MAX_ANNOUNCE_TEXT:
            raise RequestRefused(
                "bad_request", f"the text is {len(text)} characters; at most {MAX_ANNOUNCE_TEXT}"
            )
        return text, None
    assert request.sound_b64 is not None
    try:
        sound = base64.b64decode(request.sound_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestRefused("bad_request", f"sound_b64 is not base64: {exc}") from exc
    if len(sound) > MAX_SOUND_BYTES:
        raise RequestRefused(
            "bad_request", f"the sound is {len(sound)} bytes; at most {MAX_SOUND_BYTES}"
        )
    return None, sound


def _codec_for(codecs: list[str]) -> AnnounceCodec | None:
    """Opus where the device has it (or names none: every fleet device decodes it), else
    G.711 mu-law; None when it has neither."""
    names = {c.lower() for c in codecs}
    if not names or "opus" in names:
        return AnnounceCodec.OPUS
    if "pcmu" in names:
        return AnnounceCodec.PCMU
    return None


def _chunks(ann: str, codec: AnnounceCodec, frames: list[bytes], priority: Priority) -> list[bytes]:
    """The clip's chunk payloads for one codec: the same bytes for every device."""
    encoded = [base64.b64encode(f).decode() for f in frames]
    groups = [encoded[n : n + CHUNK_FRAMES] for n in range(0, len(encoded), CHUNK_FRAMES)]
    return [
        encode(
            AnnounceChunk(
                ann=ann,
                seq=seq,
                codec=codec,
                frames=group,
                last=seq == len(groups) - 1,
                priority=priority,
            )
        )
        for seq, group in enumerate(groups)
    ]
