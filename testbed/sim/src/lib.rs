//! A deterministic discrete-event network simulator that drives real sans-IO cores.
//!
//! # What it owns
//!
//! [`Sim`] is a single-threaded world on a virtual clock ([`qs_transport::Instant`]): a
//! min-heap of `(time, seq, event)`, a set of nodes, and the network between them. Nodes are
//! real protocol values implementing [`qs_transport::Driven`], each with a unicast
//! [`std::net::SocketAddr`]. They join and leave multicast groups through
//! [`qs_transport::SocketCommand`]s; a datagram sent to a group reaches every node that joined
//! that group and port, **the sender included** (the real runtime enables `IP_MULTICAST_LOOP`;
//! cores filter their own packets). A unicast datagram reaches the node with that address, or
//! is counted as [`SimStats::unroutable`].
//!
//! The network ([`SimConfig`]) delays each copy per receiver by a base latency, a per-node extra
//! delay ([`Sim::set_node_delay`]) and uniform jitter; loses it by a per-receiver
//! [`LossModel`] (Bernoulli or Gilbert–Elliott bursts, each receiver with its own state and
//! random stream); duplicates it, flips one of its bits, or drops it across a
//! [`Sim::partition`]. Nodes can [`Sim::crash`] (forever) or [`Sim::freeze`] (a stalled process
//! whose socket buffer keeps what arrives). [`SimStats`] count everything per node, and the
//! observer passed to the `run_*` methods sees every event, network drops included.
//!
//! # Calling contract
//!
//! After every event it delivers to a node, and when a node is added or [`Sim::poke`]d, the
//! simulator drains it: it applies every `poll_command`, pulls `poll_transmit` (into a
//! [`TRANSMIT_BUF_LEN`]-byte buffer) until `None`, routes each datagram, then re-arms the
//! node's timer from `poll_timeout` (stale timer events are recognised by a generation number;
//! `handle_timeout` is called only when the deadline is due). Then the observer runs with
//! `&mut` access to the touched node, so a test can drain the core's own events and check its
//! oracles after every event. A test that calls a node's API directly (through
//! [`Sim::node_mut`]) calls [`Sim::poke`] afterwards.
//!
//! Ordering: with zero jitter and constant per-node delays, datagrams between a pair of nodes
//! arrive in the order they were sent (ties at one instant resolve by scheduling order).
//! Loss, partition, corruption and duplication are decided when a datagram is sent; a copy to
//! a crashed node is dropped when it arrives. The multicast loopback copy to the sender is
//! never lost, duplicated or corrupted and takes the base latency only.
//!
//! # What it does not do
//!
//! No wall clock, no OS randomness, no threads, no sockets, and no iteration over hash maps:
//! every decision follows from [`SimConfig::seed`] and the order of calls. It models no link
//! capacity, no queueing delay, no MTU and no clock skew. A crashed node stays down until
//! [`Sim::restart`] puts a new value (a new process) at its address; [`Sim::block`] cuts one
//! direction of one link (asymmetric reachability). It checks no protocol property itself: oracles
//! belong to the tests, which run them in the observer.
//!
//! # Replaying a seed
//!
//! Every random choice of the network comes from one [`qs_transport::Prng`] seeded with
//! [`SimConfig::seed`] (each node gets a forked stream; [`Sim::fork_prng`] seeds the nodes'
//! own generators from the same root). Tests take their seed from [`seed_from_env`] and print
//! [`replay_hint`] when they fail, so `SIM_SEED=<seed> cargo test <test>` replays the run;
//! [`Sim::trace_hash`] fingerprints it (same seed and same nodes give the same hash).
//!
//! # Example
//!
//! ```
//! use std::net::{SocketAddr, SocketAddrV4};
//! use bytes::Bytes;
//! use qs_sim::{EventKind, LossModel, Sim, SimConfig};
//! use qs_transport::{Driven, Instant, SocketCommand, TrafficClass, Transmit};
//!
//! const GROUP: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::new(239, 0, 0, 1), 5000);
//!
//! /// Joins the group, multicasts one byte when told to, counts what it receives.
//! #[derive(Default)]
//! struct Toy { joined: bool, to_send: u32, received: u32 }
//!
//! impl Driven for Toy {
//!     fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: Bytes) { self.received += 1 }
//!     fn handle_timeout(&mut self, _: Instant) {}
//!     fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
//!         (self.to_send > 0).then(|| {
//!             self.to_send -= 1;
//!             buf[0] = 42;
//!             Transmit { destination: GROUP.into(), class: TrafficClass::Data, len: 1 }
//!         })
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> { None }
//!     fn poll_command(&mut self) -> Option<SocketCommand> {
//!         (!std::mem::replace(&mut self.joined, true)).then_some(SocketCommand::JoinGroup(GROUP))
//!     }
//! }
//!
//! let seed = qs_sim::seed_from_env(1);
//! let loss = LossModel::Bernoulli(0.1);
//! let mut sim = Sim::new(SimConfig { seed, loss, ..SimConfig::default() });
//! let a = sim.add_node("10.0.0.1:9000".parse().unwrap(), Toy::default());
//! let b = sim.add_node("10.0.0.2:9000".parse().unwrap(), Toy::default());
//! sim.node_mut(a).to_send = 100;
//! sim.poke(a);
//! let mut lost = 0;
//! let idle = sim.run_until_idle(Instant(1_000_000_000), &mut |o| {
//!     if let EventKind::Dropped { .. } = o.event { lost += 1 }
//! });
//! assert!(idle, "{}", qs_sim::replay_hint(seed, "example"));
//! assert_eq!(sim.node(a).received, 100); // the loopback copy is never lost
//! assert_eq!(sim.node(b).received + lost, 100);
//! assert!(sim.stats(b).accounted());
//! ```
#![forbid(unsafe_code)]

mod config;
mod sim;
mod stats;

pub use config::{replay_hint, seed_from_env, LossModel, SimConfig};
pub use sim::{DropReason, EventKind, NodeIndex, Observation, Sim, TRANSMIT_BUF_LEN};
pub use stats::SimStats;
