//! `NodeCore::handle_datagram` fed sequences of well-sealed datagrams of every kind (data,
//! fragments, announces, stream states, tokens, token acks, repair requests, sender acks,
//! lateral repairs, gossip) with fuzzed bodies from four peers: no panic, invariants hold.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(data, None, true));
