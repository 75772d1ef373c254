//! The gossip datagram: the common Quicksilver header (kind [`PacketKind::Gossip`]) followed by
//! sections, one per gossip object, liveness sections first.
//!
//! ```text
//!  header (24 B, see qs_transport::wire)          kind = PacketKind::Gossip
//!  section*:  | tag u8 | priority u8 | len u16 | payload (len bytes) |
//! ```
//!
//! All integers are big-endian. Sealing and opening (length, checksum) belong to
//! [`qs_transport::wire::Seal`]: the node that embeds the gossip plane opens a datagram once
//! and hands the header and body to [`crate::GossipNode::handle_packet`]. Parsing never
//! panics: every failure is a [`WireError`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use qs_transport::wire::{Header, PacketKind, WireError};
use qs_transport::{ClusterId, NodeId};

/// Bytes of a section header (tag, priority, length).
pub const SECTION_HEADER_LEN: usize = 4;

/// Which part of a datagram's budget a payload competes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Failure detection and membership changes: written first, never trimmed for bulk.
    Liveness = 0,
    /// Anti-entropy state: shares what is left of the budget, trimmed to fit.
    Bulk = 1,
}

impl Priority {
    /// Both priorities, in the order they are written.
    pub const ALL: [Priority; 2] = [Priority::Liveness, Priority::Bulk];

    fn from_u8(v: u8) -> Result<Priority, WireError> {
        match v {
            0 => Ok(Priority::Liveness),
            1 => Ok(Priority::Bulk),
            _ => Err(WireError::Malformed),
        }
    }
}

/// Writes the common header of a gossip datagram into `buf[..HEADER_LEN]`.
pub fn write_header(buf: &mut [u8], cluster: ClusterId, sender: NodeId) -> Result<(), WireError> {
    Header::new(PacketKind::Gossip, cluster, sender).write(buf)
}

/// One section of a gossip datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    /// The object that wrote it.
    pub tag: u8,
    /// Liveness or bulk.
    pub priority: Priority,
    /// The object's payload.
    pub payload: &'a [u8],
}

/// Iterates over the sections of a datagram body; yields an error (once, then stops) on a
/// malformed section.
#[derive(Debug, Clone)]
pub struct Sections<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Sections<'a> {
    /// The sections of `body` (what follows the header).
    pub fn new(body: &'a [u8]) -> Sections<'a> {
        Sections {
            rest: body,
            failed: false,
        }
    }
}

impl<'a> Iterator for Sections<'a> {
    type Item = Result<Section<'a>, WireError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let parsed = (|| {
            let mut r = Reader::new(self.rest);
            let tag = r.u8()?;
            let priority = Priority::from_u8(r.u8()?)?;
            let len = usize::from(r.u16()?);
            let payload = r.bytes(len)?;
            Ok((
                Section {
                    tag,
                    priority,
                    payload,
                },
                r.rest(),
            ))
        })();
        match parsed {
            Ok((section, rest)) => {
                self.rest = rest;
                Some(Ok(section))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A bounds-checked big-endian reader: every accessor fails with [`WireError::Truncated`]
/// instead of panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `b`.
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b }
    }
    /// Unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        self.b
    }
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }
    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// A socket address (see [`put_addr`]).
    pub fn addr(&mut self) -> Result<SocketAddr, WireError> {
        match self.u8()? {
            4 => {
                let b = self.bytes(4)?;
                let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                Ok(SocketAddr::new(IpAddr::V4(ip), self.u16()?))
            }
            6 => {
                let b = self.bytes(16)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), self.u16()?))
            }
            _ => Err(WireError::Malformed),
        }
    }
}

/// Encoded size of an address: family byte, IP, port.
pub fn addr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 7,
        SocketAddr::V6(_) => 19,
    }
}

/// Appends an address: `4 | ipv4 | port` or `6 | ipv6 | port`.
pub fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qs_transport::wire::{Seal, HEADER_LEN};

    fn datagram(sections: &[(u8, Priority, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u8; 2000];
        write_header(&mut buf, ClusterId(7), NodeId(9)).unwrap();
        let mut at = HEADER_LEN;
        for (tag, p, payload) in sections {
            buf[at] = *tag;
            buf[at + 1] = *p as u8;
            buf[at + 2..at + 4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            buf[at + 4..at + 4 + payload.len()].copy_from_slice(payload);
            at += 4 + payload.len();
        }
        let len = Seal::new().seal(&mut buf, at).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn a_sealed_datagram_parses_back_into_its_sections() {
        let d = datagram(&[(0, Priority::Liveness, b"abc"), (1, Priority::Bulk, b"")]);
        let (h, body) = Seal::new().open(&d).unwrap();
        assert_eq!(
            (h.kind, h.cluster, h.sender),
            (PacketKind::Gossip, ClusterId(7), NodeId(9))
        );
        let s: Vec<_> = Sections::new(body).collect::<Result<_, _>>().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].payload, b"abc");
        assert_eq!(s[1].priority, Priority::Bulk);
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_checksum() {
        let mut d = datagram(&[(0, Priority::Liveness, b"abc")]);
        let last = d.len() - 1;
        d[last] ^= 1;
        assert_eq!(Seal::new().open(&d), Err(WireError::BadChecksum));
    }

    #[test]
    fn addresses_round_trip_in_both_families() {
        for a in ["10.1.2.3:9000", "[fe80::1]:7"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            put_addr(&mut out, &a);
            assert_eq!(out.len(), addr_len(&a));
            assert_eq!(Reader::new(&out).addr().unwrap(), a);
        }
    }

    proptest! {
        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((_, body)) = Seal::new().open(&bytes) {
                for s in Sections::new(body) { let _ = s; }
            }
            for s in Sections::new(&bytes) { let _ = s; }
            let mut r = Reader::new(&bytes);
            let _ = r.addr();
        }
    }
}
