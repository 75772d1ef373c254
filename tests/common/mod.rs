//! Helpers shared by the simulator tests: one builder per forged packet kind (so the
//! hostile-input tests and the repair-limit tests send the same bytes), and the per-event
//! step that collects a node's deliveries and checks its invariants.

// Each test file compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use bytes::Bytes;
use qs_transport::wire::{self, Header, PacketKind, RepairRequest, SeqRange, HEADER_LEN};
use qs_transport::{ClusterId, NodeId, RegionId, Seq};
use quicksilver::core::{Event, NodeCore};

/// A keyless repair request for packets `0..1000` of node 100's stream `(region, epoch)` (the
/// publisher of these tests), in `who`'s name (its source address is whatever the test sends
/// it from).
pub fn repair_request(cluster: ClusterId, who: NodeId, region: RegionId, epoch: u64) -> Bytes {
    let mut buf = vec![0u8; 512];
    Header::new(PacketKind::RepairRequest, cluster, who)
        .write(&mut buf)
        .unwrap();
    let req = RepairRequest {
        region,
        sender: NodeId(100),
        epoch,
        ranges: vec![SeqRange {
            first: Seq(0),
            count: 1000,
        }],
    };
    let n = HEADER_LEN + req.write(&mut buf[HEADER_LEN..]).unwrap();
    let n = wire::Seal::new().seal(&mut buf, n).unwrap();
    Bytes::copy_from_slice(&buf[..n])
}

/// After a simulator event at `node`: appends the payloads it delivered to `log` (other
/// events are dropped) and checks its invariants.
pub fn collect_deliveries(node: &mut NodeCore, log: &mut Vec<Bytes>) {
    while let Some(e) = node.poll_event() {
        if let Event::Delivered(d) = e {
            log.push(d.payload);
        }
    }
    node.check_invariants();
}
