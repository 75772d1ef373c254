#!/usr/bin/env bash
# bench-ns.sh: throughput across network namespaces, Quicksilver next to the physical limit.
#
# Usage: bench-ns.sh [--qs PATH] [--count N] [--sizes "64 1024"] [--receivers K] [--loss PCT]
#
# Builds a LAN of 1 + K hosts (bridge + veth + namespaces, see lan.sh), then for each size:
#   1. raw UDP multicast: `qs bench raw-recv` on hosts 2..K+1, `qs bench raw-send` on host 1
#      (sendmmsg/recvmmsg, no protocol: the physical limit of this machine);
#   2. Quicksilver: `qs sub --json` on hosts 2..K+1, `qs pub --rate 0` on host 1 (as fast as
#      back-pressure allows).
#   3. with --loss PCT: Quicksilver again with nftables dropping PCT% of the data frames arriving
#      at every receiver (loss.sh, data port 7401): the throughput under loss next to the
#      lossless run, and the repairs it took.
# Prints one table row per size with per-receiver rates and the Quicksilver/raw ratio, and the
# raw JSON lines under the results directory. Tears the LAN down on exit. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

qs=""
count=300000
sizes="64 1024"
receivers=2
loss=""
while [ $# -gt 0 ]; do
    case $1 in
        --qs) qs=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --receivers) receivers=$2; shift 2 ;;
        --loss) loss=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "bench-ns.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
need_root
repo=$(cd "$here/../.." && pwd)
[ -n "$qs" ] || qs=$repo/target/release/qs
[ -x "$qs" ] || { echo "bench-ns.sh: $qs not found: cargo build --release -p quicksilver-cli" >&2; exit 1; }

prefix="qsb$$"
prefix=${prefix:0:11}
out=$(mktemp -d)
cleanup() { "$here/lan.sh" down "$prefix" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
hosts=$((receivers + 1))
"$here/lan.sh" up "$prefix" "$hosts" >/dev/null
addr() { "$here/lan.sh" addr "$prefix" "$1"; }
inns() { local i=$1; shift; ip netns exec "$(ns_name "$prefix" "$i")" "$@"; }

for size in $sizes; do
    for i in $(seq 2 "$hosts"); do
        inns "$i" timeout 120 "$qs" bench raw-recv --iface "$(addr "$i")" --size "$size" \
            --count "$count" --timeout 3 > "$out/raw-$size-h$i.json" &
    done
    sleep 0.5
    inns 1 timeout 120 "$qs" bench raw-send --iface "$(addr 1)" --size "$size" --count "$count" \
        > "$out/raw-$size-send.json"
    wait
    for i in $(seq 2 "$hosts"); do
        inns "$i" timeout 120 "$qs" sub --json --topic bench --count "$count" --timeout 3 \
            --iface "$(addr "$i")" --cluster "bench$$" > "$out/qs-$size-h$i.json" &
    done
    inns 1 timeout 120 "$qs" pub --json --topic bench --count "$count" --size "$size" --rate 0 \
        --subscribers "$receivers" --wait-secs 30 --iface "$(addr 1)" --cluster "bench$$" > "$out/qs-$size-pub.json"
    wait
    if [ -n "$loss" ]; then
        for i in $(seq 2 "$hosts"); do
            "$here/loss.sh" "$prefix" "$i" random "$loss" --dport 7401-7401 >/dev/null
        done
        for i in $(seq 2 "$hosts"); do
            inns "$i" timeout 120 "$qs" sub --json --topic bench --count "$count" --timeout 3 \
                --iface "$(addr "$i")" --cluster "lossy$$" > "$out/lossy-$size-h$i.json" &
        done
        inns 1 timeout 120 "$qs" pub --json --topic bench --count "$count" --size "$size" --rate 0 \
            --subscribers "$receivers" --wait-secs 30 --iface "$(addr 1)" --cluster "lossy$$" > "$out/lossy-$size-pub.json"
        wait
        for i in $(seq 2 "$hosts"); do
            "$here/loss.sh" "$prefix" "$i" show > "$out/lossy-$size-h$i.loss"
            "$here/loss.sh" "$prefix" "$i" clear >/dev/null
        done
    fi
done

# shellcheck disable=SC2086 # $sizes is a list on purpose
python3 - "$out" "$receivers" "$count" $sizes <<'PY'
import json, sys, glob
out, k, count, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def load(p): return json.loads(open(p).read().strip().splitlines()[-1])
print(f"namespaces, 1 sender -> {k} receivers, {count} messages; per receiver (mean)")
print(f"{'size':>6} {'raw msg/s':>11} {'raw got':>8} {'qs msg/s':>11} {'qs MB/s':>8} {'qs got':>8} {'gaps':>6} {'qs/raw':>7}")
for s in sizes:
    raw = [load(p) for p in sorted(glob.glob(f"{out}/raw-{s}-h*.json"))]
    qs = [load(p) for p in sorted(glob.glob(f"{out}/qs-{s}-h*.json"))]
    rr = sum(r["rate_msgs_s"] for r in raw) / len(raw)
    rg = sum(r["received"] for r in raw) / len(raw) / count
    qr = sum(q["rate_msgs_s"] for q in qs) / len(qs)
    qg = sum(q["received"] for q in qs) / len(qs) / count
    gaps = sum(q["gaps"] for q in qs)
    print(f"{s:>6} {rr:>11.0f} {rg*100:>7.1f}% {qr:>11.0f} {qr*int(s)/1e6:>8.1f} {qg*100:>7.1f}% {gaps:>6} {qr/rr:>6.2f}x")
    lossy = [load(p) for p in sorted(glob.glob(f"{out}/lossy-{s}-h*.json"))]
    if lossy:
        lr = sum(q["rate_msgs_s"] for q in lossy) / len(lossy)
        lg = sum(q["received"] for q in lossy) / len(lossy) / count
        bad = sum(q["gaps"] + q["duplicates"] + q["out_of_order"] for q in lossy)
        dropped = [open(p).read().split()[0] for p in sorted(glob.glob(f"{out}/lossy-{s}-h*.loss"))]
        print(f"{s:>6} with loss: {lr:>11.0f} msg/s, got {lg*100:.1f}%, gaps+dup+ooo {bad}, "
              f"{lr/qr*100:.1f}% of the lossless rate ({', '.join(dropped)})")
PY
echo "raw JSON lines: $out"
