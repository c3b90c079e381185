"""What the tests share: real brokers, databases, mixers, network namespaces, the firmware
build, the controller and devices as running parts, raw wire clients and the CLI.

Tests and benches import it as a package (``from tests.support.brokers import ...``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root: where `fleet` runs, the docs and the firmware live."""
