"""Grafana's side of the dashboards: its macros and variables filled in as it fills them for
InfluxQL, and every query a dashboard holds."""

from __future__ import annotations

import re
from typing import Any

DB = "fleet"
"""The InfluxDB 1.x database the dashboards' tests write to and query."""


def fill(query: str, variables: dict[str, str], start_ms: int, end_ms: int) -> str:
    """Grafana's macros and variables, as Grafana interpolates them for InfluxQL."""
    query = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    query = query.replace("$__interval", "1s")
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        query = query.replace(f"${name}", value)
    # `$` left only as a regex anchor (`/^...$/`), never as a macro or variable.
    assert not re.search(r"\$\{?[A-Za-z_]", query), f"unfilled macro in {query}"
    return query


def queries_of(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, query) for every panel target, template variable and annotation."""
    found: list[tuple[str, str]] = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["query"]))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            found.append((f"variable {var['name']!r}", var["query"]))
    for anno in board["annotations"]["list"]:
        found.append((f"annotation {anno['name']!r}", anno["target"]["query"]))
    return found
