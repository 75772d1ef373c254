//! The receive path: one [`RecvStream`] per (sender, region) stream of this node's region.
//! Data packets enter the stream's [`ReceiveWindow`] (in order at once, after a hole held
//! back), leave it in sequence order, and are unpacked or reassembled into deliveries for
//! subscribed topics. Reliable mode waits for repair; best-effort mode reports holes as gaps
//! after `reorder_timeout`. A full application queue stalls the windows (back-pressure reaches
//! the senders through the ring) instead of dropping.
//!
//! Not here: how holes get repaired (`recovery.rs`), which senders are live (`members.rs`).

use bytes::{Bytes, BytesMut};
use qs_recovery::{Arrival, Popped, ReceiveWindow, StreamProgress, StreamUpdate};
use qs_transport::wire::{self, DataPacket, Fragment, Header, PacketKind, StreamState, HEADER_LEN};
use qs_transport::{Instant, NodeId, RegionId, Seq, TopicId};

use super::{CoreConfig, Event, NodeCore};

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
    /// A ring round has counted this node's prefix of the stream: from then on, anything the
    /// region's stability point passes that this node lacks is a loss (a gap), not history
    /// from before it joined.
    synced: bool,
}

impl RecvStream {
    /// A stream of `epoch` nothing was heard of yet, its window in the configured mode.
    pub(super) fn new(config: &CoreConfig, epoch: u64) -> RecvStream {
        let capacity = config.reorder_window_packets;
        RecvStream {
            epoch,
            window: if config.reliable {
                ReceiveWindow::reliable(capacity)
            } else {
                ReceiveWindow::new(capacity, config.reorder_timeout)
            },
            partial: None,
            skipping: None,
            closing: false,
            synced: false,
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

    /// The stream as the recovery ring sees it.
    pub(super) fn progress(&self, sender: NodeId, max: usize) -> StreamProgress {
        StreamProgress {
            sender,
            epoch: self.epoch,
            window: self.window.state(max),
            synced: self.synced,
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
    /// A data packet or fragment of `header.sender`'s stream (`body`: the opened datagram's
    /// body; `datagram`: the whole opened datagram).
    pub(super) fn handle_data(
        &mut self,
        now: Instant,
        header: &Header,
        datagram: &Bytes,
        body: Bytes,
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
        if Some(region) != self.own_region {
            self.stats.drops.foreign_region += 1;
            return;
        }
        if self.config.inject_loss > 0.0 && self.prng.chance(self.config.inject_loss) {
            self.stats.drops.injected_loss += 1;
            return;
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
        }
        let config = &self.config;
        let stream = self
            .recv
            .entry(key)
            .or_insert_with(|| RecvStream::new(config, epoch));
        // A packet that has to wait is copied out of the receive batch, so it does not pin
        // the whole batch buffer; in-order packets stay zero-copy.
        let in_order = stream.window.next_expected().is_none_or(|next| next == seq);
        let packet = if in_order {
            packet
        } else {
            parse(Bytes::copy_from_slice(&body)).map_or(packet, |(_, _, copy)| copy)
        };
        let fresh = stream.window.highest().is_none_or(|h| h.is_before(seq))
            && header.flags & wire::FLAG_UNICAST_COPY == 0;
        let arrival = stream.window.insert(now, seq, packet);
        if fresh {
            self.heard_multicast(now, region);
        }
        match arrival {
            Arrival::Stale => self.stats.drops.stale += 1,
            Arrival::First { missed_before } => {
                self.stats.missed_on_join += u64::from(missed_before);
            }
            Arrival::Accepted => self.stats.held_back += u64::from(!in_order),
            Arrival::Beyond => self.stats.drops.beyond_window += 1,
        }
        if let Some(ring) = self.ring.as_mut() {
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
        if let Some(s) = self.recv.get_mut(&key) {
            s.close(now);
        }
        self.stalled.remove(&key);
        self.drain(key, false);
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

    /// Hands on one packet (or gap) the stream's window releases; false when it has none.
    fn drain_one(&mut self, key: (NodeId, RegionId)) -> bool {
        let (sender, region) = key;
        {
            let Some(stream) = self.recv.get_mut(&key) else {
                return false;
            };
            let Some(popped) = stream.window.pop() else {
                if stream.closing {
                    self.recv.remove(&key);
                }
                return false;
            };
            match popped {
                Popped::Lost { count, .. } => {
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
                Popped::Packet(_, Received::Packed(p)) => {
                    self.stats.data_packets_received += 1;
                    if stream.abandon() {
                        self.stats.drops.incomplete_message += 1;
                    }
                    for (topic, payload) in p.messages() {
                        if self.subscriptions.contains(&topic) {
                            self.deliver(sender, topic, payload);
                        } else {
                            self.stats.drops.unsubscribed += 1;
                        }
                    }
                }
                Popped::Packet(_, Received::Fragment(f)) => {
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
                buf: BytesMut::with_capacity(f.total_len as usize),
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
        if Some(s.region) != self.own_region {
            self.stats.drops.foreign_region += 1;
            return;
        }
        let key = (sender, s.region);
        match self.recv.get(&key).map(|st| st.epoch) {
            // Never heard of this stream: it has nothing to claim from before we joined.
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
        if self.config.reliable {
            let synced = stream.synced;
            stream.window.skip_to(now, s.floor.next(), synced);
        }
        stream.window.on_highest(now, s.highest);
        self.drain_stream(key);
    }

    /// Applies what a ring visit decided for one of this node's streams (creating it when
    /// the node had none), then hands on what it released.
    pub(super) fn apply_stream_update(&mut self, now: Instant, u: StreamUpdate) {
        let Some(region) = self.own_region else {
            return;
        };
        let key = (u.sender, region);
        match self.recv.get(&key).map(|s| s.epoch) {
            Some(e) if e > u.epoch => return,
            Some(e) if e < u.epoch => self.finish_stream(now, key),
            _ => {}
        }
        if !self.recv.contains_key(&key) && self.recv.len() >= self.config.max_streams {
            return;
        }
        let config = &self.config;
        let stream = self
            .recv
            .entry(key)
            .or_insert_with(|| RecvStream::new(config, u.epoch));
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
