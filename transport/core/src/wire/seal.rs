//! The one place where datagrams are sealed and opened: integrity (CRC-32, keyless) or
//! authentication (a keyed MAC with a cluster key), and the replay window of control traffic.
//!
//! Keyless, [`Seal::seal`] stores length and CRC-32 in the header (corruption, not forgery).
//! With a [`KeyRing`], it sets [`FLAG_KEYED`] and appends a trailer instead:
//!
//! ```text
//!  | header (28) | body | key epoch u32 | counter u64 | nonce prefix u64 | tag (16) |
//! ```
//!
//! The tag is AES-256-GCM-SIV (RFC 8452) with an empty plaintext and everything before the
//! tag as associated data (header with its length and flags, body, epoch, counter and
//! prefix); its 96-bit nonce is the 12 bytes before the tag: the counter's low 32 bits and
//! the sealer's prefix. GCM-SIV resists nonce misuse: a repeated nonce (a restart that draws
//! the same prefix, two forwarders) only tells that two sealed inputs were equal, and the
//! inputs travel in clear anyway; it never lets an outsider forge. See [`Seal`] for the
//! figures and why it replaced BLAKE3.
//! [`Seal::open`] checks it before anything of the body is read, so a node without the key
//! sees nothing of the cluster, and the cluster nothing of it.
//!
//! **Replay.** Control datagrams (every kind but data, fragments and lateral repairs) carry a
//! per-sender counter that only grows; [`Seal::open`] keeps a [`ReplayWindow`] per (sender,
//! key epoch) and refuses a counter seen before or older than the window. Data kinds carry
//! a counter of their own (it only varies the nonce) and are not windowed: receivers drop
//! them by sequence number already, and a
//! caretaker forwards cached data of *another* sender, re-sealed with its own key, so a counter
//! per header sender could not hold for them. The window table is bounded
//! ([`REPLAY_TABLE_MAX`]); the entry accepted longest ago is forgotten first.
//!
//! **Key rotation.** A ring holds the key that seals and at most one more that only opens;
//! the node core switches to a newer second key by itself once gossip shows every member
//! holds it, and retires the older one later (the README's key section). The cluster id stays the one
//! derived from the first key (the key file carries it), so rotation never splits the cluster.
//!
//! Not done here: confidentiality (bodies travel in clear), and nothing stops a key holder
//! from sealing as any member.

use std::collections::BTreeMap;
use std::fmt;

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};

use crate::{ClusterId, NodeId};

use super::header::{field, Header, PacketKind, HEADER_LEN};
use super::{u16_at, u32_at, u64_at, WireError};

/// Header flag: the datagram is sealed with a cluster key (it has a trailer and no checksum).
pub const FLAG_KEYED: u8 = 2;
/// Bytes of the keyed trailer: key epoch (4), counter (8), nonce prefix (8), tag (16).
pub const TRAILER_LEN: usize = 4 + 8 + 8 + TAG_LEN;
/// Bytes of the GCM-SIV nonce: the 12 trailer bytes before the tag.
const NONCE_LEN: usize = 12;
/// Bytes of the MAC tag.
pub const TAG_LEN: usize = 16;
/// Counters a [`ReplayWindow`] remembers behind its highest.
pub const REPLAY_WINDOW: u64 = 256;
/// Most (sender, key epoch) windows a keyed [`Seal`] keeps.
pub const REPLAY_TABLE_MAX: usize = 4096;

/// One cluster key: 32 secret bytes and the epoch operators number it with.
#[derive(Clone)]
pub struct ClusterKey {
    /// The key's epoch (carried in every trailer, so receivers pick the key to check with).
    pub epoch: u32,
    bytes: [u8; 32],
    /// The MAC: AES-256-GCM-SIV keyed with a key derived from `bytes` (key schedule done
    /// once; shared by the ring's clones).
    mac: Arc<LessSafeKey>,
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &ClusterKey) -> bool {
        // `mac` is a function of `bytes`.
        self.epoch == other.epoch && self.bytes == other.bytes
    }
}

impl Eq for ClusterKey {}

impl ClusterKey {
    /// The key `bytes` of `epoch`.
    pub fn new(epoch: u32, bytes: [u8; 32]) -> ClusterKey {
        // The MAC key is derived, not the file's bytes themselves, so the MAC and the cluster
        // id (another derivation) never share key material.
        let mac_key = blake3::derive_key("quicksilver 2026 datagram mac", &bytes);
        let mac = UnboundKey::new(&AES_256_GCM_SIV, &mac_key).expect("a 32-byte AES-256 key");
        ClusterKey {
            epoch,
            bytes,
            mac: Arc::new(LessSafeKey::new(mac)),
        }
    }

    /// The cluster id derived from this key (a different derivation than the MAC's, so the
    /// id tells nothing of the key).
    pub fn derive_cluster(&self) -> ClusterId {
        let k = blake3::derive_key("quicksilver 2026 cluster id", &self.bytes);
        ClusterId(u64::from_be_bytes(k[..8].try_into().expect("8 bytes")))
    }

    /// The tag of `sealed` (everything before the tag; its last 12 bytes are the nonce).
    fn tag(&self, sealed: &[u8]) -> [u8; TAG_LEN] {
        let tag = self
            .mac
            .seal_in_place_separate_tag(nonce(sealed), Aad::from(sealed), &mut [])
            .expect("a datagram is far below GCM-SIV's length limits");
        tag.as_ref().try_into().expect("16 bytes")
    }

    /// Whether `tag` is the tag of `sealed` (compared in constant time by the library).
    fn verifies(&self, sealed: &[u8], tag: &[u8]) -> bool {
        // An empty plaintext: the "ciphertext" is the tag alone.
        let mut in_out = [0u8; TAG_LEN];
        in_out.copy_from_slice(tag);
        self.mac
            .open_in_place(nonce(sealed), Aad::from(sealed), &mut in_out)
            .is_ok()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: logs and panics print configs.
        write!(f, "ClusterKey(epoch {})", self.epoch)
    }
}

/// The keys a node holds: the cluster they belong to, the key it seals with and at most one
/// more it accepts (during a rotation). Its text form is the key file `qs keygen` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing {
    /// The cluster (derived from the first key the cluster ever had; kept across rotations).
    pub cluster: ClusterId,
    /// Seals every outgoing datagram (and opens).
    pub seal_with: ClusterKey,
    /// Opens only: the previous key, or the next one before every node has it.
    pub also: Option<ClusterKey>,
}

/// Why a key file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// A line is neither a comment, `cluster = HEX16` nor `key EPOCH = HEX64`.
    #[error("key file line {0}: expected `cluster = <16 hex>` or `key <epoch> = <64 hex>`")]
    BadLine(usize),
    /// No `key` line, or more than two.
    #[error("a key file holds one or two keys, found {0}")]
    KeyCount(usize),
    /// Two keys with one epoch.
    #[error("two keys share epoch {0}")]
    DuplicateEpoch(u32),
}

impl KeyRing {
    /// A new cluster's ring from 32 random bytes: epoch 1, cluster id derived from the key.
    pub fn generate(bytes: [u8; 32]) -> KeyRing {
        let key = ClusterKey::new(1, bytes);
        KeyRing {
            cluster: key.derive_cluster(),
            seal_with: key,
            also: None,
        }
    }

    /// The key of `epoch`, if this ring holds it.
    pub fn key(&self, epoch: u32) -> Option<&ClusterKey> {
        std::iter::once(&self.seal_with)
            .chain(self.also.as_ref())
            .find(|k| k.epoch == epoch)
    }

    /// The newest epoch this ring holds (what a node tells the cluster it holds).
    pub fn newest_epoch(&self) -> u32 {
        self.also
            .as_ref()
            .map_or(self.seal_with.epoch, |k| k.epoch.max(self.seal_with.epoch))
    }

    /// Rotation step 1: the same ring plus a new key (`bytes`, the next epoch) that opens
    /// only. Replaces a second key held already.
    pub fn add_next(&self, bytes: [u8; 32]) -> KeyRing {
        let top = self
            .also
            .as_ref()
            .map_or(0, |k| k.epoch)
            .max(self.seal_with.epoch);
        KeyRing {
            also: Some(ClusterKey::new(top.wrapping_add(1), bytes)),
            ..self.clone()
        }
    }

    /// Rotation step 2: the newest key seals, the other still opens (unchanged when the ring
    /// holds one key or its sealing key is the newest already).
    pub fn promote(&self) -> KeyRing {
        match &self.also {
            Some(next) if next.epoch > self.seal_with.epoch => KeyRing {
                cluster: self.cluster,
                seal_with: next.clone(),
                also: Some(self.seal_with.clone()),
            },
            _ => self.clone(),
        }
    }

    /// Rotation step 3: only the sealing key is kept.
    pub fn retire(&self) -> KeyRing {
        KeyRing {
            also: None,
            ..self.clone()
        }
    }

    /// Parses a key file: `#` comments, `cluster = <16 hex>` (optional: derived from the first
    /// key when absent), `key <epoch> = <64 hex>` once or twice; the first key seals.
    pub fn parse(text: &str) -> Result<KeyRing, KeyFileError> {
        let mut cluster = None;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = KeyFileError::BadLine(n + 1);
            let (name, value) = line.split_once('=').ok_or(bad.clone())?;
            let (name, value) = (name.trim(), value.trim());
            if name == "cluster" {
                let v = hex::<8>(value).ok_or(bad)?;
                cluster = Some(ClusterId(u64::from_be_bytes(v)));
            } else if let Some(epoch) = name.strip_prefix("key ") {
                let epoch = epoch.trim().parse::<u32>().map_err(|_| bad.clone())?;
                keys.push(ClusterKey::new(epoch, hex::<32>(value).ok_or(bad)?));
            } else {
                return Err(bad);
            }
        }
        if keys.is_empty() || keys.len() > 2 {
            return Err(KeyFileError::KeyCount(keys.len()));
        }
        let also = (keys.len() == 2).then(|| keys.remove(1));
        let seal_with = keys.remove(0);
        if also.as_ref().is_some_and(|a| a.epoch == seal_with.epoch) {
            return Err(KeyFileError::DuplicateEpoch(seal_with.epoch));
        }
        Ok(KeyRing {
            cluster: cluster.unwrap_or_else(|| seal_with.derive_cluster()),
            seal_with,
            also,
        })
    }

    /// The key file text ([`KeyRing::parse`] reads it back).
    pub fn to_file(&self) -> String {
        let mut s = String::from(
            "# Quicksilver cluster key file: secret, keep it mode 0600.\n\
             # The first key seals; a second one only opens (key rotation, see the README).\n",
        );
        s += &format!("cluster = {:016x}\n", self.cluster.0);
        for k in std::iter::once(&self.seal_with).chain(self.also.as_ref()) {
            s += &format!("key {} = ", k.epoch);
            for b in k.bytes {
                s += &format!("{b:02x}");
            }
            s.push('\n');
        }
        s
    }
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Which counters of one (sender, key epoch) were seen: the highest, and a bitmap of the
/// [`REPLAY_WINDOW`] before it. Counters compare by serial-number arithmetic (RFC 1982), so
/// the window works across the wrap of the 64-bit counter. Sans-IO, plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit `i` of word `i / 64`: counter `highest - i` was seen (bit 0 is `highest`).
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
    started: bool,
}

impl ReplayWindow {
    /// Accepts `counter` if it was not seen and is not older than the window; records it.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.started {
            self.started = true;
            self.highest = counter;
            self.seen = Default::default();
            self.seen[0] = 1;
            return true;
        }
        let ahead = counter.wrapping_sub(self.highest);
        if ahead != 0 && ahead < (1 << 63) {
            self.shift(ahead);
            self.highest = counter;
            self.seen[0] |= 1;
            return true;
        }
        let behind = self.highest.wrapping_sub(counter);
        if behind >= REPLAY_WINDOW {
            return false;
        }
        let (word, bit) = ((behind / 64) as usize, behind % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        true
    }

    /// Moves the window `by` counters forward.
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen = Default::default();
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..self.seen.len()).rev() {
            let word = |j: Option<usize>| j.map_or(0, |j| self.seen[j]);
            let lo = word(i.checked_sub(words)) << bits;
            let carry = if bits == 0 {
                0
            } else {
                word(i.checked_sub(words + 1)) >> (64 - bits)
            };
            self.seen[i] = lo | carry;
        }
    }
}

/// Seals datagrams on their way out and opens them on their way in: the single point where a
/// datagram's integrity (keyless: CRC-32) or authenticity (with a [`KeyRing`]) is established.
///
/// The MAC is AES-256-GCM-SIV over the datagram as associated data, from `aws-lc-rs` (its
/// assembly uses AES-NI and PCLMULQDQ where the CPU has them), a 16-byte tag. It replaced a
/// BLAKE3 keyed hash: at 1 KB it costs between a ninth (seal) and a fifth (open) of BLAKE3's
/// instructions, at 64 B about the same; RustCrypto's pure-Rust `aes-gcm-siv` was measured
/// too and saves only a third at 1 KB while costing more than twice BLAKE3 at 64 B (it derives and expands the per-nonce keys with
/// far more work). Figures and commands: BENCHMARKS.md, "The cluster key's cost". GMAC
/// (plain AES-GCM) was rejected before: it needs a nonce that never repeats under a key the whole cluster
/// shares, and one repeat (a restart, two forwarders) hands an outsider the hash key. GCM-SIV
/// derives a fresh key pair per nonce and encrypts the hash, so a repeated nonce tells only
/// that two sealed inputs were equal. The nonce is the counter's low 32 bits and a 64-bit
/// prefix each sealer draws at start (the node core mixes its incarnation into it; the
/// lowest bit tells data kinds, which count on their own, from control kinds), so nonces
/// rarely repeat at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seal {
    keys: Option<KeyRing>,
    /// The last control counter (keyed only).
    counter: u64,
    /// The last data counter (keyed only; not windowed, it only varies the nonce).
    data_counter: u64,
    /// This sealer's nonce prefix, lowest bit clear (set for data kinds).
    prefix: u64,
    windows: BTreeMap<(NodeId, u32), (ReplayWindow, u64)>,
    /// Stamps windows by last use, to forget the least recently used when the table is full.
    uses: u64,
}

impl Seal {
    /// The checksum-only seal.
    pub fn new() -> Seal {
        Seal::default()
    }

    /// A seal that authenticates with `keys`; control counters start at `counter_start`
    /// (take it from something that grows across restarts, e.g. the incarnation shifted
    /// left, or peers refuse a restarted node's control traffic as replayed until it passes
    /// the old counters). `nonce_prefix` varies the MAC's nonces between sealers: draw it
    /// at random (a repeat costs no security, see [`Seal`]).
    pub fn keyed(keys: KeyRing, counter_start: u64, nonce_prefix: u64) -> Seal {
        Seal {
            keys: Some(keys),
            counter: counter_start,
            prefix: nonce_prefix & !1,
            ..Seal::default()
        }
    }

    /// The keys, if keyed.
    pub fn keys(&self) -> Option<&KeyRing> {
        self.keys.as_ref()
    }

    /// Replaces the keys (a rotation step); replay windows of keys no longer held go.
    /// A keyless seal stays keyless and a keyed one keyed: that changes the cluster id and
    /// the datagram budget, so it takes a new node.
    pub fn set_keys(&mut self, keys: KeyRing) {
        if self.keys.is_some() {
            self.windows
                .retain(|(_, epoch), _| keys.key(*epoch).is_some());
            self.keys = Some(keys);
        }
    }

    /// Replay windows held (bounded by [`REPLAY_TABLE_MAX`]).
    pub fn replay_windows(&self) -> usize {
        self.windows.len()
    }

    /// Bytes a sealed datagram needs beyond header and body (the keyed trailer; 0 keyless,
    /// the checksum lives in the header). Writers leave this much room.
    pub fn overhead(&self) -> usize {
        if self.keys.is_some() {
            TRAILER_LEN
        } else {
            0
        }
    }

    /// Seals `buf[..len]`, a header written by [`Header::write`] followed by its body: stores
    /// the length and the checksum, or (keyed) the flag and the trailer. Returns the sealed
    /// datagram's length.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, WireError> {
        let sealed = len + self.overhead();
        if len < HEADER_LEN || sealed > buf.len() || sealed > usize::from(u16::MAX) {
            return Err(WireError::BufferTooSmall);
        }
        buf[field::LENGTH].copy_from_slice(&(sealed as u16).to_be_bytes());
        let Some(keys) = &self.keys else {
            buf[field::FLAGS] &= !FLAG_KEYED;
            let sum = checksum(&buf[..sealed]);
            buf[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
            return Ok(sealed);
        };
        buf[field::FLAGS] |= FLAG_KEYED;
        buf[field::CHECKSUM].fill(0);
        let (counter, prefix) = if windowed(buf[field::KIND]) {
            self.counter = self.counter.wrapping_add(1);
            (self.counter, self.prefix)
        } else {
            self.data_counter = self.data_counter.wrapping_add(1);
            (self.data_counter, self.prefix | 1)
        };
        let key = &keys.seal_with;
        buf[len..len + 4].copy_from_slice(&key.epoch.to_be_bytes());
        buf[len + 4..len + 12].copy_from_slice(&counter.to_be_bytes());
        buf[len + 12..len + 20].copy_from_slice(&prefix.to_be_bytes());
        let tag = key.tag(&buf[..sealed - TAG_LEN]);
        buf[sealed - TAG_LEN..sealed].copy_from_slice(&tag);
        Ok(sealed)
    }

    /// Checks a whole datagram (magic, version, kind, length; then the checksum, or keyed the
    /// tag and, for control kinds, the replay window) and returns its header and body.
    /// Nothing of the body is looked at before this succeeds.
    pub fn open<'a>(&mut self, datagram: &'a [u8]) -> Result<(Header, &'a [u8]), WireError> {
        let header = Header::peek(datagram)?;
        if usize::from(u16_at(datagram, field::LENGTH.start)) != datagram.len() {
            return Err(WireError::BadLength);
        }
        let keyed = header.flags & FLAG_KEYED != 0;
        let Some(keys) = &self.keys else {
            // A keyed datagram (flag set, no checksum) is another cluster's or a keyed peer's;
            // a flag bit flipped on the way still fails the checksum as corruption.
            if keyed && u32_at(datagram, field::CHECKSUM.start) == 0 {
                return Err(WireError::Unauthenticated);
            }
            if u32_at(datagram, field::CHECKSUM.start) != checksum(datagram) {
                return Err(WireError::BadChecksum);
            }
            return Ok((header, &datagram[HEADER_LEN..]));
        };
        if !keyed || datagram.len() < HEADER_LEN + TRAILER_LEN {
            return Err(WireError::Unauthenticated);
        }
        let at = datagram.len() - TRAILER_LEN;
        let epoch = u32_at(datagram, at);
        let key = keys.key(epoch).ok_or(WireError::Unauthenticated)?;
        let (sealed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        if !key.verifies(sealed, tag) {
            return Err(WireError::Unauthenticated);
        }
        if windowed(datagram[field::KIND]) {
            let counter = u64_at(datagram, at + 4);
            if !self.accept(header.sender, epoch, counter) {
                return Err(WireError::Replayed);
            }
        }
        Ok((header, &datagram[HEADER_LEN..at]))
    }

    fn accept(&mut self, sender: NodeId, epoch: u32, counter: u64) -> bool {
        self.uses += 1;
        let uses = self.uses;
        if let Some((w, used)) = self.windows.get_mut(&(sender, epoch)) {
            *used = uses;
            return w.accept(counter);
        }
        if self.windows.len() >= REPLAY_TABLE_MAX {
            // Only key holders reach here; forgetting the stalest window lets one replayed
            // datagram of its sender through, once.
            let stalest = self
                .windows
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| *k);
            if let Some(k) = stalest {
                self.windows.remove(&k);
            }
        }
        let mut w = ReplayWindow::default();
        w.accept(counter);
        self.windows.insert((sender, epoch), (w, uses));
        true
    }
}

/// Whether datagrams of this kind byte carry a counter the replay window checks.
fn windowed(kind: u8) -> bool {
    kind != PacketKind::Data as u8
        && kind != PacketKind::Fragment as u8
        && kind != PacketKind::LecRepair as u8
}

/// The MAC's nonce: the 12 bytes before the tag (`sealed` ends there).
fn nonce(sealed: &[u8]) -> Nonce {
    let n: [u8; NONCE_LEN] = sealed[sealed.len() - NONCE_LEN..]
        .try_into()
        .expect("12 bytes");
    // Not unique in general (a repeat is harmless with GCM-SIV, see `Seal`).
    Nonce::assume_unique_for_key(n)
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

    fn ring(seed: u8) -> KeyRing {
        KeyRing::generate([seed; 32])
    }

    fn datagram(kind: PacketKind, sender: u64, body: &[u8], seal: &mut Seal) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + body.len() + seal.overhead()];
        Header::new(kind, ClusterId(3), NodeId(sender))
            .write(&mut buf)
            .unwrap();
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        let len = seal.seal(&mut buf, HEADER_LEN + body.len()).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn a_sealed_datagram_opens_to_its_header_and_body() {
        let d = datagram(PacketKind::Token, 9, b"body", &mut Seal::new());
        let (h, body) = Seal::new().open(&d).unwrap();
        assert_eq!(h, Header::new(PacketKind::Token, ClusterId(3), NodeId(9)));
        assert_eq!(body, b"body");
    }

    #[test]
    fn an_unsealed_or_altered_datagram_does_not_open() {
        let mut d = datagram(PacketKind::Data, 9, b"xyz", &mut Seal::new());
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
        let mut buf = [0u8; HEADER_LEN + TRAILER_LEN - 1];
        assert_eq!(
            Seal::keyed(ring(1), 0, 0).seal(&mut buf, HEADER_LEN),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn a_keyed_datagram_opens_only_with_the_key_and_unaltered() {
        let mut tx = Seal::keyed(ring(1), 0, 0);
        let d = datagram(PacketKind::Data, 9, b"payload", &mut tx);
        assert_eq!(d.len(), HEADER_LEN + 7 + TRAILER_LEN);
        let (h, body) = Seal::keyed(ring(1), 0, 0).open(&d).unwrap();
        assert_eq!(
            (h.kind, h.sender, body),
            (PacketKind::Data, NodeId(9), &b"payload"[..])
        );
        assert_eq!(
            Seal::keyed(ring(2), 0, 0).open(&d),
            Err(WireError::Unauthenticated)
        );
        assert_eq!(Seal::new().open(&d), Err(WireError::Unauthenticated));
        for i in 0..d.len() {
            if (field::LENGTH).contains(&i) {
                continue;
            }
            let mut bad = d.clone();
            bad[i] ^= 0x10;
            assert!(
                Seal::keyed(ring(1), 0, 0).open(&bad).is_err(),
                "a flipped byte {i} still opened"
            );
        }
    }

    #[test]
    fn every_sealed_datagram_gets_its_own_nonce_and_data_counts_apart_from_control() {
        let mut tx = Seal::keyed(ring(1), 100, 0xabc0);
        let nonce = |d: &[u8]| d[d.len() - TAG_LEN - NONCE_LEN..d.len() - TAG_LEN].to_vec();
        let t1 = datagram(PacketKind::Token, 9, b"t", &mut tx);
        let d1 = datagram(PacketKind::Data, 9, b"d", &mut tx);
        let t2 = datagram(PacketKind::Token, 9, b"t", &mut tx);
        let d2 = datagram(PacketKind::Data, 9, b"d", &mut tx);
        let all = [nonce(&t1), nonce(&d1), nonce(&t2), nonce(&d2)];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b, "a nonce repeated within one sealer");
            }
        }
        // Control counters stay consecutive for the replay window whatever data is between.
        let counter = |d: &[u8]| u64_at(d, d.len() - TRAILER_LEN + 4);
        assert_eq!((counter(&t1), counter(&t2)), (101, 102));
        // Another sealer with another prefix: other nonces for the same counters.
        let t1b = datagram(
            PacketKind::Token,
            9,
            b"t",
            &mut Seal::keyed(ring(1), 100, 0xdef0),
        );
        assert_ne!(nonce(&t1), nonce(&t1b));
    }

    #[test]
    fn a_repeated_nonce_lets_nothing_else_open() {
        // Two sealers that drew the same prefix and counter (a restart, say): each datagram
        // opens, and no mix of their bodies and tags does.
        let a = datagram(
            PacketKind::Token,
            9,
            b"first",
            &mut Seal::keyed(ring(1), 5, 8),
        );
        let b = datagram(
            PacketKind::Token,
            9,
            b"other",
            &mut Seal::keyed(ring(1), 5, 8),
        );
        let nonce = |d: &[u8]| d[d.len() - TAG_LEN - NONCE_LEN..d.len() - TAG_LEN].to_vec();
        assert_eq!(nonce(&a), nonce(&b));
        assert_ne!(a, b);
        assert!(Seal::keyed(ring(1), 0, 0).open(&a).is_ok());
        assert!(Seal::keyed(ring(1), 0, 0).open(&b).is_ok());
        let mut mixed = a.clone();
        mixed[..a.len() - TAG_LEN].copy_from_slice(&b[..b.len() - TAG_LEN]);
        assert_eq!(
            Seal::keyed(ring(1), 0, 0).open(&mixed),
            Err(WireError::Unauthenticated)
        );
        // The forgery a repeated nonce hands an outsider under a MAC linear in its input
        // (GMAC, plain AES-GCM: the tag is GHASH_H(input) ^ E_K(nonce)): with three
        // datagrams of one length under one nonce, their XOR (header, trailer and tag
        // included) carries a valid tag for a body none of them had. GCM-SIV encrypts the
        // hash, so it must not open.
        let c = datagram(
            PacketKind::Token,
            9,
            b"third",
            &mut Seal::keyed(ring(1), 5, 8),
        );
        assert_eq!(nonce(&a), nonce(&c));
        let forged: Vec<u8> = a
            .iter()
            .zip(&b)
            .zip(&c)
            .map(|((x, y), z)| x ^ y ^ z)
            .collect();
        assert_eq!(
            forged[..HEADER_LEN],
            a[..HEADER_LEN],
            "a well-formed header"
        );
        assert!(![&a, &b, &c].contains(&&forged));
        assert_eq!(
            Seal::keyed(ring(1), 0, 0).open(&forged),
            Err(WireError::Unauthenticated),
            "three sealed datagrams under one nonce let an outsider forge a fourth"
        );
    }

    #[test]
    fn a_flipped_flag_bit_at_a_keyless_node_is_corruption_not_a_key() {
        let mut d = datagram(PacketKind::Token, 9, b"body", &mut Seal::new());
        d[field::FLAGS] ^= FLAG_KEYED;
        assert_eq!(Seal::new().open(&d), Err(WireError::BadChecksum));
    }

    #[test]
    fn a_keyless_datagram_does_not_open_with_a_key() {
        let d = datagram(PacketKind::Token, 9, b"body", &mut Seal::new());
        assert_eq!(
            Seal::keyed(ring(1), 0, 0).open(&d),
            Err(WireError::Unauthenticated)
        );
    }

    #[test]
    fn a_replayed_control_datagram_is_refused_and_data_is_not_windowed() {
        let mut tx = Seal::keyed(ring(1), 100, 7);
        let mut rx = Seal::keyed(ring(1), 0, 0);
        let token = datagram(PacketKind::Token, 9, b"t", &mut tx);
        assert!(rx.open(&token).is_ok());
        assert_eq!(rx.open(&token), Err(WireError::Replayed));
        let data = datagram(PacketKind::Data, 9, b"d", &mut tx);
        assert!(rx.open(&data).is_ok());
        assert!(rx.open(&data).is_ok(), "data dedups by sequence, not here");
        // Another sender's counters are its own.
        let other = datagram(
            PacketKind::Token,
            10,
            b"t",
            &mut Seal::keyed(ring(1), 100, 7),
        );
        assert!(rx.open(&other).is_ok());
        assert_eq!(rx.replay_windows(), 2);
    }

    #[test]
    fn the_window_takes_reordered_counters_once_and_refuses_older_than_itself() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1000));
        assert!(w.accept(1002));
        assert!(w.accept(1001), "reordered within the window");
        assert!(!w.accept(1001));
        assert!(!w.accept(1002));
        // Just inside and just outside the window behind the highest.
        assert!(w.accept(1002 - (REPLAY_WINDOW - 1)));
        assert!(!w.accept(1002 - REPLAY_WINDOW));
        // A jump beyond the window forgets everything before it.
        assert!(w.accept(1002 + 10 * REPLAY_WINDOW));
        assert!(!w.accept(1002));
        assert!(w.accept(1002 + 10 * REPLAY_WINDOW - 1));
    }

    #[test]
    fn the_window_shifts_bits_across_word_boundaries() {
        for by in [1u64, 2, 63, 64, 65, 100, 127, 128, 129, 200, 252] {
            let mut w = ReplayWindow::default();
            assert!(w.accept(0));
            assert!(w.accept(3));
            assert!(w.accept(3 + by));
            assert!(!w.accept(3), "3 stays seen after a shift by {by}");
            assert!(!w.accept(0), "0 stays seen after a shift by {by}");
            assert!(w.accept(1), "1 was never seen (shift by {by})");
            assert!(!w.accept(1));
            if by > 1 {
                assert!(w.accept(2 + by), "just below the top (shift by {by})");
            }
        }
    }

    #[test]
    fn the_window_works_across_the_counter_wrap() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(u64::MAX - 1));
        assert!(w.accept(u64::MAX));
        assert!(w.accept(0), "0 follows u64::MAX");
        assert!(w.accept(2));
        assert!(!w.accept(u64::MAX), "seen before the wrap");
        assert!(w.accept(1));
        // Behind the highest (2) by exactly the window: out; by one less: in.
        assert!(
            !w.accept(u64::MAX - REPLAY_WINDOW + 3),
            "older than the window"
        );
        assert!(w.accept(u64::MAX - REPLAY_WINDOW + 4), "inside, never seen");
        // Half the counter space ahead is behind: refused, the window unmoved.
        assert!(!w.accept(2u64.wrapping_add(1 << 63)));
        assert!(!w.accept(2));
    }

    #[test]
    fn the_sealing_counter_wraps_and_keeps_opening() {
        let mut tx = Seal::keyed(ring(1), u64::MAX - 2, 7);
        let mut rx = Seal::keyed(ring(1), 0, 0);
        for i in 0..6 {
            let d = datagram(PacketKind::SenderAck, 9, &[i], &mut tx);
            assert!(rx.open(&d).is_ok(), "datagram {i} across the wrap");
        }
    }

    #[test]
    fn the_replay_table_is_bounded_and_forgets_the_stalest() {
        let mut rx = Seal::keyed(ring(1), 0, 0);
        let mut tx = Seal::keyed(ring(1), 0, 0);
        for s in 0..REPLAY_TABLE_MAX as u64 + 10 {
            let d = datagram(PacketKind::Gossip, s, b"g", &mut tx);
            assert!(rx.open(&d).is_ok());
        }
        assert_eq!(rx.replay_windows(), REPLAY_TABLE_MAX);
    }

    #[test]
    fn two_key_epochs_open_at_once_during_a_rotation() {
        let old = ring(1);
        let staged = old.add_next([2; 32]);
        assert_eq!(staged.also.as_ref().unwrap().epoch, 2);
        let promoted = staged.promote();
        assert_eq!(promoted.seal_with.epoch, 2);
        assert_eq!(
            promoted.cluster, old.cluster,
            "rotation keeps the cluster id"
        );
        let retired = promoted.retire();
        let from_old = datagram(
            PacketKind::Token,
            9,
            b"a",
            &mut Seal::keyed(old.clone(), 0, 7),
        );
        let from_new = datagram(
            PacketKind::Token,
            8,
            b"b",
            &mut Seal::keyed(promoted.clone(), 0, 7),
        );
        let mut rx = Seal::keyed(staged.clone(), 0, 7);
        assert!(rx.open(&from_old).is_ok());
        assert!(rx.open(&from_new).is_ok());
        let mut rx = Seal::keyed(retired, 0, 7);
        assert_eq!(rx.open(&from_old), Err(WireError::Unauthenticated));
        assert!(rx.open(&from_new).is_ok());
        // The old ring does not know epoch 2.
        assert!(Seal::keyed(old, 0, 7).open(&from_new).is_err());
    }

    #[test]
    fn a_key_file_reads_back_what_was_written() {
        let r = ring(7).add_next([8; 32]);
        let text = r.to_file();
        assert_eq!(KeyRing::parse(&text), Ok(r.clone()));
        assert!(!format!("{r:?}").contains("0707"), "Debug prints no secret");
        let one = "key 4 = ".to_string() + &"ab".repeat(32);
        let parsed = KeyRing::parse(&one).unwrap();
        assert_eq!(parsed.cluster, parsed.seal_with.derive_cluster());
        assert_eq!(KeyRing::parse(""), Err(KeyFileError::KeyCount(0)));
        assert_eq!(KeyRing::parse("key 1 = 12"), Err(KeyFileError::BadLine(1)));
        assert_eq!(
            KeyRing::parse(&format!("{one}\n{one}")),
            Err(KeyFileError::DuplicateEpoch(4))
        );
        assert_eq!(
            KeyRing::parse(&format!("{one}\n{one}\n{one}")),
            Err(KeyFileError::KeyCount(3))
        );
    }

    #[test]
    fn distinct_keys_derive_distinct_cluster_ids() {
        assert_ne!(ring(1).cluster, ring(2).cluster);
        assert_eq!(ring(1).cluster, ring(1).cluster);
    }
}
