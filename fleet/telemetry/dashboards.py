"""Grafana dashboards as code (grafana-foundation-sdk), over the InfluxQL schema of points.py.

`fleet telemetry dashboards` writes them to `dashboards/*.json`, where they are
committed; a test regenerates them and fails on any difference, and runs every
query they hold against a real InfluxDB 1.x filled by the real pipeline.

InfluxQL works on InfluxDB 1.x, on 2.x through its v1 API (DBRP mapping) and on
3.x, so one set of dashboards serves all three (docs/grafana.md). Every panel
takes its datasource from the `datasource` variable: provisioning picks the
InfluxDB datasource of docs/grafana.md, an import offers any InfluxDB one.

The SDK has no InfluxDB query type, so `InfluxQL` below is one: a raw query
with its alias and result format, as Grafana's InfluxDB datasource stores it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

DATASOURCE_VAR = "datasource"
DATASOURCE = model.DataSourceRef(type_val="influxdb", uid=f"${{{DATASOURCE_VAR}}}")
TAGS = ["espfleet"]
# Grafana macros, filled in by Grafana (and by the test that runs every query).
TIME_FILTER = "$timeFilter"
INTERVAL = "$__interval"


# --- the InfluxQL query type ------------------------------------------------------------------


class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL target, as Grafana's InfluxDB datasource saves one."""

    def __init__(
        self,
        ref_id: str,
        query: str,
        alias: str | None = None,
        result_format: Literal["time_series", "table"] = "time_series",
    ) -> None:
        self.ref_id = ref_id
        self.query = query
        self.alias = alias
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": DATASOURCE,
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        return payload


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = InfluxQLQuery(ref_id, query)

    def alias(self, alias: str) -> Self:
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self

    def build(self) -> InfluxQLQuery:
        return self._internal


class InfluxAnnotation(model.AnnotationQuery):
    """An annotation from an InfluxQL query; `text` and tags come from its columns."""

    def __init__(self, name: str, query: str, icon_color: str) -> None:
        super().__init__(name=name, datasource=DATASOURCE, enable=True, icon_color=icon_color)
        self.query = query

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            {
                "query": self.query,
                "textColumn": "text",
                "tagsColumn": "kind",
                # Grafana 9+ reads the annotation query from its target.
                "target": {"query": self.query, "rawQuery": True, "refId": "Anno"},
            }
        )
        return payload


class Annotation(cogbuilder.Builder[model.AnnotationQuery]):
    def __init__(self, name: str, query: str, icon_color: str) -> None:
        self._internal = InfluxAnnotation(name, query, icon_color)

    def build(self) -> model.AnnotationQuery:
        return self._internal


# --- helpers ----------------------------------------------------------------------------------


def _where(*conditions: str) -> str:
    return " AND ".join((TIME_FILTER, *conditions))


def _matches(tag: str, variable: str) -> str:
    # `=~ /^$var$/` takes one value, several (Grafana writes (a|b)) and All (.*) alike.
    return f'"{tag}" =~ /^${variable}$/'


def _series(
    title: str,
    query: str,
    unit: str,
    alias: str = "$tag_device",
    width: int = 12,
    height: int = 8,
    description: str = "",
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query).alias(alias))
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(5)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(True)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if description:
        panel.description(description)
    return panel


def _stat(
    title: str, query: str, unit: str = "none", width: int = 6, description: str = ""
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query))
        .unit(unit)
        .span(width)
        .height(4)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.AREA)
    )
    if description:
        panel.description(description)
    return panel


def _table(title: str, query: str, organize: dict[str, Any], height: int = 10) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(InfluxQL(query).table())
        .span(24)
        .height(height)
        # InfluxQL tables carry a time column (the last point's); the devices table
        # does not need it.
        .with_transformation(model.DataTransformerConfig(id_val="organize", options=organize))
    )


def _datasource_variable() -> dash.DatasourceVariable:
    return dash.DatasourceVariable(DATASOURCE_VAR).label("InfluxDB").type("influxdb")


def _tag_variable(
    name: str, label: str, query: str, include_all: bool = False
) -> dash.QueryVariable:
    var = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if include_all:
        var.include_all(True).all_value(".*").multi(True)
    return var


def _dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(_datasource_variable())
    )


EVENTS_QUERY = f'SELECT "text", "kind" FROM "fleet_event" WHERE {TIME_FILTER}'


# --- the dashboards ---------------------------------------------------------------------------


def fleet_overview() -> dash.Dashboard:
    devices_table = (
        'SELECT last("rssi") AS "rssi", last("heap_free") AS "heap free", '
        'last("heap_min") AS "heap min", last("cpu_load") AS "cpu", '
        'last("uptime_s") AS "uptime", last("in_meeting") AS "in meeting", '
        'last("wifi_reconnects") AS "wifi reconnects", '
        'last("mqtt_reconnects") AS "mqtt reconnects" '
        f'FROM "device" WHERE {TIME_FILTER} GROUP BY "device"'
    )
    return (
        _dashboard(
            "espfleet-overview",
            "espfleet: fleet overview",
            "Presence, meetings, radio and memory across the fleet; fleet events as annotations.",
        )
        .annotation(Annotation("Fleet events", EVENTS_QUERY, "#5794F2"))
        .with_panel(
            _stat(
                "Online",
                f'SELECT last("online") FROM "fleet" WHERE {TIME_FILTER}',
                description="Devices whose retained status says online (controller registry).",
            )
        )
        .with_panel(
            _stat(
                "In a meeting",
                f'SELECT last("in_meeting") FROM "fleet" WHERE {TIME_FILTER}',
                description="Online devices whose reported state names a room.",
            )
        )
        .with_panel(
            _stat("Known devices", f'SELECT last("devices") FROM "fleet" WHERE {TIME_FILTER}')
        )
        .with_panel(
            _stat(
                "Telemetry messages",
                f'SELECT count("uptime_s") FROM "device" WHERE {TIME_FILTER}',
                description="Telemetry messages stored in the time range.",
            )
        )
        .with_panel(
            _series(
                "Online and in a meeting",
                'SELECT last("online") AS "online", last("in_meeting") AS "in a meeting" '
                f'FROM "fleet" WHERE {TIME_FILTER} GROUP BY time({INTERVAL}) fill(previous)',
                "none",
                alias="",
                width=24,
            )
        )
        .with_panel(
            _series(
                "Wi-Fi RSSI",
                f'SELECT mean("rssi") FROM "device" WHERE {TIME_FILTER} '
                f'GROUP BY time({INTERVAL}), "device" fill(none)',
                "dBm",
            )
        )
        .with_panel(
            _series(
                "Free heap",
                f'SELECT mean("heap_free") FROM "device" WHERE {TIME_FILTER} '
                f'GROUP BY time({INTERVAL}), "device" fill(none)',
                "bytes",
            )
        )
        .with_panel(
            _series(
                "Lowest free heap since boot",
                f'SELECT min("heap_min") FROM "device" WHERE {TIME_FILTER} '
                f'GROUP BY time({INTERVAL}), "device" fill(none)',
                "bytes",
            )
        )
        .with_panel(
            _series(
                "Fleet events",
                f'SELECT count("count") FROM "fleet_event" WHERE {TIME_FILTER} '
                f'GROUP BY time({INTERVAL}), "kind" fill(none)',
                "none",
                alias="$tag_kind",
            )
        )
        .with_panel(
            _table(
                "Devices (last report in the time range)",
                devices_table,
                {"excludeByName": {"Time": True}, "renameByName": {"device": "device"}},
            )
        )
    )


def device_detail() -> dash.Dashboard:
    dev = _matches("device", "device")
    return (
        _dashboard(
            "espfleet-device",
            "espfleet: device",
            "One device: radio, memory, load, reconnects, its audio peers, its events.",
        )
        .with_variable(
            _tag_variable("device", "Device", 'SHOW TAG VALUES FROM "device" WITH KEY = "device"')
        )
        .annotation(
            Annotation("Device events", f'{EVENTS_QUERY} AND "device" =~ /^$device$/', "#F2CC0C")
        )
        .with_panel(_stat("RSSI", f'SELECT last("rssi") FROM "device" WHERE {_where(dev)}', "dBm"))
        .with_panel(
            _stat(
                "Free heap",
                f'SELECT last("heap_free") FROM "device" WHERE {_where(dev)}',
                "bytes",
            )
        )
        .with_panel(
            _stat("Uptime", f'SELECT last("uptime_s") FROM "device" WHERE {_where(dev)}', "s")
        )
        .with_panel(
            _stat(
                "CPU load",
                f'SELECT last("cpu_load") FROM "device" WHERE {_where(dev)}',
                "percentunit",
            )
        )
        .with_panel(
            _series(
                "Wi-Fi RSSI",
                f'SELECT mean("rssi") AS "rssi" FROM "device" WHERE {_where(dev)} '
                f"GROUP BY time({INTERVAL}) fill(none)",
                "dBm",
                alias="",
            )
        )
        .with_panel(
            _series(
                "Heap",
                f'SELECT mean("heap_free") AS "free", min("heap_min") AS "lowest since boot" '
                f'FROM "device" WHERE {_where(dev)} GROUP BY time({INTERVAL}) fill(none)',
                "bytes",
                alias="",
            )
        )
        .with_panel(
            _series(
                "CPU load",
                f'SELECT mean("cpu_load") AS "cpu" FROM "device" WHERE {_where(dev)} '
                f"GROUP BY time({INTERVAL}) fill(none)",
                "percentunit",
                alias="",
            )
        )
        .with_panel(
            _series(
                "Reconnects since boot",
                'SELECT max("wifi_reconnects") AS "wifi", max("mqtt_reconnects") AS "mqtt" '
                f'FROM "device" WHERE {_where(dev)} GROUP BY time({INTERVAL}) fill(none)',
                "none",
                alias="",
            )
        )
        .with_panel(
            _series(
                "Audio loss from each peer",
                f'SELECT mean("loss") FROM "audio_peer" WHERE {_where(dev)} '
                f'GROUP BY time({INTERVAL}), "peer" fill(none)',
                "percentunit",
                alias="$tag_peer",
            )
        )
        .with_panel(
            _series(
                "Audio jitter from each peer",
                f'SELECT mean("jitter_ms") FROM "audio_peer" WHERE {_where(dev)} '
                f'GROUP BY time({INTERVAL}), "peer" fill(none)',
                "ms",
                alias="$tag_peer",
            )
        )
    )


def meeting_quality() -> dash.Dashboard:
    scope = (_matches("room", "room"), _matches("session", "session"))
    by_member = f'GROUP BY time({INTERVAL}), "session", "participant", "peer" fill(none)'
    alias = "$tag_participant ← $tag_peer"

    def per_member(title: str, field: str, unit: str) -> timeseries.Panel:
        return _series(
            title,
            f'SELECT mean("{field}") FROM "audio_peer" WHERE {_where(*scope)} {by_member}',
            unit,
            alias=alias,
            description="Per receiving participant and the peer it hears, per session.",
        )

    summary = (
        'SELECT mean("loss") AS "loss", max("loss") AS "worst loss", '
        'mean("jitter_ms") AS "jitter ms", mean("rtt_ms") AS "rtt ms", '
        'mean("level") AS "level", mean("bitrate_kbps") AS "kbit/s" '
        f'FROM "audio_peer" WHERE {_where(*scope)} '
        'GROUP BY "room", "session", "participant", "peer"'
    )
    meeting_events = (
        f"{EVENTS_QUERY} AND "
        "(\"kind\" = 'session_start' OR \"kind\" = 'session_end' "
        "OR \"kind\" = 'join' OR \"kind\" = 'leave' OR \"kind\" = 'media')"
    )
    return (
        _dashboard(
            "espfleet-meetings",
            "espfleet: meeting quality",
            "Audio quality per session and participant: loss, jitter, round trip, level.",
        )
        .with_variable(
            _tag_variable(
                "room",
                "Room",
                'SHOW TAG VALUES FROM "audio_peer" WITH KEY = "room"',
                include_all=True,
            )
        )
        .with_variable(
            _tag_variable(
                "session",
                "Session",
                'SHOW TAG VALUES FROM "audio_peer" WITH KEY = "session" WHERE "room" =~ /^$room$/',
                include_all=True,
            )
        )
        .annotation(Annotation("Sessions, joins, leaves, media", meeting_events, "#73BF69"))
        .with_panel(per_member("Packet loss", "loss", "percentunit"))
        .with_panel(per_member("Jitter", "jitter_ms", "ms"))
        .with_panel(per_member("Round-trip time", "rtt_ms", "ms"))
        .with_panel(per_member("Received level", "level", "percentunit"))
        .with_panel(per_member("Bitrate", "bitrate_kbps", "Kbits"))
        .with_panel(
            _series(
                "Packets lost",
                f'SELECT max("packets_lost") FROM "audio_peer" WHERE {_where(*scope)} {by_member}',
                "none",
                alias=alias,
            )
        )
        .with_panel(
            _table(
                "Per participant and peer (time range)",
                summary,
                {"excludeByName": {"Time": True}},
            )
        )
    )


DASHBOARDS = {
    "fleet-overview": fleet_overview,
    "device-detail": device_detail,
    "meeting-quality": meeting_quality,
}


def render(board: dash.Dashboard) -> str:
    return json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": render(make()) for name, make in DASHBOARDS.items()}


def write_dashboards(out: Path) -> Sequence[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in generate().items():
        path = out / filename
        path.write_text(text)
        written.append(path)
    return written
