"""The `devices` op, one page of what the registry knows, and the byte budget every
listing of devices in a result keeps to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from fleet.protocol.messages import (
    MAX_LISTED_BYTES,
    MAX_LISTED_DEVICES,
    ApiOp,
    ApiRequest,
    ApiResult,
    Message,
)
from fleet.registry import Registry

M = TypeVar("M", bound=Message)


def within_budget(devices: Sequence[M]) -> list[M]:
    listed: list[M] = []
    size = 0
    for device in devices[:MAX_LISTED_DEVICES]:
        size += len(device.model_dump_json(exclude_none=True)) + 1
        if size > MAX_LISTED_BYTES:
            break
        listed.append(device)
    return listed


def inventory(registry: Registry, request: ApiRequest) -> ApiResult:
    """The `devices` op: one page, by id after `request.after`, of what the registry knows
    of each device; `next` is where the following page starts."""
    ids = sorted(d for d in registry.devices if request.after is None or d > request.after)
    page = within_budget([registry.devices[d].info() for d in ids[:MAX_LISTED_DEVICES]])
    more = len(page) < len(ids)
    return ApiResult(
        id=request.id,
        op=ApiOp.DEVICES.value,
        ok=True,
        inventory=page,
        next=page[-1].device if more and page else None,
    )
