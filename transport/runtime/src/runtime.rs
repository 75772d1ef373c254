//! The event loop: three sockets, one mio `Poll`, one [`Driven`] core per turn.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use qs_transport::{Driven, Instant, SocketCommand};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::arena::RecvArenas;
use crate::config::{RuntimeConfig, SocketBuffers};
use crate::sendq::SendQueues;
use crate::sys::{self, BufferDir, MmsgScratch, RecvMeta};

/// Pause before retrying a send the kernel refused with `ENOBUFS`.
const ENOBUFS_PAUSE: Duration = Duration::from_micros(50);

/// A turn whose busy time (excluding the wait) exceeds this counts as a stall in
/// [`RuntimeStats::slow_turns`]: 1 ms.
pub const SLOW_TURN_NANOS: u64 = 1_000_000;

/// Minimum interval between two repeated warnings of one kind (send errors, receive errors).
const WARN_INTERVAL_NANOS: u64 = 1_000_000_000;

/// Sockets in receive order: control before unicast before data.
pub(crate) const CONTROL: usize = 0;
pub(crate) const UNICAST: usize = 1;
pub(crate) const DATA: usize = 2;
const SOCKET_NAMES: [&str; 3] = ["control", "unicast", "data"];
const WAKER: Token = Token(3);
const TIMER: Token = Token(4);

/// Waits shorter than this use the precise timer ([`sys::TimerFd`]) instead of
/// `epoll_wait`'s millisecond timeout: rounding a 300 µs pacing deadline up to 1 ms triples
/// it, while a 20 ms round timer loses nothing worth a system call.
const PRECISE_WAIT: Duration = Duration::from_millis(1);

/// Counters of one runtime, all monotonically increasing except the `*_max`/`longest` ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeStats {
    /// Calls to [`Runtime::turn`].
    pub iterations: u64,
    /// Turns in which the [`Waker`] fired.
    pub wakeups: u64,
    /// Time spent working (not waiting) in turns, in nanoseconds.
    pub busy_nanos: u64,
    /// Time spent waiting in `epoll_wait`, in nanoseconds (busy-polling included).
    pub poll_wait_nanos: u64,
    /// Busy-poll mode: empty non-blocking polls (each one a spin of the wait loop).
    pub spins: u64,
    /// Busy-poll mode: time spent spinning, in nanoseconds (the CPU the mode costs, part of
    /// `poll_wait_nanos`).
    pub spin_nanos: u64,
    /// Busy-poll mode: waits that an event ended while spinning (each one a wake-up of a
    /// sleeping thread saved).
    pub spin_hits: u64,
    /// Busy-poll mode: waits whose spin budget ran out before anything happened, so the
    /// thread blocked for the rest of the wait.
    pub spin_blocks: u64,
    /// The longest busy time of one turn, in nanoseconds.
    pub longest_turn_nanos: u64,
    /// Turns busy for more than [`SLOW_TURN_NANOS`] (stalls).
    pub slow_turns: u64,
    /// Calls to [`Driven::handle_timeout`].
    pub timeouts_handled: u64,
    /// The latest a timer was handled after its deadline, in nanoseconds.
    pub timer_lateness_max_nanos: u64,
    /// Datagrams handed to the core.
    pub datagrams_received: u64,
    /// Bytes handed to the core.
    pub bytes_received: u64,
    /// Successful `recvmmsg` calls.
    pub recv_batches: u64,
    /// Receive errors other than would-block (the socket is skipped until it is ready again).
    pub recv_errors: u64,
    /// Times a socket used its whole receive budget and stayed readable.
    pub recv_budget_exhausted: u64,
    /// Receive arenas (`batch * recv_slot_bytes` bytes each) allocated because every kept
    /// one still had a live slice; 0 growth in steady state means receiving allocates nothing.
    pub recv_arena_allocations: u64,
    /// Receive arenas taken back for reuse once no slice of them was alive.
    pub recv_arena_reuses: u64,
    /// Datagrams larger than [`RuntimeConfig::recv_slot_bytes`], dropped.
    pub truncated_drops: u64,
    /// Datagrams from a non-IPv4 source, dropped.
    pub non_ipv4_drops: u64,
    /// Datagrams the kernel accepted for sending.
    pub datagrams_sent: u64,
    /// Bytes the kernel accepted for sending.
    pub bytes_sent: u64,
    /// Successful `sendmmsg` calls.
    pub send_batches: u64,
    /// `sendmmsg` headers that carried several datagrams as one GSO buffer
    /// ([`RuntimeConfig::gso`]).
    pub gso_sends: u64,
    /// Datagrams sent inside GSO buffers (each one a full datagram on the wire).
    pub gso_segments: u64,
    /// Times the kernel refused a GSO send (`EIO`, `EINVAL`): GSO was then switched off and
    /// the datagrams sent plainly. At most 1.
    pub gso_fallbacks: u64,
    /// GRO receives ([`RuntimeConfig::gro`]) that returned more than one datagram.
    pub gro_receives: u64,
    /// Datagrams inside those receives.
    pub gro_segments: u64,
    /// Times the unicast socket's send buffer was full (we then wait for writability).
    pub send_would_block: u64,
    /// Datagrams dropped because the kernel refused them (e.g. `ENETUNREACH`, `EPERM`,
    /// `EMSGSIZE`).
    pub send_errors: u64,
    /// Sends the kernel refused with `ENOBUFS` (device queue full); retried after a pause,
    /// never dropped.
    pub send_enobufs: u64,
    /// Turns that used the whole send budget with more to send.
    pub send_budget_exhausted: u64,
    /// Transmits the core got wrong (IPv6 destination, length beyond the buffer), dropped.
    pub invalid_transmits: u64,
    /// Waits that armed the precise timer (deadlines under 10 ms).
    pub precise_waits: u64,
    /// Multicast groups joined.
    pub joins: u64,
    /// Multicast groups left.
    pub leaves: u64,
    /// Joins or leaves that failed or named a port that is neither the control nor the data
    /// port.
    pub join_errors: u64,
}

/// The receive sockets' load ([`Runtime::receive_load`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveLoad {
    /// Datagrams the three sockets dropped since they were opened (a full receive buffer,
    /// mostly), summed, wrapping at `u32::MAX`: take differences with `wrapping_sub`.
    pub drops: u32,
    /// Bytes queued in the unicast and data sockets, in the kernel's accounting (which
    /// counts buffer overhead too: more than the datagrams' bytes).
    pub queued_bytes: u64,
}

/// What one [`Runtime::turn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// The [`Waker`] fired: another thread has work for the caller (e.g. commands queued on
    /// its channel).
    pub woken: bool,
    /// The time handed to the core after the wait.
    pub now: Instant,
    /// Datagrams handed to the core.
    pub received: usize,
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// [`Driven::handle_timeout`] was called.
    pub timer_fired: bool,
}

/// A log line at most once per [`WARN_INTERVAL_NANOS`], counting what it suppressed.
#[derive(Debug, Default)]
struct WarnLimiter {
    last_nanos: Option<u64>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&mut self, now_nanos: u64) -> Option<u64> {
        match self.last_nanos {
            Some(last) if now_nanos.saturating_sub(last) < WARN_INTERVAL_NANOS => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_nanos = Some(now_nanos);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// One node's sockets and event loop. See the [crate docs](crate) for the calling contract.
pub struct Runtime {
    cfg: RuntimeConfig,
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    /// Indexed by `CONTROL`, `UNICAST`, `DATA`.
    pub(crate) sockets: [UdpSocket; 3],
    /// Known (or possibly) readable: an edge was seen and the socket is not drained yet.
    readable: [bool; 3],
    /// The unicast socket accepted the last send (false after `WouldBlock`, until an edge).
    /// Writability is only watched while this is false: every datagram sent raises a new
    /// `EPOLLOUT` edge on a UDP socket, which would otherwise cost one idle turn per send.
    writable: bool,
    /// Precise wake-ups for short deadlines, and the deadline it is armed for (a wait for
    /// the same deadline after an early wake-up re-arms nothing).
    timer: sys::TimerFd,
    timer_armed: Option<Instant>,
    /// The last send phase stopped on its budget with the core perhaps holding more.
    send_pending: bool,
    /// After `ENOBUFS` no writable edge will come: sending resumes at this time.
    send_backoff_until: Option<Instant>,
    local_addr: SocketAddrV4,
    epoch: std::time::Instant,
    /// Receive memory: datagrams are received into it, then split off and frozen; reused once
    /// no slice of it is alive.
    arenas: RecvArenas,
    recv_scratch: MmsgScratch,
    send_scratch: MmsgScratch,
    recv_meta: Vec<RecvMeta>,
    sendq: SendQueues,
    joined: BTreeSet<SocketAddrV4>,
    buffers: SocketBuffers,
    stats: RuntimeStats,
    /// GSO is on (configured, not overridden by `QS_GSO`, not refused by the kernel yet).
    gso: bool,
    /// `UDP_GRO` is on for the data socket.
    gro: bool,
    send_warn: WarnLimiter,
    recv_warn: WarnLimiter,
    transmit_warn: WarnLimiter,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("local_addr", &self.local_addr)
            .field("control_port", &self.cfg.control_port)
            .field("data_port", &self.cfg.data_port)
            .field("joined", &self.joined)
            .field("queued", &self.sendq.len())
            .finish_non_exhaustive()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn udp_socket() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A socket that shares `0.0.0.0:port` with other nodes on the host and receives only the
/// groups it joined itself.
pub(crate) fn group_socket() -> io::Result<Socket> {
    let socket = udp_socket()?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    sys::disable_multicast_all(&socket)?;
    Ok(socket)
}

impl Runtime {
    /// Opens the unicast, control and data sockets and the poller.
    ///
    /// Errors: `InvalidInput` if `control_port == data_port`, `batch`, `recv_slot_bytes` or
    /// `send_slot_bytes` is 0; otherwise whatever the OS reports (e.g. `AddrInUse` for a
    /// taken unicast port, `AddrNotAvailable` for an interface address not on this host).
    pub fn new(cfg: RuntimeConfig) -> io::Result<Runtime> {
        if cfg.control_port == cfg.data_port {
            return Err(invalid(format!(
                "control_port and data_port must differ (both are {}): each needs its own \
                 socket so control traffic is received before data",
                cfg.control_port
            )));
        }
        if cfg.batch == 0 || cfg.recv_slot_bytes == 0 || cfg.send_slot_bytes == 0 {
            return Err(invalid(
                "batch, recv_slot_bytes and send_slot_bytes must be at least 1".into(),
            ));
        }
        let unicast = udp_socket()?;
        // Bound to one address, it would not match a group anyway; this also covers an
        // `interface` of 0.0.0.0.
        sys::disable_multicast_all(&unicast)?;
        unicast.set_multicast_if_v4(&cfg.interface)?;
        unicast.set_multicast_ttl_v4(cfg.ttl)?;
        unicast.set_multicast_loop_v4(cfg.multicast_loop)?;
        let send = sys::size_buffer(&unicast, BufferDir::Send, cfg.send_buffer_bytes)?;
        let mut recv = [sys::size_buffer(&unicast, BufferDir::Recv, cfg.recv_buffer_bytes)?; 3];
        unicast.bind(&SockAddr::from(SocketAddrV4::new(
            cfg.interface,
            cfg.unicast_port,
        )))?;

        let control = group_socket()?;
        recv[CONTROL] = sys::size_buffer(&control, BufferDir::Recv, cfg.recv_buffer_bytes)?;
        control.bind(&SockAddr::from(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            cfg.control_port,
        )))?;
        let data = group_socket()?;
        recv[DATA] = sys::size_buffer(&data, BufferDir::Recv, cfg.recv_buffer_bytes)?;
        let gro = gso_enabled(cfg.gro, std::env::var("QS_GRO").ok().as_deref())
            && match sys::enable_gro(data.as_raw_fd()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("UDP GRO unavailable ({e}); receiving datagrams one by one");
                    false
                }
            };
        data.bind(&SockAddr::from(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            cfg.data_port,
        )))?;

        let local_addr = unicast
            .local_addr()?
            .as_socket_ipv4()
            .ok_or_else(|| io::Error::other("unicast socket has no IPv4 address"))?;
        let buffers = SocketBuffers {
            recv_bytes: recv.iter().map(|o| o.bytes).min().unwrap_or(0),
            send_bytes: send.bytes,
            forced: send.forced || recv.iter().any(|o| o.forced),
            capped: send.capped || recv.iter().any(|o| o.capped),
        };

        let mut sockets = [
            UdpSocket::from_std(control.into()),
            UdpSocket::from_std(unicast.into()),
            UdpSocket::from_std(data.into()),
        ];
        let poll = Poll::new()?;
        for (i, socket) in sockets.iter_mut().enumerate() {
            poll.registry()
                .register(socket, Token(i), Interest::READABLE)?;
        }
        let timer = sys::TimerFd::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&timer.raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let batch = cfg.batch;
        Ok(Runtime {
            events: Events::with_capacity(16),
            poll,
            waker,
            sockets,
            // Datagrams may have arrived between bind and register: look once.
            readable: [true; 3],
            writable: true,
            timer,
            timer_armed: None,
            send_pending: false,
            send_backoff_until: None,
            local_addr,
            epoch: std::time::Instant::now(),
            arenas: RecvArenas::new(if gro {
                (batch * cfg.recv_slot_bytes).max(4 * sys::GRO_MAX_BYTES)
            } else {
                batch * cfg.recv_slot_bytes
            }),
            recv_scratch: MmsgScratch::new(batch),
            send_scratch: MmsgScratch::new(batch),
            recv_meta: Vec::with_capacity(batch),
            sendq: SendQueues::new(batch, cfg.send_slot_bytes),
            joined: BTreeSet::new(),
            buffers,
            stats: RuntimeStats::default(),
            gso: gso_enabled(cfg.gso, std::env::var("QS_GSO").ok().as_deref()),
            gro,
            send_warn: WarnLimiter::default(),
            recv_warn: WarnLimiter::default(),
            transmit_warn: WarnLimiter::default(),
            cfg,
        })
    }

    /// The configuration this runtime was opened with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The unicast socket's address (with the actual port when `unicast_port` was 0): the
    /// source address of everything this node sends.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// A handle other threads use to interrupt the wait in [`Runtime::turn`]; the turn then
    /// reports [`Turn::woken`].
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Nanoseconds since this runtime was created, from the monotonic clock.
    pub fn now(&self) -> Instant {
        Instant(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Loop and socket counters.
    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    /// The socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }

    /// How loaded the receive sockets are, as the kernel reports it (`SO_MEMINFO`: three
    /// `getsockopt` calls; a socket that fails to answer counts as empty). The core's lateral
    /// error correction uses it to tell its own overflow from the network's loss.
    pub fn receive_load(&self) -> ReceiveLoad {
        let mut load = ReceiveLoad::default();
        for (i, s) in self.sockets.iter().enumerate() {
            let Ok(m) = sys::meminfo(s.as_raw_fd()) else {
                continue;
            };
            load.drops = load.drops.wrapping_add(m.drops);
            if i != CONTROL {
                load.queued_bytes += u64::from(m.queued);
            }
        }
        load
    }

    /// The groups currently joined, as `group:port`.
    pub fn joined_groups(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.joined.iter().copied()
    }

    /// Transmits pulled from the core and not yet accepted by the kernel (at most
    /// [`RuntimeConfig::batch`]).
    pub fn queued_transmits(&self) -> usize {
        self.sendq.len()
    }

    /// Runs one event-loop iteration for `core`:
    ///
    /// 1. brings the core's output up to date (commands, then transmits), since the caller
    ///    may have fed it work since the last turn;
    /// 2. waits until the core's deadline, socket readiness, the [`Waker`] or `max_wait`,
    ///    whichever comes first (not at all if a socket is known to be readable or transmits
    ///    are waiting on a writable socket). Deadlines are honoured to the millisecond, rounded
    ///    up (`epoll_wait` resolution);
    /// 3. reads the clock once, `now`, and with it: receives (control, then unicast, then
    ///    data socket, each under its batch budget) into [`Driven::handle_datagram`]; calls
    ///    [`Driven::handle_timeout`] if the deadline is due; applies every
    ///    [`Driven::poll_command`]; pulls and sends transmits, Control before Repair before
    ///    Data, until the core has nothing more, the socket is full or the send budget is
    ///    spent.
    ///
    /// Errors only if the poller itself fails (a bug or resource exhaustion); network errors
    /// are counted in [`RuntimeStats`] and logged.
    pub fn turn<D: Driven>(
        &mut self,
        core: &mut D,
        max_wait: Option<Duration>,
    ) -> io::Result<Turn> {
        self.stats.iterations += 1;
        let pre_now = self.now();
        self.apply_commands(core);
        let mut sent = self.pull_and_send(core, pre_now);
        let poll_start = self.now();
        let timeout = self.wait_timeout(core, max_wait, poll_start);
        let polled = match self.cfg.busy_poll {
            Some(spin) if timeout != Some(Duration::ZERO) => self.spin_then_block(timeout, spin),
            _ => {
                let timeout = self.arm_timer(timeout, poll_start);
                self.poll.poll(&mut self.events, timeout)
            }
        };
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.events.clear(),
            Err(e) => return Err(e),
        }
        let now = self.now();
        self.stats.poll_wait_nanos += now.0.saturating_sub(poll_start.0);

        let mut woken = false;
        let mut writable_again = false;
        for event in self.events.iter() {
            match event.token() {
                WAKER => woken = true,
                TIMER => {
                    self.timer.clear();
                    self.timer_armed = None;
                }
                Token(i) if i < 3 => {
                    if event.is_readable() || event.is_error() || event.is_read_closed() {
                        self.readable[i] = true;
                    }
                    if i == UNICAST && !self.writable && (event.is_writable() || event.is_error()) {
                        writable_again = true;
                    }
                }
                Token(_) => {}
            }
        }
        if writable_again {
            self.watch_writable(false);
        }
        if woken {
            self.stats.wakeups += 1;
        }

        let mut received = 0;
        for socket in [CONTROL, UNICAST, DATA] {
            received += self.receive(socket, core, now);
        }
        let mut timer_fired = false;
        if let Some(deadline) = core.poll_timeout() {
            if deadline <= now {
                self.stats.timeouts_handled += 1;
                self.stats.timer_lateness_max_nanos =
                    self.stats.timer_lateness_max_nanos.max(now.0 - deadline.0);
                core.handle_timeout(now);
                timer_fired = true;
            }
        }
        self.apply_commands(core);
        sent += self.pull_and_send(core, now);

        let end = self.now();
        let busy = end.0.saturating_sub(now.0) + poll_start.0.saturating_sub(pre_now.0);
        self.stats.busy_nanos += busy;
        self.stats.longest_turn_nanos = self.stats.longest_turn_nanos.max(busy);
        if busy > SLOW_TURN_NANOS {
            self.stats.slow_turns += 1;
        }
        Ok(Turn {
            woken,
            now,
            received,
            sent,
            timer_fired,
        })
    }

    /// Arms the precise timer for a short wait and returns the timeout to give `epoll_wait`
    /// (none: the timer or an event ends the wait); disarms a timer a longer wait no longer
    /// needs. A timer that fails to arm leaves the millisecond timeout in charge.
    fn arm_timer(&mut self, timeout: Option<Duration>, now: Instant) -> Option<Duration> {
        match timeout {
            Some(t) if !t.is_zero() && t < PRECISE_WAIT => {
                let deadline = now + t;
                if self.timer_armed == Some(deadline) {
                    return Some(t + Duration::from_millis(1));
                }
                if self.timer.set(t).is_ok() {
                    self.timer_armed = Some(deadline);
                    self.stats.precise_waits += 1;
                    // The millisecond timeout stays as a backstop, a little later.
                    return Some(t + Duration::from_millis(1));
                }
                timeout
            }
            _ => {
                if self.timer_armed.is_some() && self.timer.set(Duration::ZERO).is_ok() {
                    self.timer_armed = None;
                }
                timeout
            }
        }
    }

    /// Starts (after `WouldBlock`) or stops (after the writable edge) watching the unicast
    /// socket's writability. `EPOLL_CTL_MOD` re-checks readiness, so a socket that became
    /// writable in between still reports it.
    fn watch_writable(&mut self, watch: bool) {
        let interest = if watch {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let registry = self.poll.registry();
        match registry.reregister(&mut self.sockets[UNICAST], Token(UNICAST), interest) {
            Ok(()) => self.writable = !watch,
            Err(e) => {
                // Without the registration no edge would come: carry on as if writable, the
                // next send tells the truth.
                tracing::warn!("cannot watch the unicast socket's writability: {e}");
                self.writable = true;
            }
        }
    }

    /// The busy-poll wait ([`RuntimeConfig::busy_poll`]): non-blocking polls until an event,
    /// the end of `timeout` (`None`: no end) or `spin`, whichever comes first, yielding the
    /// core after each empty poll; then, if the wait is not over, a blocking poll for the
    /// rest of it.
    fn spin_then_block(&mut self, timeout: Option<Duration>, spin: Duration) -> io::Result<()> {
        let start = std::time::Instant::now();
        let spun = loop {
            self.poll.poll(&mut self.events, Some(Duration::ZERO))?;
            let spun = start.elapsed();
            if !self.events.is_empty() {
                self.stats.spin_nanos += duration_nanos(spun);
                self.stats.spin_hits += 1;
                return Ok(());
            }
            if timeout.is_some_and(|t| spun >= t) {
                self.stats.spin_nanos += duration_nanos(spun);
                return Ok(());
            }
            if spun >= spin {
                break spun;
            }
            self.stats.spins += 1;
            // On a machine with fewer cores than spinning threads, the thread that has work
            // for us (or that we hand work to) may be waiting for this core; with a core to
            // spare the yield returns at once. Measured on 2 loaded cores, yielding after
            // every poll beat yielding after every 16th (BENCHMARKS.md, busy-poll mode).
            std::thread::yield_now();
        };
        self.stats.spin_nanos += duration_nanos(spun);
        self.stats.spin_blocks += 1;
        let rest = timeout.map(|t| t.saturating_sub(spun));
        let rest = self.arm_timer(rest, self.now());
        self.poll.poll(&mut self.events, rest)
    }

    /// How long the next wait may last.
    fn wait_timeout<D: Driven>(
        &self,
        core: &D,
        max_wait: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        let more_to_send = !self.sendq.is_empty() || self.send_pending;
        let backoff = self.send_backoff_until.filter(|_| more_to_send);
        if self.readable.iter().any(|r| *r) || (self.writable && more_to_send && backoff.is_none())
        {
            return Some(Duration::ZERO);
        }
        let deadline = match (core.poll_timeout(), backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match deadline {
            None => max_wait,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(now);
                Some(max_wait.map_or(left, |m| m.min(left)))
            }
        }
    }

    /// The source of a received datagram, or `None` (counted) for one the kernel truncated
    /// or one from a non-IPv4 source.
    fn usable_from(&mut self, m: &sys::RecvMeta) -> Option<SocketAddrV4> {
        if m.truncated {
            self.stats.truncated_drops += 1;
            return None;
        }
        if m.from.is_none() {
            self.stats.non_ipv4_drops += 1;
        }
        m.from
    }

    /// A receive on `socket` failed: counted, the socket waits for its next readiness, and
    /// the failure is logged (rate-limited).
    fn recv_failed(&mut self, now: Instant, socket: usize, e: &io::Error) {
        self.stats.recv_errors += 1;
        self.readable[socket] = false;
        if let Some(suppressed) = self.recv_warn.allow(now.0) {
            tracing::warn!(
                "receive on the {} socket failed: {e} ({suppressed} similar suppressed)",
                SOCKET_NAMES[socket]
            );
        }
    }

    /// Drains one socket into the core, under the batch budget. Returns datagrams delivered.
    fn receive<D: Driven>(&mut self, socket: usize, core: &mut D, now: Instant) -> usize {
        if !self.readable[socket] {
            return 0;
        }
        if socket == DATA && self.gro {
            return self.receive_gro(socket, core, now);
        }
        let slot = self.cfg.recv_slot_bytes;
        let batch = self.cfg.batch;
        let fd = self.sockets[socket].as_raw_fd();
        let mut delivered = 0;
        let mut batches = 0;
        let mut meta = std::mem::take(&mut self.recv_meta);
        loop {
            if batches >= self.cfg.recv_budget_batches.max(1) {
                // Still readable: served first (with a zero wait) next turn.
                self.stats.recv_budget_exhausted += 1;
                break;
            }
            // Another arena when this one cannot hold a quarter batch: a reclaimed one whose
            // slices are all gone, or fresh memory (counted).
            let arena = self.arenas.with_room((batch / 4).max(1) * slot);
            // At most a batch: a short batch below means the socket ran dry (with GRO the
            // arenas are larger than a batch of slots).
            let room = (arena.len() / slot).min(batch);
            let result = sys::recv_batch(
                fd,
                libc::MSG_DONTWAIT,
                &mut arena[..room * slot],
                slot,
                &mut self.recv_scratch,
                &mut meta,
            );
            match result {
                Ok(k) => {
                    batches += 1;
                    self.stats.recv_batches += 1;
                    // The received prefix leaves the arena; the core may keep slices of it.
                    let filled = self.arenas.with_room(0).split_to(k * slot).freeze();
                    for (i, m) in meta.iter().enumerate() {
                        let Some(from) = self.usable_from(m) else {
                            continue;
                        };
                        self.stats.datagrams_received += 1;
                        self.stats.bytes_received += m.len as u64;
                        delivered += 1;
                        let start = i * slot;
                        core.handle_datagram(
                            now,
                            SocketAddr::V4(from),
                            filled.slice(start..start + m.len),
                        );
                    }
                    // With MSG_DONTWAIT a short batch means the queue ran dry (unconnected UDP
                    // sockets report no asynchronous errors), so the next arrival raises a new
                    // edge: no extra call just to see WouldBlock.
                    if k < room {
                        self.readable[socket] = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable[socket] = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    batches += 1;
                }
                Err(e) => {
                    self.recv_failed(now, socket, &e);
                    break;
                }
            }
        }
        self.recv_meta = meta;
        self.stats.recv_arena_allocations = self.arenas.allocations;
        self.stats.recv_arena_reuses = self.arenas.reuses;
        delivered
    }

    /// [`Runtime::receive`] for a `UDP_GRO` socket: one `recvmsg` per buffer, each split into
    /// its datagrams (zero-copy slices of the arena, which keeps only the bytes received),
    /// up to the datagrams a `recvmmsg` budget would take.
    fn receive_gro<D: Driven>(&mut self, socket: usize, core: &mut D, now: Instant) -> usize {
        let fd = self.sockets[socket].as_raw_fd();
        let budget = self.cfg.recv_budget_batches.max(1) * self.cfg.batch;
        let mut delivered = 0;
        loop {
            if delivered >= budget {
                self.stats.recv_budget_exhausted += 1;
                break;
            }
            let arena = self.arenas.with_room(sys::GRO_MAX_BYTES);
            let result = sys::recv_gro(fd, libc::MSG_DONTWAIT, &mut arena[..sys::GRO_MAX_BYTES]);
            match result {
                Ok(got) => {
                    self.stats.recv_batches += 1;
                    let m = got.meta;
                    // Only the received bytes leave the arena, rounded up to keep slices
                    // aligned; the rest is room for the next receive.
                    let take = m.len.next_multiple_of(8).min(sys::GRO_MAX_BYTES);
                    let filled = self.arenas.with_room(0).split_to(take).freeze();
                    let Some(from) = self.usable_from(&m) else {
                        continue;
                    };
                    let segment = got.segment.max(1);
                    let mut start = 0;
                    let mut n = 0;
                    while start < m.len || (m.len == 0 && n == 0) {
                        let end = (start + segment).min(m.len);
                        self.stats.datagrams_received += 1;
                        self.stats.bytes_received += (end - start) as u64;
                        core.handle_datagram(now, SocketAddr::V4(from), filled.slice(start..end));
                        n += 1;
                        start = end;
                    }
                    if n > 1 {
                        self.stats.gro_receives += 1;
                        self.stats.gro_segments += n as u64;
                    }
                    delivered += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable[socket] = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.recv_failed(now, socket, &e);
                    break;
                }
            }
        }
        self.stats.recv_arena_allocations = self.arenas.allocations;
        self.stats.recv_arena_reuses = self.arenas.reuses;
        delivered
    }

    fn apply_commands<D: Driven>(&mut self, core: &mut D) {
        while let Some(command) = core.poll_command() {
            match command {
                SocketCommand::JoinGroup(group) => self.join(group),
                SocketCommand::LeaveGroup(group) => self.leave(group),
            }
        }
    }

    /// The socket for a group's port, or a counted and logged error.
    fn group_socket_index(&mut self, group: SocketAddrV4, what: &str) -> Option<usize> {
        let socket = if group.port() == self.cfg.control_port {
            CONTROL
        } else if group.port() == self.cfg.data_port {
            DATA
        } else {
            self.stats.join_errors += 1;
            tracing::warn!(
                "cannot {what} {group}: port is neither the control port {} nor the data port {}",
                self.cfg.control_port,
                self.cfg.data_port
            );
            return None;
        };
        if !group.ip().is_multicast() {
            self.stats.join_errors += 1;
            tracing::warn!("cannot {what} {group}: not a multicast address");
            return None;
        }
        Some(socket)
    }

    fn join(&mut self, group: SocketAddrV4) {
        if self.joined.contains(&group) {
            return;
        }
        let Some(socket) = self.group_socket_index(group, "join") else {
            return;
        };
        match self.sockets[socket].join_multicast_v4(group.ip(), &self.cfg.interface) {
            Ok(()) => {
                self.joined.insert(group);
                self.stats.joins += 1;
            }
            Err(e) => {
                self.stats.join_errors += 1;
                tracing::warn!("joining {group} on {} failed: {e}", self.cfg.interface);
            }
        }
    }

    fn leave(&mut self, group: SocketAddrV4) {
        if !self.joined.contains(&group) {
            return;
        }
        let Some(socket) = self.group_socket_index(group, "leave") else {
            return;
        };
        self.joined.remove(&group);
        match self.sockets[socket].leave_multicast_v4(group.ip(), &self.cfg.interface) {
            Ok(()) => self.stats.leaves += 1,
            Err(e) => {
                self.stats.join_errors += 1;
                tracing::warn!("leaving {group} on {} failed: {e}", self.cfg.interface);
            }
        }
    }

    /// Pull-based sending: take a packet from the core only when it can leave soon (a free
    /// slot and a writable socket), flush by class. Returns datagrams accepted.
    fn pull_and_send<D: Driven>(&mut self, core: &mut D, now: Instant) -> usize {
        let mut sent = 0;
        let mut batches = 0;
        let mut core_drained = false;
        self.send_pending = false;
        if self.send_backoff_until.is_some_and(|t| t <= now) {
            self.send_backoff_until = None;
        }
        while self.writable && self.send_backoff_until.is_none() {
            while !core_drained {
                let Some(slot) = self.sendq.take_slot() else {
                    break;
                };
                let buf = self.sendq.slot_mut(slot);
                let capacity = buf.len();
                match core.poll_transmit(now, buf) {
                    None => {
                        self.sendq.release(slot);
                        core_drained = true;
                    }
                    Some(t) => match t.destination {
                        SocketAddr::V4(dest) if t.len <= capacity => {
                            self.sendq.push(slot, t.len, dest, t.class);
                        }
                        other => {
                            self.sendq.release(slot);
                            self.stats.invalid_transmits += 1;
                            if let Some(suppressed) = self.transmit_warn.allow(now.0) {
                                tracing::warn!(
                                    "dropping an invalid transmit to {other} of {} bytes (buffer \
                                     {capacity}; only IPv4 is supported) ({suppressed} similar \
                                     suppressed)",
                                    t.len
                                );
                            }
                        }
                    },
                }
            }
            if self.sendq.is_empty() {
                break;
            }
            if batches >= self.cfg.send_budget_batches.max(1) {
                self.stats.send_budget_exhausted += 1;
                self.send_pending = true;
                break;
            }
            batches += 1;
            sent += self.flush_batch(now);
        }
        if !core_drained && (!self.writable || self.send_backoff_until.is_some()) {
            // The socket blocked: remaining work waits in the core for the writable edge
            // (or the end of the ENOBUFS pause).
            self.send_pending = true;
        }
        sent
    }

    /// One `sendmmsg` of the queued packets. Returns datagrams accepted.
    fn flush_batch(&mut self, now: Instant) -> usize {
        let fd = self.sockets[UNICAST].as_raw_fd();
        if self.gso {
            let batch = self.sendq.next_batch(self.cfg.batch);
            let max_segment = self.cfg.gso_max_segment_bytes;
            let flags = libc::MSG_DONTWAIT;
            match sys::send_batch_gso(fd, batch, flags, max_segment, &mut self.send_scratch) {
                Ok(sent) => {
                    self.stats.gso_sends += sent.gso_sends as u64;
                    self.stats.gso_segments += sent.gso_segments as u64;
                    return self.sent(sent.datagrams);
                }
                Err((e, true)) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    // The kernel or the device cannot segment: plain sends from now on.
                    self.sendq.complete(0);
                    self.gso = false;
                    self.stats.gso_fallbacks += 1;
                    tracing::warn!("UDP GSO refused ({e}); sending datagrams one by one");
                }
                Err((e, _)) => return self.send_failed(e, now),
            }
        }
        let batch = self.sendq.next_batch(self.cfg.batch);
        match sys::send_batch(fd, batch, libc::MSG_DONTWAIT, &mut self.send_scratch) {
            Ok(n) => self.sent(n),
            Err(e) => self.send_failed(e, now),
        }
    }

    /// The kernel accepted the first `n` datagrams of the batch.
    fn sent(&mut self, n: usize) -> usize {
        let bytes = self.sendq.complete(n);
        self.stats.send_batches += 1;
        self.stats.datagrams_sent += n as u64;
        self.stats.bytes_sent += bytes;
        n
    }

    /// A send whose first header failed with `e`: wait, pause or drop, by the error.
    fn send_failed(&mut self, e: io::Error, now: Instant) -> usize {
        if e.kind() == io::ErrorKind::WouldBlock {
            self.sendq.complete(0);
            self.watch_writable(true);
            self.stats.send_would_block += 1;
        } else if e.kind() == io::ErrorKind::Interrupted {
            self.sendq.complete(0);
        } else if e.raw_os_error() == Some(libc::ENOBUFS) {
            // The device queue is full (veth, bridges): the packet is fine, the moment is
            // not. Keep it queued and retry shortly; no readiness event will say when.
            self.sendq.complete(0);
            self.stats.send_enobufs += 1;
            self.send_backoff_until = Some(now + ENOBUFS_PAUSE);
        } else {
            // sendmmsg reports an error only when the first header failed: drop its
            // datagram and carry on with the rest. (A refused GSO header is never dropped
            // here: it falls back above.)
            self.sendq.complete(1);
            self.stats.send_errors += 1;
            if let Some(suppressed) = self.send_warn.allow(now.0) {
                tracing::warn!(
                    "send failed, datagram dropped: {e} ({suppressed} similar suppressed)"
                );
            }
        }
        0
    }
}

/// Whether GSO is on: the configured value unless `QS_GSO` says `off`/`0`/`false` or
/// `on`/`1`/`true`.
fn gso_enabled(configured: bool, env: Option<&str>) -> bool {
    match env.map(str::trim) {
        Some("off" | "0" | "false") => false,
        Some("on" | "1" | "true") => true,
        _ => configured,
    }
}

/// A duration in whole nanoseconds, saturating.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod gso_tests {
    use super::gso_enabled;

    #[test]
    fn qs_gso_overrides_the_configured_value_and_anything_else_keeps_it() {
        for configured in [true, false] {
            assert_eq!(gso_enabled(configured, None), configured);
            assert_eq!(gso_enabled(configured, Some("maybe")), configured);
            assert!(!gso_enabled(configured, Some("off")));
            assert!(!gso_enabled(configured, Some("0")));
            assert!(gso_enabled(configured, Some(" on")));
            assert!(gso_enabled(configured, Some("1")));
        }
    }
}
