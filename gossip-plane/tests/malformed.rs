#![allow(missing_docs)]
//! Arbitrary section payloads for the health and reachability objects never panic a node:
//! they are counted as decode errors (or merged if they happen to be well formed).

mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use qs_gossip::health::HEALTH_TAG;
use qs_gossip::reachability::REACHABILITY_TAG;
use qs_gossip::wire::{self, Priority};
use qs_gossip::GossipNode;
use qs_transport::wire::{Seal, HEADER_LEN};
use qs_transport::{ClusterId, Driven, Instant, NodeId};

fn datagram(tag: u8, priority: Priority, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + 4 + payload.len()];
    wire::write_header(&mut buf, ClusterId(7), NodeId(12345)).unwrap();
    buf[HEADER_LEN] = tag;
    buf[HEADER_LEN + 1] = priority as u8;
    buf[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    buf[HEADER_LEN + 4..].copy_from_slice(payload);
    let len = Seal::new()
        .seal(&mut buf, HEADER_LEN + 4 + payload.len())
        .unwrap();
    buf.truncate(len);
    buf
}

fn feed(node: &mut GossipNode, tag: u8, bulk: bool, payload: &[u8]) {
    let p = if bulk {
        Priority::Bulk
    } else {
        Priority::Liveness
    };
    let d = datagram(tag, p, payload);
    node.handle_datagram(Instant(1_000_000_000), addr(5), Bytes::from(d));
    node.check_invariants();
    let name = if tag == HEALTH_TAG {
        "health"
    } else {
        "reachability"
    };
    let s = node.stats();
    let o = s.objects.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(o.sections_received, 1);
    while node.poll_event().is_some() {}
}

/// A well-formed-looking prefix (counts of 1) followed by arbitrary bytes reaches deeper
/// into the decoders than uniform noise.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(|mut v| {
            v.insert(0, 1);
            v
        }),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(|mut v| {
            v.splice(0..0, [0u8, 1, 0, 0, 0, 0, 0, 0, 0, 9]);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_health_payload_is_merged_or_counted_never_a_panic(p in payloads(), bulk in any::<bool>()) {
        let mut node = GossipNode::new(config(0, 3), Instant::ZERO);
        feed(&mut node, HEALTH_TAG, bulk, &p);
    }

    #[test]
    fn any_reachability_payload_is_merged_or_counted_never_a_panic(p in payloads(), bulk in any::<bool>()) {
        let mut node = GossipNode::new(config(0, 3), Instant::ZERO);
        feed(&mut node, REACHABILITY_TAG, bulk, &p);
    }
}

#[test]
fn a_truncated_health_payload_is_one_decode_error() {
    let mut node = GossipNode::new(config(0, 3), Instant::ZERO);
    feed(&mut node, HEALTH_TAG, true, &[1, 1, 0]);
    let s = node.stats();
    let o = s.objects.iter().find(|(n, _)| *n == "health").unwrap().1;
    assert_eq!(o.decode_errors, 1);
    assert!(node.health().is_empty());
}
