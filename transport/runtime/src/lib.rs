//! The real runtime: one node's UDP sockets and the mio event loop that drives any
//! [`Driven`](qs_transport::Driven) core, plus the raw UDP multicast baseline ([`raw`]) that
//! benchmarks compare against.
//!
//! # What it owns
//!
//! - Three non-blocking UDP sockets per [`Runtime`], opened with socket2 and wrapped for mio:
//!   - the **unicast** socket, bound to `interface:unicast_port`. *Every* datagram goes out of
//!     it, so a packet's source address is the node's unicast address
//!     ([`Runtime::local_addr`]); it also receives unicast replies. It carries
//!     `IP_MULTICAST_IF = interface`, `IP_MULTICAST_TTL = ttl`, `IP_MULTICAST_LOOP`;
//!   - the **control** socket, bound to `0.0.0.0:control_port`, and the **data** socket, bound
//!     to `0.0.0.0:data_port`. Both set `SO_REUSEADDR`, `SO_REUSEPORT` (several nodes on one
//!     host share the ports) and `IP_MULTICAST_ALL = 0`, so each receives only the groups *it*
//!     joined, not every group any socket on the host joined for that port.
//! - Socket buffers: requested sizes, `SO_*BUFFORCE` when the kernel caps them, a warning
//!   naming the sysctl when even that fails, and the outcome in [`Runtime::socket_buffers`].
//! - The event loop, [`Runtime::turn`]: one `epoll_wait`, one clock read, `recvmmsg` batches
//!   under a budget (control socket first, then unicast, then data), timers, membership
//!   commands, and pull-based sending with `sendmmsg` in class order Control > Repair > Data
//!   (with an anti-starvation turn for lower classes when the socket only takes part of a
//!   batch).
//! - Loop measurements and socket counters in [`RuntimeStats`].
//!
//! # What it does not do
//!
//! No protocol: no parsing, no reliability, no retransmission, no pacing and no
//! congestion control; those belong to the core. No threads: the caller owns the loop and its
//! thread. IPv4 only. Linux only (`recvmmsg`, `sendmmsg`, `IP_MULTICAST_ALL`).
//!
//! # Calling contract
//!
//! Create one [`Runtime`] per node and call [`Runtime::turn`] in a loop on one thread, with the
//! same core each time. Between turns the caller may feed the core (publishes, commands from
//! other threads); the next turn first applies the core's commands and sends what it has, then
//! waits. Other threads interrupt the wait through [`Runtime::waker`]; the turn then reports
//! [`Turn::woken`] so the caller drains its own channels. After the wait, the core sees the
//! [`Driven`](qs_transport::Driven) order: datagrams, then `handle_timeout` if due, then
//! `poll_command`, then `poll_transmit`, all with one `now` read once after the wait
//! ([`Runtime::now`], nanoseconds since the runtime was created). Before the wait, a turn
//! applies `poll_command` and `poll_transmit` with its own reading, so work the caller gave
//! the core between turns leaves at once instead of after the wait. Times handed to the core
//! never go backwards.
//!
//! Received datagrams are zero-copy slices of an arena of `batch * recv_slot_bytes` bytes: a
//! slice the core keeps pins its whole arena, so a core that holds datagrams for long (e.g. a
//! receive window) should copy the few it keeps. Arenas are reused once none of their slices
//! is alive (a few are kept for that), so receiving allocates nothing in steady state;
//! [`RuntimeStats::recv_arena_allocations`] counts the fresh ones.
//!
//! Network trouble never fails a turn and never panics: truncated datagrams, non-IPv4 sources,
//! send errors (`ENETUNREACH`, `EPERM`, ...), failed joins and invalid transmits are counted in
//! [`RuntimeStats`], dropped, and logged at most once a second per kind.
//!
//! Loopback note: on `lo`, multicast reaches local sockets even with `multicast_loop = false`
//! (the packet leaves through the loopback device and comes back), so tests cannot use the
//! loop flag to hide a node's own traffic.

mod arena;
mod config;
pub mod os;
pub mod raw;
mod runtime;
mod sendq;
mod sys;

pub use config::{RuntimeConfig, SocketBuffers};
pub use runtime::{ReceiveLoad, Runtime, RuntimeStats, Turn, SLOW_TURN_NANOS};

/// Nanoseconds of the kernel's `CLOCK_MONOTONIC`, the clock [`raw`] stamps messages with.
/// Shared by every process and network namespace on one kernel, so one-way latency can be
/// computed across processes.
pub fn monotonic_nanos() -> u64 {
    sys::monotonic_nanos()
}

#[cfg(test)]
mod tests;
