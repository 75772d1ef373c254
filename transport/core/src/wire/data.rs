//! Data packets: several small messages packed into one datagram, or one fragment of a message
//! larger than a datagram. Both carry the (region, sequence number) of the sender's stream.

use bytes::Bytes;

use crate::{NodeId, RegionId, Seq, TopicId};

use super::{u16_at, u32_at, u64_at, Header, WireError, HEADER_LEN};

/// Body bytes of a data packet before its first message.
pub const DATA_FIXED_LEN: usize = data_field::MESSAGES;
/// Bytes each packed message costs besides its payload (topic id and length).
pub const MESSAGE_OVERHEAD: usize = message_field::PAYLOAD;
/// Body bytes of a fragment before its payload slice.
pub const FRAGMENT_FIXED_LEN: usize = fragment_field::PAYLOAD;

/// Byte offsets in a packed data body (after the header).
pub mod data_field {
    use std::ops::Range;
    /// The stream's region, u64.
    pub const REGION: Range<usize> = 0..8;
    /// The packet's sequence number, u32.
    pub const SEQ: Range<usize> = 8..12;
    /// Messages packed, u16.
    pub const COUNT: Range<usize> = 12..14;
    /// The sender's view of the region's members when it sent the packet, u16 (a
    /// [`super::view_tag`]; 0: not given).
    pub const VIEW: Range<usize> = 14..16;
    /// The stream's epoch, u64.
    pub const EPOCH: Range<usize> = 16..24;
    /// Where the first message starts.
    pub const MESSAGES: usize = 24;
}

/// Byte offsets in one packed message (from its start).
pub mod message_field {
    use std::ops::Range;
    /// The topic, u64.
    pub const TOPIC: Range<usize> = 0..8;
    /// The payload's length, u16.
    pub const LEN: Range<usize> = 8..10;
    /// Where the payload starts.
    pub const PAYLOAD: usize = 10;
}

/// Byte offsets in a fragment body (after the header).
pub mod fragment_field {
    use std::ops::Range;
    /// The stream's region, u64.
    pub const REGION: Range<usize> = 0..8;
    /// The packet's sequence number, u32.
    pub const SEQ: Range<usize> = 8..12;
    /// This fragment's index in its message, u16.
    pub const INDEX: Range<usize> = 12..14;
    /// Fragments in the message, u16.
    pub const COUNT: Range<usize> = 14..16;
    /// The message's topic, u64.
    pub const TOPIC: Range<usize> = 16..24;
    /// The whole message's length, u32.
    pub const TOTAL_LEN: Range<usize> = 24..28;
    /// The stream's epoch, u64.
    pub const EPOCH: Range<usize> = 28..36;
    /// The sender's view of the region's members, u16 (as in a data packet).
    pub const VIEW: Range<usize> = 36..38;
    /// Where this fragment's bytes start.
    pub const PAYLOAD: usize = 38;
}

/// A hash of a region's member list, in id order (each id once): what the recovery ring
/// identifies its view by, and what [`view_tag`] folds for data packets.
pub fn members_hash<'a>(sorted_members: impl IntoIterator<Item = &'a NodeId>) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for m in sorted_members {
        for b in m.0.to_be_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The 16-bit tag a sender puts on its data packets for the region's member list as it sees
/// it: the member count (6 bits, 63 meaning "63 or more") and [`members_hash`] folded to 10
/// bits; never 0, which means "not given". The region's leader holds a stream's stability
/// back while the sender's tag differs from its own view's and counts no fewer members, so a
/// member the sender already counts is not passed over by a ring that does not know it yet
/// (a member the sender dropped first holds nothing back).
pub fn view_tag(members_hash: u64, members: usize) -> u16 {
    let h = members_hash;
    let folded = (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16 & 0x3ff;
    let count = members.min(63) as u16;
    ((count << 10) | folded).max(1)
}

/// The member count a [`view_tag`] carries (63: 63 or more).
pub fn view_tag_members(tag: u16) -> usize {
    usize::from(tag >> 10)
}

/// Builds a packed data packet in place, message by message.
#[derive(Debug)]
pub struct DataWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    count: u16,
}

impl<'a> DataWriter<'a> {
    /// Starts a data packet in `buf` (whose length is the datagram budget).
    pub fn new(
        buf: &'a mut [u8],
        header: &Header,
        stream: StreamId,
        seq: Seq,
    ) -> Result<DataWriter<'a>, WireError> {
        if buf.len() < HEADER_LEN + DATA_FIXED_LEN {
            return Err(WireError::BufferTooSmall);
        }
        header.write(buf)?;
        let b = &mut buf[HEADER_LEN..HEADER_LEN + DATA_FIXED_LEN];
        b[data_field::REGION].copy_from_slice(&stream.region.0.to_be_bytes());
        b[data_field::SEQ].copy_from_slice(&seq.0.to_be_bytes());
        b[data_field::COUNT].fill(0);
        b[data_field::VIEW].fill(0);
        b[data_field::EPOCH].copy_from_slice(&stream.epoch.to_be_bytes());
        Ok(DataWriter {
            buf,
            len: HEADER_LEN + DATA_FIXED_LEN,
            count: 0,
        })
    }

    /// Whether a message of `payload_len` bytes still fits.
    pub fn fits(&self, payload_len: usize) -> bool {
        payload_len <= usize::from(u16::MAX)
            && self.count < u16::MAX
            && self.len + MESSAGE_OVERHEAD + payload_len <= self.buf.len()
    }

    /// Appends a message; returns `false` (and writes nothing) when it does not fit.
    pub fn push(&mut self, topic: TopicId, payload: &[u8]) -> bool {
        if !self.fits(payload.len()) {
            return false;
        }
        let m = &mut self.buf[self.len..self.len + MESSAGE_OVERHEAD + payload.len()];
        m[message_field::TOPIC].copy_from_slice(&topic.0.to_be_bytes());
        m[message_field::LEN].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        m[message_field::PAYLOAD..].copy_from_slice(payload);
        self.len += MESSAGE_OVERHEAD + payload.len();
        self.count += 1;
        true
    }

    /// Tags the packet with the sender's view of the region's members (a
    /// [`super::view_tag`]).
    pub fn set_view(&mut self, view: u16) {
        let at = HEADER_LEN + data_field::VIEW.start..HEADER_LEN + data_field::VIEW.end;
        self.buf[at].copy_from_slice(&view.to_be_bytes());
    }

    /// Messages written so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Completes the packet and returns the datagram's length (to be sealed with
    /// [`super::Seal::seal`]).
    pub fn finish(self) -> Result<usize, WireError> {
        let count = HEADER_LEN + data_field::COUNT.start..HEADER_LEN + data_field::COUNT.end;
        self.buf[count].copy_from_slice(&self.count.to_be_bytes());
        Ok(self.len)
    }
}

/// A sender's stream into one region: the region and the stream's epoch (a sender that
/// restarts or recreates its stream starts a new epoch, numbered higher).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// The region the stream goes to.
    pub region: RegionId,
    /// The epoch.
    pub epoch: u64,
}

/// A validated packed data packet; its messages are zero-copy slices of the datagram.
#[derive(Debug, Clone)]
pub struct DataPacket {
    /// The stream's region.
    pub region: RegionId,
    /// The stream's epoch.
    pub epoch: u64,
    /// The packet's sequence number in the (sender, region) stream.
    pub seq: Seq,
    /// The sender's view of the region's members when it sent the packet (0: not given).
    pub view: u16,
    count: u16,
    body: Bytes,
}

impl DataPacket {
    /// Validates a body (every message length is checked here, once).
    pub fn parse(body: Bytes) -> Result<DataPacket, WireError> {
        if body.len() < DATA_FIXED_LEN {
            return Err(WireError::Truncated);
        }
        let count = u16_at(&body, data_field::COUNT.start);
        let mut at = DATA_FIXED_LEN;
        for _ in 0..count {
            if body.len() < at + MESSAGE_OVERHEAD {
                return Err(WireError::Malformed);
            }
            at += MESSAGE_OVERHEAD + usize::from(u16_at(&body, at + message_field::LEN.start));
        }
        if at != body.len() {
            return Err(WireError::Malformed);
        }
        Ok(DataPacket {
            region: RegionId(u64_at(&body, data_field::REGION.start)),
            epoch: u64_at(&body, data_field::EPOCH.start),
            seq: Seq(u32_at(&body, data_field::SEQ.start)),
            view: u16_at(&body, data_field::VIEW.start),
            count,
            body,
        })
    }

    /// Number of messages packed.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether the packet carries no message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The packed messages, in order.
    pub fn messages(&self) -> MessageIter<'_> {
        MessageIter {
            body: &self.body,
            at: DATA_FIXED_LEN,
            left: self.count,
        }
    }
}

/// Iterator over the `(topic, payload)` pairs of a [`DataPacket`].
#[derive(Debug)]
pub struct MessageIter<'a> {
    body: &'a Bytes,
    at: usize,
    left: u16,
}

impl Iterator for MessageIter<'_> {
    type Item = (TopicId, Bytes);

    fn next(&mut self) -> Option<(TopicId, Bytes)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let topic = TopicId(u64_at(self.body, self.at + message_field::TOPIC.start));
        let len = usize::from(u16_at(self.body, self.at + message_field::LEN.start));
        let start = self.at + message_field::PAYLOAD;
        self.at = start + len;
        Some((topic, self.body.slice(start..start + len)))
    }
}

/// One fragment of a message too large for a datagram. Fragments of one message occupy
/// consecutive sequence numbers of the stream, `index` 0 first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// The stream's region.
    pub region: RegionId,
    /// The stream's epoch.
    pub epoch: u64,
    /// The packet's sequence number.
    pub seq: Seq,
    /// Position of this fragment in the message.
    pub index: u16,
    /// Fragments in the message (at least 2).
    pub count: u16,
    /// The message's topic.
    pub topic: TopicId,
    /// The whole message's length in bytes.
    pub total_len: u32,
    /// The sender's view of the region's members when it sent the packet (0: not given).
    pub view: u16,
    /// This fragment's bytes.
    pub payload: Bytes,
}

impl Fragment {
    /// Payload bytes one fragment carries in a datagram of `max_datagram` bytes.
    pub fn payload_capacity(max_datagram: usize) -> usize {
        max_datagram.saturating_sub(HEADER_LEN + FRAGMENT_FIXED_LEN)
    }

    /// Writes a whole fragment datagram (header included) into `buf`, taking the payload from
    /// `payload`; returns the datagram length (to be sealed with [`super::Seal::seal`]).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        buf: &mut [u8],
        header: &Header,
        stream: StreamId,
        seq: Seq,
        index: u16,
        count: u16,
        topic: TopicId,
        total_len: u32,
        view: u16,
        payload: &[u8],
    ) -> Result<usize, WireError> {
        let len = HEADER_LEN + FRAGMENT_FIXED_LEN + payload.len();
        if buf.len() < len {
            return Err(WireError::BufferTooSmall);
        }
        header.write(buf)?;
        let b = &mut buf[HEADER_LEN..len];
        b[fragment_field::REGION].copy_from_slice(&stream.region.0.to_be_bytes());
        b[fragment_field::EPOCH].copy_from_slice(&stream.epoch.to_be_bytes());
        b[fragment_field::SEQ].copy_from_slice(&seq.0.to_be_bytes());
        b[fragment_field::INDEX].copy_from_slice(&index.to_be_bytes());
        b[fragment_field::COUNT].copy_from_slice(&count.to_be_bytes());
        b[fragment_field::TOPIC].copy_from_slice(&topic.0.to_be_bytes());
        b[fragment_field::TOTAL_LEN].copy_from_slice(&total_len.to_be_bytes());
        b[fragment_field::VIEW].copy_from_slice(&view.to_be_bytes());
        b[fragment_field::PAYLOAD..].copy_from_slice(payload);
        Ok(len)
    }

    /// Parses a body.
    pub fn parse(body: Bytes) -> Result<Fragment, WireError> {
        if body.len() < FRAGMENT_FIXED_LEN {
            return Err(WireError::Truncated);
        }
        let index = u16_at(&body, fragment_field::INDEX.start);
        let count = u16_at(&body, fragment_field::COUNT.start);
        let total_len = u32_at(&body, fragment_field::TOTAL_LEN.start);
        let payload = body.slice(FRAGMENT_FIXED_LEN..);
        if count < 2 || index >= count || payload.len() as u64 > u64::from(total_len) {
            return Err(WireError::Malformed);
        }
        Ok(Fragment {
            region: RegionId(u64_at(&body, fragment_field::REGION.start)),
            epoch: u64_at(&body, fragment_field::EPOCH.start),
            seq: Seq(u32_at(&body, fragment_field::SEQ.start)),
            index,
            count,
            topic: TopicId(u64_at(&body, fragment_field::TOPIC.start)),
            total_len,
            view: u16_at(&body, fragment_field::VIEW.start),
            payload,
        })
    }
}
