#!/usr/bin/env bash
# Compiles every file of firmware/main/ against the ESP-IDF stubs in host/idf_stubs (gcc,
# gnu17, -Wall -Wextra -Werror -Os, as IDF builds it), once per board. Each board's
# sdkconfig.h is what Kconfig makes of main/Kconfig.projbuild and that board's defaults
# files (stub_sdkconfig.py, kconfiglib): an option Kconfig would not define is not defined.
#
#   bash firmware/host/idf_syntax_check.sh [none|qemu|s3|korvo2|xiao]...   (default: all)
#
# PYTHON: an interpreter with kconfiglib (default: python3).
# Prints "syntax <board> <file>: ok" per file; the exit status is non-zero if any fails.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fw="$here/.."
cc=${CC:-gcc}
boards=("$@")
[ ${#boards[@]} -eq 0 ] && boards=(none qemu s3 korvo2 xiao)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for board in "${boards[@]}"; do
    mkdir -p "$out/$board"
    if ! "${PYTHON:-python3}" "$here/stub_sdkconfig.py" "$board" "$out/$board/sdkconfig.h"; then
        echo "syntax $board: no sdkconfig.h"
        status=1
        continue
    fi
    for src in "$fw"/main/*.c; do
        if "$cc" -std=gnu17 -Os -Wall -Wextra -Werror -Wno-unused-parameter -fsyntax-only \
            -I"$out/$board" -I"$here/idf_stubs" -I"$fw/main" \
            -I"$fw/components/fleet_core/include" -I"$fw/components/media_core/include" \
            -I"${CJSON_INC:-/usr/include/cjson}" -include "$here/idf_stubs/newlib_extras.h" "$src"; then
            echo "syntax $board $(basename "$src"): ok"
        else
            echo "syntax $board $(basename "$src"): FAILED"
            status=1
        fi
    done
done
exit $status
