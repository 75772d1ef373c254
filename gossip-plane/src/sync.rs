//! Anti-entropy by range reconciliation over a 16-ary prefix tree of XOR fingerprints (a
//! Merkle tree over the key space), shared by the membership and subscription objects.
//!
//! # The table
//!
//! A [`Table`] keeps one record per node, ordered by the key [`mix`]`(id)` (a bijection, so the
//! id is recovered with [`unmix`]). A [`Range`] is a node of the prefix tree: the keys sharing
//! the top `4 × depth` bits. Every range has a [`Sum`] (XOR of its records' fingerprints and
//! their count). The sums of depths 0–2 (273 of them) are kept incrementally; deeper ones are
//! computed from the records they hold (a few at any table size this plane is built for).
//! Records live in two sorted column vectors, a main run and a small staging run merged into
//! it every [`STAGE_MAX`] insertions: about 8 bytes of key plus the owner's packed record per
//! entry, and O(√-ish) insertion cost instead of a memmove of the whole table.
//!
//! # The exchange
//!
//! Messages are lists of items about ranges ([`Item`]). The initiator sends the root's sum.
//! A receiver compares each range sum with its own: equal ranges end there; a range one side
//! barely holds is streamed whole (`Want`, answered by the records, then a *verify* sum); a
//! range both sides hold few records of is settled by a complete listing (`Have`, answered by
//! exactly the records the listing lacks or holds older); anything else descends one level
//! (`Children`: the sixteen child sums). Equal replicas cost one sum per exchange, whatever
//! their size; one differing record costs O(depth) small items and the record itself.
//!
//! Everything a peer is owed waits in a bounded per-peer work queue and is written as budget
//! allows (nothing is dropped for not fitting: it waits, or the range is split; overflow of
//! the queue itself is counted). A joiner that lacks whole ranges asks different peers for
//! different ranges (at most [`WANTS_PER_PEER`] each, none twice at once) and says so
//! ([`Syncer::take_backlog`]), so that its owner opens exchanges with more peers.
//!
//! # Wire format (bulk payload)
//!
//! ```text
//! flags u8 (0) | items u8 | item* | rumors u8 | records u16 | record*
//! item   = op<<5 | depth u8 | prefix (⌈depth/2⌉ bytes, unused low nibble 0) | body
//!   HASH (0), VERIFY (1):  hash u32 | count u32
//!   CHILDREN (2):          mask u16 | (hash u32 | count u32) per set bit
//!   WANT (3):              -
//!   HAVE (4):              n u8    (the next n records are our complete set of the range)
//! ```
//!
//! Records follow all items: first the `HAVE` listings in item order, then `rumors` records
//! pushed as news, then the rest (answers). Records are encoded by the owning object (its
//! [`Codec`]) and include the id.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId};

use crate::wire::Reader;

/// Deepest range (a single key).
pub const DEPTH_MAX: u8 = 16;
/// Ranges where both sides hold at most this many records are settled by a listing.
pub const LEAF: u32 = 8;
/// Staging insertions before they are merged into the main run.
pub const STAGE_MAX: usize = 128;
/// Ranges a peer is asked to stream at once.
pub const WANTS_PER_PEER: usize = 4;
/// A range asked of one peer is not asked of another for this long.
pub const WANT_TTL: Duration = Duration::from_secs(2);
/// Records of a `HAVE` answer beyond this are not sent (counted; a later exchange finds them).
pub const IDS_MAX: usize = 4 * LEAF as usize;

const INCREMENTAL_DEPTH: u8 = 2;
const SUMS: usize = 1 + 16 + 256;

const OP_HASH: u8 = 0;
const OP_VERIFY: u8 = 1;
const OP_CHILDREN: u8 = 2;
const OP_WANT: u8 = 3;
const OP_HAVE: u8 = 4;

/// Bytes of the payload's fixed fields (flags, items, rumors, records).
pub const OVERHEAD: usize = 5;

const M1: u64 = 0xbf58_476d_1ce4_e5b9;
const M2: u64 = 0x94d0_49bb_1331_11eb;

/// The multiplicative inverse of an odd `a` modulo 2^64 (Newton's iteration).
const fn inverse(a: u64) -> u64 {
    let mut x = a; // correct to 3 bits for odd a
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

const M1_INV: u64 = inverse(M1);
const M2_INV: u64 = inverse(M2);

/// A bijective mix of a node id (splitmix64's finaliser): the table key.
pub fn mix(id: NodeId) -> u64 {
    let mut z = id.0;
    z = (z ^ (z >> 30)).wrapping_mul(M1);
    z = (z ^ (z >> 27)).wrapping_mul(M2);
    z ^ (z >> 31)
}

/// The id whose [`mix`] is `key`.
pub fn unmix(key: u64) -> NodeId {
    let mut z = key;
    z ^= (z >> 31) ^ (z >> 62);
    z = z.wrapping_mul(M2_INV);
    z ^= (z >> 27) ^ (z >> 54);
    z = z.wrapping_mul(M1_INV);
    z ^= (z >> 30) ^ (z >> 60);
    NodeId(z)
}

/// A fingerprint of one record version (mixes `id` with the record's version words).
pub fn fingerprint(id: NodeId, words: &[u64]) -> u32 {
    let mut h = mix(id);
    for w in words {
        h = mix(NodeId(h ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    }
    (h >> 32) as u32
}

/// What a stored record must offer to be reconciled.
pub trait SyncRecord: Copy {
    /// Fingerprint of this version of the record (see [`fingerprint`]).
    fn fingerprint(&self, id: NodeId) -> u32;
}

/// How the owner encodes its records (ids included).
pub trait Codec<R> {
    /// Bytes [`Codec::encode`] writes.
    fn encoded_len(&self, id: NodeId, r: &R) -> usize;
    /// Appends the record of `id`.
    fn encode(&self, id: NodeId, r: &R, out: &mut Vec<u8>);
}

/// XOR of fingerprints and number of records of a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sum {
    /// XOR of the fingerprints.
    pub hash: u32,
    /// Number of records.
    pub count: u32,
}

impl Sum {
    fn add(&mut self, fp: u32) {
        self.hash ^= fp;
        self.count += 1;
    }
    fn sub(&mut self, fp: u32) {
        self.hash ^= fp;
        self.count -= 1;
    }
}

/// A node of the 16-ary prefix tree over the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    // Ordered by prefix, then depth: a range's descendants follow it contiguously.
    prefix: u64,
    depth: u8,
}

impl Range {
    /// The whole key space.
    pub const ROOT: Range = Range {
        prefix: 0,
        depth: 0,
    };

    /// The range of `depth` holding `key`.
    pub fn of(key: u64, depth: u8) -> Range {
        let depth = depth.min(DEPTH_MAX);
        Range {
            prefix: key & Self::mask(depth),
            depth,
        }
    }

    fn mask(depth: u8) -> u64 {
        if depth == 0 {
            0
        } else {
            u64::MAX << (64 - 4 * u32::from(depth))
        }
    }

    /// Depth (0 = root, 16 = one key).
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// First key of the range.
    pub fn lo(&self) -> u64 {
        self.prefix
    }

    /// Last key of the range (inclusive).
    pub fn hi(&self) -> u64 {
        self.prefix | !Self::mask(self.depth)
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: u64) -> bool {
        key & Self::mask(self.depth) == self.prefix
    }

    /// Whether `other` lies inside this range.
    pub fn covers(&self, other: &Range) -> bool {
        other.depth >= self.depth && self.contains(other.prefix)
    }

    /// Child `i` (0..16); `None` at the deepest level.
    pub fn child(&self, i: u8) -> Option<Range> {
        if self.depth >= DEPTH_MAX || i >= 16 {
            return None;
        }
        let shift = 60 - 4 * u32::from(self.depth);
        Some(Range {
            prefix: self.prefix | (u64::from(i) << shift),
            depth: self.depth + 1,
        })
    }

    fn child_index(&self, key: u64) -> usize {
        let shift = 60 - 4 * u32::from(self.depth);
        ((key >> shift) & 0xf) as usize
    }

    fn sum_index(&self) -> Option<usize> {
        match self.depth {
            0 => Some(0),
            1 => Some(1 + (self.prefix >> 60) as usize),
            2 => Some(17 + (self.prefix >> 56) as usize),
            _ => None,
        }
    }

    fn encoded_len(&self) -> usize {
        1 + usize::from(self.depth).div_ceil(2)
    }

    fn encode(&self, op: u8, out: &mut Vec<u8>) {
        out.push(op << 5 | self.depth);
        let bytes = usize::from(self.depth).div_ceil(2);
        out.extend_from_slice(&self.prefix.to_be_bytes()[..bytes]);
    }

    fn decode(r: &mut Reader<'_>) -> Result<(u8, Range), WireError> {
        let b = r.u8()?;
        let (op, depth) = (b >> 5, b & 0x1f);
        if depth > DEPTH_MAX {
            return Err(WireError::Malformed);
        }
        let n = usize::from(depth).div_ceil(2);
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(r.bytes(n)?);
        let prefix = u64::from_be_bytes(a);
        if prefix & !Self::mask(depth) != 0 {
            return Err(WireError::Malformed);
        }
        Ok((op, Range { prefix, depth }))
    }
}

/// One record per node in key order, with incremental range sums. See the module docs.
#[derive(Debug, Clone)]
pub struct Table<R> {
    keys: Vec<u64>,
    recs: Vec<R>,
    skeys: Vec<u64>,
    srecs: Vec<R>,
    sums: Box<[Sum; SUMS]>,
}

impl<R: SyncRecord> Default for Table<R> {
    fn default() -> Self {
        Table {
            keys: Vec::new(),
            recs: Vec::new(),
            skeys: Vec::new(),
            srecs: Vec::new(),
            sums: Box::new([Sum::default(); SUMS]),
        }
    }
}

/// Where a key sits: the main run or the staging run.
#[derive(Debug, Clone, Copy)]
enum Pos {
    Main(usize),
    Stage(usize),
}

impl<R: SyncRecord> Table<R> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.keys.len() + self.skeys.len()
    }

    /// No record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, key: u64) -> Option<Pos> {
        if let Ok(i) = self.keys.binary_search(&key) {
            return Some(Pos::Main(i));
        }
        self.skeys.binary_search(&key).ok().map(Pos::Stage)
    }

    /// The record of `id`.
    pub fn get(&self, id: NodeId) -> Option<&R> {
        match self.find(mix(id))? {
            Pos::Main(i) => Some(&self.recs[i]),
            Pos::Stage(i) => Some(&self.srecs[i]),
        }
    }

    fn account(&mut self, key: u64, fp: u32, add: bool) {
        for d in 0..=INCREMENTAL_DEPTH {
            if let Some(i) = Range::of(key, d).sum_index() {
                if add {
                    self.sums[i].add(fp);
                } else {
                    self.sums[i].sub(fp);
                }
            }
        }
    }

    /// Inserts or replaces the record of `id`.
    pub fn insert(&mut self, id: NodeId, r: R) {
        let key = mix(id);
        match self.find(key) {
            Some(pos) => {
                let old = match pos {
                    Pos::Main(i) => std::mem::replace(&mut self.recs[i], r),
                    Pos::Stage(i) => std::mem::replace(&mut self.srecs[i], r),
                };
                self.account(key, old.fingerprint(id), false);
            }
            None => {
                let at = self.skeys.partition_point(|k| *k < key);
                self.skeys.insert(at, key);
                self.srecs.insert(at, r);
                if self.skeys.len() >= STAGE_MAX {
                    self.merge();
                }
            }
        }
        self.account(key, r.fingerprint(id), true);
    }

    /// Merges the staging run into the main run (exact-size vectors: no slack is kept).
    fn merge(&mut self) {
        let n = self.keys.len() + self.skeys.len();
        let mut keys = Vec::with_capacity(n);
        let mut recs = Vec::with_capacity(n);
        let (mut i, mut j) = (0, 0);
        while i < self.keys.len() || j < self.skeys.len() {
            let take_main =
                j >= self.skeys.len() || (i < self.keys.len() && self.keys[i] < self.skeys[j]);
            if take_main {
                keys.push(self.keys[i]);
                recs.push(self.recs[i]);
                i += 1;
            } else {
                keys.push(self.skeys[j]);
                recs.push(self.srecs[j]);
                j += 1;
            }
        }
        self.keys = keys;
        self.recs = recs;
        self.skeys.clear();
        self.srecs.clear();
    }

    /// Changes the record of `id` in place (keeping the sums right); `None` if absent.
    pub fn update<T>(&mut self, id: NodeId, f: impl FnOnce(&mut R) -> T) -> Option<T> {
        let key = mix(id);
        let pos = self.find(key)?;
        let r = match pos {
            Pos::Main(i) => &mut self.recs[i],
            Pos::Stage(i) => &mut self.srecs[i],
        };
        let before = r.fingerprint(id);
        let out = f(r);
        let after = r.fingerprint(id);
        if before != after {
            self.account(key, before, false);
            self.account(key, after, true);
        }
        Some(out)
    }

    /// Removes the record of `id`.
    pub fn remove(&mut self, id: NodeId) -> Option<R> {
        let key = mix(id);
        let r = match self.find(key)? {
            Pos::Main(i) => {
                self.keys.remove(i);
                self.recs.remove(i)
            }
            Pos::Stage(i) => {
                self.skeys.remove(i);
                self.srecs.remove(i)
            }
        };
        self.account(key, r.fingerprint(id), false);
        if self.keys.capacity() > 2 * self.keys.len() + STAGE_MAX {
            self.keys.shrink_to_fit();
            self.recs.shrink_to_fit();
        }
        Some(r)
    }

    /// The `i`-th record in storage order (not key order): O(1) random access for sampling.
    pub fn nth(&self, i: usize) -> Option<(NodeId, &R)> {
        if i < self.keys.len() {
            Some((unmix(self.keys[i]), &self.recs[i]))
        } else {
            let j = i - self.keys.len();
            self.skeys.get(j).map(|k| (unmix(*k), &self.srecs[j]))
        }
    }

    /// All records, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &R)> + '_ {
        self.keyed(Range::ROOT).map(|(k, r)| (unmix(k), r))
    }

    /// The records of `range`, in key order.
    pub fn range(&self, range: Range) -> impl Iterator<Item = (NodeId, &R)> + '_ {
        self.keyed(range).map(|(k, r)| (unmix(k), r))
    }

    /// The records of `range` from key `from` on, with their keys, in key order.
    fn keyed_from(&self, range: Range, from: u64) -> Merged<'_, R> {
        let lo = from.max(range.lo());
        let hi = range.hi();
        let a0 = self.keys.partition_point(|k| *k < lo);
        let a1 = self.keys.partition_point(|k| *k <= hi);
        let b0 = self.skeys.partition_point(|k| *k < lo);
        let b1 = self.skeys.partition_point(|k| *k <= hi);
        Merged {
            a: (&self.keys[a0..a1.max(a0)], &self.recs[a0..a1.max(a0)]),
            b: (&self.skeys[b0..b1.max(b0)], &self.srecs[b0..b1.max(b0)]),
        }
    }

    fn keyed(&self, range: Range) -> Merged<'_, R> {
        self.keyed_from(range, range.lo())
    }

    /// The sum of `range`.
    pub fn sum(&self, range: Range) -> Sum {
        if let Some(i) = range.sum_index() {
            return self.sums[i];
        }
        let mut s = Sum::default();
        for (k, r) in self.keyed(range) {
            s.add(r.fingerprint(unmix(k)));
        }
        s
    }

    /// The sum of the whole table.
    pub fn root(&self) -> Sum {
        self.sums[0]
    }

    /// The sums of the sixteen children of `range` (`range` above the deepest level).
    pub fn children(&self, range: Range) -> [Sum; 16] {
        let mut out = [Sum::default(); 16];
        if range.depth() < INCREMENTAL_DEPTH {
            for (i, s) in out.iter_mut().enumerate() {
                if let Some(c) = range.child(i as u8) {
                    *s = self.sum(c);
                }
            }
            return out;
        }
        for (k, r) in self.keyed(range) {
            out[range.child_index(k)].add(r.fingerprint(unmix(k)));
        }
        out
    }

    /// Bytes of memory the record columns hold (capacity, not length).
    pub fn memory_bytes(&self) -> usize {
        (self.keys.capacity() + self.skeys.capacity()) * 8
            + (self.recs.capacity() + self.srecs.capacity()) * std::mem::size_of::<R>()
            + std::mem::size_of::<[Sum; SUMS]>()
    }

    /// Panics if the runs are unsorted or a sum disagrees with the records (O(N)).
    pub fn check_invariants(&self) {
        assert_eq!(self.keys.len(), self.recs.len());
        assert_eq!(self.skeys.len(), self.srecs.len());
        assert!(
            self.keys.windows(2).all(|w| w[0] < w[1]),
            "main run unsorted"
        );
        assert!(
            self.skeys.windows(2).all(|w| w[0] < w[1]),
            "staging unsorted"
        );
        assert!(self.skeys.len() < STAGE_MAX);
        let mut sums = [Sum::default(); SUMS];
        for (k, r) in self.keyed(Range::ROOT) {
            assert!(
                self.keys.binary_search(&k).is_err() || self.skeys.binary_search(&k).is_err(),
                "a key in both runs"
            );
            let fp = r.fingerprint(unmix(k));
            for d in 0..=INCREMENTAL_DEPTH {
                if let Some(i) = Range::of(k, d).sum_index() {
                    sums[i].add(fp);
                }
            }
        }
        assert_eq!(&sums[..], &self.sums[..], "incremental range sums drifted");
    }
}

/// Key-ordered merge of the two runs over a key interval.
#[derive(Debug)]
struct Merged<'a, R> {
    a: (&'a [u64], &'a [R]),
    b: (&'a [u64], &'a [R]),
}

impl<'a, R> Iterator for Merged<'a, R> {
    type Item = (u64, &'a R);
    fn next(&mut self) -> Option<Self::Item> {
        let take_a = match (self.a.0.first(), self.b.0.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if take_a { &mut self.a } else { &mut self.b };
        let k = side.0[0];
        let r = &side.1[0];
        side.0 = &side.0[1..];
        side.1 = &side.1[1..];
        Some((k, r))
    }
}

/// One item of a reconciliation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The sender's sum of a range (`verify`: it just streamed the range; do not ask again).
    Hash {
        /// The range.
        range: Range,
        /// The sender's sum.
        sum: Sum,
        /// The range was just streamed: answer only by descending or listing.
        verify: bool,
    },
    /// The sender's sums of the sixteen children of a range.
    Children {
        /// The parent range.
        range: Range,
        /// Child sums.
        sums: [Sum; 16],
    },
    /// Send me every record of this range.
    Want(Range),
    /// The next `n` records of the payload are the sender's complete set of the range.
    Have {
        /// The range.
        range: Range,
        /// Records listed.
        n: u8,
    },
}

/// A parsed bulk payload; the owner decodes `records` records from `reader`: the `HAVE`
/// listings first (see [`Bulk::haves`]), then `rumors` news records, then answers.
#[derive(Debug, Clone)]
pub struct Bulk<'a> {
    /// Items, in order.
    pub items: Vec<Item>,
    /// News records (after the listings).
    pub rumors: u8,
    /// All records that follow.
    pub records: u16,
    /// The encoded records.
    pub reader: Reader<'a>,
}

impl Bulk<'_> {
    /// The `HAVE` items: (range, records listed), in order.
    pub fn haves(&self) -> impl Iterator<Item = (Range, u8)> + '_ {
        self.items.iter().filter_map(|i| match i {
            Item::Have { range, n } => Some((*range, *n)),
            _ => None,
        })
    }
}

/// Parses a bulk payload.
pub fn parse(payload: &[u8]) -> Result<Bulk<'_>, WireError> {
    let mut r = Reader::new(payload);
    if r.u8()? != 0 {
        return Err(WireError::Malformed);
    }
    let n = r.u8()?;
    let mut items = Vec::with_capacity(usize::from(n));
    let mut listed = 0usize;
    for _ in 0..n {
        let (op, range) = Range::decode(&mut r)?;
        let item = match op {
            OP_HASH | OP_VERIFY => Item::Hash {
                range,
                sum: Sum {
                    hash: r.u32()?,
                    count: r.u32()?,
                },
                verify: op == OP_VERIFY,
            },
            OP_CHILDREN => {
                if range.depth() >= DEPTH_MAX {
                    return Err(WireError::Malformed);
                }
                let mask = r.u16()?;
                let mut sums = [Sum::default(); 16];
                for (i, s) in sums.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        *s = Sum {
                            hash: r.u32()?,
                            count: r.u32()?,
                        };
                    }
                }
                Item::Children { range, sums }
            }
            OP_WANT => Item::Want(range),
            OP_HAVE => {
                let n = r.u8()?;
                listed += usize::from(n);
                Item::Have { range, n }
            }
            _ => return Err(WireError::Malformed),
        };
        items.push(item);
    }
    let rumors = r.u8()?;
    let records = r.u16()?;
    if listed + usize::from(rumors) > usize::from(records) {
        return Err(WireError::Malformed);
    }
    Ok(Bulk {
        items,
        rumors,
        records,
        reader: r,
    })
}

/// What we owe a peer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    Hash(Range),
    Verify(Range),
    Children(Range),
    Want(Range),
    Have(Range),
    /// Every record of the range from key `next` on, then a verify sum.
    Send {
        range: Range,
        next: u64,
    },
    /// These records (answer to a listing).
    Ids(Vec<NodeId>),
}

/// Counters of one synchroniser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStats {
    /// Exchanges started (root sums sent).
    pub exchanges: u64,
    /// Range items sent (sums, children, wants, listings).
    pub items_sent: u64,
    /// Records sent (listings, streams, answers).
    pub records_sent: u64,
    /// Writes that left work for a later datagram (the budget ran out).
    pub deferred: u64,
    /// Work items dropped because a peer's queue was full (a later exchange redoes them).
    pub work_overflow: u64,
    /// Peers not served because the pending table was full.
    pub pending_overflow: u64,
    /// Ranges not asked of a peer because another peer streams them or this one has
    /// enough to do (asked later, of someone).
    pub wants_deferred: u64,
    /// Records of a listing's answer left out beyond [`IDS_MAX`].
    pub ids_trimmed: u64,
    /// Per-peer states dropped because the peer went quiet.
    pub peers_forgotten: u64,
}

/// Per-peer exchange state of one replicated table. See the module docs.
#[derive(Debug, Clone)]
pub struct Syncer {
    pending: BTreeMap<SocketAddr, VecDeque<Work>>,
    wanted: BTreeMap<Range, (SocketAddr, Instant)>,
    pending_max: usize,
    work_max: usize,
    backlog: bool,
    stats: SyncStats,
}

impl Syncer {
    /// A synchroniser owing at most `pending_max` peers at a time, `work_max` items each.
    pub fn new(pending_max: usize, work_max: usize) -> Syncer {
        Syncer {
            pending: BTreeMap::new(),
            wanted: BTreeMap::new(),
            pending_max,
            work_max: work_max.max(4),
            backlog: false,
            stats: SyncStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Peers we owe something.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether anything is owed to `peer`.
    pub fn owes(&self, peer: SocketAddr) -> bool {
        self.pending.get(&peer).is_some_and(|q| !q.is_empty())
    }

    /// Ranges we asked others to stream that are not known to be done.
    pub fn wanted_len(&self) -> usize {
        self.wanted.len()
    }

    /// Whether some range we lack was not asked of anyone since the last call: the owner
    /// should open exchanges with more peers.
    pub fn take_backlog(&mut self) -> bool {
        std::mem::take(&mut self.backlog)
    }

    fn queue(&mut self, peer: SocketAddr) -> Option<&mut VecDeque<Work>> {
        if !self.pending.contains_key(&peer) && self.pending.len() >= self.pending_max {
            self.stats.pending_overflow += 1;
            return None;
        }
        Some(self.pending.entry(peer).or_default())
    }

    fn push(&mut self, peer: SocketAddr, w: Work) -> bool {
        self.push_at(peer, w, false)
    }

    /// Queues `w` for `peer`; `front` puts it first (descents go depth-first, so the
    /// frontier stays at most sixteen ranges per level instead of growing breadth-first).
    fn push_at(&mut self, peer: SocketAddr, w: Work, front: bool) -> bool {
        let max = self.work_max;
        let Some(q) = self.queue(peer) else {
            return false;
        };
        if q.contains(&w) {
            return true;
        }
        if q.len() >= max {
            self.stats.work_overflow += 1;
            return false;
        }
        if front {
            q.push_front(w);
        } else {
            q.push_back(w);
        }
        true
    }

    /// Starts an exchange with `peer`: our next payload to it carries our root sum.
    pub fn start(&mut self, peer: SocketAddr) {
        if self.push(peer, Work::Hash(Range::ROOT)) {
            self.stats.exchanges += 1;
        }
    }

    /// Queues the records of `ids` for `peer` (the answer to its listing).
    pub fn send_ids(&mut self, peer: SocketAddr, mut ids: Vec<NodeId>) {
        if ids.is_empty() {
            return;
        }
        if ids.len() > IDS_MAX {
            self.stats.ids_trimmed += (ids.len() - IDS_MAX) as u64;
            ids.truncate(IDS_MAX);
        }
        self.push(peer, Work::Ids(ids));
    }

    /// Handles the items of a payload from `peer` (after the owner merged its records).
    pub fn handle<R: SyncRecord>(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        items: &[Item],
        table: &Table<R>,
    ) {
        for item in items {
            match *item {
                Item::Hash { range, sum, verify } => {
                    if verify && self.wanted.get(&range).is_some_and(|(p, _)| *p == peer) {
                        // The end of a stream we asked for: if we held back other ranges,
                        // ask this peer again (its answer lets us want the next ones).
                        self.wanted.remove(&range);
                        if self.backlog {
                            self.push(peer, Work::Hash(Range::ROOT));
                        }
                    }
                    self.compare(now, peer, range, sum, verify, table);
                }
                Item::Children { range, sums } => {
                    for (i, s) in sums.iter().enumerate() {
                        if let Some(c) = range.child(i as u8) {
                            self.compare(now, peer, c, *s, false, table);
                        }
                    }
                }
                Item::Want(range) => {
                    self.push(
                        peer,
                        Work::Send {
                            range,
                            next: range.lo(),
                        },
                    );
                }
                Item::Have { .. } => {}
            }
        }
    }

    fn compare<R: SyncRecord>(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        range: Range,
        theirs: Sum,
        verify: bool,
        table: &Table<R>,
    ) {
        let mine = table.sum(range);
        if mine == theirs {
            return;
        }
        let small = mine.count <= LEAF && theirs.count <= LEAF;
        let deepest = range.depth() >= DEPTH_MAX;
        if verify {
            // Never stream a range twice in one exchange: list or descend.
            let w = if small || deepest || mine.count == 0 || theirs.count == 0 {
                Work::Have(range)
            } else {
                Work::Children(range)
            };
            self.push_at(peer, w, true);
            return;
        }
        if small || deepest {
            // A listing settles it in one and a half round trips (an empty one asks for
            // everything the peer has there).
            self.push_at(peer, Work::Have(range), true);
        } else if mine.count.saturating_mul(4) <= theirs.count {
            self.want(now, peer, range);
        } else if theirs.count.saturating_mul(4) <= mine.count {
            self.push_at(
                peer,
                Work::Send {
                    range,
                    next: range.lo(),
                },
                true,
            );
        } else {
            self.push_at(peer, Work::Children(range), true);
        }
    }

    fn want(&mut self, now: Instant, peer: SocketAddr, range: Range) {
        // Someone else streams this range (or an overlapping one): ask them, not everyone.
        let busy = |(p, t): &(SocketAddr, Instant)| *p != peer && now < *t + WANT_TTL;
        let mut overlap = false;
        for d in 0..range.depth() {
            if self.wanted.get(&Range::of(range.lo(), d)).is_some_and(busy) {
                overlap = true;
                break;
            }
        }
        if !overlap {
            let end = Range {
                prefix: range.hi(),
                depth: DEPTH_MAX,
            };
            overlap = self.wanted.range(range..=end).any(|(_, v)| busy(v));
        }
        let mine = self
            .wanted
            .values()
            .filter(|(p, t)| *p == peer && now < *t + WANT_TTL)
            .count();
        if overlap || mine >= WANTS_PER_PEER {
            self.stats.wants_deferred += 1;
            self.backlog = true;
            return;
        }
        if self.push_at(peer, Work::Want(range), true) {
            self.wanted.insert(range, (peer, now));
        }
    }

    /// Drops expired wants (call every round).
    pub fn expire(&mut self, now: Instant) {
        self.wanted.retain(|_, (_, t)| now < *t + WANT_TTL);
    }

    /// Writes what we owe `peer` (and the news `rumors`) within `budget` bytes; nothing if
    /// there is nothing to say or nothing fits. Returns how many of `rumors` were written
    /// (a prefix of the slice).
    #[allow(clippy::too_many_arguments)]
    pub fn write<R: SyncRecord, C: Codec<R>>(
        &mut self,
        peer: SocketAddr,
        table: &Table<R>,
        codec: &C,
        rumors: &[NodeId],
        budget: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        if budget <= OVERHEAD {
            if self.owes(peer) || !rumors.is_empty() {
                self.stats.deferred += 1;
            }
            return 0;
        }
        let mut used = OVERHEAD;
        let mut items: Vec<u8> = Vec::new();
        let mut n_items = 0u8;
        let mut haves: Vec<u8> = Vec::new();
        let mut n_haves = 0usize;
        let mut news: Vec<u8> = Vec::new();
        let mut n_news = 0usize;
        let mut answers: Vec<u8> = Vec::new();
        let mut n_answers = 0usize;
        let records_max = usize::from(u16::MAX);
        // News first, within half the budget: it is what spreads changes quickly.
        let news_limit = used + (budget - used) / 2;
        for id in rumors {
            let Some(r) = table.get(*id) else { continue };
            let len = codec.encoded_len(*id, r);
            if used + len > news_limit || n_news >= usize::from(u8::MAX) {
                break;
            }
            codec.encode(*id, r, &mut news);
            used += len;
            n_news += 1;
        }
        let mut deferred = false;
        if let Some(mut q) = self.pending.remove(&peer) {
            while let Some(w) = q.front_mut() {
                if n_items == u8::MAX {
                    deferred = true;
                    break;
                }
                match w {
                    Work::Hash(_) | Work::Verify(_) => {
                        let (range, op) = match w {
                            Work::Verify(r) => (*r, OP_VERIFY),
                            Work::Hash(r) => (*r, OP_HASH),
                            _ => unreachable!("matched above"),
                        };
                        let len = range.encoded_len() + 8;
                        if used + len > budget {
                            deferred = true;
                            break;
                        }
                        let s = table.sum(range);
                        range.encode(op, &mut items);
                        items.extend_from_slice(&s.hash.to_be_bytes());
                        items.extend_from_slice(&s.count.to_be_bytes());
                        used += len;
                        n_items += 1;
                    }
                    Work::Children(range) => {
                        let sums = table.children(*range);
                        let mask: u16 = sums
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.count > 0)
                            .fold(0, |m, (i, _)| m | (1 << i));
                        let len = range.encoded_len() + 2 + 8 * mask.count_ones() as usize;
                        if used + len > budget {
                            deferred = true;
                            break;
                        }
                        range.encode(OP_CHILDREN, &mut items);
                        items.extend_from_slice(&mask.to_be_bytes());
                        for s in sums.iter().filter(|s| s.count > 0) {
                            items.extend_from_slice(&s.hash.to_be_bytes());
                            items.extend_from_slice(&s.count.to_be_bytes());
                        }
                        used += len;
                        n_items += 1;
                    }
                    Work::Want(range) => {
                        let len = range.encoded_len();
                        if used + len > budget {
                            deferred = true;
                            break;
                        }
                        range.encode(OP_WANT, &mut items);
                        used += len;
                        n_items += 1;
                    }
                    Work::Have(range) => {
                        let range = *range;
                        let count = table.sum(range).count;
                        if count > 2 * LEAF && range.depth() < DEPTH_MAX {
                            // It grew since we decided: descend instead of listing.
                            *w = Work::Children(range);
                            continue;
                        }
                        let mut len = range.encoded_len() + 1;
                        for (id, r) in table.range(range) {
                            len += codec.encoded_len(id, r);
                        }
                        if used + len > budget
                            || n_haves + n_news + n_answers + count as usize > records_max
                        {
                            if range.depth() < DEPTH_MAX && used == OVERHEAD + news.len() {
                                // It would not fit even alone: split it, so that a small
                                // budget still makes progress.
                                *w = Work::Children(range);
                                continue;
                            }
                            deferred = true;
                            break;
                        }
                        range.encode(OP_HAVE, &mut items);
                        items.push(count as u8);
                        for (id, r) in table.range(range) {
                            codec.encode(id, r, &mut haves);
                        }
                        used += len;
                        n_items += 1;
                        n_haves += count as usize;
                    }
                    Work::Send { range, next } => {
                        let range = *range;
                        let mut done = true;
                        for (k, r) in table.keyed_from(range, *next) {
                            let id = unmix(k);
                            let len = codec.encoded_len(id, r);
                            if used + len > budget || n_haves + n_news + n_answers >= records_max {
                                *next = k;
                                done = false;
                                break;
                            }
                            codec.encode(id, r, &mut answers);
                            used += len;
                            n_answers += 1;
                        }
                        if !done {
                            deferred = true;
                            break;
                        }
                        // The stream is complete: let the peer check and settle the rest.
                        *w = Work::Verify(range);
                        continue;
                    }
                    Work::Ids(ids) => {
                        let mut sent = 0;
                        let mut full = false;
                        for id in ids.iter() {
                            let Some(r) = table.get(*id) else {
                                sent += 1;
                                continue;
                            };
                            let len = codec.encoded_len(*id, r);
                            if used + len > budget || n_haves + n_news + n_answers >= records_max {
                                full = true;
                                break;
                            }
                            codec.encode(*id, r, &mut answers);
                            used += len;
                            n_answers += 1;
                            sent += 1;
                        }
                        ids.drain(..sent);
                        if full {
                            deferred = true;
                            break;
                        }
                    }
                }
                q.pop_front();
            }
            if !q.is_empty() {
                self.pending.insert(peer, q);
            }
        }
        if deferred {
            self.stats.deferred += 1;
        }
        if n_items == 0 && n_haves + n_news + n_answers == 0 {
            return 0;
        }
        self.stats.items_sent += u64::from(n_items);
        self.stats.records_sent += (n_haves + n_news + n_answers) as u64;
        let start = out.len();
        out.push(0);
        out.push(n_items);
        out.extend_from_slice(&items);
        out.push(n_news as u8);
        out.extend_from_slice(&((n_haves + n_news + n_answers) as u16).to_be_bytes());
        out.extend_from_slice(&haves);
        out.extend_from_slice(&news);
        out.extend_from_slice(&answers);
        debug_assert_eq!(out.len() - start, used);
        debug_assert!(out.len() - start <= budget);
        n_news
    }

    /// Forgets everything owed to or asked of `peer` (it went quiet).
    pub fn forget(&mut self, peer: SocketAddr) {
        if self.pending.remove(&peer).is_some() {
            self.stats.peers_forgotten += 1;
        }
        self.wanted.retain(|_, (p, _)| *p != peer);
    }

    /// Panics if a bound is broken.
    pub fn check_invariants(&self) {
        assert!(self.pending.len() <= self.pending_max);
        assert!(self.pending.values().all(|q| q.len() <= self.work_max));
        assert!(self.wanted.len() <= self.pending_max * WANTS_PER_PEER);
    }
}

/// The ids of our records in `range` that a peer's complete listing of it lacks or holds in
/// an older version (`newer(ours, theirs)`), for [`Syncer::send_ids`].
pub fn listing_answer<R: SyncRecord, W>(
    table: &Table<R>,
    range: Range,
    listing: &[(NodeId, W)],
    newer: impl Fn(&R, &W) -> bool,
) -> Vec<NodeId> {
    table
        .range(range)
        .filter(|(id, r)| match listing.iter().find(|(l, _)| l == id) {
            Some((_, w)) => newer(r, w),
            None => true,
        })
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct V(u64);
    impl SyncRecord for V {
        fn fingerprint(&self, id: NodeId) -> u32 {
            fingerprint(id, &[self.0])
        }
    }
    struct C;
    impl Codec<V> for C {
        fn encoded_len(&self, _: NodeId, _: &V) -> usize {
            16
        }
        fn encode(&self, id: NodeId, r: &V, out: &mut Vec<u8>) {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&r.0.to_be_bytes());
        }
    }

    struct Replica {
        addr: SocketAddr,
        table: Table<V>,
        sync: Syncer,
    }

    impl Replica {
        fn new(i: u8) -> Replica {
            Replica {
                addr: SocketAddr::from(([10, 0, 0, i], 1)),
                table: Table::default(),
                sync: Syncer::new(16, 256),
            }
        }
        /// Merges a payload from `from` the way an owner does; returns records merged.
        fn receive(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) -> usize {
            let b = parse(payload).unwrap();
            let mut r = b.reader.clone();
            let mut merged = 0;
            let mut decode = |t: &mut Table<V>| {
                let id = NodeId(r.u64().unwrap());
                let v = V(r.u64().unwrap());
                if t.get(id).is_none_or(|o| o.0 < v.0) {
                    t.insert(id, v);
                    merged += 1;
                }
                (id, v)
            };
            let mut read = 0;
            for (range, n) in b.haves().collect::<Vec<_>>() {
                let listing: Vec<(NodeId, V)> = (0..n).map(|_| decode(&mut self.table)).collect();
                read += usize::from(n);
                let ids = listing_answer(&self.table, range, &listing, |a, b| a.0 > b.0);
                self.sync.send_ids(from, ids);
            }
            for _ in read..usize::from(b.records) {
                decode(&mut self.table);
            }
            self.sync.handle(now, from, &b.items, &self.table);
            merged
        }
    }

    /// Runs exchanges between two replicas until nothing is owed; returns the datagrams.
    fn reconcile(a: &mut Replica, b: &mut Replica, budget: usize) -> usize {
        let now = Instant(1);
        a.sync.start(b.addr);
        let mut datagrams = 0;
        for _ in 0..100_000 {
            let mut moved = false;
            for dir in 0..2 {
                let (x, y) = if dir == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                if x.sync.owes(y.addr) {
                    let mut out = Vec::new();
                    x.sync.write(y.addr, &x.table, &C, &[], budget, &mut out);
                    assert!(out.len() <= budget);
                    if !out.is_empty() {
                        datagrams += 1;
                        y.receive(now, x.addr, &out);
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        datagrams
    }

    #[test]
    fn unmix_inverts_mix() {
        for x in [0u64, 1, 42, u64::MAX, 0x9e37_79b9_7f4a_7c15] {
            assert_eq!(unmix(mix(NodeId(x))), NodeId(x));
        }
    }

    #[test]
    fn ranges_encode_and_decode_at_every_depth() {
        for d in 0..=DEPTH_MAX {
            let r = Range::of(0xdead_beef_cafe_f00d, d);
            let mut out = Vec::new();
            r.encode(OP_WANT, &mut out);
            assert_eq!(out.len(), r.encoded_len());
            let (op, back) = Range::decode(&mut Reader::new(&out)).unwrap();
            assert_eq!((op, back), (OP_WANT, r));
            assert!(r.contains(0xdead_beef_cafe_f00d));
            assert!(Range::ROOT.covers(&r));
        }
        // A prefix with bits below its depth is malformed.
        assert!(Range::decode(&mut Reader::new(&[1, 0x0f])).is_err());
    }

    #[test]
    fn equal_replicas_cost_one_root_sum() {
        let mut a = Replica::new(1);
        let mut b = Replica::new(2);
        for i in 0..5000u64 {
            a.table.insert(NodeId(i), V(1));
            b.table.insert(NodeId(i), V(1));
        }
        assert_eq!(reconcile(&mut a, &mut b, 1200), 1);
        assert_eq!(a.sync.stats().items_sent, 1);
    }

    #[test]
    fn one_changed_record_costs_a_few_small_datagrams() {
        let mut a = Replica::new(1);
        let mut b = Replica::new(2);
        for i in 0..5000u64 {
            a.table.insert(NodeId(i), V(1));
            b.table.insert(NodeId(i), V(1));
        }
        b.table.insert(NodeId(77), V(2));
        let d = reconcile(&mut a, &mut b, 1200);
        assert_eq!(a.table.get(NodeId(77)), Some(&V(2)));
        assert_eq!(a.table.root(), b.table.root());
        assert!(d <= 8, "{d} datagrams for one record");
        let records = a.sync.stats().records_sent + b.sync.stats().records_sent;
        assert!(records <= 2 * u64::from(LEAF), "{records} records sent");
    }

    #[test]
    fn a_small_budget_defers_and_still_converges() {
        let mut a = Replica::new(1);
        let mut b = Replica::new(2);
        for i in 0..700u64 {
            a.table.insert(NodeId(i * 3), V(i % 5));
            b.table.insert(NodeId(i * 3 + 1), V(1));
        }
        let mut exchanges = 0;
        while a.table.root() != b.table.root() {
            reconcile(&mut a, &mut b, 150);
            a.sync.expire(Instant(u64::MAX / 2));
            b.sync.expire(Instant(u64::MAX / 2));
            exchanges += 1;
            assert!(exchanges <= 16, "no convergence");
        }
        assert_eq!(a.table.len(), 1400);
        assert!(a.sync.stats().deferred + b.sync.stats().deferred > 0);
        a.table.check_invariants();
    }

    #[test]
    fn staging_merges_keep_sums_and_order() {
        let mut t: Table<V> = Table::default();
        for i in 0..1000u64 {
            t.insert(NodeId(i * 7919), V(i));
        }
        t.update(NodeId(7919), |v| v.0 = 99);
        t.remove(NodeId(0));
        t.check_invariants();
        let keys: Vec<u64> = t.iter().map(|(id, _)| mix(id)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys.len(), 999);
        let total: u32 = (0..16)
            .map(|i| t.sum(Range::ROOT.child(i).unwrap()).count)
            .sum();
        assert_eq!(total, 999);
        let deep = Range::of(mix(NodeId(7919)), 5);
        assert_eq!(t.sum(deep).count, t.range(deep).count() as u32);
    }

    #[test]
    fn a_joiner_asks_different_peers_for_different_ranges() {
        let now = Instant(1);
        let mut j = Replica::new(9);
        let mut full: Table<V> = Table::default();
        for i in 0..4000u64 {
            full.insert(NodeId(i), V(1));
        }
        let peers: Vec<SocketAddr> = (1..=4)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1)))
            .collect();
        // Every peer answers the joiner's root with its children.
        for p in &peers {
            j.sync.handle(
                now,
                *p,
                &[Item::Children {
                    range: Range::ROOT,
                    sums: full.children(Range::ROOT),
                }],
                &j.table,
            );
        }
        assert_eq!(
            j.sync.wanted_len(),
            16,
            "each range asked of exactly one peer"
        );
        for p in &peers {
            let n = j.sync.pending.get(p).map_or(0, |q| q.len());
            assert_eq!(n, WANTS_PER_PEER);
        }
        // A fifth peer gets nothing to stream: every range is taken.
        let fifth = SocketAddr::from(([10, 0, 0, 5], 1));
        j.sync.handle(
            now,
            fifth,
            &[Item::Children {
                range: Range::ROOT,
                sums: full.children(Range::ROOT),
            }],
            &j.table,
        );
        assert!(!j.sync.owes(fifth));
        assert!(j.sync.take_backlog());
        // After the time-to-live the ranges may be asked again.
        j.sync.expire(now + WANT_TTL);
        assert_eq!(j.sync.wanted_len(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// No silent cliff: tables from 1 to 20,000 entries, with any overlap, converge
        /// through budget-bounded datagrams.
        #[test]
        fn tables_of_one_to_twenty_thousand_entries_converge(
            n in 1usize..20_000,
            shared in 0.0f64..1.0,
            only_a in 0.0f64..1.0,
            budget in 200usize..1400,
            seed in any::<u64>(),
        ) {
            let mut rng = qs_transport::Prng::new(seed);
            let mut a = Replica::new(1);
            let mut b = Replica::new(2);
            for i in 0..n as u64 {
                let id = NodeId(rng.next_u64());
                if rng.chance(shared) {
                    a.table.insert(id, V(i % 3));
                    b.table.insert(id, V(i % 3 + u64::from(rng.chance(0.1))));
                } else if rng.chance(only_a) {
                    a.table.insert(id, V(1));
                } else {
                    b.table.insert(id, V(1));
                }
            }
            let union = {
                let mut u: BTreeMap<NodeId, u64> = BTreeMap::new();
                for (id, v) in a.table.iter().chain(b.table.iter()) {
                    let e = u.entry(id).or_insert(v.0);
                    *e = (*e).max(v.0);
                }
                u
            };
            // Exchanges repeat (as rounds would) until both replicas agree.
            let mut exchanges = 0;
            while a.table.root() != b.table.root() || a.table.len() != union.len() {
                reconcile(&mut a, &mut b, budget);
                a.sync.expire(Instant(u64::MAX / 2));
                b.sync.expire(Instant(u64::MAX / 2));
                exchanges += 1;
                prop_assert!(exchanges <= 16, "no convergence after {exchanges} exchanges");
            }
            for (id, v) in &union {
                prop_assert_eq!(a.table.get(*id).map(|r| r.0), Some(*v));
                prop_assert_eq!(b.table.get(*id).map(|r| r.0), Some(*v));
            }
            a.table.check_invariants();
            b.table.check_invariants();
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
