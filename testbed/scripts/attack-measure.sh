#!/usr/bin/env bash
# attack-measure.sh: amplification and memory under attack, with `qs pub` -> 2 x `qs sub`
# across network namespaces, an outsider (attack_amp.py) and a victim host.
#
# Usage:
#   attack-measure.sh [--qs PATH] [--mode repair|announce|none] [--key] [--seconds S] [--rate N]
#                     [--msgs-rate R] [--keep-logs]
#
#   Builds a 5-host LAN (lan.sh, prefix qsa<pid>): h1 runs qs pub (paced at --msgs-rate,
#   default 2000 msg/s, 256 B, for the whole attack), h2 and h3 qs sub --json, h4 the
#   attacker, h5 the victim (no process; an nftables counter of the UDP bytes addressed to it).
#   The attacker learns ids, addresses and streams by sniffing, then for --seconds (default
#   10) at --rate datagrams/s (default 1000) sends:
#     repair    RepairRequests in a member's name with the victim's address as IP source,
#     announce  forged announcements of 5,000 made-up ids whose unicast address is the
#               victim's (half complete, half partial).
#     none      nothing (the baseline: RSS and counters of the same run without an attack).
#   Meanwhile the subscribers' VmRSS is sampled every 0.5 s.
#   Prints per subscriber: received of sent, gaps, drops_auth, RSS at start/peak/end (KiB);
#   then one JSON line: attacker bytes, victim bytes, amplification = victim / attacker
#   bytes (IP level), and the unicast UDP bytes the three members received (compare with a
#   --mode none run: the difference is what the attack reflected onto members). The LAN is always torn down. Not in CI: about 30 s per run.
#   --key          a cluster key for publisher and subscribers (the attacker has none)
#   --keep-logs    keep the directory with the outputs (its path is printed)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

qs=""
mode=repair
key=0
seconds=10
rate=1000
msgs_rate=2000
keep_logs=0
while [ $# -gt 0 ]; do
    case $1 in
    --qs) [ $# -ge 2 ] || usage; qs=$2; shift 2 ;;
    --mode) [ $# -ge 2 ] || usage; mode=$2; shift 2 ;;
    --key) key=1; shift ;;
    --seconds) [ $# -ge 2 ] || usage; seconds=$2; shift 2 ;;
    --rate) [ $# -ge 2 ] || usage; rate=$2; shift 2 ;;
    --msgs-rate) [ $# -ge 2 ] || usage; msgs_rate=$2; shift 2 ;;
    --keep-logs) keep_logs=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "attack-measure.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
case $mode in repair | announce | none) ;; *) die "bad --mode '$mode'" ;; esac
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "bad --seconds '$seconds'"
[[ $rate =~ ^[1-9][0-9]*$ ]] || die "bad --rate '$rate'"
[[ $msgs_rate =~ ^[1-9][0-9]*$ ]] || die "bad --msgs-rate '$msgs_rate'"
need_root
resolve_qs attack-measure
ensure_nft

prefix="qsa$$"
logs=$(mktemp -d "${TMPDIR:-/tmp}/attack-measure.XXXXXX")
pids=()
lan_up=0
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "$lan_up" -eq 1 ]; then
        "$SCRIPT_DIR/lan.sh" down "$prefix" >/dev/null 2>&1 || echo "WARN: lan.sh down $prefix failed" >&2
    fi
    if [ "$keep_logs" -eq 1 ]; then echo "logs kept in $logs"; else rm -rf "$logs"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every descendant process of $1 (timeout -> ip netns exec -> qs).
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1"); do
        echo "$child"
        descendants "$child"
    done
}
# The qs process under the launcher pid $1.
qs_pid() {
    local p
    for p in $(descendants "$1"); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = qs ] && { echo "$p"; return; }
    done
}

lan_up=1
"$SCRIPT_DIR/lan.sh" up "$prefix" 5 >"$logs/lan.log" 2>&1 || { cat "$logs/lan.log" >&2; die "no LAN"; }
addr() { "$SCRIPT_DIR/lan.sh" addr "$prefix" "$1"; }
victim=$(addr 5)
# A counter of the UDP bytes (IP level) addressed to host $1's own address (unicast).
count_unicast() {
    ip netns exec "$(ns_name "$prefix" "$1")" nft -f - <<EOF
table ip qscount {
    chain in {
        type filter hook input priority 0; policy accept;
        ip daddr $(addr "$1") meta l4proto udp counter
    }
}
EOF
}
counted() {
    ip netns exec "$(ns_name "$prefix" "$1")" nft list table ip qscount |
        awk '/counter/ {for (i = 1; i <= NF; i++) if ($i == "bytes") print $(i + 1)}'
}
for h in 1 2 3 5; do count_unicast "$h"; done

keyargs=()
if [ "$key" -eq 1 ]; then
    (umask 077 && "$qs" keygen >"$logs/cluster.key")
    keyargs=(--key-file "$logs/cluster.key")
fi
count=$(((seconds + 8) * msgs_rate))
for i in 2 3; do
    timeout 120 ip netns exec "$(ns_name "$prefix" "$i")" "$qs" sub --json --topic t1 \
        --count "$count" --timeout 30 --iface "$(addr "$i")" "${keyargs[@]}" \
        >"$logs/sub$i.json" 2>"$logs/sub$i.err" &
    pids+=($!)
done
timeout 120 ip netns exec "$(ns_name "$prefix" 1)" "$qs" pub --topic t1 --count "$count" \
    --size 256 --rate "$msgs_rate" --subscribers 2 --wait-secs 30 --iface "$(addr 1)" \
    "${keyargs[@]}" >"$logs/pub.out" 2>"$logs/pub.err" &
pub_pid=$!
pids+=("$pub_pid")

# RSS sampler: time_s,sub2_kib,sub3_kib every 0.5 s while the subscribers run.
(
    start=$(date +%s.%N)
    seen=0
    while :; do
        line=""
        alive=0
        for launcher in "${pids[@]:0:2}"; do
            p=$(qs_pid "$launcher" || true)
            kib=$(awk '/^VmRSS:/ {print $2}' "/proc/${p:-0}/status" 2>/dev/null || true)
            [ -n "$kib" ] && alive=1
            line="$line,${kib:-0}"
        done
        if [ "$alive" -eq 1 ]; then
            seen=1
        elif [ "$seen" -eq 1 ]; then
            break # both ended
        else
            sleep 0.1 # not started yet
            continue
        fi
        echo "$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN {printf "%.1f", a - b}')$line"
        sleep 0.5
    done
) >"$logs/rss.csv" 2>/dev/null &
sampler=$!

sleep 3 # the publisher waits for its subscribers, then streams
if [ "$mode" = none ]; then
    sleep "$seconds"
    echo '{"mode": "none", "datagrams": 0, "bytes": 0}' >"$logs/attack.json"
else
    timeout 60 ip netns exec "$(ns_name "$prefix" 4)" python3 "$SCRIPT_DIR/attack_amp.py" "$mode" \
        "$victim" --seconds "$seconds" --rate "$rate" >"$logs/attack.json" 2>"$logs/attack.err" || true
fi
wait "$pub_pid" || true
for pid in "${pids[@]:0:2}"; do wait "$pid" || true; done
pids=()
wait "$sampler" 2>/dev/null || true
victim_bytes=$(counted 5)
members_bytes=$(($(counted 1) + $(counted 2) + $(counted 3)))

python3 - "$logs" "$count" "$mode" "$key" "${victim_bytes:-0}" "$members_bytes" <<'EOF'
import json, sys
logs, count, mode, key, victim = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
members = int(sys.argv[6])
rows = [l.strip().split(",") for l in open(f"{logs}/rss.csv") if l.strip()]
try:
    attack = json.load(open(f"{logs}/attack.json"))
except Exception:
    attack = {"datagrams": 0, "bytes": 0, "error": open(f"{logs}/attack.err").read()[-300:]}
out = {"mode": mode, "keyed": key, "attacker": attack, "victim_bytes": victim,
       "amplification": round(victim / attack["bytes"], 4) if attack.get("bytes") else None,
       "members_unicast_bytes": members,
       "subscribers": []}
for col, i in enumerate((2, 3), start=1):
    try:
        s = json.loads(open(f"{logs}/sub{i}.json").read().strip().splitlines()[-1])
    except Exception:
        s = {}
    rss = [int(r[col]) for r in rows if len(r) > col and r[col] != "0"]
    sub = {"host": i, "received": s.get("received"), "of": count, "gaps": s.get("gaps"),
           "duplicates": s.get("duplicates"), "drops_auth": s.get("drops_auth"),
           "requests_received": s.get("requests_received"),
           "repairs_served": s.get("repairs_served"),
           "drops_not_member": s.get("drops_not_member"),
           "drops_repair_limited": s.get("drops_repair_limited"), "discovery": s.get("discovery"),
           "rss_kib": {"start": rss[0] if rss else None, "peak": max(rss) if rss else None,
                       "end": rss[-1] if rss else None, "samples": len(rss)}}
    out["subscribers"].append(sub)
    print(f"h{i}: received {sub['received']}/{count} gaps {sub['gaps']} dup {sub['duplicates']} "
          f"drops_auth {sub['drops_auth']} requests {sub['requests_received']} served "
          f"{sub['repairs_served']} repair_limited {sub['drops_repair_limited']} rss KiB start/peak/end {sub['rss_kib']['start']}/"
          f"{sub['rss_kib']['peak']}/{sub['rss_kib']['end']} discovery {sub['discovery']}")
print(json.dumps(out))
EOF
