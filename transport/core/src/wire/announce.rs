//! Discovery announcements: "I am here, this is my address and these are my topics".
//! A node with more topics than fit one datagram splits its list into chunks; receivers
//! assemble them per (incarnation, topics version).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{RegionId, TopicId};

use super::{u16_at, u32_at, u64_at, WireError};

/// Body bytes before the topic list.
pub const ANNOUNCE_FIXED_LEN: usize = announce_field::TOPICS;
const FLAG_LEAVING: u8 = 1;

/// Byte offsets in an announcement body.
mod announce_field {
    use std::ops::Range;
    pub const INCARNATION: Range<usize> = 0..8;
    pub const IP: Range<usize> = 8..12;
    pub const PORT: Range<usize> = 12..14;
    pub const FLAGS: usize = 14;
    pub const RESERVED: usize = 15;
    pub const TOPICS_VERSION: Range<usize> = 16..20;
    pub const CHUNK: Range<usize> = 20..22;
    pub const CHUNK_COUNT: Range<usize> = 22..24;
    pub const DIGEST: Range<usize> = 24..32;
    pub const DEPARTING: Range<usize> = 32..40;
    /// Where the topic ids (u64 each) start.
    pub const TOPICS: usize = 40;
}
use announce_field as f;

/// One announcement chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Increases each time the node restarts with the same id; stale announcements lose.
    pub incarnation: u64,
    /// Where the node receives unicast.
    pub unicast: SocketAddrV4,
    /// The node is leaving the cluster gracefully.
    pub leaving: bool,
    /// Increases each time the node's subscriptions change.
    pub topics_version: u32,
    /// Index of this chunk in `0..chunk_count`.
    pub chunk: u16,
    /// Number of chunks that make up the whole topic list (at least 1).
    pub chunk_count: u16,
    /// Digest of the whole topic list (its region id), to check the assembled chunks.
    pub digest: RegionId,
    /// The region the node is departing at this topics version (`RegionId(0)`: none): it
    /// changed its subscriptions and still finishes the old region's streams (the
    /// subscription handover).
    pub departing: RegionId,
    /// This chunk's part of the sorted topic list.
    pub topics: Vec<TopicId>,
}

impl Announce {
    /// How many topic ids fit in one chunk of a datagram of `max_datagram` bytes.
    pub fn topics_per_chunk(max_datagram: usize) -> usize {
        max_datagram.saturating_sub(super::HEADER_LEN + ANNOUNCE_FIXED_LEN) / 8
    }

    /// Writes the body into `buf`, returning the bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = ANNOUNCE_FIXED_LEN + 8 * self.topics.len();
        let b = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
        b[f::INCARNATION].copy_from_slice(&self.incarnation.to_be_bytes());
        b[f::IP].copy_from_slice(&u32::from(*self.unicast.ip()).to_be_bytes());
        b[f::PORT].copy_from_slice(&self.unicast.port().to_be_bytes());
        b[f::FLAGS] = if self.leaving { FLAG_LEAVING } else { 0 };
        b[f::RESERVED] = 0;
        b[f::TOPICS_VERSION].copy_from_slice(&self.topics_version.to_be_bytes());
        b[f::CHUNK].copy_from_slice(&self.chunk.to_be_bytes());
        b[f::CHUNK_COUNT].copy_from_slice(&self.chunk_count.to_be_bytes());
        b[f::DIGEST].copy_from_slice(&self.digest.0.to_be_bytes());
        b[f::DEPARTING].copy_from_slice(&self.departing.0.to_be_bytes());
        for (i, t) in self.topics.iter().enumerate() {
            let at = ANNOUNCE_FIXED_LEN + 8 * i;
            b[at..at + 8].copy_from_slice(&t.0.to_be_bytes());
        }
        Ok(len)
    }

    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Announce, WireError> {
        if body.len() < ANNOUNCE_FIXED_LEN {
            return Err(WireError::Truncated);
        }
        let list = &body[ANNOUNCE_FIXED_LEN..];
        if list.len() % 8 != 0 {
            return Err(WireError::Malformed);
        }
        let chunk = u16_at(body, f::CHUNK.start);
        let chunk_count = u16_at(body, f::CHUNK_COUNT.start);
        if chunk_count == 0 || chunk >= chunk_count || body[f::FLAGS] & !FLAG_LEAVING != 0 {
            return Err(WireError::Malformed);
        }
        Ok(Announce {
            incarnation: u64_at(body, f::INCARNATION.start),
            unicast: SocketAddrV4::new(
                Ipv4Addr::from(u32_at(body, f::IP.start)),
                u16_at(body, f::PORT.start),
            ),
            leaving: body[f::FLAGS] & FLAG_LEAVING != 0,
            topics_version: u32_at(body, f::TOPICS_VERSION.start),
            chunk,
            chunk_count,
            digest: RegionId(u64_at(body, f::DIGEST.start)),
            departing: RegionId(u64_at(body, f::DEPARTING.start)),
            topics: list
                .chunks_exact(8)
                .map(|c| TopicId(u64_at(c, 0)))
                .collect(),
        })
    }
}
