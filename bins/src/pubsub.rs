//! `qs pub` and `qs sub`, and the delivery tally both `qs sub` and `qs demo` report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use quicksilver::{Message, Node, NodeId, RecvError};
use serde_json::{json, Value};
use xxhash_rust::xxh3::Xxh3;

use crate::stamp::{self, STAMP_LEN};
use crate::NetArgs;

/// `qs pub` options.
#[derive(Args, Debug)]
pub struct PubArgs {
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Messages to send.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Payload bytes per message (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Messages per second (0: as fast as back-pressure allows).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Wait until this many other nodes subscribe to at least one of the topics.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// How long to wait for them, in seconds.
    #[arg(long, default_value_t = 15)]
    pub wait_secs: u64,
    /// After publishing, wait up to this long for every subscriber region to acknowledge
    /// everything (reliable mode), so that slow subscribers can still be repaired.
    #[arg(long, default_value_t = 60)]
    pub linger_secs: u64,
    /// Print one JSON summary line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// `qs sub` options.
#[derive(Args, Debug)]
pub struct SubArgs {
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Exit after this many deliveries in total (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Exit after this many seconds without any delivery.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print one JSON summary line at exit.
    #[arg(long)]
    pub json: bool,
    /// Slow consumer: spend this many microseconds on each message (slow-receiver tests).
    #[arg(long, default_value_t = 0)]
    pub delay_us: u64,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Holds the caller for `d`: sleeps for long delays, spins for short ones (sleep granularity
/// is coarser than the microseconds a slow consumer models).
fn consume_for(d: Duration) {
    if d >= Duration::from_millis(1) {
        std::thread::sleep(d);
        return;
    }
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Which topics a command uses: named ones, generated ones, or `qs.test` when none is given.
#[derive(Args, Debug)]
pub struct TopicArgs {
    /// A topic (repeatable; `qs pub` sends round robin over all topics).
    #[arg(long = "topic", value_name = "NAME")]
    pub named: Vec<String>,
    /// Also use `--topics N` generated topics named PREFIX.0 .. PREFIX.(N-1) (many-topics runs).
    #[arg(long, requires = "topics", value_name = "PREFIX")]
    pub topics_prefix: Option<String>,
    /// How many generated topics (with `--topics-prefix`).
    #[arg(
        long,
        default_value_t = 0,
        requires = "topics_prefix",
        value_name = "N"
    )]
    pub topics: usize,
}

impl TopicArgs {
    /// The topic names, in order.
    pub fn list(&self) -> Vec<String> {
        let mut v = self.named.clone();
        if let Some(prefix) = &self.topics_prefix {
            v.extend((0..self.topics).map(|i| format!("{prefix}.{i}")));
        }
        if v.is_empty() {
            v.push("qs.test".into());
        }
        v
    }
}

/// Deterministic filler after the stamp, so checksums cover real content.
pub fn fill_payload(buf: &mut [u8], seq: u64) {
    for (i, b) in buf.iter_mut().enumerate().skip(STAMP_LEN) {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
}

/// Waits until `node` knows `want` subscribers of `topics`.
pub fn wait_for_subscribers(
    node: &Node,
    topics: &[&str],
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let have = node.subscribers_of(topics)?;
        if have >= want {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("only {have} of {want} subscribers of {topics:?} appeared within {timeout:?} (same --cluster, --control-group and --iface network?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Paces a loop at `rate` iterations per second (0: unpaced).
pub struct Pacer {
    start: Instant,
    rate: u64,
}

impl Pacer {
    /// Starts pacing now.
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate,
        }
    }

    /// Waits until iteration `i` is due.
    pub fn wait(&self, i: u64) {
        if self.rate == 0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(i as f64 / self.rate as f64);
        let now = Instant::now();
        if due > now + Duration::from_micros(200) {
            std::thread::sleep(due - now);
        }
    }
}

pub fn run_pub(a: PubArgs) -> anyhow::Result<ExitCode> {
    if a.size < STAMP_LEN {
        bail!("--size must be at least {STAMP_LEN} bytes (sequence number and send time)");
    }
    let names = a.topics.list();
    let node = a.net.builder().build().context("starting the node")?;
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for_subscribers(
        &node,
        &topics,
        a.subscribers,
        Duration::from_secs(a.wait_secs),
    )?;
    let pacer = Pacer::new(a.rate);
    let start = Instant::now();
    let mut checksum = Xxh3::new();
    let mut buf = vec![0u8; a.size];
    for seq in 0..a.count {
        pacer.wait(seq);
        stamp::write(&mut buf, seq, stamp::monotonic_nanos());
        fill_payload(&mut buf, seq);
        checksum.update(&buf);
        let topic = topics[(seq % topics.len() as u64) as usize];
        node.publish(topic, bytes::Bytes::copy_from_slice(&buf))?;
    }
    let elapsed = start.elapsed();
    // Stay until the regions acknowledged everything (repairs may still be needed).
    if !node.flush(Duration::from_secs(a.linger_secs))? {
        eprintln!(
            "qs pub: not everything was acknowledged within {} s (--linger-secs)",
            a.linger_secs
        );
    }
    let stats = node.stats()?;
    let node_id = node.id();
    node.shutdown()?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    if a.json {
        println!(
            "{}",
            json!({
                "sent": a.count,
                "bytes": a.count * a.size as u64,
                "elapsed_s": secs,
                "rate_msgs_s": a.count as f64 / secs,
                "mb_s": (a.count * a.size as u64) as f64 / secs / 1e6,
                "checksum": format!("{:016x}", checksum.digest()),
                "node": node_id.to_string(),
                "data_packets_sent": stats.core.data_packets_sent,
                "send_errors": stats.runtime.send_errors,
                "send_enobufs": stats.runtime.send_enobufs,
                "published_unheard": stats.core.published_unheard,
            })
        );
    } else {
        println!(
            "sent {} messages of {} B in {:.2} s: {:.0} msg/s, {:.1} MB/s ({} packets)",
            a.count,
            a.size,
            secs,
            a.count as f64 / secs,
            (a.count * a.size as u64) as f64 / secs / 1e6,
            stats.core.data_packets_sent
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct SenderTally {
    count: u64,
    highest: Option<u64>,
    seen: Vec<u64>,
    checksum: Xxh3,
}

/// What one subscriber received: counts, order checks, checksums, latency.
pub struct Tally {
    /// Messages received.
    pub received: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Messages whose sequence number was already seen from that sender.
    pub duplicates: u64,
    /// Messages older than one already seen from that sender.
    pub out_of_order: u64,
    /// Payloads too short to carry a stamp.
    pub unstamped: u64,
    per_sender: BTreeMap<NodeId, SenderTally>,
    latency_ns: Histogram<u64>,
}

const MAX_TRACKED_SEQ: u64 = 1 << 32;

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            received: 0,
            bytes: 0,
            duplicates: 0,
            out_of_order: 0,
            unstamped: 0,
            per_sender: BTreeMap::new(),
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        }
    }
}

impl Tally {
    /// Accounts for one delivered message.
    pub fn record(&mut self, m: &Message) {
        self.received += 1;
        self.bytes += m.payload.len() as u64;
        let s = self
            .per_sender
            .entry(m.sender)
            .or_insert_with(|| SenderTally {
                count: 0,
                highest: None,
                seen: Vec::new(),
                checksum: Xxh3::new(),
            });
        s.count += 1;
        s.checksum.update(&m.payload);
        let Some((seq, sent)) = stamp::read(&m.payload) else {
            self.unstamped += 1;
            return;
        };
        let _ = self
            .latency_ns
            .record(stamp::monotonic_nanos().saturating_sub(sent).max(1));
        if seq >= MAX_TRACKED_SEQ {
            return;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if s.seen.len() <= word {
            s.seen.resize(word + 1, 0);
        }
        if s.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        s.seen[word] |= 1 << bit;
        if s.highest.is_some_and(|h| seq < h) {
            self.out_of_order += 1;
        }
        s.highest = Some(s.highest.map_or(seq, |h| h.max(seq)));
    }

    /// Latency percentile in microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1e3
    }

    /// The JSON summary (`gaps` from the node's counters).
    pub fn to_json(&self, gaps: u64, elapsed: Duration) -> Value {
        let per_sender: serde_json::Map<String, Value> = self
            .per_sender
            .iter()
            .map(|(id, s)| (id.to_string(), json!(s.count)))
            .collect();
        let checksums: serde_json::Map<String, Value> = self
            .per_sender
            .iter()
            .map(|(id, s)| {
                (
                    id.to_string(),
                    json!(format!("{:016x}", s.checksum.digest())),
                )
            })
            .collect();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut v = json!({
            "received": self.received,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "gaps": gaps,
            "bytes": self.bytes,
            "per_sender": per_sender,
            "checksums": checksums,
            "elapsed_s": secs,
            "rate_msgs_s": self.received as f64 / secs,
        });
        if !self.latency_ns.is_empty() {
            v["latency_us"] = json!({
                "p50": self.latency_us(0.5), "p90": self.latency_us(0.9),
                "p99": self.latency_us(0.99), "p999": self.latency_us(0.999),
                "max": self.latency_ns.max() as f64 / 1e3,
            });
        }
        v
    }
}

pub fn run_sub(a: SubArgs) -> anyhow::Result<ExitCode> {
    let names = a.topics.list();
    let node = a.net.builder().build().context("starting the node")?;
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    let sub = node.subscribe_all(&topics)?;
    let mut tally = Tally::default();
    let idle = Duration::from_secs(a.timeout);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        if a.count > 0 && tally.received >= a.count {
            break;
        }
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                tally.record(&m);
                if a.delay_us > 0 {
                    consume_for(Duration::from_micros(a.delay_us));
                }
            }
            Err(RecvError::Empty) => {
                if last.elapsed() >= idle {
                    break;
                }
            }
            Err(RecvError::Closed) => break,
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| last.duration_since(f));
    let stats = node.stats()?;
    drop(sub);
    node.shutdown()?;
    let gaps = stats.core.gaps;
    if a.json {
        let mut v = tally.to_json(gaps, elapsed);
        v["missed_on_join"] = json!(stats.core.missed_on_join);
        v["data_packets_received"] = json!(stats.core.data_packets_received);
        v["held_back"] = json!(stats.core.held_back);
        v["subscriber_overflow"] = json!(stats.subscriber_overflow);
        v["socket_rcvbuf"] = json!(stats.socket_buffers.recv_bytes);
        println!("{v}");
    } else {
        println!(
            "received {} messages ({} B) in {:.2} s; duplicates {}, out of order {}, gaps {}",
            tally.received,
            tally.bytes,
            elapsed.as_secs_f64(),
            tally.duplicates,
            tally.out_of_order,
            gaps
        );
    }
    let complete = a.count == 0 || tally.received >= a.count;
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
