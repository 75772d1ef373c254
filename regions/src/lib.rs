//! Topic → region mapping.
//!
//! A node's **signature** is the sorted set of topics it subscribes. Nodes with equal signatures
//! form one **region**; a publish on topic T is one IP multicast to each region whose signature
//! contains T, so a node's thousands of topics cost table entries, not protocol instances
//! (QuickSilver, seed `002_*`; design section 3).
//!
//! Region ids and multicast group addresses are content-addressed (derived from the signature),
//! so every node computes the same mapping from the same membership without an allocator. Two
//! regions may hash to the same group address; receivers then drop the other region's packets
//! after a header check.
//!
//! This crate owns the mapping and the per-region member lists derived from the nodes'
//! signatures. It does not learn signatures (discovery and gossip do) and sends nothing.
//!
//! **Departing members.** A node that changes its subscriptions moves to another region, but
//! for a moment it still needs the old region's streams up to each sender's cut (the
//! subscription handover, see the core). Its record then names the old region as the one it
//! is *departing*, and the table keeps it listed among that region's members (so the old
//! region's ring still counts it, and its senders still keep their packets for it) until a
//! later record of the node names none. A departing node is in [`Region::members`] and
//! [`Region::departing`]; [`RegionTable::region_of`] is its new region.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use qs_transport::{NodeId, RegionId, TopicId};
use xxhash_rust::xxh3::Xxh3;

/// A sorted, duplicate-free set of topics: what a node subscribes.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature(Vec<TopicId>);

impl Signature {
    /// The signature of `topics` (sorted and deduplicated here).
    pub fn new(topics: impl IntoIterator<Item = TopicId>) -> Signature {
        let mut v: Vec<TopicId> = topics.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Signature(v)
    }

    /// The topics, sorted.
    pub fn topics(&self) -> &[TopicId] {
        &self.0
    }

    /// Whether the signature subscribes nothing (such a node is in no region).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `topic` is part of the signature.
    pub fn contains(&self, topic: TopicId) -> bool {
        self.0.binary_search(&topic).is_ok()
    }

    /// The region of nodes with this signature, `None` for the empty signature.
    pub fn region(&self) -> Option<RegionId> {
        (!self.is_empty()).then(|| RegionId(self.digest()))
    }

    /// The xxh3 digest of the sorted topic ids (also sent in announcements to check chunks).
    pub fn digest(&self) -> u64 {
        let mut h = Xxh3::new();
        for t in &self.0 {
            h.update(&t.0.to_be_bytes());
        }
        h.digest()
    }
}

/// The block of multicast addresses regions are mapped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRange {
    base: u32,
    size: u32,
}

impl GroupRange {
    /// `base/prefix_len`, which must be an IPv4 multicast block (224.0.0.0/4) no larger than a
    /// /4 and with `base` aligned to it.
    pub fn new(base: Ipv4Addr, prefix_len: u8) -> Result<GroupRange, RegionError> {
        if !(4..=32).contains(&prefix_len) || !base.is_multicast() {
            return Err(RegionError::BadGroupRange(base, prefix_len));
        }
        let size = 1u64 << (32 - u32::from(prefix_len));
        let base = u32::from(base);
        if u64::from(base) % size != 0 {
            return Err(RegionError::BadGroupRange(Ipv4Addr::from(base), prefix_len));
        }
        Ok(GroupRange {
            base,
            size: size.min(u64::from(u32::MAX)) as u32,
        })
    }

    /// The group address of `region`.
    pub fn group(&self, region: RegionId) -> Ipv4Addr {
        Ipv4Addr::from(self.base + (region.0 % u64::from(self.size)) as u32)
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr).wrapping_sub(self.base) < self.size
    }
}

impl Default for GroupRange {
    /// 239.255.16.0/20: 4,096 groups inside the organisation-local scope, clear of the default
    /// control group 239.255.0.1.
    fn default() -> GroupRange {
        GroupRange::new(Ipv4Addr::new(239, 255, 16, 0), 20).expect("valid default range")
    }
}

/// Errors of region configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// The group range is not an aligned IPv4 multicast block.
    #[error("{0}/{1} is not an aligned IPv4 multicast block (224.0.0.0/4)")]
    BadGroupRange(Ipv4Addr, u8),
}

/// One region: its signature, group and current members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The region's id.
    pub id: RegionId,
    /// The topics every member subscribes.
    pub signature: Signature,
    /// Its multicast group.
    pub group: Ipv4Addr,
    /// Current members, in id order (the ring order of the recovery protocol), departing
    /// ones included.
    pub members: BTreeSet<NodeId>,
    /// Members that moved to another region and are still finishing this one's streams
    /// (a subset of `members`).
    pub departing: BTreeSet<NodeId>,
}

/// The whole mapping, derived from each node's signature: regions, their members, and for each
/// topic the regions a publish must reach.
#[derive(Debug, Clone, Default)]
pub struct RegionTable {
    range: GroupRange,
    node_region: BTreeMap<NodeId, RegionId>,
    /// Nodes listed as departing members of a region other than their own.
    node_departing: BTreeMap<NodeId, RegionId>,
    regions: BTreeMap<RegionId, Region>,
    by_topic: HashMap<TopicId, Vec<RegionId>>,
}

impl RegionTable {
    /// An empty table mapping regions into `range`.
    pub fn new(range: GroupRange) -> RegionTable {
        RegionTable {
            range,
            ..RegionTable::default()
        }
    }

    /// The group range.
    pub fn range(&self) -> GroupRange {
        self.range
    }

    /// Sets `node`'s signature (an empty one removes it from every region), with no region
    /// it is departing. Returns whether the table changed.
    pub fn set_member(&mut self, node: NodeId, signature: &Signature) -> bool {
        self.set_record(node, signature, None)
    }

    /// Sets `node`'s signature and the region it is departing (see the crate docs): it stays
    /// listed in `departing` as a departing member if it was a member there (or another
    /// node's record created the region), and leaves any region it departed before. Returns
    /// whether the table changed.
    pub fn set_record(
        &mut self,
        node: NodeId,
        signature: &Signature,
        departing: Option<RegionId>,
    ) -> bool {
        let new = signature.region();
        let departing = departing.filter(|d| Some(*d) != new);
        let old = self.node_region.get(&node).copied();
        let old_departing = self.node_departing.get(&node).copied();
        if old == new && old_departing == departing {
            return false;
        }
        // The region it departed before, if it departs no longer (or another one now).
        if let Some(d) = old_departing.filter(|d| Some(*d) != departing) {
            self.node_departing.remove(&node);
            self.leave(node, d);
        }
        if old != new {
            if let Some(old) = old {
                self.node_region.remove(&node);
                if departing == Some(old) {
                    // It keeps its place there as a departing member.
                    if let Some(r) = self.regions.get_mut(&old) {
                        r.departing.insert(node);
                    }
                    self.node_departing.insert(node, old);
                } else {
                    self.leave(node, old);
                }
            }
            if let Some(id) = new {
                self.node_region.insert(node, id);
                self.join(id, signature).members.insert(node);
            }
        }
        if let Some(d) = departing {
            if !self.node_departing.contains_key(&node) {
                // Learned already departing: listed there if the region is known (its
                // signature came with another member's record).
                if let Some(r) = self.regions.get_mut(&d) {
                    r.members.insert(node);
                    r.departing.insert(node);
                    self.node_departing.insert(node, d);
                }
            }
        }
        self.node_region.get(&node).copied() != old
            || self.node_departing.get(&node).copied() != old_departing
    }

    /// Removes `node` from the table. Returns whether it was in a region.
    pub fn remove_member(&mut self, node: NodeId) -> bool {
        self.set_record(node, &Signature::default(), None)
    }

    /// The region of `signature`, created (and mapped for its topics) if new.
    fn join(&mut self, id: RegionId, signature: &Signature) -> &mut Region {
        let range = self.range;
        let by_topic = &mut self.by_topic;
        self.regions.entry(id).or_insert_with(|| {
            for t in signature.topics() {
                let list = by_topic.entry(*t).or_default();
                let at = list.binary_search(&id).unwrap_or_else(|at| at);
                list.insert(at, id);
            }
            Region {
                id,
                signature: signature.clone(),
                group: range.group(id),
                members: BTreeSet::new(),
                departing: BTreeSet::new(),
            }
        })
    }

    /// Takes `node` out of region `id` (which goes when it has no members left).
    fn leave(&mut self, node: NodeId, id: RegionId) {
        let Some(region) = self.regions.get_mut(&id) else {
            return;
        };
        region.members.remove(&node);
        region.departing.remove(&node);
        if !region.members.is_empty() {
            return;
        }
        let region = self.regions.remove(&id).expect("present");
        for t in region.signature.topics() {
            if let Some(list) = self.by_topic.get_mut(t) {
                list.retain(|r| *r != id);
                if list.is_empty() {
                    self.by_topic.remove(t);
                }
            }
        }
    }

    /// The region `node` is departing, if any.
    pub fn departing_of(&self, node: NodeId) -> Option<RegionId> {
        self.node_departing.get(&node).copied()
    }

    /// The regions a publish on `topic` goes to, in id order.
    pub fn regions_for_topic(&self, topic: TopicId) -> &[RegionId] {
        self.by_topic.get(&topic).map_or(&[], Vec::as_slice)
    }

    /// A region by id.
    pub fn region(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(&id)
    }

    /// The region `node` belongs to.
    pub fn region_of(&self, node: NodeId) -> Option<RegionId> {
        self.node_region.get(&node).copied()
    }

    /// All regions, in id order.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }

    /// Number of nodes subscribing `topic` (departing members are counted in their new
    /// region only).
    pub fn subscribers_of(&self, topic: TopicId) -> usize {
        self.regions_for_topic(topic)
            .iter()
            .filter_map(|r| self.regions.get(r))
            .map(|r| r.members.len() - r.departing.len())
            .sum()
    }

    /// Panics if the table is inconsistent: a node in its region and at most one departed
    /// one, departing members listed as members, no empty region, topics mapped to exactly
    /// the regions whose signatures hold them.
    pub fn check_invariants(&self) {
        for (node, id) in &self.node_region {
            let r = self.regions.get(id).expect("a node's region exists");
            assert!(r.members.contains(node) && !r.departing.contains(node));
        }
        for (node, id) in &self.node_departing {
            assert_ne!(
                self.node_region.get(node),
                Some(id),
                "departing its own region"
            );
            let r = self.regions.get(id).expect("a departed region exists");
            assert!(r.members.contains(node) && r.departing.contains(node));
        }
        for r in self.regions.values() {
            assert!(!r.members.is_empty(), "empty region {:?}", r.id);
            assert!(r.departing.is_subset(&r.members));
            for m in &r.members {
                let here = self.node_region.get(m) == Some(&r.id);
                let departing = self.node_departing.get(m) == Some(&r.id);
                assert!(
                    here != departing,
                    "{m:?} listed in {:?} without a record",
                    r.id
                );
            }
            for t in r.signature.topics() {
                assert!(self.regions_for_topic(*t).contains(&r.id));
            }
        }
        for (t, list) in &self.by_topic {
            for id in list {
                assert!(self.regions[id].signature.contains(*t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sig(ts: &[u64]) -> Signature {
        Signature::new(ts.iter().map(|t| TopicId(*t)))
    }

    #[test]
    fn equal_topic_sets_make_one_region_whatever_the_order() {
        assert_eq!(sig(&[3, 1, 2, 2]).region(), sig(&[1, 2, 3]).region());
        assert_ne!(sig(&[1, 2]).region(), sig(&[1, 2, 3]).region());
        assert_eq!(sig(&[]).region(), None);
    }

    #[test]
    fn a_publish_reaches_every_region_containing_the_topic_once() {
        let mut t = RegionTable::new(GroupRange::default());
        t.set_member(NodeId(1), &sig(&[1, 2]));
        t.set_member(NodeId(2), &sig(&[1, 2]));
        t.set_member(NodeId(3), &sig(&[2, 3]));
        t.set_member(NodeId(4), &sig(&[3]));
        let a = sig(&[1, 2]).region().unwrap();
        let b = sig(&[2, 3]).region().unwrap();
        let mut both = [a, b];
        both.sort();
        assert_eq!(t.regions_for_topic(TopicId(2)), &both[..]);
        assert_eq!(t.regions_for_topic(TopicId(1)), &[a]);
        assert_eq!(t.regions_for_topic(TopicId(9)), &[] as &[RegionId]);
        assert_eq!(t.subscribers_of(TopicId(2)), 3);
        assert_eq!(t.region(a).unwrap().members.len(), 2);
    }

    #[test]
    fn the_last_member_leaving_removes_the_region_and_its_topics() {
        let mut t = RegionTable::new(GroupRange::default());
        t.set_member(NodeId(1), &sig(&[1, 2]));
        assert!(t.set_member(NodeId(1), &sig(&[2])));
        assert_eq!(t.regions().count(), 1);
        assert!(t.regions_for_topic(TopicId(1)).is_empty());
        assert!(t.remove_member(NodeId(1)));
        assert_eq!(t.regions().count(), 0);
        assert!(!t.remove_member(NodeId(1)));
    }

    #[test]
    fn group_ranges_must_be_aligned_multicast_blocks() {
        assert!(GroupRange::new(Ipv4Addr::new(10, 0, 0, 0), 16).is_err());
        assert!(GroupRange::new(Ipv4Addr::new(239, 255, 1, 0), 16).is_err());
        let r = GroupRange::new(Ipv4Addr::new(239, 255, 0, 0), 16).unwrap();
        assert!(r.contains(r.group(RegionId(u64::MAX))));
        assert!(!r.contains(Ipv4Addr::new(239, 254, 255, 255)));
    }

    #[test]
    fn a_departing_member_stays_in_its_old_region_until_its_record_names_none() {
        let mut t = RegionTable::new(GroupRange::default());
        let (a, b) = (sig(&[1, 2]), sig(&[1]));
        let (ra, rb) = (a.region().unwrap(), b.region().unwrap());
        t.set_member(NodeId(1), &a);
        t.set_member(NodeId(2), &a);
        // Node 1 drops topic 2: it is in region b, and departing a.
        assert!(t.set_record(NodeId(1), &b, Some(ra)));
        t.check_invariants();
        assert_eq!(t.region_of(NodeId(1)), Some(rb));
        assert_eq!(t.departing_of(NodeId(1)), Some(ra));
        let region_a = t.region(ra).unwrap();
        assert!(region_a.members.contains(&NodeId(1)) && region_a.departing.contains(&NodeId(1)));
        assert_eq!(
            t.subscribers_of(TopicId(2)),
            1,
            "a departing member subscribes nothing there"
        );
        assert_eq!(t.subscribers_of(TopicId(1)), 2);
        assert!(
            !t.set_record(NodeId(1), &b, Some(ra)),
            "the same record changes nothing"
        );
        // Done: it leaves a.
        assert!(t.set_record(NodeId(1), &b, None));
        t.check_invariants();
        assert_eq!(t.region(ra).unwrap().members.len(), 1);
        assert_eq!(t.departing_of(NodeId(1)), None);
        // A lone member departing keeps its old region alive until it is done.
        t.set_member(NodeId(3), &sig(&[7]));
        let r7 = sig(&[7]).region().unwrap();
        t.set_record(NodeId(3), &sig(&[8]), Some(r7));
        assert_eq!(t.regions_for_topic(TopicId(7)), &[r7]);
        t.set_record(NodeId(3), &sig(&[8]), None);
        assert!(t.region(r7).is_none() && t.regions_for_topic(TopicId(7)).is_empty());
        // A node first learned as departing is listed in a region that exists, and in none
        // it cannot know.
        t.set_record(NodeId(4), &b, Some(ra));
        assert!(t.region(ra).unwrap().departing.contains(&NodeId(4)));
        t.set_record(NodeId(5), &b, Some(RegionId(12345)));
        assert_eq!(t.departing_of(NodeId(5)), None);
        t.check_invariants();
    }

    proptest! {
        /// Any sequence of records, departing ones included, leaves a consistent table, and
        /// once no node departs it equals one rebuilt from scratch.
        #[test]
        fn records_with_departures_keep_the_table_consistent(ops in prop::collection::vec((0u64..6, prop::collection::vec(0u64..4, 0..3), prop::option::of(prop::collection::vec(0u64..4, 1..3))), 0..40)) {
            let mut t = RegionTable::new(GroupRange::default());
            let mut truth: BTreeMap<u64, Signature> = BTreeMap::new();
            for (node, topics, departing) in ops {
                let s = sig(&topics);
                let d = departing.and_then(|d| sig(&d).region());
                t.set_record(NodeId(node), &s, d);
                t.check_invariants();
                truth.insert(node, s);
            }
            for (node, s) in &truth {
                t.set_record(NodeId(*node), s, None);
            }
            t.check_invariants();
            let mut fresh = RegionTable::new(GroupRange::default());
            for (node, s) in &truth {
                fresh.set_member(NodeId(*node), s);
            }
            prop_assert_eq!(t.regions().collect::<Vec<_>>(), fresh.regions().collect::<Vec<_>>());
        }

        /// The incremental table equals one rebuilt from scratch after any sequence of changes.
        #[test]
        fn incremental_updates_match_a_rebuild(ops in prop::collection::vec((0u64..6, prop::collection::vec(0u64..5, 0..4)), 0..40)) {
            let mut t = RegionTable::new(GroupRange::default());
            let mut truth: BTreeMap<u64, Signature> = BTreeMap::new();
            for (node, topics) in ops {
                let s = sig(&topics);
                t.set_member(NodeId(node), &s);
                truth.insert(node, s);
            }
            let mut fresh = RegionTable::new(GroupRange::default());
            for (node, s) in &truth {
                fresh.set_member(NodeId(*node), s);
            }
            prop_assert_eq!(t.regions().collect::<Vec<_>>(), fresh.regions().collect::<Vec<_>>());
            for topic in 0..5 {
                prop_assert_eq!(t.regions_for_topic(TopicId(topic)), fresh.regions_for_topic(TopicId(topic)));
                let expect = truth.values().filter(|s| s.contains(TopicId(topic))).count();
                prop_assert_eq!(t.subscribers_of(TopicId(topic)), expect);
            }
        }
    }
}
