//! The gossip plane: a generic runtime for gossip objects (MiCA-style: each object says whom it
//! gossips with, how often, and how it merges), with correlated bundling of all objects that
//! chose the same peer in a round into one datagram; membership and failure detection
//! (SWIM/Lifeguard) and subscription dissemination (scuttlebutt). Seeds `000_*`, `001_*`,
//! `003_*`, `004_*` (MiCA), DESIGN.md §5.
//!
//! # What it owns
//!
//! * [`GossipObject`] — the object contract: [`GossipObject::view`] (a distribution over the
//!   peer list), [`GossipObject::rate`] (every how many rounds), [`GossipObject::write`] (a
//!   payload for a peer within a byte budget, per [`Priority`]) and [`GossipObject::handle`]
//!   (merge).
//! * [`GossipNode`] — the sans-IO runtime implementing [`qs_transport::Driven`]: rounds,
//!   correlated peer selection, one datagram per peer per flush (liveness sections first, bulk
//!   sections sharing the rest of the MTU), counters per object.
//! * [`Membership`] — SWIM + Lifeguard failure detection and membership ([`MembershipEvent`]).
//! * [`Subscriptions`] — each node's signature (sorted topic ids), address and version,
//!   replicated everywhere by push-pull anti-entropy ([`sync`]).
//! * [`Reachability`] — which members do not hear which region's multicast
//!   ([`ReachabilityEvent`], [`Reachability::unreachable_members`]), for unicast fallback.
//! * [`Health`] — Astrolabe-style health: per-node [`NodeHealth`] records (bounded), region
//!   aggregates and their cluster roll-up ([`Aggregate`]).
//!
//! # How the node uses it, and what it does not do (yet)
//!
//! The node core (`quicksilver::core`) runs a [`GossipNode`] on its unicast socket: members
//! that [`Membership`] declares down or gone leave the region table (recovery rings re-form),
//! [`Subscriptions`] records back up the multicast announcements (`qs-discovery`, whose peers
//! also seed gossip), the node publishes its [`NodeHealth`] every half second, and it reports
//! fresh multicast data to [`Reachability`]; senders copy data by unicast to members reported
//! deaf to a region. Not done: [`Health`] aggregates one level (region → cluster) and only as
//! exactly as each region's members hold all of that region's records (`records_max`);
//! [`Reachability`] judges a region by data heard while the owner says senders are active (no
//! active probing, no per-sender silence). No encryption or authentication: any node of the
//! cluster id is trusted.
//!
//! # Calling contract
//!
//! As [`qs_transport::Driven`]: feed datagrams, call `handle_timeout` at `poll_timeout`, pull
//! `poll_transmit` until `None`, then drain [`GossipNode::poll_event`]. All datagrams are
//! unicast, [`qs_transport::TrafficClass::Control`]. `now` is always passed in; randomness
//! comes from the node's seeded [`qs_transport::Prng`].
//!
//! # Wire format
//!
//! See [`wire`]: the common 24-byte header with kind `PacketKind::Gossip`, then sections
//! `tag u8 | priority u8 | len u16 | payload`.
#![forbid(unsafe_code)]

mod epidemic;
pub mod health;
pub mod membership;
pub mod node;
pub mod object;
pub mod peers;
pub mod reachability;
pub mod subscriptions;
pub mod sync;
pub mod wire;

pub use health::{
    Aggregate, Health, HealthConfig, HealthRecord, HealthStats, Metric, MetricSummary, NodeHealth,
    RegionAggregate,
};
pub use membership::{
    incarnation_newer, Member, Membership, MembershipConfig, MembershipEvent, MembershipStats,
    Status,
};
pub use node::{AddObjectError, GossipConfig, GossipEvent, GossipNode, NodeStats, ObjectStats};
pub use object::{GossipObject, Outbox, Peer, PeerView};
pub use peers::{PeersConfig, PeersStats};
pub use reachability::{
    Reachability, ReachabilityConfig, ReachabilityEvent, ReachabilityReport, ReachabilityStats,
};
pub use subscriptions::{
    SubscriptionRecord, Subscriptions, SubscriptionsConfig, SubscriptionsStats,
};
pub use wire::Priority;
