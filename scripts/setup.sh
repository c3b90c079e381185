#!/usr/bin/env bash
# Install what espfleet needs on a fresh Debian machine with Python 3.11:
# the Debian packages (when missing) and a virtualenv in .venv with the project.
#   scripts/setup.sh          runtime only (the platform, `fleet`)
#   scripts/setup.sh --dev    plus what the test suite needs (compilers, mosquitto, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

# espeak-ng: the voice assistant's offline text-to-speech (fleet agent join --mode assistant).
runtime_pkgs=(python3-venv espeak-ng)
# The test suite runs a real Mosquitto, VictoriaMetrics and InfluxDB 1.x (telemetry), a
# network namespace (iproute2: a host with only loopback for the media tests) and builds
# the firmware core (gcc, clang/libFuzzer, cJSON, libmosquitto): the firmware's own list
# is the source of truth for those.
dev_pkgs=(mosquitto iproute2 victoria-metrics influxdb)
if [ "$dev" = 1 ]; then
    mapfile -t fw_pkgs < <(grep -v '^\s*#' firmware/host/DEPENDENCIES | grep -v '^\s*$')
    dev_pkgs+=("${fw_pkgs[@]}")
fi

wanted=("${runtime_pkgs[@]}")
[ "$dev" = 1 ] && wanted+=("${dev_pkgs[@]}")
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# python3-venv only matters for Debian's own python3; a pyenv/python.org 3.11 has venv built in.
if python3.11 -c 'import venv, ensurepip' 2>/dev/null; then
    missing=("${missing[@]/python3-venv}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=$(command -v python3.11 || command -v python3)
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "espfleet needs Python 3.11"'
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
    .venv/bin/python -m pip install -q -e '.[dev]'
else
    .venv/bin/python -m pip install -q -e '.[telemetry]'
fi
echo "ready: .venv/bin/fleet"
