//! Shared harness for the simulator scenarios.
#![allow(dead_code, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use qs_gossip::{GossipConfig, GossipEvent, GossipNode, MembershipEvent, Status};
use qs_sim::{NodeIndex, Observation, Sim, SimConfig};
use qs_transport::{ClusterId, Instant, NodeId, TopicId};

pub const ROUND: Duration = Duration::from_millis(200);

pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8 + 1, 1),
        7000,
    ))
}

pub fn node_id(i: usize) -> NodeId {
    // Spread ids like random draws would, but keep them readable in failures.
    NodeId((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

pub fn topics(i: usize) -> Vec<TopicId> {
    vec![TopicId((i % 7) as u64), TopicId(100 + (i % 3) as u64)]
}

pub fn config(i: usize, seed: u64) -> GossipConfig {
    let mut c = GossipConfig::new(ClusterId(7), node_id(i), addr(i));
    c.seed = seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    c.membership.seeds = vec![addr(0), addr(1), addr(2)];
    c
}

/// Oracles and tallies over all events.
#[derive(Debug, Default)]
pub struct Tally {
    pub downs: Vec<(Instant, usize, NodeId)>,
    pub suspects: Vec<(Instant, usize, NodeId)>,
    pub alive_again: Vec<(Instant, usize, NodeId)>,
    pub lefts: Vec<(Instant, usize, NodeId)>,
    /// Check invariants on every `check_every`-th event only (0 or 1 = every event): the
    /// full-table checks are O(N) and dominate 1,000-node runs.
    pub check_every: u64,
    pub seen: u64,
}

pub fn observe(tally: &mut Tally, o: &mut Observation<'_, GossipNode>) {
    tally.seen += 1;
    if tally.check_every <= 1 || tally.seen % tally.check_every == 0 {
        o.node.check_invariants();
    }
    while let Some(e) = o.node.poll_event() {
        match e {
            GossipEvent::Membership(MembershipEvent::MemberDown { id }) => {
                tally.downs.push((o.now, o.index.0, id))
            }
            GossipEvent::Membership(MembershipEvent::MemberSuspect { id, .. }) => {
                tally.suspects.push((o.now, o.index.0, id))
            }
            GossipEvent::Membership(MembershipEvent::MemberAlive { id, .. }) => {
                tally.alive_again.push((o.now, o.index.0, id))
            }
            GossipEvent::Membership(MembershipEvent::MemberLeft { id }) => {
                tally.lefts.push((o.now, o.index.0, id))
            }
            _ => {}
        }
    }
}

pub fn build(
    n: usize,
    seed: u64,
    net: SimConfig,
    tweak: impl Fn(&mut GossipConfig),
) -> Sim<GossipNode> {
    let mut sim = Sim::new(SimConfig { seed, ..net });
    for i in 0..n {
        let mut c = config(i, seed);
        tweak(&mut c);
        let mut node = GossipNode::new(c, sim.now());
        node.set_topics(topics(i));
        sim.add_node(addr(i), node);
    }
    sim
}

/// Every node in `nodes` has exactly `nodes` as its live members and the same subscription
/// table with every member's current record.
pub fn converged(sim: &Sim<GossipNode>, nodes: &[NodeIndex]) -> bool {
    let want: Vec<NodeId> = nodes.iter().map(|i| sim.node(*i).id()).collect();
    let first_subs = sim.node(nodes[0]).subscriptions().table_hash();
    nodes.iter().all(|i| {
        let n = sim.node(*i);
        n.membership().live_count() == nodes.len()
            && want.iter().all(|id| {
                n.membership()
                    .member(*id)
                    .is_some_and(|m| m.status == Status::Alive)
            })
            && n.subscriptions().len() == nodes.len()
            && n.subscriptions().table_hash() == first_subs
    })
}

/// Runs round by round until `converged`, returning the virtual time it took (or None).
pub fn run_until_converged(
    sim: &mut Sim<GossipNode>,
    nodes: &[NodeIndex],
    max: Duration,
    tally: &mut Tally,
) -> Option<Duration> {
    let start = sim.now();
    let step = ROUND / 4;
    while sim.now() - start < max {
        sim.run_for(step, &mut |o| observe(tally, o));
        if converged(sim, nodes) {
            return Some(sim.now() - start);
        }
    }
    None
}
