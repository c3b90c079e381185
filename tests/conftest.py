"""Shared fixtures: credential store, topic prefix, and real brokers (see tests/brokers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from brokers import (
    BrokerHandle,
    amqtt_handle,
    mosquitto_handle,
    require_mosquitto,
    unique_prefix,
)

from broker.credentials import CredentialStore

BROKER_KINDS = [
    pytest.param("amqtt", id="amqtt"),
    pytest.param("mosquitto", id="mosquitto", marks=pytest.mark.mosquitto),
]


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of this test's own (``t1a2b3c4d/v1``): no retained messages from others."""
    return unique_prefix()


@pytest.fixture
def creds_store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "fleet-home" / "credentials.json")


@pytest_asyncio.fixture
async def amqtt_broker(
    creds_store: CredentialStore, topic_prefix: str
) -> AsyncIterator[BrokerHandle]:
    """The embedded amqtt broker, in this process, on a free port."""
    handle = amqtt_handle(creds_store, topic_prefix)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


@pytest_asyncio.fixture
async def mosquitto_broker(
    creds_store: CredentialStore, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[BrokerHandle]:
    """A mosquitto subprocess configured by write_mosquitto_config, on a free port."""
    require_mosquitto()
    handle = mosquitto_handle(creds_store, topic_prefix, tmp_path / "mosquitto")
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture(params=BROKER_KINDS)
def any_broker(request: pytest.FixtureRequest) -> BrokerHandle:
    """Each test runs once against amqtt and once against mosquitto."""
    handle: BrokerHandle = request.getfixturevalue(f"{request.param}_broker")
    return handle
