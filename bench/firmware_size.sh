#!/usr/bin/env bash
# Footprint of the firmware's portable parts as an ESP32-C3 would carry them (RISC-V
# rv32imc / ilp32, -Os, one section per function): fleet_core (signalling) and media_core
# (the audio path) separately. Then the media core's work per 20 ms frame, mixing 1, 2 and
# 4 peers, as callgrind instruction counts (stable from run to run, unlike timings).
#
#   bash bench/firmware_size.sh            # sizes and per-frame cost
#   SKIP_CALLGRIND=1 bash bench/firmware_size.sh
#
# Prints text/data/bss per object and in total (riscv64-unknown-elf-size), the size of one
# fleet_core_t and one mc_t (each device keeps one of each, static), and per frame:
# instructions on the host (x86-64, gcc -O2, libopus 1.3) with what they would take at
# 240 MHz and one instruction per cycle, against the 20 ms budget.
#
# cJSON itself is NOT counted: ESP-IDF links its own copy (component "json") and
# Debian ships only cJSON's headers for the host. Set CJSON_SRC=/path/to/cJSON.c to
# include it (CJSON_SRC=$(bash firmware/host/fetch_cjson.sh) gives a cached copy). Object sizes are an upper bound: the firmware link drops unused functions
# (--gc-sections).
#
# Needs (Debian): gcc-riscv64-unknown-elf, picolibc-riscv64-unknown-elf, libcjson-dev,
# and for the per-frame cost gcc, libopus-dev, valgrind.
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
if [ -z "${KEEP_OUT:-}" ]; then trap 'rm -rf "$out"' EXIT; else echo "objects kept in $out"; fi

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

# What a device links: every entry point the ESP port calls, --gc-sections, and only the
# sections that came from our objects counted (libc and the cJSON placeholders are not), and
# of those only what is loaded (code, constants, data): not each object's .comment and
# .riscv.attributes, which no image carries and which would grow with the number of files.
cat > "$out/link_probe.c" <<'C'
#include <stddef.h>
#include "cJSON.h"
#include "fleet_core.h"
/* Placeholders so the link closes; ESP-IDF's cJSON takes their place on a device (and
 * CJSON_SRC's, when set). */
#ifndef FLEET_PROBE_HAS_CJSON
cJSON *cJSON_ParseWithLengthOpts(const char *v, size_t n, const char **e, cJSON_bool r)
{ (void)v; (void)n; (void)e; (void)r; return NULL; }
void cJSON_Delete(cJSON *c) { (void)c; }
cJSON_bool cJSON_IsString(const cJSON *const c) { return c != NULL; }
cJSON_bool cJSON_IsObject(const cJSON *const c) { return c != NULL; }
cJSON_bool cJSON_IsNumber(const cJSON *const c) { return c != NULL; }
cJSON_bool cJSON_IsNull(const cJSON *const c) { return c != NULL; }
cJSON_bool cJSON_IsArray(const cJSON *const c) { return c != NULL; }
cJSON_bool cJSON_IsTrue(const cJSON *const c) { return c != NULL; }
cJSON_bool cJSON_IsBool(const cJSON *const c) { return c != NULL; }
int cJSON_GetArraySize(const cJSON *c) { return c != NULL; }
cJSON *cJSON_GetArrayItem(const cJSON *c, int i) { (void)i; return (cJSON *)c; }
#endif
static fleet_core_t core;
static fleet_config_t cfg;
static fleet_port_t port;
int main(void)
{
    if (!fleet_core_init(&core, &cfg, &port)) { return 1; }
    fleet_core_set_ip(&core, "10.0.0.2");
    (void)fleet_core_status_topic(&core);
    fleet_core_on_connected(&core);
    fleet_core_on_message(&core, "t", 1, "{}", 2);
    (void)fleet_core_tick(&core);
    (void)fleet_core_send_sdp(&core, "p", true, "v=0");
    (void)fleet_core_send_reject(&core, "p", NULL, "x");
    (void)fleet_core_send_candidate(&core, "p", "0", NULL);
    fleet_core_shutdown(&core);
    fleet_core_on_disconnected(&core);
    return 0;
}
C
probe_defs=()
[ -n "${CJSON_SRC:-}" ] && probe_defs=(-DFLEET_PROBE_HAS_CJSON)
"$cc" "${flags[@]}" "${probe_defs[@]}" -Wl,--gc-sections -Wl,-Map="$out/core.map" \
    "$out/link_probe.c" "${objs[@]}" -o "$out/core_probe.elf"
linked=$(awk 'function hex(s,  i, v) { v = 0; s = tolower(substr(s, 3))
                  for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
                  return v }
              /^Linker script and memory map/ { on = 1 }
              on && $1 ~ /^\./ { sec = $1 } # a long section name has its numbers on the next line
              on && $NF ~ /\/fleet_[a-z_]+\.o$/ && $(NF-1) ~ /^0x/ && $(NF-2) ~ /^0x/ &&
                  sec ~ /^\.(text|s?rodata|s?data|s?bss)/ {
                  sum += hex($(NF-1)) }
              END { print sum + 0 }' "$out/core.map")
echo "fleet_core as a device links it (--gc-sections, every entry point the port calls): $linked bytes (budget 32768)"

# ---- media_core ------------------------------------------------------------------------------
media="$root/firmware/components/media_core"
mflags=(-march=rv32imc -mabi=ilp32 -Os -std=c99 -Wall -Wextra -Werror
        -ffunction-sections -fdata-sections --specs=picolibc.specs -I"$media/include")
mobjs=()
for src in "$media"/src/*.c; do
    obj="$out/media_$(basename "${src%.c}").o"
    "$cc" "${mflags[@]}" -c "$src" -o "$obj"
    mobjs+=("$obj")
done
cat > "$out/mc_state.c" <<'C'
#include "media_core.h"
mc_t media_core_state_probe;
C
"$cc" "${mflags[@]}" -c "$out/mc_state.c" -o "$out/mc_state.o"
mc_bytes=$("$size" "$out/mc_state.o" | awk 'NR == 2 { print $3 }')
echo
echo "media_core on rv32imc/ilp32 -Os"
echo
(cd "$out" && "$size" -t "${mobjs[@]##*/}")
echo
read -r mtext mdata mbss <<<"$(cd "$out" && "$size" -t "${mobjs[@]##*/}" | awk 'END { print $1, $2, $3 }')"
echo "media_core flash (text+data): $((mtext + mdata)) bytes"
echo "one mc_t (the audio state: $(grep -m1 'define MC_MAX_PEERS' "$media/include/media_core.h" | awk '{print $3}') peers, jitter buffers, scratch): $mc_bytes bytes"
echo "libm (sqrt for levels) and Opus are not included: esp_audio_codec brings Opus"

# ---- per-frame cost ---------------------------------------------------------------------------
if [ -n "${SKIP_CALLGRIND:-}" ]; then
    exit 0
fi
for tool in gcc valgrind pkg-config; do
    command -v "$tool" >/dev/null || { echo "missing $tool (per-frame cost skipped)" >&2; exit 1; }
done
host="$root/firmware/host"
gcc -O2 -std=c99 -Wall -Wextra -Werror -I"$media/include" -I"$host" \
    "$host/bench/media_frame_bench.c" "$host/host_opus.c" "$media"/src/*.c \
    $(pkg-config --cflags --libs opus) -lm -o "$out/media_frame_bench"
frames=200
echo
echo "media core per 20 ms frame at 16 kHz (callgrind, $frames frames, x86-64 gcc -O2)"
printf '%-6s %-5s %14s %12s %10s\n' codec peers "instr/frame" "@240MHz us" "of 20 ms"
for codec in pcmu opus; do
    for peers in 1 2 4; do
        cg="$out/cg.$codec.$peers"
        valgrind --tool=callgrind --callgrind-out-file="$cg" --toggle-collect=run_frames \
            "$out/media_frame_bench" "$peers" "$codec" "$frames" >/dev/null 2>&1
        total=$(awk '/^totals:/ { print $2 }' "$cg")
        awk -v t="$total" -v f="$frames" -v c="$codec" -v p="$peers" 'BEGIN {
            per = t / f; us = per / 240.0;
            printf "%-6s %-5d %14.0f %12.0f %9.1f%%\n", c, p, per, us, 100.0 * us / 20000.0 }'
    done
done
echo "pcmu: the media core alone (G.711 is built in); opus: with libopus encode (once) and"
echo "decode (per peer), complexity 5. At 240 MHz one instruction per cycle is optimistic for"
echo "an Xtensa LX7 running code built for it, and the host's instruction count is not the"
echo "ESP32-S3's: read the ratios between rows, and the order of magnitude."
