#!/usr/bin/env bash
# The firmware's build matrix: every target and board the README names, with the ESP-IDF this
# machine has and the audio components at the floors and the newest of main/idf_component.yml's
# ranges. Per entry: built (or the first error), warnings in our sources, and sizes (text, data,
# bss; each app and the bootloader against its partition or region).
#
#   firmware/scripts/build_matrix.sh [OUT_DIR]     (default ~/.cache/espfleet/fw-build/matrix)
#
# Entries:
#   esp32c3 wifi   the default build (Wi-Fi): idf_build.sh, linked
#   esp32c3 qemu   sdkconfig.defaults.qemu (OpenCores Ethernet): idf_build.sh, linked, in the
#                  firmware_qemu tier's cached build folder (FLEET_QEMU_BUILD, default
#                  ~/.cache/espfleet/fw-build/esp32c3-qemu): the image the tier boots
#   esp32s3 none | korvo2 | xiao, x components floor | newest: a full idf_build.sh when
#                  FLEET_S3_BUILD=1 and an xtensa-esp32s3-elf toolchain is on PATH; otherwise
#                  COMPILE_CHECK's compile of main/ and components/ with the exact compile
#                  commands of an IDF esp32s3 build (assembly only: no link, no size)
#
# Environment (besides idf_build.sh's: IDF_PATH or FLEET_IDF_ENV, ...):
#   COMPONENTS_FLOOR, COMPONENTS_NEWEST  folders holding esp_peer, esp_codec_dev and
#                  esp_audio_codec at those versions (default ROOT/components/{floor,latest},
#                  ROOT = FLEET_IDF_ENV's folder, as the SDK scripts' components.sh makes them)
#   COMPILE_CHECK  a compile-check.sh (default: the SDK scripts' one beside FLEET_IDF_ENV's
#                  scripts, /work/shared/esp-sdk/compile-check.sh here)
# Prints the matrix; the full logs stay in OUT_DIR. Exit status 0 when every entry built.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fw=$(cd "$here/.." && pwd)
out=${1:-$HOME/.cache/espfleet/fw-build/matrix}
mkdir -p "$out"
env_sh=${FLEET_IDF_ENV:-$HOME/.cache/espfleet/esp-sdk/env.sh}
sdk_root=$(dirname "$env_sh")
floor=${COMPONENTS_FLOOR:-$sdk_root/components/floor}
newest=${COMPONENTS_NEWEST:-$sdk_root/components/latest}
compile_check=${COMPILE_CHECK:-/work/shared/esp-sdk/compile-check.sh}

idf_env() { # runs "$@" with ESP-IDF's environment
    if [ -n "${IDF_PATH:-}" ]; then "$@"; else (. "$env_sh" > /dev/null && "$@"); fi
}
idf_version=$(idf_env bash -c 'cd "$IDF_PATH" && (git describe --tags --exact-match 2> /dev/null ||
    python3 -c "import re; s=open(\"components/esp_common/include/esp_idf_version.h\").read();
print(\"v\" + \".\".join(re.search(r\"VERSION_%s\s+(\d+)\" % k, s).group(1) for k in (\"MAJOR\", \"MINOR\", \"PATCH\")))")')
component_versions() { # DIR -> "esp_peer X, esp_codec_dev Y, esp_audio_codec Z"
    local d=$1 c v list=()
    for c in esp_peer esp_codec_dev esp_audio_codec; do
        v=$(sed -n 's/^version:[[:space:]]*["'\'']\{0,1\}\([^"'\'' ]*\).*/\1/p' "$d/$c/idf_component.yml" 2> /dev/null | head -1)
        list+=("$c ${v:-?}")
    done
    local IFS=,
    echo "${list[*]}" | sed 's/,/, /g'
}
our_warnings() { # LOG -> count of compiler warnings in firmware/main and firmware/components
    grep -E "(firmware|check/[^/]+)/(main|components)/[^:]+:[0-9]+:[0-9]+: warning:" "$1" 2> /dev/null |
        sort -u | wc -l
}
sizes() { # BUILD_DIR -> size lines
    local b=$1
    idf_env python -m esp_idf_size --format csv "$b/espfleet.map" 2> /dev/null |
        awk -F, '/^Used stat D\/IRAM/ {print "    DRAM used     " $2}
                 /^\.data size/ {print "    .data         " $2}
                 /^\.bss  size/ {print "    .bss          " $2}
                 /^\.text size/ {print "    IRAM .text    " $2}
                 /^Used Flash size/ {print "    flash used    " $2}
                 /^\.text,/ {print "      flash .text " $2}
                 /^\.rodata,/ {print "      .rodata     " $2}'
    idf_env python -m esp_idf_size --archives --format csv "$b/espfleet.map" 2> /dev/null |
        awk -F, '/^lib(main|fleet_core|media_core)\.a/ {
            printf "    %-14s flash .text %s, .rodata %s; RAM .data %s, .bss %s, IRAM .text %s\n",
                   $1, $7, $8, $2, $3, $5}'
    grep -a -E "binary size 0x[0-9a-f]+ bytes" "$b/build.log" | sed 's/^/    /' | sort -u
}

status=0
report=$out/matrix.txt
: > "$report"
say() { echo "$*" | tee -a "$report"; }
say "espfleet firmware build matrix, $(date -u +%Y-%m-%dT%H:%MZ), ESP-IDF ${idf_version:-?}"
say "(only this ESP-IDF is installed here; the README claims v5.1+ and v5.3+ for audio boards)"

c3() { # NAME BUILD_DIR DEFAULTS...
    local name=$1 b=$2 t0=$SECONDS
    shift 2
    say ""
    say "== esp32c3 $name ($(printf '%s ' sdkconfig.defaults sdkconfig.defaults.esp32c3 "$@"))"
    if bash "$fw/scripts/idf_build.sh" "$b" esp32c3 "$@" > "$b.out" 2>&1; then
        say "  built in $((SECONDS - t0)) s, $(our_warnings "$b/build.log") warnings in our sources"
        sizes "$b" | tee -a "$report"
    else
        local undef
        undef=$(grep -c "undefined reference" "$b/build.log" 2> /dev/null)
        if [ "${undef:-0}" -gt 0 ] && ! grep -v "collect2: error: ld returned" "$b/build.log" |
            grep -q "error:"; then
            say "  compiled ($(our_warnings "$b/build.log") warnings in our sources); link FAILED:" \
                "$undef undefined references, e.g. $(grep -o "undefined reference to \`[^']*'" "$b/build.log" | sort -u | head -3 | tr '\n' ' ')"
            say "  (Espressif's Wi-Fi blobs are not in this SDK: libnet80211.a, libpp.a... are empty)"
        else
            say "  FAILED: $(grep -m1 -E "error:|FAILED" "$b/build.log" 2> /dev/null || tail -1 "$b.out")"
        fi
        status=1
    fi
}

s3() { # BOARD_NAME COMPONENT_SET_NAME COMPONENT_DIR [BOARD_DEFAULTS]
    local board=$1 set=$2 cdir=$3 extra=${4:-}
    say ""
    say "== esp32s3 $board, components $set ($(component_versions "$cdir"))"
    if [ ! -d "$cdir/esp_peer" ]; then
        say "  SKIPPED: no components at $cdir"
        status=1
        return
    fi
    if [ "${FLEET_S3_BUILD:-0}" = 1 ] && command -v xtensa-esp32s3-elf-gcc > /dev/null; then
        local b=$out/esp32s3-$board-$set
        if FLEET_IDF_EXTRA_COMPONENT_DIRS="$cdir/esp_peer;$cdir/esp_codec_dev;$cdir/esp_audio_codec" \
            bash "$fw/scripts/idf_build.sh" "$b" esp32s3 $extra > "$b.out" 2>&1; then
            say "  built, $(our_warnings "$b/build.log") warnings in our sources"
            sizes "$b" | tee -a "$report"
        else
            say "  FAILED: $(grep -m1 -E "error:|undefined reference" "$b/build.log" 2> /dev/null || tail -1 "$b.out")"
            status=1
        fi
        return
    fi
    # compile-check.sh takes ROOT/components/SET: a set name beside the SDK
    local setname
    setname=$(basename "$cdir")
    local log=$out/esp32s3-$board-$set.log
    # shellcheck disable=SC2086
    if ROOT=$sdk_root bash "$compile_check" esp32s3 "$fw" "$setname" sdkconfig.defaults \
        sdkconfig.defaults.esp32s3 $extra > "$log" 2>&1; then
        say "  compiled: $(grep -m1 -E "^[0-9]+ files, [0-9]+ failed" "$log") of main/ and" \
            "components/ (assembly only, fake-xtensa: no link, no size);" \
            "$(our_warnings "$log") warnings in our sources"
    else
        say "  FAILED: $(grep -m1 -E "error:" "$log" || tail -1 "$log")"
        status=1
    fi
    local theirs
    theirs=$(grep -E "^[0-9]+ files, [0-9]+ failed" "$log" | sed -n 2p)
    [ -n "$theirs" ] && say "  the components' own sources: $theirs ($(grep -A3 ": FAILED" "$log" |
        grep -m1 -oE "[a-z_]+\.h: No such file|error: .*" || true))"
}

c3 wifi "$out/esp32c3-wifi"
c3 qemu "${FLEET_QEMU_BUILD:-$HOME/.cache/espfleet/fw-build/esp32c3-qemu}" sdkconfig.defaults.qemu
for set in floor newest; do
    cdir=$floor
    [ "$set" = newest ] && cdir=$newest
    s3 none "$set" "$cdir"
    s3 korvo2 "$set" "$cdir" sdkconfig.defaults.korvo2
    s3 xiao "$set" "$cdir" sdkconfig.defaults.xiao_s3_sense
done
say ""
say "logs: $out"
exit $status
