//! What the node core tells its owner ([`Event`], [`Delivery`]), why it refuses a publish
//! ([`PublishRefused`]) and new keys ([`KeysRefused`]).

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
    /// A sender is gone (failed or left) and its stream into `region` is over: everything the
    /// region's surviving members held of it was delivered first (the ring keeps repairing
    /// among them for `departed_grace`), what none of them had was reported as [`Event::Gap`].
    /// Comes after the stream's last delivery and gap.
    SenderLost {
        /// The sender.
        sender: NodeId,
        /// The stream's region.
        region: RegionId,
        /// The stream's epoch.
        epoch: u64,
        /// The last packet of the stream this node delivered or reported (`None`: none).
        last: Option<qs_transport::Seq>,
        /// Messages of the stream delivered to this node's application.
        delivered: u64,
        /// Packets of the stream reported lost.
        missed: u64,
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
    /// The topic is reserved ([`qs_transport::TopicId::HANDOVER`]).
    #[error("reserved topic")]
    ReservedTopic,
}

/// Why [`super::NodeCore::set_keys`] or [`super::NodeCore::add_key`] refused new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeysRefused {
    /// The node runs without a key; taking one changes its cluster id and datagram budget,
    /// which takes a new node.
    #[error("the node has no cluster key; start it with one")]
    Keyless,
    /// The keys name another cluster (a rotation keeps the cluster id).
    #[error("the keys are another cluster's")]
    OtherCluster,
    /// The key's epoch is not newer than every key the node holds.
    #[error("the key's epoch is not newer than the node's keys")]
    NotNewer,
    /// The node holds two keys already: a rotation is under way (wait for its retirement).
    #[error("a key rotation is under way")]
    RotationUnderway,
}
