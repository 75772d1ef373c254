//! Who is in the cluster, what they subscribe and where they are: the one truth is the gossip
//! plane. Its failure detector (SWIM/Lifeguard) decides liveness, its subscription records
//! hold every node's signature, and the region table (hence the rings' views) changes only on
//! its events: a member that goes down or leaves closes its streams, a subscription record
//! that appears, changes or is forgotten moves the node in the region table.
//!
//! Discovery announcements only seed it: a checked announcement adds its sender as a gossip
//! seed and hands its subscription record to gossip (which keeps it if it is newer). Answers
//! to "who subscribes to T" ([`NodeCore::subscribers_of`]) and "which address does node X
//! have" ([`NodeCore::address_of`]) come from here alone.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use qs_discovery::Announced;
use qs_gossip::{
    GossipConfig, GossipEvent, GossipNode, MembershipEvent, ReachabilityEvent, Status,
    SubscriptionRecord,
};
use qs_regions::Signature;
use qs_transport::{Instant, NodeId, TopicId};

use super::{CoreConfig, Event, NodeCore};

/// Most senders waiting out their grace time at once (beyond it, streams close at once).
const DEPARTED_MAX: usize = 4096;
/// Closed streams remembered (their stragglers are dropped).
const CLOSED_MAX: usize = 1024;
/// How long a subscription record that only announcements vouch for is kept while the gossip
/// plane never knows its node as a live member: a node that crashed (or left unheard) before
/// gossip reached it would otherwise stay in its region, and hold its senders, for ever.
/// Far longer than a join takes (a gossip round or two).
pub(super) const UNVOUCHED_AFTER: Duration = Duration::from_secs(10);
/// How often receive streams are checked for senders that are no members.
pub(super) const PHANTOM_CHECK: Duration = Duration::from_secs(1);

/// A peer found by the multicast announcements that gossip holds alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer<'a> {
    /// The node.
    pub id: NodeId,
    /// Its unicast address.
    pub unicast: SocketAddrV4,
    /// The topics it subscribes (empty while its record is unknown).
    pub topics: &'a [TopicId],
}

/// The gossip node for a core with these settings (`seal_overhead`: bytes its datagrams must
/// leave for the seal).
pub(super) fn gossip_for(config: &CoreConfig, seal_overhead: usize, now: Instant) -> GossipNode {
    let mut c = GossipConfig::new(config.cluster, config.id, SocketAddr::V4(config.unicast));
    c.seed = config.seed ^ 0x6055_1b00;
    c.round = config.gossip_round;
    c.mtu = config.max_datagram - seal_overhead;
    // One time for both ways a record only announcements vouch for goes: gossip's sweep and
    // this core's own check (`departed_timeout`).
    c.orphan_after = UNVOUCHED_AFTER;
    c.membership.seeds = config.gossip_seeds.clone();
    // Records hold whole signatures (announcements carry up to this many topics).
    c.subscriptions.topics_max = config.discovery.max_topics_per_peer;
    if let Some(t) = config.failure_timeout {
        c.membership.suspicion_mult = (t.as_secs_f64() / c.round.as_secs_f64()).max(1.0);
    }
    GossipNode::new(c, now)
}

impl NodeCore {
    /// Whether the gossip plane declared `id` failed or gone.
    pub(super) fn is_departed(&self, id: NodeId) -> bool {
        self.gossip
            .membership()
            .member(id)
            .is_some_and(|m| matches!(m.status, Status::Down | Status::Left))
    }

    /// Whether `sender`'s stream of `epoch` (or a later one) was closed here for good.
    pub(super) fn is_closed(&self, sender: NodeId, epoch: u64) -> bool {
        match self.closed.binary_search_by_key(&sender, |(s, _)| *s) {
            Ok(i) => self.closed[i].1 >= epoch,
            Err(_) => false,
        }
    }

    /// Remembers that `sender`'s stream of `epoch` is closed for good.
    pub(super) fn remember_closed(&mut self, sender: NodeId, epoch: u64) {
        match self.closed.binary_search_by_key(&sender, |(s, _)| *s) {
            Ok(i) => self.closed[i].1 = self.closed[i].1.max(epoch),
            Err(_) => {
                if self.closed_order.len() >= CLOSED_MAX {
                    if let Some(old) = self.closed_order.pop_front() {
                        self.closed.retain(|(s, _)| *s != old);
                    }
                }
                let i = self.closed.partition_point(|(s, _)| *s < sender);
                self.closed.insert(i, (sender, epoch));
                self.closed_order.push_back(sender);
            }
        }
    }

    /// The receive streams held: (sender, region).
    pub fn receive_streams(&self) -> impl Iterator<Item = (NodeId, qs_transport::RegionId)> + '_ {
        self.recv.keys().copied()
    }

    /// Frees the receive streams of senders gossip has not known as live members for
    /// `phantom_after` (a forged or buggy sender id, or one forgotten and still sending):
    /// they would otherwise hold their windows for ever. Senders declared down wait out
    /// `departed_grace` instead. A real sender whose announcement comes late is a member
    /// long before. Checked every [`PHANTOM_CHECK`]; the table is bounded by `max_streams`.
    pub(super) fn phantom_timeout(&mut self, now: Instant) {
        if now < self.phantom_check_at {
            return;
        }
        self.phantom_check_at = now + PHANTOM_CHECK;
        let mut senders: Vec<NodeId> = self.recv.keys().map(|(s, _)| *s).collect();
        senders.dedup();
        self.phantom_since
            .retain(|id, _| senders.binary_search(id).is_ok());
        for id in senders {
            if self.is_live_member(id) || self.departed_at.contains_key(&id) {
                self.phantom_since.remove(&id);
                continue;
            }
            let since = *self.phantom_since.entry(id).or_insert(now);
            if since + self.config.phantom_after <= now {
                self.phantom_since.remove(&id);
                let streams = self.recv.keys().filter(|(s, _)| *s == id).count();
                self.stats.phantom_streams_expired += streams as u64;
                self.sender_gone(now, id);
            }
        }
    }

    /// Closes the streams of senders declared down longer than `departed_grace` ago, and
    /// forgets records that only announcements ever vouched for (`UNVOUCHED_AFTER`).
    pub(super) fn departed_timeout(&mut self, now: Instant) {
        if self.unvouched.values().any(|t| *t + UNVOUCHED_AFTER <= now) {
            let ids: Vec<NodeId> = self.unvouched.keys().copied().collect();
            for id in ids {
                if self.is_live_member(id) {
                    self.unvouched.remove(&id);
                } else if self.unvouched[&id] + UNVOUCHED_AFTER <= now {
                    self.unvouched.remove(&id);
                    self.gossip.left_unknown(id);
                }
            }
            self.drain_gossip(now);
        }
        let grace = self.config.departed_grace;
        let due: Vec<NodeId> = self
            .departed_at
            .iter()
            .filter(|(_, t)| **t + grace <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.departed_at.remove(&id);
            self.sender_gone(now, id);
        }
    }

    /// A unicast address for `id`: gossip's member record, else its announcement.
    pub(super) fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        if let Some(m) = self.gossip.membership().member(id) {
            return Some(m.addr);
        }
        self.discovery
            .announcers()
            .find(|(a, _)| *a == id)
            .map(|(_, unicast)| SocketAddr::V4(unicast))
    }

    /// Other nodes subscribing at least one of `topics` (as the region table has them).
    pub fn subscribers_of_any(&self, topics: &[TopicId]) -> usize {
        let mut nodes: Vec<NodeId> = topics
            .iter()
            .flat_map(|t| self.regions.regions_for_topic(*t))
            .filter_map(|r| self.regions.region(*r))
            .flat_map(|r| r.members.iter().copied())
            .filter(|id| *id != self.config.id)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    }

    /// Peers found by the multicast announcements that gossip holds alive, in id order.
    pub fn peers(&self) -> impl Iterator<Item = Peer<'_>> {
        self.discovery
            .announcers()
            .filter(|(id, _)| !self.is_departed(*id))
            .map(|(id, unicast)| Peer {
                id,
                unicast,
                topics: self.gossip.subscriptions().topics_of(id).unwrap_or(&[][..]),
            })
    }

    /// Hands checked announcements to the gossip plane: their senders become seeds, their
    /// subscriptions candidate records.
    pub(super) fn drain_announced(&mut self, now: Instant) {
        while let Some(a) = self.discovery.poll_announced() {
            self.seed_gossip(now, a);
        }
        self.drain_gossip(now);
    }

    fn seed_gossip(&mut self, now: Instant, a: Announced) {
        let Announced {
            id,
            unicast,
            version,
            signature,
            departing,
            leaving,
            ..
        } = a;
        if leaving {
            // The goodbye that counts is gossip's own, unless gossip never knew the node as a
            // member (it left before gossip reached it): then only this one says so.
            self.gossip.left_unknown(id);
            return;
        }
        self.gossip.add_seed(SocketAddr::V4(unicast));
        if let Some(sig) = signature {
            let record = SubscriptionRecord {
                version,
                topics: sig.topics().into(),
                key_epoch: 0,
                departing,
            };
            self.gossip.learn_subscriptions(id, record);
            if !self.is_live_member(id) && self.unvouched.len() < DEPARTED_MAX {
                self.unvouched.entry(id).or_insert(now);
            }
        }
    }

    /// Whether the gossip plane knows `id` as a live member.
    fn is_live_member(&self, id: NodeId) -> bool {
        self.gossip
            .membership()
            .member(id)
            .is_some_and(|m| m.status.is_live())
    }

    /// Applies the gossip plane's events to the region table, the ring and the application.
    pub(super) fn drain_gossip(&mut self, now: Instant) {
        let mut changed = false;
        while let Some(e) = self.gossip.poll_event() {
            match e {
                GossipEvent::Membership(MembershipEvent::MemberDown { id })
                    if id != self.config.id =>
                {
                    // Failed, or only paused: its streams wait (their holes may still come
                    // from it) until it returns or the grace time ends.
                    if self.departed_at.len() < DEPARTED_MAX {
                        self.departed_at.entry(id).or_insert(now);
                    } else {
                        self.sender_gone(now, id);
                    }
                    self.discovery.forget(id);
                    self.events.push_back(Event::PeerDown(id));
                }
                GossipEvent::Membership(MembershipEvent::MemberLeft { id })
                    if id != self.config.id =>
                {
                    // A goodbye: it waited for its streams to be acknowledged first.
                    self.departed_at.remove(&id);
                    self.sender_gone(now, id);
                    self.discovery.forget(id);
                    self.events.push_back(Event::PeerDown(id));
                }
                GossipEvent::Membership(
                    MembershipEvent::MemberUp { id, .. } | MembershipEvent::MemberAlive { id, .. },
                ) if id != self.config.id => {
                    self.departed_at.remove(&id);
                    if matches!(e, GossipEvent::Membership(MembershipEvent::MemberUp { .. })) {
                        self.events.push_back(Event::PeerUp(id));
                    }
                }
                GossipEvent::SubscriptionsChanged(id) => {
                    changed |= self.apply_record(id);
                    if id != self.config.id {
                        self.events.push_back(Event::PeerChanged(id));
                    }
                }
                GossipEvent::Reachability(r) => {
                    self.events.push_back(match r {
                        ReachabilityEvent::MemberUnreachable { member, region } => {
                            Event::MulticastUnreachable { member, region }
                        }
                        ReachabilityEvent::MemberReachable { member, region } => {
                            Event::MulticastReachable { member, region }
                        }
                    });
                }
                GossipEvent::Membership(MembershipEvent::MemberForgotten { id })
                    if id != self.config.id =>
                {
                    // Reaped, or first heard of already dead: nothing of it is kept.
                    self.discovery.forget(id);
                    self.unvouched.remove(&id);
                    if self.departed_at.remove(&id).is_some()
                        || self.recv.keys().any(|(s, _)| *s == id)
                    {
                        self.sender_gone(now, id);
                    }
                }
                GossipEvent::Membership(_) => {}
            }
        }
        if changed {
            self.prune_send_streams();
            self.refresh_ring(now);
            self.refresh_lec();
        }
    }

    /// Puts `id` where its subscription record says (or out of the region table when gossip
    /// holds no record of it). Returns whether the table changed.
    ///
    /// A record that newly names a region its node departs moves the node out of it, so
    /// this node, as a sender, marks the cut in its streams (`handover.rs`).
    fn apply_record(&mut self, id: NodeId) -> bool {
        let departed_before = self.regions.departing_of(id);
        let record = self.gossip.subscriptions().record(id);
        let changed = match &record {
            Some(r) => {
                let signature = Signature::new(r.topics.iter().copied());
                self.regions.set_record(id, &signature, r.departing)
            }
            None => self.regions.remove_member(id),
        };
        if changed && id != self.config.id {
            let departs = self.regions.departing_of(id);
            if let (Some(from), Some(r)) = (departs.filter(|d| departed_before != Some(*d)), record)
            {
                let to = self.regions.region_of(id);
                self.mark_handover(id, r.version, from, to);
            }
        }
        changed
    }
}
