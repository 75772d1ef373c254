//! `qs demo`: a whole cluster in one process, on loopback multicast, no root and no setup.
//!
//! Node 0 publishes round robin on `demo.a`, `demo.b`, `demo.c`; node 1 publishes on `demo.c`;
//! subscribers hold overlapping topic sets (node 1: a+b, node 2: b+c, node 3: a+c, further
//! nodes: all three), so the cluster has several regions and one publish reaches several of
//! them. A progress bar (indicatif; plain lines when stdout is not a terminal) shows progress;
//! the summary table (comfy-table) checks every subscriber got exactly the messages of its
//! topics, once, in per-sender order. When something fails it points to `qs doctor`.
//!
//! It uses only loopback and its own cluster name, and stops by itself.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use quicksilver::{Node, RecvError};

use crate::pubsub::{fill_payload, wait_for_subscribers, Pacer, Tally};
use crate::stamp::{self, STAMP_LEN};

/// `qs demo` options.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Nodes in the cluster (at least 4).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Messages each publisher sends.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Messages per second per publisher (0: unpaced; loopback drops under overload).
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Drop this fraction of data packets at every subscriber (loss injection: the recovery
    /// ring repairs every one; the table shows how many were dropped and repaired).
    #[arg(
        long,
        alias = "inject-loss",
        default_value_t = 0.0,
        value_name = "FRACTION"
    )]
    pub loss: f64,
    /// Lateral error correction: subscribers repair each other's losses before the ring asks
    /// (the table's lateral / peer / sender columns say how each loss was repaired)
    /// [default: the library's, on]
    #[arg(long, value_name = "on|off", value_parser = crate::config::parse_on_off)]
    pub lec: Option<bool>,
    /// Control (discovery) multicast group and port, as for every command.
    #[arg(long, default_value = "239.255.0.1:7400", value_name = "GROUP:PORT")]
    pub control_group: SocketAddrV4,
    /// UDP port of the region data groups, as for every command.
    #[arg(long, default_value_t = 7401, value_name = "PORT")]
    pub data_port: u16,
    /// Serve every demo node's Prometheus metrics at http://ADDR/metrics (a `node` label
    /// each).
    #[arg(long, env = "QS_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// Said whenever the demo cannot do its job: the host's checks are one command away.
const DOCTOR_HINT: &str = "run `qs doctor` to check this machine's multicast, buffers and firewall";

const TOPICS: [&str; 3] = ["demo.a", "demo.b", "demo.c"];

fn subscriptions(node: usize) -> Vec<&'static str> {
    match node {
        0 => vec![],
        1 => vec!["demo.a", "demo.b"],
        2 => vec!["demo.b", "demo.c"],
        3 => vec!["demo.a", "demo.c"],
        _ => TOPICS.to_vec(),
    }
}

/// Messages publisher `p` sends on topic `t`.
fn sent_on(p: usize, t: &str, messages: u64) -> u64 {
    match p {
        0 => {
            let i = TOPICS.iter().position(|x| *x == t).expect("known topic") as u64;
            messages / 3 + u64::from(i < messages % 3)
        }
        _ => u64::from(t == "demo.c") * messages,
    }
}

struct Subscriber {
    node: usize,
    topics: Vec<&'static str>,
    expected: u64,
    delivered: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Tally>,
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.nodes < 4 {
        bail!("--nodes must be at least 4");
    }
    if a.size < STAMP_LEN {
        bail!("--size must be at least {STAMP_LEN}");
    }
    let result = demo(a);
    match &result {
        Ok(code) if *code != ExitCode::SUCCESS => eprintln!("qs demo: {DOCTOR_HINT}"),
        Err(e) => {
            return Err(anyhow::anyhow!("{e:#}\n{DOCTOR_HINT}"));
        }
        Ok(_) => {}
    }
    result
}

fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let cluster = format!("demo-{}", std::process::id());
    let nodes: Vec<Arc<Node>> = (0..a.nodes)
        .map(|_| {
            let b = Node::builder();
            let b = match a.lec {
                Some(on) => b.lec(on),
                None => b,
            };
            b.cluster(&cluster)
                .interface(Ipv4Addr::LOCALHOST)
                .control_group(a.control_group)
                .data_port(a.data_port)
                .announce_interval(Duration::from_millis(200))
                .inject_loss(a.loss)
                .build()
                .map(Arc::new)
        })
        .collect::<Result<_, _>>()
        .context("starting the demo nodes on loopback")?;
    println!(
        "qs demo: {} nodes on loopback multicast (cluster {cluster}), topics {TOPICS:?}",
        a.nodes
    );
    for (i, n) in nodes.iter().enumerate() {
        println!("  node {i} {} subscribes {:?}", n.id(), subscriptions(i));
    }
    let _metrics = match a.metrics {
        Some(addr) => {
            let refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
            let m = quicksilver::metrics::serve(addr, &refs).context("starting --metrics")?;
            println!(
                "  metrics of every node at http://{}/metrics",
                m.local_addr()
            );
            Some(m)
        }
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let mut subscribers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let topics = subscriptions(i);
        if topics.is_empty() {
            continue;
        }
        let expected = topics
            .iter()
            .map(|t| sent_on(0, t, a.messages) + sent_on(1, t, a.messages))
            .sum();
        let sub = node.subscribe_all(&topics)?;
        let delivered = Arc::new(AtomicU64::new(0));
        let (d, s) = (delivered.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut tally = Tally::default();
            while !s.load(Ordering::Relaxed) {
                match sub.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => {
                        tally.record(&m);
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RecvError::Empty) => {}
                    Err(RecvError::Closed) => break,
                }
            }
            tally
        });
        subscribers.push(Subscriber {
            node: i,
            topics,
            expected,
            delivered,
            thread,
        });
    }
    let total_expected: u64 = subscribers.iter().map(|s| s.expected).sum();

    // Publishers wait for their subscribers to be discovered, then send.
    let publishers: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|p| {
            let node = nodes[p].clone();
            let (messages, size, rate, n) = (a.messages, a.size, a.rate, a.nodes);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let topics: Vec<&str> = if p == 0 {
                    TOPICS.to_vec()
                } else {
                    vec!["demo.c"]
                };
                let subscribers = (0..n)
                    .filter(|&i| i != p && subscriptions(i).iter().any(|t| topics.contains(t)))
                    .count();
                wait_for_subscribers(&node, &topics, subscribers, Duration::from_secs(15))?;
                let pacer = Pacer::new(rate);
                let mut buf = vec![0u8; size];
                for seq in 0..messages {
                    pacer.wait(seq);
                    stamp::write(&mut buf, seq, stamp::monotonic_nanos());
                    fill_payload(&mut buf, seq);
                    let topic = topics[(seq % topics.len() as u64) as usize];
                    node.publish(topic, bytes::Bytes::copy_from_slice(&buf))?;
                }
                Ok(())
            })
        })
        .collect();

    let start = Instant::now();
    let mut last_progress = (0u64, Instant::now());
    // indicatif hides itself when stdout is not a terminal; then a line a second says the same.
    let bar = ProgressBar::new(total_expected).with_style(
        ProgressStyle::with_template(
            "  {bar:40.cyan/blue} {pos:>9}/{len} deliveries  {per_sec:>12}  {elapsed_precise}",
        )
        .expect("a valid template")
        .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    let plain = bar.is_hidden();
    let mut next_line = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let delivered: u64 = subscribers
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum();
        bar.set_position(delivered);
        if plain && Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            println!(
                "  delivered {delivered} / {total_expected} messages in {}",
                humantime::format_duration(Duration::from_secs(start.elapsed().as_secs()))
            );
        }
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        }
        let publishers_done = publishers.iter().all(|p| p.is_finished());
        if delivered >= total_expected && publishers_done {
            break;
        }
        if publishers_done && last_progress.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    bar.finish();
    if plain {
        let delivered: u64 = subscribers
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum();
        println!(
            "  delivered {delivered} / {total_expected} messages in {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }
    for p in publishers {
        p.join().expect("publisher thread")?;
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut ok = true;
    let mut dropped = 0u64;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "node",
        "topics",
        "expected",
        "delivered",
        "dups",
        "order",
        "dropped",
        "lateral",
        "peer",
        "sender",
        "p50 µs",
        "p99 µs",
    ]);
    for s in subscribers {
        let tally = s.thread.join().expect("subscriber thread");
        let stats = nodes[s.node].stats()?;
        let gaps = stats.core.gaps + stats.core.missed_on_join;
        dropped += stats.core.drops.injected_loss;
        table.add_row([
            s.node.to_string(),
            s.topics.join(","),
            s.expected.to_string(),
            tally.received.to_string(),
            tally.duplicates.to_string(),
            tally.out_of_order.to_string(),
            stats.core.drops.injected_loss.to_string(),
            stats.core.repaired.lateral.to_string(),
            stats.core.repaired.peer.to_string(),
            stats.core.repaired.sender.to_string(),
            format!("{:.0}", tally.latency_us(0.5)),
            format!("{:.0}", tally.latency_us(0.99)),
        ]);
        // Reliable delivery: every message, loss or not.
        ok &= tally.duplicates == 0 && tally.out_of_order == 0 && gaps == 0;
        ok &= tally.received == s.expected;
    }
    for i in 2..12 {
        if let Some(c) = table.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!("\n{table}");
    println!(
        "\n  {} deliveries expected in {:.2} s; {}",
        total_expected,
        elapsed.as_secs_f64(),
        match (ok, dropped) {
            (true, 0) => "every subscriber got exactly its topics' messages, once, in order".into(),
            (true, d) => format!(
                "every subscriber got exactly its topics' messages, once, in order; the {d} \
                 packets the loss injector dropped were all repaired"
            ),
            (false, _) => "DELIVERY CHECK FAILED".into(),
        }
    );
    drop(nodes);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
