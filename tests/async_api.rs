//! The async API under tokio, on real loopback sockets: a publisher node streams 10,000
//! messages through `Publisher::publish_async` into a subscriber node's `Subscription` used as
//! a `futures::Stream`, with queues small enough that the publisher must await back-pressure;
//! node events arrive as a stream; the Prometheus endpoint's counters move with the traffic.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use quicksilver::{Node, NodeBuilder, NodeEvent};

/// Ports of this test process, away from the defaults and from the other test files.
fn ports(offset: u16) -> (SocketAddrV4, u16) {
    let base = 26_000 + (std::process::id() % 3_000) as u16 * 4 + offset * 2;
    (
        SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), base),
        base + 1,
    )
}

fn builder(cluster: &str, offset: u16) -> NodeBuilder {
    let (control, data) = ports(offset);
    Node::builder()
        .cluster(cluster)
        .control_group(control)
        .data_port(data)
        .announce_interval(Duration::from_millis(100))
}

async fn wait_for_subscribers(node: &Node, topic: &str) {
    let start = Instant::now();
    while node.subscribers_of(&[topic]).unwrap() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the subscriber of {topic} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_stream_through_the_async_api_with_back_pressure_awaited() {
    const N: u32 = 10_000;
    let cluster = format!("async-test-{}", std::process::id());
    // Small queues: the publisher outruns the node, so its awaits must really wait.
    let tx = builder(&cluster, 0)
        .publish_queue(16)
        .send_queue_bytes(16 << 10)
        .build()
        .unwrap();
    let rx = builder(&cluster, 0).subscription_queue(64).build().unwrap();
    let mut sub = rx.subscribe("async.t").unwrap();
    wait_for_subscribers(&tx, "async.t").await;

    let publisher = tx.publisher("async.t").unwrap();
    let send = tokio::spawn(async move {
        let mut pending = 0u32;
        for seq in 0..N {
            let mut payload = seq.to_be_bytes().to_vec();
            payload.resize(200, seq as u8);
            let mut fut = pin!(publisher.publish_async(payload));
            // Poll by hand to see whether back-pressure made the publish wait.
            std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
                Poll::Pending => {
                    pending += 1;
                    Poll::Pending
                }
                ready => ready,
            })
            .await
            .unwrap();
        }
        pending
    });

    let deadline = Duration::from_secs(60);
    let got = tokio::time::timeout(deadline, async {
        let mut next = 0u32;
        while next < N {
            let m = sub.next().await.expect("the stream stays open");
            let seq = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            assert_eq!(seq, next, "in order, nothing lost, nothing twice");
            assert!(m.payload[4..].iter().all(|b| *b == seq as u8), "intact");
            assert_eq!(&*m.topic, "async.t");
            assert_eq!(m.sender, tx.id());
            next += 1;
        }
        next
    })
    .await
    .expect("all messages within the deadline");
    assert_eq!(got, N);
    let pending = send.await.unwrap();
    assert!(
        pending > 0,
        "with a 16-message publish queue some publish had to wait"
    );
    assert!(sub.try_recv().is_err(), "nothing beyond the {N} messages");
    drop(sub);
    rx.shutdown().unwrap();
    tx.shutdown().unwrap();
}

/// Waits (at most 20 s) for an event that `want` accepts.
async fn seen(events: &mut quicksilver::Events, want: impl Fn(&NodeEvent) -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.next().await {
            if want(&e) {
                return;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("the event within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_coming_and_going_arrives_on_the_event_stream() {
    let cluster = format!("events-test-{}", std::process::id());
    let a = builder(&cluster, 1).build().unwrap();
    let mut events = a.events().unwrap();
    let b = builder(&cluster, 1).build().unwrap();
    let b_id = b.id();
    seen(
        &mut events,
        |e| matches!(e, NodeEvent::PeerUp { peer } if *peer == b_id),
    )
    .await;
    b.shutdown().unwrap();
    seen(
        &mut events,
        |e| matches!(e, NodeEvent::PeerDown { peer } if *peer == b_id),
    )
    .await;
    assert_eq!(a.stats().unwrap().events_dropped, 0);
    a.shutdown().unwrap();
}

/// `GET /metrics` over plain TCP, as curl would; returns the body.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint listens");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the first sample of `name` in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
}

#[test]
fn the_metrics_endpoint_shows_the_delivered_counter_moving() {
    let cluster = format!("metrics-test-{}", std::process::id());
    let node = builder(&cluster, 2)
        .metrics(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .build()
        .unwrap();
    let addr = node.metrics_addr().expect("an endpoint was asked for");
    let sub = node.subscribe("m.t").unwrap();
    let before = scrape(addr);
    assert_eq!(sample(&before, "qs_core_delivered_total"), 0.0);
    for i in 0..50u8 {
        node.publish("m.t", vec![i; 10]).unwrap();
    }
    for _ in 0..50 {
        sub.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let after = scrape(addr);
    assert_eq!(sample(&after, "qs_core_delivered_total"), 50.0);
    assert_eq!(sample(&after, "qs_core_delivered_bytes_total"), 500.0);
    assert!(
        sample(&after, "qs_runtime_iterations_total")
            > sample(&before, "qs_runtime_iterations_total")
    );
    assert!(after.contains("# TYPE qs_socket_buffers_recv_bytes gauge"));
    drop(sub);
    node.shutdown().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the endpoint stops with the node"
    );
}
