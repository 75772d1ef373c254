//! The lateral repair packet (Ricochet's lateral error correction, issue 12): a receiver's XOR
//! (or Reed–Solomon parity shard) of a bin of data packets it received in its region, sent to a
//! few other members of the region.
//!
//! This file owns the body layout, its writer and its zero-copy parser, the [`PacketId`] that
//! names a data packet across senders and epochs, and the per-packet [`lec_digest`] that lets a
//! receiver check that a rebuilt packet is exactly the sender's. It does not decide what goes
//! into a bin, whom a repair goes to or how one is decoded: that is `qs_recovery::Lec`.
//!
//! ```text
//!  0        8     12    13      14      15      17     18       19
//!  | region | bin | code | parity | index | loss | missing | groups |
//!  then per group (one per (sender, epoch), in increasing order):
//!  | sender u64 | epoch u64 | count u8 |  then per entry:  | seq u32 | len u16 | digest u32 |
//!  then the payload: the code word, exactly as long as the longest entry
//! ```
//!
//! Entries are strictly increasing in [`PacketId`] order (sender, epoch, then the raw sequence
//! number), so a parsed repair never lists a packet twice and the order of the entries is the
//! order of the Reed–Solomon data shards. Packets shorter than the longest are padded with
//! zeros before coding. Parsing checks every count and length once; the accessors after it
//! cannot fail. Nothing here panics on any input.

use std::cmp::Ordering;

use xxhash_rust::xxh3::xxh3_64;

use crate::{NodeId, RegionId, Seq};

use super::{u16_at, u32_at, u64_at, WireError};

/// Most packets one repair covers (the entry count of a body; Reed–Solomon allows up to 256
/// shards in all, far above what a datagram can list).
pub const LEC_MAX_PACKETS: usize = 64;
/// Most parity shards per bin (Reed–Solomon); a shard's index is below its repair's count.
pub const LEC_MAX_PARITY: usize = 16;
/// Bytes of the fixed part of a body.
pub const LEC_FIXED_LEN: usize = 19;
/// Bytes of one (sender, epoch) group header.
pub const LEC_GROUP_LEN: usize = 17;
/// Bytes of one entry.
pub const LEC_ENTRY_LEN: usize = 10;

/// One data packet across the region: its sender's stream (sender, epoch) and its sequence
/// number. The epoch distinguishes a restarted sender's new stream from the old one (the
/// data header's stream epoch).
///
/// `Ord` is a storage order (sender, epoch, raw sequence number) for sorted tables and the
/// wire's canonical entry order, not stream order: for that use [`Seq::is_before`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketId {
    /// The sending node.
    pub sender: NodeId,
    /// The sender's stream epoch.
    pub epoch: u64,
    /// The packet's sequence number in that stream.
    pub seq: Seq,
}

impl PacketId {
    fn key(&self) -> (u64, u64, u32) {
        (self.sender.0, self.epoch, self.seq.0)
    }
}

impl Ord for PacketId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for PacketId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The digest a repair lists per packet: the low 32 bits of the xxh3 hash of the packet's
/// canonical bytes. It catches a rebuild from bytes that differ from the sender's (a stale
/// copy under a reused id, a corrupted store); it is not a MAC (the datagram's seal is).
/// 32 bits suffice because a wrong rebuild is itself rare, and entries stay small.
pub fn lec_digest(canonical: &[u8]) -> u32 {
    xxh3_64(canonical) as u32
}

/// One packet a repair covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LecEntry {
    /// The packet.
    pub id: PacketId,
    /// Its canonical length in bytes (≥ 1).
    pub len: u16,
    /// [`lec_digest`] of its canonical bytes.
    pub digest: u32,
}

/// How a repair's payload was computed from its bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LecCode {
    /// The XOR of the bin's packets: rebuilds one missing packet.
    Xor,
    /// Parity shard `index` of `parity` Reed–Solomon shards over the bin's packets (GF(2^8),
    /// `reed-solomon-erasure`'s systematic matrix): any `parity` shards of one bin rebuild up
    /// to `parity` missing packets.
    ReedSolomon {
        /// Parity shards computed for the bin (1..=[`LEC_MAX_PARITY`]).
        parity: u8,
        /// This shard (below `parity`).
        index: u8,
    },
}

/// The fixed fields of a repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LecHead {
    /// The region whose data the bin holds.
    pub region: RegionId,
    /// The repairer's bin number (with the datagram's sender it names the bin, so the shards of
    /// one Reed–Solomon bin find each other).
    pub bin: u32,
    /// The code.
    pub code: LecCode,
    /// The repairer's observed loss rate in the region, as a fraction × 65536 (saturating): the
    /// input of its peers' adaptive rate of fire.
    pub loss: u16,
    /// How many packets the repairer misses of the repairs it receives that miss any, on
    /// average, in sixteenths of a packet (saturating): above one, losses come in bursts or
    /// thick enough to defeat XOR, and its peers add parity shards.
    pub missing: u8,
}

/// A parsed repair body, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LecRepair<'a> {
    /// The fixed fields.
    pub head: LecHead,
    groups: &'a [u8],
    count: usize,
    /// The code word (as long as the longest entry).
    pub payload: &'a [u8],
}

impl<'a> LecRepair<'a> {
    /// Bytes a body listing `entries` (in wire order) with a payload of `payload_len` takes.
    pub fn wire_len(entries: &[LecEntry], payload_len: usize) -> usize {
        let groups = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| *i == 0 || !same_stream(&entries[i - 1].id, &e.id))
            .count();
        LEC_FIXED_LEN + groups * LEC_GROUP_LEN + entries.len() * LEC_ENTRY_LEN + payload_len
    }

    /// Writes a body into `buf`, returning the bytes written. `entries` must be non-empty,
    /// strictly increasing in [`PacketId`] order, at most [`LEC_MAX_PACKETS`], each of length
    /// ≥ 1, and `payload` exactly as long as the longest; otherwise [`WireError::Malformed`].
    pub fn write(
        buf: &mut [u8],
        head: &LecHead,
        entries: &[LecEntry],
        payload: &[u8],
    ) -> Result<usize, WireError> {
        let longest = entries.iter().map(|e| usize::from(e.len)).max();
        let ordered = entries.windows(2).all(|w| w[0].id < w[1].id);
        if longest != Some(payload.len())
            || entries.len() > LEC_MAX_PACKETS
            || entries.iter().any(|e| e.len == 0)
            || !ordered
            || !code_valid(head.code, entries.len())
        {
            return Err(WireError::Malformed);
        }
        let total = Self::wire_len(entries, payload.len());
        let b = buf.get_mut(..total).ok_or(WireError::BufferTooSmall)?;
        let groups = total - LEC_FIXED_LEN - entries.len() * LEC_ENTRY_LEN - payload.len();
        let groups = groups / LEC_GROUP_LEN;
        let (code, parity, index) = match head.code {
            LecCode::Xor => (0, 1, 0),
            LecCode::ReedSolomon { parity, index } => (1, parity, index),
        };
        b[0..8].copy_from_slice(&head.region.0.to_be_bytes());
        b[8..12].copy_from_slice(&head.bin.to_be_bytes());
        b[12] = code;
        b[13] = parity;
        b[14] = index;
        b[15..17].copy_from_slice(&head.loss.to_be_bytes());
        b[17] = head.missing;
        b[18] = groups as u8;
        let mut at = LEC_FIXED_LEN;
        let mut i = 0;
        while i < entries.len() {
            let first = &entries[i].id;
            let n = entries[i..]
                .iter()
                .take_while(|e| same_stream(&e.id, first))
                .count();
            b[at..at + 8].copy_from_slice(&first.sender.0.to_be_bytes());
            b[at + 8..at + 16].copy_from_slice(&first.epoch.to_be_bytes());
            b[at + 16] = n as u8;
            at += LEC_GROUP_LEN;
            for e in &entries[i..i + n] {
                b[at..at + 4].copy_from_slice(&e.id.seq.0.to_be_bytes());
                b[at + 4..at + 6].copy_from_slice(&e.len.to_be_bytes());
                b[at + 6..at + 10].copy_from_slice(&e.digest.to_be_bytes());
                at += LEC_ENTRY_LEN;
            }
            i += n;
        }
        b[at..].copy_from_slice(payload);
        Ok(total)
    }

    /// Parses a body, checking every field once.
    pub fn parse(body: &'a [u8]) -> Result<LecRepair<'a>, WireError> {
        if body.len() < LEC_FIXED_LEN {
            return Err(WireError::Truncated);
        }
        let code = match (body[12], body[13], body[14]) {
            (0, 1, 0) => LecCode::Xor,
            (1, parity, index)
                if parity >= 1 && usize::from(parity) <= LEC_MAX_PARITY && index < parity =>
            {
                LecCode::ReedSolomon { parity, index }
            }
            _ => return Err(WireError::Malformed),
        };
        let head = LecHead {
            region: RegionId(u64_at(body, 0)),
            bin: u32_at(body, 8),
            code,
            loss: u16_at(body, 15),
            missing: body[17],
        };
        let groups = usize::from(body[18]);
        if groups == 0 {
            return Err(WireError::Malformed);
        }
        let mut at = LEC_FIXED_LEN;
        let mut count = 0;
        let mut longest = 0;
        let mut last: Option<PacketId> = None;
        for _ in 0..groups {
            if body.len() < at + LEC_GROUP_LEN {
                return Err(WireError::Truncated);
            }
            let sender = NodeId(u64_at(body, at));
            let epoch = u64_at(body, at + 8);
            let n = usize::from(body[at + 16]);
            at += LEC_GROUP_LEN;
            count += n;
            if n == 0 || count > LEC_MAX_PACKETS {
                return Err(WireError::Malformed);
            }
            if body.len() < at + n * LEC_ENTRY_LEN {
                return Err(WireError::Truncated);
            }
            for k in 0..n {
                let e = entry_at(body, at + k * LEC_ENTRY_LEN, sender, epoch);
                if e.len == 0 || last.is_some_and(|l| l >= e.id) {
                    return Err(WireError::Malformed);
                }
                // A later group with the same stream would split what the writer keeps whole.
                if k == 0 && last.is_some_and(|l| same_stream(&l, &e.id)) {
                    return Err(WireError::Malformed);
                }
                longest = longest.max(usize::from(e.len));
                last = Some(e.id);
            }
            at += n * LEC_ENTRY_LEN;
        }
        if !code_valid(code, count) {
            return Err(WireError::Malformed);
        }
        let payload = &body[at..];
        if payload.len() != longest {
            return Err(WireError::Malformed);
        }
        Ok(LecRepair {
            head,
            groups: &body[LEC_FIXED_LEN..at],
            count,
            payload,
        })
    }

    /// Packets the repair covers.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it covers none (never true of a parsed repair).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The packets it covers, in wire (and shard) order.
    pub fn entries(&self) -> LecEntries<'a> {
        LecEntries {
            b: self.groups,
            at: 0,
            left_in_group: 0,
            stream: (NodeId(0), 0),
        }
    }
}

/// The entries of a parsed [`LecRepair`].
#[derive(Debug, Clone)]
pub struct LecEntries<'a> {
    b: &'a [u8],
    at: usize,
    left_in_group: usize,
    stream: (NodeId, u64),
}

impl Iterator for LecEntries<'_> {
    type Item = LecEntry;

    fn next(&mut self) -> Option<LecEntry> {
        if self.left_in_group == 0 {
            // Validated by parse: a group header is followed by at least one entry.
            if self.at + LEC_GROUP_LEN > self.b.len() {
                return None;
            }
            self.stream = (NodeId(u64_at(self.b, self.at)), u64_at(self.b, self.at + 8));
            self.left_in_group = usize::from(self.b[self.at + 16]);
            self.at += LEC_GROUP_LEN;
        }
        if self.at + LEC_ENTRY_LEN > self.b.len() {
            return None;
        }
        let e = entry_at(self.b, self.at, self.stream.0, self.stream.1);
        self.at += LEC_ENTRY_LEN;
        self.left_in_group -= 1;
        Some(e)
    }
}

fn entry_at(b: &[u8], at: usize, sender: NodeId, epoch: u64) -> LecEntry {
    LecEntry {
        id: PacketId {
            sender,
            epoch,
            seq: Seq(u32_at(b, at)),
        },
        len: u16_at(b, at + 4),
        digest: u32_at(b, at + 6),
    }
}

fn same_stream(a: &PacketId, b: &PacketId) -> bool {
    a.sender == b.sender && a.epoch == b.epoch
}

/// Reed–Solomon over GF(2^8) has at most 256 shards in all.
fn code_valid(code: LecCode, count: usize) -> bool {
    match code {
        LecCode::Xor => count >= 1,
        LecCode::ReedSolomon { parity, index } => {
            parity >= 1
                && usize::from(parity) <= LEC_MAX_PARITY
                && index < parity
                && count >= 1
                && count + usize::from(parity) <= 256
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(sender: u64, epoch: u64, seq: u32) -> PacketId {
        PacketId {
            sender: NodeId(sender),
            epoch,
            seq: Seq(seq),
        }
    }

    fn head(code: LecCode) -> LecHead {
        LecHead {
            region: RegionId(0xfeed),
            bin: 77,
            code,
            loss: 655,
            missing: 3,
        }
    }

    fn entries() -> impl Strategy<Value = Vec<LecEntry>> {
        prop::collection::btree_set((0u64..4, 0u64..3, any::<u32>()), 1..LEC_MAX_PACKETS)
            .prop_flat_map(|ids| {
                let n = ids.len();
                (
                    Just(ids),
                    prop::collection::vec((1u16..1500, any::<u32>()), n),
                )
                    .prop_map(|(ids, lens)| {
                        ids.into_iter()
                            .zip(lens)
                            .map(|((s, e, q), (len, digest))| LecEntry {
                                id: id(s, e, q),
                                len,
                                digest,
                            })
                            .collect()
                    })
            })
    }

    fn code() -> impl Strategy<Value = LecCode> {
        prop_oneof![
            Just(LecCode::Xor),
            (1u8..=16)
                .prop_flat_map(|p| (Just(p), 0..p))
                .prop_map(|(parity, index)| LecCode::ReedSolomon { parity, index }),
        ]
    }

    proptest! {
        #[test]
        fn a_written_repair_parses_to_the_same_fields(
            es in entries(), code in code(), fill in any::<u8>(),
        ) {
            let longest = es.iter().map(|e| usize::from(e.len)).max().unwrap();
            let payload = vec![fill; longest];
            let h = head(code);
            let mut buf = vec![0u8; LecRepair::wire_len(&es, longest)];
            let n = LecRepair::write(&mut buf, &h, &es, &payload).unwrap();
            prop_assert_eq!(n, buf.len());
            let r = LecRepair::parse(&buf).unwrap();
            prop_assert_eq!(r.head, h);
            prop_assert_eq!(r.len(), es.len());
            prop_assert_eq!(r.entries().collect::<Vec<_>>(), es);
            prop_assert_eq!(r.payload, &payload[..]);
        }

        #[test]
        fn any_bytes_parse_or_fail_without_panicking(body in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(r) = LecRepair::parse(&body) {
                let es: Vec<_> = r.entries().collect();
                prop_assert_eq!(es.len(), r.len());
                prop_assert!(es.windows(2).all(|w| w[0].id < w[1].id));
                prop_assert_eq!(LecRepair::wire_len(&es, r.payload.len()), body.len());
            }
        }

        #[test]
        fn a_truncated_or_extended_repair_does_not_parse(es in entries(), cut in 1usize..40) {
            let longest = es.iter().map(|e| usize::from(e.len)).max().unwrap();
            let payload = vec![1u8; longest];
            let mut buf = vec![0u8; LecRepair::wire_len(&es, longest)];
            LecRepair::write(&mut buf, &head(LecCode::Xor), &es, &payload).unwrap();
            prop_assert!(LecRepair::parse(&buf[..buf.len() - cut.min(buf.len())]).is_err());
            buf.push(0);
            prop_assert!(LecRepair::parse(&buf).is_err());
        }
    }

    #[test]
    fn one_sender_shares_one_group_header() {
        let es: Vec<LecEntry> = (1..=8)
            .map(|q| LecEntry {
                id: id(5, 0, q),
                len: 100,
                digest: q,
            })
            .collect();
        assert_eq!(
            LecRepair::wire_len(&es, 100),
            LEC_FIXED_LEN + LEC_GROUP_LEN + 8 * LEC_ENTRY_LEN + 100
        );
    }

    #[test]
    fn the_writer_refuses_unordered_entries_a_short_payload_and_a_bad_code() {
        let a = LecEntry {
            id: id(1, 0, 2),
            len: 4,
            digest: 0,
        };
        let b = LecEntry {
            id: id(1, 0, 1),
            ..a
        };
        let mut buf = [0u8; 200];
        let h = head(LecCode::Xor);
        assert_eq!(
            LecRepair::write(&mut buf, &h, &[a, b], &[0; 4]),
            Err(WireError::Malformed)
        );
        assert_eq!(
            LecRepair::write(&mut buf, &h, &[b, a], &[0; 3]),
            Err(WireError::Malformed)
        );
        assert_eq!(
            LecRepair::write(&mut buf, &h, &[], &[]),
            Err(WireError::Malformed)
        );
        let bad = head(LecCode::ReedSolomon {
            parity: 2,
            index: 2,
        });
        assert_eq!(
            LecRepair::write(&mut buf, &bad, &[b, a], &[0; 4]),
            Err(WireError::Malformed)
        );
        assert_eq!(
            LecRepair::write(&mut buf[..10], &h, &[b, a], &[0; 4]),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn the_parser_refuses_a_stream_split_over_two_groups() {
        let es = [
            LecEntry {
                id: id(1, 0, 1),
                len: 2,
                digest: 0,
            },
            LecEntry {
                id: id(1, 0, 2),
                len: 2,
                digest: 0,
            },
        ];
        let mut buf = vec![0u8; 100];
        let n = LecRepair::write(&mut buf, &head(LecCode::Xor), &es, &[0; 2]).unwrap();
        buf.truncate(n);
        assert!(LecRepair::parse(&buf).is_ok());
        // The same two entries as two groups of one.
        let mut split = buf[..LEC_FIXED_LEN].to_vec();
        split[18] = 2;
        for e in &es {
            split.extend_from_slice(&1u64.to_be_bytes());
            split.extend_from_slice(&0u32.to_be_bytes());
            split.push(1);
            split.extend_from_slice(&e.id.seq.0.to_be_bytes());
            split.extend_from_slice(&2u16.to_be_bytes());
            split.extend_from_slice(&0u32.to_be_bytes());
        }
        split.extend_from_slice(&[0, 0]);
        assert_eq!(LecRepair::parse(&split), Err(WireError::Malformed));
    }

    #[test]
    fn packet_ids_order_by_sender_epoch_then_raw_sequence() {
        assert!(id(1, 9, 9) < id(2, 0, 0));
        assert!(id(1, 0, 9) < id(1, 1, 0));
        assert!(id(1, 0, u32::MAX) > id(1, 0, 0));
    }
}
