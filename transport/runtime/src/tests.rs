//! Real-socket tests on loopback (127.0.0.1 only, groups in 239.255.0.0/16, TTL 1).
//!
//! Ports and groups derive from the process id and a per-test index, so parallel tests (and
//! other crates' tests on 7400-7500) never share a port and group. Every wait is bounded by a
//! generous deadline; no assertion depends on timing.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use qs_transport::{Driven, Instant, SocketCommand, TrafficClass, Transmit};

use crate::raw::{self, RawReceiver, RawRecvConfig, RawSendConfig};
use crate::{Runtime, RuntimeConfig};

const DEADLINE: Duration = Duration::from_secs(30);
const STEP: Option<Duration> = Some(Duration::from_millis(5));

/// `(control_port, data_port)` for test `index` (< 16): 10000..26000, below the ephemeral
/// range, far from 7400-7500.
fn ports(index: u16) -> (u16, u16) {
    let base = 10_000 + (std::process::id() % 500) as u16 * 32 + index * 2;
    (base, base + 1)
}

/// A group in 239.255.0.0/16 unique to this process and `index`.
fn group(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(239, 255, 1 + (std::process::id() % 250) as u8, index)
}

#[derive(Default)]
struct TestCore {
    outbox: VecDeque<(SocketAddr, TrafficClass, Vec<u8>)>,
    commands: VecDeque<SocketCommand>,
    received: Vec<(SocketAddr, Bytes)>,
    deadline: Option<Instant>,
    timeouts: Vec<Instant>,
}

impl TestCore {
    fn send(&mut self, to: SocketAddrV4, class: TrafficClass, payload: &[u8]) {
        self.outbox
            .push_back((SocketAddr::V4(to), class, payload.to_vec()));
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.received.iter().map(|(_, b)| b.to_vec()).collect()
    }
}

impl Driven for TestCore {
    fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, datagram: Bytes) {
        self.received.push((from, datagram));
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.timeouts.push(now);
        self.deadline = None;
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (destination, class, payload) = self.outbox.pop_front()?;
        let len = payload.len().min(buf.len());
        buf[..len].copy_from_slice(&payload[..len]);
        Some(Transmit {
            destination,
            class,
            len,
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn poll_command(&mut self) -> Option<SocketCommand> {
        self.commands.pop_front()
    }
}

struct Node {
    rt: Runtime,
    core: TestCore,
}

impl Node {
    fn new(index: u16) -> Node {
        let (control_port, data_port) = ports(index);
        Node::with(RuntimeConfig {
            control_port,
            data_port,
            ..RuntimeConfig::default()
        })
    }

    fn with(cfg: RuntimeConfig) -> Node {
        Node {
            rt: Runtime::new(cfg).expect("runtime on loopback"),
            core: TestCore::default(),
        }
    }

    fn turn(&mut self) -> crate::Turn {
        self.rt.turn(&mut self.core, STEP).expect("turn")
    }

    fn join(&mut self, group: SocketAddrV4) {
        self.core
            .commands
            .push_back(SocketCommand::JoinGroup(group));
        self.turn();
        assert!(
            self.rt.joined_groups().any(|g| g == group),
            "joined {group}"
        );
    }
}

/// Turns every node until `done` holds; panics after [`DEADLINE`].
fn drive(nodes: &mut [&mut Node], done: impl Fn(&[&mut Node]) -> bool) {
    let start = std::time::Instant::now();
    while !done(nodes) {
        assert!(
            start.elapsed() < DEADLINE,
            "condition not reached in {DEADLINE:?}"
        );
        for node in nodes.iter_mut() {
            node.turn();
        }
    }
}

/// A few more turns, long enough for any stray datagram in flight to land.
fn settle(nodes: &mut [&mut Node]) {
    for _ in 0..20 {
        for node in nodes.iter_mut() {
            node.turn();
        }
    }
}

fn pending_bytes(socket: &mio::net::UdpSocket) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into the pointer we pass, which points at `n`.
    let rc = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::FIONREAD,
            &mut n as *mut libc::c_int,
        )
    };
    assert_eq!(rc, 0, "FIONREAD");
    n
}

#[test]
fn runtime_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Runtime>();
}

#[test]
fn equal_control_and_data_ports_are_rejected() {
    let err = Runtime::new(RuntimeConfig {
        control_port: 17_400,
        data_port: 17_400,
        ..RuntimeConfig::default()
    })
    .expect_err("same port twice");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("must differ"));
}

#[test]
fn buffers_report_what_the_kernel_granted() {
    let node = Node::with(RuntimeConfig {
        control_port: ports(14).0,
        data_port: ports(14).1,
        recv_buffer_bytes: 1 << 20,
        send_buffer_bytes: 1 << 20,
        ..RuntimeConfig::default()
    });
    let b = node.rt.socket_buffers();
    // Either granted in full (possibly by force, as root) or reported as capped.
    assert!(
        b.capped || (b.recv_bytes >= 1 << 20 && b.send_bytes >= 1 << 20),
        "{b:?}"
    );
    assert!(b.recv_bytes > 0 && b.send_bytes > 0);
}

#[test]
fn multicast_to_a_joined_group_and_a_unicast_reply_arrive_exactly_once() {
    const N: usize = 100;
    let mut rx = Node::new(0);
    let mut tx = Node::new(0);
    let g = SocketAddrV4::new(group(1), ports(0).1);
    rx.join(g);
    let expected: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("message {i:03}").into_bytes())
        .collect();
    for payload in &expected {
        tx.core.send(g, TrafficClass::Data, payload);
    }
    drive(&mut [&mut tx, &mut rx], |n| n[1].core.received.len() >= N);

    let mut got = rx.core.payloads();
    got.sort();
    assert_eq!(got, expected);
    let tx_addr = SocketAddr::V4(tx.rt.local_addr());
    assert!(rx.core.received.iter().all(|(from, _)| *from == tx_addr));

    // The reply goes to the source address, the sender's unicast socket.
    let (reply_to, _) = rx.core.received[0].clone();
    let SocketAddr::V4(reply_to) = reply_to else {
        unreachable!("IPv4 only")
    };
    rx.core.send(reply_to, TrafficClass::Control, b"ack");
    drive(&mut [&mut tx, &mut rx], |n| !n[0].core.received.is_empty());
    settle(&mut [&mut tx, &mut rx]);

    assert_eq!(rx.core.received.len(), N, "no duplicates");
    // The sender did not join the group: its own multicast never reaches it.
    assert_eq!(tx.core.payloads(), vec![b"ack".to_vec()]);
    assert_eq!(tx.core.received[0].0, SocketAddr::V4(rx.rt.local_addr()));
    assert_eq!(tx.rt.stats().datagrams_sent, N as u64);
    assert_eq!(rx.rt.stats().datagrams_received, N as u64);
    assert_eq!(rx.rt.stats().datagrams_sent, 1);
    assert_eq!(tx.rt.stats().datagrams_received, 1);
    assert_eq!(rx.rt.stats().truncated_drops + tx.rt.stats().send_errors, 0);
}

#[test]
fn a_socket_that_did_not_join_a_group_does_not_receive_it() {
    const M: usize = 20;
    let mut joined = Node::new(1);
    let mut other = Node::new(1);
    let mut tx = Node::new(1);
    let data_port = ports(1).1;
    let g1 = SocketAddrV4::new(group(2), data_port);
    let g2 = SocketAddrV4::new(group(3), data_port);
    joined.join(g2);
    other.join(g1);
    for i in 0..M {
        tx.core
            .send(g2, TrafficClass::Data, format!("g2 {i}").as_bytes());
    }
    // Sent last: when it has arrived, the G2 traffic has had every chance to arrive too.
    tx.core.send(g1, TrafficClass::Data, b"g1");
    drive(&mut [&mut tx, &mut joined, &mut other], |n| {
        n[1].core.received.len() >= M && !n[2].core.received.is_empty()
    });
    settle(&mut [&mut tx, &mut joined, &mut other]);

    assert_eq!(joined.core.received.len(), M);
    assert!(joined.core.payloads().iter().all(|p| p.starts_with(b"g2 ")));
    assert_eq!(other.core.payloads(), vec![b"g1".to_vec()]);
    assert!(tx.core.received.is_empty());
}

#[test]
fn control_datagrams_reach_the_core_before_data_ones_in_the_same_turn() {
    let mut rx = Node::new(2);
    let mut tx = Node::new(2);
    let (control_port, data_port) = ports(2);
    let control = SocketAddrV4::new(group(4), control_port);
    let data = SocketAddrV4::new(group(4), data_port);
    rx.join(control);
    rx.join(data);
    for round in 0..5u8 {
        // Data first on the wire, control second.
        tx.core.send(data, TrafficClass::Data, &[b'D', round]);
        tx.core.send(control, TrafficClass::Data, &[b'C', round]);
        let start = std::time::Instant::now();
        while tx.rt.queued_transmits() > 0 || !tx.core.outbox.is_empty() {
            assert!(start.elapsed() < DEADLINE);
            tx.turn();
        }
        // Both datagrams are queued at the receiver before it looks.
        while pending_bytes(&rx.rt.sockets[crate::runtime::CONTROL]) == 0
            || pending_bytes(&rx.rt.sockets[crate::runtime::DATA]) == 0
        {
            assert!(start.elapsed() < DEADLINE, "datagrams did not arrive");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the readiness callbacks that follow the enqueue run too.
        std::thread::sleep(Duration::from_millis(20));
        let before = rx.core.received.len();
        let turn = rx.turn();
        assert_eq!(turn.received, 2);
        assert_eq!(
            rx.core.payloads()[before..],
            [vec![b'C', round], vec![b'D', round]]
        );
    }
}

#[test]
fn a_datagram_larger_than_the_slot_is_counted_and_not_delivered() {
    let (control_port, data_port) = ports(3);
    let mut rx = Node::with(RuntimeConfig {
        control_port,
        data_port,
        recv_slot_bytes: 512,
        ..RuntimeConfig::default()
    });
    let mut tx = Node::new(3);
    let to = rx.rt.local_addr();
    tx.core.send(to, TrafficClass::Data, &[1; 512]);
    tx.core.send(to, TrafficClass::Data, &[2; 513]);
    tx.core.send(to, TrafficClass::Data, b"small");
    drive(&mut [&mut tx, &mut rx], |n| {
        n[1].core.received.len() >= 2 && n[1].rt.stats().truncated_drops >= 1
    });
    settle(&mut [&mut tx, &mut rx]);
    assert_eq!(rx.core.payloads(), vec![vec![1; 512], b"small".to_vec()]);
    assert_eq!(rx.rt.stats().truncated_drops, 1);
    assert_eq!(rx.rt.stats().datagrams_received, 2);
}

#[test]
fn transmits_leave_in_class_order_control_repair_data() {
    let mut rx = Node::new(4);
    let mut tx = Node::new(4);
    let to = rx.rt.local_addr();
    // The core hands them out lowest priority first; the runtime's queues reorder the batch.
    tx.core.send(to, TrafficClass::Data, b"data");
    tx.core.send(to, TrafficClass::Repair, b"repair");
    tx.core.send(to, TrafficClass::Control, b"control");
    drive(&mut [&mut tx, &mut rx], |n| n[1].core.received.len() >= 3);
    assert_eq!(
        rx.core.payloads(),
        vec![b"control".to_vec(), b"repair".to_vec(), b"data".to_vec()]
    );
}

#[test]
fn send_errors_and_invalid_transmits_are_counted_not_fatal() {
    let mut rx = Node::new(5);
    let mut tx = Node::new(5);
    // Broadcast without SO_BROADCAST: the kernel refuses it (EACCES).
    tx.core.send(
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 9),
        TrafficClass::Data,
        b"refused",
    );
    tx.core.outbox.push_back((
        SocketAddr::V6(SocketAddrV6::new(std::net::Ipv6Addr::LOCALHOST, 9, 0, 0)),
        TrafficClass::Data,
        b"ipv6".to_vec(),
    ));
    tx.core
        .send(rx.rt.local_addr(), TrafficClass::Data, b"fine");
    drive(&mut [&mut tx, &mut rx], |n| !n[1].core.received.is_empty());
    assert_eq!(rx.core.payloads(), vec![b"fine".to_vec()]);
    assert_eq!(tx.rt.stats().send_errors, 1);
    assert_eq!(tx.rt.stats().invalid_transmits, 1);
    assert_eq!(tx.rt.stats().datagrams_sent, 1);
}

#[test]
fn joins_on_foreign_ports_fail_softly_and_duplicates_are_harmless() {
    let mut node = Node::new(6);
    let (control_port, data_port) = ports(6);
    let g = SocketAddrV4::new(group(5), data_port);
    let c = SocketAddrV4::new(group(5), control_port);
    let commands = [
        SocketCommand::JoinGroup(SocketAddrV4::new(group(5), 9)),
        SocketCommand::JoinGroup(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), data_port)),
        SocketCommand::JoinGroup(g),
        SocketCommand::JoinGroup(g),
        SocketCommand::JoinGroup(c),
        SocketCommand::LeaveGroup(g),
        SocketCommand::LeaveGroup(g),
        SocketCommand::LeaveGroup(SocketAddrV4::new(group(6), data_port)),
    ];
    node.core.commands.extend(commands);
    node.turn();
    let stats = node.rt.stats();
    assert_eq!(stats.join_errors, 2);
    assert_eq!(stats.joins, 2);
    assert_eq!(stats.leaves, 1);
    assert_eq!(node.rt.joined_groups().collect::<Vec<_>>(), vec![c]);
}

#[test]
fn the_waker_interrupts_a_long_wait() {
    let mut node = Node::new(7);
    node.turn(); // the first turn looks at every socket without waiting
    let waker = node.rt.waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake().expect("wake");
    });
    let start = std::time::Instant::now();
    let mut woken = false;
    while !woken {
        assert!(start.elapsed() < DEADLINE);
        woken = node
            .rt
            .turn(&mut node.core, Some(Duration::from_secs(60)))
            .expect("turn")
            .woken;
    }
    t.join().expect("waker thread");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(node.rt.stats().wakeups, 1);
}

#[test]
fn a_due_timer_is_handled_with_a_now_at_or_after_its_deadline() {
    let mut node = Node::new(8);
    let deadline = node.rt.now() + Duration::from_millis(20);
    node.core.deadline = Some(deadline);
    let start = std::time::Instant::now();
    while node.core.timeouts.is_empty() {
        assert!(start.elapsed() < DEADLINE);
        // No max_wait: only the core's deadline ends the wait.
        node.rt.turn(&mut node.core, None).expect("turn");
    }
    assert_eq!(node.core.timeouts.len(), 1);
    assert!(node.core.timeouts[0] >= deadline);
    assert_eq!(node.rt.stats().timeouts_handled, 1);
    assert!(node.rt.stats().iterations >= 1);
}

#[test]
fn a_small_receive_budget_leaves_the_rest_for_the_next_turn() {
    const N: usize = 40;
    let (control_port, data_port) = ports(9);
    let mut rx = Node::with(RuntimeConfig {
        control_port,
        data_port,
        batch: 4,
        recv_budget_batches: 1,
        ..RuntimeConfig::default()
    });
    let mut tx = Node::new(9);
    let to = rx.rt.local_addr();
    for i in 0..N {
        tx.core
            .send(to, TrafficClass::Data, format!("{i:02}").as_bytes());
    }
    let start = std::time::Instant::now();
    while tx.rt.stats().datagrams_sent < N as u64 {
        assert!(start.elapsed() < DEADLINE);
        tx.turn();
    }
    while pending_bytes(&rx.rt.sockets[crate::runtime::UNICAST]) == 0 {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(1));
    }
    drive(&mut [&mut rx], |n| n[0].core.received.len() >= N);
    let mut got = rx.core.payloads();
    got.sort();
    let expected: Vec<Vec<u8>> = (0..N).map(|i| format!("{i:02}").into_bytes()).collect();
    assert_eq!(got, expected);
    assert!(rx.rt.stats().recv_budget_exhausted >= 1);
}

#[test]
fn raw_send_and_receive_deliver_every_message_over_loopback() {
    const COUNT: u64 = 2_000;
    let group = SocketAddrV4::new(group(7), ports(10).1);
    let receiver = RawReceiver::new(&RawRecvConfig {
        group,
        idle_timeout: Duration::from_secs(20),
        ..RawRecvConfig::default()
    })
    .expect("raw receiver");
    let rx = std::thread::spawn(move || receiver.run());
    let sent = raw::send(&RawSendConfig {
        group,
        payload_bytes: 256,
        count: COUNT,
        // Paced (0.1 s), and the whole run fits in the receive buffer anyway.
        rate_per_sec: Some(20_000),
        batch: 32,
        ..RawSendConfig::default()
    })
    .expect("raw send");
    let got = rx.join().expect("receiver thread").expect("raw receive");
    assert_eq!(sent.sent, COUNT);
    assert!(got.end_marker, "{got:?}");
    assert_eq!(got.sender_count, Some(COUNT));
    assert_eq!(got.unique, COUNT);
    assert_eq!(got.received, COUNT);
    assert_eq!(got.bytes, COUNT * 256);
    assert_eq!(got.truncated + got.malformed + got.duplicates, 0);
    assert_eq!(got.latency_nanos.len(), COUNT as usize);
    assert!(got.first_recv_nanos <= got.last_recv_nanos);
}

#[test]
fn raw_receiver_stops_on_its_idle_timeout() {
    let group = SocketAddrV4::new(group(8), ports(11).1);
    let got = raw::receive(&RawRecvConfig {
        group,
        idle_timeout: Duration::from_millis(100),
        ..RawRecvConfig::default()
    })
    .expect("raw receive");
    assert!(got.timed_out);
    assert_eq!(got.received, 0);
    assert!(!got.end_marker);
}

#[test]
fn a_sub_millisecond_deadline_arms_the_precise_timer_and_a_longer_one_does_not() {
    let mut node = Node::new(12);
    node.turn(); // the first turn looks at every socket without waiting
    let before = node.rt.stats().precise_waits;
    // 300 µs: epoll_wait alone would round it up to a whole millisecond.
    let deadline = node.rt.now() + Duration::from_micros(300);
    node.core.deadline = Some(deadline);
    let start = std::time::Instant::now();
    while node.core.timeouts.is_empty() {
        assert!(start.elapsed() < DEADLINE);
        node.rt.turn(&mut node.core, None).expect("turn");
    }
    assert!(node.core.timeouts[0] >= deadline);
    assert!(node.rt.stats().precise_waits > before);

    // 50 ms: the millisecond timeout is precise enough, no timer system call.
    let before = node.rt.stats().precise_waits;
    node.core.deadline = Some(node.rt.now() + Duration::from_millis(50));
    while node.core.timeouts.len() < 2 {
        assert!(start.elapsed() < DEADLINE);
        node.rt.turn(&mut node.core, None).expect("turn");
    }
    assert_eq!(node.rt.stats().precise_waits, before);
}

#[test]
fn a_busy_polling_runtime_spins_instead_of_sleeping_and_still_delivers() {
    let (control_port, data_port) = ports(13);
    let cfg = RuntimeConfig {
        control_port,
        data_port,
        busy_poll: Some(Duration::MAX),
        ..RuntimeConfig::default()
    };
    let mut rx = Node::with(cfg.clone());
    let mut tx = Node::with(RuntimeConfig {
        busy_poll: None,
        ..cfg
    });
    let g = SocketAddrV4::new(group(13), data_port);
    rx.join(g);
    // Nothing to receive yet: a 5 ms wait is spent spinning, not sleeping.
    rx.turn();
    assert!(rx.rt.stats().spins > 0, "{:?}", rx.rt.stats());
    assert_eq!(tx.rt.stats().spins, 0);
    tx.core.send(g, TrafficClass::Data, b"spun");
    drive(&mut [&mut tx, &mut rx], |n| !n[1].core.received.is_empty());
    assert_eq!(rx.core.payloads(), vec![b"spun".to_vec()]);
    assert_eq!(
        rx.rt.stats().spin_blocks,
        0,
        "a spinner without a budget never blocks"
    );
}

#[test]
fn a_spin_budget_shorter_than_the_wait_blocks_for_the_rest_and_one_as_long_never_blocks() {
    // No group joined: nothing can arrive, every wait runs to its end.
    let (control_port, data_port) = ports(13);
    let with_budget = |spin| {
        Node::with(RuntimeConfig {
            control_port,
            data_port,
            busy_poll: Some(spin),
            ..RuntimeConfig::default()
        })
    };
    // The first turn reads the sockets (readable until drained) without waiting.
    let waited = |node: &mut Node, wait: Duration| {
        node.rt
            .turn(&mut node.core, Some(Duration::ZERO))
            .expect("turn");
        let before = node.rt.stats().clone();
        node.rt.turn(&mut node.core, Some(wait)).expect("turn");
        let s = node.rt.stats();
        (
            s.spin_blocks - before.spin_blocks,
            s.spin_hits - before.spin_hits,
            s.spin_nanos - before.spin_nanos,
            s.poll_wait_nanos - before.poll_wait_nanos,
        )
    };

    // 1 ms of spinning, then a blocking wait for the other 199 ms.
    let mut short = with_budget(Duration::from_millis(1));
    let (blocks, hits, spun, waited_nanos) = waited(&mut short, Duration::from_millis(200));
    assert_eq!((blocks, hits), (1, 0));
    assert!(spun >= 1_000_000, "spun {spun} ns");
    assert!(
        waited_nanos >= 200_000_000,
        "the whole wait was kept: {waited_nanos} ns"
    );

    // A budget as long as the wait spins all of it.
    let mut long = with_budget(Duration::from_millis(20));
    let (blocks, hits, spun, _) = waited(&mut long, Duration::from_millis(20));
    assert_eq!((blocks, hits), (0, 0));
    assert!(spun >= 20_000_000, "spun {spun} ns");
}

#[test]
fn raw_ping_gets_every_echo_from_a_ponger_over_loopback() {
    let (ping_port, pong_port) = ports(14);
    let cfg = raw::RawPingConfig {
        ping_group: SocketAddrV4::new(group(14), ping_port),
        pong_group: SocketAddrV4::new(group(15), pong_port),
        count: 200,
        warmup: 10,
        reply_timeout: Duration::from_secs(5),
        ..raw::RawPingConfig::default()
    };
    let ponger = raw::RawPonger::new(&cfg, Duration::from_secs(20)).expect("ponger");
    let t = std::thread::spawn(move || ponger.run());
    let report = raw::ping(&cfg).expect("ping");
    let echoed = t.join().expect("ponger thread").expect("ponger");
    assert_eq!(report.rtt_nanos.len(), 200);
    assert_eq!(report.lost, 0);
    // The ready probe, the warm-up and the timed pings, all echoed once.
    assert!(echoed >= 210, "echoed {echoed}");
    assert!(report.rtt_nanos.iter().all(|r| *r > 0));
}

#[test]
fn the_honest_limit_is_the_fastest_sweep_step_within_a_tenth_of_a_percent_loss() {
    let step = |target: u64, recv: f64, loss: f64| raw::SweepStep {
        target_per_sec: target,
        sent_per_sec: target as f64,
        sent: 50_000,
        recv_per_sec: recv,
        loss_max: loss,
    };
    // Exactly 0.1 % counts; just above it does not, however fast.
    let steps = [
        step(50_000, 49_900.0, 0.0),
        step(60_000, 59_800.0, raw::SWEEP_MAX_LOSS),
        step(75_000, 74_000.0, 0.0011),
    ];
    assert!(steps[1].clean() && !steps[2].clean());
    assert_eq!(raw::best_paced(&steps), Some(steps[1]));
    assert_eq!(raw::best_paced(&steps[2..]), None);
    assert_eq!(raw::best_paced(&[]), None);
}

#[test]
fn sweep_rates_rise_from_below_the_blast_rate_and_have_a_floor() {
    let rates = raw::sweep_rates(40_000.0);
    assert_eq!(rates[0], 32_000);
    assert!(rates.contains(&40_000));
    assert!(rates.windows(2).all(|w| w[0] < w[1]));
    assert!(*rates.last().expect("rates") >= 100_000);
    // A collapsed blast still sweeps from 8,000/s up.
    assert_eq!(raw::sweep_rates(0.0)[0], 8_000);
}

#[test]
fn a_short_paced_sweep_over_loopback_finds_a_clean_step() {
    let group = SocketAddrV4::new(group(9), ports(15).0);
    let steps = raw::sweep(
        &RawSendConfig {
            group,
            payload_bytes: 256,
            count: 2_000,
            ..RawSendConfig::default()
        },
        &RawRecvConfig {
            group,
            idle_timeout: Duration::from_secs(10),
            ..RawRecvConfig::default()
        },
        2,
        // 2,000 messages at 20,000/s fit any receive buffer: nothing can be lost.
        &[20_000],
    )
    .expect("sweep");
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].sent, 2_000);
    assert!(steps[0].clean(), "{steps:?}");
    assert_eq!(raw::best_paced(&steps), Some(steps[0]));
}

#[test]
fn gso_runs_reach_a_gro_data_socket_as_the_same_datagrams_and_small_budgets_still_drain() {
    const N: usize = 200;
    let (control_port, data_port) = ports(12);
    let mut rx = Node::with(RuntimeConfig {
        control_port,
        data_port,
        batch: 4,
        recv_budget_batches: 1,
        gro: true,
        ..RuntimeConfig::default()
    });
    let mut tx = Node::with(RuntimeConfig {
        control_port,
        data_port,
        gso: true,
        ..RuntimeConfig::default()
    });
    let g = SocketAddrV4::new(group(40), data_port);
    rx.join(g);
    // Equal-sized datagrams, each distinct: GSO runs on the way out, GRO buffers on the way in
    // (loopback passes the runs unsegmented), split back into exactly these datagrams.
    let expected: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("data {i:05}").into_bytes())
        .collect();
    for payload in &expected {
        tx.core.send(g, TrafficClass::Data, payload);
    }
    // And datagrams to the unicast socket (no GRO there), more than one small batch: the
    // larger GRO arenas must not make a full batch look like a drained socket.
    let to = rx.rt.local_addr();
    let unicast: Vec<Vec<u8>> = (0..40).map(|i| format!("u{i:02}").into_bytes()).collect();
    for payload in &unicast {
        tx.core.send(to, TrafficClass::Data, payload);
    }
    drive(&mut [&mut tx, &mut rx], |n| {
        n[1].core.received.len() >= N + 40
    });
    settle(&mut [&mut tx, &mut rx]);
    let mut got = rx.core.payloads();
    got.sort();
    let mut want: Vec<Vec<u8>> = expected.into_iter().chain(unicast).collect();
    want.sort();
    assert_eq!(got, want, "every datagram once, intact");
    assert!(tx.rt.stats().gso_segments > 0, "{:?}", tx.rt.stats());
    assert!(rx.rt.stats().gro_segments > 0, "{:?}", rx.rt.stats());
    assert_eq!(tx.rt.stats().gso_fallbacks, 0);
}
