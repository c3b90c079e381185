#!/usr/bin/env bash
# Footprint of the firmware's portable core (firmware/components/fleet_core) as the
# ESP32-C3 would carry it: RISC-V rv32imc / ilp32, -Os, one section per function.
#
#   bash bench/firmware_size.sh
#
# Prints text/data/bss per object and in total (riscv64-unknown-elf-size), and the size
# of one fleet_core_t (the device's whole state, a static in app_main.c).
#
# cJSON itself is NOT counted: ESP-IDF links its own copy (component "json") and
# Debian ships only cJSON's headers for the host. Set CJSON_SRC=/path/to/cJSON.c to
# include it. Object sizes are an upper bound: the firmware link drops unused functions
# (--gc-sections).
#
# Needs (Debian): gcc-riscv64-unknown-elf, picolibc-riscv64-unknown-elf, libcjson-dev.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
core="$root/firmware/components/fleet_core"
cc=${RV32_CC:-riscv64-unknown-elf-gcc}
size=${RV32_SIZE:-riscv64-unknown-elf-size}
cjson_inc=${CJSON_INC:-/usr/include/cjson}

for tool in "$cc" "$size"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install gcc-riscv64-unknown-elf)" >&2; exit 1; }
done
[ -f "$cjson_inc/cJSON.h" ] || { echo "missing $cjson_inc/cJSON.h (apt-get install libcjson-dev)" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

flags=(-march=rv32imc -mabi=ilp32 -Os -std=c99 -Wall -Wextra -Werror
       -ffunction-sections -fdata-sections --specs=picolibc.specs
       -I"$core/include" -I"$core/src" -I"$cjson_inc")

objs=()
for src in "$core"/src/*.c; do
    obj="$out/$(basename "${src%.c}").o"
    "$cc" "${flags[@]}" -c "$src" -o "$obj"
    objs+=("$obj")
done
if [ -n "${CJSON_SRC:-}" ]; then
    "$cc" "${flags[@]}" -w -c "$CJSON_SRC" -o "$out/cJSON.o"
    objs+=("$out/cJSON.o")
fi

# sizeof(fleet_core_t), measured as the .bss of one instance.
cat > "$out/core_state.c" <<'C'
#include "fleet_core.h"
fleet_core_t fleet_core_state_probe;
C
"$cc" "${flags[@]}" -c "$out/core_state.c" -o "$out/core_state.o"
state_bytes=$("$size" "$out/core_state.o" | awk 'NR == 2 { print $3 }')

echo "fleet_core on rv32imc/ilp32 -Os ($("$cc" -dumpversion)), $(date -u +%Y-%m-%d)"
echo
(cd "$out" && "$size" -t "${objs[@]##*/}")
echo
total=$(cd "$out" && "$size" -t "${objs[@]##*/}" | awk 'END { print $1, $2, $3 }')
read -r text data bss <<<"$total"
echo "flash (text+data): $((text + data)) bytes"
echo "static RAM of the code (data+bss): $((data + bss)) bytes"
echo "one fleet_core_t (the device state, static): $state_bytes bytes"
if [ -z "${CJSON_SRC:-}" ]; then
    echo "cJSON: not included (ESP-IDF's component 'json' provides it; set CJSON_SRC to add it)"
fi
