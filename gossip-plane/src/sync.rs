//! Bucketed anti-entropy (push-pull), shared by the membership and subscription objects.
//!
//! A [`Table`] keeps one record per node, ordered by a bijective mix of the node id so that
//! each of `2^L` buckets is a contiguous key range. A digest at level `L` is one 32-bit XOR of
//! record fingerprints per bucket (maintained incrementally on [`FINE_BITS`] fine buckets and
//! folded on demand), so two replicas find the buckets they disagree on without listing their
//! contents. An exchange: the initiator sends its digest asking for a reply; the peer merges,
//! answers with the records of every bucket that differs (as many as fit, starting at a random
//! bucket) plus its own digest; the initiator answers with its records for the buckets that
//! still differ. Equal replicas cost one digest per exchange.
//!
//! Bulk payload: `flags u8 (1 = digest, 2 = reply wanted) | [level u8 | 2^level × (hash u32,
//! count u16)] |
//! count u16 | count × record` (records are encoded by the owning object).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use qs_transport::wire::WireError;
use qs_transport::{NodeId, Prng};

use crate::wire::Reader;

/// Fine buckets kept incrementally (`2^FINE_BITS`); digests use at most this many.
pub const FINE_BITS: u32 = 10;
/// Target records per digest bucket: the level is chosen so buckets hold about this many.
pub const RECORDS_PER_BUCKET: usize = 16;

const FLAG_DIGEST: u8 = 1;
const FLAG_REPLY: u8 = 2;

/// A bijective mix of a node id (splitmix64's finaliser): table key and bucket position.
pub fn mix(id: NodeId) -> u64 {
    let mut z = id.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fingerprint of one record version (mixes `id` with the record's version words).
pub fn fingerprint(id: NodeId, words: &[u64]) -> u32 {
    let mut h = mix(id);
    for w in words {
        h = mix(NodeId(h ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    }
    (h >> 32) as u32
}

/// What a record must offer to be synchronised.
pub trait SyncRecord {
    /// Fingerprint of this version of the record (see [`fingerprint`]).
    fn fingerprint(&self, id: NodeId) -> u32;
    /// Bytes [`SyncRecord::encode`] writes.
    fn encoded_len(&self) -> usize;
    /// Appends the record (its id included) to `out`.
    fn encode(&self, id: NodeId, out: &mut Vec<u8>);
}

/// One record per node, ordered by [`mix`] of the id, with incremental bucket hashes.
#[derive(Debug, Clone)]
pub struct Table<R> {
    map: BTreeMap<u64, (NodeId, R)>,
    fine: Vec<u32>,
    counts: Vec<u32>,
}

impl<R: SyncRecord> Default for Table<R> {
    fn default() -> Self {
        Table {
            map: BTreeMap::new(),
            fine: vec![0; 1 << FINE_BITS],
            counts: vec![0; 1 << FINE_BITS],
        }
    }
}

fn fine_of(key: u64) -> usize {
    (key >> (64 - FINE_BITS)) as usize
}

impl<R: SyncRecord> Table<R> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// No record.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// The record of `id`.
    pub fn get(&self, id: NodeId) -> Option<&R> {
        self.map.get(&mix(id)).map(|(_, r)| r)
    }
    /// Inserts or replaces the record of `id`.
    pub fn insert(&mut self, id: NodeId, r: R) {
        let key = mix(id);
        let f = r.fingerprint(id);
        match self.map.insert(key, (id, r)) {
            Some((_, old)) => self.fine[fine_of(key)] ^= old.fingerprint(id),
            None => self.counts[fine_of(key)] += 1,
        }
        self.fine[fine_of(key)] ^= f;
    }
    /// Changes the record of `id` in place (keeping the bucket hash right); `None` if absent.
    pub fn update<T>(&mut self, id: NodeId, f: impl FnOnce(&mut R) -> T) -> Option<T> {
        let key = mix(id);
        let (_, r) = self.map.get_mut(&key)?;
        let before = r.fingerprint(id);
        let out = f(r);
        let after = r.fingerprint(id);
        self.fine[fine_of(key)] ^= before ^ after;
        Some(out)
    }
    /// Removes the record of `id`.
    pub fn remove(&mut self, id: NodeId) -> Option<R> {
        let key = mix(id);
        let (_, r) = self.map.remove(&key)?;
        self.fine[fine_of(key)] ^= r.fingerprint(id);
        self.counts[fine_of(key)] -= 1;
        Some(r)
    }
    /// All records, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &R)> {
        self.map.values().map(|(id, r)| (*id, r))
    }
    /// The digest level for a table of this size.
    pub fn level(&self) -> u8 {
        let buckets = self.map.len().div_ceil(RECORDS_PER_BUCKET).max(1);
        (buckets.next_power_of_two().trailing_zeros()).min(FINE_BITS) as u8
    }
    /// The `2^level` bucket hashes.
    pub fn digest(&self, level: u8) -> Vec<u32> {
        let level = u32::from(level).min(FINE_BITS);
        let per = 1usize << (FINE_BITS - level);
        self.fine
            .chunks(per)
            .map(|c| c.iter().fold(0, |a, b| a ^ b))
            .collect()
    }
    /// The `2^level` bucket record counts.
    pub fn counts(&self, level: u8) -> Vec<u32> {
        let level = u32::from(level).min(FINE_BITS);
        let per = 1usize << (FINE_BITS - level);
        self.counts.chunks(per).map(|c| c.iter().sum()).collect()
    }
    /// Records from key `start` on, wrapping around.
    fn walk_from(&self, start: u64) -> impl Iterator<Item = (u64, NodeId, &R)> {
        self.map
            .range(start..)
            .chain(self.map.range(..start))
            .map(|(k, (id, r))| (*k, *id, r))
    }
    /// Records of bucket `b` at `level`.
    pub fn bucket(&self, level: u8, b: usize) -> impl Iterator<Item = (NodeId, &R)> {
        let shift = 64 - u32::from(level).min(FINE_BITS);
        let lo = if level == 0 { 0 } else { (b as u64) << shift };
        let hi = if level == 0 {
            None
        } else {
            (b as u64 + 1).checked_shl(shift).filter(|&h| h != 0)
        };
        let range = match hi {
            Some(hi) => self.map.range(lo..hi),
            None => self.map.range(lo..),
        };
        range.map(|(_, (id, r))| (*id, r))
    }
    /// Panics if a bucket hash disagrees with its records.
    pub fn check_invariants(&self) {
        let mut fine = vec![0u32; 1 << FINE_BITS];
        let mut counts = vec![0u32; 1 << FINE_BITS];
        for (key, (id, r)) in &self.map {
            assert_eq!(*key, mix(*id), "table key is not the mix of its id");
            fine[fine_of(*key)] ^= r.fingerprint(*id);
            counts[fine_of(*key)] += 1;
        }
        assert_eq!(fine, self.fine, "incremental bucket hashes drifted");
        assert_eq!(counts, self.counts, "incremental bucket counts drifted");
    }
}

/// What a peer asked of us and what we owe it.
#[derive(Debug, Clone, Default)]
struct Pending {
    /// Send our digest; `Some(true)` asks the peer to reply.
    send_digest: Option<bool>,
    /// The peer's digest: we owe it the records of the buckets that differ.
    peer_digest: Option<(u8, Vec<(u32, u16)>)>,
    /// Where the walk over our records started (random) and how many candidates the
    /// datagrams already sent for this digest consumed.
    start: Option<u64>,
    skip: usize,
    datagrams: u32,
}

/// Most datagrams of records sent in answer to one digest.
pub const BULK_DATAGRAMS_MAX: u32 = 4;

/// A parsed bulk payload; the owner decodes `count` records from `records`.
#[derive(Debug, Clone)]
pub struct Bulk<'a> {
    /// The peer's digest (level, per bucket: hash and record count, saturated).
    pub digest: Option<(u8, Vec<(u32, u16)>)>,
    /// The peer wants our digest and records back.
    pub reply_wanted: bool,
    /// Number of records that follow.
    pub count: u16,
    /// The encoded records.
    pub records: Reader<'a>,
}

/// Counters of one synchroniser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStats {
    /// Digests sent.
    pub digests_sent: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Records that did not fit a datagram's budget (sent later or by someone else).
    pub records_trimmed: u64,
    /// Peers whose pending exchange was dropped because the pending table was full.
    pub pending_overflow: u64,
}

/// Per-peer exchange state of one replicated table.
#[derive(Debug, Clone)]
pub struct Syncer {
    pending: BTreeMap<SocketAddr, Pending>,
    pending_max: usize,
    rng: Prng,
    stats: SyncStats,
}

impl Syncer {
    /// A synchroniser owing at most `pending_max` peers an answer at a time.
    pub fn new(rng: Prng, pending_max: usize) -> Syncer {
        Syncer {
            pending: BTreeMap::new(),
            pending_max,
            rng,
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

    fn entry(&mut self, peer: SocketAddr) -> Option<&mut Pending> {
        if !self.pending.contains_key(&peer) && self.pending.len() >= self.pending_max {
            self.stats.pending_overflow += 1;
            return None;
        }
        Some(self.pending.entry(peer).or_default())
    }

    /// Starts an exchange with `peer`: our next bulk payload to it carries our digest.
    pub fn start(&mut self, peer: SocketAddr) {
        if let Some(p) = self.entry(peer) {
            p.send_digest = Some(true);
        }
    }

    /// Whether anything is owed to `peer`.
    pub fn owes(&self, peer: SocketAddr) -> bool {
        self.pending.contains_key(&peer)
    }

    /// Parses a bulk payload (the owner then decodes and merges the records).
    pub fn parse(payload: &[u8]) -> Result<Bulk<'_>, WireError> {
        let mut r = Reader::new(payload);
        let flags = r.u8()?;
        if flags & !(FLAG_DIGEST | FLAG_REPLY) != 0 {
            return Err(WireError::Malformed);
        }
        let digest = if flags & FLAG_DIGEST != 0 {
            let level = r.u8()?;
            if u32::from(level) > FINE_BITS {
                return Err(WireError::Malformed);
            }
            let n = 1usize << level;
            let raw = r.bytes(n * 6)?;
            let hashes = raw
                .chunks_exact(6)
                .map(|c| {
                    (
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                        u16::from_be_bytes([c[4], c[5]]),
                    )
                })
                .collect();
            Some((level, hashes))
        } else {
            None
        };
        let count = r.u16()?;
        Ok(Bulk {
            digest,
            reply_wanted: flags & FLAG_REPLY != 0,
            count,
            records: r,
        })
    }

    /// After the owner merged a bulk payload's records: remembers what we owe `from`. Returns
    /// `true` if a reply should be sent.
    pub fn received<R: SyncRecord>(
        &mut self,
        from: SocketAddr,
        digest: Option<(u8, Vec<(u32, u16)>)>,
        reply_wanted: bool,
        table: &Table<R>,
    ) -> bool {
        let Some((level, hashes)) = digest else {
            return false;
        };
        if table
            .digest(level)
            .iter()
            .zip(&hashes)
            .all(|(a, b)| *a == b.0)
        {
            return false;
        }
        let Some(p) = self.entry(from) else {
            return false;
        };
        p.peer_digest = Some((level, hashes));
        p.start = None;
        p.skip = 0;
        p.datagrams = 0;
        if reply_wanted {
            p.send_digest = Some(false);
        }
        true
    }

    /// Writes the bulk payload owed to `peer` within `budget` bytes (nothing if nothing is
    /// owed or nothing fits).
    pub fn write<R: SyncRecord>(
        &mut self,
        peer: SocketAddr,
        table: &Table<R>,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        let Some(mut p) = self.pending.remove(&peer) else {
            return;
        };
        let start = out.len();
        let mut used = 3; // flags + count
        let mut flags = 0u8;
        let mut digest = None;
        if let Some(reply) = p.send_digest {
            let level = table.level();
            let size = 1 + 6 * (1usize << level);
            if used + size <= budget {
                used += size;
                flags |= FLAG_DIGEST | if reply { FLAG_REPLY } else { 0 };
                digest = Some((level, table.digest(level), table.counts(level)));
            }
        }
        let mut records: Vec<(NodeId, &R)> = Vec::new();
        let mut trimmed = 0u64;
        if let Some((level, theirs)) = &p.peer_digest {
            // Buckets where we hold more records than the peer surely hide something it
            // lacks: they go first. Within a class, start at a random key so that peers
            // asking the same question get different parts of a large table.
            let ours = table.digest(*level);
            let counts = table.counts(*level);
            let class: Vec<u8> = ours
                .iter()
                .enumerate()
                .map(|(b, h)| match theirs.get(b) {
                    Some((th, _)) if th == h => 0,
                    Some((_, tc)) if counts[b] > u32::from(*tc) => 2,
                    _ => 1,
                })
                .collect();
            let shift = 64 - u32::from(*level).min(FINE_BITS);
            let bucket_of = |k: u64| {
                if shift >= 64 {
                    0
                } else {
                    (k >> shift) as usize
                }
            };
            let start = *p.start.get_or_insert_with(|| self.rng.next_u64());
            let mut candidate = 0usize;
            let mut consumed = None;
            for want in [2u8, 1] {
                for (k, id, r) in table.walk_from(start) {
                    if class[bucket_of(k)] != want {
                        continue;
                    }
                    candidate += 1;
                    if candidate <= p.skip {
                        continue;
                    }
                    if consumed.is_some()
                        || used + r.encoded_len() > budget
                        || records.len() >= usize::from(u16::MAX)
                    {
                        consumed.get_or_insert(candidate - 1);
                        trimmed += 1;
                        continue;
                    }
                    used += r.encoded_len();
                    records.push((id, r));
                }
            }
            if let Some(consumed) = consumed {
                if p.datagrams + 1 < BULK_DATAGRAMS_MAX {
                    // More to say: stay pending, resume after what this datagram carries.
                    self.pending.insert(
                        peer,
                        Pending {
                            send_digest: None,
                            peer_digest: p.peer_digest.clone(),
                            start: Some(start),
                            skip: consumed,
                            datagrams: p.datagrams + 1,
                        },
                    );
                }
            }
        }
        self.stats.records_trimmed += trimmed;
        if digest.is_none() && records.is_empty() {
            return;
        }
        out.push(flags);
        if let Some((level, hashes, counts)) = digest {
            self.stats.digests_sent += 1;
            out.push(level);
            for (h, c) in hashes.into_iter().zip(counts) {
                out.extend_from_slice(&h.to_be_bytes());
                out.extend_from_slice(&(c.min(u32::from(u16::MAX)) as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&(records.len() as u16).to_be_bytes());
        self.stats.records_sent += records.len() as u64;
        for (id, r) in records {
            r.encode(id, out);
        }
        debug_assert!(out.len() - start <= budget);
    }

    /// Forgets everything owed to `peer`.
    pub fn forget(&mut self, peer: SocketAddr) {
        self.pending.remove(&peer);
    }

    /// Panics if the pending table outgrew its bound.
    pub fn check_invariants(&self) {
        assert!(self.pending.len() <= self.pending_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct V(u64);
    impl SyncRecord for V {
        fn fingerprint(&self, id: NodeId) -> u32 {
            fingerprint(id, &[self.0])
        }
        fn encoded_len(&self) -> usize {
            16
        }
        fn encode(&self, id: NodeId, out: &mut Vec<u8>) {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&self.0.to_be_bytes());
        }
    }

    fn merge(t: &mut Table<V>, payload: &[u8]) -> Bulk<'static> {
        let b = Syncer::parse(payload).unwrap();
        let mut r = b.records.clone();
        for _ in 0..b.count {
            let id = NodeId(r.u64().unwrap());
            let v = r.u64().unwrap();
            if t.get(id).is_none_or(|o| o.0 < v) {
                t.insert(id, V(v));
            }
        }
        Bulk {
            digest: b.digest,
            reply_wanted: b.reply_wanted,
            count: 0,
            records: Reader::new(&[]),
        }
    }

    #[test]
    fn two_tables_converge_in_one_push_pull_exchange_when_everything_fits() {
        let (pa, pb): (SocketAddr, SocketAddr) =
            ("1.0.0.1:1".parse().unwrap(), "1.0.0.2:1".parse().unwrap());
        let mut a = Table::default();
        let mut b = Table::default();
        for i in 0..40u64 {
            a.insert(NodeId(i), V(1));
            if i % 3 == 0 {
                b.insert(NodeId(i), V(2));
            }
        }
        b.insert(NodeId(100), V(5));
        let mut sa = Syncer::new(Prng::new(1), 8);
        let mut sb = Syncer::new(Prng::new(2), 8);
        sa.start(pb);
        let mut m = Vec::new();
        sa.write(pb, &a, 60_000, &mut m);
        let bulk = merge(&mut b, &m);
        assert!(sb.received(pa, bulk.digest, bulk.reply_wanted, &b));
        m.clear();
        sb.write(pa, &b, 60_000, &mut m);
        let bulk = merge(&mut a, &m);
        assert!(sa.received(pb, bulk.digest, bulk.reply_wanted, &a));
        m.clear();
        sa.write(pb, &a, 60_000, &mut m);
        merge(&mut b, &m);
        assert_eq!(a.digest(4), b.digest(4));
        assert_eq!(a.len(), 41);
        a.check_invariants();
        b.check_invariants();
        assert_eq!(sa.pending_len() + sb.pending_len(), 0);
    }

    #[test]
    fn a_small_budget_trims_records_and_counts_them() {
        let mut a = Table::default();
        for i in 0..100u64 {
            a.insert(NodeId(i), V(1));
        }
        let mut s = Syncer::new(Prng::new(1), 8);
        let peer: SocketAddr = "1.0.0.2:1".parse().unwrap();
        assert!(s.received(peer, Some((0, vec![(0, 0)])), true, &a));
        let mut m = Vec::new();
        s.write(peer, &a, 200, &mut m);
        assert!(m.len() <= 200);
        assert!(s.stats().records_trimmed > 0);
    }

    #[test]
    fn buckets_partition_the_table_at_every_level() {
        let mut a = Table::default();
        for i in 0..300u64 {
            a.insert(NodeId(i * 7919), V(i));
        }
        for level in 0..=FINE_BITS as u8 {
            let total: usize = (0..1usize << level)
                .map(|b| a.bucket(level, b).count())
                .sum();
            assert_eq!(total, 300, "level {level}");
        }
        a.update(NodeId(7919), |v| v.0 = 99);
        a.remove(NodeId(0));
        a.check_invariants();
    }
}
