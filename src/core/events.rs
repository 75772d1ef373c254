//! What the node core tells its owner ([`Event`], [`Delivery`]) and why it refuses a publish
//! ([`PublishRefused`]).

use bytes::Bytes;
use qs_transport::{NodeId, RegionId, TopicId};

/// A message handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The publishing node.
    pub sender: NodeId,
    /// The topic.
    pub topic: TopicId,
    /// The payload (a slice of the received datagram, or reassembled).
    pub payload: Bytes,
}

/// What the core tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived on a subscribed topic.
    Delivered(Delivery),
    /// Packets of a sender's stream were lost: in reliable mode only when the sender died
    /// before any member had them; in best-effort mode whenever a hole timed out.
    Gap {
        /// The sender.
        sender: NodeId,
        /// The stream's region.
        region: RegionId,
        /// Packets lost.
        missed: u32,
    },
    /// A peer was discovered.
    PeerUp(NodeId),
    /// A peer changed its subscriptions or address.
    PeerChanged(NodeId),
    /// A peer left or went silent.
    PeerDown(NodeId),
    /// A member of this node's region has been far behind a sender for a while (this node
    /// leads the region's ring). The sender slows down to it; nothing is lost.
    SlowReceiver {
        /// The stream's sender.
        sender: NodeId,
        /// The lagging member.
        member: NodeId,
        /// Packets it is behind.
        lag: u32,
    },
    /// This node fell too far behind `sender` for too long and, under the opt-in isolation
    /// policy (`RingConfig::isolate_slow`), stopped holding the region back: what it cannot
    /// keep up with is lost and reported as [`Event::Gap`].
    Isolated {
        /// The stream's sender.
        sender: NodeId,
        /// Packets it was behind.
        lag: u32,
    },
    /// This node caught up with `sender`'s stream again after isolating itself.
    Rejoined {
        /// The stream's sender.
        sender: NodeId,
    },
    /// Gossip: `member` does not hear `region`'s multicast; senders serve it by unicast.
    MulticastUnreachable {
        /// The member.
        member: NodeId,
        /// The region.
        region: RegionId,
    },
    /// Gossip: `member` hears `region`'s multicast again.
    MulticastReachable {
        /// The member.
        member: NodeId,
        /// The region.
        region: RegionId,
    },
}

/// Why [`NodeCore::publish`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefused {
    /// The send queue is full: retry once it drains.
    #[error("send queue full")]
    QueueFull,
    /// The message exceeds `max_message_bytes` (or 65,535 fragments).
    #[error("message too large")]
    TooLarge,
}
