//! Health, Astrolabe-style (seed `000_*` §3–4, DESIGN.md §5): every node publishes one
//! [`NodeHealth`] record (load, receive rate, loss, repairs, backlog, lag) and every node ends up
//! with a bounded picture of the cluster in two levels of Astrolabe's zones — the per-node
//! records of its own region, and one [`Aggregate`] (count, min, max, sum and the worst node of
//! each metric) per region, rolled up into a cluster aggregate. A node holds O(region +
//! regions) rows, not O(N).
//!
//! * Records: the owner sets ours with [`Health::set_local`] and our region with
//!   [`Health::set_region`]; each change bumps our version. A record is replaced by a higher
//!   version of the same node. Only records of our own region are held (others are refused,
//!   counted; a member that moves away is dropped), at most `records_max` of them (the lowest
//!   ranked of a fixed per-node pseudo-random order is evicted; counted).
//! * Region aggregates (Astrolabe's zone MIBs): each node that has a record computes its own
//!   region's aggregate from the records of that region it holds, and issues it as
//!   `(region, aggregator = us, version = held version + 1)`: the region's lowest id we hold
//!   does so whenever the result differs from the held aggregate (at most every
//!   `aggregate_every`), any other member only once nobody has vouched for the held one for
//!   `(2 + its rank) × repair_after` (taking over from a slow or cut-off aggregator). A member
//!   whose own record changed pushes it to the aggregator first. Replicas keep, per region,
//!   the highest
//!   `(version, aggregator)`; at most `regions_max` regions (our own first, then the freshest).
//! * The cluster aggregate is the roll-up of the held region aggregates
//!   ([`Health::cluster`]). Sums are `f64` and computed in a fixed order, min/max ties go to the
//!   lowest node id, so equal inputs give bit-equal aggregates on every node.
//! * Expiry: entries carry their age, not a timestamp (ages grow as they travel, so an expired entry cannot come back). Our own record is
//!   always age 0, and a member vouches for its region's held aggregate while it matches its
//!   view; replicas keep the youngest age heard (from a full entry or a *beat*: node or region
//!   plus age, 10 or 3–11 bytes). An entry with no news for `expiry` is dropped and not
//!   accepted again. [`Health::forget`] (a member down or left) drops a record at once and
//!   refuses copies born before that.
//! * Dissemination is rumor mongering plus an anti-entropy walk, pushed to peers drawn with a
//!   MiCA view that favours our region (`region_share` of the draws): a new version is *hot* for
//!   `hot_sends` pushes. A push carries beats (a third of the budget: the peer's region's
//!   records and all aggregates, freshest first), our own record, hot aggregates and hot
//!   records (the peer's region first; news at most half the budget), then the next entries of
//!   a round-robin walk, within `payload_max` bytes. With nothing hot we push every
//!   `cold_every` rounds.
//! * Repair (anti-entropy by digest): a push ends with our digest of the region's records (to
//!   a mate) and of the aggregates. A peer whose digest differs answers with its listing
//!   (ids and versions); the listing's receiver sends what the listing lacks or holds older
//!   and, if the listing shows it behind, its own listing marked as an *answer*. An answer
//!   listing gets entries back, never another listing, so a conversation is at most digest →
//!   listing → answer → entries, even between two nodes that each refuse what the other
//!   lists (seed 62119: such a pair traded listings on every hop).
//!
//! Not done: regions larger than `records_max` get aggregates from partial views (and members
//! may take turns re-issuing them); a node that changes region is counted in both until its
//! old region re-issues or expires; no hierarchy deeper than region → cluster; no SQL-like
//! aggregation functions (the set of metrics is fixed).
//!
//! Bulk payload: `aggregates u8 | aggregate* | records u8 | record* | node beats u8 |
//! (node u64 | age u16)* | region beats u8 | (region | age u16)*` (beat ages in tenths of a
//! second, rounded up) with
//!
//! ```text
//! region:    | 0 |  or  | 1 | region u64 |
//! aggregate: region | aggregator u64 | version u64 | age ms u32 | count u32 |
//!            6 × (min f32 | max f32 | sum f64 | worst u64)
//! record:    node u64 | version u64 | age ms u32 | region | 6 × f32
//! ```
//!
//! The repair part follows, if present: `flags u8 | digest? | listing? | aggregate digest? |
//! aggregate listing?`, flags 1 digest, 2 listing, 4 listing complete, 8 aggregate digest,
//! 16 aggregate listing, 32 aggregate listing complete, 64 the listing answers the peer's,
//! 128 the aggregate listing answers the peer's (an answer flag without its listing is
//! malformed); a digest is `xor u32 | count u16`, a listing `count u8 | (node u64 |
//! version u64)*`, an aggregate listing `count u8 | (region | version u64 | aggregator
//! u64)*`.

use std::collections::BTreeMap;
use std::time::Duration;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId, RegionId};

use crate::epidemic::{age_ms, born_at, ms, older_than, Owed};
use crate::object::{GossipObject, Outbox, Peer, PeerView};
use crate::sync::mix;
use crate::wire::{Priority, Reader};

/// Section tag of the health object.
pub const HEALTH_TAG: u8 = 3;

/// Number of metrics in a [`NodeHealth`].
pub const METRICS: usize = 9;

/// One metric of a [`NodeHealth`]. For every metric, larger is worse (for the receive rate:
/// busier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// [`NodeHealth::load`].
    Load = 0,
    /// [`NodeHealth::recv_rate`].
    RecvRate = 1,
    /// [`NodeHealth::loss`].
    Loss = 2,
    /// [`NodeHealth::repairs`].
    Repairs = 3,
    /// [`NodeHealth::backlog`].
    Backlog = 4,
    /// [`NodeHealth::lag`].
    Lag = 5,
    /// [`NodeHealth::lateral`].
    Lateral = 6,
    /// [`NodeHealth::peer`].
    Peer = 7,
    /// [`NodeHealth::sender`].
    Sender = 8,
}

impl Metric {
    /// All metrics, in wire order.
    pub const ALL: [Metric; METRICS] = [
        Metric::Load,
        Metric::RecvRate,
        Metric::Loss,
        Metric::Repairs,
        Metric::Backlog,
        Metric::Lag,
        Metric::Lateral,
        Metric::Peer,
        Metric::Sender,
    ];
}

/// What a node says about itself. Values must be finite (a record with a NaN or infinity is
/// refused locally and malformed on the wire); integral values below 2^24 are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct NodeHealth {
    /// Load, e.g. the CPU fraction 0..1 of the node's Quicksilver thread.
    pub load: f32,
    /// Data messages received per second.
    pub recv_rate: f32,
    /// Packets lost per second (before repair).
    pub loss: f32,
    /// Repairs (sent and received) per second.
    pub repairs: f32,
    /// Queued outgoing bytes or messages.
    pub backlog: f32,
    /// Packets behind the newest known (receive lag).
    pub lag: f32,
    /// Lost packets per second rebuilt laterally (from neighbours' repairs).
    pub lateral: f32,
    /// Lost packets per second served by a peer (ring neighbour or caretaker).
    pub peer: f32,
    /// Lost packets per second sent again by their sender.
    pub sender: f32,
}

impl NodeHealth {
    /// The value of one metric.
    pub fn value(&self, m: Metric) -> f32 {
        self.values()[m as usize]
    }

    /// All values, in [`Metric::ALL`] order.
    pub fn values(&self) -> [f32; METRICS] {
        [
            self.load,
            self.recv_rate,
            self.loss,
            self.repairs,
            self.backlog,
            self.lag,
            self.lateral,
            self.peer,
            self.sender,
        ]
    }

    fn from_values(v: [f32; METRICS]) -> NodeHealth {
        NodeHealth {
            load: v[0],
            recv_rate: v[1],
            loss: v[2],
            repairs: v[3],
            backlog: v[4],
            lag: v[5],
            lateral: v[6],
            peer: v[7],
            sender: v[8],
        }
    }

    /// Every value is finite.
    pub fn is_finite(&self) -> bool {
        self.values().iter().all(|v| v.is_finite())
    }
}

/// One node's replicated health record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRecord {
    /// The node's region (`None`: subscribes nothing, or not told yet).
    pub region: Option<RegionId>,
    /// Bumped by the node on every change of its values or region.
    pub version: u64,
    /// The values.
    pub health: NodeHealth,
}

/// Summary of one metric over a set of nodes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MetricSummary {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Sum of the values (divide by [`Aggregate::count`] for the mean).
    pub sum: f64,
    /// The node with the largest value (the lowest id among equals).
    pub worst: NodeId,
}

/// Count and per-metric summaries of a set of nodes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Aggregate {
    /// Nodes summarised (at least one).
    pub count: u32,
    /// One summary per metric, in [`Metric::ALL`] order.
    pub metrics: [MetricSummary; METRICS],
}

impl Aggregate {
    /// The aggregate of one node.
    pub fn of_one(id: NodeId, h: &NodeHealth) -> Aggregate {
        let v = h.values();
        Aggregate {
            count: 1,
            metrics: std::array::from_fn(|i| MetricSummary {
                min: v[i],
                max: v[i],
                sum: f64::from(v[i]),
                worst: id,
            }),
        }
    }

    /// The aggregate of some nodes, folded in iteration order (`None` if there are none).
    pub fn of<'a>(nodes: impl IntoIterator<Item = (NodeId, &'a NodeHealth)>) -> Option<Aggregate> {
        let mut acc: Option<Aggregate> = None;
        for (id, h) in nodes {
            let one = Aggregate::of_one(id, h);
            match &mut acc {
                Some(a) => a.merge(&one),
                None => acc = Some(one),
            }
        }
        acc
    }

    /// Folds `other` into `self` (the roll-up of two disjoint sets).
    pub fn merge(&mut self, other: &Aggregate) {
        self.count = self.count.saturating_add(other.count);
        for (a, b) in self.metrics.iter_mut().zip(&other.metrics) {
            a.min = a.min.min(b.min);
            if b.max > a.max || (b.max == a.max && b.worst < a.worst) {
                a.max = b.max;
                a.worst = b.worst;
            }
            a.sum += b.sum;
        }
    }

    /// The summary of one metric.
    pub fn metric(&self, m: Metric) -> &MetricSummary {
        &self.metrics[m as usize]
    }

    /// The mean of one metric.
    pub fn mean(&self, m: Metric) -> f64 {
        self.metric(m).sum / f64::from(self.count.max(1))
    }

    fn is_valid(&self) -> bool {
        self.count > 0
            && self.metrics.iter().all(|s| {
                s.min.is_finite() && s.max.is_finite() && s.sum.is_finite() && s.min <= s.max
            })
    }
}

/// A region's aggregate as issued by one of its members.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionAggregate {
    /// The region (`None`: the nodes without a region).
    pub region: Option<RegionId>,
    /// The member that computed it.
    pub aggregator: NodeId,
    /// Replicas keep the highest `(version, aggregator)`.
    pub version: u64,
    /// The aggregate.
    pub aggregate: Aggregate,
}

/// Health settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Most per-node records held (ours included).
    pub records_max: usize,
    /// Most region aggregates held.
    pub regions_max: usize,
    /// Records and aggregates with no news younger than this are dropped (several
    /// `cold_every` rounds: every push refreshes what it carries).
    pub expiry: Duration,
    /// A held aggregate of our region that disagrees with our view this long is re-issued.
    pub repair_after: Duration,
    /// Pushes of each new record before it only travels with the walk and the repair.
    pub hot_sends: u8,
    /// Pushes of each new aggregate (every node needs every aggregate: fewer rumors, and
    /// the digest repair for the rest).
    pub aggregate_hot_sends: u8,
    /// An aggregator re-issues its region's aggregate at most this often (a burst of
    /// record changes becomes one new version, not one per change).
    pub aggregate_every: Duration,
    /// With nothing new, push every this many rounds.
    pub cold_every: u32,
    /// Largest payload per push while something is new (further bounded by the runtime's
    /// budget).
    pub payload_max: usize,
    /// Largest payload of a push with nothing new (ages and the walk only).
    pub cold_payload_max: usize,
    /// Share of the peer draws made among the members of our region (MiCA view): records
    /// matter only inside a region, aggregates everywhere.
    pub region_share: f64,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            records_max: 256,
            regions_max: 1024,
            expiry: Duration::from_secs(60),
            repair_after: Duration::from_secs(1),
            hot_sends: 8,
            aggregate_hot_sends: 8,
            aggregate_every: Duration::from_secs(1),
            cold_every: 10,
            payload_max: 1200,
            cold_payload_max: 300,
            region_share: 0.5,
        }
    }
}

/// Counters of the health object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HealthStats {
    /// Records accepted (new or newer).
    pub records_merged: u64,
    /// Records refused or evicted because the table was full.
    pub records_overflow: u64,
    /// Records of other regions refused (or dropped when their node moved away).
    pub records_other_region: u64,
    /// Records dropped because they expired.
    pub records_expired: u64,
    /// Records refused because they were too old or born before their node was forgotten.
    pub records_stale: u64,
    /// Region members we were told of but could not keep (`4 × records_max` held).
    pub mates_overflow: u64,
    /// Region aggregates accepted.
    pub aggregates_merged: u64,
    /// Region aggregates we issued.
    pub aggregates_issued: u64,
    /// Region aggregates refused or evicted because the table was full.
    pub aggregates_overflow: u64,
    /// Region aggregates dropped because they expired.
    pub aggregates_expired: u64,
    /// Records and aggregates sent.
    pub entries_sent: u64,
    /// Pushes written.
    pub pushes: u64,
    /// Of those, pushes on a cold round (ages and the walk).
    pub cold_pushes: u64,
    /// Repair answers sent (listings, and records a mate's listing lacked).
    pub repairs_sent: u64,
    /// Payloads that would have exceeded the budget (a bug if not zero).
    pub budget_exceeded: u64,
    /// Peers dropped because too many pushes were pending.
    pub owed_overflow: u64,
}

#[derive(Debug, Clone)]
struct RecEntry {
    rec: HealthRecord,
    born: i64,
    hot: u8,
}

#[derive(Debug, Clone)]
struct AggEntry {
    agg: RegionAggregate,
    born: i64,
    hot: u8,
}

const RECORD_LEN_MAX: usize = 8 + 8 + 4 + 9 + 4 * METRICS;
const AGGREGATE_LEN_MAX: usize = 9 + 8 + 8 + 4 + 4 + 24 * METRICS;
const FORGOTTEN_MAX: usize = 4096;
const PER_SECTION_MAX: usize = 255;

fn region_len(r: Option<RegionId>) -> usize {
    if r.is_some() {
        9
    } else {
        1
    }
}

fn put_region(out: &mut Vec<u8>, r: Option<RegionId>) {
    match r {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            out.extend_from_slice(&r.0.to_be_bytes());
        }
    }
}

fn read_region(r: &mut Reader<'_>) -> Result<Option<RegionId>, WireError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(RegionId(r.u64()?))),
        _ => Err(WireError::Malformed),
    }
}

fn read_f32(r: &mut Reader<'_>) -> Result<f32, WireError> {
    let v = f32::from_bits(r.u32()?);
    if v.is_finite() {
        Ok(v)
    } else {
        Err(WireError::Malformed)
    }
}

fn record_len(rec: &HealthRecord) -> usize {
    8 + 8 + 4 + region_len(rec.region) + 4 * METRICS
}

fn aggregate_len(a: &RegionAggregate) -> usize {
    region_len(a.region) + 8 + 8 + 4 + 4 + 24 * METRICS
}

fn encode_record(id: NodeId, e: &RecEntry, now: Instant, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&e.rec.version.to_be_bytes());
    out.extend_from_slice(&age_ms(now, e.born).to_be_bytes());
    put_region(out, e.rec.region);
    for v in e.rec.health.values() {
        out.extend_from_slice(&v.to_bits().to_be_bytes());
    }
}

fn encode_aggregate(e: &AggEntry, now: Instant, out: &mut Vec<u8>) {
    let a = &e.agg;
    put_region(out, a.region);
    out.extend_from_slice(&a.aggregator.0.to_be_bytes());
    out.extend_from_slice(&a.version.to_be_bytes());
    out.extend_from_slice(&age_ms(now, e.born).to_be_bytes());
    out.extend_from_slice(&a.aggregate.count.to_be_bytes());
    for s in &a.aggregate.metrics {
        out.extend_from_slice(&s.min.to_bits().to_be_bytes());
        out.extend_from_slice(&s.max.to_bits().to_be_bytes());
        out.extend_from_slice(&s.sum.to_bits().to_be_bytes());
        out.extend_from_slice(&s.worst.0.to_be_bytes());
    }
}

/// Decoded payload: aggregates, records, node beats, region beats (ages in ms), repair.
type Decoded = (
    Vec<(RegionAggregate, u32)>,
    Vec<(NodeId, HealthRecord, u32)>,
    Vec<(NodeId, u32)>,
    Vec<(Option<RegionId>, u32)>,
    Repair,
);

/// The entries of `map` after `cursor`, then from the start up to it (all of them, in order,
/// without a cursor): a round-robin walk resuming where the last one stopped, taken lazily.
fn resume<K: Ord + Copy, V>(
    map: &BTreeMap<K, V>,
    cursor: Option<K>,
) -> impl Iterator<Item = (&K, &V)> {
    let (after, before) = match cursor {
        Some(c) => (
            map.range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)),
            Some(map.range(..=c)),
        ),
        None => (map.range(..), None),
    };
    after.chain(before.into_iter().flatten())
}

/// The region-records repair part of a payload: the sender's digest of its region's
/// records, and/or its listing of them (sorted by id; `complete` if nothing was left out;
/// `listing_answers` if it answers our listing, so it is answered with entries only); the same
/// for aggregates.
#[derive(Debug, Clone, Default, PartialEq)]
struct Repair {
    digest: Option<(u32, u16)>,
    listing: Option<(Vec<(NodeId, u64)>, bool)>,
    listing_answers: bool,
    agg_digest: Option<(u32, u16)>,
    agg_listing: Option<(Vec<AggKey>, bool)>,
    agg_listing_answers: bool,
}

/// What identifies a held aggregate's version: region, version, aggregator.
type AggKey = (Option<RegionId>, u64, NodeId);

/// Whether `list` is strictly increasing by `key` except for at most one wrap (a listing
/// that starts at a rotating point of a sorted table and wraps around).
fn rotated_sorted<T, K: Ord>(list: &[T], key: impl Fn(&T) -> K) -> bool {
    let descents = list.windows(2).filter(|w| key(&w[0]) >= key(&w[1])).count();
    match (descents, list.first(), list.last()) {
        (0, _, _) => true,
        (1, Some(first), Some(last)) => key(last) < key(first),
        _ => false,
    }
}

/// Whether `x` lies in the circular interval from `first` to `last` (inclusive).
fn covers<K: Ord>(first: &K, last: &K, x: &K) -> bool {
    if first <= last {
        first <= x && x <= last
    } else {
        x >= first || x <= last
    }
}

const REPAIR_DIGEST: u8 = 1;
const REPAIR_LISTING: u8 = 2;
const REPAIR_COMPLETE: u8 = 4;
const REPAIR_AGG_DIGEST: u8 = 8;
const REPAIR_AGG_LISTING: u8 = 16;
const REPAIR_AGG_COMPLETE: u8 = 32;
/// The record listing answers the peer's listing: it is answered with records only.
const REPAIR_ANSWER: u8 = 64;
/// The aggregate listing answers the peer's listing: it is answered with aggregates only.
const REPAIR_AGG_ANSWER: u8 = 128;
/// Records owed to a peer after its listing, at most.
const OWED_RECORDS_MAX: usize = 64;
/// Peers owed records or a listing, at most.
const REPAIR_PEERS_MAX: usize = 64;

/// A beat's age: tenths of a second, rounded up so that relaying never makes news younger.
fn beat_age(now: Instant, born: i64) -> u16 {
    u16::try_from(age_ms(now, born).div_ceil(100)).unwrap_or(u16::MAX)
}

fn decode(payload: &[u8]) -> Result<Decoded, WireError> {
    let mut r = Reader::new(payload);
    let n = usize::from(r.u8()?);
    let mut aggs = Vec::with_capacity(n);
    for _ in 0..n {
        let region = read_region(&mut r)?;
        let aggregator = NodeId(r.u64()?);
        let version = r.u64()?;
        let age = r.u32()?;
        let count = r.u32()?;
        let mut metrics = [MetricSummary {
            min: 0.0,
            max: 0.0,
            sum: 0.0,
            worst: NodeId(0),
        }; METRICS];
        for m in &mut metrics {
            m.min = read_f32(&mut r)?;
            m.max = read_f32(&mut r)?;
            m.sum = f64::from_bits(r.u64()?);
            m.worst = NodeId(r.u64()?);
        }
        let aggregate = Aggregate { count, metrics };
        if !aggregate.is_valid() {
            return Err(WireError::Malformed);
        }
        aggs.push((
            RegionAggregate {
                region,
                aggregator,
                version,
                aggregate,
            },
            age,
        ));
    }
    let n = usize::from(r.u8()?);
    let mut recs = Vec::with_capacity(n);
    for _ in 0..n {
        let id = NodeId(r.u64()?);
        let version = r.u64()?;
        let age = r.u32()?;
        let region = read_region(&mut r)?;
        let mut v = [0f32; METRICS];
        for x in &mut v {
            *x = read_f32(&mut r)?;
        }
        recs.push((
            id,
            HealthRecord {
                region,
                version,
                health: NodeHealth::from_values(v),
            },
            age,
        ));
    }
    let n = usize::from(r.u8()?);
    let mut node_beats = Vec::with_capacity(n);
    for _ in 0..n {
        let id = NodeId(r.u64()?);
        node_beats.push((id, u32::from(r.u16()?) * 100));
    }
    let n = usize::from(r.u8()?);
    let mut region_beats = Vec::with_capacity(n);
    for _ in 0..n {
        let region = read_region(&mut r)?;
        region_beats.push((region, u32::from(r.u16()?) * 100));
    }
    let mut repair = Repair::default();
    if !r.is_empty() {
        let flags = r.u8()?;
        let answer_without_listing =
            |answer: u8, listing: u8| flags & answer != 0 && flags & listing == 0;
        if answer_without_listing(REPAIR_ANSWER, REPAIR_LISTING)
            || answer_without_listing(REPAIR_AGG_ANSWER, REPAIR_AGG_LISTING)
        {
            return Err(WireError::Malformed);
        }
        if flags & REPAIR_DIGEST != 0 {
            repair.digest = Some((r.u32()?, r.u16()?));
        }
        if flags & REPAIR_LISTING != 0 {
            let n = usize::from(r.u8()?);
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push((NodeId(r.u64()?), r.u64()?));
            }
            if !rotated_sorted(&list, |x| x.0) {
                return Err(WireError::Malformed);
            }
            repair.listing = Some((list, flags & REPAIR_COMPLETE != 0));
            repair.listing_answers = flags & REPAIR_ANSWER != 0;
        }
        if flags & REPAIR_AGG_DIGEST != 0 {
            repair.agg_digest = Some((r.u32()?, r.u16()?));
        }
        if flags & REPAIR_AGG_LISTING != 0 {
            let n = usize::from(r.u8()?);
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push((read_region(&mut r)?, r.u64()?, NodeId(r.u64()?)));
            }
            if !rotated_sorted(&list, |x| x.0) {
                return Err(WireError::Malformed);
            }
            repair.agg_listing = Some((list, flags & REPAIR_AGG_COMPLETE != 0));
            repair.agg_listing_answers = flags & REPAIR_AGG_ANSWER != 0;
        }
    }
    if !r.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok((aggs, recs, node_beats, region_beats, repair))
}

/// The health object. See the module documentation.
#[derive(Debug)]
pub struct Health {
    me: NodeId,
    config: HealthConfig,
    region: Option<RegionId>,
    version: u64,
    records: BTreeMap<NodeId, RecEntry>,
    aggs: BTreeMap<Option<RegionId>, AggEntry>,
    forgotten: BTreeMap<NodeId, i64>,
    /// Members of our region we were told of ([`Health::set_mate`]).
    mates: std::collections::BTreeSet<NodeId>,
    /// Our record changed: push it to the aggregator first.
    tell_aggregator: bool,
    /// Where our next record listing starts (listings cut short rotate).
    listing_cursor: NodeId,
    /// Where our next aggregate listing starts.
    agg_listing_cursor: Option<RegionId>,
    owed: Owed,
    /// Mates whose digest differed from ours, or whose listing showed us behind: they are
    /// owed our listing.
    listing_owed: Owed,
    /// The mates of `listing_owed` whose listing we answer (our listing says so, and is
    /// answered with records only: a repair conversation ends).
    listing_answers: Owed,
    /// Records a mate's listing lacked (or held older), owed to it.
    records_owed: BTreeMap<std::net::SocketAddr, Vec<NodeId>>,
    /// Peers whose aggregate digest differed from ours, or whose listing showed us behind:
    /// they are owed our listing of them.
    agg_listing_owed: Owed,
    /// The peers of `agg_listing_owed` whose listing we answer.
    agg_listing_answers: Owed,
    /// Aggregates a peer's listing lacked (or held older), owed to it.
    aggs_owed: BTreeMap<std::net::SocketAddr, Vec<Option<RegionId>>>,
    rec_cursor: Option<NodeId>,
    agg_cursor: Option<Option<RegionId>>,
    beat_cursor: Option<Option<RegionId>>,
    /// Our view of our region (its aggregate and our rank in it), until the records change.
    view: Option<(Aggregate, usize)>,
    /// [`Health::region_digest`], until the records change.
    rec_digest: Option<(u32, u16)>,
    /// [`Health::aggregate_digest`], until the aggregates change.
    agg_digest: Option<(u32, u16)>,
    /// The regions whose held aggregate is still hot (`hot > 0`): a push picks its news
    /// from these, not from a walk of every region's.
    hot_aggs: std::collections::BTreeSet<Option<RegionId>>,
    disagree_since: Option<Instant>,
    last_issued: Option<Instant>,
    rounds: u64,
    stats: HealthStats,
}

impl Health {
    /// The health object of node `me`, with no record until [`Health::set_local`].
    pub fn new(me: NodeId, config: HealthConfig) -> Health {
        Health {
            me,
            owed: Owed::new(64),
            config,
            region: None,
            version: 0,
            records: BTreeMap::new(),
            aggs: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            mates: std::collections::BTreeSet::new(),
            tell_aggregator: false,
            listing_cursor: NodeId(0),
            agg_listing_cursor: None,
            listing_owed: Owed::new(REPAIR_PEERS_MAX),
            listing_answers: Owed::new(REPAIR_PEERS_MAX),
            records_owed: BTreeMap::new(),
            agg_listing_owed: Owed::new(REPAIR_PEERS_MAX),
            agg_listing_answers: Owed::new(REPAIR_PEERS_MAX),
            aggs_owed: BTreeMap::new(),
            rec_cursor: None,
            agg_cursor: None,
            beat_cursor: None,
            view: None,
            rec_digest: None,
            agg_digest: None,
            hot_aggs: std::collections::BTreeSet::new(),
            disagree_since: None,
            last_issued: None,
            rounds: 0,
            stats: HealthStats::default(),
        }
    }

    /// Publishes our own values (ignored unless all are finite); our region's aggregate is
    /// re-issued at once if it changes.
    pub fn set_local(&mut self, now: Instant, health: NodeHealth) {
        if !health.is_finite() {
            return;
        }
        self.version += 1;
        let e = RecEntry {
            rec: HealthRecord {
                region: self.region,
                version: self.version,
                health,
            },
            born: born_at(now, 0),
            hot: self.config.hot_sends,
        };
        self.records.insert(self.me, e);
        self.records_changed();
        // Our next push goes to our region's aggregator, which re-issues the aggregate: a
        // change reaches the cluster in one hop plus the aggregate's spread.
        self.tell_aggregator = self.aggregator().is_some_and(|a| a != self.me);
        self.settle(now);
    }

    /// Our region's aggregator as we know it: the lowest id among its members we hold or
    /// were told of.
    fn aggregator(&self) -> Option<NodeId> {
        let held = self.records.keys().next().copied();
        let told = self.mates.iter().next().copied();
        match (held, told) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sets our region (from our subscription signature, see `qs_regions::Signature::region`).
    pub fn set_region(&mut self, now: Instant, region: Option<RegionId>) {
        if region == self.region {
            return;
        }
        self.region = region;
        // Only our region's records are ours to hold.
        let me = self.me;
        let before = self.records.len();
        self.records
            .retain(|id, e| *id == me || e.rec.region == region);
        self.stats.records_other_region += (before - self.records.len()) as u64;
        self.records_changed();
        if let Some(h) = self.records.get(&self.me).map(|e| e.rec.health) {
            self.set_local(now, h);
        }
    }

    /// Our region.
    pub fn region(&self) -> Option<RegionId> {
        self.region
    }

    /// Our own record, once set.
    pub fn local(&self) -> Option<&HealthRecord> {
        self.record(self.me)
    }

    /// The record of `id`, if held.
    pub fn record(&self, id: NodeId) -> Option<&HealthRecord> {
        self.records.get(&id).map(|e| &e.rec)
    }

    /// How old the freshest news of `id`'s record is, at `now`.
    pub fn record_age(&self, now: Instant, id: NodeId) -> Option<Duration> {
        let e = self.records.get(&id)?;
        Some(Duration::from_millis(age_ms(now, e.born).into()))
    }

    /// How old the freshest news of `region`'s held aggregate is, at `now`.
    pub fn aggregate_age(&self, now: Instant, region: Option<RegionId>) -> Option<Duration> {
        let e = self.aggs.get(&region)?;
        Some(Duration::from_millis(age_ms(now, e.born).into()))
    }

    /// Every held record, by node id.
    pub fn records(&self) -> impl Iterator<Item = (NodeId, &HealthRecord)> {
        self.records.iter().map(|(id, e)| (*id, &e.rec))
    }

    /// Records held (at most `records_max`).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No record held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The held aggregate of `region`.
    pub fn region_aggregate(&self, region: Option<RegionId>) -> Option<&RegionAggregate> {
        self.aggs.get(&region).map(|e| &e.agg)
    }

    /// Every held region aggregate, by region (`None` first).
    pub fn region_aggregates(&self) -> impl Iterator<Item = &RegionAggregate> {
        self.aggs.values().map(|e| &e.agg)
    }

    /// The cluster aggregate: the roll-up of every held region aggregate, in region order.
    pub fn cluster(&self) -> Option<Aggregate> {
        let mut acc: Option<Aggregate> = None;
        for e in self.aggs.values() {
            match &mut acc {
                Some(a) => a.merge(&e.agg.aggregate),
                None => acc = Some(e.agg.aggregate),
            }
        }
        acc
    }

    /// Refreshes the age of every held record whose node `is_live` says is a live member:
    /// the failure detector vouches for it, so records need no heartbeats of their own and
    /// expire only when membership no longer knows their node.
    pub fn vouch(&mut self, now: Instant, is_live: impl Fn(NodeId) -> bool) {
        let born = born_at(now, 0);
        for (id, e) in self.records.iter_mut() {
            if is_live(*id) {
                e.born = born;
            }
        }
    }

    /// Tells us whether `id` is a member of our region (the owner knows it from the
    /// subscription records: one region per signature), so that records reach region
    /// members before we hold theirs. At most `4 × records_max` are kept (counted). Once any
    /// mate is known, our own record goes only to mates: the hint must agree with
    /// [`Health::set_region`] (the gossip node derives both from the signature).
    pub fn set_mate(&mut self, id: NodeId, mate: bool) {
        if id == self.me {
            return;
        }
        if !mate {
            self.mates.remove(&id);
        } else if self.mates.len() < 4 * self.config.records_max.max(1) {
            self.mates.insert(id);
        } else {
            self.stats.mates_overflow += 1;
        }
    }

    /// Forgets every region member we were told of (our region changed).
    pub fn clear_mates(&mut self) {
        self.mates.clear();
    }

    /// Accepts copies about `id` again (membership holds it live again).
    pub fn readmit(&mut self, id: NodeId) {
        self.forgotten.remove(&id);
    }

    /// Drops the record of a member that is down or left, and refuses copies until it is readmitted (or
    /// twice `expiry` passed).
    pub fn forget(&mut self, now: Instant, id: NodeId) {
        if id == self.me {
            return;
        }
        self.mates.remove(&id);
        if self.records.remove(&id).is_some() {
            self.records_changed();
        }
        if self.forgotten.len() < FORGOTTEN_MAX || self.forgotten.contains_key(&id) {
            self.forgotten.insert(id, born_at(now, 0));
        }
        self.settle(now);
    }

    /// Counters.
    pub fn stats(&self) -> HealthStats {
        HealthStats {
            owed_overflow: self.owed.overflow,
            ..self.stats
        }
    }

    /// Rank for keeping a record when the table is full (higher is kept).
    fn keep_rank(&self, id: NodeId, region: Option<RegionId>) -> (bool, bool, u64) {
        (
            id == self.me,
            region == self.region,
            !mix(NodeId(id.0 ^ self.me.0)),
        )
    }

    fn own_region_aggregate(&self) -> Option<Aggregate> {
        Aggregate::of(
            self.records
                .iter()
                .filter(|(_, e)| e.rec.region == self.region)
                .map(|(id, e)| (*id, &e.rec.health)),
        )
    }

    /// Re-issues our region's aggregate if our view calls for it (see the module docs).
    fn settle(&mut self, now: Instant) {
        if !self.records.contains_key(&self.me) {
            return;
        }
        let (computed, rank) = match self.view {
            Some(v) => v,
            None => {
                let Some(a) = self.own_region_aggregate() else {
                    return;
                };
                let rank = self
                    .records
                    .keys()
                    .position(|id| *id == self.me)
                    .unwrap_or(0);
                self.view = Some((a, rank));
                (a, rank)
            }
        };
        // One aggregator per region: the lowest id we hold of it (the records are ordered
        // by id). It re-issues as its view changes, at most every `aggregate_every`;
        // the others vouch for what matches their view and take over, in id order, only
        // once nobody has vouched for the held aggregate for (2 + rank) × `repair_after`
        // (the aggregator and every member agreeing with it are slow, cut off or gone).
        // Members issuing on every change of their own partial views made large regions
        // churn for ever.
        let gap = self.config.aggregate_every;
        let issue = match self.aggs.get(&self.region) {
            None => true,
            Some(h) if h.agg.aggregate != computed => {
                self.disagree_since.get_or_insert(now);
                if rank == 0 {
                    self.last_issued.is_none_or(|t| now - t >= gap)
                } else {
                    older_than(now, h.born, self.config.repair_after * (2 + rank as u32))
                }
            }
            Some(_) => {
                self.disagree_since = None;
                false
            }
        };
        if !issue {
            // We vouch for a held aggregate that matches our view: it is news as of now.
            if let Some(h) = self.aggs.get_mut(&self.region) {
                if h.agg.aggregate == computed {
                    h.born = born_at(now, 0);
                }
            }
        }
        if !issue {
            return;
        }
        self.disagree_since = None;
        self.last_issued = Some(now);
        let version = self.aggs.get(&self.region).map_or(0, |h| h.agg.version) + 1;
        let e = AggEntry {
            agg: RegionAggregate {
                region: self.region,
                aggregator: self.me,
                version,
                aggregate: computed,
            },
            born: born_at(now, 0),
            hot: self.config.aggregate_hot_sends,
        };
        self.stats.aggregates_issued += 1;
        self.insert_aggregate(e);
    }

    fn insert_aggregate(&mut self, e: AggEntry) -> bool {
        let region = e.agg.region;
        self.agg_digest = None;
        if !self.aggs.contains_key(&region) && self.aggs.len() >= self.config.regions_max {
            // Evict the oldest aggregate of another region, if older than this one.
            let victim = self
                .aggs
                .iter()
                .filter(|(r, _)| **r != self.region)
                .min_by_key(|(_, a)| a.born)
                .map(|(r, a)| (*r, a.born));
            match victim {
                Some((r, born)) if born < e.born && region != r => {
                    self.aggs.remove(&r);
                    self.hot_aggs.remove(&r);
                    self.stats.aggregates_overflow += 1;
                }
                _ if region == self.region => {
                    if let Some((r, _)) = victim {
                        self.aggs.remove(&r);
                        self.hot_aggs.remove(&r);
                    }
                    self.stats.aggregates_overflow += 1;
                }
                _ => {
                    self.stats.aggregates_overflow += 1;
                    return false;
                }
            }
            if self.aggs.len() >= self.config.regions_max {
                return false;
            }
        }
        self.aggs.insert(region, e);
        self.hot_changed(region);
        true
    }

    /// Keeps [`Health::hot_aggs`] in step with region `r`'s held aggregate.
    fn hot_changed(&mut self, r: Option<RegionId>) {
        if self.aggs.get(&r).is_some_and(|e| e.hot > 0) {
            self.hot_aggs.insert(r);
        } else {
            self.hot_aggs.remove(&r);
        }
    }

    fn merge_aggregate(&mut self, now: Instant, agg: RegionAggregate, age: u32) {
        if age >= ms(self.config.expiry) {
            return;
        }
        let born = born_at(now, age);
        if let Some(h) = self.aggs.get_mut(&agg.region) {
            let (new, old) = (
                (agg.version, agg.aggregator),
                (h.agg.version, h.agg.aggregator),
            );
            if new == old {
                if born > h.born {
                    h.born = born;
                }
                h.hot = h.hot.saturating_sub(1);
                self.hot_changed(agg.region);
            }
            if new <= old {
                return;
            }
        }
        let e = AggEntry {
            agg,
            born,
            hot: self.config.aggregate_hot_sends,
        };
        if self.insert_aggregate(e) {
            self.stats.aggregates_merged += 1;
        }
    }

    fn merge_record(&mut self, now: Instant, id: NodeId, rec: HealthRecord, age: u32) {
        if id == self.me {
            return;
        }
        let born = born_at(now, age);
        // A forgotten node stays out until membership readmits it ([`Self::readmit`]): a
        // copy from someone who has not heard yet (and vouched for it since) must not bring
        // it back.
        if age >= ms(self.config.expiry) || self.forgotten.contains_key(&id) {
            self.stats.records_stale += 1;
            return;
        }
        if rec.region != self.region {
            // Another zone: its aggregate tells us what we need; a member that moved away
            // leaves our table.
            if self
                .records
                .get(&id)
                .is_some_and(|o| rec.version > o.rec.version)
            {
                self.records.remove(&id);
                self.records_changed();
            }
            self.stats.records_other_region += 1;
            return;
        }
        if let Some(old) = self.records.get_mut(&id) {
            if rec.version == old.rec.version {
                if born > old.born {
                    // A younger copy: the node was alive more recently than we knew.
                    old.born = born;
                }
                // Whoever pushed it to us had it: the news is saturating, push it less.
                old.hot = old.hot.saturating_sub(1);
            }
            if rec.version <= old.rec.version {
                return;
            }
            *old = RecEntry {
                rec,
                born,
                hot: self.config.hot_sends,
            };
            self.stats.records_merged += 1;
            self.records_changed();
            return;
        }
        if self.records.len() >= self.config.records_max {
            let victim = self
                .records
                .iter()
                .map(|(vid, e)| (self.keep_rank(*vid, e.rec.region), *vid))
                .min();
            match victim {
                Some((rank, vid)) if rank < self.keep_rank(id, rec.region) => {
                    self.records.remove(&vid);
                    self.stats.records_overflow += 1;
                }
                _ => {
                    self.stats.records_overflow += 1;
                    return;
                }
            }
        }
        let hot = self.config.hot_sends;
        self.records.insert(id, RecEntry { rec, born, hot });
        self.stats.records_merged += 1;
        self.records_changed();
    }

    fn expire(&mut self, now: Instant) {
        let expiry = self.config.expiry;
        let me = self.me;
        let before = self.records.len();
        self.records
            .retain(|id, e| *id == me || !older_than(now, e.born, expiry));
        if self.records.len() != before {
            self.records_changed();
        }
        self.stats.records_expired += (before - self.records.len()) as u64;
        let before = self.aggs.len();
        self.aggs.retain(|_, e| !older_than(now, e.born, expiry));
        if self.aggs.len() != before {
            self.agg_digest = None;
            let aggs = &self.aggs;
            self.hot_aggs.retain(|r| aggs.contains_key(r));
        }
        self.stats.aggregates_expired += (before - self.aggs.len()) as u64;
        self.forgotten
            .retain(|_, f| !older_than(now, *f, expiry + expiry));
    }

    /// Our own record is always news as of now.
    fn refresh_own(&mut self, now: Instant) {
        if let Some(e) = self.records.get_mut(&self.me) {
            e.born = born_at(now, 0);
        }
    }

    /// The records changed (a record came, went or took a new version): our view of the
    /// region and the records' digest are computed again when next needed.
    fn records_changed(&mut self) {
        self.view = None;
        self.rec_digest = None;
    }

    /// XOR of the fingerprints of our region's records (id and version) and their count;
    /// computed once per change of the records, not per push.
    fn region_digest(&mut self) -> (u32, u16) {
        match self.rec_digest {
            Some(d) => d,
            None => *self.rec_digest.insert(self.compute_region_digest()),
        }
    }

    fn compute_region_digest(&self) -> (u32, u16) {
        let mut h = 0u32;
        for (id, e) in &self.records {
            h ^= crate::sync::fingerprint(*id, &[e.rec.version]);
        }
        (h, u16::try_from(self.records.len()).unwrap_or(u16::MAX))
    }

    /// XOR of the fingerprints of the held aggregates (region, version, aggregator) and
    /// their count; computed once per change of the aggregates, not per push or answer.
    fn aggregate_digest(&mut self) -> (u32, u16) {
        match self.agg_digest {
            Some(d) => d,
            None => *self.agg_digest.insert(self.compute_aggregate_digest()),
        }
    }

    fn compute_aggregate_digest(&self) -> (u32, u16) {
        let mut h = 0u32;
        for (r, e) in &self.aggs {
            let region = r.map_or(u64::MAX, |r| r.0);
            h ^= crate::sync::fingerprint(e.agg.aggregator, &[region, e.agg.version]);
        }
        (h, u16::try_from(self.aggs.len()).unwrap_or(u16::MAX))
    }

    fn is_mate(&self, id: Option<NodeId>) -> bool {
        id.is_some_and(|id| self.records.contains_key(&id) || self.mates.contains(&id))
    }

    /// Writes a repair answer: what a listing lacked (records to a mate, aggregates to
    /// anyone) and/or our own listings (`Some(answers)`: whether it answers the peer's).
    #[allow(clippy::too_many_arguments)]
    fn write_repair(
        &mut self,
        now: Instant,
        to: &Peer,
        budget: usize,
        listing: Option<bool>,
        owed: Vec<NodeId>,
        agg_listing: Option<bool>,
        owed_aggs: Vec<Option<RegionId>>,
        out: &mut Vec<u8>,
    ) {
        let budget = budget.min(self.config.payload_max);
        // Counts (4), the repair flags (1), the listings' counts (2).
        let mut used = 7;
        let mut aggs = Vec::new();
        let mut aggs_left = Vec::new();
        for r in owed_aggs {
            match self.aggs.get(&r) {
                Some(e)
                    if used + aggregate_len(&e.agg) <= budget && aggs.len() < PER_SECTION_MAX =>
                {
                    used += aggregate_len(&e.agg);
                    aggs.push(r);
                }
                Some(_) => aggs_left.push(r),
                None => {}
            }
        }
        if !aggs_left.is_empty() {
            self.aggs_owed.insert(to.addr, aggs_left);
        }
        let mut recs = Vec::new();
        let mut left = Vec::new();
        for id in owed {
            match self.records.get(&id) {
                Some(e) if used + record_len(&e.rec) <= budget && recs.len() < PER_SECTION_MAX => {
                    used += record_len(&e.rec);
                    recs.push(id);
                }
                Some(_) => left.push(id),
                None => {}
            }
        }
        let mut list: Vec<(NodeId, u64)> = Vec::new();
        let mut complete = true;
        if listing.is_some() {
            // From a rotating point: a listing cut short by the budget covers a different
            // stretch each time, so every record is eventually offered.
            let from = self.listing_cursor;
            for (id, e) in self.records.range(from..).chain(self.records.range(..from)) {
                if used + 16 > budget || list.len() >= PER_SECTION_MAX {
                    complete = false;
                    self.listing_cursor = *id;
                    break;
                }
                used += 16;
                list.push((*id, e.rec.version));
            }
        }
        if !left.is_empty() {
            self.records_owed.insert(to.addr, left);
        }
        let mut alist: Vec<AggKey> = Vec::new();
        let mut acomplete = true;
        if agg_listing.is_some() {
            let from = self.agg_listing_cursor;
            for (r, e) in self.aggs.range(from..).chain(self.aggs.range(..from)) {
                let len = region_len(*r) + 16;
                if used + len > budget || alist.len() >= PER_SECTION_MAX {
                    acomplete = false;
                    self.agg_listing_cursor = *r;
                    break;
                }
                used += len;
                alist.push((*r, e.agg.version, e.agg.aggregator));
            }
        }
        if recs.is_empty() && listing.is_none() && aggs.is_empty() && agg_listing.is_none() {
            return;
        }
        out.push(aggs.len() as u8);
        for r in &aggs {
            if let Some(e) = self.aggs.get(r) {
                encode_aggregate(e, now, out);
            }
        }
        out.push(recs.len() as u8);
        for id in &recs {
            if let Some(e) = self.records.get(id) {
                encode_record(*id, e, now, out);
            }
        }
        out.push(0);
        out.push(0);
        let mut flags = 0;
        if let Some(answers) = listing {
            flags |= REPAIR_LISTING | if complete { REPAIR_COMPLETE } else { 0 };
            flags |= if answers { REPAIR_ANSWER } else { 0 };
        }
        if let Some(answers) = agg_listing {
            flags |= REPAIR_AGG_LISTING | if acomplete { REPAIR_AGG_COMPLETE } else { 0 };
            flags |= if answers { REPAIR_AGG_ANSWER } else { 0 };
        }
        out.push(flags);
        if listing.is_some() {
            out.push(list.len() as u8);
            for (id, v) in &list {
                out.extend_from_slice(&id.0.to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        if agg_listing.is_some() {
            out.push(alist.len() as u8);
            for (r, v, a) in &alist {
                put_region(out, *r);
                out.extend_from_slice(&v.to_be_bytes());
                out.extend_from_slice(&a.0.to_be_bytes());
            }
        }
        self.stats.repairs_sent += 1;
        self.stats.entries_sent += (recs.len() + aggs.len()) as u64;
    }

    /// Rounds seen.
    pub fn rounds_seen(&self) -> u64 {
        self.rounds
    }

    /// Entries still owed pushes as news: (records, aggregates).
    pub fn news(&self) -> (usize, usize) {
        (
            self.records.values().filter(|e| e.hot > 0).count(),
            self.hot_aggs.len(),
        )
    }

    fn has_hot(&self) -> bool {
        !self.hot_aggs.is_empty() || self.records.values().any(|e| e.hot > 0)
    }

    /// Writes one push within `budget`: hot aggregates, hot records (the peer's region first),
    /// then the round-robin walk.
    fn write_push(&mut self, now: Instant, to: &Peer, budget: usize, out: &mut Vec<u8>) {
        // A cold push (every `cold_every` rounds) refreshes ages and walks the tables within
        // `cold_payload_max`; between them a push carries only what is new.
        let cold = self.rounds % u64::from(self.config.cold_every.max(1)) == 0;
        let cap = if cold {
            self.config.cold_payload_max.max(if self.has_hot() {
                self.config.payload_max
            } else {
                0
            })
        } else {
            self.config.payload_max
        };
        // The repair part at the end: flags, our aggregate digest and, to a mate, our region
        // digest.
        let budget = budget.min(cap).saturating_sub(13);
        if budget < 2 {
            return;
        }
        self.refresh_own(now);
        let start = out.len();
        let mut used = 4;
        // Records travel only between members of a region (we hold the peer's record, so it
        // is one of ours); our own record rides every push, which is how members find each
        // other. Aggregates go everywhere.
        let same = to
            .id
            .is_some_and(|id| self.records.contains_key(&id) || self.mates.contains(&id));
        let their_region = self.region;
        // Beats first (cold pushes), within a third of the budget: the ages of the aggregates,
        // round-robin (3 or 11 bytes each), keeping them alive everywhere without resending
        // them. Records need no beats: their members' liveness refreshes them
        // ([`Health::vouch`]).
        let beat_limit = if cold { budget / 3 } else { 0 };
        let node_beats: Vec<(i64, NodeId)> = Vec::new();
        let mut region_beats: Vec<(i64, Option<RegionId>)> = Vec::new();
        if cold && !self.aggs.is_empty() {
            // Walked lazily: a push costs the beats it carries, not the table.
            let mut last = None;
            for (r, e) in resume(&self.aggs, self.beat_cursor) {
                let len = region_len(*r) + 2;
                if used + len > beat_limit || region_beats.len() >= PER_SECTION_MAX {
                    break;
                }
                used += len;
                region_beats.push((e.born, *r));
                last = Some(*r);
            }
            if last.is_some() {
                self.beat_cursor = last;
            }
        }
        if used > budget {
            return;
        }
        // Choose aggregates.
        let mut hot: Vec<(u8, i64, Option<RegionId>)> = self
            .hot_aggs
            .iter()
            .filter_map(|r| self.aggs.get(r).map(|e| (e.hot, e.born, *r)))
            .collect();
        hot.sort_by(|a, b| b.cmp(a));
        let mut aggs: Vec<Option<RegionId>> = Vec::new();
        // Hot aggregates take at most half the budget when records are hot too, so a burst of
        // re-issued aggregates cannot starve the records they are computed from.
        let agg_limit = if self.records.values().any(|e| e.hot > 0) {
            used + (budget - used) / 2
        } else {
            budget
        };
        for (_, _, r) in hot {
            let len = aggregate_len(&self.aggs[&r].agg);
            if used + len > agg_limit || aggs.len() >= PER_SECTION_MAX {
                break;
            }
            used += len;
            aggs.push(r);
        }
        // Choose hot records, preferring the receiver's region.
        // (`their_region`: the peer's region if we hold its record, else ours, which the view
        // favours.)
        let mut hot: Vec<(u8, u8, i64, NodeId)> = self
            .records
            .iter()
            .filter(|(id, e)| {
                (same && e.hot > 0) || (**id == self.me && (same || self.mates.is_empty()))
            })
            .map(|(id, e)| {
                // Our own record rides every push: it tells the peer we are alive.
                let tier = if *id == self.me {
                    3
                } else if e.rec.region == their_region {
                    2
                } else {
                    0
                };
                (tier, e.hot, e.born, *id)
            })
            .collect();
        hot.sort_by(|a, b| b.cmp(a));
        let mut recs: Vec<NodeId> = Vec::new();
        // News takes at most half the budget: the walk that keeps every entry's age fresh
        // always gets the rest.
        let hot_limit = budget - (budget - used.min(budget)) / 2;
        for (_, _, _, id) in hot {
            if Some(id) == to.id {
                continue;
            }
            let len = record_len(&self.records[&id].rec);
            if used + len > hot_limit || recs.len() >= PER_SECTION_MAX {
                break;
            }
            used += len;
            recs.push(id);
        }
        // Round-robin: aggregates up to half of what is left, then records, then aggregates.
        let cold_aggs = |this: &Health, used: &mut usize, limit: usize, aggs: &mut Vec<_>| {
            let mut last = None;
            for (r, e) in resume(&this.aggs, this.agg_cursor) {
                let r = *r;
                if aggs.contains(&r) {
                    continue;
                }
                let len = aggregate_len(&e.agg);
                if *used + len > limit || aggs.len() >= PER_SECTION_MAX {
                    break;
                }
                *used += len;
                aggs.push(r);
                last = Some(r);
            }
            last
        };
        let half = used + (budget - used) / 2;
        if cold {
            if let Some(last) = cold_aggs(self, &mut used, half, &mut aggs) {
                self.agg_cursor = Some(last);
            }
        }
        if cold && same {
            // The walk visits the peer's region first.
            let mut order: Vec<NodeId> = match self.rec_cursor {
                Some(c) => self
                    .records
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .chain(self.records.range(..=c))
                    .map(|(id, _)| *id)
                    .collect(),
                None => self.records.keys().copied().collect(),
            };
            order.sort_by_key(|id| self.records[id].rec.region != their_region);
            for id in order {
                if recs.contains(&id) || Some(id) == to.id {
                    continue;
                }
                let len = record_len(&self.records[&id].rec);
                if used + len > budget || recs.len() >= PER_SECTION_MAX {
                    break;
                }
                used += len;
                recs.push(id);
                self.rec_cursor = Some(id);
            }
        }
        if cold {
            if let Some(last) = cold_aggs(self, &mut used, budget, &mut aggs) {
                self.agg_cursor = Some(last);
            }
        }
        if aggs.is_empty() && recs.is_empty() && node_beats.is_empty() && region_beats.is_empty() {
            return;
        }
        out.push(aggs.len() as u8);
        for r in &aggs {
            if let Some(e) = self.aggs.get_mut(r) {
                e.hot = e.hot.saturating_sub(1);
                encode_aggregate(e, now, out);
            }
            self.hot_changed(*r);
        }
        out.push(recs.len() as u8);
        for id in &recs {
            if let Some(e) = self.records.get_mut(id) {
                e.hot = e.hot.saturating_sub(1);
                encode_record(*id, e, now, out);
            }
        }
        out.push(node_beats.len() as u8);
        for (born, id) in &node_beats {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&beat_age(now, *born).to_be_bytes());
        }
        out.push(region_beats.len() as u8);
        for (born, r) in &region_beats {
            put_region(out, *r);
            out.extend_from_slice(&beat_age(now, *born).to_be_bytes());
        }
        // A peer whose aggregates (a mate whose records) differ answers with a listing (see
        // `handle`): the repair that makes the tails converge without walking everything.
        out.push(REPAIR_AGG_DIGEST | if same { REPAIR_DIGEST } else { 0 });
        if same {
            let (h, c) = self.region_digest();
            out.extend_from_slice(&h.to_be_bytes());
            out.extend_from_slice(&c.to_be_bytes());
        }
        let (h, c) = self.aggregate_digest();
        out.extend_from_slice(&h.to_be_bytes());
        out.extend_from_slice(&c.to_be_bytes());
        self.stats.entries_sent += (aggs.len() + recs.len()) as u64;
        self.stats.pushes += 1;
        if cold {
            self.stats.cold_pushes += 1;
        }
        if out.len() - start > budget + 13 {
            self.stats.budget_exceeded += 1;
            out.truncate(start);
        }
    }
}

impl GossipObject for Health {
    fn tag(&self) -> u8 {
        HEALTH_TAG
    }
    fn name(&self) -> &'static str {
        "health"
    }
    fn view(&self) -> PeerView {
        if self.records.is_empty() && self.aggs.is_empty() {
            return PeerView::Nobody;
        }
        let cold = self.rounds % u64::from(self.config.cold_every.max(1)) == 0;
        if !cold && !self.has_hot() {
            return PeerView::Nobody;
        }
        let share = self.config.region_share;
        if self.tell_aggregator {
            if let Some(a) = self.aggregator().filter(|a| *a != self.me) {
                return PeerView::Favour {
                    ids: vec![a],
                    share: 1.0,
                };
            }
        }
        if !self.records.contains_key(&self.me) || !share.is_finite() || share <= 0.0 {
            return PeerView::Uniform;
        }
        // A rotating window of at most 16 members: over rounds every member is favoured
        // alike, and a round costs O(16), not O(region).
        let (ids, n): (Box<dyn Iterator<Item = &NodeId> + '_>, usize) = if self.mates.is_empty() {
            (Box::new(self.records.keys()), self.records.len())
        } else {
            (Box::new(self.mates.iter()), self.mates.len())
        };
        let skip = (self.rounds as usize).wrapping_mul(16) % n.max(1);
        let ids: Vec<NodeId> = ids
            .skip(skip)
            .take(16)
            .copied()
            .filter(|id| *id != self.me)
            .collect();
        PeerView::Favour {
            ids,
            share: share.min(1.0),
        }
    }
    fn on_round(&mut self, now: Instant, _out: &mut Outbox<'_>) {
        self.rounds += 1;
        // Expiry is measured in tens of seconds: walking the tables every cold round is
        // plenty.
        if self.rounds % u64::from(self.config.cold_every.max(1)) == 1 {
            self.expire(now);
        }
        self.refresh_own(now);
        self.settle(now);
    }
    fn gossip_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        if self.owed.add(peer.addr) {
            out.initiate(peer);
        }
    }
    fn forget_peer(&mut self, addr: std::net::SocketAddr) {
        self.owed.take(addr);
        self.listing_owed.take(addr);
        self.listing_answers.take(addr);
        self.records_owed.remove(&addr);
        self.agg_listing_owed.take(addr);
        self.agg_listing_answers.take(addr);
        self.aggs_owed.remove(&addr);
    }
    fn write(
        &mut self,
        now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        if priority != Priority::Bulk {
            return;
        }
        if self.owed.take(to.addr) {
            if to.id.is_some() && to.id == self.aggregator() {
                self.tell_aggregator = false;
            }
            self.write_push(now, to, budget, out);
            return;
        }
        let answers = self.listing_answers.take(to.addr);
        let listing = self.listing_owed.take(to.addr).then_some(answers);
        let owed = self.records_owed.remove(&to.addr).unwrap_or_default();
        let answers = self.agg_listing_answers.take(to.addr);
        let agg_listing = self.agg_listing_owed.take(to.addr).then_some(answers);
        let owed_aggs = self.aggs_owed.remove(&to.addr).unwrap_or_default();
        if listing.is_some() || !owed.is_empty() || agg_listing.is_some() || !owed_aggs.is_empty() {
            self.write_repair(now, to, budget, listing, owed, agg_listing, owed_aggs, out);
        }
    }
    fn has_more(&self, to: &Peer) -> bool {
        self.listing_owed.contains(to.addr)
            || self.records_owed.contains_key(&to.addr)
            || self.agg_listing_owed.contains(to.addr)
            || self.aggs_owed.contains_key(&to.addr)
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
        let (aggs, recs, node_beats, region_beats, repair) = decode(payload)?;
        for (id, age) in node_beats {
            let born = born_at(now, age);
            if let Some(e) = self.records.get_mut(&id) {
                e.born = e.born.max(born);
            }
        }
        for (r, age) in region_beats {
            let born = born_at(now, age);
            if let Some(e) = self.aggs.get_mut(&r) {
                e.born = e.born.max(born);
            }
        }
        for (id, rec, age) in recs {
            self.merge_record(now, id, rec, age);
        }
        for (agg, age) in aggs {
            self.merge_aggregate(now, agg, age);
        }
        if let Some(d) = repair.agg_digest {
            if d != self.aggregate_digest() && self.agg_listing_owed.add(from.addr) {
                out.send_to(from.addr);
            }
        }
        if let Some((mut list, complete)) = repair.agg_listing {
            let span = list.first().zip(list.last()).map(|(f, l)| (f.0, l.0));
            list.sort_by_key(|x| x.0);
            let owed: Vec<Option<RegionId>> = self
                .aggs
                .iter()
                .filter(|(r, _)| complete || span.is_some_and(|(f, l)| covers(&f, &l, *r)))
                .filter(|(r, e)| match list.binary_search_by_key(*r, |x| x.0) {
                    Ok(i) => (e.agg.version, e.agg.aggregator) > (list[i].1, list[i].2),
                    Err(_) => true,
                })
                .map(|(r, _)| *r)
                .take(OWED_RECORDS_MAX)
                .collect();
            let room =
                self.aggs_owed.contains_key(&from.addr) || self.aggs_owed.len() < REPAIR_PEERS_MAX;
            if !owed.is_empty() && room {
                self.aggs_owed.insert(from.addr, owed);
                out.send_to(from.addr);
            }
            // The listing shows something we lack or hold older: our own listing lets the
            // peer send it (the repair works both ways), marked as an answer. A listing that
            // answers ours is not answered with another: the peer has had ours and sends what
            // it lacked, so the conversation ends (two nodes that each refuse what the other
            // lists would otherwise trade listings for ever).
            let behind = list.iter().any(|(r, v, a)| {
                self.aggs
                    .get(r)
                    .is_none_or(|e| (e.agg.version, e.agg.aggregator) < (*v, *a))
            });
            if behind && !repair.agg_listing_answers && self.agg_listing_owed.add(from.addr) {
                self.agg_listing_answers.add(from.addr);
                out.send_to(from.addr);
            }
        }
        if self.is_mate(from.id) {
            if let Some(d) = repair.digest {
                if d != self.region_digest() && self.listing_owed.add(from.addr) {
                    out.send_to(from.addr);
                }
            }
            if let Some((mut list, complete)) = repair.listing {
                let span = list.first().zip(list.last()).map(|(f, l)| (f.0, l.0));
                list.sort_by_key(|x| x.0);
                let owed: Vec<NodeId> = self
                    .records
                    .iter()
                    .filter(|(id, _)| {
                        Some(**id) != from.id
                            && (complete || span.is_some_and(|(f, l)| covers(&f, &l, *id)))
                    })
                    .filter(|(id, e)| match list.binary_search_by_key(*id, |x| x.0) {
                        Ok(i) => e.rec.version > list[i].1,
                        Err(_) => true,
                    })
                    .map(|(id, _)| *id)
                    .take(OWED_RECORDS_MAX)
                    .collect();
                let room = self.records_owed.contains_key(&from.addr)
                    || self.records_owed.len() < REPAIR_PEERS_MAX;
                if !owed.is_empty() && room {
                    self.records_owed.insert(from.addr, owed);
                    out.send_to(from.addr);
                }
                let behind = list.iter().any(|(id, v)| {
                    *id != self.me && self.records.get(id).is_none_or(|e| e.rec.version < *v)
                });
                if behind && !repair.listing_answers && self.listing_owed.add(from.addr) {
                    self.listing_answers.add(from.addr);
                    out.send_to(from.addr);
                }
            }
        }
        self.settle(now);
        Ok(())
    }
    fn check_invariants(&self) {
        assert!(self.records.len() <= self.config.records_max.max(1));
        if let Some(d) = self.rec_digest {
            assert_eq!(d, self.compute_region_digest(), "stale record digest");
        }
        if let Some(d) = self.agg_digest {
            assert_eq!(d, self.compute_aggregate_digest(), "stale aggregate digest");
        }
        assert!(
            self.aggs
                .iter()
                .all(|(r, e)| (e.hot > 0) == self.hot_aggs.contains(r)),
            "hot aggregates out of step"
        );
        assert!(self.hot_aggs.iter().all(|r| self.aggs.contains_key(r)));
        assert!(self.aggs.len() <= self.config.regions_max.max(1));
        assert!(self.forgotten.len() <= FORGOTTEN_MAX);
        assert!(self.mates.len() <= 4 * self.config.records_max.max(1));
        assert!(self.records_owed.len() <= REPAIR_PEERS_MAX);
        assert!(self
            .listing_answers
            .iter()
            .all(|a| self.listing_owed.contains(a)));
        assert!(self
            .agg_listing_answers
            .iter()
            .all(|a| self.agg_listing_owed.contains(a)));
        assert!(self
            .records_owed
            .values()
            .all(|v| v.len() <= OWED_RECORDS_MAX));
        assert!(self.aggs_owed.len() <= REPAIR_PEERS_MAX);
        assert!(self.aggs_owed.values().all(|v| v.len() <= OWED_RECORDS_MAX));
        assert!(self.owed.len() <= self.owed.max());
        if let Some(e) = self.records.get(&self.me) {
            assert_eq!(e.rec.version, self.version);
            assert_eq!(e.rec.region, self.region);
        }
        for (r, e) in &self.aggs {
            assert_eq!(*r, e.agg.region);
            assert!(e.agg.aggregate.is_valid());
            assert!(aggregate_len(&e.agg) <= AGGREGATE_LEN_MAX);
        }
        for e in self.records.values() {
            assert!(e.rec.health.is_finite());
            assert!(record_len(&e.rec) <= RECORD_LEN_MAX);
        }
        assert_eq!(
            self.stats.budget_exceeded, 0,
            "a payload exceeded its budget"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::Peers;
    use std::net::SocketAddr;

    fn h(v: f32) -> NodeHealth {
        NodeHealth {
            load: v,
            recv_rate: 10.0 * v,
            loss: 100.0 - v,
            repairs: v,
            backlog: 2.0 * v,
            lag: 3.0,
            lateral: 4.0 * v,
            peer: v + 1.0,
            sender: 5.0,
        }
    }

    fn peer(i: u64) -> Peer {
        Peer {
            id: Some(NodeId(i)),
            addr: SocketAddr::from(([10, 0, 0, i as u8], 7000)),
        }
    }

    fn push(from: &mut Health, to: &mut Health, now: Instant, budget: usize) -> usize {
        let mut peers = Peers::scratch(now);
        from.gossip_with(now, &peer(to.me.0), &mut Outbox::new(&mut peers, 0, now));
        deliver(from, to, now, budget)
    }

    /// Delivers what `from` owes `to` (a repair answer), if anything; the payload's length.
    fn answer(from: &mut Health, to: &mut Health, now: Instant) -> usize {
        match from.has_more(&peer(to.me.0)) {
            true => deliver(from, to, now, 1000),
            false => 0,
        }
    }

    /// Writes what `from` has for `to` within `budget` and hands it to `to`; its length.
    fn deliver(from: &mut Health, to: &mut Health, now: Instant, budget: usize) -> usize {
        let mut peers = Peers::scratch(now);
        let mut out = Vec::new();
        from.write(now, &peer(to.me.0), Priority::Bulk, budget, &mut out);
        assert!(out.len() <= budget);
        if !out.is_empty() {
            to.handle(
                now,
                &peer(from.me.0),
                Priority::Bulk,
                &out,
                &mut Outbox::new(&mut peers, 0, now),
            )
            .unwrap();
        }
        out.len()
    }

    #[test]
    fn a_repair_conversation_ends_even_when_each_side_refuses_what_the_other_lists() {
        // Seed 62119's shape: a and b are told they are mates (by the subscription records)
        // while their health records still name different regions, so each refuses the
        // records the other lists, and each listing shows the other behind. Without the
        // answer flag they traded listings for ever.
        let now = Instant(1_000_000_000);
        let cfg = HealthConfig::default();
        let mut a = Health::new(NodeId(1), cfg.clone());
        let mut b = Health::new(NodeId(2), cfg.clone());
        let mut c = Health::new(NodeId(3), cfg.clone());
        let mut d = Health::new(NodeId(4), cfg);
        for (n, r) in [(&mut a, 5), (&mut b, 6), (&mut c, 5), (&mut d, 6)] {
            n.set_region(now, Some(RegionId(r)));
            n.set_local(now, h(r as f32));
        }
        push(&mut c, &mut a, now, 1000);
        push(&mut d, &mut b, now, 1000);
        a.set_mate(NodeId(2), true);
        b.set_mate(NodeId(1), true);
        for round in 0..3 {
            let t = now + cfg_gap() * (round + 1);
            push(&mut a, &mut b, t, 1000);
            let mut datagrams = 0;
            loop {
                let sent = answer(&mut b, &mut a, t) + answer(&mut a, &mut b, t);
                if sent == 0 || datagrams >= 100 {
                    break;
                }
                datagrams += 1;
            }
            assert!(
                datagrams <= 4,
                "round {round}: the repair went on for {datagrams} exchanges"
            );
            assert!(a.stats().repairs_sent >= 1 && b.stats().repairs_sent >= 1);
            a.check_invariants();
            b.check_invariants();
        }
    }

    #[test]
    fn aggregates_fold_in_any_grouping_to_the_same_result() {
        let vals: Vec<(NodeId, NodeHealth)> =
            (1..=9).map(|i| (NodeId(i), h(i as f32 % 4.0))).collect();
        let all = Aggregate::of(vals.iter().map(|(i, h)| (*i, h))).unwrap();
        let mut parts = Aggregate::of(vals[..4].iter().map(|(i, h)| (*i, h))).unwrap();
        parts.merge(&Aggregate::of(vals[4..].iter().map(|(i, h)| (*i, h))).unwrap());
        assert_eq!(all, parts);
        assert_eq!(all.count, 9);
        assert_eq!(all.metric(Metric::Load).max, 3.0);
        assert_eq!(all.metric(Metric::Load).worst, NodeId(3));
        assert_eq!(all.metric(Metric::Lag).worst, NodeId(1));
    }

    fn cfg_gap() -> Duration {
        HealthConfig::default().aggregate_every
    }

    #[test]
    fn two_members_of_a_region_agree_and_an_outsider_learns_both_aggregates() {
        let now = Instant(1_000_000_000);
        let cfg = HealthConfig::default();
        let mut a = Health::new(NodeId(1), cfg.clone());
        let mut b = Health::new(NodeId(2), cfg.clone());
        let mut c = Health::new(NodeId(3), cfg);
        a.set_region(now, Some(RegionId(5)));
        b.set_region(now, Some(RegionId(5)));
        c.set_region(now, Some(RegionId(6)));
        a.set_local(now, h(1.0));
        b.set_local(now, h(2.0));
        c.set_local(now, h(7.0));
        push(&mut a, &mut b, now, 1000);
        // b is not its region's aggregator (a has the lower id): it waits for a, who
        // re-issues once it learns b's record.
        assert_eq!(
            b.region_aggregate(Some(RegionId(5)))
                .unwrap()
                .aggregate
                .count,
            1
        );
        // (An aggregator re-issues at most every quarter `repair_after`.)
        let later = now + cfg_gap();
        push(&mut b, &mut a, later, 1000);
        push(&mut a, &mut b, later, 1000);
        push(&mut b, &mut c, later, 1000);
        push(&mut c, &mut a, later, 1000);
        let agg = b.region_aggregate(Some(RegionId(5))).unwrap();
        assert_eq!(agg.aggregate.count, 2);
        assert_eq!(agg.aggregator, NodeId(1));
        assert!(
            c.records().all(|(id, _)| id == NodeId(3)),
            "records stay in their region"
        );
        let cluster = a.cluster().unwrap();
        assert_eq!(cluster.count, 3);
        assert_eq!(cluster.metric(Metric::Load).worst, NodeId(3));
        assert_eq!(cluster.metric(Metric::Load).sum, 10.0);
        a.check_invariants();
        b.check_invariants();
        c.check_invariants();
    }

    #[test]
    fn digests_and_hot_aggregates_follow_every_change_of_the_tables() {
        let now = Instant(1_000_000_000);
        let cfg = HealthConfig::default();
        let mut a = Health::new(NodeId(1), cfg.clone());
        let mut b = Health::new(NodeId(2), cfg.clone());
        let mut c = Health::new(NodeId(3), cfg.clone());
        a.set_region(now, Some(RegionId(5)));
        b.set_region(now, Some(RegionId(5)));
        c.set_region(now, Some(RegionId(6)));
        a.set_local(now, h(1.0));
        b.set_local(now, h(2.0));
        c.set_local(now, h(7.0));
        push(&mut b, &mut a, now, 1000);
        // Cached digests (pushes and answers reuse them) ...
        let (records, aggs) = (a.region_digest(), a.aggregate_digest());
        assert_eq!(records.1, 2);
        // ... follow a new version of a record ...
        let later = now + cfg_gap();
        b.set_local(later, h(3.0));
        push(&mut b, &mut a, later, 1000);
        assert_ne!(a.region_digest(), records, "b's new version");
        a.check_invariants();
        // ... and a region's aggregate arriving.
        push(&mut c, &mut a, later, 1000);
        assert_ne!(a.aggregate_digest(), aggs, "region 6's aggregate");
        a.check_invariants();
        // Hot aggregates cool down push by push until none is news.
        assert!(a.news().1 > 0);
        for _ in 0..=2 * cfg.aggregate_hot_sends {
            push(&mut a, &mut b, later, 1000);
            a.check_invariants();
        }
        assert_eq!(a.news().1, 0, "every aggregate pushed hot_sends times");
        // Expiry drops what nobody vouched for; the digests follow.
        let (records, aggs) = (a.region_digest(), a.aggregate_digest());
        a.expire(later + cfg.expiry + cfg.expiry);
        assert_eq!(a.region_digest().1, 1, "our own record only");
        assert_ne!(a.aggregate_digest(), aggs);
        assert_ne!(a.region_digest(), records);
        a.check_invariants();
    }

    #[test]
    fn a_node_holds_only_records_of_its_own_region_within_the_cap_and_pushes_fit_their_budget() {
        let now = Instant(1_000_000_000);
        let cfg = HealthConfig {
            records_max: 5,
            ..HealthConfig::default()
        };
        let mut me = Health::new(NodeId(1000), cfg.clone());
        me.set_region(now, Some(RegionId(1)));
        me.set_local(now, h(0.0));
        for i in 0..40u64 {
            let mut other = Health::new(NodeId(i + 1), cfg.clone());
            other.set_region(now, Some(RegionId(i % 4)));
            other.set_local(now, h(i as f32));
            for budget in [1, 2, 60, 100, 300] {
                push(&mut other, &mut me, now, budget);
            }
        }
        assert_eq!(me.len(), 5);
        let own = me
            .records()
            .filter(|(_, r)| r.region == Some(RegionId(1)))
            .count();
        assert_eq!(own, 5, "only members of our region are held");
        assert!(me.stats().records_other_region > 0);
        assert!(
            me.stats().records_overflow > 0,
            "the cap was reached and counted"
        );
        me.check_invariants();
    }

    #[test]
    fn records_expire_and_a_forgotten_node_is_not_resurrected() {
        let cfg = HealthConfig::default();
        let t0 = Instant(1_000_000_000);
        let mut a = Health::new(NodeId(1), cfg.clone());
        let mut b = Health::new(NodeId(2), cfg.clone());
        let mut c = Health::new(NodeId(3), cfg.clone());
        a.set_local(t0, h(1.0));
        b.set_local(t0, h(2.0));
        push(&mut a, &mut b, t0, 1000);
        push(&mut a, &mut c, t0, 1000);
        assert!(b.record(NodeId(1)).is_some());
        b.forget(t0 + Duration::from_secs(1), NodeId(1));
        push(&mut c, &mut b, t0 + Duration::from_secs(2), 1000);
        assert!(b.record(NodeId(1)).is_none(), "an old copy came back");
        let late = t0 + cfg.expiry + Duration::from_secs(1);
        let mut peers = Peers::scratch(late);
        c.on_round(late, &mut Outbox::new(&mut peers, 0, late));
        assert!(c.record(NodeId(1)).is_none());
        assert_eq!(c.stats().records_expired, 1);
    }
}
