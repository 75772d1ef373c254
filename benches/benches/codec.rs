//! Micro-benchmarks of the hot paths: packing small messages into a datagram, parsing and
//! iterating a packed datagram (checksum included), and the topic → regions lookup.
#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qs_regions::{GroupRange, RegionTable, Signature};
use qs_transport::wire::{DataPacket, DataWriter, Header, PacketKind, Seal, StreamId, HEADER_LEN};
use qs_transport::{ClusterId, NodeId, RegionId, Seq, TopicId};

fn header() -> Header {
    Header::new(PacketKind::Data, ClusterId(1), NodeId(2))
}

fn pack(buf: &mut [u8], payload: &[u8]) -> (usize, u64) {
    let stream = StreamId {
        region: RegionId(3),
        epoch: 1,
    };
    let mut w = DataWriter::new(buf, &header(), stream, Seq(4)).expect("room");
    let mut n = 0;
    while w.push(TopicId(5), payload) {
        n += 1;
    }
    let len = w.finish().expect("complete");
    (Seal::new().seal(buf, len).expect("sealed"), n)
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [64usize, 1024] {
        let payload = vec![7u8; size];
        let mut buf = vec![0u8; 1472];
        let (_, per_packet) = pack(&mut buf, &payload);
        g.throughput(Throughput::Elements(per_packet));
        g.bench_with_input(BenchmarkId::new("pack_datagram", size), &payload, |b, p| {
            b.iter(|| pack(black_box(&mut buf), black_box(p)))
        });
        let (len, _) = pack(&mut buf, &payload);
        let datagram = Bytes::copy_from_slice(&buf[..len]);
        g.bench_with_input(
            BenchmarkId::new("parse_and_iterate", size),
            &datagram,
            |b, d| {
                b.iter(|| {
                    let (_, _) = Seal::new().open(black_box(d)).expect("valid");
                    let p = DataPacket::parse(d.slice(HEADER_LEN..)).expect("valid");
                    p.messages().map(|(_, m)| m.len()).sum::<usize>()
                })
            },
        );
    }
    g.finish();
}

fn region_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("regions");
    for topics in [10u64, 10_000] {
        let mut table = RegionTable::new(GroupRange::default());
        // 20 nodes in 5 regions, each region subscribing a fifth of the topics plus topic 0.
        for n in 0..20u64 {
            let sig = Signature::new(
                (0..topics)
                    .filter(|t| t % 5 == n % 5 || *t == 0)
                    .map(TopicId),
            );
            table.set_member(NodeId(n), &sig);
        }
        g.bench_with_input(
            BenchmarkId::new("regions_for_topic", topics),
            &table,
            |b, t| {
                let mut i = 0u64;
                b.iter(|| {
                    i = (i + 7919) % topics;
                    black_box(t.regions_for_topic(TopicId(i)).len())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, codec, region_lookup);
criterion_main!(benches);
