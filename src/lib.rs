//! Quicksilver: reliable, high-throughput publish/subscribe over IP multicast on a LAN.
//!
//! Applications publish messages on named topics; every node subscribed to a topic receives
//! them. Topics are mapped onto **regions** (sets of nodes with equal subscriptions), and a
//! publish is one IP multicast per region, so thousands of topics per node cost table entries,
//! not protocol instances. Nodes find each other by themselves (multicast announcements on a
//! well-known control group): nobody lists members by hand.
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
//! # Guarantees today
//! Messages are delivered at most once and in per-sender order; packets lost on the network
//! are **counted as gaps** ([`Stats`]) but not yet repaired (the QSM recovery protocol will make
//! delivery complete). Nothing is dropped silently: a full send queue blocks
//! [`Node::publish`] (or makes [`Node::try_publish`] return [`PublishError::WouldBlock`]); a
//! subscription whose queue overflows counts every message it lost.
//!
//! # Structure
//! [`core::NodeCore`] is the sans-IO node (discovery, regions, packing, fragmentation, order
//! and gap accounting); [`Node`] runs it on one thread with the `qs-runtime` event loop. The
//! simulator (`qs-sim`) drives the same core.
#![forbid(unsafe_code)]

pub mod core;
mod events;
pub mod metrics;
mod node;
mod publisher;

pub use events::{Events, NodeEvent};
pub use node::{
    Message, Node, NodeBuilder, PeerInfo, PublishError, RecvError, Stats, Subscription,
};
pub use publisher::Publisher;
pub use qs_runtime::{RuntimeStats, SocketBuffers};
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
