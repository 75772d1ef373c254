//! The cluster key in the simulator: a keyed cluster under loss delivers every message once
//! and in order while nodes without the key (or with another) see nothing of it; forged,
//! tampered and replayed datagrams are counted as auth or replay drops and change nothing;
//! a key rotation under traffic loses nothing. `SIM_SEED=<n>` replays a seed.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{replay_hint, seed_from_env, EventKind, LossModel, NodeIndex, Sim, SimConfig};
use qs_transport::wire::{self, Header, KeyRing, PacketKind, StreamState, HEADER_LEN};
use qs_transport::{Driven, Instant, NodeId, Seq, TopicId};
use quicksilver::core::{CoreConfig, NodeCore};

const PUBLISHER: usize = 0;

fn topic() -> TopicId {
    TopicId::from_name("keyed")
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i as u8 + 1), 9000)
}

fn node(i: usize, seed: u64, key: Option<&KeyRing>) -> NodeCore {
    let mut c = CoreConfig::new(NodeId(100 + i as u64), addr(i));
    c.seed = seed ^ i as u64;
    c.key = key.cloned();
    c.incarnation = 1;
    let mut n = NodeCore::new(c, Instant::ZERO);
    if i != PUBLISHER {
        n.subscribe(Instant::ZERO, topic());
    }
    n
}

/// Per node, the payloads delivered, in order.
type Log = BTreeMap<usize, Vec<Bytes>>;

struct World {
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    log: Log,
    /// Genuine datagrams delivered to node 1 (for replays and tampering).
    captured: Vec<(SocketAddr, Bytes)>,
    seed: u64,
}

impl World {
    fn new(seed: u64, loss: f64, keys: &[Option<&KeyRing>]) -> World {
        let mut config = SimConfig::with_seed(seed);
        config.loss = LossModel::Bernoulli(loss);
        let mut sim = Sim::new(config);
        let idx = keys
            .iter()
            .enumerate()
            .map(|(i, k)| sim.add_node(SocketAddr::V4(addr(i)), node(i, seed, *k)))
            .collect();
        World {
            sim,
            idx,
            log: Log::new(),
            captured: Vec::new(),
            seed,
        }
    }

    fn run_for(&mut self, d: Duration) {
        let (log, captured) = (&mut self.log, &mut self.captured);
        self.sim.run_for(d, &mut |o| {
            let i = o.index.0;
            if let EventKind::Delivered {
                from,
                datagram,
                corrupted: false,
                duplicate: false,
                ..
            } = &o.event
            {
                if i == 1 && captured.len() < 20_000 {
                    captured.push((*from, datagram.clone()));
                }
            }
            common::collect_deliveries(o.node, log.entry(i).or_default());
        });
    }

    fn core(&mut self, i: usize) -> &mut NodeCore {
        self.sim.node_mut(self.idx[i])
    }

    /// Publishes `from..to` in batches, letting the network run between them.
    fn publish(&mut self, from: u32, to: u32) {
        for s in from..to {
            let payload = Bytes::from(s.to_be_bytes().to_vec());
            while self
                .core(PUBLISHER)
                .publish(topic(), payload.clone())
                .is_err()
            {
                self.run_for(Duration::from_millis(5));
            }
            if s % 50 == 49 {
                self.sim.poke(self.idx[PUBLISHER]);
                self.run_for(Duration::from_millis(2));
            }
        }
        self.sim.poke(self.idx[PUBLISHER]);
    }

    /// Asserts node `i` delivered exactly `0..n`, once each, in order.
    fn assert_exactly(&self, i: usize, n: u32) {
        let got = self.log.get(&i).map_or(&[][..], Vec::as_slice);
        let want: Vec<Bytes> = (0..n)
            .map(|s| Bytes::from(s.to_be_bytes().to_vec()))
            .collect();
        assert!(
            got == want.as_slice(),
            "node {i} delivered {} of {n} (or out of order); {}",
            got.len(),
            replay_hint(self.seed, "sim_keys")
        );
    }
}

#[test]
fn a_keyed_cluster_under_loss_delivers_everything_and_nodes_without_its_key_see_nothing() {
    let seed = seed_from_env(11);
    let keys = KeyRing::generate([1; 32]);
    let other = KeyRing::generate([2; 32]);
    // Nodes 0-2 hold the key, 3 has none, 4 another cluster's key.
    let mut w = World::new(
        seed,
        0.02,
        &[Some(&keys), Some(&keys), Some(&keys), None, Some(&other)],
    );
    w.run_for(Duration::from_secs(2));
    w.publish(0, 3000);
    w.run_for(Duration::from_secs(5));
    w.assert_exactly(1, 3000);
    w.assert_exactly(2, 3000);
    w.assert_exactly(3, 0);
    w.assert_exactly(4, 0);
    for i in 0..3 {
        let ids: Vec<NodeId> = w.core(i).peers().map(|p| p.id).collect();
        assert!(
            !ids.contains(&NodeId(103)) && !ids.contains(&NodeId(104)),
            "keyed node {i} knows an outsider: {ids:?} ({})",
            replay_hint(seed, "sim_keys")
        );
        assert_eq!(w.core(i).stats().gaps, 0);
    }
    // Loss was repaired by forwarded copies (re-sealed by whoever served them), all verified.
    let served: u64 = (0..3).map(|i| w.core(i).stats().repairs_served).sum();
    assert!(
        served > 0,
        "no repair was served ({})",
        replay_hint(seed, "sim_keys")
    );
    for i in 0..3 {
        assert_eq!(
            w.core(i).stats().drops.auth,
            0,
            "a keyed node refused its own cluster"
        );
    }
    // The keyless node cannot open the keyed traffic: auth drops, no peers of the cluster.
    let s3 = w.core(3).stats();
    assert!(s3.drops.auth > 100, "{:?}", s3.drops);
    assert_eq!(w.core(3).peers().count(), 0);
    // Another key means another cluster id: dropped as foreign before any MAC is computed.
    assert!(w.core(4).stats().drops.foreign_cluster > 100);
    assert_eq!(w.core(4).peers().count(), 0);
}

/// A stream state claiming the publisher's stream is 25,000 ahead, sealed by `seal`.
fn forged_stream_state(w: &mut World, seal: &mut wire::Seal) -> Bytes {
    let cluster = w.core(1).config().cluster;
    let region = w.core(1).own_region().expect("subscribed");
    let mut buf = vec![0u8; 256];
    Header::new(
        PacketKind::StreamState,
        cluster,
        NodeId(100 + PUBLISHER as u64),
    )
    .write(&mut buf)
    .unwrap();
    let state = StreamState {
        region,
        epoch: 1,
        highest: Seq(25_000),
        floor: Seq(25_000),
    };
    let n = HEADER_LEN + state.write(&mut buf[HEADER_LEN..]).unwrap();
    let n = seal.seal(&mut buf, n).unwrap();
    Bytes::copy_from_slice(&buf[..n])
}

#[test]
fn forged_tampered_and_replayed_datagrams_are_counted_and_change_nothing() {
    let seed = seed_from_env(12);
    let keys = KeyRing::generate([3; 32]);
    let mut w = World::new(seed, 0.01, &[Some(&keys), Some(&keys), Some(&keys)]);
    w.run_for(Duration::from_secs(2));
    w.publish(0, 1500);
    w.run_for(Duration::from_secs(3));
    w.assert_exactly(1, 1500);

    let before = w.core(1).stats().drops;
    let now = w.sim.now();
    let captured = std::mem::take(&mut w.captured);
    let control = captured
        .iter()
        .filter(|(_, d)| {
            Header::peek(d).is_ok_and(|h| {
                !matches!(
                    h.kind,
                    PacketKind::Data | PacketKind::Fragment | PacketKind::LecRepair
                )
            })
        })
        .count() as u64;
    assert!(control > 20, "only {control} control datagrams captured");
    // Replays of everything node 1 received: control is refused by the window, data is
    // dropped by sequence (nothing is delivered twice).
    for (from, d) in &captured {
        w.core(1).handle_datagram(now, *from, d.clone());
    }
    // Tampered copies: one bit of the body flipped.
    let mut tampered = 0u64;
    for (from, d) in captured.iter().step_by(7) {
        let mut t = d.to_vec();
        if t.len() <= HEADER_LEN {
            continue;
        }
        t[HEADER_LEN] ^= 1;
        w.core(1).handle_datagram(now, *from, Bytes::from(t));
        tampered += 1;
    }
    // An outsider's forgery with the plain checksum, and one under a wrong key.
    let forged = forged_stream_state(&mut w, &mut wire::Seal::new());
    let wrong_key = forged_stream_state(
        &mut w,
        &mut wire::Seal::keyed(KeyRing::generate([9; 32]), 0, 0),
    );
    let from = SocketAddr::V4(addr(9));
    w.core(1).handle_datagram(now, from, forged);
    // A wrong key with the right cluster id: only the MAC tells.
    let mut wrong = wrong_key.to_vec();
    let cluster = w.core(1).config().cluster;
    wrong[wire::field::CLUSTER].copy_from_slice(&cluster.0.to_be_bytes());
    w.core(1).handle_datagram(now, from, Bytes::from(wrong));

    let after = w.core(1).stats().drops;
    assert_eq!(
        after.replay - before.replay,
        control,
        "every replayed control datagram refused ({})",
        replay_hint(seed, "sim_keys")
    );
    assert_eq!(after.auth - before.auth, tampered + 2);
    w.core(1).check_invariants();

    // Delivery goes on unaffected: nothing skipped, nothing twice.
    w.publish(1500, 3000);
    w.run_for(Duration::from_secs(4));
    w.assert_exactly(1, 3000);
    w.assert_exactly(2, 3000);
    assert_eq!(w.core(1).stats().gaps, 0);
    assert_eq!(w.core(1).stats().missed_on_join, 0);
}

#[test]
fn a_key_rotation_under_traffic_loses_nothing_and_fails_no_datagram() {
    let seed = seed_from_env(13);
    let old = KeyRing::generate([4; 32]);
    let staged = old.add_next([5; 32]);
    let n = 4;
    let mut w = World::new(seed, 0.01, &vec![Some(&old); n]);
    w.run_for(Duration::from_secs(2));
    let mut next = 0;
    // Each step reaches the nodes one at a time, with traffic between them.
    for ring in [staged.clone(), staged.promote(), staged.promote().retire()] {
        for i in 0..n {
            w.core(i).set_keys(ring.clone()).expect("same cluster");
            w.publish(next, next + 300);
            next += 300;
            w.run_for(Duration::from_millis(300));
        }
    }
    w.run_for(Duration::from_secs(4));
    for i in 1..n {
        w.assert_exactly(i, next);
    }
    for i in 0..n {
        let s = w.core(i).stats();
        assert_eq!(
            s.drops.auth,
            0,
            "node {i} refused datagrams during the rotation ({})",
            replay_hint(seed, "sim_keys")
        );
        assert_eq!(s.gaps, 0);
        assert_eq!(w.core(i).config().key.as_ref().unwrap().seal_with.epoch, 2);
    }
    // A keyless node cannot take keys, nor a keyed one another cluster's.
    let mut keyless = node(7, seed, None);
    assert!(keyless.set_keys(old.clone()).is_err());
    assert!(w.core(0).set_keys(KeyRing::generate([6; 32])).is_err());
}
