//! Runtime configuration and the socket-buffer report.

use std::net::Ipv4Addr;
use std::time::Duration;

/// How to open and run a [`Runtime`](crate::Runtime). Build it with struct update syntax over
/// [`RuntimeConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The interface address: the unicast socket binds it, multicast is sent out of and joined
    /// on it. Default `127.0.0.1`.
    pub interface: Ipv4Addr,
    /// Port of the unicast socket; 0 picks an ephemeral port (see
    /// [`Runtime::local_addr`](crate::Runtime::local_addr)). Default 0.
    pub unicast_port: u16,
    /// Port of the control multicast socket (tokens, membership). Default 7400.
    pub control_port: u16,
    /// Port of the data multicast socket. Must differ from `control_port`. Default 7401.
    pub data_port: u16,
    /// Requested `SO_RCVBUF` of every socket, in bytes; 0 keeps the kernel default.
    /// Default 8 MiB. See [`Runtime::socket_buffers`](crate::Runtime::socket_buffers).
    pub recv_buffer_bytes: usize,
    /// Requested `SO_SNDBUF` of the unicast (sending) socket; 0 keeps the kernel default.
    /// Default 4 MiB.
    pub send_buffer_bytes: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg` call; also the bound on transmits queued in the
    /// runtime. Default 64.
    pub batch: usize,
    /// The largest datagram received, in bytes. Bigger ones are truncated by the kernel; the
    /// runtime counts them in [`RuntimeStats::truncated_drops`](crate::RuntimeStats) and never
    /// delivers them. Default 2048.
    pub recv_slot_bytes: usize,
    /// The largest datagram the core may write in one `poll_transmit` (the buffer it is
    /// handed). Default 65,507, the IPv4 UDP maximum; the pool is lazily backed by the OS, so
    /// only the bytes actually written cost memory.
    pub send_slot_bytes: usize,
    /// `IP_MULTICAST_TTL`. Default 1 (never leave the LAN).
    pub ttl: u32,
    /// `IP_MULTICAST_LOOP`: deliver our own multicast to sockets on this host (other nodes in
    /// the same host or process). Default true.
    pub multicast_loop: bool,
    /// `recvmmsg` batches per socket per turn before yielding to the other sockets, timers and
    /// sending; a socket still readable then is served first next turn. Default 8.
    pub recv_budget_batches: usize,
    /// `sendmmsg` batches per turn before yielding to receiving. Default 8.
    pub send_budget_batches: usize,
    /// Busy-poll idle strategy (like Aeron's spinning idle strategies): `Some(spin)` makes
    /// every wait first poll the sockets without blocking (`epoll_wait` with a zero timeout,
    /// `sched_yield` between polls), again and again, for up to `spin`, and only then
    /// block in `epoll_wait` for the rest of the wait. `Duration::MAX` never blocks (Aeron's
    /// `BusySpinIdleStrategy`); a few hundred microseconds catches the next message of a
    /// steady stream without burning a core while the node is idle (its `BackoffIdleStrategy`).
    ///
    /// It removes the wake-up of a sleeping thread (tens of microseconds on a loaded machine)
    /// from the messages that arrive while it spins, and costs the spinning thread's core for
    /// as long as it spins: a whole core per node with `Duration::MAX`, whether traffic flows
    /// or not. Only worth it with a core to spare per spinning thread: on a machine with fewer
    /// cores than spinners, they steal each other's time and latency gets worse, not better.
    ///
    /// Default `None`: every wait blocks at once.
    pub busy_poll: Option<Duration>,
    /// UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18) for sending: runs of
    /// equal-sized datagrams to one destination in a batch (the packed data stream, mostly) go
    /// to the kernel as one buffer per run, which it splits back into the same datagrams. The
    /// wire is unchanged. If the kernel or device refuses (`EIO`, `EINVAL`), the runtime falls
    /// back to plain sends for good and counts it in
    /// [`RuntimeStats::gso_fallbacks`](crate::RuntimeStats). The environment variable
    /// `QS_GSO=off` (or `on`) overrides this when the runtime opens. Default true.
    pub gso: bool,
    /// The largest datagram GSO may carry as a segment: the path MTU less the IPv4 and UDP
    /// headers (a segment must not be fragmented). Larger datagrams go out one by one.
    /// Default 1,472 (an Ethernet MTU of 1,500).
    pub gso_max_segment_bytes: usize,
    /// UDP generic receive offload (`UDP_GRO`, Linux 5.0) on the data socket: the kernel may
    /// queue a run of equal-sized datagrams from one sender (a GSO send that crossed veth or
    /// loopback unsegmented, or one the device coalesced) as one buffer, which the runtime
    /// receives with one `recvmsg` and splits back into the datagrams, zero-copy. Without
    /// runs to coalesce it costs one `recvmsg` per datagram instead of one `recvmmsg` per
    /// batch. `QS_GRO=on|off` overrides this when the runtime opens. Default false.
    pub gro: bool,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            interface: Ipv4Addr::LOCALHOST,
            unicast_port: 0,
            control_port: 7400,
            data_port: 7401,
            recv_buffer_bytes: 8 << 20,
            send_buffer_bytes: 4 << 20,
            batch: 64,
            recv_slot_bytes: 2048,
            send_slot_bytes: 65_507,
            ttl: 1,
            multicast_loop: true,
            recv_budget_batches: 8,
            send_budget_batches: 8,
            busy_poll: None,
            gso: true,
            gso_max_segment_bytes: 1472,
            gro: false,
        }
    }
}

/// The socket buffer sizes the kernel granted.
///
/// Sizes are what one would have to request to get them: Linux reserves (and `getsockopt`
/// reports) twice the requested value for bookkeeping, so these are the read-back values
/// halved, directly comparable with [`RuntimeConfig::recv_buffer_bytes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketBuffers {
    /// The smallest receive buffer among the three sockets.
    pub recv_bytes: usize,
    /// The send buffer of the unicast (sending) socket.
    pub send_bytes: usize,
    /// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` was needed (the request exceeded
    /// `net.core.rmem_max`/`wmem_max`) and worked (the process has CAP_NET_ADMIN).
    pub forced: bool,
    /// At least one buffer is still smaller than requested (a warning was logged naming the
    /// sysctl to raise).
    pub capped: bool,
}
