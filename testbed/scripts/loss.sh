#!/usr/bin/env bash
# loss.sh: frame loss on one testbed host's link, with nftables (tc netem is absent here).
#
# Usage:
#   loss.sh PREFIX I random PERCENT [--dport LO-HI] [--send]
#       Drop each incoming UDP frame of host I with probability PERCENT (0..100, up to two
#       decimals, e.g. 0.5): `numgen random mod 10000 lt PERCENT*100`. With --send, drop
#       outgoing frames instead (netdev egress hook): loss at the sender, seen by every receiver.
#   loss.sh PREFIX I burst K [EVERY] [--dport LO-HI] [--send]
#       Drop K consecutive UDP frames out of every EVERY (default 100): `numgen inc mod EVERY lt K`
#       (the frame counter advances only on frames the rule matches, i.e. UDP [in the port range]).
#   loss.sh PREFIX I clear     Remove host I's loss table (no loss).
#   loss.sh PREFIX I show      Print `dropped=N seen=M rule=...`: UDP frames dropped, UDP frames
#                              that reached the rule (both since the rule was set), the rule.
#
# How: a `netdev` table `qsloss` in host I's namespace (${PREFIX}hI) with a chain on the
# `ingress` hook of its eth0, i.e. before IP reassembly, like loss on a real LAN: a dropped
# fragment loses its whole datagram. Only UDP is dropped (ARP, ICMP etc. pass), optionally only
# destination ports LO..HI (non-first IP fragments carry no port and never match --dport).
# Setting a rule replaces the previous one and resets the counters. `lan.sh down` removes it.
# Needs root (exit 2 otherwise); installs the Debian package nftables when `nft` is missing.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

case ${1:-} in -h | --help | help) usage 0 ;; esac
[ $# -ge 3 ] || usage
prefix=$1
host=$2
mode=$3
shift 3
check_prefix "$prefix"
check_index "$host"
need_root
ensure_ip
ns=$(ns_name "$prefix" "$host")
ns_exists "$ns" || die "no namespace $ns (is testbed '$prefix' up, with at least $host hosts?)"
ensure_nft

nsnft() { ip netns exec "$ns" nft "$@"; }

table_exists() { nsnft list table netdev "$QS_LOSS_TABLE" >/dev/null 2>&1; }

delete_table() {
    if table_exists; then nsnft delete table netdev "$QS_LOSS_TABLE"; fi
}

# Parse an optional trailing --dport LO-HI (or a single port); sets `match`.
parse_dport() {
    match="ip protocol udp"
    what="udp"
    hook=ingress
    while [ $# -gt 0 ]; do
        case $1 in
        --send)
            hook=egress
            shift
            ;;
        --dport)
            [ $# -ge 2 ] || usage
            if [[ $2 =~ ^([0-9]{1,5})-([0-9]{1,5})$ ]]; then
                local lo=${BASH_REMATCH[1]} hi=${BASH_REMATCH[2]}
                if [ "$lo" -gt "$hi" ] || [ "$hi" -gt 65535 ]; then die "bad --dport '$2'"; fi
                match="ip protocol udp udp dport $lo-$hi"
                what="udp dport $lo-$hi"
            elif [[ $2 =~ ^[0-9]{1,5}$ ]] && [ "$2" -le 65535 ]; then
                match="ip protocol udp udp dport $2"
                what="udp dport $2"
            else
                die "bad --dport '$2': want LO-HI or PORT"
            fi
            shift 2
            ;;
        *) usage ;;
        esac
    done
}

# install RULE_EXPR DESCRIPTION
install_rule() {
    local expr=$1 desc=$2
    delete_table
    nsnft -f - <<EOF
table netdev $QS_LOSS_TABLE {
    counter seen {
    }
    counter dropped {
    }
    chain in {
        type filter hook $hook device "eth0" priority 0; policy accept;
        $match counter name "seen"
        $match $expr counter name "dropped" drop comment "$desc"
    }
}
EOF
    echo "loss $ns: $desc ($hook)"
}

counter_packets() {
    nsnft list counter netdev "$QS_LOSS_TABLE" "$1" | sed -n 's/.*packets \([0-9]*\) bytes.*/\1/p' | head -n1
}

case $mode in
random)
    [ $# -ge 1 ] || usage
    pct=$1
    shift
    [[ $pct =~ ^([0-9]{1,3})(\.([0-9]{1,2}))?$ ]] || die "bad PERCENT '$pct': 0..100, up to 2 decimals"
    whole=${BASH_REMATCH[1]}
    frac=${BASH_REMATCH[3]}
    frac=${frac}00
    bp=$((10#$whole * 100 + 10#${frac:0:2}))
    [ "$bp" -le 10000 ] || die "bad PERCENT '$pct': more than 100"
    parse_dport "$@"
    expr="numgen random mod 10000 lt $bp"
    if [ "$bp" -eq 10000 ]; then expr=""; fi # 'lt 10000' is out of numgen's range
    install_rule "$expr" "random $pct% of $what"
    ;;
burst)
    [ $# -ge 1 ] || usage
    k=$1
    shift
    every=100
    if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
        every=$1
        shift
    fi
    [[ $k =~ ^[0-9]+$ ]] || die "bad K '$k'"
    if [ "$every" -lt 1 ] || [ "$k" -gt "$every" ]; then die "need 0 <= K <= EVERY, EVERY >= 1"; fi
    parse_dport "$@"
    expr="numgen inc mod $every lt $k"
    if [ "$k" -eq "$every" ]; then expr=""; fi # drop all
    install_rule "$expr" "burst $k of every $every of $what"
    ;;
clear)
    [ $# -eq 0 ] || usage
    delete_table
    echo "loss $ns: cleared"
    ;;
show)
    [ $# -eq 0 ] || usage
    if table_exists; then
        desc=$(nsnft list chain netdev "$QS_LOSS_TABLE" in | sed -n 's/.*comment "\(.*\)".*/\1/p' | head -n1)
        echo "dropped=$(counter_packets dropped) seen=$(counter_packets seen) rule=\"$desc\""
    else
        echo "dropped=0 seen=0 rule=none"
    fi
    ;;
*) usage ;;
esac
