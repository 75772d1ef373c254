#!/usr/bin/env bash
# matrix.sh: run-peer.sh over peers x sizes x losses, one fresh LAN per run; JSON lines to
# RESULTS (default target/peers/results/peers-DATE.jsonl, gitignored), a table at the end.
#
# Usage: matrix.sh [--peers "zmq-epgm norm cyclonedds jgroups aeron zenoh"] [--sizes "1024 64"]
#                  [--ping-count N]
#                  [--losses "none random:1 burst:10"] [--receivers K] [--count-1k N] [--count-64 N]
#                  [--count N] [--topics "1 10 100 1000 10000"] [--results FILE]
# Counts: --count-1k (default 100000) for sizes >= 512, --count-64 (default 200000) below,
# --count N for every size; cyclonedds runs 8 s instead. Extra arguments for one peer:
# PEERS_OPTS_<peer> (dashes as underscores), e.g. PEERS_OPTS_norm="--rate-mbit 200".
# --topics: the many-topics sweep, one run per topic count (run-peer.sh --topics T: round
# robin publisher, every receiver subscribes to all T; 0 = a run without topics, for
# reference); its defaults are --peers zmq-epgm
# --sizes 256 --losses none (explicit options still apply); peers without topics are skipped
# (README.md). After the throughput runs, aeron and zenoh (when in --peers) also run ping-pong
# (run-peer.sh --ping, --ping-count round trips, default 10000, per size; 0 skips them).
# Needs root (exit 2).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
peers="zmq-epgm norm cyclonedds jgroups aeron zenoh" sizes="1024 64" losses="none random:1 burst:10"
ping_count=10000
receivers=3 c1k=100000 c64=200000 call="" topics_list=""
peers_set=0 sizes_set=0 losses_set=0
results=$repo/target/peers/results/peers-$(date +%Y%m%d-%H%M%S).jsonl
while [ $# -gt 0 ]; do
    case $1 in
    --peers) peers=$2; peers_set=1; shift 2 ;;
    --sizes) sizes=$2; sizes_set=1; shift 2 ;;
    --losses) losses=$2; losses_set=1; shift 2 ;;
    --count) call=$2; shift 2 ;;
    --topics) topics_list=$2; shift 2 ;;
    --receivers) receivers=$2; shift 2 ;;
    --count-1k) c1k=$2; shift 2 ;;
    --count-64) c64=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --ping-count) ping_count=$2; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "matrix.sh: unknown option $1" >&2; exit 1 ;;
    esac
done
if [ -n "$topics_list" ]; then
    [ $peers_set -eq 1 ] || peers=zmq-epgm
    [ $sizes_set -eq 1 ] || sizes=256
    [ $losses_set -eq 1 ] || losses=none
fi
[ "$(id -u)" -eq 0 ] || { echo "matrix.sh: needs root (network namespaces); run it as root" >&2; exit 2; }
mkdir -p "$(dirname "$results")"
for peer in $peers; do
    var="PEERS_OPTS_${peer//-/_}"
    if [ -n "$topics_list" ] && [ "$peer" != zmq-epgm ]; then
        echo "matrix.sh: $peer has no topics usable for the sweep (README.md): skipped" >&2
        continue
    fi
    for size in $sizes; do
        count=$c1k
        [ "$size" -lt 512 ] && count=$c64
        [ -z "$call" ] || count=$call
        for loss in $losses; do
            la=()
            [ "$loss" = none ] || la=(--loss "$loss")
            for t in ${topics_list:--}; do
                ta=()
                [ "$t" = - ] || [ "$t" = 0 ] || ta=(--topics "$t")
                rc=0
                "$here/run-peer.sh" "$peer" --size "$size" --count "$count" --receivers "$receivers" \
                    ${la[@]+"${la[@]}"} ${ta[@]+"${ta[@]}"} --opts "${!var:-}" >>"$results" || rc=$?
                [ $rc -eq 0 ] || echo "matrix.sh: $peer size $size loss $loss${ta[*]:+ topics $t}: exit $rc" >&2
            done
        done
    done
done
if [ -z "$topics_list" ] && [ "$ping_count" -gt 0 ]; then
    for peer in $peers; do
        case $peer in aeron | zenoh) ;; *) continue ;; esac
        for size in $sizes; do
            rc=0
            "$here/run-peer.sh" "$peer" --ping --size "$size" --count "$ping_count" >>"$results" || rc=$?
            [ $rc -eq 0 ] || echo "matrix.sh: $peer ping size $size: exit $rc" >&2
        done
    done
fi
python3 "$here/table.py" "$results"
echo "results: $results" >&2
