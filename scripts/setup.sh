#!/usr/bin/env bash
# Install what espfleet needs on a fresh Debian machine with Python 3.11 to 3.14:
# the Debian packages (when missing) and a virtualenv in .venv with the project.
#   scripts/setup.sh          runtime only (the platform, `fleet`)
#   scripts/setup.sh --dev    plus what the test suite needs (compilers, databases, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

# Mosquitto is the local broker `fleet up`, `fleet demo` and `fleet broker run` start
# (MQTT 5 beside 3.1.1; amqtt in-process is the fallback without it). Its generated config
# loads a client-id plugin built on first use (broker/mosquitto/plugin.py): gcc with the C
# library's headers (libc6-dev, only a recommendation of gcc), mosquitto_broker.h and
# mosquitto_plugin.h (mosquitto-dev) and mosquitto.h (libmosquitto-dev).
# janus: the mixer of mixed rooms (its AudioBridge plugin). `fleet up` runs its own Janus
# with a generated config; the package's system service is not needed.
# espeak-ng: the voice agent's offline text-to-speech.
# scripts/fresh_root_check.sh proves this list on a fresh Debian 12 (CI runs it).
runtime_pkgs=(python3-venv mosquitto mosquitto-dev libmosquitto-dev gcc libc6-dev janus espeak-ng)
# The test suite runs VictoriaMetrics and InfluxDB 1.x (telemetry), a network namespace
# (iproute2: a host with only loopback for the media tests) and builds the firmware core
# (gcc, clang/libFuzzer, cJSON, libmosquitto): the firmware's own list is the source of
# truth for those.
# chromium: the web console's browser tests (driven by the playwright package).
# debootstrap: scripts/fresh_root_check.sh's fresh Debian root (CI runs it after the suite).
dev_pkgs=(iproute2 victoria-metrics influxdb chromium debootstrap)
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
    # Debian starts its own mosquitto service on port 1883 when it installs the package;
    # `fleet up` runs its own, configured from the fleet's users and ACL, on that port.
    if printf '%s\n' "${missing[@]}" | grep -qx mosquitto && [ -d /run/systemd/system ]; then
        echo "disabling Debian's mosquitto service (fleet up starts its own on port 1883)"
        $sudo_cmd systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    fi
fi

# Python 3.11 to 3.14: `python3` when it is one of them, else the newest pythonX.Y found.
# FLEET_PYTHON picks one by hand; FLEET_VENV names the venv (default .venv).
supported='import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))'
python="${FLEET_PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3 python3.14 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "$supported" 2>/dev/null; then
            python=$(command -v "$candidate")
            break
        fi
    done
fi
if [ -z "$python" ] || ! "$python" -c "$supported" 2>/dev/null; then
    echo "espfleet needs Python 3.11 to 3.14 (found: $(python3 --version 2>&1))" >&2
    exit 1
fi
venv="${FLEET_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
    "$venv/bin/python" -m pip install -q -e '.[dev]'
else
    "$venv/bin/python" -m pip install -q -e '.[telemetry]'
fi
# cJSON's source for fleet_core's rv32 unit tests, fetched once into a cache (pinned, sha256).
if [ "$dev" = 1 ]; then
    PYTHON="$venv/bin/python" bash firmware/host/fetch_cjson.sh >/dev/null ||
        echo "warning: no cJSON source: fleet_core's rv32 unit tests will not run" >&2
fi
echo "ready: $venv/bin/fleet ($("$venv/bin/python" --version))"
