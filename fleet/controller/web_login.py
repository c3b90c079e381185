"""Short-lived broker credentials for people's browsers (docs/protocol.md §11.2).

An operator (a controller-role user: only they may publish ``api/web-login``) asks for
credentials for one browser; the controller mints a web-role user in the credential
store the broker reads, with the hash of a secret the requester chose (the secret never
crosses MQTT, and ``api/result`` is read by Home Assistant and other browsers too), and
an expiry. The broker refuses the user after it (at CONNECT and on every message) and
closes a connection still open at it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from fleet.auth import CredentialStore
from fleet.controller.parts import ControllerPart
from fleet.errors import CredentialsError
from fleet.protocol.messages import ApiOp, ApiRequest, ApiResult

WEB_USER_PREFIX = "web-"


class WebLogins(ControllerPart):
    name = "web-login"

    def __init__(
        self, credentials: CredentialStore, reload: Callable[[], None] | None = None
    ) -> None:
        self.credentials = credentials
        # A broker that reads users from files (Mosquitto) rereads them now, not at its next
        # poll: the browser connects as soon as it has its credentials.
        self._reload = reload

    def api_ops(self) -> Mapping[ApiOp, Callable[[ApiRequest], Awaitable[ApiResult]]]:
        return {ApiOp.WEB_LOGIN: self._mint}

    async def _mint(self, request: ApiRequest) -> ApiResult:
        op = ApiOp.WEB_LOGIN.value
        assert request.secret_hash is not None
        username = f"{WEB_USER_PREFIX}{secrets.token_hex(4)}"
        until = time.time() + request.ttl_s
        try:
            # A file write under a lock: off the controller's loop.
            await asyncio.to_thread(self.credentials.add_web, username, request.secret_hash, until)
            if self._reload is not None:
                await asyncio.to_thread(self._reload)
        except CredentialsError as exc:
            return ApiResult(op=op, ok=False, code="bad_request", detail=str(exc)[:256])
        return ApiResult(op=op, ok=True, username=username, until=until)
