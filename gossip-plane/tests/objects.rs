#![allow(missing_docs)]
//! A user-defined gossip object on the generic runtime, and what bundling saves with three
//! objects.

mod common;

use std::time::Duration;

use common::*;
use qs_gossip::wire::{Priority, Reader};
use qs_gossip::{GossipObject, Outbox, Peer, PeerView};
use qs_sim::{NodeIndex, SimConfig};
use qs_transport::wire::WireError;
use qs_transport::Instant;

/// Epidemic maximum: a stand-in for an Astrolabe-style aggregate. Its view favours a fixed
/// quarter of the nodes (half of its draws), so the correlated merge is exercised with
/// a non-uniform view.
struct MaxAggregate {
    value: u64,
    owed: Vec<std::net::SocketAddr>,
    favoured: Vec<qs_transport::NodeId>,
}

impl GossipObject for MaxAggregate {
    fn tag(&self) -> u8 {
        9
    }
    fn name(&self) -> &'static str {
        "max"
    }
    fn view(&self) -> PeerView {
        PeerView::Favour {
            ids: self.favoured.clone(),
            share: 0.5,
        }
    }
    fn gossip_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        self.owed.push(peer.addr);
        out.initiate(peer);
    }
    fn write(
        &mut self,
        _now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        if priority == Priority::Bulk && budget >= 8 && self.owed.contains(&to.addr) {
            self.owed.retain(|a| *a != to.addr);
            out.extend_from_slice(&self.value.to_be_bytes());
        }
    }
    fn handle(
        &mut self,
        _now: Instant,
        _from: &Peer,
        _priority: Priority,
        payload: &[u8],
        _out: &mut Outbox<'_>,
    ) -> Result<(), WireError> {
        let v = Reader::new(payload).u64()?;
        self.value = self.value.max(v);
        Ok(())
    }
    fn check_invariants(&self) {
        assert!(self.owed.len() < 1000);
    }
}

fn run(bundling: bool, seed: u64) -> (f64, u64) {
    let n = 100;
    let mut sim = build(n, seed, SimConfig::default(), |c| c.bundling = bundling);
    for i in sim.indices().collect::<Vec<_>>() {
        let obj = MaxAggregate {
            value: i.0 as u64 * 7,
            owed: Vec::new(),
            favoured: (0..n).step_by(4).map(node_id).collect(),
        };
        sim.node_mut(i).add_object(Box::new(obj)).unwrap();
    }
    let nodes: Vec<NodeIndex> = sim.indices().collect();
    let mut tally = Tally::default();
    run_until_converged(&mut sim, &nodes, Duration::from_secs(20), &mut tally).expect("converges");
    let before = sim.total_stats().sent;
    sim.run_for(Duration::from_secs(20), &mut |o| observe(&mut tally, o));
    let rate = (sim.total_stats().sent - before) as f64 / 20.0 / n as f64;
    let (_, max_stats) = sim
        .node(NodeIndex(0))
        .stats()
        .objects
        .into_iter()
        .find(|(name, _)| *name == "max")
        .expect("the added object has counters");
    (rate, max_stats.sections_received)
}

#[test]
fn a_user_object_with_a_favouring_view_rides_in_the_same_datagrams() {
    let seed = qs_sim::seed_from_env(81);
    let (on, received) = run(true, seed);
    let (off, _) = run(false, seed);
    println!(
        "three objects, N=100: {on:.1} datagrams/node/s bundled vs {off:.1} one per object \
         ({:.0}% fewer)",
        100.0 * (1.0 - on / off)
    );
    assert!(received > 0);
    // The user object's view overlaps membership's uniform one on about 62% of its mass
    // (all of the favoured quarter, half of the rest): most of its sections share the
    // datagram of a probe. Its own datagrams and the others' (acks, answers) are unaffected.
    assert!(on < 0.85 * off, "{on} vs {off}");
}

#[test]
fn adding_an_object_with_a_taken_tag_is_refused() {
    let mut node = qs_gossip::GossipNode::new(config(0, 1), Instant::ZERO);
    struct Dup;
    impl GossipObject for Dup {
        fn tag(&self) -> u8 {
            0
        }
        fn name(&self) -> &'static str {
            "dup"
        }
        fn gossip_with(&mut self, _: Instant, _: &Peer, _: &mut Outbox<'_>) {}
        fn write(&mut self, _: Instant, _: &Peer, _: Priority, _: usize, _: &mut Vec<u8>) {}
        fn handle(
            &mut self,
            _: Instant,
            _: &Peer,
            _: Priority,
            _: &[u8],
            _: &mut Outbox<'_>,
        ) -> Result<(), WireError> {
            Ok(())
        }
    }
    assert_eq!(
        node.add_object(Box::new(Dup)),
        Err(qs_gossip::AddObjectError::DuplicateTag(0))
    );
}
