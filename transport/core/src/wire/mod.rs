//! The wire format: one common header, then a body per packet kind.
//!
//! All integers are big-endian. Every datagram starts with a [`Header`] (28 bytes; offsets in
//! [`field`]). Writers produce a header and a body; [`Seal::seal`] stores the length and the
//! CRC-32 over the whole datagram on the way out (or, with a cluster key, a trailer with a
//! MAC: see [`Seal`]), [`Seal::open`] checks magic, version, length and checksum or MAC once
//! on the way in, after which the body decoders only bound-check.
//!
//! ```text
//!  0      2   3    4     5     6        8          12                20               28
//!  | magic | ver | kind | flags | rsvd | length | checksum | cluster         | sender         |
//! ```
//!
//! Bodies: [`Announce`] (discovery), data packets (several small messages packed, see
//! [`DataWriter`] and [`DataPacket`], or one fragment of a large message) and [`StreamState`]
//! (a sender's highest sequence number per stream, so receivers see losses at a stream's tail);
//! recovery packets ([`Token`], [`TokenAck`], [`RepairRequest`], [`SenderAck`]); lateral repairs
//! ([`LecRepair`]: XOR or Reed–Solomon parity of a bin of data packets, between receivers);
//! handover markers ([`HandoverMarker`], messages inside data packets).
//! Parsing never panics on any input; every error is a [`WireError`].

mod announce;
mod data;
mod handover;
mod header;
mod lec;
mod recovery;
mod seal;
mod stream;

pub use announce::{Announce, ANNOUNCE_FIXED_LEN};
pub use data::{
    data_field, fragment_field, members_hash, message_field, view_tag, view_tag_members,
    DataPacket, DataWriter, Fragment, MessageIter, StreamId, DATA_FIXED_LEN, FRAGMENT_FIXED_LEN,
    MESSAGE_OVERHEAD,
};
pub use handover::{HandoverMarker, MarkerKind, FLAG_HANDOVER, HANDOVER_MARKER_LEN};
pub use header::{field, Header, PacketKind, FLAG_UNICAST_COPY, HEADER_LEN, MAGIC, VERSION};
pub use lec::{
    lec_digest, LecCode, LecEntries, LecEntry, LecHead, LecRepair, PacketId, LEC_ENTRY_LEN,
    LEC_FIXED_LEN, LEC_GROUP_LEN, LEC_MAX_PACKETS, LEC_MAX_PARITY,
};
pub use recovery::{
    RateAggregate, RepairRequest, Scope, SenderAck, SeqRange, Token, TokenAck, TokenRecord,
    MAX_PARTITIONS, TOKEN_ACK_LEN,
};
pub use seal::{
    ClusterKey, KeyFileError, KeyRing, ReplayWindow, Seal, FLAG_KEYED, REPLAY_TABLE_MAX,
    REPLAY_WINDOW, TAG_LEN, TRAILER_LEN,
};
pub use stream::{StreamState, STREAM_STATE_LEN};

/// Why a datagram was rejected. Each variant is a counted drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the header or than its body needs.
    #[error("datagram truncated")]
    Truncated,
    /// Not a Quicksilver datagram.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version this build does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// An unknown packet kind.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// The header's length disagrees with the datagram's.
    #[error("length mismatch")]
    BadLength,
    /// The checksum does not match (corruption).
    #[error("checksum mismatch")]
    BadChecksum,
    /// Keyed: no valid MAC under a key this node holds (or a keyed datagram at a keyless
    /// node). Counted as `drops.auth`.
    #[error("not authenticated")]
    Unauthenticated,
    /// Keyed: a control datagram whose counter was seen already or is older than the replay
    /// window. Counted as `drops.replay`.
    #[error("replayed")]
    Replayed,
    /// A body field is out of range or inconsistent.
    #[error("malformed body")]
    Malformed,
    /// The caller's buffer cannot hold the packet.
    #[error("buffer too small")]
    BufferTooSmall,
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
