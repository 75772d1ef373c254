//! Subscriptions, scuttlebutt-style: every node owns one versioned record (its signature —
//! the sorted topic ids it subscribes — and its unicast address) and only its owner bumps the
//! version. Replicas converge by bulk push-pull anti-entropy ([`crate::sync`]): digests of
//! bucket hashes, then the records of the buckets that differ, within the datagram budget.
//! A record is replaced only by a higher version of the same owner. Records of members that
//! are down or left are dropped when the owner of this object is told ([`Subscriptions::forget`])
//! and are not accepted back until the member returns ([`Subscriptions::readmit`]).
//!
//! Not done: deriving regions (the caller feeds [`Subscriptions::records`] to `qs-regions`).

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId, Prng, TopicId};

use crate::object::{GossipObject, Outbox, Peer};
use crate::sync::{fingerprint, SyncRecord, SyncStats, Syncer, Table};
use crate::wire::{addr_len, put_addr, Priority, Reader};

/// Section tag of the subscriptions object.
pub const SUBSCRIPTIONS_TAG: u8 = 1;

/// One node's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Its unicast address.
    pub addr: SocketAddr,
    /// Bumped by the owner on every change.
    pub version: u32,
    /// Sorted, deduplicated topic ids (the signature).
    pub topics: Vec<TopicId>,
}

impl SyncRecord for SubscriptionRecord {
    fn fingerprint(&self, id: NodeId) -> u32 {
        fingerprint(id, &[u64::from(self.version)])
    }
    fn encoded_len(&self) -> usize {
        8 + 4 + addr_len(&self.addr) + 2 + 8 * self.topics.len()
    }
    fn encode(&self, id: NodeId, out: &mut Vec<u8>) {
        out.extend_from_slice(&id.0.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        put_addr(out, &self.addr);
        out.extend_from_slice(&(self.topics.len() as u16).to_be_bytes());
        for t in &self.topics {
            out.extend_from_slice(&t.0.to_be_bytes());
        }
    }
}

fn decode(
    r: &mut Reader<'_>,
    topics_max: usize,
) -> Result<(NodeId, SubscriptionRecord), WireError> {
    let id = NodeId(r.u64()?);
    let version = r.u32()?;
    let addr = r.addr()?;
    let n = usize::from(r.u16()?);
    if n > topics_max {
        return Err(WireError::Malformed);
    }
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(TopicId(r.u64()?));
    }
    if topics.windows(2).any(|w| w[0] >= w[1]) {
        return Err(WireError::Malformed);
    }
    Ok((
        id,
        SubscriptionRecord {
            addr,
            version,
            topics,
        },
    ))
}

/// Subscriptions settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionsConfig {
    /// Gossip every this many rounds.
    pub rate: u32,
    /// Most topics per node (a record with more is malformed; our own are truncated).
    pub topics_max: usize,
    /// Most records kept.
    pub records_max: usize,
}

impl Default for SubscriptionsConfig {
    fn default() -> SubscriptionsConfig {
        SubscriptionsConfig {
            rate: 1,
            topics_max: 128,
            records_max: 16_384,
        }
    }
}

/// Counters of the subscriptions object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionsStats {
    /// Records accepted (new or newer).
    pub records_merged: u64,
    /// Records ignored because the table was full.
    pub records_overflow: u64,
    /// Records ignored because their owner is known to be gone.
    pub records_of_gone: u64,
    /// Anti-entropy counters.
    pub sync: SyncStats,
}

const CHANGES_MAX: usize = 4096;

/// The scuttlebutt subscriptions object. See the module documentation.
#[derive(Debug)]
pub struct Subscriptions {
    me: NodeId,
    config: SubscriptionsConfig,
    table: Table<SubscriptionRecord>,
    gone: BTreeSet<NodeId>,
    syncer: Syncer,
    changes: VecDeque<NodeId>,
    changes_overflow: u64,
    stats: SubscriptionsStats,
}

impl Subscriptions {
    /// The subscriptions object of node `me` at `addr`, initially subscribing nothing.
    pub fn new(
        me: NodeId,
        addr: SocketAddr,
        config: SubscriptionsConfig,
        rng: Prng,
    ) -> Subscriptions {
        let mut table = Table::default();
        table.insert(
            me,
            SubscriptionRecord {
                addr,
                version: 0,
                topics: Vec::new(),
            },
        );
        Subscriptions {
            me,
            config,
            table,
            gone: BTreeSet::new(),
            syncer: Syncer::new(rng, 256),
            changes: VecDeque::new(),
            changes_overflow: 0,
            stats: SubscriptionsStats::default(),
        }
    }

    /// Replaces our own topics (sorted and deduplicated here) and bumps our version.
    pub fn set_topics(&mut self, topics: impl IntoIterator<Item = TopicId>) {
        let mut v: Vec<TopicId> = topics.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        v.truncate(self.config.topics_max);
        let me = self.me;
        self.table.update(me, |r| {
            r.version = r.version.wrapping_add(1);
            r.topics = v;
        });
        self.changed(me);
    }

    /// The record of `id`.
    pub fn record(&self, id: NodeId) -> Option<&SubscriptionRecord> {
        self.table.get(id)
    }

    /// Every known record (ours included), in a fixed order.
    pub fn records(&self) -> impl Iterator<Item = (NodeId, &SubscriptionRecord)> {
        self.table.iter()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Only our own record (never true once built: ours is always there).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// A fingerprint of the whole table (equal tables, equal fingerprints).
    pub fn table_hash(&self) -> u32 {
        self.table.digest(0)[0]
    }

    /// The next node whose record changed here.
    pub fn poll_change(&mut self) -> Option<NodeId> {
        self.changes.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> SubscriptionsStats {
        SubscriptionsStats {
            sync: self.syncer.stats(),
            ..self.stats
        }
    }

    /// Drops the record of a member that is down or left and refuses it until readmitted.
    pub fn forget(&mut self, id: NodeId) {
        if id == self.me {
            return;
        }
        if self.table.remove(id).is_some() {
            self.changed(id);
        }
        if self.gone.len() < self.config.records_max {
            self.gone.insert(id);
        }
    }

    /// Accepts records of `id` again (it came back).
    pub fn readmit(&mut self, id: NodeId) {
        self.gone.remove(&id);
    }

    fn changed(&mut self, id: NodeId) {
        if self.changes.len() >= CHANGES_MAX {
            self.changes_overflow += 1;
        } else {
            self.changes.push_back(id);
        }
    }

    /// A record learned outside gossip (a checked multicast announcement), merged like one
    /// gossip brought: kept when newer than the one held, refused while `id` is known gone,
    /// then spread by anti-entropy like any other.
    pub fn learn(&mut self, id: NodeId, rec: SubscriptionRecord) {
        self.merge(id, rec);
    }

    fn merge(&mut self, id: NodeId, rec: SubscriptionRecord) {
        if id == self.me {
            return;
        }
        if self.gone.contains(&id) {
            self.stats.records_of_gone += 1;
            return;
        }
        match self.table.get(id) {
            Some(old) if old.version >= rec.version => {}
            Some(_) => {
                self.table.insert(id, rec);
                self.stats.records_merged += 1;
                self.changed(id);
            }
            None if self.table.len() >= self.config.records_max => {
                self.stats.records_overflow += 1;
            }
            None => {
                self.table.insert(id, rec);
                self.stats.records_merged += 1;
                self.changed(id);
            }
        }
    }
}

impl GossipObject for Subscriptions {
    fn tag(&self) -> u8 {
        SUBSCRIPTIONS_TAG
    }
    fn name(&self) -> &'static str {
        "subscriptions"
    }
    fn rate(&self) -> u32 {
        self.config.rate.max(1)
    }
    fn gossip_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        self.syncer.start(peer.addr);
        out.send_to(peer.addr);
    }
    fn write(
        &mut self,
        _now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        if priority == Priority::Bulk {
            self.syncer.write(to.addr, &self.table, budget, out);
        }
    }
    fn has_more(&self, to: &Peer) -> bool {
        self.syncer.owes(to.addr)
    }
    fn handle(
        &mut self,
        _now: Instant,
        from: &Peer,
        priority: Priority,
        payload: &[u8],
        out: &mut Outbox<'_>,
    ) -> Result<(), WireError> {
        if priority != Priority::Bulk {
            return Err(WireError::Malformed);
        }
        let bulk = Syncer::parse(payload)?;
        let mut r = bulk.records.clone();
        for _ in 0..bulk.count {
            let (id, rec) = decode(&mut r, self.config.topics_max)?;
            self.merge(id, rec);
        }
        if self
            .syncer
            .received(from.addr, bulk.digest, bulk.reply_wanted, &self.table)
        {
            out.send_to(from.addr);
        }
        Ok(())
    }
    fn check_invariants(&self) {
        self.table.check_invariants();
        self.syncer.check_invariants();
        assert!(self.table.len() <= self.config.records_max.max(1));
        assert!(
            self.table.get(self.me).is_some(),
            "our own record is missing"
        );
        assert!(self.changes.len() <= CHANGES_MAX);
        for (_, r) in self.table.iter() {
            assert!(r.topics.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
