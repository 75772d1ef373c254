//! The receive path: one [`RecvStream`] per (sender, region) stream of this node's region.
//! Data packets enter the stream's [`ReceiveWindow`] (in order at once, after a hole held
//! back), leave it in sequence order, and are unpacked or reassembled into deliveries for
//! subscribed topics. Reliable mode waits for repair; best-effort mode reports holes as gaps
//! after `reorder_timeout`. A full application queue stalls the windows (back-pressure reaches
//! the senders through the ring) instead of dropping.
//!
//! With lateral error correction on, each stream remembers its young holes (at most
//! [`YOUNG_HOLES_MAX`]) and hides them from the ring for [`qs_recovery::Lec::hold_off`], so a
//! lateral repair gets its chance before the token path asks a peer; every data packet of the
//! region (refused ones too) is handed to LEC, and holes are reported to it. A stream first
//! heard mid-stream (a joiner) looks back `LOOK_BACK` positions for the hold-off before
//! counting them as not heard: a lost first packet may be rebuilt by a neighbour.
//!
//! Not here: how holes get repaired (`recovery.rs`, `lec.rs`), which senders are live
//! (`members.rs`).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use qs_recovery::{Arrival, PacketId, Popped, ReceiveWindow, StreamProgress, StreamUpdate};
use qs_transport::wire::{self, DataPacket, Fragment, Header, PacketKind, StreamState, HEADER_LEN};
use qs_transport::{Instant, NodeId, RegionId, Seq, TopicId};

use super::lec::Via;
use super::{CoreConfig, Event, NodeCore};

/// Most young holes a stream remembers (beyond it the oldest is forgotten: the ring may ask
/// for it at once, which costs a repair, not a loss).
pub(super) const YOUNG_HOLES_MAX: usize = 256;
/// Most positions before a stream's first packet heard mid-stream that wait for LEC (see
/// [`ReceiveWindow::look_back`]); a bin spans `bin_packets × stagger` of them (16 by default).
const LOOK_BACK: u32 = 64;
/// Most holes one arrival reports to LEC (a jump of thousands is a join or a long outage,
/// which the ring handles).
const HOLES_REPORTED_MAX: u32 = 64;

#[derive(Debug)]
struct Reassembly {
    first_seq: Seq,
    topic: TopicId,
    total_len: usize,
    next_index: u16,
    count: u16,
    next_seq: Seq,
    buf: BytesMut,
}

/// A data packet waiting in a receive window for its turn.
#[derive(Debug)]
pub(super) enum Received {
    Packed(DataPacket),
    Fragment(Fragment),
}

/// One (sender, region) stream as this node receives it.
#[derive(Debug)]
pub(super) struct RecvStream {
    /// The epoch of the sender's stream this is.
    pub(super) epoch: u64,
    pub(super) window: ReceiveWindow<Received>,
    partial: Option<Reassembly>,
    /// First sequence number of a fragmented message already counted as incomplete, so its
    /// remaining fragments are skipped without counting it again.
    skipping: Option<Seq>,
    /// The sender is gone: the stream is removed once the application has taken what it
    /// still holds.
    closing: bool,
    /// Closed because the sender is gone (not replaced by a newer epoch): its end is
    /// reported as [`Event::SenderLost`].
    sender_lost: bool,
    /// Messages of this stream delivered or handed to reassembly, and packets reported lost.
    delivered: u64,
    missed: u64,
    /// The last packet popped from the window (delivered or reported).
    last: Option<Seq>,
    /// A ring round has counted this node's prefix of the stream: from then on, anything the
    /// region's stability point passes that this node lacks is a loss (a gap), not history
    /// from before it joined.
    synced: bool,
    /// Holes found recently, in sequence order, with the time until which the ring does not
    /// see them (they wait for a lateral repair).
    young: VecDeque<(Seq, Instant)>,
    /// The view tag of the sender's newest packet (what the ring was last told).
    view: u16,
}

impl RecvStream {
    /// A stream of `epoch` nothing was heard of yet, its window in the configured mode.
    pub(super) fn new(config: &CoreConfig, epoch: u64) -> RecvStream {
        let capacity = config.reorder_window_packets;
        RecvStream {
            epoch,
            window: if config.reliable {
                ReceiveWindow::reliable(capacity).starting_at(config.first_seq)
            } else {
                ReceiveWindow::new(capacity, config.reorder_timeout).starting_at(config.first_seq)
            },
            partial: None,
            skipping: None,
            closing: false,
            sender_lost: false,
            delivered: 0,
            missed: 0,
            last: None,
            synced: false,
            young: VecDeque::new(),
            view: 0,
        }
    }

    /// Abandons the message being reassembled; returns whether there was one.
    fn abandon(&mut self) -> bool {
        match self.partial.take() {
            Some(p) => {
                self.skipping = Some(p.first_seq);
                true
            }
            None => false,
        }
    }

    /// The stream as the recovery ring sees it at `now`: holes still waiting for a lateral
    /// repair are left out, with everything after them (the state then says it did not
    /// examine them, so the ring neither requests them nor takes them as received).
    pub(super) fn progress(&self, sender: NodeId, max: usize, now: Instant) -> StreamProgress {
        let mut window = self.window.state(max);
        let held = self.young.iter().find(|(_, until)| *until > now);
        if let (Some(w), Some(&(cut, _))) = (window.as_mut(), held) {
            if w.prefix.is_before(cut) && cut.is_before(w.examined_to.next()) {
                let last = Seq(cut.0.wrapping_sub(1));
                w.holes.retain(|r| r.first.is_before(cut));
                if let Some(r) = w.holes.last_mut() {
                    r.count = r.count.min(r.first.distance_to(cut) as u32);
                }
                w.examined_to = last;
            }
        }
        StreamProgress {
            sender,
            epoch: self.epoch,
            window,
            synced: self.synced,
        }
    }

    /// Remembers the holes between the previous highest and `seq` (exclusive) as young until
    /// `until`; forgets those the window has moved past or whose wait is over.
    fn note_holes(&mut self, now: Instant, first: Seq, seq: Seq, until: Instant) {
        let next = self.window.next_expected();
        while self
            .young
            .front()
            .is_some_and(|(s, t)| *t <= now || next.is_some_and(|n| s.is_before(n)))
        {
            self.young.pop_front();
        }
        let mut s = first;
        while s.is_before(seq) {
            if self.young.len() >= YOUNG_HOLES_MAX {
                self.young.pop_front();
            }
            self.young.push_back((s, until));
            s = s.next();
        }
    }

    /// A hole was filled: it no longer holds the ring back.
    fn hole_filled(&mut self, seq: Seq) {
        if let Some(i) = self.young.iter().rposition(|(s, _)| *s == seq) {
            self.young.remove(i);
        }
    }

    /// The sender is gone: what the window still misses can never come.
    pub(super) fn close(&mut self, now: Instant) {
        self.window.give_up_all(now);
        self.closing = true;
    }

    /// Panics if the stream's bookkeeping exceeds the configured bounds.
    pub(super) fn check_invariants(&self, config: &CoreConfig) {
        assert!(self.window.waiting() <= config.reorder_window_packets);
        if let Some(p) = &self.partial {
            assert!(p.buf.len() <= p.total_len && p.total_len <= config.max_message_bytes);
        }
    }
}

impl NodeCore {
    /// A data packet or fragment of `header.sender`'s stream from the network, sent from
    /// `from` (`body`: the opened datagram's body; `datagram`: the whole opened datagram);
    /// then what LEC rebuilt meanwhile.
    pub(super) fn handle_data(
        &mut self,
        now: Instant,
        header: &Header,
        datagram: &Bytes,
        body: Bytes,
        from: std::net::SocketAddr,
    ) {
        self.receive_data(now, header, datagram, body, Via::Net(from));
        self.pump_lec(now);
    }

    /// A data packet or fragment, from the network or rebuilt by LEC.
    pub(super) fn receive_data(
        &mut self,
        now: Instant,
        header: &Header,
        datagram: &Bytes,
        body: Bytes,
        via: Via,
    ) {
        let (sender, fragment) = (header.sender, header.kind == PacketKind::Fragment);
        // What caretakers keep and forward: the datagram as opened (no seal trailer).
        let datagram = &datagram.slice(..HEADER_LEN + body.len());
        let parse = |body: Bytes| {
            if fragment {
                Fragment::parse(body).map(|f| ((f.region, f.epoch), f.seq, Received::Fragment(f)))
            } else {
                DataPacket::parse(body).map(|p| ((p.region, p.epoch), p.seq, Received::Packed(p)))
            }
        };
        let Ok(((region, epoch), seq, packet)) = parse(body.clone()) else {
            self.stats.drops.malformed += 1;
            return;
        };
        if !self.receives(region) {
            self.stats.drops.foreign_region += 1;
            return;
        }
        if self.config.inject_loss > 0.0 && self.prng.chance(self.config.inject_loss) {
            self.stats.drops.injected_loss += 1;
            return;
        }
        let own = Some(region) == self.own_region;
        if via != Via::Rebuilt && own {
            // Every packet of the region is repair input, whatever the window makes of it.
            self.lec_on_packet(now, PacketId { sender, epoch, seq }, datagram);
        }
        let key = (sender, region);
        match self.recv.get(&key).map(|s| s.epoch) {
            Some(e) if e > epoch => {
                // A straggler of the sender's earlier stream.
                self.stats.drops.stale += 1;
                return;
            }
            Some(e) if e < epoch => self.finish_stream(now, key),
            _ => {}
        }
        if !self.gates.is_empty() {
            self.ungate_restarted(now, sender, region, epoch);
        }
        if !self.recv.contains_key(&key) {
            if self.is_closed(sender, epoch) {
                // A straggler (a second repair copy) of a stream closed for good: delivering
                // it would start the stream over.
                self.stats.drops.stale += 1;
                return;
            }
            if self.recv.len() >= self.config.max_streams {
                self.stats.drops.stream_table_full += 1;
                return;
            }
            if !own && !self.admit_departed_stream(now, sender, epoch) {
                // The departed region's stream of a sender that reached its cut.
                self.stats.drops.stale += 1;
                return;
            }
        }
        // A sender's stream in the region this node moves into, before its cut: the `Joined`
        // marker may come after later packets (reordered, or the first packets heard here
        // were lost: seed 40475 first heard the 56th while the marker was the 1st), so the
        // window starts as far back as it can hold and waits for what came before, like at a
        // stream's start (what never comes, the ring skips as before this node's time).
        // Starting at the first packet would drop the marker as stale and discard what
        // follows it.
        let gated_start =
            (!self.recv.contains_key(&key) && self.handover_discards(key)).then(|| {
                let slack = self.config.reorder_window_packets.saturating_sub(1) as u32;
                Seq(seq.0.wrapping_sub(slack))
            });
        let hold = if own {
            self.lec_hold_off()
        } else {
            std::time::Duration::ZERO
        };
        let config = &self.config;
        let stream = self.recv.entry(key).or_insert_with(|| {
            let mut s = RecvStream::new(config, epoch);
            if let Some(start) = gated_start {
                if config.first_seq.is_before(start) {
                    s.window = s.window.starting_at(start);
                }
            }
            s
        });
        if stream.window.next_expected().is_none() && !hold.is_zero() {
            // A stream first heard mid-stream (a joiner): the packets just before the first
            // one heard may have been lost and be rebuilt laterally a bin later.
            stream.window.look_back(LOOK_BACK, hold);
        }
        // A packet that has to wait is copied out of the receive batch, so it does not pin
        // the whole batch buffer; in-order packets stay zero-copy.
        let in_order = stream.window.next_expected().is_none_or(|next| next == seq);
        if !in_order && self.held_estimate >= self.config.max_held_packets {
            // One budget for all windows: recount (the estimate only grows between counts).
            self.held_estimate = self.recv.values().map(|s| s.window.waiting()).sum();
            if self.held_estimate >= self.config.max_held_packets {
                self.stats.drops.held_budget += 1;
                return;
            }
        }
        let Some(stream) = self.recv.get_mut(&key) else {
            return;
        };
        let packet = if in_order {
            packet
        } else {
            parse(Bytes::copy_from_slice(&body)).map_or(packet, |(_, _, copy)| copy)
        };
        let highest_before = stream.window.highest();
        let fresh = highest_before.is_none_or(|h| h.is_before(seq))
            && header.flags & wire::FLAG_UNICAST_COPY == 0
            && via != Via::Rebuilt;
        let view = match &packet {
            Received::Packed(p) => p.view,
            Received::Fragment(f) => f.view,
        };
        let view_changed = fresh && stream.view != view;
        if view_changed {
            stream.view = view;
        }
        if header.flags & wire::FLAG_HANDOVER != 0 {
            if let Received::Packed(p) = &packet {
                let p = p.clone();
                self.on_marker_arrival(now, region, sender, epoch, seq, &p);
            }
        }
        let Some(stream) = self.recv.get_mut(&key) else {
            return;
        };
        let arrival = stream.window.insert(now, seq, packet);
        if arrival == Arrival::Accepted && own {
            self.on_accepted(now, key, epoch, seq, highest_before, via);
        }
        if fresh && own {
            self.heard_multicast(now, region);
        }
        if fresh {
            // The sender's view of the region as it sent its newest packet: the leader holds
            // stability back while it differs from the ring's (a member it does not know yet).
            if let Some(ring) = self.ring_of(region).filter(|_| view_changed) {
                ring.note_sender_view(now, sender, epoch, view);
            }
        }
        match arrival {
            Arrival::Stale => self.stats.drops.stale += 1,
            Arrival::First { missed_before } => {
                self.stats.missed_on_join += u64::from(missed_before);
                if let Some(s) = self.recv.get_mut(&key) {
                    // Positions the window looks back at wait for LEC, not for the ring.
                    if let Some(next) = s.window.next_expected().filter(|n| n.is_before(seq)) {
                        s.note_holes(now, next, seq, now + hold);
                    }
                }
            }
            Arrival::Accepted => {
                self.stats.held_back += u64::from(!in_order);
                self.held_estimate += usize::from(!in_order);
            }
            Arrival::Beyond => self.stats.drops.beyond_window += 1,
        }
        if let Some(ring) = self.ring_of(region) {
            ring.on_data();
            // Caretakers keep their share (a duplicate may fill a cache a view change left
            // empty); the cache refuses what is already stable.
            if arrival != Arrival::Beyond
                && ring.is_caretaker(seq)
                && self.cache.insert(sender, epoch, seq, datagram).is_err()
            {
                self.stats.drops.cache_full += 1;
            }
        }
        self.drain_stream(key);
    }

    /// After an accepted packet: a packet after the highest opens holes (young, reported to
    /// LEC); one before it fills a hole, a lost packet repaired laterally, by a peer or by its
    /// sender.
    fn on_accepted(
        &mut self,
        now: Instant,
        key: (NodeId, RegionId),
        epoch: u64,
        seq: Seq,
        highest_before: Option<Seq>,
        via: Via,
    ) {
        let Some(highest) = highest_before else {
            return;
        };
        let (sender, _) = key;
        if highest.is_before(seq) {
            if via == Via::Rebuilt {
                // Rebuilt after the stream's highest: LEC parked it for a moment first (see
                // `lec.rs`), so the original did not come in time: lost all the same.
                self.lec.repaired.lateral += 1;
            }
            let first = highest.next();
            if first == seq {
                return;
            }
            let hold = self.lec_hold_off();
            if hold.is_zero() {
                return;
            }
            let Some(stream) = self.recv.get_mut(&key) else {
                return;
            };
            stream.note_holes(now, first, seq, now + hold);
            let n = (first.distance_to(seq) as u32).min(HOLES_REPORTED_MAX);
            for i in 0..n {
                let id = PacketId {
                    sender,
                    epoch,
                    seq: first.advance(i),
                };
                self.lec_on_missing(now, id);
            }
            return;
        }
        if let Some(stream) = self.recv.get_mut(&key) {
            stream.hole_filled(seq);
        }
        match via {
            Via::Rebuilt => self.lec.repaired.lateral += 1,
            Via::Net(from) if Some(from) == self.address_of(sender) => {
                self.lec.repaired.sender += 1;
            }
            Via::Net(_) => self.lec.repaired.peer += 1,
        }
    }

    /// Hands on what a stream's window released, in order: messages, fragments, gaps. Stops
    /// (reliable mode) while the application is `max_pending_events` behind. While other
    /// streams wait for the application, this one waits behind them (reliable mode): a
    /// stream whose packets happen to arrive as room frees up must not take all of it.
    pub(super) fn drain_stream(&mut self, key: (NodeId, RegionId)) {
        if self.config.reliable && !self.stalled.is_empty() && !self.stalled.contains(&key) {
            self.stalled.insert(key);
            return;
        }
        self.drain(key, true);
    }

    /// The application made room: the waiting streams take turns, one packet each, until the
    /// backlog is full again or none has anything ready. Those still holding packets keep
    /// waiting, in turn order from where this pass stopped.
    pub(super) fn resume_stalled(&mut self) {
        let mut turn: Vec<(NodeId, RegionId)> =
            std::mem::take(&mut self.stalled).into_iter().collect();
        // Start after the stream served first last time, so that no stream is always first.
        if let Some(last) = self.resume_after {
            let at = turn.partition_point(|k| *k <= last);
            turn.rotate_left(at);
        }
        let mut k = 0;
        while !turn.is_empty() {
            if self.events.len() >= self.config.max_pending_events {
                break;
            }
            k %= turn.len();
            let key = turn[k];
            if self.drain_one(key) {
                k += 1;
            } else {
                turn.remove(k);
            }
        }
        if let Some(first) = turn.first() {
            self.resume_after = Some(*first);
        }
        self.stalled.extend(turn);
    }

    /// The sender started a new stream (a new epoch): the old one is over. What it holds is
    /// handed on now (holes reported as gaps), whatever the application's backlog, so that
    /// the new stream's messages come after all of the old one's.
    pub(super) fn finish_stream(&mut self, now: Instant, key: (NodeId, RegionId)) {
        if self.departure.is_some() && self.end_at_lost_cut(key) {
            return;
        }
        if let Some(s) = self.recv.get_mut(&key) {
            s.close(now);
        }
        self.stalled.remove(&key);
        self.drain(key, false);
    }

    /// Ends stream `key` at its first hole: what its window releases in order is handed on,
    /// everything after the hole, up to the highest packet known, is reported as one gap and
    /// not delivered (the handover cannot tell which of it was this node's: `handover.rs`).
    pub(super) fn end_stream_at_hole(&mut self, key: (NodeId, RegionId)) {
        self.stalled.remove(&key);
        self.drain(key, false);
        let Some(stream) = self.recv.get_mut(&key) else {
            return;
        };
        let (Some(prefix), Some(highest)) = (stream.window.prefix(), stream.window.highest())
        else {
            return;
        };
        let count = u32::try_from(prefix.distance_to(highest).max(0)).unwrap_or(u32::MAX);
        if count == 0 {
            return;
        }
        if stream.abandon() {
            self.stats.drops.incomplete_message += 1;
        }
        stream.missed += u64::from(count);
        self.stats.gaps += u64::from(count);
        self.events.push_back(Event::Gap {
            sender: key.0,
            region: key.1,
            missed: count,
        });
    }

    /// Whether stream `key` holds, not yet handed on, a packet for which `is` holds.
    pub(super) fn stream_holds(
        &self,
        key: (NodeId, RegionId),
        is: impl Fn(&DataPacket) -> bool,
    ) -> bool {
        self.recv.get(&key).is_some_and(|s| {
            s.window.held().any(|r| match r {
                Received::Packed(p) => is(p),
                Received::Fragment(_) => false,
            })
        })
    }

    fn drain(&mut self, key: (NodeId, RegionId), capped: bool) {
        loop {
            if capped && self.config.reliable && self.events.len() >= self.config.max_pending_events
            {
                self.stalled.insert(key);
                return;
            }
            if !self.drain_one(key) {
                return;
            }
        }
    }

    /// Hands on one packet (or gap) the stream's window releases; false when it has none
    /// (or a handover holds it back: `handover.rs`).
    fn drain_one(&mut self, key: (NodeId, RegionId)) -> bool {
        let (sender, region) = key;
        if !self.gates.is_empty() && self.handover_blocks(key) {
            return false;
        }
        let discarding = !self.gates.is_empty() && self.handover_discards(key);
        {
            let Some(stream) = self.recv.get_mut(&key) else {
                return false;
            };
            let Some(popped) = stream.window.pop() else {
                if stream.closing {
                    if stream.sender_lost {
                        self.events.push_back(Event::SenderLost {
                            sender,
                            region,
                            epoch: stream.epoch,
                            last: stream.last,
                            delivered: stream.delivered,
                            missed: stream.missed,
                        });
                    }
                    self.recv.remove(&key);
                }
                return false;
            };
            match popped {
                Popped::Lost { count, .. } if discarding => {
                    // Before the sender's cut: not this node's (it had them from its old
                    // region, or did not subscribe them).
                    self.stats.handover.skipped += u64::from(count);
                }
                Popped::Packet(seq, Received::Packed(p)) if discarding => {
                    stream.last = Some(seq);
                    for (topic, payload) in p.messages() {
                        if topic == TopicId::HANDOVER {
                            self.on_marker_popped(key, &payload);
                        } else {
                            self.stats.handover.skipped += 1;
                        }
                    }
                }
                Popped::Packet(seq, Received::Fragment(f)) if discarding => {
                    stream.last = Some(seq);
                    stream.abandon();
                    if f.index == 0 {
                        self.stats.handover.skipped += 1;
                    }
                }
                Popped::Lost { first, count } => {
                    stream.missed += u64::from(count);
                    stream.last = Some(first.advance(count.saturating_sub(1)));
                    if stream.abandon() {
                        self.stats.drops.incomplete_message += 1;
                    }
                    self.stats.gaps += u64::from(count);
                    self.events.push_back(Event::Gap {
                        sender,
                        region,
                        missed: count,
                    });
                }
                Popped::NotHeard { count } => {
                    self.stats.missed_on_join += u64::from(count);
                }
                Popped::Packet(seq, Received::Packed(p)) => {
                    stream.last = Some(seq);
                    self.stats.data_packets_received += 1;
                    if stream.abandon() {
                        self.stats.drops.incomplete_message += 1;
                    }
                    let mut delivered = 0;
                    for (topic, payload) in p.messages() {
                        if topic == TopicId::HANDOVER {
                            self.on_marker_popped(key, &payload);
                            continue;
                        }
                        if self.subscriptions.contains(&topic) {
                            delivered += 1;
                            self.deliver(sender, topic, payload);
                        } else {
                            self.stats.drops.unsubscribed += 1;
                        }
                    }
                    if let Some(s) = self.recv.get_mut(&key) {
                        s.delivered += delivered;
                    }
                }
                Popped::Packet(seq, Received::Fragment(f)) => {
                    stream.last = Some(seq);
                    self.stats.data_packets_received += 1;
                    self.handle_fragment(sender, key, f);
                }
            }
        }
        true
    }

    fn handle_fragment(&mut self, sender: NodeId, key: (NodeId, RegionId), f: Fragment) {
        let max = self.config.max_message_bytes;
        let stream = self.recv.get_mut(&key).expect("stream exists");
        let continues = stream.partial.as_ref().is_some_and(|p| {
            p.next_seq == f.seq
                && p.next_index == f.index
                && p.count == f.count
                && p.topic == f.topic
                && p.total_len == f.total_len as usize
        });
        if !continues {
            if stream.abandon() {
                self.stats.drops.incomplete_message += 1;
            }
            if f.index != 0 {
                // The message's first fragments were lost: count it once, skip the rest.
                let first = Seq(f.seq.0.wrapping_sub(u32::from(f.index)));
                if stream.skipping != Some(first) {
                    stream.skipping = Some(first);
                    self.stats.drops.incomplete_message += 1;
                }
                return;
            }
            if f.total_len as usize > max {
                stream.skipping = Some(f.seq);
                self.stats.drops.oversized += 1;
                return;
            }
            stream.partial = Some(Reassembly {
                first_seq: f.seq,
                topic: f.topic,
                total_len: f.total_len as usize,
                next_index: 0,
                count: f.count,
                next_seq: f.seq,
                // Grown as fragments come: a wire field must not reserve 16 MiB at once.
                buf: BytesMut::with_capacity((f.total_len as usize).min(64 << 10)),
            });
        }
        let p = stream.partial.as_mut().expect("partial exists");
        if p.buf.len() + f.payload.len() > p.total_len {
            stream.abandon();
            self.stats.drops.incomplete_message += 1;
            return;
        }
        p.buf.extend_from_slice(&f.payload);
        p.next_index += 1;
        p.next_seq = f.seq.next();
        if p.next_index < p.count {
            return;
        }
        let done = stream.partial.take().expect("partial exists");
        if done.buf.len() != done.total_len {
            self.stats.drops.incomplete_message += 1;
            return;
        }
        if self.subscriptions.contains(&done.topic) {
            stream.delivered += 1;
            self.deliver(sender, done.topic, done.buf.freeze());
        } else {
            self.stats.drops.unsubscribed += 1;
        }
    }

    /// A sender's stream state: its tail (so a lost tail is noticed) and, reliable mode, the
    /// floor the region acknowledged (a member lacking anything below it was not there then).
    pub(super) fn handle_stream_state(&mut self, now: Instant, sender: NodeId, body: &[u8]) {
        let Ok(s) = StreamState::parse(body) else {
            self.stats.drops.malformed += 1;
            return;
        };
        if !self.receives(s.region) {
            self.stats.drops.foreign_region += 1;
            return;
        }
        // A sender cannot be further ahead of a member than its send window plus our
        // reorder window: a state beyond that (a forgery, or a buggy peer) would skip data
        // that exists or count phantom losses, so it is refused.
        let bound = (self.config.send_window_packets + self.config.reorder_window_packets) as u32;
        let key = (sender, s.region);
        match self.recv.get(&key).map(|st| st.epoch) {
            // Never heard of this stream, in the own region, in reliable mode, while the
            // sender holds packets the region has not acknowledged: every one of them was
            // lost here (a stream of one packet, such as a handover marker, has no later
            // packet to reveal it). It starts after the acknowledged floor, where the ring
            // would start it; what came before was before this node's time.
            None if self.config.reliable
                && Some(s.region) == self.own_region
                && s.floor.is_before(s.highest)
                && self.recv.len() < self.config.max_streams =>
            {
                // (A state claiming more than the windows could hold starts nothing.)
                if s.floor.distance_to(s.highest) > i64::from(bound) {
                    self.stats.drops.out_of_bounds += 1;
                    return;
                }
                let before = self.config.first_seq.distance_to(s.floor.next()).max(0) as u64;
                self.stats.missed_on_join += before;
                let mut stream = RecvStream::new(&self.config, s.epoch);
                stream.window.skip_to(now, s.floor.next(), false);
                self.recv.insert(key, stream);
            }
            // Otherwise it has nothing to claim from before we joined.
            None => return,
            Some(e) if e > s.epoch => return,
            Some(e) if e < s.epoch => {
                // The sender started a new stream: the old one is over.
                self.finish_stream(now, key);
                return;
            }
            Some(_) => {}
        }
        let Some(stream) = self.recv.get_mut(&key) else {
            return;
        };
        if let Some(next) = stream.window.next_expected() {
            let far = |q: Seq| (bound..1 << 31).contains(&q.0.wrapping_sub(next.0).wrapping_sub(1));
            if far(s.highest) || far(s.floor) {
                self.stats.drops.out_of_bounds += 1;
                return;
            }
        }
        if self.config.reliable {
            let synced = stream.synced;
            stream.window.skip_to(now, s.floor.next(), synced);
        }
        stream.window.on_highest(now, s.highest);
        self.drain_stream(key);
    }

    /// Applies what a ring visit decided for one of this node's streams (creating it when
    /// the node had none), then hands on what it released.
    pub(super) fn apply_stream_update(&mut self, now: Instant, region: RegionId, u: StreamUpdate) {
        let key = (u.sender, region);
        match self.recv.get(&key).map(|s| s.epoch) {
            Some(e) if e > u.epoch => return,
            Some(e) if e < u.epoch => self.finish_stream(now, key),
            _ => {}
        }
        let own = Some(region) == self.own_region;
        if !self.gates.is_empty() {
            self.ungate_restarted(now, u.sender, region, u.epoch);
        }
        if !self.recv.contains_key(&key) {
            if self.recv.len() >= self.config.max_streams {
                return;
            }
            if !own && !self.admit_departed_stream(now, u.sender, u.epoch) {
                return;
            }
        }
        let config = &self.config;
        let stream = self
            .recv
            .entry(key)
            .or_insert_with(|| RecvStream::new(config, u.epoch));
        if stream.window.next_expected().is_none() {
            // A stream this node heard nothing of starts where the ring says: what the
            // sender sent before was before this node's time, and is counted as such.
            let before = config.first_seq.distance_to(u.skip_to).max(0) as u64;
            self.stats.missed_on_join += before;
        }
        stream.window.skip_to(now, u.skip_to, u.as_loss);
        stream.synced = u.synced;
        stream.window.on_highest(now, u.highest);
        self.cache.clean(u.sender, u.epoch, u.clean);
        self.drain_stream(key);
    }

    /// Closes the streams of a sender that is gone: delivered what can be, gaps for the rest;
    /// each is removed once the application took what it still holds.
    pub(super) fn close_streams_of(&mut self, now: Instant, sender: NodeId) {
        let keys: Vec<(NodeId, RegionId)> = self
            .recv
            .range((sender, RegionId(0))..=(sender, RegionId(u64::MAX)))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(s) = self.recv.get_mut(&key) {
                s.close(now);
                s.sender_lost = true;
            }
            self.drain_stream(key);
        }
    }

    /// Best-effort mode: gives up holes whose wait is over.
    pub(super) fn recv_timeout(&mut self, now: Instant) {
        // Keys are collected only when some hole is due (best effort; never in reliable mode).
        if !self
            .recv
            .values()
            .any(|s| s.window.deadline().is_some_and(|d| d <= now))
        {
            return;
        }
        let due: Vec<(NodeId, RegionId)> = self
            .recv
            .iter()
            .filter(|(_, s)| s.window.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(s) = self.recv.get_mut(&key) {
                s.window.handle_timeout(now);
            }
            self.drain_stream(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Duration;

    use qs_transport::wire::{DataWriter, StreamId};
    use qs_transport::ClusterId;

    use super::*;

    fn packet(seq: u32) -> Received {
        let mut buf = vec![0u8; 256];
        let header = Header::new(PacketKind::Data, ClusterId(1), NodeId(7));
        let id = StreamId {
            region: RegionId(3),
            epoch: 1,
        };
        let mut w = DataWriter::new(&mut buf, &header, id, Seq(seq)).unwrap();
        assert!(w.push(TopicId(5), b"x"));
        let len = w.finish().unwrap();
        let body = Bytes::copy_from_slice(&buf[HEADER_LEN..len]);
        Received::Packed(DataPacket::parse(body).unwrap())
    }

    fn stream() -> RecvStream {
        let c = CoreConfig::new(NodeId(1), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9));
        RecvStream::new(&c, 1)
    }

    /// Packets 1..=3 and 6 arrived at `t0`: 4 and 5 are holes, young until `t0 + hold`.
    fn with_holes(t0: Instant, hold: Duration) -> RecvStream {
        let mut s = stream();
        for q in [1, 2, 3, 6] {
            s.window.insert(t0, Seq(q), packet(q));
        }
        s.note_holes(t0, Seq(4), Seq(6), t0 + hold);
        s
    }

    fn holes(p: &StreamProgress) -> Vec<(u32, u32)> {
        let w = p.window.as_ref().unwrap();
        w.holes.iter().map(|r| (r.first.0, r.count)).collect()
    }

    #[test]
    fn a_young_hole_is_hidden_from_the_ring_until_its_hold_off_and_shown_from_then_on() {
        let t0 = Instant::ZERO + Duration::from_secs(1);
        let hold = Duration::from_millis(2);
        let s = with_holes(t0, hold);
        // Just before the hold-off ends: the ring sees neither hole, nor anything examined
        // past the prefix (so it claims no tail either).
        let p = s.progress(NodeId(7), 64, t0 + hold - Duration::from_nanos(1));
        assert!(holes(&p).is_empty());
        let w = p.window.as_ref().unwrap();
        assert_eq!(
            (w.prefix, w.examined_to, w.highest),
            (Seq(3), Seq(3), Seq(6))
        );
        // At the hold-off: both holes, examined up to the highest.
        let p = s.progress(NodeId(7), 64, t0 + hold);
        assert_eq!(holes(&p), vec![(4, 2)]);
        assert_eq!(p.window.as_ref().unwrap().examined_to, Seq(6));
    }

    #[test]
    fn an_older_hole_stays_visible_while_a_younger_one_after_it_is_held() {
        let t0 = Instant::ZERO + Duration::from_secs(1);
        let hold = Duration::from_millis(2);
        let mut s = with_holes(t0, hold);
        // Later, 7 and 9 arrive: 8 is a new hole, young while 4 and 5 are old.
        let t1 = t0 + hold;
        s.window.insert(t1, Seq(7), packet(7));
        s.window.insert(t1, Seq(9), packet(9));
        s.note_holes(t1, Seq(8), Seq(9), t1 + hold);
        let p = s.progress(NodeId(7), 64, t1 + Duration::from_micros(1));
        assert_eq!(holes(&p), vec![(4, 2)]);
        assert_eq!(p.window.as_ref().unwrap().examined_to, Seq(7));
        // A filled hole no longer holds anything back.
        s.hole_filled(Seq(8));
        let p = s.progress(NodeId(7), 64, t1 + Duration::from_micros(1));
        assert_eq!(holes(&p), vec![(4, 2), (8, 1)]);
    }

    #[test]
    fn young_holes_are_bounded() {
        let t0 = Instant::ZERO + Duration::from_secs(1);
        let mut s = stream();
        s.window.insert(t0, Seq(1), packet(1));
        let far = Seq(2 + 2 * YOUNG_HOLES_MAX as u32);
        s.note_holes(t0, Seq(2), far, t0 + Duration::from_millis(2));
        assert_eq!(s.young.len(), YOUNG_HOLES_MAX);
    }
}
