//! Loss detection and recovery.
//!
//! * [`ReceiveWindow`] — the receiver's view of one (sender, region) stream: packets back in
//!   order, duplicates dropped; holes reported as gaps after a wait (best effort) or held until
//!   repaired (reliable).
//! * [`Ring`] — QuickSilver's regional recovery protocol (seed `002_*`, design section 4) for
//!   one region view: the token that circulates the members partition by partition, caretaker
//!   assignment, which peer each missing packet is pulled from, the stability prefix the
//!   leader acknowledges to senders and the cleanup point that frees caretakers' caches.
//! * [`Lec`] — lateral error correction (Ricochet, design section 4): per region, every `r`
//!   packets received become one XOR (or Reed–Solomon) repair for `c` random members, so most
//!   losses are rebuilt by peers within a bin's fill time; the ring stays the backstop.
//!
//! Everything here is sans-IO: `now` is an argument, the owner calls `handle_timeout` at the
//! deadline the value reports, and packets come out as values the owner encodes and sends.
//! Sequence numbers wrap ([`qs_transport::Seq`]); every comparison is circular.
#![forbid(unsafe_code)]

pub mod lec;
mod ring;
mod window;

pub use lec::{xor_into, Lec, LecConfig, LecError, LecStats, RepairIntent, LEC_MAX_TARGETS};
pub use qs_transport::wire::PacketId;
pub use ring::{
    LocalStreams, Progress, Ring, RingAction, RingConfig, RingStats, SlowReceiver, View, Visit,
};
pub use window::{Arrival, Popped, ReceiveWindow};
