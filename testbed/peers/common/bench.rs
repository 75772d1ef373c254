//! Shared by the Rust peer harnesses (`aeron/`, `zenoh/`), included with `#[path]`: the payload
//! stamp, receiver bookkeeping and the JSON lines, the same as `bench_common.h` gives the C
//! harnesses (8-byte sequence number and 8-byte `CLOCK_MONOTONIC` send time, little endian).
//! It does no networking.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bytes of the stamp at the start of every payload.
pub const HDR: usize = 16;
/// The sequence number of the message that ends a ping run.
pub const END: u64 = u64::MAX;

/// `CLOCK_MONOTONIC` in nanoseconds: shared by every namespace of one kernel.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes the stamp (sequence, now) into `buf`.
pub fn stamp(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&now_ns().to_le_bytes());
}

/// Reads `(seq, sent_ns)`.
pub fn read(buf: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let t = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    Some((seq, t))
}

/// SIGINT/SIGTERM set the flag (loops poll it).
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// Whether the flag is set.
pub fn stopped(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

/// Receiver statistics, as `struct rstats` in bench_common.h.
pub struct RStats {
    pub expected: u64,
    pub received: u64,
    pub dup: u64,
    pub ooo: u64,
    next_seq: u64,
    first_ns: u64,
    last_ns: u64,
    seen: Vec<u8>,
    lat_us: Vec<f32>,
}

impl RStats {
    pub fn new(expected: u64) -> RStats {
        RStats {
            expected,
            received: 0,
            dup: 0,
            ooo: 0,
            next_seq: 0,
            first_ns: 0,
            last_ns: 0,
            seen: vec![0; expected.max(1) as usize],
            lat_us: Vec::with_capacity(expected as usize),
        }
    }

    /// Accounts one message; true once all expected messages are in.
    pub fn add(&mut self, buf: &[u8]) -> bool {
        let now = now_ns();
        let Some((seq, t)) = read(buf) else {
            return false;
        };
        if seq >= self.expected {
            return false;
        }
        if self.seen[seq as usize] != 0 {
            self.dup += 1;
            return false;
        }
        self.seen[seq as usize] = 1;
        if seq != self.next_seq {
            self.ooo += 1;
        }
        self.next_seq = seq + 1;
        if self.received == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        self.received += 1;
        self.lat_us.push(now.saturating_sub(t) as f32 / 1e3);
        self.received == self.expected
    }

    /// Nanoseconds since the last message (or `None` before the first).
    pub fn idle_ns(&self) -> Option<u64> {
        (self.received > 0).then(|| now_ns().saturating_sub(self.last_ns))
    }

    /// The receiver's JSON line; `status`: complete | timeout | idle | signal.
    pub fn print(&mut self, peer: &str, status: &str, extra: &str) {
        let el = if self.received > 1 {
            (self.last_ns - self.first_ns) as f64 / 1e9
        } else {
            0.0
        };
        self.lat_us.sort_by(f32::total_cmp);
        let mut line = format!(
            "{{\"peer\":\"{peer}\",\"role\":\"recv\",\"status\":\"{status}\",\"received\":{},\"expected\":{},\
             \"delivered\":{:.4},\"duplicates\":{},\"out_of_order\":{},\"elapsed_s\":{el:.3},\"rate_msgs_s\":{:.0}",
            self.received,
            self.expected,
            self.received as f64 / self.expected.max(1) as f64,
            self.dup,
            self.ooo,
            if el > 0.0 { self.received as f64 / el } else { 0.0 }
        );
        if let Some(max) = self.lat_us.last() {
            let p = |q: f64| self.lat_us[(q * (self.lat_us.len() - 1) as f64 + 0.5) as usize];
            line += &format!(
                ",\"latency_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"max\":{max:.1}}}",
                p(0.5),
                p(0.99)
            );
        }
        if !extra.is_empty() {
            line += ",";
            line += extra;
        }
        println!("{line}}}");
    }
}

/// The sender's JSON line.
pub fn send_print(peer: &str, sent: u64, t0: u64, t1: u64, size: usize, extra: &str) {
    let el = (t1 - t0) as f64 / 1e9;
    let sep = if extra.is_empty() { "" } else { "," };
    println!(
        "{{\"peer\":\"{peer}\",\"role\":\"send\",\"sent\":{sent},\"size\":{size},\"elapsed_s\":{el:.3},\
         \"rate_msgs_s\":{:.0}{sep}{extra}}}",
        if el > 0.0 { sent as f64 / el } else { 0.0 }
    );
}

/// Round-trip percentiles of a ping run as the JSON line `run-peer.sh` collects
/// (`"role":"ping"`): one-way = RTT/2.
pub fn ping_print(peer: &str, size: usize, rtt_ns: &mut [u64], lost: u64, extra: &str) {
    rtt_ns.sort_unstable();
    let n = rtt_ns.len();
    let p = |q: f64| {
        if n == 0 {
            0.0
        } else {
            rtt_ns[((n - 1) as f64 * q) as usize] as f64 / 1e3
        }
    };
    let sep = if extra.is_empty() { "" } else { "," };
    println!(
        "{{\"peer\":\"{peer}\",\"role\":\"ping\",\"size\":{size},\"samples\":{n},\"lost\":{lost},\
         \"rtt_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\
         \"one_way_us\":{{\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}}{sep}{extra}}}",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        p(1.0),
        p(0.5) / 2.0,
        p(0.9) / 2.0,
        p(0.99) / 2.0,
        p(0.999) / 2.0,
        p(1.0) / 2.0
    );
}

/// `--name value` options of a harness command line.
pub struct Opts(pub Vec<String>);

impl Opts {
    pub fn from_env() -> Opts {
        Opts(std::env::args().collect())
    }
    pub fn mode(&self) -> &str {
        self.0.get(1).map_or("", String::as_str)
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).map(String::as_str)
    }
    pub fn str_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }
    pub fn num(&self, name: &str, default: u64) -> u64 {
        self.get(name)
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}")))
            .unwrap_or(default)
    }
}
