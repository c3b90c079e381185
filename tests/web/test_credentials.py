"""Credentials for people's browsers (docs/protocol.md §11.2) on both brokers: minted by
the controller from an operator's web-login, bound to their own client id, enforced by
the ACL, refused after they expire."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from fleet.auth import GENERATED_SECRET_ITERATIONS, Role, generate_secret, hash_secret
from fleet.controller.web_login import WebLogins
from fleet.meetings import MeetingServer
from fleet.protocol.messages import ApiOp, ApiRequest
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, operator

pytestmark = pytest.mark.timeout(60)


async def test_web_login_mints_scoped_credentials_that_expire(
    any_broker: BrokerHandle, tmp_path: Path
) -> None:
    h = any_broker
    secret = generate_secret()
    request = ApiRequest(secret_hash=hash_secret(secret, GENERATED_SECRET_ITERATIONS), ttl_s=3.0)
    parts = [MeetingServer(), WebLogins(h.store)]
    watcher = h.add_user("watcher", Role.CONTROLLER)  # sees the page's topics
    async with controller(h, tmp_path / "ctl.db", parts=parts), operator(h) as op:
        minted = await op.request(ApiOp.WEB_LOGIN, request)
        assert minted.ok, minted
        assert minted.username is not None
        assert minted.until is not None
        user = minted.username
        cred = h.store.get(user)
        assert cred is not None
        assert cred.role is Role.WEB
        assert cred.expires == minted.until
        # A hash that is not one: refused with a clear error, nothing minted.
        bad = await op.request(ApiOp.WEB_LOGIN, ApiRequest(secret_hash="not-a-hash"))
        assert not bad.ok
        assert bad.code == "bad_request"
        assert len([c for c in h.store.list() if c.role is Role.WEB]) == 1
        await h.sync()  # Mosquitto: the regenerated passwd, acl and client-id list

        # Only its own name as client id.
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_client(h, user, secret, client_id=f"{user}-2"):
                pass
        down, up = h.topics.meet_down(user), h.topics.meet_up(user)
        will = aiomqtt.Will(up, b'{"type": "leave"}', qos=1)
        async with (
            mqtt_client(h, user, secret, will=will) as web,
            mqtt_client(h, "watcher", watcher) as watch,
        ):
            await watch.subscribe(down, qos=1)
            await watch.subscribe(up, qos=1)
            # Its own meet topics: a leave is answered on its down topic.
            await web.subscribe(down, qos=1)
            await web.publish(up, b'{"type": "leave"}', qos=1)
            async with asyncio.timeout(10):
                async for message in web.messages:
                    if str(message.topic) == down:
                        assert b'"left"' in bytes(message.payload)  # type: ignore[arg-type]
                        break
            # An open page loses its rights at its expiry, not at its next CONNECT: a
            # message published after the expiry (the watcher's copy shows the broker
            # routed it) never reaches the page, the broker closes it and its will goes out.
            await asyncio.sleep(max(0.0, minted.until - time.time()) + 0.05)
            marker = b'{"type": "after-expiry"}'
            await watch.publish(down, marker, qos=1)
            got: list[bytes] = []
            wills = 0
            async with asyncio.timeout(10):
                async for message in watch.messages:
                    payload = bytes(message.payload)  # type: ignore[arg-type]
                    wills += str(message.topic) == up and b"leave" in payload
                    if payload == marker:
                        break
            with pytest.raises(aiomqtt.MqttError):
                await _receive_until_closed(web, got)
            assert marker not in got
            async with asyncio.timeout(10):
                while wills < 2:  # the page's own leave, then its will
                    message = await anext(aiter(watch.messages))
                    payload = bytes(message.payload)  # type: ignore[arg-type]
                    wills += str(message.topic) == up and b"leave" in payload
        # And its next CONNECT is refused.
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_client(h, user, secret):
                pass
        # The next mint sweeps it from the store.
        again = await op.request(ApiOp.WEB_LOGIN, request)
        assert again.ok, again
        assert h.store.get(user) is None


async def _receive_until_closed(client: aiomqtt.Client, got: list[bytes]) -> None:
    async with asyncio.timeout(10):
        async for message in client.messages:
            got.append(bytes(message.payload))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give --ws-url or --ws-port"),
        (["--ws-url", "http://fleet:8083/"], "expected ws://HOST:PORT/"),
        (["--ws-port", "8083", "--ttl", "0"], "--ttl"),
    ],
)
def test_fleet_web_refuses_bad_arguments(args: list[str], says: str) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["web", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output
