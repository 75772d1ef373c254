//! Micro-benchmarks of lateral error correction: the XOR kernel and the Reed–Solomon parity
//! kernels (GB/s of data coded), and the whole `Lec` core per packet (bins, firing, encoding
//! every repair), beside the datagram rate they must sustain.
//!
//! The budget they are measured against: 1 KB datagrams at 100,000 packets/s per receiver is
//! 0.1 GB/s of data. With r = 8 and c = 3 a receiver XORs each packet once into a bin and
//! copies c/r of a datagram per packet into repairs it sends, and decodes about as many as it
//! receives, so the XOR kernel must sustain roughly 0.2 GB/s; parity shards (m = 3 over 8
//! packets) cost m multiply-adds per data byte on the bins that carry them.
#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qs_recovery::{xor_into, Lec, LecConfig, PacketId};
use qs_transport::{Instant, NodeId, Prng, RegionId, Seq};
use reed_solomon_erasure::galois_8::ReedSolomon;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut p = Prng::new(seed);
    (0..len).map(|_| p.next_u64() as u8).collect()
}

fn xor(c: &mut Criterion) {
    let mut g = c.benchmark_group("lec_xor");
    for len in [1024usize, 1472] {
        let src = random(len, 1);
        let mut dst = random(len, 2);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("xor_into", len), &src, |b, s| {
            b.iter(|| xor_into(black_box(&mut dst), black_box(s)))
        });
    }
    g.finish();
}

fn reed_solomon(c: &mut Criterion) {
    let mut g = c.benchmark_group("lec_reed_solomon");
    let (r, len) = (8usize, 1024usize);
    let data: Vec<Vec<u8>> = (0..r).map(|i| random(len, i as u64)).collect();
    g.throughput(Throughput::Bytes((r * len) as u64));
    for m in [2usize, 3] {
        let rs = ReedSolomon::new(r, m).expect("codec");
        let mut parity = vec![vec![0u8; len]; m];
        g.bench_function(BenchmarkId::new("encode_8_data", m), |b| {
            b.iter(|| rs.encode_sep(black_box(&data), black_box(&mut parity)))
        });
        rs.encode_sep(&data, &mut parity).expect("encode");
        let all: Vec<Option<Vec<u8>>> = data.iter().chain(&parity).cloned().map(Some).collect();
        g.bench_function(BenchmarkId::new("rebuild_m_of_8", m), |b| {
            b.iter(|| {
                let mut shards = all.clone();
                for s in shards.iter_mut().take(m) {
                    *s = None;
                }
                rs.reconstruct_data(black_box(&mut shards))
                    .expect("enough shards");
                shards
            })
        });
    }
    g.finish();
}

/// The core per packet at the full rate of fire: store, bin, fire (XOR to c = 3 members, or
/// m = 3 parity shards to one), encode each repair into a buffer. 1 KB packets from 4 senders.
fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("lec_core");
    let packets: Vec<(PacketId, Bytes)> = (0..4096u32)
        .map(|k| {
            let id = PacketId {
                sender: NodeId(u64::from(k % 4)),
                epoch: 0,
                seq: Seq(k / 4 + 1),
            };
            (id, Bytes::from(random(1024, u64::from(k))))
        })
        .collect();
    let members: Vec<NodeId> = (100..108).map(NodeId).collect();
    for (name, parity) in [("xor_r8_c3", 1usize), ("parity_r8_m3", 3)] {
        let config = LecConfig {
            adaptive: false,
            stagger: 1,
            parity_shards: parity,
            parity_targets: 1,
            parity_from_missing: 0.0,
            ..LecConfig::default()
        };
        g.throughput(Throughput::Elements(packets.len() as u64));
        g.bench_function(BenchmarkId::new("on_packet_fire_encode", name), |b| {
            let mut buf = vec![0u8; 1500];
            b.iter(|| {
                let mut lec = Lec::new(config.clone(), NodeId(100), RegionId(1), 7);
                lec.set_view(&members);
                let mut bytes = 0;
                for (k, (id, p)) in packets.iter().enumerate() {
                    lec.on_packet(Instant(k as u64 * 10_000), *id, p.clone());
                    while let Some(i) = lec.poll_repair() {
                        bytes += lec.encode(&i, &mut buf).expect("room");
                    }
                }
                bytes
            })
        });
    }
    g.finish();
}

criterion_group!(benches, xor, reed_solomon, core);
criterion_main!(benches);
