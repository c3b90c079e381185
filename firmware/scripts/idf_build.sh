#!/usr/bin/env bash
# Builds the firmware with ESP-IDF into BUILD_DIR (incremental when BUILD_DIR exists), and
# prints the path of the app image on success.
#
#   firmware/scripts/idf_build.sh BUILD_DIR TARGET [DEFAULTS_FILE...]
#
# TARGET is esp32c3 or esp32s3; the DEFAULTS_FILEs (paths relative to firmware/ or absolute)
# come after sdkconfig.defaults and sdkconfig.defaults.TARGET, e.g. sdkconfig.defaults.qemu
# or sdkconfig.defaults.korvo2. The sdkconfig lives in BUILD_DIR, not in the source tree.
#
# Environment:
#   IDF_PATH              an ESP-IDF (its tools on PATH, as export.sh leaves them); else
#   FLEET_IDF_ENV         a script to source that sets IDF_PATH and PATH (default
#                         ~/.cache/espfleet/esp-sdk/env.sh when that exists)
#   FLEET_IDF_DEFAULTS    more sdkconfig defaults files, ';'-separated, applied last (default:
#                         sdkconfig.sdk beside FLEET_IDF_ENV when that exists: settings
#                         that SDK's toolchain needs)
#   FLEET_IDF_COMPONENTS  the components to build, ';'-separated (default
#                         "main;esptool_py;bootloader;partition_table": main's requirements
#                         come along; an IDF tree without every submodule needs this)
#   FLEET_IDF_EXTRA_COMPONENT_DIRS  ';'-separated component folders (the audio components
#                         when the component manager is off)
# The build log is BUILD_DIR/build.log; its warnings are the lines with "warning:".
set -euo pipefail
usage() { sed -n '2,25p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fw=$(cd "$here/.." && pwd)
build=$1 target=$2
shift 2
case "$target" in esp32c3 | esp32s3) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac

if [ -z "${IDF_PATH:-}" ]; then
    env_sh=${FLEET_IDF_ENV:-$HOME/.cache/espfleet/esp-sdk/env.sh}
    [ -f "$env_sh" ] || { echo "no ESP-IDF: set IDF_PATH (export.sh) or FLEET_IDF_ENV" >&2; exit 3; }
    # shellcheck disable=SC1090
    . "$env_sh"
    if [ -z "${FLEET_IDF_DEFAULTS+x}" ] && [ -f "$(dirname "$env_sh")/sdkconfig.sdk" ]; then
        FLEET_IDF_DEFAULTS=$(dirname "$env_sh")/sdkconfig.sdk
    fi
fi
command -v idf.py > /dev/null || { echo "idf.py is not on PATH (IDF_PATH=$IDF_PATH)" >&2; exit 3; }

defaults="$fw/sdkconfig.defaults;$fw/sdkconfig.defaults.$target"
for f in "$@"; do
    case "$f" in /*) ;; *) f="$fw/$f" ;; esac
    [ -f "$f" ] || { echo "no defaults file $f" >&2; exit 2; }
    defaults="$defaults;$f"
done
[ -n "${FLEET_IDF_DEFAULTS:-}" ] && defaults="$defaults;$FLEET_IDF_DEFAULTS"
components=${FLEET_IDF_COMPONENTS:-main;esptool_py;bootloader;partition_table}

mkdir -p "$build"
build=$(cd "$build" && pwd)
# A change of target or defaults starts the configuration over (sdkconfig is derived).
stamp="$target|$defaults|$components|${FLEET_IDF_EXTRA_COMPONENT_DIRS:-}"
if [ "$(cat "$build/.fleet-config" 2> /dev/null)" != "$stamp" ]; then
    rm -rf "$build"/* "$build/.fleet-config"
fi
args=(-C "$fw" -B "$build" "-DIDF_TARGET=$target" "-DSDKCONFIG=$build/sdkconfig"
    "-DSDKCONFIG_DEFAULTS=$defaults" "-DCOMPONENTS=$components")
[ -n "${FLEET_IDF_EXTRA_COMPONENT_DIRS:-}" ] &&
    args+=("-DEXTRA_COMPONENT_DIRS=$FLEET_IDF_EXTRA_COMPONENT_DIRS")
if ! idf.py "${args[@]}" build > "$build/build.log" 2>&1; then
    grep -E "error|FAILED|undefined reference" "$build/build.log" | head -20 >&2 || tail -20 "$build/build.log" >&2
    echo "build failed: $build/build.log" >&2
    exit 1
fi
echo "$stamp" > "$build/.fleet-config"
echo "$build/espfleet.bin"
