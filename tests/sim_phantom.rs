//! Receive streams of senders that are no members ("phantoms") are freed after
//! `phantom_after`, counted; a real sender heard of late (its announcements come after its
//! data, within `phantom_after`) keeps its stream.
//!
//! Phantom data is made from genuine data: every data datagram a receiver gets from the real
//! sender is also handed to it relabelled with another sender id (keyless cluster, resealed
//! with the checksum), so the phantom's stream is a well-formed one. `SIM_SEED=<n>` replays
//! a seed.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{replay_hint, seed_from_env, EventKind, NodeIndex, Sim, SimConfig};
use qs_transport::wire::{field, Header, PacketKind, Seal};
use qs_transport::{Driven, Instant, NodeId, TopicId};
use quicksilver::core::{CoreConfig, NodeCore};

const SENDER: usize = 0;
const NODES: usize = 3;
const PHANTOM_AFTER: Duration = Duration::from_secs(5);
/// The relabelled copies' sender: no node at first (the second test adds it).
const PHANTOM: NodeId = NodeId(399);

fn topic() -> TopicId {
    TopicId::from_name("phantom")
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, i as u8 + 1), 9000)
}

fn core(i: usize, id: NodeId, seed: u64, now: Instant) -> NodeCore {
    let mut c = CoreConfig::new(id, addr(i));
    c.seed = seed ^ i as u64;
    c.phantom_after = PHANTOM_AFTER;
    let mut n = NodeCore::new(c, now);
    if i != SENDER {
        n.subscribe(now, topic());
    }
    n
}

/// `datagram` (a keyless data datagram) as if `sender` had sent it.
fn relabelled(datagram: &Bytes, sender: NodeId) -> Bytes {
    let mut d = datagram.to_vec();
    d[field::SENDER].copy_from_slice(&sender.0.to_be_bytes());
    let len = d.len();
    Seal::new().seal(&mut d, len).expect("room");
    Bytes::from(d)
}

struct World {
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    log: BTreeMap<usize, Vec<Bytes>>,
    next: u32,
    /// Hand receivers relabelled copies of the sender's data.
    relabel: bool,
}

impl World {
    fn new(seed: u64) -> World {
        let mut sim = Sim::new(SimConfig::with_seed(seed));
        let idx: Vec<NodeIndex> = (0..NODES)
            .map(|i| {
                let n = core(i, NodeId(300 + i as u64), seed, Instant::ZERO);
                sim.add_node(SocketAddr::V4(addr(i)), n)
            })
            .collect();
        World {
            sim,
            idx,
            log: BTreeMap::new(),
            next: 0,
            relabel: true,
        }
    }

    fn run_for(&mut self, d: Duration) {
        let log = &mut self.log;
        let relabel = self.relabel;
        let sender = NodeId(300 + SENDER as u64);
        self.sim.run_for(d, &mut |o| {
            if let EventKind::Delivered { from, datagram, .. } = &o.event {
                let data = Header::peek(datagram).is_ok_and(|h| {
                    h.sender == sender && matches!(h.kind, PacketKind::Data | PacketKind::Fragment)
                });
                if relabel && data {
                    o.node
                        .handle_datagram(o.now, *from, relabelled(datagram, PHANTOM));
                }
            }
            common::collect_deliveries(o.node, log.entry(o.index.0).or_default());
        });
    }

    fn core(&mut self, i: usize) -> &mut NodeCore {
        self.sim.node_mut(self.idx[i])
    }

    fn publish(&mut self, n: u32) {
        for _ in 0..n {
            let payload = Bytes::from(self.next.to_be_bytes().to_vec());
            while self.core(SENDER).publish(topic(), payload.clone()).is_err() {
                self.run_for(Duration::from_millis(5));
            }
            self.next += 1;
        }
        self.sim.poke(self.idx[SENDER]);
    }

    /// Receive streams of `sender` at receiver `i`.
    fn streams_of(&mut self, i: usize, sender: NodeId) -> usize {
        self.core(i)
            .receive_streams()
            .filter(|(s, _)| *s == sender)
            .count()
    }

    /// Messages receiver `i` delivered (from every sender).
    fn delivered(&self, i: usize) -> usize {
        self.log.get(&i).map_or(0, Vec::len)
    }
}

#[test]
fn streams_of_a_sender_that_never_becomes_a_member_are_freed_after_phantom_after() {
    let seed = seed_from_env(41);
    let mut w = World::new(seed);
    w.run_for(Duration::from_secs(2));
    w.publish(200);
    w.run_for(Duration::from_millis(500));
    w.relabel = false;
    let sender = NodeId(300 + SENDER as u64);
    for i in 1..NODES {
        assert_eq!(
            w.delivered(i),
            400,
            "receiver {i} did not get both streams ({})",
            replay_hint(seed, "sim_phantom")
        );
        assert_eq!((w.streams_of(i, PHANTOM), w.streams_of(i, sender)), (1, 1));
    }
    // Just before the bound (less the check interval): still held.
    w.run_for(PHANTOM_AFTER - Duration::from_millis(1500));
    for i in 1..NODES {
        assert_eq!(
            w.streams_of(i, PHANTOM),
            1,
            "receiver {i} freed it too early"
        );
        assert_eq!(w.core(i).stats().phantom_streams_expired, 0);
    }
    // After the bound and one more check: freed and counted; the real stream stays.
    w.run_for(Duration::from_secs(3));
    for i in 1..NODES {
        assert_eq!(
            (w.streams_of(i, PHANTOM), w.streams_of(i, sender)),
            (0, 1),
            "receiver {i} ({})",
            replay_hint(seed, "sim_phantom")
        );
        assert_eq!(w.core(i).stats().phantom_streams_expired, 1);
    }
    // More of the phantom's stream does not start it over; the real one goes on.
    w.relabel = true;
    w.publish(50);
    w.run_for(Duration::from_secs(1));
    for i in 1..NODES {
        assert_eq!(w.streams_of(i, PHANTOM), 0);
        assert_eq!(w.delivered(i), 450);
        assert_eq!(w.core(i).stats().gaps, 0);
    }
}

#[test]
fn a_real_sender_heard_of_late_keeps_its_stream() {
    let seed = seed_from_env(42);
    let mut w = World::new(seed);
    w.run_for(Duration::from_secs(2));
    w.publish(200);
    w.run_for(Duration::from_millis(500));
    w.relabel = false;
    // The "phantom" id turns out to be a real node, announced 2 s after its data came.
    w.run_for(Duration::from_secs(2));
    let now = w.sim.now();
    let late = w.sim.add_node(
        SocketAddr::V4(addr(NODES)),
        core(SENDER, PHANTOM, seed, now),
    );
    w.run_for(PHANTOM_AFTER + Duration::from_secs(3));
    assert!(w.sim.node(late).peers().count() >= NODES - 1);
    for i in 1..NODES {
        let s = w.core(i).stats();
        assert_eq!(
            (s.phantom_streams_expired, w.streams_of(i, PHANTOM)),
            (0, 1),
            "receiver {i} freed a real sender's stream ({})",
            replay_hint(seed, "sim_phantom")
        );
        assert_eq!(w.delivered(i), 400);
    }
}
