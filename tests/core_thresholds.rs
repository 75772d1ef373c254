//! Both sides of the node core's promised thresholds, fed by hand at chosen virtual times: the
//! best-effort reorder timeout (a hole filled just before it is no gap, just after it is)
//! and the send queue's byte limit. The receive window's and the ring's thresholds are
//! tested in `qs-recovery` (window) and `sim_recovery.rs` (send window, slow receivers).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_regions::Signature;
use qs_transport::wire::{self, Announce, DataWriter, Header, PacketKind, HEADER_LEN};
use qs_transport::{Driven, Instant, NodeId, Seq, TopicId};
use quicksilver::core::{CoreConfig, Event, NodeCore, PublishRefused};

const PEER: NodeId = NodeId(2);

fn t() -> TopicId {
    TopicId::from_name("t")
}

fn peer_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9001)
}

fn node(tweak: impl FnOnce(&mut CoreConfig)) -> NodeCore {
    let mut c = CoreConfig::new(NodeId(1), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000));
    tweak(&mut c);
    let mut n = NodeCore::new(c, Instant::ZERO);
    n.subscribe(Instant::ZERO, t());
    n
}

/// Packet `seq` of the peer's stream into `core`'s region: one message, its payload `seq`.
fn data(core: &NodeCore, seq: u32) -> Bytes {
    let header = Header::new(PacketKind::Data, core.config().cluster, PEER);
    let stream = wire::StreamId {
        region: core.own_region().expect("subscribed"),
        epoch: 1,
    };
    let mut buf = vec![0u8; 1472];
    let mut w = DataWriter::new(&mut buf, &header, stream, Seq(seq)).expect("room");
    assert!(w.push(t(), &seq.to_be_bytes()));
    let n = w.finish().expect("room");
    let n = wire::Seal::new().seal(&mut buf, n).expect("room");
    buf.truncate(n);
    Bytes::from(buf)
}

/// The peer announces that it subscribes `t`.
fn announce(core: &NodeCore) -> Bytes {
    let a = Announce {
        incarnation: 0,
        unicast: peer_addr(),
        leaving: false,
        topics_version: 1,
        chunk: 0,
        chunk_count: 1,
        digest: Signature::new([t()]).region().expect("one topic"),
        departing: qs_transport::RegionId(0),
        topics: vec![t()],
    };
    let mut buf = vec![0u8; 1472];
    Header::new(PacketKind::Announce, core.config().cluster, PEER)
        .write(&mut buf)
        .expect("room");
    let n = a.write(&mut buf[HEADER_LEN..]).expect("room");
    let n = wire::Seal::new()
        .seal(&mut buf, HEADER_LEN + n)
        .expect("room");
    buf.truncate(n);
    Bytes::from(buf)
}

fn from() -> SocketAddr {
    SocketAddr::V4(peer_addr())
}

/// Delivered payloads (as packet numbers) and gap sizes, in order.
fn events(core: &mut NodeCore) -> (Vec<u32>, Vec<u32>) {
    let (mut delivered, mut gaps) = (Vec::new(), Vec::new());
    while let Some(e) = core.poll_event() {
        match e {
            Event::Delivered(d) => {
                delivered.push(u32::from_be_bytes(d.payload[..4].try_into().expect("4")))
            }
            Event::Gap { missed, .. } => gaps.push(missed),
            _ => {}
        }
    }
    (delivered, gaps)
}

/// Runs the core's timers due up to `now` and sends what they queue (as a driver would:
/// a timer whose datagram is not taken stays due).
fn run_timers(core: &mut NodeCore, now: Instant) {
    let mut buf = vec![0u8; 1472];
    while let Some(t) = core.poll_timeout().filter(|t| *t <= now) {
        core.handle_timeout(t);
        while core.poll_transmit(t, &mut buf).is_some() {}
        assert!(
            core.poll_timeout().is_none_or(|next| next > t),
            "still due at {t:?} after handle_timeout"
        );
    }
}

#[test]
fn a_best_effort_hole_filled_just_before_the_reorder_timeout_is_no_gap_and_just_after_is() {
    let timeout = CoreConfig::new(NodeId(1), peer_addr()).reorder_timeout;
    let deadline = Instant::ZERO + timeout;
    let just_before = Instant(deadline.0 - 1);
    for (fill_at, want) in [
        (just_before, (vec![1, 2, 3], vec![])),
        (deadline, (vec![1, 3], vec![1])),
    ] {
        let mut core = node(|c| c.reliable = false);
        core.handle_datagram(Instant::ZERO, from(), data(&core, 1));
        core.handle_datagram(Instant::ZERO, from(), data(&core, 3));
        run_timers(&mut core, fill_at);
        core.handle_datagram(fill_at, from(), data(&core, 2));
        run_timers(&mut core, fill_at + Duration::from_secs(1));
        core.check_invariants();
        assert_eq!(events(&mut core), want, "packet 2 at {fill_at:?}");
        let late = u64::from(fill_at == deadline);
        assert_eq!(core.stats().drops.stale, late, "a late packet is dropped");
    }
}

/// A core that knows one other subscriber of `t` and queues without sending (nothing polls
/// its transmits), with a send queue of `limit` bytes.
fn queueing(limit: usize) -> NodeCore {
    let mut core = node(|c| c.send_queue_bytes = limit);
    core.handle_datagram(Instant::ZERO, from(), announce(&core));
    assert_eq!(core.subscribers_of(t()), 1, "the peer subscribes t");
    core
}

/// The limit in the queue's own unit (payload plus 10 bytes of framing per message), both
/// sides: a message whose framed size reaches the limit exactly is taken, one byte more is
/// refused.
#[test]
fn the_send_queue_takes_a_message_that_reaches_its_limit_and_refuses_one_byte_more() {
    let overhead = wire::MESSAGE_OVERHEAD;
    let mut core = queueing(1000);
    for _ in 0..9 {
        core.publish(t(), Bytes::from(vec![0u8; 100 - overhead]))
            .expect("room");
    }
    assert_eq!(core.queued_bytes(), 900);
    // 100 bytes of room: a 90-byte payload fills it exactly, a 91-byte one would overflow.
    assert_eq!(
        core.publish(t(), Bytes::from(vec![0u8; 91])),
        Err(PublishRefused::QueueFull),
        "one byte past the limit"
    );
    assert_eq!(core.publish(t(), Bytes::from(vec![0u8; 90])), Ok(()));
    assert_eq!(core.queued_bytes(), 1000);
    core.check_invariants();
}

/// Back-pressure, both sides of a full queue: refused while full, taken again as soon as a
/// packet leaves.
#[test]
fn a_full_send_queue_refuses_until_a_packet_leaves() {
    let mut core = queueing(4000);
    let m = Bytes::from(vec![0u8; 1000]);
    let mut taken = 0;
    while core.publish(t(), m.clone()).is_ok() {
        taken += 1;
        assert!(taken < 100, "the queue is bounded");
    }
    assert_eq!(core.publish(t(), m.clone()), Err(PublishRefused::QueueFull));
    assert!(core.queued_bytes() <= 4000 + wire::MESSAGE_OVERHEAD);
    // Control traffic (announces, gossip) goes first; then the first data packet.
    let mut buf = vec![0u8; 1472];
    while core
        .poll_transmit(Instant::ZERO, &mut buf)
        .is_some_and(|tx| tx.class != qs_transport::TrafficClass::Data)
    {}
    assert_eq!(core.publish(t(), m), Ok(()), "room again");
    core.check_invariants();
}

/// The time bound of the send queue, both sides: drained at 100 MB/s (a 1,010-byte message
/// every 10 µs), a 5 ms queue takes about 505 KB and refuses past it, far below its 16 MiB
/// byte limit; with the time bound off the same core takes up to the byte limit.
#[test]
fn the_send_queue_holds_about_its_time_at_the_drain_rate() {
    for time in [Duration::from_millis(5), Duration::ZERO] {
        let mut core = node(|c| {
            c.send_queue_bytes = 16 << 20;
            c.send_queue_time = time;
            c.reliable = false;
        });
        core.handle_datagram(Instant::ZERO, from(), announce(&core));
        let m = Bytes::from(vec![0u8; 1000]);
        let mut buf = vec![0u8; 1472];
        let mut now = Instant::ZERO;
        // 20 ms of steady draining with a queue that never empties.
        for _ in 0..2000 {
            while core.queued_bytes() < 50_000 {
                core.publish(t(), m.clone()).expect("room");
            }
            now = now + Duration::from_micros(10);
            while let Some(tx) = core.poll_transmit(now, &mut buf) {
                if tx.class == qs_transport::TrafficClass::Data {
                    break;
                }
            }
        }
        let mut taken = 0usize;
        while core.publish(t(), m.clone()).is_ok() {
            taken += 1;
            assert!(taken < 20_000, "bounded");
        }
        let held = core.queued_bytes();
        if time.is_zero() {
            assert!(held > (16 << 20) - 2000, "bytes only: {held}");
        } else {
            assert!(
                (450_000..=560_000).contains(&held),
                "5 ms at 100 MB/s: {held}"
            );
        }
        core.check_invariants();
    }
}

/// One memory budget for every receive window, both sides: with room for 10 out-of-order
/// packets, the 10th is held and the 11th refused (counted), whatever the stream; once the
/// hole is filled and the window drains, out-of-order packets are held again.
#[test]
fn out_of_order_packets_are_held_up_to_the_global_budget_and_refused_past_it() {
    let mut core = node(|c| c.max_held_packets = 10);
    let now = Instant::ZERO;
    core.handle_datagram(now, from(), data(&core, 1));
    // Packet 2 is missing: 3..=12 wait behind it.
    for s in 3..=12 {
        core.handle_datagram(now, from(), data(&core, s));
    }
    assert_eq!(core.stats().drops.held_budget, 0, "ten fit");
    core.handle_datagram(now, from(), data(&core, 13));
    assert_eq!(core.stats().drops.held_budget, 1, "the eleventh does not");
    // The hole fills: 2..=12 are delivered in order, 13 comes again (a repair) and is taken.
    core.handle_datagram(now, from(), data(&core, 2));
    core.handle_datagram(now, from(), data(&core, 15));
    assert_eq!(
        core.stats().drops.held_budget,
        1,
        "room again once the window drained"
    );
    core.handle_datagram(now, from(), data(&core, 13));
    let (delivered, gaps) = events(&mut core);
    assert_eq!(delivered, (1..=13).collect::<Vec<u32>>());
    assert!(gaps.is_empty());
    core.check_invariants();
}
