#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what it needs, lint, check the import
# contract and the types (both configured in pyproject.toml), then pytest (two workers),
# then a fast part of the suite on the newest other Python the machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/pytest -q -p no:cacheprovider -n "${FLEET_TEST_WORKERS:-2}" "$@"
scripts/other_python.sh
