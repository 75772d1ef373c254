//! Quicksilver's shared vocabulary.
//!
//! This crate owns the types every protocol core speaks: identifiers ([`NodeId`], [`TopicId`],
//! [`RegionId`], [`ClusterId`]), wrapping sequence numbers ([`Seq`]), virtual time ([`Instant`]),
//! the seeded portable random generator ([`Prng`]), the wire format ([`wire`]) and the
//! [`Driven`] trait through which both the real runtime and the simulator drive a sans-IO core.
//!
//! It does no I/O, reads no clock and draws no OS randomness: everything here is deterministic,
//! so the simulator replays a seed bit for bit.
#![forbid(unsafe_code)]

mod driven;
mod id;
mod prng;
mod seq;
mod time;
pub mod wire;

pub use driven::{Driven, SocketCommand, TrafficClass, Transmit};
pub use id::{ClusterId, NodeId, RegionId, TopicId};
pub use prng::Prng;
pub use seq::Seq;
pub use time::Instant;
