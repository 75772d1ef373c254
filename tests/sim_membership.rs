//! Reliable delivery while membership moves, in the deterministic simulator: senders paused
//! past failure detection, restarted with the same id, crashing as region members; receivers
//! changing subscriptions, crashing, joining with the lowest id; slow links. An oracle checks
//! every delivery as it happens (each receiver gets each sender's messages at most once and
//! in publish order, uncorrupted) and every node's invariants after every event; each
//! scenario then states what must have been delivered.
//!
//! `SIM_SEED=<n>` replays a seed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{replay_hint, seed_from_env, LossModel, NodeIndex, Observation, Sim, SimConfig};
use qs_transport::{NodeId, TopicId};
use quicksilver::core::{CoreConfig, Event, NodeCore};

fn topic(t: u32) -> TopicId {
    TopicId::from_name(&format!("m-{t}"))
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1),
        9000,
    )
}

/// Payload: sender index, message number, topic number, then filler.
fn payload(sender: usize, n: u32, t: u32, size: usize) -> Bytes {
    let mut b = vec![0u8; size.max(12)];
    b[0..4].copy_from_slice(&(sender as u32).to_be_bytes());
    b[4..8].copy_from_slice(&n.to_be_bytes());
    b[8..12].copy_from_slice(&t.to_be_bytes());
    for (i, x) in b[12..].iter_mut().enumerate() {
        *x = (n as usize + i) as u8;
    }
    Bytes::from(b)
}

fn decode(p: &[u8]) -> (usize, u32, u32) {
    let u = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
    (u(0) as usize, u(4), u(8))
}

/// What each receiver got, checked as it happens.
#[derive(Default)]
struct Oracle {
    /// Per (receiver, sender): message numbers delivered, in order.
    got: BTreeMap<(usize, usize), Vec<u32>>,
    /// Gap events per receiver: (sender id, packets).
    gaps: BTreeMap<usize, Vec<(NodeId, u32)>>,
    /// Other events per receiver.
    events: BTreeMap<usize, Vec<Event>>,
}

struct World {
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    seed: u64,
    size: usize,
    oracle: Oracle,
    /// Per node: next message number to publish.
    next: BTreeMap<usize, u32>,
    /// Node index by node id (ids can be reused by restarts).
    by_id: BTreeMap<NodeId, usize>,
}

fn config(i: usize, seed: u64, incarnation: u64) -> CoreConfig {
    let mut c = CoreConfig::new(NodeId(1000 + i as u64), addr(i));
    c.seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64) ^ incarnation << 32;
    c.incarnation = incarnation;
    c.send_window_packets = 2048;
    c.reorder_window_packets = 4096;
    c.send_queue_bytes = 1 << 20;
    c
}

impl World {
    fn new(sim: SimConfig, nodes: usize, size: usize) -> World {
        World::with(sim, nodes, size, |_, _| {})
    }

    /// Like [`World::new`], each node's config changed by `tweak(index, config)` first.
    fn with(
        sim: SimConfig,
        nodes: usize,
        size: usize,
        tweak: impl Fn(usize, &mut CoreConfig),
    ) -> World {
        let seed = sim.seed;
        let mut w = World {
            sim: Sim::new(sim),
            idx: Vec::new(),
            seed,
            size,
            oracle: Oracle::default(),
            next: BTreeMap::new(),
            by_id: BTreeMap::new(),
        };
        for i in 0..nodes {
            let mut c = config(i, seed, 1);
            tweak(i, &mut c);
            w.add(i, c);
        }
        w
    }

    fn add(&mut self, i: usize, c: CoreConfig) {
        self.by_id.insert(c.id, i);
        let core = NodeCore::new(c, self.sim.now());
        if i < self.idx.len() {
            self.sim.restart(self.idx[i], core);
        } else {
            assert_eq!(i, self.idx.len());
            self.idx
                .push(self.sim.add_node(SocketAddr::V4(addr(i)), core));
        }
    }

    fn core(&self, i: usize) -> &NodeCore {
        self.sim.node(self.idx[i])
    }

    fn subscribe(&mut self, i: usize, topics: &[u32]) {
        let now = self.sim.now();
        let n = self.sim.node_mut(self.idx[i]);
        n.subscribe_all(now, topics.iter().map(|t| topic(*t)));
        self.sim.poke(self.idx[i]);
    }

    /// Runs `d` of virtual time, checking every delivery and every node after every event.
    fn run(&mut self, d: Duration) {
        let (seed, by_id, oracle, idx) = (self.seed, &self.by_id, &mut self.oracle, &self.idx);
        self.sim
            .run_for(d, &mut |o: &mut Observation<'_, NodeCore>| {
                o.node.check_invariants();
                let r = idx.iter().position(|x| *x == o.index).expect("known node");
                while let Some(e) = o.node.poll_event() {
                    match e {
                        Event::Delivered(dl) => {
                            let (s, n, t) = decode(&dl.payload);
                            assert_eq!(by_id.get(&dl.sender), Some(&s), "sender id (seed {seed})");
                            assert_eq!(dl.topic, topic(t), "topic (seed {seed})");
                            assert_eq!(dl.payload, payload(s, n, t, dl.payload.len()), "corrupt");
                            let list = oracle.got.entry((r, s)).or_default();
                            if let Some(last) = list.last() {
                                assert!(
                                    n > *last,
                                    "node {r}: message {n} from {s} after {last}: duplicated or \
                                 reordered; {}",
                                    replay_hint(seed, "sim_membership")
                                );
                            }
                            list.push(n);
                        }
                        Event::Gap { sender, missed, .. } => {
                            oracle.gaps.entry(r).or_default().push((sender, missed));
                        }
                        other => oracle.events.entry(r).or_default().push(other),
                    }
                }
            });
    }

    /// Node `i` publishes `count` messages on `t`, `per_ms` a millisecond, waiting out
    /// back-pressure; returns the message numbers it used.
    fn publish(&mut self, i: usize, t: u32, count: u32, per_ms: u32) -> std::ops::Range<u32> {
        let first = *self.next.entry(i).or_insert(0);
        let mut n = first;
        let mut refused = 0;
        while n < first + count {
            let p = payload(i, n, t, self.size);
            let node = self.sim.node_mut(self.idx[i]);
            if node.publish(topic(t), p).is_ok() {
                n += 1;
                refused = 0;
                self.sim.poke(self.idx[i]);
                if (n - first) % per_ms.max(1) != 0 {
                    continue;
                }
                self.run(Duration::from_millis(1));
            } else {
                self.wait_for_window(i, &mut refused);
            }
        }
        self.next.insert(i, n);
        first..n
    }

    /// Runs a millisecond for sender `i`, whose publish was refused `refused` times in a row
    /// before: panics once that is a minute of simulated time (a window that never opens
    /// again fails the test instead of hanging it, as one did at stop 29).
    fn wait_for_window(&mut self, i: usize, refused: &mut u32) {
        *refused += 1;
        assert!(
            *refused < 60_000,
            "sender {i} could not publish for a minute (its window never opened); {}",
            // The test's name: libtest names each test's thread after it.
            self.hint(std::thread::current().name().unwrap_or("sim_membership"))
        );
        self.run(Duration::from_millis(1));
    }

    /// Messages of `from` that `r` got, in order.
    fn got(&self, r: usize, from: usize) -> &[u32] {
        self.oracle.got.get(&(r, from)).map_or(&[], Vec::as_slice)
    }

    fn hint(&self, name: &str) -> String {
        replay_hint(self.seed, name)
    }

    /// Panics, briefly, unless `r` got exactly `want` of sender `from`, in order.
    fn expect_exactly(
        &self,
        r: usize,
        from: usize,
        want: impl IntoIterator<Item = u32>,
        name: &str,
    ) {
        let want: Vec<u32> = want.into_iter().collect();
        let got = self.got(r, from);
        if got == want.as_slice() {
            return;
        }
        let missing: Vec<u32> = want
            .iter()
            .copied()
            .filter(|n| got.binary_search(n).is_err())
            .collect();
        let extra: Vec<u32> = got
            .iter()
            .copied()
            .filter(|n| want.binary_search(n).is_err())
            .collect();
        panic!(
            "node {r} from {from}: {} of {} delivered; missing {:?}{}, unexpected {:?}; {}",
            got.len(),
            want.len(),
            &missing[..missing.len().min(10)],
            if missing.len() > 10 { " ..." } else { "" },
            &extra[..extra.len().min(10)],
            self.hint(name)
        );
    }
}

fn lossy(seed: u64, loss: f64) -> SimConfig {
    SimConfig {
        latency: Duration::from_micros(100),
        loss: LossModel::Bernoulli(loss),
        ..SimConfig::with_seed(seed)
    }
}

#[test]
fn a_sender_frozen_past_failure_detection_loses_and_duplicates_nothing() {
    for (seed, early) in [(seed_from_env(11), true), (seed_from_env(12), false)] {
        // Receivers 0..3 subscribe; node 3 publishes, and is frozen for 10 s mid-stream
        // (early: after 200 messages; late: after 1,800 of 2,000), under 1% loss.
        let mut w = World::new(lossy(seed, 0.01), 4, 200);
        for r in 0..3 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        let before = if early { 200 } else { 1800 };
        w.publish(3, 1, before, 20);
        let s = w.idx[3];
        let until = w.sim.now() + Duration::from_secs(10);
        w.sim.freeze(s, until);
        w.run(Duration::from_secs(10));
        let sender = w.core(3).id();
        for r in 0..3 {
            let downs = w.oracle.events.get(&r).into_iter().flatten();
            assert!(
                downs.filter(|e| **e == Event::PeerDown(sender)).count() > 0,
                "node {r} never declared the frozen sender down: the test would prove nothing"
            );
        }
        w.publish(3, 1, 2000 - before, 20);
        w.run(Duration::from_secs(5));
        for r in 0..3 {
            w.expect_exactly(r, 3, 0..2000, "frozen");
            assert!(!w.oracle.gaps.contains_key(&r), "node {r} reported gaps");
        }
        assert!(
            w.core(3).is_idle(),
            "everything acknowledged; {}",
            w.hint("frozen")
        );
    }
}

#[test]
fn a_sender_restarted_with_the_same_id_starts_a_new_stream_that_is_delivered_whole() {
    for (seed, after) in [(21, 0u64), (22, 1), (23, 10)] {
        let seed = seed_from_env(seed);
        let mut w = World::new(lossy(seed, 0.01), 4, 200);
        for r in 0..3 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        let first = w.publish(3, 1, 1000, 20);
        w.run(Duration::from_millis(50));
        w.sim.crash(w.idx[3]);
        w.run(Duration::from_secs(after));
        // Same id and address, a later incarnation; its numbering starts over.
        w.add(3, config(3, seed ^ 0xabc, 2));
        w.next.insert(3, 1_000_000);
        w.run(Duration::from_secs(2));
        let second = w.publish(3, 1, 1000, 20);
        w.run(Duration::from_secs(4));
        for r in 0..3 {
            let got = w.got(r, 3);
            let new: Vec<u32> = got.iter().copied().filter(|n| *n >= second.start).collect();
            assert!(
                new.iter().copied().eq(second.clone()),
                "node {r}: {} of the new stream's {} delivered; {}",
                new.len(),
                second.len(),
                w.hint("restart")
            );
            let old = got.iter().filter(|n| first.contains(n)).count();
            assert!(old <= 1000);
        }
        assert!(
            w.core(3).is_idle(),
            "the new stream is acknowledged; {}",
            w.hint("restart")
        );
    }
}

#[test]
fn twenty_five_receivers_behind_ten_millisecond_links_complete_their_rounds() {
    let seed = seed_from_env(31);
    let mut w = World::new(lossy(seed, 0.005), 26, 200);
    for r in 0..25 {
        w.subscribe(r, &[1]);
        w.sim.set_node_delay(w.idx[r], Duration::from_millis(10));
    }
    w.run(Duration::from_secs(3));
    w.publish(25, 1, 3000, 10);
    w.run(Duration::from_secs(10));
    for r in 0..25 {
        w.expect_exactly(r, 25, 0..3000, "slow links");
    }
    assert!(
        w.core(25).is_idle(),
        "acknowledged; {}",
        w.hint("slow links")
    );
    let leader = (0..25).min_by_key(|r| w.core(*r).id()).unwrap();
    let ring = w.core(leader).ring().unwrap().stats();
    println!("25 members behind 10 ms: {ring:?}");
    assert!(
        ring.rounds_regenerated * 10 <= ring.rounds_completed,
        "rounds keep timing out: {ring:?}; {}",
        w.hint("slow links")
    );
}

#[test]
fn a_new_lowest_id_member_joining_after_the_last_publish_leaves_the_sender_idle() {
    let seed = seed_from_env(41);
    let mut w = World::new(lossy(seed, 0.01), 4, 200);
    for r in 0..3 {
        w.subscribe(r, &[1]);
    }
    w.run(Duration::from_secs(2));
    let sent = w.publish(3, 1, 500, 20);
    // Node 4 gets the lowest id of all: it becomes the region's leader at once.
    let mut c = config(4, seed, 1);
    c.id = NodeId(1);
    w.add(4, c);
    w.subscribe(4, &[1]);
    w.run(Duration::from_secs(6));
    for r in 0..3 {
        w.expect_exactly(r, 3, sent.clone(), "joiner");
    }
    assert!(
        w.core(3).is_idle(),
        "the sender is acknowledged; {}",
        w.hint("joiner")
    );
    // What the joiner did not get of the stream was before its time, and is counted so
    // (here one message per packet).
    let (got, missed) = (w.got(4, 3).len() as u64, w.core(4).stats().missed_on_join);
    assert_eq!(w.core(3).stats().data_packets_sent, 500);
    assert_eq!(got + missed, 500, "{}", w.hint("joiner"));
}

#[test]
fn survivors_of_a_member_sender_crash_deliver_the_same_messages() {
    for seed in 51..61 {
        let seed = seed_from_env(seed);
        // Nodes 0..4 all subscribe; node 3 (a region member) publishes under 2% loss and
        // crashes mid-stream, right after a publish, with packets still being repaired.
        // A short grace, so that the stream's end is seen within the run.
        let mut w = World::with(lossy(seed, 0.02), 4, 200, |_, c| {
            c.departed_grace = Duration::from_secs(2);
        });
        for r in 0..4 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        w.publish(3, 1, 500, 100);
        // The last messages reach node 0 only half the time: it depends on the others.
        w.sim.set_node_loss(w.idx[0], LossModel::Bernoulli(0.5));
        w.publish(3, 1, 100, 100);
        // Mid-burst: some of the last packets are out, some reached only some members.
        w.run(Duration::from_micros(150));
        w.sim.crash(w.idx[3]);
        w.sim.clear_node_loss(w.idx[0]);
        w.run(Duration::from_secs(8));
        let sets: Vec<&[u32]> = (0..3).map(|r| w.got(r, 3)).collect();
        println!(
            "seed {seed}: survivors delivered {:?} of 600",
            sets.iter().map(|s| s.len()).collect::<Vec<_>>()
        );
        for r in 1..3 {
            assert_eq!(
                sets[r],
                sets[0],
                "survivors 0 and {r} disagree on the crashed sender's messages; {}",
                w.hint("sim_membership survivors")
            );
        }
        let sender = w.core(3).id();
        for (r, set) in sets.iter().enumerate() {
            let lost: Vec<(u64, u64)> = w
                .oracle
                .events
                .get(&r)
                .into_iter()
                .flatten()
                .filter_map(|e| match e {
                    Event::SenderLost {
                        sender: s,
                        delivered,
                        missed,
                        ..
                    } if *s == sender => Some((*delivered, *missed)),
                    _ => None,
                })
                .collect();
            let gaps: u64 = w
                .oracle
                .gaps
                .get(&r)
                .into_iter()
                .flatten()
                .map(|g| u64::from(g.1))
                .sum();
            assert_eq!(
                lost,
                vec![(set.len() as u64, gaps)],
                "node {r}: the stream's end is reported once, with what it delivered; {}",
                w.hint("sim_membership survivors")
            );
        }
    }
}

/// Alternating topics: message n goes to topic 1 + n % 2.
fn publish_alternating(w: &mut World, i: usize, count: u32) -> std::ops::Range<u32> {
    let first = *w.next.entry(i).or_insert(0);
    for n in first..first + count {
        let t = 1 + n % 2;
        let mut refused = 0;
        loop {
            let p = payload(i, n, t, w.size);
            let node = w.sim.node_mut(w.idx[i]);
            if node.publish(topic(t), p).is_ok() {
                w.sim.poke(w.idx[i]);
                break;
            }
            w.wait_for_window(i, &mut refused);
        }
        if n % 20 == 19 {
            w.run(Duration::from_millis(1));
        }
    }
    w.next.insert(i, first + count);
    first..first + count
}

#[test]
fn a_receiver_that_drops_and_adds_a_topic_mid_stream_keeps_the_other_exactly_once() {
    for seed in 61..71 {
        let seed = seed_from_env(seed);
        // Receivers 0..3 subscribe topics 1 and 2; node 3 publishes to both, alternating.
        // Mid-stream node 0 drops topic 2 (it moves to another region), later takes it back.
        let mut w = World::new(lossy(seed, 0.01), 4, 200);
        for r in 0..3 {
            w.subscribe(r, &[1, 2]);
        }
        w.run(Duration::from_secs(2));
        publish_alternating(&mut w, 3, 1000);
        let now = w.sim.now();
        w.sim.node_mut(w.idx[0]).unsubscribe(now, topic(2));
        w.sim.poke(w.idx[0]);
        let b = publish_alternating(&mut w, 3, 1000);
        w.run(Duration::from_millis(500));
        w.subscribe(0, &[2]);
        let c = publish_alternating(&mut w, 3, 1000);
        w.run(Duration::from_secs(5));
        for r in 1..3 {
            w.expect_exactly(r, 3, 0..3000, "sim_membership drops_and_adds");
        }
        // Node 0 keeps every topic-1 message; topic 2 only before it dropped it and after it
        // took it back (around each change, either side may own a message: not both).
        let got = w.got(0, 3);
        let ones: Vec<u32> = got.iter().copied().filter(|n| n % 2 == 0).collect();
        let want: Vec<u32> = (0..3000).filter(|n| n % 2 == 0).collect();
        let missing: Vec<u32> = want
            .iter()
            .copied()
            .filter(|n| ones.binary_search(n).is_err())
            .collect();
        assert_eq!(
            ones.len(),
            want.len(),
            "node 0 lost topic-1 messages {missing:?} across its region changes (b {b:?}, \
             c {c:?}; gap events {:?}); {}",
            w.oracle.gaps.get(&0),
            w.hint("sim_membership drops_and_adds")
        );
        assert_eq!(ones, want);
        let twos_mid = got
            .iter()
            .filter(|n| *n % 2 == 1 && b.start + 100 <= **n && **n < b.end - 100)
            .count();
        assert_eq!(twos_mid, 0, "topic 2 delivered while unsubscribed");
        let twos_late = got
            .iter()
            .filter(|n| *n % 2 == 1 && c.start + 200 <= **n)
            .count();
        assert!(twos_late > 0, "topic 2 comes again after resubscribing");
        assert!(
            w.core(3).is_idle(),
            "{}",
            w.hint("sim_membership drops_and_adds")
        );
        for r in 0..3 {
            assert!(!w.oracle.gaps.contains_key(&r), "node {r} reported gaps");
        }
        // The handover did it (not a timeout): both changes departed the old region and
        // ended with every stream at its cut; the sender marked each cut in both regions.
        let h = w.core(0).stats().handover;
        assert_eq!(
            (
                h.departures,
                h.completed,
                h.timed_out,
                h.cut_short,
                h.gates_timed_out
            ),
            (2, 2, 0, 0, 0),
            "node 0's handovers: {h:?}; {}",
            w.hint("sim_membership drops_and_adds")
        );
        assert_eq!(w.core(3).stats().handover.markers_sent, 4);
    }
}

#[test]
fn thirty_two_senders_into_one_region_are_all_acknowledged_and_delivered() {
    let seed = seed_from_env(71);
    // Receivers 0..3; nodes 3..35 publish 200 messages each, interleaved, under 1% loss: more
    // senders than one token carries records for, so they must take turns in the token.
    let mut w = World::new(lossy(seed, 0.01), 35, 200);
    for r in 0..3 {
        w.subscribe(r, &[1]);
    }
    w.run(Duration::from_secs(3));
    for _round in 0..10 {
        for s in 3..35 {
            w.publish(s, 1, 20, 20);
        }
    }
    w.run(Duration::from_secs(8));
    for r in 0..3 {
        for s in 3..35 {
            w.expect_exactly(r, s, 0..200, "sim_membership thirty_two");
        }
    }
    for s in 3..35 {
        assert!(
            w.core(s).is_idle(),
            "sender {s} is acknowledged; {}",
            w.hint("sim_membership thirty_two")
        );
    }
    for r in 0..3 {
        assert!(!w.oracle.gaps.contains_key(&r), "node {r} reported gaps");
    }
}

/// The figure of issue 10: the region round time against the region's size, with a token per
/// partition and a ring of partition leaders (100 µs links, 1 sender, steady traffic). Not a
/// CI test (it asserts nothing beyond completion); run with `--ignored --nocapture`.
#[test]
#[ignore = "measurement: cargo test --release --test sim_membership round_time -- --ignored --nocapture"]
fn round_time_against_region_size() {
    // `QS_ROUND_SIZES="100 500"` measures only those sizes.
    let sizes: Vec<usize> = std::env::var("QS_ROUND_SIZES").map_or(vec![5, 25, 100, 500], |v| {
        v.split_whitespace()
            .map(|n| n.parse().expect("QS_ROUND_SIZES: numbers"))
            .collect()
    });
    for n in sizes {
        let seed = seed_from_env(81);
        let mut w = World::new(lossy(seed, 0.0), n + 1, 200);
        for r in 0..n {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(4));
        w.publish(n, 1, 2000, 10);
        w.run(Duration::from_secs(2));
        let leader = (0..n).min_by_key(|r| w.core(*r).id()).unwrap();
        let ring = w.core(leader).ring().unwrap().stats();
        println!(
            "region of {n}: round {} µs, hop rtt {} µs, rounds {} completed / {} regenerated, \
             sender idle {}",
            ring.round_time_us,
            ring.hop_rtt_us,
            ring.rounds_completed,
            ring.rounds_regenerated,
            w.core(n).is_idle()
        );
    }
}

#[test]
fn a_subscriber_the_sender_waited_for_gets_the_stream_from_its_start() {
    // The sender learns of a third subscriber before the region's leader does and starts
    // publishing at once (as `qs pub --subscribers 3` does): for a moment the ring's view lacks
    // a member the sender already sends to. Its stability must wait for it, or the ring frees
    // and skips what that member lost meanwhile (seen as silent loss under 1% loss).
    let first = seed_from_env(61);
    for seed in first..first + 10 {
        let mut w = World::new(lossy(seed, 0.01), 4, 200);
        for r in 0..2 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        // Node 2's subscription reaches the sender first: 0 and 1 hear of it only once the
        // sender publishes (gossip then relays it).
        for from in [2, 3] {
            for to in [0, 1] {
                w.sim.block(w.idx[from], w.idx[to]);
            }
        }
        w.subscribe(2, &[1]);
        while w.core(3).subscribers_of(topic(1)) < 3 {
            w.run(Duration::from_millis(1));
        }
        w.sim.unblock_all();
        let leader_view = w.core(0).ring().map_or(0, |g| g.view().members().len());
        assert_eq!(
            leader_view,
            2,
            "the race is set up; {}",
            w.hint("waited_for")
        );
        let sent = w.publish(3, 1, 3000, 20);
        w.run(Duration::from_secs(5));
        for r in 0..3 {
            w.expect_exactly(r, 3, sent.clone(), "waited_for");
        }
        let holds = w.core(0).ring().map_or(0, |g| g.stats().view_holds);
        assert!(
            holds > 0,
            "the leader held the stream back; {}",
            w.hint("waited_for")
        );
        assert!(
            w.core(3).is_idle(),
            "acknowledged; {}",
            w.hint("waited_for")
        );
    }
}

#[test]
fn a_one_way_link_failure_between_two_members_loses_and_duplicates_nothing() {
    // Asymmetric reachability: node 1 hears node 2, node 2 does not hear node 1 (tokens,
    // acknowledgements and repairs from 1 to 2 are lost) for three seconds mid-stream, past
    // failure detection, under 1% loss; then the link heals.
    let seed = seed_from_env(71);
    let mut w = World::new(lossy(seed, 0.01), 4, 200);
    for r in 0..3 {
        w.subscribe(r, &[1]);
    }
    w.run(Duration::from_secs(2));
    let mut sent = w.publish(3, 1, 1000, 10);
    w.sim.block(w.idx[1], w.idx[2]);
    sent.end = w.publish(3, 1, 3000, 1).end;
    w.sim.unblock_all();
    sent.end = w.publish(3, 1, 1000, 10).end;
    w.run(Duration::from_secs(10));
    for r in 0..3 {
        w.expect_exactly(r, 3, sent.clone(), "one_way");
    }
    assert!(w.core(3).is_idle(), "acknowledged; {}", w.hint("one_way"));
    let retried: u64 = (0..3)
        .filter_map(|r| w.core(r).ring())
        .map(|g| g.stats().hop_retransmits + g.stats().hops_skipped)
        .sum();
    assert!(
        retried > 0,
        "the one-way failure hit the ring; {}",
        w.hint("one_way")
    );
}

#[test]
fn a_sender_leaves_only_once_a_member_the_ring_skipped_has_everything() {
    // Member 2 hears nothing for 300 ms at the end of the stream: the leader skips it, so the
    // rest of the region acknowledges the tail without it. The sender, idle as soon as it may
    // go, says goodbye at once: member 2 must still end with every message (before, the
    // goodbye ended its stream while it was still repairing from its peers: gaps).
    let first = seed_from_env(81);
    for seed in first..first + 5 {
        let mut w = World::new(lossy(seed, 0.02), 4, 200);
        for r in 0..3 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        let mut sent = w.publish(3, 1, 2000, 10);
        for from in [0, 1, 3] {
            w.sim.block(w.idx[from], w.idx[2]);
        }
        sent.end = w.publish(3, 1, 500, 10).end;
        w.run(Duration::from_millis(250));
        w.sim.unblock_all();
        let mut waited = 0;
        while !w.core(3).is_idle() {
            w.run(Duration::from_millis(1));
            waited += 1;
            assert!(
                waited < 20_000,
                "the sender never settles; {}",
                w.hint("leaves_only_once")
            );
        }
        let now = w.sim.now();
        w.sim.node_mut(w.idx[3]).leave(now);
        w.sim.poke(w.idx[3]);
        w.run(Duration::from_secs(5));
        for r in 0..3 {
            w.expect_exactly(r, 3, sent.clone(), "leaves_only_once");
        }
        let skipped: u64 = (0..2)
            .filter_map(|r| w.core(r).ring())
            .map(|g| g.stats().hops_skipped)
            .sum();
        assert!(
            skipped > 0,
            "member 2 was skipped; {}",
            w.hint("leaves_only_once")
        );
    }
}

/// A lasting one-way failure: a member that never hears the region's leader is skipped by
/// every round and, visited by no token, is never told to repair. Once it has waited longer
/// than the walks take (`RingConfig::unvisited_after`) it asks a caretaker and the sender
/// for its holes itself; the members the walks visit never do.
#[test]
fn a_member_that_never_hears_the_leader_still_gets_everything() {
    let first = seed_from_env(91);
    for seed in first..first + 3 {
        let mut w = World::new(lossy(seed, 0.02), 4, 200);
        for r in 0..3 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        // Node 0 has the lowest id: it leads the region. Node 1 hears nothing of it from now
        // on.
        w.sim.block(w.idx[0], w.idx[1]);
        let sent = w.publish(3, 1, 2000, 10);
        w.run(Duration::from_secs(10));
        for r in 0..3 {
            w.expect_exactly(r, 3, sent.clone(), "never_hears_the_leader");
        }
        let fallbacks: Vec<u64> = (0..3)
            .map(|r| {
                w.core(r)
                    .ring()
                    .map_or(0, |g| g.stats().unvisited_fallbacks)
            })
            .collect();
        assert!(
            fallbacks[1] > 0 && fallbacks[0] == 0 && fallbacks[2] == 0,
            "only the member left out falls back: {fallbacks:?}; {}",
            w.hint("never_hears_the_leader")
        );
    }
}

/// Sequence numbers near the wrap, end to end: the cluster starts its streams 1,000 packets
/// before the 32-bit sequence space wraps (`CoreConfig::first_seq`), and a 2,000-packet
/// stream under 1% loss crosses it. Every message arrives exactly once and in order, and the
/// sender ends with everything acknowledged and freed (those after the wrap included), the
/// members with nothing cached.
#[test]
fn a_stream_that_crosses_the_sequence_wrap_delivers_everything_once_and_is_freed() {
    let start = qs_transport::Seq(u32::MAX - 999);
    let first = seed_from_env(101);
    for seed in first..first + 3 {
        // 1,000-byte messages: one per packet.
        let mut w = World::with(lossy(seed, 0.01), 4, 1000, |_, c| c.first_seq = start);
        for r in 0..3 {
            w.subscribe(r, &[1]);
        }
        w.run(Duration::from_secs(2));
        let sent = w.publish(3, 1, 2000, 10);
        w.run(Duration::from_secs(10));
        for r in 0..3 {
            w.expect_exactly(r, 3, sent.clone(), "crosses_the_sequence_wrap");
        }
        let s = w.core(3).stats();
        let before_wrap = u64::from(start.distance_to(qs_transport::Seq(0)) as u32);
        assert!(
            s.acked_packets > before_wrap + 500 && s.unacked_packets == 0,
            "the sender freed packets past the wrap: {} acknowledged, {} not; {}",
            s.acked_packets,
            s.unacked_packets,
            w.hint("crosses_the_sequence_wrap")
        );
        for r in 0..3 {
            assert_eq!(
                w.core(r).stats().cached_packets,
                0,
                "member {r} still caches"
            );
            assert_eq!(w.core(r).stats().gaps, 0);
        }
    }
}

/// The ring's side of a handover: node 3 moves into the region of nodes 0 and 1, whose leader
/// (node 0) hears nothing from node 3 for 300 ms, so it learns of the move second-hand, while
/// the sender marks the cut at once; node 3 loses half its data meanwhile. Everything from the
/// cut on must reach node 3 once and in order, with no gap. The leader holds the stream's
/// stability before the `Joined` marker while its view lacks node 3
/// (`Ring::hold_for_joiner`; asserted to engage). Honest limit: here the leader learns fast
/// enough that the peers still hold node 3's holes without the hold too (a no-op hold fails
/// only the `join_holds` check); the ring's unit test covers both sides of the hold.
#[test]
fn a_member_moving_into_a_region_whose_leader_learns_late_loses_nothing() {
    for seed in 111..116 {
        let seed = seed_from_env(seed);
        // Nodes 0, 1: topic 1 (leader 0). Nodes 2, 3: topics 1 and 2. Node 4 publishes both.
        let mut w = World::new(lossy(seed, 0.0), 5, 200);
        w.subscribe(0, &[1]);
        w.subscribe(1, &[1]);
        w.subscribe(2, &[1, 2]);
        w.subscribe(3, &[1, 2]);
        w.run(Duration::from_secs(2));
        publish_alternating(&mut w, 4, 1000);
        w.sim.block(w.idx[3], w.idx[0]);
        w.sim.set_node_loss(w.idx[3], LossModel::Bernoulli(0.5));
        let now = w.sim.now();
        w.sim.node_mut(w.idx[3]).unsubscribe(now, topic(2));
        w.sim.poke(w.idx[3]);
        let b = publish_alternating(&mut w, 4, 1000);
        w.run(Duration::from_millis(300));
        w.sim.unblock_all();
        w.sim.clear_node_loss(w.idx[3]);
        publish_alternating(&mut w, 4, 1000);
        w.run(Duration::from_secs(5));
        let holds = w.core(0).ring().map_or(0, |r| r.stats().join_holds);
        let st = w.core(3).stats();
        println!(
            "seed {seed}: leader's join holds {holds}, b {b:?}; node 3 repaired {:?}, missed on \
             join {}, requested {}",
            st.repaired, st.missed_on_join, st.ring.requested
        );
        for r in [0, 1, 2] {
            let want: Vec<u32> = match r {
                2 => (0..3000).collect(),
                _ => (0..3000).filter(|n| n % 2 == 0).collect(),
            };
            w.expect_exactly(r, 4, want, "sim_membership leader_learns_late");
        }
        let ones: Vec<u32> = w.got(3, 4).iter().copied().filter(|n| n % 2 == 0).collect();
        let want: Vec<u32> = (0..3000).filter(|n| n % 2 == 0).collect();
        let missing: Vec<u32> = want
            .iter()
            .copied()
            .filter(|n| ones.binary_search(n).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "node 3 lost topic-1 messages {missing:?} (gaps {:?}); {}",
            w.oracle.gaps.get(&3),
            w.hint("sim_membership leader_learns_late")
        );
        assert_eq!(ones, want);
        for r in 0..4 {
            assert!(!w.oracle.gaps.contains_key(&r), "node {r} reported gaps");
        }
        assert!(
            holds > 0,
            "the leader held the stream for the joiner (seed {seed})"
        );
    }
}
