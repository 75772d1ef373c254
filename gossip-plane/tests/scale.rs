#![allow(missing_docs)]
//! The gossip plane at 1,000 nodes (issue 14's goals, CI-sized): a flat quiet cost, changes
//! and joins that reach everyone in O(log N) rounds, health held per region, dead members
//! reaped and forgotten by every object, and no false down verdict under loss and stalls.
//! (10,000 nodes run outside CI: `qs-testbed sim-gossip --nodes 10000`.)

mod common;

use std::time::Duration;

use common::*;
use qs_gossip::{GossipNode, NodeHealth, Status};
use qs_sim::{LossModel, NodeIndex, Sim, SimConfig};
use qs_transport::{NodeId, RegionId, TopicId};

/// The region of node `i` in the common harness (its signature, `topics(i)`).
fn region(i: usize) -> RegionId {
    RegionId(((i % 7) * 3 + i % 3) as u64)
}

/// A world of `n` nodes that also publish their health once, as the node composition does.
fn world(
    n: usize,
    seed: u64,
    net: SimConfig,
    tweak: impl Fn(&mut qs_gossip::GossipConfig),
) -> Sim<GossipNode> {
    let mut sim = build(n, seed, net, tweak);
    let now = sim.now();
    for i in 0..n {
        let h = sim.node_mut(NodeIndex(i)).health_mut();
        h.set_region(now, Some(region(i)));
        h.set_local(
            now,
            NodeHealth {
                load: (i % 10) as f32 / 10.0,
                ..NodeHealth::default()
            },
        );
        sim.poke(NodeIndex(i));
    }
    sim
}

fn tally() -> Tally {
    Tally {
        check_every: 5000,
        ..Tally::default()
    }
}

/// Every node holds the health records of its whole region.
fn health_converged(sim: &Sim<GossipNode>, nodes: &[NodeIndex]) -> bool {
    let mut sizes = [0usize; 21];
    for i in nodes {
        sizes[region(i.0).0 as usize] += 1;
    }
    nodes
        .iter()
        .all(|i| sim.node(*i).health().len() == sizes[region(i.0).0 as usize])
}

/// Converges `n` nodes (membership, subscriptions, health), lets the start drain, then
/// measures 5 s with nothing changing.
fn quiet_cost(n: usize, seed: u64) -> f64 {
    let mut sim = world(n, seed, SimConfig::default(), |_| {});
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = tally();
    converge(
        &mut sim,
        &nodes,
        Duration::from_secs(60),
        &mut tally,
        seed,
        "the_quiet_cost",
    );
    let t = run_until(&mut sim, Duration::from_secs(60), &mut tally, |sim| {
        health_converged(sim, &nodes)
            && nodes.iter().all(|i| {
                let h = sim.node(*i).health();
                h.news() == (0, 0) && h.cluster().is_some_and(|c| c.count as usize == n)
            })
    });
    println!(
        "N={n}: health settled {:?} rounds after membership",
        t.map(rounds)
    );
    assert!(t.is_some(), "health never settled");
    sim.run_for(Duration::from_secs(2), &mut |o| observe(&mut tally, o));
    let objects = |sim: &Sim<GossipNode>| -> Vec<u64> {
        (0..4)
            .map(|k| {
                nodes
                    .iter()
                    .map(|i| sim.node(*i).stats().objects[k].1.bytes_sent)
                    .sum()
            })
            .collect()
    };
    let before = bytes_sent(&sim, &nodes);
    let before_objects = objects(&sim);
    let span = Duration::from_secs(5);
    sim.run_for(span, &mut |o| observe(&mut tally, o));
    let per = n as f64 * span.as_secs_f64();
    let cost = (bytes_sent(&sim, &nodes) - before) as f64 / per;
    let by: Vec<String> = objects(&sim)
        .iter()
        .zip(&before_objects)
        .zip(["membership", "subscriptions", "reachability", "health"])
        .map(|((a, b), name)| format!("{name} {:.0}", (a - b) as f64 / per))
        .collect();
    println!("N={n}: quiet {cost:.0} B/node/s ({})", by.join(", "));
    assert!(tally.downs.is_empty(), "{:?}", tally.downs);
    for i in &nodes {
        sim.node(*i).check_invariants();
    }
    cost
}

#[test]
fn the_quiet_cost_is_under_a_kilobyte_per_node_and_flat_from_a_hundred_to_a_thousand_nodes() {
    let seed = qs_sim::seed_from_env(101);
    let small = quiet_cost(100, seed);
    let large = quiet_cost(1000, seed);
    println!(
        "quiet cost: {small:.0} B/node/s at N=100, {large:.0} B/node/s at N=1000 (ratio {:.2})",
        large / small
    );
    let hint = qs_sim::replay_hint(seed, "the_quiet_cost");
    assert!(large <= 1024.0, "{large} B/node/s; {hint}");
    assert!(large <= 1.5 * small, "{large} vs {small}; {hint}");
}

#[test]
fn a_subscription_change_a_join_and_a_down_verdict_reach_every_node_within_two_log2_n_rounds() {
    let seed = qs_sim::seed_from_env(102);
    let hint = qs_sim::replay_hint(seed, "a_subscription_change_a_join");
    let n = 1000;
    let bound = 2.0 * (n as f64).log2();
    let mut sim = world(n, seed, SimConfig::default(), |_| {});
    let mut nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = tally();
    let cold = converge(
        &mut sim,
        &nodes,
        Duration::from_secs(60),
        &mut tally,
        seed,
        &hint,
    );
    sim.run_for(Duration::from_secs(5), &mut |o| observe(&mut tally, o));

    // A subscription change.
    let changer = NodeIndex(n / 2);
    let changer_id = sim.node(changer).id();
    sim.node_mut(changer).set_topics([TopicId(77_777)]);
    sim.poke(changer);
    let version = sim
        .node(changer)
        .subscriptions()
        .record(changer_id)
        .unwrap()
        .version;
    let change = run_until(&mut sim, Duration::from_secs(20), &mut tally, |sim| {
        nodes.iter().all(|i| {
            sim.node(*i)
                .subscriptions()
                .record(changer_id)
                .is_some_and(|r| r.version == version)
        })
    })
    .unwrap_or_else(|| panic!("the change never spread; {hint}"));

    // A join into the converged cluster.
    let j = n;
    let mut c = config(j, seed);
    c.membership.seeds = vec![addr(0), addr(1), addr(2)];
    let mut joiner = GossipNode::new(c, sim.now());
    joiner.set_topics(topics(j));
    let joiner_idx = sim.add_node(addr(j), joiner);
    nodes.push(joiner_idx);
    let joiner_id = sim.node(joiner_idx).id();
    let join = run_until(&mut sim, Duration::from_secs(20), &mut tally, |sim| {
        let jn = sim.node(joiner_idx);
        jn.membership().live_count() == nodes.len()
            && jn.subscriptions().len() == nodes.len()
            && nodes.iter().all(|i| {
                let m = sim.node(*i);
                m.membership()
                    .member(joiner_id)
                    .is_some_and(|r| r.status == Status::Alive)
                    && m.subscriptions().record(joiner_id).is_some()
            })
    })
    .unwrap_or_else(|| panic!("the join never completed; {hint}"));

    // A crash: from the first down verdict until every live node holds it.
    let victim = NodeIndex(n / 3);
    let victim_id = sim.node(victim).id();
    sim.crash(victim);
    nodes.retain(|i| *i != victim);
    let detect = run_until(&mut sim, Duration::from_secs(60), &mut tally, |sim| {
        nodes.iter().all(|i| {
            sim.node(*i)
                .membership()
                .member(victim_id)
                .is_none_or(|m| !m.status.is_live())
        })
    })
    .unwrap_or_else(|| panic!("the crash was never detected everywhere; {hint}"));
    let first = tally
        .downs
        .iter()
        .filter(|d| d.2 == victim_id)
        .map(|d| d.0)
        .min()
        .expect("somebody declared it down");
    let verdict = sim.now() - first;
    println!(
        "N={n}: cold start {:.1} rounds; subscription change everywhere in {:.1} rounds, \
         join in {:.1} rounds, down verdict everywhere {:.1} rounds after the first \
         (crash detected by all in {:.1} s); bound 2 log2 N = {bound:.1}",
        rounds(cold),
        rounds(change),
        rounds(join),
        rounds(verdict),
        detect.as_secs_f64()
    );
    assert!(
        rounds(change) <= bound,
        "change {:.1} rounds; {hint}",
        rounds(change)
    );
    assert!(
        rounds(join) <= bound,
        "join {:.1} rounds; {hint}",
        rounds(join)
    );
    assert!(
        rounds(verdict) <= bound,
        "verdict {:.1} rounds; {hint}",
        rounds(verdict)
    );
    assert!(
        tally.downs.iter().all(|d| d.2 == victim_id),
        "false downs; {hint}"
    );
}

#[test]
fn under_five_percent_loss_with_one_percent_of_nodes_stalled_a_second_nobody_is_declared_down() {
    let seed = qs_sim::seed_from_env(103);
    let hint = qs_sim::replay_hint(seed, "under_five_percent_loss");
    let n = 1000;
    let net = SimConfig {
        loss: LossModel::Bernoulli(0.05),
        jitter: Duration::from_micros(200),
        ..SimConfig::default()
    };
    let mut sim = world(n, seed, net, |_| {});
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = tally();
    let cold = converge(
        &mut sim,
        &nodes,
        Duration::from_secs(90),
        &mut tally,
        seed,
        &hint,
    );
    // Loss must not push the cold start past the O(log N) bound: a missed record comes
    // back at the next round's reconciliation, a lost ping is retried before helpers.
    let bound = 2.0 * (n as f64).log2();
    println!(
        "N={n}, 5% loss: cold start {:.2} rounds (bound {bound:.1})",
        rounds(cold)
    );
    assert!(rounds(cold) <= bound, "{:.2} rounds; {hint}", rounds(cold));
    // 1% of the nodes stall for a second each, a quarter of a second apart.
    for k in 0..n / 100 {
        let i = NodeIndex((k * 97 + 13) % n);
        let until = sim.now() + Duration::from_secs(1);
        sim.freeze(i, until);
        sim.run_for(Duration::from_millis(250), &mut |o| observe(&mut tally, o));
    }
    sim.run_for(Duration::from_secs(15), &mut |o| observe(&mut tally, o));
    let refuted = tally.alive_again.len();
    println!(
        "N={n}, 5% loss, {} nodes stalled 1 s: {} suspicions (refuted {refuted}), {} down verdicts",
        n / 100,
        tally.suspects.len(),
        tally.downs.len()
    );
    assert!(
        tally.downs.is_empty(),
        "false downs {:?}; {hint}",
        tally.downs
    );
    assert!(
        !tally.suspects.is_empty(),
        "the stalls went unnoticed: the test tests nothing"
    );
    run_until(&mut sim, Duration::from_secs(20), &mut tally, |sim| {
        converged(sim, &nodes)
    })
    .unwrap_or_else(|| panic!("not one membership again; {hint}"));
}

#[test]
fn a_node_holds_only_its_own_regions_health_records_and_every_regions_aggregate() {
    let seed = qs_sim::seed_from_env(104);
    let hint = qs_sim::replay_hint(seed, "a_node_holds_only_its_own_regions");
    let n = 1000;
    let mut sim = world(n, seed, SimConfig::default(), |_| {});
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = tally();
    let regions = 21;
    let sizes: Vec<usize> = (0..regions)
        .map(|r| (0..n).filter(|i| region(*i).0 == r as u64).count())
        .collect();
    converge(
        &mut sim,
        &nodes,
        Duration::from_secs(60),
        &mut tally,
        seed,
        &hint,
    );
    let t = run_until(&mut sim, Duration::from_secs(60), &mut tally, |sim| {
        nodes.iter().all(|i| {
            let h = sim.node(*i).health();
            h.len() == sizes[region(i.0).0 as usize]
                && h.cluster().is_some_and(|c| c.count as usize == n)
        })
    })
    .unwrap_or_else(|| panic!("health never converged; {hint}"));
    let largest = nodes
        .iter()
        .map(|i| sim.node(*i).health().len())
        .max()
        .unwrap();
    println!(
        "health N={n}, {regions} regions: every node holds its region's records (at most \
         {largest}) and {regions} aggregates summing to {n} nodes, {:.1} rounds after \
         membership converged",
        rounds(t)
    );
    for i in &nodes {
        let h = sim.node(*i).health();
        assert!(
            h.records().all(|(_, r)| r.region == Some(region(i.0))),
            "{hint}"
        );
        assert_eq!(h.region_aggregates().count(), regions, "{hint}");
    }
    assert!(
        largest < n / 10,
        "{largest} records held: not O(region); {hint}"
    );
}

#[test]
fn dead_members_are_reaped_everywhere_forgotten_by_every_object_and_unknown_to_a_late_joiner() {
    let seed = qs_sim::seed_from_env(105);
    let hint = qs_sim::replay_hint(seed, "dead_members_are_reaped");
    let n = 1000;
    let reap = Duration::from_secs(5);
    let slot_ttl = Duration::from_secs(3);
    let tweak = |c: &mut qs_gossip::GossipConfig| {
        c.membership.reap_after = reap;
        c.peers.slot_ttl = slot_ttl;
    };
    let mut sim = world(n, seed, SimConfig::default(), tweak);
    let mut nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = tally();
    converge(
        &mut sim,
        &nodes,
        Duration::from_secs(60),
        &mut tally,
        seed,
        &hint,
    );
    let victims: Vec<NodeIndex> = (0..5).map(|k| NodeIndex(100 + 37 * k)).collect();
    let dead: Vec<NodeId> = victims.iter().map(|v| sim.node(*v).id()).collect();
    let dead_addrs: Vec<_> = victims.iter().map(|v| sim.addr(*v)).collect();
    for v in &victims {
        sim.crash(*v);
    }
    nodes.retain(|i| !victims.contains(i));
    let gone = |sim: &Sim<GossipNode>, i: &NodeIndex| {
        let node = sim.node(*i);
        dead.iter().all(|d| {
            node.membership()
                .member(*d)
                .is_none_or(|m| !m.status.is_live())
                && node.subscriptions().record(*d).is_none()
                && node.health().record(*d).is_none()
        })
    };
    run_until(&mut sim, Duration::from_secs(60), &mut tally, |sim| {
        nodes.iter().all(|i| gone(sim, i))
    })
    .unwrap_or_else(|| panic!("the dead were never forgotten; {hint}"));
    // A joiner arriving while the tombstones live learns the dead only as dead.
    let j = n;
    let mut c = config(j, seed);
    tweak(&mut c);
    let joiner = GossipNode::new(c, sim.now());
    let joiner_idx = sim.add_node(addr(j), joiner);
    nodes.push(joiner_idx);
    let reaped = run_until(&mut sim, reap * 3, &mut tally, |sim| {
        nodes.iter().all(|i| {
            dead.iter()
                .all(|d| sim.node(*i).membership().member(*d).is_none())
        })
    })
    .unwrap_or_else(|| {
        let mut holders = Vec::new();
        for i in &nodes {
            for d in &dead {
                if let Some(m) = sim.node(*i).membership().member(*d) {
                    holders.push((
                        *i,
                        m.status,
                        sim.node(*i).membership().death_age(sim.now(), *d),
                    ));
                }
            }
        }
        holders.truncate(10);
        panic!("the tombstones were never reaped: {holders:?}; {hint}")
    });
    assert!(
        gone(&sim, &joiner_idx),
        "the joiner holds state of the dead; {hint}"
    );
    assert!(
        tally.lefts.is_empty() && tally.downs.iter().all(|d| dead.contains(&d.2)),
        "{hint}"
    );
    // Per-peer slots of the dead expired too: nobody still keeps state for their addresses.
    sim.run_for(slot_ttl + ROUND * 2, &mut |o| observe(&mut tally, o));
    for i in &nodes {
        let node = sim.node(*i);
        for a in &dead_addrs {
            assert!(!node.has_peer_slot(*a), "{i} keeps a slot for {a}; {hint}");
        }
        node.check_invariants();
    }
    println!(
        "N={n}: 5 crashed nodes forgotten by every object, their tombstones reaped everywhere \
         {:.1} s after the joiner came (reap_after {reap:?})",
        reaped.as_secs_f64()
    );
}
