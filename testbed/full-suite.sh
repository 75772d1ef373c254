#!/usr/bin/env bash
# full-suite.sh [OUT]: the whole benchmark suite in one command (root; ~25 minutes on 2 cores,
# plus the first build of the Aeron and Zenoh harnesses, which takes longer).
#
#   1. builds qs, qs-testbed and qs-instructions (release);
#   2. runs the peer matrix (ZeroMQ epgm, NORM, Cyclone DDS, JGroups, Aeron, Zenoh; 1 -> 3
#      receivers, 64 B and 1 KB, no loss / 1% random / bursts of 10; then ping-pong for Aeron
#      and Zenoh), installing the peers from Debian and building the Rust harnesses
#      (testbed/peers/{aeron,zenoh}, outside the workspace) once;
#   3. testbed/scripts/bench-ns.sh: the honest raw limit (blast and paced sweep), Quicksilver
#      against it, one-way latency paced at 10,000/s, raw and Quicksilver ping-pong;
#   4. benches/instructions.sh: instructions per message of the node core (callgrind);
#   5. every Quicksilver scenario of testbed/scenarios with its raw-UDP baseline;
#   6. writes OUT/BENCHMARKS.md and plots from all of it (numbers only from this run).
# OUT defaults to testbed-results/full. Peers that cannot be installed are reported and skipped;
# so is a step that fails (its section is then missing from the report). Other work on the
# machine moves every wall-clock figure: the report quotes them next to raw from the same run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-$repo/testbed-results/full}")
[ "$(id -u)" -eq 0 ] || { echo "full-suite.sh: needs root (network namespaces)" >&2; exit 2; }
mkdir -p "$out"
cd "$repo"
nice -n 10 cargo build --release -p quicksilver-cli -p qs-testbed -p qs-benches --bin qs --bin qs-testbed --bin qs-instructions
: >"$out/summary.jsonl"
# NORM at the notes' 400 Mbit/s overruns loaded receivers here; 200 Mbit/s completes.
PEERS_OPTS_norm="--rate-mbit 200" testbed/peers/matrix.sh --results "$out/peers.jsonl" \
    || echo "full-suite.sh: peer matrix exited $? (its table says which runs failed)"
testbed/scripts/bench-ns.sh --receivers 3 --sizes "64 1024" --count 200000 --sweep-count 50000 \
    --rate 10000 --ping --ping-count 10000 --jsonl "$out/summary.jsonl" \
    || echo "full-suite.sh: bench-ns.sh exited $? (raw limit, paced latency and ping sections may be missing)"
benches/instructions.sh --json "$out/instructions.jsonl" \
    || echo "full-suite.sh: instructions.sh exited $? (no instructions table)"
extra=()
for f in "$out/summary.jsonl" "$out/instructions.jsonl"; do
    [ -s "$f" ] && extra+=(--peers "$f")
done
target/release/qs-testbed suite --out "$out" --peers "$out/peers.jsonl" ${extra[@]+"${extra[@]}"}
echo "full-suite.sh: report in $out/BENCHMARKS.md"
