#!/usr/bin/env bash
# instructions.sh [--json FILE] [--sizes "64 1024"] [--counts "2000 12000"] [--subscribers K]
#
# Instructions per message of the sans-IO node core, counted by valgrind's callgrind (an
# instruction count does not move with the load of a shared machine, unlike time): builds
# `qs-instructions` (benches/src/bin), runs it under callgrind at two message counts per size,
# sums callgrind's inclusive cost of the driver's `pub_*` functions (the send path: every call
# into the publisher's core) and `sub_*` functions (the receive path of all subscribers), and
# divides the difference between the two runs by the extra messages (and subscribers), which
# cancels discovery, warm-up and setup. Prints a table; with --json also one JSON line per
# size and path into FILE (the suite report reads them).
# Needs valgrind (apt-get install valgrind); runs in about a minute per size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
json="" sizes="64 1024" counts="2000 12000" subs=2
while [ $# -gt 0 ]; do
    case $1 in
    --json) json=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --counts) counts=$2; shift 2 ;;
    --subscribers) subs=$2; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind missing (apt-get install valgrind)" >&2; exit 1; }
read -r n1 n2 <<<"$counts"
[ "$n2" -gt "$n1" ] || { echo "instructions.sh: --counts needs two counts, the second larger" >&2; exit 2; }
(cd "$repo" && nice -n 10 cargo build --release -q -p qs-benches --bin qs-instructions)
bin=$repo/target/release/qs-instructions
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for size in $sizes; do
    for n in $n1 $n2; do
        valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$size.$n" "$bin" "$size" "$n" "$subs" \
            >"$tmp/out.$size.$n" 2>"$tmp/err.$size.$n" || {
            echo "instructions.sh: the driver failed at $size B x $n:" >&2
            cat "$tmp/out.$size.$n" "$tmp/err.$size.$n" >&2
            exit 1
        }
        callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$tmp/cg.$size.$n" >"$tmp/ann.$size.$n"
    done
done
python3 - "$tmp" "$n1" "$n2" "$subs" "$json" $sizes <<'PY'
import json, re, sys
tmp, n1, n2, subs, out, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
pat = re.compile(r"^\s*([\d,]+) \([\s\d.]+%\)\s+\S*::(pub|sub)_(\w+) \[")
def costs(size, n):
    c = {"pub": 0, "sub": 0}
    for line in open(f"{tmp}/ann.{size}.{n}"):
        m = pat.match(line)
        if m:
            c[m.group(2)] += int(m.group(1).replace(",", ""))
    return c
def packing(size, n):
    m = re.search(r"messages per packet ([\d.]+)", open(f"{tmp}/out.{size}.{n}").read())
    return float(m.group(1)) if m else None
rows = []
for s in sizes:
    a, b = costs(s, n1), costs(s, n2)
    send = (b["pub"] - a["pub"]) / (n2 - n1)
    recv = (b["sub"] - a["sub"]) / (n2 - n1) / subs
    rows.append((int(s), send, recv, packing(s, n2)))
print(f"instructions per message (callgrind; difference of {n1} and {n2} messages; 1 publisher -> {subs} subscribers, in process, no sockets)")
print(f"{'size B':>7} {'send path':>10} {'receive path':>13} {'msgs/packet':>12}")
for s, send, recv, pk in rows:
    print(f"{s:>7} {send:>10.0f} {recv:>13.0f} {pk:>12.2f}")
if out:
    with open(out, "w") as f:
        for s, send, recv, pk in rows:
            for path, v in (("send", send), ("receive", recv)):
                f.write(json.dumps({"kind": "instructions", "size": s, "path": path,
                                    "instructions_per_msg": round(v), "subscribers": subs,
                                    "counts": [n1, n2], "messages_per_packet": pk,
                                    "tool": "valgrind --tool=callgrind"}) + "\n")
    print(f"JSON lines: {out}")
PY
