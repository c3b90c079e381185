"""Shared fixtures: credential store, topic prefix, real brokers (tests/support/brokers.py),
and the CLI runner (tests/support/cli.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from fleet.auth import CredentialStore
from tests.support.brokers import (
    BrokerHandle,
    amqtt_handle,
    mosquitto_handle,
    require_mosquitto,
    unique_prefix,
)
from tests.support.cli import runner as runner  # the fixture

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


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
