"""Database writers: they take line-protocol points and write them in batches, off the event loop.

`InfluxV2Writer` is influxdb-client's batching write API (`/api/v2/write`: InfluxDB
2.x, 3.x, 1.8+, VictoriaMetrics). It batches by count and interval, retries with
exponential backoff in its own thread, and reports only through callbacks, so
those are wired to `Outcome`. `InfluxV1Writer` does the same over InfluxDB 1.x's
`/write?db=` (1.6, Debian's, has no v2 API) with a thread of its own.

Both report every batch exactly once: written, or failed (retryable or not). The
ingest part owns the bounded buffer; writers hold only what it hands them.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from fleet.telemetry.config import InfluxSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one batch; delivered from a writer thread."""

    lines: list[str]
    ok: bool
    # For a failure: worth another try later (database down, overloaded, 5xx),
    # or refused for good (bad points, wrong database, no permission).
    retryable: bool = False
    error: str = ""


Report = Callable[[Outcome], None]
RetryNote = Callable[[str], None]


class Writer(ABC):
    def __init__(self, settings: InfluxSettings, report: Report, note_retry: RetryNote) -> None:
        self.settings = settings
        self._report = report
        self._note_retry = note_retry

    @abstractmethod
    def write(self, lines: list[str]) -> None:
        """Hand points over; returns at once (never waits for the database)."""

    @abstractmethod
    def close(self, timeout_s: float) -> None:
        """Flush what was handed over (waiting at most timeout_s), then release."""


def retryable_status(status: int | None) -> bool:
    """No status (connection refused, timeout), 408, 429 and 5xx are worth a retry."""
    return status is None or status in (408, 429) or status >= 500


def _lines_of(data: bytes | str) -> list[str]:
    text = data.decode() if isinstance(data, bytes) else data
    return text.split("\n") if text else []


class InfluxV2Writer(Writer):
    """influxdb-client's batching WriteApi, callbacks wired to the ingest part."""

    def __init__(self, settings: InfluxSettings, report: Report, note_retry: RetryNote) -> None:
        super().__init__(settings, report, note_retry)
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import WriteOptions
        from reactivex.scheduler import ThreadPoolScheduler

        s = settings
        self._client = InfluxDBClient(
            url=s.url or "",
            token=s.token.get_secret_value() if s.token else "",
            org=s.org,
            timeout=s.timeout_ms,
        )
        options = WriteOptions(
            batch_size=s.batch_size,
            flush_interval=s.flush_interval_ms,
            retry_interval=s.retry_interval_ms,
            max_retries=s.max_retries,
            max_retry_delay=s.max_retry_delay_ms,
            # 0 would disable retries; otherwise room for every attempt and its wait.
            max_retry_time=(s.max_retries + 1) * (s.max_retry_delay_ms + s.timeout_ms)
            if s.max_retries
            else 0,
            exponential_base=2,
            max_close_wait=s.timeout_ms,
            # Its own thread: WriteOptions' default scheduler is one object shared by
            # every WriteApi in the process.
            write_scheduler=ThreadPoolScheduler(max_workers=1),
        )
        self._api = self._client.write_api(
            write_options=options,
            success_callback=self._success,
            error_callback=self._error,
            retry_callback=self._retry,
        )
        # WriteApi.write costs ~20 us per point (reactivex); a feeder thread pays it, so
        # handing over a thousand points does not hold up the event loop for 20 ms.
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="influx-v2-feeder", daemon=True)
        self._feeder.start()

    def write(self, lines: list[str]) -> None:
        self._queue.put(lines)

    def _feed(self) -> None:
        bucket = self.settings.bucket or ""
        while (lines := self._queue.get()) is not None:
            self._api.write(bucket=bucket, org=self.settings.org, record=lines)

    def _success(self, _conf: tuple[str, str, str], data: bytes | str) -> None:
        self._report(Outcome(_lines_of(data), ok=True))

    def _error(self, _conf: tuple[str, str, str], data: bytes | str, exc: Exception) -> None:
        status = getattr(exc, "status", None)
        retryable = retryable_status(status if isinstance(status, int) else None)
        self._report(Outcome(_lines_of(data), ok=False, retryable=retryable, error=_describe(exc)))

    def _retry(self, _conf: tuple[str, str, str], _data: bytes | str, exc: Exception) -> None:
        self._note_retry(_describe(exc))

    def close(self, timeout_s: float) -> None:
        # WriteApi.close() flushes pending batches (bounded by max_close_wait).
        self._queue.put(None)
        self._feeder.join(timeout_s)
        try:
            self._api.close()
        finally:
            self._client.close()


class InfluxV1Writer(Writer):
    """InfluxDB 1.x: POST /write?db=&precision=ns from a thread, batched, with backoff.

    User and password go in a Basic authorization header (1.x accepts it as well as
    `u=`/`p=`), so the password stays out of URLs and the server's access log.
    """

    def __init__(self, settings: InfluxSettings, report: Report, note_retry: RetryNote) -> None:
        super().__init__(settings, report, note_retry)
        s = settings
        params = {"db": s.database or "", "precision": "ns"}
        self._url = f"{(s.url or '').rstrip('/')}/write?{urllib.parse.urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if s.user:
            secret = s.password.get_secret_value() if s.password else ""
            token = base64.b64encode(f"{s.user}:{secret}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="influx-v1-writer", daemon=True)
        self._thread.start()

    def write(self, lines: list[str]) -> None:
        self._queue.put(lines)

    def close(self, timeout_s: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._stop.set()  # a batch still in its backoff gives up and is reported failed

    # --- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        pending: list[str] = []
        deadline = time.monotonic() + s.flush_interval_ms / 1000
        closing = False
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=None if closing else timeout)
            except queue.Empty:
                item = []
            if item is None:
                closing = True
            elif item:
                pending.extend(item)
            while len(pending) >= s.batch_size:
                batch, pending = pending[: s.batch_size], pending[s.batch_size :]
                self._send(batch)
            if pending and (closing or time.monotonic() >= deadline):
                batch, pending = pending, []
                self._send(batch)
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + s.flush_interval_ms / 1000
            if closing and self._queue.empty():
                return

    def _send(self, batch: list[str]) -> None:
        s = self.settings
        body = "\n".join(batch).encode()
        delay = s.retry_interval_ms / 1000
        attempt = 0
        while True:
            status, error = self._post(body)
            if status is not None and 200 <= status < 300:
                self._report(Outcome(batch, ok=True))
                return
            retryable = retryable_status(status)
            attempt += 1
            if not retryable or attempt > s.max_retries or self._stop.is_set():
                self._report(Outcome(batch, ok=False, retryable=retryable, error=error))
                return
            self._note_retry(error)
            if self._stop.wait(delay):
                self._report(Outcome(batch, ok=False, retryable=True, error=error))
                return
            delay = min(delay * 2, s.max_retry_delay_ms / 1000)

    def _post(self, body: bytes) -> tuple[int | None, str]:
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers=self._headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_ms / 1000) as resp:
                return resp.status, ""
        except urllib.error.HTTPError as exc:
            detail = exc.read(512).decode(errors="replace").strip()
            return exc.code, f"HTTP {exc.code}: {detail}"
        except (OSError, urllib.error.URLError) as exc:
            return None, f"{type(exc).__name__}: {exc}"


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status:
        return f"HTTP {status}: {str(body or exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def make_writer(settings: InfluxSettings, report: Report, note_retry: RetryNote) -> Writer:
    if settings.version == 1:
        return InfluxV1Writer(settings, report, note_retry)
    return InfluxV2Writer(settings, report, note_retry)
