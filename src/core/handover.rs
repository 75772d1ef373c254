//! The subscription handover: a node whose subscriptions change moves from its region (A) to
//! another (B) and keeps exactly-once, in-order delivery of every topic it keeps.
//!
//! Senders choose regions from their own region tables, which learn the move at different
//! times, so the node cannot simply switch: messages a sender published before it learned
//! still go to A only, those after go to B (and to A for its other members). The cut:
//!
//! 1. **The node departs A instead of leaving it.** Its new subscription record names A as
//!    the region it is *departing*; every region table keeps it in A's member list meanwhile
//!    (`qs-regions`), so A's ring still counts it and A's senders keep their packets for it.
//!    It stays in A's multicast group and runs A's ring beside B's ([`Departure`]).
//! 2. **Each sender marks its cut** when its table moves the node: a `Left` marker in its
//!    stream into A, a `Joined` marker in its stream into B (started for the purpose if it
//!    had none), both queued at the same instant between two publishes
//!    ([`NodeCore::mark_handover`]). Markers are messages on the reserved topic
//!    [`TopicId::HANDOVER`], alone in their packet ([`wire::FLAG_HANDOVER`]).
//! 3. **The node delivers A's stream up to the `Left` marker and B's from the `Joined`
//!    marker**: B's stream of that sender is gated ([`Gate`]): what comes before the marker
//!    is skipped (it was for B's other members; the node had it from A), what comes after
//!    waits until A's stream has reached its marker.
//! 4. **B's ring must not free the cut before the node is in its view**: a member that sees
//!    a `Joined` marker for a node its ring lacks holds the stream's stability before the
//!    marker (`Ring::hold_for_joiner`, at most `view_wait`).
//! 5. **The departure ends** once every stream of A reached its marker and at least
//!    `handover_min` passed (senders that have not learned the move yet still send to A):
//!    the node leaves A's group and its record names no departed region. After
//!    `handover_timeout` it ends anyway, and what A's streams still lack is reported as gaps.
//!
//! Limits, counted in [`HandoverStats`]: a second change while a departure is still open
//! ends that departure at once (`cut_short`, its holes reported); a sender that starts
//! sending to A during the departure while the node already delivers its stream in B is not
//! cut (`conflicts`: A's copy is ignored); a sender that restarts during the departure ends
//! its old incarnation's streams at once, in cut order, and its new incarnation (which knew
//! of the move) is not gated (`restarted`); a `Left` marker never received while its
//! `Joined` one was ends A's stream at its hole, the rest reported as a gap (`cuts_lost`);
//! best-effort mode does no handover.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use bytes::Bytes;
use qs_recovery::Ring;
use qs_regions::Signature;
use qs_transport::wire::{self, HandoverMarker, MarkerKind};
use qs_transport::{Instant, NodeId, RegionId, Seq, SocketCommand, TopicId};

use super::NodeCore;

/// Handover counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandoverStats {
    /// Markers this node queued as a sender (one per region stream cut).
    pub markers_sent: u64,
    /// Departures this node started (subscription changes that kept topics).
    pub departures: u64,
    /// Departures that ended with every stream of the old region at its marker.
    pub completed: u64,
    /// Departures ended by `handover_timeout` (what their streams lacked reported as gaps).
    pub timed_out: u64,
    /// Departures ended early by a further subscription change.
    pub cut_short: u64,
    /// Messages of new-region streams skipped because they came before their sender's
    /// `Joined` marker (this node had them from the old region, or did not subscribe them).
    pub skipped: u64,
    /// Gates given up because their `Joined` marker did not come within `handover_timeout`.
    pub gates_timed_out: u64,
    /// Gates dropped because their sender restarted: its new incarnation's stream here
    /// began after the move was known, so all of it is this node's and nothing is skipped.
    pub restarted: u64,
    /// Old-region streams ended at a hole when they were finished (the departure ended, or
    /// their sender restarted): their `Left` marker was never received while the sender's
    /// `Joined` one was, so what followed the hole was reported as a gap, not delivered
    /// (see `end_at_lost_cut`).
    pub cuts_lost: u64,
    /// Old-region streams ignored because the same sender's new-region stream was already
    /// delivering here when they began.
    pub conflicts: u64,
}

/// The region this node is departing, with its ring.
#[derive(Debug)]
pub(super) struct Departure {
    /// The region departed.
    pub(super) region: RegionId,
    /// The version of this node's subscription record that started it (markers name it).
    pub(super) version: u32,
    /// The departed region's ring (reliable mode).
    pub(super) ring: Option<Ring>,
    pub(super) since: Instant,
    /// Senders whose stream of the departed region reached its `Left` marker (or that are
    /// not cut: a conflict); their packets there are ignored from now on.
    pub(super) done: BTreeSet<NodeId>,
    /// The epochs of the departed region's streams that reached their marker: this node
    /// still caretakes them for the old ring until the departure ends, then drops them.
    pub(super) finished: Vec<(NodeId, u64)>,
}

/// How a sender's stream in the own region is gated during a handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Before the sender's `Joined` marker: messages are skipped. `incarnation` is the
    /// sender's incarnation when gated (a later one marks no cut for this departure).
    Discarding {
        version: u32,
        since: Instant,
        incarnation: u64,
    },
    /// At the marker: the stream waits until the sender's old-region stream reached its
    /// `Left` marker. `incarnation` as when gated.
    Joined { incarnation: u64 },
}

impl Gate {
    /// The sender's incarnation whose cut the gate waits for.
    fn incarnation(&self) -> u64 {
        match *self {
            Gate::Discarding { incarnation, .. } | Gate::Joined { incarnation } => incarnation,
        }
    }
}

/// Most gates held (one per sender; beyond it a sender's new stream is not gated).
const GATES_MAX: usize = 4096;

/// The sender incarnation a stream epoch was made from (`send.rs`: the incarnation shifted
/// left by 16, plus the streams the process started).
pub(super) fn incarnation_of(epoch: u64) -> u64 {
    epoch >> 16
}

impl NodeCore {
    /// Whether this node receives `region`'s data: its own region, or the one it departs.
    pub(super) fn receives(&self, region: RegionId) -> bool {
        Some(region) == self.own_region || self.departed_region() == Some(region)
    }

    /// The region this node is departing, if any.
    pub(super) fn departed_region(&self) -> Option<RegionId> {
        self.departure.as_ref().map(|d| d.region)
    }

    /// The own region changes from `old` to the current `own_region` with `signature`:
    /// whether to depart `old` (reliable mode, and the node keeps some of its topics).
    pub(super) fn should_depart(&self, old: RegionId, signature: &Signature) -> bool {
        self.config.reliable
            && !signature.is_empty()
            && self
                .regions
                .region(old)
                .is_some_and(|r| r.signature.topics().iter().any(|t| signature.contains(*t)))
    }

    /// Starts departing `old` (the own region until now): its ring moves aside, and every
    /// sender with a stream there has its stream in the new region gated until its cut.
    pub(super) fn begin_departure(&mut self, now: Instant, old: RegionId, version: u32) {
        let ring = self.ring.take_if(|r| r.region() == old);
        self.departure = Some(Departure {
            region: old,
            version,
            ring,
            since: now,
            done: BTreeSet::new(),
            finished: Vec::new(),
        });
        self.stats.handover.departures += 1;
        let senders: Vec<(NodeId, u64)> = self
            .recv
            .iter()
            .filter(|((_, r), _)| *r == old)
            .map(|((s, _), stream)| (*s, stream.epoch))
            .collect();
        for (s, epoch) in senders {
            self.gate(now, s, epoch);
        }
    }

    /// Gates `sender`'s stream in the own region (see [`Gate`]), unless it is gated already;
    /// `epoch` is that of its stream that calls for the gate.
    fn gate(&mut self, now: Instant, sender: NodeId, epoch: u64) {
        let Some(version) = self.departure.as_ref().map(|d| d.version) else {
            return;
        };
        if self.gates.len() < GATES_MAX || self.gates.contains_key(&sender) {
            self.gates.entry(sender).or_insert(Gate::Discarding {
                version,
                since: now,
                incarnation: incarnation_of(epoch),
            });
        }
    }

    /// A stream of the departed region is about to begin at this node: whether to take it.
    /// A sender that reached its marker there is done; one whose new-region stream already
    /// delivers here ungated cannot be cut any more (a conflict, counted); any other is
    /// gated in the own region until its cut.
    pub(super) fn admit_departed_stream(
        &mut self,
        now: Instant,
        sender: NodeId,
        epoch: u64,
    ) -> bool {
        if self
            .departure
            .as_ref()
            .is_none_or(|d| d.done.contains(&sender))
        {
            return false;
        }
        let own = self.own_region;
        let delivering = own.is_some_and(|r| self.recv.contains_key(&(sender, r)))
            && !self.gates.contains_key(&sender);
        // A restarted sender's new stream (see `ungate_restarted`).
        if delivering || self.restarted_since_gated(sender, epoch) {
            if let Some(d) = self.departure.as_mut() {
                d.done.insert(sender);
            }
            self.stats.handover.conflicts += 1;
            return false;
        }
        self.gate(now, sender, epoch);
        true
    }

    /// A packet or ring decision of `sender`'s stream `epoch` in `region` is about to be
    /// taken. If that is the own region, the sender is gated in an earlier incarnation, and
    /// the stream is newer than the one held there, the sender restarted: its old
    /// incarnation's streams end here, in handover order (the departed region's up to its
    /// `Left` marker, then the own region's from its `Joined` one), and the gate goes. The
    /// restarted sender learnt this node's move before it began the new stream, so it marks
    /// no cut there: everything in it is for this node (skipping up to a marker would lose
    /// messages), and its new stream of the departed region is a conflict, ignored
    /// (`admit_departed_stream`).
    pub(super) fn ungate_restarted(
        &mut self,
        now: Instant,
        sender: NodeId,
        region: RegionId,
        epoch: u64,
    ) {
        let key = (sender, region);
        if !self.restarted_since_gated(sender, epoch)
            || Some(region) != self.own_region
            || self.recv.get(&key).is_some_and(|s| s.epoch >= epoch)
        {
            return;
        }
        if let Some(departed) = self.departed_region() {
            let old = (sender, departed);
            if self.recv.get(&old).is_some_and(|s| s.epoch < epoch) {
                self.finish_stream(now, old);
                self.retire_departed_stream(old);
            }
        }
        if self.recv.contains_key(&key) {
            self.finish_stream(now, key);
        }
        if self.gates.remove(&sender).is_some() {
            self.stats.handover.restarted += 1;
        }
    }

    /// Whether `sender` is gated for an incarnation older than `epoch`'s: it restarted since
    /// (see `ungate_restarted`).
    fn restarted_since_gated(&self, sender: NodeId, epoch: u64) -> bool {
        self.gates
            .get(&sender)
            .is_some_and(|g| g.incarnation() < incarnation_of(epoch))
    }

    /// The departed region's stream `key` is over for this node (its cut reached, lost, or
    /// its sender restarted): it goes, its sender is done there, and its epoch is kept so the
    /// departure's end drops what this node caretook of it.
    fn retire_departed_stream(&mut self, key: (NodeId, RegionId)) {
        let epoch = self.recv.remove(&key).map(|s| s.epoch);
        self.stalled.remove(&key);
        if let Some(d) = self.departure.as_mut() {
            d.done.insert(key.0);
            d.finished.extend(epoch.map(|e| (key.0, e)));
        }
    }

    /// Whether the own-region stream `key` must not release anything now: its sender's
    /// `Joined` marker was delivered and its stream of the departed region has not reached
    /// the `Left` marker yet. A gate whose wait is over is dropped here.
    pub(super) fn handover_blocks(&mut self, key: (NodeId, RegionId)) -> bool {
        let (sender, region) = key;
        if Some(region) != self.own_region
            || !matches!(self.gates.get(&sender), Some(Gate::Joined { .. }))
        {
            return false;
        }
        if self.departed_stream_pending(sender) {
            return true;
        }
        self.gates.remove(&sender);
        false
    }

    /// Whether the own-region stream `key` is before its sender's `Joined` marker (its
    /// messages are skipped).
    pub(super) fn handover_discards(&self, key: (NodeId, RegionId)) -> bool {
        let (sender, region) = key;
        Some(region) == self.own_region
            && matches!(self.gates.get(&sender), Some(Gate::Discarding { .. }))
    }

    fn departed_stream_pending(&self, sender: NodeId) -> bool {
        self.departure
            .as_ref()
            .is_some_and(|d| self.recv.contains_key(&(sender, d.region)))
    }

    /// A message on the handover topic popped (in order) from stream `key`; one that is no
    /// marker is counted as malformed.
    pub(super) fn on_marker_popped(&mut self, key: (NodeId, RegionId), payload: &[u8]) {
        let Ok(marker) = HandoverMarker::parse(payload) else {
            self.stats.drops.malformed += 1;
            return;
        };
        let (sender, region) = key;
        if marker.node != self.config.id {
            return; // another node's cut
        }
        match marker.kind {
            MarkerKind::Joined if Some(region) == self.own_region => {
                if let Some(&Gate::Discarding {
                    version,
                    incarnation,
                    ..
                }) = self.gates.get(&sender)
                {
                    if version == marker.version {
                        self.gates.insert(sender, Gate::Joined { incarnation });
                    }
                }
            }
            MarkerKind::Left => {
                let ours = self
                    .departure
                    .as_ref()
                    .is_some_and(|d| d.region == region && d.version == marker.version);
                if !ours {
                    return;
                }
                // Everything of this stream that is ours was delivered: what follows in it
                // goes to the region's other members.
                self.retire_departed_stream(key);
                if let Some(own) = self.own_region {
                    self.drain_stream((sender, own));
                }
            }
            MarkerKind::Joined => {}
        }
    }

    /// As a sender: the region table moved `node` (record `version`) from `from`, which it
    /// now departs, to `to`. Marks the cut in this node's streams: `Left` into `from` and
    /// `Joined` into `to` (a stream into `to` is started if there was none), if this node
    /// has a stream into `from` at all (otherwise `node` has nothing to cut).
    pub(super) fn mark_handover(
        &mut self,
        node: NodeId,
        version: u32,
        from: RegionId,
        to: Option<RegionId>,
    ) {
        if !self.config.reliable || !self.send.contains_key(&from) {
            return;
        }
        let marker = |kind| HandoverMarker {
            kind,
            node,
            version,
        };
        self.queue_marker(from, marker(MarkerKind::Left));
        if let Some(to) = to {
            if self.send_stream_for(to) {
                self.queue_marker(to, marker(MarkerKind::Joined));
            }
        }
    }

    fn queue_marker(&mut self, region: RegionId, marker: HandoverMarker) {
        let payload = Bytes::copy_from_slice(&marker.to_bytes());
        if self.queue_message(region, TopicId::HANDOVER, payload) {
            self.stats.handover.markers_sent += 1;
        }
    }

    /// A data packet flagged as a handover marker arrived in `region` (any order): a
    /// `Joined` marker for a node the region's ring lacks holds the stream's stability
    /// before it (see the module docs, step 4).
    pub(super) fn on_marker_arrival(
        &mut self,
        now: Instant,
        region: RegionId,
        sender: NodeId,
        epoch: u64,
        seq: Seq,
        packet: &wire::DataPacket,
    ) {
        // (A malformed one is counted when it pops.)
        let Some(m) = packet.marker() else {
            return;
        };
        if m.kind == MarkerKind::Joined && m.node != self.config.id {
            if let Some(ring) = self.ring_of(region) {
                ring.hold_for_joiner(now, sender, epoch, seq, m.node);
            }
        }
    }

    /// Stream `key` is about to be finished (its sender started a new stream, or the
    /// departure ends). If it is of the departed region and its sender's own-region stream is
    /// at its `Joined` marker while this one holds no `Left` marker, the cut lies in a hole
    /// nobody repaired: beyond the hole this node cannot tell its messages from those it gets
    /// in the own region, so the stream ends at the hole (the rest reported as a gap) rather
    /// than deliver some twice, and the own-region stream goes on. Returns whether it did.
    pub(super) fn end_at_lost_cut(&mut self, key: (NodeId, RegionId)) -> bool {
        let (sender, region) = key;
        let Some(version) = self
            .departure
            .as_ref()
            .filter(|d| d.region == region)
            .map(|d| d.version)
        else {
            return false;
        };
        let id = self.config.id;
        let left = |p: &wire::DataPacket| {
            p.marker()
                .is_some_and(|m| m.kind == MarkerKind::Left && m.node == id && m.version == version)
        };
        if !matches!(self.gates.get(&sender), Some(Gate::Joined { .. }))
            || self.stream_holds(key, left)
        {
            return false;
        }
        self.stats.handover.cuts_lost += 1;
        self.end_stream_at_hole(key);
        self.retire_departed_stream(key);
        if let Some(own) = self.own_region {
            self.drain_stream((sender, own));
        }
        true
    }

    /// Ends the departure: leaves the departed region's group, reports what its streams
    /// still lack as gaps, and publishes a record that departs nothing. `why` counts it.
    pub(super) fn end_departure(&mut self, now: Instant, why: DepartureEnd) {
        let Some(region) = self.departed_region() else {
            return;
        };
        match why {
            DepartureEnd::Completed => self.stats.handover.completed += 1,
            DepartureEnd::TimedOut => self.stats.handover.timed_out += 1,
            DepartureEnd::CutShort => self.stats.handover.cut_short += 1,
        }
        let keys: Vec<(NodeId, RegionId)> = self
            .recv
            .keys()
            .filter(|(_, r)| *r == region)
            .copied()
            .collect();
        // The streams end while the departure is still open, so a `Left` marker met on the
        // way still cuts its stream there. Their epochs are taken first: finishing a stream
        // whose application took everything removes it (not `retire_departed_stream`).
        let mut finished = Vec::new();
        for key in &keys {
            finished.extend(self.recv.get(key).map(|s| (key.0, s.epoch)));
            self.finish_stream(now, *key);
            self.recv.remove(key);
            self.stalled.remove(key);
        }
        let Some(d) = self.departure.take() else {
            return;
        };
        finished.extend(d.finished);
        // What this node caretook for the old region: no ring of it cleans that any more.
        for (sender, epoch) in finished {
            self.cache.forget_stream(sender, epoch);
        }
        let range = self.regions.range();
        let own_group = self.own_region.map(|r| range.group(r));
        if Some(range.group(d.region)) != own_group {
            let group = range.group(d.region);
            self.commands
                .push_back(SocketCommand::LeaveGroup(SocketAddrV4::new(
                    group,
                    self.config.data_port,
                )));
        }
        // Streams waiting at their `Joined` marker go on.
        let joined: Vec<NodeId> = self
            .gates
            .iter()
            .filter(|(_, g)| matches!(g, Gate::Joined { .. }))
            .map(|(s, _)| *s)
            .collect();
        for s in joined {
            self.gates.remove(&s);
            if let Some(own) = self.own_region {
                self.drain_stream((s, own));
            }
        }
        if why != DepartureEnd::CutShort {
            self.gossip.clear_departing();
            self.announce_record(now);
        }
    }

    /// Announces this node's current subscription record (signature, version, departed
    /// region) to the LAN.
    pub(super) fn announce_record(&mut self, now: Instant) {
        let record = self.gossip.subscriptions().record(self.config.id);
        let version = record.as_ref().map_or(0, |r| r.version);
        let departing = record.and_then(|r| r.departing);
        let signature = Signature::new(self.subscriptions.iter().copied());
        self.discovery
            .set_signature(now, signature, version, departing);
        self.drain_gossip(now);
    }

    /// The handover's timers: the departure's end, gates whose marker never came.
    pub(super) fn handover_timeout(&mut self, now: Instant) {
        if let Some(d) = &self.departure {
            let pending = self.recv.keys().any(|(_, r)| *r == d.region);
            if now >= d.since + self.config.handover_timeout {
                self.end_departure(now, DepartureEnd::TimedOut);
            } else if !pending && now >= d.since + self.config.handover_min {
                self.end_departure(now, DepartureEnd::Completed);
            }
        }
        let timeout = self.config.handover_timeout;
        let due: Vec<NodeId> = self
            .gates
            .iter()
            .filter(|(_, g)| matches!(g, Gate::Discarding { since, .. } if now >= *since + timeout))
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            self.gates.remove(&s);
            self.stats.handover.gates_timed_out += 1;
            if let Some(own) = self.own_region {
                self.drain_stream((s, own));
            }
        }
    }

    /// The handover's next deadline.
    pub(super) fn handover_poll_timeout(&self) -> Option<Instant> {
        let departure = self.departure.as_ref().map(|d| {
            let pending = self.recv.keys().any(|(_, r)| *r == d.region);
            let wait = if pending {
                self.config.handover_timeout
            } else {
                self.config.handover_min
            };
            d.since + wait
        });
        let gates = self
            .gates
            .values()
            .filter_map(|g| match g {
                Gate::Discarding { since, .. } => Some(*since + self.config.handover_timeout),
                Gate::Joined { .. } => None,
            })
            .min();
        departure.into_iter().chain(gates).min()
    }

    /// Panics if the handover's bookkeeping is inconsistent.
    pub(super) fn check_handover_invariants(&self) {
        assert!(self.gates.len() <= GATES_MAX);
        if let Some(d) = &self.departure {
            assert_ne!(Some(d.region), self.own_region, "departing the own region");
            if let Some(r) = &d.ring {
                assert_eq!(r.region(), d.region, "departure ring of another region");
                r.check_invariants();
            }
            for s in &d.done {
                assert!(
                    !self.recv.contains_key(&(*s, d.region)),
                    "a done stream of the departed region is still held"
                );
            }
        }
    }
}

/// Why a departure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DepartureEnd {
    /// Every stream reached its marker.
    Completed,
    /// `handover_timeout` passed.
    TimedOut,
    /// A further subscription change.
    CutShort,
}

/// Defaults of the handover's times (see [`super::CoreConfig`]).
pub(super) const HANDOVER_MIN: Duration = Duration::from_millis(250);
pub(super) const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
