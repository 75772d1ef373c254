//! Lateral error correction (Ricochet, seed `002_*` §A; design section 4; issue 12): one node's
//! repair bins, repair decoding and cascades for one region.
//!
//! Owns: the store of recently received canonical packets a repair is decoded against, the
//! staggered bins that turn every `r` packets received in the region (from all its senders) into
//! one XOR repair for `c` random members (or `m` Reed–Solomon parity shards for fewer members
//! when losses come in bursts), the adaptive rate of fire, the repairs kept until they become
//! decodable, the rebuilt packets (verified against the per-packet digest the repair lists), and
//! the hold-off hint for the node's receive window.
//!
//! Does not: parse or seal datagrams (the node opens a datagram and hands over a parsed
//! [`LecRepair`]; it writes the common header before [`Lec::encode`] and seals after), decide
//! what is delivered (rebuilt packets re-enter the node's receive path, which drops what it
//! already has), choose the region view (the node calls [`Lec::set_view`]) or repair what LEC
//! cannot (the token ring stays the backstop that makes delivery complete).
//!
//! # Calling contract (one `Lec` per region the node is a member of)
//! - [`Lec::on_packet`] for every data packet of the region the node gets, however it got it
//!   (multicast, unicast copy, ring repair; refused by the receive window too), and for the
//!   node's own packets when it publishes into its own region: `canonical` is the datagram as
//!   the sender built it with the flags and checksum fields zeroed and no seal trailer.
//! - [`Lec::on_missing`] when the receive window sees a hole (the observed-loss input; a repair
//!   does not need it to rebuild a packet, so one that arrives first still helps).
//! - [`Lec::handle_repair`] for each lateral repair datagram of the region.
//! - Then drain [`Lec::poll_rebuilt`] (into the receive path, flagged as not heard by
//!   multicast) and, when the repair class may send, [`Lec::poll_repair`] followed at once by
//!   [`Lec::encode`] into the transmit buffer after the header.
//! - [`Lec::handle_timeout`] at [`Lec::poll_timeout`]; [`Lec::hold_off`] is how long a new
//!   hole should wait for LEC before the token path requests it.
//!
//! # Adaptive rate of fire
//! Each node estimates its own loss rate (an exponential average over packets: holes reported by
//! [`Lec::on_missing`] and packets rebuilt before they were reported count as losses) and how
//! many packets it misses, on average, of the repairs it receives that miss any (about 1 under
//! independent loss; more under bursts, which XOR cannot undo), and carries both in every
//! repair it sends. The region's loss
//! is the largest of its own and its peers' fresh reports (plus any the node feeds in through
//! [`Lec::on_loss_report`], e.g. from the health gossip). A bin that fills fires to
//! `c × min(1, loss / full_rate_loss)` members on average (a deterministic credit, not a coin),
//! so a clean region sends no repairs at all, and a lossy member, which fires on its own loss,
//! wakes its peers with its first repairs. Bins carry `m` Reed–Solomon parity shards instead of
//! one XOR while the region's missing count is at least [`LecConfig::parity_from_missing`].
//!
//! Two inputs from the node keep LEC from feeding on its own load:
//! - [`Lec::on_socket_drops`]: datagrams the node's receive sockets dropped are its own
//!   overflow; they are taken out of the loss estimate (so neither this node nor, through its
//!   reports, its peers fire at an overloaded receiver; the ring repairs its holes);
//! - [`Lec::set_backlog`]: a node whose receive queue is behind fires less, none at all from
//!   [`LecConfig::backlog_full`], and reports less loss in proportion (so its peers do not
//!   fire at it either: it could not take repairs in time).
//!
//! # Sleeping while the region is clean
//! With [`LecConfig::sleep_when_clean`] (adaptive only) a core that has seen no loss, no loss
//! report and no repair for [`LecConfig::sleep_after`] neither stores nor bins packets: a
//! clean region costs a counter update per packet instead of a copy. A hole, a report of loss
//! or a repair wakes it; repairs received asleep or within [`Lec::hold_off`] of waking (about
//! a bin's fill time: what a bin fired then may cover) are not decoded (they cover packets it did not store) but their reports count. The price is the
//! first losses after a clean spell, which the ring repairs.
//!
//! Everything is sans-IO: `now` is an argument, randomness (the targets) comes from the
//! core's seeded [`Prng`], and every table is bounded with counted overflow.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use foldhash::fast::FixedState;
use qs_transport::wire::{
    lec_digest, LecCode, LecEntry, LecHead, LecRepair, PacketId, HEADER_LEN, LEC_ENTRY_LEN,
    LEC_FIXED_LEN, LEC_GROUP_LEN, LEC_MAX_PACKETS, LEC_MAX_PARITY,
};
use qs_transport::{Instant, NodeId, Prng, RegionId};
use reed_solomon_erasure::galois_8::ReedSolomon;

/// Most targets one bin fires to.
pub const LEC_MAX_TARGETS: usize = 32;

/// Per-region configuration of [`Lec`]. The defaults suit a LAN at 10k–100k packets/s.
#[derive(Debug, Clone, PartialEq)]
pub struct LecConfig {
    /// `r`: packets per repair (a bin fires when it holds this many).
    pub bin_packets: usize,
    /// `c`: members each repair goes to at the full rate of fire (capped by the view).
    pub targets: usize,
    /// Bins filled round-robin, so a burst of up to this many consecutive losses lands in
    /// different repairs (Ricochet's stagger). Each bin fills this much more slowly.
    pub stagger: usize,
    /// `m`: Reed–Solomon parity shards per bin when bursts are seen (1: XOR only).
    pub parity_shards: usize,
    /// Members a parity bin goes to at the full rate of fire, each with all `m` shards (a
    /// member needs as many shards of one bin as it lost of it). 0: `c`. Fewer targets cost
    /// fewer bytes but reach the member that lost the burst less often (see the sweep,
    /// `qs-testbed sim-lec`: one target per bin rebuilds about 60% of bursts of 5 where `c`
    /// targets rebuild over 90%).
    pub parity_targets: usize,
    /// Bins carry parity shards while members miss at least this many packets, on average, of
    /// the repairs they receive that miss any (1: every loss is alone in its bin).
    pub parity_from_missing: f64,
    /// Scale the rate of fire with the region's loss (off: always `c` per bin).
    pub adaptive: bool,
    /// Region loss rate at and above which every bin fires to `c` members.
    pub full_rate_loss: f64,
    /// Lowest fraction of the full rate of fire, even without loss.
    pub idle_fraction: f64,
    /// Packets over which the own loss estimate averages.
    pub loss_memory_packets: u32,
    /// How long a peer's loss report counts.
    pub report_ttl: Duration,
    /// Largest repair datagram, header included (bins close early rather than exceed it).
    pub max_datagram: usize,
    /// A bin of at least two packets fires at this age even if not full (bounds repair
    /// latency when the region is slow).
    pub bin_age_max: Duration,
    /// How long received packets stay decodable against.
    pub store_age: Duration,
    /// Most packets in the store.
    pub store_packets_max: usize,
    /// Most canonical bytes in the store.
    pub store_bytes_max: usize,
    /// Most repairs kept undecodable (XOR and Reed–Solomon bins each).
    pub kept_max: usize,
    /// Most packets an XOR repair may miss and still be kept.
    pub kept_missing_max: usize,
    /// How long a kept repair waits to become decodable.
    pub kept_ttl: Duration,
    /// Most fired bins awaiting [`Lec::encode`].
    pub fired_max: usize,
    /// A fired bin not encoded within this is dropped (a late repair helps nobody).
    pub repair_ttl: Duration,
    /// Most queued [`RepairIntent`]s.
    pub intents_max: usize,
    /// Most rebuilt packets awaiting [`Lec::poll_rebuilt`].
    pub rebuilt_max: usize,
    /// Most packets remembered as missing.
    pub missing_max: usize,
    /// How long a reported hole is remembered.
    pub missing_ttl: Duration,
    /// Most members of the view.
    pub members_max: usize,
    /// Added to the bin fill time in [`Lec::hold_off`]: a repair's trip and queueing.
    pub hold_off_slack: Duration,
    /// Upper bound of [`Lec::hold_off`].
    pub hold_off_max: Duration,
    /// Sleep while the region is clean (adaptive only, with no idle fraction): packets are
    /// not stored or binned until a loss, a loss report or a repair wakes the core, so a
    /// clean region costs one counter update per packet (see the module docs).
    pub sleep_when_clean: bool,
    /// How long the region must be clean (no own loss, no report of loss, no repair) before
    /// the core sleeps; a new core starts awake.
    pub sleep_after: Duration,
    /// Receive backlog ([`Lec::set_backlog`]) up to which the rate of fire is unchanged.
    pub backlog_quiet: Duration,
    /// Receive-queue fill at and above which this node fires no repairs (it is behind: its
    /// repairs would add to the load of receivers as busy as itself); linear in between.
    pub backlog_full: Duration,
}

impl Default for LecConfig {
    fn default() -> LecConfig {
        LecConfig {
            bin_packets: 8,
            targets: 3,
            stagger: 2,
            parity_shards: 3,
            parity_targets: 0,
            parity_from_missing: 2.0,
            adaptive: true,
            full_rate_loss: 0.0005,
            idle_fraction: 0.0,
            loss_memory_packets: 1000,
            report_ttl: Duration::from_millis(500),
            max_datagram: 1472,
            bin_age_max: Duration::from_millis(5),
            store_age: Duration::from_millis(100),
            store_packets_max: 16_384,
            store_bytes_max: 8 << 20,
            kept_max: 256,
            kept_missing_max: 4,
            kept_ttl: Duration::from_millis(50),
            fired_max: 64,
            repair_ttl: Duration::from_millis(10),
            intents_max: 512,
            rebuilt_max: 512,
            missing_max: 4096,
            missing_ttl: Duration::from_secs(1),
            members_max: 4096,
            hold_off_slack: Duration::from_micros(300),
            hold_off_max: Duration::from_millis(10),
            sleep_when_clean: true,
            sleep_after: Duration::from_secs(1),
            backlog_quiet: Duration::from_millis(2),
            backlog_full: Duration::from_millis(10),
        }
    }
}

impl LecConfig {
    fn parity(&self) -> usize {
        self.parity_shards.clamp(1, LEC_MAX_PARITY)
    }

    fn bin_len(&self) -> usize {
        self.bin_packets.clamp(1, LEC_MAX_PACKETS)
    }

    /// The longest canonical packet a full bin of [`Self::bin_packets`] packets from as many
    /// different streams still fits in [`Self::max_datagram`]. A node that runs LEC builds its
    /// data datagrams no longer than this; longer ones make bins close early, and a packet too
    /// long for a bin of one is not repaired laterally at all (counted).
    pub fn max_canonical_len(&self) -> usize {
        let r = self.bin_len();
        self.max_datagram
            .saturating_sub(HEADER_LEN + LEC_FIXED_LEN + r * (LEC_GROUP_LEN + LEC_ENTRY_LEN))
    }

    /// The most bytes a [`Lec`] with this configuration holds: the store, kept repairs, fired
    /// bins and their code words, rebuilt packets. [`LecStats::memory_bytes`] stays below it.
    pub fn memory_budget(&self) -> usize {
        let d = self.max_datagram;
        let m = self.parity();
        self.store_bytes_max
            + self.kept_max * d // XOR code words
            + self.kept_max * m * d // Reed–Solomon parity shards
            + self.fired_max * m * d
            + self.rebuilt_max * d
            + STORE_POOL_MAX * d // recycled canonical buffers
    }
}

/// One repair datagram to send: to whom and which bin (and shard). Encode it with
/// [`Lec::encode`] at the moment it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairIntent {
    /// The member to send it to.
    pub to: NodeId,
    slot: u32,
    generation: u32,
    shard: u8,
}

/// Why [`Lec::encode`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LecError {
    /// The intent's bin was dropped (expired or already fully encoded); nothing changed.
    #[error("stale repair intent")]
    Stale,
    /// The buffer cannot hold the repair; the intent is consumed and counted.
    #[error("buffer too small for the repair")]
    BufferTooSmall,
}

/// Counters of a [`Lec`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LecStats {
    /// New packets taken in by [`Lec::on_packet`].
    pub packets_in: u64,
    /// Packets handed in again (already in the store).
    pub duplicates: u64,
    /// Packets too long for any repair (see [`LecConfig::max_canonical_len`]).
    pub unrepairable: u64,
    /// Bins that fired.
    pub bins_fired: u64,
    /// Bins that filled but did not fire (adaptive rate, or no peer).
    pub bins_silent: u64,
    /// Bins that fired with parity shards.
    pub bins_parity: u64,
    /// Repair datagrams encoded.
    pub repairs_sent: u64,
    /// Bytes of repair datagrams encoded, common header included.
    pub repair_bytes_sent: u64,
    /// Repairs received from members.
    pub repairs_received: u64,
    /// Repairs from a non-member or for another region (dropped).
    pub repairs_foreign: u64,
    /// Repairs whose packets were all known already.
    pub repairs_redundant: u64,
    /// Repairs missing two or more packets when they arrived (more than their parity can
    /// rebuild).
    pub repairs_undecodable: u64,
    /// Of those, repairs kept to become decodable later.
    pub repairs_kept: u64,
    /// Kept repairs that expired undecoded.
    pub repairs_expired: u64,
    /// Packets rebuilt.
    pub rebuilt: u64,
    /// Packets rebuilt before the node reported them missing.
    pub rebuilt_unreported: u64,
    /// Rebuilt packets that then arrived by themselves (late, not lost: their loss is taken
    /// back from the own loss estimate).
    pub rebuilt_then_heard: u64,
    /// Packets rebuilt from a kept repair once other packets arrived or were rebuilt.
    pub cascades: u64,
    /// Rebuilt packets whose digest or padding did not match (dropped: the bytes XORed out
    /// were not the repairer's).
    pub digest_mismatch: u64,
    /// Repairs inconsistent with earlier shards of their bin.
    pub repairs_inconsistent: u64,
    /// Holes reported by [`Lec::on_missing`].
    pub holes_reported: u64,
    /// Packets evicted from the store before their age (byte or packet limit).
    pub store_evicted_early: u64,
    /// Repairs not kept because the kept table was full.
    pub kept_full: u64,
    /// Bins not fired because the fired table was full.
    pub fired_full: u64,
    /// Intents dropped: queue full, bin expired before encoding, target left the view, or
    /// buffer too small.
    pub intents_dropped: u64,
    /// Rebuilt packets dropped because [`Lec::poll_rebuilt`] was not drained.
    pub rebuilt_dropped: u64,
    /// Holes not remembered because the missing table was full.
    pub missing_full: u64,
    /// Members beyond [`LecConfig::members_max`] left out of the view.
    pub members_dropped: u64,
    /// Bytes held now (see [`LecConfig::memory_budget`]).
    pub memory_bytes: u64,
    /// Packets seen while asleep (counted for the loss estimate, not stored).
    pub packets_asleep: u64,
    /// Times the core woke (a loss, a loss report or a repair).
    pub wakes: u64,
    /// Repairs not decoded because they may cover packets heard while asleep (received
    /// asleep, or too soon after waking); their loss report counts.
    pub repairs_asleep: u64,
    /// Datagrams the node's receive sockets dropped ([`Lec::on_socket_drops`]): the node's
    /// own overflow, taken out of the loss estimate.
    pub socket_drops: u64,
}

/// How a packet came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Heard,
    Rebuilt,
}

#[derive(Debug, Default)]
struct Bin {
    opened: Instant,
    /// Packets at which this bin fires (`r`; fixed when the bin opens).
    size: usize,
    /// The packets' ids only: their bytes stay in the store (sharing them here cost an
    /// allocation per packet) and are taken from it when the bin fires.
    packets: Vec<PacketId>,
    streams: Vec<(NodeId, u64)>,
    longest: usize,
}

impl Bin {
    fn datagram_len_with(&self, id: &PacketId, len: usize) -> usize {
        let new_stream = !self.streams.contains(&(id.sender, id.epoch));
        let groups = self.streams.len() + usize::from(new_stream);
        HEADER_LEN
            + LEC_FIXED_LEN
            + groups * LEC_GROUP_LEN
            + (self.packets.len() + 1) * LEC_ENTRY_LEN
            + self.longest.max(len)
    }
}

/// A fired bin awaiting encoding; its code words are computed at the first encode.
#[derive(Debug, Default)]
struct Fired {
    generation: u32,
    active: bool,
    bin: u32,
    born: Instant,
    parity: u8,
    entries: Vec<LecEntry>,
    packets: Vec<Bytes>,
    longest: usize,
    words: Vec<Vec<u8>>,
    outstanding: u32,
}

/// An XOR repair missing several packets: `word` is the XOR of the missing ones only (the
/// known ones were XORed out on arrival).
#[derive(Debug, Default)]
struct KeptXor {
    generation: u32,
    active: bool,
    missing: Vec<LecEntry>,
    word: Vec<u8>,
}

/// The shards of one Reed–Solomon bin received so far.
#[derive(Debug, Default)]
struct KeptParity {
    generation: u32,
    active: bool,
    key: (u64, u32),
    entries: Vec<LecEntry>,
    longest: usize,
    shards: Vec<Option<Vec<u8>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    Xor(u32, u32),
    Parity(u32, u32),
}

#[derive(Debug, Clone, Copy)]
struct Report {
    loss: f64,
    missing: f64,
    at: Instant,
}

/// Most recycled buffers [`Store`] keeps for the next canonical copies (an eviction hands one
/// back for each packet that arrives, so a few cover the steady state; a burst of evictions by
/// age beyond it is simply freed).
const STORE_POOL_MAX: usize = 32;

/// The packets a repair is decoded against, in arrival order (the order they are evicted in)
/// with a hash index by id: an insert and an eviction are a push and a pop and one hash-table
/// operation each, where a sorted map paid a tree walk for both. The index holds each packet's
/// arrival number, so the entry is found by its offset from the oldest one. Lookups only:
/// the index's order never reaches output, and its hasher has a fixed seed.
#[derive(Debug, Default)]
struct Store {
    /// (arrival, id, bytes, rebuilt and not heard since).
    entries: VecDeque<(Instant, PacketId, Bytes, bool)>,
    /// Arrival number of `entries[0]`.
    head: u64,
    index: HashMap<PacketId, u64, FixedState>,
    /// Buffers of evicted packets nobody else held, for the next copies.
    pool: Vec<BytesMut>,
}

impl Store {
    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn contains(&self, id: &PacketId) -> bool {
        self.index.contains_key(id)
    }

    fn get(&self, id: &PacketId) -> Option<&Bytes> {
        let at = *self.index.get(id)?;
        self.entries
            .get((at - self.head) as usize)
            .map(|(_, _, b, _)| b)
    }

    /// Whether `id` is stored as rebuilt and not heard since; clears the mark.
    fn take_rebuilt(&mut self, id: &PacketId) -> bool {
        let Some(&at) = self.index.get(id) else {
            return false;
        };
        self.entries
            .get_mut((at - self.head) as usize)
            .is_some_and(|e| std::mem::take(&mut e.3))
    }

    fn values(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.entries.iter().map(|(_, _, b, _)| b)
    }

    /// Stores a packet not stored yet (the caller checked).
    fn push(&mut self, now: Instant, id: PacketId, bytes: Bytes, rebuilt: bool) {
        let at = self.head + self.entries.len() as u64;
        self.index.insert(id, at);
        self.entries.push_back((now, id, bytes, rebuilt));
    }

    fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|(t, _, _, _)| *t)
    }

    /// Evicts the oldest packet; its length. Its buffer is kept for reuse when no bin, fired
    /// bin or caller holds it any more and it holds at most `keep_max` bytes.
    fn pop_oldest(&mut self, keep_max: usize) -> Option<usize> {
        let (_, id, bytes, _) = self.entries.pop_front()?;
        self.head += 1;
        self.index.remove(&id);
        let len = bytes.len();
        if self.pool.len() < STORE_POOL_MAX {
            if let Ok(buf) = bytes.try_into_mut() {
                if buf.capacity() <= keep_max {
                    self.pool.push(buf);
                }
            }
        }
        Some(len)
    }

    /// An empty buffer for a canonical copy (recycled when one is idle).
    fn buffer(&mut self) -> BytesMut {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn idle_bytes(&self) -> usize {
        self.pool.iter().map(BytesMut::capacity).sum()
    }

    fn check_invariants(&self) {
        assert_eq!(self.entries.len(), self.index.len(), "store index drifted");
        for (k, (_, id, _, _)) in self.entries.iter().enumerate() {
            assert_eq!(self.index.get(id), Some(&(self.head + k as u64)));
        }
        assert!(self.pool.len() <= STORE_POOL_MAX);
    }
}

/// A slab of reusable slots with generations, so stale references are recognised.
trait Slot: Default {
    fn active(&self) -> bool;
    fn generation(&self) -> u32;
}

macro_rules! slot {
    ($t:ty) => {
        impl Slot for $t {
            fn active(&self) -> bool {
                self.active
            }
            fn generation(&self) -> u32 {
                self.generation
            }
        }
    };
}
slot!(Fired);
slot!(KeptXor);
slot!(KeptParity);

#[derive(Debug)]
struct Slab<T> {
    slots: Vec<T>,
    free: Vec<u32>,
    /// (deadline, slot, generation), in deadline order (every entry of one slab has the same
    /// lifetime, so insertion order is deadline order).
    deadlines: VecDeque<(Instant, u32, u32)>,
    max: usize,
    live: usize,
}

impl<T: Slot> Slab<T> {
    fn new(max: usize) -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: VecDeque::new(),
            max,
            live: 0,
        }
    }

    /// A free slot (not yet marked active), or `None` when all `max` are in use.
    fn alloc(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.slots.len() < self.max {
            self.slots.push(T::default());
            return Some(self.slots.len() as u32 - 1);
        }
        None
    }

    /// The next live slot whose deadline is due by `now` (dropping due entries of slots
    /// freed meanwhile), or `None` when none is due.
    fn pop_due(&mut self, now: Instant) -> Option<u32> {
        while let Some(&(t, slot, generation)) = self.deadlines.front() {
            if t > now {
                return None;
            }
            self.deadlines.pop_front();
            if self.get(slot, generation).is_some() {
                return Some(slot);
            }
        }
        None
    }

    fn get(&self, slot: u32, generation: u32) -> Option<&T> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.active() && s.generation() == generation)
    }

    fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut T> {
        self.slots
            .get_mut(slot as usize)
            .filter(|s| s.active() && s.generation() == generation)
    }
}

/// The lateral error correction of one node in one region. See the module docs for the
/// calling contract.
#[derive(Debug)]
pub struct Lec {
    config: LecConfig,
    me: NodeId,
    region: RegionId,
    prng: Prng,
    members: Vec<NodeId>,
    /// The members in a shuffled order (target picks).
    order: Vec<NodeId>,

    store: Store,
    store_bytes: usize,
    /// Scratch for a firing bin's packets (kept for its capacity).
    gathered: Vec<(PacketId, Bytes)>,

    bins: Vec<Bin>,
    next_bin: usize,
    bin_seq: u32,
    credit: f64,

    fired: Slab<Fired>,
    intents: VecDeque<RepairIntent>,
    word_pool: Vec<Vec<u8>>,

    kept_xor: Slab<KeptXor>,
    kept_parity: Slab<KeptParity>,
    parity_index: BTreeMap<(u64, u32), (u32, u32)>,
    waiting: BTreeMap<PacketId, Vec<Waiter>>,
    work: VecDeque<(PacketId, Bytes, bool)>,
    rebuilt: VecDeque<(PacketId, Bytes)>,
    rebuilt_bytes: usize,
    codecs: Vec<((usize, usize), ReedSolomon)>,

    missing: BTreeMap<PacketId, Instant>,
    missing_order: VecDeque<(Instant, PacketId)>,

    own_loss: f64,
    /// Mean packets missing from received repairs that miss any.
    missing_mean: f64,
    reports: BTreeMap<NodeId, Report>,
    gap_nanos: f64,
    last_heard: Option<Instant>,
    /// The node's own socket overflow, averaged like `own_loss` (subtracted from it).
    overflow: f64,
    /// How far behind the receive queue is.
    backlog: Duration,
    /// When the core last woke; `None` while asleep (a new core is awake since the epoch).
    awake_since: Option<Instant>,
    /// The last sign of loss in the region (a hole, a repair, a report of loss); `None`
    /// until the first packet.
    last_loss_sign: Option<Instant>,

    stats: LecStats,
}

impl Lec {
    /// A core for `me` in `region`, with targets drawn from a generator seeded by `seed`.
    pub fn new(config: LecConfig, me: NodeId, region: RegionId, seed: u64) -> Lec {
        let stagger = config.stagger.max(1);
        let kept = config.kept_max;
        let fired = config.fired_max;
        Lec {
            me,
            region,
            prng: Prng::new(seed),
            members: Vec::new(),
            order: Vec::new(),
            store: Store::default(),
            store_bytes: 0,
            gathered: Vec::new(),
            bins: (0..stagger).map(|_| Bin::default()).collect(),
            next_bin: 0,
            bin_seq: 0,
            credit: 0.0,
            fired: Slab::new(fired),
            intents: VecDeque::new(),
            word_pool: Vec::new(),
            kept_xor: Slab::new(kept),
            kept_parity: Slab::new(kept),
            parity_index: BTreeMap::new(),
            waiting: BTreeMap::new(),
            work: VecDeque::new(),
            rebuilt: VecDeque::new(),
            rebuilt_bytes: 0,
            codecs: Vec::new(),
            missing: BTreeMap::new(),
            missing_order: VecDeque::new(),
            own_loss: 0.0,
            missing_mean: 1.0,
            reports: BTreeMap::new(),
            gap_nanos: 0.0,
            last_heard: None,
            overflow: 0.0,
            backlog: Duration::ZERO,
            awake_since: Some(Instant(0)),
            last_loss_sign: None,
            stats: LecStats::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LecConfig {
        &self.config
    }

    /// The region's members (this node among them or not); repairs go to, and are accepted
    /// from, these only.
    pub fn set_view(&mut self, members: &[NodeId]) {
        self.members.clear();
        self.members
            .extend(members.iter().copied().filter(|&m| m != self.me));
        self.members.sort_unstable();
        self.members.dedup();
        if self.members.len() > self.config.members_max {
            self.stats.members_dropped += (self.members.len() - self.config.members_max) as u64;
            self.members.truncate(self.config.members_max);
        }
        self.order.clone_from(&self.members);
        let members = &self.members;
        self.reports.retain(|m, _| members.binary_search(m).is_ok());
    }

    fn is_member(&self, n: NodeId) -> bool {
        self.members.binary_search(&n).is_ok()
    }

    /// A data packet of the region (see the module docs for which ones and what `canonical`
    /// is). Returns whether it was new to the store.
    pub fn on_packet(&mut self, now: Instant, id: PacketId, canonical: Bytes) -> bool {
        if !self.is_awake(now) {
            self.heard_asleep(now);
            return false;
        }
        let new = self.accept(now, id, canonical, Source::Heard);
        self.drain_work(now);
        new
    }

    /// [`Lec::on_packet`] for a packet given as bytes to copy: a packet already stored is
    /// counted as a duplicate without a copy, a new one is copied into a recycled buffer (no
    /// allocation in steady state) and `canonicalize` then turns the copy into its canonical
    /// form in place (e.g. zeroes the fields the path writes).
    pub fn on_packet_from(
        &mut self,
        now: Instant,
        id: PacketId,
        bytes: &[u8],
        canonicalize: impl FnOnce(&mut [u8]),
    ) -> bool {
        if !self.is_awake(now) {
            self.heard_asleep(now);
            return false;
        }
        if self.store.contains(&id) {
            self.duplicate(id, Source::Heard);
            return false;
        }
        let mut buf = self.store.buffer();
        buf.extend_from_slice(bytes);
        canonicalize(&mut buf);
        self.on_packet(now, id, buf.freeze())
    }

    /// The node's receive window found `id` missing (the observed-loss input). Reporting a
    /// hole twice, or one already rebuilt, changes nothing.
    pub fn on_missing(&mut self, now: Instant, id: PacketId) {
        if self.store.contains(&id) || self.missing.contains_key(&id) {
            return;
        }
        if self.missing.len() >= self.config.missing_max {
            self.stats.missing_full += 1;
            return;
        }
        self.stats.holes_reported += 1;
        self.wake(now);
        self.missing.insert(id, now);
        self.missing_order.push_back((now, id));
        while self.missing_order.len() > 2 * self.config.missing_max.max(1) {
            self.forget_oldest_missing();
        }
        self.note_loss();
    }

    /// Whether `id` was reported missing and has not arrived or been rebuilt since.
    pub fn is_missing(&self, id: PacketId) -> bool {
        self.missing.contains_key(&id)
    }

    /// A loss report about `member` from elsewhere (e.g. the health gossip): its loss rate
    /// (fraction) and how many packets it misses of the repairs that miss any, as a repair
    /// from it would carry.
    pub fn on_loss_report(&mut self, now: Instant, member: NodeId, loss: f64, missing: f64) {
        if self.is_member(member) {
            if loss > 0.0 {
                self.wake(now);
            }
            self.reports.insert(
                member,
                Report {
                    loss: loss.clamp(0.0, 1.0),
                    missing: missing.max(1.0),
                    at: now,
                },
            );
        }
    }

    /// A lateral repair from `from`, already opened and parsed by the node. Rebuilt packets
    /// come out of [`Lec::poll_rebuilt`].
    pub fn handle_repair(&mut self, now: Instant, from: NodeId, repair: &LecRepair<'_>) {
        if repair.head.region != self.region || !self.is_member(from) || from == self.me {
            self.stats.repairs_foreign += 1;
            return;
        }
        self.stats.repairs_received += 1;
        self.reports.insert(
            from,
            Report {
                loss: f64::from(repair.head.loss) / 65536.0,
                missing: (f64::from(repair.head.missing) / 16.0).max(1.0),
                at: now,
            },
        );
        self.last_loss_sign = Some(now);
        // A repair fired before this core woke (or soon after) covers packets it heard
        // without storing: they would look missing, and count as a burst.
        let grace = self.hold_off();
        if self.awake_since.is_none_or(|t| now < t + grace) && self.sleeps() {
            self.wake(now);
            self.stats.repairs_asleep += 1;
            return;
        }
        match repair.head.code {
            LecCode::Xor => self.handle_xor(now, repair),
            LecCode::ReedSolomon { parity, index } => {
                self.handle_parity(now, from, repair, parity, index)
            }
        }
        self.drain_work(now);
    }

    /// The next packet rebuilt from repairs: its id and canonical bytes (flags and checksum
    /// zeroed, as handed in). The node feeds it to its receive path as if received (not heard
    /// by multicast); it need not hand it back to [`Lec::on_packet`].
    pub fn poll_rebuilt(&mut self) -> Option<(PacketId, Bytes)> {
        let r = self.rebuilt.pop_front()?;
        self.rebuilt_bytes -= r.1.len();
        Some(r)
    }

    /// The next repair datagram to send. Encode it at once with [`Lec::encode`].
    pub fn poll_repair(&mut self) -> Option<RepairIntent> {
        while let Some(i) = self.intents.pop_front() {
            // Its bin expired; the intents it still owed were counted then.
            if self.fired.get(i.slot, i.generation).is_none() {
                continue;
            }
            if !self.is_member(i.to) {
                self.stats.intents_dropped += 1;
                self.finish_intent(i);
                continue;
            }
            return Some(i);
        }
        None
    }

    /// Bytes [`Lec::encode`] writes for `intent`, if it is still live.
    pub fn encoded_len(&self, intent: &RepairIntent) -> Option<usize> {
        let f = self.fired.get(intent.slot, intent.generation)?;
        Some(LecRepair::wire_len(&f.entries, f.longest))
    }

    /// Writes the body of `intent`'s repair (after the common header, which the node writes
    /// with [`qs_transport::wire::PacketKind::LecRepair`]) into `buf`, returning its length.
    /// The code words are computed here, at the moment of sending, once per bin.
    pub fn encode(&mut self, intent: &RepairIntent, buf: &mut [u8]) -> Result<usize, LecError> {
        // A node that is behind asks for fewer repairs: it could not use them in time.
        let head_loss = (self.own_loss() * self.backlog_factor() * 65536.0) as u16;
        let head_missing = (self.missing_mean * 16.0).round().min(255.0) as u8;
        let mut pool = std::mem::take(&mut self.word_pool);
        let codec = {
            let f = self
                .fired
                .get(intent.slot, intent.generation)
                .ok_or(LecError::Stale)?;
            (f.parity > 1 && f.words.is_empty()).then(|| (f.entries.len(), usize::from(f.parity)))
        };
        let codec = codec.and_then(|(n, m)| self.codec(n, m));
        let f = self
            .fired
            .get_mut(intent.slot, intent.generation)
            .ok_or(LecError::Stale)?;
        if f.words.is_empty() {
            compute_words(f, &mut pool, codec.as_ref());
        }
        self.word_pool = pool;
        let code = if f.parity > 1 {
            LecCode::ReedSolomon {
                parity: f.parity,
                index: intent.shard,
            }
        } else {
            LecCode::Xor
        };
        let head = LecHead {
            region: self.region,
            bin: f.bin,
            code,
            loss: head_loss,
            missing: head_missing,
        };
        let word = &f.words[usize::from(intent.shard)];
        let written = LecRepair::write(buf, &head, &f.entries, word);
        self.finish_intent(*intent);
        match written {
            Ok(n) => {
                self.stats.repairs_sent += 1;
                self.stats.repair_bytes_sent += (n + HEADER_LEN) as u64;
                Ok(n)
            }
            Err(_) => {
                self.stats.intents_dropped += 1;
                Err(LecError::BufferTooSmall)
            }
        }
    }

    /// The earliest time [`Lec::handle_timeout`] has work: a bin to fire by age, packets or
    /// holes to forget, kept repairs or fired bins to expire.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min_bin = 2.min(self.config.bin_len());
        let bins = self
            .bins
            .iter()
            .filter(|b| b.packets.len() >= min_bin)
            .map(|b| b.opened + self.config.bin_age_max);
        let store = self.store.oldest().map(|t| t + self.config.store_age);
        let missing = self
            .missing_order
            .front()
            .map(|(t, _)| *t + self.config.missing_ttl);
        let slabs = [
            self.fired.deadlines.front(),
            self.kept_xor.deadlines.front(),
            self.kept_parity.deadlines.front(),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.0);
        bins.chain(store).chain(missing).chain(slabs).min()
    }

    /// Fires aged bins, forgets old packets and holes, expires kept repairs and stale fired
    /// bins. Afterwards nothing is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let min_bin = 2.min(self.config.bin_len());
        for i in 0..self.bins.len() {
            let b = &self.bins[i];
            if b.packets.len() >= min_bin && b.opened + self.config.bin_age_max <= now {
                self.close_bin(now, i);
            }
        }
        self.evict(now);
        while self
            .missing_order
            .front()
            .is_some_and(|(t, _)| *t + self.config.missing_ttl <= now)
        {
            self.forget_oldest_missing();
        }
        while let Some(slot) = self.fired.pop_due(now) {
            self.stats.intents_dropped += u64::from(self.fired.slots[slot as usize].outstanding);
            self.free_fired(slot);
        }
        while let Some(slot) = self.kept_xor.pop_due(now) {
            self.stats.repairs_expired += 1;
            self.free_kept_xor(slot);
        }
        while let Some(slot) = self.kept_parity.pop_due(now) {
            self.stats.repairs_expired += 1;
            self.free_kept_parity(slot);
        }
    }

    /// How long a hole the node just found should wait for a lateral repair before the token
    /// path requests it: about the time a bin takes to fill at the region's receive rate
    /// (`r × stagger` packets, at most [`LecConfig::bin_age_max`]) plus a repair's trip,
    /// bounded by [`LecConfig::hold_off_max`]. Zero when nobody would send one (no peer, or no
    /// targets).
    pub fn hold_off(&self) -> Duration {
        if self.members.is_empty() || self.config.targets == 0 {
            return Duration::ZERO;
        }
        let packets = (self.config.bin_len() * self.bins.len()) as f64;
        let fill = if self.gap_nanos > 0.0 {
            Duration::from_nanos((packets * self.gap_nanos) as u64).min(self.config.bin_age_max)
        } else {
            self.config.bin_age_max
        };
        (fill + self.config.hold_off_slack).min(self.config.hold_off_max)
    }

    /// The region's loss rate as this node sees it: the largest of its own estimate and its
    /// peers' fresh reports.
    pub fn region_loss(&self, now: Instant) -> f64 {
        self.fresh_reports(now)
            .map(|r| r.loss)
            .fold(self.own_loss(), f64::max)
    }

    /// This node's own loss rate estimate, as its repairs report it (in steps of 1/65536, so
    /// an estimate decaying after the last loss reaches zero).
    pub fn own_loss(&self) -> f64 {
        ((self.own_loss - self.overflow).max(0.0) * 65536.0)
            .floor()
            .min(65535.0)
            / 65536.0
    }

    /// The node's receive sockets dropped `n` more datagrams (the kernel's queue was full,
    /// e.g. read from `SO_MEMINFO`). The holes they leave are this node's own overload, not
    /// the network's: they are taken out of the loss estimate its repairs report and its rate
    /// of fire follows (averaged over the same packets), so an overloaded receiver does not
    /// ask its peers for repair traffic that would load it further. Its holes still go to the
    /// ring after the hold-off.
    pub fn on_socket_drops(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.stats.socket_drops += n;
        let w = f64::from(self.config.loss_memory_packets.max(1));
        let keep = (1.0 - 1.0 / w).powi(n.min(i32::MAX as u64) as i32);
        self.overflow = 1.0 - (1.0 - self.overflow) * keep;
    }

    /// How far behind the node's receive queue is: the time its queued bytes take at its
    /// receive rate (e.g. `SO_MEMINFO`'s queued bytes over the bytes read per second).
    /// Between [`LecConfig::backlog_quiet`] and [`LecConfig::backlog_full`] the rate of fire
    /// and the loss this node reports fall linearly to zero.
    pub fn set_backlog(&mut self, behind: Duration) {
        self.backlog = behind;
    }

    /// The factor the receive backlog scales the rate of fire and the reported loss by (1
    /// when not behind).
    pub fn backlog_factor(&self) -> f64 {
        let (quiet, full) = (self.config.backlog_quiet, self.config.backlog_full);
        if self.backlog <= quiet {
            1.0
        } else if self.backlog >= full || full <= quiet {
            0.0
        } else {
            (full - self.backlog).as_secs_f64() / (full - quiet).as_secs_f64()
        }
    }

    /// Whether this configuration sleeps while the region is clean.
    fn sleeps(&self) -> bool {
        self.config.sleep_when_clean && self.config.adaptive && self.config.idle_fraction <= 0.0
    }

    /// Whether the core stores and bins packets at `now` (see
    /// [`LecConfig::sleep_when_clean`]); falls asleep once the region is clean: no own loss,
    /// no fresh report of loss, no hole remembered, and no sign of loss (hole, repair, report)
    /// for [`LecConfig::sleep_after`].
    pub fn is_awake(&mut self, now: Instant) -> bool {
        if !self.sleeps() {
            return true;
        }
        let Some(_) = self.awake_since else {
            return false;
        };
        let since = *self.last_loss_sign.get_or_insert(now);
        if now < since + self.config.sleep_after {
            return true;
        }
        let clean = self.region_loss(now) <= 0.0 && self.missing.is_empty();
        if clean {
            self.awake_since = None;
            for i in 0..self.bins.len() {
                if !self.bins[i].packets.is_empty() {
                    self.stats.bins_silent += 1;
                    self.clear_bin(i);
                }
            }
        }
        !clean
    }

    fn wake(&mut self, now: Instant) {
        self.last_loss_sign = Some(now);
        if self.sleeps() && self.awake_since.is_none() {
            self.awake_since = Some(now);
            self.stats.wakes += 1;
        }
    }

    /// A packet heard while asleep: it counts for the loss average and the receive rate only.
    fn heard_asleep(&mut self, now: Instant) {
        self.stats.packets_asleep += 1;
        self.note_heard(now);
    }

    /// How many packets members miss, on average, of the repairs they receive that miss any:
    /// the largest of this node's own figure and its peers' fresh reports (1 when nobody
    /// loses).
    pub fn region_missing(&self, now: Instant) -> f64 {
        let own = if self.own_loss() > 0.0 {
            self.missing_mean
        } else {
            1.0
        };
        self.fresh_reports(now)
            .filter(|r| r.loss > 0.0)
            .map(|r| r.missing)
            .fold(own, f64::max)
    }

    /// The fraction of the full rate of fire (`c` targets per bin) bins fire at now.
    pub fn fire_fraction(&self, now: Instant) -> f64 {
        if !self.config.adaptive {
            return self.backlog_factor();
        }
        let full = self.config.full_rate_loss.max(f64::MIN_POSITIVE);
        (self.region_loss(now) / full).clamp(self.config.idle_fraction.clamp(0.0, 1.0), 1.0)
            * self.backlog_factor()
    }

    /// Counters.
    pub fn stats(&self) -> LecStats {
        let mut s = self.stats;
        s.memory_bytes = self.memory_bytes() as u64;
        s
    }

    /// Checks the internal bookkeeping; panics on a violation (the simulator calls it after
    /// every event).
    pub fn check_invariants(&self) {
        let bytes: usize = self.store.values().map(Bytes::len).sum();
        assert_eq!(bytes, self.store_bytes, "store byte count drifted");
        self.store.check_invariants();
        assert!(self.store.len() <= self.config.store_packets_max.max(1));
        assert!(self.store_bytes <= self.config.store_bytes_max.max(self.largest_packet()));
        for b in &self.bins {
            assert!(
                b.packets.is_empty() || b.packets.len() < b.size,
                "a full bin did not fire"
            );
            assert!(
                b.packets.is_empty() || b.longest <= self.config.max_datagram,
                "bin over a datagram"
            );
        }
        assert!(self.intents.len() <= self.config.intents_max);
        assert!(self.rebuilt.len() <= self.config.rebuilt_max);
        assert_eq!(
            self.rebuilt_bytes,
            self.rebuilt.iter().map(|r| r.1.len()).sum::<usize>()
        );
        assert!(self.missing.len() <= self.config.missing_max);
        assert_eq!(self.parity_index.len(), self.kept_parity.live);
        assert!(self.kept_xor.live <= self.config.kept_max);
        assert!(self.fired.live <= self.config.fired_max);
        for (id, ws) in &self.waiting {
            assert!(!ws.is_empty(), "empty waiter list");
            assert!(!self.store.contains(id), "a known packet is waited for");
            for w in ws {
                match *w {
                    Waiter::Xor(s, g) => {
                        let k = self.kept_xor.get(s, g).expect("waiter of a freed repair");
                        assert!(k.missing.iter().any(|e| e.id == *id));
                        assert!(k.missing.len() >= 2);
                    }
                    Waiter::Parity(s, g) => {
                        let k = self.kept_parity.get(s, g).expect("waiter of a freed bin");
                        assert!(k.entries.iter().any(|e| e.id == *id));
                    }
                }
            }
        }
        assert!(self.memory_bytes() <= self.config.memory_budget() + self.largest_packet());
        assert!(self.work.is_empty(), "cascade work left over");
    }

    fn largest_packet(&self) -> usize {
        self.store.values().map(Bytes::len).max().unwrap_or(0)
    }

    fn memory_bytes(&self) -> usize {
        let kept: usize = self
            .kept_xor
            .slots
            .iter()
            .filter(|k| k.active)
            .map(|k| k.word.len())
            .sum();
        let parity: usize = self
            .kept_parity
            .slots
            .iter()
            .filter(|k| k.active)
            .flat_map(|k| k.shards.iter().flatten())
            .map(Vec::len)
            .sum();
        let fired: usize = self
            .fired
            .slots
            .iter()
            .filter(|f| f.active)
            .flat_map(|f| f.words.iter())
            .map(Vec::len)
            .sum();
        self.store_bytes + self.store.idle_bytes() + kept + parity + fired + self.rebuilt_bytes
    }

    fn fresh_reports(&self, now: Instant) -> impl Iterator<Item = &Report> + '_ {
        let ttl = self.config.report_ttl;
        self.reports.values().filter(move |r| r.at + ttl > now)
    }

    /// A received repair missed `n ≥ 1` packets.
    fn note_missing(&mut self, n: usize) {
        self.missing_mean += (n as f64 - self.missing_mean) / 32.0;
    }

    // ---- intake -------------------------------------------------------------------------

    /// Takes a packet into the store and a bin and feeds the kept repairs waiting for it.
    fn accept(&mut self, now: Instant, id: PacketId, bytes: Bytes, source: Source) -> bool {
        if self.store.contains(&id) {
            self.duplicate(id, source);
            return false;
        }
        let was_missing = self.missing.remove(&id).is_some();
        match source {
            Source::Heard => {
                self.stats.packets_in += 1;
                if !was_missing {
                    self.note_heard(now);
                }
            }
            Source::Rebuilt => {
                if !was_missing {
                    self.stats.rebuilt_unreported += 1;
                    self.note_loss();
                }
            }
        }
        let len = bytes.len();
        self.store_bytes += len;
        let waiters = self.waiting.remove(&id);
        let fed = waiters.as_ref().map(|_| bytes.clone());
        self.store.push(now, id, bytes, source == Source::Rebuilt);
        self.evict(now);
        if let (Some(ws), Some(bytes)) = (waiters, fed) {
            for w in ws {
                self.feed(now, w, id, &bytes);
            }
        }
        self.bin(now, id, len);
        true
    }

    /// A packet stored already came in again. When it was rebuilt and now arrives by itself,
    /// it was late, not lost: the repair was wasted and the loss it counted is taken back, so
    /// the rate of fire does not feed on delays its own repairs may have caused (an overloaded
    /// receiver's queues).
    fn duplicate(&mut self, id: PacketId, source: Source) {
        self.stats.duplicates += 1;
        if source == Source::Heard && self.store.take_rebuilt(&id) {
            self.stats.rebuilt_then_heard += 1;
            let w = f64::from(self.config.loss_memory_packets.max(1));
            // The inverse of `note_loss`.
            self.own_loss = if w > 1.0 {
                ((self.own_loss - 1.0 / w) / (1.0 - 1.0 / w)).max(0.0)
            } else {
                0.0
            };
        }
    }

    fn evict(&mut self, now: Instant) {
        while let Some(t) = self.store.oldest() {
            let full = self.store.len() > self.config.store_packets_max.max(1)
                || self.store_bytes > self.config.store_bytes_max;
            if !full && t + self.config.store_age > now {
                break;
            }
            // Never evict the packet just stored for being over the byte limit on its own.
            if self.store.len() == 1 && t + self.config.store_age > now {
                break;
            }
            if full && t + self.config.store_age > now {
                self.stats.store_evicted_early += 1;
            }
            if let Some(len) = self.store.pop_oldest(self.config.max_datagram) {
                self.store_bytes -= len;
            }
        }
    }

    fn forget_oldest_missing(&mut self) {
        if let Some((t, id)) = self.missing_order.pop_front() {
            if self.missing.get(&id) == Some(&t) {
                self.missing.remove(&id);
            }
        }
    }

    fn note_heard(&mut self, now: Instant) {
        let w = f64::from(self.config.loss_memory_packets.max(1));
        self.own_loss -= self.own_loss / w;
        self.overflow -= self.overflow / w;
        if let Some(last) = self.last_heard {
            let gap = now.saturating_duration_since(last).as_nanos() as f64;
            self.gap_nanos = if self.gap_nanos == 0.0 {
                gap
            } else {
                self.gap_nanos + (gap - self.gap_nanos) / 64.0
            };
        }
        self.last_heard = Some(now);
    }

    fn note_loss(&mut self) {
        let w = f64::from(self.config.loss_memory_packets.max(1));
        self.own_loss += (1.0 - self.own_loss) / w;
    }

    // ---- bins and firing ----------------------------------------------------------------

    fn bin(&mut self, now: Instant, id: PacketId, len: usize) {
        if self.members.is_empty() || self.config.targets == 0 {
            return;
        }
        let alone = Bin::default().datagram_len_with(&id, len);
        if alone > self.config.max_datagram {
            self.stats.unrepairable += 1;
            return;
        }
        let i = self.next_bin % self.bins.len();
        self.next_bin = (i + 1) % self.bins.len();
        if self.bins[i].datagram_len_with(&id, len) > self.config.max_datagram {
            self.close_bin(now, i);
        }
        if self.bins[i].packets.is_empty() {
            let size = self.config.bin_len();
            let b = &mut self.bins[i];
            b.opened = now;
            b.size = size;
        }
        let b = &mut self.bins[i];
        if !b.streams.contains(&(id.sender, id.epoch)) {
            b.streams.push((id.sender, id.epoch));
        }
        b.longest = b.longest.max(len);
        b.packets.push(id);
        if b.packets.len() >= b.size {
            self.close_bin(now, i);
        }
    }

    /// Empties bin `i`, firing it to as many members as the rate of fire allows.
    fn close_bin(&mut self, now: Instant, i: usize) {
        if self.bins[i].packets.is_empty() {
            return;
        }
        let targets = self.config.targets.min(LEC_MAX_TARGETS);
        self.credit =
            (self.credit + self.fire_fraction(now) * targets as f64).min(targets as f64 + 1.0);
        let n = (self.credit.floor() as usize)
            .min(targets)
            .min(self.order.len());
        if n == 0 {
            self.stats.bins_silent += 1;
            self.clear_bin(i);
            return;
        }
        self.credit -= n as f64;
        // The bin's packets still in the store (one evicted early, by the store's limits or
        // a lone packet outliving the store's age, is left out of the repair).
        let mut gathered = std::mem::take(&mut self.gathered);
        gathered.clear();
        for id in &self.bins[i].packets {
            if let Some(b) = self.store.get(id) {
                gathered.push((*id, b.clone()));
            }
        }
        if gathered.is_empty() {
            self.stats.bins_silent += 1;
            self.gathered = gathered;
            self.clear_bin(i);
            return;
        }
        let packets = gathered.len();
        let m = self.config.parity();
        let parity = m > 1
            && packets >= 2
            && packets + m <= 256
            && self.region_missing(now) >= self.config.parity_from_missing;
        let (members, shards) = if parity {
            let t = match self.config.parity_targets {
                0 => n,
                t => (t as f64 * n as f64 / targets as f64).ceil() as usize,
            };
            (t.clamp(1, LEC_MAX_TARGETS).min(self.members.len()), m)
        } else {
            (n, 1)
        };
        if self.intents.len() + members * shards > self.config.intents_max {
            self.stats.intents_dropped += (members * shards) as u64;
            self.gathered = gathered;
            self.clear_bin(i);
            return;
        }
        let Some(slot) = self.fired.alloc() else {
            self.stats.fired_full += 1;
            self.gathered = gathered;
            self.clear_bin(i);
            return;
        };
        self.bin_seq = self.bin_seq.wrapping_add(1);
        let bin_seq = self.bin_seq;
        gathered.sort_unstable_by_key(|p| p.0);
        let f = &mut self.fired.slots[slot as usize];
        f.generation = f.generation.wrapping_add(1);
        f.active = true;
        f.bin = bin_seq;
        f.born = now;
        f.parity = shards as u8;
        f.longest = 0;
        f.entries.clear();
        f.packets.clear();
        f.words.clear();
        for (id, bytes) in gathered.drain(..) {
            f.longest = f.longest.max(bytes.len());
            f.entries.push(LecEntry {
                id,
                len: bytes.len() as u16,
                digest: lec_digest(&bytes),
            });
            f.packets.push(bytes);
        }
        f.outstanding = (members * shards) as u32;
        let generation = f.generation;
        self.gathered = gathered;
        self.fired.live += 1;
        self.fired
            .deadlines
            .push_back((now + self.config.repair_ttl, slot, generation));
        while self.fired.deadlines.len() > 2 * self.config.fired_max.max(1) {
            let (_, s, g) = self.fired.deadlines.pop_front().expect("non-empty");
            if let Some(f) = self.fired.get(s, g) {
                self.stats.intents_dropped += u64::from(f.outstanding);
                self.free_fired(s);
            }
        }
        self.clear_bin(i);
        self.stats.bins_fired += 1;
        if parity {
            self.stats.bins_parity += 1;
        }
        for k in 0..members {
            let to = self.pick_target(k);
            for shard in 0..shards {
                self.intents.push_back(RepairIntent {
                    to,
                    slot,
                    generation,
                    shard: shard as u8,
                });
            }
        }
    }

    fn clear_bin(&mut self, i: usize) {
        let b = &mut self.bins[i];
        b.packets.clear();
        b.streams.clear();
        b.longest = 0;
    }

    /// Target `k` (counting from 0 within one bin) of a bin: one step of a partial
    /// Fisher–Yates shuffle of `order`, a permutation of the members, so a bin's targets are
    /// distinct uniform picks.
    fn pick_target(&mut self, k: usize) -> NodeId {
        let n = self.order.len();
        let j = k + self.prng.below((n - k) as u64) as usize;
        self.order.swap(k, j);
        self.order[k]
    }

    fn finish_intent(&mut self, i: RepairIntent) {
        if let Some(f) = self.fired.get_mut(i.slot, i.generation) {
            f.outstanding = f.outstanding.saturating_sub(1);
            if f.outstanding == 0 {
                self.free_fired(i.slot);
            }
        }
    }

    fn free_fired(&mut self, slot: u32) {
        let f = &mut self.fired.slots[slot as usize];
        f.active = false;
        f.packets.clear();
        let words = std::mem::take(&mut f.words);
        for w in words {
            self.recycle(w);
        }
        self.fired.free.push(slot);
        self.fired.live -= 1;
    }

    fn recycle(&mut self, word: Vec<u8>) {
        if self.word_pool.len() < self.config.fired_max * self.config.parity() {
            self.word_pool.push(word);
        }
    }

    fn codec(&mut self, data: usize, parity: usize) -> Option<ReedSolomon> {
        if let Some((_, c)) = self.codecs.iter().find(|(k, _)| *k == (data, parity)) {
            return Some(c.clone());
        }
        let c = ReedSolomon::new(data, parity).ok()?;
        if self.codecs.len() >= 8 {
            self.codecs.remove(0);
        }
        self.codecs.push(((data, parity), c.clone()));
        Some(c)
    }

    // ---- decoding -----------------------------------------------------------------------

    fn handle_xor(&mut self, now: Instant, repair: &LecRepair<'_>) {
        let unknown = repair
            .entries()
            .filter(|e| !self.store.contains(&e.id))
            .count();
        if unknown == 0 {
            self.stats.repairs_redundant += 1;
            return;
        }
        self.note_missing(unknown);
        let mut word = self.word_pool.pop().unwrap_or_default();
        word.clear();
        word.extend_from_slice(repair.payload);
        let mut missing = Vec::with_capacity(unknown);
        for e in repair.entries() {
            match self.store.get(&e.id) {
                Some(b) if b.len() == usize::from(e.len) => xor_into(&mut word, b),
                // Same id, other bytes: the rebuild could only be wrong.
                Some(_) => {
                    self.stats.digest_mismatch += 1;
                    self.recycle(word);
                    return;
                }
                None => missing.push(e),
            }
        }
        if unknown == 1 {
            self.rebuild(missing[0], &word, false);
            self.recycle(word);
            return;
        }
        self.stats.repairs_undecodable += 1;
        if unknown > self.config.kept_missing_max {
            self.recycle(word);
            return;
        }
        let Some(slot) = self.kept_xor.alloc() else {
            self.stats.kept_full += 1;
            self.recycle(word);
            return;
        };
        self.stats.repairs_kept += 1;
        let k = &mut self.kept_xor.slots[slot as usize];
        k.generation = k.generation.wrapping_add(1);
        k.active = true;
        k.missing = missing;
        k.word = word;
        let generation = k.generation;
        self.kept_xor.live += 1;
        self.kept_xor
            .deadlines
            .push_back((now + self.config.kept_ttl, slot, generation));
        while self.kept_xor.deadlines.len() > 2 * self.config.kept_max.max(1) {
            let (_, s, g) = self.kept_xor.deadlines.pop_front().expect("non-empty");
            if self.kept_xor.get(s, g).is_some() {
                self.stats.repairs_expired += 1;
                self.free_kept_xor(s);
            }
        }
        for e in &self.kept_xor.slots[slot as usize].missing {
            self.waiting
                .entry(e.id)
                .or_default()
                .push(Waiter::Xor(slot, generation));
        }
    }

    fn handle_parity(
        &mut self,
        now: Instant,
        from: NodeId,
        repair: &LecRepair<'_>,
        parity: u8,
        index: u8,
    ) {
        let key = (from.0, repair.head.bin);
        let (slot, generation) = match self.parity_index.get(&key) {
            Some(&sg) => sg,
            None => {
                let unknown = repair
                    .entries()
                    .filter(|e| !self.store.contains(&e.id))
                    .count();
                if unknown == 0 {
                    self.stats.repairs_redundant += 1;
                    return;
                }
                self.note_missing(unknown);
                let Some(slot) = self.kept_parity.alloc() else {
                    self.stats.kept_full += 1;
                    return;
                };
                let k = &mut self.kept_parity.slots[slot as usize];
                k.generation = k.generation.wrapping_add(1);
                k.active = true;
                k.key = key;
                k.entries.clear();
                k.entries.extend(repair.entries());
                k.longest = repair.payload.len();
                k.shards.clear();
                k.shards.resize(usize::from(parity), None);
                let generation = k.generation;
                self.kept_parity.live += 1;
                self.kept_parity.deadlines.push_back((
                    now + self.config.kept_ttl,
                    slot,
                    generation,
                ));
                while self.kept_parity.deadlines.len() > 2 * self.config.kept_max.max(1) {
                    let (_, s, g) = self.kept_parity.deadlines.pop_front().expect("non-empty");
                    if self.kept_parity.get(s, g).is_some() && (s, g) != (slot, generation) {
                        self.stats.repairs_expired += 1;
                        self.free_kept_parity(s);
                    }
                }
                self.parity_index.insert(key, (slot, generation));
                for e in repair.entries() {
                    if !self.store.contains(&e.id) {
                        self.waiting
                            .entry(e.id)
                            .or_default()
                            .push(Waiter::Parity(slot, generation));
                    }
                }
                if unknown > usize::from(parity) {
                    self.stats.repairs_undecodable += 1;
                    self.stats.repairs_kept += 1;
                }
                (slot, generation)
            }
        };
        let Some(k) = self.kept_parity.get_mut(slot, generation) else {
            return;
        };
        if k.shards.len() != usize::from(parity)
            || k.longest != repair.payload.len()
            || k.entries.len() != repair.len()
            || !k.entries.iter().copied().eq(repair.entries())
        {
            self.stats.repairs_inconsistent += 1;
            return;
        }
        let s = &mut k.shards[usize::from(index)];
        if s.is_some() {
            self.stats.repairs_redundant += 1;
            return;
        }
        *s = Some(repair.payload.to_vec());
        self.try_parity(slot, generation, false);
    }

    /// Decodes a Reed–Solomon bin if it holds enough shards.
    fn try_parity(&mut self, slot: u32, generation: u32, cascade: bool) {
        let Some(k) = self.kept_parity.get(slot, generation) else {
            return;
        };
        let have = k.shards.iter().filter(|s| s.is_some()).count();
        let unknown: Vec<usize> = (0..k.entries.len())
            .filter(|&i| !self.store.contains(&k.entries[i].id))
            .collect();
        if unknown.is_empty() {
            self.free_kept_parity(slot);
            return;
        }
        if have < unknown.len() {
            return;
        }
        let (n, m, longest) = (k.entries.len(), k.shards.len(), k.longest);
        let Some(codec) = self.codec(n, m) else {
            self.free_kept_parity(slot);
            return;
        };
        let k = &self.kept_parity.slots[slot as usize];
        let mut shards: Vec<Option<Vec<u8>>> = k
            .entries
            .iter()
            .map(|e| {
                self.store.get(&e.id).map(|b| {
                    let mut v = vec![0u8; longest];
                    v[..b.len().min(longest)].copy_from_slice(&b[..b.len().min(longest)]);
                    v
                })
            })
            .chain(k.shards.iter().cloned())
            .collect();
        let entries: Vec<LecEntry> = unknown.iter().map(|&i| k.entries[i]).collect();
        self.free_kept_parity(slot);
        if codec.reconstruct_data(&mut shards).is_err() {
            self.stats.repairs_inconsistent += 1;
            return;
        }
        for (e, i) in entries.into_iter().zip(unknown) {
            if let Some(word) = shards[i].take() {
                self.rebuild(e, &word, cascade);
            }
        }
    }

    /// A kept repair learns one of its packets.
    fn feed(&mut self, _now: Instant, w: Waiter, id: PacketId, bytes: &Bytes) {
        match w {
            Waiter::Xor(slot, generation) => {
                let Some(k) = self.kept_xor.get_mut(slot, generation) else {
                    return;
                };
                let Some(pos) = k.missing.iter().position(|e| e.id == id) else {
                    return;
                };
                let e = k.missing.swap_remove(pos);
                if bytes.len() != usize::from(e.len) {
                    self.stats.digest_mismatch += 1;
                    self.free_kept_xor(slot);
                    return;
                }
                xor_into(&mut k.word, bytes);
                if k.missing.len() == 1 {
                    let last = k.missing[0];
                    let word = std::mem::take(&mut k.word);
                    self.free_kept_xor(slot);
                    self.rebuild(last, &word, true);
                }
            }
            Waiter::Parity(slot, generation) => self.try_parity(slot, generation, true),
        }
    }

    /// Checks a decoded code word against its entry and queues the packet.
    fn rebuild(&mut self, e: LecEntry, word: &[u8], cascade: bool) {
        let len = usize::from(e.len);
        if word.len() < len || word[len..].iter().any(|&b| b != 0) {
            self.stats.digest_mismatch += 1;
            return;
        }
        let bytes = &word[..len];
        if lec_digest(bytes) != e.digest {
            self.stats.digest_mismatch += 1;
            return;
        }
        self.work
            .push_back((e.id, Bytes::copy_from_slice(bytes), cascade));
    }

    /// Takes rebuilt packets in (which may make kept repairs decodable in turn) and queues
    /// them for the node.
    fn drain_work(&mut self, now: Instant) {
        while let Some((id, bytes, cascade)) = self.work.pop_front() {
            if !self.accept(now, id, bytes.clone(), Source::Rebuilt) {
                continue;
            }
            self.stats.rebuilt += 1;
            if cascade {
                self.stats.cascades += 1;
            }
            if self.rebuilt.len() >= self.config.rebuilt_max {
                self.stats.rebuilt_dropped += 1;
                continue;
            }
            self.rebuilt_bytes += bytes.len();
            self.rebuilt.push_back((id, bytes));
        }
    }

    fn free_kept_xor(&mut self, slot: u32) {
        let k = &mut self.kept_xor.slots[slot as usize];
        k.active = false;
        let generation = k.generation;
        let missing = std::mem::take(&mut k.missing);
        let word = std::mem::take(&mut k.word);
        self.recycle(word);
        for e in &missing {
            unwait(&mut self.waiting, e.id, Waiter::Xor(slot, generation));
        }
        self.kept_xor.free.push(slot);
        self.kept_xor.live -= 1;
    }

    fn free_kept_parity(&mut self, slot: u32) {
        let k = &mut self.kept_parity.slots[slot as usize];
        k.active = false;
        let generation = k.generation;
        self.parity_index.remove(&k.key);
        k.shards.clear();
        let entries = std::mem::take(&mut k.entries);
        for e in &entries {
            unwait(&mut self.waiting, e.id, Waiter::Parity(slot, generation));
        }
        self.kept_parity.slots[slot as usize].entries = entries;
        self.kept_parity.free.push(slot);
        self.kept_parity.live -= 1;
    }
}

fn unwait(waiting: &mut BTreeMap<PacketId, Vec<Waiter>>, id: PacketId, w: Waiter) {
    if let Some(ws) = waiting.get_mut(&id) {
        ws.retain(|x| *x != w);
        if ws.is_empty() {
            waiting.remove(&id);
        }
    }
}

/// Computes a fired bin's code words: the XOR of its packets, or its parity shards.
fn compute_words(f: &mut Fired, pool: &mut Vec<Vec<u8>>, codec: Option<&ReedSolomon>) {
    let longest = f.longest;
    let word = |pool: &mut Vec<Vec<u8>>| {
        let mut w = pool.pop().unwrap_or_default();
        w.clear();
        w.resize(longest, 0);
        w
    };
    if f.parity <= 1 {
        let mut w = word(pool);
        for p in &f.packets {
            xor_into(&mut w, p);
        }
        f.words.push(w);
        return;
    }
    let data: Vec<Vec<u8>> = f
        .packets
        .iter()
        .map(|p| {
            let mut v = word(pool);
            v[..p.len()].copy_from_slice(p);
            v
        })
        .collect();
    let mut parity: Vec<Vec<u8>> = (0..f.parity).map(|_| word(pool)).collect();
    if let Some(c) = codec {
        // Shard counts and lengths are ours and consistent, so this cannot fail.
        let _ = c.encode_sep(&data, &mut parity);
    }
    pool.extend(data);
    f.words = parity;
}

/// `dst ^= src` over the shorter of the two. Written so the compiler vectorises it (fixed
/// 32-byte chunks), the kernel every repair and rebuild runs.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut d = dst.chunks_exact_mut(32);
    let mut s = src.chunks_exact(32);
    for (a, b) in (&mut d).zip(&mut s) {
        for i in 0..32 {
            a[i] ^= b[i];
        }
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a ^= *b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qs_transport::Seq;

    const REGION: RegionId = RegionId(0x5eed);

    fn id(sender: u64, seq: u32) -> PacketId {
        PacketId {
            sender: NodeId(sender),
            epoch: 0,
            seq: Seq(seq),
        }
    }

    /// Deterministic canonical bytes of a packet (content depends on the id and length).
    fn bytes(id: PacketId, len: usize) -> Bytes {
        let mut p = Prng::new(id.sender.0 ^ u64::from(id.seq.0) << 20 ^ len as u64);
        Bytes::from((0..len).map(|_| p.next_u64() as u8).collect::<Vec<u8>>())
    }

    fn pkt(sender: u64, seq: u32, len: usize) -> (PacketId, Bytes) {
        let i = id(sender, seq);
        (i, bytes(i, len))
    }

    fn config() -> LecConfig {
        LecConfig {
            bin_packets: 4,
            targets: 1,
            stagger: 1,
            parity_shards: 1,
            adaptive: false,
            ..LecConfig::default()
        }
    }

    fn node(config: &LecConfig, me: u64, members: &[u64]) -> Lec {
        let mut l = Lec::new(config.clone(), NodeId(me), REGION, me);
        let m: Vec<NodeId> = members.iter().map(|&m| NodeId(m)).collect();
        l.set_view(&m);
        l
    }

    /// Every repair `from` has queued, encoded and parsed: (target, body).
    fn drain(from: &mut Lec) -> Vec<(NodeId, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(i) = from.poll_repair() {
            let mut buf = vec![0u8; from.encoded_len(&i).unwrap()];
            let n = from.encode(&i, &mut buf).unwrap();
            assert_eq!(n, buf.len());
            out.push((i.to, buf));
        }
        out
    }

    fn deliver(now: Instant, from: NodeId, to: &mut Lec, body: &[u8]) {
        let r = LecRepair::parse(body).expect("a repair we encoded parses");
        to.handle_repair(now, from, &r);
        to.check_invariants();
    }

    fn rebuilt(l: &mut Lec) -> Vec<(PacketId, Bytes)> {
        std::iter::from_fn(|| l.poll_rebuilt()).collect()
    }

    /// An XOR repair over `packets` written by hand (for decoder tests).
    fn xor_repair(bin: u32, packets: &[(PacketId, Bytes)]) -> Vec<u8> {
        let mut ps = packets.to_vec();
        ps.sort_by_key(|p| p.0);
        let longest = ps.iter().map(|p| p.1.len()).max().unwrap();
        let mut word = vec![0u8; longest];
        for p in &ps {
            xor_into(&mut word, &p.1);
        }
        let entries: Vec<LecEntry> = ps
            .iter()
            .map(|(i, b)| LecEntry {
                id: *i,
                len: b.len() as u16,
                digest: lec_digest(b),
            })
            .collect();
        let head = LecHead {
            region: REGION,
            bin,
            code: LecCode::Xor,
            loss: 0,
            missing: 16,
        };
        let mut buf = vec![0u8; LecRepair::wire_len(&entries, longest)];
        LecRepair::write(&mut buf, &head, &entries, &word).unwrap();
        buf
    }

    const T0: Instant = Instant(1_000_000);

    #[test]
    fn a_single_loss_is_rebuilt_exactly_from_a_peers_xor() {
        let c = config();
        let mut a = node(&c, 1, &[1, 2]);
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=4).map(|q| pkt(9, q, 100 + 50 * q as usize)).collect();
        for (i, p) in ps.iter().enumerate() {
            a.on_packet(T0, p.0, p.1.clone());
            if i != 2 {
                b.on_packet(T0, p.0, p.1.clone());
            }
            a.check_invariants();
        }
        let out = drain(&mut a);
        assert_eq!(
            out.len(),
            1,
            "r = 4 packets fire one repair to c = 1 member"
        );
        assert_eq!(out[0].0, NodeId(2));
        deliver(T0, NodeId(1), &mut b, &out[0].1);
        assert_eq!(rebuilt(&mut b), vec![ps[2].clone()]);
        let s = b.stats();
        assert_eq!((s.rebuilt, s.rebuilt_unreported, s.cascades), (1, 1, 0));
        assert_eq!(a.stats().repairs_sent, 1);
    }

    fn sleepy() -> LecConfig {
        LecConfig {
            adaptive: true,
            sleep_when_clean: true,
            ..config()
        }
    }

    /// A core that heard a packet at `T0` and, clean since, fell asleep at the packet it got
    /// `sleep_after` later; returns it and that time.
    fn asleep(c: &LecConfig, me: u64, members: &[u64]) -> (Lec, Instant) {
        let mut l = node(c, me, members);
        let p = pkt(8, 1, 64);
        l.on_packet(T0, p.0, p.1);
        let t = T0 + c.sleep_after - Duration::from_nanos(1);
        let p = pkt(8, 2, 64);
        l.on_packet(t, p.0, p.1);
        assert_eq!(l.stats().packets_asleep, 0, "awake within sleep_after");
        let t = T0 + c.sleep_after;
        let p = pkt(8, 3, 64);
        l.on_packet(t, p.0, p.1);
        assert_eq!(l.stats().packets_asleep, 1, "asleep from sleep_after");
        (l, t)
    }

    #[test]
    fn a_sleeping_core_wakes_on_a_repair_and_decodes_only_repairs_after_its_grace() {
        let c = sleepy();
        let (mut b, t0) = asleep(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=8).map(|q| pkt(9, q, 64)).collect();
        for p in &ps[..3] {
            b.on_packet(t0, p.0, p.1.clone());
        }
        assert_eq!(b.stats().packets_asleep, 4);
        // A repair of packets it heard asleep: not decoded (they are not stored), but it
        // wakes the core.
        deliver(t0, NodeId(1), &mut b, &xor_repair(1, &ps[..4]));
        assert!(rebuilt(&mut b).is_empty());
        let s = b.stats();
        assert_eq!(
            (s.repairs_asleep, s.wakes, s.repairs_undecodable),
            (1, 1, 0)
        );
        let grace = b.hold_off();
        let t = t0 + grace;
        for p in [&ps[4], &ps[5], &ps[7]] {
            b.on_packet(t, p.0, p.1.clone());
        }
        assert_eq!(b.stats().packets_asleep, 4, "awake: stored");
        // Just before the grace ends a repair is still skipped; at its end it rebuilds.
        deliver(
            t - Duration::from_nanos(1),
            NodeId(1),
            &mut b,
            &xor_repair(2, &ps[4..]),
        );
        assert!(rebuilt(&mut b).is_empty());
        assert_eq!(b.stats().repairs_asleep, 2);
        deliver(t, NodeId(1), &mut b, &xor_repair(3, &ps[4..]));
        assert_eq!(rebuilt(&mut b), vec![ps[6].clone()]);
    }

    #[test]
    fn a_woken_core_sleeps_again_after_a_clean_spell_and_its_own_loss_wakes_it() {
        let c = sleepy();
        let (mut b, t0) = asleep(&c, 2, &[1, 2]);
        deliver(t0, NodeId(1), &mut b, &xor_repair(1, &[pkt(9, 1, 64)]));
        assert_eq!(b.stats().wakes, 1);
        let p = pkt(9, 2, 64);
        b.on_packet(t0 + c.sleep_after - Duration::from_nanos(1), p.0, p.1);
        assert_eq!(
            b.stats().packets_asleep,
            1,
            "awake within sleep_after of the repair"
        );
        let t = t0 + c.sleep_after;
        let p = pkt(9, 3, 64);
        b.on_packet(t, p.0, p.1);
        assert_eq!(b.stats().packets_asleep, 2, "asleep after it");
        // Its own loss wakes it at once.
        b.on_missing(t, id(9, 4));
        let p = pkt(9, 5, 64);
        b.on_packet(t, p.0, p.1);
        let s = b.stats();
        assert_eq!((s.wakes, s.packets_asleep), (2, 2));
        // A remembered hole keeps it awake past sleep_after, as does a fresh report of loss.
        let p = pkt(9, 6, 64);
        b.on_packet(t + c.sleep_after, p.0, p.1);
        assert_eq!(b.stats().packets_asleep, 2, "a hole is still open");
    }

    #[test]
    fn socket_drops_take_back_the_loss_they_caused_but_not_the_networks() {
        let c = LecConfig {
            adaptive: true,
            sleep_when_clean: false,
            ..config()
        };
        for (holes, drops) in [(10u32, 10u64), (10, 20), (20, 10), (10, 0)] {
            let mut a = node(&c, 1, &[1, 2]);
            let mut seq = 1;
            for _ in 0..holes {
                a.on_missing(T0, id(9, seq));
                let p = pkt(9, seq + 1, 64);
                a.on_packet(T0, p.0, p.1);
                seq += 2;
            }
            a.on_socket_drops(drops);
            let w = f64::from(c.loss_memory_packets);
            let expect = (f64::from(holes) - drops as f64).max(0.0) / w;
            assert!(
                (a.own_loss() - expect).abs() < 0.15 * f64::from(holes) / w,
                "{holes} holes, {drops} drops: loss {} expected about {expect}",
                a.own_loss()
            );
            assert_eq!(a.stats().socket_drops, drops);
            assert_eq!(a.fire_fraction(T0) > 0.0, holes as u64 > drops);
        }
    }

    #[test]
    fn the_receive_backlog_scales_the_rate_of_fire_from_quiet_to_full() {
        for adaptive in [false, true] {
            let c = LecConfig {
                adaptive,
                sleep_when_clean: false,
                ..config()
            };
            let mut a = node(&c, 1, &[1, 2]);
            a.on_missing(T0, id(9, 1));
            assert_eq!(a.fire_fraction(T0), 1.0);
            let mid = (c.backlog_quiet + c.backlog_full) / 2;
            let ns = Duration::from_nanos(1);
            for (behind, fraction) in [
                (Duration::ZERO, 1.0),
                (c.backlog_quiet, 1.0),
                (c.backlog_quiet + ns, 1.0),
                (mid, 0.5),
                (c.backlog_full - ns, 0.0),
                (c.backlog_full, 0.0),
                (Duration::MAX, 0.0),
            ] {
                a.set_backlog(behind);
                assert!(
                    (a.fire_fraction(T0) - fraction).abs() < 1e-6,
                    "{behind:?} behind: {} expected {fraction}",
                    a.fire_fraction(T0)
                );
            }
            // Behind: a full bin fires to nobody.
            a.set_backlog(c.backlog_full);
            for q in 2..=5 {
                let p = pkt(9, q, 64);
                a.on_packet(T0, p.0, p.1);
            }
            assert!(drain(&mut a).is_empty());
            // Half way: repairs go out, reporting half the loss.
            let mut b = node(&c, 2, &[1, 2]);
            a.set_backlog(mid);
            for q in 6..=13 {
                let p = pkt(9, q, 64);
                a.on_packet(T0, p.0, p.1);
            }
            let out = drain(&mut a);
            assert!(!out.is_empty());
            deliver(T0, NodeId(1), &mut b, &out[0].1);
            let half = a.own_loss() / 2.0;
            assert!(
                (b.region_loss(T0) - half).abs() < 2.0 / 65536.0,
                "reported {} expected {half}",
                b.region_loss(T0)
            );
            a.set_backlog(Duration::ZERO);
            for q in 14..=17 {
                let p = pkt(9, q, 64);
                a.on_packet(T0, p.0, p.1);
            }
            assert_eq!(drain(&mut a).len(), 1);
        }
    }

    #[test]
    fn a_repair_of_known_packets_is_redundant_and_rebuilds_nothing() {
        let c = config();
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=4).map(|q| pkt(9, q, 64)).collect();
        for p in &ps {
            b.on_packet(T0, p.0, p.1.clone());
        }
        deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
        assert!(rebuilt(&mut b).is_empty());
        assert_eq!(b.stats().repairs_redundant, 1);
    }

    #[test]
    fn a_repair_missing_two_is_kept_and_a_late_packet_cascades_the_other() {
        let c = config();
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=4).map(|q| pkt(9, q, 80)).collect();
        b.on_packet(T0, ps[0].0, ps[0].1.clone());
        b.on_packet(T0, ps[3].0, ps[3].1.clone());
        deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
        assert!(rebuilt(&mut b).is_empty());
        assert_eq!(b.stats().repairs_undecodable, 1);
        assert_eq!(b.stats().repairs_kept, 1);
        b.on_packet(T0, ps[1].0, ps[1].1.clone());
        b.check_invariants();
        assert_eq!(rebuilt(&mut b), vec![ps[2].clone()]);
        assert_eq!(b.stats().cascades, 1);
    }

    #[test]
    fn a_rebuilt_packet_unlocks_another_kept_repair() {
        let c = config();
        let mut b = node(&c, 2, &[1, 2, 3]);
        let ps: Vec<_> = (1..=6).map(|q| pkt(9, q, 90 + q as usize)).collect();
        // b has 1, 2 and 6; lost 3, 4 and 5.
        for p in [&ps[0], &ps[1], &ps[5]] {
            b.on_packet(T0, p.0, p.1.clone());
        }
        // {1, 3, 4} misses two, {2, 4, 5} misses two, {4, 6} misses one.
        let r1 = xor_repair(1, &[ps[0].clone(), ps[2].clone(), ps[3].clone()]);
        let r2 = xor_repair(2, &[ps[1].clone(), ps[3].clone(), ps[4].clone()]);
        let r3 = xor_repair(3, &[ps[3].clone(), ps[5].clone()]);
        deliver(T0, NodeId(1), &mut b, &r1);
        deliver(T0, NodeId(3), &mut b, &r2);
        assert!(rebuilt(&mut b).is_empty());
        deliver(T0, NodeId(3), &mut b, &r3);
        let mut got = rebuilt(&mut b);
        got.sort_by_key(|p| p.0);
        assert_eq!(got, vec![ps[2].clone(), ps[3].clone(), ps[4].clone()]);
        assert_eq!(b.stats().cascades, 2, "3 and 5 came from kept repairs");
    }

    #[test]
    fn a_repair_missing_more_than_the_kept_limit_is_counted_not_kept() {
        let c = LecConfig {
            kept_missing_max: 2,
            ..config()
        };
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=4).map(|q| pkt(9, q, 80)).collect();
        b.on_packet(T0, ps[0].0, ps[0].1.clone());
        deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps)); // three missing
        let s = b.stats();
        assert_eq!((s.repairs_undecodable, s.repairs_kept), (1, 0));
        b.on_packet(T0, ps[1].0, ps[1].1.clone());
        deliver(T0, NodeId(1), &mut b, &xor_repair(2, &ps)); // two missing: kept
        assert_eq!(b.stats().repairs_kept, 1);
    }

    #[test]
    fn a_kept_repair_decodes_until_its_ttl_and_expires_at_it() {
        let c = config();
        for (late, expect_rebuilt) in [
            (c.kept_ttl - Duration::from_nanos(1), true),
            (c.kept_ttl, false),
        ] {
            let mut b = node(&c, 2, &[1, 2]);
            let ps: Vec<_> = (1..=3).map(|q| pkt(9, q, 70)).collect();
            b.on_packet(T0, ps[0].0, ps[0].1.clone());
            deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
            let t = T0 + late;
            assert!(b.poll_timeout().is_some_and(|d| d <= T0 + c.kept_ttl));
            b.handle_timeout(t);
            b.check_invariants();
            assert!(
                b.poll_timeout().is_none_or(|d| d > t),
                "nothing due after handle_timeout"
            );
            b.on_packet(t, ps[1].0, ps[1].1.clone());
            assert_eq!(!rebuilt(&mut b).is_empty(), expect_rebuilt, "at {late:?}");
            assert_eq!(b.stats().repairs_expired, u64::from(!expect_rebuilt));
        }
    }

    #[test]
    fn a_rebuild_against_other_bytes_under_the_same_id_fails_its_digest() {
        let c = config();
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=3).map(|q| pkt(9, q, 70)).collect();
        // b holds a different packet 1 of the same length (a reused id).
        let mut other = ps[0].1.to_vec();
        other[5] ^= 0x40;
        b.on_packet(T0, ps[0].0, Bytes::from(other));
        b.on_packet(T0, ps[1].0, ps[1].1.clone());
        deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
        assert!(rebuilt(&mut b).is_empty());
        assert_eq!(b.stats().digest_mismatch, 1);
    }

    #[test]
    fn repairs_from_non_members_or_for_another_region_are_dropped() {
        let c = config();
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=2).map(|q| pkt(9, q, 70)).collect();
        b.on_packet(T0, ps[0].0, ps[0].1.clone());
        deliver(T0, NodeId(77), &mut b, &xor_repair(1, &ps));
        let mut other = node(&c, 2, &[1, 2]);
        other.region = RegionId(1);
        other.on_packet(T0, ps[0].0, ps[0].1.clone());
        deliver(T0, NodeId(1), &mut other, &xor_repair(1, &ps));
        for l in [&mut b, &mut other] {
            assert!(rebuilt(l).is_empty());
            assert_eq!(l.stats().repairs_foreign, 1);
            assert_eq!(l.stats().repairs_received, 0);
        }
    }

    #[test]
    fn stagger_spreads_a_burst_over_bins_so_every_loss_is_rebuilt() {
        let c = LecConfig {
            bin_packets: 4,
            stagger: 4,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2]);
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=16).map(|q| pkt(9, q, 200)).collect();
        for (i, p) in ps.iter().enumerate() {
            a.on_packet(T0, p.0, p.1.clone());
            if !(4..8).contains(&i) {
                b.on_packet(T0, p.0, p.1.clone()); // a burst of 4 lost
            }
        }
        let out = drain(&mut a);
        assert_eq!(out.len(), 4);
        for (_, body) in &out {
            let r = LecRepair::parse(body).unwrap();
            let seqs: Vec<u32> = r.entries().map(|e| e.id.seq.0).collect();
            assert!(seqs.windows(2).all(|w| w[1] - w[0] == 4), "{seqs:?}");
            deliver(T0, NodeId(1), &mut b, body);
        }
        let mut got = rebuilt(&mut b);
        got.sort_by_key(|p| p.0);
        assert_eq!(got, ps[4..8].to_vec());
        // Without stagger the same burst sits in one bin: nothing rebuilt.
        let c1 = LecConfig { stagger: 1, ..c };
        let mut a = node(&c1, 1, &[1, 2]);
        let mut b = node(&c1, 2, &[1, 2]);
        for (i, p) in ps.iter().enumerate() {
            a.on_packet(T0, p.0, p.1.clone());
            if !(4..8).contains(&i) {
                b.on_packet(T0, p.0, p.1.clone());
            }
        }
        for (_, body) in drain(&mut a) {
            deliver(T0, NodeId(1), &mut b, &body);
        }
        assert!(rebuilt(&mut b).is_empty());
    }

    fn parity_config(m: usize) -> LecConfig {
        LecConfig {
            bin_packets: 8,
            targets: m,
            parity_shards: m,
            parity_from_missing: 0.0,
            ..config()
        }
    }

    #[test]
    fn parity_shards_rebuild_up_to_m_losses_of_a_bin_and_no_more() {
        let c = parity_config(3);
        for lost in [3usize, 4] {
            let mut a = node(&c, 1, &[1, 2]);
            let mut b = node(&c, 2, &[1, 2]);
            let ps: Vec<_> = (1..=8).map(|q| pkt(9, q, 100 + 37 * q as usize)).collect();
            for (i, p) in ps.iter().enumerate() {
                a.on_packet(T0, p.0, p.1.clone());
                if i >= lost {
                    b.on_packet(T0, p.0, p.1.clone());
                }
            }
            let out = drain(&mut a);
            assert_eq!(out.len(), 3, "m = 3 shards to the one member there is");
            assert_eq!(a.stats().bins_parity, 1);
            for (_, body) in &out {
                deliver(T0, NodeId(1), &mut b, body);
            }
            let mut got = rebuilt(&mut b);
            got.sort_by_key(|p| p.0);
            if lost <= 3 {
                assert_eq!(got, ps[..lost].to_vec());
            } else {
                assert!(got.is_empty());
                assert_eq!(b.stats().repairs_undecodable, 1);
                // One more packet arriving makes the bin decodable (a cascade).
                b.on_packet(T0, ps[0].0, ps[0].1.clone());
                let mut got = rebuilt(&mut b);
                got.sort_by_key(|p| p.0);
                assert_eq!(got, ps[1..lost].to_vec());
                assert_eq!(b.stats().cascades, 3);
            }
        }
    }

    #[test]
    fn bins_use_parity_only_while_repairs_arrive_missing_several_packets() {
        let c = LecConfig {
            parity_from_missing: 1.5,
            ..parity_config(2)
        };
        let mut a = node(&c, 1, &[1, 2]);
        a.on_missing(T0, id(5, 1)); // some loss, so the own figure counts
        let fill = |a: &mut Lec, from: u32| {
            for q in from..from + 8 {
                let p = pkt(9, q, 50);
                a.on_packet(T0, p.0, p.1);
            }
        };
        // Repairs missing one packet each: XOR is enough.
        for k in 0..40u32 {
            let ps: Vec<_> = (0..4).map(|q| pkt(7, k * 4 + q, 60)).collect();
            for p in &ps[1..] {
                a.on_packet(T0, p.0, p.1.clone());
            }
            deliver(T0, NodeId(2), &mut a, &xor_repair(k, &ps));
        }
        assert!(a.region_missing(T0) < 1.5, "{}", a.region_missing(T0));
        drain(&mut a);
        let parity = a.stats().bins_parity;
        fill(&mut a, 1000);
        assert_eq!(a.stats().bins_parity, parity);
        // Repairs missing three packets each: parity.
        for k in 40..80u32 {
            let ps: Vec<_> = (0..4).map(|q| pkt(7, k * 4 + q, 60)).collect();
            a.on_packet(T0, ps[0].0, ps[0].1.clone());
            deliver(T0, NodeId(2), &mut a, &xor_repair(k, &ps));
        }
        assert!(a.region_missing(T0) >= 1.5, "{}", a.region_missing(T0));
        drain(&mut a);
        fill(&mut a, 2000);
        assert!(a.stats().bins_parity > parity);
    }

    #[test]
    fn a_peers_missing_report_switches_parity_on_only_while_fresh() {
        let c = LecConfig {
            parity_from_missing: 2.0,
            ..parity_config(2)
        };
        let mut a = node(&c, 1, &[1, 2]);
        a.on_loss_report(T0, NodeId(2), 0.01, 1.9);
        assert!(a.region_missing(T0) < 2.0);
        a.on_loss_report(T0, NodeId(2), 0.01, 2.0);
        assert!(a.region_missing(T0) >= 2.0);
        assert_eq!(a.region_missing(T0 + c.report_ttl), 1.0);
    }

    #[test]
    fn adaptive_fire_is_silent_without_loss_and_wakes_on_a_loss() {
        for sleep in [false, true] {
            let c = LecConfig {
                adaptive: true,
                targets: 2,
                sleep_when_clean: sleep,
                ..config()
            };
            adaptive_fire_wakes_on_a_loss(&c);
        }
    }

    fn adaptive_fire_wakes_on_a_loss(c: &LecConfig) {
        let mut a = node(c, 1, &[1, 2, 3]);
        // Awake for `sleep_after` from the first packet, then asleep if it may sleep.
        let t = T0 + c.sleep_after;
        for q in 1..=400 {
            let p = pkt(9, q, 64);
            a.on_packet(if q <= 200 { T0 } else { t }, p.0, p.1);
        }
        assert_eq!(a.stats().bins_fired, 0);
        if c.sleep_when_clean {
            // Asleep: nothing stored or binned.
            assert_eq!((a.stats().packets_asleep, a.stats().bins_silent), (200, 50));
        } else {
            assert_eq!((a.stats().packets_asleep, a.stats().bins_silent), (0, 100));
        }
        assert!(drain(&mut a).is_empty());
        a.on_missing(t, id(9, 401));
        assert!(
            a.fire_fraction(t) >= 1.0,
            "one loss among the last 1000 is the full rate"
        );
        for q in 402..=405 {
            let p = pkt(9, q, 64);
            a.on_packet(t, p.0, p.1);
        }
        assert_eq!(drain(&mut a).len(), 2, "c = 2 targets at the full rate");
    }

    #[test]
    fn the_rate_of_fire_follows_peer_reports_up_to_the_full_rate_and_they_expire() {
        let c = LecConfig {
            adaptive: true,
            full_rate_loss: 0.01,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2]);
        assert_eq!(a.fire_fraction(T0), 0.0);
        a.on_loss_report(T0, NodeId(2), 0.005, 1.0);
        assert!((a.fire_fraction(T0) - 0.5).abs() < 1e-9);
        a.on_loss_report(T0, NodeId(2), 0.01, 1.0);
        assert_eq!(a.fire_fraction(T0), 1.0);
        a.on_loss_report(T0, NodeId(2), 0.5, 1.0);
        assert_eq!(a.fire_fraction(T0), 1.0);
        let ttl = c.report_ttl;
        assert_eq!(a.fire_fraction(T0 + ttl - Duration::from_nanos(1)), 1.0);
        assert_eq!(a.fire_fraction(T0 + ttl), 0.0);
        a.on_loss_report(T0, NodeId(99), 0.5, 1.0);
        assert_eq!(
            a.fire_fraction(T0 + ttl),
            0.0,
            "a non-member's report is ignored"
        );
    }

    #[test]
    fn half_the_full_rate_fires_half_the_targets_on_average() {
        let c = LecConfig {
            adaptive: true,
            targets: 4,
            full_rate_loss: 0.02,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2, 3, 4, 5, 6]);
        a.on_loss_report(T0, NodeId(2), 0.01, 1.0);
        let mut sent = 0;
        for q in 1..=400 {
            let p = pkt(9, q, 64);
            a.on_packet(T0, p.0, p.1);
            sent += drain(&mut a).len();
        }
        // 100 bins × 4 targets × 0.5.
        assert_eq!(sent, 200);
    }

    #[test]
    fn a_bins_targets_are_distinct_members() {
        let c = LecConfig {
            targets: 3,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2, 3, 4, 5]);
        let mut seen = BTreeMap::new();
        for bin in 0..50u32 {
            for q in 1..=4 {
                let p = pkt(9, bin * 4 + q, 64);
                a.on_packet(T0, p.0, p.1);
            }
            let out = drain(&mut a);
            let mut to: Vec<u64> = out.iter().map(|o| o.0 .0).collect();
            to.sort_unstable();
            to.dedup();
            assert_eq!(to.len(), 3);
            for t in to {
                assert!((2..=5).contains(&t));
                *seen.entry(t).or_insert(0) += 1;
            }
        }
        assert!(seen.values().all(|&n| n > 20), "{seen:?}");
    }

    #[test]
    fn intents_to_a_member_that_left_are_dropped_and_counted() {
        let c = config();
        let mut a = node(&c, 1, &[1, 2]);
        for q in 1..=4 {
            let p = pkt(9, q, 64);
            a.on_packet(T0, p.0, p.1);
        }
        a.set_view(&[NodeId(1), NodeId(3)]);
        assert!(a.poll_repair().is_none());
        assert_eq!(a.stats().intents_dropped, 1);
        a.check_invariants();
    }

    #[test]
    fn an_intent_not_encoded_within_the_repair_ttl_is_stale_and_counted_once() {
        let c = LecConfig {
            targets: 2,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2, 3]);
        for q in 1..=4 {
            let p = pkt(9, q, 64);
            a.on_packet(T0, p.0, p.1);
        }
        let i = a.poll_repair().unwrap();
        a.handle_timeout(T0 + c.repair_ttl - Duration::from_nanos(1));
        assert!(a.encoded_len(&i).is_some());
        a.handle_timeout(T0 + c.repair_ttl);
        let mut buf = [0u8; 1500];
        assert_eq!(a.encode(&i, &mut buf), Err(LecError::Stale));
        assert!(
            a.poll_repair().is_none(),
            "the second target's intent went with its bin"
        );
        assert_eq!(a.stats().intents_dropped, 2);
        a.check_invariants();
    }

    #[test]
    fn encoding_into_a_short_buffer_fails_and_consumes_the_intent() {
        let c = config();
        let mut a = node(&c, 1, &[1, 2]);
        for q in 1..=4 {
            let p = pkt(9, q, 64);
            a.on_packet(T0, p.0, p.1);
        }
        let i = a.poll_repair().unwrap();
        let mut buf = [0u8; 20];
        assert_eq!(a.encode(&i, &mut buf), Err(LecError::BufferTooSmall));
        assert_eq!(a.encode(&i, &mut buf), Err(LecError::Stale));
    }

    #[test]
    fn an_aged_bin_fires_at_its_deadline_and_not_before() {
        let c = config();
        let mut a = node(&c, 1, &[1, 2]);
        for q in 1..=2 {
            let p = pkt(9, q, 64);
            a.on_packet(T0, p.0, p.1);
        }
        let due = T0 + c.bin_age_max;
        assert_eq!(a.poll_timeout(), Some(due));
        a.handle_timeout(due - Duration::from_nanos(1));
        assert!(a.poll_repair().is_none());
        a.handle_timeout(due);
        let out = drain(&mut a);
        assert_eq!(out.len(), 1);
        assert_eq!(LecRepair::parse(&out[0].1).unwrap().len(), 2);
        // A lone packet does not fire by age (it would be a full copy per target).
        let p = pkt(9, 3, 64);
        a.on_packet(due, p.0, p.1);
        a.handle_timeout(due + c.bin_age_max);
        assert!(a.poll_repair().is_none());
    }

    #[test]
    fn a_bin_closes_early_rather_than_exceed_a_datagram_and_overlong_packets_are_counted() {
        let c = LecConfig {
            max_datagram: 600,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2]);
        let alone = 600 - HEADER_LEN - LEC_FIXED_LEN - LEC_GROUP_LEN - LEC_ENTRY_LEN;
        let p = pkt(9, 1, alone + 1);
        a.on_packet(T0, p.0, p.1);
        assert_eq!(a.stats().unrepairable, 1);
        let p = pkt(9, 2, alone);
        a.on_packet(T0, p.0, p.1);
        assert_eq!(a.stats().unrepairable, 1);
        // A second packet from another sender needs another group and entry: the bin fires.
        let p = pkt(8, 1, 100);
        a.on_packet(T0, p.0, p.1);
        let out = drain(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].1.len() + HEADER_LEN <= 600);
        assert_eq!(LecRepair::parse(&out[0].1).unwrap().len(), 1);
        assert!(c.max_canonical_len() < alone);
    }

    #[test]
    fn the_store_stays_within_its_limits_and_counts_early_eviction() {
        let c = LecConfig {
            store_packets_max: 10,
            store_bytes_max: 5000,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2]);
        for q in 1..=40 {
            let p = pkt(9, q, 300);
            a.on_packet(T0, p.0, p.1);
            a.check_invariants();
        }
        assert!(a.store.len() <= 10 && a.store_bytes <= 5000);
        assert_eq!(a.stats().store_evicted_early, 40 - a.store.len() as u64);
        // Age alone empties it.
        a.handle_timeout(T0 + c.store_age);
        assert!(a.store.is_empty());
    }

    #[test]
    fn a_copied_packet_is_canonicalized_once_and_a_duplicate_is_counted_without_a_copy() {
        let c = config();
        let mut a = node(&c, 1, &[1, 2]);
        let (i, b) = pkt(9, 1, 300);
        let mut calls = 0;
        let zero_first = |c: &mut [u8]| c[0] = 0;
        assert!(a.on_packet_from(T0, i, &b, |c| {
            calls += 1;
            zero_first(c);
        }));
        assert!(!a.on_packet_from(T0, i, &b, |_| calls += 1));
        assert_eq!(calls, 1);
        assert_eq!(a.stats().duplicates, 1);
        let stored = a.store.get(&i).unwrap();
        assert_eq!((stored[0], &stored[1..]), (0, &b[1..]));
        a.check_invariants();
    }

    #[test]
    fn evicted_buffers_nobody_holds_are_reused_up_to_the_pool_bound() {
        // No peer: no bin holds the packets, so the store is their last holder.
        let c = config();
        let mut a = node(&c, 1, &[1]);
        let n = STORE_POOL_MAX as u32 + 8;
        for q in 1..=n {
            let p = pkt(9, q, 300);
            a.on_packet_from(T0, p.0, &p.1, |_| ());
        }
        assert!(a.store.pool.is_empty());
        a.handle_timeout(T0 + c.store_age);
        assert!(a.store.is_empty());
        assert_eq!(a.store.pool.len(), STORE_POOL_MAX, "the rest were freed");
        let reused = a.store.pool.last().unwrap().as_ptr();
        let p = pkt(9, n + 1, 200);
        a.on_packet_from(T0 + c.store_age, p.0, &p.1, |_| ());
        assert_eq!(a.store.get(&p.0).unwrap().as_ptr(), reused);
        assert_eq!(a.store.pool.len(), STORE_POOL_MAX - 1);
        a.check_invariants();
        assert!(a.stats().memory_bytes as usize <= c.memory_budget());
    }

    #[test]
    fn a_bin_fires_without_its_packets_evicted_early_and_a_fired_bins_buffers_are_not_reused() {
        let c = LecConfig {
            store_packets_max: 2,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2]);
        let ps: Vec<_> = (1..=5).map(|q| pkt(9, q, 300)).collect();
        for p in &ps[..4] {
            a.on_packet_from(T0, p.0, &p.1, |_| ());
        }
        assert_eq!(a.stats().store_evicted_early, 2);
        // Packets 1 and 2 had no other holder: packet 4 was copied into 1's buffer, 2's waits.
        assert_eq!(a.store.pool.len(), 1);
        // Packet 5 takes it, and evicts packet 3, which the fired bin still holds.
        a.on_packet_from(T0, ps[4].0, &ps[4].1, |_| ());
        assert!(a.store.pool.is_empty());
        let out = drain(&mut a);
        assert_eq!(out.len(), 1);
        let r = LecRepair::parse(&out[0].1).unwrap();
        let ids: Vec<PacketId> = r.entries().map(|e| e.id).collect();
        assert_eq!(ids, vec![ps[2].0, ps[3].0]);
        a.check_invariants();
    }

    #[test]
    fn the_kept_table_is_bounded_and_overflow_counted() {
        let c = LecConfig {
            kept_max: 3,
            ..config()
        };
        let mut b = node(&c, 2, &[1, 2]);
        for k in 0..5u32 {
            let ps: Vec<_> = (1..=3).map(|q| pkt(9, k * 10 + q, 64)).collect();
            deliver(T0, NodeId(1), &mut b, &xor_repair(k, &ps));
        }
        let s = b.stats();
        assert_eq!((s.repairs_kept, s.kept_full), (3, 2));
    }

    #[test]
    fn hold_off_is_a_bin_fill_time_plus_slack_and_bounded() {
        let c = LecConfig {
            bin_packets: 8,
            stagger: 2,
            ..config()
        };
        let mut a = node(&c, 1, &[1, 2]);
        assert_eq!(
            a.hold_off(),
            c.bin_age_max + c.hold_off_slack,
            "no rate yet"
        );
        let gap = Duration::from_micros(10);
        for q in 1..=200 {
            let p = pkt(9, q, 64);
            a.on_packet(T0 + gap * q, p.0, p.1);
        }
        // 16 packets at one per 10 µs.
        assert_eq!(a.hold_off(), Duration::from_micros(160) + c.hold_off_slack);
        let mut slow = node(&c, 1, &[1, 2]);
        for q in 1..=4 {
            let p = pkt(9, q, 64);
            slow.on_packet(T0 + Duration::from_millis(100) * q, p.0, p.1);
        }
        assert_eq!(slow.hold_off(), c.bin_age_max + c.hold_off_slack);
        let capped = LecConfig {
            hold_off_max: Duration::from_millis(1),
            ..c.clone()
        };
        assert_eq!(
            node(&capped, 1, &[1, 2]).hold_off(),
            Duration::from_millis(1)
        );
        assert_eq!(
            node(&c, 1, &[1]).hold_off(),
            Duration::ZERO,
            "no peer, no wait"
        );
    }

    #[test]
    fn loss_reported_then_repaired_counts_once_and_rebuilt_unreported_counts_as_loss() {
        let c = LecConfig {
            loss_memory_packets: 10,
            ..config()
        };
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=4).map(|q| pkt(9, q, 64)).collect();
        b.on_missing(T0, ps[2].0);
        assert!(b.is_missing(ps[2].0));
        let after_hole = b.own_loss;
        b.on_missing(T0, ps[2].0);
        assert_eq!(b.own_loss, after_hole, "a hole reported twice counts once");
        for i in [0, 1, 3] {
            b.on_packet(T0, ps[i].0, ps[i].1.clone());
        }
        deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
        assert!(!b.is_missing(ps[2].0));
        assert_eq!(b.stats().rebuilt_unreported, 0);
        let before = b.own_loss;
        let qs: Vec<_> = (5..=8).map(|q| pkt(9, q, 64)).collect();
        for p in &qs[1..] {
            b.on_packet(T0, p.0, p.1.clone());
        }
        deliver(T0, NodeId(1), &mut b, &xor_repair(2, &qs));
        assert_eq!(b.stats().rebuilt_unreported, 1);
        assert!(b.own_loss > before * 0.9f64.powi(3));
    }

    #[test]
    fn a_rebuilt_packet_that_then_arrives_takes_its_loss_back_once() {
        let c = LecConfig {
            loss_memory_packets: 10,
            ..config()
        };
        let mut b = node(&c, 2, &[1, 2]);
        let ps: Vec<_> = (1..=4).map(|q| pkt(9, q, 64)).collect();
        for i in [0, 1, 3] {
            b.on_packet(T0, ps[i].0, ps[i].1.clone());
        }
        // A heard packet heard again is a plain duplicate.
        b.on_packet(T0, ps[0].0, ps[0].1.clone());
        let before = b.own_loss;
        deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
        assert_eq!(b.stats().rebuilt_unreported, 1);
        assert!(b.own_loss > before);
        b.on_packet_from(T0, ps[2].0, &ps[2].1, |_| ());
        assert!(
            (b.own_loss - before).abs() < 1e-12,
            "{} {before}",
            b.own_loss
        );
        b.on_packet(T0, ps[2].0, ps[2].1.clone());
        assert!((b.own_loss - before).abs() < 1e-12, "taken back once");
        let s = b.stats();
        assert_eq!((s.rebuilt_then_heard, s.duplicates), (1, 3));
        b.check_invariants();
    }

    fn lens() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(1usize..1200, 1..=16)
    }

    proptest! {
        #[test]
        fn xor_rebuilds_any_single_erasure_of_any_bin(lens in lens(), lost in any::<prop::sample::Index>()) {
            let c = config();
            let mut b = node(&c, 2, &[1, 2]);
            let ps: Vec<_> = lens.iter().enumerate().map(|(q, &l)| pkt(9, q as u32, l)).collect();
            let lost = lost.index(ps.len());
            for (i, p) in ps.iter().enumerate() {
                if i != lost {
                    b.on_packet(T0, p.0, p.1.clone());
                }
            }
            deliver(T0, NodeId(1), &mut b, &xor_repair(1, &ps));
            prop_assert_eq!(rebuilt(&mut b), vec![ps[lost].clone()]);
        }

        #[test]
        fn parity_rebuilds_any_erasure_pattern_its_shards_cover(
            lens in lens(), m in 1usize..=4, mask in any::<u32>(), shard_mask in any::<u8>(),
        ) {
            let c = LecConfig { bin_packets: lens.len(), ..parity_config(m) };
            let mut a = node(&c, 1, &[1, 2]);
            let mut b = node(&c, 2, &[1, 2]);
            let ps: Vec<_> = lens.iter().enumerate().map(|(q, &l)| pkt(9, q as u32, l)).collect();
            let lost: Vec<usize> = (0..ps.len()).filter(|i| mask >> i & 1 == 1).collect();
            for (i, p) in ps.iter().enumerate() {
                a.on_packet(T0, p.0, p.1.clone());
                if !lost.contains(&i) {
                    b.on_packet(T0, p.0, p.1.clone());
                }
            }
            a.handle_timeout(T0 + c.bin_age_max);
            let out = drain(&mut a);
            // Deliver a subset of the shards (parity bins; a bin of one packet is XOR).
            let mut delivered = 0;
            for (k, (_, body)) in out.iter().enumerate() {
                if shard_mask >> k & 1 == 1 || out.len() == 1 {
                    deliver(T0, NodeId(1), &mut b, body);
                    delivered += 1;
                }
            }
            let mut got = rebuilt(&mut b);
            got.sort_by_key(|p| p.0);
            let want: Vec<_> = lost.iter().map(|&i| ps[i].clone()).collect();
            if lost.len() <= delivered && (lost.len() <= 1 || out.len() > 1) {
                prop_assert_eq!(got, want);
            } else {
                prop_assert!(got.is_empty());
            }
            b.check_invariants();
        }

        #[test]
        fn arbitrary_inputs_keep_the_core_bounded_and_consistent(
            ops in prop::collection::vec((0u8..5, 0u32..64, 1usize..600, any::<u64>()), 1..300),
        ) {
            let c = LecConfig {
                kept_max: 4,
                store_packets_max: 32,
                intents_max: 8,
                rebuilt_max: 4,
                missing_max: 8,
                fired_max: 2,
                stagger: 3,
                parity_shards: 2,
                parity_from_missing: 1.0,
                targets: 2,
                ..config()
            };
            let mut l = node(&c, 2, &[1, 2, 3]);
            let mut now = T0;
            for (op, seq, len, x) in ops {
                now = now + Duration::from_micros(x % 3000);
                let p = pkt(x % 3, seq, len);
                match op {
                    0 => { l.on_packet(now, p.0, p.1); }
                    1 => l.on_missing(now, p.0),
                    2 => {
                        let ps: Vec<_> = (0..=(x % 5) as u32).map(|k| pkt(x % 3, seq + k, len + k as usize)).collect();
                        deliver(now, NodeId(1 + x % 3), &mut l, &xor_repair(seq, &ps));
                    }
                    3 => { drain(&mut l); let _ = rebuilt(&mut l); }
                    _ => l.handle_timeout(now),
                }
                l.check_invariants();
                prop_assert!(l.stats().memory_bytes as usize <= c.memory_budget());
            }
        }
    }
}
