//! The node's side of regional recovery: it runs this region's [`Ring`], feeds it the receive
//! streams ([`LocalStreams`]), keeps the caretaker cache, answers repair requests (from the
//! cache, or from its own send window when it is the sender), applies the leader's
//! acknowledgements to its send windows (free what is stable, re-multicast what a whole
//! caretaker partition lacks) and queues the resulting control and repair datagrams.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use qs_recovery::{LocalStreams, Progress, Ring, RingAction, Visit};
use qs_transport::wire::{
    Header, PacketKind, RepairRequest, SenderAck, SeqRange, Token, TokenAck, WireError, HEADER_LEN,
};
use qs_transport::{Instant, NodeId, RegionId, Seq, TrafficClass, Transmit};

use super::{CoreConfig, Event, NodeCore, RecvStream};

/// Packets this node takes care of, per sender, until the region's cleanup point passes them.
#[derive(Debug, Default)]
pub(super) struct Cache {
    streams: BTreeMap<NodeId, CacheStream>,
    pub(super) bytes: usize,
    pub(super) packets: usize,
}

#[derive(Debug)]
struct CacheStream {
    entries: BTreeMap<u32, Bytes>,
    /// Everything up to here is stable region-wide and no longer cached.
    cleanup: Seq,
}

impl Cache {
    /// Caches `datagram` (packet `seq` of `sender`) unless it is stable already, cached, or
    /// the cache is full (returns `false` then).
    pub(super) fn insert(&mut self, sender: NodeId, seq: Seq, datagram: &[u8], max: usize) -> bool {
        // A new stream's cache starts well before its first packet (earlier packets may
        // still come by repair) but not at 0, which is half the sequence space away once the
        // stream has wrapped; the first cleanup moves it to the real stability point.
        let stream = self.streams.entry(sender).or_insert(CacheStream {
            entries: BTreeMap::new(),
            cleanup: Seq(seq.0.wrapping_sub(1 << 20)),
        });
        if !stream.cleanup.is_before(seq) || stream.entries.contains_key(&seq.0) {
            return true;
        }
        if self.bytes + datagram.len() > max {
            return false;
        }
        stream
            .entries
            .insert(seq.0, Bytes::copy_from_slice(datagram));
        self.bytes += datagram.len();
        self.packets += 1;
        true
    }

    fn get(&self, sender: NodeId, seq: Seq) -> Option<&Bytes> {
        self.streams.get(&sender)?.entries.get(&seq.0)
    }

    fn contains(&self, sender: NodeId, seq: Seq) -> bool {
        self.get(sender, seq).is_some()
    }

    /// Frees everything of `sender` up to `cleanup`.
    fn clean(&mut self, sender: NodeId, cleanup: Seq) {
        let Some(stream) = self.streams.get_mut(&sender) else {
            return;
        };
        if !stream.cleanup.is_before(cleanup) {
            return;
        }
        stream.cleanup = cleanup;
        let (mut bytes, mut packets) = (0, 0);
        stream.entries.retain(|s, b| {
            let keep = cleanup.is_before(Seq(*s));
            if !keep {
                bytes += b.len();
                packets += 1;
            }
            keep
        });
        self.bytes -= bytes;
        self.packets -= packets;
    }

    /// Drops everything of `sender`.
    pub(super) fn forget(&mut self, sender: NodeId) {
        if let Some(s) = self.streams.remove(&sender) {
            self.bytes -= s.entries.values().map(Bytes::len).sum::<usize>();
            self.packets -= s.entries.len();
        }
    }

    /// Drops everything.
    pub(super) fn clear(&mut self) {
        *self = Cache::default();
    }

    /// Recounts (for invariant checks).
    pub(super) fn recount(&self) -> (usize, usize) {
        let entries = self.streams.values().flat_map(|s| s.entries.values());
        entries.fold((0, 0), |(b, p), e| (b + e.len(), p + 1))
    }
}

/// The receive streams of the node's region, as the ring sees them.
struct Streams<'a> {
    region: RegionId,
    config: &'a CoreConfig,
    recv: &'a mut BTreeMap<(NodeId, RegionId), RecvStream>,
    cache: &'a mut Cache,
    departed: &'a VecDeque<NodeId>,
    /// This node, when it sends into the ring's region, and its stream's highest packet.
    own_stream: Option<NodeId>,
    own_highest: Option<Seq>,
    partitions: usize,
    app_behind: bool,
    touched: Vec<(NodeId, RegionId)>,
}

impl LocalStreams for Streams<'_> {
    fn senders(&self) -> Vec<NodeId> {
        let region = self.region;
        let mut senders: Vec<NodeId> = self
            .recv
            .keys()
            .filter(|(_, r)| *r == region)
            .map(|(s, _)| *s)
            .collect();
        // This node's own stream into its region needs rounds too (acknowledgements, repairs
        // for the others), though it never receives it.
        if let Some(me) = self.own_stream {
            senders.push(me);
        }
        senders
    }

    fn highest(&self, sender: NodeId) -> Option<Seq> {
        if Some(sender) == self.own_stream {
            return self.own_highest;
        }
        self.recv.get(&(sender, self.region))?.window.highest()
    }

    fn is_live(&self, sender: NodeId) -> bool {
        // A sender counts until discovery declares it gone: a member that missed its
        // announcements still receives (and must claim) its stream.
        !self.departed.contains(&sender)
    }

    fn progress(&mut self, now: Instant, sender: NodeId, visit: Visit) -> Progress {
        let Visit {
            cutoff,
            cleanup,
            partition,
            max,
            isolated,
        } = visit;
        let key = (sender, self.region);
        let Some(cleanup) = cleanup else {
            // The leader's first round of this stream: a stream this member has is reported
            // as it is (nothing freed or skipped).
            if let Some(stream) = self.recv.get(&key) {
                return Progress {
                    highest: stream.window.highest(),
                    prefix: stream.window.prefix(),
                    app_behind: self.app_behind,
                    ..Progress::default()
                };
            }
            // A young stream (its start still within the window) is claimed from its start,
            // so this member holds stability back until it has caught up; an old one is left
            // for a round whose cleanup is known.
            let young = (0..self.config.reorder_window_packets as i64)
                .contains(&Seq::FIRST.distance_to(cutoff));
            if !young {
                return Progress::default();
            }
            let from_start = Visit {
                cleanup: Some(Seq(0)),
                ..visit
            };
            let p = self.progress(now, sender, from_start);
            if let Some(stream) = self.recv.get_mut(&key) {
                stream.synced = false; // No round has counted it yet.
            }
            return p;
        };
        if !self.recv.contains_key(&key) && self.recv.len() >= self.config.max_streams {
            return Progress::default();
        }
        let config = self.config;
        let stream = self
            .recv
            .entry(key)
            .or_insert_with(|| RecvStream::new(config));
        // Positions up to the cleanup point are stable region-wide: a member that has not
        // heard them joined after them, or (isolated) gave them up.
        stream
            .window
            .skip_to(now, cleanup.next(), isolated || stream.synced);
        stream.synced = true;
        stream.window.on_highest(now, cutoff);
        self.cache.clean(sender, cleanup);
        self.touched.push(key);
        let missing = stream.window.missing(cutoff, max);
        let mut cannot_serve: Vec<SeqRange> = Vec::new();
        let span = cleanup.distance_to(cutoff);
        if span > 0 {
            // The first sequence number after `cleanup` this partition takes care of, then
            // every `p`-th one (caretaker of `s` is `(s - 1) mod p`).
            let p = self.partitions.max(1) as u64;
            let mut off = (partition as u64 + 1 + p - u64::from(cleanup.0) % p) % p;
            if off == 0 {
                off = p;
            }
            let mut taken = 0;
            while off <= span as u64 && taken < max {
                let s = cleanup.advance(off as u32);
                if !self.cache.contains(sender, s) {
                    taken += 1;
                    cannot_serve.push(SeqRange { first: s, count: 1 });
                }
                off += p;
            }
        }
        Progress {
            highest: stream.window.highest(),
            prefix: stream.window.prefix(),
            missing,
            cannot_serve,
            app_behind: self.app_behind,
        }
    }
}

impl NodeCore {
    /// Runs `f` on the ring with the node's streams, then drains what it touched and what it
    /// asked for.
    fn with_ring(&mut self, now: Instant, f: impl FnOnce(&mut Ring, &mut dyn LocalStreams)) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mut streams = Streams {
            region: ring.region(),
            config: &self.config,
            recv: &mut self.recv,
            cache: &mut self.cache,
            departed: &self.departed,
            own_stream: self
                .send
                .contains_key(&ring.region())
                .then_some(self.config.id),
            own_highest: self
                .send
                .get(&ring.region())
                .filter(|s| s.next_seq != Seq::FIRST)
                .map(super::SendStream::highest),
            partitions: ring.view().partitions(),
            app_behind: !self.stalled.is_empty()
                || self.events.len() > self.config.max_pending_events / 2,
            touched: Vec::new(),
        };
        f(ring, &mut streams);
        let touched = streams.touched;
        for key in touched {
            self.drain_stream(key);
        }
        self.pump_ring(now);
    }

    /// Re-forms the ring on the own region's current members.
    pub(super) fn refresh_ring(&mut self, now: Instant) {
        if !self.config.reliable {
            return;
        }
        let Some(region) = self.own_region else {
            self.ring = None;
            self.cache.clear();
            return;
        };
        if self.ring.as_ref().is_none_or(|r| r.region() != region) {
            let mut ring = self.config.ring.clone();
            // Tokens must fit the datagrams this node sends.
            ring.max_token_bytes = ring.max_token_bytes.min(self.config.max_datagram);
            self.ring = Some(Ring::new(ring, self.config.id, region, now));
            self.cache.clear();
        }
        let members: Vec<NodeId> = self
            .regions
            .region(region)
            .map(|r| r.members.iter().copied().collect())
            .unwrap_or_default();
        if let Some(ring) = self.ring.as_mut() {
            ring.set_view(now, members);
        }
        self.pump_ring(now);
    }

    /// The ring's timers.
    pub(super) fn ring_timeout(&mut self, now: Instant) {
        if self
            .ring
            .as_ref()
            .and_then(Ring::poll_timeout)
            .is_some_and(|t| t <= now)
        {
            self.with_ring(now, |ring, streams| ring.handle_timeout(now, streams));
        }
    }

    pub(super) fn handle_token(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        match Token::parse(body) {
            Ok(token) if Some(token.region) == self.own_region => {
                self.with_ring(now, |ring, streams| {
                    ring.handle_token(now, from, token, streams)
                });
            }
            Ok(_) => self.stats.drops.foreign_region += 1,
            Err(_) => self.stats.drops.malformed += 1,
        }
    }

    pub(super) fn handle_token_ack(&mut self, now: Instant, body: &[u8]) {
        match TokenAck::parse(body) {
            Ok(ack) => {
                if let Some(ring) = self.ring.as_mut() {
                    ring.handle_token_ack(ack);
                }
                self.pump_ring(now);
            }
            Err(_) => self.stats.drops.malformed += 1,
        }
    }

    /// Serves a peer's request from the cache, or from the send window for own streams.
    pub(super) fn handle_repair_request(&mut self, from: SocketAddr, body: &[u8]) {
        let Ok(req) = RepairRequest::parse(body) else {
            self.stats.drops.malformed += 1;
            return;
        };
        self.stats.requests_received += 1;
        let limit = self.config.ring.max_request;
        let seqs = req.ranges.iter().flat_map(|r| r.iter()).take(limit);
        let mut found = Vec::new();
        if req.sender == self.config.id {
            if let Some(stream) = self.send.get(&req.region) {
                for s in seqs {
                    let i = stream.base.distance_to(s);
                    if let Some(b) = usize::try_from(i).ok().and_then(|i| stream.unacked.get(i)) {
                        found.push(b.clone());
                    }
                }
            }
        } else if Some(req.region) == self.own_region {
            found.extend(seqs.filter_map(|s| self.cache.get(req.sender, s).cloned()));
        }
        for b in found {
            self.stats.repairs_served += 1;
            self.push_out(from, TrafficClass::Repair, b);
        }
    }

    pub(super) fn handle_sender_ack_body(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        let Ok(ack) = SenderAck::parse(body) else {
            self.stats.drops.malformed += 1;
            return;
        };
        // Only the leader of the region as this node sees it speaks for the region: a member
        // whose view lost others (a failure-detector split) must not free what they lack.
        let leader = self
            .regions
            .region(ack.region)
            .and_then(|r| r.members.iter().next().copied());
        if leader != Some(from) {
            self.stats.acks_refused += 1;
            return;
        }
        self.handle_sender_ack(now, ack);
    }

    /// The region acknowledged a stream of ours: free what is stable, re-multicast what a
    /// whole caretaker partition lacks, re-announce the stream's tail or floor if the region
    /// knows less than we sent or freed.
    fn handle_sender_ack(&mut self, now: Instant, ack: SenderAck) {
        let Some(stream) = self.send.get_mut(&ack.region) else {
            return;
        };
        let acked_before = stream.acked();
        let mut freed = 0u64;
        while !stream.unacked.is_empty() && !ack.stable.is_before(stream.base) {
            let b = stream.unacked.pop_front().expect("not empty");
            stream.resent_at.pop_front();
            stream.unacked_bytes -= b.len();
            stream.base = stream.base.next();
            freed += 1;
        }
        self.stats.acked_packets += freed;
        if self.config.rate_control && ack.slowest_rate > 0 {
            let slowest = f64::from(ack.slowest_rate);
            if std::mem::take(&mut stream.window_hit) {
                // The region did not keep up with the window: follow its slowest member, with
                // 10% headroom to probe (QSM), damped.
                let target = (slowest * 1.1).max(MIN_PACING_RATE);
                stream.pacing = Some(match stream.pacing {
                    Some(p) => super::Pacing {
                        rate: 0.5 * p.rate + 0.5 * target,
                        calm: 0,
                        ..p
                    },
                    None => super::Pacing {
                        rate: target,
                        tokens: 0.0,
                        at: now,
                        calm: 0,
                    },
                });
                self.stats.pacing_engaged += 1;
            } else if let Some(p) = stream.pacing.as_mut() {
                // It keeps up: probe upward; after a run of calm rounds only the window limits
                // sending again.
                p.rate *= 1.25;
                p.calm += 1;
                if p.calm >= CALM_ROUNDS {
                    stream.pacing = None;
                }
            }
        }
        let mut announce = ack.stable.is_before(acked_before);
        if stream.queue.is_empty() && ack.highest.is_before(stream.highest()) {
            announce = true;
        }
        if announce {
            stream.state_at = Some(now);
            stream.state_repeats_left = stream.state_repeats_left.max(1);
        }
        let group = SocketAddr::V4(stream.group);
        let mut again = Vec::new();
        let mut held_off = 0;
        for s in ack.naks.iter().flat_map(|r| r.iter()) {
            if again.len() >= self.config.ring.max_request {
                break;
            }
            let Ok(i) = usize::try_from(stream.base.distance_to(s)) else {
                continue;
            };
            let (Some(b), Some(at)) = (stream.unacked.get(i), stream.resent_at.get_mut(i)) else {
                continue;
            };
            if at.is_some_and(|t| now < t + super::RESEND_HOLDOFF) {
                held_off += 1;
                continue;
            }
            *at = Some(now);
            again.push(b.clone());
        }
        self.stats.resends_held_off += held_off;
        for b in again {
            self.stats.retransmitted += 1;
            self.push_out(group, TrafficClass::Repair, b);
        }
    }

    /// Turns the ring's actions into datagrams (or local calls).
    fn pump_ring(&mut self, now: Instant) {
        while let Some(action) = self.ring.as_mut().and_then(Ring::poll_action) {
            match action {
                RingAction::Token { to, token } => {
                    self.send_control(to, PacketKind::Token, |b| token.write(b));
                }
                RingAction::TokenAck { to, ack } => {
                    self.send_control(to, PacketKind::TokenAck, |b| ack.write(b));
                }
                RingAction::Request { to, request } => {
                    self.send_control(to, PacketKind::RepairRequest, |b| request.write(b));
                }
                RingAction::Ack { to, ack } if to == self.config.id => {
                    self.handle_sender_ack(now, ack);
                }
                RingAction::Ack { to, ack } => {
                    self.send_control(to, PacketKind::SenderAck, |b| ack.write(b));
                }
                RingAction::Isolated { sender, lag } => {
                    self.events.push_back(Event::Isolated { sender, lag });
                }
                RingAction::Rejoined { sender } => {
                    self.events.push_back(Event::Rejoined { sender });
                }
                RingAction::Slow(s) => {
                    self.stats.slow_receivers += 1;
                    self.events.push_back(Event::SlowReceiver {
                        sender: s.sender,
                        member: s.member,
                        lag: s.lag,
                    });
                }
            }
        }
    }

    /// Encodes a control datagram for peer `to` and queues it.
    fn send_control(
        &mut self,
        to: NodeId,
        kind: PacketKind,
        body: impl FnOnce(&mut [u8]) -> Result<usize, WireError>,
    ) {
        let Some(addr) = self.address_of(to) else {
            self.stats.drops.no_address += 1;
            return;
        };
        let mut buf = BytesMut::zeroed(self.config.max_datagram.max(HEADER_LEN + 64));
        let header = Header::new(kind, self.config.cluster, self.config.id);
        let len = header
            .write(&mut buf)
            .and_then(|()| body(&mut buf[HEADER_LEN..]))
            .map(|n| HEADER_LEN + n);
        match len {
            Ok(len) => {
                buf.truncate(len);
                self.push_out(addr, TrafficClass::Control, buf.freeze());
            }
            Err(_) => self.stats.drops.malformed += 1,
        }
    }

    pub(super) fn push_out(&mut self, to: SocketAddr, class: TrafficClass, datagram: Bytes) {
        if self.out.len() >= self.config.max_out_queue {
            self.stats.drops.out_queue_full += 1;
            return;
        }
        self.out.push_back((to, class, datagram));
    }

    /// Copies the next queued control or repair datagram into `buf`.
    pub(super) fn poll_out(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (to, class, datagram) = self.out.pop_front()?;
        if datagram.len() > buf.len() {
            self.stats.drops.malformed += 1;
            return None;
        }
        buf[..datagram.len()].copy_from_slice(&datagram);
        self.stats.control_bytes_sent += datagram.len() as u64;
        if class == TrafficClass::Control {
            self.stats.control_packets_sent += 1;
        }
        Some(Transmit {
            destination: to,
            class,
            len: datagram.len(),
        })
    }

    /// A peer is gone: what its streams still miss can never come; report it and forget.
    pub(super) fn sender_gone(&mut self, now: Instant, id: NodeId) {
        let keys: Vec<(NodeId, RegionId)> = self
            .recv
            .keys()
            .filter(|(s, _)| *s == id)
            .copied()
            .collect();
        for key in keys {
            if let Some(s) = self.recv.get_mut(&key) {
                s.window.give_up_all(now);
                s.closing = true;
            }
            // Removed once drained (at once, unless the application is behind).
            self.drain_stream(key);
        }
        self.cache.forget(id);
        if let Some(ring) = self.ring.as_mut() {
            ring.forget_sender(id);
        }
        if !self.departed.contains(&id) {
            if self.departed.len() >= DEPARTED_MEMORY {
                self.departed.pop_front();
            }
            self.departed.push_back(id);
        }
    }

    /// Bytes the out queue holds (for invariant checks).
    pub(super) fn out_len(&self) -> usize {
        self.out.len()
    }
}

/// The lowest pacing rate, packets per second (a sender is never paced to a halt).
const MIN_PACING_RATE: f64 = 200.0;
/// Acknowledgements without a full window after which pacing is lifted.
const CALM_ROUNDS: u32 = 8;

/// How many departed peers are remembered (their records are dropped from tokens).
const DEPARTED_MEMORY: usize = 1024;

/// Out queue entries: destination, class, datagram.
pub(super) type OutQueue = VecDeque<(SocketAddr, TrafficClass, Bytes)>;
