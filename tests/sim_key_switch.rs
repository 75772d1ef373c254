//! The automatic key switch in the simulator: four keyed nodes under 2% loss, the next key
//! handed to them one at a time seconds apart while traffic flows. Nothing may be lost,
//! delivered twice or refused as unauthenticated; no datagram may be sealed with the next key
//! before the last node holds it; the previous key is retired `key_retire_after` after the
//! switch. The other side: while one node never gets the key, nobody switches.
//! `SIM_SEED=<n>` replays a seed.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{replay_hint, seed_from_env, EventKind, LossModel, NodeIndex, Sim, SimConfig};
use qs_transport::wire::{ClusterKey, Header, KeyRing, FLAG_KEYED, TRAILER_LEN};
use qs_transport::{Instant, NodeId, TopicId};
use quicksilver::core::{CoreConfig, KeysRefused, NodeCore};

const PUBLISHER: usize = 0;
const NODES: usize = 4;
const RETIRE_AFTER: Duration = Duration::from_secs(3);

fn topic() -> TopicId {
    TopicId::from_name("switch")
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, i as u8 + 1), 9000)
}

fn node(i: usize, seed: u64, keys: &KeyRing, now: Instant) -> NodeCore {
    let mut c = CoreConfig::new(NodeId(200 + i as u64), addr(i));
    c.seed = seed ^ i as u64;
    c.key = Some(keys.clone());
    c.incarnation = 1;
    c.key_retire_after = RETIRE_AFTER;
    let mut n = NodeCore::new(c, now);
    if i != PUBLISHER {
        n.subscribe(now, topic());
    }
    n
}

/// Message `n`: its number, padded to 500 bytes (two messages a datagram, so loss costs).
fn payload(n: u32) -> Bytes {
    let mut v = n.to_be_bytes().to_vec();
    v.resize(500, 0xa5);
    Bytes::from(v)
}

/// The key epoch a keyed datagram was sealed with.
fn sealed_epoch(d: &[u8]) -> Option<u32> {
    let h = Header::peek(d).ok()?;
    if h.flags & FLAG_KEYED == 0 || d.len() < TRAILER_LEN {
        return None;
    }
    let at = d.len() - TRAILER_LEN;
    Some(u32::from_be_bytes(d[at..at + 4].try_into().ok()?))
}

struct World {
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    /// Per node, the payloads delivered, in order.
    log: BTreeMap<usize, Vec<Bytes>>,
    /// Datagrams seen on the wire per sealing epoch, and the first instant of each.
    epochs: BTreeMap<u32, (u64, Instant)>,
    next: u32,
    seed: u64,
}

impl World {
    fn new(seed: u64, keys: &KeyRing) -> World {
        let mut config = SimConfig::with_seed(seed);
        config.loss = LossModel::Bernoulli(0.02);
        let mut sim = Sim::new(config);
        let idx = (0..NODES)
            .map(|i| sim.add_node(SocketAddr::V4(addr(i)), node(i, seed, keys, Instant::ZERO)))
            .collect();
        World {
            sim,
            idx,
            log: BTreeMap::new(),
            epochs: BTreeMap::new(),
            next: 0,
            seed,
        }
    }

    fn run_for(&mut self, d: Duration) {
        let (log, epochs) = (&mut self.log, &mut self.epochs);
        self.sim.run_for(d, &mut |o| {
            let i = o.index.0;
            if let EventKind::Delivered {
                datagram,
                corrupted: false,
                ..
            } = &o.event
            {
                if let Some(e) = sealed_epoch(datagram) {
                    epochs.entry(e).or_insert((0, o.now)).0 += 1;
                }
            }
            common::collect_deliveries(o.node, log.entry(i).or_default());
        });
    }

    fn core(&mut self, i: usize) -> &mut NodeCore {
        self.sim.node_mut(self.idx[i])
    }

    /// Publishes `n` more messages over about `d`, in batches with the network running
    /// between them.
    fn traffic(&mut self, n: u32, d: Duration) {
        let batches = 10;
        for _ in 0..batches {
            for _ in 0..n / batches {
                let payload = payload(self.next);
                while self
                    .core(PUBLISHER)
                    .publish(topic(), payload.clone())
                    .is_err()
                {
                    self.run_for(Duration::from_millis(5));
                }
                self.next += 1;
            }
            self.sim.poke(self.idx[PUBLISHER]);
            self.run_for(d / batches);
        }
    }

    fn sealing_epochs(&mut self) -> Vec<u32> {
        (0..NODES)
            .map(|i| self.core(i).config().key.as_ref().unwrap().seal_with.epoch)
            .collect()
    }

    /// Asserts every subscriber delivered exactly `0..next`, once each, in order, and no
    /// node refused a datagram as unauthenticated.
    fn assert_exact_and_clean(&mut self) {
        let want: Vec<Bytes> = (0..self.next).map(payload).collect();
        for i in 1..NODES {
            let got = self.log.get(&i).map_or(&[][..], Vec::as_slice);
            assert!(
                got == want.as_slice(),
                "node {i} delivered {} of {} (or out of order, or twice); {}",
                got.len(),
                want.len(),
                replay_hint(self.seed, "sim_key_switch")
            );
        }
        for i in 0..NODES {
            let s = self.core(i).stats();
            assert_eq!(
                (s.drops.auth, s.gaps),
                (0, 0),
                "node {i}: auth drops or gaps ({})",
                replay_hint(self.seed, "sim_key_switch")
            );
        }
    }
}

#[test]
fn senders_switch_to_a_next_key_only_once_every_member_holds_it_and_lose_nothing() {
    let seed = seed_from_env(31);
    let old = KeyRing::generate([21; 32]);
    let next = ClusterKey::new(2, [22; 32]);
    let mut w = World::new(seed, &old);
    w.run_for(Duration::from_secs(2));
    w.traffic(300, Duration::from_secs(1));

    // The next key reaches the nodes one at a time, 1.5 s apart, traffic flowing.
    for i in 0..NODES {
        w.core(i).add_key(next.clone()).expect("a newer key");
        if i + 1 < NODES {
            w.traffic(300, Duration::from_millis(1500));
            assert_eq!(
                w.sealing_epochs(),
                vec![1; NODES],
                "a node switched while node {} lacked the key ({})",
                i + 1,
                replay_hint(seed, "sim_key_switch")
            );
        }
    }
    let last_has_it = w.sim.now();
    assert!(!w.epochs.contains_key(&2), "sealed with epoch 2 too early");
    // A second key while the rotation is under way is refused.
    assert_eq!(
        w.core(1).add_key(ClusterKey::new(3, [23; 32])),
        Err(KeysRefused::RotationUnderway)
    );

    // Gossip spreads the last record; every node switches, then retires epoch 1.
    w.traffic(600, Duration::from_secs(2));
    assert_eq!(
        w.sealing_epochs(),
        vec![2; NODES],
        "not every node switched"
    );
    let (sealed_new, first_new) = w.epochs[&2];
    assert!(
        first_new >= last_has_it && sealed_new > 100,
        "epoch 2 first seen at {first_new:?}, the last node got it at {last_has_it:?}"
    );
    w.traffic(600, RETIRE_AFTER + Duration::from_secs(1));
    for i in 0..NODES {
        let s = w.core(i).stats();
        assert_eq!((s.key_switches, s.keys_retired), (1, 1), "node {i}");
        let ring = w.core(i).config().key.clone().unwrap();
        assert!(ring.also.is_none(), "node {i} still holds the old key");
    }
    // After the retirement the old key opens nothing, and traffic goes on.
    w.traffic(300, Duration::from_secs(1));
    w.run_for(Duration::from_secs(3));
    w.assert_exact_and_clean();
    assert_eq!(
        w.core(1).add_key(ClusterKey::new(2, [24; 32])),
        Err(KeysRefused::NotNewer)
    );
}

#[test]
fn while_one_member_lacks_the_next_key_nobody_switches() {
    let seed = seed_from_env(32);
    let old = KeyRing::generate([25; 32]);
    let next = ClusterKey::new(2, [26; 32]);
    let mut w = World::new(seed, &old);
    w.run_for(Duration::from_secs(2));
    for i in 0..NODES - 1 {
        w.core(i).add_key(next.clone()).expect("a newer key");
    }
    w.traffic(1500, Duration::from_secs(8));
    assert_eq!(w.sealing_epochs(), vec![1; NODES]);
    assert!(
        !w.epochs.contains_key(&2),
        "a datagram was sealed with epoch 2"
    );
    for i in 0..NODES {
        assert_eq!(w.core(i).stats().key_switches, 0);
    }
    w.run_for(Duration::from_secs(3));
    w.assert_exact_and_clean();
    // Once it gets the key too, the switch follows.
    w.core(NODES - 1).add_key(next).expect("a newer key");
    w.traffic(300, Duration::from_secs(3));
    assert_eq!(w.sealing_epochs(), vec![2; NODES]);
    w.run_for(Duration::from_secs(3));
    w.assert_exact_and_clean();
}

#[test]
fn a_node_started_with_both_keys_does_not_switch_on_a_partial_view() {
    let seed = seed_from_env(33);
    let old = KeyRing::generate([27; 32]);
    let both = old.add_next([28; 32]);
    let mut w = World::new(seed, &old);
    w.run_for(Duration::from_secs(2));
    w.traffic(300, Duration::from_secs(1));
    // A fifth node joins with both keys: it knows nobody at first, then members that hold
    // only the old key; it must keep sealing with the old one.
    let now = w.sim.now();
    let late = w
        .sim
        .add_node(SocketAddr::V4(addr(NODES)), node(NODES, seed, &both, now));
    w.traffic(900, RETIRE_AFTER * 2);
    let late_core = w.sim.node_mut(late);
    assert_eq!(late_core.stats().key_switches, 0);
    assert_eq!(late_core.config().key.as_ref().unwrap().seal_with.epoch, 1);
    assert!(
        late_core.peers().count() >= NODES - 1,
        "the late node did not join ({})",
        replay_hint(seed, "sim_key_switch")
    );
    assert!(
        !w.epochs.contains_key(&2),
        "a datagram was sealed with epoch 2"
    );
    w.run_for(Duration::from_secs(3));
    w.assert_exact_and_clean();
    // The other side: once the others hold the key too, it switches with them.
    for i in 0..NODES {
        w.core(i)
            .add_key(both.also.clone().unwrap())
            .expect("newer");
    }
    w.traffic(300, Duration::from_secs(3));
    assert_eq!(w.sealing_epochs(), vec![2; NODES]);
    let late_core = w.sim.node_mut(late);
    assert_eq!(late_core.config().key.as_ref().unwrap().seal_with.epoch, 2);
    assert_eq!(late_core.stats().drops.auth, 0);
}
