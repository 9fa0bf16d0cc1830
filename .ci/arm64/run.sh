#!/usr/bin/env bash
# arm64 (aarch64) under qemu-user emulation: a cached Debian bookworm arm64 root with the project
# installed in a venv, and one command run inside it (issue #19).
#
#   .ci/arm64/run.sh [--cpu cortex-a72|cortex-a76] [--board pi|none] [--rebuild] [--no-install]
#                    [--host-cpuinfo] [--workdir DIR] [--] [COMMAND ARGS...]
#
#   .ci/arm64/run.sh --cpu cortex-a72 -- edged profile --json
#   .ci/arm64/run.sh --cpu cortex-a76 -- edged infer segmentation \
#       --input /shared/images/portraits/zidane.jpg --output /out/mask.png
#   .ci/arm64/run.sh -- pytest -x tests/test_hardware.py
#
# Inside the root: the project tree is copied to /src (cwd by default), the venv is /opt/venv
# (first on PATH), ../shared is mounted read-only at /shared (EDGED_SHARED_DIR=/shared) and the
# host directory $EDGED_ARM64_OUT (default /tmp/edged-arm64-out) is mounted read-write at /out.
# Without a command it builds/updates the root, installs, and prints the runtime versions.
#
# Environment:
#   EDGED_ARM64_CACHE   cache dir (default /var/cache/edged-arm64): rootfs/, wheelhouse/ (arm64
#                       wheels, /wheelhouse inside), pip/ (pip's cache), rootfs.complete (stamp),
#                       timings.log, debootstrap.log, apt.log
#   EDGED_ARM64_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   EDGED_ARM64_CPU     default for --cpu (cortex-a72)
#   EDGED_ARM64_OUT     host dir mounted at /out
#   EDGED_*, PIP_*      passed into the root (EDGED_SHARED_DIR on the host names the shared dir)
#
# Why the mounts: qemu-user 7.2 (bookworm) does not emulate /proc/cpuinfo for aarch64, so the guest
# sees the host's x86 cpuinfo and onnxruntime/XNNPACK's cpuinfo library crashes while importing.
# A Raspberry Pi 4 (Cortex-A72) or Pi 5 (Cortex-A76) cpuinfo from cpuinfo/ is bind-mounted over
# the root's /proc/cpuinfo and QEMU_CPU selects the matching emulated core (so the HWCAPs that
# the guest sees agree with the Features line). --board pi also shows a matching
# /proc/device-tree/model, so edged's profile matching sees a Pi; --board none leaves it out.
#
# All mounts happen in a private mount namespace (the script re-executes itself under
# `unshare --mount`), so they never reach the host and disappear when the script exits; the
# EXIT trap unmounts them explicitly as well. The root is only ever deleted after checking that
# nothing is mounted under it, in this namespace or the host's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

if [ "${_EDGED_ARM64_NS:-}" != 1 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "run.sh: must run as root (debootstrap, chroot, mount)" >&2; exit 2; }
    export _EDGED_ARM64_NS=1
    exec unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" "$@"
fi

CACHE=${EDGED_ARM64_CACHE:-/var/cache/edged-arm64}
ROOT=$CACHE/rootfs
STAMP=$CACHE/rootfs.complete
MIRROR=${EDGED_ARM64_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
OUT=${EDGED_ARM64_OUT:-/tmp/edged-arm64-out}
SHARED=${EDGED_SHARED_DIR:-$REPO/../shared}
VENV=/opt/venv
CPU=${EDGED_ARM64_CPU:-cortex-a72}
BOARD=pi
REBUILD=0
HOST_CPUINFO=0
INSTALL=1
WORKDIR=/src

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --cpu) CPU=$2; shift 2 ;;
        --cpu=*) CPU=${1#*=}; shift ;;
        --board) BOARD=$2; shift 2 ;;
        --board=*) BOARD=${1#*=}; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --host-cpuinfo) HOST_CPUINFO=1; shift ;;  # debugging: leave the host's x86 cpuinfo visible
        --no-install) INSTALL=0; shift ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) break ;;
    esac
done
CPUINFO=$HERE/cpuinfo/$CPU.txt
[ -f "$CPUINFO" ] || { echo "run.sh: no cpuinfo fixture for --cpu $CPU (have: $(cd "$HERE/cpuinfo" && ls | sed 's/\.txt$//' | tr '\n' ' '))" >&2; exit 2; }
case $CPU in
    cortex-a72) DT_MODEL="Raspberry Pi 4 Model B Rev 1.4"; DT_COMPAT='raspberrypi,4-model-b\0brcm,bcm2711\0' ;;
    cortex-a76) DT_MODEL="Raspberry Pi 5 Model B Rev 1.0"; DT_COMPAT='raspberrypi,5-model-b\0brcm,bcm2712\0' ;;
    *) DT_MODEL=""; DT_COMPAT="" ;;
esac
case $BOARD in pi|none) ;; *) echo "run.sh: --board is pi or none" >&2; exit 2 ;; esac

mkdir -p "$CACHE" "$OUT"
log() { printf '[arm64 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
TIMINGS=()
phase() {  # phase NAME CMD...: run, time, remember
    local name=$1 t0 t1 rc=0
    shift
    log "phase $name: start"
    t0=$(date +%s.%N)
    "$@" || rc=$?
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    TIMINGS+=("$name ${secs}s rc=$rc")
    printf '%s cpu=%s %s %ss rc=%s\n' "$(date -Is)" "$CPU" "$name" "$secs" "$rc" >>"$CACHE/timings.log"
    log "phase $name: ${secs}s (rc=$rc)"
    return "$rc"
}

# ---------------------------------------------------------------- mounts and cleanup
MOUNTED=()  # every mount point this script made, in order
do_mount() {  # do_mount TARGET MOUNT-ARGS...
    local target=$1
    shift
    mount "$@" "$target"
    MOUNTED+=("$target")
}
bind_ro() {  # bind_ro SRC DST
    do_mount "$2" --bind "$1"
    mount -o remount,bind,ro "$2"
}
unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTED[i]}" 2>/dev/null || umount -R -l "${MOUNTED[i]}" 2>/dev/null \
            || log "could not unmount ${MOUNTED[i]}"
    done
    MOUNTED=()
}
mounts_under() {  # print mount points under $1 in this namespace and the host's (pid 1)
    local dir
    dir=$(readlink -f "$1")
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts /proc/1/mounts | sort -u
}
on_exit() {
    local rc=$?
    unmount_all
    if [ ${#TIMINGS[@]} -gt 0 ]; then
        log "timings:"
        printf '  %s\n' "${TIMINGS[@]}" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 1. host packages + binfmt
host_setup() {
    local need=()
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v rsync >/dev/null || need+=(rsync)
    if [ ${#need[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # binfmt_misc registrations are kernel-wide; the mount is only the interface (and it is made
    # in this private namespace, so it goes away with it).
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        do_mount /proc/sys/fs/binfmt_misc -t binfmt_misc binfmt_misc
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        # binfmt-support could not do it (e.g. no /usr/share/binfmts entry): register directly,
        # F = open the interpreter now, so it need not exist inside the root.
        printf '%s' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:OCF' \
            >/proc/sys/fs/binfmt_misc/register
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || { echo "run.sh: binfmt qemu-aarch64 is registered but disabled" >&2; exit 1; }
    BINFMT_INTERP=$(awk '$1 == "interpreter" { print $2 }' /proc/sys/fs/binfmt_misc/qemu-aarch64)
    BINFMT_FLAGS=$(awk '$1 == "flags:" { print $2 }' /proc/sys/fs/binfmt_misc/qemu-aarch64)
    log "binfmt qemu-aarch64: $BINFMT_INTERP flags=$BINFMT_FLAGS ($(qemu-aarch64-static --version | head -1))"
}

put_interpreter() {  # without the F flag the kernel looks the interpreter up inside the root
    case $BINFMT_FLAGS in *F*) return 0 ;; esac
    mkdir -p "$ROOT$(dirname "$BINFMT_INTERP")"
    cp -L "$BINFMT_INTERP" "$ROOT$BINFMT_INTERP"
}

# ---------------------------------------------------------------- 2. the root
ROOT_KEY="$SUITE $INCLUDE $MIRROR minbase v1"
remove_root() {
    local left
    left=$(mounts_under "$ROOT")
    if [ -n "$left" ]; then
        echo "run.sh: refusing to delete $ROOT, still mounted under it:" >&2
        echo "$left" >&2
        exit 1
    fi
    rm -rf --one-file-system "$ROOT"
}
debootstrap_root() {
    rm -f "$STAMP"
    [ -e "$ROOT" ] && remove_root
    mkdir -p "$ROOT"
    debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" --foreign \
        "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; return 1; }
    put_interpreter
    # The second stage mounts /proc and /sys in the root itself (and we are in a private namespace).
    chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; return 1; }
}
apt_root() {
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    cat >"$ROOT/etc/apt/apt.conf.d/90edged-ci" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
    # Nothing in the root may start services.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    {
        in_root_plain /usr/bin/apt-get update -qq \
            && in_root_plain /usr/bin/env DEBIAN_FRONTEND=noninteractive /usr/bin/apt-get -y -qq upgrade \
            && in_root_plain /usr/bin/apt-get clean
    } >"$CACHE/apt.log" 2>&1 || { tail -20 "$CACHE/apt.log" >&2; return 1; }
    rm -rf "$ROOT/var/lib/apt/lists/"*
}

# ---------------------------------------------------------------- 3. mounts for running in the root
mount_root() {
    do_mount "$ROOT/proc" -t proc proc
    # The emulated process would see the host's x86 /proc/cpuinfo (see the header).
    if [ "$HOST_CPUINFO" = 0 ]; then
        do_mount "$ROOT/proc/cpuinfo" --bind "$CPUINFO"
        mount -o remount,bind,ro "$ROOT/proc/cpuinfo"
    fi
    do_mount "$ROOT/sys" --rbind /sys
    do_mount "$ROOT/dev" --rbind /dev
    do_mount "$ROOT/tmp" -t tmpfs -o mode=1777 tmpfs
    if [ "$BOARD" = pi ] && [ -n "$DT_MODEL" ]; then
        # /proc/device-tree -> /sys/firmware/devicetree/base: a tmpfs over the root's view of
        # /sys/firmware carries a Pi's model/compatible (nul-terminated, as the kernel shows them).
        do_mount "$ROOT/sys/firmware" -t tmpfs -o mode=0755 tmpfs
        mkdir -p "$ROOT/sys/firmware/devicetree/base"
        printf '%s\0' "$DT_MODEL" >"$ROOT/sys/firmware/devicetree/base/model"
        printf "$DT_COMPAT" >"$ROOT/sys/firmware/devicetree/base/compatible"
    fi
    mkdir -p "$CACHE/pip" "$CACHE/wheelhouse" "$ROOT/root/.cache/pip" "$ROOT/wheelhouse" "$ROOT/shared" "$ROOT/out"
    do_mount "$ROOT/root/.cache/pip" --bind "$CACHE/pip"
    do_mount "$ROOT/wheelhouse" --bind "$CACHE/wheelhouse"
    if [ -d "$SHARED" ]; then
        bind_ro "$(cd "$SHARED" && pwd)" "$ROOT/shared"
    else
        log "no shared dir at $SHARED: /shared is empty"
    fi
    do_mount "$ROOT/out" --bind "$OUT"
    # Local package indexes / wheel dirs named by the host's pip settings, at the same paths.
    local p
    for p in "${PIP_LOCAL_DIRS[@]}"; do
        mkdir -p "$ROOT$p"
        bind_ro "$p" "$ROOT$p"
    done
}

# ---------------------------------------------------------------- 4. pip settings + CAs from the host
PIP_LOCAL_DIRS=()
ROOT_ENV=()
host_pip_settings() {
    local f v d
    for f in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt; do
        if [ -f "$f" ]; then mkdir -p "$ROOT$(dirname "$f")"; cp "$f" "$ROOT$f"; fi
    done
    for f in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        if [ -f "$f" ]; then
            mkdir -p "$(dirname "$ROOT/root/${f#"$HOME"/}")"
            cp "$f" "$ROOT/root/${f#"$HOME"/}"
        fi
    done
    # Absolute paths and file:// URLs in the effective settings (files + PIP_* env) are host
    # directories: mount them read-only at the same place (x86-only wheels in them are ignored
    # by the arm64 pip; pure-Python ones and sdists are used as on the host).
    local values
    values=$( { pip config list 2>/dev/null || python3 -m pip config list 2>/dev/null || true; } \
        | sed -n "s/^[^=]*='\(.*\)'$/\1/p"; env | sed -n 's/^PIP_[A-Z_]*=//p')
    for v in $values; do
        d=${v#file://}
        case $d in /*) ;; *) continue ;; esac
        [ -d "$d" ] || continue
        d=$(readlink -f "$d")
        case $d in /|/etc|/etc/*|/usr|/usr/*|/proc*|/sys*|/dev*) continue ;; esac
        # mount the top dir of a file:// index (file:///opt/pypi/simple -> /opt/pypi: its
        # links point to ../../files)
        [ "$(basename "$d")" = simple ] && d=$(dirname "$d")
        local seen=0 q
        for q in "${PIP_LOCAL_DIRS[@]}"; do [ "$q" = "$d" ] && seen=1; done
        [ $seen = 1 ] || PIP_LOCAL_DIRS+=("$d")
    done
    while IFS= read -r v; do ROOT_ENV+=("$v"); done < <(env | grep -E '^(PIP_[A-Z_]+|EDGED_[A-Z0-9_]+)=' \
        | grep -v -E '^(EDGED_ARM64_|EDGED_SHARED_DIR=)' || true)
    # CA certificates: the host's local CAs (e.g. an egress proxy's) into the root's store.
    if [ -d /usr/local/share/ca-certificates ]; then
        mkdir -p "$ROOT/usr/local/share/ca-certificates"
        rsync -a --delete /usr/local/share/ca-certificates/ "$ROOT/usr/local/share/ca-certificates/"
    fi
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    [ -f /etc/hosts ] && cp -L /etc/hosts "$ROOT/etc/hosts"
}

# chroot with a clean environment; QEMU_CPU is read by qemu-user from the env of each exec
in_root_plain() {
    env -i QEMU_CPU="$CPU" HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" "$@"
}
pip_quiet() {  # pip's warnings about packages absent from the local file:// indexes are noise
    "$@" 2> >(grep -v "^WARNING: Location 'file://.*' is ignored: it is neither a file nor a directory" >&2)
}
in_root() {
    env -i QEMU_CPU="$CPU" HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" VIRTUAL_ENV="$VENV" \
        EDGED_SHARED_DIR=/shared "${ROOT_ENV[@]}" \
        chroot "$ROOT" /bin/sh -c 'cd "$0" && exec "$@"' "$WORKDIR" "$@"
}

# ---------------------------------------------------------------- 5. project install
copy_tree() {
    mkdir -p "$ROOT/src"
    rsync -a --delete --exclude=/.venv --exclude=/.git --exclude=.mypy_cache --exclude=.ruff_cache \
        --exclude=.pytest_cache --exclude=__pycache__ --exclude='*.egg-info' --exclude=/build \
        --exclude=/dist --exclude=/demo-out "$REPO/" "$ROOT/src/"
}
deps_key() {
    cat "$ROOT/src/pyproject.toml" "$ROOT/src/setup.py" "$ROOT"/etc/pip.conf "$ROOT"/etc/xdg/pip/* 2>/dev/null \
        | sha256sum | cut -d' ' -f1
}
pip_install() {
    if [ ! -x "$ROOT$VENV/bin/python" ]; then
        in_root_plain /usr/bin/python3 -m venv "$VENV"
        pip_quiet in_root "$VENV/bin/pip" install --quiet --upgrade pip
    fi
    local key
    key=$(deps_key)
    if [ "$(cat "$ROOT$VENV/.edged-deps" 2>/dev/null)" = "$key" ]; then
        # Dependencies unchanged since the last install: rebuild and reinstall edged only.
        pip_quiet in_root pip install --quiet --no-deps --no-build-isolation --force-reinstall /src
    else
        # pip's HTTP cache stays empty where a proxy strips the caching headers, so keep our own
        # wheelhouse: `pip wheel` takes what it already holds (pip prefers --find-links files over
        # index files of the same version) and adds the rest, including edged's own wheel, then
        # the install is offline from it. --no-compile: byte-compiling ~1 GB of site-packages
        # under emulation is half the install time (195 s -> 95 s); the first imports write the .pyc.
        pip_quiet in_root pip wheel --quiet --wheel-dir /wheelhouse --find-links /wheelhouse '/src[dev]'
        local whl
        whl=$(cd "$CACHE/wheelhouse" && ls -t edged-*.whl | head -1)
        pip_quiet in_root pip install --quiet --no-compile --no-index --find-links /wheelhouse --force-reinstall \
            "/wheelhouse/$whl[dev]"
        echo "$key" >"$ROOT$VENV/.edged-deps"
    fi
}

VERSIONS_PY='
import importlib, importlib.metadata as md, platform, subprocess, sys
print(f"python        {platform.python_version()} ({platform.machine()})")
mods = [("numpy", "numpy"), ("onnxruntime", "onnxruntime"), ("ai-edge-litert", "ai_edge_litert.interpreter"),
        ("openvino", "openvino"), ("opencv-python-headless", "cv2"), ("pyzmq", "zmq"), ("edged", "edged")]
for dist, mod in mods:
    try:
        ver = md.version(dist)
    except md.PackageNotFoundError:
        ver = "not installed"
    # import each in its own process: a crash (SIGSEGV/SIGILL) is then reported, not fatal
    r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True)
    status = "import ok" if r.returncode == 0 else f"import FAILED rc={r.returncode}: {(r.stderr.strip().splitlines() or [chr(45)])[-1]}"
    print(f"{dist:22s} {ver:14s} {status}")
'

# ---------------------------------------------------------------- main
phase host-setup host_setup

BUILT=0
if [ "$REBUILD" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$ROOT_KEY" ]; then
    log "building $SUITE arm64 root in $ROOT"
    phase debootstrap debootstrap_root
    BUILT=1
else
    log "reusing $ROOT (stamp $STAMP)"
    put_interpreter
fi

host_pip_settings
mount_root
# The host's local CAs into the root's bundle (slow under emulation: only when they changed).
CA_KEY=$(cat /usr/local/share/ca-certificates/* 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$ROOT/etc/ssl/.edged-host-ca" 2>/dev/null)" != "$CA_KEY" ]; then
    in_root_plain /usr/sbin/update-ca-certificates >/dev/null 2>&1 || log "update-ca-certificates failed"
    echo "$CA_KEY" >"$ROOT/etc/ssl/.edged-host-ca"
fi
if [ "$BUILT" = 1 ]; then
    phase apt apt_root
    echo "$ROOT_KEY" >"$STAMP"  # only a root that got this far is reused
fi

if [ "$INSTALL" = 1 ]; then
    phase copy-tree copy_tree
    phase pip-install pip_install
fi
[ -x "$ROOT$VENV/bin/python" ] || { echo "run.sh: no venv in the root yet (drop --no-install)" >&2; exit 1; }

phase versions in_root "$VENV/bin/python" -c "$VERSIONS_PY"

if [ $# -gt 0 ]; then
    rc=0
    phase command in_root "$@" || rc=$?
    exit "$rc"
fi
