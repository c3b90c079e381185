#!/usr/bin/env bash
# The README's first command on a fresh machine: `scripts/setup.sh && .venv/bin/fleet demo`
# in a Debian 12 root file system that has only what a fresh install has (minbase, Python 3,
# ca-certificates), on a fresh clone of REV (default HEAD), as root in a chroot of its own
# mount and PID namespaces. Then a mixed room through the local Janus, the voice
# assistant's demo, and every runtime module's import, all without the dev extra. Fails
# when the runtime install misses anything these need, or leaves a service running.
#   scripts/fresh_root_check.sh [REV]
# The pristine base is debootstrapped once a month into FLEET_FRESH_CACHE (default
# ~/.cache/espfleet/fresh-root) and unpacked per run into a tmpfs that ends with the run.
# apt's downloaded .debs and pip's HTTP cache live there too: downloads only, so every
# package is still installed, and every wheel still built, from scratch.
# From this machine it takes what a fresh machine of its kind has: the DNS config, the
# local CA certificates, pip's configuration and the local package dirs it names (read-only).
set -euo pipefail

release=bookworm
mirror=http://deb.debian.org/debian
cache="${FLEET_FRESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/espfleet/fresh-root}"
chroot_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The fresh root in ROOT: the base, a clone of REV, and this host's DNS, CAs and pip config.
prepare_root() {
    local root=$1 base=$2 rev=$3 conf target line key value token path
    tar -C "$root" --numeric-owner -xpf "$base"
    git clone -q --no-local --no-checkout . "$root/root/espfleet"
    git -C "$root/root/espfleet" checkout -q --detach "$rev"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    cp -L /etc/hosts "$root/etc/hosts"
    if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
        cp -rL /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
        chroot "$root" /usr/bin/env -i PATH="$chroot_path" update-ca-certificates >/dev/null 2>&1
    fi
    for conf in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip" "${PIP_CONFIG_FILE:-}"; do
        [ -n "$conf" ] && [ -e "$conf" ] || continue
        target="$root${conf/#$HOME//root}"
        mkdir -p "$(dirname "$target")"
        cp -rL "$conf" "$target"
    done
    # Local files and dirs that pip's config names (a CA bundle, constraints, wheel dirs,
    # file:// indexes): files are copied, dirs listed for read-only bind mounts.
    : >"$root/.pip-dirs"
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip config list 2>/dev/null | while IFS= read -r line; do
            key=${line%%=*}
            value=${line#*=}
            value=${value#\'}
            value=${value%\'}
            for token in $value; do
                path=${token#file://}
                case "$path" in /*) ;; *) continue ;; esac
                # An index's pages link to files beside its simple/ folder.
                case "$key" in *index-url) path=$(dirname "$path") ;; esac
                if [ -d "$path" ]; then
                    echo "$path" >>"$root/.pip-dirs"
                elif [ -f "$path" ]; then
                    mkdir -p "$root$(dirname "$path")"
                    cp -L "$path" "$root$path"
                fi
            done
        done
    fi
    # A chroot has no init: services the packages would start must not (mosquitto, janus).
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    write_run_script "$root"
}

# What runs inside: the README's command, what it installed and left running, the imports.
write_run_script() {
    local root=$1
cat >"$root/root/fresh-run.sh" <<'EOF'
set -uo pipefail
cd /root/espfleet
running() {
    local pid name found=""
    for pid in /proc/[0-9]*; do
        name=$(cat "$pid/comm" 2>/dev/null) || continue
        case "$name" in mosquitto | janus) found+="${pid#/proc/}:$name " ;; esac
    done
    echo "$found"
}
# Each line with the seconds since setup.sh began; pip's notes that a package is not in
# one of this machine's local indexes are counted, not shown.
stamped() {
    local line absent=0
    while IFS= read -r line; do
        case "$line" in
        "WARNING: Location 'file://"*"' is ignored: it is neither a file nor a directory.")
            absent=$((absent + 1)) ;;
        *) printf '[%4ds] %s\n' "$SECONDS" "$line" ;;
        esac
    done
    [ "$absent" = 0 ] || echo "($absent pip notes of packages absent from a local index)"
}
dpkg-query -W -f '${Package}\n' | sort >/tmp/before
SECONDS=0
scripts/setup.sh 2>&1 | stamped
rc=${PIPESTATUS[0]}
dpkg-query -W -f '${Package}\n' | sort >/tmp/after
added=$(comm -13 /tmp/before /tmp/after)
echo "setup.sh: exit $rc in ${SECONDS}s; $(echo "$added" | grep -c .) Debian packages installed:"
echo "$added" | tr '\n' ' ' | fold -s -w 100
echo
left=$(running)
if [ -n "$left" ]; then
    echo "setup.sh left services running (pid:name): $left- stopping them" >&2
    for entry in $left; do kill "${entry%%:*}" 2>/dev/null; done
    rc=1
fi
[ "$rc" = 0 ] || exit "$rc"
# The README's demo, or one that failed, shows all it printed; the others their last line.
demo() {
    SECONDS=0
    .venv/bin/fleet demo "$@" >/tmp/demo.log 2>&1
    rc=$?
    [ $# -gt 0 ] && [ "$rc" = 0 ] || cat /tmp/demo.log
    echo "fleet demo${*:+ $*}: exit $rc in ${SECONDS}s: $(tail -1 /tmp/demo.log)"
    [ "$rc" = 0 ] && grep -q "demo passed" /tmp/demo.log || exit 1
    left=$(running)
    if [ -n "$left" ]; then
        echo "fleet demo left processes running (pid:name): $left" >&2
        exit 1
    fi
}
# The README's demo; then what else the runtime install serves: a mixed room through the
# local Janus (as `fleet up` runs it) and the voice assistant (espeak-ng, pocketsphinx).
demo
demo --devices 5
demo --agent assistant
# Every runtime module imports with the runtime install alone (none leans on a package
# only the dev extra brings, like pytest or jinja2).
.venv/bin/python - <<'PY' || exit 1
import importlib
import pkgutil
import sys

names = []
for top in ("fleet", "broker", "cli"):
    names.append(top)
    names += [m.name for m in pkgutil.walk_packages(importlib.import_module(top).__path__, top + ".")]
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {exc!r}")
print(f"runtime modules: {len(names) - len(failed)} of {len(names)} import")
if failed:
    print("\n".join(failed), file=sys.stderr)
    sys.exit(1)
PY
EOF

}

# The kernel's file systems, a minimal /dev, the download caches and pip's local dirs.
mount_root() {
    local root=$1 node dir
    mount -t proc proc "$root/proc"
    mount -t sysfs -o ro sysfs "$root/sys"
    mount -t tmpfs -o mode=755,nosuid dev "$root/dev"
    for node in null zero full random urandom tty; do
        touch "$root/dev/$node"
        mount --bind "/dev/$node" "$root/dev/$node"
    done
    mkdir "$root/dev/pts" "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
    ln -s pts/ptmx "$root/dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
    ln -s /proc/self/fd "$root/dev/fd"
    ln -s /proc/self/fd/0 "$root/dev/stdin"
    ln -s /proc/self/fd/1 "$root/dev/stdout"
    ln -s /proc/self/fd/2 "$root/dev/stderr"
    mkdir -p "$cache/apt-archives/partial" "$cache/pip-http/http" "$cache/pip-http/http-v2" \
        "$root/root/.cache/pip/http" "$root/root/.cache/pip/http-v2"
    mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
    mount --bind "$cache/pip-http/http" "$root/root/.cache/pip/http"
    mount --bind "$cache/pip-http/http-v2" "$root/root/.cache/pip/http-v2"
    while IFS= read -r dir; do
        [ -n "$dir" ] || continue
        mkdir -p "$root$dir"
        mount --bind -o ro "$dir" "$root$dir"
    done < <(sort -u "$root/.pip-dirs")
    rm "$root/.pip-dirs"
}

# ---------------------------------------------------------------------------------------
# Inside the namespaces (the script runs itself there). Every mount, the tmpfs root
# included, belongs to this mount namespace and ends with it; the PID namespace ends
# every process started inside (a broker, a mixer) with it.
if [ "${1:-}" = "--inside" ]; then
    root=$2
    mount -t tmpfs -o mode=755,size=8g fresh-root "$root"
    t0=$(date +%s)
    prepare_root "$root" "$3" "$4"
    mount_root "$root"
    echo "unpacked and cloned in $(($(date +%s) - t0))s"
    env_args=(HOME=/root PATH="$chroot_path" LANG=C.UTF-8 TERM=dumb)
    while IFS= read -r -d '' var; do
        env_args+=("$var")
    done < <(env -0 | grep -z '^PIP_' || true)
    exec chroot "$root" /usr/bin/env -i "${env_args[@]}" /bin/bash /root/fresh-run.sh
fi

# ---------------------------------------------------------------------------------------
# On the host.
cd "$(dirname "$0")/.."
rev=$(git rev-parse --verify "${1:-HEAD}^{commit}")
if [ "$(id -u)" -ne 0 ]; then
    echo "fresh_root_check: needs root (debootstrap, unshare, chroot)" >&2
    exit 1
fi
for tool in debootstrap unshare chroot; do
    if ! command -v "$tool" >/dev/null; then
        echo "fresh_root_check: $tool is missing (apt-get install debootstrap util-linux coreutils)" >&2
        exit 1
    fi
done
started=$(date +%s)
mkdir -p "$cache"
base="$cache/$release-minbase-$(date +%Y-%m).tar"

# The pristine base: what a fresh Debian 12 install has, and its apt sources.
build_base() {
    local build
    build=$(mktemp -d "$cache/.build.XXXXXX")
    echo "debootstrap $release (minbase, python3, ca-certificates) into the cache"
    # Its own mount namespace: debootstrap's mounts in the target end with it.
    if ! unshare --mount -- debootstrap --variant=minbase --include=python3,ca-certificates \
        "$release" "$build/root" "$mirror" >"$build/log" 2>&1; then
        tail -20 "$build/log" >&2
        rm -rf --one-file-system "$build"
        return 1
    fi
    cat >"$build/root/etc/apt/sources.list" <<EOF
deb $mirror $release main
deb $mirror $release-updates main
deb http://deb.debian.org/debian-security $release-security main
EOF
    rm -f "$build/root/var/cache/apt/archives/"*.deb
    tar -C "$build/root" --numeric-owner -cf "$build/base.tar" .
    mv "$build/base.tar" "$base"
    rm -rf --one-file-system "$build"
    find "$cache" -maxdepth 1 -name "$release-minbase-*.tar" ! -path "$base" -delete
}
(
    flock 9
    [ -f "$base" ] || build_base
) 9>"$cache/.lock"
based=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/espfleet-fresh.XXXXXX")
# The root is a tmpfs mounted inside the namespace: here $work stays an empty dir.
trap 'rmdir "$work"' EXIT
trap 'exit 130' INT TERM
echo "fresh root: Debian $release, $(git log -1 --format='%h %s' "$rev" | cut -c1-80)"
echo "base ready in $((based - started))s"
set +e
FLEET_FRESH_CACHE="$cache" unshare --mount --pid --fork --kill-child -- \
    "$(realpath "$0")" --inside "$work" "$base" "$rev"
rc=$?
set -e
echo "fresh root check: $((($(date +%s) - started) / 60))m$((($(date +%s) - started) % 60))s in all"
if [ "$rc" -ne 0 ]; then
    echo "fresh root check FAILED (exit $rc)" >&2
    exit "$rc"
fi
echo "fresh root check: demo passed"
