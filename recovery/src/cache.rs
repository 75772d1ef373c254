//! The caretaker cache (QSM): the packets of the region's streams this member takes care of
//! (packet `s` of every stream is kept by partition `(s - 1) mod P`), kept until the region's
//! cleanup point passes them, and served to peers that ask.
//!
//! The cache does not decide what it takes care of (the [`crate::Ring`] knows the partitions)
//! and sends nothing: the owner inserts what it should keep, looks packets up when serving a
//! request, and applies the ring's cleanup points. Bounded in bytes; packets are copied into
//! recycled buffers ([`crate::store::BufferPool`]), so steady state allocates nothing.

use std::collections::{BTreeMap, VecDeque};

use qs_transport::{NodeId, Seq};

use crate::store::BufferPool;

/// Why [`Cache::insert`] did not keep a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRefused {
    /// The cache holds its maximum of bytes: the packet is not cached (a caretaker that
    /// cannot serve it says so in the token, and the sender covers it).
    Full,
}

/// Packets this node takes care of, per sender, until the region's cleanup point passes them.
#[derive(Debug)]
pub struct Cache {
    streams: BTreeMap<NodeId, CacheStream>,
    max_bytes: usize,
    bytes: usize,
    packets: usize,
    peak_bytes: usize,
    /// Bytes ever cached (a running total).
    bytes_in: u64,
    pool: BufferPool,
}

/// One sender's cached packets: slot `i` holds packet `base + i` if cached (a ring of
/// slots, so caching and freeing in steady state allocates nothing).
#[derive(Debug)]
struct CacheStream {
    /// The epoch of the sender's stream held (an older one is dropped for a newer).
    epoch: u64,
    base: Seq,
    slots: VecDeque<Option<Vec<u8>>>,
    /// Everything up to here is stable region-wide and no longer cached.
    cleanup: Seq,
}

/// Most sequence numbers one sender's slots may span (far beyond any send window; a packet
/// further out is not cached).
const MAX_SPAN: i64 = 1 << 17;

impl CacheStream {
    fn index(&self, seq: Seq) -> Option<usize> {
        let d = self.base.distance_to(seq);
        (d >= 0 && (d as usize) < self.slots.len()).then_some(d as usize)
    }

    fn holds(&self, seq: Seq) -> bool {
        self.index(seq).is_some_and(|i| self.slots[i].is_some())
    }

    fn entries(&self) -> impl Iterator<Item = (Seq, &Vec<u8>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((self.base.advance(i as u32), s.as_ref()?)))
    }
}

impl Cache {
    /// An empty cache holding at most `max_bytes` of packets.
    pub fn new(max_bytes: usize) -> Cache {
        Cache {
            streams: BTreeMap::new(),
            max_bytes,
            bytes: 0,
            packets: 0,
            peak_bytes: 0,
            bytes_in: 0,
            // Idle buffers up to the cache's own bound: a full cache in steady state recycles.
            pool: BufferPool::bounded(usize::MAX, max_bytes),
        }
    }

    /// Caches `datagram` (packet `seq` of `sender`'s stream of `epoch`) unless it is stable
    /// already or cached. A newer epoch replaces what the cache held of the sender; an older
    /// one is not cached.
    pub fn insert(
        &mut self,
        sender: NodeId,
        epoch: u64,
        seq: Seq,
        datagram: &[u8],
    ) -> Result<(), CacheRefused> {
        if self.streams.get(&sender).is_some_and(|s| s.epoch < epoch) {
            self.forget(sender);
        }
        // A new stream's cache starts well before its first packet (earlier packets may
        // still come by repair) but not at 0, which is half the sequence space away once the
        // stream has wrapped; the first cleanup moves it to the real stability point.
        let stream = self.streams.entry(sender).or_insert(CacheStream {
            epoch,
            base: seq,
            slots: VecDeque::new(),
            cleanup: Seq(seq.0.wrapping_sub(1 << 20)),
        });
        if stream.epoch != epoch || !stream.cleanup.is_before(seq) || stream.holds(seq) {
            return Ok(());
        }
        if self.bytes + datagram.len() > self.max_bytes {
            return Err(CacheRefused::Full);
        }
        if stream.slots.is_empty() {
            stream.base = seq;
        }
        let d = stream.base.distance_to(seq);
        let span = stream.slots.len() as i64;
        if d < 0 {
            if span - d > MAX_SPAN {
                return Err(CacheRefused::Full);
            }
            for _ in 0..-d {
                stream.slots.push_front(None);
            }
            stream.base = seq;
        } else if d >= span {
            if d + 1 > MAX_SPAN {
                return Err(CacheRefused::Full);
            }
            stream.slots.resize_with(d as usize + 1, || None);
        }
        let i = stream.index(seq).expect("slot exists");
        stream.slots[i] = Some(self.pool.copy_of(datagram));
        self.bytes += datagram.len();
        self.bytes_in = self.bytes_in.wrapping_add(datagram.len() as u64);
        self.packets += 1;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        Ok(())
    }

    /// Bytes ever cached, a running total that only grows (wrapping): the inflow of data
    /// a caretaker serves repairs from.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Packet `seq` of `sender`'s stream of `epoch`, if cached.
    pub fn get(&self, sender: NodeId, epoch: u64, seq: Seq) -> Option<&[u8]> {
        let s = self.streams.get(&sender).filter(|s| s.epoch == epoch)?;
        s.slots[s.index(seq)?].as_deref()
    }

    /// Whether packet `seq` of `sender`'s stream of `epoch` is cached.
    pub fn holds(&self, sender: NodeId, epoch: u64, seq: Seq) -> bool {
        self.streams
            .get(&sender)
            .is_some_and(|s| s.epoch == epoch && s.holds(seq))
    }

    /// Frees everything of `sender`'s stream of `epoch` up to `cleanup`.
    pub fn clean(&mut self, sender: NodeId, epoch: u64, cleanup: Seq) {
        let Some(stream) = self.streams.get_mut(&sender).filter(|s| s.epoch == epoch) else {
            return;
        };
        if !stream.cleanup.is_before(cleanup) {
            return;
        }
        stream.cleanup = cleanup;
        while !stream.slots.is_empty() && !cleanup.is_before(stream.base) {
            if let Some(b) = stream.slots.pop_front().flatten() {
                self.bytes -= b.len();
                self.packets -= 1;
                self.pool.give_back(b);
            }
            stream.base = stream.base.next();
        }
    }

    /// Drops everything of `sender`.
    pub fn forget(&mut self, sender: NodeId) {
        if let Some(s) = self.streams.remove(&sender) {
            for b in s.slots.into_iter().flatten() {
                self.bytes -= b.len();
                self.packets -= 1;
                self.pool.give_back(b);
            }
        }
    }

    /// Drops `sender`'s stream of `epoch`, if that is the one cached (a region this node
    /// departed: no ring will clean it any more).
    pub fn forget_stream(&mut self, sender: NodeId, epoch: u64) {
        if self.streams.get(&sender).is_some_and(|s| s.epoch == epoch) {
            self.forget(sender);
        }
    }

    /// Drops everything (a new region or view: caretaker duties start over).
    pub fn clear(&mut self) {
        let senders: Vec<NodeId> = self.streams.keys().copied().collect();
        for s in senders {
            self.forget(s);
        }
    }

    /// Bytes cached now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Packets cached now.
    pub fn packets(&self) -> usize {
        self.packets
    }

    /// Highest [`Cache::bytes`] seen.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Panics if the counts drifted from the contents or exceed the bound.
    pub fn check_invariants(&self) {
        let entries = self.streams.values().flat_map(|s| s.entries());
        let (bytes, packets) = entries.fold((0, 0), |(b, p), (_, e)| (b + e.len(), p + 1));
        assert_eq!(
            (bytes, packets),
            (self.bytes, self.packets),
            "cache counts drifted"
        );
        assert!(self.bytes <= self.max_bytes, "cache over its bound");
        for s in self.streams.values() {
            assert!(
                s.entries().all(|(k, _)| s.cleanup.is_before(k)),
                "a cleaned packet is still cached"
            );
            assert!(s.slots.len() as i64 <= MAX_SPAN, "slots beyond their span");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);

    #[test]
    fn cleanup_frees_what_it_passes_and_refuses_it_afterwards() {
        let mut c = Cache::new(1 << 20);
        for s in 1..=10 {
            c.insert(A, 1, Seq(s), &[s as u8; 100]).unwrap();
        }
        assert_eq!((c.packets(), c.bytes()), (10, 1000));
        c.clean(A, 1, Seq(6));
        assert_eq!(c.packets(), 4);
        assert!(!c.holds(A, 1, Seq(6)) && c.holds(A, 1, Seq(7)));
        assert_eq!(c.get(A, 1, Seq(7)), Some(&[7u8; 100][..]));
        c.insert(A, 1, Seq(3), &[3; 100]).unwrap();
        assert!(
            !c.holds(A, 1, Seq(3)),
            "stable packets are not cached again"
        );
        c.check_invariants();
    }

    #[test]
    fn a_full_cache_refuses_and_counts_nothing() {
        let mut c = Cache::new(250);
        c.insert(A, 1, Seq(1), &[0; 100]).unwrap();
        c.insert(A, 1, Seq(2), &[0; 100]).unwrap();
        assert_eq!(c.insert(A, 1, Seq(3), &[0; 100]), Err(CacheRefused::Full));
        assert_eq!(c.insert(A, 1, Seq(4), &[0; 50]), Ok(()));
        assert_eq!(c.bytes(), 250);
        c.check_invariants();
    }

    #[test]
    fn cleanup_across_the_sequence_wrap_frees_the_right_packets() {
        let mut c = Cache::new(1 << 20);
        for s in [u32::MAX - 1, u32::MAX, 0, 1, 2] {
            c.insert(A, 1, Seq(s), &[1; 10]).unwrap();
        }
        c.clean(A, 1, Seq(0));
        assert!(!c.holds(A, 1, Seq(u32::MAX)) && !c.holds(A, 1, Seq(0)));
        assert!(c.holds(A, 1, Seq(1)) && c.holds(A, 1, Seq(2)));
        c.check_invariants();
    }

    #[test]
    fn an_earlier_packet_is_cached_before_the_first_and_a_far_one_is_refused() {
        let mut c = Cache::new(1 << 20);
        c.insert(A, 1, Seq(100), &[1; 10]).unwrap();
        c.insert(A, 1, Seq(90), &[2; 10]).unwrap();
        assert_eq!(c.get(A, 1, Seq(90)), Some(&[2u8; 10][..]));
        assert!(c.holds(A, 1, Seq(100)) && !c.holds(A, 1, Seq(95)));
        let far = Seq(90).advance(MAX_SPAN as u32);
        assert_eq!(c.insert(A, 1, far, &[0; 10]), Err(CacheRefused::Full));
        assert!(c
            .insert(A, 1, Seq(90).advance(MAX_SPAN as u32 - 1), &[0; 10])
            .is_ok());
        c.check_invariants();
    }

    #[test]
    fn a_newer_epoch_replaces_the_sender_and_an_older_one_is_refused() {
        let mut c = Cache::new(1 << 20);
        c.insert(A, 1, Seq(5), &[1; 10]).unwrap();
        c.insert(A, 2, Seq(1), &[2; 10]).unwrap();
        assert!(!c.holds(A, 1, Seq(5)) && c.holds(A, 2, Seq(1)));
        c.insert(A, 1, Seq(6), &[1; 10]).unwrap();
        assert!(!c.holds(A, 1, Seq(6)), "a stale epoch is not cached");
        assert_eq!(c.packets(), 1);
        c.check_invariants();
    }

    #[test]
    fn forgetting_a_sender_drops_only_its_packets() {
        let mut c = Cache::new(1 << 20);
        c.insert(A, 1, Seq(1), &[0; 10]).unwrap();
        c.insert(NodeId(2), 1, Seq(1), &[0; 20]).unwrap();
        c.forget(A);
        assert_eq!((c.packets(), c.bytes()), (1, 20));
        c.clear();
        assert_eq!((c.packets(), c.bytes()), (0, 0));
        assert_eq!(c.peak_bytes(), 30);
        c.check_invariants();
    }

    #[test]
    fn forgetting_a_stream_drops_it_only_if_its_epoch_is_cached() {
        let mut c = Cache::new(1 << 20);
        c.insert(A, 2, Seq(1), &[0; 10]).unwrap();
        c.forget_stream(A, 1);
        assert!(c.holds(A, 2, Seq(1)), "another epoch of the sender stays");
        c.forget_stream(A, 2);
        assert_eq!((c.packets(), c.bytes()), (0, 0));
        c.check_invariants();
    }
}
