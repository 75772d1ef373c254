#!/usr/bin/env python3
"""collect.py: turn the logs of one run-peer.sh run into its JSON lines (used by run-peer.sh).

Usage: collect.py OUTDIR PEER HOSTS COUNT SIZE LOSS LOADAVG [TOPICS]

TOPICS (run-peer.sh --topics) is added as "topics" to every line of the run.

Receivers: the harnesses (zmq_bench, norm_bench, JgBench) print one JSON line each; it gets the
host, the loss spec and loss.sh's counters, and its status is normalised to "complete" or
"stalled" (with "reason": idle = nothing new for --idle s, timeout = nothing at all, signal =
killed at the --timeout bound). A receiver with no line at all is reported stalled with
received null. ddsperf (cyclonedds) prints text: its per-second "sub" lines give received and
lost (sequence gaps: gone for good), its "pub" lines give the publish rate and, for the 1 % of
samples that are pings, the RTT/2 latency per receiver.
"""
import glob
import json
import os
import re
import sys

out, peer, hosts, count, size, loss, load = sys.argv[1:8]
topics = int(sys.argv[8]) if len(sys.argv) > 8 else None
hosts, count, size = int(hosts), int(count), int(size)


def last_json(path):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def loss_info(i):
    try:
        s = open(f"{out}/loss-h{i}").read()
    except OSError:
        return {}
    m = re.search(r"dropped=(\d+) seen=(\d+)", s)
    return {"loss_dropped": int(m.group(1)), "loss_seen": int(m.group(2))} if m else {}


def tail_err(name):
    try:
        return open(f"{out}/{name}.err").read().strip().splitlines()[-1][:200]
    except (OSError, IndexError):
        return ""


def ddsperf_recv(i):
    """(pid, record) from a ddsperf sub log."""
    text = open(f"{out}/recv-h{i}.out").read()
    m = re.search(r"^\[(\d+)\] participant \S+: new \(self\)", text, re.M)
    pid = m.group(1) if m else None
    total = lost = 0
    active = 0.0
    for m in re.finditer(r"size (\d+) total (\d+) lost (\d+) delta (\d+) lost (\d+) rate ([\d.]+) kS/s", text):
        total, lost = int(m.group(2)), int(m.group(3))
        delta, rate = int(m.group(4)), float(m.group(6)) * 1e3
        if delta and rate:
            active += delta / rate
    rec = {"peer": peer, "role": "recv", "status": "complete" if total and not lost else "stalled",
           "received": total, "expected": total + lost, "delivered": round(total / (total + lost), 4) if total else 0,
           "elapsed_s": round(active, 3), "rate_msgs_s": round(total / active) if active else 0}
    if not total:
        rec["reason"] = "nothing received"
    elif lost:
        rec["reason"] = f"{lost} samples lost for good (sequence gaps)"
    return pid, rec


def ddsperf_send():
    text = open(f"{out}/send.out").read() if os.path.exists(f"{out}/send.out") else ""
    sent, secs = 0.0, 0
    for m in re.finditer(r"^\[\d+\] [\d.]+\s+([\d.]+)(k?)/s ", text, re.M):
        sent += float(m.group(1)) * (1e3 if m.group(2) else 1)
        secs += 1
    lat = {}
    for m in re.finditer(r"\S+:(\d+) size \d+ mean [\d.]+us min [\d.]+us 50% ([\d.]+)us 90% [\d.]+us "
                         r"99% ([\d.]+)us max ([\d.]+)us cnt (\d+)", text):
        pid, p50, p99, mx, cnt = m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4)), int(m.group(5))
        lat.setdefault(pid, []).append((p50, p99, mx, cnt))
    rec = {"peer": peer, "role": "send", "sent_approx": round(sent), "size": size, "elapsed_s": secs,
           "rate_msgs_s": round(sent / secs) if secs else 0}
    err = re.search(r"error: .*", text)
    if err:
        rec["error"] = err.group(0)
    return rec, lat


lines = []
if peer == "cyclonedds":
    send, lat = ddsperf_send()
    for i in range(2, hosts + 1):
        pid, rec = ddsperf_recv(i)
        rows = lat.get(pid or "", [])
        n = sum(r[3] for r in rows)
        if n:  # per-second figures: count-weighted p50, worst p99 and max; ddsperf gives RTT/2
            rec["latency_us"] = {"p50": round(sum(r[0] * r[3] for r in rows) / n, 1),
                                 "p99": max(r[1] for r in rows), "max": max(r[2] for r in rows),
                                 "kind": "rtt/2 of 1% ping samples", "samples": n}
        lines.append((i, rec))
else:
    for i in range(2, hosts + 1):
        rec = last_json(f"{out}/recv-h{i}.out")
        if rec is None:
            rec = {"peer": peer, "role": "recv", "status": "stalled", "reason": "no output (killed) " + tail_err(f"recv-h{i}"),
                   "received": None, "expected": count}
        elif rec.get("status") != "complete":
            rec["reason"] = {"idle": "nothing new for --idle seconds", "timeout": "nothing received",
                             "signal": "killed at the --timeout bound"}.get(rec["status"], rec["status"])
            rec["status"] = "stalled"
        lines.append((i, rec))
    send = last_json(f"{out}/send.out") or {"peer": peer, "role": "send", "error": "no output " + tail_err("send")}

for i, rec in lines:
    rec.update({"host": f"h{i}", "size": size, "loss": loss})
    rec.update(loss_info(i))
    if topics is not None:
        rec["topics"] = topics
    print(json.dumps(rec))
send.update({"receivers": hosts - 1, "loss": loss, "load_avg_1m": float(load)})
if topics is not None:
    send["topics"] = topics
print(json.dumps(send))
sys.stdout.flush()
