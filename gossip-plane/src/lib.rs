//! The gossip plane: a generic runtime for gossip objects (MiCA-style: each object says whom it
//! gossips with, how often, and how it merges), with correlated bundling of all objects that
//! chose the same peer in a round into one datagram; membership and failure detection
//! (SWIM/Lifeguard) and subscription dissemination (scuttlebutt). Seeds `000_*`, `001_*`,
//! `003_*`, `004_*` (MiCA), DESIGN.md §5.
//!
//! # What it owns
//!
//! * [`GossipObject`] — the object contract: [`GossipObject::view`] (a described distribution
//!   over the live members: [`PeerView`]), [`GossipObject::rate`] (every how many rounds),
//!   [`GossipObject::write`] (a payload for a peer within a byte budget, per [`Priority`]),
//!   [`GossipObject::handle`] (merge) and [`GossipObject::forget_peer`] (a quiet peer's state
//!   goes).
//! * [`GossipNode`] — the sans-IO runtime implementing [`qs_transport::Driven`]: rounds,
//!   correlated peer selection in O(1) (rejection sampling of MiCA's composite), one datagram
//!   per peer per flush (liveness sections first, bulk sections sharing the rest), the per-peer
//!   table with its reply budget and return-address cookies ([`peers`]), counters per object.
//! * [`Membership`] — SWIM + Lifeguard failure detection and membership ([`MembershipEvent`]),
//!   with RTT-based probe timeouts, nacks, serial incarnations, reaping.
//! * [`Subscriptions`] — each node's signature (sorted topic ids) and version, replicated
//!   everywhere by rumors and range-reconciliation anti-entropy ([`sync`]).
//! * [`Reachability`] — which members do not hear which region's multicast
//!   ([`ReachabilityEvent`], [`Reachability::unreachable_members`]), for unicast fallback;
//!   reports are taken only from their author.
//! * [`Health`] — Astrolabe-style health in two zones: per-node [`NodeHealth`] records within
//!   a region, region aggregates and their cluster roll-up ([`Aggregate`]) everywhere.
//!
//! # Scale and cost (issue 14)
//!
//! Every per-round cost is O(1) or O(region) in the cluster size: peers are sampled, not
//! listed; equal replicas exchange one root sum per table; a change costs O(depth) small
//! items. Tables are packed columns (about 20 bytes per member, 20 per subscription record).
//! Everything that grows from input is capped and counted, and expires: member tombstones
//! (`reap_after`), subscription records of non-members, health and reachability entries,
//! per-peer slots (`slot_ttl`). `qs-testbed sim-gossip --nodes N --json` measures it.
//!
//! # How the node uses it, and what it does not do (yet)
//!
//! The node core (`quicksilver::core`) runs a [`GossipNode`] on its unicast socket: members
//! that [`Membership`] declares down or gone leave the region table (recovery rings re-form),
//! [`Subscriptions`] records back up the multicast announcements (`qs-discovery`, whose peers
//! also seed gossip), the node publishes its [`NodeHealth`] every half second, and it reports
//! fresh multicast data to [`Reachability`]; senders copy data by unicast to members reported
//! deaf to a region, which tell them so with [`GossipNode::push_reachability_to`]. Not done:
//! [`Health`] aggregates one level (region → cluster); [`Reachability`] judges a region by
//! data heard while the owner says senders are active (no active probing, no per-sender
//! silence). No authentication: a node that can send to us with the cluster id can still
//! claim things about itself (a key is the node composition's business, issue 11); what the
//! plane refuses is anything claimed about *others* that it can check, and any reply larger
//! than the request to an address that did not prove it receives there.
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
