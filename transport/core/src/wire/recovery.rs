//! Recovery packets of the regional protocol (QSM): the tokens (one per partition, walking its
//! members, and one walking the ring of partition leaders: [`Scope`]), their per-hop
//! acknowledgement, repair requests between members, and the leader's acknowledgement to a
//! sender (stability prefix plus what a whole caretaker partition lacks).
//!
//! Sequence ranges are `(first u32, count u32)`. Every list is length-prefixed and bounded by
//! the datagram; decoders reject anything inconsistent with [`WireError::Malformed`].

use crate::{NodeId, RegionId, Seq};

use super::{u16_at, u32_at, u64_at, WireError};

/// A run of `count` consecutive sequence numbers starting at `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// The first sequence number.
    pub first: Seq,
    /// How many (≥ 1).
    pub count: u32,
}

impl SeqRange {
    /// The sequence numbers of the range, in order.
    pub fn iter(self) -> impl Iterator<Item = Seq> {
        (0..self.count).map(move |i| self.first.advance(i))
    }
}

/// Most partitions a token describes.
pub const MAX_PARTITIONS: usize = 32;

/// One sender's record in a [`Token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The sender whose stream (in the token's region) this is about.
    pub sender: NodeId,
    /// The stream's epoch (a restarted or recreated sender's stream is another stream).
    pub epoch: u64,
    /// Highest sequence number any member visited so far has heard of.
    pub highest: Seq,
    /// NAK cut-off: the previous round's `highest`. Members repair only up to here, so
    /// packets still in flight are not mistaken for losses.
    pub cutoff: Seq,
    /// Lowest contiguous prefix among members visited this round; `None` before the first.
    pub prefix: Option<Seq>,
    /// The member holding `prefix` (the laggard), when set.
    pub laggard: Option<NodeId>,
    /// Stability point of the previous round: every member had everything up to here, so
    /// caretakers free it and members that joined later start after it.
    pub cleanup: Seq,
    /// `cleanup` is not known yet (a leader's first round of a stream it never saw a token
    /// for): members neither free nor skip anything on it.
    pub cleanup_unknown: bool,
    /// Results that miss a member (skipped: it did not answer), whose prefixes do not count
    /// for cleanup: in a partition token any bit; in the region token bit `q` for partition
    /// `q`'s result.
    pub partial: u32,
    /// Added part-way through a walk (a member held a stream the token did not list): the
    /// members before it did not see it, so its prefix counts for nothing yet.
    pub incomplete: bool,
    /// Region token: partitions whose complete results were merged into this record this
    /// round (bit `q`); for the others their last proven prefix stands in.
    pub reported: u32,
    /// Per partition, the previous round's lowest contiguous prefix (pull only below it).
    pub partition_prefix: Vec<Option<Seq>>,
    /// Per partition, this round's lowest contiguous prefix so far.
    pub partition_current: Vec<Option<Seq>>,
    /// While the token walks a partition: what every member of it visited so far lacks among
    /// the sequence numbers it takes care of.
    pub lack: Vec<SeqRange>,
    /// What a whole caretaker partition lacked this round: the sender re-multicasts it.
    pub naks: Vec<SeqRange>,
    /// Receive-rate aggregate over the members visited this round (packets per second each
    /// member's contiguous prefix advanced since its previous visit).
    pub rates: RateAggregate,
}

/// Minimum, maximum, sum and count of members' receive rates (packets per second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateAggregate {
    /// Members that reported a rate.
    pub count: u16,
    /// Lowest rate (meaningless when `count` is 0).
    pub min: u32,
    /// Highest rate.
    pub max: u32,
    /// Sum of the rates.
    pub sum: u64,
}

impl RateAggregate {
    /// Adds one member's rate.
    pub fn add(&mut self, rate: u32) {
        if self.count == 0 {
            self.min = rate;
            self.max = rate;
        } else {
            self.min = self.min.min(rate);
            self.max = self.max.max(rate);
        }
        self.count = self.count.saturating_add(1);
        self.sum += u64::from(rate);
    }

    /// Adds another aggregate's members.
    pub fn merge(&mut self, other: &RateAggregate) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The lowest rate, if any member reported one.
    pub fn slowest(&self) -> Option<u32> {
        (self.count > 0).then_some(self.min)
    }
}

/// The token of one region's ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The region.
    pub region: RegionId,
    /// Hash of the member list the ring was formed on; members with another view ignore it.
    pub view: u64,
    /// Round number (the starter increments it; stale rounds are dropped).
    pub round: u32,
    /// Which walk this token makes.
    pub scope: Scope,
    /// Position in the walk of the member the token is addressed to (the walk's length: back
    /// at its starter).
    pub hop: u16,
    /// Positions of the walk skipped this round (they did not acknowledge the token).
    pub skipped: u64,
    /// One record per active sender.
    pub records: Vec<TokenRecord>,
}

/// The walk a token makes: the ring of partition leaders, or one partition's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The region token: from the region leader through every partition's leader and back.
    Region,
    /// A partition token: from the partition's leader through its members and back.
    Partition(u8),
}

impl Scope {
    fn to_u8(self) -> u8 {
        match self {
            Scope::Region => 0xFF,
            Scope::Partition(q) => q,
        }
    }

    fn from_u8(v: u8) -> Result<Scope, WireError> {
        match v {
            0xFF => Ok(Scope::Region),
            q if usize::from(q) < MAX_PARTITIONS => Ok(Scope::Partition(q)),
            _ => Err(WireError::Malformed),
        }
    }
}

fn put_u16(buf: &mut [u8], at: &mut usize, v: u16) -> Result<(), WireError> {
    put(buf, at, &v.to_be_bytes())
}

fn put_u32(buf: &mut [u8], at: &mut usize, v: u32) -> Result<(), WireError> {
    put(buf, at, &v.to_be_bytes())
}

fn put_u64(buf: &mut [u8], at: &mut usize, v: u64) -> Result<(), WireError> {
    put(buf, at, &v.to_be_bytes())
}

fn put(buf: &mut [u8], at: &mut usize, bytes: &[u8]) -> Result<(), WireError> {
    let end = *at + bytes.len();
    buf.get_mut(*at..end)
        .ok_or(WireError::BufferTooSmall)?
        .copy_from_slice(bytes);
    *at = end;
    Ok(())
}

/// A bounds-checked reader over a body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.at + n > self.b.len() {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        self.at += 1;
        Ok(self.b[self.at - 1])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        self.at += 2;
        Ok(u16_at(self.b, self.at - 2))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        self.at += 4;
        Ok(u32_at(self.b, self.at - 4))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        self.at += 8;
        Ok(u64_at(self.b, self.at - 8))
    }

    fn ranges(&mut self) -> Result<Vec<SeqRange>, WireError> {
        let n = usize::from(self.u16()?);
        self.need(n * 8)?;
        (0..n)
            .map(|_| {
                let first = Seq(self.u32()?);
                let count = self.u32()?;
                if count == 0 || count > 1 << 30 {
                    return Err(WireError::Malformed);
                }
                Ok(SeqRange { first, count })
            })
            .collect()
    }

    fn end(&self) -> Result<(), WireError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(WireError::Malformed)
        }
    }
}

fn put_ranges(buf: &mut [u8], at: &mut usize, ranges: &[SeqRange]) -> Result<(), WireError> {
    put_u16(
        buf,
        at,
        u16::try_from(ranges.len()).map_err(|_| WireError::Malformed)?,
    )?;
    for r in ranges {
        put_u32(buf, at, r.first.0)?;
        put_u32(buf, at, r.count)?;
    }
    Ok(())
}

/// Bytes [`put_ranges`] writes.
fn ranges_len(ranges: &[SeqRange]) -> usize {
    2 + 8 * ranges.len()
}

/// Writes optional sequence numbers as a presence mask and values.
fn put_options(buf: &mut [u8], at: &mut usize, v: &[Option<Seq>]) -> Result<(), WireError> {
    let mask = v
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_some())
        .fold(0u32, |m, (i, _)| m | 1 << i);
    put_u32(buf, at, mask)?;
    for s in v {
        put_u32(buf, at, s.map_or(0, |s| s.0))?;
    }
    Ok(())
}

fn read_options(r: &mut Reader<'_>, n: usize) -> Result<Vec<Option<Seq>>, WireError> {
    let mask = r.u32()?;
    if n < 32 && mask >> n != 0 {
        return Err(WireError::Malformed);
    }
    (0..n)
        .map(|i| {
            let v = r.u32()?;
            Ok((mask >> i & 1 == 1).then_some(Seq(v)))
        })
        .collect()
}

const RATES_LEN: usize = 2 + 4 + 4 + 8;

const TOKEN_FIXED_LEN: usize = 8 + 8 + 4 + 1 + 2 + 8 + 1 + 2;

impl TokenRecord {
    /// Bytes this record takes on the wire.
    pub fn wire_len(&self) -> usize {
        8 + 8
            + 4 * 4
            + 8
            + 4
            + 4
            + 2 * (4 + 4 * self.partition_prefix.len())
            + ranges_len(&self.lack)
            + ranges_len(&self.naks)
            + 1
            + RATES_LEN
    }
}

impl Token {
    /// Bytes the body takes on the wire.
    pub fn wire_len(&self) -> usize {
        TOKEN_FIXED_LEN
            + self
                .records
                .iter()
                .map(TokenRecord::wire_len)
                .sum::<usize>()
    }

    /// Writes the body into `buf`, returning the bytes written. Every record must carry the
    /// same number (≤ [`MAX_PARTITIONS`]) of partition entries.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let partitions = self.records.first().map_or(0, |r| r.partition_prefix.len());
        if partitions > MAX_PARTITIONS
            || self.records.iter().any(|r| {
                r.partition_prefix.len() != partitions || r.partition_current.len() != partitions
            })
        {
            return Err(WireError::Malformed);
        }
        let mut at = 0;
        put_u64(buf, &mut at, self.region.0)?;
        put_u64(buf, &mut at, self.view)?;
        put_u32(buf, &mut at, self.round)?;
        put(buf, &mut at, &[self.scope.to_u8()])?;
        put_u16(buf, &mut at, self.hop)?;
        put_u64(buf, &mut at, self.skipped)?;
        put(buf, &mut at, &[partitions as u8])?;
        put_u16(
            buf,
            &mut at,
            u16::try_from(self.records.len()).map_err(|_| WireError::Malformed)?,
        )?;
        for r in &self.records {
            put_u64(buf, &mut at, r.sender.0)?;
            put_u64(buf, &mut at, r.epoch)?;
            put_u32(buf, &mut at, r.highest.0)?;
            put_u32(buf, &mut at, r.cutoff.0)?;
            put_u32(buf, &mut at, r.prefix.map_or(0, |s| s.0))?;
            put_u32(buf, &mut at, r.cleanup.0)?;
            put_u64(buf, &mut at, r.laggard.map_or(0, |n| n.0))?;
            put_u32(buf, &mut at, r.reported)?;
            put_u32(buf, &mut at, r.partial)?;
            let flags = u8::from(r.prefix.is_some())
                | u8::from(r.cleanup_unknown) << 1
                | u8::from(r.incomplete) << 2;
            put(buf, &mut at, &[flags])?;
            put_options(buf, &mut at, &r.partition_prefix)?;
            put_options(buf, &mut at, &r.partition_current)?;
            put_ranges(buf, &mut at, &r.lack)?;
            put_ranges(buf, &mut at, &r.naks)?;
            put_u16(buf, &mut at, r.rates.count)?;
            put_u32(buf, &mut at, r.rates.min)?;
            put_u32(buf, &mut at, r.rates.max)?;
            put_u64(buf, &mut at, r.rates.sum)?;
        }
        Ok(at)
    }

    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Token, WireError> {
        let mut r = Reader { b: body, at: 0 };
        let region = RegionId(r.u64()?);
        let view = r.u64()?;
        let round = r.u32()?;
        let scope = Scope::from_u8(r.u8()?)?;
        let hop = r.u16()?;
        let skipped = r.u64()?;
        let partitions = usize::from(r.u8()?);
        if partitions > MAX_PARTITIONS {
            return Err(WireError::Malformed);
        }
        let n = usize::from(r.u16()?);
        r.need(n * 16)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let sender = NodeId(r.u64()?);
            let epoch = r.u64()?;
            let highest = Seq(r.u32()?);
            let cutoff = Seq(r.u32()?);
            let prefix = Seq(r.u32()?);
            let cleanup = Seq(r.u32()?);
            let laggard = r.u64()?;
            let reported = r.u32()?;
            let partial = r.u32()?;
            let flags = r.u8()?;
            if flags > 7 {
                return Err(WireError::Malformed);
            }
            let has_prefix = flags & 1 == 1;
            records.push(TokenRecord {
                sender,
                epoch,
                highest,
                cutoff,
                prefix: has_prefix.then_some(prefix),
                laggard: has_prefix.then_some(NodeId(laggard)),
                cleanup,
                cleanup_unknown: flags & 2 == 2,
                partial,
                incomplete: flags & 4 == 4,
                reported,
                partition_prefix: read_options(&mut r, partitions)?,
                partition_current: read_options(&mut r, partitions)?,
                lack: r.ranges()?,
                naks: r.ranges()?,
                rates: RateAggregate {
                    count: r.u16()?,
                    min: r.u32()?,
                    max: r.u32()?,
                    sum: r.u64()?,
                },
            });
        }
        r.end()?;
        Ok(Token {
            region,
            view,
            round,
            scope,
            hop,
            skipped,
            records,
        })
    }
}

/// Acknowledges that the token of `(region, view, round)` addressed to `hop` arrived, so the
/// previous holder stops retransmitting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenAck {
    /// The region.
    pub region: RegionId,
    /// The view hash.
    pub view: u64,
    /// The round.
    pub round: u32,
    /// The token's walk.
    pub scope: Scope,
    /// The hop that received it.
    pub hop: u16,
}

/// Body bytes of a [`TokenAck`].
pub const TOKEN_ACK_LEN: usize = 23;

impl TokenAck {
    /// Writes the body into `buf`, returning the bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut at = 0;
        put_u64(buf, &mut at, self.region.0)?;
        put_u64(buf, &mut at, self.view)?;
        put_u32(buf, &mut at, self.round)?;
        put(buf, &mut at, &[self.scope.to_u8()])?;
        put_u16(buf, &mut at, self.hop)?;
        Ok(at)
    }

    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<TokenAck, WireError> {
        let mut r = Reader { b: body, at: 0 };
        let ack = TokenAck {
            region: RegionId(r.u64()?),
            view: r.u64()?,
            round: r.u32()?,
            scope: Scope::from_u8(r.u8()?)?,
            hop: r.u16()?,
        };
        r.end()?;
        Ok(ack)
    }
}

/// A member asks a peer for packets of `sender`'s stream in `region` (unicast; the answer is
/// the original datagrams, unicast back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairRequest {
    /// The region.
    pub region: RegionId,
    /// The stream's sender.
    pub sender: NodeId,
    /// The stream's epoch.
    pub epoch: u64,
    /// The missing packets.
    pub ranges: Vec<SeqRange>,
}

impl RepairRequest {
    /// Writes the body into `buf`, returning the bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut at = 0;
        put_u64(buf, &mut at, self.region.0)?;
        put_u64(buf, &mut at, self.sender.0)?;
        put_u64(buf, &mut at, self.epoch)?;
        put_ranges(buf, &mut at, &self.ranges)?;
        Ok(at)
    }

    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<RepairRequest, WireError> {
        let mut r = Reader { b: body, at: 0 };
        let req = RepairRequest {
            region: RegionId(r.u64()?),
            sender: NodeId(r.u64()?),
            epoch: r.u64()?,
            ranges: r.ranges()?,
        };
        r.end()?;
        Ok(req)
    }
}

/// The region leader tells a sender, once per completed round: every member has its stream
/// up to `stable` (free it), the highest any member heard of, and what a whole caretaker
/// partition lacks (re-multicast it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderAck {
    /// The region.
    pub region: RegionId,
    /// The epoch of the sender's stream this is about.
    pub epoch: u64,
    /// Everything up to here may be freed: every member that answered this round has it.
    pub stable: Seq,
    /// Every member of the view, those skipped this round included, has everything up to
    /// here (at most `stable`): what a stream state may tell receivers to start after. The
    /// sender keeps what lies between it and `stable` for re-multicast.
    pub floor: Seq,
    /// The highest sequence number any member heard of.
    pub highest: Seq,
    /// Packets no member of their caretaker partition has.
    pub naks: Vec<SeqRange>,
    /// The slowest member's receive rate in packets per second (0: unknown).
    pub slowest_rate: u32,
}

impl SenderAck {
    /// Writes the body into `buf`, returning the bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut at = 0;
        put_u64(buf, &mut at, self.region.0)?;
        put_u64(buf, &mut at, self.epoch)?;
        put_u32(buf, &mut at, self.stable.0)?;
        put_u32(buf, &mut at, self.floor.0)?;
        put_u32(buf, &mut at, self.highest.0)?;
        put_u32(buf, &mut at, self.slowest_rate)?;
        put_ranges(buf, &mut at, &self.naks)?;
        Ok(at)
    }

    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<SenderAck, WireError> {
        let mut r = Reader { b: body, at: 0 };
        let ack = SenderAck {
            region: RegionId(r.u64()?),
            epoch: r.u64()?,
            stable: Seq(r.u32()?),
            floor: Seq(r.u32()?),
            highest: Seq(r.u32()?),
            slowest_rate: r.u32()?,
            naks: r.ranges()?,
        };
        r.end()?;
        Ok(ack)
    }
}
