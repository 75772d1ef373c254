//! Handover markers: the cut a sender makes in its streams when its region table moves a
//! node from one region to another (a subscription change). A marker is a message on the
//! reserved topic [`TopicId::HANDOVER`] alone in its data packet, whose header carries
//! [`FLAG_HANDOVER`]; the moving node delivers the old region's stream up to the `Left`
//! marker and the new region's from the `Joined` marker, so every message of a topic it kept
//! comes exactly once and in order.

use crate::{NodeId, TopicId};

use super::{u32_at, u64_at, WireError};

/// Header flag: this data packet carries one handover marker and nothing else.
pub const FLAG_HANDOVER: u8 = 4;

/// Bytes of a marker's payload.
pub const HANDOVER_MARKER_LEN: usize = 13;

impl TopicId {
    /// Reserved for handover markers: applications can neither publish on it nor receive it.
    pub const HANDOVER: TopicId = TopicId(u64::MAX);
}

/// Which side of the cut a marker stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// In the stream of the region the node departs: everything before it is the node's.
    Left,
    /// In the stream of the region the node joined: everything after it is the node's.
    Joined,
}

/// A handover marker: `node`'s subscription record `version` moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoverMarker {
    /// Which side of the cut.
    pub kind: MarkerKind,
    /// The node that moved.
    pub node: NodeId,
    /// The version of its subscription record that moved it.
    pub version: u32,
}

impl HandoverMarker {
    /// The marker as a message payload.
    pub fn to_bytes(&self) -> [u8; HANDOVER_MARKER_LEN] {
        let mut b = [0u8; HANDOVER_MARKER_LEN];
        b[0] = match self.kind {
            MarkerKind::Left => 1,
            MarkerKind::Joined => 2,
        };
        b[1..9].copy_from_slice(&self.node.0.to_be_bytes());
        b[9..13].copy_from_slice(&self.version.to_be_bytes());
        b
    }

    /// Parses a marker's payload.
    pub fn parse(b: &[u8]) -> Result<HandoverMarker, WireError> {
        if b.len() != HANDOVER_MARKER_LEN {
            return Err(WireError::Malformed);
        }
        let kind = match b[0] {
            1 => MarkerKind::Left,
            2 => MarkerKind::Joined,
            _ => return Err(WireError::Malformed),
        };
        Ok(HandoverMarker {
            kind,
            node: NodeId(u64_at(b, 1)),
            version: u32_at(b, 9),
        })
    }
}

impl super::DataPacket {
    /// The handover marker the packet carries, if it is one and well formed.
    pub fn marker(&self) -> Option<HandoverMarker> {
        let (topic, payload) = self.messages().next()?;
        (topic == TopicId::HANDOVER)
            .then(|| HandoverMarker::parse(&payload).ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_bad_ones_are_refused() {
        for kind in [MarkerKind::Left, MarkerKind::Joined] {
            let m = HandoverMarker {
                kind,
                node: NodeId(u64::MAX - 3),
                version: 77,
            };
            assert_eq!(HandoverMarker::parse(&m.to_bytes()), Ok(m));
        }
        let mut b = HandoverMarker {
            kind: MarkerKind::Left,
            node: NodeId(1),
            version: 1,
        }
        .to_bytes();
        assert!(HandoverMarker::parse(&b[..12]).is_err());
        b[0] = 3;
        assert!(HandoverMarker::parse(&b).is_err());
    }
}
