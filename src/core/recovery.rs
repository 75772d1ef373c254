//! The node's side of regional recovery: it runs this region's [`Ring`] (and, during a
//! subscription handover, the departed region's: `handover.rs`), feeding each a
//! read-only snapshot of its streams ([`Local`]) and applying what comes out — stream
//! updates to the receive windows and the cache, tokens, hop acknowledgements, repair
//! requests and acknowledgements to senders as intents for the out queue. It answers peers'
//! repair requests (from the caretaker cache, or from its own send window when it is the
//! sender) and routes the leader's acknowledgements to its send streams.
//!
//! Not here: the protocol itself (`qs-recovery`), the send window's bookkeeping (`send.rs`).

use qs_recovery::{Local, Ring, RingAction, StreamProgress};
use qs_transport::wire::{RepairRequest, SenderAck, Token, TokenAck};
use qs_transport::{Instant, NodeId, RegionId};

use super::out::Intent;
use super::{Event, NodeCore};

impl NodeCore {
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
            ring.max_token_bytes = ring
                .max_token_bytes
                .min(self.config.max_datagram - self.seal.overhead());
            self.ring = Some(Ring::new(ring, self.config.id, region, now));
            if self.departure.is_none() {
                // (A departed region's ring still caretakes its share of the cache.)
                self.cache.clear();
            }
        }
        let members = |region| -> Vec<NodeId> {
            self.regions
                .region(region)
                .map(|r| r.members.iter().copied().collect())
                .unwrap_or_default()
        };
        let own = members(region);
        let departed = self.departure.as_ref().map(|d| members(d.region));
        if let Some(ring) = self.ring.as_mut() {
            ring.set_view(now, own);
        }
        if let Some((ring, members)) = self
            .departure
            .as_mut()
            .and_then(|d| d.ring.as_mut())
            .zip(departed)
        {
            ring.set_view(now, members);
        }
        self.pump_ring(now);
    }

    /// The ring of `region`: the own region's, or the departed one's during a handover.
    pub(super) fn ring_of(&mut self, region: RegionId) -> Option<&mut Ring> {
        if Some(region) == self.own_region {
            return self.ring.as_mut();
        }
        self.departure
            .as_mut()
            .filter(|d| d.region == region)
            .and_then(|d| d.ring.as_mut())
    }

    fn ring_ref(&self, region: RegionId) -> Option<&Ring> {
        if Some(region) == self.own_region {
            return self.ring.as_ref();
        }
        self.departure
            .as_ref()
            .filter(|d| d.region == region)
            .and_then(|d| d.ring.as_ref())
    }

    /// The regions whose rings run here: the own one, then the departed one.
    fn ring_regions(&self) -> impl Iterator<Item = RegionId> {
        let own = self.ring.as_ref().map(Ring::region);
        let departed = self
            .departure
            .as_ref()
            .and_then(|d| d.ring.as_ref())
            .map(Ring::region);
        own.into_iter().chain(departed)
    }

    /// The receive streams of `region` as its ring sees them, in sender order.
    fn stream_progress(&self, now: Instant, region: RegionId) -> Vec<StreamProgress> {
        let max = self.config.ring.max_request;
        self.recv
            .iter()
            .filter(|((_, r), _)| *r == region)
            .map(|((s, _), st)| st.progress(*s, max, now))
            .collect()
    }

    /// Runs `region`'s ring with a snapshot of this node, then applies what it decided.
    fn with_ring(&mut self, now: Instant, region: RegionId, f: impl FnOnce(&mut Ring, &Local<'_>)) {
        if self.ring_ref(region).is_none() {
            return;
        }
        let streams = self.stream_progress(now, region);
        let app_behind =
            !self.stalled.is_empty() || self.events.len() > self.config.max_pending_events / 2;
        let local = Local {
            streams: &streams,
            own: self.own_stream(region),
            closed: &self.closed,
            cache: &self.cache,
            window_capacity: self.config.reorder_window_packets,
            can_add_stream: self.recv.len() < self.config.max_streams,
            app_behind,
            first_seq: self.config.first_seq,
        };
        let ring = match Some(region) == self.own_region {
            true => self.ring.as_mut(),
            false => self.departure.as_mut().and_then(|d| d.ring.as_mut()),
        };
        f(ring.expect("checked"), &local);
        self.pump_ring(now);
    }

    /// The rings' timers.
    pub(super) fn ring_timeout(&mut self, now: Instant) {
        let regions: Vec<RegionId> = self.ring_regions().collect();
        for region in regions {
            if self
                .ring_ref(region)
                .and_then(Ring::poll_timeout)
                .is_some_and(|t| t <= now)
            {
                self.with_ring(now, region, |ring, local| ring.handle_timeout(now, local));
            }
        }
    }

    /// The rings' next deadline.
    pub(super) fn rings_poll_timeout(&self) -> Option<Instant> {
        self.ring_regions()
            .filter_map(|r| self.ring_ref(r).and_then(Ring::poll_timeout))
            .min()
    }

    pub(super) fn handle_token(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        match Token::parse(body) {
            Ok(token) if self.ring_ref(token.region).is_some() => {
                let region = token.region;
                self.with_ring(now, region, |ring, local| {
                    ring.handle_token(now, from, token, local)
                });
            }
            Ok(_) => self.stats.drops.foreign_region += 1,
            Err(_) => self.stats.drops.malformed += 1,
        }
    }

    pub(super) fn handle_token_ack(&mut self, now: Instant, body: &[u8]) {
        match TokenAck::parse(body) {
            Ok(ack) => {
                if let Some(ring) = self.ring_of(ack.region) {
                    ring.handle_token_ack(now, ack);
                }
                self.pump_ring(now);
            }
            Err(_) => self.stats.drops.malformed += 1,
        }
    }

    /// Serves a peer's request from the cache, or from the send window for own streams, as
    /// far as the requester's repair budget goes (`repair_limit.rs`).
    pub(super) fn handle_repair_request(&mut self, now: Instant, requester: NodeId, body: &[u8]) {
        let Ok(req) = RepairRequest::parse(body) else {
            self.stats.drops.malformed += 1;
            return;
        };
        self.stats.requests_received += 1;
        // Repairs go to the requester's known unicast address, and only if it is a member
        // of the region asked about: never to a datagram's source address, which a spoofer
        // chooses (a 50-byte request must not aim hundreds of repairs at a victim).
        let member = self
            .regions
            .region(req.region)
            .is_some_and(|r| r.members.contains(&requester));
        let Some(from) = self.address_of(requester).filter(|_| member) else {
            self.stats.drops.not_member += 1;
            return;
        };
        let limit = self.config.ring.max_request;
        let seqs = req.ranges.iter().flat_map(|r| r.iter()).take(limit);
        // The data that came in (own first transmissions and cached packets) scales the
        // budget: a requester is served a share of it per interval, not whatever it asks.
        let inflow = self
            .stats
            .data_bytes_sent
            .wrapping_add(self.cache.bytes_in());
        let held = self.cache.bytes() as u64
            + self
                .send
                .values()
                .map(|s| (s.window.bytes() + s.window.retained().1) as u64)
                .sum::<u64>();
        let basis = (inflow, held);
        let (mut served, mut limited) = (0, 0);
        if req.sender == self.config.id {
            if let Some(stream) = self.send.get(&req.region).filter(|s| s.epoch == req.epoch) {
                for seq in seqs {
                    let Some(packet) = stream.window.get(seq) else {
                        continue;
                    };
                    let bytes = packet.len() as u64;
                    if !self.repair_limiter.take(now, basis, requester, bytes) {
                        limited += 1;
                        continue;
                    }
                    served += 1;
                    self.out.push(Intent::ServeOwn {
                        to: from,
                        region: req.region,
                        seq,
                    });
                }
            }
        } else if self.receives(req.region) {
            for seq in seqs {
                let Some(packet) = self.cache.get(req.sender, req.epoch, seq) else {
                    continue;
                };
                let bytes = packet.len() as u64;
                if !self.repair_limiter.take(now, basis, requester, bytes) {
                    limited += 1;
                    continue;
                }
                served += 1;
                self.out.push(Intent::Serve {
                    to: from,
                    sender: req.sender,
                    epoch: req.epoch,
                    seq,
                });
            }
        }
        self.stats.repairs_served += served;
        self.stats.drops.repair_limited += limited;
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

    /// Applies the rings' actions: stream updates here, packets as intents.
    pub(super) fn pump_ring(&mut self, now: Instant) {
        loop {
            let (region, action) = match self.ring.as_mut().and_then(Ring::poll_action) {
                Some(a) => (self.own_region, a),
                None => {
                    let Some(d) = self.departure.as_mut() else {
                        return;
                    };
                    let Some(a) = d.ring.as_mut().and_then(Ring::poll_action) else {
                        return;
                    };
                    (Some(d.region), a)
                }
            };
            let Some(region) = region else {
                continue;
            };
            match action {
                RingAction::Update(u) => self.apply_stream_update(now, region, u),
                RingAction::Token { to, token } => self.out.push(Intent::Token { to, token }),
                RingAction::TokenAck { to, ack } => self.out.push(Intent::TokenAck { to, ack }),
                RingAction::Request { to, request } => {
                    self.out.push(Intent::Request { to, request });
                }
                RingAction::Ack { to, ack } if to == self.config.id => {
                    self.handle_sender_ack(now, ack);
                }
                RingAction::Ack { to, ack } => self.out.push(Intent::SenderAck { to, ack }),
                RingAction::Isolated { sender, lag } => {
                    self.events.push_back(Event::Isolated { sender, lag });
                }
                RingAction::Rejoined { sender } => {
                    self.events.push_back(Event::Rejoined { sender });
                }
                RingAction::ViewMismatch { .. } => {
                    // Gossip reconciles the views; the next rounds use the common one.
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

    /// A peer is gone for good: what its streams still miss can never come; report it and
    /// forget it (its stragglers are dropped by the tombstones).
    pub(super) fn sender_gone(&mut self, now: Instant, id: NodeId) {
        let epochs: Vec<u64> = self
            .recv
            .range((id, qs_transport::RegionId(0))..=(id, qs_transport::RegionId(u64::MAX)))
            .map(|(_, s)| s.epoch)
            .collect();
        for epoch in epochs {
            self.remember_closed(id, epoch);
        }
        self.close_streams_of(now, id);
        self.gates.remove(&id);
        self.cache.forget(id);
        if let Some(ring) = self.ring.as_mut() {
            ring.forget_sender(id);
        }
        if let Some(ring) = self.departure.as_mut().and_then(|d| d.ring.as_mut()) {
            ring.forget_sender(id);
        }
    }
}
