#!/usr/bin/env bash
# install.sh: install (Debian packages) and build one peer of the peers benchmark.
#
# Usage: install.sh PEER        PEER = zmq-epgm | norm | cyclonedds | jgroups | aeron
#
# Idempotent and quick when done: packages are installed only when missing (`apt-get update`
# once, then `apt-get install -y`), harnesses are rebuilt only when their source is newer than
# the binary. Build outputs go to target/peers/ of the repo (gitignored); override with
# PEERS_OUT=DIR. Prints nothing on success but the path(s) built, to stderr.
# Exit: 0 ok, 2 packages missing and not root, 3 the peer cannot be installed/built (reason on
# stderr; aeron always, see README.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${PEERS_OUT:-$repo/target/peers}

fail() { echo "install.sh: $*" >&2; exit 3; }

# ensure_pkgs PKG...: install the Debian packages that are not installed yet.
updated=0
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: packages missing (${missing[*]}) and not root: run as root" >&2
        exit 2
    fi
    echo "install.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if [ $updated -eq 0 ]; then
        apt-get update -qq >&2 || fail "apt-get update failed"
        updated=1
    fi
    apt-get install -y -qq "${missing[@]}" >&2 || fail "apt-get install ${missing[*]} failed"
}

# stale OUT SRC...: true when OUT is missing or older than a source.
stale() {
    local o=$1 s
    shift
    [ -e "$o" ] || return 0
    for s in "$@"; do [ "$s" -nt "$o" ] && return 0; done
    return 1
}

peer=${1:-}
case $peer in
zmq-epgm)
    # libzmq3-dev pulls libzmq5, built with OpenPGM (epgm:// and pgm://) in Debian.
    ensure_pkgs libzmq3-dev pkg-config gcc libc6-dev
    mkdir -p "$out"
    if stale "$out/zmq_bench" "$here/zmq_bench.c" "$here/bench_common.h"; then
        # shellcheck disable=SC2046 # pkg-config prints several words on purpose
        gcc -O2 -Wall -o "$out/zmq_bench" "$here/zmq_bench.c" $(pkg-config --cflags --libs libzmq) \
            || fail "building zmq_bench failed"
    fi
    echo "$out/zmq_bench" >&2
    ;;
norm)
    # normApi.h (1.5.9) is not valid C (C++ references, a default argument): build as C++.
    ensure_pkgs libnorm-dev g++ libc6-dev
    mkdir -p "$out"
    if stale "$out/norm_bench" "$here/norm_bench.c" "$here/bench_common.h"; then
        g++ -x c++ -O2 -Wall -Wno-attributes -o "$out/norm_bench" "$here/norm_bench.c" -lnorm \
            || fail "building norm_bench failed"
    fi
    echo "$out/norm_bench" >&2
    ;;
cyclonedds)
    ensure_pkgs cyclonedds-tools
    command -v ddsperf >/dev/null || fail "ddsperf missing after installing cyclonedds-tools"
    command -v ddsperf >&2
    ;;
jgroups)
    ensure_pkgs libjgroups-java openjdk-17-jdk-headless
    [ -r /usr/share/java/jgroups.jar ] || fail "/usr/share/java/jgroups.jar missing"
    mkdir -p "$out/java"
    if stale "$out/java/JgBench.class" "$here/JgBench.java"; then
        javac -nowarn -cp /usr/share/java/jgroups.jar -d "$out/java" "$here/JgBench.java" \
            || fail "javac JgBench.java failed"
    fi
    echo "$out/java/JgBench.class" >&2
    ;;
aeron)
    fail "aeron: not packaged in Debian; the crates.io crates (libaeron_driver-sys, \
rusteron-media-driver) only build its C media driver from source with CMake + bindgen (cmake, \
libclang, minutes of compilation on these 2 shared cores): not quick here, skipped (README.md)"
    ;;
-h | --help | '')
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "$peer" ] && exit 0
    exit 2
    ;;
*)
    echo "install.sh: unknown peer '$peer' (zmq-epgm, norm, cyclonedds, jgroups, aeron)" >&2
    exit 2
    ;;
esac
