//! The physical-limit baseline: raw UDP multicast with `sendmmsg`/`recvmmsg`, no reliability
//! and no protocol. Benchmarks report Quicksilver's figures next to these from the same run.
//!
//! Three measurements:
//!
//! - **blast** ([`send`] unpaced, [`RawReceiver`]): as fast as the socket takes datagrams. On
//!   a small machine this overruns the receivers (their socket buffers overflow while the
//!   sender holds a core), so the blast rate measures contention as much as the path;
//! - **paced sweep** ([`sweep`], [`sweep_rates`], [`best_paced`]): short paced runs at rising
//!   rates; the honest limit is the highest per-receiver rate that lost at most
//!   [`SWEEP_MAX_LOSS`] (0.1 %). Report both, blast and sweep;
//! - **ping-pong** ([`ping`], [`RawPonger`]): one datagram at a time to a ponger that echoes it
//!   on a second group; the round-trip time of the bare path, next to which
//!   Quicksilver's latency is judged.
//!
//! This module owns no protocol and no retransmission: a lost datagram stays lost (counted).
//!
//! Every message starts with a 16-byte header: the sequence number and the send time (both
//! big-endian `u64`; the time in nanoseconds of `CLOCK_MONOTONIC`, shared by all processes and
//! network namespaces on one kernel, so the receiver measures true one-way latency). The sender
//! ends with a few *end markers* (sequence `u64::MAX`, then the count sent) so the receiver
//! stops without waiting for its idle timeout.
//!
//! ```no_run
//! use qs_runtime::raw::{self, RawReceiver, RawRecvConfig, RawSendConfig};
//! let receiver = RawReceiver::new(&RawRecvConfig::default())?;
//! let rx = std::thread::spawn(move || receiver.run());
//! let sent = raw::send(&RawSendConfig { count: 10_000, ..RawSendConfig::default() })?;
//! let got = rx.join().expect("receiver thread")?;
//! println!("{} sent, {} received", sent.sent, got.unique);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::runtime::group_socket;
use crate::sys::{self, BufferDir, MmsgScratch, RecvMeta};

/// Bytes of the header every raw message starts with (sequence, send time).
pub const HEADER_BYTES: usize = 16;

/// The sequence number that marks an end marker.
pub const END_MARKER_SEQ: u64 = u64::MAX;

/// Sequence numbers at or above this are not tracked for uniqueness (bounds the bitmap at
/// 32 MiB); such messages count as [`RawRecvReport::malformed`].
pub const MAX_TRACKED_SEQ: u64 = 1 << 28;

/// Consecutive `ENOBUFS`/`EAGAIN` retries (50 µs apart) before the sender gives up.
const MAX_RETRIES_IN_A_ROW: u32 = 20_000;

/// What [`send`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSendConfig {
    /// Interface address: bound, and set as `IP_MULTICAST_IF`. Default `127.0.0.1`.
    pub interface: Ipv4Addr,
    /// Destination group and port. Default `239.255.0.1:7499`.
    pub group: SocketAddrV4,
    /// Bytes per message, at least [`HEADER_BYTES`]. Default 1024.
    pub payload_bytes: usize,
    /// Messages to send. Default 100,000.
    pub count: u64,
    /// Pacing in messages per second; `None` sends as fast as the socket takes them.
    pub rate_per_sec: Option<u64>,
    /// Messages per `sendmmsg`. Default 64.
    pub batch: usize,
    /// `IP_MULTICAST_TTL`. Default 1.
    pub ttl: u32,
    /// Requested `SO_SNDBUF`. Default 4 MiB.
    pub send_buffer_bytes: usize,
    /// End markers sent after the data, 1 ms apart. Default 3.
    pub end_markers: usize,
}

impl Default for RawSendConfig {
    fn default() -> RawSendConfig {
        RawSendConfig {
            interface: Ipv4Addr::LOCALHOST,
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), 7499),
            payload_bytes: 1024,
            count: 100_000,
            rate_per_sec: None,
            batch: 64,
            ttl: 1,
            send_buffer_bytes: 4 << 20,
            end_markers: 3,
        }
    }
}

/// What [`send`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSendReport {
    /// Messages the kernel accepted (end markers excluded).
    pub sent: u64,
    /// Payload bytes the kernel accepted.
    pub bytes: u64,
    /// From the first to the last data message.
    pub elapsed: Duration,
    /// `sent / elapsed`.
    pub msgs_per_sec: f64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Retries after `ENOBUFS`/`EAGAIN`.
    pub retries: u64,
    /// The send buffer obtained (requested-value units, see [`crate::SocketBuffers`]).
    pub send_buffer_bytes: usize,
}

/// What a [`RawReceiver`] listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecvConfig {
    /// Interface address the group is joined on. Default `127.0.0.1`.
    pub interface: Ipv4Addr,
    /// Group and port. Default `239.255.0.1:7499`.
    pub group: SocketAddrV4,
    /// Largest message received; bigger ones are truncated and counted. Default 2048.
    pub slot_bytes: usize,
    /// Messages per `recvmmsg`. Default 64.
    pub batch: usize,
    /// Requested `SO_RCVBUF`. Default 8 MiB.
    pub recv_buffer_bytes: usize,
    /// Stop after this long without a message (also before the first one). Default 5 s.
    pub idle_timeout: Duration,
    /// Stop once this many distinct messages arrived, if set. Default `None`.
    pub expected: Option<u64>,
    /// One-way latency samples kept in [`RawRecvReport::latency_nanos`] (the first ones).
    /// Default 1,000,000.
    pub latency_samples_max: usize,
}

impl Default for RawRecvConfig {
    fn default() -> RawRecvConfig {
        RawRecvConfig {
            interface: Ipv4Addr::LOCALHOST,
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), 7499),
            slot_bytes: 2048,
            batch: 64,
            recv_buffer_bytes: 8 << 20,
            idle_timeout: Duration::from_secs(5),
            expected: None,
            latency_samples_max: 1_000_000,
        }
    }
}

/// What a [`RawReceiver`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRecvReport {
    /// Data messages received, duplicates included.
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Messages whose sequence number was already seen.
    pub duplicates: u64,
    /// Messages older than the highest sequence number seen before them.
    pub reordered: u64,
    /// Bytes of data messages received.
    pub bytes: u64,
    /// Messages larger than `slot_bytes`, dropped.
    pub truncated: u64,
    /// Messages shorter than the header or with an untracked sequence number, dropped.
    pub malformed: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the first data message.
    pub first_recv_nanos: Option<u64>,
    /// `CLOCK_MONOTONIC` nanoseconds of the last data message.
    pub last_recv_nanos: Option<u64>,
    /// `unique` over the time from first to last message.
    pub msgs_per_sec: f64,
    /// An end marker arrived.
    pub end_marker: bool,
    /// The count the sender reported in its end marker.
    pub sender_count: Option<u64>,
    /// Stopped by the idle timeout.
    pub timed_out: bool,
    /// One-way latencies in nanoseconds (receive batch time minus send time), in arrival
    /// order, at most `latency_samples_max`.
    pub latency_nanos: Vec<u64>,
    /// The receive buffer obtained (requested-value units, see [`crate::SocketBuffers`]).
    pub recv_buffer_bytes: usize,
    /// `SO_RCVBUFFORCE` was used.
    pub recv_buffer_forced: bool,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn write_header(buf: &mut [u8], seq: u64, stamp: u64) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..16].copy_from_slice(&stamp.to_be_bytes());
}

fn read_u64(buf: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[..8]);
    u64::from_be_bytes(word)
}

/// Sends `cfg.count` messages to the group as fast as allowed (blocking socket, so a full
/// send buffer slows the sender instead of dropping), then the end markers.
pub fn send(cfg: &RawSendConfig) -> io::Result<RawSendReport> {
    if cfg.payload_bytes < HEADER_BYTES {
        return Err(invalid("payload_bytes must be at least 16 (the header)"));
    }
    if cfg.batch == 0 {
        return Err(invalid("batch must be at least 1"));
    }
    if cfg.rate_per_sec == Some(0) {
        return Err(invalid("rate_per_sec must be positive"));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_multicast_if_v4(&cfg.interface)?;
    socket.set_multicast_ttl_v4(cfg.ttl)?;
    socket.set_multicast_loop_v4(true)?;
    let sndbuf = sys::size_buffer(&socket, BufferDir::Send, cfg.send_buffer_bytes)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(cfg.interface, 0)))?;
    let fd = socket.as_raw_fd();

    let mut scratch = MmsgScratch::new(cfg.batch);
    let mut buf = vec![0u8; cfg.batch * cfg.payload_bytes];
    let mut report = RawSendReport {
        send_buffer_bytes: sndbuf.bytes,
        ..RawSendReport::default()
    };
    let start = sys::monotonic_nanos();
    let mut next = 0u64;
    let mut retries_in_a_row = 0u32;
    while next < cfg.count {
        let mut allowed = (cfg.count - next).min(cfg.batch as u64);
        if let Some(rate) = cfg.rate_per_sec {
            let elapsed = sys::monotonic_nanos().saturating_sub(start);
            // Messages due by now (the first at once), as u128 to avoid overflow.
            let due = (u128::from(elapsed) * u128::from(rate) / 1_000_000_000 + 1) as u64;
            allowed = allowed.min(due.saturating_sub(next));
            if allowed == 0 {
                let at = (u128::from(next) * 1_000_000_000 / u128::from(rate)) as u64;
                let wait = at.saturating_sub(elapsed);
                if wait > 50_000 {
                    std::thread::sleep(Duration::from_nanos(wait));
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
        }
        let n = allowed as usize;
        let stamp = sys::monotonic_nanos();
        for (i, msg) in buf.chunks_exact_mut(cfg.payload_bytes).take(n).enumerate() {
            write_header(msg, next + i as u64, stamp);
        }
        let datagrams = buf
            .chunks_exact(cfg.payload_bytes)
            .take(n)
            .map(|msg| (cfg.group, msg));
        match sys::send_batch(fd, datagrams, 0, &mut scratch) {
            Ok(k) => {
                retries_in_a_row = 0;
                report.send_calls += 1;
                report.sent += k as u64;
                report.bytes += (k * cfg.payload_bytes) as u64;
                next += k as u64;
            }
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOBUFS))
                    || matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
            {
                report.retries += 1;
                retries_in_a_row += 1;
                if retries_in_a_row > MAX_RETRIES_IN_A_ROW {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e),
        }
    }
    let end = sys::monotonic_nanos();
    report.elapsed = Duration::from_nanos(end.saturating_sub(start));
    let secs = report.elapsed.as_secs_f64();
    report.msgs_per_sec = if secs > 0.0 {
        report.sent as f64 / secs
    } else {
        0.0
    };

    let mut marker = [0u8; HEADER_BYTES];
    write_header(&mut marker, END_MARKER_SEQ, report.sent);
    for i in 0..cfg.end_markers {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Best effort: the receiver also stops on its idle timeout.
        let _ = sys::send_batch(fd, [(cfg.group, &marker[..])], 0, &mut scratch);
    }
    Ok(report)
}

/// A joined raw receiver. Create it before the sender starts (so nothing is missed), then
/// [`RawReceiver::run`] it, typically on its own thread.
#[derive(Debug)]
pub struct RawReceiver {
    socket: Socket,
    cfg: RawRecvConfig,
    recv_buffer_bytes: usize,
    recv_buffer_forced: bool,
}

impl RawReceiver {
    /// Binds `group` (so only that group's port and address reach the socket), joins it on
    /// `interface` and sizes the receive buffer.
    pub fn new(cfg: &RawRecvConfig) -> io::Result<RawReceiver> {
        if cfg.slot_bytes < HEADER_BYTES || cfg.batch == 0 {
            return Err(invalid(
                "slot_bytes must be at least 16 and batch at least 1",
            ));
        }
        if !cfg.group.ip().is_multicast() {
            return Err(invalid("group must be a multicast address"));
        }
        let socket = group_socket()?;
        socket.set_nonblocking(false)?;
        let rcvbuf = sys::size_buffer(&socket, BufferDir::Recv, cfg.recv_buffer_bytes)?;
        socket.bind(&SockAddr::from(cfg.group))?;
        socket.join_multicast_v4(cfg.group.ip(), &cfg.interface)?;
        // A short blocking wait, so the idle timeout is checked regularly.
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(RawReceiver {
            socket,
            cfg: cfg.clone(),
            recv_buffer_bytes: rcvbuf.bytes,
            recv_buffer_forced: rcvbuf.forced,
        })
    }

    /// Receives until an end marker, `expected` distinct messages, or the idle timeout.
    pub fn run(self) -> io::Result<RawRecvReport> {
        self.run_with(|_, _| {})
    }

    /// Like [`RawReceiver::run`], also calling `on_message(seq, one_way_latency_nanos)` for
    /// every data message.
    pub fn run_with<F: FnMut(u64, u64)>(self, mut on_message: F) -> io::Result<RawRecvReport> {
        let cfg = &self.cfg;
        let slot = cfg.slot_bytes;
        let fd = self.socket.as_raw_fd();
        let mut scratch = MmsgScratch::new(cfg.batch);
        let mut buf = vec![0u8; cfg.batch * slot];
        let mut meta: Vec<RecvMeta> = Vec::with_capacity(cfg.batch);
        let mut seen: Vec<u64> = Vec::new();
        let mut highest: Option<u64> = None;
        let mut report = RawRecvReport {
            recv_buffer_bytes: self.recv_buffer_bytes,
            recv_buffer_forced: self.recv_buffer_forced,
            ..RawRecvReport::default()
        };
        let idle_nanos = u64::try_from(cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut last_activity = sys::monotonic_nanos();
        'outer: loop {
            let k = match sys::recv_batch(
                fd,
                libc::MSG_WAITFORONE,
                &mut buf,
                slot,
                &mut scratch,
                &mut meta,
            ) {
                Ok(k) => k,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    if sys::monotonic_nanos().saturating_sub(last_activity) >= idle_nanos {
                        report.timed_out = true;
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = sys::monotonic_nanos();
            last_activity = now;
            for (i, m) in meta.iter().take(k).enumerate() {
                if m.truncated {
                    report.truncated += 1;
                    continue;
                }
                let msg = &buf[i * slot..i * slot + m.len];
                if msg.len() < HEADER_BYTES {
                    report.malformed += 1;
                    continue;
                }
                let seq = read_u64(msg);
                let stamp = read_u64(&msg[8..]);
                if seq == END_MARKER_SEQ {
                    report.end_marker = true;
                    report.sender_count = Some(stamp);
                    break 'outer;
                }
                if seq >= MAX_TRACKED_SEQ {
                    report.malformed += 1;
                    continue;
                }
                report.received += 1;
                report.bytes += msg.len() as u64;
                report.first_recv_nanos.get_or_insert(now);
                report.last_recv_nanos = Some(now);
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                if seen.len() <= word {
                    seen.resize(word + 1, 0);
                }
                if seen[word] & (1 << bit) != 0 {
                    report.duplicates += 1;
                    continue;
                }
                seen[word] |= 1 << bit;
                report.unique += 1;
                if highest.is_some_and(|h| seq < h) {
                    report.reordered += 1;
                }
                highest = highest.max(Some(seq));
                let latency = now.saturating_sub(stamp);
                if report.latency_nanos.len() < cfg.latency_samples_max {
                    report.latency_nanos.push(latency);
                }
                on_message(seq, latency);
                if cfg.expected.is_some_and(|e| report.unique >= e) {
                    break 'outer;
                }
            }
        }
        if let (Some(first), Some(last)) = (report.first_recv_nanos, report.last_recv_nanos) {
            let secs = last.saturating_sub(first) as f64 / 1e9;
            report.msgs_per_sec = if secs > 0.0 {
                report.unique as f64 / secs
            } else {
                0.0
            };
        }
        Ok(report)
    }
}

/// [`RawReceiver::new`] then [`RawReceiver::run`]. Start it before the sender, or messages
/// sent before the join are missed.
pub fn receive(cfg: &RawRecvConfig) -> io::Result<RawRecvReport> {
    RawReceiver::new(cfg)?.run()
}

/// Largest loss (fraction of the messages sent, at the worst receiver) a paced sweep step may
/// have to count towards the honest limit: 0.1 %.
pub const SWEEP_MAX_LOSS: f64 = 0.001;

/// One paced step of a [`sweep`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SweepStep {
    /// The sender's pacing, messages per second.
    pub target_per_sec: u64,
    /// The rate the sender achieved.
    pub sent_per_sec: f64,
    /// Messages sent.
    pub sent: u64,
    /// Mean per-receiver delivery rate (distinct messages over first-to-last arrival).
    pub recv_per_sec: f64,
    /// The worst receiver's loss: `1 - unique / sent`.
    pub loss_max: f64,
}

impl SweepStep {
    /// The step lost at most [`SWEEP_MAX_LOSS`] at every receiver.
    pub fn clean(&self) -> bool {
        self.loss_max <= SWEEP_MAX_LOSS
    }
}

/// The rates a sweep tries, from the blast rate measured per receiver: 0.8× to 3× of it, plus
/// a floor of 10,000/s so a blast that collapsed completely still gets a sensible sweep.
pub fn sweep_rates(blast_per_receiver: f64) -> Vec<u64> {
    let base = blast_per_receiver.max(10_000.0);
    [0.8, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
        .iter()
        .map(|f| (base * f) as u64)
        .collect()
}

/// The step with the highest per-receiver rate among those with at most
/// [`SWEEP_MAX_LOSS`] loss, if any.
pub fn best_paced(steps: &[SweepStep]) -> Option<SweepStep> {
    steps
        .iter()
        .filter(|s| s.clean())
        .copied()
        .max_by(|a, b| a.recv_per_sec.total_cmp(&b.recv_per_sec))
}

/// Runs paced steps at each of `rates` (in order) from one sender to `receivers` in-process
/// receivers (threads) and returns what each step measured. `send.count` messages per step;
/// `send.rate_per_sec` is replaced by each rate. Stops after the first step that lost more
/// than [`SWEEP_MAX_LOSS`] or whose sender fell below 90 % of its target (higher rates then
/// measure nothing new).
pub fn sweep(
    send_cfg: &RawSendConfig,
    recv_cfg: &RawRecvConfig,
    receivers: usize,
    rates: &[u64],
) -> io::Result<Vec<SweepStep>> {
    let mut steps = Vec::new();
    for &rate in rates {
        let joined = (0..receivers.max(1))
            .map(|_| {
                RawReceiver::new(&RawRecvConfig {
                    expected: None,
                    latency_samples_max: 0,
                    ..recv_cfg.clone()
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let threads: Vec<_> = joined
            .into_iter()
            .map(|r| std::thread::spawn(move || r.run()))
            .collect();
        let sent = send(&RawSendConfig {
            rate_per_sec: Some(rate),
            ..send_cfg.clone()
        })?;
        let mut step = SweepStep {
            target_per_sec: rate,
            sent_per_sec: sent.msgs_per_sec,
            sent: sent.sent,
            ..SweepStep::default()
        };
        let n = threads.len() as f64;
        for t in threads {
            let got = t
                .join()
                .map_err(|_| io::Error::other("raw receiver thread panicked"))??;
            step.recv_per_sec += got.msgs_per_sec / n;
            let loss = 1.0 - got.unique as f64 / sent.sent.max(1) as f64;
            step.loss_max = step.loss_max.max(loss);
        }
        steps.push(step);
        if !step.clean() || step.sent_per_sec < 0.9 * rate as f64 {
            break;
        }
    }
    Ok(steps)
}

/// What [`ping`] measures: a round trip through a [`RawPonger`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPingConfig {
    /// Interface address: the pinger sends out of it and joins `pong_group` on it.
    pub interface: Ipv4Addr,
    /// Group the pings go to (the ponger listens there).
    pub ping_group: SocketAddrV4,
    /// Group the echoes come back on.
    pub pong_group: SocketAddrV4,
    /// Bytes per ping, at least [`HEADER_BYTES`].
    pub payload_bytes: usize,
    /// Timed pings (after the warm-up).
    pub count: u64,
    /// Pings sent and answered before timing starts (caches, ARP, the ponger's first wake).
    pub warmup: u64,
    /// Pause between an echo and the next ping (zero: at once).
    pub interval: Duration,
    /// How long to wait for one echo before counting the ping lost.
    pub reply_timeout: Duration,
    /// How long to keep pinging for the first echo (the ponger may start later).
    pub ready_timeout: Duration,
    /// Wait for echoes by spinning on a non-blocking socket instead of sleeping in `recv`.
    pub spin: bool,
    /// `IP_MULTICAST_TTL`.
    pub ttl: u32,
}

impl Default for RawPingConfig {
    fn default() -> RawPingConfig {
        RawPingConfig {
            interface: Ipv4Addr::LOCALHOST,
            ping_group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 98), 7497),
            pong_group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 97), 7498),
            payload_bytes: 64,
            count: 10_000,
            warmup: 200,
            interval: Duration::ZERO,
            reply_timeout: Duration::from_millis(200),
            ready_timeout: Duration::from_secs(10),
            spin: false,
            ttl: 1,
        }
    }
}

/// What [`ping`] measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawPingReport {
    /// Round-trip times of the answered timed pings, nanoseconds, in order.
    pub rtt_nanos: Vec<u64>,
    /// Timed pings that got no echo within the reply timeout.
    pub lost: u64,
    /// Echoes of earlier (timed-out) pings that arrived late, skipped.
    pub stale: u64,
}

/// Sends to `group` out of `interface`, TTL `ttl`, multicast loop on.
fn sender_socket(interface: Ipv4Addr, ttl: u32) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(ttl)?;
    socket.set_multicast_loop_v4(true)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(interface, 0)))?;
    Ok(socket.into())
}

/// A blocking socket bound to `group` and joined on `interface`, receiving only that group.
fn joined_socket(group: SocketAddrV4, interface: Ipv4Addr) -> io::Result<UdpSocket> {
    if !group.ip().is_multicast() {
        return Err(invalid("group must be a multicast address"));
    }
    let socket = group_socket()?;
    socket.set_nonblocking(false)?;
    socket.bind(&SockAddr::from(group))?;
    socket.join_multicast_v4(group.ip(), &interface)?;
    Ok(socket.into())
}

/// Waits for the echo of `seq` until `deadline` (monotonic nanoseconds); `Ok(None)` on
/// timeout. Older echoes are counted in `stale` and skipped.
fn await_echo(
    socket: &UdpSocket,
    buf: &mut [u8],
    seq: u64,
    deadline: u64,
    spin: bool,
    stale: &mut u64,
) -> io::Result<Option<u64>> {
    loop {
        let now = sys::monotonic_nanos();
        if now >= deadline {
            return Ok(None);
        }
        if !spin {
            socket.set_read_timeout(Some(Duration::from_nanos((deadline - now).max(1_000))))?;
        }
        match socket.recv(buf) {
            Ok(n) if n >= HEADER_BYTES => {
                let at = sys::monotonic_nanos();
                let got = read_u64(buf);
                if got == seq {
                    return Ok(Some(at.saturating_sub(read_u64(&buf[8..]))));
                }
                *stale += 1;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if spin {
                    std::hint::spin_loop();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pings a [`RawPonger`] `warmup + count` times, one at a time, and measures round trips.
/// Errors with `TimedOut` if no echo came within `ready_timeout`. Ends with a few end
/// markers so the ponger stops.
pub fn ping(cfg: &RawPingConfig) -> io::Result<RawPingReport> {
    if cfg.payload_bytes < HEADER_BYTES {
        return Err(invalid("payload_bytes must be at least 16 (the header)"));
    }
    let tx = sender_socket(cfg.interface, cfg.ttl)?;
    let rx = joined_socket(cfg.pong_group, cfg.interface)?;
    rx.set_nonblocking(cfg.spin)?;
    let mut out = vec![0u8; cfg.payload_bytes];
    let mut buf = vec![0u8; cfg.payload_bytes.max(2048)];
    let mut report = RawPingReport::default();

    // Ready: the ponger answers (it may have joined after us).
    let ready_until = sys::monotonic_nanos() + cfg.ready_timeout.as_nanos() as u64;
    let mut seq = 0u64;
    loop {
        write_header(&mut out, seq, sys::monotonic_nanos());
        tx.send_to(&out, cfg.ping_group)?;
        let wait = sys::monotonic_nanos() + 50_000_000;
        let mut ignored = 0;
        if await_echo(&rx, &mut buf, seq, wait, cfg.spin, &mut ignored)?.is_some() {
            break;
        }
        seq += 1;
        if sys::monotonic_nanos() >= ready_until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no echo from a ponger (is `qs bench ping --role pong` running on the same groups?)",
            ));
        }
    }
    let reply_nanos = cfg.reply_timeout.as_nanos() as u64;
    for i in 0..cfg.warmup + cfg.count {
        seq += 1;
        if !cfg.interval.is_zero() {
            let until = sys::monotonic_nanos() + cfg.interval.as_nanos() as u64;
            pause_until(until);
        }
        write_header(&mut out, seq, sys::monotonic_nanos());
        tx.send_to(&out, cfg.ping_group)?;
        let deadline = sys::monotonic_nanos() + reply_nanos;
        let rtt = await_echo(&rx, &mut buf, seq, deadline, cfg.spin, &mut report.stale)?;
        if i < cfg.warmup {
            continue;
        }
        match rtt {
            Some(rtt) => report.rtt_nanos.push(rtt),
            None => report.lost += 1,
        }
    }
    write_header(&mut out, END_MARKER_SEQ, 0);
    for _ in 0..3 {
        let _ = tx.send_to(&out[..HEADER_BYTES], cfg.ping_group);
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(report)
}

/// Waits until `until` (monotonic nanoseconds): sleeps while more than 100 µs remain, then
/// spins, so short pauses are precise despite timer slack.
pub fn pause_until(until: u64) {
    loop {
        let now = sys::monotonic_nanos();
        if now >= until {
            return;
        }
        let left = until - now;
        if left > 100_000 {
            std::thread::sleep(Duration::from_nanos(left - 80_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The echo side of [`ping`]: every datagram on `ping_group` goes back, unchanged, to
/// `pong_group`. Create it (joins at once), then [`RawPonger::run`] it.
#[derive(Debug)]
pub struct RawPonger {
    rx: UdpSocket,
    tx: UdpSocket,
    pong_group: SocketAddrV4,
    idle_timeout: Duration,
    spin: bool,
}

impl RawPonger {
    /// Joins `cfg.ping_group` on `cfg.interface`. `idle_timeout` bounds the wait for pings
    /// (also before the first one).
    pub fn new(cfg: &RawPingConfig, idle_timeout: Duration) -> io::Result<RawPonger> {
        let rx = joined_socket(cfg.ping_group, cfg.interface)?;
        rx.set_nonblocking(cfg.spin)?;
        if !cfg.spin {
            rx.set_read_timeout(Some(Duration::from_millis(20)))?;
        }
        Ok(RawPonger {
            rx,
            tx: sender_socket(cfg.interface, cfg.ttl)?,
            pong_group: cfg.pong_group,
            idle_timeout,
            spin: cfg.spin,
        })
    }

    /// Echoes until an end marker arrives or nothing came for the idle timeout; returns the
    /// datagrams echoed.
    pub fn run(self) -> io::Result<u64> {
        let mut buf = vec![0u8; 65_536];
        let mut echoed = 0;
        let idle = self.idle_timeout.as_nanos() as u64;
        let mut last = sys::monotonic_nanos();
        loop {
            match self.rx.recv(&mut buf) {
                Ok(n) if n >= HEADER_BYTES => {
                    if read_u64(&buf) == END_MARKER_SEQ {
                        return Ok(echoed);
                    }
                    self.tx.send_to(&buf[..n], self.pong_group)?;
                    echoed += 1;
                    last = sys::monotonic_nanos();
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if sys::monotonic_nanos().saturating_sub(last) >= idle {
                        return Ok(echoed);
                    }
                    if self.spin {
                        std::hint::spin_loop();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
