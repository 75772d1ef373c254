//! The contract between a sans-IO core and whatever drives it (the mio runtime or the
//! simulator).

use std::net::{SocketAddr, SocketAddrV4};

use bytes::Bytes;

use crate::Instant;

/// Priority class of an outgoing datagram. Drivers flush `Control` before `Repair` before
/// `Data` (QSM: tokens and control traffic must not queue behind bulk data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficClass {
    /// Tokens, acknowledgements, announcements, membership.
    Control = 0,
    /// Retransmissions and error-correction packets.
    Repair = 1,
    /// New application data.
    Data = 2,
}

impl TrafficClass {
    /// All classes, highest priority first.
    pub const ALL: [TrafficClass; 3] = [
        TrafficClass::Control,
        TrafficClass::Repair,
        TrafficClass::Data,
    ];
}

/// A datagram the core has written into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Unicast peer or multicast group (with port).
    pub destination: SocketAddr,
    /// Priority class.
    pub class: TrafficClass,
    /// Number of bytes written at the start of the buffer.
    pub len: usize,
}

/// A change to the driver's multicast group memberships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketCommand {
    /// Start receiving datagrams sent to this group and port.
    JoinGroup(SocketAddrV4),
    /// Stop receiving datagrams sent to this group and port.
    LeaveGroup(SocketAddrV4),
}

/// A sans-IO protocol core, as seen by a driver.
///
/// Calling contract, per driver iteration:
/// 1. feed every received datagram to [`Driven::handle_datagram`];
/// 2. if [`Driven::poll_timeout`] is due, call [`Driven::handle_timeout`];
/// 3. apply every [`Driven::poll_command`];
/// 4. call [`Driven::poll_transmit`] while it returns datagrams and the driver can send them
///    (the core builds each packet at this moment: pull-based sending);
/// 5. sleep until the next [`Driven::poll_timeout`] or readiness.
///
/// Cores never panic on network input: malformed datagrams are counted and dropped.
pub trait Driven {
    /// A datagram arrived from `from`. The core may keep slices of `datagram` (zero copy).
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: Bytes);

    /// Time has reached (or passed) the deadline returned by [`Driven::poll_timeout`].
    fn handle_timeout(&mut self, now: Instant);

    /// Writes the next datagram to send into `buf` (at most `buf.len()` bytes), highest
    /// priority class first, or returns `None` when nothing is ready to go.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;

    /// The earliest time at which [`Driven::handle_timeout`] must be called.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The next multicast membership change to apply.
    fn poll_command(&mut self) -> Option<SocketCommand>;
}
