//! The gossip plane: a generic runtime for gossip objects (MiCA-style: each object says whom it
//! gossips with, how often, and how it merges), with correlated bundling of all objects that
//! chose the same peer in a round into one datagram; membership and failure detection
//! (SWIM/Lifeguard), subscription and region dissemination (scuttlebutt), health aggregation
//! (Astrolabe) and multicast reachability probing. Seeds `000_*`, `001_*`, `003_*`, `004_*`.
//!
//! Nothing is implemented yet: until it is, membership comes from the multicast announce
//! bootstrap in `qs-membership`, which keeps working beside the gossip plane once it exists.
