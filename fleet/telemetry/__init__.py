"""Telemetry: device telemetry and fleet events into InfluxDB, dashboards for Grafana.

`TelemetryIngest` is the controller part (fleet/telemetry/ingest.py); `InfluxSettings`
says where the points go (fleet/telemetry/config.py); `points.py` is the schema.
"""

from fleet.telemetry.config import InfluxSettings, load_influx_settings
from fleet.telemetry.ingest import IngestStats, TelemetryIngest

__all__ = ["InfluxSettings", "IngestStats", "TelemetryIngest", "load_influx_settings"]
