#!/usr/bin/env bash
# install.sh: install (Debian packages) and build one peer of the peers benchmark.
#
# Usage: install.sh PEER        PEER = zmq-epgm | norm | cyclonedds | jgroups | aeron | zenoh
#
# Idempotent and quick when done: packages are installed only when missing (`apt-get update`
# once, then `apt-get install -y`), harnesses are rebuilt only when their source is newer than
# the binary. Build outputs go to target/peers/ of the repo (gitignored); override with
# PEERS_OUT=DIR. Prints nothing on success but the path(s) built, to stderr.
# aeron and zenoh are Rust harnesses in their own Cargo projects (aeron/, zenoh/, outside the
# workspace), built once with `nice -n 19 cargo build --release -j 1` (minutes: Aeron's C media
# driver and client are compiled from the sources the rusteron crates bundle; Zenoh is a large
# crate graph). Aeron needs CMake >= 3.30: Debian's is older, so a private venv with PyPI's
# `cmake` package provides it (PEERS_CMAKE_VENV, default /opt/qs-peers-cmake).
# Exit: 0 ok, 2 packages missing and not root, 3 the peer cannot be installed/built (reason on
# stderr).
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
    ensure_pkgs cmake clang libclang-dev libbsd-dev uuid-dev python3-venv pkg-config
    command -v cargo >/dev/null || fail "cargo missing (the aeron harness is a Rust project)"
    venv=${PEERS_CMAKE_VENV:-/opt/qs-peers-cmake}
    if ! "$venv/bin/cmake" --version 2>/dev/null | grep -qE 'version (3\.(3[0-9])|[4-9]\.)'; then
        python3 -m venv "$venv" >&2 || fail "python3 -m venv $venv failed"
        "$venv/bin/pip" install -q "cmake>=3.30,<4" >&2 || fail "pip install cmake failed"
    fi
    mkdir -p "$out/aeron"
    if stale "$out/aeron/aeron-bench" "$here/aeron/src/main.rs" "$here/aeron/Cargo.toml" "$here/common/bench.rs"; then
        (cd "$here/aeron" && PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$out/aeron-target" \
            nice -n 19 cargo build --release -j 1 >&2) || fail "building the aeron harness failed"
        cp "$out/aeron-target/release/aeron-bench" "$out/aeron/"
        # The C libraries are shared objects in the build tree; keep them beside the binary.
        lib=$(find "$out/aeron-target/release/build" -path '*rusteron-media-driver*' -name libaeron_driver.so | head -1)
        [ -n "$lib" ] || fail "libaeron_driver.so not found in the build tree"
        cp "$(dirname "$lib")/libaeron_driver.so" "$(dirname "$lib")/libaeron.so" "$out/aeron/"
    fi
    echo "$out/aeron/aeron-bench" >&2
    ;;
zenoh)
    ensure_pkgs gcc libc6-dev pkg-config
    command -v cargo >/dev/null || fail "cargo missing (the zenoh harness is a Rust project)"
    mkdir -p "$out/zenoh"
    if stale "$out/zenoh/zenoh-bench" "$here/zenoh/src/main.rs" "$here/zenoh/Cargo.toml" "$here/common/bench.rs"; then
        (cd "$here/zenoh" && CARGO_TARGET_DIR="$out/zenoh-target" nice -n 19 cargo build --release -j 1 >&2) \
            || fail "building the zenoh harness failed"
        cp "$out/zenoh-target/release/zenoh-bench" "$out/zenoh/"
    fi
    echo "$out/zenoh/zenoh-bench" >&2
    ;;
-h | --help | '')
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "$peer" ] && exit 0
    exit 2
    ;;
*)
    echo "install.sh: unknown peer '$peer' (zmq-epgm, norm, cyclonedds, jgroups, aeron, zenoh)" >&2
    exit 2
    ;;
esac
