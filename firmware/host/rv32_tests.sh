#!/usr/bin/env bash
# Builds the unit tests for 32-bit RISC-V (rv32imc/ilp32: 4-byte long and size_t, as on an
# ESP32-C3) with Debian's picolibc, to run under qemu-system-riscv32 -M virt with
# semihosting (the exit status is the tests').
#
#   bash firmware/host/rv32_tests.sh OUTDIR
#   qemu-system-riscv32 -M virt -bios none -nographic -semihosting-config enable=on,target=native \
#       -kernel OUTDIR/media_core_tests.elf
#
# media_core_tests.elf: the media core without Opus (libopus is not built for rv32 here).
# fleet_core_tests.elf: only when CJSON_SRC names cJSON.c (Debian ships cJSON's headers and
# library, not its source; ESP-IDF carries its own copy). fetch_cjson.sh prints a cached one:
#   CJSON_SRC=$(bash firmware/host/fetch_cjson.sh) bash firmware/host/rv32_tests.sh OUTDIR
# Needs (Debian): gcc-riscv64-unknown-elf, picolibc-riscv64-unknown-elf.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: rv32_tests.sh OUTDIR}
cc=${RV32_CC:-riscv64-unknown-elf-gcc}
mkdir -p "$out"
comp="$here/../components"
flags=(-march=rv32imc -mabi=ilp32 -O2 -g -std=c99 -Wall -Wextra -Werror
       --specs=picolibc.specs --oslib=semihost --crt0=semihost
       -Wl,--defsym=__flash=0x80000000 -Wl,--defsym=__flash_size=0x400000
       -Wl,--defsym=__ram=0x80400000 -Wl,--defsym=__ram_size=0x2000000
       -Wl,--defsym=__stack_size=0x20000)

"$cc" "${flags[@]}" -I"$comp/media_core/include" -I"$here/tests" \
    "$comp"/media_core/src/*.c "$here/tests/harness.c" "$here/tests/test_media.c" \
    "$here/tests/test_media_main.c" -lm -o "$out/media_core_tests.elf"

if [ -n "${CJSON_SRC:-}" ]; then
    cjson_inc=$(dirname "$CJSON_SRC")
    "$cc" "${flags[@]}" -w -c "$CJSON_SRC" -o "$out/cJSON.o" # not ours: its warnings are not
    "$cc" "${flags[@]}" -I"$comp/fleet_core/include" -I"$comp/fleet_core/src" \
        -I"$comp/fleet_core/controller" -I"$here/tests" -I"$here" -I"$cjson_inc" \
        "$comp"/fleet_core/src/*.c "$comp"/fleet_core/controller/*.c "$out/cJSON.o" \
        "$here"/tests/{harness,fake_port,test_json,test_topics,test_msg,test_core,test_host_url,test_main}.c \
        "$here/host_url.c" -lm -o "$out/fleet_core_tests.elf"
fi
