//! The per-requester repair limit, both sides: honest members under 5% loss are never
//! limited (every message arrives once and in order, nothing refused), while a flood of
//! repair requests in one member's name (what an outsider of a keyless cluster can send) is
//! served no more than the requester's budget, the rest counted as `repair_limited`.
//! `SIM_SEED=<n>` replays a seed.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{replay_hint, seed_from_env, EventKind, LossModel, NodeIndex, Sim, SimConfig};
use qs_transport::wire::{DataPacket, Header, PacketKind, HEADER_LEN};
use qs_transport::{Driven, Instant, NodeId, RegionId, TopicId, TrafficClass};
use quicksilver::core::{CoreConfig, NodeCore, RepairLimit};

const PUBLISHER: usize = 0;
const PAYLOAD: usize = 600;

fn topic() -> TopicId {
    TopicId::from_name("repair-limit")
}

fn addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, i as u8 + 1), 9000)
}

fn payload(s: u32) -> Bytes {
    let mut p = vec![(s % 251) as u8; PAYLOAD];
    p[..4].copy_from_slice(&s.to_be_bytes());
    Bytes::from(p)
}

struct World {
    sim: Sim<NodeCore>,
    idx: Vec<NodeIndex>,
    log: BTreeMap<usize, Vec<Bytes>>,
    /// The publisher's stream as a subscriber saw it: (region, epoch).
    stream: Option<(RegionId, u64)>,
}

impl World {
    fn new(seed: u64, nodes: usize, loss: f64, limit: RepairLimit) -> World {
        let mut config = SimConfig::with_seed(seed);
        config.loss = LossModel::Bernoulli(loss);
        let mut sim = Sim::new(config);
        let idx = (0..nodes)
            .map(|i| {
                let mut c = CoreConfig::new(NodeId(100 + i as u64), addr(i));
                c.seed = seed ^ i as u64;
                c.repair_limit = limit;
                let mut n = NodeCore::new(c, Instant::ZERO);
                if i != PUBLISHER {
                    n.subscribe(Instant::ZERO, topic());
                }
                sim.add_node(SocketAddr::V4(addr(i)), n)
            })
            .collect();
        World {
            sim,
            idx,
            log: BTreeMap::new(),
            stream: None,
        }
    }

    fn run_for(&mut self, d: Duration) {
        let (log, stream) = (&mut self.log, &mut self.stream);
        self.sim.run_for(d, &mut |o| {
            let i = o.index.0;
            if let EventKind::Delivered { datagram, .. } = &o.event {
                if Header::peek(datagram).is_ok_and(|h| h.kind == PacketKind::Data) {
                    if let Ok(p) = DataPacket::parse(datagram.slice(HEADER_LEN..datagram.len())) {
                        *stream = Some((p.region, p.epoch));
                    }
                }
            }
            common::collect_deliveries(o.node, log.entry(i).or_default());
        });
    }

    fn core(&mut self, i: usize) -> &mut NodeCore {
        self.sim.node_mut(self.idx[i])
    }

    fn publish(&mut self, from: u32, to: u32) {
        for s in from..to {
            while self.core(PUBLISHER).publish(topic(), payload(s)).is_err() {
                self.run_for(Duration::from_millis(5));
            }
            if s % 50 == 49 {
                self.sim.poke(self.idx[PUBLISHER]);
                self.run_for(Duration::from_millis(2));
            }
        }
        self.sim.poke(self.idx[PUBLISHER]);
    }

    fn delivered_exactly(&self, i: usize, n: u32) -> bool {
        let got = self.log.get(&i).map_or(&[][..], Vec::as_slice);
        got.len() == n as usize && got.iter().zip(0..n).all(|(p, s)| *p == payload(s))
    }
}

/// Runs 4 nodes under 5% loss with `limit`: whether all subscribers got every message once
/// and in order, repair packets refused by the limit, repairs served (all nodes).
fn honest_run(seed: u64, limit: RepairLimit) -> (bool, u64, u64) {
    const N: u32 = 6000;
    let mut w = World::new(seed, 4, 0.05, limit);
    w.run_for(Duration::from_secs(2));
    w.publish(0, N);
    w.run_for(Duration::from_secs(6));
    let complete = (1..4).all(|i| w.delivered_exactly(i, N));
    let stats: Vec<_> = (0..4).map(|i| w.core(i).stats()).collect();
    let limited = stats.iter().map(|s| s.drops.repair_limited).sum();
    let served = stats.iter().map(|s| s.repairs_served).sum();
    (complete, limited, served)
}

#[test]
fn honest_members_under_five_percent_loss_are_never_limited() {
    let seed = seed_from_env(41);
    let hint = replay_hint(seed, "--release --test sim_repair_limit");
    let (complete, limited, served) = honest_run(seed, RepairLimit::default());
    assert!(
        complete,
        "a subscriber lacks messages or got them out of order; {hint}"
    );
    assert!(
        served > 100,
        "only {served} repairs: the loss did not reach the ring; {hint}"
    );
    assert_eq!(
        limited, 0,
        "the default limit refused honest repairs; {hint}"
    );
}

#[test]
fn a_limit_far_below_the_loss_does_refuse_honest_repairs() {
    // The other side of the test above: the limit lies on the path honest repairs take.
    let seed = seed_from_env(41);
    let hint = replay_hint(seed, "--release --test sim_repair_limit");
    let tight = RepairLimit {
        floor_bytes: 2000,
        inflow_percent: 0,
        burst_intervals: 1,
        ..RepairLimit::default()
    };
    let (_, limited, _) = honest_run(seed, tight);
    assert!(
        limited > 0,
        "a 20 kB/s limit refused nothing under 5% loss; {hint}"
    );
}

/// Feeds the publisher 1,000 requests in subscriber 1's name over one second (from a
/// spoofed source address) and returns the repair bytes it sent, its data bytes sent and
/// its stats after.
fn flood(seed: u64, limit: RepairLimit) -> (u64, u64, quicksilver::core::CoreStats) {
    let mut w = World::new(seed, 3, 0.0, limit);
    w.run_for(Duration::from_secs(2));
    for s in 0..300 {
        let _ = w.core(PUBLISHER).publish(topic(), payload(s));
    }
    w.sim.poke(w.idx[PUBLISHER]);
    // Long enough for the data to reach the subscribers, too short for the region to
    // acknowledge it: the publisher still holds the packets. The sim is not run again, so
    // the window stays full for the whole flood.
    w.run_for(Duration::from_micros(300));
    let (region, epoch) = w.stream.expect("data reached a subscriber");
    let cluster = w.core(PUBLISHER).config().cluster;
    let spoofed = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 53));
    let start = w.sim.now();
    let mut buf = vec![0u8; 2048];
    let core = w.core(PUBLISHER);
    while core.poll_transmit(start, &mut buf).is_some() {}
    let mut repair_bytes = 0u64;
    for i in 0..1000u64 {
        let now = start + Duration::from_millis(i);
        core.handle_datagram(
            now,
            spoofed,
            common::repair_request(cluster, NodeId(101), region, epoch),
        );
        while let Some(t) = core.poll_transmit(now, &mut buf) {
            if t.class == TrafficClass::Repair {
                assert_eq!(t.destination, SocketAddr::V4(addr(1)));
                repair_bytes += t.len as u64;
            }
        }
    }
    let stats = core.stats();
    (repair_bytes, stats.data_bytes_sent, stats)
}

#[test]
fn a_flood_of_requests_in_a_members_name_is_served_no_more_than_its_budget() {
    let seed = seed_from_env(43);
    let hint = replay_hint(seed, "--release --test sim_repair_limit");
    let limit = RepairLimit::default();
    let (bytes, data, stats) = flood(seed, limit);
    // One second is ten intervals: a full bucket and ten refills at most, each refill the
    // floor plus the share of an interval's inflow and of what the publisher holds; both
    // are at most everything it ever sent.
    let refill = limit.floor_bytes + 2 * data * limit.inflow_percent / 100;
    let bound = (limit.burst_intervals + 10) * refill;
    assert!(bytes > 0, "nothing was served; {hint}");
    assert!(
        bytes <= bound,
        "served {bytes} B in a second to one requester, the budget allows {bound}; {hint}"
    );
    assert!(stats.drops.repair_limited > 0, "{:?}; {hint}", stats.drops);

    // The other side: without a binding limit the same flood draws every packet asked for,
    // far beyond the budget.
    let open = RepairLimit {
        floor_bytes: u64::MAX / 1024,
        ..limit
    };
    let (unlimited, _, stats) = flood(seed, open);
    assert_eq!(stats.drops.repair_limited, 0, "{hint}");
    assert!(
        unlimited > 4 * bound,
        "unlimited, the flood drew {unlimited} B, not far beyond the budget {bound}; {hint}"
    );
}
