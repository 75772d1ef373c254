//! The seal's cost per datagram: keyless (CRC-32) against keyed (AES-256-GCM-SIV from
//! aws-lc-rs, 16-byte tag, plus the replay window for control kinds), and the MACs it was
//! chosen over: GMAC (AES-128-GCM from `ring` with the datagram as associated data and no
//! plaintext), HMAC-SHA-256, BLAKE3's keyed hash (the MAC before it) and RustCrypto's
//! AES-256-GCM-SIV, at a small control datagram's size and at MTU size. Seal and open are measured separately.
#![allow(missing_docs)] // criterion_group! generates undocumented functions.

use std::hint::black_box;

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::Aes256GcmSiv;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qs_transport::wire::{Header, KeyRing, PacketKind, Seal, HEADER_LEN};
use qs_transport::{ClusterId, NodeId};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

fn datagram(size: usize, kind: PacketKind, seal: &mut Seal) -> Vec<u8> {
    let mut buf = vec![0x5au8; size + seal.overhead()];
    Header::new(kind, ClusterId(1), NodeId(2))
        .write(&mut buf)
        .expect("room");
    let len = seal.seal(&mut buf, size).expect("sealed");
    buf.truncate(len);
    buf
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    let keys = KeyRing::generate([7; 32]);
    let gcm = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).expect("key"));
    for size in [64usize, 1400] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size + 64];
        Header::new(PacketKind::Data, ClusterId(1), NodeId(2))
            .write(&mut buf)
            .expect("room");
        let mut crc = Seal::new();
        g.bench_function(BenchmarkId::new("crc32_seal", size), |b| {
            b.iter(|| crc.seal(black_box(&mut buf), size).expect("sealed"))
        });
        let mut keyed = Seal::keyed(keys.clone(), 0, 0);
        g.bench_function(BenchmarkId::new("gcm_siv_seal", size), |b| {
            b.iter(|| keyed.seal(black_box(&mut buf), size).expect("sealed"))
        });
        g.bench_function(BenchmarkId::new("gmac_ring_seal", size), |b| {
            b.iter(|| {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&black_box(5u64).to_be_bytes());
                let aad = Aad::from(&buf[..size]);
                gcm.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, &mut [])
                    .expect("sealed")
            })
        });

        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        g.bench_function(BenchmarkId::new("hmac_sha256_ring_seal", size), |b| {
            b.iter(|| ring::hmac::sign(&hmac, black_box(&buf[..size])))
        });
        // The two AES-256-GCM-SIV implementations measured: RustCrypto (pure Rust with
        // intrinsics) and aws-lc-rs (assembly; the one the seal uses).
        let siv = Aes256GcmSiv::new(&[7u8; 32].into());
        g.bench_function(BenchmarkId::new("gcm_siv_rustcrypto_raw", size), |b| {
            b.iter(|| {
                siv.encrypt_in_place_detached(&[5u8; 12].into(), black_box(&buf[..size]), &mut [])
                    .expect("tag")
            })
        });
        let aws = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM_SIV, &[7u8; 32])
                .expect("key"),
        );
        g.bench_function(BenchmarkId::new("gcm_siv_awslc_raw", size), |b| {
            b.iter(|| {
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key([5u8; 12]);
                let aad = aws_lc_rs::aead::Aad::from(black_box(&buf[..size]));
                aws.seal_in_place_separate_tag(nonce, aad, &mut [])
                    .expect("tag")
            })
        });
        let bkey = [7u8; 32];
        g.bench_function(BenchmarkId::new("blake3_raw", size), |b| {
            b.iter(|| blake3::keyed_hash(&bkey, black_box(&buf[..size])))
        });

        let plain = datagram(size, PacketKind::Data, &mut Seal::new());
        g.bench_function(BenchmarkId::new("crc32_open", size), |b| {
            let mut rx = Seal::new();
            b.iter(|| rx.open(black_box(&plain)).expect("opens").1.len())
        });
        let data = datagram(size, PacketKind::Data, &mut Seal::keyed(keys.clone(), 0, 0));
        g.bench_function(BenchmarkId::new("gcm_siv_open_data", size), |b| {
            let mut rx = Seal::keyed(keys.clone(), 0, 0);
            b.iter(|| rx.open(black_box(&data)).expect("opens").1.len())
        });
        // Control kinds pass the replay window too: a fresh counter per datagram.
        let mut tx = Seal::keyed(keys.clone(), 0, 0);
        let control: Vec<Vec<u8>> = (0..4096)
            .map(|_| datagram(size.max(HEADER_LEN + 8), PacketKind::Token, &mut tx))
            .collect();
        g.bench_function(BenchmarkId::new("gcm_siv_open_control", size), |b| {
            let mut rx = Seal::keyed(keys.clone(), 0, 0);
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % control.len();
                if i == 0 {
                    rx = Seal::keyed(keys.clone(), 0, 0);
                }
                rx.open(black_box(&control[i])).map(|(_, b)| b.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
