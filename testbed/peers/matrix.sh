#!/usr/bin/env bash
# matrix.sh: run-peer.sh over peers x sizes x losses, one fresh LAN per run; JSON lines to
# RESULTS (default target/peers/results/peers-DATE.jsonl, gitignored), a table at the end.
#
# Usage: matrix.sh [--peers "zmq-epgm norm cyclonedds jgroups"] [--sizes "1024 64"]
#                  [--losses "none random:1 burst:10"] [--receivers K] [--count-1k N] [--count-64 N]
#                  [--results FILE]
# Counts: --count-1k (default 100000) for sizes >= 512, --count-64 (default 200000) below;
# cyclonedds runs 8 s instead. Extra arguments for one peer: PEERS_OPTS_<peer> (dashes as
# underscores), e.g. PEERS_OPTS_norm="--rate-mbit 200". Needs root (exit 2).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
peers="zmq-epgm norm cyclonedds jgroups" sizes="1024 64" losses="none random:1 burst:10"
receivers=3 c1k=100000 c64=200000
results=$repo/target/peers/results/peers-$(date +%Y%m%d-%H%M%S).jsonl
while [ $# -gt 0 ]; do
    case $1 in
    --peers) peers=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --losses) losses=$2; shift 2 ;;
    --receivers) receivers=$2; shift 2 ;;
    --count-1k) c1k=$2; shift 2 ;;
    --count-64) c64=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "matrix.sh: unknown option $1" >&2; exit 1 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "matrix.sh: needs root (network namespaces); run it as root" >&2; exit 2; }
mkdir -p "$(dirname "$results")"
for peer in $peers; do
    var="PEERS_OPTS_${peer//-/_}"
    for size in $sizes; do
        count=$c1k
        [ "$size" -lt 512 ] && count=$c64
        for loss in $losses; do
            la=()
            [ "$loss" = none ] || la=(--loss "$loss")
            rc=0
            "$here/run-peer.sh" "$peer" --size "$size" --count "$count" --receivers "$receivers" \
                ${la[@]+"${la[@]}"} --opts "${!var:-}" >>"$results" || rc=$?
            [ $rc -eq 0 ] || echo "matrix.sh: $peer size $size loss $loss: exit $rc" >&2
        done
    done
done
python3 "$here/table.py" "$results"
echo "results: $results" >&2
