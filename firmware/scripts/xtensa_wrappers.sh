#!/bin/bash
# xtensa_wrappers.sh: xtensa-esp32s3-elf-* commands for ESP-IDF over an upstream GCC built with
# Espressif's ESP32-S3 core overlay (not Espressif's own GCC). Such a GCC differs in two ways, which
# the gcc/g++ wrappers paper over:
#  - it refuses the Espressif-only options (-mdisable-hardware-atomics, -mfix-esp32-psram-*, -mcpu=,
#    -mdynconfig=): dropped, they select workarounds that the S3 without PSRAM does not use;
#  - its default link names Tensilica's simulator libraries (-lsim -lhandlers-sim -lhal) and crt files:
#    links get -nostdlib (IDF's link line names libc, libm, libgcc and libstdc++), then libc and libgcc
#    once more at the end, where the driver's own list would stand, for what libstdc++ needs of them;
#  - its libstdc++ registers static destructors with __cxa_atexit, which wants crtbegin's
#    __dso_handle (Espressif's is built without __cxa_atexit): defined as 0, one image has one DSO.
# The other tools are links to the toolchain's own.
#   usage: TOOLCHAIN=DIR OUT=DIR xtensa_wrappers.sh     (TOOLCHAIN/bin/xtensa-esp32s3-elf-gcc must exist)
#   result: OUT/bin, to put first in PATH for `idf.py set-target esp32s3`
set -euo pipefail
: "${TOOLCHAIN:?the toolchain prefix (TOOLCHAIN/bin/xtensa-esp32s3-elf-gcc)}" "${OUT:?folder for the wrappers}"
T=$(cd "$TOOLCHAIN" && pwd); P=xtensa-esp32s3-elf
[ -x "$T/bin/$P-gcc" ] || { echo "no $T/bin/$P-gcc" >&2; exit 1; }
B=$OUT/bin; rm -rf "$B"; mkdir -p "$B"
for t in "$T"/bin/$P-*; do ln -s "$t" "$B/${t##*/}"; done
for t in gcc g++ c++ cpp; do
  rm -f "$B/$P-$t"
  [ -x "$T/bin/$P-$t" ] || continue
  cat > "$B/$P-$t" <<WRAP
#!/bin/bash
args=() link=1
for a in "\$@"; do
  case \$a in
    -mdisable-hardware-atomics|-mfix-esp32-psram-*|-mcpu=*|-mdynconfig=*) continue ;;
    -c|-S|-E|-M|-MM) link=0 ;;
  esac
  args+=("\$a")
done
[ "\$#" -eq 0 ] && link=0
case " \$* " in *" --version "*|*" -dumpversion "*|*" -dumpmachine "*|*" -print-"*|*" -v "*) link=0 ;; esac
[ \$link = 1 ] && args=(-nostdlib "\${args[@]}" -Wl,--defsym=__dso_handle=0 -lc -lgcc)
exec "$T/bin/$P-$t" "\${args[@]}"
WRAP
  chmod +x "$B/$P-$t"
done
echo "$B"
