//! The sans-IO node: discovery, membership, regions, sending, receiving and recovery composed
//! into one [`Driven`] core. The real runtime (`qs-runtime`) and the simulator (`qs-sim`) drive
//! the same value.
//!
//! This file only composes; each room has its own file:
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | [`CoreConfig`] |
//! | `events.rs` | [`Event`], [`Delivery`], [`PublishRefused`] |
//! | `stats.rs` | [`CoreStats`], [`DropStats`] |
//! | `members.rs` | the membership truth (gossip), announcements as seeds, addresses, who subscribes |
//! | `send.rs` | send streams: queueing, packing, fragmenting, windows, pacing, stream states |
//! | `recv.rs` | receive streams: order, reassembly, delivery, back-pressure |
//! | `recovery.rs` | the region's ring: snapshots in, actions out; repair requests; acknowledgements |
//! | `out.rs` | the out queue of control and repair intents, encoded at `poll_transmit` |
//! | `cluster.rs` | health and reachability published by gossip, unicast copies, the cluster map |
//! | `lec.rs` | lateral error correction of the own region: repairs in and out, rebuilt packets |
//! | `keys.rs` | the automatic key switch: key epochs held in gossip, switch and retirement |
//! | `handover.rs` | the subscription handover: departing the old region, cut markers, gates |
//!
//! # Calling contract
//! [`Driven`]'s: feed datagrams ([`Driven::handle_datagram`]), run due timers, apply
//! [`Driven::poll_command`], pull [`Driven::poll_transmit`] until `None`, sleep until
//! [`Driven::poll_timeout`]; drain [`NodeCore::poll_event`] between calls. Application
//! commands ([`NodeCore::publish`], [`NodeCore::subscribe`], ...) may come at any time.
//!
//! Every datagram leaves through one seal ([`wire::Seal::seal`], in `poll_transmit`) and
//! enters through one open (at the top of `handle_datagram`); nothing below those two points
//! computes or checks a checksum or MAC. With a cluster key ([`CoreConfig::key`]) a datagram
//! that does not verify is counted (`drops.auth`, `drops.replay`) and dropped there, before
//! any body is parsed; forwarded repairs and re-multicasts are copies re-sealed on the way out.
//!
//! Sending is pull-based: [`NodeCore::publish`] only queues `(topic, payload)` per region;
//! packets are built in [`Driven::poll_transmit`] when the driver can send. Control traffic
//! (announcements, gossip, tokens, acknowledgements, requests, stream states) goes before
//! repairs before data.
//!
//! Reliability ([`CoreConfig::reliable`], on by default): the region's members run the QSM
//! ring ([`qs_recovery::Ring`]); holes wait for repair instead of timing out, caretakers cache
//! their share of each stream, senders keep every packet until the region acknowledges it (a
//! bounded window: a full window stops sending and the send queue then pushes back on the
//! publisher). Only what truly cannot be delivered (its sender died before anyone had it) is
//! reported, as [`Event::Gap`]. In best-effort mode holes are given up after
//! `reorder_timeout` and reported as gaps.

mod cluster;
mod config;
mod events;
mod handover;
mod keys;
mod lec;
mod members;
mod out;
mod recovery;
mod recv;
mod repair_limit;
mod send;
mod stats;

pub use cluster::{ClusterMap, MemberView, RegionView};
pub use config::{default_lec, CoreConfig, SEND_QUEUE_FLOOR};
pub use events::{Delivery, Event, KeysRefused, PublishRefused};
pub use handover::HandoverStats;
pub use lec::{LecCounters, RepairSplit};
pub use members::Peer;
use members::UNVOUCHED_AFTER;
pub use qs_discovery::DiscoveryStats;
pub use qs_recovery::RingStats;
pub use repair_limit::RepairLimit;
pub use stats::{CoreStats, DropStats};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};

use bytes::Bytes;
use qs_discovery::{Discovery, DiscoveryConfig};
use qs_gossip::GossipNode;
use qs_recovery::{Cache, Ring};
use qs_regions::{RegionTable, Signature};
use qs_transport::wire::{self, Header, PacketKind, Seal, HEADER_LEN};
use qs_transport::{
    Driven, Instant, NodeId, Prng, RegionId, SocketCommand, TopicId, TrafficClass, Transmit,
};

use out::Outbox;
use recv::RecvStream;
use send::SendStream;

/// The sans-IO node. See the module docs for the calling contract (it is [`Driven`]'s).
#[derive(Debug)]
pub struct NodeCore {
    config: CoreConfig,
    /// Seals every outgoing datagram and opens every incoming one.
    seal: Seal,
    discovery: Discovery,
    /// The gossip plane: membership truth, subscription records, health, reachability.
    gossip: GossipNode,
    /// Regions derived from gossip's subscription records (this node's own included).
    regions: RegionTable,
    subscriptions: BTreeSet<TopicId>,
    own_region: Option<RegionId>,
    send: BTreeMap<RegionId, SendStream>,
    /// Regions with queued data, in the round-robin order they are served.
    ready: VecDeque<RegionId>,
    queued_bytes: usize,
    /// Out-of-order packets held in receive windows, an upper bound (recounted when it
    /// reaches `max_held_packets`).
    held_estimate: usize,
    /// How fast the send queue drains (it is bounded by time as well as bytes).
    drain: qs_recovery::DrainRate,
    recv: BTreeMap<(NodeId, RegionId), RecvStream>,
    commands: VecDeque<SocketCommand>,
    events: VecDeque<Event>,
    /// The recovery ring of the own region (reliable mode).
    ring: Option<Ring>,
    /// Caretaker cache of the own region's streams.
    cache: Cache,
    /// Control and repair traffic waiting to be built and sent.
    out: Outbox,
    /// Streams whose release stopped because the application is behind (reliable mode).
    stalled: BTreeSet<(NodeId, RegionId)>,
    /// The stream served first when the stalled streams last resumed (the next pass starts
    /// after it).
    resume_after: Option<(NodeId, RegionId)>,
    health_clock: cluster::HealthClock,
    /// Senders gossip declared down, and since when: their streams stay open for
    /// `departed_grace` (they may be paused, not dead).
    departed_at: BTreeMap<NodeId, Instant>,
    /// Nodes whose subscription records came from announcements while the gossip plane did
    /// not know them as live members, since when (see `members.rs`).
    unvouched: BTreeMap<NodeId, Instant>,
    /// Streams closed for good: per sender the latest closed epoch, sorted by sender
    /// (bounded; the oldest closed is forgotten first, see `closed_order`). Stragglers and
    /// ring records of them are dropped instead of starting the stream over.
    closed: Vec<(NodeId, u64)>,
    closed_order: VecDeque<NodeId>,
    /// Send streams this process started (the low bits of their epochs).
    streams_started: u64,
    prng: Prng,
    stats: CoreStats,
    /// Lateral error correction of the own region.
    lec: lec::LecState,
    /// Senders of receive streams that are no live members, since when (see
    /// `members.rs`; at most one per stream).
    phantom_since: BTreeMap<NodeId, Instant>,
    /// The next check for them.
    phantom_check_at: Instant,
    /// Where the key rotation stands (keyed nodes).
    key_switch: keys::KeySwitch,
    /// Bytes of repairs each requester may still be served.
    repair_limiter: repair_limit::RepairLimiter,
    /// The region this node is departing after a subscription change (`handover.rs`).
    departure: Option<handover::Departure>,
    /// Per sender: how its stream in the own region is gated by a handover.
    gates: BTreeMap<NodeId, handover::Gate>,
}

impl NodeCore {
    /// A node that starts announcing itself at `now`.
    pub fn new(mut config: CoreConfig, now: Instant) -> NodeCore {
        let mut prng = Prng::new(config.seed);
        let repair_limiter = repair_limit::RepairLimiter::new(config.repair_limit, now);
        let seal = match &config.key {
            Some(keys) => {
                // The key file names the cluster; control counters start from the
                // incarnation so a restarted node's are above those it sent before; the MAC's
                // nonce prefix is drawn afresh, the incarnation mixed in so that a node with a
                // fixed id and seed does not repeat its nonces after a restart (a repeat would
                // be harmless with GCM-SIV, but rarer is better).
                config.cluster = keys.cluster;
                let prefix = prng.next_u64() ^ config.incarnation.rotate_left(32);
                Seal::keyed(keys.clone(), config.incarnation.wrapping_shl(20), prefix)
            }
            None => Seal::new(),
        };
        let discovery = Discovery::new(
            DiscoveryConfig {
                max_datagram: config.max_datagram - seal.overhead(),
                ..config.discovery.clone()
            },
            config.id,
            config.cluster,
            config.incarnation,
            config.unicast,
            prng.fork(),
            now,
        );
        let mut commands = VecDeque::new();
        commands.push_back(SocketCommand::JoinGroup(config.control_group));
        let mut gossip = members::gossip_for(&config, seal.overhead(), now);
        if let Some(keys) = &config.key {
            gossip.set_key_epoch(keys.newest_epoch());
        }
        NodeCore {
            regions: RegionTable::new(config.group_range),
            cache: Cache::new(config.cache_max_bytes),
            out: Outbox::new(config.max_out_queue),
            config,
            seal,
            discovery,
            gossip,
            subscriptions: BTreeSet::new(),
            own_region: None,
            send: BTreeMap::new(),
            ready: VecDeque::new(),
            queued_bytes: 0,
            held_estimate: 0,
            drain: qs_recovery::DrainRate::new(),
            recv: BTreeMap::new(),
            commands,
            events: VecDeque::new(),
            ring: None,
            stalled: BTreeSet::new(),
            resume_after: None,
            health_clock: cluster::HealthClock::default(),
            streams_started: 0,
            departed_at: BTreeMap::new(),
            unvouched: BTreeMap::new(),
            closed: Vec::new(),
            closed_order: VecDeque::new(),
            prng,
            stats: CoreStats::default(),
            lec: lec::LecState::default(),
            key_switch: keys::KeySwitch::new(now),
            repair_limiter,
            phantom_since: BTreeMap::new(),
            phantom_check_at: now + members::PHANTOM_CHECK,
            departure: None,
            gates: BTreeMap::new(),
        }
    }

    /// The gossip plane (membership, subscriptions, health map, reachability).
    pub fn gossip(&self) -> &GossipNode {
        &self.gossip
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Replaces the cluster keys of a keyed node (see the README's threat model). A ring whose
    /// second key is newer than its sealing one hands the node a next key, as
    /// [`NodeCore::add_key`] does; a ring sealing with the newer of two keys retires the
    /// other `key_retire_after` later. Refused, changing nothing, for a keyless node or keys
    /// of another cluster.
    pub fn set_keys(&mut self, keys: wire::KeyRing) -> Result<(), KeysRefused> {
        if self.seal.keys().is_none() {
            return Err(KeysRefused::Keyless);
        }
        if keys.cluster != self.config.cluster {
            return Err(KeysRefused::OtherCluster);
        }
        self.install_keys(keys);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        let mut drops = self.stats.drops;
        drops.out_queue_full = self.out.overflow;
        let g = self.gossip.stats();
        CoreStats {
            discovery: self.discovery.stats(),
            ring: self.ring.as_ref().map(Ring::stats).unwrap_or_default(),
            unacked_packets: self.send.values().map(|s| s.window.len() as u64).sum(),
            retained_packets: self
                .send
                .values()
                .map(|s| s.window.retained().0 as u64)
                .sum(),
            pacing_rate: self
                .send
                .values()
                .filter_map(|s| s.pacer.rate().map(|r| r as u64))
                .min()
                .unwrap_or(0),
            cached_packets: self.cache.packets() as u64,
            cached_bytes: self.cache.bytes() as u64,
            cached_bytes_peak: self.cache.peak_bytes() as u64,
            gossip_datagrams_sent: g.datagrams_sent,
            gossip_bytes_sent: g.bytes_sent,
            lec: self.lec_counters(),
            repaired: self.lec.repaired,
            repair_limit_evicted: self.repair_limiter.evicted,
            drops,
            ..self.stats
        }
    }

    /// The current region table (every known node's region, this one's included).
    pub fn regions(&self) -> &RegionTable {
        &self.regions
    }

    /// The recovery ring of this node's region (reliable mode, once subscribed).
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// The region this node is in (`None` while it subscribes nothing).
    pub fn own_region(&self) -> Option<RegionId> {
        self.own_region
    }

    /// This node's send streams, for cross-node checks: per region, the stream's epoch and
    /// the sequence number up to which it keeps nothing (every packet up to it was freed, as
    /// held by every member of the region by the ring's account).
    pub fn send_freed(&self) -> impl Iterator<Item = (RegionId, u64, qs_transport::Seq)> + '_ {
        self.send
            .iter()
            .map(|(r, s)| (*r, s.epoch, s.window.kept_after()))
    }

    /// Whether this node's receive stream of `sender` in `region`, of stream `epoch`, has
    /// delivered (or given up) packet `seq` or holds it; `None` without such a stream that has
    /// heard anything.
    pub fn receive_has(
        &self,
        sender: NodeId,
        region: RegionId,
        epoch: u64,
        seq: qs_transport::Seq,
    ) -> Option<bool> {
        let s = self
            .recv
            .get(&(sender, region))
            .filter(|s| s.epoch == epoch)?;
        s.window.has_or_passed(seq)
    }

    /// Other nodes subscribing `topic`.
    pub fn subscribers_of(&self, topic: TopicId) -> usize {
        self.subscribers_of_any(&[topic])
    }

    /// Whether nothing is waiting to be sent and (reliable mode) everything sent was
    /// acknowledged by its region and is held by every member of it.
    pub fn is_idle(&self) -> bool {
        let reliable = self.config.reliable;
        self.ready.is_empty()
            && self.out.is_empty()
            && self.send.values().all(|s| match reliable {
                true => s.is_settled(),
                false => s.window.is_empty(),
            })
    }

    /// Panics if the core's internal bookkeeping is inconsistent. The simulator tests call it
    /// after every event; it is cheap enough for that but not meant for production loops.
    pub fn check_invariants(&self) {
        let queued: usize = self.send.values().map(SendStream::queued_bytes).sum();
        assert_eq!(queued, self.queued_bytes, "queued byte count drifted");
        let ready: BTreeSet<RegionId> = self.ready.iter().copied().collect();
        assert_eq!(
            ready.len(),
            self.ready.len(),
            "a region is queued twice for sending"
        );
        let pending: BTreeSet<RegionId> = self
            .send
            .iter()
            .filter(|(_, s)| s.has_queued())
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(ready, pending, "ready list and non-empty queues disagree");
        for (region, s) in &self.send {
            assert!(
                self.regions.region(*region).is_some(),
                "send stream of a vanished region"
            );
            s.check_invariants();
            assert!(
                self.config.reliable || s.window.is_empty(),
                "best effort keeps nothing"
            );
        }
        let signature = Signature::new(self.subscriptions.iter().copied());
        assert_eq!(
            signature.region(),
            self.own_region,
            "own region is not the signature's"
        );
        assert_eq!(self.regions.region_of(self.config.id), self.own_region);
        assert!(
            self.recv.keys().all(|(_, r)| self.receives(*r)),
            "receive stream outside the own and the departed region"
        );
        self.regions.check_invariants();
        self.check_handover_invariants();
        assert!(self.recv.len() <= self.config.max_streams);
        for s in self.recv.values() {
            s.check_invariants(&self.config);
        }
        // The region table mirrors gossip's subscription records.
        for (id, r) in self.gossip.subscriptions().records() {
            let listed = self
                .regions
                .region_of(id)
                .and_then(|g| self.regions.region(g));
            let topics = listed.map_or(&[][..], |g| g.signature.topics());
            assert_eq!(topics, &r.topics[..], "region table drifted from gossip");
        }
        self.cache.check_invariants();
        self.out.check_invariants();
        self.discovery.check_invariants();
        self.gossip.check_invariants();
        assert_eq!(
            self.ring.as_ref().map(Ring::region),
            self.own_region.filter(|_| self.config.reliable),
            "ring of another region"
        );
        if let Some(ring) = &self.ring {
            ring.check_invariants();
        }
        self.check_lec_invariants();
    }

    /// Subscribes `topic`; this node's region changes and peers are told at once.
    pub fn subscribe(&mut self, now: Instant, topic: TopicId) {
        self.subscribe_all(now, [topic]);
    }

    /// Subscribes several topics with one region change (thousands cost one recomputation).
    pub fn subscribe_all(&mut self, now: Instant, topics: impl IntoIterator<Item = TopicId>) {
        let mut changed = false;
        for t in topics {
            changed |= self.subscriptions.insert(t);
        }
        if changed {
            self.subscriptions_changed(now);
        }
    }

    /// Unsubscribes `topic`.
    pub fn unsubscribe(&mut self, now: Instant, topic: TopicId) {
        self.unsubscribe_all(now, [topic]);
    }

    /// Unsubscribes several topics with one region change.
    pub fn unsubscribe_all(&mut self, now: Instant, topics: impl IntoIterator<Item = TopicId>) {
        let mut changed = false;
        for t in topics {
            changed |= self.subscriptions.remove(&t);
        }
        if changed {
            self.subscriptions_changed(now);
        }
    }

    /// The own signature changed: join the new region's group, leave the old one, and publish
    /// the new record (gossip holds it; the region table follows gossip's event; the
    /// announcements carry it to the LAN at once).
    ///
    /// When the node keeps some topics (reliable mode) it *departs* the old region instead
    /// of leaving it: it stays in the old group and ring until every sender's cut (see
    /// `handover.rs`), and its record says so.
    fn subscriptions_changed(&mut self, now: Instant) {
        let signature = Signature::new(self.subscriptions.iter().copied());
        let topics = signature.topics().iter().copied();
        let new_region = signature.region();
        if new_region != self.own_region {
            let port = self.config.data_port;
            // A departure still open ends here (what its streams lack is reported).
            self.end_departure(now, handover::DepartureEnd::CutShort);
            let old = self.own_region;
            let depart = old.filter(|old| self.should_depart(*old, &signature));
            if let Some(old) = old.filter(|_| depart.is_none()) {
                let group = self.regions.range().group(old);
                self.commands
                    .push_back(SocketCommand::LeaveGroup(SocketAddrV4::new(group, port)));
            }
            if let Some(new) = new_region {
                let group = self.regions.range().group(new);
                self.commands
                    .push_back(SocketCommand::JoinGroup(SocketAddrV4::new(group, port)));
            }
            self.gossip.set_topics_departing(topics, depart);
            if let Some(old) = depart {
                let version = self.own_record_version();
                self.begin_departure(now, old, version);
            }
            self.own_region = new_region;
            // Health's region follows at once, not at the next health tick: until it does,
            // our new mates (who know our subscriptions) refuse our record as another
            // region's.
            self.gossip.health_mut().set_region(now, new_region);
            self.recv
                .retain(|(_, r), _| Some(*r) == new_region || Some(*r) == depart);
            self.stalled
                .retain(|(_, r)| Some(*r) == new_region || Some(*r) == depart);
        } else {
            let departed = self.departed_region();
            self.gossip.set_topics_departing(topics, departed);
        }
        self.announce_record(now);
        self.prune_send_streams();
        self.refresh_ring(now);
        self.refresh_lec();
    }

    /// The version of this node's own subscription record.
    fn own_record_version(&self) -> u32 {
        self.gossip
            .subscriptions()
            .record(self.config.id)
            .map_or(0, |r| r.version)
    }

    /// Starts a graceful leave: peers are told at once. Queued data still goes out.
    pub fn leave(&mut self, now: Instant) {
        self.discovery.leave(now);
        self.gossip.leave(now);
    }

    /// The next event for the application. Not polling stalls reliable receive windows once
    /// `max_pending_events` wait (back-pressure to the senders).
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if !self.stalled.is_empty() && self.events.len() <= self.config.max_pending_events / 2 {
            self.resume_stalled();
        }
        e
    }

    fn deliver(&mut self, sender: NodeId, topic: TopicId, payload: Bytes) {
        self.stats.delivered += 1;
        self.stats.delivered_bytes += payload.len() as u64;
        self.events.push_back(Event::Delivered(Delivery {
            sender,
            topic,
            payload,
        }));
    }

    fn header(&self, kind: PacketKind) -> Header {
        Header::new(kind, self.config.cluster, self.config.id)
    }

    /// The next datagram to send, unsealed, highest priority first.
    fn poll_unsealed(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let budget = buf.len().min(self.config.max_datagram) - self.seal.overhead();
        let buf = &mut buf[..budget];
        if let Some(len) = self.discovery.poll_transmit(now, buf) {
            self.stats.control_packets_sent += 1;
            return Some(Transmit {
                destination: SocketAddr::V4(self.config.control_group),
                class: TrafficClass::Control,
                len,
            });
        }
        if let Some(t) = self.gossip.poll_packet(now, buf, 0) {
            return Some(t);
        }
        if let Some(t) = self.poll_out(buf) {
            return Some(t);
        }
        if let Some(t) = self.poll_lec(buf) {
            return Some(t);
        }
        if let Some(t) = self.poll_stream_state(now, buf) {
            self.stats.control_packets_sent += 1;
            self.stats.control_bytes_sent += t.len as u64;
            return Some(t);
        }
        self.poll_data(now, buf)
    }
}

impl Driven for NodeCore {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: Bytes) {
        self.stats.datagrams_received += 1;
        if self.seal.keys().is_some()
            && Header::peek(&datagram).is_ok_and(|h| h.cluster != self.config.cluster)
        {
            // Another cluster's traffic on a shared network: not worth a MAC, not an attack.
            self.stats.drops.foreign_cluster += 1;
            return;
        }
        let (header, body_len) = match self.seal.open(&datagram) {
            Ok((h, body)) => (h, body.len()),
            Err(e) => {
                match e {
                    wire::WireError::Unauthenticated => self.stats.drops.auth += 1,
                    wire::WireError::Replayed => self.stats.drops.replay += 1,
                    _ => self.stats.drops.malformed += 1,
                }
                return;
            }
        };
        if header.cluster != self.config.cluster {
            self.stats.drops.foreign_cluster += 1;
            return;
        }
        if header.sender == self.config.id {
            self.stats.own_looped += 1;
            return;
        }
        let body = datagram.slice(HEADER_LEN..HEADER_LEN + body_len);
        match header.kind {
            PacketKind::Announce => match wire::Announce::parse(&body) {
                Ok(a) => {
                    self.discovery.handle_announce(now, header.sender, a);
                    self.drain_announced(now);
                }
                Err(_) => self.stats.drops.malformed += 1,
            },
            PacketKind::Data | PacketKind::Fragment => {
                self.handle_data(now, &header, &datagram, body, from)
            }
            PacketKind::StreamState => self.handle_stream_state(now, header.sender, &body),
            PacketKind::Token => self.handle_token(now, header.sender, &body),
            PacketKind::TokenAck => self.handle_token_ack(now, &body),
            PacketKind::RepairRequest => self.handle_repair_request(now, header.sender, &body),
            PacketKind::SenderAck => self.handle_sender_ack_body(now, header.sender, &body),
            PacketKind::LecRepair => self.handle_lec_repair(now, header.sender, &body),
            PacketKind::Gossip => {
                self.gossip.handle_packet(now, from, &header, &body);
                self.drain_gossip(now);
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.discovery.handle_timeout(now);
        self.drain_announced(now);
        self.gossip_timeout(now);
        self.ring_timeout(now);
        for s in self.send.values_mut() {
            s.tick(now);
        }
        self.recv_timeout(now);
        self.departed_timeout(now);
        self.phantom_timeout(now);
        self.lec_timeout(now);
        self.keys_timeout(now);
        self.handover_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        // Every datagram leaves through this one seal.
        let t = self.poll_unsealed(now, buf)?;
        match self.seal.seal(buf, t.len) {
            Ok(len) => Some(Transmit { len, ..t }),
            Err(_) => {
                self.stats.drops.malformed += 1;
                None
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let streams = self.send.values().filter_map(SendStream::deadline);
        let holes = self.recv.values().filter_map(|s| s.window.deadline());
        let ring = self.rings_poll_timeout();
        let gossip = self.gossip.poll_timeout();
        let lec = self.lec_poll_timeout();
        let keys = self.keys_poll_timeout();
        let handover = self.handover_poll_timeout();
        let phantoms = (!self.recv.is_empty()).then_some(self.phantom_check_at);
        let grace = self
            .departed_at
            .values()
            .min()
            .map(|t| *t + self.config.departed_grace);
        let unvouched = self.unvouched.values().min().map(|t| *t + UNVOUCHED_AFTER);
        Some(
            streams
                .chain(holes)
                .chain(ring)
                .chain(gossip)
                .chain(grace)
                .chain(unvouched)
                .chain(lec)
                .chain(keys)
                .chain(handover)
                .chain(phantoms)
                .fold(self.discovery.poll_timeout(), Instant::min),
        )
    }

    fn poll_command(&mut self) -> Option<SocketCommand> {
        self.commands.pop_front()
    }
}
