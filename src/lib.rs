//! Quicksilver: reliable, high-throughput publish/subscribe over IP multicast on a LAN.
//!
//! Applications publish messages on named topics; every node subscribed to a topic receives
//! them. Topics are mapped onto **regions** (sets of nodes with equal subscriptions), and a
//! publish is one IP multicast per region, so thousands of topics per node cost table entries,
//! not protocol instances. Nodes find each other by themselves (multicast announcements on a
//! well-known control group, then a gossip plane): nobody lists members by hand. Losses are
//! repaired by the receivers among themselves (QuickSilver's token ring per region), not by
//! the sender.
//!
//! ```
//! use quicksilver::Node;
//!
//! # fn main() -> Result<(), quicksilver::Error> {
//! let node = Node::builder().cluster("example").build()?; // loopback by default
//! let prices = node.subscribe("prices")?;
//! // Every node subscribing "prices" gets this, the publishing node included.
//! node.publish("prices", "EURUSD 1.0842")?;
//! let msg = prices.recv()?;
//! assert_eq!(&msg.payload[..], b"EURUSD 1.0842");
//! println!("{} from {}: {:?}", msg.topic, msg.sender, msg.payload);
//! node.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! The [`guide`] walks through a real application: several nodes, a [`Publisher`] per topic,
//! the async API under tokio, events, metrics and a real LAN. The `examples/` directory has
//! runnable programs (`basic`, `tokio`, `market_data`), and the `qs` tool
//! (package `quicksilver-cli`) does pub/sub by hand, `qs doctor` and `qs top`.
//!
//! # Guarantees
//! Reliable mode (the default): every message a live sender publishes on a topic after a
//! subscription to it has reached the sender (one discovery round: milliseconds on a LAN) is
//! delivered exactly once to every subscriber that stays subscribed and alive, in per-sender
//! order, under loss, bursts, duplication and reordering. Nothing is dropped silently: a full
//! send queue blocks [`Node::publish`] (waits in [`Node::publish_async`], makes
//! [`Node::try_publish`] return [`PublishError::WouldBlock`]); a full subscription queue stalls
//! the node's receive windows and through the ring the senders. What truly cannot be delivered
//! (its sender died before any member had it) is counted in [`Stats`] and reported as a
//! [`NodeEvent::Gap`]. Best-effort mode ([`NodeBuilder::reliable`]`(false)`) reports holes
//! as gaps instead of repairing them.
//!
//! Work in progress: delivery across membership change (a sender restarting with the same id,
//! a paused sender, a subscription change mid-stream) is being hardened; see the project's
//! open issues before relying on it.
//!
//! # Blocking and async
//! Every receive and publish has a blocking form and an async one, on the same queues:
//! [`Subscription::recv`] / [`Subscription::recv_async`] (and [`Subscription`] is a
//! [`futures_core::Stream`]), [`Node::publish`] / [`Node::publish_async`], [`Publisher`] for a
//! topic declared once, [`Node::events`] for [`NodeEvent`]s. The async forms need no
//! particular runtime: the node runs on its own thread and wakes futures through their
//! wakers.
//!
//! # Observability
//! [`Node::stats`] returns every counter (serde `Serialize`); [`NodeBuilder::metrics`] serves
//! them as Prometheus text ([`metrics`]); [`Node::cluster_map`] is the gossip plane's view of
//! members, regions and their health; log events go through `tracing` with structured
//! fields.
//!
//! # Structure
//! [`core::NodeCore`] is the sans-IO node (discovery, regions, packing, fragmentation,
//! recovery, gossip); [`Node`] runs it on one thread with the `qs-runtime` event loop. The
//! simulator (`qs-sim`) drives the same core.
#![forbid(unsafe_code)]

pub mod core;
mod events;
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
pub mod metrics;
mod node;
mod payload;
mod publisher;

pub use events::{Events, NodeEvent};
pub use node::{
    KeyControl, Message, Node, NodeBuilder, PeerInfo, PublishError, RecvError, Stats, Subscription,
};
pub use payload::PayloadArena;
pub use publisher::Publisher;
pub use qs_recovery::LecConfig;
pub use qs_runtime::{RuntimeStats, SocketBuffers};
pub use qs_transport::wire::{ClusterKey, KeyFileError, KeyRing};
pub use qs_transport::{NodeId, RegionId, TopicId};

/// Errors starting or talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket could not be set up (address in use, no such interface, ...).
    #[error("socket setup failed")]
    Io(#[from] std::io::Error),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A topic name is empty or longer than 1,024 bytes.
    #[error("invalid topic name {0:?}: must be 1 to 1024 bytes")]
    InvalidTopic(String),
    /// The node has shut down.
    #[error("node is shut down")]
    Closed,
    /// A publish failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A receive returned no message.
    #[error(transparent)]
    Recv(#[from] RecvError),
}
