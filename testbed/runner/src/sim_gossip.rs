//! `qs-testbed sim-gossip`: the gossip plane alone (`qs-gossip` nodes, no data path) in the
//! deterministic simulator (`qs-sim`) at a chosen scale, measured phase by phase.
//!
//! Owns the scenario and its figures; it does not change the protocol (every node is a plain
//! [`GossipNode`] with default settings but its seeds) and checks no invariant per event (the
//! gossip tests do). Phases, all on one virtual clock and one seed:
//!
//! 1. **cold start**: `N` nodes start at once knowing 3 seeds; rounds until every node holds
//!    every member alive and every subscription record (equal table fingerprints);
//! 2. **quiet**: once health converged and every node's news drained, 10 s with nothing
//!    changing: bytes sent per node per second;
//! 3. **change**: one node changes its subscriptions: rounds until every node holds the new
//!    version;
//! 4. **join**: a new node joins through the seeds: rounds until it holds every member and
//!    record and every node holds it;
//! 5. **busy**: 10 s in which every node republishes its health every 0.5 s (as the node
//!    composition does) and 1% of the nodes change their subscriptions every second;
//! 6. **stall**: 1% of the nodes are frozen for 1 s (staggered over 5 s), then 10 s to settle;
//! 7. **failure**: one node crashes: seconds until every live node holds it down.
//!
//! `false_downs` counts down verdicts (at any node, any phase) about nodes that never crashed.
//! Loss (`--loss`) is Bernoulli per receiver, on throughout. Regions: nodes are spread over
//! `N / 100` signatures (one topic each), so a region has about 100 members.

use std::time::Duration;

use qs_gossip::{GossipConfig, GossipEvent, GossipNode, MembershipEvent, NodeHealth, Status};
use qs_sim::{LossModel, NodeIndex, Sim, SimConfig};
use qs_transport::{ClusterId, Instant, NodeId, RegionId, TopicId};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster size.
    pub nodes: usize,
    /// Simulation seed.
    pub seed: u64,
    /// Bernoulli loss per receiver, 0..1.
    pub loss: f64,
    /// Print progress lines to stderr.
    pub verbose: bool,
}

/// The figures of one run (one JSON line).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Cluster size.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Loss probability.
    pub loss: f64,
    /// Rounds (200 ms) until the cold-started cluster converged (`null`: never, within the
    /// limit).
    pub cold_start_rounds: Option<f64>,
    /// Rounds after the cold start until every node held all records of its region and every
    /// region's aggregate (`null`: not within 60 s; the quiet phase starts anyway).
    pub health_converged_rounds: Option<f64>,
    /// Further rounds until no node had news left to spread (the quiet phase follows).
    pub drained_rounds: Option<f64>,
    /// Rounds until a joiner knew everyone and everyone knew it.
    pub join_rounds: Option<f64>,
    /// Rounds until the joiner knew everyone (the first half of `join_rounds`).
    pub joiner_knows_all_rounds: Option<f64>,
    /// Rounds until a subscription change reached every node.
    pub change_spread_rounds: Option<f64>,
    /// Seconds from a crash until every live node held it down.
    pub failure_detect_s: Option<f64>,
    /// Rounds from the first down verdict until every live node held it.
    pub down_spread_rounds: Option<f64>,
    /// Bytes sent per node per second with nothing changing.
    pub quiet_bytes_per_node_s: f64,
    /// Datagrams sent per node per second with nothing changing.
    pub quiet_datagrams_per_node_s: f64,
    /// Section bytes per node per second with nothing changing, per object (headers of
    /// datagrams and the runtime's echo are the rest of `quiet_bytes_per_node_s`).
    pub quiet_bytes_by_object: Vec<(String, f64)>,
    /// Bytes sent per node per second in the busy phase.
    pub busy_bytes_per_node_s: f64,
    /// Down verdicts about nodes that never crashed.
    pub false_downs: usize,
    /// Suspicions raised about nodes that never crashed (all refuted unless a false down).
    pub false_suspicions: usize,
    /// Wall-clock seconds of the whole run (noisy: a shared machine).
    pub wall_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: f64,
    /// Simulator events processed.
    pub events: u64,
}

const ROUND: Duration = Duration::from_millis(200);
const STEP: Duration = Duration::from_millis(50);
const SEEDS: usize = 3;
const REGION_SIZE: usize = 100;
/// Longest wait for every node to hold all records of its region and every aggregate
/// before the quiet phase (health converges more slowly than membership: see the report).
const HEALTH_WAIT: Duration = Duration::from_secs(60);

fn addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000))
}

fn node_id(i: usize) -> NodeId {
    NodeId((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn region_of(i: usize, regions: usize) -> u64 {
    (i % regions) as u64
}

fn health_of(i: usize, tick: u64) -> NodeHealth {
    NodeHealth {
        load: ((i as u64 + tick) % 17) as f32 / 17.0,
        recv_rate: 1000.0 + (i % 13) as f32,
        loss: (tick % 3) as f32,
        repairs: 0.0,
        backlog: (i % 5) as f32,
        lag: 0.0,
        lateral: 0.0,
        peer: 0.0,
        sender: 0.0,
    }
}

/// What the observer tallies.
#[derive(Debug, Default)]
struct Tally {
    crashed: Vec<NodeId>,
    downs: Vec<(Instant, usize, NodeId)>,
    suspicions: usize,
}

struct World {
    sim: Sim<GossipNode>,
    regions: usize,
    tally: Tally,
    seed: u64,
}

impl World {
    fn node(&self, i: usize) -> &GossipNode {
        self.sim.node(NodeIndex(i))
    }

    fn run_for(&mut self, d: Duration) {
        let tally = &mut self.tally;
        self.sim.run_for(d, &mut |o| {
            while let Some(e) = o.node.poll_event() {
                match e {
                    GossipEvent::Membership(MembershipEvent::MemberDown { id }) => {
                        tally.downs.push((o.now, o.index.0, id));
                    }
                    GossipEvent::Membership(MembershipEvent::MemberSuspect { id, .. })
                        if !tally.crashed.contains(&id) =>
                    {
                        tally.suspicions += 1;
                    }
                    _ => {}
                }
            }
        });
    }

    fn add(&mut self, i: usize) -> NodeIndex {
        let mut c = GossipConfig::new(ClusterId(7), node_id(i), addr(i));
        c.seed = self.seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        c.membership.seeds = (0..SEEDS).map(addr).filter(|a| *a != addr(i)).collect();
        let now = self.sim.now();
        let mut node = GossipNode::new(c, now);
        let r = region_of(i, self.regions);
        node.set_topics([TopicId(r)]);
        node.health_mut().set_region(now, Some(RegionId(r)));
        node.health_mut().set_local(now, health_of(i, 0));
        self.sim.add_node(addr(i), node)
    }

    /// Every listed node holds exactly `live` as its live members and the same tables.
    fn converged(&self, live: &[usize]) -> bool {
        let first = self.node(live[0]);
        let (m, s) = (
            first.membership().table_hash(),
            first.subscriptions().table_hash(),
        );
        live.iter().all(|i| {
            let n = self.node(*i);
            n.membership().live_count() == live.len()
                && n.subscriptions().len() == live.len()
                && n.membership().table_hash() == m
                && n.subscriptions().table_hash() == s
        })
    }

    /// Steps until `done` or `limit`; the rounds it took.
    fn until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> Option<f64> {
        let start = self.sim.now();
        loop {
            if done(self) {
                return Some((self.sim.now() - start).as_secs_f64() / ROUND.as_secs_f64());
            }
            if self.sim.now() - start >= limit {
                return None;
            }
            self.run_for(STEP);
        }
    }

    fn object_bytes(&self, nodes: &[usize]) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for i in nodes {
            for (k, (name, o)) in self.node(*i).stats().objects.iter().enumerate() {
                if out.len() <= k {
                    out.push((name, 0));
                }
                out[k].1 += o.bytes_sent;
            }
        }
        out
    }

    fn bytes_sent(&self, nodes: &[usize]) -> (u64, u64) {
        nodes.iter().fold((0, 0), |(b, d), i| {
            let s = self.node(*i).stats();
            (b + s.bytes_sent, d + s.datagrams_sent)
        })
    }
}

/// Peak resident set of this process in MiB (`VmHWM` of `/proc/self/status`; 0 if absent).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs every phase and returns the figures.
pub fn run(opts: &Options) -> Report {
    let wall = std::time::Instant::now();
    let n = opts.nodes.max(SEEDS + 2);
    let loss = if opts.loss > 0.0 {
        LossModel::Bernoulli(opts.loss)
    } else {
        LossModel::None
    };
    let net = SimConfig {
        seed: opts.seed,
        loss,
        jitter: Duration::from_micros(100),
        ..SimConfig::default()
    };
    let mut w = World {
        sim: Sim::new(net),
        regions: n.div_ceil(REGION_SIZE).max(1),
        tally: Tally::default(),
        seed: opts.seed,
    };
    let say = |msg: String| {
        if opts.verbose {
            eprintln!("[sim-gossip {:.1}s] {msg}", wall.elapsed().as_secs_f64());
        }
    };
    for i in 0..n {
        w.add(i);
    }
    let mut live: Vec<usize> = (0..n).collect();
    let limit = Duration::from_secs(600);
    let mut report = Report {
        nodes: n,
        seed: opts.seed,
        loss: opts.loss,
        ..Report::default()
    };

    // 1. Cold start.
    report.cold_start_rounds = w.until(limit, |w| w.converged(&live));
    say(format!("cold start: {:?} rounds", report.cold_start_rounds));

    // 2. Quiet: let health converge (every node holds its region's records and every
    // region's aggregate) and the rumors of the start drain first.
    let regions = w.regions;
    let mut region_size = vec![0usize; regions];
    for i in &live {
        region_size[i % regions] += 1;
    }
    let health_done = w.until(HEALTH_WAIT, |w| {
        live.iter().all(|i| {
            let h = w.node(*i).health();
            h.len() == region_size[i % regions] && h.region_aggregates().count() == regions
        })
    });
    report.health_converged_rounds = health_done;
    say(format!(
        "health converged after {health_done:?} more rounds"
    ));
    // Nothing changing: the news of the start (rumors, health pushes) has drained.
    report.drained_rounds = w.until(HEALTH_WAIT, |w| {
        live.iter().all(|i| {
            let n = w.node(*i);
            n.membership().rumors() == 0
                && n.subscriptions().news() == 0
                && n.health().news() == (0, 0)
        })
    });
    if report.drained_rounds.is_none() {
        // What is still spreading (the quiet phase then measures it too).
        let mut left = [0usize; 4];
        for i in &live {
            let n = w.node(*i);
            let (records, aggs) = n.health().news();
            for (k, v) in [
                n.membership().rumors(),
                n.subscriptions().news(),
                records,
                aggs,
            ]
            .into_iter()
            .enumerate()
            {
                left[k] += v;
            }
        }
        say(format!(
            "not drained: rumors {}, subscription news {}, hot health records {}, hot aggregates {}",
            left[0], left[1], left[2], left[3]
        ));
    }
    w.run_for(Duration::from_secs(2));
    let (b0, d0) = w.bytes_sent(&live);
    let objects0 = w.object_bytes(&live);
    let quiet = Duration::from_secs(10);
    w.run_for(quiet);
    let (b1, d1) = w.bytes_sent(&live);
    let objects1 = w.object_bytes(&live);
    let per = (n as f64) * quiet.as_secs_f64();
    report.quiet_bytes_per_node_s = (b1 - b0) as f64 / per;
    report.quiet_datagrams_per_node_s = (d1 - d0) as f64 / per;
    report.quiet_bytes_by_object = objects1
        .iter()
        .zip(&objects0)
        .map(|((name, a), (_, b))| (name.to_string(), (a - b) as f64 / per))
        .collect();
    say(format!(
        "quiet: {:.0} B/node/s",
        report.quiet_bytes_per_node_s
    ));

    // 3. One subscription change.
    let changer = n / 2;
    let changer_id = node_id(changer);
    w.sim
        .node_mut(NodeIndex(changer))
        .set_topics([TopicId(1_000_000)]);
    w.sim.poke(NodeIndex(changer));
    let version = w
        .node(changer)
        .subscriptions()
        .record(changer_id)
        .map_or(0, |r| r.version);
    report.change_spread_rounds = w.until(limit, |w| {
        live.iter().all(|i| {
            w.node(*i)
                .subscriptions()
                .record(changer_id)
                .is_some_and(|r| r.version == version)
        })
    });
    say(format!("change: {:?} rounds", report.change_spread_rounds));

    // 4. A join.
    let joiner = n;
    let joiner_id = node_id(joiner);
    w.add(joiner);
    live.push(joiner);
    let everyone = live.len();
    let start = w.sim.now();
    let mut knows_all: Option<f64> = None;
    report.join_rounds = w.until(limit, |w| {
        let j = w.node(joiner);
        let joiner_done =
            j.membership().live_count() == everyone && j.subscriptions().len() == everyone;
        if joiner_done && knows_all.is_none() {
            knows_all = Some((w.sim.now() - start).as_secs_f64() / ROUND.as_secs_f64());
        }
        joiner_done
            && live.iter().all(|i| {
                let n = w.node(*i);
                n.membership()
                    .member(joiner_id)
                    .is_some_and(|m| m.status == Status::Alive)
                    && n.subscriptions().record(joiner_id).is_some()
            })
    });
    report.joiner_knows_all_rounds = knows_all;
    say(format!(
        "join: {:?} rounds (joiner knew all after {:?})",
        report.join_rounds, report.joiner_knows_all_rounds
    ));

    // 5. Busy.
    let (b0, _) = w.bytes_sent(&live);
    let busy = Duration::from_secs(10);
    let mut rng = qs_transport::Prng::new(opts.seed ^ 0xb05e);
    let mut tick = 0u64;
    let ticks = (busy.as_millis() / 500) as u64;
    for _ in 0..ticks {
        tick += 1;
        let now = w.sim.now();
        for &i in &live {
            w.sim
                .node_mut(NodeIndex(i))
                .health_mut()
                .set_local(now, health_of(i, tick));
            w.sim.poke(NodeIndex(i));
        }
        // 1% of the nodes per second: half of that every half second.
        let changes = (live.len() / 200).max(1);
        for _ in 0..changes {
            let i = live[rng.below(live.len() as u64) as usize];
            let topic = TopicId(2_000_000 + rng.below(1000));
            w.sim.node_mut(NodeIndex(i)).set_topics([topic]);
            w.sim.poke(NodeIndex(i));
        }
        w.run_for(Duration::from_millis(500));
    }
    let (b1, _) = w.bytes_sent(&live);
    report.busy_bytes_per_node_s = (b1 - b0) as f64 / (live.len() as f64 * busy.as_secs_f64());
    say(format!(
        "busy: {:.0} B/node/s",
        report.busy_bytes_per_node_s
    ));

    // 6. Stalls: 1% of the nodes frozen 1 s each, staggered over 5 s.
    let stalled = (live.len() / 100).max(1);
    for k in 0..stalled {
        let i = live[(k * 97 + 13) % live.len()];
        let until = w.sim.now() + Duration::from_secs(1);
        w.sim.freeze(NodeIndex(i), until);
        w.run_for(Duration::from_millis(5000 / stalled as u64));
    }
    w.run_for(Duration::from_secs(10));
    say("stalls done".into());

    // 7. A crash.
    let victim = live[live.len() / 3];
    let victim_id = node_id(victim);
    w.tally.crashed.push(victim_id);
    w.sim.crash(NodeIndex(victim));
    live.retain(|i| *i != victim);
    let crash_at = w.sim.now();
    let detect = w.until(limit, |w| {
        live.iter().all(|i| {
            w.node(*i)
                .membership()
                .member(victim_id)
                .is_none_or(|m| !m.status.is_live())
        })
    });
    report.failure_detect_s = detect.map(|r| r * ROUND.as_secs_f64());
    let first_down = w
        .tally
        .downs
        .iter()
        .filter(|d| d.2 == victim_id && d.0 >= crash_at)
        .map(|d| d.0)
        .min();
    if let (Some(first), Some(_)) = (first_down, detect) {
        let all = w.sim.now();
        report.down_spread_rounds = Some((all - first).as_secs_f64() / ROUND.as_secs_f64());
    }
    say(format!("failure: {:?} s", report.failure_detect_s));

    report.false_downs = w
        .tally
        .downs
        .iter()
        .filter(|d| !w.tally.crashed.contains(&d.2))
        .count();
    report.false_suspicions = w.tally.suspicions;
    report.events = w.sim.events_processed();
    report.wall_s = wall.elapsed().as_secs_f64();
    report.peak_rss_mb = peak_rss_mb();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cluster_reports_every_phase() {
        let r = run(&Options {
            nodes: 30,
            seed: qs_sim::seed_from_env(5),
            loss: 0.0,
            verbose: false,
        });
        let hint = qs_sim::replay_hint(r.seed, "a_small_cluster_reports_every_phase");
        assert!(r.cold_start_rounds.is_some(), "{hint}");
        assert!(r.change_spread_rounds.is_some(), "{hint}");
        assert!(r.join_rounds.is_some(), "{hint}");
        assert!(r.failure_detect_s.is_some(), "{hint}");
        assert_eq!(r.false_downs, 0, "{hint}");
        assert!(r.quiet_bytes_per_node_s > 0.0);
        assert!(r.busy_bytes_per_node_s > r.quiet_bytes_per_node_s, "{r:?}");
    }
}
