//! A keyed `NodeCore` fed datagrams of every kind sealed with its key (fuzzed bodies reach
//! every decoder) or, when the input's first byte is odd, raw bytes (all of which must fail
//! authentication without a panic).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use qs_transport::wire::KeyRing;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    common::run(rest, Some(KeyRing::generate([5; 32])), mode % 2 == 0);
});
