"""The web console's server: the page, its bundle, and sign-in (`fleet web`).

It serves fleet/web/static (built from fleet/web/frontend by `npm run build`, committed,
so no Node at run time) and one endpoint that turns an operator's secret into a
browser's own short-lived credentials: the secret is checked by the broker itself (the
server connects as the operator with it) and the controller mints the credentials
(``web-login``, §11.2). The server keeps no secret of its own; the page then talks MQTT
over WebSocket to the broker directly. Sign-ins are JSON from the console's own origin
only, and limited per source address (`fleet.web.attempts`), answered 429 past it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from fleet.auth import GENERATED_SECRET_ITERATIONS, generate_secret, hash_secret
from fleet.client import FleetClient
from fleet.errors import FleetError
from fleet.mqtt import BrokerUrl
from fleet.protocol import Topics
from fleet.protocol.messages import DEFAULT_WEB_TTL_S, MAX_WEB_TTL_S, ApiOp, ApiRequest
from fleet.web.attempts import SignInAttempts

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_BODY_BYTES = 4096
# The page's own origin for scripts and styles; MQTT goes to the broker's WebSocket.
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ConsoleConfig:
    broker: BrokerUrl  # where the server checks an operator's secret (no credentials)
    topics: Topics
    # The broker's MQTT-over-WebSocket URL as the browser reaches it; absent, the port on
    # the host the browser reached this server by.
    ws_url: str | None = None
    ws_port: int | None = None
    operator: str = "operator"  # the controller-role user people sign in as
    ttl_s: float = DEFAULT_WEB_TTL_S


class WebConsole:
    """`async with WebConsole(config, port=0) as console:` serves on `console.url`."""

    def __init__(
        self,
        config: ConsoleConfig,
        host: str = "127.0.0.1",
        port: int = 8080,
        attempts: SignInAttempts | None = None,
    ) -> None:
        if config.ws_url is None and config.ws_port is None:
            raise ValueError("the console needs the broker's WebSocket URL or port")
        if not 1 <= config.ttl_s <= MAX_WEB_TTL_S:
            raise ValueError(f"credential lifetime must be 1-{MAX_WEB_TTL_S:g} s")
        self.config = config
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._attempts = attempts or SignInAttempts()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_headers])
        app.router.add_get("/", self._index)
        app.router.add_get("/config", self._config)
        app.router.add_post("/login", self._login)
        app.router.add_static("/static", STATIC)
        return app

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise FleetError(
                f"the console cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        if self._runner.addresses:  # the port the OS picked for port 0
            self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers -----------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response({"prefix": self.config.topics.prefix})

    async def _login(self, request: web.Request) -> web.Response:
        # Only the console's own page may sign in: a JSON body (which a page elsewhere
        # cannot send without a CORS preflight this server never grants) and, from a
        # browser, its own Origin.
        if request.content_type != "application/json":
            return _error(415, "send the sign-in as application/json")
        origin = request.headers.get("Origin")
        if origin is not None and origin != str(request.url.origin()):
            log.info("console sign-in refused: from the page of %s", origin[:100])
            return _error(403, "sign in from the console's own page")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'send a JSON object: {"password": "..."}')
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"a sign-in is at most {MAX_BODY_BYTES} bytes")
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str) or not password or len(password) > 256:
            return _error(400, "password: the operator's secret, a non-empty string")
        address = request.remote or "?"
        wait_s = self._attempts.take(address)
        if wait_s > 0:
            retry = SignInAttempts.retry_after(wait_s)
            return _error(
                429,
                f"too many sign-in attempts from this address; try again in {retry} s",
                headers={"Retry-After": retry},
            )
        secret = generate_secret()
        url = self.config.broker.with_credentials(self.config.operator, password)
        try:
            async with FleetClient(url, self.config.topics) as fleet:
                result = await fleet.request(
                    ApiOp.WEB_LOGIN,
                    ApiRequest(
                        secret_hash=hash_secret(secret, GENERATED_SECRET_ITERATIONS),
                        ttl_s=self.config.ttl_s,
                    ),
                )
        except FleetError as exc:
            refused = "not authori" in str(exc).lower() or "bad user" in str(exc).lower()
            if refused:
                log.info("console sign-in refused by the broker")
                return _error(401, "wrong operator secret")
            return _error(503, f"cannot reach the fleet: {exc}")
        if not result.ok or result.username is None or result.until is None:
            return _error(503, f"the controller refused: {result.code} {result.detail}")
        self._attempts.refund(address)  # a right secret is no guess
        log.info("console credentials %s minted until %.0f", result.username, result.until)
        return web.json_response(
            {
                "username": result.username,
                "password": secret,
                "until": result.until,
                "ws_url": self.config.ws_url or f"ws://{request.url.host}:{self.config.ws_port}/",
            },
            headers={"Cache-Control": "no-store"},
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
