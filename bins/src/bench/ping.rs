//! `qs bench ping`: round-trip latency through two Quicksilver nodes beside a raw UDP multicast
//! ping-pong on the same path, one message at a time.
//!
//! Raw: `qs_runtime::raw::ping` sends a datagram to one group, the ponger echoes it on a
//! second group. Quicksilver: the pinging node publishes on `bench.ping`, the ponging node's
//! application thread takes each message from its subscription and publishes it back on
//! `bench.pong`. Both measure from the application's send call to the application's receipt
//! of the echo, so Quicksilver's figure includes everything a user pays for: the hand-off to
//! the node thread, the protocol, the sockets, the hand-off back to the application, twice.
//! One-way latency is reported as RTT/2. Percentiles come from an hdrhistogram.
//!
//! `--role both` (default) runs both sides in this process on loopback. `--role pong` on one
//! host and `--role ping` on another (namespaces, `--iface`) measure across a LAN: the ponger
//! serves the raw run first, then the Quicksilver run, and stops when the pinger says so.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use qs_runtime::raw::{self, RawPingConfig, RawPonger};
use quicksilver::{Node, RecvError, Subscription};
use serde_json::{json, Value};

use crate::cpu::{CpuMeter, CpuUse};
use crate::pubsub::wait_for_subscribers;
use crate::stamp::{self, STAMP_LEN};

/// Which side(s) of the ping-pong this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Both sides, in this process (loopback).
    Both,
    /// The pinging side (measures).
    Ping,
    /// The echoing side.
    Pong,
}

/// `qs bench ping` options.
#[derive(Args, Debug, Clone)]
pub struct PingArgs {
    /// Which side(s) to run.
    #[arg(long, value_enum, default_value_t = Role::Both)]
    pub role: Role,
    /// Interface address (loopback by default).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    pub iface: Ipv4Addr,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Timed round trips per system.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Round trips before timing starts.
    #[arg(long, default_value_t = 500)]
    pub warmup: u64,
    /// Pause between an echo and the next ping, in microseconds (0: at once).
    #[arg(long, default_value_t = 0)]
    pub interval_us: u64,
    /// Application threads wait for messages by spinning (`try_recv`) instead of blocking;
    /// combine with `--busy-poll` for spinning node threads too.
    #[arg(long)]
    pub spin: bool,
    /// Busy-poll mode in both Quicksilver nodes: their node threads and their applications'
    /// blocking receives spin instead of sleeping (`always`, or a spin budget such as
    /// `200us`; see `NodeBuilder::busy_poll`) [default: off]
    #[arg(long, value_name = "always|DURATION|off", num_args = 0..=1,
        default_missing_value = "always", value_parser = crate::config::parse_busy_poll)]
    pub busy_poll: Option<Duration>,
    /// First of the ports used (raw ping and pong groups, Quicksilver control and data).
    #[arg(long, default_value_t = 7470, value_parser = clap::value_parser!(u16).range(1..=65532))]
    pub port: u16,
    /// Cluster name of the Quicksilver nodes (both sides must agree).
    #[arg(long, default_value = "qs-bench-ping")]
    pub cluster: String,
    /// Skip the raw UDP run.
    #[arg(long)]
    pub no_raw: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Round-trip figures of one system.
#[derive(Debug, Clone)]
pub struct PingFigures {
    /// Round trips measured.
    pub samples: u64,
    /// Pings without an echo in time.
    pub lost: u64,
    /// RTT percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub rtt_us: [f64; 5],
    /// CPU use of this process's threads while the timed round trips ran.
    pub cpu: CpuUse,
    /// Busy-poll mode: the share of the timed stretch this process's node thread spent
    /// spinning, in percent, and the waits an event ended while it spun (each a wake-up
    /// saved); from the node's `RuntimeStats` (0 for raw and without busy-poll).
    pub node_spin: (f64, u64),
}

const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

impl PingFigures {
    fn from_histogram(
        h: &Histogram<u64>,
        lost: u64,
        cpu: CpuUse,
        node_spin: (f64, u64),
    ) -> PingFigures {
        let mut rtt_us = [0.0; 5];
        for (v, q) in rtt_us.iter_mut().zip(QUANTILES) {
            *v = if q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(q)
            } as f64
                / 1e3;
        }
        PingFigures {
            samples: h.len(),
            lost,
            rtt_us,
            cpu,
            node_spin,
        }
    }

    /// The JSON form: RTT and one-way (RTT/2) percentiles.
    pub fn to_json(&self) -> Value {
        let pct = |scale: f64| {
            json!({
                "p50": self.rtt_us[0] * scale, "p90": self.rtt_us[1] * scale,
                "p99": self.rtt_us[2] * scale, "p999": self.rtt_us[3] * scale,
                "max": self.rtt_us[4] * scale,
            })
        };
        json!({
            "samples": self.samples, "lost": self.lost,
            "rtt_us": pct(1.0), "one_way_us": pct(0.5), "cpu": self.cpu,
            "node_spin_pct": self.node_spin.0, "node_spin_hits": self.node_spin.1,
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn raw_config(a: &PingArgs) -> RawPingConfig {
    RawPingConfig {
        interface: a.iface,
        ping_group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 98), a.port),
        pong_group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 97), a.port + 1),
        payload_bytes: a.size,
        count: a.count,
        warmup: a.warmup,
        interval: Duration::from_micros(a.interval_us),
        spin: a.spin,
        ..RawPingConfig::default()
    }
}

fn node(a: &PingArgs) -> anyhow::Result<Node> {
    Ok(Node::builder()
        .interface(a.iface)
        .cluster(&a.cluster)
        .control_group(SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), a.port + 2))
        .data_port(a.port + 3)
        .announce_interval(Duration::from_millis(100))
        .busy_poll(a.busy_poll.unwrap_or_default())
        .build()?)
}

/// Waits for the next message: spinning on `try_recv` or blocking with a timeout.
fn next(
    sub: &Subscription,
    spin: bool,
    timeout: Duration,
) -> Result<quicksilver::Message, RecvError> {
    if !spin {
        return sub.recv_timeout(timeout);
    }
    let until = std::time::Instant::now() + timeout;
    loop {
        match sub.try_recv() {
            Ok(m) => return Ok(m),
            Err(RecvError::Closed) => return Err(RecvError::Closed),
            Err(RecvError::Empty) if std::time::Instant::now() >= until => {
                return Err(RecvError::Empty)
            }
            Err(RecvError::Empty) => std::hint::spin_loop(),
        }
    }
}

const END_SEQ: u64 = u64::MAX;

/// The pinging side of the Quicksilver run on `node`, subscribed to `bench.pong`.
fn qs_ping(a: &PingArgs, node: &Node, pongs: &Subscription) -> anyhow::Result<PingFigures> {
    wait_for_subscribers(node, &["bench.ping"], 1, Duration::from_secs(20))?;
    let mut buf = vec![0u8; a.size];
    // Ready: the first echo proves both subscriptions are effective.
    let ready = std::time::Instant::now() + Duration::from_secs(20);
    let mut seq = 0u64;
    'ready: loop {
        stamp::write(&mut buf, seq, stamp::monotonic_nanos());
        node.publish("bench.ping", bytes::Bytes::copy_from_slice(&buf))?;
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            if let Ok(m) = pongs.recv_timeout(Duration::from_millis(10)) {
                if stamp::read(&m.payload).is_some_and(|(s, _)| s == seq) {
                    break 'ready;
                }
            }
        }
        if std::time::Instant::now() > ready {
            bail!("no echo from the Quicksilver ponger within 20 s");
        }
        seq += 1;
    }
    let mut h = histogram();
    let mut lost = 0;
    let interval = Duration::from_micros(a.interval_us);
    let mut cpu = None;
    for i in 0..a.warmup + a.count {
        if i == a.warmup {
            cpu = Some((CpuMeter::start(), node.stats()?.runtime));
        }
        seq += 1;
        if !interval.is_zero() {
            raw::pause_until(stamp::monotonic_nanos() + interval.as_nanos() as u64);
        }
        stamp::write(&mut buf, seq, stamp::monotonic_nanos());
        node.publish("bench.ping", bytes::Bytes::copy_from_slice(&buf))?;
        let give_up = std::time::Instant::now() + Duration::from_millis(200);
        let mut rtt = None;
        while rtt.is_none() {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match next(pongs, a.spin, left) {
                Ok(m) => {
                    if let Some((s, sent)) = stamp::read(&m.payload) {
                        if s == seq {
                            rtt = Some(stamp::monotonic_nanos().saturating_sub(sent));
                        }
                    }
                }
                Err(RecvError::Empty) => break,
                Err(RecvError::Closed) => bail!("node closed"),
            }
        }
        if i < a.warmup {
            continue;
        }
        match rtt {
            Some(r) => {
                let _ = h.record(r.max(1));
            }
            None => lost += 1,
        }
    }
    let (cpu, node_spin) = match cpu {
        Some((meter, before)) => {
            let after = node.stats()?.runtime;
            let wall = meter.elapsed_nanos().max(1) as f64;
            let spun = after.spin_nanos.saturating_sub(before.spin_nanos) as f64;
            (
                meter.stop(),
                (spun / wall * 100.0, after.spin_hits - before.spin_hits),
            )
        }
        None => (CpuUse::default(), (0.0, 0)),
    };
    stamp::write(&mut buf, END_SEQ, 0);
    node.publish("bench.ping", bytes::Bytes::copy_from_slice(&buf))?;
    node.flush(Duration::from_secs(2))?;
    Ok(PingFigures::from_histogram(&h, lost, cpu, node_spin))
}

/// The echoing side: every message on `pings` goes back on `bench.pong` until the end mark
/// or `idle` without a ping.
fn qs_pong(node: &Node, pings: &Subscription, spin: bool, idle: Duration) -> anyhow::Result<u64> {
    let mut echoed = 0;
    loop {
        match next(pings, spin, idle) {
            Ok(m) => {
                if stamp::read(&m.payload).is_some_and(|(s, _)| s == END_SEQ) {
                    return Ok(echoed);
                }
                node.publish("bench.pong", m.payload)?;
                echoed += 1;
            }
            Err(_) => return Ok(echoed),
        }
    }
}

/// Runs `qs bench ping`.
pub fn run(a: PingArgs) -> anyhow::Result<ExitCode> {
    if a.size < STAMP_LEN || a.size > 1400 {
        bail!("--size must be within {STAMP_LEN}..=1400 (one datagram)");
    }
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let idle = Duration::from_secs(30);
    let mut raw_fig = None;
    let qs_fig;
    match a.role {
        Role::Pong => {
            if !a.no_raw {
                let echoed = RawPonger::new(&raw_config(&a), idle)?.run()?;
                eprintln!("qs bench ping: raw ponger echoed {echoed}");
            }
            let n = node(&a)?;
            let pings = n.subscribe("bench.ping")?;
            wait_for_subscribers(&n, &["bench.pong"], 1, Duration::from_secs(30))?;
            let echoed = qs_pong(&n, &pings, a.spin, idle)?;
            eprintln!("qs bench ping: Quicksilver ponger echoed {echoed}");
            n.flush(Duration::from_secs(2))?;
            return Ok(ExitCode::SUCCESS);
        }
        Role::Ping => {
            if !a.no_raw {
                raw_fig = Some(raw_ping(&a)?);
            }
            let n = node(&a)?;
            let pongs = n.subscribe("bench.pong")?;
            qs_fig = Some(qs_ping(&a, &n, &pongs)?);
        }
        Role::Both => {
            if !a.no_raw {
                let ponger = RawPonger::new(&raw_config(&a), Duration::from_secs(5))?;
                let t = std::thread::spawn(move || ponger.run());
                raw_fig = Some(raw_ping(&a)?);
                t.join().expect("raw ponger thread")?;
            }
            let pinger = node(&a)?;
            let ponger = node(&a)?;
            let pongs = pinger.subscribe("bench.pong")?;
            let pings = ponger.subscribe("bench.ping")?;
            let spin = a.spin;
            let echo = std::thread::spawn(move || {
                let r = qs_pong(&ponger, &pings, spin, Duration::from_secs(30));
                drop(pings);
                (ponger, r)
            });
            let fig = qs_ping(&a, &pinger, &pongs);
            let (_ponger, echoed) = echo.join().expect("echo thread");
            echoed.context("Quicksilver ponger")?;
            qs_fig = Some(fig?);
        }
    }
    print(&a, raw_fig.as_ref(), qs_fig.as_ref());
    Ok(ExitCode::SUCCESS)
}

fn raw_ping(a: &PingArgs) -> anyhow::Result<PingFigures> {
    let meter = CpuMeter::start();
    let rep = raw::ping(&raw_config(a)).context("raw ping")?;
    let cpu = meter.stop();
    let mut h = histogram();
    for r in &rep.rtt_nanos {
        let _ = h.record((*r).max(1));
    }
    Ok(PingFigures::from_histogram(&h, rep.lost, cpu, (0.0, 0)))
}

/// A busy-poll budget as the flag spells it.
fn busy_poll_name(d: Duration) -> String {
    match d {
        Duration::MAX => "always".into(),
        d if d.is_zero() => "off".into(),
        d => humantime::format_duration(d).to_string(),
    }
}

fn print(a: &PingArgs, raw: Option<&PingFigures>, qs: Option<&PingFigures>) {
    let ratio = |i: usize| match (raw, qs) {
        (Some(r), Some(q)) if r.rtt_us[i] > 0.0 => Some(q.rtt_us[i] / r.rtt_us[i]),
        _ => None,
    };
    if a.json {
        println!(
            "{}",
            json!({
                "size": a.size, "count": a.count, "iface": a.iface.to_string(),
                "interval_us": a.interval_us, "spin": a.spin,
                "busy_poll": a.busy_poll.map(busy_poll_name),
                "raw": raw.map(PingFigures::to_json),
                "quicksilver": qs.map(PingFigures::to_json),
                "ratio": { "p50": ratio(0), "p90": ratio(1), "p99": ratio(2), "p999": ratio(3) },
            })
        );
        return;
    }
    println!(
        "\nping-pong {} B over {}, {} round trips, one at a time{}; one-way = RTT/2",
        a.size,
        a.iface,
        a.count,
        if a.spin { ", spinning receivers" } else { "" }
    );
    println!(
        "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10} {:>9}",
        "", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "lost", "node CPU%", "app CPU%"
    );
    for (name, f) in [("raw", raw), ("quicksilver", qs)] {
        if let Some(f) = f {
            println!(
                "{:>12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6} {:>10.0} {:>9.0}  (one-way)",
                name,
                f.rtt_us[0] / 2.0,
                f.rtt_us[1] / 2.0,
                f.rtt_us[2] / 2.0,
                f.rtt_us[3] / 2.0,
                f.rtt_us[4] / 2.0,
                f.lost,
                f.cpu.node_pct,
                f.cpu.app_pct
            );
        }
    }
    if let (Some(p50), Some(p99)) = (ratio(0), ratio(2)) {
        println!(
            "{:>12} {:>8.2}x {:>9} {:>8.2}x   (Quicksilver / raw; same run, a shared machine: expect noise)",
            "ratio", p50, "", p99
        );
    }
}
