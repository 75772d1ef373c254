#!/usr/bin/env bash
# ns-gossip-test.sh: the gossip plane's cluster map (`qs top --json`) across network namespaces:
# two regions converge, a `kill -9` is detected and the node leaves its region, a new node joins.
#
# Usage:
#   ns-gossip-test.sh [--qs PATH] [--bound SECS] [--skip-code C] [--keep-logs]
#
#   Builds a 6-host LAN (lan.sh, unique prefix qsg<pid>) and starts long-running subscribers
#     hosts 1-3: qs sub --topic g1             (region A)
#     hosts 4-5: qs sub --topic g1 --topic g2  (region B)
#   Then:
#   1. converge: `qs top --json` in host 6 must show the 5 subscribers alive, in exactly two
#      regions {h1,h2,h3} and {h4,h5} (retried for up to 20 s while gossip converges);
#   2. detect: `kill -9` of the qs process in host 3; `qs top --json --wait-secs 1` runs over
#      and over in host 4 until host 3's node shows as down/left, or missing from the members
#      or from region A's member list (a snapshot only counts if it sees hosts 1, 2, 4, 5
#      alive in their regions). detect_s = snapshot time - kill time must be <= --bound; then
#      region A must stop listing host 3 (region_s, also <= --bound) and still list h1, h2;
#   3. join: a new `qs sub --topic g1` in host 6; the same repeated snapshot in host 4 must show
#      it alive in region A within --bound (join_s).
#   Prints PASS/FAIL per step, `detect_s=.. region_s=.. join_s=..` and
#   `ns-gossip-test: P passed, F failed`; exit 0 when every step passes, 1 otherwise. The LAN is
#   always torn down and every process started is killed (trap).
#
#   --qs PATH       qs binary (default: target/release/qs of this repo if it exists, else
#                   target/debug/qs)
#   --bound SECS    limit for detect_s, region_s and join_s (default 10). Why 10: the gossip
#                   round is 200 ms; a silent node is probed within about a round (5 probers),
#                   is suspect after the direct and indirect probe timeouts (50 + 100 ms), and
#                   Lifeguard's suspicion timeout is 1.6 s (8 x max(1, log10 n) x 200 ms) with 3
#                   independent confirmations and up to 4 x that, 6.4 s, with none; discovery
#                   drops a silent peer after 3 s regardless (its peer timeout). Add the spread
#                   of the verdict and up to ~1.5 s of snapshot granularity (each snapshot is a
#                   fresh node that listens 1 s): worst case ~9 s, typical 2-5 s.
#   --skip-code C   exit code when not root (default 0); the line "SKIP: needs root for network
#                   namespaces" is printed either way
#   --keep-logs     keep the directory with the qs outputs and snapshots (its path is printed)
#   Environment: NS_GOSSIP_TIMEOUT (default 120): hard limit in seconds for each qs process.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

qs=""
bound=10
skip_code=0
keep_logs=0
while [ $# -gt 0 ]; do
    case $1 in
    --qs) [ $# -ge 2 ] || usage; qs=$2; shift 2 ;;
    --bound) [ $# -ge 2 ] || usage; bound=$2; shift 2 ;;
    --skip-code) [ $# -ge 2 ] || usage; skip_code=$2; shift 2 ;;
    --keep-logs) keep_logs=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "ns-gossip-test.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
if ! [[ $bound =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! [[ $bound =~ [1-9] ]]; then die "bad --bound '$bound': seconds > 0"; fi
if ! [[ $skip_code =~ ^[0-9]+$ ]] || [ "$skip_code" -gt 255 ]; then die "bad --skip-code '$skip_code'"; fi
limit=${NS_GOSSIP_TIMEOUT:-120}

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: needs root for network namespaces"
    exit "$skip_code"
fi

resolve_qs ns-gossip-test
command -v python3 >/dev/null 2>&1 || ensure_cmd python3 python3
command -v timeout >/dev/null 2>&1 || ensure_cmd timeout coreutils

hosts=6
prefix="qsg$$"
logs=$(mktemp -d "${TMPDIR:-/tmp}/ns-gossip.XXXXXX")
pids=()
lan_up=0

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "$lan_up" -eq 1 ]; then
        # Also kills whatever still runs inside the namespaces.
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

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
finish() {
    echo "detect_s=${detect_s:-none} region_s=${region_s:-none} join_s=${join_s:-none} (bound ${bound}s)"
    echo "ns-gossip-test: $passed passed, $failed failed"
    if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}
now() { date +%s.%N; }
since() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$1" "$2"; }
within() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2"; }
tail_err() { # FILE WHAT
    if [ -s "$1" ]; then
        echo "  --- stderr of $2 (last 10 lines):"
        tail -n 10 "$1" | sed 's/^/  /'
    fi
}

lan_up=1 # set before 'up': a half-built LAN is removed too
"$SCRIPT_DIR/lan.sh" up "$prefix" "$hosts" >"$logs/lan.log" 2>&1 || {
    cat "$logs/lan.log" >&2
    echo "FAIL: could not build the namespace LAN"
    echo "ns-gossip-test: 0 passed, 1 failed"
    exit 1
}
addr=("")
for i in $(seq 1 "$hosts"); do addr+=("$("$SCRIPT_DIR/lan.sh" addr "$prefix" "$i")"); done
echo "ns-gossip-test: LAN $prefix (${addr[1]}..${addr[$hosts]}), qs $qs, bound ${bound}s"

# Starts `qs sub` in host I with the given topics, long-running (no publisher: it only exits
# when killed, or after 300 s of silence, or at the hard limit).
start_sub() {
    local i=$1
    shift
    local t args=()
    for t in "$@"; do args+=(--topic "$t"); done
    # In a subshell (`|| exit`: not exec'ed) whose own stderr is discarded, so that bash's
    # "Killed" report of the `kill -9` below stays out of the output; qs's stderr goes to the
    # log. Cleanup kills the subshell, lan.sh down the qs process itself.
    (
        timeout "$limit" ip netns exec "$(ns_name "$prefix" "$i")" "$qs" sub --json "${args[@]}" \
            --timeout 300 --iface "${addr[$i]}" >"$logs/sub$i.out" 2>"$logs/sub$i.err" || exit $?
    ) 2>/dev/null &
    pids+=($!)
}

# One snapshot from a fresh `qs top --json` node in host I (listening WAIT s) into FILE.
snapshot() { # I WAIT FILE
    timeout 30 ip netns exec "$(ns_name "$prefix" "$1")" "$qs" top --json --wait-secs "$2" \
        --iface "${addr[$1]}" >"$3" 2>"$3.err"
}

# Judges a snapshot. Modes (addresses are IPs; nodes are found by IP, subscribers by topics>0;
# T: the snapshot's own time (its unix_ms) minus T0, in seconds):
#   converged FILE A1..A5       -> "OK <id of A3> ..." or "NO <why>"
#   gone FILE T0 ID A1 A2 A4 A5 -> "INVALID <why>" or "VALID T <gone 0|1> <region_clear 0|1> <what>"
#   joined FILE T0 A6 A1        -> "OK T <id> ..." or "NO <why>"
judge() {
    python3 - "$@" <<'EOF'
import json, sys

mode, path, args = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    with open(path, encoding="utf-8") as f:
        snap = json.loads(f.read().strip().splitlines()[-1])
    members, regions = snap["members"], snap["regions"]
except (OSError, ValueError, IndexError, KeyError, TypeError) as e:
    print(f"{'INVALID' if mode == 'gone' else 'NO'} unreadable snapshot ({e})")
    sys.exit()

ip = lambda m: m["addr"].rsplit(":", 1)[0]
if mode in ("gone", "joined"):
    t0, args = float(args[0]), args[1:]
    t = f"{snap.get('unix_ms', 0) / 1000 - t0:.1f}"
by_id = {m["id"]: m for m in members}

def sub_at(a):
    """The subscriber at IP a (top nodes subscribe nothing), newest-looking first."""
    c = [m for m in members if ip(m) == a and m["topics"] > 0 and not m["me"]]
    c.sort(key=lambda m: m["status"] != "alive")
    return c[0] if c else None

def region_of(node_id):
    return [r for r in regions if node_id in r["members"]]

def alive_in_region(a):
    m = sub_at(a)
    if m is None:
        return None, f"no subscriber at {a}"
    if m["status"] != "alive":
        return None, f"{a} is {m['status']}"
    rs = region_of(m["id"])
    if len(rs) != 1:
        return None, f"{a} is in {len(rs)} regions"
    return (m, rs[0]), ""

if mode == "converged":
    found = []
    for a in args:
        v, why = alive_in_region(a)
        if v is None:
            print("NO " + why)
            sys.exit()
        found.append(v)
    ra = {r["id"] for _, r in found[:3]}
    rb = {r["id"] for _, r in found[3:]}
    if len(ra) != 1 or len(rb) != 1 or ra == rb:
        print(f"NO hosts 1-3 in regions {sorted(ra)}, hosts 4-5 in {sorted(rb)}")
        sys.exit()
    a, b = found[0][1], found[3][1]
    want = {a["id"]: ({m["id"] for m, _ in found[:3]}, 1), b["id"]: ({m["id"] for m, _ in found[3:]}, 2)}
    for r in (a, b):
        ids, topics = want[r["id"]]
        if set(r["members"]) != ids or r["topics"] != topics:
            print(f"NO region {r['id']}: members {r['members']} topics {r['topics']} (want {sorted(ids)}, {topics} topics)")
            sys.exit()
    subs = [m for m in members if m["topics"] > 0]
    if len(regions) != 2 or len(subs) != 5:
        print(f"NO {len(regions)} regions, {len(subs)} subscribers (want 2 and 5)")
        sys.exit()
    print(f"OK {found[2][0]['id']} region A {a['id']} {a['group']} leader {a['leader']}, "
          f"region B {b['id']} {b['group']} leader {b['leader']}")
elif mode == "gone":
    victim, others = args[0], args[1:]
    regs = []
    for a in others:
        v, why = alive_in_region(a)
        if v is None:
            print("INVALID " + why)
            sys.exit()
        regs.append(v[1])
    region_a = regs[0]
    if regs[1]["id"] != region_a["id"]:
        print("INVALID hosts 1 and 2 in different regions")
        sys.exit()
    m = by_id.get(victim)
    status = m["status"] if m else "absent"
    gone = status in ("down", "left", "absent")
    clear = victim not in region_a["members"]
    if any(sub_at(a)["id"] not in region_a["members"] for a in others[:2]):
        print("INVALID region A lost hosts 1/2")
        sys.exit()
    print(f"VALID {t} {int(gone or clear)} {int(clear)} status={status} in_region_A={int(not clear)} region_A_members={len(region_a['members'])}")
elif mode == "joined":
    a6, a1 = args
    v, why = alive_in_region(a6)
    if v is None:
        print("NO " + why)
        sys.exit()
    h1 = sub_at(a1)
    if h1 is None or h1["id"] not in v[1]["members"]:
        print("NO the new node is not in host 1's region")
        sys.exit()
    print(f"OK {t} {v[0]['id']} in region {v[1]['id']} ({len(v[1]['members'])} members)")
EOF
}

start_sub 1 g1
start_sub 2 g1
start_sub 3 g1
start_sub 4 g1 g2
start_sub 5 g1 g2

# 1. Convergence, seen from host 6.
sleep 1
deadline=$(python3 -c 'import sys; print(float(sys.argv[1]) + 20)' "$(now)")
tries=0
verdict="NO no snapshot"
while :; do
    tries=$((tries + 1))
    if snapshot 6 3 "$logs/top-converge.json"; then
        verdict=$(judge converged "$logs/top-converge.json" "${addr[@]:1:5}")
    else
        verdict="NO qs top --json failed (exit $?)"
    fi
    [[ $verdict == OK* ]] && break
    within "$(now)" "$deadline" || break
    sleep 0.5
done
if [[ $verdict == OK* ]]; then
    read -r _ victim_id rest <<<"$verdict"
    pass "converged: 5 subscribers alive in 2 regions seen from h6 (${tries} snapshot(s)); h3 is node $victim_id; $rest"
else
    fail "converged: ${verdict#NO } (after $tries snapshots)"
    tail_err "$logs/top-converge.json.err" "qs top in h6"
    for i in 1 2 3 4 5; do tail_err "$logs/sub$i.err" "qs sub in h$i"; done
    finish
fi

# 2. kill -9 of host 3's node; repeated snapshots from host 4.
victim_pid=$(ip netns pids "$(ns_name "$prefix" 3)" | head -n1)
if [ -z "$victim_pid" ] || [ "$(cat "/proc/$victim_pid/comm" 2>/dev/null)" != qs ]; then
    fail "kill: no qs process found in h3"
    finish
fi
kill -9 "$victim_pid"
killed_at=$(now)
echo "killed h3 (${addr[3]}, pid $victim_pid, node $victim_id) with SIGKILL"
detect_s=""
region_s=""
last=""
n=0
while :; do
    n=$((n + 1))
    f="$logs/top-detect$n.json"
    if snapshot 4 1 "$f"; then
        verdict=$(judge gone "$f" "$killed_at" "$victim_id" "${addr[1]}" "${addr[2]}" "${addr[4]}" "${addr[5]}")
    else
        verdict="INVALID qs top --json failed"
    fi
    t=$(since "$killed_at" "$(now)")
    last="$verdict (at ${t}s)"
    if [[ $verdict == VALID* ]]; then
        read -r _ ts gone clear what <<<"$verdict"
        if [ "$gone" = 1 ] && [ -z "$detect_s" ]; then detect_s=$ts; echo "  t=${ts}s: detected: $what"; fi
        if [ "$clear" = 1 ] && [ -z "$region_s" ]; then region_s=$ts; echo "  t=${ts}s: region A no longer lists h3"; fi
        [ -n "$detect_s" ] && [ -n "$region_s" ] && break
    fi
    within "$t" "$((${bound%.*} + 5))" || break
done
if [ -n "$detect_s" ] && within "$detect_s" "$bound"; then
    pass "detect: h3's node down/left or out of its region ${detect_s}s after kill -9 (bound ${bound}s, $n snapshots from h4)"
else
    fail "detect: h3's node still seen alive in its region ${detect_s:+until ${detect_s}s }(bound ${bound}s); last snapshot: $last"
fi
if [ -n "$region_s" ] && within "$region_s" "$bound"; then
    pass "region: region A lists h1, h2 and no longer h3 after ${region_s}s"
else
    fail "region: region A ${region_s:+cleared only after ${region_s}s}${region_s:-still lists h3} (bound ${bound}s); last snapshot: $last"
fi

# 3. A new node in host 6 joins region A.
start_sub 6 g1
started_at=$(now)
join_s=""
n=0
while :; do
    n=$((n + 1))
    f="$logs/top-join$n.json"
    if snapshot 4 1 "$f"; then
        verdict=$(judge joined "$f" "$started_at" "${addr[6]}" "${addr[1]}")
    else
        verdict="NO qs top --json failed"
    fi
    t=$(since "$started_at" "$(now)")
    last="$verdict (at ${t}s)"
    if [[ $verdict == OK* ]]; then
        read -r _ join_s verdict <<<"$verdict"
        verdict="OK $verdict"
        break
    fi
    within "$t" "$((${bound%.*} + 5))" || break
done
if [ -n "$join_s" ] && within "$join_s" "$bound"; then
    pass "join: new node in h6 (${verdict#OK }) alive after ${join_s}s (bound ${bound}s)"
else
    fail "join: new node in h6 ${join_s:+seen only after ${join_s}s}${join_s:-not seen alive in region A} (bound ${bound}s); last snapshot: $last"
    tail_err "$logs/sub6.err" "qs sub in h6"
fi

finish
