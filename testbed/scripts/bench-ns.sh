#!/usr/bin/env bash
# bench-ns.sh: Quicksilver next to the physical limit across network namespaces.
#
# Usage: bench-ns.sh [--qs PATH] [--count N] [--sizes "64 1024"] [--receivers K] [--loss PCT]
#                    [--sweep-count N] [--rate R] [--ping] [--ping-count N]
#                    [--ping-interval-us N] [--busy-poll SPIN] [--latency-only] [--jsonl FILE]
#
# Builds a LAN of 1 + K hosts (bridge + veth + namespaces, see lan.sh), then for each size:
#   1. raw UDP multicast blast: `qs bench raw-recv` on hosts 2..K+1, `qs bench raw-send` on
#      host 1 (sendmmsg/recvmmsg, no protocol, as fast as the socket takes datagrams). On this
#      small machine the blast overruns its receivers and measures contention as well;
#   2. raw paced sweep (--sweep-count messages per step, default 50000; 0 skips it): short
#      runs paced at 0.8x to 3x the blast rate; the honest limit is the highest per-receiver
#      rate at which the worst receiver lost at most 0.1 % (the better of that and a blast that
#      lost at most 0.1 %). Stops at the first step above 0.1 % loss;
#   3. Quicksilver: `qs sub --json` on hosts 2..K+1, `qs pub --rate 0` on host 1 (as fast as
#      back-pressure allows); a Quicksilver/raw ratio above 1.0 at one message per datagram
#      (1 KB) is printed as a MEASUREMENT FAULT;
#   4. with --loss PCT: Quicksilver again with nftables dropping PCT% of the data frames at
#      every receiver (loss.sh, data port 7401);
#   5. with --rate R: raw and Quicksilver paced at R msg/s: one-way latency at that load;
#   6. with --ping: round trips host 1 <-> host 2, `qs bench ping --role ping/pong` (raw UDP
#      multicast ping-pong, then Quicksilver), one at a time; one-way = RTT/2;
#      --ping-interval-us N pauses N µs between an echo and the next ping (100: at most
#      10,000 round trips a second);
#   7. with --busy-poll SPIN (`always` or a spin budget such as 200us): the Quicksilver runs of
#      5 and 6 again with `--busy-poll SPIN` (node threads and receivers spin instead of
#      sleeping), reported as quicksilver-busy-poll beside the default and the same run's raw,
#      with the CPU share of the node threads (`cpu` in the JSON lines).
# --latency-only skips 1 to 4 (no blast, sweep or throughput runs).
# Prints tables, keeps the JSON lines under the results directory and, with --jsonl FILE,
# appends summary lines for the suite report (kinds raw-limit, throughput, paced-latency,
# ping). Tears the LAN down on exit. Needs root. Other work on the machine moves every
# figure (2 shared cores): compare figures of one run only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

qs=""
count=300000
sizes="64 1024"
receivers=2
loss=""
sweep=50000
rate=0
ping=0
ping_count=10000
ping_interval=0
busy=""
latency_only=0
jsonl=""
while [ $# -gt 0 ]; do
    case $1 in
        --qs) qs=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --receivers) receivers=$2; shift 2 ;;
        --loss) loss=$2; shift 2 ;;
        --sweep-count) sweep=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --ping) ping=1; shift ;;
        --ping-count) ping_count=$2; shift 2 ;;
        --ping-interval-us) ping_interval=$2; shift 2 ;;
        --busy-poll) busy=$2; shift 2 ;;
        --latency-only) latency_only=1; shift ;;
        --jsonl) jsonl=$(realpath -m "$2"); shift 2 ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
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

# raw_run TAG SIZE COUNT RATE: raw receivers on hosts 2.., the sender on host 1.
raw_run() {
    local tag=$1 size=$2 n=$3 r=$4 i
    for i in $(seq 2 "$hosts"); do
        inns "$i" timeout 120 "$qs" bench raw-recv --iface "$(addr "$i")" --size "$size" \
            --count "$n" --timeout 3 > "$out/$tag-h$i.json" &
    done
    sleep 0.5
    inns 1 timeout 120 "$qs" bench raw-send --iface "$(addr 1)" --size "$size" --count "$n" \
        --rate "$r" > "$out/$tag-send.json"
    wait
}

# qs_run TAG SIZE COUNT RATE CLUSTER [NODE FLAGS...]: qs sub on hosts 2.., qs pub on host 1.
qs_run() {
    local tag=$1 size=$2 n=$3 r=$4 cluster=$5 i
    shift 5
    for i in $(seq 2 "$hosts"); do
        inns "$i" timeout 120 "$qs" sub --json --topic bench --count "$n" --timeout 3 \
            --iface "$(addr "$i")" --cluster "$cluster" "$@" > "$out/$tag-h$i.json" &
    done
    inns 1 timeout 120 "$qs" pub --json --topic bench --count "$n" --size "$size" --rate "$r" \
        --subscribers "$receivers" --wait-secs 30 --iface "$(addr 1)" --cluster "$cluster" "$@" > "$out/$tag-pub.json"
    wait
}

# ping_run TAG SIZE CLUSTER [PING FLAGS...]: ponger on host 2, pinger on host 1.
ping_run() {
    local tag=$1 size=$2 cluster=$3
    shift 3
    inns 2 timeout 300 "$qs" bench ping --role pong --iface "$(addr 2)" --size "$size" \
        --cluster "$cluster" "$@" > "$out/pong-$tag.log" 2>&1 &
    inns 1 timeout 300 "$qs" bench ping --role ping --iface "$(addr 1)" --size "$size" \
        --count "$ping_count" --interval-us "$ping_interval" --cluster "$cluster" "$@" --json \
        > "$out/$tag.json"
    wait
}

# sweep_step_ok TAG: "rate loss_max sent_rate" of a raw step (from its JSON lines).
step_summary() {
    python3 - "$out" "$1" <<'PY'
import json, glob, sys
out, tag = sys.argv[1], sys.argv[2]
def load(p): return json.loads(open(p).read().strip().splitlines()[-1])
recv = [load(p) for p in sorted(glob.glob(f"{out}/{tag}-h*.json"))]
send = load(f"{out}/{tag}-send.json")
sent = send["sent"]
loss = max(1 - r["received"] / max(sent, 1) for r in recv)
rate = sum(r["rate_msgs_s"] for r in recv) / len(recv)
print(f"{rate:.0f} {loss:.6f} {send['rate_msgs_s']:.0f}")
PY
}

for size in $sizes; do
  if [ "$latency_only" -eq 0 ]; then
    raw_run "raw-$size" "$size" "$count" 0
    if [ "$sweep" -gt 0 ]; then
        blast=$(step_summary "raw-$size" | cut -d' ' -f1)
        for f in 0.8 1.0 1.25 1.5 1.75 2.0 2.5 3.0; do
            r=$(python3 -c "print(int(max($blast, 10000) * $f))")
            raw_run "sweep-$size-$r" "$size" "$sweep" "$r"
            read -r got lossmax sent_rate <<<"$(step_summary "sweep-$size-$r")"
            echo "bench-ns.sh: $size B raw paced at $r/s: $got msg/s per receiver, worst loss $lossmax" >&2
            if python3 -c "import sys; sys.exit(0 if $lossmax > 0.001 or $sent_rate < 0.9 * $r else 1)"; then
                break
            fi
        done
    fi
    qs_run "qs-$size" "$size" "$count" 0 "bench$$"
    if [ -n "$loss" ]; then
        for i in $(seq 2 "$hosts"); do
            "$here/loss.sh" "$prefix" "$i" random "$loss" --dport 7401-7401 >/dev/null
        done
        qs_run "lossy-$size" "$size" "$count" 0 "lossy$$"
        for i in $(seq 2 "$hosts"); do
            "$here/loss.sh" "$prefix" "$i" show > "$out/lossy-$size-h$i.loss"
            "$here/loss.sh" "$prefix" "$i" clear >/dev/null
        done
    fi
  fi
    if [ "$rate" -gt 0 ]; then
        paced=$((rate * 5))
        raw_run "rawpaced-$size" "$size" "$paced" "$rate"
        qs_run "qspaced-$size" "$size" "$paced" "$rate" "paced$$"
        if [ -n "$busy" ]; then
            qs_run "qsbusy-$size" "$size" "$paced" "$rate" "busy$$" --busy-poll "$busy"
        fi
    fi
    if [ "$ping" -eq 1 ]; then
        ping_run "ping-$size" "$size" "ping$$"
        if [ -n "$busy" ]; then
            # The raw run of this pair is the busy one's own baseline, minutes closer.
            ping_run "pingbusy-$size" "$size" "pingbusy$$" --busy-poll "$busy"
        fi
    fi
done

# shellcheck disable=SC2086 # $sizes is a list on purpose
python3 - "$out" "$receivers" "$count" "$rate" "$jsonl" "$busy" $sizes <<'PY'
import json, sys, glob, os
out, k, count, rate, jsonl, busy, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7:]
def load(p): return json.loads(open(p).read().strip().splitlines()[-1])
def mean(xs): xs = list(xs); return sum(xs) / len(xs) if xs else None
lines = []
def emit(d): lines.append(d)
print(f"namespaces, 1 sender -> {k} receivers, {count} messages; per receiver (mean)")
if glob.glob(f"{out}/raw-*-h*.json"): print(f"{'size':>6} {'blast msg/s':>12} {'blast got':>9} {'paced best':>11} {'limit':>9} {'qs msg/s':>10} {'qs MB/s':>8} {'qs got':>8} {'gaps':>6} {'qs/limit':>9}")
faults = []
for s in sizes:
    raw = [load(p) for p in sorted(glob.glob(f"{out}/raw-{s}-h*.json"))]
    qs = [load(p) for p in sorted(glob.glob(f"{out}/qs-{s}-h*.json"))]
    if raw and qs:
        blast = mean(r["rate_msgs_s"] for r in raw)
        blast_got = mean(r["received"] for r in raw) / count
        steps = []
        for send in sorted(glob.glob(f"{out}/sweep-{s}-*-send.json"), key=lambda p: int(p.split("-")[-2])):
            tag = send[:-len("-send.json")]
            r = int(tag.split("-")[-1])
            recv = [load(p) for p in sorted(glob.glob(f"{tag}-h*.json"))]
            sent = load(send)["sent"]
            steps.append({"target_per_sec": r, "sent_per_sec": load(send)["rate_msgs_s"], "sent": sent,
                          "recv_per_sec": mean(x["rate_msgs_s"] for x in recv),
                          "loss_max": max(1 - x["received"] / max(sent, 1) for x in recv)})
        clean = [st for st in steps if st["loss_max"] <= 0.001]
        best = max(clean, key=lambda st: st["recv_per_sec"]) if clean else None
        limit = max([blast if 1 - blast_got <= 0.001 else 0] + ([best["recv_per_sec"]] if best else [])) or blast
        qr = mean(q["rate_msgs_s"] for q in qs)
        qg = mean(q["received"] for q in qs) / count
        gaps = sum(q["gaps"] for q in qs)
        ratio = qr / limit
        one_per_datagram = 2 * (int(s) + 16) + 40 > 1472
        fault = one_per_datagram and ratio > 1.0
        if fault:
            faults.append((s, ratio))
        print(f"{s:>6} {blast:>12.0f} {blast_got*100:>8.1f}% {best['recv_per_sec'] if best else 0:>11.0f} {limit:>9.0f} {qr:>10.0f} {qr*int(s)/1e6:>8.1f} {qg*100:>7.1f}% {gaps:>6} {ratio:>8.2f}x{'  FAULT' if fault else ''}")
        # CPU per message (all threads of the process, from the first message to the end; 0
        # when a qs binary predates the cpu fields) and unpaced one-way latency (queueing).
        pubj = load(f"{out}/qs-{s}-pub.json") if os.path.exists(f"{out}/qs-{s}-pub.json") else {}
        pub_cpu = pubj.get("cpu_ns_per_msg", 0)
        sub_cpu = mean((q.get("cpu", {}).get("node_ns", 0) + q.get("cpu", {}).get("app_ns", 0)) / max(q["received"], 1) for q in qs)
        lat = {p: mean(q["latency_us"][p] for q in qs) for p in ("p50", "p99")}
        print(f"       cpu per message: publisher {pub_cpu:.0f} ns, subscriber {sub_cpu:.0f} ns (mean); unpaced one-way p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} us")
        if steps:
            print("       sweep: " + " ".join(f"{st['target_per_sec']}/s:{st['recv_per_sec']:.0f}({st['loss_max']*100:.2f}%)" for st in steps))
        emit({"kind": "raw-limit", "size": int(s), "receivers": k, "blast_msgs_s": blast,
              "blast_delivered": blast_got, "sweep": steps, "best_paced": best, "limit_msgs_s": limit,
              "max_loss": 0.001})
        emit({"kind": "throughput", "system": "quicksilver", "size": int(s), "receivers": k,
              "msgs_s": qr, "delivered": qg, "gaps": gaps, "ratio_to_limit": ratio,
              "ratio_to_blast": qr / blast, "one_message_per_datagram": one_per_datagram,
              "measurement_fault": fault, "pub_cpu_ns_per_msg": pub_cpu,
              "sub_cpu_ns_per_msg": sub_cpu, "one_way_us": lat})
        lossy = [load(p) for p in sorted(glob.glob(f"{out}/lossy-{s}-h*.json"))]
        if lossy:
            lr = mean(q["rate_msgs_s"] for q in lossy)
            lg = mean(q["received"] for q in lossy) / count
            bad = sum(q["gaps"] + q["duplicates"] + q["out_of_order"] for q in lossy)
            dropped = [open(p).read().split()[0] for p in sorted(glob.glob(f"{out}/lossy-{s}-h*.loss"))]
            print(f"{s:>6} with loss: {lr:>11.0f} msg/s, got {lg*100:.1f}%, gaps+dup+ooo {bad}, "
                  f"{lr/qr*100:.1f}% of the lossless rate ({', '.join(dropped)})")
    rp = [load(p) for p in sorted(glob.glob(f"{out}/rawpaced-{s}-h*.json"))]
    keys = ["p50", "p90", "p99", "p999", "max"]
    rl = {q: mean(x["latency_us"][q] for x in rp) for q in keys} if rp else None
    if rl:
        emit({"kind": "paced-latency", "system": "raw", "size": int(s), "rate": rate,
              "receivers": k, "one_way_us": rl})
    for tag, name in (("qspaced", "quicksilver"), ("qsbusy", "quicksilver-busy-poll")):
        qp = [load(p) for p in sorted(glob.glob(f"{out}/{tag}-{s}-h*.json"))]
        if not (rl and qp):
            continue
        ql = {q: mean(x["latency_us"][q] for x in qp) for q in keys}
        cpu = {c: mean(x.get("cpu", {}).get(c, 0) for x in qp) for c in ("node_pct", "app_pct")}
        print(f"{s:>6} paced at {rate}/s, one-way µs (mean of receivers): raw p50 {rl['p50']:.0f} p99 {rl['p99']:.0f} | "
              f"{name} p50 {ql['p50']:.0f} p99 {ql['p99']:.0f} | ratio p50 {ql['p50']/rl['p50']:.2f}x p99 {ql['p99']/rl['p99']:.2f}x"
              f" | subscriber CPU node {cpu['node_pct']:.0f}% app {cpu['app_pct']:.0f}%")
        emit({"kind": "paced-latency", "system": name, "size": int(s), "rate": rate,
              "receivers": k, "one_way_us": ql, "cpu": cpu, "busy_poll": busy if tag == "qsbusy" else None})
    for tag, name in (("ping", "quicksilver"), ("pingbusy", "quicksilver-busy-poll")):
        pf = f"{out}/{tag}-{s}.json"
        if not (os.path.exists(pf) and os.path.getsize(pf) > 0):
            continue
        p = load(pf)
        raw_name = "raw" if tag == "ping" else "raw (busy-poll pair)"
        for system, key in ((raw_name, "raw"), (name, "quicksilver")):
            if p.get(key):
                emit({"kind": "ping", "system": system, "size": int(s), "path": "namespaces",
                      "interval_us": p.get("interval_us"), "busy_poll": p.get("busy_poll"), **p[key]})
        if p.get("raw") and p.get("quicksilver"):
            r, q = p["raw"]["one_way_us"], p["quicksilver"]["one_way_us"]
            c = p["quicksilver"].get("cpu", {})
            print(f"{s:>6} ping-pong one-way (RTT/2) µs: raw p50 {r['p50']:.1f} p99 {r['p99']:.1f} | "
                  f"{name} p50 {q['p50']:.1f} p99 {q['p99']:.1f} | ratio p50 {q['p50']/r['p50']:.2f}x p99 {q['p99']/r['p99']:.2f}x"
                  f" | pinger CPU node {c.get('node_pct', 0):.0f}% app {c.get('app_pct', 0):.0f}%, node spinning {p['quicksilver'].get('node_spin_pct', 0):.0f}% of the time")
for s, ratio in faults:
    print(f"MEASUREMENT FAULT: Quicksilver at {s} B (one message per datagram) measured {ratio:.2f}x the raw limit: the raw baseline did not reach the path's limit in this run")
if jsonl:
    with open(jsonl, "a") as f:
        for d in lines:
            f.write(json.dumps(d) + "\n")
    print(f"summary lines appended to {jsonl}")
PY
echo "raw JSON lines: $out"
