//! The node harness shared by the node targets: one subscribed `NodeCore`, fed a sequence of
//! datagrams cut from the fuzzer's input, with time advancing, transmits drained and the
//! core's invariants checked after every datagram.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use qs_transport::wire::{Header, KeyRing, PacketKind, Seal, HEADER_LEN};
use qs_transport::{Driven, Instant, NodeId, TopicId};
use quicksilver::core::{CoreConfig, NodeCore};

const KINDS: [PacketKind; 10] = [
    PacketKind::Announce,
    PacketKind::Data,
    PacketKind::Fragment,
    PacketKind::StreamState,
    PacketKind::Token,
    PacketKind::TokenAck,
    PacketKind::RepairRequest,
    PacketKind::SenderAck,
    PacketKind::LecRepair,
    PacketKind::Gossip,
];

/// Feeds `data` to a node: each datagram is `[kind, sender, len, body[len]]`; with `seal` the
/// harness writes a valid header and seals it (so bodies reach every decoder), without it
/// the bytes go in raw.
pub fn run(data: &[u8], key: Option<KeyRing>, seal: bool) {
    let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 9000);
    let mut config = CoreConfig::new(NodeId(1), addr);
    config.key = key.clone();
    let mut core = NodeCore::new(config, Instant::ZERO);
    core.subscribe(Instant::ZERO, TopicId::from_name("t"));
    let mut sealer = match key {
        Some(k) => Seal::keyed(k, 1, 2),
        None => Seal::new(),
    };
    let cluster = core.config().cluster;
    let mut now = Instant::ZERO;
    let mut rest = data;
    let mut out = vec![0u8; 2048];
    while rest.len() >= 3 {
        let (kind, sender, len) = (rest[0], rest[1], usize::from(rest[2]) * 8);
        let body = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        let datagram = if seal {
            let mut buf = vec![0u8; HEADER_LEN + body.len() + sealer.overhead()];
            let kind = KINDS[usize::from(kind) % KINDS.len()];
            Header::new(kind, cluster, NodeId(2 + u64::from(sender % 4)))
                .write(&mut buf)
                .expect("room");
            buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
            let Ok(n) = sealer.seal(&mut buf, HEADER_LEN + body.len()) else {
                continue;
            };
            buf.truncate(n);
            buf
        } else {
            body.to_vec()
        };
        let from = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(10, 0, 0, 2 + sender % 4),
            9000,
        ));
        core.handle_datagram(now, from, Bytes::from(datagram));
        now = Instant(now.0 + u64::from(kind) * 1_000_000);
        core.handle_timeout(now);
        while core.poll_transmit(now, &mut out).is_some() {}
        while core.poll_event().is_some() {}
        core.check_invariants();
    }
}
