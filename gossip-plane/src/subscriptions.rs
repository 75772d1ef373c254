//! Subscriptions, scuttlebutt-style: every node owns one versioned record (its signature,
//! the sorted topic ids it subscribes) and only its owner bumps the version. The node's
//! unicast address is the membership record's, not repeated here.
//!
//! * **News** spreads by rumor mongering: a version we set or first hear as news is pushed,
//!   in the bulk section of datagrams to the round's partner and of our answers to whoever
//!   pushes to us (push-pull), `retransmit_mult × ⌈log10(n+1)⌉` times, one fewer for each
//!   copy pushed back to us.
//! * **Anti-entropy** ([`crate::sync`], range reconciliation from a root sum) runs with the
//!   round's partner every `sync_every` rounds and repairs whatever rumors missed; what it
//!   brings is not re-spread.
//! * A record is replaced only by a newer version of the same owner (serial-number order on
//!   the 32-bit version); a third-party copy more than `version_jump_max` ahead of the held
//!   one is refused, and an owner that sees a copy of its own record at or above its version
//!   bumps past it (a forged version cannot pin a node's record).
//! * Records of members that are down or left are dropped when the owner of this object is
//!   told ([`Subscriptions::forget`]); the node keeps refusing them while membership holds
//!   the tombstone, and sweeps out records whose owner membership does not know at all.
//! * Signatures are interned: a record costs 20 bytes of table (key, version, signature
//!   index, key epoch) whatever its topic count, and each distinct signature is stored once.
//! * A record also names the region its owner is *departing* (0: none): a node that changed
//!   its subscriptions finishes the old region's streams before it leaves (the core's
//!   subscription handover); regions list it there meanwhile. Fixed per version.
//! * A record also carries the newest cluster-key epoch its owner holds (0: keyless or not
//!   known yet), so senders can switch to a new key once every member holds it. Records
//!   learned from announcements (which do not carry it) keep the epoch held before; within
//!   one version the epoch only grows, so a copy of the same version with a newer epoch
//!   replaces one without it.
//!
//! Not done: deriving regions (the caller feeds [`Subscriptions::records`] to `qs-regions`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId, RegionId, TopicId};

use crate::object::{GossipObject, Outbox, Peer};
use crate::sync::{self, fingerprint, listing_answer, Codec, SyncRecord, SyncStats, Syncer, Table};
use crate::wire::{Priority, Reader};

/// Section tag of the subscriptions object.
pub const SUBSCRIPTIONS_TAG: u8 = 1;

/// One node's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Bumped by the owner on every change.
    pub version: u32,
    /// Sorted, deduplicated topic ids (the signature).
    pub topics: Arc<[TopicId]>,
    /// The newest cluster-key epoch the owner holds (0: keyless, or not known here yet).
    pub key_epoch: u32,
    /// The region the owner is departing at this version (see the module docs).
    pub departing: Option<RegionId>,
}

/// Whether version `a` is newer than `b` (serial-number arithmetic).
fn newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

/// The packed table record: version and interned signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    version: u32,
    sig: u32,
    key_epoch: u32,
    /// The departing region's id (0: none).
    departing: u64,
}

impl SyncRecord for Rec {
    fn fingerprint(&self, id: NodeId) -> u32 {
        fingerprint(
            id,
            &[
                u64::from(self.version) << 32 | u64::from(self.key_epoch),
                self.departing,
            ],
        )
    }
}

/// A decoded record: id, version, key epoch, departing region, topics.
type Decoded = (NodeId, u32, u32, u64, Vec<TopicId>);

/// Distinct signatures, reference-counted by the records that use them.
#[derive(Debug, Default)]
struct Signatures {
    list: Vec<(Arc<[TopicId]>, u32)>,
    index: BTreeMap<Arc<[TopicId]>, u32>,
    free: Vec<u32>,
}

impl Signatures {
    fn intern(&mut self, topics: &[TopicId]) -> u32 {
        if let Some(&i) = self.index.get(topics) {
            self.list[i as usize].1 += 1;
            return i;
        }
        let arc: Arc<[TopicId]> = Arc::from(topics);
        let i = match self.free.pop() {
            Some(i) => {
                self.list[i as usize] = (arc.clone(), 1);
                i
            }
            None => {
                self.list.push((arc.clone(), 1));
                (self.list.len() - 1) as u32
            }
        };
        self.index.insert(arc, i);
        i
    }
    fn release(&mut self, i: u32) {
        let Some(e) = self.list.get_mut(i as usize) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            let arc = std::mem::replace(&mut e.0, Arc::from(&[][..]));
            self.index.remove(&arc);
            self.free.push(i);
        }
    }
    fn get(&self, i: u32) -> &Arc<[TopicId]> {
        &self.list[i as usize].0
    }
    fn len(&self) -> usize {
        self.index.len()
    }
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
    /// Anti-entropy with the round's partner every this many rounds.
    pub sync_every: u32,
    /// λ: each news record is pushed λ × ⌈log10(n+1)⌉ times.
    pub retransmit_mult: u32,
    /// Most news records queued (the most-sent is dropped first, counted).
    pub news_max: usize,
    /// A third-party copy this far ahead of the held version is refused.
    pub version_jump_max: u32,
    /// Extra exchanges per round while we lack whole ranges (joining).
    pub catch_up_fanout: usize,
}

impl Default for SubscriptionsConfig {
    fn default() -> SubscriptionsConfig {
        SubscriptionsConfig {
            rate: 1,
            topics_max: 128,
            records_max: 65_536,
            sync_every: 2,
            retransmit_mult: 4,
            news_max: 1024,
            version_jump_max: 1024,
            catch_up_fanout: 3,
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
    /// Records dropped because their owner is gone (or unknown to membership).
    pub records_forgotten: u64,
    /// Third-party copies refused for a version implausibly far ahead.
    pub implausible_versions: u64,
    /// Times we bumped our version past a copy of our own record.
    pub own_record_refuted: u64,
    /// News records pushed.
    pub news_sent: u64,
    /// News dropped from the full queue.
    pub news_overflow: u64,
    /// Anti-entropy counters.
    pub sync: SyncStats,
}

const CHANGES_MAX: usize = 4096;
const SYNC_PEERS_MAX: usize = 256;
const SYNC_WORK_MAX: usize = 128;
const NEWS_PER_WRITE: usize = 16;

struct SubCodec<'a> {
    sigs: &'a Signatures,
}

impl Codec<Rec> for SubCodec<'_> {
    fn encoded_len(&self, _id: NodeId, r: &Rec) -> usize {
        8 + 4 + 4 + 8 + 2 + 8 * self.sigs.get(r.sig).len()
    }
    fn encode(&self, id: NodeId, r: &Rec, out: &mut Vec<u8>) {
        let topics = self.sigs.get(r.sig);
        out.extend_from_slice(&id.0.to_be_bytes());
        out.extend_from_slice(&r.version.to_be_bytes());
        out.extend_from_slice(&r.key_epoch.to_be_bytes());
        out.extend_from_slice(&r.departing.to_be_bytes());
        out.extend_from_slice(&(topics.len() as u16).to_be_bytes());
        for t in topics.iter() {
            out.extend_from_slice(&t.0.to_be_bytes());
        }
    }
}

fn decode(r: &mut Reader<'_>, topics_max: usize) -> Result<Decoded, WireError> {
    let id = NodeId(r.u64()?);
    let version = r.u32()?;
    let key_epoch = r.u32()?;
    let departing = r.u64()?;
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
    Ok((id, version, key_epoch, departing, topics))
}

/// The scuttlebutt subscriptions object. See the module documentation.
#[derive(Debug)]
pub struct Subscriptions {
    me: NodeId,
    config: SubscriptionsConfig,
    table: Table<Rec>,
    sigs: Signatures,
    syncer: Syncer,
    /// News: id -> pushes left.
    news: BTreeMap<NodeId, u32>,
    changes: VecDeque<NodeId>,
    changes_overflow: u64,
    /// Records found without a member, with the time a sweep first found them so (dropped
    /// once a sweep finds them still so `orphan_after` later).
    orphans: BTreeMap<NodeId, Instant>,
    sweep_cursor: usize,
    rounds: u64,
    /// Live members as membership counts them (ourselves included): fewer records than
    /// that means some are missing here.
    members: usize,
    /// The last gap (members − records) and the round it changed.
    gap: (usize, u64),
    stats: SubscriptionsStats,
}

/// Rounds a node with missing records keeps reconciling every round once its gap stops
/// shrinking (a member whose record never comes must not keep it busy for ever).
const BEHIND_ROUNDS: u64 = 25;

impl Subscriptions {
    /// The subscriptions object of node `me`, initially subscribing nothing.
    pub fn new(me: NodeId, config: SubscriptionsConfig) -> Subscriptions {
        let mut sigs = Signatures::default();
        let sig = sigs.intern(&[]);
        let mut table = Table::default();
        table.insert(
            me,
            Rec {
                version: 0,
                sig,
                key_epoch: 0,
                departing: 0,
            },
        );
        Subscriptions {
            me,
            config,
            table,
            sigs,
            syncer: Syncer::new(SYNC_PEERS_MAX, SYNC_WORK_MAX),
            news: BTreeMap::new(),
            changes: VecDeque::new(),
            changes_overflow: 0,
            orphans: BTreeMap::new(),
            sweep_cursor: 0,
            rounds: 0,
            members: 1,
            gap: (0, 0),
            stats: SubscriptionsStats::default(),
        }
    }

    /// Tells the object how many live members membership holds (ourselves included). While
    /// that is more than the records held, and the gap changed in the last 25 rounds, it
    /// reconciles every round (not every `sync_every`) with one extra partner: the records
    /// a lossy exchange missed come one round later, not `sync_every` rounds later.
    pub fn set_members(&mut self, members: usize) {
        self.members = members;
    }

    /// Missing records (see [`Subscriptions::set_members`]) and still catching up.
    fn behind(&self) -> bool {
        self.gap.0 > 0 && self.rounds < self.gap.1 + BEHIND_ROUNDS
    }

    /// Replaces our own topics (sorted and deduplicated here) and bumps our version; the
    /// record departs no region.
    pub fn set_topics(&mut self, topics: impl IntoIterator<Item = TopicId>) {
        self.set_topics_departing(topics, None);
    }

    /// Replaces our own topics and the region we are departing (see the module docs) in one
    /// new version.
    pub fn set_topics_departing(
        &mut self,
        topics: impl IntoIterator<Item = TopicId>,
        departing: Option<RegionId>,
    ) {
        let mut v: Vec<TopicId> = topics.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        v.truncate(self.config.topics_max);
        let (version, key_epoch) = self.own_version_and_epoch();
        let departing = departing.map_or(0, |r| r.0);
        self.set_own(version.wrapping_add(1), &v, key_epoch, departing);
    }

    /// We departed the region our record names: a new version names none (nothing changes
    /// when it names none already).
    pub fn clear_departing(&mut self) {
        let Some(own) = self.table.get(self.me).copied() else {
            return;
        };
        if own.departing == 0 {
            return;
        }
        let topics = self.sigs.get(own.sig).clone();
        self.set_own(own.version.wrapping_add(1), &topics, own.key_epoch, 0);
    }

    /// Replaces the newest cluster-key epoch we hold and bumps our version (nothing changes
    /// when it is the one recorded already).
    pub fn set_key_epoch(&mut self, epoch: u32) {
        let (version, key_epoch) = self.own_version_and_epoch();
        if key_epoch == epoch {
            return;
        }
        let topics = self
            .table
            .get(self.me)
            .map_or_else(|| Arc::from(&[][..]), |r| self.sigs.get(r.sig).clone());
        let departing = self.table.get(self.me).map_or(0, |r| r.departing);
        self.set_own(version.wrapping_add(1), &topics, epoch, departing);
    }

    fn own_version_and_epoch(&self) -> (u32, u32) {
        self.table
            .get(self.me)
            .map_or((0, 0), |r| (r.version, r.key_epoch))
    }

    fn set_own(&mut self, version: u32, topics: &[TopicId], key_epoch: u32, departing: u64) {
        let me = self.me;
        let sig = self.sigs.intern(topics);
        if let Some(old) = self.table.get(me).copied() {
            self.sigs.release(old.sig);
        }
        self.table.insert(
            me,
            Rec {
                version,
                sig,
                key_epoch,
                departing,
            },
        );
        self.make_news(me);
        self.changed(me);
    }

    /// The record of `id`.
    pub fn record(&self, id: NodeId) -> Option<SubscriptionRecord> {
        self.table.get(id).map(|r| self.view(r))
    }

    /// The topics of `id`'s record, borrowed (no copy of the shared signature).
    pub fn topics_of(&self, id: NodeId) -> Option<&[TopicId]> {
        self.table.get(id).map(|r| &self.sigs.get(r.sig)[..])
    }

    fn view(&self, r: &Rec) -> SubscriptionRecord {
        SubscriptionRecord {
            version: r.version,
            topics: self.sigs.get(r.sig).clone(),
            key_epoch: r.key_epoch,
            departing: (r.departing != 0).then_some(RegionId(r.departing)),
        }
    }

    /// Every known record (ours included), in a fixed order.
    pub fn records(&self) -> impl Iterator<Item = (NodeId, SubscriptionRecord)> + '_ {
        self.table.iter().map(|(id, r)| (id, self.view(r)))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Never true once built: our own record is always there.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Records still owed pushes as news.
    pub fn news(&self) -> usize {
        self.news.len()
    }

    /// Distinct signatures held.
    pub fn signatures(&self) -> usize {
        self.sigs.len()
    }

    /// A fingerprint of the whole table (equal tables, equal fingerprints).
    pub fn table_hash(&self) -> u32 {
        self.table.root().hash
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

    /// Drops the record of `id` (a member that is down, left or unknown).
    pub fn forget(&mut self, id: NodeId) {
        if id == self.me {
            return;
        }
        if let Some(r) = self.table.remove(id) {
            self.sigs.release(r.sig);
            self.news.remove(&id);
            self.stats.records_forgotten += 1;
            self.changed(id);
        }
        self.orphans.remove(&id);
    }

    /// Checks the next `n` records (round-robin) with `is_member`; a record whose owner a
    /// sweep found no member at least `orphan_after` ago, and still finds none, is dropped.
    /// Returns the ids dropped. The wait must outlast a join: a node's announcement brings
    /// its record at once, while membership may take a few rounds (longer on a loaded
    /// machine) to know the node; dropping it sooner splits the region's views for as long.
    pub fn sweep(
        &mut self,
        n: usize,
        now: Instant,
        orphan_after: std::time::Duration,
        is_member: impl Fn(NodeId) -> bool,
    ) -> Vec<NodeId> {
        let len = self.table.len();
        if len == 0 {
            return Vec::new();
        }
        let mut ids = Vec::new();
        for k in 0..n.min(len) {
            let i = (self.sweep_cursor + k) % len;
            if let Some((id, _)) = self.table.nth(i) {
                ids.push(id);
            }
        }
        self.sweep_cursor = (self.sweep_cursor + n) % len.max(1);
        let mut dropped = Vec::new();
        for id in ids {
            if id == self.me || is_member(id) {
                self.orphans.remove(&id);
                continue;
            }
            let since = *self.orphans.entry(id).or_insert(now);
            if now >= since + orphan_after {
                self.forget(id);
                dropped.push(id);
            }
        }
        dropped
    }

    fn changed(&mut self, id: NodeId) {
        if self.changes.len() >= CHANGES_MAX {
            self.changes_overflow += 1;
        } else {
            self.changes.push_back(id);
        }
    }

    /// A record learned outside gossip (a checked multicast announcement), merged like one
    /// gossip brought: kept when newer than the one held (the node refuses it while `id` is
    /// known gone), then spread by anti-entropy like any other (not pushed as news: every
    /// member heard the same announcement). Announcements carry no key epoch: the one held
    /// stays (or `rec.key_epoch`, when newer), and gossip's copy of the same version fills it
    /// in.
    pub fn learn(&mut self, id: NodeId, rec: SubscriptionRecord) {
        let held = self.table.get(id).map_or(0, |r| r.key_epoch);
        let key_epoch = if newer(rec.key_epoch, held) {
            rec.key_epoch
        } else {
            held
        };
        let departing = rec.departing.map_or(0, |r| r.0);
        self.merge(id, rec.version, key_epoch, departing, &rec.topics, false);
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.table.len() as f64 + 1.0;
        self.config.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    fn make_news(&mut self, id: NodeId) {
        if !self.news.contains_key(&id) && self.news.len() >= self.config.news_max {
            // Drop the news with the fewest pushes left: it has had the most chances.
            if let Some(victim) = self.news.iter().min_by_key(|(_, n)| **n).map(|(i, _)| *i) {
                self.news.remove(&victim);
                self.stats.news_overflow += 1;
            }
        }
        let limit = self.retransmit_limit();
        self.news.insert(id, limit);
    }

    fn merge(
        &mut self,
        id: NodeId,
        version: u32,
        key_epoch: u32,
        departing: u64,
        topics: &[TopicId],
        news: bool,
    ) {
        if id == self.me {
            // A copy of our own record at or above our version that is not ours: bump past it.
            // (A copy with an older key epoch is one learned from an announcement: stale, not
            // another record.)
            let mine = self.table.get(self.me).copied();
            if let Some(m) = mine {
                let same = m.version == version
                    && self.sigs.get(m.sig)[..] == *topics
                    && m.departing == departing
                    && !newer(key_epoch, m.key_epoch);
                if !same && (version == m.version || newer(version, m.version)) {
                    self.stats.own_record_refuted += 1;
                    let topics = self.sigs.get(m.sig).clone();
                    self.set_own(version.wrapping_add(1), &topics, m.key_epoch, m.departing);
                }
            }
            return;
        }
        match self.table.get(id).copied() {
            Some(old) if version == old.version && newer(key_epoch, old.key_epoch) => {
                // The same version with the key epoch an announcement could not tell.
                self.table.insert(id, Rec { key_epoch, ..old });
                self.stats.records_merged += 1;
                self.changed(id);
            }
            Some(old) if !newer(version, old.version) => {
                if news && version == old.version {
                    // News to someone who had it: it is saturating, push it less.
                    if let Some(n) = self.news.get_mut(&id) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.news.remove(&id);
                        }
                    }
                }
            }
            Some(old) => {
                if version.wrapping_sub(old.version) > self.config.version_jump_max {
                    self.stats.implausible_versions += 1;
                    return;
                }
                let sig = self.sigs.intern(topics);
                self.sigs.release(old.sig);
                self.table.insert(
                    id,
                    Rec {
                        version,
                        sig,
                        key_epoch,
                        departing,
                    },
                );
                self.stats.records_merged += 1;
                if news {
                    self.make_news(id);
                }
                self.changed(id);
            }
            None if self.table.len() >= self.config.records_max => {
                self.stats.records_overflow += 1;
            }
            None => {
                let sig = self.sigs.intern(topics);
                self.table.insert(
                    id,
                    Rec {
                        version,
                        sig,
                        key_epoch,
                        departing,
                    },
                );
                self.stats.records_merged += 1;
                if news {
                    self.make_news(id);
                }
                self.changed(id);
            }
        }
    }

    /// News to push now: most pushes left first.
    fn news_ids(&self, skip: Option<NodeId>) -> Vec<NodeId> {
        let mut v: Vec<(u32, NodeId)> = self
            .news
            .iter()
            .filter(|(id, _)| Some(**id) != skip)
            .map(|(id, n)| (*n, *id))
            .collect();
        // The first few of up to `news_max`: select them, then sort only those (the order
        // is total, ids being unique).
        if v.len() > NEWS_PER_WRITE {
            v.select_nth_unstable_by(NEWS_PER_WRITE - 1, |a, b| b.cmp(a));
            v.truncate(NEWS_PER_WRITE);
        }
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Bytes of memory the record table holds.
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
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
    fn on_round(&mut self, now: Instant, _out: &mut Outbox<'_>) {
        self.rounds += 1;
        self.syncer.expire(now);
        let gap = self.members.saturating_sub(self.table.len());
        if gap != self.gap.0 {
            self.gap = (gap, self.rounds);
        }
    }
    fn gossip_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        let every = u64::from(self.config.sync_every.max(1));
        if self.rounds % every == 0 || self.behind() {
            self.syncer.start(peer.addr);
        }
        if self.syncer.owes(peer.addr) || !self.news.is_empty() {
            out.initiate(peer);
        }
    }
    fn extra_peers(&mut self) -> usize {
        if self.syncer.take_backlog() {
            self.config.catch_up_fanout
        } else {
            usize::from(self.behind())
        }
    }
    fn catch_up_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        self.syncer.start(peer.addr);
        out.initiate(peer);
    }
    fn write(
        &mut self,
        _now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        if priority != Priority::Bulk {
            return;
        }
        let news = self.news_ids(to.id);
        let codec = SubCodec { sigs: &self.sigs };
        let sent = self
            .syncer
            .write(to.addr, &self.table, &codec, &news, budget, out);
        for id in &news[..sent] {
            if let Some(n) = self.news.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.news.remove(id);
                }
            }
        }
        self.stats.news_sent += sent as u64;
    }
    fn has_more(&self, to: &Peer) -> bool {
        self.syncer.owes(to.addr)
    }
    fn handle(
        &mut self,
        now: Instant,
        from: &Peer,
        priority: Priority,
        payload: &[u8],
        out: &mut Outbox<'_>,
    ) -> Result<(), WireError> {
        if priority != Priority::Bulk {
            return Err(WireError::Malformed);
        }
        let bulk = sync::parse(payload)?;
        let mut r = bulk.reader.clone();
        let mut read = 0usize;
        let haves: Vec<_> = bulk.haves().collect();
        let mut answers = Vec::new();
        for (range, n) in haves {
            let mut listing = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let (id, version, key_epoch, departing, topics) =
                    decode(&mut r, self.config.topics_max)?;
                if !range.contains(sync::mix(id)) {
                    return Err(WireError::Malformed);
                }
                self.merge(id, version, key_epoch, departing, &topics, false);
                listing.push((id, (version, key_epoch)));
            }
            read += usize::from(n);
            answers.push((range, listing));
        }
        let mut got_news = false;
        for k in read..usize::from(bulk.records) {
            let (id, version, key_epoch, departing, topics) =
                decode(&mut r, self.config.topics_max)?;
            let news = k < read + usize::from(bulk.rumors);
            got_news |= news;
            self.merge(id, version, key_epoch, departing, &topics, news);
        }
        for (range, listing) in answers {
            let ids = listing_answer(&self.table, range, &listing, |ours, &(v, k)| {
                newer(ours.version, v) || (ours.version == v && newer(ours.key_epoch, k))
            });
            self.syncer.send_ids(from.addr, ids);
        }
        self.syncer.handle(now, from.addr, &bulk.items, &self.table);
        // Push-pull: whoever pushes news to us gets ours back (it rides our answer).
        if self.syncer.owes(from.addr) || (got_news && !self.news.is_empty()) {
            out.send_to(from.addr);
        }
        Ok(())
    }
    fn forget_peer(&mut self, addr: SocketAddr) {
        self.syncer.forget(addr);
    }
    fn check_invariants(&self) {
        self.table.check_invariants();
        self.syncer.check_invariants();
        assert!(self.table.len() <= self.config.records_max.max(1) + 1);
        assert!(
            self.table.get(self.me).is_some(),
            "our own record is missing"
        );
        assert!(self.changes.len() <= CHANGES_MAX);
        assert!(self.news.len() <= self.config.news_max.max(1));
        let mut refs: BTreeMap<u32, u32> = BTreeMap::new();
        for (_, r) in self.table.iter() {
            let t = self.sigs.get(r.sig);
            assert!(t.windows(2).all(|w| w[0] < w[1]));
            *refs.entry(r.sig).or_default() += 1;
        }
        for (i, n) in refs {
            assert_eq!(
                self.sigs.list[i as usize].1, n,
                "signature reference count drifted"
            );
        }
        assert_eq!(
            self.sigs.index.len(),
            self.sigs.list.len() - self.sigs.free.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[u64]) -> Vec<TopicId> {
        v.iter().map(|x| TopicId(*x)).collect()
    }

    /// Runs rounds up to an odd one (not a `sync_every` round) and says whether that round
    /// started a reconciliation with a partner, and how many extra partners it asked for.
    fn odd_round_syncs(s: &mut Subscriptions, rounds: u64) -> (bool, usize) {
        let now = Instant::ZERO;
        let mut peers = crate::peers::Peers::scratch(now);
        let peer = Peer {
            id: Some(NodeId(2)),
            addr: std::net::SocketAddr::from(([10, 0, 0, 2], 7000)),
        };
        for _ in 0..rounds {
            s.on_round(now, &mut Outbox::new(&mut peers, 1, now));
            s.syncer.forget(peer.addr);
        }
        assert!(s.rounds % 2 == 1, "an odd round");
        s.gossip_with(now, &peer, &mut Outbox::new(&mut peers, 1, now));
        (s.syncer.owes(peer.addr), s.extra_peers())
    }

    #[test]
    fn a_node_missing_records_reconciles_every_round_until_its_gap_stops_changing() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        // Membership counts 5 members; we hold only our own record.
        s.set_members(5);
        assert_eq!(odd_round_syncs(&mut s, 1), (true, 1));
        // The gap last changed at round 1: still catching up at round 25 ...
        assert_eq!(odd_round_syncs(&mut s, 24), (true, 1));
        // ... not at round 27: a record that never comes does not keep it busy.
        assert_eq!(odd_round_syncs(&mut s, 2), (false, 0));
        // A record arrives (the gap changes): catching up again.
        s.merge(NodeId(2), 1, 0, 0, &t(&[3]), false);
        assert_eq!(odd_round_syncs(&mut s, 2), (true, 1));
    }

    #[test]
    fn a_node_holding_every_members_record_reconciles_every_sync_every_rounds() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        s.merge(NodeId(2), 1, 0, 0, &t(&[3]), false);
        s.set_members(2);
        assert_eq!(odd_round_syncs(&mut s, 1), (false, 0));
    }

    #[test]
    fn signatures_are_shared_and_released() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        for i in 2..100u64 {
            s.merge(NodeId(i), 1, 0, 0, &t(&[i % 3]), false);
        }
        assert_eq!(s.signatures(), 4, "three signatures plus our empty one");
        for i in 2..100u64 {
            s.forget(NodeId(i));
        }
        assert_eq!(s.signatures(), 1);
        GossipObject::check_invariants(&s);
    }

    #[test]
    fn a_copy_of_our_record_at_our_version_makes_us_bump_past_it() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        s.set_topics(t(&[5]));
        assert_eq!(s.record(NodeId(1)).unwrap().version, 1);
        s.merge(NodeId(1), 1, 0, 0, &t(&[5]), false);
        assert_eq!(
            s.stats().own_record_refuted,
            0,
            "our own copy is no forgery"
        );
        s.merge(NodeId(1), 40, 0, 0, &t(&[6, 7]), false);
        let r = s.record(NodeId(1)).unwrap();
        assert_eq!((r.version, &r.topics[..]), (41, &t(&[5])[..]));
        GossipObject::check_invariants(&s);
    }

    #[test]
    fn versions_compare_across_the_wrap_and_far_jumps_are_refused() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        s.merge(NodeId(2), u32::MAX, 0, 0, &t(&[1]), false);
        s.merge(NodeId(2), 0, 0, 0, &t(&[2]), false);
        assert_eq!(s.record(NodeId(2)).unwrap().version, 0);
        s.merge(NodeId(2), 5000, 0, 0, &t(&[3]), false);
        assert_eq!(s.record(NodeId(2)).unwrap().version, 0);
        assert_eq!(s.stats().implausible_versions, 1);
    }

    #[test]
    fn the_key_epoch_bumps_the_version_and_an_announcement_does_not_hide_it() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        s.set_topics(t(&[5]));
        s.set_key_epoch(2);
        let r = s.record(NodeId(1)).unwrap();
        assert_eq!(
            (r.version, r.key_epoch, &r.topics[..]),
            (2, 2, &t(&[5])[..])
        );
        s.set_key_epoch(2);
        assert_eq!(
            s.record(NodeId(1)).unwrap().version,
            2,
            "no change, no bump"
        );
        // A stale copy of ours (an announcement's, no epoch) is not a rival record.
        s.merge(NodeId(1), 2, 0, 0, &t(&[5]), false);
        assert_eq!(s.stats().own_record_refuted, 0);

        // Another node's record first learned from an announcement (epoch unknown), then
        // gossip's copy of the same version: the epoch is filled in; an older one is not.
        let rec = |version, key_epoch| SubscriptionRecord {
            version,
            topics: t(&[5]).into(),
            key_epoch,
            departing: None,
        };
        s.learn(NodeId(2), rec(7, 0));
        assert_eq!(s.record(NodeId(2)).unwrap().key_epoch, 0);
        s.merge(NodeId(2), 7, 3, 0, &t(&[5]), false);
        assert_eq!(s.record(NodeId(2)).unwrap().key_epoch, 3);
        s.merge(NodeId(2), 7, 1, 0, &t(&[5]), false);
        assert_eq!(s.record(NodeId(2)).unwrap().key_epoch, 3);
        // A newer version from an announcement keeps the epoch held.
        s.learn(NodeId(2), rec(8, 0));
        let r = s.record(NodeId(2)).unwrap();
        assert_eq!((r.version, r.key_epoch), (8, 3));
        GossipObject::check_invariants(&s);
    }

    #[test]
    fn records_of_non_members_are_swept_once_orphaned_for_orphan_after() {
        let mut s = Subscriptions::new(NodeId(1), SubscriptionsConfig::default());
        s.merge(NodeId(2), 1, 0, 0, &t(&[1]), false);
        s.merge(NodeId(3), 1, 0, 0, &t(&[1]), false);
        s.merge(NodeId(4), 1, 0, 0, &t(&[1]), false);
        let after = std::time::Duration::from_secs(10);
        let t0 = Instant::ZERO;
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        // 4 turns up as a member in between: its clock starts again when it is orphaned again.
        let early = |id: NodeId| id == NodeId(2);
        let later = |id: NodeId| id == NodeId(2) || id == NodeId(4);
        assert!(
            s.sweep(4, t0, after, early).is_empty(),
            "first visit only marks"
        );
        assert!(s.sweep(4, at(5_000), after, later).is_empty());
        assert!(
            s.sweep(4, at(9_999), after, early).is_empty(),
            "just short of orphan_after"
        );
        assert_eq!(s.sweep(4, at(10_000), after, early), vec![NodeId(3)]);
        assert!(
            s.record(NodeId(4)).is_some(),
            "orphaned again only at 9.999 s"
        );
        assert_eq!(s.sweep(4, at(19_999), after, early), vec![NodeId(4)]);
        assert!(s.record(NodeId(2)).is_some());
        assert!(s.record(NodeId(1)).is_some());
    }
}
