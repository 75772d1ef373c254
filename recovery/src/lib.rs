//! Loss detection and recovery.
//!
//! * [`ReceiveWindow`] — the receiver's view of one (sender, region) stream: packets back in
//!   order, duplicates dropped; holes reported as gaps after a wait (best effort) or held until
//!   repaired (reliable).
//! * [`SendWindow`] — the sender's side of one stream: sequence numbers, and the packets kept
//!   until the region acknowledges them (bounded: a full window pushes back).
//! * [`Pacer`] — rate control through the ring: a sender follows the slowest member's receive
//!   rate while the region falls behind.
//! * [`Cache`] — the caretaker cache: the share of every stream this member serves to peers.
//! * [`Ring`] — QuickSilver's regional recovery protocol (seed `002_*`, design section 4) for
//!   one region view: the token that circulates the members partition by partition, caretaker
//!   assignment, which peer each missing packet is pulled from, the stability prefix the
//!   leader acknowledges to senders and the cleanup point that frees caretakers' caches. Its
//!   per-record arithmetic is the pure functions of [`merge`].
//! * [`RangeSet`] — runs of sequence numbers (NAK and lack lists) without per-number
//!   expansion.
//! * [`Lec`] — lateral error correction (Ricochet, design section 4): per region, every `r`
//!   packets received become one XOR (or Reed–Solomon) repair for `c` random members, so most
//!   losses are rebuilt by peers within a bin's fill time; the ring stays the backstop.
//!
//! Everything here is sans-IO: `now` is an argument, the owner calls `handle_timeout` at the
//! deadline the value reports, and packets come out as values the owner encodes and sends.
//! Sequence numbers wrap ([`qs_transport::Seq`]); every comparison is circular. Nothing here
//! builds a datagram's header or seals it: that is the node's job.
#![forbid(unsafe_code)]

mod cache;
pub mod lec;
pub mod merge;
mod pacing;
mod ranges;
mod ring;
mod send_window;
mod store;
mod window;

pub use cache::{Cache, CacheRefused};
pub use lec::{xor_into, Lec, LecConfig, LecError, LecStats, RepairIntent, LEC_MAX_TARGETS};
pub use merge::{Progress, StreamProgress, StreamUpdate};
pub use pacing::{PaceChange, Pacer, CALM_ROUNDS, MIN_PACING_RATE};
pub use qs_transport::wire::PacketId;
pub use ranges::RangeSet;
pub use ring::{Local, Ring, RingAction, RingConfig, RingStats, SlowReceiver, View};
pub use send_window::{Resend, SendWindow};
pub use store::BufferPool;
pub use window::{Arrival, Popped, ReceiveWindow, WindowState};
