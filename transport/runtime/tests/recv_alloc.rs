//! Receiving allocates nothing in steady state: a counting global allocator (counting only
//! this test's thread, so the harness's other threads do not blur the figure) watches two
//! runtimes on loopback exchange 10,000 datagrams after a warm-up. With a fresh
//! `BytesMut::zeroed` per receive batch this counted at least one allocation per 48
//! datagrams; with reclaimed arenas it is a small constant.
//!
//! Real sockets on 127.0.0.1, a group in 239.255.0.0/16, TTL 1; bounded waits, no timing
//! assertion.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_runtime::{Runtime, RuntimeConfig};
use qs_transport::{Driven, Instant, SocketCommand, TrafficClass, Transmit};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are
// thread-locals with const initialisation, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through us, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: `ptr` came from `System` through us, with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counts allocations made on this thread while `f` runs.
fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

const LEN: usize = 256;

/// Sends datagrams whose bytes all equal their number mod 251; counts and (up to
/// `keep_max`) keeps what it receives, allocating nothing itself once `keep` has room.
struct Core {
    group: SocketAddrV4,
    to_send: u64,
    sent: u64,
    received: u64,
    join: Option<SocketCommand>,
    keep: Vec<Bytes>,
    keep_max: usize,
}

impl Core {
    fn new(group: SocketAddrV4, join: bool) -> Core {
        Core {
            group,
            to_send: 0,
            sent: 0,
            received: 0,
            join: join.then_some(SocketCommand::JoinGroup(group)),
            keep: Vec::with_capacity(4_096),
            keep_max: 0,
        }
    }
}

impl Driven for Core {
    fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, datagram: Bytes) {
        self.received += 1;
        if self.keep.len() < self.keep_max {
            self.keep.push(datagram);
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.to_send == 0 {
            return None;
        }
        self.to_send -= 1;
        buf[..LEN].fill((self.sent % 251) as u8);
        self.sent += 1;
        Some(Transmit {
            destination: SocketAddr::V4(self.group),
            class: TrafficClass::Data,
            len: LEN,
        })
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_command(&mut self) -> Option<SocketCommand> {
        self.join.take()
    }
}

struct Pair {
    tx: Runtime,
    txc: Core,
    rx: Runtime,
    rxc: Core,
}

impl Pair {
    fn new(index: u16) -> Pair {
        let base = 27_000 + (std::process::id() % 400) as u16 * 8 + index * 2;
        let group = SocketAddrV4::new(
            Ipv4Addr::new(
                239,
                255,
                200 + (std::process::id() % 50) as u8,
                index as u8 + 1,
            ),
            base + 1,
        );
        let cfg = RuntimeConfig {
            control_port: base,
            data_port: base + 1,
            ..RuntimeConfig::default()
        };
        let mut p = Pair {
            rx: Runtime::new(cfg.clone()).expect("receiver runtime"),
            tx: Runtime::new(cfg).expect("sender runtime"),
            txc: Core::new(group, false),
            rxc: Core::new(group, true),
        };
        p.rx.turn(&mut p.rxc, Some(Duration::ZERO)).expect("join");
        p
    }

    /// Turns both until the receiver has `want` datagrams in all, sending in bursts of 256
    /// once the previous burst arrived (the receive buffer always holds a burst: no loss).
    fn exchange(&mut self, want: u64) {
        let start = std::time::Instant::now();
        let step = Some(Duration::from_millis(2));
        while self.rxc.received < want {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "only {} of {want} datagrams arrived",
                self.rxc.received
            );
            if self.txc.to_send == 0 && self.rxc.received >= self.txc.sent {
                self.txc.to_send = (want - self.rxc.received).min(256);
            }
            self.tx.turn(&mut self.txc, step).expect("sender turn");
            self.rx.turn(&mut self.rxc, step).expect("receiver turn");
        }
    }
}

#[test]
fn receiving_ten_thousand_datagrams_in_steady_state_allocates_a_small_constant() {
    let mut p = Pair::new(0);
    // Warm-up: the first arenas, the kernel's and the sender's buffers.
    p.exchange(2_000);
    let before = p.rx.stats().clone();
    let n = allocations_during(|| p.exchange(12_000));
    let after = p.rx.stats();
    eprintln!("{n} allocations on the test thread for 10,000 datagrams sent and received");
    assert_eq!(after.datagrams_received - before.datagrams_received, 10_000);
    assert!(n <= 8, "{n} allocations for 10,000 datagrams");
    assert!(after.recv_arena_reuses > before.recv_arena_reuses);
    assert_eq!(after.recv_arena_allocations, before.recv_arena_allocations);
}

#[test]
fn a_core_that_keeps_datagrams_gets_fresh_arenas_and_its_bytes_stay_intact() {
    let mut p = Pair::new(1);
    // Keep every datagram at first: none of those arenas may be handed out again.
    p.rxc.keep_max = 2_000;
    p.exchange(2_000);
    let pinned = p.rx.stats().recv_arena_allocations;
    assert!(pinned > 10, "{:?}", p.rx.stats());
    // Then let go of nothing kept, and receive more: reuse happens only among the new ones.
    p.exchange(8_000);
    assert_eq!(p.rxc.keep.len(), 2_000);
    for (i, d) in p.rxc.keep.iter().enumerate() {
        let want = (i as u64 % 251) as u8;
        assert!(
            d.len() == LEN && d.iter().all(|b| *b == want),
            "datagram {i} changed"
        );
    }
    assert!(p.rx.stats().recv_arena_reuses > 0);
}
