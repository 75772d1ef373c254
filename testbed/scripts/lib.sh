# shellcheck shell=bash
# lib.sh: helpers shared by lan.sh, loss.sh and ns-pubsub-test.sh. Source it; do not run it.
#
# Naming (PREFIX is 1..11 chars, [a-z][a-z0-9]*, so every name fits the kernel's
# 15-character interface-name limit):
#   bridge              ${PREFIX}br          (root namespace, no IP address)
#   namespace of host I ${PREFIX}hI          (I = 1..N, N <= 250)
#   veth, bridge side   ${PREFIX}vI          (root namespace, enslaved to the bridge)
#   veth, host side     eth0                 (inside ${PREFIX}hI)
#   loss table          netdev qsloss        (inside ${PREFIX}hI, made by loss.sh)

# shellcheck disable=SC2034 # used by the scripts that source this file
QS_LOSS_TABLE=qsloss

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$(basename "$0"): needs root (network namespaces, bridges, nftables); run it as root" >&2
        exit 2
    fi
}

check_prefix() {
    local p=$1
    if ! [[ $p =~ ^[a-z][a-z0-9]{0,10}$ ]]; then
        die "bad PREFIX '$p': 1-11 chars, a lowercase letter then lowercase letters/digits"
    fi
}

check_index() {
    local i=$1
    if ! [[ $i =~ ^[1-9][0-9]*$ ]] || [ "$i" -gt 250 ]; then
        die "bad host index '$i': 1..250"
    fi
}

ns_name() { echo "${1}h${2}"; }
br_name() { echo "${1}br"; }
veth_name() { echo "${1}v${2}"; }

# The default /24 of a prefix: 10.77.X.0/24 with X = 1 + (cksum(PREFIX) mod 250).
# Two testbeds that happen to share X do not interfere: the addresses live only inside
# each testbed's own namespaces and bridge (the root namespace has no address on them).
default_subnet() {
    local sum
    sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
    echo "10.77.$((1 + sum % 250))"
}

ns_exists() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"
}

link_exists() {
    ip link show dev "$1" >/dev/null 2>&1
}

# Install a Debian package when a command is missing (a fresh CI machine runs as root).
ensure_cmd() {
    local cmd=$1 pkg=$2
    if command -v "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    echo "$(basename "$0"): '$cmd' missing, installing Debian package '$pkg'" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "$pkg" >&2 || die "apt-get install $pkg failed"
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still missing after installing $pkg"
}

# resolve_qs NAME: makes $qs the absolute path of the qs binary to test ($qs if set, else this
# repo's target/release/qs, else target/debug/qs); if there is none, prints a FAIL line and
# "NAME: 0 passed, 1 failed" and exits 1.
resolve_qs() {
    local repo
    if [ -z "${qs:-}" ]; then
        repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
        if [ -x "$repo/target/release/qs" ]; then
            qs=$repo/target/release/qs
        else
            qs=$repo/target/debug/qs
        fi
    fi
    if [ ! -x "$qs" ]; then
        echo "FAIL: qs binary not found or not executable: $qs (build it, or pass --qs PATH)"
        echo "$1: 0 passed, 1 failed"
        exit 1
    fi
    qs=$(cd "$(dirname "$qs")" && pwd)/$(basename "$qs")
}

ensure_ip() { ensure_cmd ip iproute2; }
ensure_nft() { ensure_cmd nft nftables; }

# The IPv4 address of host I, read from its namespace (works whatever subnet 'up' used).
host_addr() {
    local prefix=$1 i=$2 ns a
    ns=$(ns_name "$prefix" "$i")
    ns_exists "$ns" || die "no namespace $ns (is testbed '$prefix' up, with at least $i hosts?)"
    a=$(ip -n "$ns" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1 | head -n1)
    [ -n "$a" ] || die "no IPv4 address on eth0 in $ns"
    echo "$a"
}

# Host indices of the namespaces of a testbed, sorted.
host_indices() {
    local prefix=$1
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^${prefix}h\([0-9]\{1,3\}\)\$/\1/p" | sort -n
}
