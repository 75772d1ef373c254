#![allow(missing_docs)]
//! Forged and hostile gossip input (issue 11, the gossip side): every forgery is refused or
//! bounded and counted, and the cluster behaves as without it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use qs_gossip::membership::MEMBERSHIP_TAG;
use qs_gossip::reachability::REACHABILITY_TAG;
use qs_gossip::subscriptions::SUBSCRIPTIONS_TAG;
use qs_gossip::{GossipEvent, GossipNode, MembershipEvent, Priority, ReachabilityEvent, Status};
use qs_sim::{NodeIndex, Sim, SimConfig};
use qs_transport::{Driven, Instant, NodeId, RegionId};

/// An address no node has (the forger's, or a spoofed victim's).
fn outsider(i: u16) -> SocketAddr {
    SocketAddr::from(([192, 168, 77, (i % 250) as u8 + 1], 9000 + i))
}

/// A converged cluster of `n`.
fn cluster(n: usize, seed: u64, test: &str) -> (Sim<GossipNode>, Vec<NodeIndex>, Tally) {
    let mut sim = build(n, seed, SimConfig::default(), |_| {});
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = Tally::default();
    converge(
        &mut sim,
        &nodes,
        Duration::from_secs(30),
        &mut tally,
        seed,
        test,
    );
    (sim, nodes, tally)
}

/// Hands `datagram` to node `to` as if it came from `from`, then lets the simulator drain it.
fn inject(sim: &mut Sim<GossipNode>, to: NodeIndex, from: SocketAddr, datagram: Bytes) {
    let now = sim.now();
    sim.node_mut(to).handle_datagram(now, from, datagram);
    sim.poke(to);
}

#[test]
fn a_forged_left_about_a_live_member_is_refused_and_it_stays_a_member_everywhere() {
    let seed = qs_sim::seed_from_env(201);
    let hint = qs_sim::replay_hint(seed, "a_forged_left");
    let (mut sim, nodes, mut tally) = cluster(20, seed, &hint);
    let victim = NodeIndex(7);
    let victim_id = sim.node(victim).id();
    let inc = sim.node(victim).membership().incarnation();
    // An outsider (an id nobody knows, or a member's) relays "the victim left" to everyone.
    let left = member_record(victim_id, inc, Status::Left, addr(7));
    for (k, i) in nodes.iter().enumerate() {
        if *i == victim {
            continue;
        }
        let forger = if k % 2 == 0 {
            NodeId(0xbad)
        } else {
            node_id(3)
        };
        let d = forge(
            forger,
            &[(
                MEMBERSHIP_TAG,
                Priority::Liveness,
                liveness(0, std::slice::from_ref(&left)),
            )],
        );
        inject(&mut sim, *i, outsider(k as u16), d);
    }
    sim.run_for(Duration::from_secs(5), &mut |o| observe(&mut tally, o));
    for i in &nodes {
        let m = sim.node(*i).membership();
        assert_eq!(
            m.member(victim_id).map(|m| m.status),
            Some(Status::Alive),
            "{i}; {hint}"
        );
    }
    let claims: u64 = nodes
        .iter()
        .map(|i| sim.node(*i).membership().stats().left_claims_refuted)
        .sum();
    println!(
        "a forged left sent to 19 nodes: {claims} claims refuted by a probe, no leave recorded"
    );
    assert!(claims >= 10, "{claims}; {hint}");
    // (The forger's own id, a phantom that never answers, is suspected and declared down.)
    let real = |id: &NodeId| nodes.iter().any(|i| sim.node(*i).id() == *id);
    assert!(tally.lefts.is_empty(), "{hint}");
    assert!(!tally.downs.iter().any(|d| real(&d.2)), "{hint}");
}

#[test]
fn a_forged_down_far_ahead_of_the_incarnation_is_refused_and_one_within_the_window_is_refuted() {
    let seed = qs_sim::seed_from_env(202);
    let hint = qs_sim::replay_hint(seed, "a_forged_down_far_ahead");
    let (mut sim, nodes, mut tally) = cluster(20, seed, &hint);
    let victim = NodeIndex(5);
    let victim_id = sim.node(victim).id();
    let jump = sim.node(victim).config().membership.incarnation_jump_max;
    let far = member_record(victim_id, jump + 1, Status::Down, addr(5));
    let d = forge(
        NodeId(0xbad),
        &[(MEMBERSHIP_TAG, Priority::Liveness, liveness(0, &[far]))],
    );
    inject(&mut sim, NodeIndex(0), outsider(1), d);
    sim.run_for(Duration::from_secs(2), &mut |o| observe(&mut tally, o));
    assert!(
        tally.downs.is_empty(),
        "a far-ahead forgery took effect; {hint}"
    );
    assert_eq!(
        sim.node(NodeIndex(0))
            .membership()
            .stats()
            .implausible_incarnations,
        1,
        "{hint}"
    );
    // Within the window it is taken (SWIM must accept accusations it cannot check) and the
    // victim refutes it past the forged incarnation: it is alive everywhere again.
    let near = member_record(victim_id, jump, Status::Down, addr(5));
    let d = forge(
        NodeId(0xbad),
        &[(MEMBERSHIP_TAG, Priority::Liveness, liveness(0, &[near]))],
    );
    inject(&mut sim, NodeIndex(0), outsider(1), d);
    let t = run_until(&mut sim, Duration::from_secs(10), &mut tally, |sim| {
        nodes.iter().all(|i| {
            sim.node(*i)
                .membership()
                .member(victim_id)
                .is_some_and(|m| m.status == Status::Alive && m.incarnation == jump + 1)
        })
    })
    .unwrap_or_else(|| panic!("the victim never refuted; {hint}"));
    println!(
        "a forged down {} incarnations ahead is refused; one {jump} ahead is refuted everywhere in {:.1} rounds",
        jump + 1,
        rounds(t)
    );
}

#[test]
fn a_forged_source_gets_no_more_bytes_back_than_it_sent_whatever_it_asks() {
    let seed = qs_sim::seed_from_env(203);
    let hint = qs_sim::replay_hint(seed, "a_forged_source_gets");
    let (mut sim, _, _) = cluster(60, seed, &hint);
    // Requests that would draw the whole tables: "send me every record" (a WANT of the
    // root: op 3, depth 0) for membership and subscriptions, plus a ping, from addresses
    // that never proved they receive there: a stranger, and a member's own address.
    let want_all = vec![0u8, 1, 3 << 5, 0, 0, 0];
    let request = |ping: u32| {
        let mut live = liveness(0, &[]);
        live[5] = 1; // one control message
        live.insert(6, 1);
        live.splice(7..7, ping.to_be_bytes());
        forge(
            NodeId(0xbad),
            &[
                (MEMBERSHIP_TAG, Priority::Liveness, live),
                (MEMBERSHIP_TAG, Priority::Bulk, want_all.clone()),
                (SUBSCRIPTIONS_TAG, Priority::Bulk, want_all.clone()),
            ],
        )
    };
    let node = sim.node_mut(NodeIndex(0));
    let mut buf = vec![0u8; 65536];
    for victim in [outsider(3), addr(9)] {
        let mut sent = 0usize;
        let mut replied = 0usize;
        let mut now = node.poll_timeout().unwrap_or(Instant::ZERO);
        for k in 0..200u32 {
            let d = request(k + 1);
            sent += d.len();
            node.handle_datagram(now, victim, d);
            while let Some(t) = node.poll_transmit(now, &mut buf) {
                if t.destination == victim {
                    replied += t.len;
                }
            }
            now = now + Duration::from_millis(5);
        }
        let s = node.stats();
        println!(
            "{victim}: {sent} bytes of requests drew {replied} bytes (amplification {:.2}); \
             {} replies deferred for want of credit",
            replied as f64 / sent as f64,
            s.peers.replies_deferred
        );
        assert!(
            replied > 0,
            "nothing answered: the test tests nothing; {hint}"
        );
        assert!(replied <= sent, "{replied} > {sent}; {hint}");
    }
    node.check_invariants();
}

#[test]
fn forged_members_fill_at_most_the_table_and_never_answering_they_are_reaped() {
    let seed = qs_sim::seed_from_env(204);
    let hint = qs_sim::replay_hint(seed, "forged_members_fill");
    let max = 200;
    let reap = Duration::from_secs(5);
    let mut sim = build(20, seed, SimConfig::default(), |c| {
        c.membership.members_max = max;
        c.membership.reap_after = reap;
        c.subscriptions.records_max = max;
    });
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = Tally::default();
    converge(
        &mut sim,
        &nodes,
        Duration::from_secs(30),
        &mut tally,
        seed,
        &hint,
    );
    // 1,000 phantoms introduce themselves (first-hand, from addresses nobody answers at) to
    // node 0, and their subscription records ride along.
    for k in 0..1000u16 {
        let phantom = NodeId(0xf00d_0000 + u64::from(k));
        let d = forge(
            phantom,
            &[(MEMBERSHIP_TAG, Priority::Liveness, liveness(0, &[]))],
        );
        inject(&mut sim, NodeIndex(0), outsider(k), d);
    }
    let m = sim.node(NodeIndex(0)).membership();
    assert!(m.len() <= max, "{} records; {hint}", m.len());
    assert!(m.stats().members_overflow > 0, "{hint}");
    // They never answer a probe: suspected, declared down, reaped, everywhere.
    let t = run_until(&mut sim, Duration::from_secs(180), &mut tally, |sim| {
        nodes.iter().all(|i| {
            let m = sim.node(*i).membership();
            m.len() == nodes.len() && sim.node(*i).subscriptions().len() == nodes.len()
        })
    })
    .unwrap_or_else(|| panic!("phantoms linger; {hint}"));
    let real_downs = tally
        .downs
        .iter()
        .filter(|d| nodes.iter().any(|i| sim.node(*i).id() == d.2))
        .count();
    println!(
        "1,000 phantoms: node 0 kept at most {max}, all reaped everywhere after {:.1} s",
        t.as_secs_f64()
    );
    assert_eq!(real_downs, 0, "a real member was declared down; {hint}");
    assert!(converged(&sim, &nodes), "{hint}");
}

#[test]
fn a_reachability_report_claimed_by_anyone_but_its_author_changes_nothing() {
    let seed = qs_sim::seed_from_env(205);
    let hint = qs_sim::replay_hint(seed, "a_reachability_report_claimed");
    let (mut sim, nodes, _) = cluster(10, seed, &hint);
    let victim_id = sim.node(NodeIndex(4)).id();
    // "Node 4 does not hear region 9", sent by node 2's id and by a stranger.
    let mut report = vec![1u8];
    report.extend_from_slice(&victim_id.0.to_be_bytes());
    report.extend_from_slice(&1000u64.to_be_bytes());
    report.extend_from_slice(&0u32.to_be_bytes());
    report.push(1);
    report.extend_from_slice(&9u64.to_be_bytes());
    for (k, forger) in [node_id(2), NodeId(0xbad)].into_iter().enumerate() {
        let d = forge(
            forger,
            &[(REACHABILITY_TAG, Priority::Bulk, report.clone())],
        );
        for i in &nodes {
            inject(&mut sim, *i, outsider(k as u16), d.clone());
        }
    }
    let mut events = 0;
    sim.run_for(Duration::from_secs(2), &mut |o| {
        while let Some(e) = o.node.poll_event() {
            if matches!(
                e,
                GossipEvent::Reachability(ReachabilityEvent::MemberUnreachable { .. })
            ) {
                events += 1;
            }
        }
    });
    for i in &nodes {
        let r = sim.node(*i).reachability();
        assert!(r.is_reachable(victim_id, RegionId(9)), "{i}; {hint}");
    }
    let refused: u64 = nodes
        .iter()
        .map(|i| sim.node(*i).reachability().stats().reports_not_own)
        .sum();
    assert_eq!(events, 0, "{hint}");
    // Every node refused both (node 2 drops the copy with its own id earlier, the victim
    // ignores reports about itself).
    assert!(refused >= 2 * nodes.len() as u64 - 4, "{refused}; {hint}");
}

#[test]
fn per_peer_state_of_addresses_that_go_quiet_expires() {
    let seed = qs_sim::seed_from_env(206);
    let hint = qs_sim::replay_hint(seed, "per_peer_state");
    let ttl = Duration::from_secs(2);
    let mut sim = build(10, seed, SimConfig::default(), |c| c.peers.slot_ttl = ttl);
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = Tally::default();
    converge(
        &mut sim,
        &nodes,
        Duration::from_secs(30),
        &mut tally,
        seed,
        &hint,
    );
    // 300 strangers each send one request: each leaves a slot (and pending answers).
    let want_all = vec![0u8, 1, 3 << 5, 0, 0, 0];
    for k in 0..300u16 {
        let d = forge(
            NodeId(0xbad),
            &[(SUBSCRIPTIONS_TAG, Priority::Bulk, want_all.clone())],
        );
        inject(&mut sim, NodeIndex(0), outsider(k), d);
    }
    let busy = sim.node(NodeIndex(0)).peer_slots();
    sim.run_for(ttl + ROUND * 2, &mut |o| observe(&mut tally, o));
    let node = sim.node(NodeIndex(0));
    let strangers = (0..300u16)
        .filter(|k| node.has_peer_slot(outsider(*k)))
        .count();
    println!(
        "300 strangers: {busy} slots at node 0, {} after {ttl:?} of silence ({} expired)",
        node.peer_slots(),
        node.stats().peers.slots_expired
    );
    assert!(busy >= 300, "{hint}");
    assert_eq!(strangers, 0, "{hint}");
    assert!(
        node.stats().peers.replies_dropped > 0,
        "their pending answers went too"
    );
    node.check_invariants();
}

#[test]
fn the_reply_to_a_ping_is_an_ack_even_from_a_stranger_and_the_ack_is_no_larger() {
    // The smallest case of the budget rule: an unproven ping gets its ack (liveness works
    // with strangers, e.g. a joiner), within what the ping brought.
    let mut node = GossipNode::new(config(0, 1), Instant::ZERO);
    let mut live = liveness(0, &[]);
    live[5] = 1;
    live.insert(6, 1);
    live.splice(7..7, 42u32.to_be_bytes());
    let d = forge(NodeId(0xbee), &[(MEMBERSHIP_TAG, Priority::Liveness, live)]);
    let n = d.len();
    node.handle_datagram(Instant(1), outsider(1), d);
    let mut buf = vec![0u8; 65536];
    let t = node.poll_transmit(Instant(1), &mut buf).expect("an ack");
    assert_eq!(t.destination, outsider(1));
    assert!(t.len <= n, "{} > {n}", t.len);
    let ev: Vec<_> = std::iter::from_fn(|| node.poll_event()).collect();
    assert!(
        ev.contains(&GossipEvent::Membership(MembershipEvent::MemberUp {
            id: NodeId(0xbee),
            addr: outsider(1)
        }))
    );
}
