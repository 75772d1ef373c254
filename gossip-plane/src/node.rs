//! The gossip node: the runtime that drives gossip objects, selects peers with MiCA's
//! correlated merge (in O(1) per round: views are described, peers sampled), bundles sections
//! per peer into one datagram within the reply budget of [`crate::peers`], and implements
//! [`qs_transport::Driven`]. It owns no protocol state of its own beyond the per-peer table;
//! what the objects know is theirs.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use qs_transport::wire::{Header, PacketKind, Seal, HEADER_LEN};
use qs_transport::{
    ClusterId, Driven, Instant, NodeId, Prng, SocketCommand, TopicId, TrafficClass, Transmit,
};

use crate::health::{Health, HealthConfig, HEALTH_TAG};
use crate::membership::{Membership, MembershipConfig, MembershipEvent, Status, MEMBERSHIP_TAG};
use crate::object::{GossipObject, Outbox, Peer, PeerView};
use crate::peers::{Peers, PeersConfig, PeersStats, ECHO_BIT, REPLY_MIN, RUNTIME_TAG};
use crate::reachability::{Reachability, ReachabilityConfig, ReachabilityEvent, REACHABILITY_TAG};
use crate::subscriptions::{Subscriptions, SubscriptionsConfig, SUBSCRIPTIONS_TAG};
use crate::wire::{self, Priority, Reader, Sections, SECTION_HEADER_LEN};

/// Gossip node settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Cluster whose datagrams we accept.
    pub cluster: ClusterId,
    /// This node.
    pub id: NodeId,
    /// Our unicast gossip address (as peers see it).
    pub addr: SocketAddr,
    /// Gossip round (SWIM protocol period), before Lifeguard stretching.
    pub round: Duration,
    /// Largest datagram we send, header included.
    pub mtu: usize,
    /// Correlated bundling: objects pick peers jointly and share datagrams. Off, each object
    /// picks its own peer and every section travels alone (the baseline MiCA compares with).
    pub bundling: bool,
    /// Seed of the node's `Prng`.
    pub seed: u64,
    /// Seals and opens datagrams when the node runs standalone (its [`Driven`] impl); a node
    /// embedded in another core gets opened packets and returns unsealed ones instead.
    pub seal: Seal,
    /// Per-peer table and reply budget.
    pub peers: PeersConfig,
    /// Subscription records checked per round for an owner membership knows.
    pub sweep_per_round: usize,
    /// How long a subscription record may have an owner membership does not know before the
    /// sweep drops it (an announcement brings a record before membership knows the node).
    pub orphan_after: Duration,
    /// After [`GossipNode::left_unknown`] forgot a record that only announcements vouched
    /// for, announcements of that node are refused this long unless membership vouches for
    /// it first (else each announcement would bring the record back, and the owner would
    /// forget it again: a flap).
    pub unvouched_hold: Duration,
    /// Membership and failure detection.
    pub membership: MembershipConfig,
    /// Subscriptions.
    pub subscriptions: SubscriptionsConfig,
    /// Multicast reachability reports.
    pub reachability: ReachabilityConfig,
    /// Health records and aggregates.
    pub health: HealthConfig,
}

impl GossipConfig {
    /// Defaults for node `id` at `addr` in `cluster`: 200 ms rounds, 1400-byte datagrams,
    /// bundling and Lifeguard on.
    pub fn new(cluster: ClusterId, id: NodeId, addr: SocketAddr) -> GossipConfig {
        GossipConfig {
            cluster,
            id,
            addr,
            round: Duration::from_millis(200),
            mtu: 1400,
            bundling: true,
            seed: id.0,
            seal: Seal::new(),
            peers: PeersConfig::default(),
            sweep_per_round: 32,
            orphan_after: Duration::from_secs(10),
            unvouched_hold: Duration::from_secs(600),
            membership: MembershipConfig::default(),
            subscriptions: SubscriptionsConfig::default(),
            reachability: ReachabilityConfig::default(),
            health: HealthConfig::default(),
        }
    }
}

/// What the gossip plane tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipEvent {
    /// A membership change.
    Membership(MembershipEvent),
    /// The subscription record of this node changed (or was dropped).
    SubscriptionsChanged(NodeId),
    /// A member stopped or started hearing a region's multicast.
    Reachability(ReachabilityEvent),
}

/// Traffic counters of one object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectStats {
    /// Sections written.
    pub sections_sent: u64,
    /// Datagrams that carried at least one of its sections.
    pub datagrams_sent: u64,
    /// Section bytes written (section headers included).
    pub bytes_sent: u64,
    /// Sections received.
    pub sections_received: u64,
    /// Section bytes received.
    pub bytes_received: u64,
    /// Sections it rejected as malformed.
    pub decode_errors: u64,
}

/// Counters of a gossip node.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStats {
    /// Rounds run.
    pub rounds: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent (headers included).
    pub bytes_sent: u64,
    /// Datagrams received and accepted.
    pub datagrams_received: u64,
    /// Bytes received and accepted.
    pub bytes_received: u64,
    /// Datagrams rejected by the header checks.
    pub dropped_malformed: u64,
    /// Datagrams of another cluster.
    pub dropped_foreign_cluster: u64,
    /// Our own datagrams (same id: a misconfiguration).
    pub dropped_own: u64,
    /// Sections with an unknown tag (skipped).
    pub unknown_sections: u64,
    /// Objects left without a peer after the correlated selection's draw limit.
    pub selection_overflow: u64,
    /// Events dropped from the full event queue.
    pub events_overflow: u64,
    /// Payloads an object wrote beyond its budget (dropped; a bug in that object).
    pub oversize_writes: u64,
    /// Subscription records dropped because membership holds their owner as dead or does
    /// not know it.
    pub orphan_records: u64,
    /// Announced subscription records refused because their node was forgotten unvouched
    /// (see [`GossipConfig::unvouched_hold`]).
    pub unvouched_refused: u64,
    /// Forgotten unvouched nodes dropped from the full hold table (the oldest first).
    pub unvouched_overflow: u64,
    /// Per-peer table and reply budget.
    pub peers: PeersStats,
    /// Per object, in object order (membership, subscriptions, reachability, health, then
    /// added objects).
    pub objects: Vec<(&'static str, ObjectStats)>,
}

/// Why an object could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddObjectError {
    /// Another object already uses this tag.
    DuplicateTag(u8),
    /// A node runs at most 63 objects.
    TooManyObjects,
}

impl std::fmt::Display for AddObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddObjectError::DuplicateTag(t) => write!(f, "gossip object tag {t} already in use"),
            AddObjectError::TooManyObjects => write!(f, "too many gossip objects (max 63)"),
        }
    }
}

impl std::error::Error for AddObjectError {}

const EVENTS_MAX: usize = 16_384;
/// Most nodes held forgotten unvouched at once.
const UNVOUCHED_MAX: usize = 4096;
const SELECTION_DRAWS_MAX: usize = 64;
/// Runtime section: section header and echo, plus a cookie when the peer needs one.
const RUNTIME_SECTION_LEN: usize = SECTION_HEADER_LEN + 4;

/// A gossip node: membership, subscriptions and any added [`GossipObject`]s over one unicast
/// socket, driven through [`Driven`].
///
/// Calling contract: as [`Driven`]; in addition drain [`GossipNode::poll_event`] after each
/// call. All traffic is unicast, class [`TrafficClass::Control`]; the node joins no group.
pub struct GossipNode {
    config: GossipConfig,
    membership: Membership,
    subscriptions: Subscriptions,
    reachability: Reachability,
    health: Health,
    extras: Vec<Box<dyn GossipObject>>,
    now: Instant,
    peers: Peers,
    next_round: Instant,
    /// `leave` was called: rounds run four times as often until the goodbye has spread.
    leaving: bool,
    rounds: u64,
    rng: Prng,
    events: VecDeque<GossipEvent>,
    scratch: Vec<u8>,
    /// Nodes forgotten by [`GossipNode::left_unknown`], and when: their announcements are
    /// refused until membership vouches for them or `unvouched_hold` passes.
    unvouched: BTreeMap<NodeId, Instant>,
    stats: NodeStats,
}

impl std::fmt::Debug for GossipNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipNode")
            .field("id", &self.config.id)
            .field("addr", &self.config.addr)
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

/// Built-in objects before the added ones: membership, subscriptions, reachability, health.
/// Reachability comes before health so that health, the larger, gets what is left of the MTU.
const BUILTIN_OBJECTS: usize = 4;

/// Object `i` of a node, borrowing only its object fields (so `self.peers` etc. stay free).
macro_rules! object {
    ($node:ident, $i:expr) => {
        object(
            &mut $node.membership,
            &mut $node.subscriptions,
            &mut $node.reachability,
            &mut $node.health,
            &mut $node.extras,
            $i,
        )
    };
}

fn object<'a>(
    membership: &'a mut Membership,
    subscriptions: &'a mut Subscriptions,
    reachability: &'a mut Reachability,
    health: &'a mut Health,
    extras: &'a mut [Box<dyn GossipObject>],
    i: usize,
) -> &'a mut dyn GossipObject {
    match i {
        0 => membership,
        1 => subscriptions,
        2 => reachability,
        3 => health,
        n => extras[n - BUILTIN_OBJECTS].as_mut(),
    }
}

/// One due object's view, resolved against the live members for this round.
struct Resolved {
    object: usize,
    view: PeerView,
    /// Live favoured peers (sorted by id), for `PeerView::Favour`.
    favoured: Vec<Peer>,
}

impl Resolved {
    fn is_favoured(&self, id: Option<NodeId>) -> bool {
        id.is_some_and(|id| {
            self.favoured
                .binary_search_by_key(&Some(id), |p| p.id)
                .is_ok()
        })
    }
    fn weight(&self, n: usize, p: &Peer) -> f64 {
        self.view
            .weight(n, self.favoured.len(), self.is_favoured(p.id))
    }
    /// A draw from this view alone.
    fn sample(&self, membership: &Membership, rng: &mut Prng) -> Option<Peer> {
        if let PeerView::Favour { share, .. } = &self.view {
            if !self.favoured.is_empty() && rng.chance(share.clamp(0.0, 1.0)) {
                let i = rng.below(self.favoured.len() as u64) as usize;
                return Some(self.favoured[i]);
            }
        }
        membership.sample_peer(rng)
    }
}

impl GossipNode {
    /// A node created at `now`; its first round comes within one round interval (at a random
    /// phase, so nodes started together do not gossip in lockstep).
    pub fn new(config: GossipConfig, now: Instant) -> GossipNode {
        let mut rng = Prng::new(config.seed);
        let membership = Membership::new(
            config.id,
            config.addr,
            config.round,
            config.membership.clone(),
            rng.fork(),
        );
        let subscriptions = Subscriptions::new(config.id, config.subscriptions.clone());
        let phase = rng.below(config.round.as_nanos().max(1) as u64);
        let mut stats = NodeStats::default();
        stats.objects.push(("membership", ObjectStats::default()));
        stats
            .objects
            .push(("subscriptions", ObjectStats::default()));
        stats.objects.push(("reachability", ObjectStats::default()));
        stats.objects.push(("health", ObjectStats::default()));
        GossipNode {
            peers: Peers::new(config.peers.clone(), rng.fork(), now),
            next_round: now + Duration::from_nanos(phase),
            leaving: false,
            membership,
            subscriptions,
            reachability: Reachability::new(config.id, config.reachability.clone()),
            health: Health::new(config.id, config.health.clone()),
            extras: Vec::new(),
            now,
            rounds: 0,
            rng,
            events: VecDeque::new(),
            scratch: Vec::with_capacity(config.mtu),
            unvouched: BTreeMap::new(),
            stats,
            config,
        }
    }

    /// Adds a gossip object (its tag must be unused; membership is 0, subscriptions 1,
    /// reachability 2, health 3, the runtime's own section 255).
    pub fn add_object(&mut self, object: Box<dyn GossipObject>) -> Result<(), AddObjectError> {
        let tag = object.tag();
        if tag == MEMBERSHIP_TAG
            || tag == SUBSCRIPTIONS_TAG
            || tag == REACHABILITY_TAG
            || tag == HEALTH_TAG
            || tag == RUNTIME_TAG
            || self.extras.iter().any(|o| o.tag() == tag)
        {
            return Err(AddObjectError::DuplicateTag(tag));
        }
        if self.extras.len() + BUILTIN_OBJECTS >= 63 {
            return Err(AddObjectError::TooManyObjects);
        }
        self.stats
            .objects
            .push((object.name(), ObjectStats::default()));
        self.extras.push(object);
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The configuration.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// The membership object.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The subscriptions object.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// The health object (records and region/cluster aggregates).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The health object, to publish our values ([`Health::set_local`]) and region.
    pub fn health_mut(&mut self) -> &mut Health {
        &mut self.health
    }

    /// The multicast reachability object (who does not hear which region).
    pub fn reachability(&self) -> &Reachability {
        &self.reachability
    }

    /// The multicast reachability object, to report what we expect and hear
    /// ([`Reachability::expect`], [`Reachability::heard`]); its events come out of
    /// [`GossipNode::poll_event`].
    pub fn reachability_mut(&mut self) -> &mut Reachability {
        &mut self.reachability
    }

    /// Sends our own reachability report to `to` in the next datagram to it (reports are
    /// accepted only from their author: the owner sends ours to those who act on it, e.g. the
    /// senders of our region).
    pub fn push_reachability_to(&mut self, to: SocketAddr) {
        if self.reachability.owe(to) {
            self.peers.add(self.now, to, 2, true, None);
        }
    }

    /// A subscription record learned outside gossip (a multicast announcement the owner
    /// checked): merged into the subscriptions object; a change comes out as
    /// [`GossipEvent::SubscriptionsChanged`].
    ///
    /// A node [`GossipNode::left_unknown`] forgot is refused (counted) until membership holds
    /// it live or [`GossipConfig::unvouched_hold`] has passed.
    pub fn learn_subscriptions(&mut self, id: NodeId, record: crate::SubscriptionRecord) {
        if let Some(at) = self.unvouched.get(&id).copied() {
            if self.is_live_member(id) || self.now >= at + self.config.unvouched_hold {
                self.unvouched.remove(&id);
            } else {
                self.stats.unvouched_refused += 1;
                return;
            }
        }
        self.subscriptions.learn(id, record);
        self.pump_events();
    }

    /// `id` said goodbye outside gossip (a checked multicast announcement). When the
    /// membership never knew it as a live member (it left before gossip reached it) no gossip
    /// `Left` will come, so the subscription record an announcement brought is forgotten now;
    /// otherwise membership's own goodbye handling decides.
    pub fn left_unknown(&mut self, id: NodeId) {
        if id == self.config.id
            || self
                .membership
                .member(id)
                .is_some_and(|m| m.status.is_live())
        {
            return;
        }
        self.subscriptions.forget(id);
        self.hold_unvouched(id);
        self.pump_events();
    }

    /// Refuses announcements of `id` (forgotten while membership never vouched for it) for
    /// `unvouched_hold`.
    fn hold_unvouched(&mut self, id: NodeId) {
        if self.unvouched.len() >= UNVOUCHED_MAX && !self.unvouched.contains_key(&id) {
            if let Some(oldest) = self
                .unvouched
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| *k)
            {
                self.unvouched.remove(&oldest);
                self.stats.unvouched_overflow += 1;
            }
        }
        self.unvouched.insert(id, self.now);
    }

    /// Replaces our subscribed topics (spread by gossip from the next round).
    pub fn set_topics(&mut self, topics: impl IntoIterator<Item = TopicId>) {
        self.subscriptions.set_topics(topics);
        self.pump_events();
    }

    /// Replaces this node's topics and names the region it is departing, in one new version
    /// of its record (see [`Subscriptions::set_topics_departing`]).
    pub fn set_topics_departing(
        &mut self,
        topics: impl IntoIterator<Item = TopicId>,
        departing: Option<qs_transport::RegionId>,
    ) {
        self.subscriptions.set_topics_departing(topics, departing);
        self.pump_events();
    }

    /// This node departed the region its record names (see
    /// [`Subscriptions::clear_departing`]).
    pub fn clear_departing(&mut self) {
        self.subscriptions.clear_departing();
        self.pump_events();
    }

    /// Records the newest cluster-key epoch this node holds in its subscription record (see
    /// [`Subscriptions::set_key_epoch`]).
    pub fn set_key_epoch(&mut self, epoch: u32) {
        self.subscriptions.set_key_epoch(epoch);
        self.pump_events();
    }

    /// Adds a seed address to join through (see [`Membership::add_seed`]).
    pub fn add_seed(&mut self, addr: SocketAddr) {
        self.membership.add_seed(addr);
    }

    /// Leaves the cluster gracefully (see [`Membership::leave`]).
    pub fn leave(&mut self, now: Instant) {
        self.membership.leave(now);
        // Spread the goodbye at once and in quick rounds: a leaving process does not linger.
        self.leaving = true;
        self.next_round = self.next_round.min(now);
        self.pump_events();
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GossipEvent> {
        if self.events.is_empty() {
            // Events raised through `reachability_mut` since the last call.
            self.pump_events();
        }
        self.events.pop_front()
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        let mut s = self.stats.clone();
        s.peers = self.peers.stats;
        s
    }

    /// Peers with a slot in the per-peer table.
    pub fn peer_slots(&self) -> usize {
        self.peers.len()
    }

    /// Whether the per-peer table holds a slot for `addr` (state kept for that address).
    pub fn has_peer_slot(&self, addr: SocketAddr) -> bool {
        self.peers.contains(addr)
    }

    /// Panics if any object or the runtime is inconsistent (O(N): walks the tables).
    pub fn check_invariants(&self) {
        self.membership.check_invariants();
        GossipObject::check_invariants(&self.subscriptions);
        self.check_light();
        for o in &self.extras {
            o.check_invariants();
        }
    }

    /// The checks of [`GossipNode::check_invariants`] that do not walk the replicated tables
    /// (cheap enough for every event of a large simulation).
    pub fn check_light(&self) {
        self.membership.check_bounds();
        GossipObject::check_invariants(&self.reachability);
        GossipObject::check_invariants(&self.health);
        self.peers.check_invariants();
        assert!(self.events.len() <= EVENTS_MAX);
        assert!(self.next_round > Instant::ZERO || self.rounds == 0);
    }

    fn object_count(&self) -> usize {
        BUILTIN_OBJECTS + self.extras.len()
    }

    fn push_event(&mut self, e: GossipEvent) {
        if self.events.len() >= EVENTS_MAX {
            self.stats.events_overflow += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn member_is_dead(&self, id: NodeId) -> bool {
        self.membership
            .member(id)
            .is_some_and(|m| !m.status.is_live())
    }

    fn pump_events(&mut self) {
        while let Some(e) = self.membership.poll_event() {
            match e {
                MembershipEvent::MemberDown { id }
                | MembershipEvent::MemberLeft { id }
                | MembershipEvent::MemberForgotten { id } => {
                    self.subscriptions.forget(id);
                    self.health.forget(self.now, id);
                    self.reachability.forget(self.now, id);
                }
                MembershipEvent::MemberUp { id, .. } | MembershipEvent::MemberAlive { id, .. } => {
                    // Membership vouches for it: its announcements count again.
                    self.unvouched.remove(&id);
                    self.health.readmit(id);
                    self.reachability.readmit(id);
                }
                MembershipEvent::MemberSuspect { .. } => {}
            }
            self.push_event(GossipEvent::Membership(e));
        }
        while let Some(id) = self.subscriptions.poll_change() {
            if self.member_is_dead(id) && self.subscriptions.record(id).is_some() {
                // A copy of a dead member's record came back through someone who has not
                // heard yet: it stays out while membership holds the tombstone.
                self.subscriptions.forget(id);
                self.stats.orphan_records += 1;
                continue;
            }
            self.tell_health_mates(id);
            self.push_event(GossipEvent::SubscriptionsChanged(id));
        }
        while let Some(e) = self.reachability.poll_event() {
            self.push_event(GossipEvent::Reachability(e));
        }
    }

    /// Health learns region members from the subscription records (one region per
    /// signature), before it holds their health records.
    fn tell_health_mates(&mut self, id: NodeId) {
        let me = self.config.id;
        let Some(mine) = self.subscriptions.record(me) else {
            return;
        };
        if id == me {
            // Our own signature changed: everyone is re-judged (rare: a subscription change).
            self.health.clear_mates();
            let mates: Vec<NodeId> = self
                .subscriptions
                .records()
                .filter(|(other, r)| *other != me && r.topics == mine.topics)
                .map(|(other, _)| other)
                .collect();
            for m in mates {
                self.health.set_mate(m, true);
            }
            return;
        }
        let mate = self.subscriptions.record(id).is_some_and(|r| {
            std::sync::Arc::ptr_eq(&r.topics, &mine.topics) || r.topics == mine.topics
        });
        self.health.set_mate(id, mate);
    }

    fn after_entry(&mut self) {
        for addr in self.peers.take_forgotten() {
            for i in 0..self.object_count() {
                object!(self, i).forget_peer(addr);
            }
        }
        self.pump_events();
        let t = self.poll_timeout();
        self.membership.set_expected_wakeup(t);
    }

    /// The due objects' views, resolved against the live members.
    fn resolve(&mut self, due: Vec<(usize, PeerView)>) -> Vec<Resolved> {
        due.into_iter()
            .map(|(object, view)| {
                let favoured = match &view {
                    PeerView::Favour { ids, .. } => {
                        let mut f: Vec<Peer> = ids
                            .iter()
                            .filter_map(|id| self.membership.peer(*id))
                            .collect();
                        f.sort_by_key(|p| p.id);
                        f.dedup_by_key(|p| p.id);
                        f
                    }
                    _ => Vec::new(),
                };
                Resolved {
                    object,
                    view,
                    favoured,
                }
            })
            .collect()
    }

    fn run_round(&mut self, now: Instant) {
        self.rounds += 1;
        self.stats.rounds += 1;
        self.peers.tick(now);
        for addr in self.peers.take_forgotten() {
            for i in 0..self.object_count() {
                object!(self, i).forget_peer(addr);
            }
        }
        self.subscriptions.set_members(self.membership.live_count());
        let count = self.object_count();
        for i in 0..count {
            let o = object!(self, i);
            o.on_round(now, &mut Outbox::new(&mut self.peers, i, now));
        }
        let dropped = {
            let m = &self.membership;
            let (n, after) = (self.config.sweep_per_round, self.config.orphan_after);
            self.subscriptions.sweep(n, now, after, |id| {
                m.member(id).is_some_and(|r| r.status.is_live())
            })
        };
        self.stats.orphan_records += dropped.len() as u64;
        for id in dropped {
            // A record membership never vouched for (only an announcement brought it): the
            // next announcement must not bring it straight back.
            if self.membership.member(id).is_none() {
                self.hold_unvouched(id);
            }
        }
        if !self.unvouched.is_empty() && self.rounds % 64 == 0 {
            let hold = self.config.unvouched_hold;
            self.unvouched.retain(|_, at| now < *at + hold);
        }
        if self.rounds % u64::from(self.config.health.cold_every.max(1)) == 0 {
            let m = &self.membership;
            self.health
                .vouch(now, |id| m.member(id).is_some_and(|r| r.status.is_live()));
        }
        let n = self.membership.peer_count();
        if n == 0 {
            return;
        }
        let mut due: Vec<(usize, PeerView)> = Vec::new();
        for i in 0..count {
            let o = object!(self, i);
            if self.rounds % u64::from(o.rate().max(1)) == 0 {
                let v = o.view();
                if v != PeerView::Nobody {
                    due.push((i, v));
                }
            }
        }
        let mut choices: Vec<(usize, Peer)> = Vec::new();
        if !due.is_empty() {
            let views = self.resolve(due);
            self.select(&views, n, &mut choices);
        }
        for (i, peer) in choices {
            let o = object!(self, i);
            o.gossip_with(now, &peer, &mut Outbox::new(&mut self.peers, i, now));
        }
        // Extra partners (catching up): uniform draws, one object at a time.
        for i in 0..count {
            let k = object!(self, i).extra_peers();
            for _ in 0..k {
                let mut rng = self.rng.fork();
                if let Some(peer) = self.membership.sample_peer(&mut rng) {
                    let o = object!(self, i);
                    o.catch_up_with(now, &peer, &mut Outbox::new(&mut self.peers, i, now));
                }
            }
        }
    }

    /// Picks a peer for every due object: MiCA's correlated merge, by rejection sampling so
    /// that nothing is enumerated.
    fn select(&mut self, views: &[Resolved], n: usize, choices: &mut Vec<(usize, Peer)>) {
        if !self.config.bundling {
            for v in views {
                if let Some(p) = v.sample(&self.membership, &mut self.rng) {
                    choices.push((v.object, p));
                }
            }
            return;
        }
        if views.iter().all(|v| v.view == PeerView::Uniform) {
            if let Some(p) = self.membership.sample_peer(&mut self.rng) {
                choices.extend(views.iter().map(|v| (v.object, p)));
            }
            return;
        }
        // Draw p from the composite c(p) = max_i w_i(p); each remaining object joins with
        // probability w_i(p) / c(p). Repeating with the composite fixed until every object
        // joined gives each object exactly its own view, while overlapping views share peers
        // (and datagrams). The composite is sampled by proposing from the mixture of the
        // views and accepting with max_i w_i / sum_i w_i (the max never exceeds the sum).
        let mut remaining: Vec<bool> = vec![true; views.len()];
        let mut draws = 0;
        let mut tries = 0;
        while remaining.iter().any(|r| *r) && draws < SELECTION_DRAWS_MAX {
            tries += 1;
            if tries > SELECTION_DRAWS_MAX * 8 {
                break;
            }
            let j = self.rng.below(views.len() as u64) as usize;
            let Some(p) = views[j].sample(&self.membership, &mut self.rng) else {
                break;
            };
            let w: Vec<f64> = views.iter().map(|v| v.weight(n, &p)).collect();
            let max = w.iter().copied().fold(0.0, f64::max);
            let sum: f64 = w.iter().sum();
            if sum <= 0.0 || !self.rng.chance(max / sum) {
                continue;
            }
            draws += 1;
            for (k, v) in views.iter().enumerate() {
                if remaining[k] && self.rng.chance(w[k] / max) {
                    remaining[k] = false;
                    choices.push((v.object, p));
                }
            }
        }
        self.stats.selection_overflow += remaining.iter().filter(|r| **r).count() as u64;
    }

    fn handle_packet_inner(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: &Header,
        body: &[u8],
    ) {
        if header.kind != PacketKind::Gossip {
            self.stats.dropped_malformed += 1;
            return;
        }
        if header.cluster != self.config.cluster {
            self.stats.dropped_foreign_cluster += 1;
            return;
        }
        let sender = header.sender;
        if sender == self.config.id {
            self.stats.dropped_own += 1;
            return;
        }
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += (HEADER_LEN + body.len()) as u64;
        // The runtime section (echo and cookie, last when present); without a valid echo the
        // sender proves nothing and its replies are held to what it sent.
        let (mut echo, mut cookie) = (0u32, None);
        for s in Sections::new(body).flatten() {
            if s.tag == RUNTIME_TAG {
                let mut r = Reader::new(s.payload);
                echo = r.u32().unwrap_or(0);
                cookie = r.u32().ok().filter(|c| *c != 0);
            }
        }
        self.peers
            .received(now, from, sender, HEADER_LEN + body.len(), echo, cookie);
        let peer = Peer {
            id: Some(sender),
            addr: from,
        };
        let count = self.object_count();
        for section in Sections::new(body) {
            let Ok(section) = section else {
                self.stats.dropped_malformed += 1;
                break;
            };
            if section.tag == RUNTIME_TAG {
                continue;
            }
            let idx = (0..count).find(|&i| object!(self, i).tag() == section.tag);
            let Some(i) = idx else {
                self.stats.unknown_sections += 1;
                continue;
            };
            let s = &mut self.stats.objects[i].1;
            s.sections_received += 1;
            s.bytes_received += (section.payload.len() + SECTION_HEADER_LEN) as u64;
            let o = object!(self, i);
            if o.handle(
                now,
                &peer,
                section.priority,
                section.payload,
                &mut Outbox::new(&mut self.peers, i, now),
            )
            .is_err()
            {
                self.stats.objects[i].1.decode_errors += 1;
            }
        }
    }
}

impl GossipNode {
    /// A gossip datagram arrived from `from`, already opened (checked) by the owner's
    /// [`qs_transport::wire::Seal`]: its header and body.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, header: &Header, body: &[u8]) {
        self.now = self.now.max(now);
        self.membership.observe_clock(now);
        self.handle_packet_inner(now, from, header, body);
        self.after_entry();
    }

    /// Runs due rounds and timers (see [`GossipNode::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.membership.observe_clock(now);
        if now >= self.next_round && !self.membership.is_gone() {
            self.run_round(now);
            let period = if self.leaving {
                self.config.round / 4
            } else {
                self.config.round * self.membership.health_multiplier()
            };
            // ±10% jitter keeps nodes from falling into lockstep.
            let span = period.as_nanos() as u64 / 5;
            let jitter = self.rng.below(span.max(1));
            self.next_round =
                now + period - Duration::from_nanos(span / 2) + Duration::from_nanos(jitter);
        }
        for i in 0..self.object_count() {
            let o = object!(self, i);
            if o.poll_timeout().is_some_and(|t| t <= now) {
                o.handle_timeout(now, &mut Outbox::new(&mut self.peers, i, now));
            }
        }
        self.after_entry();
    }

    /// Writes the next gossip datagram (header and body, unsealed: the owner seals it) into
    /// `buf`, within the MTU less `reserve` bytes (the seal's trailer) and the peer's reply
    /// budget.
    pub fn poll_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        reserve: usize,
    ) -> Option<Transmit> {
        let mtu = self.config.mtu.min(buf.len()).saturating_sub(reserve);
        if mtu < 4 * REPLY_MIN {
            return None;
        }
        while let Some((addr, mut mask, id)) = self.peers.pop() {
            let echo_only = mask & ECHO_BIT != 0;
            mask &= !ECHO_BIT;
            let Some(budget) = self.peers.budget(now, addr, mtu) else {
                self.peers.defer(addr, mask);
                continue;
            };
            if !self.config.bundling {
                let lowest = mask & mask.wrapping_neg();
                self.peers.put_back(addr, mask & !lowest, true);
                mask = lowest;
            }
            let to = Peer { id, addr };
            if wire::write_header(buf, self.config.cluster, self.config.id).is_err() {
                return None;
            }
            // Room is kept for the runtime section, written last, unless the budget is that
            // of a bare ack (a cookie it may then owe goes with the next datagram).
            let bytes = budget.bytes.min(mtu);
            let reserve = if bytes >= 4 * REPLY_MIN {
                RUNTIME_SECTION_LEN + 4
            } else {
                0
            };
            let limit = bytes - reserve;
            let mut at = HEADER_LEN;
            let body_start = at;
            let mut wrote_mask = 0u64;
            let count = self.object_count();
            for priority in Priority::ALL {
                let members: Vec<usize> = (0..count).filter(|i| mask & (1 << i) != 0).collect();
                let mut left = members.len();
                for i in members {
                    let room = limit.saturating_sub(at);
                    let share = if priority == Priority::Bulk {
                        room / left.max(1)
                    } else {
                        room
                    };
                    left -= 1;
                    if share <= SECTION_HEADER_LEN {
                        continue;
                    }
                    self.scratch.clear();
                    let o = object!(self, i);
                    o.write(
                        now,
                        &to,
                        priority,
                        share - SECTION_HEADER_LEN,
                        &mut self.scratch,
                    );
                    let len = self.scratch.len();
                    if len > share - SECTION_HEADER_LEN || len > usize::from(u16::MAX) {
                        self.stats.oversize_writes += 1;
                        continue;
                    }
                    if len == 0 {
                        continue;
                    }
                    buf[at] = o.tag();
                    buf[at + 1] = priority as u8;
                    buf[at + 2..at + 4].copy_from_slice(&(len as u16).to_be_bytes());
                    buf[at + 4..at + 4 + len].copy_from_slice(&self.scratch);
                    at += SECTION_HEADER_LEN + len;
                    wrote_mask |= 1 << i;
                    let s = &mut self.stats.objects[i].1;
                    s.sections_sent += 1;
                    s.bytes_sent += (SECTION_HEADER_LEN + len) as u64;
                }
            }
            let mut more = 0u64;
            for i in 0..count {
                let o = object!(self, i);
                if mask & (1 << i) != 0 && o.has_more(&to) {
                    more |= 1 << i;
                }
            }
            if at == body_start && !echo_only {
                // Nothing fit or nothing to say: what is still owed waits for budget.
                if more != 0 {
                    if budget.free {
                        self.peers.put_back(addr, more, false);
                    } else {
                        self.peers.defer(addr, more);
                    }
                }
                continue;
            }
            if more != 0 && !budget.free {
                self.peers.limited(addr);
            }
            // Runtime section: our echo of its cookie, and ours when it needs one.
            let section = self
                .peers
                .section(addr)
                .map(|(e, c)| (e, c.filter(|_| at + RUNTIME_SECTION_LEN + 4 <= bytes)))
                .filter(|_| at + RUNTIME_SECTION_LEN <= bytes);
            if let Some((echo, cookie)) = section {
                let rlen = 4 + if cookie.is_some() { 4 } else { 0 };
                buf[at] = RUNTIME_TAG;
                buf[at + 1] = Priority::Liveness as u8;
                buf[at + 2..at + 4].copy_from_slice(&(rlen as u16).to_be_bytes());
                buf[at + 4..at + 8].copy_from_slice(&echo.to_be_bytes());
                if let Some(c) = cookie {
                    buf[at + 8..at + 12].copy_from_slice(&c.to_be_bytes());
                }
                at += SECTION_HEADER_LEN + rlen;
            } else if at == body_start {
                continue;
            }
            let cookie_written = section.is_some_and(|(_, c)| c.is_some());
            let len = at;
            for i in 0..count {
                if wrote_mask & (1 << i) != 0 {
                    self.stats.objects[i].1.datagrams_sent += 1;
                }
            }
            self.peers.spent(now, addr, budget, len);
            if cookie_written {
                self.peers.cookie_sent(addr);
            }
            self.peers.put_back(addr, more, false);
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += len as u64;
            return Some(Transmit {
                destination: addr,
                class: TrafficClass::Control,
                len,
            });
        }
        None
    }

    /// When [`GossipNode::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = if self.membership.is_gone() {
            None
        } else {
            Some(self.next_round)
        };
        let objs = [
            self.membership.poll_timeout(),
            GossipObject::poll_timeout(&self.subscriptions),
            GossipObject::poll_timeout(&self.reachability),
            GossipObject::poll_timeout(&self.health),
        ];
        for d in objs
            .into_iter()
            .chain(self.extras.iter().map(|o| o.poll_timeout()))
            .flatten()
        {
            t = Some(t.map_or(d, |x| x.min(d)));
        }
        t
    }

    /// Whether membership holds `id` as a live member.
    pub fn is_live_member(&self, id: NodeId) -> bool {
        self.membership
            .member(id)
            .is_some_and(|m| m.status == Status::Alive || m.status == Status::Suspect)
    }
}

/// Standalone use (tests, a gossip-only process): the node seals and opens its own datagrams
/// with [`GossipConfig::seal`].
impl Driven for GossipNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: Bytes) {
        match self.config.seal.open(&datagram) {
            Ok((header, body)) => self.handle_packet(now, from, &header, body),
            Err(_) => self.stats.dropped_malformed += 1,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        GossipNode::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let reserve = self.config.seal.overhead();
        let t = self.poll_packet(now, buf, reserve)?;
        let len = self.config.seal.seal(buf, t.len).ok()?;
        Some(Transmit { len, ..t })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        GossipNode::poll_timeout(self)
    }

    fn poll_command(&mut self) -> Option<SocketCommand> {
        None
    }
}
