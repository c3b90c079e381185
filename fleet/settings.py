"""Where things are: broker URL, topic prefix, the platform's home folder.

Resolution order for the broker URL: explicit flag, FLEET_BROKER, the
client file `fleet up` writes into FLEET_HOME, then mqtt://127.0.0.1:1883.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.errors import ConfigError
from fleet.files import atomic_write, default_home, private_dir
from fleet.mqtt import BrokerUrl
from fleet.protocol import DEFAULT_PREFIX, Topics

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
CLIENT_FILE = "client.json"


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    broker: str | None = None
    prefix: str = DEFAULT_PREFIX
    home: Path = Field(default_factory=default_home)
    ca_file: str | None = None
    # Janus WebSocket URLs for `fleet controller` (FLEET_MIXERS='["ws://host:8188"]')
    mixers: list[str] = Field(default_factory=list)
    # Their Janus API secret (`api_secret`), for URLs that carry none (FLEET_MIXER_SECRET)
    mixer_secret: str | None = Field(default=None, repr=False)

    def topics(self) -> Topics:
        try:
            return Topics(self.prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def broker_url(self, explicit: str | None = None) -> BrokerUrl:
        raw = explicit or self.broker or self._client_file_broker() or DEFAULT_BROKER
        url = BrokerUrl.parse(raw)
        if self.ca_file:
            url = replace(url, ca_file=self.ca_file)
        return url

    def _client_file_broker(self) -> str | None:
        path = self.home / CLIENT_FILE
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text())["broker"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        return str(value)

    def write_client_file(self, url: BrokerUrl) -> Path:
        """Remember how to reach a local stack (`fleet up`) for later CLI commands."""
        private_dir(self.home)
        path = self.home / CLIENT_FILE
        # It holds the operator's password: 0600 from its creation on.
        doc = {"broker": str(url), "prefix": self.prefix}
        atomic_write(path, (json.dumps(doc) + "\n").encode())
        return path


def load_settings(**overrides: Any) -> FleetSettings:
    """Env vars, then the non-None overrides (CLI flags, of any type: the model validates)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return FleetSettings(**values)
