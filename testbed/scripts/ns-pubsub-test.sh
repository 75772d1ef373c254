#!/usr/bin/env bash
# ns-pubsub-test.sh: end-to-end check of `qs pub` -> K x `qs sub` across network namespaces.
#
# Usage:
#   ns-pubsub-test.sh [--qs PATH] [--count N] [--subs K] [--loss PERCENT] [--loss-all]
#                     [--size B] [--rate R] [--pause AT:SECS] [--skip-code C] [--keep-logs]
#                     [--key] [--attack]
#
#   Builds a (K+1)-host LAN (lan.sh, unique prefix qst<pid>), starts in hosts 2..K+1
#     qs sub --json --topic t1 --topic t2 --count N --timeout 20 --iface <host addr>
#   in the background, then in host 1
#     qs pub --topic t1 --topic t2 --count N --size 256 --rate 20000 --subscribers K --iface <addr>
#   waits for the subscribers and checks each one's JSON summary line: received == N and
#   duplicates == out_of_order == gaps == 0. Prints one PASS/FAIL line per subscriber (and a FAIL
#   line for the publisher if it exits non-zero), then `ns-pubsub-test: P passed, F failed`.
#   Exit 0 when every subscriber passes, 1 otherwise. The LAN is always torn down (trap).
#
#   --qs PATH       qs binary (default: target/release/qs of this repo if it exists, else
#                   target/debug/qs)
#   --count N       messages (default 10000)
#   --subs K        subscribers (default 2)
#   --loss PERCENT  random loss of data frames (UDP to the data port 7401) arriving at each
#                   subscriber (loss.sh); the check is unchanged: recovery must repair it all
#   --loss-all      apply --loss to every UDP frame (tokens, requests, discovery too)
#   --size B, --rate R   publisher payload size (default 256) and rate (default 20000/s)
#   --pause AT:SECS freeze the publisher (SIGSTOP) AT seconds after it is started, for SECS s,
#                   then resume it (SIGCONT): a pause past failure detection; the check is
#                   unchanged (nothing lost, nothing duplicated, and the publisher exits 0)
#   --skip-code C   exit code when not root (default 0); the line "SKIP: needs root for network
#                   namespaces" is printed either way
#   --keep-logs     keep the directory with the qs outputs (its path is printed)
#   --key           a cluster key (qs keygen) for the publisher and every subscriber
#   --attack        one more host runs attack.py for the whole run: an outsider that replays,
#                   tampers with and forges (plain CRC) control traffic it hears; then each
#                   subscriber must also report drops_auth > 0 (and drops_replay > 0 with
#                   --key); its RSS is printed
#   Environment: NS_PUBSUB_TIMEOUT (default 120): hard limit in seconds for each qs process.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

qs=""
count=10000
subs=2
loss=""
loss_all=0
size=256
rate=20000
skip_code=0
keep_logs=0
pause=""
key=0
attack=0
while [ $# -gt 0 ]; do
    case $1 in
    --qs) [ $# -ge 2 ] || usage; qs=$2; shift 2 ;;
    --count) [ $# -ge 2 ] || usage; count=$2; shift 2 ;;
    --subs) [ $# -ge 2 ] || usage; subs=$2; shift 2 ;;
    --loss) [ $# -ge 2 ] || usage; loss=$2; shift 2 ;;
    --loss-all) loss_all=1; shift ;;
    --size) [ $# -ge 2 ] || usage; size=$2; shift 2 ;;
    --rate) [ $# -ge 2 ] || usage; rate=$2; shift 2 ;;
    --pause) [ $# -ge 2 ] || usage; pause=$2; shift 2 ;;
    --skip-code) [ $# -ge 2 ] || usage; skip_code=$2; shift 2 ;;
    --keep-logs) keep_logs=1; shift ;;
    --key) key=1; shift ;;
    --attack) attack=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "ns-pubsub-test.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ $count =~ ^[1-9][0-9]*$ ]] || die "bad --count '$count'"
[[ $subs =~ ^[1-9][0-9]?$ ]] || die "bad --subs '$subs'"
[ -z "$pause" ] || [[ $pause =~ ^[0-9]+(\.[0-9]+)?:[0-9]+(\.[0-9]+)?$ ]] || die "bad --pause '$pause' (AT:SECS)"
hosts=$((subs + 1 + attack))
if ! [[ $skip_code =~ ^[0-9]+$ ]] || [ "$skip_code" -gt 255 ]; then die "bad --skip-code '$skip_code'"; fi
limit=${NS_PUBSUB_TIMEOUT:-120}

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: needs root for network namespaces"
    exit "$skip_code"
fi

resolve_qs ns-pubsub-test
command -v python3 >/dev/null 2>&1 || ensure_cmd python3 python3
command -v timeout >/dev/null 2>&1 || ensure_cmd timeout coreutils

prefix="qst$$"
logs=$(mktemp -d "${TMPDIR:-/tmp}/ns-pubsub.XXXXXX")
pids=()
lan_up=0

# Every descendant process of $1 (timeout -> ip netns exec -> qs).
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1"); do
        echo "$child"
        descendants "$child"
    done
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "$lan_up" -eq 1 ]; then
        "$SCRIPT_DIR/lan.sh" down "$prefix" >/dev/null 2>&1 || echo "WARN: lan.sh down $prefix failed" >&2
    fi
    if [ "$keep_logs" -eq 1 ]; then
        echo "logs kept in $logs"
    else
        rm -rf "$logs"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

lan_up=1 # set before 'up': a half-built LAN is removed too
"$SCRIPT_DIR/lan.sh" up "$prefix" "$hosts" >"$logs/lan.log" 2>&1 || {
    cat "$logs/lan.log" >&2
    echo "FAIL: could not build the namespace LAN"
    echo "ns-pubsub-test: 0 passed, 1 failed"
    exit 1
}
a1=$("$SCRIPT_DIR/lan.sh" addr "$prefix" 1)
if [ -n "$loss" ]; then
    ports=(--dport 7401-7401)
    [ "$loss_all" -eq 1 ] && ports=()
    for i in $(seq 2 "$hosts"); do "$SCRIPT_DIR/loss.sh" "$prefix" "$i" random "$loss" "${ports[@]}"; done
fi

keyargs=()
if [ "$key" -eq 1 ]; then
    (umask 077 && "$qs" keygen >"$logs/cluster.key")
    keyargs=(--key-file "$logs/cluster.key")
fi
if [ "$attack" -eq 1 ]; then
    ah=$hosts
    aaddr=$("$SCRIPT_DIR/lan.sh" addr "$prefix" "$ah")
    timeout "$limit" ip netns exec "$(ns_name "$prefix" "$ah")" python3 "$SCRIPT_DIR/attack.py" \
        "$aaddr" --seconds 12 >"$logs/attack.json" 2>"$logs/attack.err" &
    attack_pid=$!
fi
echo "ns-pubsub-test: LAN $prefix, qs $qs, $count messages, size $size, rate $rate/s${loss:+, loss $loss% on subscribers}"
for i in $(seq 2 "$hosts"); do
    addr=$("$SCRIPT_DIR/lan.sh" addr "$prefix" "$i")
    timeout "$limit" ip netns exec "$(ns_name "$prefix" "$i")" "$qs" sub --json \
        --topic t1 --topic t2 --count "$count" --timeout 20 --iface "$addr" "${keyargs[@]}" \
        >"$logs/sub$i.json" 2>"$logs/sub$i.err" &
    pids+=($!)
done

# In the background + wait, so that INT/TERM are handled at once (and cleanup runs).
timeout "$limit" ip netns exec "$(ns_name "$prefix" 1)" "$qs" pub \
    --topic t1 --topic t2 --count "$count" --size "$size" --rate "$rate" --subscribers "$subs" --wait-secs 30 \
    --json --iface "$a1" "${keyargs[@]}" >"$logs/pub.out" 2>"$logs/pub.err" &
pub_pid=$!
pids+=("$pub_pid")
if [ -n "$pause" ]; then
    # AT counts from the publisher's start (it waits for its subscribers first, about a second).
    sleep "${pause%%:*}"
    echo "ns-pubsub-test: freezing qs pub for ${pause##*:} s"
    frozen=$(descendants "$pub_pid")
    # shellcheck disable=SC2086 # a list of pids
    kill -STOP $frozen 2>/dev/null || true
    sleep "${pause##*:}"
    # shellcheck disable=SC2086
    kill -CONT $frozen 2>/dev/null || true
fi
pub_rc=0
wait "$pub_pid" || pub_rc=$?

sub_rc=()
for pid in "${pids[@]:0:$subs}"; do
    rc=0
    wait "$pid" || rc=$?
    sub_rc+=("$rc")
done
pids=()

passed=0
failed=0
for k in $(seq 0 $((subs - 1))); do
    i=$((k + 2))
    addr=$("$SCRIPT_DIR/lan.sh" addr "$prefix" "$i")
    verdict=$(python3 - "$logs/sub$i.json" "$count" "$attack" "$key" <<'EOF'
import json, sys
path, n, attack, key = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
summary = None
try:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "received" in obj:
                summary = obj
except OSError as e:
    print(f"FAIL no output ({e})")
    sys.exit()
if summary is None:
    print("FAIL no JSON summary line on stdout")
    sys.exit()
want = {"received": n, "duplicates": 0, "out_of_order": 0, "gaps": 0}
got = {k: summary.get(k) for k in want}
bad = [f"{k}={got[k]} (want {v})" for k, v in want.items() if got[k] != v]
shown = " ".join(f"{k}={got[k]}" for k in want)
if attack:
    auth, replay = summary.get("drops_auth", 0), summary.get("drops_replay", 0)
    shown += f" drops_auth={auth} drops_replay={replay} rss_kb={summary.get('rss_kb')}"
    if key and auth == 0:
        bad.append("drops_auth=0 under attack")
    if key and replay == 0:
        bad.append("drops_replay=0 under attack")
# On failure the whole summary goes with the verdict (drops, repair split, missed_on_join).
print(("FAIL " + "; ".join(bad) + " | summary " + json.dumps(summary, sort_keys=True)) if bad else ("OK " + shown))
EOF
)
    if [[ $verdict == OK* ]]; then
        echo "PASS subscriber h$i ($addr): ${verdict#OK }"
        passed=$((passed + 1))
    else
        echo "FAIL subscriber h$i ($addr): ${verdict#FAIL } [exit ${sub_rc[$k]}]"
        failed=$((failed + 1))
        if [ -s "$logs/sub$i.err" ]; then
            echo "  --- stderr of qs sub in h$i (last 20 lines):"
            tail -n 20 "$logs/sub$i.err" | sed 's/^/  /'
        fi
    fi
    if [ -n "$loss" ]; then
        echo "  loss on h$i: $("$SCRIPT_DIR/loss.sh" "$prefix" "$i" show)"
    fi
done
if [ "$pub_rc" -ne 0 ]; then
    echo "FAIL publisher h1 ($a1): qs pub exited $pub_rc$([ "$pub_rc" -eq 124 ] && echo " (killed after ${limit}s)")"
    if [ -s "$logs/pub.err" ]; then
        echo "  --- stderr of qs pub (last 20 lines):"
        tail -n 20 "$logs/pub.err" | sed 's/^/  /'
    fi
    failed=$((failed + 1))
fi
if [ "$failed" -gt 0 ] && [ -s "$logs/pub.out" ]; then
    # The sender's side of a failed run (acknowledged, retransmitted, refused acks, drops).
    echo "  publisher summary: $(tail -n 1 "$logs/pub.out")"
fi
if [ "$attack" -eq 1 ]; then
    wait "$attack_pid" 2>/dev/null || true
    echo "attacker h$ah: $(cat "$logs/attack.json" 2>/dev/null) $(tail -n 3 "$logs/attack.err" 2>/dev/null)"
fi
echo "ns-pubsub-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
