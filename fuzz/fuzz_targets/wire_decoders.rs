//! Every wire decoder on arbitrary bytes: the first byte picks the decoder, the rest is its
//! input. Decoders must return an error, never panic; a decoded value must re-encode.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use qs_transport::wire::{
    Announce, DataPacket, Fragment, Header, KeyRing, LecRepair, RepairRequest, Seal, SenderAck,
    StreamState, Token, TokenAck,
};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let mut out = vec![0u8; 70_000];
    match pick % 13 {
        0 => {
            let _ = Header::peek(body);
        }
        1 => {
            let _ = Seal::new().open(body);
        }
        2 => {
            let _ = Seal::keyed(KeyRing::generate([1; 32]), 0, 0).open(body);
        }
        3 => {
            if let Ok(a) = Announce::parse(body) {
                let _ = a.write(&mut out);
            }
        }
        4 => {
            if let Ok(p) = DataPacket::parse(Bytes::copy_from_slice(body)) {
                for (_, m) in p.messages() {
                    std::hint::black_box(m.len());
                }
            }
        }
        5 => {
            let _ = Fragment::parse(Bytes::copy_from_slice(body));
        }
        6 => {
            if let Ok(s) = StreamState::parse(body) {
                let _ = s.write(&mut out);
            }
        }
        7 => {
            if let Ok(t) = Token::parse(body) {
                let _ = t.write(&mut out);
            }
        }
        8 => {
            if let Ok(t) = TokenAck::parse(body) {
                let _ = t.write(&mut out);
            }
        }
        9 => {
            if let Ok(r) = RepairRequest::parse(body) {
                let _ = r.write(&mut out);
            }
        }
        10 => {
            if let Ok(a) = SenderAck::parse(body) {
                let _ = a.write(&mut out);
            }
        }
        11 => {
            if let Ok(l) = LecRepair::parse(body) {
                for e in l.entries() {
                    std::hint::black_box(e);
                }
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(body) {
                let _ = KeyRing::parse(s);
            }
        }
    }
});
