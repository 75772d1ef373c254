//! The out queue of control and repair traffic, as intents: what to send to whom
//! ([`Intent`]), encoded into the caller's buffer only when the driver pulls it
//! ([`NodeCore::poll_out`]). Repairs name the packet (a cached one, or one of this node's own
//! still in its send window) and are copied out at that moment; a packet that became stable
//! meanwhile is not sent at all. Bounded: beyond `max_out_queue` intents are counted and
//! dropped (the next ring round recovers whatever they were for).

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;
use qs_transport::wire::{
    self, PacketKind, RepairRequest, SenderAck, Token, TokenAck, WireError, HEADER_LEN,
};
use qs_transport::{NodeId, RegionId, Seq, TrafficClass, Transmit};

use super::NodeCore;

/// One datagram to build when the driver asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Intent {
    /// The ring's token to the next member.
    Token { to: NodeId, token: Token },
    /// A token hop's acknowledgement to the previous holder.
    TokenAck { to: NodeId, ack: TokenAck },
    /// A repair request to a caretaker or neighbour.
    Request { to: NodeId, request: RepairRequest },
    /// The region leader's acknowledgement to a sender.
    SenderAck { to: NodeId, ack: SenderAck },
    /// A cached packet of `sender` for the peer that asked.
    Serve {
        to: SocketAddr,
        sender: NodeId,
        epoch: u64,
        seq: Seq,
    },
    /// One of this node's own packets for the peer that asked.
    ServeOwn {
        to: SocketAddr,
        region: RegionId,
        seq: Seq,
    },
    /// Re-multicast of an own packet a whole caretaker partition lacked.
    Resend { region: RegionId, seq: Seq },
    /// A unicast copy of an own packet for a member that does not hear the region's group
    /// (flagged, so it is not taken as evidence that the multicast path works).
    UnicastCopy {
        to: SocketAddr,
        region: RegionId,
        seq: Seq,
    },
    /// A datagram built already (best-effort unicast copies: no send window keeps them).
    Built {
        to: SocketAddr,
        class: TrafficClass,
        datagram: Bytes,
    },
}

/// The bounded queue of intents, first in first out.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Intent>,
    max: usize,
    /// Intents refused because the queue was full.
    pub(super) overflow: u64,
}

impl Outbox {
    pub(super) fn new(max: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            max,
            overflow: 0,
        }
    }

    /// Queues `intent` (counted and dropped when full).
    pub(super) fn push(&mut self, intent: Intent) {
        if self.queue.len() >= self.max {
            self.overflow += 1;
        } else {
            self.queue.push_back(intent);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn pop(&mut self) -> Option<Intent> {
        self.queue.pop_front()
    }

    pub(super) fn check_invariants(&self) {
        assert!(self.queue.len() <= self.max, "out queue over its bound");
    }
}

impl NodeCore {
    /// Encodes the next queued intent (unsealed) into `buf`; intents that cannot be built any
    /// more (no address, the packet freed) are counted and skipped.
    pub(super) fn poll_out(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let intent = self.out.pop()?;
            match self.encode(&intent, buf) {
                Ok(Some(t)) => {
                    self.stats.control_bytes_sent += t.len as u64;
                    if t.class == TrafficClass::Control {
                        self.stats.control_packets_sent += 1;
                    }
                    return Some(t);
                }
                Ok(None) => self.stats.repairs_obsolete += 1,
                Err(Unbuildable::NoAddress) => self.stats.drops.no_address += 1,
                Err(Unbuildable::Wire) => self.stats.drops.malformed += 1,
            }
        }
    }

    /// Builds one intent; `Ok(None)` when the packet it names is no longer held.
    fn encode(&self, intent: &Intent, buf: &mut [u8]) -> Result<Option<Transmit>, Unbuildable> {
        let control = |to: NodeId,
                       kind: PacketKind,
                       body: &dyn Fn(&mut [u8]) -> Result<usize, WireError>,
                       buf: &mut [u8]|
         -> Result<Option<Transmit>, Unbuildable> {
            let destination = self.address_of(to).ok_or(Unbuildable::NoAddress)?;
            self.header(kind).write(buf)?;
            let len = HEADER_LEN + body(&mut buf[HEADER_LEN..])?;
            Ok(Some(Transmit {
                destination,
                class: TrafficClass::Control,
                len,
            }))
        };
        match intent {
            Intent::Token { to, token } => {
                control(*to, PacketKind::Token, &|b| token.write(b), buf)
            }
            Intent::TokenAck { to, ack } => {
                control(*to, PacketKind::TokenAck, &|b| ack.write(b), buf)
            }
            Intent::Request { to, request } => {
                control(*to, PacketKind::RepairRequest, &|b| request.write(b), buf)
            }
            Intent::SenderAck { to, ack } => {
                control(*to, PacketKind::SenderAck, &|b| ack.write(b), buf)
            }
            Intent::Serve {
                to,
                sender,
                epoch,
                seq,
            } => {
                let packet = self.cache.get(*sender, *epoch, *seq);
                Ok(packet.and_then(|p| copy(p, buf, *to, TrafficClass::Repair)))
            }
            Intent::ServeOwn { to, region, seq } => {
                let packet = self.send.get(region).and_then(|s| s.window.get(*seq));
                Ok(packet.and_then(|p| copy(p, buf, *to, TrafficClass::Repair)))
            }
            Intent::Resend { region, seq } => {
                let Some(stream) = self.send.get(region) else {
                    return Ok(None);
                };
                let group = SocketAddr::V4(stream.group());
                let packet = stream.window.get(*seq);
                Ok(packet.and_then(|p| copy(p, buf, group, TrafficClass::Repair)))
            }
            Intent::UnicastCopy { to, region, seq } => {
                let packet = self.send.get(region).and_then(|s| s.window.get(*seq));
                let Some(t) = packet.and_then(|p| copy(p, buf, *to, TrafficClass::Data)) else {
                    return Ok(None);
                };
                buf[wire::field::FLAGS] |= wire::FLAG_UNICAST_COPY;
                Ok(Some(t))
            }
            Intent::Built {
                to,
                class,
                datagram,
            } => Ok(copy(datagram, buf, *to, *class)),
        }
    }
}

/// Why an intent could not be built.
enum Unbuildable {
    /// The peer's address is not known (any more).
    NoAddress,
    /// The body did not fit the buffer.
    Wire,
}

impl From<WireError> for Unbuildable {
    fn from(_: WireError) -> Unbuildable {
        Unbuildable::Wire
    }
}

/// A kept datagram copied into `buf`, if it fits.
fn copy(datagram: &[u8], buf: &mut [u8], to: SocketAddr, class: TrafficClass) -> Option<Transmit> {
    let b = buf.get_mut(..datagram.len())?;
    b.copy_from_slice(datagram);
    Some(Transmit {
        destination: to,
        class,
        len: datagram.len(),
    })
}
