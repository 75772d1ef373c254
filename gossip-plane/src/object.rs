//! The gossip object contract (MiCA's view / rate / update, split into sans-IO calls): what an
//! object tells the runtime (whom to gossip with, what to write within a budget) and what the
//! runtime tells it (a chosen peer, a received section, a peer that went quiet). It owns no
//! state itself; the runtime is [`crate::GossipNode`].

use std::net::SocketAddr;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId};

use crate::peers::Peers;
use crate::wire::Priority;

/// A peer as the runtime knows it: its address, and its id once learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The node, if known (a seed address has none until it answers).
    pub id: Option<NodeId>,
    /// Its unicast gossip address.
    pub addr: SocketAddr,
}

/// An object's peer-selection distribution over the live members (MiCA's view). Views are
/// described, not enumerated, so that selection costs O(1) whatever the cluster size.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerView {
    /// Every live member equally likely.
    Uniform,
    /// Uniform over the live members, except that with probability `share` the peer is drawn
    /// uniformly from `ids` (those of them that are live members): e.g. health favours the
    /// members of its own region.
    Favour {
        /// The favoured members.
        ids: Vec<NodeId>,
        /// Probability mass on them, 0..=1.
        share: f64,
    },
    /// The object does not want to gossip this round.
    Nobody,
}

impl PeerView {
    /// This view's probability of `id` (a live peer) among `n` live peers, with `favoured`
    /// the number of live favoured ones and `is_favoured` whether `id` is one of them.
    pub(crate) fn weight(&self, n: usize, favoured: usize, is_favoured: bool) -> f64 {
        let n = n.max(1) as f64;
        match self {
            PeerView::Nobody => 0.0,
            PeerView::Uniform => 1.0 / n,
            PeerView::Favour { share, .. } => {
                let share = if share.is_finite() {
                    share.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                if favoured == 0 {
                    return 1.0 / n;
                }
                (1.0 - share) / n
                    + if is_favoured {
                        share / favoured as f64
                    } else {
                        0.0
                    }
            }
        }
    }
}

/// Where an object asks the runtime to send it a datagram section. Requests to one peer from
/// several objects are bundled into one datagram.
#[derive(Debug)]
pub struct Outbox<'a> {
    peers: &'a mut Peers,
    object: usize,
    now: Instant,
}

impl<'a> Outbox<'a> {
    pub(crate) fn new(peers: &'a mut Peers, object: usize, now: Instant) -> Outbox<'a> {
        Outbox { peers, object, now }
    }

    /// Asks for this object's section to be written to `addr` soon, as a reply: it is paid
    /// from what that address sent us (and, once it proved its address, a bounded rate), so
    /// it may wait.
    pub fn send_to(&mut self, addr: SocketAddr) {
        self.peers.add(self.now, addr, self.object, false, None);
    }

    /// Asks for a section to `peer` on our own initiative (a round's partner, a probe, a
    /// seed): the next datagram to it may use the whole MTU. Initiatives must be bounded by
    /// the caller (one partner per round, one probe, …), never driven by input volume.
    pub fn initiate(&mut self, peer: &Peer) {
        self.peers
            .add(self.now, peer.addr, self.object, true, peer.id);
    }

    /// Whether `addr` proved it receives there (it echoed our cookie).
    pub fn is_proven(&self, addr: SocketAddr) -> bool {
        self.peers.is_proven(addr)
    }
}

/// A gossip object: MiCA's participant, sans-IO.
///
/// Each round the runtime asks every object due this round (per [`GossipObject::rate`]) for
/// its [`GossipObject::view`], draws a peer from the correlated composite of those views so
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
    /// Whom this object would like to gossip with this round.
    fn view(&self) -> PeerView {
        PeerView::Uniform
    }
    /// Called at every round before peer selection (for unsolicited sends, e.g. joins).
    fn on_round(&mut self, _now: Instant, _out: &mut Outbox<'_>) {}
    /// The runtime chose `peer` for this object this round.
    fn gossip_with(&mut self, now: Instant, peer: &Peer, out: &mut Outbox<'_>);
    /// Extra partners wanted this round beyond the regular draw (e.g. a joiner that lacks
    /// whole ranges of a table); the runtime draws them uniformly.
    fn extra_peers(&mut self) -> usize {
        0
    }
    /// The runtime chose `peer` as one of the extra partners asked for by
    /// [`GossipObject::extra_peers`].
    fn catch_up_with(&mut self, now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        self.gossip_with(now, peer, out);
    }
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
    /// The runtime dropped its slot for `addr` (nothing heard from it for a while, or the
    /// table was full): forget anything kept for that address.
    fn forget_peer(&mut self, _addr: SocketAddr) {}
    /// Panics if an internal invariant is broken.
    fn check_invariants(&self) {}
}
