//! Discovery announcements: "I am here, this is my address and these are my topics".
//! A node with more topics than fit one datagram splits its list into chunks; receivers
//! assemble them per (incarnation, topics version).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::{RegionId, TopicId};

use super::{u16_at, u32_at, u64_at, WireError};

/// Body bytes before the topic list.
pub const ANNOUNCE_FIXED_LEN: usize = 32;
const FLAG_LEAVING: u8 = 1;

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
        b[0..8].copy_from_slice(&self.incarnation.to_be_bytes());
        b[8..12].copy_from_slice(&u32::from(*self.unicast.ip()).to_be_bytes());
        b[12..14].copy_from_slice(&self.unicast.port().to_be_bytes());
        b[14] = if self.leaving { FLAG_LEAVING } else { 0 };
        b[15] = 0;
        b[16..20].copy_from_slice(&self.topics_version.to_be_bytes());
        b[20..22].copy_from_slice(&self.chunk.to_be_bytes());
        b[22..24].copy_from_slice(&self.chunk_count.to_be_bytes());
        b[24..32].copy_from_slice(&self.digest.0.to_be_bytes());
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
        let chunk = u16_at(body, 20);
        let chunk_count = u16_at(body, 22);
        if chunk_count == 0 || chunk >= chunk_count || body[14] & !FLAG_LEAVING != 0 {
            return Err(WireError::Malformed);
        }
        Ok(Announce {
            incarnation: u64_at(body, 0),
            unicast: SocketAddrV4::new(Ipv4Addr::from(u32_at(body, 8)), u16_at(body, 12)),
            leaving: body[14] & FLAG_LEAVING != 0,
            topics_version: u32_at(body, 16),
            chunk,
            chunk_count,
            digest: RegionId(u64_at(body, 24)),
            topics: list
                .chunks_exact(8)
                .map(|c| TopicId(u64_at(c, 0)))
                .collect(),
        })
    }
}
