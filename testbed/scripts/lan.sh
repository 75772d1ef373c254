#!/usr/bin/env bash
# lan.sh: a virtual multicast LAN of network namespaces on one Linux bridge.
#
# Usage:
#   lan.sh up PREFIX N [--mtu M] [--subnet A.B.C] [--ipv6]
#       Create bridge ${PREFIX}br (IGMP snooping off), namespaces ${PREFIX}h1..hN, and per host a
#       veth pair: ${PREFIX}vI on the bridge, eth0 inside ${PREFIX}hI with address A.B.C.I/24.
#       Each namespace gets lo up and the route 224.0.0.0/4 dev eth0. --mtu sets the MTU of the
#       bridge and both ends of every veth (default: kernel default, 1500). The default subnet is
#       10.77.X with X = 1 + (cksum(PREFIX) mod 250); --subnet overrides it. IPv6 is disabled on
#       the testbed's interfaces unless --ipv6 is given (keeps the LAN quiet).
#       Fails (and removes what it made) if anything of PREFIX already exists.
#   lan.sh down PREFIX
#       Remove everything of PREFIX: kill processes still running in its namespaces, delete the
#       nftables rulesets in them, the veths, the namespaces and the bridge. Idempotent.
#   lan.sh addr PREFIX I          Print host I's IPv4 address.
#   lan.sh exec PREFIX I CMD...   Run CMD inside host I's namespace.
#   lan.sh check PREFIX [--count N] [--from I] [--group G] [--port P]
#       Multicast proof: mcast-check.py sends N (default 200) datagrams (TTL 1, group
#       239.255.77.1) from host I (default 1); every other host receives. Prints OK/FAIL per
#       receiver; exits 1 if any receiver missed a datagram.
#   lan.sh status PREFIX          List the namespaces, addresses and links of PREFIX.
#
# PREFIX: 1-11 chars, [a-z][a-z0-9]* (interface names are limited to 15 chars). N: 1..250.
# Every subcommand needs root (entering namespaces does); non-root gets exit 2.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

disable_ipv6_root() { # in the root namespace
    local f=/proc/sys/net/ipv6/conf/$1/disable_ipv6
    if [ -w "$f" ]; then echo 1 >"$f"; fi
}

cmd_up() {
    [ $# -ge 2 ] || usage
    local prefix=$1 n=$2 mtu="" subnet="" ipv6=0
    shift 2
    while [ $# -gt 0 ]; do
        case $1 in
        --mtu) [ $# -ge 2 ] || usage; mtu=$2; shift 2 ;;
        --subnet) [ $# -ge 2 ] || usage; subnet=$2; shift 2 ;;
        --ipv6) ipv6=1; shift ;;
        *) usage ;;
        esac
    done
    check_prefix "$prefix"
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || [ "$n" -gt 250 ]; then die "bad N '$n': 1..250"; fi
    if [ -n "$mtu" ]; then
        if ! [[ $mtu =~ ^[0-9]+$ ]] || [ "$mtu" -lt 576 ] || [ "$mtu" -gt 65535 ]; then die "bad MTU '$mtu'"; fi
    fi
    [ -n "$subnet" ] || subnet=$(default_subnet "$prefix")
    [[ $subnet =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "bad --subnet '$subnet': want 10.B.C (a /24 in 10.0.0.0/8)"
    need_root
    ensure_ip

    local br i ns veth
    br=$(br_name "$prefix")
    if link_exists "$br" || [ -n "$(host_indices "$prefix")" ]; then
        die "testbed '$prefix' already exists (bridge $br or namespaces ${prefix}h*); run: lan.sh down $prefix"
    fi

    # On any failure remove the partial testbed.
    trap 'echo "lan.sh: up failed, removing partial testbed $prefix" >&2; cmd_down "$prefix" >/dev/null 2>&1 || true; exit 1' ERR

    ip link add "$br" type bridge stp_state 0 mcast_snooping 0
    disable_ipv6_root "$br"
    if [ -n "$mtu" ]; then ip link set dev "$br" mtu "$mtu"; fi
    ip link set dev "$br" up

    for ((i = 1; i <= n; i++)); do
        ns=$(ns_name "$prefix" "$i")
        veth=$(veth_name "$prefix" "$i")
        ip netns add "$ns"
        ip link add "$veth" type veth peer name eth0 netns "$ns"
        disable_ipv6_root "$veth"
        if [ -n "$mtu" ]; then
            ip link set dev "$veth" mtu "$mtu"
            ip -n "$ns" link set dev eth0 mtu "$mtu"
        fi
        ip link set dev "$veth" master "$br"
        ip link set dev "$veth" up
        if [ "$ipv6" -eq 0 ]; then
            # shellcheck disable=SC2016 # $f expands in the inner sh
            ip netns exec "$ns" sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6 /proc/sys/net/ipv6/conf/eth0/disable_ipv6; do if [ -w "$f" ]; then echo 1 >"$f"; fi; done'
        fi
        ip -n "$ns" link set dev lo up
        ip -n "$ns" addr add "$subnet.$i/24" dev eth0
        ip -n "$ns" link set dev eth0 up
        ip -n "$ns" route add 224.0.0.0/4 dev eth0
    done
    trap - ERR
    echo "lan $prefix up: bridge $br, hosts ${prefix}h1..${prefix}h$n, $subnet.1..$subnet.$n/24${mtu:+, mtu $mtu}"
}

# Names of links in the root namespace that belong to PREFIX's veths.
prefix_veths() {
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${1}v[0-9]+\$" || true
}

cmd_down() {
    [ $# -eq 1 ] || usage
    local prefix=$1 br i ns veth pids removed=0
    check_prefix "$prefix"
    need_root
    ensure_ip
    br=$(br_name "$prefix")
    for i in $(host_indices "$prefix"); do
        ns=$(ns_name "$prefix" "$i")
        # Processes the testbed started inside the namespace keep it (and its eth0) alive.
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [ -n "$pids" ]; then
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
            sleep 0.3
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            # shellcheck disable=SC2086
            if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null || true; fi
        fi
        if command -v nft >/dev/null 2>&1; then
            ip netns exec "$ns" nft flush ruleset 2>/dev/null || true
        fi
        veth=$(veth_name "$prefix" "$i")
        if link_exists "$veth"; then ip link del dev "$veth" 2>/dev/null || true; fi
        ip netns del "$ns" 2>/dev/null || true
        removed=$((removed + 1))
    done
    for veth in $(prefix_veths "$prefix"); do
        ip link del dev "$veth" 2>/dev/null || true
    done
    if link_exists "$br"; then ip link del dev "$br"; fi
    echo "lan $prefix down ($removed namespaces removed)"
}

cmd_addr() {
    [ $# -eq 2 ] || usage
    check_prefix "$1"
    check_index "$2"
    need_root
    host_addr "$1" "$2"
}

cmd_exec() {
    [ $# -ge 3 ] || usage
    local prefix=$1 i=$2 ns
    shift 2
    check_prefix "$prefix"
    check_index "$i"
    need_root
    ns=$(ns_name "$prefix" "$i")
    ns_exists "$ns" || die "no namespace $ns"
    exec ip netns exec "$ns" "$@"
}

cmd_status() {
    [ $# -eq 1 ] || usage
    local prefix=$1 i ns
    check_prefix "$prefix"
    need_root
    if link_exists "$(br_name "$prefix")"; then
        ip -br link show dev "$(br_name "$prefix")"
    else
        echo "no bridge $(br_name "$prefix")"
    fi
    for i in $(host_indices "$prefix"); do
        ns=$(ns_name "$prefix" "$i")
        printf '%s: ' "$ns"
        ip -n "$ns" -br -4 addr show dev eth0 2>/dev/null || echo "(no eth0)"
    done
}

CHECK_PIDS=()
CHECK_TMP=""
check_cleanup() {
    local pid
    for pid in "${CHECK_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$CHECK_TMP" ]; then rm -rf "$CHECK_TMP"; fi
}

cmd_check() {
    [ $# -ge 1 ] || usage
    local prefix=$1 count=200 from=1 group=239.255.77.1 port=47701
    shift
    while [ $# -gt 0 ]; do
        case $1 in
        --count) [ $# -ge 2 ] || usage; count=$2; shift 2 ;;
        --from) [ $# -ge 2 ] || usage; from=$2; shift 2 ;;
        --group) [ $# -ge 2 ] || usage; group=$2; shift 2 ;;
        --port) [ $# -ge 2 ] || usage; port=$2; shift 2 ;;
        *) usage ;;
        esac
    done
    check_prefix "$prefix"
    check_index "$from"
    [[ $count =~ ^[1-9][0-9]*$ ]] || die "bad --count '$count'"
    need_root
    command -v python3 >/dev/null 2>&1 || ensure_cmd python3 python3

    local hosts=() i tmp src_addr fails=0 waited
    mapfile -t hosts < <(host_indices "$prefix")
    [ "${#hosts[@]}" -ge 2 ] || die "testbed '$prefix' needs at least 2 hosts (is it up?)"
    src_addr=$(host_addr "$prefix" "$from")
    tmp=$(mktemp -d)
    CHECK_TMP=$tmp
    trap check_cleanup EXIT

    for i in "${hosts[@]}"; do
        [ "$i" -ne "$from" ] || continue
        ip netns exec "$(ns_name "$prefix" "$i")" python3 "$SCRIPT_DIR/mcast-check.py" recv \
            --iface "$(host_addr "$prefix" "$i")" --group "$group" --port "$port" \
            --count "$count" --timeout "$((5 + count / 1000))" --idle 2 --ready-file "$tmp/ready.$i" \
            >"$tmp/out.$i" 2>"$tmp/err.$i" &
        CHECK_PIDS+=($!)
    done
    # Wait (max 10 s) until every receiver has joined the group.
    for i in "${hosts[@]}"; do
        [ "$i" -ne "$from" ] || continue
        waited=0
        while [ ! -e "$tmp/ready.$i" ] && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        [ -e "$tmp/ready.$i" ] || echo "lan.sh check: receiver in host $i not ready: $(cat "$tmp/err.$i")" >&2
    done
    ip netns exec "$(ns_name "$prefix" "$from")" python3 "$SCRIPT_DIR/mcast-check.py" send \
        --iface "$src_addr" --group "$group" --port "$port" --count "$count" >/dev/null
    for pid in "${CHECK_PIDS[@]}"; do wait "$pid" || true; done
    CHECK_PIDS=()

    local got
    for i in "${hosts[@]}"; do
        [ "$i" -ne "$from" ] || continue
        got=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["received"])' "$tmp/out.$i" 2>/dev/null || echo "")
        if [ "$got" = "$count" ]; then
            echo "OK   h$i $(host_addr "$prefix" "$i"): received $got/$count from h$from $src_addr ($group:$port)"
        else
            echo "FAIL h$i $(host_addr "$prefix" "$i"): received ${got:-none}/$count from h$from $src_addr ($group:$port)"
            fails=$((fails + 1))
        fi
    done
    [ "$fails" -eq 0 ]
}

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
addr) cmd_addr "$@" ;;
exec) cmd_exec "$@" ;;
check) cmd_check "$@" ;;
status) cmd_status "$@" ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
