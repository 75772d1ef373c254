//! The common header and the whole-datagram checks.

use crate::{ClusterId, NodeId};

use super::{u16_at, u32_at, u64_at, WireError};

/// `"QS"`.
pub const MAGIC: u16 = 0x5153;
/// The wire version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes in the common header.
pub const HEADER_LEN: usize = 24;
const CHECKSUM_AT: usize = 12;

/// What follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Discovery announcement ([`super::Announce`]).
    Announce = 1,
    /// Packed small messages ([`super::DataPacket`]).
    Data = 2,
    /// One fragment of a large message ([`super::Fragment`]).
    Fragment = 3,
    /// A sender's stream position ([`super::StreamState`]).
    StreamState = 4,
    /// A region ring's token ([`super::Token`]).
    Token = 5,
    /// A token hop's acknowledgement ([`super::TokenAck`]).
    TokenAck = 6,
    /// A repair request ([`super::RepairRequest`]).
    RepairRequest = 7,
    /// A region leader's acknowledgement to a sender ([`super::SenderAck`]).
    SenderAck = 8,
    /// A gossip-plane datagram (`qs-gossip`; its body is that crate's sections).
    Gossip = 0x47,
}

impl PacketKind {
    fn from_u8(v: u8) -> Result<PacketKind, WireError> {
        Ok(match v {
            1 => PacketKind::Announce,
            2 => PacketKind::Data,
            3 => PacketKind::Fragment,
            4 => PacketKind::StreamState,
            5 => PacketKind::Token,
            6 => PacketKind::TokenAck,
            7 => PacketKind::RepairRequest,
            8 => PacketKind::SenderAck,
            0x47 => PacketKind::Gossip,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
}

/// The fields of the common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet kind.
    pub kind: PacketKind,
    /// Cluster the sender belongs to.
    pub cluster: ClusterId,
    /// The sending node.
    pub sender: NodeId,
}

impl Header {
    /// Writes the header into `buf[..HEADER_LEN]`; [`finish`] later fills length and checksum.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let b = buf.get_mut(..HEADER_LEN).ok_or(WireError::BufferTooSmall)?;
        b[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4] = 0;
        b[5] = 0;
        b[6..8].copy_from_slice(&0u16.to_be_bytes());
        b[8..12].copy_from_slice(&self.cluster.0.to_be_bytes());
        b[12..16].copy_from_slice(&0u32.to_be_bytes());
        b[16..24].copy_from_slice(&self.sender.0.to_be_bytes());
        Ok(())
    }
}

/// Header flag: this data datagram is a sender's unicast copy for a member that does not hear
/// the region's multicast (not evidence that the multicast path works).
pub const FLAG_UNICAST_COPY: u8 = 1;

/// The flags byte of a datagram that passed [`parse`].
pub fn flags(datagram: &[u8]) -> u8 {
    datagram.get(4).copied().unwrap_or(0)
}

/// Seals a datagram of `len` bytes whose header was written with [`Header::write`]: stores the
/// length and the checksum. Returns `len`.
pub fn finish(buf: &mut [u8], len: usize) -> Result<usize, WireError> {
    if len < HEADER_LEN || len > buf.len() || len > usize::from(u16::MAX) {
        return Err(WireError::BufferTooSmall);
    }
    buf[6..8].copy_from_slice(&(len as u16).to_be_bytes());
    let sum = checksum(&buf[..len]);
    buf[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
    Ok(len)
}

fn checksum(datagram: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&datagram[..CHECKSUM_AT]);
    h.update(&datagram[CHECKSUM_AT + 4..]);
    h.finalize()
}

/// Checks a whole datagram (magic, version, kind, length, checksum) and returns its header and
/// body.
pub fn parse(datagram: &[u8]) -> Result<(Header, &[u8]), WireError> {
    if datagram.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if u16_at(datagram, 0) != MAGIC {
        return Err(WireError::BadMagic);
    }
    if datagram[2] != VERSION {
        return Err(WireError::UnsupportedVersion(datagram[2]));
    }
    let kind = PacketKind::from_u8(datagram[3])?;
    if usize::from(u16_at(datagram, 6)) != datagram.len() {
        return Err(WireError::BadLength);
    }
    if u32_at(datagram, CHECKSUM_AT) != checksum(datagram) {
        return Err(WireError::BadChecksum);
    }
    let header = Header {
        kind,
        cluster: ClusterId(u32_at(datagram, 8)),
        sender: NodeId(u64_at(datagram, 16)),
    };
    Ok((header, &datagram[HEADER_LEN..]))
}
