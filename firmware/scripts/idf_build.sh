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
# IDF's build directory records the source's path, so a build from another checkout (a
# fresh clone in CI) would start over. The sources are mirrored beside the build instead,
# copying only files whose content changed: their times stay, and the build stays incremental.
src="$build.src"
python3 - "$fw" "$src" << 'PY'
import filecmp, os, shutil, sys
from pathlib import Path
fw, src = Path(sys.argv[1]), Path(sys.argv[2])
skip = {"build", "host", "scripts"}
wanted = set()
for path in fw.rglob("*"):
    rel = path.relative_to(fw)
    if rel.parts[0] in skip or path.is_dir() or rel.name == "sdkconfig":
        continue
    wanted.add(rel)
    dst = src / rel
    if not dst.exists() or not filecmp.cmp(path, dst, shallow=False):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)
        os.utime(dst)  # newer than what the last build saw
for path in list(src.rglob("*")):
    if path.is_file() and path.relative_to(src) not in wanted:
        path.unlink()
PY
defaults=${defaults//$fw/$src}
fw=$src
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
