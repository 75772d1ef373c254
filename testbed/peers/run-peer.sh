#!/usr/bin/env bash
# run-peer.sh: one run of an established reliable-multicast system on the namespace LAN.
#
# Usage: run-peer.sh PEER [--size B] [--count N] [--receivers K] [--loss random:PCT|burst:K[:EVERY]]
#                    [--prefix P] [--timeout S] [--idle S] [--duration S] [--opts "ARGS"]
#                    [--topics T] [--keep-logs]
#   PEER       zmq-epgm | norm | cyclonedds | jgroups | aeron | zenoh
#   --ping     aeron, zenoh: instead of the throughput run, ping-pong between host 1 and host 2
#              (--count round trips, one at a time, --size bytes): one "role":"ping" line with
#              RTT and one-way (RTT/2) percentiles
#   --size     message size in bytes (default 1024; >= 16: 8-byte seq + 8-byte CLOCK_MONOTONIC)
#   --count    messages (default 100000; cyclonedds is time-based, see --duration)
#   --receivers K receivers in hosts 2..K+1, the sender in host 1 (default 3)
#   --loss     loss.sh on every receiver: random:1 (1 % of UDP frames), burst:10 (10 consecutive
#              UDP frames of every 100), burst:10:1000 (of every 1000); default none
#   --prefix   reuse the LAN of this prefix (must have >= K+1 hosts; loss is cleared afterwards)
#              instead of building (and tearing down) a fresh one
#   --timeout  hard bound in seconds for the receivers (default 45): they are then killed and
#              reported "stalled" with what they had received
#   --idle     a receiver that got nothing for this long after its first message gives up:
#              "stalled" (default 5)
#   --duration cyclonedds: seconds the ddsperf publisher runs (default 8)
#   --opts     extra arguments for the sender harness (e.g. "--rate-mbit 200" for norm)
#   --topics   zmq-epgm only: T topics (1..100000); the publisher prefixes message i with the
#              6-byte topic "t%05d" of i % T (round robin), every receiver subscribes to all T
#              (--size includes the prefix: >= 22); the JSON lines get "topics": T
#
# Prints one JSON line per receiver ("role":"recv", with host, loss, status complete|stalled)
# and one for the sender ("role":"send"), on stdout; progress on stderr.
# Exit: 0 measured something (a stall is a result), 1 usage/LAN error, 2 not root,
#       3 the peer could not be installed/built (reason on stderr).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scripts=$(cd "$here/../scripts" && pwd)
# shellcheck source=../scripts/lib.sh
. "$scripts/lib.sh"
repo=$(cd "$here/../.." && pwd)
bin=${PEERS_OUT:-$repo/target/peers}

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-1}"; }
case ${1:-} in -h | --help | help | '') usage 0 ;; esac
peer=$1
shift
size=1024 count=100000 receivers=3 loss="" prefix="" bound=45 idle=5 duration=8 opts="" keep=0 topics="" ping=0
while [ $# -gt 0 ]; do
    case $1 in
    --size) size=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --receivers) receivers=$2; shift 2 ;;
    --loss) loss=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --timeout) bound=$2; shift 2 ;;
    --idle) idle=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --opts) opts=$2; shift 2 ;;
    --topics) topics=$2; shift 2 ;;
    --keep-logs) keep=1; shift ;;
    --ping) ping=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "run-peer.sh: unknown option $1" >&2; usage 1 ;;
    esac
done
case $peer in zmq-epgm | norm | cyclonedds | jgroups | aeron | zenoh) ;; *) echo "run-peer.sh: unknown peer '$peer'" >&2; exit 1 ;; esac
if [ $ping -eq 1 ]; then
    case $peer in aeron | zenoh) receivers=1 ;; *) echo "run-peer.sh: --ping: only aeron and zenoh (raw and Quicksilver: qs bench ping)" >&2; exit 1 ;; esac
fi
for v in "$size" "$count" "$receivers" "$bound" "$idle" "$duration"; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "run-peer.sh: not a number: $v" >&2; exit 1; }
done
if [ "$size" -lt 16 ] || [ "$receivers" -lt 1 ] || [ "$receivers" -gt 100 ]; then
    echo "run-peer.sh: --size >= 16, --receivers 1..100" >&2
    exit 1
fi
topicargs=()
if [ -n "$topics" ]; then
    # only ZeroMQ has topics usable here (README.md: NORM none, JGroups groups, ddsperf one topic)
    [ "$peer" = zmq-epgm ] || { echo "run-peer.sh: --topics: only zmq-epgm has topics (see README.md)" >&2; exit 1; }
    if ! [[ $topics =~ ^[0-9]+$ ]] || [ "$topics" -lt 1 ] || [ "$topics" -gt 100000 ] || [ "$size" -lt 22 ]; then
        echo "run-peer.sh: --topics 1..100000, with --size >= 22 (6-byte topic + 16-byte stamp)" >&2
        exit 1
    fi
    topicargs=(--topics "$topics")
fi
lossargs=()
case $loss in
'') ;;
random:*) lossargs=(random "${loss#random:}") ;;
burst:*) IFS=: read -r _ k every <<<"$loss"; lossargs=(burst "$k" ${every:+"$every"}) ;;
*) echo "run-peer.sh: bad --loss '$loss' (random:PCT or burst:K[:EVERY])" >&2; exit 1 ;;
esac
need_root

"$here/install.sh" "$peer" 2>"${TMPDIR:-/tmp}/run-peer-install.$$" || {
    rc=$?; cat "${TMPDIR:-/tmp}/run-peer-install.$$" >&2; rm -f "${TMPDIR:-/tmp}/run-peer-install.$$"
    [ $rc -eq 2 ] && exit 2
    exit 3
}
rm -f "${TMPDIR:-/tmp}/run-peer-install.$$"
ensure_nft

hosts=$((receivers + 1))
own=0
out=$(mktemp -d "${TMPDIR:-/tmp}/run-peer.XXXXXX")
cleanup() {
    local p left
    # only our own background jobs still running (never a pid that may have been reused):
    # TERM reaches the harness through `timeout`, which kills it for good 3 s later
    left=$(jobs -pr)
    for p in $left; do kill -TERM "$p" 2>/dev/null || true; done
    [ -z "$left" ] || sleep 3.5
    if [ $own -eq 1 ]; then
        "$scripts/lan.sh" down "$prefix" >/dev/null 2>&1 || true
    elif [ -n "$prefix" ] && [ ${#lossargs[@]} -gt 0 ]; then
        for i in $(seq 2 "$hosts"); do "$scripts/loss.sh" "$prefix" "$i" clear >/dev/null 2>&1 || true; done
    fi
    if [ $keep -eq 1 ]; then echo "run-peer.sh: logs in $out" >&2; else rm -rf "$out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -z "$prefix" ]; then
    prefix="pr$$"
    prefix=${prefix:0:11}
    "$scripts/lan.sh" up "$prefix" "$hosts" >&2 # removes what it half-built if it fails
    own=1
else
    check_prefix "$prefix"
    ns_exists "$(ns_name "$prefix" "$hosts")" || { echo "run-peer.sh: LAN '$prefix' has fewer than $hosts hosts" >&2; exit 1; }
fi
ns() { ns_name "$prefix" "$1"; }
addr() { host_addr "$prefix" "$1"; }
if [ ${#lossargs[@]} -gt 0 ]; then
    for i in $(seq 2 "$hosts"); do "$scripts/loss.sh" "$prefix" "$i" "${lossargs[@]}" >/dev/null; done
fi

# start_bg OUTFILE HOST CMD...: run CMD in host's namespace under `timeout`, in the background.
# `ip netns exec` execs `timeout`, so the recorded pid is timeout's: TERM to it reaches CMD.
last=""
start_bg() {
    local f=$1 h=$2 t=$3
    shift 3
    ip netns exec "$(ns "$h")" timeout -k 3 "$t" "$@" >"$out/$f.out" 2>"$out/$f.err" &
    last=$!
}
recv_pids=()
# wait_receivers: wait for every receiver (each bounded by its own timeout).
wait_receivers() { local p; for p in "${recv_pids[@]}"; do wait "$p" || true; done; }
stop_sender() { kill -TERM "$1" 2>/dev/null || true; wait "$1" || true; }

group=239.255.91.$((1 + $$ % 250))
echo "run-peer.sh: $peer size=$size count=$count receivers=$receivers loss=${loss:-none}${topics:+ topics=$topics} lan=$prefix load=$(cut -d' ' -f1-3 /proc/loadavg)" >&2
case $peer in
zmq-epgm)
    for i in $(seq 2 "$hosts"); do
        start_bg "recv-h$i" "$i" "$bound" "$bin/zmq_bench" sub --iface "$(addr "$i")" --group "$group" \
            --count "$count" --timeout "$bound" --idle "$idle" ${topicargs[@]+"${topicargs[@]}"}
        recv_pids+=("$last")
    done
    sleep 1
    # shellcheck disable=SC2086 # $opts is a list of words on purpose
    start_bg send 1 $((bound + 10)) "$bin/zmq_bench" pub --iface "$(addr 1)" --group "$group" \
        --size "$size" --count "$count" --linger $((bound + 5)) ${topicargs[@]+"${topicargs[@]}"} $opts
    spid=$last
    wait_receivers
    stop_sender "$spid"
    ;;
norm)
    for i in $(seq 2 "$hosts"); do
        start_bg "recv-h$i" "$i" "$bound" "$bin/norm_bench" recv --iface eth0 --group "$group" \
            --node "$i" --size "$size" --count "$count" --timeout "$bound" --idle "$idle"
        recv_pids+=("$last")
    done
    sleep 1
    # shellcheck disable=SC2086
    start_bg send 1 $((bound + 10)) "$bin/norm_bench" send --iface eth0 --group "$group" --node 1 \
        --acks "$receivers" --size "$size" --count "$count" --linger $((bound + 5)) $opts
    spid=$last
    wait_receivers
    stop_sender "$spid"
    ;;
jgroups)
    jcp="/usr/share/java/jgroups.jar:$bin/java"
    # PEERS_JAVA_OPTS: extra JVM options for every JVM (e.g. -Djgbench.credits=8000000)
    read -r -a jopts <<<"${PEERS_JAVA_OPTS:-}"
    for i in $(seq 2 "$hosts"); do
        start_bg "recv-h$i" "$i" "$bound" java -Djava.net.preferIPv4Stack=true ${jopts[@]+"${jopts[@]}"} \
            -Djgroups.bind_addr="$(addr "$i")" -Djgroups.udp.mcast_addr="$group" -cp "$jcp" \
            JgBench recv --size "$size" --count "$count" --members "$hosts" --timeout "$bound" --idle "$idle"
        recv_pids+=("$last")
    done
    # shellcheck disable=SC2086
    start_bg send 1 $((bound + 10)) java -Djava.net.preferIPv4Stack=true ${jopts[@]+"${jopts[@]}"} \
        -Djgroups.bind_addr="$(addr 1)" -Djgroups.udp.mcast_addr="$group" -cp "$jcp" \
        JgBench send --size "$size" --count "$count" --members "$hosts" --timeout 20 --linger $((bound + 5)) $opts
    spid=$last
    wait_receivers
    stop_sender "$spid"
    ;;
cyclonedds)
    # 0 % loss: Cyclone's defaults (it packs samples into ~14.7 KB datagrams). With loss: frames
    # kept within the MTU (MaxMessageSize 1400B) and fast heartbeats/NACK responses.
    # PEERS_CYCLONE_XML replaces these elements (inside <Domain>), for experiments.
    if [ -z "$loss" ]; then
        tuning=""
    else
        tuning="<Internal><HeartbeatInterval>10ms</HeartbeatInterval><NackDelay>1ms</NackDelay><AutoReschedNackDelay>50ms</AutoReschedNackDelay>"
        tuning="$tuning<Watermarks><WhcHigh>4MB</WhcHigh><WhcAdaptive>false</WhcAdaptive></Watermarks></Internal>"
        tuning="$tuning<General><MaxMessageSize>1400B</MaxMessageSize></General>"
    fi
    tuning=${PEERS_CYCLONE_XML:-$tuning}
    cat >"$out/cyclonedds.xml" <<XML
<CycloneDDS><Domain id="any">
  <General><Interfaces><NetworkInterface name="eth0"/></Interfaces>
    <AllowMulticast>true</AllowMulticast><MulticastTimeToLive>1</MulticastTimeToLive></General>
  <Internal><SocketReceiveBufferSize min="4MB"/><SocketSendBufferSize min="4MB"/></Internal>
  $tuning
</Domain></CycloneDDS>
XML
    export CYCLONEDDS_URI="file://$out/cyclonedds.xml"
    for i in $(seq 2 "$hosts"); do
        start_bg "recv-h$i" "$i" "$bound" ddsperf -k all sub
        recv_pids+=("$last")
    done
    # every 100th sample is a ping: the receivers answer, ddsperf reports RTT/2 per receiver
    # shellcheck disable=SC2086
    start_bg send 1 $((duration + 25)) ddsperf -k all -D "$duration" -Qminmatch:"$receivers" -Qinitwait:20 \
        pub size "$size" 1% $opts
    spid=$last
    wait "$spid" || true
    # let the receivers drain: stop them once no log has grown for 2 s (bounded by --timeout)
    prev="" quiet=0
    for _ in $(seq 1 $((bound * 2))); do
        cur=$(cat "$out"/recv-h*.out | wc -c)
        if [ "$cur" = "$prev" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        prev=$cur
        [ $quiet -ge 4 ] && break
        sleep 0.5
    done
    for p in "${recv_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait_receivers
    ;;
aeron)
    # One embedded C media driver per process; one shared driver thread that yields when idle
    # (Aeron's default dedicated threads that back off or spin starve each other on 2 cores).
    export LD_LIBRARY_PATH="$bin/aeron${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export AERON_THREADING_MODE=${AERON_THREADING_MODE:-SHARED}
    export AERON_SHARED_IDLE_STRATEGY=${AERON_SHARED_IDLE_STRATEGY:-yield}
    # Aeron multicast: the data address must be odd (its control address is data + 1).
    agroup=239.255.93.$((1 + 2 * ($$ % 120)))
    pgroup=239.255.94.$((1 + 2 * ($$ % 120)))
    if [ $ping -eq 1 ]; then
        start_bg pong 2 $((bound + 10)) "$bin/aeron/aeron-bench" pong --iface "$(addr 2)" --group "$agroup" \
            --pong-group "$pgroup" --idle "$bound"
        ppid=$last
        sleep 1
        start_bg ping 1 "$bound" "$bin/aeron/aeron-bench" ping --iface "$(addr 1)" --group "$agroup" \
            --pong-group "$pgroup" --size "$size" --count "$count"
        wait "$last" || true
        stop_sender "$ppid"
    else
        for i in $(seq 2 "$hosts"); do
            start_bg "recv-h$i" "$i" "$bound" "$bin/aeron/aeron-bench" recv --iface "$(addr "$i")" --group "$agroup" \
                --count "$count" --timeout "$bound" --idle "$idle"
            recv_pids+=("$last")
        done
        sleep 1
        # shellcheck disable=SC2086
        start_bg send 1 $((bound + 10)) "$bin/aeron/aeron-bench" send --iface "$(addr 1)" --group "$agroup" \
            --size "$size" --count "$count" --receivers "$receivers" --linger $((bound + 5)) $opts
        spid=$last
        wait_receivers
        stop_sender "$spid"
    fi
    ;;
zenoh)
    # Peer mode over TCP, multicast scouting off: every receiver connects to the publisher, which
    # writes each sample once per subscriber session (unicast fan-out).
    if [ $ping -eq 1 ]; then
        start_bg pong 2 $((bound + 10)) "$bin/zenoh/zenoh-bench" pong --iface "$(addr 2)" --idle "$bound"
        ppid=$last
        sleep 1
        start_bg ping 1 "$bound" "$bin/zenoh/zenoh-bench" ping --iface "$(addr 1)" \
            --connect "tcp/$(addr 2):7447" --size "$size" --count "$count"
        wait "$last" || true
        stop_sender "$ppid"
    else
        # shellcheck disable=SC2086
        start_bg send 1 $((bound + 10)) "$bin/zenoh/zenoh-bench" send --iface "$(addr 1)" \
            --size "$size" --count "$count" --receivers "$receivers" --linger $((bound + 5)) $opts
        spid=$last
        sleep 1
        for i in $(seq 2 "$hosts"); do
            start_bg "recv-h$i" "$i" "$bound" "$bin/zenoh/zenoh-bench" recv --iface "$(addr "$i")" \
                --connect "tcp/$(addr 1):7447" --count "$count" --timeout "$bound" --idle "$idle"
            recv_pids+=("$last")
        done
        wait_receivers
        stop_sender "$spid"
    fi
    ;;
esac

for i in $(seq 2 "$hosts"); do
    if [ ${#lossargs[@]} -gt 0 ]; then "$scripts/loss.sh" "$prefix" "$i" show >"$out/loss-h$i" 2>/dev/null || true; fi
done
if [ $ping -eq 1 ]; then
    python3 - "$out" "$peer" "$size" "${loss:-none}" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
out, peer, size, loss, load = sys.argv[1:6]
rec = None
for line in reversed(open(f"{out}/ping.out").read().splitlines() if __import__("os").path.exists(f"{out}/ping.out") else []):
    try:
        rec = json.loads(line)
        break
    except ValueError:
        continue
if rec is None:
    err = open(f"{out}/ping.err").read().strip().splitlines()[-1:] if __import__("os").path.exists(f"{out}/ping.err") else []
    rec = {"peer": peer, "role": "ping", "error": "no output " + " ".join(err)[:200]}
rec.update({"kind": "ping", "size": int(size), "loss": loss, "load_avg_1m": float(load), "path": "namespaces"})
print(json.dumps(rec))
PY
    exit 0
fi
python3 "$here/collect.py" "$out" "$peer" "$hosts" "$count" "$size" "${loss:-none}" "$(cut -d' ' -f1 /proc/loadavg)" ${topics:+"$topics"}
