//! Property tests of the wire format: every encoder round-trips through its decoder, and any
//! byte string either parses or returns an error, never panics.

use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::Bytes;
use proptest::prelude::*;
use qs_transport::wire::{
    Announce, DataPacket, DataWriter, Fragment, Header, LecRepair, PacketKind, RateAggregate,
    RepairRequest, Scope, Seal, SenderAck, SeqRange, StreamId, StreamState, Token, TokenAck,
    TokenRecord, WireError, DATA_FIXED_LEN, HEADER_LEN,
};
use qs_transport::{ClusterId, NodeId, RegionId, Seq, TopicId};

fn header(kind: PacketKind, sender: u64) -> Header {
    Header {
        kind,
        flags: 0,
        cluster: ClusterId(7),
        sender: NodeId(sender),
    }
}

/// Parses a datagram the way a node does, body decoder included.
fn parse_any(datagram: &[u8]) -> Result<(), WireError> {
    let (h, body) = Seal::new().open(datagram)?;
    let body = Bytes::copy_from_slice(body);
    match h.kind {
        PacketKind::Announce => Announce::parse(&body).map(drop),
        PacketKind::Data => {
            DataPacket::parse(body).map(|p| assert_eq!(p.messages().count(), p.len()))
        }
        PacketKind::Fragment => Fragment::parse(body).map(drop),
        PacketKind::StreamState => StreamState::parse(&body).map(drop),
        PacketKind::Token => Token::parse(&body).map(|t| assert_eq!(t.wire_len(), body.len())),
        PacketKind::TokenAck => TokenAck::parse(&body).map(drop),
        PacketKind::RepairRequest => RepairRequest::parse(&body).map(drop),
        PacketKind::SenderAck => SenderAck::parse(&body).map(drop),
        PacketKind::LecRepair => {
            LecRepair::parse(&body).map(|r| assert_eq!(r.entries().count(), r.len()))
        }
        PacketKind::Gossip => Ok(()),
    }
}

fn ranges() -> impl Strategy<Value = Vec<SeqRange>> {
    prop::collection::vec(
        (any::<u32>(), 1u32..1000).prop_map(|(f, c)| SeqRange {
            first: Seq(f),
            count: c,
        }),
        0..6,
    )
}

fn option_seq() -> impl Strategy<Value = Option<Seq>> {
    prop::option::of(any::<u32>().prop_map(Seq))
}

fn token() -> impl Strategy<Value = Token> {
    (0usize..=6).prop_flat_map(|parts| {
        let record = (
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                option_seq(),
                any::<u64>(),
                any::<u32>(),
            ),
            prop::collection::vec(option_seq(), parts),
            prop::collection::vec(option_seq(), parts),
            ranges(),
            ranges(),
            (any::<u16>(), any::<u32>(), any::<u32>(), any::<u64>()),
        )
            .prop_map(
                |((s, h, c, prefix, lag, cl), pp, pc, lack, naks, (rc, rmin, rmax, rsum))| {
                    TokenRecord {
                        sender: NodeId(s),
                        epoch: s.rotate_left(17) ^ h as u64,
                        highest: Seq(h),
                        cutoff: Seq(c),
                        prefix,
                        laggard: prefix.map(|_| NodeId(lag)),
                        cleanup: Seq(cl),
                        cleanup_unknown: cl % 3 == 0,
                        partial: h.rotate_left(5),
                        incomplete: h % 7 == 0,
                        reported: c ^ h << 13,
                        partition_prefix: pp,
                        partition_current: pc,
                        lack,
                        naks,
                        rates: RateAggregate {
                            count: rc,
                            min: rmin,
                            max: rmax,
                            sum: rsum,
                        },
                    }
                },
            );
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u16>(),
            prop::collection::vec(record, 0..4),
        )
            .prop_map(|(region, view, round, hop, records)| Token {
                region: RegionId(region),
                view,
                round,
                scope: if round % 3 == 0 {
                    Scope::Region
                } else {
                    Scope::Partition((round % 32) as u8)
                },
                hop,
                skipped: view.rotate_left(7),
                records,
            })
    })
}

proptest! {
    #[test]
    fn recovery_packets_round_trip(
        t in token(),
        ack in (any::<u64>(), any::<u64>(), any::<u32>(), any::<u16>()),
        req in (any::<u64>(), any::<u64>(), ranges()),
        sack in (any::<u64>(), any::<u32>(), any::<u32>(), ranges(), any::<u32>()),
    ) {
        let mut buf = vec![0u8; 8192];
        let n = t.write(&mut buf).unwrap();
        prop_assert_eq!(n, t.wire_len());
        prop_assert_eq!(Token::parse(&buf[..n]).unwrap(), t);
        let a = TokenAck { region: RegionId(ack.0), view: ack.1, round: ack.2, scope: if ack.3 % 2 == 0 { Scope::Region } else { Scope::Partition((ack.3 % 32) as u8) }, hop: ack.3 };
        let n = a.write(&mut buf).unwrap();
        prop_assert_eq!(TokenAck::parse(&buf[..n]).unwrap(), a);
        let r = RepairRequest { region: RegionId(req.0), sender: NodeId(req.1), epoch: req.0 ^ req.1, ranges: req.2 };
        let n = r.write(&mut buf).unwrap();
        prop_assert_eq!(RepairRequest::parse(&buf[..n]).unwrap(), r);
        let s = SenderAck { region: RegionId(sack.0), epoch: sack.0.rotate_left(9), stable: Seq(sack.1), floor: Seq(sack.1.wrapping_sub(3)), highest: Seq(sack.2), naks: sack.3, slowest_rate: sack.4 };
        let n = s.write(&mut buf).unwrap();
        prop_assert_eq!(SenderAck::parse(&buf[..n]).unwrap(), s);
    }

    #[test]
    fn recovery_bodies_from_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Token::parse(&body);
        let _ = TokenAck::parse(&body);
        let _ = RepairRequest::parse(&body);
        let _ = SenderAck::parse(&body);
    }
}

proptest! {
    #[test]
    fn packed_messages_round_trip(
        sender: u64, region: u64, seq: u32, view: u16,
        msgs in prop::collection::vec((any::<u64>(), prop::collection::vec(any::<u8>(), 0..300)), 0..20),
    ) {
        let mut buf = vec![0u8; 1472];
        let mut w = DataWriter::new(&mut buf, &header(PacketKind::Data, sender), StreamId { region: RegionId(region), epoch: region ^ 5 }, Seq(seq)).unwrap();
        w.set_view(view);
        let mut written = Vec::new();
        for (t, p) in &msgs {
            if !w.push(TopicId(*t), p) { break; }
            written.push((TopicId(*t), p.clone()));
        }
        let len = w.finish().unwrap();
        let len = Seal::new().seal(&mut buf, len).unwrap();
        let (h, body) = Seal::new().open(&buf[..len]).unwrap();
        prop_assert_eq!(h.sender, NodeId(sender));
        prop_assert_eq!(h.kind, PacketKind::Data);
        let pkt = DataPacket::parse(Bytes::copy_from_slice(body)).unwrap();
        prop_assert_eq!((pkt.region, pkt.epoch), (RegionId(region), region ^ 5));
        prop_assert_eq!((pkt.seq, pkt.view), (Seq(seq), view));
        let got: Vec<(TopicId, Vec<u8>)> = pkt.messages().map(|(t, b)| (t, b.to_vec())).collect();
        prop_assert_eq!(got, written);
    }

    #[test]
    fn fragments_round_trip(index in 0u16..100, extra in 1u16..100, topic: u64, total: u32,
        view: u16, payload in prop::collection::vec(any::<u8>(), 0..1400)) {
        let total = total.max(payload.len() as u32);
        let count = (index + extra).max(2); // a message of one fragment is not fragmented
        let mut buf = vec![0u8; 1472];
        let len = Fragment::write(&mut buf, &header(PacketKind::Fragment, 1), StreamId { region: RegionId(2), epoch: 7 }, Seq(3),
            index, count, TopicId(topic), total, view, &payload).unwrap();
        let len = Seal::new().seal(&mut buf, len).unwrap();
        let (_, body) = Seal::new().open(&buf[..len]).unwrap();
        let f = Fragment::parse(Bytes::copy_from_slice(body)).unwrap();
        prop_assert_eq!((f.index, f.count, f.topic, f.total_len, f.view), (index, count, TopicId(topic), total, view));
        prop_assert_eq!(&f.payload[..], &payload[..]);
    }

    #[test]
    fn announces_round_trip(incarnation: u64, ip: u32, port: u16, leaving: bool, version: u32,
        chunk in 0u16..10, more in 1u16..10, digest: u64,
        topics in prop::collection::vec(any::<u64>(), 0..170)) {
        let a = Announce {
            incarnation, unicast: SocketAddrV4::new(Ipv4Addr::from(ip), port), leaving,
            topics_version: version, chunk, chunk_count: chunk + more, digest: RegionId(digest), departing: RegionId(0),
            topics: topics.into_iter().map(TopicId).collect(),
        };
        let mut buf = vec![0u8; 1472];
        header(PacketKind::Announce, 9).write(&mut buf).unwrap();
        let n = a.write(&mut buf[HEADER_LEN..]).unwrap();
        let len = Seal::new().seal(&mut buf, HEADER_LEN + n).unwrap();
        let (_, body) = Seal::new().open(&buf[..len]).unwrap();
        prop_assert_eq!(Announce::parse(body).unwrap(), a);
    }

    #[test]
    fn stream_states_round_trip(region: u64, seq: u32) {
        let s = StreamState { region: RegionId(region), epoch: region.rotate_left(3), highest: Seq(seq), floor: Seq(seq.wrapping_sub(7)) };
        let mut buf = [0u8; 64];
        header(PacketKind::StreamState, 1).write(&mut buf).unwrap();
        let n = s.write(&mut buf[HEADER_LEN..]).unwrap();
        let len = Seal::new().seal(&mut buf, HEADER_LEN + n).unwrap();
        let (_, body) = Seal::new().open(&buf[..len]).unwrap();
        prop_assert_eq!(StreamState::parse(body).unwrap(), s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_any(&bytes);
    }

    /// Random bytes almost never pass the checksum, so also fuzz bodies behind a valid header.
    #[test]
    fn arbitrary_bodies_behind_valid_headers_never_panic(kind in 1u8..=9,
        body in prop::collection::vec(any::<u8>(), 0..1500)) {
        let kind = match kind { 1 => PacketKind::Announce, 2 => PacketKind::Data,
            3 => PacketKind::Fragment, 4 => PacketKind::StreamState, 5 => PacketKind::Token,
            6 => PacketKind::TokenAck, 7 => PacketKind::RepairRequest, 8 => PacketKind::SenderAck,
            _ => PacketKind::LecRepair };
        let mut buf = vec![0u8; HEADER_LEN + body.len()];
        header(kind, 5).write(&mut buf).unwrap();
        buf[HEADER_LEN..].copy_from_slice(&body);
        let len = buf.len();
        Seal::new().seal(&mut buf, len).unwrap();
        let _ = parse_any(&buf);
    }

    #[test]
    fn any_single_bit_flip_is_rejected(flip in 0usize..(8 * 60)) {
        let mut buf = vec![0u8; 1472];
        let mut w = DataWriter::new(&mut buf, &header(PacketKind::Data, 1), StreamId { region: RegionId(2), epoch: 9 }, Seq(3)).unwrap();
        assert!(w.push(TopicId(4), b"hello, multicast world: some bytes"));
        let len = w.finish().unwrap();
        let len = Seal::new().seal(&mut buf, len).unwrap();
        let flip = flip % (8 * len);
        buf[flip / 8] ^= 1 << (flip % 8);
        prop_assert!(Seal::new().open(&buf[..len]).is_err());
    }
}

#[test]
fn a_packet_with_a_lying_message_length_is_malformed() {
    let mut buf = vec![0u8; 200];
    let mut w = DataWriter::new(
        &mut buf,
        &header(PacketKind::Data, 1),
        StreamId {
            region: RegionId(2),
            epoch: 9,
        },
        Seq(3),
    )
    .unwrap();
    assert!(w.push(TopicId(4), b"abc"));
    let len = w.finish().unwrap();
    let len = Seal::new().seal(&mut buf, len).unwrap();
    let mut body = buf[HEADER_LEN..len].to_vec();
    body[DATA_FIXED_LEN + 9] = 200; // the message now claims 200 bytes
    assert_eq!(
        DataPacket::parse(Bytes::from(body)).unwrap_err(),
        WireError::Malformed
    );
}
