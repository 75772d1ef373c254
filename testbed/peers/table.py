#!/usr/bin/env python3
"""table.py FILE.jsonl: one row per run (peer, size, loss[, topics]) from run-peer.sh's JSON lines,
then one row per ping-pong run (run-peer.sh --ping: one-way = RTT/2).

The topics column appears when a run carries "topics" (run-peer.sh --topics, matrix.sh --topics)."""
import json
import sys

runs, cur, pings = [], [], []
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("role") == "ping":
        pings.append(r)
        continue
    cur.append(r)
    if r.get("role") == "send":
        runs.append(cur)
        cur = []
has_topics = any("topics" in r[-1] for r in runs)
tcol = f" {'topics':>6}" if has_topics else ""
print(f"{'peer':<11} {'size':>5} {'loss':<9}{tcol} {'recv msg/s (mean)':>17} {'delivered':>9} {'status':<16} "
      f"{'p50 us':>9} {'p99 us':>10} {'send msg/s':>10} {'load':>5}")
for run in runs:
    send, recv = run[-1], [r for r in run if r.get("role") == "recv"]
    if not recv:
        continue
    rate = sum(r.get("rate_msgs_s") or 0 for r in recv) / len(recv)
    deliv = sum((r.get("received") or 0) / (r.get("expected") or 1) for r in recv) / len(recv)
    st = sorted({r.get("status", "?") for r in recv})
    n_ok = sum(r.get("status") == "complete" for r in recv)
    lat = [r["latency_us"] for r in recv if r.get("latency_us")]
    p50 = sum(l["p50"] for l in lat) / len(lat) if lat else float("nan")
    p99 = max(l["p99"] for l in lat) if lat else float("nan")
    tval = f" {send.get('topics', '-'):>6}" if has_topics else ""
    print(f"{send.get('peer', recv[0]['peer']):<11} {recv[0].get('size', ''):>5} {send.get('loss', ''):<9}{tval} "
          f"{rate:>17.0f} {deliv * 100:>8.2f}% {f'{n_ok}/{len(recv)} complete':<16} {p50:>9.0f} {p99:>10.0f} "
          f"{send.get('rate_msgs_s', 0):>10} {send.get('load_avg_1m', ''):>5}")
if pings:
    print(f"\n{'ping-pong':<11} {'size':>5} {'samples':>8} {'lost':>5} {'one-way p50 us':>15} {'p90':>9} {'p99':>9} {'p99.9':>9} {'load':>5}")
    for p in pings:
        o = p.get("one_way_us")
        if not o:
            print(f"{p.get('peer', '?'):<11} {p.get('size', ''):>5} error: {p.get('error', '?')}")
            continue
        print(f"{p['peer']:<11} {p.get('size', ''):>5} {p.get('samples', 0):>8} {p.get('lost', 0):>5} {o['p50']:>15.1f} "
              f"{o['p90']:>9.1f} {o['p99']:>9.1f} {o['p999']:>9.1f} {p.get('load_avg_1m', ''):>5}")
