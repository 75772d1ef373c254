//! The node's side of the gossip plane (`qs-gossip`), run side by side with multicast on the
//! unicast socket: SWIM/Lifeguard failure detection decides who is down (the region table and
//! the recovery rings follow it), subscription records back up the multicast announcements,
//! the node publishes its health (rates, loss, repairs, backlog, lag) for the cluster map, and
//! reports which region multicast it does not hear, so that senders serve it by unicast copies
//! until the path works again.

use std::net::SocketAddr;
use std::time::Duration;

use qs_gossip::{GossipConfig, GossipEvent, GossipNode, MembershipEvent, NodeHealth, Status};
use qs_regions::Signature;
use qs_transport::{Instant, NodeId, RegionId};

use super::{Event, NodeCore};

/// How often the node refreshes its published health.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// What the gossip side remembers between health updates.
#[derive(Debug, Clone, Default)]
pub(super) struct HealthClock {
    at: Option<Instant>,
    delivered: u64,
    requested: u64,
    repairs: u64,
    /// Per stream of the own region, the highest sequence number known at the last tick
    /// (a stream whose highest moved has an active sender).
    highest: std::collections::BTreeMap<NodeId, qs_transport::Seq>,
}

impl NodeCore {
    /// The gossip node for this core's settings.
    pub(super) fn new_gossip(&self, now: Instant) -> GossipNode {
        let mut c = GossipConfig::new(
            self.config.cluster,
            self.config.id,
            SocketAddr::V4(self.config.unicast),
        );
        c.seed = self.config.seed ^ 0x6055_1b00;
        c.round = self.config.gossip_round;
        c.mtu = self.config.max_datagram;
        c.membership.seeds = self.config.gossip_seeds.clone();
        GossipNode::new(c, now)
    }

    /// Whether gossip considers `id` failed or gone (it then stays out of the region table
    /// even while stale announcements of it linger).
    pub(super) fn gossip_says_down(&self, id: NodeId) -> bool {
        self.gossip.as_ref().is_some_and(|g| {
            g.membership()
                .member(id)
                .is_some_and(|m| matches!(m.status, Status::Down | Status::Left))
        })
    }

    /// Whether gossip knows `id` as alive or merely suspect.
    pub(super) fn gossip_says_alive(&self, id: NodeId) -> bool {
        self.gossip.as_ref().is_some_and(|g| {
            g.membership()
                .member(id)
                .is_some_and(|m| matches!(m.status, Status::Alive | Status::Suspect))
        })
    }

    /// A unicast address for `id`: discovery's, else gossip's.
    pub(super) fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        if let Some(p) = self.discovery.peer(id) {
            return Some(SocketAddr::V4(p.unicast));
        }
        let g = self.gossip.as_ref()?;
        g.membership().member(id).map(|m| m.addr)
    }

    /// Applies the gossip plane's events to the region table, the ring and the application.
    pub(super) fn drain_gossip(&mut self, now: Instant) {
        let mut changed = false;
        while let Some(e) = self.gossip.as_mut().and_then(GossipNode::poll_event) {
            match e {
                GossipEvent::Membership(
                    MembershipEvent::MemberDown { id } | MembershipEvent::MemberLeft { id },
                ) if id != self.config.id => {
                    if self.regions.remove_member(id) {
                        changed = true;
                    }
                    self.sender_gone(now, id);
                    self.events.push_back(Event::PeerDown(id));
                }
                GossipEvent::Membership(
                    MembershipEvent::MemberUp { id, .. } | MembershipEvent::MemberAlive { id, .. },
                ) if id != self.config.id => {
                    changed |= self.readmit(id);
                }
                GossipEvent::SubscriptionsChanged(id) if id != self.config.id => {
                    changed |= self.readmit(id);
                }
                GossipEvent::Reachability(r) => {
                    self.events.push_back(match r {
                        qs_gossip::ReachabilityEvent::MemberUnreachable { member, region } => {
                            Event::MulticastUnreachable { member, region }
                        }
                        qs_gossip::ReachabilityEvent::MemberReachable { member, region } => {
                            Event::MulticastReachable { member, region }
                        }
                    });
                }
                GossipEvent::Membership(_) | GossipEvent::SubscriptionsChanged(_) => {}
            }
        }
        if changed {
            self.prune_send_streams();
            self.refresh_ring(now);
        }
    }

    /// Puts a live member back in the region table, from discovery's record or else from
    /// gossip's subscription record. Returns whether the table changed.
    fn readmit(&mut self, id: NodeId) -> bool {
        if self.gossip_says_down(id) {
            return false;
        }
        self.departed.retain(|d| *d != id);
        let signature = match self.discovery.peer(id) {
            Some(p) => p.signature.clone(),
            None => match self
                .gossip
                .as_ref()
                .and_then(|g| g.subscriptions().record(id))
            {
                Some(r) => Signature::new(r.topics.iter().copied()),
                None => return false,
            },
        };
        self.regions.set_member(id, &signature)
    }

    /// Periodic gossip work: publish health, watch the own region's multicast.
    pub(super) fn gossip_tick(&mut self, now: Instant) {
        let due = self.health_clock.at.is_none_or(|t| now >= t + HEALTH_EVERY);
        if !due {
            return;
        }
        let stats = self.stats();
        let clock = std::mem::take(&mut self.health_clock);
        let dt = clock
            .at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f32());
        let rate = |now: u64, then: u64| {
            if dt > 0.0 {
                now.saturating_sub(then) as f32 / dt
            } else {
                0.0
            }
        };
        let repairs = stats.repairs_served + stats.retransmitted;
        let lag = self
            .recv
            .values()
            .filter_map(|s| Some(s.window.prefix()?.distance_to(s.window.highest()?)))
            .max()
            .unwrap_or(0)
            .max(0);
        let health = NodeHealth {
            load: self.events.len() as f32 / self.config.max_pending_events.max(1) as f32,
            recv_rate: rate(stats.delivered, clock.delivered),
            loss: rate(stats.ring.requested, clock.requested),
            repairs: rate(repairs, clock.repairs),
            backlog: self.queued_bytes as f32,
            lag: lag as f32,
        };
        let region = self.own_region;
        // Senders active in the own region (their streams moved on since the last tick, as
        // heard by any path: data, repairs, tokens): its multicast must be heard; silence is
        // reported by the reachability object.
        let highest: std::collections::BTreeMap<NodeId, qs_transport::Seq> = self
            .recv
            .iter()
            .filter(|((_, r), _)| Some(*r) == region)
            .filter_map(|((s, _), st)| Some((*s, st.window.highest()?)))
            .collect();
        let active = highest
            .iter()
            .filter(|(s, h)| clock.highest.get(s).is_none_or(|old| old != *h))
            .count();
        self.health_clock = HealthClock {
            at: Some(now),
            delivered: stats.delivered,
            requested: stats.ring.requested,
            repairs,
            highest,
        };
        if let Some(g) = self.gossip.as_mut() {
            g.health_mut().set_region(now, region);
            g.health_mut().set_local(now, health);
            if let Some(r) = region {
                if active > 0 {
                    g.reachability_mut().expect(now, r, active);
                } else {
                    g.reachability_mut().unexpect(now, r);
                }
            }
        }
    }

    /// A fresh multicast data packet of the own region arrived (not a repair, not a unicast
    /// copy): its multicast path works.
    pub(super) fn heard_multicast(&mut self, now: Instant, region: RegionId) {
        if let Some(g) = self.gossip.as_mut() {
            g.reachability_mut().heard(now, region);
        }
    }

    /// Members of `region` that reported not hearing its multicast (served by unicast).
    pub(super) fn unreachable_in(&self, region: RegionId) -> Vec<NodeId> {
        self.gossip.as_ref().map_or_else(Vec::new, |g| {
            g.reachability()
                .unreachable_members(region)
                .filter(|m| *m != self.config.id)
                .collect()
        })
    }

    /// Runs the gossip node's timers.
    pub(super) fn gossip_timeout(&mut self, now: Instant) {
        if let Some(g) = self.gossip.as_mut() {
            if g.poll_timeout().is_some_and(|t| t <= now) {
                g.handle_timeout(now);
            }
        }
        self.gossip_tick(now);
        self.drain_gossip(now);
    }
}

/// One member as this node sees it (see [`ClusterMap`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemberView {
    /// The node.
    pub id: NodeId,
    /// Its unicast address.
    pub addr: SocketAddr,
    /// Gossip's verdict (`None`: known from multicast announcements only).
    pub status: Option<Status>,
    /// Its incarnation in gossip.
    pub incarnation: u32,
    /// Its region (`None`: subscribes nothing, or unknown).
    pub region: Option<RegionId>,
    /// Topics it subscribes.
    pub topics: usize,
    /// Its last published health, when this node holds its record.
    pub health: Option<NodeHealth>,
    /// Regions whose multicast it reports not hearing.
    pub unreachable: Vec<RegionId>,
}

/// One region as this node sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegionView {
    /// The region.
    pub id: RegionId,
    /// Its multicast group.
    pub group: std::net::Ipv4Addr,
    /// Topics in its signature.
    pub topics: usize,
    /// Members in id order (the first leads its recovery ring).
    pub members: Vec<NodeId>,
    /// Health rolled up over its members, when known.
    pub health: Option<qs_gossip::Aggregate>,
}

/// A snapshot of the cluster from this node: members and their state, regions and their
/// members, health per node, per region and for the cluster (`qs top`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterMap {
    /// This node.
    pub me: NodeId,
    /// Every member this node knows of (itself included), in id order.
    pub members: Vec<MemberView>,
    /// Every region, in id order.
    pub regions: Vec<RegionView>,
    /// Health rolled up over the cluster, when known.
    pub cluster: Option<qs_gossip::Aggregate>,
}

impl NodeCore {
    /// The cluster as this node sees it now.
    pub fn cluster_map(&self) -> ClusterMap {
        use std::collections::BTreeMap;
        let g = self.gossip.as_ref();
        let mut members: BTreeMap<NodeId, MemberView> = BTreeMap::new();
        let view = |id: NodeId, addr: SocketAddr| MemberView {
            id,
            addr,
            status: None,
            incarnation: 0,
            region: None,
            topics: 0,
            health: None,
            unreachable: Vec::new(),
        };
        members.insert(
            self.config.id,
            MemberView {
                status: Some(Status::Alive),
                topics: self.subscriptions.len(),
                region: self.own_region,
                ..view(self.config.id, SocketAddr::V4(self.config.unicast))
            },
        );
        for p in self.discovery.peers() {
            members.insert(
                p.id,
                MemberView {
                    topics: p.signature.topics().len(),
                    region: p.signature.region(),
                    ..view(p.id, SocketAddr::V4(p.unicast))
                },
            );
        }
        if let Some(g) = g {
            for (id, m) in g.membership().members() {
                let e = members.entry(id).or_insert_with(|| view(id, m.addr));
                e.status = Some(m.status);
                e.incarnation = m.incarnation;
                if e.topics == 0 {
                    if let Some(r) = g.subscriptions().record(id) {
                        e.topics = r.topics.len();
                        e.region = Signature::new(r.topics.iter().copied()).region();
                    }
                }
            }
            for (id, rec) in g.health().records() {
                if let Some(e) = members.get_mut(&id) {
                    e.health = Some(rec.health);
                }
            }
            for e in members.values_mut() {
                e.unreachable = g
                    .reachability()
                    .report(e.id)
                    .map(|r| r.silent.clone())
                    .unwrap_or_default();
            }
        }
        let regions = self
            .regions
            .regions()
            .map(|r| RegionView {
                id: r.id,
                group: r.group,
                topics: r.signature.topics().len(),
                members: r.members.iter().copied().collect(),
                health: g
                    .and_then(|g| g.health().region_aggregate(Some(r.id)))
                    .map(|a| a.aggregate),
            })
            .collect();
        ClusterMap {
            me: self.config.id,
            members: members.into_values().collect(),
            regions,
            cluster: g.and_then(|g| g.health().cluster()),
        }
    }
}
