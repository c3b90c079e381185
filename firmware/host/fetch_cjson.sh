#!/usr/bin/env bash
# cJSON's source for the rv32 build of fleet_core's unit tests (rv32_tests.sh): Debian ships
# cJSON's headers and library but not its source, and ESP-IDF (which carries its own copy)
# is not installed here. PyPI's sdist of awscrt carries cJSON 1.7.19 (Amazon's edits: no
# cJSON_GetErrorPtr, snprintf for sprintf; fleet_core uses neither). Fetched once with pip
# (pinned version and sha256), only the two files kept, each checked by sha256; later runs,
# offline ones too, use the cache. Prints the path of cJSON.c.
#
#   PYTHON=.venv/bin/python bash firmware/host/fetch_cjson.sh
#   env: FLEET_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/espfleet), PYTHON (runs pip)
set -euo pipefail
sdist=awscrt-0.38.1
sdist_sha=0dcebfaa70cf079133cd2352119e3d05e9b8ca1d1621736cfb54c03f3d5fef0f
inner=$sdist/crt/aws-c-common/source/external
declare -A want=(
    [cJSON.c]=c099ff27506d834a3b9649e9366198125e60577e7aa220f8e0f447d0a2454275
    [cJSON.h]=24ed94ef6d945cc5f36ed0d10ddd5b066d30edb86f26a35b2f6c93ab12885b26
)
cache="${FLEET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/espfleet}/cjson-1.7.19-$sdist"

verified() { # dir: both files there with the pinned hashes
    local f
    for f in "${!want[@]}"; do
        [ -f "$1/$f" ] && [ "$(sha256sum "$1/$f" | cut -d' ' -f1)" = "${want[$f]}" ] || return 1
    done
}

if ! verified "$cache"; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "${sdist/-/==} --hash=sha256:$sdist_sha" >"$work/req.txt"
    "${PYTHON:-python3}" -m pip download -q --no-deps --no-binary :all: --require-hashes \
        -r "$work/req.txt" -d "$work" >&2
    tar -xzf "$work/$sdist.tar.gz" -C "$work" "$inner/cJSON.c" "$inner/cJSON.h"
    verified "$work/$inner" || { echo "fetch_cjson: sha256 mismatch in $sdist" >&2; exit 1; }
    mkdir -p "$(dirname "$cache")"
    rm -rf "$cache.tmp" && mv "$work/$inner" "$cache.tmp" && rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
echo "$cache/cJSON.c"
