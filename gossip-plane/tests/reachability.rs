#![allow(missing_docs)]
//! Multicast reachability in the simulator: a member that stops hearing its region is known
//! to be unreachable by every node within a bounded number of rounds, and reachable again once
//! it hears again; a report claimed by anyone but its author changes nothing.

mod common;

use std::time::Duration;

use common::*;
use qs_gossip::{GossipEvent, GossipNode, ReachabilityEvent};
use qs_sim::{NodeIndex, Sim, SimConfig};
use qs_transport::{Instant, NodeId, RegionId};

const N: usize = 10;
const R: RegionId = RegionId(77);

type Seen = Vec<(Instant, usize, ReachabilityEvent)>;

/// Runs one step, then delivers "multicast data" to every node except `deaf`. A node whose
/// own report changed sends it to every other node, as the node composition sends it to the
/// senders of its region (reports are accepted only from their author).
fn step(sim: &mut Sim<GossipNode>, deaf: Option<NodeIndex>, seen: &mut Seen) {
    let mut changed: Vec<NodeIndex> = Vec::new();
    sim.run_for(ROUND / 4, &mut |o| {
        o.node.check_invariants();
        let me = o.node.id();
        while let Some(e) = o.node.poll_event() {
            if let GossipEvent::Reachability(e) = e {
                seen.push((o.now, o.index.0, e));
                let about_me = matches!(e,
                    ReachabilityEvent::MemberUnreachable { member, .. }
                    | ReachabilityEvent::MemberReachable { member, .. } if member == me);
                if about_me && !changed.contains(&o.index) {
                    changed.push(o.index);
                }
            }
        }
    });
    for i in changed {
        for j in 0..N {
            if j != i.0 {
                sim.node_mut(i).push_reachability_to(addr(j));
            }
        }
        sim.poke(i);
    }
    let now = sim.now();
    for i in 0..N {
        if Some(NodeIndex(i)) != deaf {
            sim.node_mut(NodeIndex(i)).reachability_mut().heard(now, R);
        }
    }
}

/// Steps until every node has seen `event`; the time from `from`.
fn until_all_saw(
    sim: &mut Sim<GossipNode>,
    deaf: Option<NodeIndex>,
    seen: &mut Seen,
    event: ReachabilityEvent,
    from: Instant,
    hint: &str,
) -> Duration {
    loop {
        let all = (0..N).all(|i| {
            seen.iter()
                .any(|(t, n, e)| *n == i && *e == event && *t >= from)
        });
        if all {
            let last = seen
                .iter()
                .filter(|(t, _, e)| *e == event && *t >= from)
                .map(|(t, _, _)| *t)
                .max()
                .unwrap();
            return last - from;
        }
        assert!(
            sim.now() - from < Duration::from_secs(30),
            "{event:?} never spread; {hint}"
        );
        step(sim, deaf, seen);
    }
}

#[test]
fn a_member_that_stops_hearing_its_region_is_known_unreachable_then_reachable_everywhere() {
    let seed = qs_sim::seed_from_env(93);
    let hint = qs_sim::replay_hint(seed, "a_member_that_stops_hearing");
    let mut sim = build(N, seed, SimConfig::default(), |_| {});
    let now = sim.now();
    for i in 0..N {
        sim.node_mut(NodeIndex(i))
            .reachability_mut()
            .expect(now, R, 1);
    }
    let mut seen = Seen::new();
    // Everyone hears: nothing is reported.
    while sim.now() < Instant(8_000_000_000) {
        step(&mut sim, None, &mut seen);
    }
    assert!(seen.is_empty(), "false silence: {seen:?}");

    let victim = NodeIndex(4);
    let victim_id: NodeId = sim.node(victim).id();
    let threshold = sim.node(victim).config().reachability.silence_threshold;
    let deaf_from = sim.now();
    let lost = ReachabilityEvent::MemberUnreachable {
        member: victim_id,
        region: R,
    };
    let t = until_all_saw(&mut sim, Some(victim), &mut seen, lost, deaf_from, &hint);
    let reported = seen
        .iter()
        .find(|(_, n, e)| *n == victim.0 && *e == lost)
        .map(|(t, _, _)| *t)
        .unwrap();
    let spread = t - (reported - deaf_from);
    let rounds = spread.as_secs_f64() / ROUND.as_secs_f64();
    let log2 = (N as f64).log2();
    println!(
        "reachability N={N}: silence reported by the deaf member {:.2} s after data stopped \
         (threshold {threshold:?}); every node knew it unreachable {rounds:.1} rounds later \
         (log2 N = {log2:.1})",
        (reported - deaf_from).as_secs_f64()
    );
    assert!(
        reported - deaf_from > threshold,
        "reported before the threshold"
    );
    assert!(reported - deaf_from <= threshold + ROUND * 2);
    assert!(rounds <= 3.0 * log2 + 6.0, "{rounds} rounds; {hint}");
    for i in 0..N {
        let members: Vec<NodeId> = sim
            .node(NodeIndex(i))
            .reachability()
            .unreachable_members(R)
            .collect();
        assert_eq!(members, vec![victim_id], "node {i}");
    }

    // It hears again.
    let healed_at = sim.now();
    let back = ReachabilityEvent::MemberReachable {
        member: victim_id,
        region: R,
    };
    let t = until_all_saw(&mut sim, None, &mut seen, back, healed_at, &hint);
    let rounds = t.as_secs_f64() / ROUND.as_secs_f64();
    let bytes: u64 = (0..N)
        .map(|i| {
            sim.node(NodeIndex(i))
                .stats()
                .objects
                .iter()
                .find(|(n, _)| *n == "reachability")
                .map_or(0, |(_, o)| o.bytes_sent)
        })
        .sum();
    println!(
        "reachability N={N}: every node knew it reachable again {rounds:.1} rounds after data \
         returned; {:.0} reachability B/node/s over the run",
        bytes as f64 / N as f64 / sim.now().as_nanos() as f64 * 1e9
    );
    assert!(rounds <= 3.0 * log2 + 6.0, "{rounds} rounds; {hint}");
    for i in 0..N {
        let r = sim.node(NodeIndex(i)).reachability();
        assert!(r.is_reachable(victim_id, R));
        assert_eq!(r.unreachable_members(R).count(), 0);
    }
    let others = seen
        .iter()
        .filter(|(_, _, e)| !matches!(e, ReachabilityEvent::MemberUnreachable { member, .. } | ReachabilityEvent::MemberReachable { member, .. } if *member == victim_id))
        .count();
    assert_eq!(others, 0, "events about members that always heard");
}
