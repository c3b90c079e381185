#!/bin/bash
# s3_components.sh: the audio components for an ESP32-S3 build without the ESP component manager
# (IDF_COMPONENT_MANAGER=0, offline), from a set of checked-out components (esp_peer, esp_codec_dev,
# esp_audio_codec, esp_libsrtp, e.g. made by the SDK's components.sh), into OUT/:
#   esp_peer         a copy whose PRIV_REQUIRES also names esp_libsrtp: the component manager adds that
#                    dependency from esp_peer's idf_component.yml, a plain build does not (its DTLS-SRTP
#                    sources include srtp.h);
#   esp_libsrtp, esp_codec_dev   as they are;
#   esp_audio_codec  as it is when it holds its lib/esp32s3 archives; else (a git mirror that filtered out
#                    large blobs) with the lib/esp32s3 archives of the newest revision of ADF_LIBS_GIT that
#                    has them (noted in OUT/SOURCES). For fleet_audio.c's Opus calls that is the same ABI
#                    from 2.2.1 to 2.6.0 (2.3.0 only appended esp_audio_dec_in_raw_t.frame_recover: an
#                    older library decodes a lost frame as an error, not by its PLC).
# Pass the four as EXTRA_COMPONENT_DIRS.
#   usage: SET=DIR OUT=DIR [ADF_LIBS_GIT=bare git dir of espressif/esp-adf-libs] s3_components.sh
set -euo pipefail
: "${SET:?folder of the checked-out components}" "${OUT:?folder to write the components in}"
for c in esp_peer esp_codec_dev esp_audio_codec esp_libsrtp; do
  [ -f "$SET/$c/CMakeLists.txt" ] || { echo "no $SET/$c/CMakeLists.txt" >&2; exit 1; }
done
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); SET=$(cd "$SET" && pwd)
rm -rf "$OUT"/esp_peer "$OUT"/esp_libsrtp "$OUT"/esp_codec_dev "$OUT"/esp_audio_codec
cp -a "$SET/esp_peer" "$SET/esp_libsrtp" "$SET/esp_codec_dev" "$OUT/"
sed -i 's/PRIV_REQUIRES mbedtls esp-tls esp_netif)/PRIV_REQUIRES mbedtls esp-tls esp_netif esp_libsrtp)/' \
  "$OUT/esp_peer/CMakeLists.txt"
grep -q 'esp_netif esp_libsrtp)' "$OUT/esp_peer/CMakeLists.txt" ||
  { echo "esp_peer's CMakeLists.txt changed: add esp_libsrtp to its requirements by hand" >&2; exit 1; }
echo "esp_peer: $SET/esp_peer + PRIV_REQUIRES esp_libsrtp" > "$OUT/SOURCES"
A=esp_audio_codec/lib/esp32s3/libesp_audio_codec.a
if [ -s "$SET/$A" ]; then
  cp -a "$SET/esp_audio_codec" "$OUT/"
  echo "esp_audio_codec: $SET/esp_audio_codec" >> "$OUT/SOURCES"
else
  : "${ADF_LIBS_GIT:?$SET/$A is missing: set ADF_LIBS_GIT to a bare git mirror of espressif/esp-adf-libs}"
  rev=
  for c in $(git --git-dir="$ADF_LIBS_GIT" rev-list --all -- "$A" 2>/dev/null); do
    b=$(git --git-dir="$ADF_LIBS_GIT" ls-tree "$c" "$A" | awk '{print $3}')
    if [ -n "$b" ] && git --git-dir="$ADF_LIBS_GIT" cat-file -e "$b" 2>/dev/null; then rev=$c; break; fi
  done
  [ -n "$rev" ] || { echo "no revision of $ADF_LIBS_GIT has $A" >&2; exit 1; }
  cp -a "$SET/esp_audio_codec" "$OUT/"; rm -rf "$OUT/esp_audio_codec/lib/esp32s3"
  git --git-dir="$ADF_LIBS_GIT" archive "$rev" esp_audio_codec/lib/esp32s3 | tar -x -C "$OUT"
  v=$(git --git-dir="$ADF_LIBS_GIT" show "$rev:esp_audio_codec/idf_component.yml" | sed -n 's/^version:[[:space:]]*//p')
  echo "esp_audio_codec: $SET/esp_audio_codec with lib/esp32s3 of esp-adf-libs $rev (version $v)," \
    "the newest that has $A" >> "$OUT/SOURCES"
fi
cat "$OUT/SOURCES"
