"""The per-device table that join-all/leave-all/join/leave, announce and call print: one
row per target (device, outcome in its colour, online, then the command's own columns),
a caption for rows left out, and the result's code line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from cli.common import console, fail

if TYPE_CHECKING:
    from fleet.protocol.messages import ApiResult, DeviceResult

Column = Callable[["DeviceResult"], str]


def print_outcomes(
    result: ApiResult,
    elapsed: float,
    *,
    title: str,
    styles: Mapping[str, str],
    columns: Mapping[str, Column] | None = None,
    omitted: str = "and {n} more",
    refused_code: int,
) -> None:
    """The table of `result.devices` (outcomes not in `styles` are red), then the code
    line; a refusal with no device is `fail`ed with `refused_code`."""
    from rich.table import Table

    if not result.ok and not result.devices:
        fail(f"{result.op} refused ({result.code}): {result.detail}", refused_code, result.code)
    extra = columns or {}
    if result.devices:
        table = Table(title=title)
        for column in ("device", "outcome", "online", *extra):
            table.add_column(column)
        for d in result.devices:
            style = styles.get(d.outcome.value, "red")
            table.add_row(
                d.device,
                f"[{style}]{d.outcome.value}[/]",
                "yes" if d.online else "no",
                *(cell(d) for cell in extra.values()),
            )
        if result.omitted:
            table.caption = omitted.format(n=result.omitted)
        console.print(table)
    style = "green" if result.ok else "red"
    console.print(f"[{style}]{result.code}[/]: {result.detail} in {elapsed:.2f}s", highlight=False)
