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
    /// Check the full invariants (O(N): they walk the tables) on every `check_every`-th event
    /// only (0 or 1 = every event); the cheap bounds are checked on every event.
    pub check_every: u64,
    pub seen: u64,
}

pub fn observe(tally: &mut Tally, o: &mut Observation<'_, GossipNode>) {
    tally.seen += 1;
    if tally.check_every <= 1 || tally.seen % tally.check_every == 0 {
        o.node.check_invariants();
    } else {
        o.node.check_light();
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

/// Runs until every node of `nodes` agrees (see [`converged`]), in quarter rounds; panics
/// with the replay hint if it takes longer than `max`.
pub fn converge(
    sim: &mut Sim<GossipNode>,
    nodes: &[NodeIndex],
    max: Duration,
    tally: &mut Tally,
    seed: u64,
    test: &str,
) -> Duration {
    run_until_converged(sim, nodes, max, tally)
        .unwrap_or_else(|| panic!("no convergence; {}", qs_sim::replay_hint(seed, test)))
}

/// Rounds (of [`ROUND`]) in a duration.
pub fn rounds(d: Duration) -> f64 {
    d.as_secs_f64() / ROUND.as_secs_f64()
}

/// Steps in quarter rounds until `done` holds; the time it took (None past `max`).
pub fn run_until(
    sim: &mut Sim<GossipNode>,
    max: Duration,
    tally: &mut Tally,
    mut done: impl FnMut(&Sim<GossipNode>) -> bool,
) -> Option<Duration> {
    let start = sim.now();
    loop {
        if done(sim) {
            return Some(sim.now() - start);
        }
        if sim.now() - start >= max {
            return None;
        }
        sim.run_for(ROUND / 4, &mut |o| observe(tally, o));
    }
}

/// Bytes sent by `nodes` so far.
pub fn bytes_sent(sim: &Sim<GossipNode>, nodes: &[NodeIndex]) -> u64 {
    nodes.iter().map(|i| sim.node(*i).stats().bytes_sent).sum()
}

/// A sealed gossip datagram from `sender` with the given sections (tag, priority, payload).
pub fn forge(sender: NodeId, sections: &[(u8, qs_gossip::Priority, Vec<u8>)]) -> bytes::Bytes {
    use qs_transport::wire::{Seal, HEADER_LEN};
    let mut buf = vec![0u8; 65536];
    qs_gossip::wire::write_header(&mut buf, ClusterId(7), sender).unwrap();
    let mut at = HEADER_LEN;
    for (tag, prio, payload) in sections {
        buf[at] = *tag;
        buf[at + 1] = *prio as u8;
        buf[at + 2..at + 4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        buf[at + 4..at + 4 + payload.len()].copy_from_slice(payload);
        at += 4 + payload.len();
    }
    let len = Seal::new().seal(&mut buf, at).unwrap();
    bytes::Bytes::copy_from_slice(&buf[..len])
}

/// A membership record on the wire (see `qs_gossip::membership`): id, incarnation, status,
/// IPv4 address, then the suspecter (suspect) or the death's age (down, left).
pub fn member_record(id: NodeId, incarnation: u32, status: Status, at: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.push(status as u8);
    qs_gossip::wire::put_addr(&mut out, &at);
    match status {
        Status::Suspect => out.extend_from_slice(&0u64.to_be_bytes()),
        Status::Alive => {}
        Status::Down | Status::Left => out.extend_from_slice(&0u32.to_be_bytes()),
    }
    out
}

/// A membership liveness payload: the sender alive at `incarnation`, no control messages,
/// the given piggybacked records.
pub fn liveness(incarnation: u32, records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.push(Status::Alive as u8);
    out.push(0);
    out.push(records.len() as u8);
    for r in records {
        out.extend_from_slice(r);
    }
    out
}
