"""fleet.telemetry.writers: points handed over are written in batches of the configured
size, each reported exactly once (written, or failed and whether a retry may help), with
retries and backoff; against a small real HTTP server on 127.0.0.1 that records what a
database would be sent and answers as told."""

from __future__ import annotations

import base64
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.telemetry.config import InfluxSettings
from fleet.telemetry.writers import (
    InfluxV1Writer,
    InfluxV2Writer,
    Outcome,
    make_writer,
    retryable_status,
)
from tests.support.brokers import free_port

LINES = [f"tele,device=dev-{n} rssi=-{60 + n}i {1_795_000_000_000_000_000 + n}" for n in range(7)]


@dataclass
class Post:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: str


@dataclass
class Database:
    """Records every POST; answers each with the next of `answers` (then 204)."""

    url: str
    posts: list[Post] = field(default_factory=list)
    answers: list[tuple[int, str]] = field(default_factory=list)


@pytest.fixture
def database() -> Iterator[Database]:
    db = Database(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            parts = urllib.parse.urlsplit(self.path)
            db.posts.append(
                Post(
                    parts.path,
                    urllib.parse.parse_qs(parts.query),
                    dict(self.headers.items()),
                    self.rfile.read(length).decode(),
                )
            )
            status, text = db.answers.pop(0) if db.answers else (204, "")
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    db.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield db
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Reports:
    outcomes: list[Outcome] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)


def v1(url: str, reports: Reports, **overrides: object) -> InfluxV1Writer:
    values: dict[str, object] = dict(
        url=url,
        version=1,
        database="fleet",
        batch_size=3,
        flush_interval_ms=600_000,  # batches by size; the rest when closed
        retry_interval_ms=10,
        max_retry_delay_ms=20,
        max_retries=2,
        timeout_ms=2000,
    )
    values.update(overrides)
    settings = InfluxSettings(**values)  # type: ignore[arg-type]
    return InfluxV1Writer(settings, reports.outcomes.append, reports.retries.append)


def test_retryable_statuses() -> None:
    assert retryable_status(None)  # connection refused, timeout
    assert all(retryable_status(s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(retryable_status(s) for s in (200, 204, 400, 401, 403, 404, 413, 422))


def test_v1_writes_batches_of_the_configured_size_in_order(database: Database) -> None:
    reports = Reports()
    writer = v1(database.url, reports)
    writer.write(LINES[:2])
    writer.write(LINES[2:])
    writer.close(timeout_s=10)
    assert [p.body for p in database.posts] == [
        "\n".join(LINES[0:3]),
        "\n".join(LINES[3:6]),
        LINES[6],
    ]
    assert reports.outcomes == [
        Outcome(LINES[0:3], ok=True),
        Outcome(LINES[3:6], ok=True),
        Outcome(LINES[6:], ok=True),
    ]
    assert reports.retries == []


def test_v1_posts_line_protocol_to_write_with_basic_auth(database: Database) -> None:
    reports = Reports()
    writer = v1(database.url, reports, user="grafana", password="s3cret")
    writer.write(LINES[:1])
    writer.close(timeout_s=10)
    (post,) = database.posts
    assert post.path == "/write"
    assert post.query == {"db": ["fleet"], "precision": ["ns"]}
    assert post.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert post.headers["Authorization"] == "Basic " + base64.b64encode(b"grafana:s3cret").decode()
    assert "s3cret" not in post.path + str(post.query)  # never in a URL


def test_v1_without_a_user_sends_no_authorization(database: Database) -> None:
    writer = v1(database.url, Reports())
    writer.write(LINES[:1])
    writer.close(timeout_s=10)
    assert "Authorization" not in database.posts[0].headers


def test_v1_retries_a_server_error_then_reports_the_batch_written_once(
    database: Database,
) -> None:
    database.answers = [(503, "overloaded"), (500, "oops")]
    reports = Reports()
    writer = v1(database.url, reports)
    writer.write(LINES[:3])
    writer.close(timeout_s=10)
    assert [p.body for p in database.posts] == ["\n".join(LINES[:3])] * 3
    assert reports.retries == ["HTTP 503: overloaded", "HTTP 500: oops"]
    assert reports.outcomes == [Outcome(LINES[:3], ok=True)]


def test_v1_gives_up_after_max_retries_as_retryable(database: Database) -> None:
    database.answers = [(503, "down")] * 3
    reports = Reports()
    writer = v1(database.url, reports, max_retries=2)
    writer.write(LINES[:1])
    writer.close(timeout_s=10)
    assert len(database.posts) == 3  # the first try and two retries
    assert reports.outcomes == [
        Outcome(LINES[:1], ok=False, retryable=True, error="HTTP 503: down")
    ]


def test_v1_never_retries_points_refused_for_good(database: Database) -> None:
    database.answers = [(400, '{"error":"unable to parse"}')]
    reports = Reports()
    writer = v1(database.url, reports)
    writer.write(LINES[:3])
    writer.write(LINES[3:4])
    writer.close(timeout_s=10)
    assert len(database.posts) == 2  # the bad batch once, then the next one
    assert reports.retries == []
    assert reports.outcomes == [
        Outcome(
            LINES[:3], ok=False, retryable=False, error='HTTP 400: {"error":"unable to parse"}'
        ),
        Outcome(LINES[3:4], ok=True),
    ]


def test_v1_with_no_database_listening_reports_a_retryable_failure() -> None:
    reports = Reports()
    writer = v1(f"http://127.0.0.1:{free_port()}", reports, max_retries=1)
    writer.write(LINES[:2])
    writer.close(timeout_s=10)
    (outcome,) = reports.outcomes
    assert (outcome.lines, outcome.ok, outcome.retryable) == (LINES[:2], False, True)
    assert outcome.error.startswith("URLError")
    assert len(reports.retries) == 1


def test_v2_writes_batches_to_the_v2_api(database: Database) -> None:
    reports = Reports()
    settings = InfluxSettings(
        url=database.url,
        version=2,
        bucket="fleet",
        org="espfleet",
        token="t0ken",
        batch_size=3,
        flush_interval_ms=600_000,
        max_retries=0,
        timeout_ms=2000,
    )
    writer = make_writer(settings, reports.outcomes.append, reports.retries.append)
    assert isinstance(writer, InfluxV2Writer)
    writer.write(LINES[:4])
    writer.close(timeout_s=10)
    assert [p.path for p in database.posts] == ["/api/v2/write"] * 2
    assert database.posts[0].query["bucket"] == ["fleet"]
    assert database.posts[0].query["org"] == ["espfleet"]
    assert database.posts[0].headers["Authorization"] == "Token t0ken"
    assert [p.body for p in database.posts] == ["\n".join(LINES[:3]), LINES[3]]
    assert reports.outcomes == [Outcome(LINES[:3], ok=True), Outcome(LINES[3:4], ok=True)]


def test_make_writer_picks_the_api_by_version(database: Database) -> None:
    settings = InfluxSettings(url=database.url, version=1, database="fleet")
    writer = make_writer(settings, lambda _: None, lambda _: None)
    assert isinstance(writer, InfluxV1Writer)
    writer.close(timeout_s=10)
