"""Where telemetry goes: an InfluxDB (1.x, 2.x, 3.x) or anything that speaks its write API.

Every setting has a FLEET_INFLUX_* environment variable (FLEET_INFLUX_URL,
FLEET_INFLUX_TOKEN, ...); command-line flags override them. No URL, no telemetry.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.errors import ConfigError


class InfluxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_INFLUX_", extra="ignore")

    url: str | None = None
    # 2: the /api/v2/write API (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics) through
    # influxdb-client; 1: InfluxDB 1.x's /write (Debian's influxdb is 1.6).
    version: Literal[1, 2] = 2
    token: SecretStr | None = None
    org: str = ""
    bucket: str | None = None
    database: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    batch_size: int = Field(1000, ge=1, le=100_000)
    flush_interval_ms: int = Field(1000, ge=10, le=600_000)
    # Points held while the database is slow or down; past this the oldest are dropped
    # (counted and reported).
    buffer_size: int = Field(100_000, ge=1, le=10_000_000)
    max_retries: int = Field(3, ge=0, le=100)
    retry_interval_ms: int = Field(1000, ge=10, le=600_000)
    max_retry_delay_ms: int = Field(30_000, ge=10, le=3_600_000)
    timeout_ms: int = Field(10_000, ge=100, le=600_000)
    # How often the fleet's counts (devices, online, in meeting) are written.
    fleet_interval_s: float = Field(10.0, gt=0, le=3600)

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def check(self) -> InfluxSettings:
        """Refuse a configuration that cannot work, with a message that says why."""
        if not self.url:
            return self
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"influx URL {self.url!r} must be http(s)://host:port")
        if self.version == 2 and not self.bucket:
            raise ConfigError("InfluxDB 2.x/3.x needs a bucket (--influx-bucket)")
        if self.version == 1 and not self.database:
            raise ConfigError("InfluxDB 1.x needs a database (--influx-database)")
        return self

    def describe(self) -> str:
        """For logs: where telemetry goes, without secrets."""
        if not self.url:
            return "telemetry off (no InfluxDB configured)"
        where = f"bucket {self.bucket}" if self.version == 2 else f"database {self.database}"
        return f"telemetry to InfluxDB {self.version}.x API at {self.url}, {where}"


def load_influx_settings(**overrides: Any) -> InfluxSettings:
    """Env vars, then the non-None overrides (CLI flags); ConfigError when invalid."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return InfluxSettings(**values).check()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"influx setting {where}: {err['msg']}") from exc
