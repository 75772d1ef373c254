//! A standalone sweep of lateral error correction (`qs-testbed sim-lec`): N receivers of one
//! region, each running the real [`qs_recovery::Lec`] core, fed by S senders over a small
//! deterministic model, and a table of how many losses were rebuilt laterally.
//!
//! Owns: the model (senders multicasting at a fixed aggregate rate, per-receiver Bernoulli or
//! fixed-length burst loss applied to every datagram a receiver gets, repairs included, a link
//! delay with jitter, repairs encoded and parsed through the real wire codec) and the table
//! (% of losses rebuilt, repair latency p50/p99 from the moment the lost packet would have
//! arrived, repair bytes per data byte, beside Ricochet's first-order model
//! `1 − exp(−c(1−p)^r)`).
//!
//! Does not: run the node, the receive window or the token ring (every loss LEC misses would
//! be the ring's; here it is only counted), model bandwidth or queueing, or read a clock. Same
//! seed, same table: the model uses only [`Prng`] and virtual time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use qs_recovery::{Lec, LecConfig, PacketId};
use qs_transport::wire::{LecRepair, HEADER_LEN};
use qs_transport::{Instant, NodeId, Prng, RegionId, Seq};

/// The network and traffic of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Receivers in the region (each runs a `Lec`).
    pub receivers: usize,
    /// Senders outside the region, multicasting round-robin.
    pub senders: usize,
    /// Data packets sent in all.
    pub packets: u32,
    /// Aggregate data rate of all senders, packets per second.
    pub rate_pps: u32,
    /// One-way link delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly in `[0, jitter]` per datagram and receiver.
    pub jitter: Duration,
    /// Canonical packet lengths are drawn uniformly from this range (bytes).
    pub sizes: (usize, usize),
    /// The seed every random decision derives from.
    pub seed: u64,
    /// Check a core's invariants after every this many of its events (0: never; they walk
    /// the whole store, so only tests set it).
    pub check_every: u32,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            receivers: 8,
            senders: 2,
            packets: 40_000,
            rate_pps: 20_000,
            delay: Duration::from_micros(50),
            jitter: Duration::from_micros(20),
            sizes: (900, 1100),
            seed: 1,
            check_every: 0,
        }
    }
}

/// One LEC configuration of the sweep: `r`, `c`, stagger, `m`, adaptive or fixed rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Packets per repair.
    pub r: usize,
    /// Targets per repair.
    pub c: usize,
    /// Bins filled round-robin.
    pub stagger: usize,
    /// Reed–Solomon parity shards per bin when bursts are seen (1: XOR only).
    pub m: usize,
    /// Members a parity bin goes to (0: `c`).
    pub parity_targets: usize,
    /// Adaptive rate of fire.
    pub adaptive: bool,
}

impl Scheme {
    /// Parses `r8c3s4m1` (optionally `p2`: parity bins to 2 members), optionally followed by
    /// `-fixed` (adaptive off).
    pub fn parse(s: &str) -> Option<Scheme> {
        let (body, adaptive) = match s.strip_suffix("-fixed") {
            Some(b) => (b, false),
            None => (s, true),
        };
        let mut out = Scheme {
            r: 0,
            c: 0,
            stagger: 1,
            m: 1,
            parity_targets: 0,
            adaptive,
        };
        let mut rest = body;
        while !rest.is_empty() {
            let key = rest.chars().next()?;
            let digits: String = rest[1..].chars().take_while(char::is_ascii_digit).collect();
            let v: usize = digits.parse().ok()?;
            match key {
                'r' => out.r = v,
                'c' => out.c = v,
                's' => out.stagger = v,
                'm' => out.m = v,
                'p' => out.parity_targets = v,
                _ => return None,
            }
            rest = &rest[1 + digits.len()..];
        }
        (out.r >= 1 && out.c >= 1 && out.stagger >= 1 && out.m >= 1).then_some(out)
    }

    /// The LEC configuration of this scheme (everything else default).
    pub fn config(&self) -> LecConfig {
        LecConfig {
            bin_packets: self.r,
            targets: self.c,
            stagger: self.stagger,
            parity_shards: self.m,
            parity_targets: self.parity_targets,
            adaptive: self.adaptive,
            ..LecConfig::default()
        }
    }

    /// Its name as [`Scheme::parse`] reads it.
    pub fn name(&self) -> String {
        let fixed = if self.adaptive { "" } else { "-fixed" };
        let p = match self.parity_targets {
            0 => String::new(),
            p => format!("p{p}"),
        };
        format!(
            "r{}c{}s{}m{}{p}{fixed}",
            self.r, self.c, self.stagger, self.m
        )
    }
}

/// Loss at every receiver: this fraction of datagrams, in bursts of exactly `burst`
/// consecutive datagrams (1: Bernoulli).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// Long-run fraction lost.
    pub rate: f64,
    /// Burst length in datagrams.
    pub burst: u32,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Data packets lost at receivers (sum over receivers).
    pub lost: u64,
    /// Of those, rebuilt by LEC.
    pub rebuilt: u64,
    /// Repair latencies (from the lost packet's would-be arrival to its rebuild), nanoseconds,
    /// sorted.
    pub latencies: Vec<u64>,
    /// Repair datagram bytes sent (header included).
    pub repair_bytes: u64,
    /// Data bytes the receivers were sent (each packet counted once per receiver).
    pub data_bytes: u64,
    /// Repair datagrams sent.
    pub repairs: u64,
    /// Packets rebuilt through a kept repair.
    pub cascades: u64,
}

impl Outcome {
    /// Percentage of losses rebuilt laterally (100 without loss).
    pub fn lateral_pct(&self) -> f64 {
        if self.lost == 0 {
            100.0
        } else {
            100.0 * self.rebuilt as f64 / self.lost as f64
        }
    }

    /// The `q`-quantile repair latency in microseconds.
    pub fn latency_us(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        Some(self.latencies[i] as f64 / 1000.0)
    }

    /// Repair bytes per data byte.
    pub fn overhead(&self) -> f64 {
        self.repair_bytes as f64 / self.data_bytes.max(1) as f64
    }
}

/// Ricochet's first-order estimate of the fraction of losses a receiver rebuilds: each of
/// about `c` repairs covering a lost packet helps when its other `r − 1` packets arrived.
pub fn first_order(loss: f64, r: usize, c: usize) -> f64 {
    1.0 - (-(c as f64) * (1.0 - loss).powi(r as i32)).exp()
}

#[derive(Debug)]
enum Event {
    /// The next data packet leaves its sender.
    Emit,
    /// A data packet (index into the sent packets) reaches a receiver.
    Data(usize, usize),
    /// A repair body reaches a receiver.
    Repair(usize, usize, Vec<u8>),
    /// A receiver's LEC timer.
    Timer(usize),
}

struct Receiver {
    lec: Lec,
    /// Per sender: the highest sequence number seen (gaps below it were reported missing).
    highest: BTreeMap<u64, u32>,
    have: BTreeSet<PacketId>,
    /// Burst loss state: datagrams still to lose.
    burst_left: u32,
}

struct World<'a> {
    model: &'a Model,
    prng: Prng,
    ids: Vec<NodeId>,
    rx: Vec<Receiver>,
    start_p: f64,
    burst: u32,
    sent: Vec<(PacketId, Bytes, Instant)>,
    next_seq: Vec<u32>,
    events: BinaryHeap<Reverse<(Instant, u64)>>,
    payloads: BTreeMap<u64, Event>,
    order: u64,
    lost: BTreeMap<(usize, PacketId), Instant>,
    out: Outcome,
    buf: Vec<u8>,
    checks: u64,
}

impl World<'_> {
    fn push(&mut self, at: Instant, ev: Event) {
        self.order += 1;
        self.payloads.insert(self.order, ev);
        self.events.push(Reverse((at, self.order)));
    }

    fn link(&mut self) -> Duration {
        let j = self.model.jitter.as_nanos() as u64;
        let extra = if j > 0 { self.prng.below(j + 1) } else { 0 };
        self.model.delay + Duration::from_nanos(extra)
    }

    fn lose(&mut self, r: usize) -> bool {
        let rx = &mut self.rx[r];
        if rx.burst_left > 0 {
            rx.burst_left -= 1;
            return true;
        }
        if self.prng.chance(self.start_p) {
            rx.burst_left = self.burst - 1;
            return true;
        }
        false
    }

    fn emit(&mut self, now: Instant) {
        let k = self.sent.len();
        let s = k % self.model.senders.max(1);
        self.next_seq[s] += 1;
        let id = PacketId {
            sender: NodeId(0x10 + s as u64),
            epoch: 0,
            seq: Seq(self.next_seq[s]),
        };
        let (lo, hi) = self.model.sizes;
        let len = lo + self.prng.below((hi.saturating_sub(lo) + 1) as u64) as usize;
        let bytes = canonical(id, len, self.model.seed);
        self.sent.push((id, bytes, now));
        for r in 0..self.rx.len() {
            let at = now + self.link();
            self.out.data_bytes += len as u64;
            self.push(at, Event::Data(r, k));
        }
        if (self.sent.len() as u32) < self.model.packets {
            let gap = 1_000_000_000 / u64::from(self.model.rate_pps.max(1));
            self.push(now + Duration::from_nanos(gap), Event::Emit);
        }
    }

    fn data(&mut self, now: Instant, r: usize, k: usize) {
        let (id, bytes, _) = self.sent[k].clone();
        if self.lose(r) {
            self.lost.insert((r, id), now);
            self.out.lost += 1;
            return;
        }
        let rx = &mut self.rx[r];
        // The receive window: a packet beyond the highest reveals the holes before it.
        let highest = rx.highest.entry(id.sender.0).or_insert(0);
        if id.seq.0 > *highest {
            for q in *highest + 1..id.seq.0 {
                let hole = PacketId { seq: Seq(q), ..id };
                if !rx.have.contains(&hole) {
                    rx.lec.on_missing(now, hole);
                }
            }
            *highest = id.seq.0;
        }
        rx.have.insert(id);
        rx.lec.on_packet(now, id, bytes);
    }

    fn repair(&mut self, now: Instant, r: usize, from: usize, body: &[u8]) {
        if self.lose(r) {
            return;
        }
        let Ok(rep) = LecRepair::parse(body) else {
            panic!("a repair encoded by Lec does not parse");
        };
        let from = self.ids[from];
        self.rx[r].lec.handle_repair(now, from, &rep);
    }

    /// After any event at receiver `r`: rebuilt packets and repairs out.
    fn settle_inner(&mut self, now: Instant, r: usize) {
        while let Some((id, bytes)) = self.rx[r].lec.poll_rebuilt() {
            let k = self
                .sent
                .iter()
                .rposition(|p| p.0 == id)
                .expect("rebuilt a packet nobody sent");
            assert_eq!(
                bytes, self.sent[k].1,
                "rebuilt bytes differ from the sender's"
            );
            self.rx[r].have.insert(id);
            if let Some(due) = self.lost.remove(&(r, id)) {
                self.out.rebuilt += 1;
                self.out
                    .latencies
                    .push(now.saturating_duration_since(due).as_nanos() as u64);
            }
        }
        while let Some(intent) = self.rx[r].lec.poll_repair() {
            let Ok(n) = self.rx[r].lec.encode(&intent, &mut self.buf) else {
                continue;
            };
            let body = self.buf[..n].to_vec();
            self.out.repairs += 1;
            self.out.repair_bytes += (n + HEADER_LEN) as u64;
            let to = self.ids.binary_search(&intent.to).expect("a member");
            let at = now + self.link();
            self.push(at, Event::Repair(to, r, body));
        }
        self.checks += 1;
        if self.model.check_every > 0 && self.checks % u64::from(self.model.check_every) == 0 {
            self.rx[r].lec.check_invariants();
        }
    }
}

/// Runs one case and returns what it measured. Panics if a rebuilt packet differs from the
/// sender's (an invented payload): the model's oracle.
pub fn run(model: &Model, scheme: &Scheme, loss: Loss) -> Outcome {
    let mut prng = Prng::new(model.seed);
    let ids: Vec<NodeId> = (0..model.receivers)
        .map(|i| NodeId(0x100 + i as u64))
        .collect();
    let config = scheme.config();
    let rx: Vec<Receiver> = ids
        .iter()
        .map(|&me| {
            let mut lec = Lec::new(config.clone(), me, RegionId(7), prng.next_u64());
            lec.set_view(&ids);
            Receiver {
                lec,
                highest: BTreeMap::new(),
                have: BTreeSet::new(),
                burst_left: 0,
            }
        })
        .collect();
    let burst = loss.burst.max(1);
    let start_p = loss.rate / (f64::from(burst) * (1.0 - loss.rate) + loss.rate);
    let mut w = World {
        model,
        prng,
        ids,
        rx,
        start_p,
        burst,
        sent: Vec::with_capacity(model.packets as usize),
        next_seq: vec![0; model.senders.max(1)],
        events: BinaryHeap::new(),
        payloads: BTreeMap::new(),
        order: 0,
        lost: BTreeMap::new(),
        out: Outcome::default(),
        buf: vec![0u8; config.max_datagram],
        checks: 0,
    };
    w.push(Instant(1_000_000_000), Event::Emit);
    // Timer events are pushed after every event; only the earliest pending per receiver is
    // real, later duplicates find nothing due and are cheap.
    let mut timers: Vec<Option<Instant>> = vec![None; model.receivers];
    while let Some(Reverse((now, order))) = w.events.pop() {
        let ev = w
            .payloads
            .remove(&order)
            .expect("every event has a payload");
        let r = match ev {
            Event::Emit => {
                w.emit(now);
                continue;
            }
            Event::Data(r, k) => {
                w.data(now, r, k);
                r
            }
            Event::Repair(r, from, body) => {
                w.repair(now, r, from, &body);
                r
            }
            Event::Timer(r) => {
                if timers[r] != Some(now) {
                    continue;
                }
                timers[r] = None;
                w.rx[r].lec.handle_timeout(now);
                r
            }
        };
        w.settle_timer(now, r, &mut timers);
    }
    for r in &w.rx {
        w.out.cascades += r.lec.stats().cascades;
    }
    w.out.latencies.sort_unstable();
    w.out
}

impl World<'_> {
    fn settle_timer(&mut self, now: Instant, r: usize, timers: &mut [Option<Instant>]) {
        self.settle_inner(now, r);
        if let Some(t) = self.rx[r].lec.poll_timeout() {
            let t = t.max(now);
            if timers[r].is_none_or(|old| t < old) {
                timers[r] = Some(t);
                self.push(t, Event::Timer(r));
            }
        }
    }
}

/// Canonical bytes of a packet: deterministic from its id and length.
fn canonical(id: PacketId, len: usize, seed: u64) -> Bytes {
    let mut p = Prng::new(seed ^ id.sender.0.rotate_left(32) ^ u64::from(id.seq.0));
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&p.next_u64().to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// The default sweep's schemes: Ricochet-like XOR, stagger, parity to one member (`p1`) or to
/// `c` (the default), a larger bin, and the fixed rate of fire.
pub fn default_schemes() -> Vec<Scheme> {
    [
        "r8c3s1m1",
        "r8c3s4m1",
        "r8c3s2m3",
        "r8c3s2m3p1",
        "r8c3s8m1",
        "r16c4s1m1",
        "r8c3s1m1-fixed",
    ]
    .iter()
    .filter_map(|s| Scheme::parse(s))
    .collect()
}

/// Runs every case and renders the table (markdown).
pub fn sweep(model: &Model, schemes: &[Scheme], losses: &[f64], bursts: &[u32]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "LEC sweep: {} receivers, {} senders, {} packets at {} pkt/s, {} B..{} B, delay {:?} + up to {:?} jitter, seed {}",
        model.receivers,
        model.senders,
        model.packets,
        model.rate_pps,
        model.sizes.0,
        model.sizes.1,
        model.delay,
        model.jitter,
        model.seed
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| loss | burst | scheme | lost | rebuilt % | model % | p50 µs | p99 µs | repair B / data B | cascades |"
    );
    let _ = writeln!(t, "|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|");
    for &rate in losses {
        for &burst in bursts {
            if rate == 0.0 && burst != bursts[0] {
                continue;
            }
            for scheme in schemes {
                let o = run(model, scheme, Loss { rate, burst });
                let c = scheme.c.min(model.receivers.saturating_sub(1));
                let lat = |q| {
                    o.latency_us(q)
                        .map_or("-".to_string(), |v| format!("{v:.0}"))
                };
                let _ = writeln!(
                    t,
                    "| {:.1}% | {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.3} | {} |",
                    rate * 100.0,
                    burst,
                    scheme.name(),
                    o.lost,
                    o.lateral_pct(),
                    100.0 * first_order(rate, scheme.r, c),
                    lat(0.5),
                    lat(0.99),
                    o.overhead(),
                    o.cascades
                );
            }
        }
    }
    t
}
