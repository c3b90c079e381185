#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what it needs, lint, check the import
# contract and the types (both configured in pyproject.toml), then pytest (two workers),
# then a fast part of the suite on the newest other Python the machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { echo "test.sh: $1 done at ${SECONDS} s"; }
scripts/setup.sh --dev
phase "setup"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/mypy
phase "lint, import contract and types"
.venv/bin/pytest -q -p no:cacheprovider -n "${FLEET_TEST_WORKERS:-2}" "$@"
phase "pytest"
scripts/other_python.sh
phase "the other Python's fast part"
