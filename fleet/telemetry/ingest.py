"""Telemetry ingest: a controller part that turns `tele` and fleet events into InfluxDB points.

The MQTT loop only parses, formats and appends to a bounded buffer (a few
microseconds); a drain task hands the buffer to the writer, which writes from
its own thread. So a slow or dead database never holds up the controller:

- while the database is down, batches that failed with a retryable error come
  back to the front of the buffer and the drain pauses with exponential backoff;
  once a write succeeds again, the backlog goes out;
- when the buffer is full the oldest points are dropped. Every dropped or
  refused point is counted (`IngestStats`), logged, and announced as a fleet
  event (`error`, op `telemetry`) at most once per report interval: never silent.

Several processes can split the ingest (`share`): each reads telemetry through
the shared subscription `$share/{share}/{prefix}/dev/+/tele`, and the broker
hands each message to one member of the group. In the controller that
subscription replaces the plain one (the controller subscribes once per filter), so Home
Assistant's sensors read the same share. The controller writes the fleet counts
and events; the other members (`fleet ingest`, fleet/telemetry/worker.py) only
telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from fleet.controller.host import PartHost
from fleet.controller.parts import ControllerPart
from fleet.errors import ProtocolError
from fleet.protocol import TopicKind, decode
from fleet.protocol.messages import EventKind, FleetEvent, Telemetry
from fleet.telemetry.config import InfluxSettings
from fleet.telemetry.points import device_tags, event_line, fleet_line, telemetry_lines
from fleet.telemetry.writers import Outcome, Report, RetryNote, Writer, make_writer

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 10.0
# The drain hands points over at least this often, and at once when a batch is full:
# waking per message would cost more than the message.
HANDOFF_S = 0.05
# Batches the writer may hold at once: enough to keep it busy, the rest waits here.
INFLIGHT_BATCHES = 4

WriterFactory = Callable[[InfluxSettings, Report, RetryNote], Writer]


@dataclass
class IngestStats:
    messages: int = 0  # telemetry messages accepted
    rejected: int = 0  # telemetry messages refused (bad payload)
    events: int = 0  # fleet events turned into points
    points: int = 0  # points put in the buffer
    written: int = 0  # points the database acknowledged
    dropped: int = 0  # points dropped because the buffer was full
    refused: int = 0  # points the database refused for good (bad data, no such database)
    requeued: int = 0  # points of failed batches put back for another try
    retries: int = 0  # retries the writer made
    buffered: int = 0  # points waiting in the buffer now
    inflight: int = 0  # points handed to the writer, not yet written or failed

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TelemetryIngest(ControllerPart):
    name = "telemetry"

    def __init__(
        self,
        settings: InfluxSettings,
        writer_factory: WriterFactory = make_writer,
        report_interval_s: float = REPORT_INTERVAL_S,
        share: str | None = None,
        fleet_counts: bool = True,
    ) -> None:
        self.settings = settings
        self.share = share  # shared-subscription group, None: read every message alone
        self.fleet_counts = fleet_counts  # only one member of a share writes them
        self.stats = IngestStats()
        self._buffer: deque[str] = deque(maxlen=settings.buffer_size)
        self._writer_factory = writer_factory
        self._writer: Writer | None = None
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff_s = 0.0
        self._paused_until = 0.0
        self._report_interval_s = report_interval_s
        self._handoff_s = min(HANDOFF_S, settings.flush_interval_ms / 1000)
        self._reported = (0, 0)  # (dropped, refused) at the last report
        self._last_error = ""
        self._tele_filter = ""
        self._tags: dict[str, tuple[list[str] | None, str]] = {}
        self.flushed = asyncio.Event()  # set whenever nothing is buffered or in flight

    def attach(self, host: PartHost) -> None:
        super().attach(host)
        self._tele_filter = self.host.topics.all_devices(TopicKind.TELE)

    def subscriptions(self) -> Mapping[str, int]:
        # Devices publish tele at QoS 0 (docs/protocol.md §1.5).
        if self.share is not None:
            return {f"$share/{self.share}/{self._tele_filter}": 0}
        return {self._tele_filter: 0}

    # --- inbound (the MQTT loop: never waits) ---------------------------------------------------
    async def on_message(self, topic: str, payload: bytes) -> None:
        parsed = self.host.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.TELE:
            return
        try:
            tele = decode(Telemetry, payload)
        except ProtocolError:
            self.stats.rejected += 1
            raise  # the controller logs it and counts it
        self.stats.messages += 1
        device = parsed.name
        rec = self.host.registry.devices.get(device)
        groups = rec.status.groups if rec is not None and rec.status is not None else None
        # The tag set only changes with the device's groups: kept per device.
        cached = self._tags.get(device)
        if cached is None or cached[0] is not groups:
            cached = self._tags[device] = (groups, device_tags(device, groups or ()))
        self._enqueue(telemetry_lines(device, (), tele, tags=cached[1]))

    async def on_event(self, event: FleetEvent) -> None:
        self.stats.events += 1
        self._enqueue([event_line(event)])

    async def on_synced(self) -> None:
        self._write_fleet_counts()

    async def on_device_changed(self, device_id: str, presence_changed: bool) -> None:
        if device_id not in self.host.registry.devices:
            self._tags.pop(device_id, None)  # removed from the fleet

    def _enqueue(self, lines: list[str]) -> None:
        over = len(self._buffer) + len(lines) - self.settings.buffer_size
        if over > 0:
            self.stats.dropped += over  # the deque's maxlen drops the oldest
        self._buffer.extend(lines)
        self.stats.points += len(lines)
        self.stats.buffered = len(self._buffer)
        self.flushed.clear()
        if len(self._buffer) >= self.settings.batch_size:
            self._wakeup.set()

    def _write_fleet_counts(self) -> None:
        if not self.fleet_counts:
            return
        reg = self.host.registry
        self._enqueue([fleet_line(len(reg.devices), reg.online_count(), reg.in_meeting_count())])

    # --- the drain task ---------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = await asyncio.to_thread(
            self._writer_factory, self.settings, self._report_threadsafe, self._retry_threadsafe
        )
        log.info("%s", self.settings.describe())
        next_fleet = time.monotonic() + self.settings.fleet_interval_s
        next_report = time.monotonic() + self._report_interval_s
        while True:
            now = time.monotonic()
            if now >= next_fleet:
                next_fleet = now + self.settings.fleet_interval_s
                self._write_fleet_counts()
            if now >= next_report:
                next_report = now + self._report_interval_s
                await self._report_losses()
            self._drain(now)
            wake_at = min(next_fleet, next_report)
            if self._buffer:
                wake_at = min(wake_at, max(self._paused_until, now + self._handoff_s))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - time.monotonic())):
                    await self._wakeup.wait()

    def _drain(self, now: float) -> None:
        if self._writer is None or now < self._paused_until:
            return
        batch = self.settings.batch_size
        room = INFLIGHT_BATCHES * batch - self.stats.inflight
        while self._buffer and room > 0:
            take = min(len(self._buffer), batch, room)
            lines = [self._buffer.popleft() for _ in range(take)]
            self.stats.inflight += take
            room -= take
            self._writer.write(lines)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.stats.buffered = len(self._buffer)
        if not self._buffer and self.stats.inflight == 0:
            self.flushed.set()

    # --- outcomes (from writer threads, handed to the loop) ------------------------------------
    def _report_threadsafe(self, outcome: Outcome) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: we are shutting down
                self._loop.call_soon_threadsafe(self._on_outcome, outcome)

    def _retry_threadsafe(self, error: str) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_retry, error)

    def _on_retry(self, error: str) -> None:
        self.stats.retries += 1
        self._last_error = error
        log.info("telemetry write failed, retrying: %s", error)

    def _on_outcome(self, outcome: Outcome) -> None:
        n = len(outcome.lines)
        self.stats.inflight = max(0, self.stats.inflight - n)
        if outcome.ok:
            self.stats.written += n
            self._backoff_s = 0.0
            self._paused_until = 0.0
        elif outcome.retryable:
            self._last_error = outcome.error
            self._requeue(outcome.lines)
            s = self.settings
            first = s.retry_interval_ms / 1000
            self._backoff_s = min(max(first, self._backoff_s * 2), s.max_retry_delay_ms / 1000)
            self._paused_until = time.monotonic() + self._backoff_s
            log.warning(
                "telemetry database unreachable (%s); %d points kept, next try in %.1fs",
                outcome.error,
                len(self._buffer),
                self._backoff_s,
            )
        else:
            self.stats.refused += n
            self._last_error = outcome.error
            log.error("telemetry database refused %d points: %s", n, outcome.error)
        self._update_gauges()
        self._wakeup.set()

    def _requeue(self, lines: list[str]) -> None:
        """Put a failed batch back in front: older than anything buffered, so dropped first."""
        room = self.settings.buffer_size - len(self._buffer)
        keep = lines[len(lines) - room :] if room < len(lines) else lines
        self.stats.dropped += len(lines) - len(keep)
        self.stats.requeued += len(keep)
        self._buffer.extendleft(reversed(keep))

    async def _report_losses(self) -> None:
        dropped, refused = self.stats.dropped, self.stats.refused
        new_dropped, new_refused = dropped - self._reported[0], refused - self._reported[1]
        if not new_dropped and not new_refused:
            return
        self._reported = (dropped, refused)
        detail = (
            f"{new_dropped} points dropped (buffer of {self.settings.buffer_size} full), "
            f"{new_refused} refused by the database; since start {dropped} dropped, "
            f"{refused} refused; last error: {self._last_error or '-'}"
        )
        log.warning("telemetry lost points: %s", detail)
        await self.host.emit(
            FleetEvent(
                ts=time.time(),
                kind=EventKind.ERROR,
                op="telemetry",
                ok=False,
                code="telemetry_dropped" if new_dropped else "telemetry_refused",
                detail=detail[:256],
            )
        )

    # --- shutdown --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Hand over what is buffered and let the writer flush it (bounded wait)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        while self._buffer:
            take = min(len(self._buffer), self.settings.batch_size)
            writer.write([self._buffer.popleft() for _ in range(take)])
        await asyncio.to_thread(writer.close, self.settings.timeout_ms / 1000)
        log.info("telemetry ingest stopped: %s", self.stats.as_dict())
