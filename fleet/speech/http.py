"""One POST to an OpenAI-compatible speech endpoint, bounded in time."""

from __future__ import annotations

import asyncio

import httpx

from fleet.speech.audio import VoiceError


async def post(
    url: str,
    key: str | None,
    timeout_s: float,
    *,
    json: object = None,
    data: dict[str, str] | None = None,
    files: dict[str, tuple[str, bytes, str]] | None = None,
) -> object:
    """POST and return the JSON answer; VoiceError (never a hang) when the endpoint is down,
    slow (`timeout_s` for the whole exchange) or answers an error."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(url, headers=headers, json=json, data=data, files=files)
    except TimeoutError:
        raise VoiceError(f"{url}: no answer within {timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise VoiceError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 400:
        raise VoiceError(f"{url}: HTTP {response.status_code}: {response.text[:120]}")
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return response.json()
        except ValueError as exc:
            raise VoiceError(f"{url}: bad JSON: {exc}") from exc
    return response.content
