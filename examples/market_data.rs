//! Market-data fan-out: one feed node publishes quotes on eight symbols (one topic each) at a
//! steady rate; three consumer nodes subscribe to overlapping sets of symbols (so the cluster
//! has several regions) and measure one-way latency from a send timestamp in every quote.
//! At the end each consumer prints what it got and its latency percentiles (hdrhistogram).
//!
//! `cargo run --release --example market_data [QUOTES_PER_SECOND] [SECONDS]`
//! (default 20000 for 2 s). One machine, loopback multicast: the latency is the stack's, the
//! kernel's and the scheduler's; on a busy machine the tail shows it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use quicksilver::Node;

const SYMBOLS: [&str; 8] = [
    "EURUSD", "USDJPY", "GBPUSD", "AUDUSD", "USDCHF", "USDCAD", "NZDUSD", "EURGBP",
];

/// Nanoseconds since the epoch: every process of one machine shares this clock.
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A quote on the wire: send time (8 bytes), price in 1e-5 units (8 bytes), symbol.
fn quote(symbol: &str, price: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + symbol.len());
    v.extend_from_slice(&now_nanos().to_be_bytes());
    v.extend_from_slice(&price.to_be_bytes());
    v.extend_from_slice(symbol.as_bytes());
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(2), |a| a.parse())?;
    let cluster = format!("example-md-{}", std::process::id());

    // Consumers: a desk watching the majors, one the crosses, a risk engine watching all.
    let books: [(&str, Vec<&str>); 3] = [
        ("majors", SYMBOLS[..4].to_vec()),
        ("crosses", SYMBOLS[4..].to_vec()),
        ("risk", SYMBOLS.to_vec()),
    ];
    let mut consumers = Vec::new();
    for (name, symbols) in &books {
        let node = Node::builder().cluster(&cluster).build()?;
        let sub = node.subscribe_all(symbols)?;
        let name = name.to_string();
        consumers.push(std::thread::spawn(move || {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let mut quotes = 0u64;
            while let Ok(m) = sub.recv_timeout(Duration::from_secs(3)) {
                let sent = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
                let _ = latency.record(now_nanos().saturating_sub(sent).max(1));
                quotes += 1;
            }
            drop(sub);
            node.shutdown().ok();
            (name, quotes, latency)
        }));
    }

    let feed = Node::builder().cluster(&cluster).build()?;
    let start = Instant::now();
    while feed.subscribers_of(&SYMBOLS)? < books.len() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("consumers did not appear (run `qs doctor`)".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // One publisher handle per symbol: the topic is hashed once, not per quote.
    let publishers = SYMBOLS
        .iter()
        .map(|s| feed.publisher(s))
        .collect::<Result<Vec<_>, _>>()?;
    let total = rate * seconds;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let s = (i % SYMBOLS.len() as u64) as usize;
        publishers[s].publish(quote(SYMBOLS[s], 100_000 + i % 977))?;
    }
    feed.flush(Duration::from_secs(10))?;
    println!(
        "feed: {total} quotes on {} symbols in {:.2} s",
        SYMBOLS.len(),
        start.elapsed().as_secs_f64()
    );
    for c in consumers {
        let (name, quotes, h) = c.join().expect("consumer thread");
        println!(
            "{name:>8}: {quotes:>7} quotes; latency p50 {:>6.1} µs, p99 {:>7.1} µs, max {:>8.1} µs",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.max() as f64 / 1e3
        );
    }
    feed.shutdown()?;
    Ok(())
}
