//! Behaviour of the simulator, driven with a toy node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use qs_sim::{
    replay_hint, seed_from_env, DropReason, EventKind, LossModel, NodeIndex, Observation, Sim,
    SimConfig,
};
use qs_transport::{Driven, Instant, SocketCommand, TrafficClass, Transmit};

const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 1, 2, 3), 7000);
const MS: Duration = Duration::from_millis(1);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 9000))
}

fn at_ms(ms: u64) -> Instant {
    Instant::ZERO + MS * ms as u32
}

/// Multicasts `[id, counter (8 bytes LE)]` every `period`, `remaining` times, and records what
/// it receives. Unicast sends and membership changes are queued by the test.
#[derive(Debug)]
struct Chatter {
    id: u8,
    period: Duration,
    next_send: Instant,
    counter: u64,
    remaining: u64,
    commands: VecDeque<SocketCommand>,
    unicast: VecDeque<(SocketAddr, Vec<u8>)>,
    due: bool,
    received: Vec<(Instant, SocketAddr, Bytes)>,
    timeouts: Vec<Instant>,
    sent: u64,
}

impl Chatter {
    /// Joins the group and sends `count` multicasts, the first at time zero.
    fn new(id: u8, count: u64) -> Chatter {
        Chatter {
            id,
            period: MS,
            next_send: Instant::ZERO,
            counter: 0,
            remaining: count,
            commands: VecDeque::from([SocketCommand::JoinGroup(GROUP)]),
            unicast: VecDeque::new(),
            due: false,
            received: Vec::new(),
            timeouts: Vec::new(),
            sent: 0,
        }
    }

    /// A node that never joins the group and never multicasts.
    fn silent(id: u8) -> Chatter {
        let mut c = Chatter::new(id, 0);
        c.commands.clear();
        c
    }

    /// Counters received from the chatter with `id`, in arrival order.
    fn counters_from(&self, id: u8) -> Vec<u64> {
        self.received
            .iter()
            .filter(|(_, _, d)| d.len() == 9 && d[0] == id)
            .map(|(_, _, d)| u64::from_le_bytes(d[1..9].try_into().unwrap()))
            .collect()
    }
}

impl Driven for Chatter {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: Bytes) {
        self.received.push((now, from, datagram));
    }

    fn handle_timeout(&mut self, now: Instant) {
        assert!(now >= self.next_send, "timeout before the deadline");
        assert!(self.remaining > 0, "timeout without a deadline");
        self.timeouts.push(now);
        self.due = true;
        self.next_send = now + self.period;
        self.remaining -= 1;
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((to, payload)) = self.unicast.pop_front() {
            buf[..payload.len()].copy_from_slice(&payload);
            self.sent += 1;
            return Some(Transmit {
                destination: to,
                class: TrafficClass::Control,
                len: payload.len(),
            });
        }
        if !self.due {
            return None;
        }
        self.due = false;
        buf[0] = self.id;
        buf[1..9].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        self.sent += 1;
        Some(Transmit {
            destination: SocketAddr::V4(GROUP),
            class: TrafficClass::Data,
            len: 9,
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (self.remaining > 0).then_some(self.next_send)
    }

    fn poll_command(&mut self) -> Option<SocketCommand> {
        self.commands.pop_front()
    }
}

fn ignore(_: &mut Observation<'_, Chatter>) {}

/// `n` chatters, each sending `count` multicasts.
fn world(config: SimConfig, n: u8, count: u64) -> (Sim<Chatter>, Vec<NodeIndex>) {
    let mut sim = Sim::new(config);
    let nodes = (0..n)
        .map(|i| sim.add_node(addr(i), Chatter::new(i, count)))
        .collect();
    (sim, nodes)
}

fn run_to_end(config: SimConfig, n: u8, count: u64) -> Sim<Chatter> {
    let (mut sim, _) = world(config, n, count);
    assert!(sim.run_until_idle(at_ms(count + 1000), &mut ignore));
    sim
}

fn longest_run(lost: &[bool]) -> usize {
    let mut best = 0;
    let mut run = 0;
    for &l in lost {
        run = if l { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

fn lossy(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        jitter: Duration::from_micros(300),
        loss: LossModel::Bernoulli(0.05),
        duplicate: 0.01,
        ..SimConfig::default()
    }
}

#[test]
fn same_seed_gives_the_same_trace_hash() {
    let seed = seed_from_env(7);
    let a = run_to_end(lossy(seed), 4, 200);
    let b = run_to_end(lossy(seed), 4, 200);
    assert_eq!(
        a.trace_hash(),
        b.trace_hash(),
        "{}",
        replay_hint(seed, "same_seed")
    );
    assert_eq!(a.total_stats(), b.total_stats());
    assert_eq!(a.events_processed(), b.events_processed());
    assert!(a.total_stats().dropped_loss > 0);
}

#[test]
fn different_seeds_with_loss_give_different_hashes() {
    let a = run_to_end(lossy(1), 4, 200);
    let b = run_to_end(lossy(2), 4, 200);
    assert_ne!(a.trace_hash(), b.trace_hash());
}

#[test]
fn lossless_runs_do_not_depend_on_the_seed() {
    let a = run_to_end(SimConfig::with_seed(1), 3, 50);
    let b = run_to_end(SimConfig::with_seed(2), 3, 50);
    assert_eq!(a.trace_hash(), b.trace_hash());
}

#[test]
fn bernoulli_loss_is_reported_and_accounted_exactly() {
    let seed = seed_from_env(11);
    let hint = replay_hint(seed, "bernoulli_loss_is_reported_and_accounted_exactly");
    let config = SimConfig {
        seed,
        loss: LossModel::Bernoulli(0.01),
        ..SimConfig::default()
    };
    let count = 2000;
    let (mut sim, nodes) = world(config, 5, count);
    let mut drops: BTreeMap<NodeIndex, u64> = BTreeMap::new();
    let mut delivered: BTreeMap<NodeIndex, u64> = BTreeMap::new();
    let mut dropped_bytes_ok = true;
    assert!(
        sim.run_until_idle(at_ms(count + 100), &mut |o| match &o.event {
            EventKind::Dropped {
                reason, datagram, ..
            } => {
                assert_eq!(*reason, DropReason::Loss);
                dropped_bytes_ok &= datagram.len() == 9 && datagram[0] != o.index.0 as u8;
                *drops.entry(o.index).or_default() += 1;
            }
            EventKind::Delivered { .. } => *delivered.entry(o.index).or_default() += 1,
            _ => {}
        })
    );
    assert!(
        dropped_bytes_ok,
        "dropped bytes must be the sender's datagram"
    );
    let total_sent: u64 = nodes.iter().map(|&n| sim.stats(n).sent).sum();
    assert_eq!(total_sent, 5 * count);
    for &n in &nodes {
        let s = sim.stats(n);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.routed, total_sent, "{hint}");
        assert_eq!(s.delivered + s.dropped_loss, total_sent, "{hint}");
        assert!(s.accounted());
        assert_eq!(
            drops.get(&n).copied().unwrap_or(0),
            s.dropped_loss,
            "{hint}"
        );
        assert_eq!(delivered[&n], s.delivered);
        assert_eq!(sim.node(n).received.len() as u64, s.delivered);
        // 8000 copies from the others at 1%: about 80 drops.
        assert!((30..160).contains(&s.dropped_loss), "{s:?} {hint}");
        // The loopback copy is never lost.
        assert_eq!(sim.node(n).counters_from(n.0 as u8).len() as u64, count);
    }
}

#[test]
fn gilbert_elliott_loses_in_bursts_independently_per_receiver() {
    let seed = seed_from_env(3);
    let hint = replay_hint(seed, "gilbert_elliott");
    let config = SimConfig {
        seed,
        loss: LossModel::GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.25,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        },
        ..SimConfig::default()
    };
    let count = 5000;
    let mut sim = Sim::new(config);
    sim.add_node(addr(0), Chatter::new(0, count));
    let receivers: Vec<NodeIndex> = (1..4)
        .map(|i| sim.add_node(addr(i), Chatter::new(i, 0)))
        .collect();
    assert!(sim.run_until_idle(at_ms(count + 100), &mut ignore));
    let mut patterns = BTreeSet::new();
    for &r in &receivers {
        let got: BTreeSet<u64> = sim.node(r).counters_from(0).into_iter().collect();
        let lost: Vec<bool> = (0..count).map(|c| !got.contains(&c)).collect();
        let losses = lost.iter().filter(|&&l| l).count();
        assert_eq!(losses as u64, sim.stats(r).dropped_loss);
        assert!(losses > 50, "{losses} {hint}");
        assert!(longest_run(&lost) > 2, "no burst at {r}: {hint}");
        patterns.insert(lost);
    }
    assert_eq!(
        patterns.len(),
        receivers.len(),
        "losses are correlated: {hint}"
    );

    // Same average loss rate without memory: bursts are much shorter.
    let rate = 0.01 / (0.01 + 0.25);
    let mut flat = Sim::new(SimConfig {
        seed,
        loss: LossModel::Bernoulli(rate),
        ..SimConfig::default()
    });
    flat.add_node(addr(0), Chatter::new(0, count));
    let r = flat.add_node(addr(1), Chatter::new(1, 0));
    assert!(flat.run_until_idle(at_ms(count + 100), &mut ignore));
    let got: BTreeSet<u64> = flat.node(r).counters_from(0).into_iter().collect();
    let lost: Vec<bool> = (0..count).map(|c| !got.contains(&c)).collect();
    assert!(longest_run(&lost) <= 3, "{hint}");
}

#[test]
fn multicast_reaches_joined_nodes_including_the_sender_and_unicast_reaches_the_addressee() {
    let mut sim = Sim::new(SimConfig::default());
    let a = sim.add_node(addr(1), Chatter::new(1, 1));
    let b = sim.add_node(addr(2), Chatter::new(2, 0));
    let c = sim.add_node(addr(3), Chatter::silent(3));
    assert_eq!(sim.members(GROUP), vec![a, b]);
    assert!(sim.run_until_idle(at_ms(10), &mut ignore));
    assert_eq!(sim.node(a).counters_from(1), vec![0]);
    assert_eq!(sim.node(b).counters_from(1), vec![0]);
    assert!(sim.node(c).received.is_empty());
    let (t, from, _) = &sim.node(b).received[0];
    assert_eq!(*t, Instant::ZERO + Duration::from_micros(100));
    assert_eq!(*from, addr(1));

    sim.node_mut(a).unicast.push_back((addr(3), b"hi".to_vec()));
    sim.node_mut(a)
        .unicast
        .push_back((addr(99), b"nobody".to_vec()));
    sim.poke(a);
    assert!(sim.run_until_idle(at_ms(20), &mut ignore));
    assert_eq!(sim.node(c).received.len(), 1);
    assert_eq!(&sim.node(c).received[0].2[..], b"hi");
    assert_eq!(sim.node(b).received.len(), 1);
    assert_eq!(sim.node(a).received.len(), 1);
    assert_eq!(sim.stats(a).unroutable, 1);
    assert_eq!(sim.stats(a).sent, 3);
}

#[test]
fn leaving_the_group_stops_delivery() {
    let mut sim = Sim::new(SimConfig::default());
    let a = sim.add_node(addr(1), Chatter::new(1, 10));
    let b = sim.add_node(addr(2), Chatter::new(2, 0));
    sim.run_until(at_ms(4) + Duration::from_micros(500), &mut ignore);
    sim.node_mut(b)
        .commands
        .push_back(SocketCommand::LeaveGroup(GROUP));
    sim.poke(b);
    assert_eq!(sim.members(GROUP), vec![a]);
    assert!(sim.run_until_idle(at_ms(100), &mut ignore));
    assert_eq!(sim.node(b).counters_from(1), vec![0, 1, 2, 3, 4]);
    assert_eq!(sim.node(a).counters_from(1).len(), 10);
}

#[test]
fn a_crashed_node_stops_receiving_sending_and_timing_out() {
    let (mut sim, nodes) = world(SimConfig::default(), 3, 100);
    let (a, b) = (nodes[0], nodes[1]);
    sim.run_until(at_ms(10) + Duration::from_micros(50), &mut ignore);
    // Sends at 0..=10 ms; those of 10 ms are still in flight.
    sim.crash(b);
    assert!(sim.is_crashed(b));
    let received = sim.node(b).received.len();
    let timeouts = sim.node(b).timeouts.len();
    let mut crash_drops = 0;
    assert!(sim.run_until_idle(at_ms(1000), &mut |o| {
        if let EventKind::Dropped { reason, .. } = o.event {
            assert_eq!(reason, DropReason::Crash);
            assert_eq!(o.index, b);
            crash_drops += 1;
        }
        assert!(o.index != b || matches!(o.event, EventKind::Dropped { .. }));
    }));
    assert_eq!(sim.node(b).received.len(), received);
    assert_eq!(sim.node(b).timeouts.len(), timeouts);
    assert_eq!(sim.node(b).timeouts.len(), 11);
    assert_eq!(
        sim.node(a).counters_from(b.0 as u8),
        (0..11).collect::<Vec<_>>()
    );
    let s = sim.stats(b);
    assert_eq!(s.dropped_crash, crash_drops);
    // The others' sends of 10..=99 ms, and B's own loopback copy of 10 ms.
    assert_eq!(s.dropped_crash, 2 * 90 + 1, "{s:?}");
    assert!(s.accounted());
}

#[test]
fn a_frozen_node_gets_its_queued_datagrams_in_order_when_it_resumes() {
    let (mut sim, nodes) = world(SimConfig::default(), 2, 20);
    let (a, b) = (nodes[0], nodes[1]);
    sim.run_until(at_ms(5) + Duration::from_micros(500), &mut ignore);
    let until = at_ms(12) + Duration::from_micros(300);
    sim.freeze(b, until);
    assert!(sim.is_frozen(b));
    let mut deferred = 0;
    let mut resumed_at = None;
    sim.run_until(at_ms(100), &mut |o| match o.event {
        EventKind::Deferred { .. } => {
            assert_eq!(o.index, b);
            deferred += 1;
        }
        EventKind::Resumed => resumed_at = Some(o.now),
        EventKind::Delivered { .. } if o.index == b => {
            assert!(o.now < at_ms(6) || o.now >= until);
        }
        _ => {}
    });
    assert!(!sim.is_frozen(b));
    assert_eq!(resumed_at, Some(until));
    // A's sends of 6..=12 ms arrived during the freeze (B sent nothing meanwhile).
    assert_eq!(deferred, 7);
    let got = sim.node(b).counters_from(a.0 as u8);
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    let at_resume: Vec<u64> = sim
        .node(b)
        .received
        .iter()
        .filter(|(t, _, d)| *t == until && d[0] == a.0 as u8)
        .map(|(_, _, d)| u64::from_le_bytes(d[1..9].try_into().unwrap()))
        .collect();
    assert_eq!(at_resume, (6..=12).collect::<Vec<_>>());
    // B sent nothing while frozen, then caught up from the resume time on.
    let b_times: Vec<Instant> = sim.node(b).timeouts.clone();
    assert!(b_times.iter().all(|&t| t <= at_ms(5) || t >= until));
    assert_eq!(b_times[6], until);
    assert_eq!(sim.node(a).counters_from(b.0 as u8).len(), 20);
}

#[test]
fn a_partition_drops_cross_traffic_and_healing_restores_it() {
    let (mut sim, nodes) = world(SimConfig::default(), 3, 20);
    let (a, b, c) = (nodes[0], nodes[1], nodes[2]);
    sim.partition(&[vec![a, b], vec![c]]);
    let mut partition_drops: BTreeMap<NodeIndex, u64> = BTreeMap::new();
    sim.run_until(at_ms(9) + Duration::from_micros(500), &mut |o| {
        if let EventKind::Dropped { reason, .. } = o.event {
            assert_eq!(reason, DropReason::Partition);
            *partition_drops.entry(o.index).or_default() += 1;
        }
    });
    assert_eq!(sim.node(c).counters_from(a.0 as u8), Vec::<u64>::new());
    assert_eq!(sim.node(a).counters_from(c.0 as u8), Vec::<u64>::new());
    assert_eq!(sim.node(b).counters_from(a.0 as u8).len(), 10);
    assert_eq!(sim.node(c).counters_from(c.0 as u8).len(), 10);
    assert_eq!(partition_drops[&c], 20);
    assert_eq!(partition_drops[&a], 10);
    sim.heal();
    assert!(sim.run_until_idle(at_ms(100), &mut ignore));
    assert_eq!(
        sim.node(c).counters_from(a.0 as u8),
        (10..20).collect::<Vec<_>>()
    );
    assert_eq!(sim.stats(c).dropped_partition, 20);
    assert!(nodes.iter().all(|&n| sim.stats(n).accounted()));
}

#[test]
fn zero_jitter_keeps_each_pair_fifo_even_with_unequal_delays() {
    let config = SimConfig {
        seed: seed_from_env(5),
        loss: LossModel::Bernoulli(0.1),
        ..SimConfig::default()
    };
    let (mut sim, nodes) = world(config, 4, 200);
    for (i, &n) in nodes.iter().enumerate() {
        // Longer than the send period, so several datagrams are in flight per pair.
        sim.set_node_delay(n, Duration::from_micros(2500 * i as u64));
    }
    assert!(sim.run_until_idle(at_ms(1000), &mut ignore));
    for &r in &nodes {
        for &s in &nodes {
            let got = sim.node(r).counters_from(s.0 as u8);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{s} -> {r}: {got:?}");
        }
    }
}

#[test]
fn jitter_can_reorder() {
    let config = SimConfig {
        seed: seed_from_env(5),
        jitter: Duration::from_millis(5),
        ..SimConfig::default()
    };
    let (mut sim, nodes) = world(config, 2, 200);
    assert!(sim.run_until_idle(at_ms(1000), &mut ignore));
    let got = sim.node(nodes[1]).counters_from(nodes[0].0 as u8);
    assert_eq!(got.len(), 200);
    assert!(got.windows(2).any(|w| w[0] > w[1]));
}

#[test]
fn duplicates_and_corruption_are_flagged_and_counted() {
    let config = SimConfig {
        seed: seed_from_env(9),
        duplicate: 0.1,
        corrupt: 0.1,
        ..SimConfig::default()
    };
    let (mut sim, nodes) = world(config, 2, 500);
    let mut dups = 0;
    let mut corrupt = 0;
    // No loss and no jitter: the k-th original copy from the other node carries counter k.
    let mut next: BTreeMap<NodeIndex, u64> = BTreeMap::new();
    assert!(sim.run_until_idle(at_ms(1000), &mut |o| {
        let EventKind::Delivered {
            from,
            datagram,
            corrupted,
            duplicate,
            ..
        } = &o.event
        else {
            return;
        };
        let SocketAddr::V4(from) = from else {
            unreachable!()
        };
        let sender = from.ip().octets()[3];
        if usize::from(sender) == o.index.0 {
            assert!(
                !corrupted && !duplicate,
                "loopback copies are never damaged"
            );
            return;
        }
        dups += u64::from(*duplicate);
        corrupt += u64::from(*corrupted && !duplicate);
        let k = next.entry(o.index).or_default();
        if !duplicate {
            *k += 1;
        }
        let mut expected = vec![sender];
        expected.extend_from_slice(&(*k - 1).to_le_bytes());
        let flipped: u32 = datagram
            .iter()
            .zip(&expected)
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        assert_eq!(
            flipped,
            u32::from(*corrupted),
            "{datagram:?} vs {expected:?}"
        );
    }));
    let s = sim.stats(nodes[1]);
    let s0 = sim.stats(nodes[0]);
    assert_eq!(s.duplicated + s0.duplicated, dups);
    assert_eq!(s.corrupted + s0.corrupted, corrupt);
    assert!(s.duplicated > 20 && s.corrupted > 20, "{s:?}");
    assert_eq!(s.delivered, 1000 + s.duplicated);
    assert!(s.accounted());
}

#[test]
fn run_while_stops_on_the_predicate() {
    let (mut sim, nodes) = world(SimConfig::default(), 2, 1000);
    let stopped = sim.run_while(at_ms(10_000), &mut ignore, |s| {
        s.node(nodes[1]).counters_from(0).len() < 10
    });
    assert!(stopped);
    assert_eq!(sim.now(), at_ms(9) + Duration::from_micros(100));
    let stopped = sim.run_while(at_ms(20), &mut ignore, |_| true);
    assert!(!stopped);
    assert_eq!(sim.now(), at_ms(20));
}

#[test]
fn timers_fire_only_when_due_and_stale_timers_are_ignored() {
    let mut sim = Sim::new(SimConfig::default());
    let a = sim.add_node(addr(1), Chatter::new(1, 5));
    sim.run_until(at_ms(1) + Duration::from_micros(10), &mut ignore);
    // Push the deadline later: the timer armed for 2 ms becomes stale.
    sim.node_mut(a).next_send = at_ms(7);
    sim.poke(a);
    let mut timeouts = Vec::new();
    assert!(sim.run_until_idle(at_ms(100), &mut |o| {
        if o.event == EventKind::Timeout {
            timeouts.push(o.now);
        }
    }));
    assert_eq!(timeouts, vec![at_ms(7), at_ms(8), at_ms(9)]);
    assert_eq!(sim.stats(a).timeouts, 5);
}

fn fingerprint(seed: u64, loss: f64, jitter_us: u64, dup: f64) -> (u64, Vec<qs_sim::SimStats>) {
    let config = SimConfig {
        seed,
        jitter: Duration::from_micros(jitter_us),
        loss: LossModel::Bernoulli(loss),
        duplicate: dup,
        corrupt: 0.01,
        ..SimConfig::default()
    };
    let (mut sim, nodes) = world(config, 3, 50);
    sim.partition(&[vec![nodes[0]]]);
    sim.run_until(at_ms(20), &mut ignore);
    sim.heal();
    sim.freeze(nodes[1], at_ms(30));
    assert!(sim.run_until_idle(at_ms(1000), &mut ignore));
    (
        sim.trace_hash(),
        nodes.iter().map(|&n| sim.stats(n)).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_copy_is_accounted_for_and_runs_replay(
        seed in any::<u64>(),
        loss in 0.0f64..0.5,
        jitter_us in 0u64..3000,
        dup in 0.0f64..0.2,
    ) {
        let (hash, stats) = fingerprint(seed, loss, jitter_us, dup);
        for s in &stats {
            prop_assert!(s.accounted(), "{:?}", s);
            prop_assert_eq!(s.in_flight, 0);
            prop_assert_eq!(s.routed, 150);
        }
        prop_assert_eq!(fingerprint(seed, loss, jitter_us, dup).0, hash);
    }
}
