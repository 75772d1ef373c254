//! The gossip object contract (MiCA's view / rate / update, split into sans-IO calls).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId};

use crate::wire::Priority;

/// A peer as the runtime knows it: its address, and its id once learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The node, if known (a seed address has none until it answers).
    pub id: Option<NodeId>,
    /// Its unicast gossip address.
    pub addr: SocketAddr,
}

/// An object's peer-selection distribution over the runtime's current peer list.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerView {
    /// Every listed peer equally likely.
    Uniform,
    /// One non-negative weight per listed peer (same order); need not be normalised.
    Weighted(Vec<f64>),
    /// The object does not want to gossip this round.
    Nobody,
}

/// Where an object asks the runtime to send it a datagram section. Requests to one peer from
/// several objects are bundled into one datagram.
#[derive(Debug)]
pub struct Outbox<'a> {
    intents: &'a mut Intents,
    object: usize,
}

impl Outbox<'_> {
    /// Asks for this object's section to be written to `addr` soon (at the next transmit).
    pub fn send_to(&mut self, addr: SocketAddr) {
        self.intents.add(addr, self.object);
    }
}

/// Per-peer send intents: a FIFO of peers, each with a bit per object that wants to write.
#[derive(Debug, Clone)]
pub(crate) struct Intents {
    order: VecDeque<SocketAddr>,
    masks: BTreeMap<SocketAddr, u64>,
    max: usize,
    pub(crate) overflow: u64,
}

impl Intents {
    pub(crate) fn new(max: usize) -> Intents {
        Intents {
            order: VecDeque::new(),
            masks: BTreeMap::new(),
            max,
            overflow: 0,
        }
    }
    pub(crate) fn outbox(&mut self, object: usize) -> Outbox<'_> {
        Outbox {
            intents: self,
            object,
        }
    }
    pub(crate) fn add(&mut self, addr: SocketAddr, object: usize) {
        if let Some(m) = self.masks.get_mut(&addr) {
            *m |= 1 << object;
        } else if self.order.len() >= self.max {
            self.overflow += 1;
        } else {
            self.masks.insert(addr, 1 << object);
            self.order.push_back(addr);
        }
    }
    /// The next peer and the objects that want to write to it.
    pub(crate) fn pop(&mut self) -> Option<(SocketAddr, u64)> {
        let addr = self.order.pop_front()?;
        let mask = self.masks.remove(&addr).unwrap_or(0);
        Some((addr, mask))
    }
    /// Puts a peer back at the front (objects left over when bundling is off).
    pub(crate) fn push_front(&mut self, addr: SocketAddr, mask: u64) {
        if mask == 0 {
            return;
        }
        if let Some(m) = self.masks.get_mut(&addr) {
            *m |= mask;
            return;
        }
        self.masks.insert(addr, mask);
        self.order.push_front(addr);
    }
    pub(crate) fn check_invariants(&self) {
        assert!(self.order.len() <= self.max + 1);
        assert_eq!(self.order.len(), self.masks.len());
    }
}

/// A gossip object: MiCA's participant, sans-IO.
///
/// Each round the runtime asks every object due this round (per [`GossipObject::rate`]) for
/// its [`GossipObject::view`], draws peers from the correlated composite of those views so
/// that objects whose views overlap pick the same peer, and calls
/// [`GossipObject::gossip_with`]; the object then asks for a section to that peer through the
/// [`Outbox`]. At transmit time the runtime calls [`GossipObject::write`] for every object that
/// asked for the peer, liveness payloads first, then bulk payloads sharing what is left of the
/// MTU. Received sections go to [`GossipObject::handle`]. Replies use the same outbox, so they
/// bundle too.
pub trait GossipObject: Send {
    /// The section tag on the wire (unique per node).
    fn tag(&self) -> u8;
    /// A short name for counters and reports.
    fn name(&self) -> &'static str;
    /// Gossip every this many rounds (1 = every round).
    fn rate(&self) -> u32 {
        1
    }
    /// Whom this object would like to gossip with, over the runtime's peer list.
    fn view(&self, _peers: &[Peer]) -> PeerView {
        PeerView::Uniform
    }
    /// Called at every round before peer selection (for unsolicited sends, e.g. joins).
    fn on_round(&mut self, _now: Instant, _out: &mut Outbox<'_>) {}
    /// The runtime chose `peer` for this object this round.
    fn gossip_with(&mut self, now: Instant, peer: &Peer, out: &mut Outbox<'_>);
    /// Appends this object's `priority` payload for `to`, at most `budget` bytes (nothing if
    /// it has nothing to say).
    fn write(
        &mut self,
        now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    );
    /// Whether this object still has something for `to` after a datagram was written (the
    /// runtime then schedules another datagram to it, e.g. the next part of a large delta).
    fn has_more(&self, _to: &Peer) -> bool {
        false
    }
    /// A section from `from` arrived. Errors are counted and the rest of the datagram is
    /// still processed.
    fn handle(
        &mut self,
        now: Instant,
        from: &Peer,
        priority: Priority,
        payload: &[u8],
        out: &mut Outbox<'_>,
    ) -> Result<(), WireError>;
    /// Time reached [`GossipObject::poll_timeout`].
    fn handle_timeout(&mut self, _now: Instant, _out: &mut Outbox<'_>) {}
    /// This object's next deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Panics if an internal invariant is broken.
    fn check_invariants(&self) {}
}
