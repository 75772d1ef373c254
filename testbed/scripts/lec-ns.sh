#!/usr/bin/env bash
# lec-ns.sh: lateral error correction across network namespaces, LEC off beside LEC on.
#
# Usage: lec-ns.sh [--qs PATH] [--receivers K] [--size B] [--rate R] [--count N]
#                  [--loss PCT] [--blast-count N] [--rounds N] [--lec "off on"] [--no-blast]
#
# Builds a LAN of 1 + K hosts (lan.sh; default K = 3), then, in one run (so the figures share
# the machine's noise), for each round and each of LEC off / on:
#   1. paced: `qs pub --rate R` (default 10000/s, 1 KB, N = 50000 messages) on host 1 to
#      `qs sub --json` on hosts 2..K+1, without loss, then with PCT% (default 1) of every UDP
#      frame dropped at each receiver's ingress (loss.sh: data, repairs, tokens, gossip
#      alike): one-way latency p50/p99, what was lost and how it was repaired (lateral / peer /
#      sender), gaps;
#   2. unpaced, without loss (`--rate 0`, --blast-count messages): throughput, and how many
#      datagrams the subscribers' own sockets dropped (overflow: `lec.socket_drops`).
# --lec picks the settings each round runs, in order (default both); --no-blast skips step 2.
# Prints one table, then per LEC setting the lossy run's p50 and p99 over the clean run's of the
# same round (min / median / max over the rounds); keeps the JSON under a temporary directory
# (printed). Needs root. Other
# work on the machine moves every figure (2 shared cores): compare figures of one run only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

qs=""
receivers=3
size=1024
rate=10000
count=50000
loss=1
blast=200000
rounds=1
lecs="off on"
blast_runs=1
while [ $# -gt 0 ]; do
    case $1 in
        --qs) qs=$2; shift 2 ;;
        --receivers) receivers=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        --loss) loss=$2; shift 2 ;;
        --blast-count) blast=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --lec) lecs=$2; shift 2 ;;
        --no-blast) blast_runs=0; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "lec-ns.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
need_root
resolve_qs lec-ns

prefix="qsl$$"
prefix=${prefix:0:11}
out=$(mktemp -d)
cleanup() { "$here/lan.sh" down "$prefix" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
hosts=$((receivers + 1))
"$here/lan.sh" up "$prefix" "$hosts" >/dev/null
addr() { "$here/lan.sh" addr "$prefix" "$1"; }
inns() { local i=$1; shift; ip netns exec "$(ns_name "$prefix" "$i")" "$@"; }

# qs_run TAG LEC COUNT RATE: qs sub on hosts 2.., qs pub on host 1.
qs_run() {
    local tag=$1 lec=$2 n=$3 r=$4 i cluster
    cluster="lec$$-$tag"
    for i in $(seq 2 "$hosts"); do
        inns "$i" timeout 180 "$qs" sub --json --topic bench --count "$n" --timeout 5 --lec "$lec" \
            --iface "$(addr "$i")" --cluster "$cluster" > "$out/$tag-h$i.json" &
    done
    inns 1 timeout 180 "$qs" pub --json --topic bench --count "$n" --size "$size" --rate "$r" \
        --lec "$lec" --subscribers "$receivers" --wait-secs 30 --linger 5s --iface "$(addr 1)" \
        --cluster "$cluster" > "$out/$tag-pub.json" ||
        echo "lec-ns.sh: $tag: qs pub exited with $? (see its stderr above)" >&2
    wait
}

lossy() {
    for i in $(seq 2 "$hosts"); do "$here/loss.sh" "$prefix" "$i" random "$loss" >/dev/null; done
}
clean() {
    for i in $(seq 2 "$hosts"); do
        "$here/loss.sh" "$prefix" "$i" show > "$out/$1-h$i.loss"
        "$here/loss.sh" "$prefix" "$i" clear >/dev/null
    done
}

for round in $(seq 1 "$rounds"); do
    for lec in $lecs; do
        echo "lec-ns.sh: round $round, LEC $lec" >&2
        qs_run "r$round-$lec-clean" "$lec" "$count" "$rate"
        lossy
        qs_run "r$round-$lec-lossy" "$lec" "$count" "$rate"
        clean "r$round-$lec-lossy"
        if [ "$blast_runs" = 1 ]; then qs_run "r$round-$lec-blast" "$lec" "$blast" 0; fi
    done
done

python3 - "$out" "$rounds" "$count" "$blast" "$rate" "$loss" "$receivers" <<'PY'
import json, glob, sys
out, rounds, count, blast, rate, loss, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
def load(p): return json.loads(open(p).read().strip().splitlines()[-1])
def mean(xs): xs = list(xs); return sum(xs) / len(xs) if xs else float("nan")
print(f"namespaces, 1 -> {k} subscribers, {count} messages paced at {rate}/s; {loss}% UDP frame loss at each subscriber when lossy; per subscriber (mean, p99 the worst)")
print(f"{'round':>5} {'LEC':>4} {'run':>6} {'got':>7} {'gaps':>5} {'msg/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'dropped':>8} {'sock':>6} {'lateral':>8} {'peer':>6} {'sender':>6} {'lateral %':>9}")
for r in range(1, rounds + 1):
    for lec in ("off", "on"):
        for run in ("clean", "lossy", "blast"):
            tag = f"r{r}-{lec}-{run}"
            subs = [load(p) for p in sorted(glob.glob(f"{out}/{tag}-h*.json"))]
            if not subs:
                continue
            n = blast if run == "blast" else count
            got = mean(s["received"] for s in subs) / n
            lat = [s.get("latency_us") or {} for s in subs]
            rep = [s.get("repaired", {}) for s in subs]
            l, p, snd = (sum(x.get(key, 0) for x in rep) for key in ("lateral", "peer", "sender"))
            dropped = 0
            for f in glob.glob(f"{out}/{tag}-h*.loss"):
                for w in open(f).read().split():
                    if w.startswith("dropped="):
                        dropped += int(w.split("=")[1])
            share = 100 * l / max(l + p + snd, 1)
            sock = sum(s.get("lec", {}).get("socket_drops", 0) for s in subs)
            print(f"{r:>5} {lec:>4} {run:>6} {got*100:>6.2f}% {sum(s['gaps'] for s in subs):>5} {mean(s['rate_msgs_s'] for s in subs):>9.0f} "
                  f"{mean(x.get('p50', float('nan')) for x in lat):>8.0f} {max(x.get('p99', float('nan')) for x in lat):>8.0f} "
                  f"{dropped:>8} {sock:>6} {l:>8} {p:>6} {snd:>6} {share:>8.1f}%")
ratios = {}
for r in range(1, rounds + 1):
    for lec in ("off", "on"):
        runs = {}
        for run in ("clean", "lossy"):
            subs = [load(p) for p in sorted(glob.glob(f"{out}/r{r}-{lec}-{run}-h*.json"))]
            lat = [s.get("latency_us") or {} for s in subs]
            if lat and all("p50" in x and "p99" in x for x in lat):
                runs[run] = (mean(x["p50"] for x in lat), max(x["p99"] for x in lat))
        if len(runs) == 2 and runs["clean"][0] > 0 and runs["clean"][1] > 0:
            ratios.setdefault(lec, []).append((runs["lossy"][0] / runs["clean"][0], runs["lossy"][1] / runs["clean"][1]))
def mmm(xs):
    xs = sorted(xs)
    return f"{xs[0]:.2f} / {xs[len(xs) // 2]:.2f} / {xs[-1]:.2f}"
for lec, rs in ratios.items():
    print(f"LEC {lec}: lossy over clean of the same round, {len(rs)} rounds (min / median / max): "
          f"p50 {mmm(a for a, _ in rs)}, p99 {mmm(b for _, b in rs)}; per round p99: "
          + ", ".join(f"{b:.2f}" for _, b in rs))
print(f"(JSON in {out}; dropped: frames nftables dropped at the subscribers, all UDP kinds; "
      "sock: datagrams the subscribers' own sockets dropped, SO_MEMINFO)")
PY
