//! `qs-instructions`: drives two or three sans-IO `NodeCore`s by hand, in one thread with a
//! virtual clock (no sockets, no threads, no wall clock), so that `valgrind --tool=callgrind`
//! counts the instructions of Quicksilver's send path and receive path, repeatably whatever
//! else the machine does. `benches/instructions.sh` runs it and prints instructions per
//! message.
//!
//! Usage: `qs-instructions SIZE COUNT [SUBSCRIBERS]` (defaults 64, 10000, 2).
//!
//! One publisher, SUBSCRIBERS subscribers of one topic. Every call into the publisher's core
//! goes through a `pub_*` function, every call into a subscriber's through a `sub_*` one
//! (never inlined), so callgrind's inclusive cost of `pub_*` is the send path (publishing,
//! building and sealing packets, handling the region's acknowledgements and tokens, timers)
//! and of `sub_*` the receive path (opening and parsing datagrams, the receive window, the
//! ring, delivery events) of all subscribers. The script runs two counts and divides the
//! difference by the extra messages, which cancels discovery, warm-up and setup.
//!
//! Each wrapper passes a role constant through `black_box`, so the linker cannot fold a
//! `pub_*` and its identical `sub_*` twin into one function (it did, and callgrind then
//! charged both roles to one name).
//!
//! Only `NodeCore`'s public API is used: `CoreConfig::new`, `NodeCore::new`, `subscribe`,
//! `publish`, the `Driven` methods, `poll_event`, `stats`. The "network" copies each datagram
//! once into a `Bytes` (as the kernel would), multicast to the cores that joined the group.
//! It prints the delivery check and the cores' counters; it exits 1 if a message is missing.

use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use qs_transport::{Driven, Instant, SocketCommand, Transmit};
use quicksilver::core::{CoreConfig, Event, NodeCore, PublishRefused};
use quicksilver::{NodeId, TopicId};

/// Virtual time per step of the network loop.
const TICK: Duration = Duration::from_micros(20);
/// Messages published per batch before the network runs.
const BATCH: usize = 32;

#[inline(never)]
fn pub_publish(c: &mut NodeCore, topic: TopicId, payload: Bytes) -> Result<(), PublishRefused> {
    std::hint::black_box(1_u8); // keeps the linker from merging the roles' twins
    c.publish(topic, payload)
}
#[inline(never)]
fn pub_transmit(c: &mut NodeCore, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
    std::hint::black_box(1_u8); // keeps the linker from merging the roles' twins
    c.poll_transmit(now, buf)
}
#[inline(never)]
fn pub_datagram(c: &mut NodeCore, now: Instant, from: SocketAddr, d: Bytes) {
    std::hint::black_box(1_u8); // keeps the linker from merging the roles' twins
    c.handle_datagram(now, from, d)
}
#[inline(never)]
fn pub_timeout(c: &mut NodeCore, now: Instant) {
    std::hint::black_box(1_u8); // keeps the linker from merging the roles' twins
    c.handle_timeout(now)
}
#[inline(never)]
fn pub_events(c: &mut NodeCore) -> usize {
    std::hint::black_box(1_u8); // keeps the linker from merging the roles' twins
    let mut n = 0;
    while c.poll_event().is_some() {
        n += 1;
    }
    n
}
#[inline(never)]
fn sub_transmit(c: &mut NodeCore, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
    std::hint::black_box(2_u8); // keeps the linker from merging the roles' twins
    c.poll_transmit(now, buf)
}
#[inline(never)]
fn sub_datagram(c: &mut NodeCore, now: Instant, from: SocketAddr, d: Bytes) {
    std::hint::black_box(2_u8); // keeps the linker from merging the roles' twins
    c.handle_datagram(now, from, d)
}
#[inline(never)]
fn sub_timeout(c: &mut NodeCore, now: Instant) {
    std::hint::black_box(2_u8); // keeps the linker from merging the roles' twins
    c.handle_timeout(now)
}
#[inline(never)]
fn sub_events(c: &mut NodeCore) -> usize {
    std::hint::black_box(2_u8); // keeps the linker from merging the roles' twins
    let mut n = 0;
    while let Some(e) = c.poll_event() {
        if matches!(e, Event::Delivered(_)) {
            n += 1;
        }
    }
    n
}

struct Net {
    cores: Vec<NodeCore>,
    addrs: Vec<SocketAddrV4>,
    joined: Vec<BTreeSet<SocketAddrV4>>,
    delivered: Vec<u64>,
    wire: VecDeque<(usize, SocketAddr, Bytes)>,
    buf: Vec<u8>,
    now: Instant,
}

impl Net {
    fn new(subscribers: usize) -> Net {
        let n = subscribers + 1;
        let addrs: Vec<SocketAddrV4> = (0..n)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1 + i as u8), 9000))
            .collect();
        let now = Instant(1_000_000);
        let cores = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut cfg = CoreConfig::new(NodeId(0x1000 + i as u64), *a);
                cfg.seed = 42 + i as u64;
                NodeCore::new(cfg, now)
            })
            .collect();
        Net {
            cores,
            addrs,
            joined: vec![BTreeSet::new(); n],
            delivered: vec![0; n],
            wire: VecDeque::new(),
            buf: vec![0; 65_536],
            now,
        }
    }

    /// Commands, transmits and due timers of every core, then the datagrams on the wire;
    /// returns whether anything happened.
    fn step(&mut self) -> bool {
        let mut busy = false;
        for i in 0..self.cores.len() {
            while let Some(cmd) = self.cores[i].poll_command() {
                match cmd {
                    SocketCommand::JoinGroup(g) => self.joined[i].insert(g),
                    SocketCommand::LeaveGroup(g) => self.joined[i].remove(&g),
                };
            }
            let now = self.now;
            if self.cores[i].poll_timeout().is_some_and(|t| t <= now) {
                if i == 0 {
                    pub_timeout(&mut self.cores[0], now);
                } else {
                    sub_timeout(&mut self.cores[i], now);
                }
                busy = true;
            }
            loop {
                let t = if i == 0 {
                    pub_transmit(&mut self.cores[0], now, &mut self.buf)
                } else {
                    sub_transmit(&mut self.cores[i], now, &mut self.buf)
                };
                let Some(t) = t else { break };
                let bytes = Bytes::copy_from_slice(&self.buf[..t.len]);
                self.wire.push_back((i, t.destination, bytes));
                busy = true;
            }
        }
        while let Some((from, dest, d)) = self.wire.pop_front() {
            busy = true;
            let SocketAddr::V4(dest4) = dest else {
                continue;
            };
            let src = SocketAddr::V4(self.addrs[from]);
            for j in 0..self.cores.len() {
                let to_j = if dest4.ip().is_multicast() {
                    j != from && self.joined[j].contains(&dest4)
                } else {
                    self.addrs[j] == dest4
                };
                if !to_j {
                    continue;
                }
                if j == 0 {
                    pub_datagram(&mut self.cores[0], self.now, src, d.clone());
                    pub_events(&mut self.cores[0]);
                } else {
                    sub_datagram(&mut self.cores[j], self.now, src, d.clone());
                    self.delivered[j] += sub_events(&mut self.cores[j]) as u64;
                }
            }
        }
        busy
    }

    /// Runs `ticks` steps of virtual time (timers keep firing: gossip and discovery never
    /// fall silent, so "until quiet" would never end).
    fn run_ticks(&mut self, ticks: u32) {
        for _ in 0..ticks {
            self.step();
            self.now = self.now + TICK;
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).map_or(d, |v| v.parse().expect("a number"));
    let size = arg(1, 64) as usize;
    let count = arg(2, 10_000);
    let subscribers = arg(3, 2) as usize;
    let topic = TopicId::from_name("bench");
    let mut net = Net::new(subscribers);
    for i in 1..=subscribers {
        let now = net.now;
        net.cores[i].subscribe(now, topic);
    }
    // Discovery and the region forming: virtual seconds, until the publisher knows them all.
    let mut waited = 0;
    while net.cores[0].subscribers_of(topic) < subscribers {
        net.run_ticks(50);
        waited += 1;
        assert!(waited < 10_000, "subscribers never appeared");
    }
    // A virtual second for regions, rings and gossip to settle.
    net.run_ticks(50_000);
    let payload = vec![0x5au8; size];
    let mut published = 0u64;
    while published < count {
        let n = (count - published).min(BATCH as u64);
        for _ in 0..n {
            let mut p = payload.clone();
            p[..8].copy_from_slice(&published.to_be_bytes());
            while pub_publish(&mut net.cores[0], topic, Bytes::from(p.clone())).is_err() {
                // Queue full: let the network and the ring drain it.
                net.step();
                net.now = net.now + TICK;
            }
            published += 1;
        }
        net.step();
        net.now = net.now + TICK;
    }
    // Until every subscriber has everything (bounded: 20 virtual seconds).
    for _ in 0..1_000 {
        if net.delivered[1..].iter().all(|d| *d >= count) {
            break;
        }
        net.run_ticks(1_000);
    }
    let s = net.cores[0].stats();
    println!(
        "size {size} count {count} subscribers {subscribers}: delivered {:?}, data packets sent {}, \
         messages per packet {:.2}",
        &net.delivered[1..],
        s.data_packets_sent,
        s.messages_sent as f64 / s.data_packets_sent.max(1) as f64
    );
    if net.delivered[1..].iter().all(|d| *d == count) {
        ExitCode::SUCCESS
    } else {
        eprintln!("qs-instructions: not every message was delivered");
        ExitCode::from(1)
    }
}
