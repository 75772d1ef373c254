//! Real sockets on loopback multicast: three nodes in this process discover each other and
//! exchange 10,000 messages on two topics with exact delivery (no loss, no duplicate, order
//! kept). The publishers are paced: loopback drops datagrams under overload, and this test must
//! hold on a loaded two-core machine.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use quicksilver::{Node, NodeId, RecvError, Subscription};

/// Ports of this test process, away from the defaults so parallel runs do not share sockets.
fn ports(offset: u16) -> (SocketAddrV4, u16) {
    let base = 20_000 + (std::process::id() % 5_000) as u16 * 4 + offset * 2;
    (
        SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), base),
        base + 1,
    )
}

fn node(cluster: &str, offset: u16) -> Node {
    let (control, data) = ports(offset);
    Node::builder()
        .cluster(cluster)
        .control_group(control)
        .data_port(data)
        .announce_interval(Duration::from_millis(100))
        .build()
        .expect("node starts on loopback")
}

fn wait_for(node: &Node, topic: &str, want: usize) {
    let start = Instant::now();
    while node.subscribers_of(&[topic]).unwrap() < want {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "subscribers of {topic} never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Receives `n` messages; returns per sender the sequence numbers in delivery order.
fn collect(sub: &Subscription, n: usize) -> BTreeMap<NodeId, Vec<u32>> {
    let mut got: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
    for _ in 0..n {
        match sub.recv_timeout(Duration::from_secs(20)) {
            Ok(m) => {
                let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                assert!(
                    m.payload[4..].iter().all(|b| *b == seq as u8),
                    "payload intact"
                );
                got.entry(m.sender).or_default().push(seq);
            }
            Err(RecvError::Empty) => break,
            Err(RecvError::Closed) => panic!("node closed"),
        }
    }
    got
}

#[test]
fn three_nodes_exchange_ten_thousand_messages_on_two_topics_exactly() {
    let cluster = format!("loopback-test-{}", std::process::id());
    let (a, b, c) = (node(&cluster, 0), node(&cluster, 0), node(&cluster, 0));
    let sub_a = a.subscribe("t2").unwrap();
    let sub_b = b.subscribe("t1").unwrap();
    let sub_c = c.subscribe_all(&["t1", "t2"]).unwrap();
    wait_for(&a, "t1", 2);
    wait_for(&b, "t2", 2);

    const PER_PUBLISHER: u32 = 5_000;
    const RATE: u64 = 10_000; // messages per second per publisher
    let publish = |node: &Node, topic: &str| {
        let start = Instant::now();
        for seq in 0..PER_PUBLISHER {
            let due = start + Duration::from_secs_f64(f64::from(seq) / RATE as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut payload = vec![seq as u8; 100];
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            node.publish(topic, payload).unwrap();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| publish(&a, "t1"));
        s.spawn(|| publish(&b, "t2"));
    });

    let in_order: Vec<u32> = (0..PER_PUBLISHER).collect();
    let got_a = collect(&sub_a, PER_PUBLISHER as usize);
    let got_b = collect(&sub_b, PER_PUBLISHER as usize);
    let got_c = collect(&sub_c, 2 * PER_PUBLISHER as usize);
    assert_eq!(
        got_a.get(&b.id()),
        Some(&in_order),
        "a gets b's t2 messages"
    );
    assert_eq!(
        got_b.get(&a.id()),
        Some(&in_order),
        "b gets a's t1 messages"
    );
    assert_eq!(got_c.get(&a.id()), Some(&in_order), "c gets a's messages");
    assert_eq!(got_c.get(&b.id()), Some(&in_order), "c gets b's messages");
    assert_eq!(
        got_a.len() + got_b.len() + got_c.len(),
        4,
        "no message from anyone else"
    );
    // Nothing more is waiting: no duplicates.
    assert_eq!(
        sub_c.recv_timeout(Duration::from_millis(300)),
        Err(RecvError::Empty)
    );
    for n in [&a, &b, &c] {
        let s = n.stats().unwrap();
        assert_eq!(s.core.gaps, 0, "{:?}", s.core);
        assert_eq!(s.core.drops.stale, 0);
        assert_eq!(s.subscriber_overflow, 0);
    }
}

#[test]
fn try_publish_reports_a_full_queue_instead_of_dropping() {
    let cluster = format!("backpressure-test-{}", std::process::id());
    let (control, data) = ports(1);
    let publisher = Node::builder()
        .cluster(&cluster)
        .control_group(control)
        .data_port(data)
        .announce_interval(Duration::from_millis(100))
        .send_queue_bytes(64 * 1024)
        .build()
        .unwrap();
    let subscriber = node(&cluster, 1);
    let sub = subscriber.subscribe("bulk").unwrap();
    wait_for(&publisher, "bulk", 1);
    // Publish far faster than loopback drains 64 KiB messages: the queue fills.
    let (mut accepted, mut refused) = (0u32, 0u32);
    let start = Instant::now();
    while refused == 0 && start.elapsed() < Duration::from_secs(10) {
        match publisher.try_publish("bulk", vec![accepted as u8; 60_000]) {
            Ok(()) => accepted += 1,
            Err(quicksilver::PublishError::WouldBlock) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "the queue never filled");
    assert!(matches!(
        publisher.try_publish("bulk", vec![0u8; 20 << 20]),
        Err(quicksilver::PublishError::TooLarge { .. })
    ));
    assert!(matches!(
        publisher.publish("", "x"),
        Err(quicksilver::PublishError::InvalidTopic)
    ));
    // Every accepted message is on its way (whatever loopback loses shows up as gaps).
    let mut received = 0u32;
    while sub.recv_timeout(Duration::from_secs(3)).is_ok() {
        received += 1;
    }
    let s = subscriber.stats().unwrap();
    let lost = s.core.drops.incomplete_message + s.core.gaps;
    assert!(received > 0 && u64::from(received) <= u64::from(accepted));
    assert!(
        u64::from(received) + lost >= u64::from(accepted),
        "accepted {accepted}, received {received}, lost {lost}: a message vanished silently"
    );
}

#[test]
fn a_node_in_busy_poll_mode_delivers_exactly_like_the_default() {
    let cluster = format!("busy-poll-test-{}", std::process::id());
    let (control, data) = ports(2);
    let with_spin = |spin: Duration| {
        Node::builder()
            .cluster(&cluster)
            .control_group(control)
            .data_port(data)
            .announce_interval(Duration::from_millis(100))
            .busy_poll(spin)
            .build()
            .expect("node starts on loopback")
    };
    // A publisher that never sleeps, a subscriber that spins briefly before it sleeps, and
    // one in the default mode: all three must see the same stream.
    let publisher = with_spin(Duration::MAX);
    let spinning = with_spin(Duration::from_micros(500));
    let default = with_spin(Duration::ZERO);
    let sub_spinning = spinning.subscribe("t").unwrap();
    let sub_default = default.subscribe("t").unwrap();
    wait_for(&publisher, "t", 2);

    const COUNT: u32 = 2_000;
    let start = Instant::now();
    for seq in 0..COUNT {
        let due = start + Duration::from_secs_f64(f64::from(seq) / 10_000.0);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut payload = vec![seq as u8; 64];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        publisher.publish("t", payload).unwrap();
    }

    let in_order: Vec<u32> = (0..COUNT).collect();
    let got_spinning = collect(&sub_spinning, COUNT as usize);
    let got_default = collect(&sub_default, COUNT as usize);
    assert_eq!(got_spinning.get(&publisher.id()), Some(&in_order));
    assert_eq!(got_default.get(&publisher.id()), Some(&in_order));
    assert_eq!(got_spinning.len() + got_default.len(), 2, "no other sender");
    assert_eq!(
        sub_spinning.recv_timeout(Duration::from_millis(300)),
        Err(RecvError::Empty),
        "no duplicate"
    );
    for (n, spins) in [(&publisher, true), (&spinning, true), (&default, false)] {
        let s = n.stats().unwrap();
        assert_eq!(s.core.gaps, 0, "{:?}", s.core);
        assert_eq!(s.runtime.spin_nanos > 0, spins, "{:?}", s.runtime);
        // A spinner without a budget never sleeps; one with a budget does when idle.
        assert_eq!(s.runtime.spin_blocks > 0, spins && n.id() != publisher.id());
    }
}

#[test]
fn publishes_from_several_threads_through_a_small_hand_off_all_arrive_in_each_threads_order() {
    // A 64-message, 8 KiB hand-off and a 64 KiB send queue: the node thread takes batches
    // and keeps what the full core refused, and the publishers block on back-pressure often.
    let cluster = format!("handoff-test-{}", std::process::id());
    let (control, data) = ports(3);
    let publisher = Node::builder()
        .cluster(&cluster)
        .control_group(control)
        .data_port(data)
        .announce_interval(Duration::from_millis(100))
        .publish_queue(64)
        .publish_queue_bytes(8 << 10)
        .send_queue_bytes(64 << 10)
        .build()
        .unwrap();
    let subscriber = node(&cluster, 3);
    let sub = subscriber.subscribe("handoff").unwrap();
    wait_for(&publisher, "handoff", 1);
    const THREADS: u32 = 4;
    const EACH: u32 = 5_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let p = publisher.publisher("handoff").unwrap();
            s.spawn(move || {
                let mut arena = quicksilver::PayloadArena::new(4096);
                for i in 0..EACH {
                    let payload = arena.write(64, |b| {
                        b[..4].copy_from_slice(&t.to_be_bytes());
                        b[4..8].copy_from_slice(&i.to_be_bytes());
                    });
                    p.publish(payload).unwrap();
                }
            });
        }
    });
    let mut next = [0u32; THREADS as usize];
    let mut received = 0u32;
    let start = Instant::now();
    while received < THREADS * EACH && start.elapsed() < Duration::from_secs(60) {
        let first = match sub.recv_timeout(Duration::from_secs(5)) {
            Ok(m) => m,
            Err(RecvError::Empty) => continue,
            Err(RecvError::Closed) => panic!("node closed"),
        };
        for m in std::iter::once(first).chain(sub.drain()) {
            let t = u32::from_be_bytes(m.payload[..4].try_into().unwrap()) as usize;
            let i = u32::from_be_bytes(m.payload[4..8].try_into().unwrap());
            assert_eq!(i, next[t], "thread {t}'s messages out of order or lost");
            next[t] += 1;
            received += 1;
        }
    }
    assert_eq!(
        next, [EACH; THREADS as usize],
        "every message of every thread arrived"
    );
}
