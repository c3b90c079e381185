"""The telemetry schema: protocol messages to line protocol, and the settings that enable it."""

from __future__ import annotations

import pytest

from fleet.errors import ConfigError
from fleet.protocol import decode
from fleet.protocol.messages import FleetEvent, Telemetry
from fleet.telemetry.config import load_influx_settings
from fleet.telemetry.points import event_line, fleet_line, telemetry_lines

NOW = 1_795_000_000.0

TELE = b"""{
  "ts": 1795000000.5,
  "wifi": {"rssi": -61, "channel": 6, "reconnects": 2},
  "sys": {"heap_free": 181000, "heap_min": 150000, "uptime_s": 3600, "cpu_load": 0.25,
          "mqtt_reconnects": 1},
  "meeting": {"room": "standup", "session": "s 1,x=y", "participant": "p-1"},
  "audio": [
    {"peer": "p-2", "packets_sent": 500, "packets_received": 490, "packets_lost": 10,
     "loss": 0.02, "jitter_ms": 4, "rtt_ms": 12.5, "level": 0.3, "bitrate_kbps": 32,
     "codec": "opus"},
    {"peer": "p-3"}
  ]
}"""


def test_telemetry_becomes_a_device_point_and_one_audio_point_per_peer() -> None:
    tele = decode(Telemetry, TELE)
    lines = telemetry_lines("esp-1", ["kitchen", "all", "hall"], tele, received=NOW)
    ts = "1795000000500000000"
    assert lines == [
        "device,device=esp-1,groups=hall\\,kitchen rssi=-61i,channel=6i,wifi_reconnects=2i,"
        "heap_free=181000i,heap_min=150000i,uptime_s=3600.0,cpu_load=0.25,mqtt_reconnects=1i,"
        f"in_meeting=1i,peers=2i {ts}",
        # Tags sorted by key; a session id with a space, comma and equals sign escaped.
        "audio_peer,device=esp-1,participant=p-1,peer=p-2,room=standup,session=s\\ 1\\,x\\=y "
        "loss=0.02,jitter_ms=4.0,rtt_ms=12.5,level=0.3,bitrate_kbps=32.0,packets_sent=500i,"
        f"packets_received=490i,packets_lost=10i {ts}",
        # Absent stats are left out; the counters default to 0 (the protocol's defaults).
        "audio_peer,device=esp-1,participant=p-1,peer=p-3,room=standup,session=s\\ 1\\,x\\=y "
        f"packets_sent=0i,packets_received=0i,packets_lost=0i {ts}",
    ]


def test_a_minimal_message_and_an_unset_device_clock() -> None:
    # ts 0: an ESP whose clock was never set. Stamped with the receive time instead.
    tele = decode(Telemetry, b'{"ts": 0}')
    lines = telemetry_lines("esp-2", [], tele, received=NOW)
    assert lines == [
        f"device,device=esp-2 wifi_reconnects=0i,mqtt_reconnects=0i,in_meeting=0i,peers=0i "
        f"{round(NOW * 1e6) * 1000}"
    ]


def test_tag_values_cannot_break_the_line() -> None:
    tele = decode(
        Telemetry,
        b'{"ts": 1795000000, "meeting": {"room": "r", "participant": "a\\\\"}, '
        b'"audio": [{"peer": "x\\ny"}]}',
    )
    peer_line = telemetry_lines("esp-3", [], tele, received=NOW)[1]
    # A trailing backslash would escape the separator after it; a newline would end the line.
    assert peer_line.startswith("audio_peer,device=esp-3,participant=a/,peer=x\\ y,room=r ")
    assert "\n" not in peer_line


def test_fleet_events_and_counts() -> None:
    event = FleetEvent(
        ts=1795000001.25,
        kind="command",
        device="esp-1",
        op="reboot",
        ok=False,
        code="timed_out",
        detail='no "final" ack',
    )
    assert event_line(event) == (
        "fleet_event,device=esp-1,kind=command,op=reboot "
        'text="command esp-1 (reboot, timed_out): no \\"final\\" ack",count=1i,ok=false,'
        'code="timed_out" 1795000001250000000'
    )
    join = FleetEvent(ts=NOW, kind="join", group="all", room="standup", op="join-all", rev=42)
    assert event_line(join) == (
        "fleet_event,group=all,kind=join,op=join-all,room=standup "
        'text="join group all -> standup (join-all, rev 42)",count=1i,rev=42i '
        f"{round(NOW * 1e6) * 1000}"
    )
    assert fleet_line(10, 8, 3, ts=NOW) == (
        f"fleet devices=10i,online=8i,in_meeting=3i {round(NOW * 1e6) * 1000}"
    )


def test_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load_influx_settings().enabled  # nothing configured: telemetry off
    monkeypatch.setenv("FLEET_INFLUX_URL", "http://127.0.0.1:8086")
    monkeypatch.setenv("FLEET_INFLUX_BUCKET", "fleet")
    monkeypatch.setenv("FLEET_INFLUX_TOKEN", "s3cret")
    settings = load_influx_settings(batch_size=50)
    assert settings.enabled
    assert (settings.bucket, settings.batch_size, settings.version) == ("fleet", 50, 2)
    assert "s3cret" not in settings.describe()
    assert "s3cret" not in repr(settings)
    # A flag wins over the environment.
    assert load_influx_settings(bucket="other").bucket == "other"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "ftp://db:1"}, r"must be http\(s\)://host:port"),
        ({"url": "http://db:8086"}, "needs a bucket"),
        ({"url": "http://db:8086", "version": 1}, "needs a database"),
        ({"url": "http://db:8086", "version": 3, "bucket": "b"}, "version"),
        ({"url": "http://db:8086", "bucket": "b", "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_influx_settings(**overrides)
