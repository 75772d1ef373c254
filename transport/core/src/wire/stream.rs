//! Stream state: a sender's highest sequence number in one (sender, region) stream, and the
//! stability floor it was acknowledged. Sent after a stream goes idle (like PGM's source path
//! messages) so receivers detect losses at its tail, and when a region's ring knows less than
//! the sender already freed (a receiver then starts after the floor).

use crate::{RegionId, Seq};

use super::{u32_at, u64_at, WireError};

/// Body bytes of a [`StreamState`].
pub const STREAM_STATE_LEN: usize = stream_field::EPOCH.end;

/// Byte offsets in a stream-state body.
mod stream_field {
    use std::ops::Range;
    pub const REGION: Range<usize> = 0..8;
    pub const HIGHEST: Range<usize> = 8..12;
    pub const FLOOR: Range<usize> = 12..16;
    pub const EPOCH: Range<usize> = 16..24;
}

/// The highest sequence number a sender has sent in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The region (stream) this is about.
    pub region: RegionId,
    /// The stream's epoch.
    pub epoch: u64,
    /// The highest sequence number sent so far.
    pub highest: Seq,
    /// Everything up to here was acknowledged by the region and freed by the sender.
    pub floor: Seq,
}

impl StreamState {
    /// Writes the body into `buf`, returning the bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let b = buf
            .get_mut(..STREAM_STATE_LEN)
            .ok_or(WireError::BufferTooSmall)?;
        b[stream_field::REGION].copy_from_slice(&self.region.0.to_be_bytes());
        b[stream_field::HIGHEST].copy_from_slice(&self.highest.0.to_be_bytes());
        b[stream_field::FLOOR].copy_from_slice(&self.floor.0.to_be_bytes());
        b[stream_field::EPOCH].copy_from_slice(&self.epoch.to_be_bytes());
        Ok(STREAM_STATE_LEN)
    }

    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<StreamState, WireError> {
        if body.len() != STREAM_STATE_LEN {
            return Err(WireError::Truncated);
        }
        Ok(StreamState {
            region: RegionId(u64_at(body, stream_field::REGION.start)),
            highest: Seq(u32_at(body, stream_field::HIGHEST.start)),
            floor: Seq(u32_at(body, stream_field::FLOOR.start)),
            epoch: u64_at(body, stream_field::EPOCH.start),
        })
    }
}
