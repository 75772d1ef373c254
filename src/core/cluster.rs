//! The node as the cluster sees it through the gossip plane: it publishes its health (rates,
//! loss, repairs, backlog, lag) for the cluster map every 500 ms, reports which
//! region's multicast it does not hear (and, as a sender, serves members reported deaf by
//! flagged unicast copies until their path works again), runs the gossip timers, and builds
//! the [`ClusterMap`] that `qs top` shows. Membership itself is `members.rs`'s.

use std::net::SocketAddr;
use std::time::Duration;

use qs_gossip::{NodeHealth, Status};
use qs_regions::Signature;
use qs_transport::{Instant, NodeId, RegionId, Seq, TrafficClass};

use super::out::Intent;
use super::NodeCore;

/// How often the node refreshes its published health.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// What the gossip side remembers between health updates.
#[derive(Debug, Clone, Default)]
pub(super) struct HealthClock {
    at: Option<Instant>,
    delivered: u64,
    requested: u64,
    repairs: u64,
    repaired: super::RepairSplit,
    /// Per stream of the own region, the highest sequence number known at the last tick
    /// (a stream whose highest moved has an active sender).
    highest: std::collections::BTreeMap<NodeId, qs_transport::Seq>,
}

impl NodeCore {
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
        // Lateral repairs count as repairs, and the losses they rebuilt (never requested from
        // the ring) as losses.
        let repairs = stats.repairs_served + stats.retransmitted + stats.lec.repairs_sent;
        let lost = stats.ring.requested + stats.repaired.lateral;
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
            loss: rate(lost, clock.requested),
            repairs: rate(repairs, clock.repairs),
            backlog: self.queued_bytes as f32,
            lag: lag as f32,
            lateral: rate(stats.repaired.lateral, clock.repaired.lateral),
            peer: rate(stats.repaired.peer, clock.repaired.peer),
            sender: rate(stats.repaired.sender, clock.repaired.sender),
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
            requested: lost,
            repairs,
            repaired: stats.repaired,
            highest,
        };
        let g = &mut self.gossip;
        g.health_mut().set_region(now, region);
        g.health_mut().set_local(now, health);
        if let Some(r) = region {
            if active > 0 {
                g.reachability_mut().expect(now, r, active);
            } else {
                g.reachability_mut().unexpect(now, r);
            }
        }
        // Reports are accepted only from their author: a member deaf to its region's group
        // tells the senders it hears of itself, so that they send it unicast copies.
        if !self.gossip.reachability().silent_regions().is_empty() {
            let senders: Vec<SocketAddr> = self
                .recv
                .keys()
                .filter(|(_, r)| Some(*r) == self.own_region)
                .filter_map(|(s, _)| self.address_of(*s))
                .collect();
            for to in senders {
                self.gossip.push_reachability_to(to);
            }
        }
    }

    /// A fresh multicast data packet of the own region arrived (not a repair, not a unicast
    /// copy): its multicast path works.
    pub(super) fn heard_multicast(&mut self, now: Instant, region: RegionId) {
        self.gossip.reachability_mut().heard(now, region);
    }

    /// Members of `region` that gossip reports deaf to its multicast get data packet `seq`
    /// (just sent) by unicast too, flagged so that it does not count as the multicast path
    /// working. Nothing is allocated unless someone is deaf.
    pub(super) fn unicast_copies(&mut self, region: RegionId, seq: Seq, datagram: &[u8]) {
        let me = self.config.id;
        let deaf = self.gossip.reachability().unreachable_members(region);
        let Some(members) = self.regions.region(region).map(|r| &r.members) else {
            return;
        };
        let targets: Vec<SocketAddr> = deaf
            .filter(|m| *m != me && members.contains(m))
            .filter_map(|m| self.address_of(m))
            .collect();
        for to in targets {
            self.stats.unicast_copies_sent += 1;
            if self.config.reliable {
                self.out.push(Intent::UnicastCopy { to, region, seq });
            } else {
                // Best effort keeps no send window to copy from later.
                let mut copy = bytes::BytesMut::from(datagram);
                copy[qs_transport::wire::field::FLAGS] |= qs_transport::wire::FLAG_UNICAST_COPY;
                self.out.push(Intent::Built {
                    to,
                    class: TrafficClass::Data,
                    datagram: copy.freeze(),
                });
            }
        }
    }

    /// Runs the gossip node's timers.
    pub(super) fn gossip_timeout(&mut self, now: Instant) {
        if self.gossip.poll_timeout().is_some_and(|t| t <= now) {
            self.gossip.handle_timeout(now);
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
    /// Gossip's verdict (`None`: known from a multicast announcement, not yet by gossip).
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
    /// This node's dropped datagrams by reason (forgeries show as `auth` and `replay`).
    pub drops: super::DropStats,
}

impl NodeCore {
    /// The cluster as this node sees it now.
    pub fn cluster_map(&self) -> ClusterMap {
        use std::collections::BTreeMap;
        let g = &self.gossip;
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
        for (id, m) in g.membership().members() {
            let e = members.entry(id).or_insert_with(|| view(id, m.addr));
            e.status = Some(m.status);
            e.incarnation = m.incarnation;
        }
        for (id, unicast) in self.discovery.announcers() {
            if g.subscriptions().record(id).is_some() {
                members
                    .entry(id)
                    .or_insert_with(|| view(id, SocketAddr::V4(unicast)));
            }
        }
        for (id, r) in g.subscriptions().records() {
            if let Some(e) = members.get_mut(&id) {
                if id != self.config.id {
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
        let regions = self
            .regions
            .regions()
            .map(|r| RegionView {
                id: r.id,
                group: r.group,
                topics: r.signature.topics().len(),
                members: r.members.iter().copied().collect(),
                health: g.health().region_aggregate(Some(r.id)).map(|a| a.aggregate),
            })
            .collect();
        ClusterMap {
            me: self.config.id,
            members: members.into_values().collect(),
            regions,
            cluster: g.health().cluster(),
            drops: self.stats().drops,
        }
    }
}
