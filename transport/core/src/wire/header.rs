//! The common header.
//!
//! Every writer in the workspace (data packets, fragments, announcements, recovery packets,
//! gossip) writes a [`Header`] and its body and stops there; the node seals the datagram once
//! on its way out ([`super::Seal::seal`]: length, and checksum or MAC) and opens it once on
//! its way in ([`super::Seal::open`]) before any body is parsed. This file only lays out and
//! reads the fields; it checks nothing but magic, version and kind.

use crate::{ClusterId, NodeId};

use super::{u16_at, u64_at, WireError};

/// `"QS"`.
pub const MAGIC: u16 = 0x5153;
/// The wire version this build speaks (3: 64-bit cluster id, keyed trailer; 4: the trailer
/// carries a nonce prefix for the AES-GCM-SIV tag).
pub const VERSION: u8 = 4;
/// Bytes in the common header.
pub const HEADER_LEN: usize = field::SENDER.end;

/// Byte offsets of the common header's fields (big-endian integers).
///
/// ```text
///  0      2   3    4     5     6        8          12                20               28
///  | magic | ver | kind | flags | rsvd | length | checksum | cluster         | sender         |
/// ```
pub mod field {
    use std::ops::Range;

    /// [`super::MAGIC`], u16.
    pub const MAGIC: Range<usize> = 0..2;
    /// [`super::VERSION`], u8.
    pub const VERSION: usize = 2;
    /// [`super::PacketKind`], u8.
    pub const KIND: usize = 3;
    /// Flag bits, u8 (see [`super::FLAG_UNICAST_COPY`], [`super::super::FLAG_KEYED`]).
    pub const FLAGS: usize = 4;
    /// Reserved, zero.
    pub const RESERVED: usize = 5;
    /// The whole datagram's length, u16.
    pub const LENGTH: Range<usize> = 6..8;
    /// CRC-32 of the datagram with this field taken out, u32 (zero when keyed: the MAC
    /// covers the datagram instead).
    pub const CHECKSUM: Range<usize> = 8..12;
    /// [`crate::ClusterId`], u64.
    pub const CLUSTER: Range<usize> = 12..20;
    /// The sending node's [`crate::NodeId`], u64.
    pub const SENDER: Range<usize> = 20..28;
}

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
    /// A lateral repair between receivers ([`super::LecRepair`]).
    LecRepair = 9,
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
            9 => PacketKind::LecRepair,
            0x47 => PacketKind::Gossip,
            other => return Err(WireError::UnknownKind(other)),
        })
    }
}

/// The fields of the common header (length and checksum belong to [`super::Seal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet kind.
    pub kind: PacketKind,
    /// Flag bits ([`FLAG_UNICAST_COPY`]).
    pub flags: u8,
    /// Cluster the sender belongs to.
    pub cluster: ClusterId,
    /// The sending node.
    pub sender: NodeId,
}

impl Header {
    /// A header without flags.
    pub fn new(kind: PacketKind, cluster: ClusterId, sender: NodeId) -> Header {
        Header {
            kind,
            flags: 0,
            cluster,
            sender,
        }
    }

    /// Writes the header into `buf[..HEADER_LEN]`; [`super::Seal::seal`] later fills in
    /// length and checksum.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let b = buf.get_mut(..HEADER_LEN).ok_or(WireError::BufferTooSmall)?;
        b[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        b[field::VERSION] = VERSION;
        b[field::KIND] = self.kind as u8;
        b[field::FLAGS] = self.flags;
        b[field::RESERVED] = 0;
        b[field::LENGTH].fill(0);
        b[field::CLUSTER].copy_from_slice(&self.cluster.0.to_be_bytes());
        b[field::CHECKSUM].fill(0);
        b[field::SENDER].copy_from_slice(&self.sender.0.to_be_bytes());
        Ok(())
    }

    /// Reads the header fields of a datagram **without** checking it (for observers such as
    /// a simulator's traffic classifier; a node uses [`super::Seal::open`]).
    pub fn peek(datagram: &[u8]) -> Result<Header, WireError> {
        if datagram.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if u16_at(datagram, field::MAGIC.start) != MAGIC {
            return Err(WireError::BadMagic);
        }
        if datagram[field::VERSION] != VERSION {
            return Err(WireError::UnsupportedVersion(datagram[field::VERSION]));
        }
        Ok(Header {
            kind: PacketKind::from_u8(datagram[field::KIND])?,
            flags: datagram[field::FLAGS],
            cluster: ClusterId(u64_at(datagram, field::CLUSTER.start)),
            sender: NodeId(u64_at(datagram, field::SENDER.start)),
        })
    }
}

/// Header flag: this data datagram is a sender's unicast copy for a member that does not hear
/// the region's multicast (not evidence that the multicast path works).
pub const FLAG_UNICAST_COPY: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_peeks_back_with_its_64_bit_cluster() {
        let mut buf = [0u8; HEADER_LEN];
        let h = Header::new(PacketKind::Token, ClusterId(u64::MAX - 5), NodeId(9));
        h.write(&mut buf).unwrap();
        assert_eq!(Header::peek(&buf), Ok(h));
        assert_eq!(HEADER_LEN, 28);
        buf[field::VERSION] = 2;
        assert_eq!(Header::peek(&buf), Err(WireError::UnsupportedVersion(2)));
    }
}
