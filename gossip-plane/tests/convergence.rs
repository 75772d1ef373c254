#![allow(missing_docs)]
//! Rounds until every node knows every member and every node's subscriptions, against log2 N.

mod common;

use common::*;
use qs_sim::{NodeIndex, SimConfig};

fn converge(n: usize, seed: u64) -> (f64, f64) {
    let seed = qs_sim::seed_from_env(seed);
    let mut sim = build(n, seed, SimConfig::default(), |_| {});
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = Tally {
        check_every: if n >= 500 { 5000 } else { 1 },
        ..Tally::default()
    };
    let t = run_until_converged(&mut sim, &nodes, ROUND * 200, &mut tally).unwrap_or_else(|| {
        panic!(
            "{n} nodes never converged; {}",
            qs_sim::replay_hint(seed, "convergence")
        )
    });
    let rounds = t.as_secs_f64() / ROUND.as_secs_f64();
    let log2 = (n as f64).log2();
    let total = sim.total_stats();
    let bytes: u64 = nodes.iter().map(|i| sim.node(*i).stats().bytes_sent).sum();
    println!(
        "N={n}: converged in {rounds:.1} rounds ({:.2} s), log2 N = {log2:.1}, ratio {:.2}; \
         {} datagrams, {:.0} B/node/s during convergence",
        t.as_secs_f64(),
        rounds / log2,
        total.sent,
        bytes as f64 / n as f64 / t.as_secs_f64()
    );
    let before: u64 = nodes.iter().map(|i| sim.node(*i).stats().bytes_sent).sum();
    let dg_before = sim.total_stats().sent;
    sim.run_for(std::time::Duration::from_secs(2), &mut |o| {
        observe(&mut tally, o)
    });
    let after: u64 = nodes.iter().map(|i| sim.node(*i).stats().bytes_sent).sum();
    println!(
        "N={n}: steady state {:.0} B/node/s, {:.1} datagrams/node/s",
        (after - before) as f64 / n as f64 / 2.0,
        (sim.total_stats().sent - dg_before) as f64 / n as f64 / 2.0
    );
    assert!(tally.downs.is_empty(), "false downs: {:?}", tally.downs);
    assert!(
        rounds <= 4.0 * log2 + 6.0,
        "{rounds} rounds > 4 log2 N + 6; {}",
        qs_sim::replay_hint(seed, "convergence")
    );
    (rounds, log2)
}

#[test]
fn a_hundred_nodes_learn_every_member_and_subscription_within_four_log2_n_rounds() {
    converge(100, 1);
}

#[test]
fn a_thousand_nodes_learn_every_member_and_subscription_within_four_log2_n_rounds() {
    converge(1000, 2);
}
