//! `qs pub` and `qs sub`, and the delivery tally both `qs sub` and `qs demo` report.
//!
//! By hand: `qs pub --topic t` publishes each line of stdin as a message (or each
//! `--message TEXT`), after waiting for at least one subscriber; `qs sub --topic t` prints
//! each message as a line (by default when stdout is a terminal, or with `--print`).
//! Benchmark mode (`qs pub --count N`): stamped messages (sequence number and send time) that
//! `qs sub --json` checks for order, duplicates and checksums and measures latency on.
//!
//! Exit codes, both commands: 0 done; 1 incomplete (`qs sub`: fewer than `--count` messages;
//! `qs pub`: not everything acknowledged within `--linger`, or interrupted before `--count`);
//! 2 error; 3 nobody there (`qs pub`: no subscriber within `--wait`; `qs sub`: no message
//! within `--wait`).
//!
//! This file does not own the node's options (`config.rs`) and does not pace or retry beyond
//! what the node's back-pressure does.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use quicksilver::{Message, Node, NodeEvent, NodeId, RecvError};
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use crate::config::parse_duration;
use crate::stamp::{self, STAMP_LEN};
use crate::NodeOpts;

/// Exit code: nobody there (no subscriber / no message within `--wait`).
const EXIT_NOBODY: u8 = 3;

/// `qs pub` options.
#[derive(Args, Debug)]
#[command(
    mut_arg("topics", |a| a.help("Topic to publish on (repeatable: messages go round robin over the topics) [default: qs.test]")),
    after_help = "Examples:\n  echo hello | qs pub --topic chat\n  qs pub --topic chat --message 'hello' --message 'world'\n  qs pub --topic bench --count 100000 --size 1024 --json   (stamped benchmark messages)"
)]
pub struct PubArgs {
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Publish this text as one message (repeatable) instead of reading stdin.
    #[arg(long, value_name = "TEXT", conflicts_with = "count")]
    pub message: Vec<String>,
    /// Benchmark mode: send this many stamped messages (sequence number, send time, filler)
    /// instead of reading stdin.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Benchmark mode: payload bytes per message (at least 16).
    #[arg(long, default_value_t = 256, requires = "count", value_name = "BYTES")]
    pub size: usize,
    /// Benchmark mode: messages per second (0: as fast as back-pressure allows).
    #[arg(long, default_value_t = 0, requires = "count", value_name = "N")]
    pub rate: u64,
    /// Wait until this many other nodes subscribe to at least one of the topics (0: publish
    /// right away, even into nothing).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub subscribers: usize,
    /// How long to wait for them (exit code 3 when they do not come) [default: forever]
    #[arg(long, alias = "wait-secs", value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    /// After publishing, wait up to this long for every subscriber region to acknowledge
    /// everything (reliable mode), so that slow subscribers can still be repaired.
    #[arg(long, alias = "linger-secs", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub linger: Duration,
    /// Print one JSON summary line (to stdout).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: NodeOpts,
}

/// `qs sub` options.
#[derive(Args, Debug)]
#[command(
    mut_arg("topics", |a| a.help("Topic to subscribe (repeatable: one subscription over all of them) [default: qs.test]")),
    after_help = "Examples:\n  qs sub --topic chat                      (prints each message as a line)\n  qs sub --topic bench --count 100000 --json   (one JSON summary line at the end)"
)]
pub struct SubArgs {
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Exit after this many deliveries in total [default: no limit]
    #[arg(long, default_value_t = 0, value_name = "N", hide_default_value = true)]
    pub count: u64,
    /// Exit after this long without a message, counted from the latest message (the first
    /// one included) [default: never]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Exit (code 3) when no message arrived this long after starting [default: forever]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    /// Print each message's payload as a line on stdout [default: on when stdout is a
    /// terminal and without --json]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub print: Option<bool>,
    /// Print one JSON summary line at exit (counts, order checks, checksums, latency).
    #[arg(long)]
    pub json: bool,
    /// Slow consumer: spend this long on each message (slow-receiver tests; `250us`, or a
    /// bare number of microseconds).
    #[arg(long, alias = "delay-us", value_parser = parse_micros, default_value = "0", value_name = "DURATION")]
    pub delay: Duration,
    #[command(flatten)]
    pub net: NodeOpts,
}

/// A duration where a bare number means microseconds (`--delay-us` before it took units).
fn parse_micros(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(us) => Ok(Duration::from_micros(us)),
        Err(_) => parse_duration(s),
    }
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
    /// A topic (repeatable) [default: qs.test]
    #[arg(id = "topics", long = "topic", value_name = "NAME")]
    pub named: Vec<String>,
    /// Also use `--topics N` generated topics named PREFIX.0 .. PREFIX.(N-1) (many-topics runs).
    #[arg(long, requires = "topic_count", value_name = "PREFIX")]
    pub topics_prefix: Option<String>,
    /// How many generated topics (with `--topics-prefix`).
    #[arg(
        id = "topic_count",
        long = "topics",
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
    match await_subscribers(node, topics, want, Some(timeout), None, None)? {
        true => Ok(()),
        false => bail!(
            "only {} of {want} subscribers of {topics:?} appeared within {timeout:?} (same --cluster, --control-group and --iface network?)",
            node.subscribers_of(topics)?
        ),
    }
}

/// Waits until `node` knows `want` subscribers of `topics`: `Ok(false)` when `timeout` passed
/// or `stop` was raised first. After a short while it says on stderr what it waits for
/// (`announce`: the cluster and interface, to check against the subscribers').
fn await_subscribers(
    node: &Node,
    topics: &[&str],
    want: usize,
    timeout: Option<Duration>,
    stop: Option<&AtomicBool>,
    announce: Option<&str>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let have = node.subscribers_of(topics)?;
        if have >= want {
            if said {
                eprintln!("qs pub: {have} subscriber(s) found, publishing");
            }
            return Ok(true);
        }
        if timeout.is_some_and(|t| start.elapsed() > t)
            || stop.is_some_and(|s| s.load(Ordering::SeqCst))
        {
            return Ok(false);
        }
        if let Some(a) = announce.filter(|_| !said && start.elapsed() > Duration::from_millis(300))
        {
            eprintln!(
                "qs pub: waiting for {want} subscriber(s) of {} ({a}; --subscribers 0 publishes without waiting; Ctrl-C to stop)",
                topics.join(", ")
            );
            said = true;
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

/// `qs pub --json`'s summary line.
#[derive(Serialize)]
struct PubSummary {
    sent: u64,
    bytes: u64,
    elapsed_s: f64,
    rate_msgs_s: f64,
    mb_s: f64,
    /// xxh3 over the payloads in order (benchmark mode; `qs sub --json` has one per sender).
    checksum: String,
    node: String,
    /// Whether every subscriber region acknowledged everything within `--linger`.
    acknowledged: bool,
    interrupted: bool,
    data_packets_sent: u64,
    send_errors: u64,
    send_enobufs: u64,
    published_unheard: u64,
    /// Packets sent again for the regions' NAKs, and acknowledgements refused (not from the
    /// region's leader as this node sees it, or about an earlier stream): what a run that
    /// lost or stalled must be read with.
    retransmitted: u64,
    /// See `retransmitted`.
    acks_refused: u64,
    /// Every drop by reason.
    drops: quicksilver::core::DropStats,
    /// CPU use of the node thread and the publishing thread from the first publish until
    /// everything was acknowledged.
    cpu: crate::cpu::CpuUse,
    /// That CPU time per message sent, in nanoseconds.
    cpu_ns_per_msg: f64,
    /// `sendmmsg` calls of the node thread (all traffic classes).
    send_batches: u64,
    /// Of the headers in those calls, the ones that carried several datagrams as one UDP GSO
    /// buffer, the datagrams they carried, and whether the kernel refused GSO (`--gso`).
    gso_sends: u64,
    /// See `gso_sends`.
    gso_segments: u64,
    /// See `gso_sends`.
    gso_fallbacks: u64,
    /// The most bytes held sent and unacknowledged in a send window (`--send-window-time`
    /// bounds it), and how often rate control engaged pacing.
    unacked_bytes_peak: u64,
    /// See `unacked_bytes_peak`.
    pacing_engaged: u64,
}

/// Where `qs pub`'s messages come from.
enum Source {
    Stamped { count: u64, size: usize, rate: u64 },
    Texts(Vec<String>),
    Stdin,
}

pub fn run_pub(a: PubArgs) -> anyhow::Result<ExitCode> {
    let source = match (a.count, a.message.is_empty()) {
        (Some(count), _) => {
            if a.size < STAMP_LEN {
                bail!("--size must be at least {STAMP_LEN} bytes (sequence number and send time)");
            }
            Source::Stamped {
                count,
                size: a.size,
                rate: a.rate,
            }
        }
        (None, false) => Source::Texts(a.message.clone()),
        (None, true) => Source::Stdin,
    };
    let stop = qs_runtime::os::interrupt_flag();
    let names = a.topics.list();
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    let node = a.net.builder()?.build().context("starting the node")?;
    a.net.reload_key_file_on_sighup(&node)?;
    let announce = format!(
        "cluster {:?} on {}",
        a.net.cluster_name(),
        a.net.interface()?
    );
    if !await_subscribers(
        &node,
        &topics,
        a.subscribers,
        a.wait,
        Some(&stop),
        Some(&announce),
    )? {
        let have = node.subscribers_of(&topics)?;
        node.shutdown()?;
        if stop.load(Ordering::SeqCst) {
            return Ok(ExitCode::from(1));
        }
        eprintln!(
            "qs pub: only {have} of {} subscriber(s) of {} appeared within {} (same --cluster, --control-group and network as the subscribers? `qs doctor` checks this host)",
            a.subscribers,
            topics.join(", "),
            humantime::format_duration(a.wait.unwrap_or_default())
        );
        return Ok(ExitCode::from(EXIT_NOBODY));
    }
    let publishers = topics
        .iter()
        .map(|t| node.publisher(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sent = 0u64;
    let mut bytes = 0u64;
    let mut checksum = Xxh3::new();
    let start = Instant::now();
    let meter = crate::cpu::CpuMeter::start();
    let mut publish = |payload: bytes::Bytes| -> anyhow::Result<()> {
        checksum.update(&payload);
        bytes += payload.len() as u64;
        publishers[(sent % publishers.len() as u64) as usize].publish(payload)?;
        sent += 1;
        Ok(())
    };
    let mut complete = true;
    match source {
        Source::Stamped { count, size, rate } => {
            let pacer = Pacer::new(rate);
            // Payloads cut from shared chunks: no allocation (and no free on the node
            // thread) per message.
            let mut arena = quicksilver::PayloadArena::new(64 << 10);
            for seq in 0..count {
                if stop.load(Ordering::Relaxed) {
                    complete = false;
                    break;
                }
                pacer.wait(seq);
                publish(arena.write(size, |buf| {
                    stamp::write(buf, seq, stamp::monotonic_nanos());
                    fill_payload(buf, seq);
                }))?;
            }
        }
        Source::Texts(texts) => {
            for t in texts {
                publish(t.into())?;
            }
        }
        Source::Stdin => {
            if std::io::stdin().is_terminal() {
                eprintln!(
                    "qs pub: each line you type is published on {} (Ctrl-D to end)",
                    topics.join(", ")
                );
            }
            // A reader thread, so that Ctrl-C is seen while stdin blocks.
            let (tx, rx) = flume::bounded::<String>(1024);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(line) => publish(line.into())?,
                    Err(flume::RecvTimeoutError::Timeout) => {}
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
    }
    let elapsed = start.elapsed();
    // Stay until the regions acknowledged everything (repairs may still be needed).
    let acknowledged = node.flush(a.linger)?;
    let cpu = meter.stop();
    if !acknowledged {
        eprintln!(
            "qs pub: not everything was acknowledged within {} (--linger)",
            humantime::format_duration(a.linger)
        );
    }
    let stats = node.stats()?;
    let node_id = node.id();
    node.shutdown()?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let summary = PubSummary {
        sent,
        bytes,
        elapsed_s: secs,
        rate_msgs_s: sent as f64 / secs,
        mb_s: bytes as f64 / secs / 1e6,
        checksum: format!("{:016x}", checksum.digest()),
        node: node_id.to_string(),
        acknowledged,
        interrupted: stop.load(Ordering::Relaxed),
        data_packets_sent: stats.core.data_packets_sent,
        send_errors: stats.runtime.send_errors,
        send_enobufs: stats.runtime.send_enobufs,
        published_unheard: stats.core.published_unheard,
        retransmitted: stats.core.retransmitted,
        acks_refused: stats.core.acks_refused,
        drops: stats.core.drops,
        cpu,
        cpu_ns_per_msg: (cpu.node_ns + cpu.app_ns) as f64 / sent.max(1) as f64,
        send_batches: stats.runtime.send_batches,
        gso_sends: stats.runtime.gso_sends,
        gso_segments: stats.runtime.gso_segments,
        gso_fallbacks: stats.runtime.gso_fallbacks,
        unacked_bytes_peak: stats.core.unacked_bytes_peak,
        pacing_engaged: stats.core.pacing_engaged,
    };
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "qs pub: sent {sent} messages ({bytes} B) in {:.2} s: {:.0} msg/s, {:.1} MB/s ({} packets){}",
            secs,
            summary.rate_msgs_s,
            summary.mb_s,
            stats.core.data_packets_sent,
            if stats.core.published_unheard > 0 {
                format!("; {} published while nobody subscribed", stats.core.published_unheard)
            } else {
                String::new()
            }
        );
    }
    Ok(if acknowledged && complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct SenderTally {
    count: u64,
    highest: Option<u64>,
    /// Bits of the sequence numbers seen, from word `base` on (at most `TALLY_WINDOW_WORDS`).
    seen: std::collections::VecDeque<u64>,
    base: u64,
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
    /// Messages not checked for duplicates: older than the tracked window of their sender, or
    /// from a sender beyond the most tracked (`TALLY_MAX_SENDERS`).
    pub untracked: u64,
    per_sender: BTreeMap<NodeId, SenderTally>,
    latency_ns: Histogram<u64>,
}

/// Sequence numbers tracked per sender behind its highest, in 64-bit words (4 Mi numbers,
/// 512 KiB): a stamp far ahead slides the window instead of growing it, so hostile or
/// corrupt stamps cannot make the tally allocate without bound.
const TALLY_WINDOW_WORDS: u64 = 1 << 16;
/// Senders tallied one by one; messages of further senders count as `untracked`.
const TALLY_MAX_SENDERS: usize = 1024;

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            received: 0,
            bytes: 0,
            duplicates: 0,
            out_of_order: 0,
            unstamped: 0,
            untracked: 0,
            per_sender: BTreeMap::new(),
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Serialize)]
pub struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// The summary `qs sub --json` prints: [`Tally`]'s counts plus the node's counters.
#[derive(Serialize)]
pub struct SubSummary {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Packets the node counted as lost (gaps in its streams).
    gaps: u64,
    /// Gap events the node reported (each with its sender and count; see `NodeEvent::Gap`).
    gap_events: u64,
    /// Senders whose streams ended because they failed or left (`NodeEvent::SenderLost`).
    senders_lost: u64,
    bytes: u64,
    per_sender: BTreeMap<String, u64>,
    checksums: BTreeMap<String, String>,
    elapsed_s: f64,
    rate_msgs_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<Latency>,
    unstamped: u64,
    /// Messages not checked for duplicates (see `Tally::untracked`).
    untracked: u64,
    missed_on_join: u64,
    data_packets_received: u64,
    held_back: u64,
    subscriber_overflow: u64,
    socket_rcvbuf: usize,
    /// How this subscriber's lost packets were repaired: laterally (LEC), by a peer (the
    /// ring), by the sender.
    repaired: quicksilver::core::RepairSplit,
    /// Lateral error correction counters.
    lec: quicksilver::core::LecCounters,
    /// Datagrams without a valid MAC under the cluster key (forgeries, outsiders).
    drops_auth: u64,
    /// Authentic control datagrams refused as replays.
    drops_replay: u64,
    /// Datagrams that failed the header or checksum checks, or had a malformed body.
    drops_malformed: u64,
    /// Keyed: times the node switched to a next key by itself, and previous keys retired.
    key_switches: u64,
    /// See `key_switches`.
    keys_retired: u64,
    /// Repair requests received, and packets served for them (attack runs check where
    /// requests went).
    requests_received: u64,
    /// See `requests_received`.
    repairs_served: u64,
    /// Requests refused: the asker is no member of the region named (or has no address).
    drops_not_member: u64,
    /// Repair packets not served: their requester had used up its repair budget (requests in
    /// its name came faster than any real loss needs).
    drops_repair_limited: u64,
    /// Discovery counters (announcements accepted, stale, invalid, table full, assemblies
    /// dropped).
    discovery: quicksilver::core::DiscoveryStats,
    /// The recovery ring's counters (rounds, hops retransmitted and skipped, view holds):
    /// what a run that lost or stalled must be read with.
    ring: quicksilver::core::RingStats,
    /// Every drop by reason (the `drops_*` fields above are some of these).
    drops: quicksilver::core::DropStats,
    /// Subscription handovers: departures started, completed, timed out or cut short,
    /// messages skipped before a sender's cut, markers sent.
    handover: quicksilver::core::HandoverStats,
    /// Resident memory at the end, in KiB (Linux; 0 where unknown): scripts check it stays
    /// flat under hostile input.
    rss_kb: u64,
    /// Why it stopped: `count`, `timeout`, `wait`, `interrupted` or `closed`.
    ended: &'static str,
    /// CPU use of the node thread and of the receiving thread from the subscription to the
    /// end (what busy-poll mode costs: `--busy-poll`), in percent of a core.
    cpu: crate::cpu::CpuUse,
}

/// This process's resident set size in KiB, from `/proc/self/status` (0 where unknown).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Tally {
    /// Accounts for one delivered message.
    pub fn record(&mut self, m: &Message) {
        self.received += 1;
        self.bytes += m.payload.len() as u64;
        if self.per_sender.len() >= TALLY_MAX_SENDERS && !self.per_sender.contains_key(&m.sender) {
            self.untracked += 1;
            return;
        }
        let s = self
            .per_sender
            .entry(m.sender)
            .or_insert_with(|| SenderTally {
                count: 0,
                highest: None,
                seen: std::collections::VecDeque::new(),
                base: 0,
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
        let (word, bit) = (seq / 64, seq % 64);
        if word < s.base {
            self.untracked += 1;
            self.out_of_order += 1;
            return;
        }
        if word >= s.base + TALLY_WINDOW_WORDS {
            let base = word + 1 - TALLY_WINDOW_WORDS;
            let gone = (base - s.base).min(s.seen.len() as u64) as usize;
            s.seen.drain(..gone);
            s.base = base;
        }
        let at = (word - s.base) as usize;
        if s.seen.len() <= at {
            s.seen.resize(at + 1, 0);
        }
        if s.seen[at] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        s.seen[at] |= 1 << bit;
        if s.highest.is_some_and(|h| seq < h) {
            self.out_of_order += 1;
        }
        s.highest = Some(s.highest.map_or(seq, |h| h.max(seq)));
    }

    /// Latency percentile in microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1e3
    }

    fn latency(&self) -> Option<Latency> {
        (!self.latency_ns.is_empty()).then(|| Latency {
            p50: self.latency_us(0.5),
            p90: self.latency_us(0.9),
            p99: self.latency_us(0.99),
            p999: self.latency_us(0.999),
            max: self.latency_ns.max() as f64 / 1e3,
        })
    }
}

/// A payload as one line: its text, or its length and first bytes in hex if it is not UTF-8.
fn printable(payload: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(payload) {
        Ok(s) => s.into(),
        Err(_) => {
            let head: String = payload
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect();
            let more = if payload.len() > 16 { "…" } else { "" };
            format!("<{} bytes: {head}{more}>", payload.len()).into()
        }
    }
}

pub fn run_sub(a: SubArgs) -> anyhow::Result<ExitCode> {
    let print = a
        .print
        .unwrap_or(!a.json && std::io::stdout().is_terminal());
    let stop: Arc<AtomicBool> = qs_runtime::os::interrupt_flag();
    let names = a.topics.list();
    let node = a.net.builder()?.build().context("starting the node")?;
    a.net.reload_key_file_on_sighup(&node)?;
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    let events = node.events()?;
    let sub = node.subscribe_all(&topics)?;
    {
        // Also the sign, for scripts, that Ctrl-C is handled from here on.
        eprintln!(
            "qs sub: subscribed to {} (cluster {:?} on {}); Ctrl-C to stop",
            topics.join(", "),
            a.net.cluster_name(),
            a.net.interface()?
        );
    }
    let cpu = crate::cpu::CpuMeter::start();
    let mut tally = Tally::default();
    let mut gap_events = 0u64;
    let mut senders_lost = 0u64;
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut out = std::io::stdout().lock();
    // Messages seen since `last` was last set: the clock is read once per batch, not per
    // message (with the latency stamp, reads were a sixth of a fast subscriber's time).
    let mut fresh = false;
    let mut since_events = 0u32;
    let ended = 'outer: loop {
        if a.count > 0 && tally.received >= a.count {
            break "count";
        }
        if stop.load(Ordering::Relaxed) {
            break "interrupted";
        }
        // Events are rare: looked at whenever the queue runs dry, and every 1,024 messages.
        if since_events >= 1024 || !fresh {
            since_events = 0;
            while let Ok(e) = events.try_recv() {
                match e {
                    NodeEvent::Gap { sender, missed, .. } => {
                        gap_events += 1;
                        if print {
                            eprintln!("qs sub: {missed} packet(s) from {sender} lost (gap)");
                        }
                    }
                    NodeEvent::SenderLost {
                        sender,
                        delivered,
                        missed,
                        ..
                    } => {
                        senders_lost += 1;
                        if print {
                            eprintln!(
                                "qs sub: sender {sender} is gone; its stream ended after \
                                 {delivered} message(s) here, {missed} packet(s) lost"
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        // Everything waiting, under one lock; then wait for more.
        let mut batch = sub.drain().map(Ok);
        let mut next = match batch.next() {
            Some(m) => m,
            None => {
                if fresh {
                    // Messages came until just now: the wait for more is not part of the run.
                    last = Instant::now();
                    fresh = false;
                }
                sub.recv_timeout(Duration::from_millis(100))
            }
        };
        loop {
            match next {
                Ok(m) => {
                    if first.is_none() {
                        first = Some(Instant::now());
                    }
                    fresh = true;
                    since_events += 1;
                    tally.record(&m);
                    if print {
                        match writeln!(out, "{}", printable(&m.payload)) {
                            // The reader went away (`qs sub | head`): stop like Ctrl-C.
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                                break 'outer "closed"
                            }
                            r => r?,
                        }
                    }
                    if !a.delay.is_zero() {
                        consume_for(a.delay);
                    }
                }
                Err(RecvError::Empty) => match first {
                    Some(_) if a.timeout.is_some_and(|t| last.elapsed() >= t) => {
                        break 'outer "timeout"
                    }
                    None if a.wait.is_some_and(|w| start.elapsed() >= w) => break 'outer "wait",
                    _ => {}
                },
                Err(RecvError::Closed) => break 'outer "closed",
            }
            if a.count > 0 && tally.received >= a.count {
                break 'outer "count";
            }
            match batch.next() {
                Some(m) => next = m,
                None => break,
            }
        }
    };
    let _ = out.flush();
    drop(out);
    // Events that came with the last messages (a sender lost right at the end).
    while let Ok(e) = events.try_recv() {
        match e {
            NodeEvent::Gap { .. } => gap_events += 1,
            NodeEvent::SenderLost { .. } => senders_lost += 1,
            _ => {}
        }
    }
    if fresh {
        // Stopped by the count (or Ctrl-C) amid a batch: the last message came just now.
        last = Instant::now();
    }
    let elapsed = first.map_or(Duration::ZERO, |f| last.duration_since(f));
    let cpu = cpu.stop();
    let stats = node.stats()?;
    drop(sub);
    node.shutdown()?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let summary = SubSummary {
        received: tally.received,
        duplicates: tally.duplicates,
        out_of_order: tally.out_of_order,
        gaps: stats.core.gaps,
        gap_events,
        senders_lost,
        bytes: tally.bytes,
        per_sender: tally
            .per_sender
            .iter()
            .map(|(id, s)| (id.to_string(), s.count))
            .collect(),
        checksums: tally
            .per_sender
            .iter()
            .map(|(id, s)| (id.to_string(), format!("{:016x}", s.checksum.digest())))
            .collect(),
        elapsed_s: secs,
        rate_msgs_s: tally.received as f64 / secs,
        latency_us: tally.latency(),
        unstamped: tally.unstamped,
        untracked: tally.untracked,
        missed_on_join: stats.core.missed_on_join,
        data_packets_received: stats.core.data_packets_received,
        held_back: stats.core.held_back,
        subscriber_overflow: stats.subscriber_overflow,
        socket_rcvbuf: stats.socket_buffers.recv_bytes,
        repaired: stats.core.repaired,
        lec: stats.core.lec,
        drops_auth: stats.core.drops.auth,
        drops_replay: stats.core.drops.replay,
        drops_malformed: stats.core.drops.malformed,
        key_switches: stats.core.key_switches,
        keys_retired: stats.core.keys_retired,
        requests_received: stats.core.requests_received,
        repairs_served: stats.core.repairs_served,
        drops_not_member: stats.core.drops.not_member,
        drops_repair_limited: stats.core.drops.repair_limited,
        discovery: stats.core.discovery,
        ring: stats.core.ring,
        drops: stats.core.drops,
        handover: stats.core.handover,
        rss_kb: rss_kb(),
        ended,
        cpu,
    };
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let mut line = format!(
            "received {} messages ({} B) in {:.2} s; duplicates {}, out of order {}, gaps {}",
            tally.received,
            tally.bytes,
            elapsed.as_secs_f64(),
            tally.duplicates,
            tally.out_of_order,
            stats.core.gaps
        );
        if senders_lost > 0 {
            line.push_str(&format!("; senders lost {senders_lost}"));
        }
        // Printed messages own stdout (for pipes); the tally then goes to stderr.
        if print {
            eprintln!("qs sub: {line}");
        } else {
            println!("{line}");
        }
    }
    Ok(match ended {
        "wait" => {
            eprintln!(
                "qs sub: no message within {} (--wait): is a publisher running on the same --cluster and network? `qs doctor` checks this host",
                humantime::format_duration(a.wait.unwrap_or_default())
            );
            ExitCode::from(EXIT_NOBODY)
        }
        _ if a.count > 0 && tally.received < a.count => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(sender: u64, seq: u64) -> Message {
        let mut buf = vec![0u8; crate::stamp::STAMP_LEN];
        crate::stamp::write(&mut buf, seq, crate::stamp::monotonic_nanos());
        Message {
            sender: NodeId(sender),
            topic: "t".into(),
            payload: bytes::Bytes::from(buf),
        }
    }

    #[test]
    fn a_stamp_far_ahead_slides_the_tally_window_instead_of_growing_it() {
        let mut t = Tally::default();
        t.record(&stamped(1, 5));
        t.record(&stamped(1, u64::MAX));
        let s = &t.per_sender[&NodeId(1)];
        assert!(s.seen.len() as u64 <= TALLY_WINDOW_WORDS);
        // 5 is now older than the window: not checked, counted as such.
        t.record(&stamped(1, 5));
        assert_eq!((t.untracked, t.duplicates), (1, 0));
        t.record(&stamped(1, u64::MAX));
        assert_eq!(
            t.duplicates, 1,
            "inside the window duplicates are still found"
        );
    }

    #[test]
    fn the_oldest_number_inside_the_tally_window_is_checked_and_one_older_is_not() {
        let mut t = Tally::default();
        let top = 64 * TALLY_WINDOW_WORDS * 3 + 10;
        t.record(&stamped(1, top));
        let first = (top / 64 + 1 - TALLY_WINDOW_WORDS) * 64;
        t.record(&stamped(1, first));
        t.record(&stamped(1, first));
        assert_eq!((t.duplicates, t.untracked), (1, 0));
        t.record(&stamped(1, first - 1));
        assert_eq!(t.untracked, 1);
    }

    #[test]
    fn senders_beyond_the_tracked_number_are_counted_not_tallied() {
        let mut t = Tally::default();
        for s in 0..TALLY_MAX_SENDERS as u64 + 5 {
            t.record(&stamped(s, 1));
        }
        assert_eq!(t.per_sender.len(), TALLY_MAX_SENDERS);
        assert_eq!(t.untracked, 5);
        assert_eq!(t.received, TALLY_MAX_SENDERS as u64 + 5);
    }
}
