"""Credentials for people's browsers (docs/protocol.md §11.2) on both brokers: minted by
the controller from an operator's web-login, bound to their own client id, enforced by
the ACL, refused after they expire."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from fleet.auth import GENERATED_SECRET_ITERATIONS, Role, generate_secret, hash_secret
from fleet.controller.web_login import WebLogins
from fleet.meetings import MeetingServer
from fleet.mqtt import BrokerUrl
from fleet.protocol.messages import ApiOp, ApiRequest
from fleet.web.attempts import SignInAttempts
from fleet.web.server import ConsoleConfig, WebConsole
from tests.support.brokers import BrokerHandle, mqtt_client
from tests.support.running import controller, operator

pytestmark = pytest.mark.timeout(60)

JSON = {"Content-Type": "application/json"}


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


async def test_console_sign_in_takes_json_from_its_own_page_and_limits_guesses(
    amqtt_broker: BrokerHandle, tmp_path: Path
) -> None:
    """Real HTTP against the real console: a page elsewhere cannot sign in (wrong Origin,
    or a body that is not JSON), and wrong secrets from one address get a clear 429."""
    h = amqtt_broker
    secret = h.add_user("operator", Role.CONTROLLER)
    config = ConsoleConfig(
        broker=BrokerUrl.parse(f"mqtt://{h.host}:{h.port}"), topics=h.topics, ws_port=9
    )
    parts = [MeetingServer(), WebLogins(h.store)]

    def web_users() -> int:
        return len([c for c in h.store.list() if c.role is Role.WEB])

    async with (
        controller(h, tmp_path / "ctl.db", parts=parts),
        WebConsole(config, port=0, attempts=SignInAttempts(burst=3, per_s=0.01)) as console,
        WebConsole(config, port=0, attempts=SignInAttempts(burst=1, per_s=0.01)) as other,
        aiohttp.ClientSession() as http,
    ):
        right = json.dumps({"password": secret})
        wrong = json.dumps({"password": "guess"})
        own = console.url.rstrip("/")

        async def sign_in(
            url: str, body: str, headers: dict[str, str]
        ) -> tuple[int, dict[str, str], dict[str, object]]:
            async with http.post(url + "login", data=body, headers=headers) as reply:
                return reply.status, dict(reply.headers), await reply.json()

        # A page elsewhere: a text/plain form post (no CORS preflight), or JSON with its
        # Origin; and a text/plain body without any Origin.
        for headers, status in (
            ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 415),
            ({**JSON, "Origin": "http://evil.example"}, 403),
            ({**JSON, "Origin": "null"}, 403),
            ({"Content-Type": "text/plain"}, 415),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ):
            code, _headers, body = await sign_in(console.url, right, headers)
            assert code == status, (headers, body)
            assert "error" in body
        assert web_users() == 0

        # Wrong guesses: refused by the broker until the address's budget is spent...
        for _ in range(3):
            assert (await sign_in(console.url, wrong, {**JSON, "Origin": own}))[0] == 401
        code, headers, body = await sign_in(console.url, wrong, JSON)
        assert code == 429
        assert int(headers["Retry-After"]) >= 1
        assert "too many sign-in attempts" in str(body["error"])
        # ...then even the right secret waits (a guess is not told apart from it).
        assert (await sign_in(console.url, right, JSON))[0] == 429
        assert web_users() == 0

        # The console's own page signs in, again and again: a right secret spends nothing.
        other_origin = other.url.rstrip("/")
        for _ in range(3):
            code, _headers, body = await sign_in(other.url, right, {**JSON, "Origin": other_origin})
            assert code == 200, body
            assert str(body["username"]).startswith("web-")
        assert web_users() == 3
