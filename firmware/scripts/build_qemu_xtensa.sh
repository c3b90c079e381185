#!/bin/bash
# build_qemu_xtensa.sh: Espressif's QEMU 9.2 line built for xtensa-softmmu (machines esp32 and esp32s3,
# with the OpenCores Ethernet MAC open_eth) from a bare git mirror, for the ESP32-S3 emulation tier.
# An ESP-IDF user gets the same binary from `idf_tools.py install qemu-xtensa`.
#   usage: QGIT=BARE_GIT_DIR KGIT=KEYCODEMAPDB_BARE_GIT_DIR OUT=DIR [QREV=REV] build_qemu_xtensa.sh
#   result: OUT/install/bin/qemu-system-xtensa (sources and build tree in OUT/src, OUT/build)
set -euo pipefail
: "${QGIT:?bare git repository of Espressif QEMU 9.2 (e.g. a mirror of esp-develop-9.2)}"
: "${KGIT:?bare git repository of qemu/keycodemapdb}"
: "${OUT:?folder to build in}"
QREV=${QREV:-HEAD}
S=$OUT/src B=$OUT/build
rm -rf "$S" "$B"; mkdir -p "$S" "$B"
git --git-dir="$QGIT" archive "$QREV" | tar -x -C "$S"
KREV=$(sed -n 's/^revision = //p' "$S/subprojects/keycodemapdb.wrap")
git --git-dir="$KGIT" rev-parse --verify -q "$KREV^{commit}" >/dev/null || KREV=HEAD
mkdir -p "$S/subprojects/keycodemapdb"
git --git-dir="$KGIT" archive "$KREV" | tar -x -C "$S/subprojects/keycodemapdb"
# tests/fp needs two more git subprojects (softfloat, testfloat): not built
sed -i "s/^  subdir('fp')/  # subdir('fp')/" "$S/tests/meson.build"
cd "$B"
"$S/configure" --prefix="$OUT/install" --target-list=xtensa-softmmu --enable-gcrypt --enable-slirp \
  --enable-fdt=system --disable-docs --disable-user --disable-capstone --disable-vnc --disable-gtk --disable-sdl \
  --disable-opengl --disable-spice --disable-curses --disable-werror --disable-tools --disable-guest-agent \
  --disable-xen --disable-kvm --disable-vhost-user --disable-libusb --disable-usb-redir --disable-smartcard \
  --disable-virglrenderer --disable-alsa --disable-pa --disable-jack --disable-oss --disable-pipewire \
  --disable-sndio --disable-dbus-display --disable-bpf --disable-libudev --disable-linux-aio \
  --disable-linux-io-uring --disable-vduse-blk-export --disable-fuse --disable-gnutls --disable-nettle \
  --disable-plugins --disable-rbd --disable-glusterfs --disable-libiscsi --disable-libnfs --disable-libssh \
  --disable-curl --disable-zstd --disable-lzo --disable-snappy --disable-bzip2 --disable-brlapi \
  --disable-seccomp --disable-cap-ng --disable-attr --disable-vde --disable-netmap --disable-l2tpv3 \
  > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -j"${JOBS:-$(nproc)}" > "$OUT/ninja.log" 2>&1 || { grep -m5 -A10 FAILED "$OUT/ninja.log"; exit 1; }
ninja install > /dev/null
"$OUT/install/bin/qemu-system-xtensa" -machine help | grep -i esp
