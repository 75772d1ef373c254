//! The steady-state data path allocates nothing per message: two `NodeCore`s wired by hand
//! (no simulator, no sockets), one publishing small messages into the other's region, with a
//! counting global allocator that counts only while a core runs. After a warm-up, publishing,
//! packing, sending, receiving, ordering, caching and delivering 10,000 messages costs a small
//! number of allocations (the ring's rounds and gossip's timers, not the messages), and twice
//! the messages in the same virtual time cost about the same, with lateral error correction
//! off and on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use qs_transport::{Driven, Instant, NodeId, SocketCommand, TopicId};
use quicksilver::core::{CoreConfig, Event, NodeCore};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with allocation counting on.
fn counted<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.store(true, Ordering::Relaxed);
    let out = f();
    COUNTING.store(false, Ordering::Relaxed);
    out
}

struct Node {
    core: NodeCore,
    addr: SocketAddr,
    groups: BTreeSet<SocketAddrV4>,
    delivered: u64,
}

/// Two nodes and the network between them (every datagram arrives, in order).
struct Pair {
    nodes: [Node; 2],
    now: Instant,
    buf: Vec<u8>,
    wire: VecDeque<(usize, SocketAddr, Bytes)>,
}

const TOPIC: TopicId = TopicId(42);

impl Pair {
    /// Two nodes, with lateral error correction in both (and both subscribed) when `lec`.
    fn new(lec: bool) -> Pair {
        let node = |i: u8| {
            let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i + 1), 7000);
            let mut c = CoreConfig::new(NodeId(100 + u64::from(i)), addr);
            c.cluster = qs_transport::ClusterId(5);
            if lec {
                c.lec = Some(quicksilver::core::default_lec());
            }
            Node {
                core: NodeCore::new(c, Instant::ZERO),
                addr: SocketAddr::V4(addr),
                groups: BTreeSet::new(),
                delivered: 0,
            }
        };
        let mut nodes = [node(0), node(1)];
        nodes[1].core.subscribe(Instant::ZERO, TOPIC);
        if lec {
            // The publisher subscribes too, so the two share a region with a peer in it (LEC
            // runs only there).
            nodes[0].core.subscribe(Instant::ZERO, TOPIC);
        }
        Pair {
            nodes,
            now: Instant::ZERO,
            buf: vec![0u8; 2048],
            wire: VecDeque::new(),
        }
    }

    /// Moves everything the nodes want to send until quiet; only core calls are counted (the
    /// harness's own copies are not the core's).
    fn pump(&mut self) {
        loop {
            for i in 0..2 {
                let n = &mut self.nodes[i];
                while let Some(c) = counted(|| n.core.poll_command()) {
                    match c {
                        SocketCommand::JoinGroup(g) => n.groups.insert(g),
                        SocketCommand::LeaveGroup(g) => n.groups.remove(&g),
                    };
                }
                let now = self.now;
                if n.core.poll_timeout().is_some_and(|t| t <= now) {
                    counted(|| n.core.handle_timeout(now));
                }
                while let Some(t) = counted(|| n.core.poll_transmit(now, &mut self.buf)) {
                    // A datagram the way the runtime hands them over: a shared buffer (the
                    // promotion to shared happens here, outside the count).
                    let d = Bytes::copy_from_slice(&self.buf[..t.len]);
                    drop(d.clone());
                    self.wire.push_back((i, t.destination, d));
                }
            }
            if self.wire.is_empty() {
                return;
            }
            while let Some((from, to, d)) = self.wire.pop_front() {
                let other = 1 - from;
                let reaches = match to {
                    SocketAddr::V4(a) if a.ip().is_multicast() => {
                        self.nodes[other].groups.contains(&a)
                    }
                    a => a == self.nodes[other].addr,
                };
                if !reaches {
                    continue;
                }
                let (now, src) = (self.now, self.nodes[from].addr);
                let n = &mut self.nodes[other];
                counted(|| n.core.handle_datagram(now, src, d));
                while let Some(e) = counted(|| n.core.poll_event()) {
                    if let Event::Delivered(_) = e {
                        n.delivered += 1;
                    }
                }
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.pump();
    }

    /// Publishes `count` 64-byte messages (made by `payload`, outside the count) over `span`
    /// of virtual time; returns the allocations the cores made meanwhile.
    fn publish(&mut self, count: u32, span: Duration, payload: &dyn Fn() -> Bytes) -> u64 {
        let before = ALLOCS.load(Ordering::Relaxed);
        let step = span / count;
        for _ in 0..count {
            let n = &mut self.nodes[0];
            let m = payload();
            counted(|| n.core.publish(TOPIC, m)).expect("queue has room");
            self.advance(step);
        }
        self.advance(Duration::from_millis(5));
        ALLOCS.load(Ordering::Relaxed) - before
    }
}

/// Settles the pair, warms it up, and checks that 10,000 and 20,000 messages in the same
/// virtual time cost a bounded number of allocations, about the same. `owned`: every
/// payload is a fresh `Bytes` made from a `Vec` (an application's usual message, whose first
/// clone allocates a shared header) instead of a static one.
fn allocations_stay_per_round(lec: bool, owned: bool) {
    let mut p = Pair::new(lec);
    // Discovery, gossip and the region settle.
    for _ in 0..400 {
        p.advance(Duration::from_millis(10));
    }
    assert_eq!(
        p.nodes[0].core.subscribers_of(TOPIC),
        1,
        "the sender knows the subscriber"
    );
    let fixed = Bytes::from_static(&[7u8; 64]);
    let fresh = || Bytes::copy_from_slice(&[7u8; 64]);
    let same = || fixed.clone();
    let payload: &dyn Fn() -> Bytes = if owned { &fresh } else { &same };
    // Warm-up: queues, windows, caches and buffer pools reach their working size.
    for _ in 0..3 {
        p.publish(10_000, Duration::from_millis(10), payload);
        p.publish(20_000, Duration::from_millis(10), payload);
    }
    let delivered = p.nodes[1].delivered;
    let ten = p.publish(10_000, Duration::from_millis(10), payload);
    assert_eq!(
        p.nodes[1].delivered - delivered,
        10_000,
        "every message arrived"
    );
    let lec_before = p.nodes[1].core.lec().map(|l| l.stats());
    let twenty = p.publish(20_000, Duration::from_millis(10), payload);
    if lec {
        let (was, is) = (lec_before.unwrap(), p.nodes[1].core.lec().unwrap().stats());
        assert!(
            is.packets_in > was.packets_in,
            "the subscriber's LEC took the packets in"
        );
    }
    println!(
        "allocations (LEC {lec}, owned payloads {owned}): {ten} for 10,000 messages, {twenty} for 20,000 in the same time"
    );
    assert!(ten <= 200, "{ten} allocations for 10,000 messages");
    assert!(
        twenty <= ten + ten / 2 + 20,
        "allocations grow with messages: {ten} for 10,000, {twenty} for 20,000"
    );
    for _ in 0..50 {
        p.advance(Duration::from_millis(1));
    }
    let st = p.nodes[0].core.stats();
    assert!(
        p.nodes[0].core.is_idle(),
        "everything acknowledged: {} unacked, {} queued bytes",
        st.unacked_packets,
        p.nodes[0].core.queued_bytes()
    );
}

// One test for both: the allocation counter is global, so two tests in parallel would count
// each other.
#[test]
fn publishing_and_delivering_in_steady_state_allocates_per_round_not_per_message() {
    allocations_stay_per_round(false, false);
    // Lateral error correction copies every packet into its store: into recycled buffers.
    allocations_stay_per_round(true, false);
    // The core moves an application's payload into the send queue instead of cloning it.
    allocations_stay_per_round(false, true);
}
