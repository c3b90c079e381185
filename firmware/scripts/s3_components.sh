#!/bin/bash
# s3_components.sh: the two pieces the ESP component manager would add to an esp_peer build and that a
# build without the manager (IDF_COMPONENT_MANAGER=0, offline) lacks:
#   OUT/esp_libsrtp  libsrtp 2.x (Cisco's SRTP library, from Debian's source package or a given tarball)
#                    as an ESP-IDF component, with its own AES-CM and HMAC-SHA1 (the registry's
#                    espressif/esp_libsrtp wraps the same library);
#   OUT/esp_peer     a copy of esp_peer whose PRIV_REQUIRES names esp_libsrtp, which is what the
#                    manager does with esp_peer's idf_component.yml dependency.
# Pass both as EXTRA_COMPONENT_DIRS (with esp_codec_dev and esp_audio_codec) in place of esp_peer.
#   usage: OUT=DIR ESP_PEER=DIR [SRTP_TAR=libsrtp2_X.orig.tar.gz] s3_components.sh
# Without SRTP_TAR, `apt-get source --download-only libsrtp2` fetches Debian bookworm's (2.5.0) into
# OUT/srcpkg with a private sources list (the system's apt configuration is not touched).
set -euo pipefail
: "${OUT:?folder to write the components in}" "${ESP_PEER:?the esp_peer component folder}"
[ -f "$ESP_PEER/CMakeLists.txt" ] || { echo "no $ESP_PEER/CMakeLists.txt" >&2; exit 1; }
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
if [ -z "${SRTP_TAR:-}" ]; then
  P=$OUT/srcpkg; mkdir -p "$P/lists/partial" "$P/cache"
  echo 'deb-src http://deb.debian.org/debian bookworm main' > "$P/sources.list"
  A=(-o Dir::Etc::SourceList="$P/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$P/lists" -o Dir::Cache="$P/cache")
  ls "$P"/libsrtp2_*.orig.tar.gz >/dev/null 2>&1 || ( cd "$P" && apt-get "${A[@]}" -qq update &&
    apt-get "${A[@]}" -qq source --download-only libsrtp2 ) >/dev/null 2>&1
  SRTP_TAR=$(ls "$P"/libsrtp2_*.orig.tar.gz | tail -1)
fi
S=$OUT/esp_libsrtp; rm -rf "$S"; mkdir -p "$S/libsrtp" "$S/port"
tar -xzf "$SRTP_TAR" -C "$S/libsrtp" --strip-components=1
V=$(sed -n 's/^project(libsrtp2 VERSION \([0-9.]*\).*/\1/p' "$S/libsrtp/CMakeLists.txt")
cat > "$S/port/config.h" <<CFG
/* libsrtp $V on ESP-IDF: little-endian 32-bit, newlib + lwIP headers, built-in crypto */
#define PACKAGE_VERSION "$V"
#define PACKAGE_STRING "libsrtp2 $V"
#define CPU_RISC 1
#define HAVE_ARPA_INET_H 1
#define HAVE_INTTYPES_H 1
#define HAVE_NETINET_IN_H 1
#define HAVE_STDINT_H 1
#define HAVE_STDLIB_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_UNISTD_H 1
#define HAVE_INLINE 1
#define SIZEOF_UNSIGNED_LONG 4
#define SIZEOF_UNSIGNED_LONG_LONG 8
CFG
cat > "$S/CMakeLists.txt" <<'CM'
# libsrtp as an ESP-IDF component (made by firmware/scripts/s3_components.sh)
set(d libsrtp)
idf_component_register(
    SRCS ${d}/srtp/srtp.c
         ${d}/crypto/cipher/cipher.c ${d}/crypto/cipher/cipher_test_cases.c ${d}/crypto/cipher/null_cipher.c
         ${d}/crypto/cipher/aes.c ${d}/crypto/cipher/aes_icm.c
         ${d}/crypto/hash/auth.c ${d}/crypto/hash/auth_test_cases.c ${d}/crypto/hash/null_auth.c
         ${d}/crypto/hash/hmac.c ${d}/crypto/hash/sha1.c
         ${d}/crypto/kernel/alloc.c ${d}/crypto/kernel/crypto_kernel.c ${d}/crypto/kernel/err.c
         ${d}/crypto/kernel/key.c ${d}/crypto/math/datatypes.c
         ${d}/crypto/replay/rdb.c ${d}/crypto/replay/rdbx.c
    INCLUDE_DIRS ${d}/include
    PRIV_INCLUDE_DIRS port ${d}/crypto/include
    PRIV_REQUIRES lwip)
target_compile_definitions(${COMPONENT_LIB} PRIVATE HAVE_CONFIG_H)
target_compile_options(${COMPONENT_LIB} PRIVATE -Wno-unused-function -Wno-format)
CM
E=$OUT/esp_peer; rm -rf "$E"; cp -a "$ESP_PEER" "$E"
sed -i 's/PRIV_REQUIRES mbedtls esp-tls esp_netif)/PRIV_REQUIRES mbedtls esp-tls esp_netif esp_libsrtp)/' "$E/CMakeLists.txt"
grep -q 'esp_netif esp_libsrtp)' "$E/CMakeLists.txt" || { echo "esp_peer's CMakeLists.txt changed: add esp_libsrtp by hand" >&2; exit 1; }
echo "esp_libsrtp (libsrtp $V) and esp_peer in $OUT"
