"""The simulated ESP device: exactly the device side of the protocol.

Birth and LWT on its retained status topic; subscribes its own desired doc,
`grp/all` and its groups' docs; applies the highest rev and reports it in its
retained state; answers commands idempotently by id; sends telemetry. Many of
them share one process and one event loop (`SimFleet`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from fleet.device.reconciler import Applied, Reconciler
from fleet.errors import FleetError, ProtocolError
from fleet.mqtt import (
    BrokerUrl,
    LastWill,
    RestartLink,
    payload_bytes,
    publish_nowait,
    run_link,
)
from fleet.protocol import TopicKind, Topics, decode, encode, is_valid_id
from fleet.protocol.constants import CALL_ROOM_PREFIX
from fleet.protocol.messages import (
    Ack,
    AckCode,
    AnnounceArgs,
    AnnounceChunk,
    ApiOp,
    ApiRequest,
    Capabilities,
    Command,
    CommandOp,
    Desired,
    MeetingIntent,
    MeetingState,
    PeerAudioStats,
    RingArgs,
    State,
    Status,
    SystemTelemetry,
    Telemetry,
    TelemetryMeeting,
    WifiTelemetry,
    probe_id,
)

if TYPE_CHECKING:
    from fleet.device.announce import AnnouncePlayer
    from fleet.media.sinks import AudioSink, CaptureSink

log = logging.getLogger(__name__)

FIRMWARE_VERSION = "sim-0.1.0"
HARDWARE = "sim-esp32s3"
ACK_CACHE_SIZE = 64  # recent command ids answered again without running twice
REBOOT_DELAY_S = 0.5
MAX_IDENTIFY_S = 300
ANNOUNCE_KEEP_S = 30.0  # seconds of announcements a device without meeting audio keeps
GROUP_TARGET = "group:"  # a call button's target that names a group


class MeetingDriver:
    """How a device takes part in a meeting. This one joins nothing: the state names the room.

    `fleet.device.audio.AudioMeetingDriver` signals through the meeting server and
    streams real audio; it waits for the server, so its joins run outside the
    MQTT message loop (`waits_for_server`).
    """

    waits_for_server = False
    _speaker: CaptureSink | None = None

    def attach(self, device: SimulatedDevice) -> None:
        """Called once by the device that owns this driver."""

    def speaker(self) -> AudioSink:
        """Where the device plays what is not the meeting (announcements): here a capture
        of the last ANNOUNCE_KEEP_S seconds (`heard`), made on first use."""
        if self._speaker is None:
            from fleet.media.sinks import CaptureSink

            self._speaker = CaptureSink(keep_s=ANNOUNCE_KEEP_S)
        return self._speaker

    def duck(self, on: bool) -> None:
        """An announcement starts (on) or ends: the meeting's audio is lowered meanwhile."""

    async def join(self, intent: MeetingIntent) -> MeetingState:
        return MeetingState(room=intent.room)

    async def leave(self) -> None:
        return None

    async def forget(self) -> None:
        """Drop the meeting locally, with no word to the server (a reboot, a lost link)."""

    def on_down(self, payload: bytes) -> None:
        """A message on the device's meet/{id}/down."""

    def set_audio(self, mic: bool, volume: int | None) -> None:
        """The applied intent's mic and speaker volume."""

    def ring(self, seconds: int) -> None:
        """Play the ring tone, generated here, for `seconds` (0: stop it)."""

    def audio_stats(self) -> list[PeerAudioStats]:
        return []

    def capabilities(self) -> Capabilities | None:
        """What the device announces in its birth; None: the configured ones."""
        return None

    async def close(self) -> None:
        """The device is stopping."""


@dataclass
class SimDeviceConfig:
    """What one simulated device is given: its identity, groups, telemetry period and
    capabilities (a real device's NVS values are `fleet.provisioning.DeviceConfig`)."""

    device_id: str
    secret: str
    groups: list[str] = field(default_factory=list)
    tele_interval_s: float = 10.0
    caps: Capabilities = field(default_factory=Capabilities)
    # Whom its call button calls, as the firmware's NVS `call_to`: a device id, or
    # `group:NAME` for every device of a group.
    call_to: str | None = None


class SimulatedDevice:
    def __init__(
        self,
        config: SimDeviceConfig,
        url: BrokerUrl,
        topics: Topics | None = None,
        driver: MeetingDriver | None = None,
        seed: int | None = None,
    ) -> None:
        if not is_valid_id(config.device_id):
            raise ValueError(f"invalid device id {config.device_id!r}")
        self.config = config
        self.id = config.device_id
        self.url = url.with_credentials(config.device_id, config.secret)
        self.topics = topics or Topics()
        self.driver = driver or MeetingDriver()
        self.driver.attach(self)
        self.groups = list(dict.fromkeys(config.groups))
        self.reconciler = Reconciler()
        # False plays a board before its first SNTP sync: it ignores `until` (section 4.3).
        self.clock_set = True
        # The rev the state reports: the applied one once applying it is done, not before
        # (a state sent mid-join or mid-leave must not claim the new intent holds).
        self.reported_rev = 0
        self.meeting: MeetingState | None = None
        self.mic = True
        self.volume: int | None = None
        self.error: str | None = None
        self.dnd = False  # do-not-disturb, from its own desired doc (§14)
        self._announcer: AnnouncePlayer | None = None
        self.fw = FIRMWARE_VERSION
        self.connected = asyncio.Event()
        self.booted_at = time.monotonic()
        self.connects = 0
        self.identify_until = 0.0
        self._client: aiomqtt.Client | None = None
        self._acks: OrderedDict[str, Ack] = OrderedDict()
        self._final_after_boot: Ack | None = None
        self._rng = random.Random(seed if seed is not None else hash(self.id))
        self._rssi = -50 - self._rng.randint(0, 25)
        self.state_changes = 0
        self._lapse: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._apply_lock = asyncio.Lock()
        self.ringing: str | None = None  # the call ringing on this device now
        self._ring_end: asyncio.TimerHandle | None = None
        self._requests = 0

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self._announcer is not None:
                await self._announcer.close()
            await self.driver.close()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                run_link(
                    self.url,
                    client_id=self.id,
                    on_connect=self._on_connect,
                    on_message=self._on_message,
                    on_disconnect=self._on_disconnect,
                    on_close=self._publish_offline,
                    will=LastWill(self.topics.status(self.id), encode(Status(online=False))),
                    connected=self.connected,
                ),
                name=f"{self.id}-link",
            )
            tg.create_task(self._periodic(), name=f"{self.id}-periodic")

    def _desired_sources(self) -> list[str]:
        groups = ["all", *(g for g in self.groups if g != "all")]
        return [self.topics.desired(self.id), *(self.topics.group_desired(g) for g in groups)]

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.connects += 1
        await client.publish(self.topics.status(self.id), encode(self._birth()), qos=1, retain=True)
        subs = [(t, 1) for t in self._desired_sources()]
        subs += [(self.topics.cmd(self.id), 1), (self.topics.meet_down(self.id), 1)]
        subs += [(self.topics.announce(self.id), 1)]
        granted = await client.subscribe(subs)
        refused = [t for (t, _), g in zip(subs, granted, strict=False) if _code(g) >= 0x80]
        self.error = f"broker refused: {', '.join(refused)}" if refused else None
        await self._publish_state()
        if self.meeting is not None and self.driver.waits_for_server:
            # The server dropped us when our link went; back in, as the intent says.
            self._spawn(self._rejoin())
        if self._final_after_boot is not None:
            await self._send_ack(self._final_after_boot)
            self._final_after_boot = None

    def _on_disconnect(self) -> None:
        self._client = None

    async def _rejoin(self) -> None:
        async with self._apply_lock:
            intent = self.reconciler.applied.meeting
            await self.driver.forget()
            self.meeting = None
            if intent is not None:
                await self._enter(intent)
            await self._publish_state()

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        await client.publish(
            self.topics.status(self.id), encode(Status(online=False)), qos=1, retain=True
        )

    def _birth(self) -> Status:
        return Status(
            online=True,
            fw=self.fw,
            hw=HARDWARE,
            ip="127.0.0.1",
            caps=self.driver.capabilities() or self.config.caps,
            groups=self.groups,
            ts=time.time(),
        )

    # --- inbound ------------------------------------------------------------------------------
    async def _on_message(self, message: aiomqtt.Message) -> None:
        await self.handle(message.topic.value, payload_bytes(message))

    async def handle(self, topic: str, payload: bytes) -> None:
        """One inbound message, whichever transport brought it (aiomqtt here, bulk.py)."""
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        if parsed.kind in (TopicKind.DESIRED, TopicKind.GROUP_DESIRED):
            await self._on_desired(topic, payload)
        elif parsed.kind is TopicKind.CMD:
            await self._on_command(payload)
        elif parsed.kind is TopicKind.MEET_DOWN:
            self.driver.on_down(payload)
        elif parsed.kind is TopicKind.ANNOUNCE:
            self._on_announce_chunk(payload)

    async def _on_desired(self, topic: str, payload: bytes) -> None:
        try:
            doc = self._decode_desired(payload) if payload else None
        except ProtocolError as exc:
            # Logged and ignored (protocol.md 4.2 rule 2, as the C core): the topic keeps
            # its previous doc and the applied intent stays in effect, so the state's
            # `error` (why the applied intent is not in effect, §5) has nothing to say.
            log.warning("%s: refused desired doc on %s: %s", self.id, topic, exc)
            return
        self.reconciler.offer(topic, doc)
        own = topic == self.topics.desired(self.id)
        # Its own doc's dnd holds whichever doc's rev wins for the meeting (§14).
        if own and doc is not None and doc.dnd is not None and doc.dnd != self.dnd:
            self.dnd = doc.dnd
            self.state_changes += 1
            await self._publish_state()
        await self._reconcile_soon()

    async def _reconcile_soon(self) -> None:
        if self.driver.waits_for_server:
            # A join waits for the server's answer, which this message loop delivers.
            self._spawn(self._reconcile())
        else:
            await self._reconcile()

    def _decode_desired(self, payload: bytes) -> Desired:
        return decode(Desired, payload)

    async def _reconcile(self) -> None:
        async with self._apply_lock:
            change = self.reconciler.reconcile(time.time(), self.clock_set)
            if change is None:
                return
            await self._apply(change)

    async def _apply(self, applied: Applied) -> None:
        intent = applied.meeting
        current = self.meeting.room if self.meeting is not None else None
        if (intent.room if intent is not None else None) != current:
            self._stop_ringing()  # the desired meeting changed: an answer, or a move
        self.error = None
        try:
            if intent is None:
                if self.meeting is not None:
                    await self.driver.leave()
                self.meeting = None
                self.mic, self.volume = True, None  # idle, as the spec's idle state
            else:
                if self.meeting is not None and self.meeting.room != intent.room:
                    await self.driver.leave()
                    self.meeting = None
                await self._enter(intent)
        except Exception as exc:  # a media failure is reported, not fatal
            log.warning("%s: applying rev %d failed: %s", self.id, applied.rev, exc)
            self.error = str(exc)[:256]
        self.reported_rev = applied.rev
        self._arm_lapse(intent)
        self.state_changes += 1
        await self._publish_state()

    async def _enter(self, intent: MeetingIntent) -> None:
        if self.meeting is None:
            self.meeting = await self.driver.join(intent)
        self.mic = intent.mic
        self.volume = intent.volume
        self.driver.set_audio(self.mic, self.volume)

    def meeting_changed(self, meeting: MeetingState | None) -> None:
        """The driver's view moved on (a peer came or went): report it."""
        if self.meeting is None or meeting is None or meeting.session != self.meeting.session:
            return  # a join or leave under way reports when it is done
        if meeting != self.meeting:
            self.meeting = meeting
            self.state_changes += 1
            self._spawn(self._publish_state())

    def _arm_lapse(self, intent: MeetingIntent | None) -> None:
        """Re-check the intent the moment its `until` passes, not at the next tick."""
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None
        if intent is not None and intent.until is not None:
            delay = max(0.0, intent.until - time.time())
            self._lapse = asyncio.get_running_loop().call_later(
                delay, lambda: self._spawn(self._reconcile())
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def current_state(self) -> State:
        return State(
            rev=self.reported_rev,
            meeting=self.meeting,
            mic=self.mic,
            volume=self.volume,
            error=self.error,
            dnd=self.dnd,
            ts=time.time(),
        )

    async def _publish_state(self) -> None:
        if self._client is None:
            return
        publish_nowait(self._client, self.topics.state(self.id), self._state_payload(), 1, True)

    def _state_payload(self) -> bytes:
        return encode(self.current_state())

    # --- commands -----------------------------------------------------------------------------
    async def _on_command(self, payload: bytes) -> None:
        try:
            cmd = decode(Command, payload)
        except ProtocolError as exc:
            command_id = probe_id(payload) or "?"
            refusal = Ack(
                id=command_id, ok=False, code=AckCode.BAD_REQUEST, detail=exc.reason[:256]
            )
            await self._finish_id(command_id, refusal)
            return
        cached = self._acks.get(cmd.id)
        if cached is not None:
            await self._send_ack(cached)  # idempotent: the same answer, nothing runs twice
            return
        if cmd.ts is not None and time.time() > cmd.ts + cmd.ttl_ms / 1000:
            await self._finish(
                cmd,
                Ack(
                    id=cmd.id,
                    ok=False,
                    code=AckCode.EXPIRED,
                    detail="command arrived after its ttl",
                ),
            )
            return
        await self._run_command(cmd)

    async def _run_command(self, cmd: Command) -> None:
        try:
            op = CommandOp(cmd.op)
        except ValueError:
            await self._finish(
                cmd,
                Ack(id=cmd.id, ok=False, code=AckCode.UNKNOWN_OP, detail=f"unknown op {cmd.op!r}"),
            )
            return
        if op is CommandOp.PING:
            await self._finish(
                cmd,
                Ack(
                    id=cmd.id,
                    ok=True,
                    code=AckCode.OK,
                    result={"uptime_s": round(self.uptime_s, 3)},
                ),
            )
        elif op is CommandOp.IDENTIFY:
            seconds = cmd.args.get("seconds")
            seconds = 5 if seconds is None else seconds  # null is absent: the default
            valid = isinstance(seconds, int) and not isinstance(seconds, bool)
            if not valid or not 1 <= seconds <= MAX_IDENTIFY_S:
                await self._bad_args(cmd, f"seconds must be an integer from 1 to {MAX_IDENTIFY_S}")
                return
            self.identify_until = time.monotonic() + seconds
            await self._finish(cmd, Ack(id=cmd.id, ok=True, code=AckCode.OK))
        elif op is CommandOp.SET_GROUPS:
            await self._set_groups(cmd)
        elif op is CommandOp.REBOOT:
            await self._reboot(cmd)
        elif op is CommandOp.OTA:
            await self._ota(cmd)
        elif op is CommandOp.ANNOUNCE:
            await self._announce(cmd)
        elif op is CommandOp.RING:
            await self._ring(cmd)

    # --- announcements (§14) ------------------------------------------------------------------
    @property
    def announcer(self) -> AnnouncePlayer:
        """What plays announcements on this device (made on the first one)."""
        if self._announcer is None:
            from fleet.device.announce import AnnouncePlayer

            self._announcer = AnnouncePlayer(
                self._announce_ack, self.driver.speaker, self.driver.duck
            )
        return self._announcer

    async def _announce(self, cmd: Command) -> None:
        try:
            args = decode(AnnounceArgs, json.dumps(cmd.args), what="announce args")
        except ProtocolError as exc:
            await self._bad_args(cmd, exc.reason[:256])
            return
        await self.announcer.command(cmd.id, args)

    async def _announce_ack(self, ack: Ack) -> None:
        self._remember(ack.id, ack)
        await self._send_ack(ack)

    def _on_announce_chunk(self, payload: bytes) -> None:
        try:
            chunk = decode(AnnounceChunk, payload)
        except ProtocolError as exc:
            log.warning("%s: refused an announcement chunk: %s", self.id, exc)
            return
        self.announcer.chunk(chunk)

    # --- calls (§14.7) ------------------------------------------------------------------------
    async def _ring(self, cmd: Command) -> None:
        try:
            args = decode(RingArgs, json.dumps(cmd.args))
        except ProtocolError as exc:
            await self._bad_args(cmd, exc.reason)
            return
        if args.seconds == 0:
            if self.ringing in (None, args.call):
                self._stop_ringing()
        else:
            self._stop_ringing()
            self.ringing = args.call
            self.driver.ring(args.seconds)
            self._ring_end = asyncio.get_running_loop().call_later(args.seconds, self._stop_ringing)
        await self._finish(cmd, Ack(id=cmd.id, ok=True, code=AckCode.OK))

    def _stop_ringing(self) -> None:
        if self._ring_end is not None:
            self._ring_end.cancel()
            self._ring_end = None
        if self.ringing is not None:
            self.ringing = None
            self.driver.ring(0)

    def in_call(self) -> str | None:
        """The call this device is in (its meeting's room is a call's), if any."""
        room = self.meeting.room if self.meeting is not None else None
        return room if room is not None and room.startswith(CALL_ROOM_PREFIX) else None

    async def press_button(self) -> ApiOp:
        """The call button, as the firmware's: answers the call ringing, hangs up the call
        the device is in, or calls its configured target. The request goes on the
        device's own `api/by/{id}/{op}`; the op it sent is returned."""
        if self.ringing is not None:
            op, request = ApiOp.ANSWER, ApiRequest(device=self.id, call=self.ringing)
        elif (call := self.in_call()) is not None:
            op, request = ApiOp.HANGUP, ApiRequest(device=self.id, call=call)
        elif self.config.call_to is not None:
            target = self.config.call_to
            if target.startswith(GROUP_TARGET):
                request = ApiRequest(device=self.id, group=target.removeprefix(GROUP_TARGET))
            else:
                request = ApiRequest(device=self.id, to=target)
            op = ApiOp.CALL
        else:
            raise FleetError(f"{self.id}: its call button has no target configured")
        await self.send_request(op, request)
        return op

    async def send_request(self, op: ApiOp, request: ApiRequest, user: str | None = None) -> str:
        """Publish an API request as this device's button does, on `api/by/{user}/{op}`
        (`user`: the device itself unless a test plays a forger); its id is returned."""
        client = self._client
        if client is None:
            raise FleetError(f"{self.id}: not connected to the broker")
        self._requests += 1
        request_id = request.id or f"{self.id}-btn-{self._requests}-{self._rng.randrange(1 << 30)}"
        request = request.model_copy(update={"id": request_id})
        topic = self.topics.api_by(user or self.id, op.value)
        await client.publish(topic, encode(request), qos=1)
        return request_id

    async def _set_groups(self, cmd: Command) -> None:
        groups = cmd.args.get("groups")
        if (
            not isinstance(groups, list)
            or not all(isinstance(g, str) and is_valid_id(g) for g in groups)
            or len(groups) > 32
        ):
            await self._bad_args(cmd, "groups must be a list of up to 32 group names")
            return
        old_groups = self.groups
        old_sources = set(self._desired_sources())
        self.groups = [g for g in dict.fromkeys(groups) if g != "all"]  # "all" is implicit
        new_sources = self._desired_sources()
        client = self._client
        if client is not None:
            gone = [t for t in old_sources if t not in new_sources]
            added = [t for t in new_sources if t not in old_sources]
            if added:
                granted = await client.subscribe([(t, 1) for t in added])
                refused = [t for t, g in zip(added, granted, strict=False) if _code(g) >= 0x80]
                if refused:
                    # All or nothing: back to the old groups, as if the command never ran.
                    accepted = [t for t in added if t not in refused]
                    if accepted:
                        await client.unsubscribe(accepted)
                    self.groups = old_groups
                    await self._finish(
                        cmd,
                        Ack(
                            id=cmd.id,
                            ok=False,
                            code=AckCode.FAILED,
                            detail=f"broker refused subscription to {', '.join(refused)}"[:256],
                        ),
                    )
                    return
            if gone:
                await client.unsubscribe(gone)
            await client.publish(
                self.topics.status(self.id), encode(self._birth()), qos=1, retain=True
            )
        self.reconciler.forget_sources(set(new_sources))
        await self._finish(
            cmd, Ack(id=cmd.id, ok=True, code=AckCode.OK, result={"groups": self.groups})
        )
        await self._reconcile_soon()

    async def _reboot(self, cmd: Command) -> None:
        accepted = Ack(id=cmd.id, ok=True, code=AckCode.ACCEPTED, detail="rebooting", done=False)
        self._remember(cmd.id, accepted)
        await self._send_ack(accepted)
        final = Ack(id=cmd.id, ok=True, code=AckCode.OK, detail="rebooted")
        self._remember(cmd.id, final)
        self._final_after_boot = final
        # A reboot forgets everything that lives in RAM; the broker's retained docs restore it.
        self.reconciler = Reconciler()
        self.reported_rev = 0
        self.meeting = None
        self.dnd = False
        self._spawn(self.driver.forget())
        self.booted_at = time.monotonic()
        raise RestartLink(REBOOT_DELAY_S)

    async def _ota(self, cmd: Command) -> None:
        url = cmd.args.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            await self._bad_args(cmd, "url must be an http(s) URL")
            return
        await self._send_ack(
            Ack(id=cmd.id, ok=True, code=AckCode.ACCEPTED, done=False, detail="downloading")
        )
        version = cmd.args.get("version")
        self.fw = version if isinstance(version, str) and version else f"{FIRMWARE_VERSION}+ota"
        await self._finish(cmd, Ack(id=cmd.id, ok=True, code=AckCode.OK, result={"fw": self.fw}))

    async def _bad_args(self, cmd: Command, detail: str) -> None:
        await self._finish(cmd, Ack(id=cmd.id, ok=False, code=AckCode.BAD_ARGS, detail=detail))

    async def _finish(self, cmd: Command, ack: Ack) -> None:
        await self._finish_id(cmd.id, ack)

    async def _finish_id(self, command_id: str, ack: Ack) -> None:
        if command_id != "?":
            self._remember(command_id, ack)
        await self._send_ack(ack)

    def _remember(self, command_id: str, ack: Ack) -> None:
        self._acks[command_id] = ack
        self._acks.move_to_end(command_id)
        while len(self._acks) > ACK_CACHE_SIZE:
            self._acks.popitem(last=False)

    async def _send_ack(self, ack: Ack) -> None:
        if self._client is not None:
            publish_nowait(self._client, self.topics.ack(self.id), encode(ack), 1)

    @property
    def connection(self) -> aiomqtt.Client | None:
        """Its MQTT connection while it has one: what a device could publish, raw."""
        return self._client

    # --- periodic work ------------------------------------------------------------------------
    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.booted_at

    async def _periodic(self) -> None:
        # Spread the fleet's telemetry over the interval instead of bursting in step.
        await asyncio.sleep(self._rng.uniform(0, self.config.tele_interval_s))
        while True:
            if self._client is not None:
                try:
                    publish_nowait(
                        self._client, self.topics.tele(self.id), encode(self.telemetry())
                    )
                except aiomqtt.MqttError as exc:
                    log.debug("%s: telemetry skipped: %s", self.id, exc)
            await asyncio.sleep(self.config.tele_interval_s)

    def telemetry(self) -> Telemetry:
        rng = self._rng
        self._rssi = max(-90, min(-30, self._rssi + rng.randint(-2, 2)))
        heap_free = 180_000 + int(20_000 * math.sin(self.uptime_s / 60)) - rng.randint(0, 4_000)
        return Telemetry(
            ts=time.time(),
            wifi=WifiTelemetry(rssi=self._rssi, channel=6, reconnects=self.connects - 1),
            sys=SystemTelemetry(
                heap_free=heap_free,
                heap_min=150_000,
                uptime_s=round(self.uptime_s, 1),
                cpu_load=round(rng.uniform(0.05, 0.3 if self.meeting else 0.1), 3),
                mqtt_reconnects=max(0, self.connects - 1),
            ),
            meeting=(
                TelemetryMeeting(
                    room=self.meeting.room,
                    session=self.meeting.session,
                    participant=self.meeting.participant,
                    peer_errors=self.meeting.peer_errors,
                )
                if self.meeting
                else None
            ),
            audio=self.driver.audio_stats() if self.meeting else [],
        )


def _code(granted: Any) -> int:
    """SUBACK return code as an int (paho gives ints for 3.1.1, ReasonCodes for 5)."""
    value = getattr(granted, "value", granted)
    return int(value)


# --- many devices in one process -------------------------------------------------------------


def device_ids(count: int, prefix: str = "dev", start: int = 1) -> list[str]:
    return [f"{prefix}-{n}" for n in range(start, start + count)]


class SimFleet:
    """N simulated devices in one event loop, connecting in a bounded ramp."""

    def __init__(
        self,
        url: BrokerUrl,
        secrets: dict[str, str],
        topics: Topics | None = None,
        groups: Sequence[str] | Callable[[str], Sequence[str]] = (),
        tele_interval_s: float = 10.0,
        connect_concurrency: int = 64,
        driver_factory: Callable[[str], MeetingDriver] | None = None,
        caps: Capabilities | None = None,
    ) -> None:
        self.topics = topics or Topics()
        self.devices: list[SimulatedDevice] = []
        for device_id, secret in secrets.items():
            dev_groups = groups(device_id) if callable(groups) else groups
            cfg = SimDeviceConfig(
                device_id, secret, list(dev_groups), tele_interval_s, caps or Capabilities()
            )
            driver = driver_factory(device_id) if driver_factory else None
            self.devices.append(SimulatedDevice(cfg, url, self.topics, driver))
        self._gate = asyncio.Semaphore(connect_concurrency)

    def __getitem__(self, device_id: str) -> SimulatedDevice:
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for dev in self.devices:
                tg.create_task(self._run_one(dev), name=f"sim-{dev.id}")

    async def _run_one(self, dev: SimulatedDevice) -> None:
        async with self._gate:
            task = asyncio.create_task(dev.run(), name=f"{dev.id}-run")
            # Hold the gate until connected, so at most N handshakes are in flight at once.
            waiter = asyncio.create_task(dev.connected.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        await task

    async def wait_connected(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            for dev in self.devices:
                await dev.connected.wait()
