//! `qs bench`: Quicksilver's throughput next to the physical limit, measured in the same run.
//!
//! The default mode runs in this process on loopback: first the raw UDP multicast blaster
//! (`qs_runtime::raw`: sendmmsg/recvmmsg, no protocol) from one sender to K receivers, then a
//! Quicksilver publisher and K subscriber nodes, for each message size. Every figure is per
//! receiver; the ratio column divides Quicksilver's message rate by the raw message rate of the
//! same size. `qs bench raw-send` / `raw-recv` run the raw baseline across processes (network
//! namespaces), next to `qs pub` / `qs sub --json`.
//!
//! `--loss 0,0.01,0.05` repeats the Quicksilver run with that fraction of incoming data
//! packets dropped at every receiver (the in-process loss injector), so throughput under loss
//! and the recovery traffic it costs are measured next to the lossless run.
//!
//! The raw limit is measured twice: the **blast** (unpaced; on a small machine it overruns
//! its receivers and measures contention) and a short **paced sweep** (`raw::sweep`: the
//! highest per-receiver rate that lost at most 0.1 %). The ratio column divides by the better
//! of the two (the honest limit). A Quicksilver/raw ratio above 1.0 where Quicksilver sends one
//! message per datagram cannot be a faster wire: it is printed as a measurement fault.
//!
//! `--rate R` paces both the raw sender and the Quicksilver publisher at R messages per
//! second, so the latency columns are one-way latency at that load rather than queueing at
//! saturation. `qs bench ping` measures round trips (see `bench/ping.rs`).

mod ping;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use qs_runtime::raw::{self, RawReceiver, RawRecvConfig, RawSendConfig};
use quicksilver::{Node, RecvError};
use serde_json::{json, Value};

use crate::pubsub::{fill_payload, wait_for_subscribers, Tally};
use crate::stamp::{self, STAMP_LEN};

/// `qs bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Message sizes in bytes (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1024])]
    sizes: Vec<usize>,
    /// Messages per run.
    #[arg(long, default_value_t = 300_000)]
    count: u64,
    /// Receivers (subscriber nodes / raw receivers).
    #[arg(long, default_value_t = 2)]
    receivers: usize,
    /// First of the ports used (raw group port, then control and data ports).
    #[arg(long, default_value_t = 7450, value_parser = clap::value_parser!(u16).range(1..=65533))]
    port: u16,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Loss injected at every receiver, one Quicksilver run per value (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0f64])]
    loss: Vec<f64>,
    /// Pace the raw sender and the publisher at this many messages per second (0: unpaced,
    /// as fast as back-pressure allows). Paced runs measure one-way latency at that load.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages per step of the raw paced sweep (0: no sweep; the blast alone is the limit).
    #[arg(long, default_value_t = 50_000)]
    sweep_count: u64,
    /// Lateral error correction in the Quicksilver runs [default: the library's, off].
    #[arg(long, value_name = "on|off", value_parser = crate::config::parse_on_off)]
    lec: Option<bool>,
    /// Also measure every lossless Quicksilver run with a cluster key (a fresh one, in
    /// memory), right after the keyless one: prints the keyed rate and its ratio to keyless.
    #[arg(long)]
    with_key: bool,
    /// Busy-poll mode in the Quicksilver nodes (`always`, or a spin budget such as `200us`;
    /// see `NodeBuilder::busy_poll`) [default: off]
    #[arg(long, value_name = "always|DURATION|off", num_args = 0..=1,
        default_missing_value = "always", value_parser = crate::config::parse_busy_poll)]
    busy_poll: Option<Duration>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Raw UDP multicast blaster (the physical limit), for runs across processes.
    RawSend(RawArgs),
    /// Raw UDP multicast receiver; prints one JSON line.
    RawRecv(RawArgs),
    /// Round-trip latency: Quicksilver beside raw UDP multicast ping-pong on the same path.
    Ping(ping::PingArgs),
}

#[derive(Args, Debug)]
struct RawArgs {
    /// Interface address.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    iface: Ipv4Addr,
    /// Group and port.
    #[arg(long, default_value = "239.255.0.99:7499")]
    group: SocketAddrV4,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages (sender) or expected messages (receiver).
    #[arg(long, default_value_t = 300_000)]
    count: u64,
    /// Receiver: stop after this many seconds without a message.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Sender: pace at this many messages per second (0: blast, as fast as the socket takes
    /// them).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// One measured run, per receiver averages.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    msgs_per_s: f64,
    packets_per_s: f64,
    delivered_fraction: f64,
    /// One-way latency percentiles: p50, p90, p99, p99.9, max.
    latency_us: [f64; 5],
    /// Packets lost in gaps, summed over receivers (no repair yet).
    gaps: u64,
    /// CPU time of the whole process (sender and receivers) per message sent.
    cpu_us_per_msg: f64,
    /// Control and repair bytes sent by all nodes relative to data bytes first sent.
    overhead: f64,
    /// Packets repaired by peers plus packets the sender re-multicast.
    repairs: u64,
    /// How the receivers' lost packets were repaired (summed over receivers).
    repaired: quicksilver::core::RepairSplit,
}

const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// Prints a live progress line on stderr until dropped.
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(label: String, total: u64, counter: Arc<AtomicU64>, quiet: bool) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = (!quiet).then(|| {
            std::thread::spawn(move || {
                let start = Instant::now();
                while !d.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let n = counter.load(Ordering::Relaxed);
                    eprint!(
                        "\r  {label}: {n:>9} / {total} delivered, {:>9.0} msg/s ",
                        n as f64 / start.elapsed().as_secs_f64()
                    );
                }
                eprintln!();
            })
        });
        Progress { done, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Figures {
    fn to_json(self, size: usize) -> Value {
        json!({
            "msgs_per_s": self.msgs_per_s,
            "mb_per_s": self.msgs_per_s * size as f64 / 1e6,
            "packets_per_s": self.packets_per_s,
            "delivered_fraction": self.delivered_fraction,
            "latency_us": {
                "p50": self.latency_us[0], "p90": self.latency_us[1], "p99": self.latency_us[2],
                "p999": self.latency_us[3], "max": self.latency_us[4],
            },
            "gaps": self.gaps,
            "cpu_us_per_msg": self.cpu_us_per_msg,
            "control_and_repair_over_data": self.overhead,
            "repairs": self.repairs,
            "repaired": self.repaired,
        })
    }
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    match a.mode {
        Some(Mode::RawSend(r)) => return raw_send(&r),
        Some(Mode::RawRecv(r)) => return raw_recv(&r),
        Some(Mode::Ping(p)) => return ping::run(p),
        None => {}
    }
    if a.receivers == 0 || a.count == 0 {
        bail!("--receivers and --count must be at least 1");
    }
    if let Some(s) = a.sizes.iter().find(|s| **s < STAMP_LEN || **s > 60_000) {
        bail!("--sizes: {s} is outside {STAMP_LEN}..=60000");
    }
    if let Some(l) = a.loss.iter().find(|l| !(0.0..0.5).contains(*l)) {
        bail!("--loss: {l} is outside [0, 0.5)");
    }
    let mut rows = Vec::new();
    for &size in &a.sizes {
        if !a.json {
            eprintln!(
                "qs bench: {size} B x {} to {} receivers: raw UDP ...",
                a.count, a.receivers
            );
        }
        let raw = raw_loopback(&a, size)?;
        let sweep = if a.sweep_count > 0 && a.rate == 0 {
            if !a.json {
                eprintln!("qs bench: {size} B: raw UDP paced sweep ...");
            }
            raw_sweep(&a, size, raw.msgs_per_s)?
        } else {
            Vec::new()
        };
        if !a.json {
            eprintln!(
                "qs bench: {size} B x {} to {} receivers: Quicksilver ...",
                a.count, a.receivers
            );
        }
        let mut qs = Vec::new();
        for &loss in &a.loss {
            qs.push((loss, quicksilver_loopback(&a, size, loss, None)?));
        }
        let keyed = if a.with_key {
            if !a.json {
                eprintln!("qs bench: {size} B: Quicksilver with a cluster key ...");
            }
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
            let ring = quicksilver::KeyRing::generate(key);
            Some(quicksilver_loopback(&a, size, 0.0, Some(&ring))?)
        } else {
            None
        };
        rows.push(Row {
            size,
            raw,
            sweep,
            qs,
            keyed,
        });
    }
    if a.json {
        let runs: Vec<Value> = rows
            .iter()
            .flat_map(|row| {
                let limit = row.limit();
                let lossless = row.lossless();
                let keyed = row.keyed;
                row.qs.iter().map(move |(loss, qs)| {
                    let ratio = qs.msgs_per_s / limit;
                    json!({
                        "size": row.size, "receivers": a.receivers, "count": a.count,
                        "rate": a.rate, "injected_loss": loss,
                        "raw": row.raw.to_json(row.size),
                        "raw_sweep": {
                            "steps": row.sweep,
                            "best": raw::best_paced(&row.sweep),
                            "max_loss": raw::SWEEP_MAX_LOSS,
                        },
                        "raw_limit_msgs_per_s": limit,
                        "quicksilver": qs.to_json(row.size),
                        "msgs_ratio": ratio,
                        "msgs_ratio_to_blast": qs.msgs_per_s / row.raw.msgs_per_s,
                        "packets_ratio": qs.packets_per_s / limit,
                        "one_message_per_datagram": one_per_datagram(row.size),
                        "measurement_fault": is_fault(row.size, ratio),
                        "quicksilver_keyed": keyed.map(|k| k.to_json(row.size)),
                        "keyed_ratio": keyed.zip(lossless).map(|(k, base)| k.msgs_per_s / base),
                    })
                })
            })
            .collect();
        println!("{}", json!({ "network": "loopback", "runs": runs }));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\nloopback, 1 sender -> {} receivers, {} messages{}; figures per receiver",
        a.receivers,
        a.count,
        if a.rate > 0 {
            format!(", paced at {} msg/s", a.rate)
        } else {
            String::new()
        }
    );
    println!(
        "{:>6} {:>9} {:>10} {:>8} {:>7} {:>8} {:>8} {:>10} {:>8} {:>7} {:>6} {:>8} {:>8} {:>8} {:>14}",
        "size",
        "",
        "msg/s",
        "MB/s",
        "got",
        "pkt/s",
        "cpu µs",
        "p50 µs",
        "p99 µs",
        "max ms",
        "gaps",
        "ratio",
        "repairs",
        "ctl+rep",
        "lat/peer/snd"
    );
    let mut faults = Vec::new();
    for row in &rows {
        let size = row.size;
        let limit = row.limit();
        let lossless = row.lossless();
        let named = row.qs.iter().map(|(loss, f)| {
            let name = if *loss == 0.0 {
                "qs".to_string()
            } else {
                format!("qs {:.0}%", loss * 100.0)
            };
            (name, *f)
        });
        let named = named.chain(row.keyed.map(|k| ("qs+key".to_string(), k)));
        for (name, f) in std::iter::once(("raw blast".to_string(), row.raw)).chain(named) {
            let ratio = f.msgs_per_s / limit;
            if name.starts_with("qs") && is_fault(size, ratio) {
                faults.push((size, name.clone(), ratio));
            }
            println!(
                "{:>6} {:>9} {:>10.0} {:>8.1} {:>6.1}% {:>8.0} {:>8.2} {:>10.0} {:>8.0} {:>7.1} {:>6} {:>7.2}x {:>8} {:>7.2}% {:>14}",
                size,
                name,
                f.msgs_per_s,
                f.msgs_per_s * size as f64 / 1e6,
                f.delivered_fraction * 100.0,
                f.packets_per_s,
                f.cpu_us_per_msg,
                f.latency_us[0],
                f.latency_us[2],
                f.latency_us[4] / 1e3,
                f.gaps,
                ratio,
                f.repairs,
                f.overhead * 100.0,
                format!(
                    "{}/{}/{}",
                    f.repaired.lateral, f.repaired.peer, f.repaired.sender
                )
            );
        }
        if let Some(best) = raw::best_paced(&row.sweep) {
            println!(
                "{size:>6} raw paced: {:.0} msg/s per receiver at a pacing of {}/s (worst loss {:.3}%); \
                 sweep {}",
                best.recv_per_sec,
                best.target_per_sec,
                best.loss_max * 100.0,
                row.sweep
                    .iter()
                    .map(|s| format!("{}/s:{:.2}%", s.target_per_sec, s.loss_max * 100.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        } else if !row.sweep.is_empty() {
            println!("{size:>6} raw paced: no step of the sweep lost at most 0.1%");
        }
        if let (Some(base), Some(k)) = (lossless, row.keyed) {
            println!(
                "{size:>6} B with a cluster key: {:.1}% of the keyless rate (same run)",
                100.0 * k.msgs_per_s / base
            );
        }
        if let Some(base) = lossless {
            for (loss, f) in row.qs.iter().filter(|(l, _)| *l > 0.0) {
                println!(
                    "{size:>6} B with {:.0}% loss at every receiver: {:.1}% of the lossless rate",
                    loss * 100.0,
                    100.0 * f.msgs_per_s / base
                );
            }
        }
    }
    println!("(per receiver; ratio: message rate over the raw limit of the same size, the better of the blast and the paced sweep's best rate with <= 0.1% loss; cpu: whole process per message sent; latency includes queueing at full load unless paced; repairs: packets served by peers or re-multicast by the sender; ctl+rep: control and repair bytes of all nodes over data bytes; lat/peer/snd: lost packets repaired laterally (LEC), by a peer, by the sender)");
    for (size, name, ratio) in faults {
        println!(
            "MEASUREMENT FAULT: {name} at {size} B sends one message per datagram yet measured \
             {ratio:.2}x the raw limit: the raw baseline did not reach the path's limit in this run"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One message size: the raw blast, the raw sweep, and Quicksilver per injected loss.
struct Row {
    size: usize,
    raw: Figures,
    sweep: Vec<raw::SweepStep>,
    qs: Vec<(f64, Figures)>,
    /// The lossless Quicksilver run with a cluster key (`--with-key`).
    keyed: Option<Figures>,
}

impl Row {
    /// The lossless keyless Quicksilver rate, if measured.
    fn lossless(&self) -> Option<f64> {
        self.qs
            .iter()
            .find(|(l, _)| *l == 0.0)
            .map(|(_, f)| f.msgs_per_s)
    }

    /// The honest raw limit: the better of the blast (if it lost at most 0.1 %) and the
    /// sweep's best clean step.
    fn limit(&self) -> f64 {
        let blast = if 1.0 - self.raw.delivered_fraction <= raw::SWEEP_MAX_LOSS {
            self.raw.msgs_per_s
        } else {
            0.0
        };
        let paced = raw::best_paced(&self.sweep).map_or(0.0, |s| s.recv_per_sec);
        let best = blast.max(paced);
        if best > 0.0 {
            best
        } else {
            self.raw.msgs_per_s
        }
    }
}

/// Quicksilver's datagram is 1472 bytes (its default); a message of `size` bytes shares one
/// with another only if two fit with their headers (~40 bytes of packet header, 16 per
/// message, generously rounded).
fn one_per_datagram(size: usize) -> bool {
    2 * (size + 16) + 40 > 1472
}

/// A ratio above 1.0 at one message per datagram cannot be a faster wire.
fn is_fault(size: usize, ratio: f64) -> bool {
    one_per_datagram(size) && ratio > 1.0
}

fn raw_sweep(a: &BenchArgs, size: usize, blast: f64) -> anyhow::Result<Vec<raw::SweepStep>> {
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 99), a.port);
    let rates = raw::sweep_rates(blast);
    raw::sweep(
        &RawSendConfig {
            group,
            payload_bytes: size,
            count: a.sweep_count,
            ..RawSendConfig::default()
        },
        &RawRecvConfig {
            group,
            idle_timeout: Duration::from_secs(2),
            ..RawRecvConfig::default()
        },
        a.receivers,
        &rates,
    )
    .context("raw sweep")
}

/// The `q` quantile of sorted nanoseconds, in microseconds.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64 / 1e3
}

fn raw_loopback(a: &BenchArgs, size: usize) -> anyhow::Result<Figures> {
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 99), a.port);
    let receivers = (0..a.receivers)
        .map(|_| {
            RawReceiver::new(&RawRecvConfig {
                group,
                expected: Some(a.count),
                idle_timeout: Duration::from_secs(2),
                latency_samples_max: 100_000,
                ..RawRecvConfig::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("raw receivers")?;
    let cpu = qs_runtime::os::cpu_time();
    let threads: Vec<_> = receivers
        .into_iter()
        .map(|r| std::thread::spawn(|| r.run()))
        .collect();
    raw::send(&RawSendConfig {
        group,
        payload_bytes: size,
        count: a.count,
        rate_per_sec: (a.rate > 0).then_some(a.rate),
        ..RawSendConfig::default()
    })
    .context("raw sender")?;
    let mut f = Figures::default();
    let n = a.receivers as f64;
    for t in threads {
        let mut r = t.join().expect("raw receiver thread")?;
        r.latency_nanos.sort_unstable();
        f.msgs_per_s += r.msgs_per_sec / n;
        f.packets_per_s += r.msgs_per_sec / n;
        f.delivered_fraction += r.unique as f64 / a.count as f64 / n;
        for (l, q) in f.latency_us.iter_mut().zip(QUANTILES) {
            *l += percentile(&r.latency_nanos, q) / n;
        }
    }
    f.cpu_us_per_msg = (qs_runtime::os::cpu_time() - cpu).as_secs_f64() * 1e6 / a.count as f64;
    Ok(f)
}

fn quicksilver_loopback(
    a: &BenchArgs,
    size: usize,
    loss: f64,
    key: Option<&quicksilver::KeyRing>,
) -> anyhow::Result<Figures> {
    let cluster = format!(
        "bench-{}-{size}-{}",
        std::process::id(),
        (loss * 1e4) as u64
    );
    let build = |loss: f64| {
        let b = Node::builder();
        let b = match a.lec {
            Some(on) => b.lec(on),
            None => b,
        };
        let b = match key {
            Some(k) => b.key(k.clone()),
            None => b,
        };
        b.inject_loss(loss)
            .busy_poll(a.busy_poll.unwrap_or_default())
            .cluster(&cluster)
            .control_group(SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), a.port + 1))
            .data_port(a.port + 2)
            .announce_interval(Duration::from_millis(100))
            .build()
    };
    let publisher = build(0.0)?;
    let subscribers: Vec<Node> = (0..a.receivers)
        .map(|_| build(loss))
        .collect::<Result<_, _>>()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = subscribers
        .iter()
        .map(|n| {
            let sub = n.subscribe("bench")?;
            let delivered = delivered.clone();
            let count = a.count;
            let delivered = delivered.clone();
            Ok(std::thread::spawn(move || {
                let mut tally = Tally::default();
                let (mut first, mut last) = (None, Instant::now());
                while tally.received < count {
                    match sub.recv_timeout(Duration::from_secs(2)) {
                        Ok(m) => {
                            last = Instant::now();
                            first.get_or_insert(last);
                            tally.record(&m);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(RecvError::Empty | RecvError::Closed) => break,
                    }
                }
                let elapsed = first.map_or(Duration::ZERO, |f| last.duration_since(f));
                (tally, elapsed)
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    wait_for_subscribers(&publisher, &["bench"], a.receivers, Duration::from_secs(10))?;
    let progress = Progress::start(
        format!("quicksilver {size} B"),
        a.count * a.receivers as u64,
        delivered,
        a.json,
    );
    let cpu = qs_runtime::os::cpu_time();
    // Payloads cut from shared chunks and a publisher handle: no allocation and no topic
    // lookup per message, as an application publishing a stream would do it.
    let mut arena = quicksilver::PayloadArena::new(64 << 10);
    let bench = publisher.publisher("bench")?;
    let start = stamp::monotonic_nanos();
    for seq in 0..a.count {
        if let Some(gap) = (1_000_000_000u64).checked_div(a.rate) {
            // Sleep (never spin: a spinning publisher would take a core from the node threads
            // it measures); the stamp is taken after the wake-up, so the publisher's own
            // timer slack is not counted as Quicksilver's latency.
            let due = start + seq * gap;
            let now = stamp::monotonic_nanos();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
        }
        let payload = arena.write(size, |buf| {
            stamp::write(buf, seq, stamp::monotonic_nanos());
            fill_payload(buf, seq);
        });
        bench.publish(payload)?;
    }
    let mut f = Figures::default();
    let n = a.receivers as f64;
    for (t, node) in threads.into_iter().zip(&subscribers) {
        let (tally, elapsed) = t.join().expect("subscriber thread");
        let stats = node.stats()?;
        let secs = elapsed.as_secs_f64().max(1e-9);
        f.msgs_per_s += tally.received as f64 / secs / n;
        f.packets_per_s += stats.core.data_packets_received as f64 / secs / n;
        f.delivered_fraction += tally.received as f64 / a.count as f64 / n;
        for (l, q) in f.latency_us.iter_mut().zip(QUANTILES) {
            *l += tally.latency_us(q) / n;
        }
        f.gaps += stats.core.gaps;
        f.repaired.lateral += stats.core.repaired.lateral;
        f.repaired.peer += stats.core.repaired.peer;
        f.repaired.sender += stats.core.repaired.sender;
    }
    // Count recovery traffic once the subscribers acknowledged everything.
    publisher.flush(Duration::from_secs(10))?;
    let (mut data, mut control, mut limited) = (0u64, 0u64, 0u64);
    for node in std::iter::once(&publisher).chain(&subscribers) {
        let s = node.stats()?.core;
        data += s.data_bytes_sent;
        control += s.control_bytes_sent;
        f.repairs += s.repairs_served + s.retransmitted;
        limited += s.drops.repair_limited;
    }
    if limited > 0 {
        eprintln!("qs bench: {limited} repair packets refused by the per-requester repair limit");
    }
    f.overhead = control as f64 / data.max(1) as f64;
    f.cpu_us_per_msg = (qs_runtime::os::cpu_time() - cpu).as_secs_f64() * 1e6 / a.count as f64;
    drop(progress);
    Ok(f)
}

fn raw_send(r: &RawArgs) -> anyhow::Result<ExitCode> {
    let rep = raw::send(&RawSendConfig {
        interface: r.iface,
        group: r.group,
        payload_bytes: r.size,
        count: r.count,
        rate_per_sec: (r.rate > 0).then_some(r.rate),
        ..RawSendConfig::default()
    })?;
    println!(
        "{}",
        json!({
            "sent": rep.sent, "elapsed_s": rep.elapsed.as_secs_f64(),
            "rate_msgs_s": rep.msgs_per_sec, "paced_per_s": r.rate,
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn raw_recv(r: &RawArgs) -> anyhow::Result<ExitCode> {
    let mut rep = raw::receive(&RawRecvConfig {
        interface: r.iface,
        group: r.group,
        expected: Some(r.count),
        idle_timeout: Duration::from_secs(r.timeout),
        latency_samples_max: 100_000,
        ..RawRecvConfig::default()
    })?;
    rep.latency_nanos.sort_unstable();
    println!(
        "{}",
        json!({
            "received": rep.unique, "duplicates": rep.duplicates, "rate_msgs_s": rep.msgs_per_sec,
            "sender_count": rep.sender_count,
            "loss": rep.sender_count.map(|n| 1.0 - rep.unique as f64 / n.max(1) as f64),
            "latency_us": {
                "p50": percentile(&rep.latency_nanos, 0.5), "p90": percentile(&rep.latency_nanos, 0.9),
                "p99": percentile(&rep.latency_nanos, 0.99), "p999": percentile(&rep.latency_nanos, 0.999),
                "max": percentile(&rep.latency_nanos, 1.0),
            },
            "recv_buffer_bytes": rep.recv_buffer_bytes,
        })
    );
    Ok(ExitCode::SUCCESS)
}
