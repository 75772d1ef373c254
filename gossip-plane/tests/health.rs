#![allow(missing_docs)]
//! Astrolabe-style health aggregation in the simulator: exact region and cluster aggregates on
//! every node with a capped per-node table, O(log N) propagation of a change, expiry of a
//! crashed node.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use qs_gossip::{Aggregate, GossipNode, Metric, NodeHealth};
use qs_sim::{NodeIndex, Observation, Sim, SimConfig};
use qs_transport::{NodeId, RegionId};

const N: usize = 100;
const REGIONS: usize = 5;
const RECORDS_MAX: usize = 40;
const EXPIRY: Duration = Duration::from_secs(20);

fn region(i: usize) -> RegionId {
    RegionId(1000 + (i % REGIONS) as u64)
}

/// Distinct, integral values (so sums are exact in any order).
fn values(i: usize) -> NodeHealth {
    NodeHealth {
        load: (i % 17) as f32,
        recv_rate: 1000.0 + 3.0 * i as f32,
        loss: ((i * 7) % 101) as f32,
        repairs: (N - i) as f32,
        backlog: ((i * i) % 997) as f32,
        lag: (i % 13) as f32,
        lateral: ((i * 3) % 29) as f32,
        peer: (i % 7) as f32,
        sender: ((i * 5) % 11) as f32,
    }
}

/// The truth, computed independently of `Aggregate`: count, min, max, sum and the worst node
/// (largest value, lowest id among equals) per metric.
#[derive(Debug, Clone, PartialEq)]
struct Truth {
    count: u32,
    per_metric: Vec<(f32, f32, f64, NodeId)>,
}

fn truth(nodes: &[(NodeId, NodeHealth)]) -> Truth {
    let per_metric = Metric::ALL
        .iter()
        .map(|m| {
            let vals: Vec<(NodeId, f32)> = nodes.iter().map(|(id, h)| (*id, h.value(*m))).collect();
            let min = vals.iter().map(|v| v.1).fold(f32::INFINITY, f32::min);
            let max = vals.iter().map(|v| v.1).fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = vals.iter().map(|v| f64::from(v.1)).sum();
            let worst = vals
                .iter()
                .filter(|v| v.1 == max)
                .map(|v| v.0)
                .min()
                .unwrap();
            (min, max, sum, worst)
        })
        .collect();
    Truth {
        count: nodes.len() as u32,
        per_metric,
    }
}

fn matches(a: Option<&Aggregate>, t: &Truth) -> bool {
    let Some(a) = a else { return false };
    a.count == t.count
        && Metric::ALL
            .iter()
            .zip(&t.per_metric)
            .all(|(m, (min, max, sum, worst))| {
                let s = a.metric(*m);
                s.min == *min && s.max == *max && s.sum == *sum && s.worst == *worst
            })
}

struct World {
    sim: Sim<GossipNode>,
    values: BTreeMap<usize, NodeHealth>,
    live: Vec<NodeIndex>,
    max_records: usize,
}

fn observe_health(max_records: &mut usize, o: &mut Observation<'_, GossipNode>) {
    o.node.check_invariants();
    let len = o.node.health().len();
    *max_records = (*max_records).max(len);
    assert!(len <= RECORDS_MAX, "{len} records held");
    while o.node.poll_event().is_some() {}
}

impl World {
    fn new(seed: u64) -> World {
        let mut sim = build(N, seed, SimConfig::default(), |c| {
            c.health.records_max = RECORDS_MAX;
            c.health.expiry = EXPIRY;
        });
        let now = sim.now();
        let mut values = BTreeMap::new();
        for i in 0..N {
            // One region per signature, as in the node composition.
            sim.node_mut(NodeIndex(i))
                .set_topics([qs_transport::TopicId(region(i).0)]);
            let h = sim.node_mut(NodeIndex(i)).health_mut();
            h.set_region(now, Some(region(i)));
            h.set_local(now, self::values(i));
            values.insert(i, self::values(i));
        }
        World {
            live: sim.indices().collect(),
            sim,
            values,
            max_records: 0,
        }
    }

    fn truths(&self) -> (Truth, Vec<(RegionId, Truth)>) {
        let all: Vec<(usize, NodeId, NodeHealth)> = self
            .live
            .iter()
            .map(|i| (i.0, self.sim.node(*i).id(), self.values[&i.0]))
            .collect();
        let cluster = truth(&all.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>());
        let regions = (0..REGIONS)
            .map(|r| {
                let nodes: Vec<(NodeId, NodeHealth)> = all
                    .iter()
                    .filter(|x| x.0 % REGIONS == r)
                    .map(|x| (x.1, x.2))
                    .collect();
                (region(r), truth(&nodes))
            })
            .collect();
        (cluster, regions)
    }

    fn converged(&self) -> bool {
        let (cluster, regions) = self.truths();
        self.live.iter().all(|i| {
            let h = self.sim.node(*i).health();
            matches(h.cluster().as_ref(), &cluster)
                && h.region_aggregates().count() == REGIONS
                && regions
                    .iter()
                    .all(|(r, t)| matches(h.region_aggregate(Some(*r)).map(|a| &a.aggregate), t))
        })
    }

    /// Runs in quarter rounds until converged; the time it took.
    fn run_until_converged(&mut self, max: Duration) -> Option<Duration> {
        let start = self.sim.now();
        let mut most = self.max_records;
        while self.sim.now() - start < max {
            self.sim
                .run_for(ROUND / 4, &mut |o| observe_health(&mut most, o));
            if self.converged() {
                self.max_records = most;
                return Some(self.sim.now() - start);
            }
        }
        self.max_records = most;
        None
    }

    fn dump(&self) {
        let (cluster, regions) = self.truths();
        println!("truth cluster {cluster:?}");
        for (r, t) in &regions {
            println!("truth {r:?}: {t:?}");
        }
        let mut bad = 0;
        for i in &self.live {
            let h = self.sim.node(*i).health();
            for (r, t) in &regions {
                let a = h.region_aggregate(Some(*r));
                if !matches(a.map(|a| &a.aggregate), t) {
                    bad += 1;
                    if bad < 15 {
                        let own = h.records().filter(|x| x.1.region == Some(*r)).count();
                        println!(
                            "node {i:?} (region {:?}, holds {own} of that region): {r:?} count {:?} by {:?} v{:?}",
                            h.region(),
                            a.map(|a| a.aggregate.count),
                            a.map(|a| a.aggregator),
                            a.map(|a| a.version)
                        );
                    }
                }
            }
        }
        println!("{bad} wrong region aggregates");
        let now = self.sim.now();
        for i in self.live.iter().take(2) {
            let h = self.sim.node(*i).health();
            let ages: Vec<(bool, u128)> = h
                .records()
                .map(|(id, r)| {
                    (
                        r.region == h.region(),
                        h.record_age(now, id).unwrap().as_millis(),
                    )
                })
                .collect();
            println!("{i:?} ages {ages:?} stats {:?}", h.stats());
        }
        for i in self.live.iter().take(3) {
            let st = self.sim.node(*i).stats();
            println!("{i:?} rounds {} {:?}", st.rounds, st.objects);
        }
    }

    fn health_bytes(&self) -> u64 {
        self.live
            .iter()
            .map(|i| {
                let s = self.sim.node(*i).stats();
                assert_eq!(s.oversize_writes, 0, "a payload exceeded its budget");
                s.objects
                    .iter()
                    .find(|(n, _)| *n == "health")
                    .map_or(0, |(_, o)| o.bytes_sent)
            })
            .sum()
    }
}

#[test]
fn every_node_learns_exact_region_and_cluster_aggregates_a_change_spreads_in_log_n_rounds_and_a_crash_expires(
) {
    let seed = qs_sim::seed_from_env(91);
    let hint = || qs_sim::replay_hint(seed, "every_node_learns_exact");
    let mut w = World::new(seed);
    let log2 = (N as f64).log2();

    // 1. Initial convergence.
    let t = w
        .run_until_converged(Duration::from_secs(60))
        .unwrap_or_else(|| {
            w.dump();
            panic!("no convergence; {}", hint())
        });
    let bytes0 = w.health_bytes();
    println!(
        "health N={N}, {REGIONS} regions, table cap {RECORDS_MAX}: exact aggregates everywhere \
         after {:.1} rounds ({:.1} s), {:.0} health B/node/s while converging; largest table \
         {} records",
        t.as_secs_f64() / ROUND.as_secs_f64(),
        t.as_secs_f64(),
        bytes0 as f64 / N as f64 / t.as_secs_f64(),
        w.max_records
    );
    assert!(w.max_records <= RECORDS_MAX);

    // 2. Steady state: traffic, and the aggregates stay exact.
    let before = w.health_bytes();
    let mut most = 0;
    w.sim.run_for(Duration::from_secs(6), &mut |o| {
        observe_health(&mut most, o)
    });
    let steady = (w.health_bytes() - before) as f64 / N as f64 / 6.0;
    assert!(
        w.converged(),
        "aggregates drifted in steady state; {}",
        hint()
    );

    // 3. One metric change: rounds until every node's cluster aggregate shows it.
    let changed = NodeIndex(37);
    let changed_id = w.sim.node(changed).id();
    let mut h = w.values[&37];
    h.load = 500.0;
    w.values.insert(37, h);
    let now = w.sim.now();
    w.sim.node_mut(changed).health_mut().set_local(now, h);
    let start = w.sim.now();
    let mut most = 0;
    let seen = loop {
        w.sim
            .run_for(ROUND / 4, &mut |o| observe_health(&mut most, o));
        let all = w.live.iter().all(|i| {
            w.sim.node(*i).health().cluster().is_some_and(|c| {
                c.metric(Metric::Load).max == 500.0 && c.metric(Metric::Load).worst == changed_id
            })
        });
        if all {
            break w.sim.now() - start;
        }
        assert!(
            w.sim.now() - start < Duration::from_secs(20),
            "the change never spread; {}",
            hint()
        );
    };
    let rounds = seen.as_secs_f64() / ROUND.as_secs_f64();
    println!(
        "health N={N}: a load change reached every node's cluster aggregate in {rounds:.1} \
         rounds, log2 N = {log2:.1} (ratio {:.2}); steady state {steady:.0} health B/node/s",
        rounds / log2
    );
    assert!(
        rounds <= 3.0 * log2 + 6.0,
        "{rounds} rounds > 3 log2 N + 6; {}",
        hint()
    );
    let t = w
        .run_until_converged(Duration::from_secs(20))
        .unwrap_or_else(|| {
            w.dump();
            panic!("not exact after the change; {}", hint())
        });
    println!(
        "health N={N}: every aggregate exact again {:.1} s after the change spread",
        t.as_secs_f64()
    );

    // 4. A crash: the record expires and every aggregate drops the node.
    let victim = NodeIndex(52);
    w.sim.crash(victim);
    w.live.retain(|i| *i != victim);
    w.values.remove(&52);
    let t = w
        .run_until_converged(EXPIRY + Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the crashed node never left the aggregates; {}", hint()));
    println!(
        "health N={N}: a crashed node left every aggregate {:.1} s after the crash (expiry {:?})",
        t.as_secs_f64(),
        EXPIRY
    );
    assert!(t <= EXPIRY + Duration::from_secs(5), "{t:?}");
    assert!(w.max_records <= RECORDS_MAX);
}
