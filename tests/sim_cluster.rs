//! Cluster tests of the sans-IO node in the deterministic simulator: discovery, region
//! mapping, packing, fragmentation, per-sender order and gap accounting, with exact oracles
//! checked after every event. `SIM_SEED=<n>` replays a seed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{seed_from_env, EventKind, LossModel, NodeIndex, Observation, Sim, SimConfig};
use qs_transport::wire::{self, DataPacket, Fragment, PacketKind};
use qs_transport::{Instant, NodeId, TopicId};
use quicksilver::core::{CoreConfig, Event, NodeCore};

const TOPICS: [&str; 3] = ["t1", "t2", "t3"];

fn topic(i: usize) -> TopicId {
    TopicId::from_name(TOPICS[i])
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, i as u8 + 1),
        9000,
    ))
}

fn node(i: usize, seed: u64, reliable: bool) -> NodeCore {
    let SocketAddr::V4(a) = addr(i) else {
        unreachable!()
    };
    let mut c = CoreConfig::new(NodeId(100 + i as u64), a);
    c.seed = seed ^ i as u64;
    c.reliable = reliable;
    NodeCore::new(c, Instant::ZERO)
}

/// What each node delivered, in order: (sender, topic, payload).
type Log = BTreeMap<usize, Vec<(NodeId, TopicId, Bytes)>>;

/// Per receiver: data packets (and the messages in them) the network dropped on their way to
/// it, counting only packets of its own region from other senders.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    packets: u64,
    messages: u64,
}

struct Cluster {
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    log: Log,
    dropped: BTreeMap<usize, Dropped>,
}

fn drain(i: usize, core: &mut NodeCore, log: &mut Log) {
    while let Some(e) = core.poll_event() {
        if let Event::Delivered(d) = e {
            log.entry(i)
                .or_default()
                .push((d.sender, d.topic, d.payload));
        }
    }
}

impl Cluster {
    fn new(config: SimConfig, subs: &[&[usize]]) -> Cluster {
        Cluster::with_mode(config, subs, true)
    }

    /// Best-effort nodes: holes are given up and reported as gaps (no recovery ring).
    fn best_effort(config: SimConfig, subs: &[&[usize]]) -> Cluster {
        Cluster::with_mode(config, subs, false)
    }

    fn with_mode(config: SimConfig, subs: &[&[usize]], reliable: bool) -> Cluster {
        let seed = config.seed;
        let mut sim = Sim::new(config);
        let mut idx = Vec::new();
        for (i, topics) in subs.iter().enumerate() {
            let mut n = node(i, seed, reliable);
            for &t in *topics {
                n.subscribe(Instant::ZERO, topic(t));
            }
            idx.push(sim.add_node(addr(i), n));
        }
        Cluster {
            sim,
            idx,
            log: Log::new(),
            dropped: BTreeMap::new(),
        }
    }

    fn run_for(&mut self, d: Duration) {
        let (log, dropped) = (&mut self.log, &mut self.dropped);
        let t = self.sim.now() + d;
        self.sim
            .run_until(t, &mut |o: &mut Observation<'_, NodeCore>| {
                let i = o.index.0;
                if let EventKind::Dropped { datagram, .. } = &o.event {
                    count_drop(o.node, datagram, dropped.entry(i).or_default());
                }
                drain(i, o.node, log);
            });
    }

    /// Queues a message; it leaves when the simulator next drains the node (see `flush`).
    fn publish(&mut self, i: usize, t: usize, payload: Bytes) {
        let core = self.sim.node_mut(self.idx[i]);
        core.publish(topic(t), payload).expect("queue has room");
        core.check_invariants();
        drain(i, core, &mut self.log);
    }

    /// Lets node `i` send what it queued (several small messages pack into one packet).
    fn flush(&mut self, i: usize) {
        self.sim.poke(self.idx[i]);
    }

    fn core(&self, i: usize) -> &NodeCore {
        self.sim.node(self.idx[i])
    }
}

fn count_drop(receiver: &NodeCore, datagram: &Bytes, d: &mut Dropped) {
    let Ok((h, body)) = wire::Seal::new().open(datagram) else {
        return;
    };
    if h.sender == receiver.id() {
        return;
    }
    let body = Bytes::copy_from_slice(body);
    let (region, messages) = match h.kind {
        PacketKind::Data => {
            let p = DataPacket::parse(body).expect("valid");
            (p.region, p.len() as u64)
        }
        PacketKind::Fragment => {
            let f = Fragment::parse(body).expect("valid");
            (f.region, u64::from(f.index + 1 == f.count))
        }
        _ => return,
    };
    if Some(region) == receiver.own_region() {
        d.packets += 1;
        d.messages += messages;
    }
}

fn payload(publisher: usize, seq: u32, size: usize) -> Bytes {
    let mut v = vec![publisher as u8; size.max(8)];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    let n = v.len();
    v[n - 4..].copy_from_slice(&(seq ^ 0xA5A5_A5A5).to_be_bytes());
    Bytes::from(v)
}

/// Subscription sets of the five-node cluster: three overlapping sets (nodes 0 and 3 share a
/// region), node 4 subscribes nothing.
const SUBS: [&[usize]; 5] = [&[0, 1], &[1, 2], &[0, 2], &[0, 1], &[]];
const PUBLISHERS: [usize; 3] = [0, 2, 4];

/// Runs the standard workload; returns what each (receiver, sender) pair should have got.
fn run_workload(
    c: &mut Cluster,
    total: u32,
    size: usize,
) -> BTreeMap<(usize, usize), Vec<(TopicId, Bytes)>> {
    c.run_for(Duration::from_secs(2));
    for i in 0..SUBS.len() {
        assert_eq!(
            c.core(i).peers().count(),
            SUBS.len() - 1,
            "node {i} discovered everyone"
        );
    }
    let mut expected: BTreeMap<(usize, usize), Vec<(TopicId, Bytes)>> = BTreeMap::new();
    let mut seq = 0u32;
    while seq < total {
        // 30 messages per publisher per millisecond.
        for _ in 0..30 {
            for &p in &PUBLISHERS {
                if seq >= total {
                    break;
                }
                let t = (seq as usize / PUBLISHERS.len()) % TOPICS.len();
                let m = payload(p, seq, size);
                for (r, subs) in SUBS.iter().enumerate() {
                    if subs.contains(&t) {
                        expected
                            .entry((r, p))
                            .or_default()
                            .push((topic(t), m.clone()));
                    }
                }
                c.publish(p, t, m);
                seq += 1;
            }
        }
        for &p in &PUBLISHERS {
            c.flush(p);
        }
        c.run_for(Duration::from_millis(1));
    }
    c.run_for(Duration::from_secs(2));
    expected
}

fn delivered_from(c: &Cluster, r: usize, p: usize) -> Vec<(TopicId, Bytes)> {
    let sender = NodeId(100 + p as u64);
    c.log
        .get(&r)
        .map(|l| {
            l.iter()
                .filter(|(s, _, _)| *s == sender)
                .map(|(_, t, b)| (*t, b.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn five_nodes_three_publishers_deliver_every_message_once_in_order_without_loss() {
    let seed = seed_from_env(1);
    let mut c = Cluster::new(SimConfig::with_seed(seed), &SUBS);
    let expected = run_workload(&mut c, 10_000, 40);
    let mut total = 0;
    for r in 0..SUBS.len() {
        for &p in &PUBLISHERS {
            let want = expected.get(&(r, p)).cloned().unwrap_or_default();
            let got = delivered_from(&c, r, p);
            assert_eq!(got.len(), want.len(), "node {r} from {p} (seed {seed})");
            assert!(
                got == want,
                "node {r} from {p}: wrong content or order (seed {seed})"
            );
            total += got.len();
        }
        let s = c.core(r).stats();
        assert_eq!(s.gaps, 0, "node {r}");
        assert_eq!(s.missed_on_join, 0, "node {r}");
        assert_eq!(s.drops.stale, 0, "node {r}");
        assert_eq!(
            c.log.get(&r).map_or(0, Vec::len),
            expected
                .iter()
                .filter(|((x, _), _)| *x == r)
                .map(|(_, v)| v.len())
                .sum::<usize>()
        );
    }
    // Every message reaches every subscriber of its topic (t1, t2: 3 nodes; t3: 2 nodes).
    let per_topic = [3usize, 3, 2];
    let want_total: usize = (0..10_000usize).map(|seq| per_topic[(seq / 3) % 3]).sum();
    assert_eq!(total, want_total);
    // Small messages were packed: far fewer packets than message copies.
    let sent: u64 = PUBLISHERS
        .iter()
        .map(|&p| c.core(p).stats().data_packets_sent)
        .sum();
    let copies: u64 = PUBLISHERS
        .iter()
        .map(|&p| c.core(p).stats().messages_sent)
        .sum();
    assert!(
        sent * 5 < copies,
        "{sent} packets for {copies} message copies"
    );
}

#[test]
fn reordering_and_duplication_without_loss_still_deliver_everything_once_in_order() {
    let seed = seed_from_env(6);
    let mut config = SimConfig::with_seed(seed);
    // Jitter far above the packet spacing reorders packets; a few are duplicated.
    config.jitter = Duration::from_millis(3);
    config.duplicate = 0.02;
    let mut c = Cluster::new(config, &SUBS);
    let expected = run_workload(&mut c, 10_000, 40);
    for r in 0..SUBS.len() {
        for &p in &PUBLISHERS {
            let want = expected.get(&(r, p)).cloned().unwrap_or_default();
            assert!(
                delivered_from(&c, r, p) == want,
                "node {r} from {p} (seed {seed})"
            );
        }
        let s = c.core(r).stats();
        assert_eq!(s.gaps, 0, "node {r}: reordering is not loss (seed {seed})");
    }
    let stale: u64 = (0..SUBS.len()).map(|r| c.core(r).stats().drops.stale).sum();
    assert!(
        stale > 0,
        "duplicates were injected and must be dropped as stale"
    );
    let held: u64 = (0..SUBS.len()).map(|r| c.core(r).stats().held_back).sum();
    assert!(held > 100, "jitter reordered only {held} packets");
}

#[test]
fn best_effort_with_one_percent_loss_gaps_equal_what_the_network_dropped() {
    let seed = seed_from_env(2);
    let mut config = SimConfig::with_seed(seed);
    config.loss = LossModel::Bernoulli(0.01);
    let mut c = Cluster::best_effort(config, &SUBS);
    // 1% loss also hits announcements; discovery must still converge.
    let expected = run_workload(&mut c, 10_000, 40);
    let mut total_gaps = 0;
    for r in 0..SUBS.len() {
        let s = c.core(r).stats();
        let d = c.dropped.get(&r).copied().unwrap_or_default();
        assert_eq!(
            s.gaps + s.missed_on_join,
            d.packets,
            "node {r}: gaps vs dropped packets (seed {seed})"
        );
        assert_eq!(s.drops.stale, 0);
        total_gaps += s.gaps;
        let want: usize = expected
            .iter()
            .filter(|((x, p), _)| *x == r && *p != r)
            .map(|(_, v)| v.len())
            .sum();
        let got = c.log.get(&r).map_or(0, |l| {
            l.iter()
                .filter(|(snd, _, _)| *snd != c.core(r).id())
                .count()
        });
        assert_eq!(
            got as u64 + d.messages,
            want as u64,
            "node {r}: delivered + lost = sent (seed {seed})"
        );
        // What arrived is in order and uncorrupted: a subsequence of what was sent.
        for &p in &PUBLISHERS {
            let want = expected.get(&(r, p)).cloned().unwrap_or_default();
            let mut it = want.iter();
            for m in delivered_from(&c, r, p) {
                assert!(
                    it.any(|w| *w == m),
                    "node {r} from {p}: out of order or invented (seed {seed})"
                );
            }
        }
    }
    assert!(
        total_gaps > 0,
        "1% loss over ~{} packets produced no gap",
        10_000
    );
}

#[test]
fn large_messages_are_fragmented_and_reassembled_and_best_effort_loses_only_the_hit_message() {
    let seed = seed_from_env(3);
    for (loss, reliable) in [(0.0, false), (0.02, false), (0.02, true)] {
        let mut config = SimConfig::with_seed(seed);
        config.loss = LossModel::Bernoulli(loss);
        let mut c = Cluster::with_mode(config, &[&[0], &[0], &[]], reliable);
        c.run_for(Duration::from_secs(2));
        let sizes = [1400usize, 1500, 5000, 64_000, 300_000];
        let mut sent = Vec::new();
        for k in 0..40u32 {
            let m = payload(2, k, sizes[k as usize % sizes.len()]);
            sent.push(m.clone());
            c.publish(2, 0, m);
            c.flush(2);
            c.run_for(Duration::from_millis(5));
        }
        c.run_for(Duration::from_secs(1));
        for r in 0..2 {
            let got = delivered_from(&c, r, 2);
            let mut it = sent.iter();
            for (_, m) in &got {
                assert!(
                    it.any(|w| w == m),
                    "receiver {r}: corrupted or reordered message (loss {loss})"
                );
            }
            let s = c.core(r).stats();
            if loss == 0.0 || reliable {
                // Lossless, or every lost fragment repaired: every message, once, in order.
                assert!(
                    got.iter().map(|(_, m)| m).eq(sent.iter()),
                    "receiver {r} (loss {loss})"
                );
                assert_eq!(s.drops.incomplete_message, 0);
            } else {
                // Messages whose every packet was lost are gaps, not incomplete messages.
                assert!(
                    s.drops.incomplete_message > 0,
                    "2% loss over hundreds of fragments"
                );
                assert!(got.len() as u64 + s.drops.incomplete_message <= sent.len() as u64);
            }
        }
    }
}

fn trace_of(seed: u64) -> (u64, u64) {
    let mut config = SimConfig::with_seed(seed);
    config.loss = LossModel::GilbertElliott {
        p_good_to_bad: 0.01,
        p_bad_to_good: 0.3,
        loss_in_good: 0.001,
        loss_in_bad: 0.5,
    };
    config.jitter = Duration::from_micros(50);
    let mut c = Cluster::best_effort(config, &SUBS);
    run_workload(&mut c, 2_000, 100);
    let gaps = (0..SUBS.len()).map(|r| c.core(r).stats().gaps).sum();
    (c.sim.trace_hash(), gaps)
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    let seed = seed_from_env(4);
    let a = trace_of(seed);
    assert_eq!(a, trace_of(seed), "seed {seed} did not replay");
    assert_ne!(a.0, trace_of(seed + 1).0);
}

#[test]
fn a_crashed_publisher_expires_and_its_region_entry_goes() {
    let seed = seed_from_env(5);
    let mut c = Cluster::new(SimConfig::with_seed(seed), &SUBS);
    c.run_for(Duration::from_secs(2));
    assert_eq!(c.core(1).subscribers_of(topic(0)), 3);
    c.sim.crash(c.idx[0]);
    c.run_for(Duration::from_secs(5));
    assert_eq!(c.core(1).peers().count(), 3);
    assert_eq!(
        c.core(1).subscribers_of(topic(0)),
        2,
        "node 0 no longer counted"
    );
}
