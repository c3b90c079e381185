#!/usr/bin/env bash
# The fast part of the suite on the newest other supported Python this machine has
# (3.12-3.14 beside the main venv's), in a venv of its own: the unit tests (tests/unit, the
# protocol among them), the meeting server's and the embedded broker's.
set -euo pipefail
cd "$(dirname "$0")/.."
main=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for version in 3.14 3.13 3.12 3.11; do
    [ "$version" = "$main" ] && continue
    python=$(command -v "python$version" || true)
    # pyenv's shims answer only for the selected version: look in its versions folder too.
    if ! { [ -n "$python" ] && "$python" -c 'import sys' 2>/dev/null; } && command -v pyenv >/dev/null; then
        python=$(ls -d "$(pyenv root)/versions/$version".*/bin/"python$version" 2>/dev/null | tail -1 || true)
    fi
    if [ -n "$python" ] && "$python" -c 'import sys' 2>/dev/null; then
        echo "fast suite on Python $version ($python)"
        FLEET_PYTHON="$python" FLEET_VENV=".venv-$version" scripts/setup.sh --dev >/dev/null
        exec ".venv-$version/bin/pytest" -q -p no:cacheprovider -n "${FLEET_TEST_WORKERS:-2}" \
            tests/unit tests/meetings/test_server.py tests/brokers/test_amqtt.py
    fi
done
echo "no other Python 3.11-3.14 on this machine: fast suite skipped"
