//! Bad input never panics the node core and never grows it without bound: arbitrary bytes,
//! valid headers with arbitrary bodies, and mutated real packets are counted and dropped.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use proptest::prelude::*;
use qs_transport::wire::{self, DataWriter, Fragment, Header, PacketKind, HEADER_LEN};
use qs_transport::{Driven, Instant, NodeId, Seq, TopicId};
use quicksilver::core::{CoreConfig, NodeCore};

fn core() -> NodeCore {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000);
    let mut c = NodeCore::new(CoreConfig::new(NodeId(1), addr), Instant::ZERO);
    c.subscribe(Instant::ZERO, TopicId::from_name("t"));
    c
}

fn from() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9001))
}

fn header(kind: PacketKind, core: &NodeCore) -> Header {
    Header {
        kind,
        flags: 0,
        cluster: core.config().cluster,
        sender: NodeId(2),
    }
}

/// A valid data packet for `core`'s region, then a fragment of a large message.
fn real_packets(core: &NodeCore) -> Vec<Vec<u8>> {
    let region = wire::StreamId {
        region: core.own_region().expect("subscribed"),
        epoch: 1,
    };
    let mut a = vec![0u8; 1472];
    let mut w = DataWriter::new(&mut a, &header(PacketKind::Data, core), region, Seq(1)).unwrap();
    assert!(w.push(TopicId::from_name("t"), b"hello"));
    let n = w.finish().unwrap();
    let n = wire::Seal::new().seal(&mut a, n).unwrap();
    a.truncate(n);
    let mut b = vec![0u8; 1472];
    let n = Fragment::write(
        &mut b,
        &header(PacketKind::Fragment, core),
        region,
        Seq(2),
        0,
        3,
        TopicId::from_name("t"),
        3000,
        &[7u8; 1000],
    )
    .unwrap();
    let n = wire::Seal::new().seal(&mut b, n).unwrap();
    b.truncate(n);
    vec![a, b]
}

proptest! {
    #[test]
    fn arbitrary_datagrams_are_dropped_not_panicked_on(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1600), 1..30)
    ) {
        let mut c = core();
        for d in datagrams {
            c.handle_datagram(Instant::ZERO, from(), Bytes::from(d));
            c.check_invariants();
        }
        prop_assert_eq!(c.stats().delivered, 0);
    }

    #[test]
    fn valid_headers_with_arbitrary_bodies_are_dropped_or_parsed(
        bodies in prop::collection::vec((1u8..=4, prop::collection::vec(any::<u8>(), 0..1500)), 1..30)
    ) {
        let mut c = core();
        let mut buf = vec![0u8; 1600];
        for (kind, body) in bodies {
            let kind = match kind { 1 => PacketKind::Announce, 2 => PacketKind::Data,
                3 => PacketKind::Fragment, _ => PacketKind::StreamState };
            header(kind, &c).write(&mut buf).unwrap();
            buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(&body);
            let len = wire::Seal::new().seal(&mut buf, HEADER_LEN + body.len()).unwrap();
            c.handle_datagram(Instant::ZERO, from(), Bytes::copy_from_slice(&buf[..len]));
            c.check_invariants();
            let mut out = [0u8; 1500];
            while c.poll_transmit(Instant::ZERO, &mut out).is_some() {}
        }
    }

    /// Corruption of a real packet anywhere is caught by the checksum.
    #[test]
    fn mutated_real_packets_deliver_nothing(which in 0usize..2, at in 0usize..1472, xor in 1u8..=255) {
        let mut c = core();
        let mut p = real_packets(&c)[which].clone();
        let at = at % p.len();
        p[at] ^= xor;
        c.handle_datagram(Instant::ZERO, from(), Bytes::from(p));
        c.check_invariants();
        prop_assert_eq!(c.stats().delivered, 0);
        prop_assert_eq!(c.stats().drops.malformed, 1);
    }
}

#[test]
fn real_packets_are_delivered_and_a_fragment_never_exceeds_its_message() {
    let mut c = core();
    for p in real_packets(&c) {
        c.handle_datagram(Instant::ZERO, from(), Bytes::from(p));
    }
    c.check_invariants();
    assert_eq!(
        c.stats().delivered,
        1,
        "the packed message; the fragmented one is incomplete"
    );
}
