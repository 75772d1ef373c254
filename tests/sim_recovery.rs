//! Reliable delivery under faults, in the deterministic simulator: the QSM ring repairs every
//! loss. Clusters of 3, 8 and 25 receivers (the 25-node region has five partitions), several
//! senders, overlapping topics; Bernoulli loss, bursts, duplication and reordering, bit
//! flips, lost tokens, a receiver crashing and one joining mid-stream, slow and stopped
//! applications. An oracle checks every delivery the moment it happens (exactly once, in
//! per-sender order, uncorrupted) and every node's invariants (bounded windows and caches)
//! after every event; each run must end with everything delivered, nothing left
//! unacknowledged or cached. The network is watched too: recovery traffic per copy (repairs,
//! tokens, other control) against the lost data, and each stream's acknowledgement stalls in
//! virtual time. Thresholds (send window, slow-receiver lag and time) are tested on both
//! sides.
//!
//! `SIM_SEED=<n>` replays a seed; the `swarm` test runs 20 random seeds and configurations,
//! `QS_SWARM=<runs>` as many as asked, and prints the command replaying a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_recovery::{RingConfig, RingStats};
use qs_sim::{
    replay_hint, seed_from_env, EventKind, LossModel, NodeIndex, Observation, Sim, SimConfig,
};
use qs_transport::wire::{self, DataPacket, Fragment, PacketKind, SenderAck};
use qs_transport::{Instant, NodeId, Prng, RegionId, Seq, TopicId, TrafficClass};
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
    /// When not empty: message `n` of a sender has `sizes[n % sizes.len()]` payload bytes
    /// instead of `size` (mixes packed and fragmented messages).
    sizes: Vec<usize>,
    /// Messages per sender per millisecond.
    per_ms: u32,
}

/// Per (receiver, sender): where the receiver is in the sender's message list.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    next: usize,
    started: bool,
    /// The first message delivered (late joiners start anywhere).
    first: Option<usize>,
}

struct Oracle {
    topics: Vec<Vec<TopicId>>,
    /// Per sender node: (topic, payload) in publish order.
    sent: BTreeMap<usize, Vec<(TopicId, Bytes)>>,
    /// Per sender node: when each message was published (virtual time).
    sent_at: BTreeMap<usize, Vec<Instant>>,
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
    /// Virtual time of the event being observed.
    now: Instant,
    /// When each node first heard that a peer is down: (observer, peer).
    downs: BTreeMap<(usize, NodeId), Instant>,
    /// Per receiver, a topic it drops or adds mid-stream (left out of `topics`): its messages
    /// are checked only for order and duplicates (around the change either side may own a
    /// message), while every topic the receiver keeps must still arrive whole.
    changing: BTreeMap<usize, TopicId>,
    /// Per (receiver, sender): the next index to search from for the changing topic.
    changing_next: BTreeMap<(usize, usize), usize>,
    /// Senders that crashed: what they published may end anywhere (the survivors of a region
    /// must agree, `Oracle::got`), gaps in their streams are allowed and counted.
    lost_senders: Vec<usize>,
    /// Per (receiver, sender): the indices it delivered, and the packets reported lost (only
    /// crashed senders' streams may have any).
    got: BTreeMap<(usize, usize), (Vec<usize>, u64)>,
    /// Senders restarted with the same id (a new incarnation): the index of the first message
    /// the new incarnation published. The old one's messages may end anywhere (in order, once;
    /// what is missing reported as gaps); every message of the new one must arrive.
    restarted: BTreeMap<usize, usize>,
    /// Per (receiver, sender): the `SenderLost` events seen, as (delivered, missed).
    ended: BTreeMap<(usize, usize), Vec<(u64, u64)>>,
    /// Slow-receiver reports seen: (observer, lagging member, lag).
    slow_reports: Vec<(usize, NodeId, u32)>,
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
        if self.changing.get(&r) == Some(&t) {
            let from = self.changing_next.entry((r, s)).or_default();
            let at = sent[*from..]
                .iter()
                .position(|(st, p)| *st == t && p == payload)
                .map(|i| *from + i)
                .unwrap_or_else(|| {
                    panic!(
                        "node {r}: a message of its changing topic {t:?} from {s} duplicated, \
                         reordered or unknown (seed {seed})"
                    )
                });
            *from = at + 1;
            self.delivered += 1;
            return;
        }
        let subscribed = &self.topics[r];
        let cursor = self.cursors.entry((r, s)).or_default();
        let mut at = cursor.next;
        let lost_sender = self.lost_senders.contains(&s);
        let restarted_at = self.restarted.get(&s).copied();
        let old_incarnation = restarted_at.is_some_and(|from| cursor.next < from);
        if (!cursor.started && self.late.contains(&r))
            || self.lossy.contains(&r)
            || lost_sender
            || old_incarnation
        {
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
        if let Some(from) = restarted_at.filter(|from| at >= *from) {
            // The old incarnation may end anywhere; the new one starts at its first message.
            let skipped = sent[cursor.next.max(from)..at]
                .iter()
                .filter(|(t, _)| subscribed.contains(t))
                .count();
            assert_eq!(
                skipped, 0,
                "node {r}: the restarted sender {s}'s new stream lost messages before #{at} \
                 (seed {seed})"
            );
        }
        cursor.next = at + 1;
        cursor.started = true;
        cursor.first.get_or_insert(at);
        self.delivered += 1;
        self.got.entry((r, s)).or_default().0.push(at);
    }

    /// Messages receiver `r` still lacks from sender `s`.
    fn outstanding(&self, r: usize, s: usize) -> usize {
        if self.lost_senders.contains(&s) {
            return 0; // Whatever it ends with: `Oracle::got` is checked afterwards.
        }
        let sent = &self.sent[&s];
        let from = self.cursors.get(&(r, s)).map_or(0, |c| c.next);
        let from = from.max(self.restarted.get(&s).copied().unwrap_or(0));
        sent[from..]
            .iter()
            .filter(|(t, _)| self.topics[r].contains(t))
            .count()
    }
}

/// Recovery traffic as the network carried it: every copy of a datagram that reached another
/// node or was lost on its way there (multicast loopback to the sender excluded), by kind.
/// Copies are what a storm costs: a re-multicast to a region of eight counts eight times.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    /// First transmissions of data (data class): bytes and packets on their way to receivers.
    data_bytes: u64,
    data_packets: u64,
    /// Of those, what the network lost.
    lost_bytes: u64,
    lost_packets: u64,
    /// Repairs: peers' answers and senders' re-multicasts.
    repair_bytes: u64,
    repair_packets: u64,
    /// Tokens and their hop acknowledgements.
    token_bytes: u64,
    /// Repair requests, sender acknowledgements and stream states.
    other_control_bytes: u64,
}

impl Traffic {
    fn count(&mut self, datagram: &Bytes, class: TrafficClass, lost: bool) {
        let Ok(h) = wire::Header::peek(datagram) else {
            return;
        };
        let n = datagram.len() as u64;
        match (h.kind, class) {
            (PacketKind::Data | PacketKind::Fragment, TrafficClass::Data) => {
                self.data_bytes += n;
                self.data_packets += 1;
                if lost {
                    self.lost_bytes += n;
                    self.lost_packets += 1;
                }
            }
            (_, TrafficClass::Repair) => {
                self.repair_bytes += n;
                self.repair_packets += 1;
            }
            (PacketKind::Token | PacketKind::TokenAck, _) => self.token_bytes += n,
            (PacketKind::RepairRequest | PacketKind::SenderAck | PacketKind::StreamState, _) => {
                self.other_control_bytes += n
            }
            // Discovery and gossip: the membership plane, paid with or without loss.
            _ => {}
        }
    }

    /// Control and repair bytes of the recovery protocol, tokens included.
    fn control_and_repair(&self) -> u64 {
        self.repair_bytes + self.token_bytes + self.other_control_bytes
    }
}

/// Per stream (sender, region), watched on the network: the highest packet sent and the
/// stability point the region leader last acknowledged to the sender; a stall is an interval
/// (virtual time) in which the acknowledged point stands still while packets after it exist.
#[derive(Debug, Default)]
struct Stalls {
    /// (highest sent, acknowledged, stalled since).
    streams: BTreeMap<(NodeId, RegionId), (u32, u32, Option<Instant>)>,
    longest: Duration,
}

impl Stalls {
    /// A datagram `to` received at `now`.
    fn observe(&mut self, to: NodeId, now: Instant, datagram: &Bytes) {
        let Ok((h, body)) = wire::Seal::new().open(datagram) else {
            return;
        };
        let (key, sent, acked) = match h.kind {
            PacketKind::Data | PacketKind::Fragment => match data_id(datagram) {
                Some((s, region, seq)) => ((s, region), Some(seq.0), None),
                None => return,
            },
            PacketKind::SenderAck => match SenderAck::parse(body) {
                Ok(ack) => ((to, ack.region), None, Some(ack.stable.0)),
                Err(_) => return,
            },
            _ => return,
        };
        let (highest, stable, since) = self.streams.entry(key).or_default();
        if let Some(q) = sent {
            *highest = (*highest).max(q);
        }
        if let Some(a) = acked.filter(|a| *a > *stable) {
            if let Some(t) = since.take() {
                self.longest = self.longest.max(now.saturating_duration_since(t));
            }
            *stable = a;
        }
        if *highest > *stable && since.is_none() {
            *since = Some(now);
        }
    }

    /// The longest stall, counting those still open at `now`.
    fn longest(&self, now: Instant) -> Duration {
        let open = self.streams.values().filter_map(|(_, _, t)| *t);
        open.map(|t| now.saturating_duration_since(t))
            .fold(self.longest, Duration::max)
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
    /// A receiver whose application reads nothing while this is set.
    stopped: Option<usize>,
    /// When set: per node, the most packets it held unacknowledged at any time.
    unacked_peak: Option<BTreeMap<usize, u64>>,
    /// Gap events seen (allowed only at lossy receivers).
    gaps: u64,
    /// When set: data packets the network dropped on their way to a receiver, by (receiver,
    /// sender, seq), and how long each took to arrive after all (loss to repair, ns).
    repair_clock: Option<RepairClock>,
    /// Per receiver, datagrams lost in a row so far, and the longest such run seen.
    bursts: (BTreeMap<usize, u32>, u32),
    /// Recovery traffic on the network so far.
    traffic: Traffic,
    /// First transmissions of data the network lost, by packet: the receivers that lost it.
    losses: BTreeMap<(NodeId, RegionId, u32), BTreeSet<usize>>,
    /// Senders' acknowledgement stalls.
    stalls: Stalls,
    /// Copies delivered with a bit flipped: per receiver, and per traffic class.
    corrupted: (BTreeMap<usize, u64>, BTreeMap<TrafficClass, u64>),
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    oracle: Oracle,
    /// Per sender: the next message number to publish.
    next: BTreeMap<usize, u32>,
    refused: u64,
    /// Senders that publish nothing until they know every subscriber again (restarted).
    paused: BTreeSet<usize>,
    /// Extra quiet time before the final checks (a crashed sender's streams close only after
    /// failure detection and `departed_grace`).
    settle: Duration,
    /// `Run::run` calls its `during` closure for every millisecond up to here even when
    /// publishing ends sooner (a sender crash ends it early), so that faults drawn for that
    /// time still start and heal.
    faults_until: u32,
    /// Per (sender, region, stream epoch, member): the point up to which the cross-node
    /// check ([`Run::check_freed`]) has compared what the sender freed with what the member
    /// delivered or holds.
    freed_checked: BTreeMap<(usize, RegionId, u64, usize), Seq>,
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
    data_id(datagram).map(|(s, _, q)| (s.0, q.0))
}

/// (sender, region, seq) of a data datagram (packed or fragment).
fn data_id(datagram: &Bytes) -> Option<(NodeId, RegionId, Seq)> {
    let (h, body) = wire::Seal::new().open(datagram).ok()?;
    let body = Bytes::copy_from_slice(body);
    let (region, seq) = match h.kind {
        PacketKind::Data => DataPacket::parse(body).map(|p| (p.region, p.seq)).ok()?,
        PacketKind::Fragment => Fragment::parse(body).map(|f| (f.region, f.seq)).ok()?,
        _ => return None,
    };
    Some((h.sender, region, seq))
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
            Event::Gap { sender, missed, .. }
                if oracle.lost_senders.contains(&oracle.sender_index(sender))
                    || oracle.restarted.contains_key(&oracle.sender_index(sender)) =>
            {
                let s = oracle.sender_index(sender);
                oracle.got.entry((r, s)).or_default().1 += u64::from(missed);
                *gaps += u64::from(missed);
            }
            Event::SenderLost {
                sender,
                delivered,
                missed,
                ..
            } => {
                let s = oracle.sender_index(sender);
                oracle
                    .ended
                    .entry((r, s))
                    .or_default()
                    .push((delivered, missed));
            }
            Event::Gap { sender, missed, .. } => {
                assert!(
                    oracle.lossy.contains(&r),
                    "node {r}: {missed} packets of {sender:?} given up (seed {seed})"
                );
                *gaps += u64::from(missed);
            }
            Event::MulticastUnreachable { member, .. } => oracle.reach.push((r, member, false)),
            Event::MulticastReachable { member, .. } => oracle.reach.push((r, member, true)),
            Event::PeerDown(peer) => {
                let now = oracle.now;
                oracle.downs.entry((r, peer)).or_insert(now);
            }
            Event::SlowReceiver { member, lag, .. } => oracle.slow_reports.push((r, member, lag)),
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
            stopped: None,
            unacked_peak: None,
            gaps: 0,
            repair_clock: None,
            bursts: (BTreeMap::new(), 0),
            traffic: Traffic::default(),
            losses: BTreeMap::new(),
            stalls: Stalls::default(),
            corrupted: (BTreeMap::new(), BTreeMap::new()),
            sim,
            idx,
            oracle: Oracle {
                topics,
                sent_at: sent.keys().map(|k| (*k, Vec::new())).collect(),
                sent,
                cursors: BTreeMap::new(),
                late: Vec::new(),
                lossy: Vec::new(),
                crashed: Vec::new(),
                delivered: 0,
                reach: Vec::new(),
                renamed: BTreeMap::new(),
                now: Instant::ZERO,
                downs: BTreeMap::new(),
                slow_reports: Vec::new(),
                changing: BTreeMap::new(),
                changing_next: BTreeMap::new(),
                lost_senders: Vec::new(),
                restarted: BTreeMap::new(),
                got: BTreeMap::new(),
                ended: BTreeMap::new(),
            },
            next,
            refused: 0,
            settle: Duration::ZERO,
            paused: BTreeSet::new(),
            faults_until: 0,
            freed_checked: BTreeMap::new(),
        }
    }

    /// Runs for `d`, checking after every simulated millisecond what holds across nodes
    /// ([`Run::check_freed`]).
    fn run_for(&mut self, d: Duration) {
        let end = self.sim.now() + d;
        while self.sim.now() < end {
            let step = end.saturating_duration_since(self.sim.now());
            self.run_events_for(step.min(Duration::from_millis(1)));
            self.check_freed();
        }
    }

    /// The cross-node invariant of issue 10: a sender frees packet s of a region's stream only
    /// when every live member of that region has delivered s or holds it (stability passes a
    /// member the ring skipped, but the sender keeps what that member may lack). Judged per
    /// member from the first time it heard the stream (what was freed before it joined is not
    /// its), not for a member changing its subscriptions (its handover decides what of each
    /// region is its) or one that isolated itself as slow (it gives up what the region
    /// cleaned, by design: `RingConfig::isolate_slow`), and not for a sender that counted
    /// retained packets dropped (its retention stayed full past its hold, by design:
    /// `retained_dropped`).
    fn check_freed(&mut self) {
        let receivers = self.spec.receivers.len();
        for i in receivers..self.idx.len() {
            if self.oracle.crashed.contains(&i) {
                continue;
            }
            let sender = self.sim.node(self.idx[i]);
            if sender.stats().retained_dropped > 0 {
                continue;
            }
            for (region, epoch, freed) in sender.send_freed() {
                for r in 0..receivers {
                    if self.oracle.crashed.contains(&r) || self.oracle.changing.contains_key(&r) {
                        continue;
                    }
                    let member = self.sim.node(self.idx[r]);
                    let isolated = member.ring().is_some_and(|g| g.stats().isolations > 0);
                    if member.own_region() != Some(region) || isolated {
                        continue;
                    }
                    let key = (i, region, epoch, r);
                    let Some(last) = self.freed_checked.get(&key).copied() else {
                        if member.receive_has(id(i), region, epoch, freed).is_some() {
                            self.freed_checked.insert(key, freed);
                        }
                        continue;
                    };
                    let mut s = last.next();
                    while !freed.is_before(s) {
                        assert_ne!(
                            member.receive_has(id(i), region, epoch, s),
                            Some(false),
                            "at {:?}: sender {i} freed packet {s:?} of its stream into {region:?} \
                             (freed up to {freed:?}), which live member {r} neither delivered nor \
                             holds; SIM_SEED={} (swarm: QS_SWARM=1)",
                            self.sim.now(),
                            self.seed
                        );
                        s = s.next();
                    }
                    self.freed_checked.insert(key, freed);
                }
            }
        }
    }

    fn run_events_for(&mut self, d: Duration) {
        let (oracle, seed, slow, stopped) = (&mut self.oracle, self.seed, self.slow, self.stopped);
        let mut unacked_peak = self.unacked_peak.as_mut();
        let gaps = &mut self.gaps;
        let clock = &mut self.repair_clock;
        let (runs, longest) = &mut self.bursts;
        let (traffic, stalls, losses) = (&mut self.traffic, &mut self.stalls, &mut self.losses);
        let (corrupt_at, corrupt_class) = &mut self.corrupted;
        let t = self.sim.now() + d;
        self.sim
            .run_until(t, &mut |o: &mut Observation<'_, NodeCore>| {
                let r = o.index.0;
                match &o.event {
                    EventKind::Delivered {
                        from,
                        class,
                        datagram,
                        duplicate: false,
                        ..
                    } if *from != addr(r) => traffic.count(datagram, *class, false),
                    EventKind::Dropped {
                        from,
                        class,
                        datagram,
                        reason,
                    } if reason.is_network_drop() && *from != addr(r) => {
                        traffic.count(datagram, *class, true);
                        if *class == TrafficClass::Data {
                            if let Some((s, region, seq)) = data_id(datagram) {
                                losses.entry((s, region, seq.0)).or_default().insert(r);
                            }
                        }
                    }
                    _ => {}
                }
                if let EventKind::Delivered {
                    datagram,
                    corrupted,
                    class,
                    ..
                } = &o.event
                {
                    stalls.observe(o.node.id(), o.now, datagram);
                    if *corrupted {
                        *corrupt_at.entry(r).or_default() += 1;
                        *corrupt_class.entry(*class).or_default() += 1;
                    }
                }
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
                oracle.now = o.now;
                if let Some(peaks) = unacked_peak.as_mut() {
                    let peak = peaks.entry(r).or_default();
                    *peak = (*peak).max(o.node.stats().unacked_packets);
                }
                if stopped == Some(r) {
                    return; // Its application reads nothing for now.
                }
                if slow.is_some_and(|(s, _)| s == r) {
                    return; // Its application reads at its own pace (`consume`).
                }
                consume(oracle, gaps, r, o.node, usize::MAX, seed);
            });
        if let Some((r, per_ms)) = self.slow {
            let n = (d.as_micros() as usize * per_ms / 1000).max(1);
            self.oracle.now = self.sim.now();
            let node = self.sim.node_mut(self.idx[r]);
            consume(&mut self.oracle, &mut self.gaps, r, node, n, self.seed);
        }
    }

    /// Publishes one millisecond's worth per sender (as much as back-pressure allows).
    fn publish_tick(&mut self) -> bool {
        let mut more = false;
        for k in 0..self.spec.senders.len() {
            let i = self.spec.receivers.len() + k;
            if self.oracle.crashed.contains(&i) && !self.paused.contains(&i) {
                continue; // It publishes nothing more.
            }
            if self.paused.contains(&i) {
                if self.oracle.crashed.contains(&i) || !self.sender_knows_everyone(i) {
                    more = true; // Down, or back and discovering its subscribers again.
                    continue;
                }
                self.paused.remove(&i);
            }
            let topics = &self.spec.senders[k];
            for _ in 0..self.spec.per_ms {
                let n = self.next[&i];
                if n >= self.spec.messages {
                    break;
                }
                let t = topic(topics[n as usize % topics.len()]);
                let size = match self.spec.sizes.len() {
                    0 => self.spec.size,
                    k => self.spec.sizes[n as usize % k],
                };
                let m = payload(i, n, size);
                let core = self.sim.node_mut(self.idx[i]);
                if core.publish(t, m.clone()).is_err() {
                    self.refused += 1;
                    break;
                }
                self.oracle.sent.get_mut(&i).expect("sender").push((t, m));
                let now = self.sim.now();
                self.oracle.sent_at.get_mut(&i).expect("sender").push(now);
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
        // Publishing starts once every sender knows every subscriber (as `qs pub
        // --subscribers` waits): under heavy control loss 1.5 s is not always enough, and a
        // message published before its sender knew a subscriber is rightly not that
        // subscriber's to receive.
        let deadline = self.sim.now() + Duration::from_secs(20);
        while !self.senders_know_everyone() && self.sim.now() < deadline {
            self.run_for(Duration::from_millis(10));
        }
        // Not a delivery failure, but discovery that never converged (seed 20718: a sender
        // never learned one subscriber's record): say so rather than count it as loss.
        assert!(
            self.senders_know_everyone(),
            "after 20 s of discovery a sender still does not know every subscriber (seed {})",
            self.seed
        );
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
        while ms < self.faults_until {
            during(self, ms);
            self.run_for(Duration::from_millis(1));
            ms += 1;
        }
        let deadline = self.sim.now() + Duration::from_secs(30);
        let mut last = u64::MAX;
        while (self.outstanding() > 0 || last != self.oracle.delivered) && self.sim.now() < deadline
        {
            // Until everything is delivered and (slow or lossy receivers) nothing more comes.
            last = self.oracle.delivered;
            self.run_for(Duration::from_millis(100));
        }
        if self.outstanding() > 0 {
            let senders: Vec<usize> = self.oracle.sent.keys().copied().collect();
            for r in self.live_receivers() {
                for s in &senders {
                    let o = self.oracle.outstanding(r, *s);
                    if o > 0 {
                        eprintln!(
                            "receiver {r} lacks {o} of sender {s}; its stats {:?}",
                            self.stats(r)
                        );
                    }
                }
            }
        }
        assert_eq!(
            self.outstanding(),
            0,
            "messages never delivered (seed {}); SIM_SEED={} replays",
            self.seed,
            self.seed
        );
        // Quiescence: once the failure detector has removed crashed members from every
        // region (in a cluster of four that takes up to 6.4 s: Lifeguard's suspicion timeout
        // shrinks only with confirmations from other members), an idle round acknowledges
        // and cleans everything up.
        let deadline = self.sim.now() + Duration::from_secs(20);
        while self.crashed_still_members() && self.sim.now() < deadline {
            self.run_for(Duration::from_millis(100));
        }
        self.run_for(Duration::from_secs(4) + self.settle);
        // A departure whose old-region stream can never reach its `Left` marker (its sender
        // restarted and sends nothing more there: seed 60823) still caretakes that region
        // until `handover_timeout` ends it; it must end by then.
        let timeout = self.sim.node(self.idx[0]).config().handover_timeout;
        let deadline = self.sim.now() + timeout;
        while self.departures_open() && self.sim.now() < deadline {
            self.run_for(Duration::from_millis(100));
        }
        self.run_for(self.settle);
        for r in self.live_nodes() {
            let s = self.stats(r);
            assert_eq!(
                s.unacked_packets, 0,
                "node {r} still holds unacknowledged packets (seed {})",
                self.seed
            );
            assert_eq!(
                s.cached_packets, 0,
                "node {r} still caches packets (seed {}): {s:?}",
                self.seed
            );
            if !self.oracle.lossy.contains(&r) {
                // Only the streams of crashed senders may end with holes (reported).
                let allowed: u64 = self
                    .oracle
                    .got
                    .iter()
                    .filter(|((at, _), _)| *at == r)
                    .map(|(_, (_, missed))| missed)
                    .sum();
                assert_eq!(s.gaps, allowed, "node {r}'s gaps (seed {})", self.seed);
            }
        }
    }

    /// Whether a live node is still departing a region (a subscription change's handover).
    fn departures_open(&self) -> bool {
        self.live_nodes().into_iter().any(|r| {
            let h = self.stats(r).handover;
            h.departures > h.completed + h.timed_out + h.cut_short
        })
    }

    /// After sender `who` crashed: the live receivers of each region (same topics, so one
    /// region; `except` changed its subscriptions) delivered the same messages of it, and each
    /// that had its stream was told once where it ended, with what it delivered and missed.
    fn check_survivors_agree(&self, who: usize, except: Option<usize>) {
        let o = &self.oracle;
        let mut regions: BTreeMap<&Vec<TopicId>, Vec<usize>> = BTreeMap::new();
        for r in self.live_receivers() {
            if Some(r) != except && !o.lossy.contains(&r) {
                regions.entry(&o.topics[r]).or_default().push(r);
            }
        }
        let none = (Vec::new(), 0);
        for members in regions.values() {
            let got = |r: usize| o.got.get(&(r, who)).unwrap_or(&none);
            for r in members {
                assert_eq!(
                    got(*r).0,
                    got(members[0]).0,
                    "survivors {} and {r} disagree on crashed sender {who}'s messages (seed {})",
                    members[0],
                    self.seed
                );
                let (delivered, missed) = got(*r);
                let ended = o.ended.get(&(*r, who)).cloned().unwrap_or_default();
                if !delivered.is_empty() || *missed > 0 {
                    assert_eq!(
                        ended,
                        vec![(delivered.len() as u64, *missed)],
                        "node {r}: crashed sender {who}'s stream ends once, with what it \
                         delivered (seed {})",
                        self.seed
                    );
                }
            }
        }
    }

    /// Whether a live node still counts a crashed one as a member of a region.
    fn crashed_still_members(&self) -> bool {
        self.live_nodes().into_iter().any(|r| {
            let regions = self.sim.node(self.idx[r]).regions();
            self.oracle
                .crashed
                .iter()
                .any(|c| regions.region_of(id(*c)).is_some())
        })
    }

    /// Whether every sender counts, for each topic, every receiver that subscribes it.
    fn senders_know_everyone(&self) -> bool {
        let n = self.spec.receivers.len();
        let topics: BTreeSet<TopicId> = self.oracle.topics[..n].iter().flatten().copied().collect();
        (n..self.idx.len()).all(|s| self.sender_knows_everyone_of(s, &topics))
    }

    /// Whether sender `s` counts, for each topic, every receiver that subscribes it.
    fn sender_knows_everyone(&self, s: usize) -> bool {
        let n = self.spec.receivers.len();
        let topics: BTreeSet<TopicId> = self.oracle.topics[..n].iter().flatten().copied().collect();
        self.sender_knows_everyone_of(s, &topics)
    }

    /// Whether sender `s` knows, for each of `topics`, every live receiver that subscribes it
    /// as a member of a region of that topic (a crashed one does not count: a sender restarted
    /// after it crashed never learns of it, and would wait for ever: seed 60942). By node,
    /// not by count: a restarted sender may still count a crashed subscriber it has not yet
    /// found dead in place of a live one it has not yet learned (seed 62796).
    fn sender_knows_everyone_of(&self, s: usize, topics: &BTreeSet<TopicId>) -> bool {
        let n = self.spec.receivers.len();
        let regions = self.sim.node(self.idx[s]).regions();
        topics.iter().all(|t| {
            (0..n)
                .filter(|r| !self.oracle.crashed.contains(r))
                .filter(|r| self.oracle.topics[*r].contains(t))
                .all(|r| {
                    regions.regions_for_topic(*t).iter().any(|g| {
                        regions
                            .region(*g)
                            .is_some_and(|g| g.members.contains(&id(r)))
                    })
                })
        })
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.idx.len())
            .filter(|i| !self.oracle.crashed.contains(i))
            .collect()
    }

    fn stats(&self, i: usize) -> CoreStats {
        self.sim.node(self.idx[i]).stats()
    }

    /// Lost packets no member of their caretaker partition received: the only ones the
    /// sender should have to re-multicast (every other loss has a caretaker to serve it).
    fn whole_partition_losses(&self) -> u64 {
        let mut n = 0;
        for ((_, region, seq), lost_at) in &self.losses {
            let members: Vec<usize> = self
                .live_receivers()
                .into_iter()
                .filter(|r| self.sim.node(self.idx[*r]).own_region() == Some(*region))
                .collect();
            let Some(view) = members
                .first()
                .and_then(|r| self.sim.node(self.idx[*r]).ring())
                .map(|ring| ring.view())
            else {
                continue;
            };
            let q = view.caretaker(Seq(*seq));
            let caretakers = members
                .iter()
                .filter(|r| view.partition_of(id(**r)) == Some(q));
            if caretakers.clone().count() > 0 && caretakers.into_iter().all(|r| lost_at.contains(r))
            {
                n += 1;
            }
        }
        n
    }

    /// The README's bound on recovery overhead and the design's bound on retransmissions by
    /// senders, measured per copy on the network:
    /// - repairs: one per lost packet per receiver is the aim; at most 2x the lost bytes (the
    ///   second caretaker asked while a partition's prefix is unproven);
    /// - control + repair, tokens included: at most 5x the loss rate times the data bytes.
    ///   The last session measured about 1x with `qs bench` (tens of thousands of packets per
    ///   second, tokens negligible); here senders send a few packets per millisecond while
    ///   tokens still run every 2 ms, which alone costs 2 to 3.5 times the lost bytes;
    /// - senders re-multicast only what a whole caretaker partition lost (twice when the
    ///   re-multicast itself is lost there).
    fn assert_overhead(&self) {
        let t = &self.traffic;
        let seed = self.seed;
        let hint = replay_hint(seed, "--release --test sim_recovery");
        let rate = loss_rate(&self.sim.config().loss);
        assert!(t.lost_packets > 0, "the scenario lost data (seed {seed})");
        assert!(
            t.repair_bytes <= 2 * t.lost_bytes,
            "repairs {} B for {} B lost: more than two per loss; {hint}",
            t.repair_bytes,
            t.lost_bytes,
        );
        let budget = 5.0 * rate * t.data_bytes as f64;
        assert!(
            t.control_and_repair() as f64 <= budget,
            "control+repair {} B (tokens {} B) over 5 x {rate} x {} data bytes; {hint}",
            t.control_and_repair(),
            t.token_bytes,
            t.data_bytes,
        );
        let first = self.spec.receivers.len();
        let retransmitted: u64 = (first..first + self.spec.senders.len())
            .map(|s| self.stats(s).retransmitted)
            .sum();
        let whole = self.whole_partition_losses();
        assert!(
            retransmitted <= 2 * whole + 1,
            "senders re-multicast {retransmitted} packets; whole caretaker partitions lost only \
             {whole}; {hint}"
        );
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
        let t = &self.traffic;
        println!(
            "{name}: on the wire: data {} B in {} packets, lost {} B in {} packets ({:.2}%); \
             repairs {} B in {} packets ({:.2}x lost), tokens {} B, other control {} B; \
             control+repair {:.2}x loss rate x data; longest ack stall {:?}; whole-partition \
             losses {}",
            t.data_bytes,
            t.data_packets,
            t.lost_bytes,
            t.lost_packets,
            100.0 * t.lost_bytes as f64 / t.data_bytes.max(1) as f64,
            t.repair_bytes,
            t.repair_packets,
            t.repair_bytes as f64 / t.lost_bytes.max(1) as f64,
            t.token_bytes,
            t.other_control_bytes,
            t.control_and_repair() as f64
                / (loss_rate(&self.sim.config().loss) * t.data_bytes as f64).max(1.0),
            self.stalls.longest(self.sim.now()),
            self.whole_partition_losses(),
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
        sizes: Vec::new(),
    }
}

/// The long-run fraction of datagrams `model` loses.
fn loss_rate(model: &LossModel) -> f64 {
    match *model {
        LossModel::None => 0.0,
        LossModel::Bernoulli(p) => p,
        LossModel::GilbertElliott {
            p_good_to_bad,
            p_bad_to_good,
            loss_in_good,
            loss_in_bad,
        } => {
            let bad = p_good_to_bad / (p_good_to_bad + p_bad_to_good);
            bad * loss_in_bad + (1.0 - bad) * loss_in_good
        }
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
    run.assert_overhead();
}

#[test]
fn eight_receivers_five_percent_loss_deliver_everything_exactly_once() {
    let seed = seed_from_env(12);
    let mut run = Run::new(spec(8, 5_000), lossy(seed, 0.05));
    run.run(|_, _| {});
    run.report("8 receivers, 5% loss");
    run.assert_overhead();
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
    run.assert_overhead();
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
    run.assert_overhead();
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
    run.assert_overhead();
}

/// One copy in fifty of every datagram (data, repairs, tokens, acknowledgements, gossip,
/// announcements) arrives with a bit flipped, on top of 1% loss. The checksum catches each
/// one: every node counts exactly the corrupted copies it got as malformed, nothing corrupted
/// is delivered (the oracle compares every payload), and the corrupted packets are repaired
/// like lost ones, so everything is delivered exactly once.
#[test]
fn corrupted_datagrams_are_dropped_and_repaired_like_losses() {
    let seed = seed_from_env(24);
    let config = SimConfig {
        corrupt: 0.02,
        ..lossy(seed, 0.01)
    };
    let mut s = spec(8, 3_000);
    s.sizes = vec![100, 100, 100, 100, 3000];
    let mut run = Run::new(s, config);
    run.run(|_, _| {});
    run.report("8 receivers, 1% loss, 2% corrupted");
    let hint = replay_hint(seed, "--release --test sim_recovery corrupted");
    let (at, by_class) = &run.corrupted;
    println!("corrupted copies delivered, by class: {by_class:?}");
    for class in [
        TrafficClass::Data,
        TrafficClass::Control,
        TrafficClass::Repair,
    ] {
        assert!(
            by_class.get(&class).is_some_and(|n| *n > 0),
            "some {class:?} copies were corrupted; {hint}"
        );
    }
    for r in run.live_nodes() {
        let got = at.get(&r).copied().unwrap_or(0);
        assert_eq!(
            run.stats(r).drops.malformed,
            got,
            "node {r} got {got} corrupted copies; {hint}"
        );
    }
}

/// A fifth of all unicast control (tokens, hop acknowledgements, requests, sender
/// acknowledgements) is lost. A lost hop is retransmitted; with only two retries a hop can
/// still fail for good, and then the leader must regenerate the round once `round_timeout`
/// passes: without that the region would never acknowledge anything again.
#[test]
fn lost_tokens_and_acknowledgements_are_regenerated() {
    let seed = seed_from_env(16);
    let config = SimConfig {
        loss: LossModel::Bernoulli(0.01),
        unicast_control_loss: 0.2,
        ..SimConfig::with_seed(seed)
    };
    let round_timeout = RingConfig::default().round_timeout;
    let mut run = Run::with(spec(8, 5_000), config, |c| c.ring.hop_retries = 2);
    run.run(|_, _| {});
    run.report("8 receivers, 1% loss, 20% of unicast control lost");
    let ring = |f: fn(&RingStats) -> u64| (0..8).map(|r| f(&run.stats(r).ring)).sum::<u64>();
    let hint = replay_hint(seed, "--release --test sim_recovery lost_tokens");
    assert!(
        ring(|s| s.hop_retransmits) > 0,
        "lost hops were retransmitted; {hint}"
    );
    assert!(
        ring(|s| s.hop_failures) > 0,
        "some hops failed for good; {hint}"
    );
    // Rounds of both walks: a partition's round lost at its last hop is its leader's to
    // regenerate, the leaders' round the region leader's.
    let regenerated = ring(|s| s.rounds_regenerated + s.partition_rounds_regenerated);
    assert!(
        regenerated > 0,
        "the leaders regenerated lost rounds; {hint}"
    );
    // A lost round costs one round timeout, then the regenerated round acknowledges again
    // (two lost in a row, seen with some seeds, cost two).
    let stall = run.stalls.longest(run.sim.now());
    println!("{regenerated} rounds regenerated; longest acknowledgement stall {stall:?}");
    assert!(
        stall <= round_timeout * 2 + Duration::from_millis(50),
        "acknowledgements stood still for {stall:?}; {hint}"
    );
    run.assert_overhead();
}

/// What the crash-and-joiner scenario measured.
struct CrashRun {
    run: Run,
    joiner: usize,
    joined_at: Instant,
    /// From the crash until the region leader heard that the crashed member is down.
    detected_after: Option<Duration>,
}

/// Eight receivers under 1% loss; receiver 3 (in the big region) crashes 100 ms into the
/// stream, a new receiver joins that region 100 ms later.
fn crash_and_join() -> CrashRun {
    let seed = seed_from_env(17);
    let mut s = spec(8, 6_000);
    s.per_ms = 10;
    let mut run = Run::new(s, lossy(seed, 0.01));
    let joiner = run.idx.len();
    let (mut crashed_at, mut joined_at) = (None, None);
    run.run(|run, ms| {
        if ms == 100 {
            run.sim.crash(run.idx[3]);
            run.oracle.crashed.push(3);
            crashed_at = Some(run.sim.now());
        }
        if ms == 200 {
            let mut n = NodeCore::new(core_config(joiner, run.seed), run.sim.now());
            n.subscribe_all(run.sim.now(), [topic(0), topic(1)]);
            run.idx.push(run.sim.add_node(addr(joiner), n));
            run.oracle.topics.push(vec![topic(0), topic(1)]);
            run.oracle.late.push(joiner);
            joined_at = Some(run.sim.now());
        }
    });
    // Node 0 leads the region: its ring drops the crashed member when it hears of the crash.
    let detected_after = run
        .oracle
        .downs
        .get(&(0, id(3)))
        .zip(crashed_at)
        .map(|(d, c)| d.saturating_duration_since(c));
    CrashRun {
        run,
        joiner,
        joined_at: joined_at.expect("joined"),
        detected_after,
    }
}

/// The crash holds stability back (the crashed member's hop fails, every round is lost) until
/// the failure detector removes it from the region: today the senders' acknowledgements stand
/// still for about the detection time, then the survivors lose nothing. The joiner gets a
/// contiguous suffix of each stream (checked by the oracle) that reaches back before it
/// joined: nothing published once it was there is missing.
#[test]
fn a_receiver_crash_and_a_late_joiner_do_not_cost_survivors_anything() {
    let CrashRun {
        run,
        joiner,
        joined_at,
        detected_after,
    } = crash_and_join();
    run.report("8 receivers, 1% loss, one crash, one joiner");
    let hint = replay_hint(run.seed, "--release --test sim_recovery a_receiver_crash");
    let stall = run.stalls.longest(run.sim.now());
    println!("crash: detected after {detected_after:?}; longest acknowledgement stall {stall:?}");
    let detected = detected_after.expect("the failure detector reported the crashed member");
    // Today's honest bound: failure detection (SWIM suspicion, about 8 x log10(n) gossip
    // rounds of 200 ms here) plus at most two round timeouts (a round started before every
    // member heard of the crash carries the old view and is lost).
    let round_timeout = RingConfig::default().round_timeout;
    assert!(
        detected < Duration::from_secs(3),
        "failure detection took {detected:?}; {hint}"
    );
    assert!(
        stall <= detected + 2 * round_timeout,
        "acknowledgements stood still {stall:?}, well past failure detection ({detected:?}); \
         {hint}"
    );
    for s in [8usize, 9, 10] {
        let c = run
            .oracle
            .cursors
            .get(&(joiner, s))
            .copied()
            .unwrap_or_default();
        let first = c
            .first
            .unwrap_or_else(|| panic!("the joiner heard from sender {s}; {hint}"));
        let published = run.oracle.sent_at[&s][first];
        println!(
            "joiner: first message from sender {s} is #{first}, published {:?} before it joined",
            joined_at.saturating_duration_since(published)
        );
        assert!(
            published < joined_at,
            "the joiner's stream from sender {s} starts at #{first}, published after it joined \
             ({:?}); {hint}",
            published.saturating_duration_since(joined_at)
        );
    }
}

/// Issue 10's liveness target: a crashed member's hop is skipped after a few hop timeouts, so
/// stability stalls well under a second, not until failure detection.
#[test]
fn a_receiver_crash_stalls_acknowledgements_well_under_a_second() {
    let CrashRun { run, .. } = crash_and_join();
    let stall = run.stalls.longest(run.sim.now());
    println!("longest acknowledgement stall around the receiver crash: {stall:?}");
    assert!(
        stall < Duration::from_millis(500),
        "acknowledgements stood still {stall:?}; SIM_SEED={} cargo test --release --test \
         sim_recovery a_receiver_crash_stalls -- --ignored --nocapture",
        run.seed
    );
}

/// What a slow-receiver run measured.
#[derive(Debug)]
struct SlowRun {
    /// Milliseconds the senders took to publish everything.
    took: u32,
    /// Packets the slow receiver lost (isolation only) and its isolations.
    lost: u64,
    isolations: u64,
    /// Per sender: acknowledgements that set or lowered its pace.
    pacing_engaged: Vec<u64>,
    /// Per sender and 10 ms while it still publishes: data packets sent.
    sent_per_10ms: Vec<Vec<u64>>,
    /// Per sender and millisecond while it still publishes: its pacing rate (packets/s, 0
    /// unpaced).
    pacing_rates: Vec<Vec<u64>>,
}

/// The slow application's share of one sender's stream, packets per second (it reads
/// `SLOW_PER_MS` messages per millisecond of three senders' 1,000-byte messages, one per
/// packet).
const SLOW_PER_MS: usize = 25;
const SLOW_SHARE: f64 = SLOW_PER_MS as f64 * 1000.0 / 3.0;

/// Three senders publish 150 messages each per millisecond (1,000 bytes) to five receivers
/// under 1% loss; with `slow`, receiver 4's application reads only `SLOW_PER_MS` messages per
/// millisecond (`isolate` picks the policy) while the others keep up.
fn slow_receiver_run(slow: bool, isolate: bool, loss: f64) -> SlowRun {
    let seed = seed_from_env(18);
    let mut s = spec(5, 10_000);
    s.receivers = vec![vec![0, 1]; 5];
    s.per_ms = 150;
    s.size = 1000;
    let mut config = lossy(seed, loss);
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
    if slow {
        run.slow = Some((4, SLOW_PER_MS));
    }
    if isolate {
        run.oracle.lossy.push(4);
    }
    let senders = 5..run.idx.len();
    let mut took = 0;
    let mut sent_per_10ms = vec![Vec::new(); senders.len()];
    let mut pacing_rates = vec![Vec::new(); senders.len()];
    let mut last = vec![0u64; senders.len()];
    run.run(|run, ms| {
        took = ms;
        for (k, i) in senders.clone().enumerate() {
            if run.next[&i] >= run.spec.messages {
                continue; // This sender has published everything.
            }
            let st = run.stats(i);
            pacing_rates[k].push(st.pacing_rate);
            if ms % 10 == 9 {
                sent_per_10ms[k].push(st.data_packets_sent - last[k]);
                last[k] = st.data_packets_sent;
            }
        }
    });
    let result = SlowRun {
        took,
        lost: run.gaps,
        isolations: run.stats(4).ring.isolations,
        pacing_engaged: senders
            .clone()
            .map(|i| run.stats(i).pacing_engaged)
            .collect(),
        sent_per_10ms,
        pacing_rates,
    };
    println!(
        "slow receiver {slow}, isolate={isolate}: publishing took {took} ms; slow node lost {} \
         packets, isolated itself {} times, refused {} packets beyond its window; leaders \
         reported {} slow receivers; senders paced {:?} times",
        result.lost,
        result.isolations,
        run.stats(4).drops.beyond_window,
        (0..5).map(|r| run.stats(r).slow_receivers).sum::<u64>(),
        result.pacing_engaged,
    );
    for k in 0..result.sent_per_10ms.len() {
        println!(
            "  sent per 10 ms (sender {k}): {:?}",
            result.sent_per_10ms[k]
        );
    }
    for k in 0..result.pacing_rates.len() {
        println!(
            "  pacing rate each 10 ms (sender {k}): {:?}",
            result.pacing_rates[k]
                .iter()
                .step_by(10)
                .collect::<Vec<_>>()
        );
    }
    result
}

#[test]
fn a_slow_receiver_slows_the_senders_by_default_and_is_isolated_by_choice() {
    let reliable = slow_receiver_run(true, false, 0.01);
    assert_eq!(
        (reliable.lost, reliable.isolations),
        (0, 0),
        "the default policy loses nothing"
    );
    let isolated = slow_receiver_run(true, true, 0.01);
    assert!(isolated.isolations > 0, "the slow receiver isolated itself");
    assert!(
        isolated.lost > 0,
        "an isolated receiver loses what it cannot keep up with"
    );
    assert!(
        isolated.took * 2 < reliable.took,
        "isolation frees the others: {} ms vs {} ms",
        isolated.took,
        reliable.took
    );
}

/// Rate control through the ring, without loss (with loss, holes waiting for repair fill
/// this small window too and pacing engages briefly at about the offered rate). A slow
/// member makes every sender pace, and their send rate falls from the 150 packets per
/// millisecond they offer until together they send what the slow application takes; without
/// it nobody paces and the senders send what they offer.
#[test]
fn a_slow_member_makes_the_senders_pace_towards_its_rate_and_without_it_they_do_not() {
    let hint = replay_hint(
        seed_from_env(18),
        "--release --test sim_recovery a_slow_member",
    );
    let fast = slow_receiver_run(false, false, 0.0);
    assert_eq!(
        fast.pacing_engaged,
        vec![0; 3],
        "nobody paces without a slow member; {hint}"
    );
    for (k, bins) in fast.sent_per_10ms.iter().enumerate() {
        // 150 messages per millisecond, one per packet; the third sender's every other
        // message is on a topic nobody subscribes.
        let offered = if k == 2 { 750 } else { 1500 };
        assert!(
            bins.iter().all(|n| *n == offered),
            "sender {k} sent {bins:?} per 10 ms, offered {offered}; {hint}"
        );
    }
    let slow = slow_receiver_run(true, false, 0.0);
    assert!(
        slow.pacing_engaged.iter().all(|n| *n > 0),
        "every sender paced: {:?}; {hint}",
        slow.pacing_engaged
    );
    // After the first window's worth (50 ms): together the senders send what the slow
    // application takes, and none sends much above it alone. (How the slow member's share is
    // split among senders follows which streams have packets ready as it reads; a stream
    // waiting for the repair of packets it refused sits out meanwhile.)
    let bins = slow.sent_per_10ms.iter().map(Vec::len).max().unwrap_or(0);
    let total: u64 = slow
        .sent_per_10ms
        .iter()
        .map(|b| b.iter().skip(5).sum::<u64>())
        .sum();
    let together = total as f64 / (bins.saturating_sub(5).max(1) as f64 * 0.01);
    let slow_rate = 3.0 * SLOW_SHARE;
    println!("senders together: {together:.0} packets/s after 50 ms; slow member {slow_rate:.0}");
    assert!(
        (0.5 * slow_rate..=1.5 * slow_rate).contains(&together),
        "the senders sent {together:.0} packets/s together; the slow application takes \
         {slow_rate:.0}; {hint}"
    );
    for k in 0..slow.sent_per_10ms.len() {
        let bins = &slow.sent_per_10ms[k][5..];
        let rate = bins.iter().sum::<u64>() as f64 / (bins.len() as f64 * 0.01);
        println!("sender {k}: {rate:.0} packets/s after 50 ms; slow share {SLOW_SHARE:.0}");
        assert!(
            rate <= 1.5 * slow_rate,
            "sender {k} sent {rate:.0} packets/s; the slow application takes {slow_rate:.0} \
             of all streams; {hint}"
        );
        // The pace, when set, follows the slow member down from the 150,000 packets per
        // second offered.
        let top = slow.pacing_rates[k][50..]
            .iter()
            .max()
            .copied()
            .unwrap_or(0) as f64;
        assert!(
            top < 10.0 * SLOW_SHARE,
            "sender {k} paced up to {top} packets/s, far above the slow share; {hint}"
        );
    }
}

/// The design's rate control: while a member is slow, every sender paces (the pace in force
/// through the slow phase) at about 1.1 times the slowest member's receive rate (QSM).
#[test]
#[ignore = "open: with caught-up members no longer reporting a zero rate the pace is set and \
            kept, but at ~1.1x the slow member's aggregate rate (27,500/s, its three streams \
            together) rather than its per-sender share (8,333/s); the send windows do the rest"]
fn a_paced_sender_follows_the_slowest_members_rate() {
    let hint = format!(
        "SIM_SEED={} cargo test --release --test sim_recovery a_paced -- --ignored --nocapture",
        seed_from_env(18)
    );
    let slow = slow_receiver_run(true, false, 0.0);
    for (k, rates) in slow.pacing_rates.iter().enumerate() {
        let paced = &rates[50..];
        let in_force: Vec<u64> = paced.iter().copied().filter(|r| *r > 0).collect();
        assert!(
            in_force.len() * 10 >= paced.len() * 9,
            "sender {k} paced only {} of {} ms while the member was slow; {hint}",
            in_force.len(),
            paced.len()
        );
        let mut sorted = in_force;
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2] as f64;
        assert!(
            median <= 1.5 * SLOW_SHARE,
            "sender {k} paced at {median} packets/s (median); the slow application takes \
             {SLOW_SHARE:.0}; {hint}"
        );
    }
}

/// The send window of the stalled-application runs (packets); their receive windows are as
/// small, so a stopped application fills its node's window quickly.
const STALL_WINDOW: u32 = 256;

/// What a stalled-application run measured.
#[derive(Debug)]
struct Stalled {
    isolations: u64,
    /// Slow-receiver reports by the region leader.
    reports: u64,
    /// Packets the stalled receiver lost.
    lost: u64,
    /// The most packets the sender held unacknowledged.
    unacked_peak: u64,
}

/// One sender publishes 20 messages of 1,000 bytes per millisecond to three receivers (one
/// region) for 600 ms; the application of the last one in token order (node 2) reads
/// nothing from 100 ms to `100 + stop_ms` ms. Once its window is full the sender is held to
/// exactly `STALL_WINDOW` packets ahead of it: that is its lag. `slow_lag` and
/// `slow_after` are the policy's thresholds.
fn stalled_app_run(stop_ms: u32, slow_lag: u32, slow_after: Duration, isolate: bool) -> Stalled {
    let seed = seed_from_env(25);
    let s = Spec {
        receivers: vec![vec![0]; 3],
        senders: vec![vec![0]],
        messages: 12_000,
        size: 1000,
        sizes: Vec::new(),
        per_ms: 20,
    };
    let mut run = Run::with(s, SimConfig::with_seed(seed), |c| {
        c.send_window_packets = STALL_WINDOW as usize;
        // Bounded by packets alone: the lag is exactly the window.
        c.send_window_time = Duration::ZERO;
        c.reorder_window_packets = STALL_WINDOW as usize;
        c.max_pending_events = 50;
        c.send_queue_bytes = 64 << 10;
        c.ring.slow_lag = slow_lag;
        c.ring.slow_after = slow_after;
        c.ring.isolate_slow = isolate;
    });
    run.unacked_peak = Some(BTreeMap::new());
    if isolate {
        run.oracle.lossy.push(2);
    }
    run.run(|run, ms| {
        if ms == 100 {
            run.stopped = Some(2);
        }
        if ms == 100 + stop_ms {
            run.stopped = None;
        }
    });
    let reports = run
        .oracle
        .slow_reports
        .iter()
        .filter(|(_, member, _)| *member == id(2))
        .count() as u64;
    let result = Stalled {
        isolations: run.stats(2).ring.isolations,
        reports,
        lost: run.gaps,
        unacked_peak: run
            .unacked_peak
            .as_ref()
            .and_then(|p| p.get(&3).copied())
            .unwrap_or(0),
    };
    println!(
        "stalled application {stop_ms} ms, slow_lag {slow_lag}, slow_after {slow_after:?}, \
         isolate {isolate}: {result:?}"
    );
    result
}

/// The send window's limit, both sides: a sender held back by a member that takes nothing
/// keeps exactly `send_window_packets` unacknowledged (never one more, checked after every
/// event by the core's invariants; and not one fewer: the window is used to the end).
#[test]
fn a_held_back_sender_fills_its_send_window_exactly() {
    let r = stalled_app_run(300, u32::MAX, Duration::from_secs(60), false);
    assert_eq!(
        r.unacked_peak,
        u64::from(STALL_WINDOW),
        "{}",
        replay_hint(seed_from_env(25), "--release --test sim_recovery held_back")
    );
}

/// One sender publishes 150 messages of 1,000 bytes per millisecond (150 MB/s) to three
/// receivers for 200 ms with a 4,096-packet send window bounded by `window_time`; the
/// application of node 2 reads nothing from 50 to 150 ms (a subscriber descheduled for a
/// tenth of a second). Returns (the most bytes the sender held unacknowledged, the most
/// packets, how long publishing took in ms).
fn stalled_window_run(window_time: Duration) -> (u64, u64, u32) {
    let seed = seed_from_env(26);
    let s = Spec {
        receivers: vec![vec![0]; 3],
        senders: vec![vec![0]],
        messages: 30_000,
        size: 1000,
        sizes: Vec::new(),
        per_ms: 150,
    };
    let mut run = Run::with(s, SimConfig::with_seed(seed), |c| {
        c.send_window_packets = 4096;
        c.send_window_time = window_time;
        c.reorder_window_packets = 4096;
        c.max_pending_events = 50;
        c.send_queue_bytes = 256 << 10;
    });
    run.unacked_peak = Some(BTreeMap::new());
    let mut took = 0;
    run.run(|run, ms| {
        took = ms;
        if ms == 50 {
            run.stopped = Some(2);
        }
        if ms == 150 {
            run.stopped = None;
        }
    });
    let packets = run
        .unacked_peak
        .as_ref()
        .and_then(|p| p.get(&3).copied())
        .unwrap_or(0);
    let st = run.stats(3);
    println!(
        "send window time {window_time:?}: unacknowledged peak {} bytes, {packets} packets; \
         publishing took {took} ms; paced {} times",
        st.unacked_bytes_peak, st.pacing_engaged
    );
    (st.unacked_bytes_peak, packets, took)
}

/// The send window's time bound, both sides (issue 13): while a member's application stalls
/// for 100 ms, a 5 ms window holds about 5 ms of the region's acknowledgement rate
/// (150 MB/s: 750 KB) unacknowledged and no more, where the same window bounded by packets
/// alone fills all its 4,096 packets into the stalled member; both deliver everything (the
/// run checks it), and the bound does not slow the sender down.
#[test]
fn a_time_bounded_send_window_holds_its_time_while_a_member_stalls() {
    let (bytes_on, packets_on, took_on) = stalled_window_run(Duration::from_millis(5));
    let (bytes_off, packets_off, took_off) = stalled_window_run(Duration::ZERO);
    let hint = replay_hint(
        seed_from_env(26),
        "--release --test sim_recovery time_bounded",
    );
    assert_eq!(packets_off, 4096, "bounded by packets: {hint}");
    assert!(
        bytes_on <= 1_000_000 && packets_on < 1000,
        "5 ms at 150 MB/s is 750 KB: {bytes_on} bytes, {packets_on} packets; {hint}"
    );
    assert!(
        bytes_off > 4 * bytes_on,
        "{bytes_off} vs {bytes_on}; {hint}"
    );
    assert!(
        took_on <= took_off + took_off / 10,
        "the bound costs no throughput: {took_on} ms vs {took_off} ms; {hint}"
    );
}

/// The slow-receiver thresholds, both sides. Lag: a member exactly `slow_lag` behind for
/// long enough is slow (reported by the leader; under the isolation policy it isolates
/// itself), one packet short of it is not. Time: lagging a little less than `slow_after` is
/// not slow, a little more is.
#[test]
fn a_member_is_slow_at_slow_lag_for_slow_after_and_not_just_short_of_either() {
    let hint = replay_hint(
        seed_from_env(25),
        "--release --test sim_recovery a_member_is_slow",
    );
    let after = Duration::from_millis(200);
    // Lag threshold (the stalled member lags exactly STALL_WINDOW for 400 ms).
    let at = stalled_app_run(400, STALL_WINDOW, after, false);
    assert!(at.reports > 0, "lagging slow_lag is slow: reported; {hint}");
    assert_eq!(at.lost, 0, "the default policy loses nothing; {hint}");
    let short = stalled_app_run(400, STALL_WINDOW + 1, after, false);
    assert_eq!(
        short.reports, 0,
        "one short of slow_lag is not slow; {hint}"
    );
    let isolated = stalled_app_run(400, STALL_WINDOW, after, true);
    assert!(
        isolated.isolations > 0,
        "at slow_lag it isolates itself; {hint}"
    );
    assert!(
        isolated.lost > 0,
        "and loses what the region moved past; {hint}"
    );
    let kept = stalled_app_run(400, STALL_WINDOW + 1, after, true);
    assert_eq!(
        (kept.isolations, kept.lost),
        (0, 0),
        "one short of slow_lag it stays and loses nothing; {hint}"
    );
    // Time threshold: the window fills about 20 ms after the stop, so the member lags from
    // then until the stop ends (isolation starts between a 220 and a 225 ms stop). A 200 ms
    // stop lags about 180 ms, a 245 ms stop about 225 ms.
    let brief = stalled_app_run(200, STALL_WINDOW, after, true);
    assert_eq!(
        (brief.isolations, brief.lost),
        (0, 0),
        "lagging for less than slow_after is not slow; {hint}"
    );
    let long = stalled_app_run(245, STALL_WINDOW, after, true);
    assert!(long.isolations > 0, "lagging past slow_after is; {hint}");
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
        sizes: Vec::new(),
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
        sizes: Vec::new(),
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
            sizes: Vec::new(),
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

/// Random clusters, workloads and faults, each from one seed: 3 to 25 receivers in up to
/// seven regions, one to six senders on random topic sets, message sizes from 8 bytes
/// (packed) to 20 KB (15 fragments), send and receive windows from 64 to 4096 packets;
/// Bernoulli or burst loss, jitter, duplication, lost control traffic, sometimes a receiver
/// crash, a sender frozen past failure detection, a one-way link failure, a receiver that
/// drops or adds a topic mid-stream. Every run must deliver everything exactly once, in order
/// (a changing topic: once and in order), and end with nothing unacknowledged or cached
/// (the oracle and `Run::run`). CI runs 20 seeds and the seeds that once failed
/// ([`SWARM_REGRESSIONS`]); `QS_SWARM=<runs>` runs more (and no regressions), `SIM_SEED=<n>`
/// moves the first seed.
#[test]
fn swarm_of_random_clusters_and_faults_delivers_everything_exactly_once() {
    let runs: Option<u64> = std::env::var("QS_SWARM")
        .ok()
        .map(|r| r.parse().expect("QS_SWARM is a number"));
    let base = seed_from_env(1000);
    let regressions = SWARM_REGRESSIONS.iter().filter(|_| runs.is_none()).copied();
    let seeds = (base..base + runs.unwrap_or(20)).map(|s| (s, true, true));
    for (k, (seed, fallback, later_faults)) in seeds.chain(regressions).enumerate() {
        let mut prng = Prng::new(seed);
        let n = [3usize, 5, 8, 12, 25][prng.below(5) as usize];
        // Topic sets: {0, 1} for most, so most receivers share a region, and a random
        // non-empty subset of {0, 1, 2} for the rest.
        let receivers: Vec<Vec<usize>> = (0..n)
            .map(|_| match prng.chance(0.6) {
                true => vec![0, 1],
                false => subset(&mut prng, 3),
            })
            .collect();
        let senders: Vec<Vec<usize>> = (0..1 + prng.below(6))
            .map(|_| subset(&mut prng, 3))
            .collect();
        let sizes: Vec<usize> = match prng.below(4) {
            0 => vec![100],
            1 => vec![8, 1400, 60, 700],
            2 => vec![100, 100, 100, 3000],
            _ => vec![500, 20_000, 50],
        };
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        let messages = (400_000 / mean).clamp(200, 2_000) as u32;
        let send_window = [64usize, 512, 2048][prng.below(3) as usize];
        let reorder_window = (send_window << prng.below(3)).min(4096);
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
        // Sometimes a sender freezes past failure detection (a GC pause, SIGSTOP) and comes
        // back: nothing may be lost or duplicated. Sometimes one receiver stops hearing
        // another (a one-way link failure) for part of the stream.
        let s = senders.len() as u64;
        // Both start, and the one-way failure also heals, while the senders publish (`during`
        // runs at least for milliseconds 0 to publishing - 2: `Run::faults_until`). A lasting
        // one-way failure is a known open problem: `a_member_that_never_hears_the_leader…` in
        // sim_membership.
        let publishing = u64::from(messages / 20);
        let freeze = prng.chance(0.25).then(|| {
            let (who, at) = (
                n + prng.below(s) as usize,
                prng.below(publishing - 1) as u32,
            );
            (who, at, Duration::from_millis(2000 + prng.below(3000)))
        });
        let one_way = (n > 1 && prng.chance(0.25)).then(|| {
            let from = prng.below(n as u64) as usize;
            let to = (from + 1 + prng.below(n as u64 - 1) as usize) % n;
            let at = prng.below(publishing / 2) as u32;
            (from, to, at, 4 + prng.below(publishing / 2 - 4) as u32)
        });
        // Sometimes a receiver changes its subscriptions mid-stream, so its region changes:
        // it drops one of its topics (when it keeps another) or adds one it lacked. Every
        // topic it keeps must arrive whole, once and in order, through the handover.
        let change = prng.chance(0.25).then(|| {
            let (r, t) = (prng.below(n as u64) as usize, prng.below(3) as usize);
            let at = prng.below(publishing - 1) as u32;
            let has = receivers[r].contains(&t);
            match has && receivers[r].len() == 1 {
                true => (r, (t + 1) % 3, false, at),
                false => (r, t, !has, at),
            }
        });
        let change = change.filter(|(r, ..)| crash.is_none_or(|(victim, _)| victim != *r));
        // Sometimes a sender crashes mid-stream: the survivors of each of its regions must
        // deliver the same messages of it and be told where its stream ended.
        let sender_crash = prng
            .chance(0.2)
            .then(|| {
                (
                    n + prng.below(s) as usize,
                    prng.below(publishing - 1) as u32,
                )
            })
            .filter(|(who, _)| freeze.is_none_or(|(frozen, ..)| frozen != *who));
        // Sometimes a sender restarts with the same id (a new incarnation) after 0 to 1.5 s:
        // its old stream ends (in order, what is missing reported), its new one arrives whole.
        let restart = prng
            .chance(0.2)
            .then(|| {
                let who = n + prng.below(s) as usize;
                (
                    who,
                    prng.below(publishing - 1) as u32,
                    prng.below(1500) as u32,
                )
            })
            .filter(|(who, ..)| {
                freeze.is_none_or(|(frozen, ..)| frozen != *who)
                    && sender_crash.is_none_or(|(crashed, _)| crashed != *who)
            });
        // A regression seed from before these faults replays the scenario it failed with.
        let (change, sender_crash, restart) = match later_faults {
            true => (change, sender_crash, restart),
            false => (None, None, None),
        };
        let spec = Spec {
            receivers,
            senders,
            messages,
            size: 0,
            sizes,
            per_ms: 20,
        };
        let described = format!(
            "swarm run {k}: seed {seed}, {spec:?}, send window {send_window}, receive window \
             {reorder_window}, crash {crash:?}, freeze {freeze:?}, one-way {one_way:?}, \
             change (receiver, topic, adds, at) {change:?}, sender crash {sender_crash:?}, \
             restart (sender, at, down ms) {restart:?}, \
             unvisited fallback {fallback}, {config:?}"
        );
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tweak = |c: &mut CoreConfig| {
                c.send_window_packets = send_window;
                c.reorder_window_packets = reorder_window;
                if !fallback {
                    // Members never ask for their holes on their own: the ring's own repair
                    // paths must do it.
                    c.ring.unvisited_after = Duration::from_secs(3600);
                }
                if sender_crash.is_some() {
                    // Longer than a freeze (a frozen sender must lose nothing), short enough
                    // for the crashed sender's streams to end within the run.
                    c.departed_grace = Duration::from_secs(6);
                }
            };
            let mut run = Run::with(spec.clone(), config.clone(), tweak);
            if sender_crash.is_some() {
                run.settle = Duration::from_secs(14);
            }
            // The faults are drawn for the publishing time (seed 60545: the sender crashed
            // at ms 40, publishing ended, and a one-way failure drawn to heal at ms 41 never
            // did: the region's partition token could not return to its leader for good).
            run.faults_until = publishing as u32;
            if let Some((r, t, _, _)) = change {
                run.oracle.topics[r].retain(|x| *x != topic(t));
                run.oracle.changing.insert(r, topic(t));
            }
            run.run(|run, ms| {
                if let Some((r, t, adds, at)) = change {
                    if ms == at {
                        let now = run.sim.now();
                        let node = run.sim.node_mut(run.idx[r]);
                        match adds {
                            true => node.subscribe(now, topic(t)),
                            false => node.unsubscribe(now, topic(t)),
                        }
                        run.sim.poke(run.idx[r]);
                    }
                }
                if let Some((victim, at)) = crash {
                    if ms == at {
                        run.sim.crash(run.idx[victim]);
                        run.oracle.crashed.push(victim);
                    }
                }
                if let Some((who, at, down)) = restart {
                    if ms == at {
                        run.sim.crash(run.idx[who]);
                        run.oracle.crashed.push(who);
                        run.paused.insert(who);
                    }
                    if ms == at + down {
                        let mut c = core_config(who, seed ^ 0xabc);
                        tweak(&mut c);
                        c.incarnation = 1;
                        run.sim
                            .restart(run.idx[who], NodeCore::new(c, run.sim.now()));
                        run.oracle.crashed.retain(|c| *c != who);
                        let next = run.oracle.sent[&who].len();
                        run.oracle.restarted.insert(who, next);
                    }
                }
                if let Some((who, at)) = sender_crash {
                    if ms == at {
                        run.sim.crash(run.idx[who]);
                        run.oracle.crashed.push(who);
                        run.oracle.lost_senders.push(who);
                    }
                }
                if let Some((who, at, d)) = freeze {
                    if ms == at && !run.sim.is_crashed(run.idx[who]) {
                        let until = run.sim.now() + d;
                        run.sim.freeze(run.idx[who], until);
                    }
                }
                if let Some((from, to, at, lasts)) = one_way {
                    if ms == at {
                        run.sim.block(run.idx[from], run.idx[to]);
                    }
                    if ms == at + lasts {
                        run.sim.unblock_all();
                    }
                }
            });
            if let Some((r, ..)) = change {
                eprintln!("receiver {r}'s handover: {:?}", run.stats(r).handover);
            }
            if let Some((who, _)) = sender_crash {
                run.check_survivors_agree(who, change.map(|(r, ..)| r));
            }
        }));
        eprintln!("{described}");
        if result.is_err() {
            panic!(
                "swarm failed at seed {seed}; replay: QS_SWARM=1 SIM_SEED={seed} cargo test \
                 --release --test sim_recovery swarm -- --nocapture"
            );
        }
    }
}

/// Swarm seeds that once failed: (seed, with the unvisited member's fallback
/// (`RingConfig::unvisited_after`), with the subscription-change, sender-crash and restart faults
/// (seeds older than those faults replay their scenario without them)):
/// * 5136, without: 25 receivers, receiver 3 crashes at 74 ms; the view change re-partitions
///   the region, and receiver 12 asked only the new caretakers of packets the sender had
///   freed and only the old caretakers cached (260 messages held for ever, no gap).
/// * 20718, with: a sender never learned one subscriber's record in 20 s of discovery. The
///   gossip plane's sweep dropped the record at its second visit, while membership did not
///   know the node yet, and then refused its announcements (with the core's `orphan_after`
///   at 1 ms, which drops at the second visit as before, it fails again: "a sender still
///   does not know every subscriber").
/// * 30001, with both: receiver 1, alone in its region, adds a topic at 0 ms and moves to the
///   region of four; after its departure ended it still cached 15 packets of a sender's old
///   region stream (its `Left` marker had removed the stream, so nothing freed them).
/// * 30053, with both: receiver 20 adds a topic at 82 ms; in its new region the sender's
///   `Joined` marker arrived just after a later packet (jitter), was dropped as stale
///   because the window had started at that packet, and the gate discarded the stream until
///   it timed out: 170 messages of a kept topic lost with no gap.
/// * 50005, with both: receiver 4 drops a topic while sender 14 is down for a restart; the
///   restarted sender learned of the move only as a departing record, marked no cut, and
///   receiver 4's departure waited for its marker (the old region's stability stuck, 46
///   packets left cached).
/// * 30456, with all: a sender that publishes nothing a moving receiver keeps started a
///   stream into its new region only for the `Joined` marker; that one packet was lost, and
///   the receiver (alone there) ignored the sender's stream states for a stream it had never
///   heard of, so the packet stayed unacknowledged for ever.
/// * 60074, 60337, 30204, 60009, 60215, with all: a sender restarts while a receiver moves
///   between regions; the receiver had gated the sender's stream into its new region until
///   the old incarnation's `Joined` marker, so the new incarnation (which knew of the move
///   from the start and marked no cut) had its first messages skipped: lost without a gap,
///   or never delivered, or left unacknowledged.
/// * 61011, with all: a moving receiver's departure timed out while the sender's `Left`
///   marker waited behind a hole in the old region's stream; the departure was closed before
///   that stream was finished, so the marker no longer cut it: everything after it was
///   delivered, then again from the new region (duplicates).
/// * 61357, 61700, 61252, 61651, 60138, with all: a sender restarts while a receiver moves
///   (traced in 61357: after its `Joined` marker reached the receiver, before its `Left` one
///   did). The old incarnation's gate held the new incarnation's stream in the new region,
///   its packets went into the old incarnation's stream there, and its new stream of the old
///   region was delivered meanwhile: messages reordered, duplicated, never delivered or left
///   unacknowledged. Now the old incarnation's streams end at once, in handover order.
/// * 61052, with all: a receiver crashed and another moved out, two view changes in a row;
///   a member asked the current and the previous view's caretakers for a hole that two
///   other live members cached (most likely caretakers of an older view): 91 messages
///   never arrived. Members now also ask caretakers of the last four views.
/// * 40475, with all: in a moving receiver's new region the sender's first packet (its
///   `Joined` marker) came 55 packets before the first one this receiver heard; the window,
///   started half a window back, dropped the marker as stale and the gate discarded the
///   stream until it timed out (90 messages never delivered).
/// * 60823 (traced), 60826 (same check failed), with all: a sender restarts while a
///   receiver moves and its new incarnation sends nothing more into the old region, so the
///   old incarnation's stream there never reaches its `Left` marker and the departure lasts
///   until `handover_timeout`, caretaking the old region meanwhile; the run checked the
///   caches before that (the run now waits for open departures to end, and a restarted
///   sender's old stream finished by the handover has its cache entries dropped when the
///   departure ends).
/// * 60942, with all: a sender restarted after a receiver had crashed waited to know every
///   subscriber, the crashed one included, before publishing again: it never did.
/// * 60545, with all: the only sender crashed at ms 40, so publishing (and the per-ms fault
///   schedule) ended there, and a one-way failure drawn to heal at ms 41 lasted for ever: the
///   region's partition token never returned to its leader, the crashed sender's record kept
///   its old cut-off, no member asked for its holes above it, and the survivors ended with
///   different one-packet holes (they disagreed). The faults now run their drawn time.
/// * 61745, 60746 (traced), 61803, 30453 (pass with the same fix), with all: stability passed
///   a member the ring skipped (in 61745 receiver 4 of the one-partition region {0, 4},
///   whose other member had crashed), the sender freed what that member lacked (acknowledged
///   to 719, the member's prefix 535 with holes at 536, 568, 579, …) and no cache held it:
///   100 messages never delivered. The sender now keeps what lies between the
///   acknowledgement's floor (every member, skipped ones included) and its stable point,
///   and re-multicasts from there.
/// * 63580, with all: receiver 0 adds a topic and moves into the region whose leader
///   (receiver 1) had crashed; with the lowest id it became leader with no records, and the
///   record the remaining member added for sender 7 (frozen after 12 packets) started its
///   cleanup from nothing, so receiver 0 was handed packets 1–12, stable before it came and
///   cached by nobody: 12 reported lost. Members now add the cleanup point they know.
/// * 62796, with all (a harness fault): restarted sender 5 counted crashed receiver 2, which
///   it had not yet found dead, as topic 2's one subscriber in place of receiver 0, which it
///   had not learned yet; the run let it publish, and its first messages of topic 2 went to
///   no region of receiver 0's (never delivered). The run now waits until the sender knows
///   every live subscriber by node, not by count.
/// * 62119, with all (the gossip plane): receiver 7 added a topic and moved into receiver
///   24's region; by their subscription records each was the other's mate, but 7's health
///   record still named its old region, so each refused what the other's listing offered
///   and answered that listing with its own. The two exchanged listings every hop, the sim's
///   duplicates started new chains, and gossip grew from 9,796 datagrams to 3.3 million in
///   60 simulated ms (never finished). Health now takes the new region when the
///   subscriptions change, not at the next health tick.
/// * 61803 again, once health repair conversations were bounded (the timing moved): receiver
///   1, leader of its region's partition 1, crashed; for seconds the region token skipped
///   that partition, so stability passed its four live members (the floor did not). All four
///   lost packet 377 of sender 28, whose caretakers they were; the sender retained it past
///   stability, but only a window's worth (64) of such packets, and dropped it. After the
///   view change nobody held it: the four asked for ever and the sender's window never
///   emptied. A window's worth retained now closes the window until the floor advances
///   (here: the view drops the crashed leader), for at most twice the failure detection
///   time; only past that are the oldest dropped, counted.
const SWARM_REGRESSIONS: &[(u64, bool, bool)] = &[
    (5136, false, false),
    (20718, true, false),
    (30001, true, true),
    (30053, true, true),
    (50005, true, true),
    (30456, true, true),
    (60074, true, true),
    (60337, true, true),
    (30204, true, true),
    (60009, true, true),
    (60215, true, true),
    (61011, true, true),
    (61357, true, true),
    (61700, true, true),
    (61252, true, true),
    (61651, true, true),
    (60138, true, true),
    (61052, true, true),
    (40475, true, true),
    (60823, true, true),
    (60826, true, true),
    (60942, true, true),
    (60545, true, true),
    (61745, true, true),
    (60746, true, true),
    (61803, true, true),
    (30453, true, true),
    (63580, true, true),
    (62796, true, true),
    (62119, true, true),
];

/// A random non-empty subset of `0..n`.
fn subset(prng: &mut Prng, n: usize) -> Vec<usize> {
    let mask = 1 + prng.below((1 << n) - 1) as usize;
    (0..n).filter(|i| mask & (1 << i) != 0).collect()
}
