"""The local broker that `fleet up` and `fleet broker run` start: Mosquitto by default.

Mosquitto (the Debian package) speaks MQTT 5 beside 3.1.1, which current Home
Assistant needs; amqtt (`broker/amqtt/embedded.py`, in-process) is the pure-Python
fallback for machines without it, MQTT 3.1.1 only. Both run from the same
credentials file and ACL (`broker/mosquitto/process.py` runs mosquitto as a child
process configured from it).

`local_broker()` picks the engine; both classes have the same async-context-manager
interface (`start`, `stop`, `url`, `port`, `ws_port`, `wait`).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import ConfigError
from fleet.protocol.topics import DEFAULT_PREFIX

if TYPE_CHECKING:
    from broker.amqtt.embedded import EmbeddedBroker
    from broker.mosquitto.process import MosquittoBroker, free_port

log = logging.getLogger(__name__)

__all__ = ["BrokerEngine", "MosquittoBroker", "free_port", "local_broker", "resolve_engine"]


def __getattr__(name: str) -> Any:
    # The runtimes load when a broker is made, not with the engine names: a command line
    # that only names an engine (--help, --engine) stays light.
    if name in ("MosquittoBroker", "free_port"):
        from broker.mosquitto import process

        return getattr(process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BrokerEngine(StrEnum):
    AUTO = "auto"  # Mosquitto when installed, else amqtt
    MOSQUITTO = "mosquitto"
    AMQTT = "amqtt"


def resolve_engine(engine: BrokerEngine | str) -> BrokerEngine:
    """AUTO becomes Mosquitto when it is installed, else amqtt (saying what that costs)."""
    from broker.mosquitto.process import INSTALL_HINT, mosquitto_binary

    engine = BrokerEngine(engine)
    if engine is BrokerEngine.MOSQUITTO and mosquitto_binary() is None:
        raise ConfigError(f"mosquitto is not installed: {INSTALL_HINT}")
    if engine is not BrokerEngine.AUTO:
        return engine
    if mosquitto_binary() is not None:
        return BrokerEngine.MOSQUITTO
    log.warning(
        "mosquitto is not installed: running the embedded amqtt broker, MQTT 3.1.1 only "
        "(Home Assistant 2026 defaults to MQTT 5; `apt-get install mosquitto`)"
    )
    return BrokerEngine.AMQTT


def local_broker(
    engine: BrokerEngine | str,
    creds_path: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 1883,
    ws_port: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    workdir: Path | None = None,
) -> MosquittoBroker | EmbeddedBroker:
    """The broker for `engine` (AUTO resolved), not yet started."""
    if resolve_engine(engine) is BrokerEngine.MOSQUITTO:
        from broker.mosquitto.process import MosquittoBroker

        return MosquittoBroker(
            creds_path,
            host=host,
            port=port,
            ws_port=ws_port,
            prefix=prefix,
            certfile=certfile,
            keyfile=keyfile,
            workdir=workdir,
        )
    from broker.amqtt.embedded import EmbeddedBroker  # amqtt loads only when it runs

    return EmbeddedBroker(
        creds_path,
        host=host,
        port=port,
        ws_port=ws_port,
        prefix=prefix,
        certfile=certfile,
        keyfile=keyfile,
    )
