//! The common header, and the one place where datagrams are sealed and opened.
//!
//! Every writer in the workspace (data packets, fragments, announcements, recovery packets,
//! gossip) writes a [`Header`] and its body and stops there; the node seals the datagram once
//! on its way out ([`Seal::seal`]: length and checksum) and opens it once on its way in
//! ([`Seal::open`]: magic, version, kind, length, checksum) before any body is parsed. The
//! authentication of a cluster key belongs here and nowhere else.

use crate::{ClusterId, NodeId};

use super::{u16_at, u32_at, u64_at, WireError};

/// `"QS"`.
pub const MAGIC: u16 = 0x5153;
/// The wire version this build speaks.
pub const VERSION: u8 = 2;
/// Bytes in the common header.
pub const HEADER_LEN: usize = field::SENDER.end;

/// Byte offsets of the common header's fields (big-endian integers).
///
/// ```text
///  0      2   3    4     5     6        8         12         16               24
///  | magic | ver | kind | flags | rsvd | length | cluster | checksum | sender    |
/// ```
pub mod field {
    use std::ops::Range;

    /// [`super::MAGIC`], u16.
    pub const MAGIC: Range<usize> = 0..2;
    /// [`super::VERSION`], u8.
    pub const VERSION: usize = 2;
    /// [`super::PacketKind`], u8.
    pub const KIND: usize = 3;
    /// Flag bits, u8 (see [`super::FLAG_UNICAST_COPY`]).
    pub const FLAGS: usize = 4;
    /// Reserved, zero.
    pub const RESERVED: usize = 5;
    /// The whole datagram's length, u16.
    pub const LENGTH: Range<usize> = 6..8;
    /// [`crate::ClusterId`], u32.
    pub const CLUSTER: Range<usize> = 8..12;
    /// CRC-32 of the datagram with this field taken out, u32.
    pub const CHECKSUM: Range<usize> = 12..16;
    /// The sending node's [`crate::NodeId`], u64.
    pub const SENDER: Range<usize> = 16..24;
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

/// The fields of the common header (length and checksum belong to [`Seal`]).
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

    /// Writes the header into `buf[..HEADER_LEN]`; [`Seal::seal`] later fills in length and
    /// checksum.
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
    /// a simulator's traffic classifier; a node uses [`Seal::open`]).
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
            cluster: ClusterId(u32_at(datagram, field::CLUSTER.start)),
            sender: NodeId(u64_at(datagram, field::SENDER.start)),
        })
    }
}

/// Header flag: this data datagram is a sender's unicast copy for a member that does not hear
/// the region's multicast (not evidence that the multicast path works).
pub const FLAG_UNICAST_COPY: u8 = 1;

/// Seals datagrams on their way out and opens them on their way in: the single point where a
/// datagram's integrity is established. Today a CRC-32 over the whole datagram (corruption,
/// not forgery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seal {}

impl Seal {
    /// The checksum-only seal.
    pub fn new() -> Seal {
        Seal {}
    }

    /// Bytes a sealed datagram needs beyond header and body (a trailer; 0 for the checksum,
    /// which lives in the header). Writers leave this much room.
    pub fn overhead(&self) -> usize {
        0
    }

    /// Seals `buf[..len]`, a header written by [`Header::write`] followed by its body: stores
    /// the length and the checksum. Returns the sealed datagram's length.
    pub fn seal(&self, buf: &mut [u8], len: usize) -> Result<usize, WireError> {
        let sealed = len + self.overhead();
        if len < HEADER_LEN || sealed > buf.len() || sealed > usize::from(u16::MAX) {
            return Err(WireError::BufferTooSmall);
        }
        buf[field::LENGTH].copy_from_slice(&(sealed as u16).to_be_bytes());
        let sum = checksum(&buf[..sealed]);
        buf[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        Ok(sealed)
    }

    /// Checks a whole datagram (magic, version, kind, length, checksum) and returns its header
    /// and body. Nothing of the body is looked at before this succeeds.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<(Header, &'a [u8]), WireError> {
        let header = Header::peek(datagram)?;
        if usize::from(u16_at(datagram, field::LENGTH.start)) != datagram.len() {
            return Err(WireError::BadLength);
        }
        if u32_at(datagram, field::CHECKSUM.start) != checksum(datagram) {
            return Err(WireError::BadChecksum);
        }
        let body_end = datagram.len() - self.overhead();
        Ok((header, &datagram[HEADER_LEN..body_end]))
    }
}

fn checksum(datagram: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&datagram[..field::CHECKSUM.start]);
    h.update(&datagram[field::CHECKSUM.end..]);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(kind: PacketKind, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + body.len()];
        Header::new(kind, ClusterId(3), NodeId(9))
            .write(&mut buf)
            .unwrap();
        buf[HEADER_LEN..].copy_from_slice(body);
        let len = Seal::new().seal(&mut buf, HEADER_LEN + body.len()).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn a_sealed_datagram_opens_to_its_header_and_body() {
        let d = sealed(PacketKind::Token, b"body");
        let (h, body) = Seal::new().open(&d).unwrap();
        assert_eq!(h, Header::new(PacketKind::Token, ClusterId(3), NodeId(9)));
        assert_eq!(body, b"body");
    }

    #[test]
    fn an_unsealed_or_altered_datagram_does_not_open() {
        let mut d = sealed(PacketKind::Data, b"xyz");
        d[HEADER_LEN] ^= 1;
        assert_eq!(Seal::new().open(&d), Err(WireError::BadChecksum));
        let mut raw = vec![0u8; HEADER_LEN];
        Header::new(PacketKind::Data, ClusterId(3), NodeId(9))
            .write(&mut raw)
            .unwrap();
        assert_eq!(Seal::new().open(&raw), Err(WireError::BadLength));
    }

    #[test]
    fn sealing_needs_a_header_and_room() {
        let mut buf = [0u8; 10];
        assert_eq!(
            Seal::new().seal(&mut buf, 10),
            Err(WireError::BufferTooSmall)
        );
    }
}
