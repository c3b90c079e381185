#!/usr/bin/env bash
# Compiles every file of firmware/main/ against the ESP-IDF stubs in host/idf_stubs (gcc,
# gnu17, -Wall -Wextra -Werror -Os, as IDF builds it), once per audio board.
#
#   bash firmware/host/idf_syntax_check.sh [none|korvo2|xiao]...   (default: all three)
#
# Prints "syntax <board> <file>: ok" per file; the exit status is non-zero if any fails.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fw="$here/.."
cc=${CC:-gcc}
boards=("$@")
[ ${#boards[@]} -eq 0 ] && boards=(none korvo2 xiao)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for board in "${boards[@]}"; do
    mkdir -p "$out/$board"
    {
        echo '#pragma once'
        echo '#define CONFIG_FLEET_HW_NAME "stub-board"'
        echo '#define CONFIG_FLEET_TELE_INTERVAL_S 5'
        echo '#define CONFIG_FLEET_IDENTIFY_GPIO -1'
        echo '#define CONFIG_FLEET_NTP_SERVER "pool.ntp.org"'
        case "$board" in
            korvo2) echo '#define CONFIG_FLEET_BOARD_KORVO2 1'; echo '#define CONFIG_FLEET_AUDIO 1' ;;
            xiao) echo '#define CONFIG_FLEET_BOARD_XIAO_S3_SENSE 1'; echo '#define CONFIG_FLEET_AUDIO 1' ;;
            none) echo '#define CONFIG_FLEET_BOARD_NONE 1' ;;
            *) echo "unknown board $board" >&2; exit 2 ;;
        esac
        echo '#define CONFIG_FLEET_AUDIO_RATE 16000'
    } > "$out/$board/sdkconfig.h"
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
