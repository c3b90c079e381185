#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what it needs, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
