//! Reliable delivery under faults, in the deterministic simulator: the QSM ring repairs every
//! loss. Clusters of 3, 8 and 25 receivers (the 25-node region has five partitions), several
//! senders, overlapping topics; Bernoulli loss, bursts, duplication and reordering, lost
//! tokens, a receiver crashing and one joining mid-stream. An oracle checks every delivery the
//! moment it happens (exactly once, in per-sender order, uncorrupted) and every node's
//! invariants (bounded windows and caches) after every event; each run must end with
//! everything delivered, nothing left unacknowledged or cached.
//!
//! `SIM_SEED=<n>` replays a seed; `QS_SWARM=<runs>` runs that many random seeds and
//! configurations (`swarm` test) and prints the command replaying a failure.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{seed_from_env, EventKind, LossModel, NodeIndex, Observation, Sim, SimConfig};
use qs_transport::wire::{self, DataPacket, Fragment, PacketKind};
use qs_transport::{Instant, NodeId, Prng, TopicId};
use quicksilver::core::{CoreConfig, CoreStats, Event, NodeCore};

fn topic(t: usize) -> TopicId {
    TopicId::from_name(&format!("topic-{t}"))
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1),
        9000,
    ))
}

fn id(i: usize) -> NodeId {
    NodeId(100 + i as u64)
}

/// A cluster to run: who subscribes what, who publishes what.
#[derive(Debug, Clone)]
struct Spec {
    /// Topic sets of the receivers (nodes `0..receivers.len()`).
    receivers: Vec<Vec<usize>>,
    /// Topics each sender publishes on, round robin (senders come after the receivers).
    senders: Vec<Vec<usize>>,
    /// Messages per sender.
    messages: u32,
    /// Payload bytes.
    size: usize,
    /// Messages per sender per millisecond.
    per_ms: u32,
}

/// Per (receiver, sender): where the receiver is in the sender's message list.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    next: usize,
    started: bool,
}

struct Oracle {
    topics: Vec<Vec<TopicId>>,
    /// Per sender node: (topic, payload) in publish order.
    sent: BTreeMap<usize, Vec<(TopicId, Bytes)>>,
    cursors: BTreeMap<(usize, usize), Cursor>,
    /// Receivers that joined late: their first delivery may be anywhere.
    late: Vec<usize>,
    /// Receivers allowed to lose messages (isolated slow ones): in order and once, but not
    /// necessarily all.
    lossy: Vec<usize>,
    crashed: Vec<usize>,
    delivered: u64,
    /// Multicast reachability reports seen: (observer, member, reachable).
    reach: Vec<(usize, NodeId, bool)>,
    /// Nodes given another id than `id(index)`.
    renamed: BTreeMap<NodeId, usize>,
}

impl Oracle {
    fn sender_index(&self, id: NodeId) -> usize {
        self.renamed
            .get(&id)
            .copied()
            .unwrap_or((id.0 - 100) as usize)
    }

    /// Checks one delivery against what the sender published.
    fn deliver(&mut self, r: usize, sender: NodeId, t: TopicId, payload: &Bytes, seed: u64) {
        let s = self.sender_index(sender);
        let sent = &self.sent[&s];
        let subscribed = &self.topics[r];
        let cursor = self.cursors.entry((r, s)).or_default();
        let mut at = cursor.next;
        if (!cursor.started && self.late.contains(&r)) || self.lossy.contains(&r) {
            // A late joiner starts somewhere; from then on it must miss nothing.
            at = sent[at..]
                .iter()
                .position(|(_, p)| p == payload)
                .map(|i| at + i)
                .unwrap_or_else(|| panic!("node {r}: unknown message from {s} (seed {seed})"));
        }
        while at < sent.len() && !subscribed.contains(&sent[at].0) {
            at += 1;
        }
        assert!(
            at < sent.len(),
            "node {r}: message from {s} beyond what was sent, a duplicate? (seed {seed})"
        );
        assert!(
            sent[at].0 == t && sent[at].1 == *payload,
            "node {r}: from {s} expected message #{at}, got another: lost, duplicated or \
             reordered (seed {seed})"
        );
        cursor.next = at + 1;
        cursor.started = true;
        self.delivered += 1;
    }

    /// Messages receiver `r` still lacks from sender `s`.
    fn outstanding(&self, r: usize, s: usize) -> usize {
        let sent = &self.sent[&s];
        let from = self.cursors.get(&(r, s)).map_or(0, |c| c.next);
        sent[from..]
            .iter()
            .filter(|(t, _)| self.topics[r].contains(t))
            .count()
    }
}

/// Dropped data packets by (receiver, sender, seq) with the time of the drop, and the
/// loss-to-arrival times measured so far (ns).
type RepairClock = (BTreeMap<(usize, u64, u32), Instant>, Vec<u64>);

struct Run {
    spec: Spec,
    seed: u64,
    /// A receiver whose application takes only this many events per millisecond.
    slow: Option<(usize, usize)>,
    /// Gap events seen (allowed only at lossy receivers).
    gaps: u64,
    /// When set: data packets the network dropped on their way to a receiver, by (receiver,
    /// sender, seq), and how long each took to arrive after all (loss to repair, ns).
    repair_clock: Option<RepairClock>,
    /// Per receiver, datagrams lost in a row so far, and the longest such run seen.
    bursts: (BTreeMap<usize, u32>, u32),
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    oracle: Oracle,
    /// Per sender: the next message number to publish.
    next: BTreeMap<usize, u32>,
    refused: u64,
}

fn core_config(i: usize, seed: u64) -> CoreConfig {
    let SocketAddr::V4(a) = addr(i) else {
        unreachable!()
    };
    let mut c = CoreConfig::new(id(i), a);
    c.seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64;
    // Small windows and queues, so the bounds are exercised.
    c.send_window_packets = 2048;
    c.reorder_window_packets = 4096;
    c.send_queue_bytes = 1 << 20;
    c.cache_max_bytes = 8 << 20;
    c
}

/// (sender, seq) of a data datagram (packed or fragment).
fn data_key(datagram: &Bytes) -> Option<(u64, u32)> {
    let (h, body) = wire::Seal::new().open(datagram).ok()?;
    let body = Bytes::copy_from_slice(body);
    let seq = match h.kind {
        PacketKind::Data => DataPacket::parse(body).ok()?.seq,
        PacketKind::Fragment => Fragment::parse(body).ok()?.seq,
        _ => return None,
    };
    Some((h.sender.0, seq.0))
}

/// The application of node `r` takes up to `n` events.
fn consume(
    oracle: &mut Oracle,
    gaps: &mut u64,
    r: usize,
    node: &mut NodeCore,
    n: usize,
    seed: u64,
) {
    for _ in 0..n {
        let Some(e) = node.poll_event() else { return };
        match e {
            Event::Delivered(d) => oracle.deliver(r, d.sender, d.topic, &d.payload, seed),
            Event::Gap { sender, missed, .. } => {
                assert!(
                    oracle.lossy.contains(&r),
                    "node {r}: {missed} packets of {sender:?} given up (seed {seed})"
                );
                *gaps += u64::from(missed);
            }
            Event::MulticastUnreachable { member, .. } => oracle.reach.push((r, member, false)),
            Event::MulticastReachable { member, .. } => oracle.reach.push((r, member, true)),
            _ => {}
        }
    }
}

fn payload(sender: usize, k: u32, size: usize) -> Bytes {
    let mut v = vec![(sender as u8).wrapping_mul(31).wrapping_add(k as u8); size.max(8)];
    v[..4].copy_from_slice(&k.to_be_bytes());
    v[4..8].copy_from_slice(&(sender as u32).to_be_bytes());
    Bytes::from(v)
}

impl Run {
    fn new(spec: Spec, config: SimConfig) -> Run {
        Run::with(spec, config, |_| {})
    }

    /// Like [`Run::new`], with every node's configuration adjusted by `tweak`.
    fn with(spec: Spec, config: SimConfig, tweak: impl Fn(&mut CoreConfig)) -> Run {
        let seed = config.seed;
        let node_config = |i| {
            let mut c = core_config(i, seed);
            tweak(&mut c);
            c
        };
        let mut sim = Sim::new(config);
        let mut idx = Vec::new();
        let mut topics = Vec::new();
        for (i, subs) in spec.receivers.iter().enumerate() {
            let mut n = NodeCore::new(node_config(i), Instant::ZERO);
            n.subscribe_all(Instant::ZERO, subs.iter().map(|t| topic(*t)));
            topics.push(subs.iter().map(|t| topic(*t)).collect());
            idx.push(sim.add_node(addr(i), n));
        }
        let mut sent = BTreeMap::new();
        let mut next = BTreeMap::new();
        for k in 0..spec.senders.len() {
            let i = spec.receivers.len() + k;
            idx.push(sim.add_node(addr(i), NodeCore::new(node_config(i), Instant::ZERO)));
            topics.push(Vec::new());
            sent.insert(i, Vec::new());
            next.insert(i, 0);
        }
        Run {
            spec,
            seed,
            slow: None,
            gaps: 0,
            repair_clock: None,
            bursts: (BTreeMap::new(), 0),
            sim,
            idx,
            oracle: Oracle {
                topics,
                sent,
                cursors: BTreeMap::new(),
                late: Vec::new(),
                lossy: Vec::new(),
                crashed: Vec::new(),
                delivered: 0,
                reach: Vec::new(),
                renamed: BTreeMap::new(),
            },
            next,
            refused: 0,
        }
    }

    fn run_for(&mut self, d: Duration) {
        let (oracle, seed, slow) = (&mut self.oracle, self.seed, self.slow);
        let gaps = &mut self.gaps;
        let clock = &mut self.repair_clock;
        let (runs, longest) = &mut self.bursts;
        let t = self.sim.now() + d;
        self.sim
            .run_until(t, &mut |o: &mut Observation<'_, NodeCore>| {
                let r = o.index.0;
                match &o.event {
                    EventKind::Dropped { reason, .. } if reason.is_network_drop() => {
                        let n = runs.entry(r).or_default();
                        *n += 1;
                        *longest = (*longest).max(*n);
                    }
                    EventKind::Delivered { .. } => {
                        runs.insert(r, 0);
                    }
                    _ => {}
                }
                if let Some((lost, samples)) = clock.as_mut() {
                    match &o.event {
                        EventKind::Dropped { datagram, .. } => {
                            if let Some(k) = data_key(datagram) {
                                lost.entry((r, k.0, k.1)).or_insert(o.now);
                            }
                        }
                        EventKind::Delivered { datagram, .. } => {
                            if let Some(k) = data_key(datagram) {
                                if let Some(t) = lost.remove(&(r, k.0, k.1)) {
                                    samples
                                        .push(o.now.saturating_duration_since(t).as_nanos() as u64);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if matches!(o.event, EventKind::Dropped { .. }) {
                    return;
                }
                o.node.check_invariants();
                if slow.is_some_and(|(s, _)| s == r) {
                    return; // Its application reads at its own pace (`consume`).
                }
                consume(oracle, gaps, r, o.node, usize::MAX, seed);
            });
        if let Some((r, per_ms)) = self.slow {
            let n = (d.as_micros() as usize * per_ms / 1000).max(1);
            let node = self.sim.node_mut(self.idx[r]);
            consume(&mut self.oracle, &mut self.gaps, r, node, n, self.seed);
        }
    }

    /// Publishes one millisecond's worth per sender (as much as back-pressure allows).
    fn publish_tick(&mut self) -> bool {
        let mut more = false;
        for k in 0..self.spec.senders.len() {
            let i = self.spec.receivers.len() + k;
            let topics = &self.spec.senders[k];
            for _ in 0..self.spec.per_ms {
                let n = self.next[&i];
                if n >= self.spec.messages {
                    break;
                }
                let t = topic(topics[n as usize % topics.len()]);
                let m = payload(i, n, self.spec.size);
                let core = self.sim.node_mut(self.idx[i]);
                if core.publish(t, m.clone()).is_err() {
                    self.refused += 1;
                    break;
                }
                self.oracle.sent.get_mut(&i).expect("sender").push((t, m));
                *self.next.get_mut(&i).expect("sender") += 1;
            }
            more |= self.next[&i] < self.spec.messages;
            self.sim.poke(self.idx[i]);
        }
        more
    }

    fn live_receivers(&self) -> Vec<usize> {
        (0..self.oracle.topics.len())
            .filter(|r| !self.oracle.topics[*r].is_empty() && !self.oracle.crashed.contains(r))
            .collect()
    }

    fn outstanding(&self) -> usize {
        let senders: Vec<usize> = self.oracle.sent.keys().copied().collect();
        self.live_receivers()
            .iter()
            .filter(|r| !self.oracle.lossy.contains(r))
            .flat_map(|r| senders.iter().map(move |s| (*r, *s)))
            .map(|(r, s)| self.oracle.outstanding(r, s))
            .sum()
    }

    /// Discovery, the whole workload, then until everything is delivered (or a deadline).
    fn run(&mut self, mut during: impl FnMut(&mut Run, u32)) {
        self.run_for(Duration::from_millis(1500));
        let mut ms = 0;
        while self.publish_tick() {
            during(self, ms);
            self.run_for(Duration::from_millis(1));
            ms += 1;
            assert!(
                ms < 120_000,
                "publishing never finished (seed {})",
                self.seed
            );
        }
        let deadline = self.sim.now() + Duration::from_secs(30);
        let mut last = u64::MAX;
        while (self.outstanding() > 0 || last != self.oracle.delivered) && self.sim.now() < deadline
        {
            // Until everything is delivered and (slow or lossy receivers) nothing more comes.
            last = self.oracle.delivered;
            self.run_for(Duration::from_millis(100));
        }
        assert_eq!(
            self.outstanding(),
            0,
            "messages never delivered (seed {}); SIM_SEED={} replays",
            self.seed,
            self.seed
        );
        // Quiescence: once discovery has expired crashed members (3 s), an idle round
        // acknowledges and cleans everything up.
        self.run_for(Duration::from_secs(4));
        for r in self.live_nodes() {
            let s = self.stats(r);
            assert_eq!(
                s.unacked_packets, 0,
                "node {r} still holds unacknowledged packets (seed {})",
                self.seed
            );
            assert_eq!(
                s.cached_packets, 0,
                "node {r} still caches packets (seed {})",
                self.seed
            );
            if !self.oracle.lossy.contains(&r) {
                assert_eq!(s.gaps, 0);
            }
        }
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.idx.len())
            .filter(|i| !self.oracle.crashed.contains(i))
            .collect()
    }

    fn stats(&self, i: usize) -> CoreStats {
        self.sim.node(self.idx[i]).stats()
    }

    /// Figures of the run, printed for the notes.
    fn report(&self, name: &str) {
        let nodes = self.live_nodes();
        let sum =
            |f: &dyn Fn(&CoreStats) -> u64| nodes.iter().map(|i| f(&self.stats(*i))).sum::<u64>();
        let data = sum(&|s| s.data_bytes_sent);
        let control = sum(&|s| s.control_bytes_sent);
        let peak_cache = nodes
            .iter()
            .map(|i| self.stats(*i).cached_bytes_peak)
            .max()
            .unwrap_or(0);
        let peak_unacked = nodes
            .iter()
            .map(|i| self.stats(*i).unacked_bytes_peak)
            .max()
            .unwrap_or(0);
        let stream: u64 = data;
        println!(
            "{name}: {} deliveries; data {data} B, control+repair {control} B ({:.2}% of data); \
             served {} retransmitted {} requests {}; rounds {} regenerated {} hop retransmits {}; \
             peak cache {peak_cache} B ({:.1}% of the stream), peak unacked {peak_unacked} B; publish refusals {}",
            self.oracle.delivered,
            100.0 * control as f64 / data.max(1) as f64,
            sum(&|s| s.repairs_served),
            sum(&|s| s.retransmitted),
            sum(&|s| s.requests_received),
            sum(&|s| s.ring.rounds_completed),
            sum(&|s| s.ring.rounds_regenerated),
            sum(&|s| s.ring.hop_retransmits),
            100.0 * peak_cache as f64 / stream.max(1) as f64,
            self.refused,
        );
    }
}

/// `n` receivers: all subscribe topics 0 and 1 (one region), and every third also topic 2
/// (a second region); three senders on 0, 1 and {1, 2}.
fn spec(n: usize, messages: u32) -> Spec {
    Spec {
        receivers: (0..n)
            .map(|i| {
                if i % 3 == 2 {
                    vec![0, 1, 2]
                } else {
                    vec![0, 1]
                }
            })
            .collect(),
        senders: vec![vec![0], vec![1], vec![1, 2]],
        messages,
        size: 100,
        per_ms: 20,
    }
}

fn lossy(seed: u64, loss: f64) -> SimConfig {
    SimConfig {
        loss: LossModel::Bernoulli(loss),
        ..SimConfig::with_seed(seed)
    }
}

#[test]
fn three_receivers_one_percent_loss_deliver_everything_exactly_once() {
    let seed = seed_from_env(11);
    let mut run = Run::new(spec(3, 5_000), lossy(seed, 0.01));
    run.run(|_, _| {});
    run.report("3 receivers, 1% loss");
}

#[test]
fn eight_receivers_five_percent_loss_deliver_everything_exactly_once() {
    let seed = seed_from_env(12);
    let mut run = Run::new(spec(8, 5_000), lossy(seed, 0.05));
    run.run(|_, _| {});
    run.report("8 receivers, 5% loss");
}

#[test]
fn twenty_five_receivers_in_five_partitions_recover_from_loss() {
    let seed = seed_from_env(13);
    let mut s = spec(25, 3_000);
    // One region of 25 (five partitions of five) and nothing else.
    s.receivers = vec![vec![0, 1]; 25];
    s.senders = vec![vec![0], vec![1], vec![0, 1]];
    let mut run = Run::new(s, lossy(seed, 0.02));
    run.run(|_, _| {});
    let leader = run.sim.node(run.idx[0]);
    let ring = leader.ring().expect("reliable nodes run a ring");
    assert_eq!(ring.view().partitions(), 5);
    assert!(ring.stats().rounds_completed > 0);
    // Repairs came from peers (caretakers), not from the senders.
    let served: u64 = (0..25).map(|r| run.stats(r).repairs_served).sum();
    let resent: u64 = (25..28)
        .map(|s| run.stats(s).retransmitted + run.stats(s).repairs_served)
        .sum();
    assert!(
        served > 10 * resent.max(1),
        "peers served {served}, senders {resent}"
    );
    run.report("25 receivers (5 partitions), 2% loss");
}

#[test]
fn bursts_of_up_to_twenty_packets_are_repaired() {
    let seed = seed_from_env(14);
    let config = SimConfig {
        // Bursts: once bad, a receiver loses everything for ~7 datagrams on average; the test
        // checks that runs of 20 and more happened.
        loss: LossModel::GilbertElliott {
            p_good_to_bad: 0.005,
            p_bad_to_good: 0.15,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        },
        ..SimConfig::with_seed(seed)
    };
    let mut run = Run::new(spec(8, 5_000), config);
    run.run(|_, _| {});
    run.report("8 receivers, bursts");
    let longest = run.bursts.1;
    println!("longest run of datagrams lost in a row at one receiver: {longest}");
    assert!(longest >= 20, "the bursts reached 20 in a row ({longest})");
}

#[test]
fn duplication_and_reordering_with_loss_deliver_exactly_once_in_order() {
    let seed = seed_from_env(15);
    let config = SimConfig {
        loss: LossModel::Bernoulli(0.01),
        jitter: Duration::from_millis(2),
        duplicate: 0.03,
        ..SimConfig::with_seed(seed)
    };
    let mut run = Run::new(spec(8, 5_000), config);
    run.run(|_, _| {});
    let stale: u64 = (0..8).map(|r| run.stats(r).drops.stale).sum();
    assert!(stale > 0, "duplicates were injected");
    run.report("8 receivers, 1% loss + 2 ms jitter + 3% duplicates");
}

#[test]
fn lost_tokens_and_acknowledgements_are_regenerated() {
    let seed = seed_from_env(16);
    let config = SimConfig {
        loss: LossModel::Bernoulli(0.01),
        unicast_control_loss: 0.2,
        ..SimConfig::with_seed(seed)
    };
    let mut run = Run::new(spec(8, 5_000), config);
    run.run(|_, _| {});
    let retransmits: u64 = (0..8).map(|r| run.stats(r).ring.hop_retransmits).sum();
    assert!(retransmits > 0, "20% of tokens were dropped");
    run.report("8 receivers, 1% loss, 20% of unicast control lost");
}

#[test]
fn a_receiver_crash_and_a_late_joiner_do_not_cost_survivors_anything() {
    let seed = seed_from_env(17);
    let mut s = spec(8, 6_000);
    s.per_ms = 10;
    let mut run = Run::new(s, lossy(seed, 0.01));
    let joiner = run.idx.len();
    run.run(|run, ms| {
        if ms == 100 {
            // Receiver 3 (in the big region) crashes mid-stream.
            run.sim.crash(run.idx[3]);
            run.oracle.crashed.push(3);
        }
        if ms == 200 {
            // A new receiver joins the same region mid-stream.
            let mut n = NodeCore::new(core_config(joiner, run.seed), run.sim.now());
            n.subscribe_all(run.sim.now(), [topic(0), topic(1)]);
            run.idx.push(run.sim.add_node(addr(joiner), n));
            run.oracle.topics.push(vec![topic(0), topic(1)]);
            run.oracle.late.push(joiner);
        }
    });
    // The joiner got a contiguous suffix of each stream (checked by the oracle) reaching back
    // at least to what was published a second after it joined.
    for s in [8usize, 9, 10] {
        let c = run
            .oracle
            .cursors
            .get(&(joiner, s))
            .copied()
            .unwrap_or_default();
        assert!(c.started, "the joiner heard from sender {s}");
    }
    run.report("8 receivers, 1% loss, one crash, one joiner");
}

/// One receiver's application reads 25 messages per millisecond while three senders
/// publish 150 each per millisecond (1,000-byte messages) and the others keep up. Returns (milliseconds the senders took to publish everything,
/// messages the slow receiver lost, its isolations).
fn slow_receiver_run(isolate: bool) -> (u32, u64, u64) {
    let seed = seed_from_env(18);
    let mut s = spec(5, 10_000);
    s.receivers = vec![vec![0, 1]; 5];
    s.per_ms = 150;
    s.size = 1000;
    let mut config = lossy(seed, 0.01);
    config.latency = Duration::from_micros(50);
    let mut run = Run::with(s, config, |c| {
        // Small windows, so that buffering cannot hide the slow application.
        c.max_pending_events = 500;
        c.reorder_window_packets = 2048;
        c.send_window_packets = 1024;
        c.send_queue_bytes = 256 << 10;
        c.ring.slow_lag = 512;
        c.ring.slow_after = Duration::from_millis(100);
        c.ring.isolate_slow = isolate;
    });
    run.slow = Some((4, 25));
    if isolate {
        run.oracle.lossy.push(4);
    }
    let mut took = 0;
    run.run(|_, ms| {
        took = ms;
    });
    let isolations = run.stats(4).ring.isolations;
    let senders = 5..run.idx.len();
    println!(
        "slow receiver, isolate={isolate}: publishing took {took} ms; slow node lost {} packets, \
         isolated itself {isolations} times, refused {} packets beyond its window; leaders \
         reported {} slow receivers; senders paced {} times",
        run.gaps,
        run.stats(4).drops.beyond_window,
        (0..5).map(|r| run.stats(r).slow_receivers).sum::<u64>(),
        senders.map(|s| run.stats(s).pacing_engaged).sum::<u64>(),
    );
    (took, run.gaps, isolations)
}

#[test]
fn a_slow_receiver_slows_the_senders_by_default_and_is_isolated_by_choice() {
    let (reliable_ms, lost, isolations) = slow_receiver_run(false);
    assert_eq!(
        (lost, isolations),
        (0, 0),
        "the default policy loses nothing"
    );
    let (isolated_ms, lost, isolations) = slow_receiver_run(true);
    assert!(isolations > 0, "the slow receiver isolated itself");
    assert!(
        lost > 0,
        "an isolated receiver loses what it cannot keep up with"
    );
    assert!(
        isolated_ms * 2 < reliable_ms,
        "isolation frees the others: {isolated_ms} ms vs {reliable_ms} ms"
    );
}

/// A sender that leaves (gracefully, after its regions acknowledged everything) while a
/// receiver's application is still behind must not take the undelivered messages with it.
#[test]
fn a_departing_sender_leaves_its_messages_with_a_slow_application() {
    let seed = seed_from_env(20);
    let mut s = spec(3, 6_000);
    s.receivers = vec![vec![0, 1]; 3];
    s.size = 500;
    s.per_ms = 100;
    let mut run = Run::with(s, lossy(seed, 0.01), |c| c.max_pending_events = 500);
    run.slow = Some((2, 10));
    run.run_for(Duration::from_millis(1500));
    while run.publish_tick() {
        run.run_for(Duration::from_millis(1));
    }
    // Each sender waits for its acknowledgements (like `Node::flush`), then leaves.
    let deadline = run.sim.now() + Duration::from_secs(30);
    while (3..6).any(|i| !run.sim.node(run.idx[i]).is_idle()) && run.sim.now() < deadline {
        run.run_for(Duration::from_millis(10));
    }
    let behind = run.outstanding();
    assert!(
        behind > 1_000,
        "the slow application is still behind ({behind})"
    );
    for i in 3..6 {
        let now = run.sim.now();
        run.sim.node_mut(run.idx[i]).leave(now);
        run.sim.poke(run.idx[i]);
    }
    run.run_for(Duration::from_secs(1));
    for i in 3..6 {
        run.sim.crash(run.idx[i]);
        run.oracle.crashed.push(i);
    }
    while run.outstanding() > 0 && run.sim.now() < deadline {
        run.run_for(Duration::from_millis(100));
    }
    assert_eq!(
        run.outstanding(),
        0,
        "messages lost with their sender (seed {seed})"
    );
    assert_eq!(run.gaps, 0);
}

/// A member whose multicast path is broken (unicast still works) is reported by gossip as not
/// hearing its region; senders then copy the region's data to it by unicast, and stop once the
/// path works again. Nothing is lost either way.
#[test]
fn a_member_deaf_to_multicast_is_served_by_unicast_until_its_path_heals() {
    let seed = seed_from_env(21);
    let s = Spec {
        receivers: vec![vec![0]; 4],
        senders: vec![vec![0]],
        messages: 36_000,
        size: 200,
        per_ms: 4,
    };
    let mut run = Run::new(s, SimConfig::with_seed(seed));
    let deaf = 2;
    run.sim.set_multicast_deaf(run.idx[deaf], true);
    let mut copies_while_deaf = 0;
    let mut copies_at_heal = 0;
    run.run(|run, ms| {
        if ms == 5_000 {
            copies_while_deaf = run.stats(4).unicast_copies_sent;
            run.sim.set_multicast_deaf(run.idx[deaf], false);
        }
        if ms == 8_000 {
            copies_at_heal = run.stats(4).unicast_copies_sent;
        }
    });
    let copies_end = run.stats(4).unicast_copies_sent;
    let id = NodeId(100 + deaf as u64);
    let sender_saw = |reachable| run.oracle.reach.contains(&(4, id, reachable));
    println!(
        "deaf member: unicast copies {copies_while_deaf} while deaf, {} more until 3 s after the \
         heal, {} after; reports {:?}",
        copies_at_heal - copies_while_deaf,
        copies_end - copies_at_heal,
        run.oracle.reach
    );
    assert!(
        sender_saw(false),
        "the sender learned the member does not hear the region"
    );
    assert!(
        copies_while_deaf > 1_000,
        "the sender copied the data to it by unicast"
    );
    assert!(sender_saw(true), "the sender learned the path healed");
    assert_eq!(
        copies_end, copies_at_heal,
        "no copies once the path works again"
    );
    assert!(
        run.oracle.reach.iter().all(|(_, m, _)| *m == id),
        "nobody else was reported"
    );
}

/// The region leader (lowest id) is itself a sender into its own region: its stream needs
/// rounds, acknowledgements and repairs like any other (well past the send window).
#[test]
fn a_leader_publishing_into_its_own_region_is_acknowledged_and_repaired() {
    let seed = seed_from_env(22);
    let s = Spec {
        receivers: vec![vec![0]; 4],
        senders: vec![vec![0]],
        messages: 8_000,
        size: 1000,
        per_ms: 20,
    };
    let mut run = Run::new(s, lossy(seed, 0.01));
    // The sender (index 4) gets the lowest id and subscribes too: it leads the region.
    let SocketAddr::V4(a) = addr(4) else {
        unreachable!()
    };
    let mut c = CoreConfig::new(NodeId(50), a);
    c.seed = seed;
    c.send_window_packets = 2048;
    c.reorder_window_packets = 4096;
    c.send_queue_bytes = 1 << 20;
    let mut leader = NodeCore::new(c, Instant::ZERO);
    leader.subscribe(Instant::ZERO, topic(0));
    *run.sim.node_mut(run.idx[4]) = leader;
    run.oracle.renamed.insert(NodeId(50), 4);
    run.oracle.topics[4] = vec![topic(0)];
    run.run(|_, _| {});
    let ring = run.sim.node(run.idx[4]).ring().expect("ring");
    assert_eq!(ring.view().leader(), Some(NodeId(50)));
    assert!(
        run.stats(4).acked_packets >= 8_000,
        "its own stream was acknowledged"
    );
}

/// No multicast at all (every node deaf to it, so no announcement arrives): nodes given one
/// seed address still form the cluster by gossip, and learn every member and region from
/// gossip's membership and subscription records.
#[test]
fn without_multicast_announcements_gossip_seeds_build_the_cluster_map() {
    let seed = seed_from_env(23);
    let mut sim: Sim<NodeCore> = Sim::new(SimConfig::with_seed(seed));
    let mut idx = Vec::new();
    for i in 0..6 {
        let mut c = core_config(i, seed);
        c.gossip_seeds = vec![addr(0)];
        let mut n = NodeCore::new(c, Instant::ZERO);
        n.subscribe(Instant::ZERO, topic(i % 2));
        idx.push(sim.add_node(addr(i), n));
        sim.set_multicast_deaf(idx[i], true);
    }
    sim.run_for(Duration::from_secs(5), &mut |o: &mut Observation<
        '_,
        NodeCore,
    >| {
        o.node.check_invariants();
    });
    for (i, x) in idx.iter().enumerate() {
        let n = sim.node(*x);
        assert_eq!(n.peers().count(), 0, "node {i}: no announcement arrived");
        let map = n.cluster_map();
        let alive = map
            .members
            .iter()
            .filter(|m| m.status == Some(qs_gossip::Status::Alive))
            .count();
        assert_eq!(alive, 6, "node {i} knows every member alive by gossip");
        let mut sizes: Vec<usize> = map.regions.iter().map(|r| r.members.len()).collect();
        sizes.sort_unstable();
        assert_eq!(
            sizes,
            vec![3, 3],
            "node {i} derived both regions from gossip"
        );
        assert_eq!(n.ring().map(|r| r.view().members().len()), Some(3));
    }
}

/// Figures for the notes: caretaker memory against the sender's window as regions grow (one
/// sender, one region of N, 1% loss), and the time from a loss to its repair.
#[test]
fn caretaker_memory_shrinks_with_partitions_and_repairs_come_within_rounds() {
    let seed = seed_from_env(19);
    let mut ratios = Vec::new();
    for n in [5usize, 10, 25, 50] {
        let s = Spec {
            receivers: vec![vec![0]; n],
            senders: vec![vec![0]],
            messages: 4_000,
            size: 1000,
            per_ms: 20,
        };
        let mut run = Run::new(s, lossy(seed, 0.01));
        run.repair_clock = Some((BTreeMap::new(), Vec::new()));
        let (mut cache, mut unacked, mut samples) = (0u64, 0u64, 0u64);
        run.run(|run, _| {
            samples += 1;
            cache += (0..n).map(|r| run.stats(r).cached_bytes).sum::<u64>() / n as u64;
            unacked += run.stats(n).unacked_packets * 1000;
        });
        let partitions = run
            .sim
            .node(run.idx[0])
            .ring()
            .map_or(0, |r| r.view().partitions());
        let (_, mut lat) = run.repair_clock.take().expect("clock");
        lat.sort_unstable();
        let pct = |q: f64| {
            lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1e6
        };
        let ratio = cache as f64 / unacked.max(1) as f64;
        println!(
            "N={n:>2} P={partitions}: mean caretaker cache per receiver {:.0} KB, sender window \
             {:.0} KB, ratio {ratio:.2} (5/N = {:.2}); loss to repair p50 {:.1} ms p99 {:.1} ms \
             over {} repairs",
            cache as f64 / samples.max(1) as f64 / 1e3,
            unacked as f64 / samples.max(1) as f64 / 1e3,
            5.0 / n as f64,
            pct(0.5),
            pct(0.99),
            lat.len()
        );
        assert_eq!(partitions, (n / 5).max(1));
        assert!(
            pct(0.99) < 50.0,
            "repairs take a few rounds, not more (N={n})"
        );
        ratios.push(ratio);
    }
    assert!(
        ratios[3] * 4.0 < ratios[0],
        "caretaker memory per receiver must shrink with the partitions: {ratios:?}"
    );
}

#[test]
fn swarm() {
    let Ok(runs) = std::env::var("QS_SWARM") else {
        eprintln!("swarm: set QS_SWARM=<runs> to run random seeds");
        return;
    };
    let runs: u64 = runs.parse().expect("QS_SWARM is a number");
    let base = seed_from_env(1000);
    for k in 0..runs {
        let seed = base + k;
        let mut prng = Prng::new(seed);
        let n = [3usize, 5, 8, 12, 25][prng.below(5) as usize];
        let config = SimConfig {
            loss: match prng.below(3) {
                0 => LossModel::Bernoulli(prng.unit() * 0.08),
                1 => LossModel::GilbertElliott {
                    p_good_to_bad: 0.01 * prng.unit(),
                    p_bad_to_good: 0.1 + 0.4 * prng.unit(),
                    loss_in_good: 0.0,
                    loss_in_bad: 1.0,
                },
                _ => LossModel::None,
            },
            jitter: Duration::from_micros(prng.below(2000)),
            duplicate: prng.unit() * 0.05,
            unicast_control_loss: prng.unit() * 0.2,
            ..SimConfig::with_seed(seed)
        };
        // Sometimes a receiver crashes mid-stream.
        let crash = prng
            .chance(0.3)
            .then(|| (prng.below(n as u64) as usize, prng.below(100) as u32));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut run = Run::new(spec(n, 2_000), config.clone());
            run.run(|run, ms| {
                if let Some((victim, at)) = crash {
                    if ms == at {
                        run.sim.crash(run.idx[victim]);
                        run.oracle.crashed.push(victim);
                    }
                }
            });
        }));
        eprintln!("swarm run {k}: seed {seed}, {n} receivers, crash {crash:?}, {config:?}");
        if result.is_err() {
            panic!(
                "swarm failed at seed {seed}; replay: QS_SWARM=1 SIM_SEED={seed} cargo test \
                 --release --test sim_recovery swarm -- --nocapture"
            );
        }
    }
}
