//! The discovery bootstrap: "anyone out there?".
//!
//! Each node multicasts an [`Announce`] on the well-known control group every
//! `announce_interval` (jittered): its id, unicast address, incarnation, and its subscriptions
//! with their version (split into chunks when they do not fit one datagram; a graceful leave
//! carries the leaving flag). Receivers assemble the chunks, check them against the digest and
//! report each new or newer announcement as an [`Announced`].
//!
//! That is all it does. It is a *seed*, not a source of truth: it keeps no liveness (the
//! gossip plane's failure detector decides who is alive), no expiry by silence, and no
//! subscription table (announced subscriptions are handed to the gossip plane, which owns
//! them). What it remembers is bounded: which nodes announced what (to report only changes;
//! the owner calls [`Discovery::forget`] when gossip declares a node gone) and partial
//! chunked announcements, which expire. It sends no unicast.
//!
//! Sans-IO: the owner passes `now` into every call, pulls announcements out with
//! [`Discovery::poll_transmit`] (unsealed: the owner seals every datagram), calls
//! [`Discovery::handle_timeout`] at [`Discovery::poll_timeout`], and drains
//! [`Discovery::poll_announced`].
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddrV4;
use std::time::Duration;

use qs_regions::Signature;
use qs_transport::wire::{Announce, Header, PacketKind, HEADER_LEN};
use qs_transport::{ClusterId, Instant, NodeId, Prng, RegionId, TopicId};

/// Discovery settings.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Mean time between announcements (each is jittered by ±25%).
    pub announce_interval: Duration,
    /// Announcements sent in quick succession after a subscription change, so peers learn it
    /// without waiting a whole interval.
    pub quick_announces: u32,
    /// Spacing of those quick announcements.
    pub quick_interval: Duration,
    /// Most announcers remembered; announcements from further nodes are counted and dropped.
    pub max_peers: usize,
    /// Most topics accepted from one announcer.
    pub max_topics_per_peer: usize,
    /// Most chunked announcements being assembled at once.
    pub max_assemblies: usize,
    /// Most topics held in partial assemblies altogether (a flood of forged first chunks
    /// cannot grow memory past it).
    pub max_assembly_topics: usize,
    /// A partial assembly not completed within this is dropped.
    pub assembly_timeout: Duration,
    /// Datagram budget for one announcement chunk.
    pub max_datagram: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            announce_interval: Duration::from_millis(500),
            quick_announces: 3,
            quick_interval: Duration::from_millis(30),
            max_peers: 4096,
            max_topics_per_peer: 65_536,
            max_assemblies: 64,
            max_assembly_topics: 1 << 18,
            assembly_timeout: Duration::from_secs(2),
            max_datagram: 1472,
        }
    }
}

/// A complete announcement, new or newer than what this node had heard from its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The announcing node.
    pub id: NodeId,
    /// Its unicast address.
    pub unicast: SocketAddrV4,
    /// Its incarnation (increases across restarts that keep the id).
    pub incarnation: u64,
    /// The version of its subscriptions.
    pub version: u32,
    /// Its subscriptions (all chunks assembled and checked against the digest); `None` when
    /// only its address or leaving flag changed since the version already reported.
    pub signature: Option<Signature>,
    /// The region it is departing at this version (with `signature`; see the subscription
    /// handover in the core).
    pub departing: Option<RegionId>,
    /// It is leaving gracefully.
    pub leaving: bool,
}

/// Announcements received and dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiscoveryStats {
    /// Announcements sent (chunks).
    pub announces_sent: u64,
    /// Announcements received and accepted.
    pub announces_received: u64,
    /// From an older incarnation or topics version than known.
    pub stale: u64,
    /// The announcer table was full.
    pub table_full: u64,
    /// Too many topics, inconsistent chunks or a digest mismatch.
    pub invalid: u64,
    /// Partial assemblies dropped: expired, or no room for another.
    pub assemblies_dropped: u64,
}

#[derive(Debug, Clone)]
struct Assembly {
    incarnation: u64,
    version: u32,
    digest: RegionId,
    departing: RegionId,
    started: Instant,
    chunks: Vec<Option<Vec<TopicId>>>,
}

impl Assembly {
    fn topics(&self) -> usize {
        self.chunks.iter().flatten().map(Vec::len).sum()
    }
}

/// What this node last heard a peer announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    incarnation: u64,
    version: u32,
    unicast: SocketAddrV4,
    leaving: bool,
}

/// The discovery state machine of one node.
#[derive(Debug)]
pub struct Discovery {
    config: DiscoveryConfig,
    id: NodeId,
    cluster: ClusterId,
    incarnation: u64,
    unicast: SocketAddrV4,
    signature: Signature,
    topics_version: u32,
    /// The region this node is departing (`RegionId(0)`: none).
    departing: RegionId,
    leaving: bool,
    next_announce: Instant,
    /// Chunk of the announcement being sent (`Some` while a multi-chunk announce is going out).
    sending_chunk: Option<u16>,
    quick_left: u32,
    heard: BTreeMap<NodeId, Heard>,
    assembling: BTreeMap<NodeId, Assembly>,
    assembly_topics: usize,
    announced: VecDeque<Announced>,
    prng: Prng,
    stats: DiscoveryStats,
}

/// Most complete announcements waiting for the owner.
const ANNOUNCED_MAX: usize = 4096;

impl Discovery {
    /// A node that will announce itself from `now` on.
    pub fn new(
        config: DiscoveryConfig,
        id: NodeId,
        cluster: ClusterId,
        incarnation: u64,
        unicast: SocketAddrV4,
        prng: Prng,
        now: Instant,
    ) -> Discovery {
        Discovery {
            config,
            id,
            cluster,
            incarnation,
            unicast,
            signature: Signature::default(),
            topics_version: 0,
            departing: RegionId(0),
            leaving: false,
            next_announce: now,
            sending_chunk: None,
            quick_left: 0,
            heard: BTreeMap::new(),
            assembling: BTreeMap::new(),
            assembly_topics: 0,
            announced: VecDeque::new(),
            prng,
            stats: DiscoveryStats::default(),
        }
    }

    /// Changes this node's announced subscriptions to `signature` at `version` (the owner's
    /// version of its subscription record), departing `departing` (see [`Announced`]);
    /// peers hear of it at once.
    pub fn set_signature(
        &mut self,
        now: Instant,
        signature: Signature,
        version: u32,
        departing: Option<RegionId>,
    ) {
        let departing = departing.unwrap_or(RegionId(0));
        if signature == self.signature
            && version == self.topics_version
            && departing == self.departing
        {
            return;
        }
        self.signature = signature;
        self.topics_version = version;
        self.departing = departing;
        self.quick_left = self.config.quick_announces;
        self.next_announce = now;
        self.sending_chunk = None;
    }

    /// Starts a graceful leave: the next announcements carry the leaving flag.
    pub fn leave(&mut self, now: Instant) {
        self.leaving = true;
        self.quick_left = self.config.quick_announces;
        self.next_announce = now;
        self.sending_chunk = None;
    }

    /// Nodes whose announcements arrived (and were not forgotten since), with their unicast
    /// address, in id order.
    pub fn announcers(&self) -> impl Iterator<Item = (NodeId, SocketAddrV4)> + '_ {
        self.heard
            .iter()
            .filter(|(_, h)| !h.leaving)
            .map(|(id, h)| (*id, h.unicast))
    }

    /// Whether `id`'s announcements arrived (and it was not forgotten since).
    pub fn heard_from(&self, id: NodeId) -> bool {
        self.heard.get(&id).is_some_and(|h| !h.leaving)
    }

    /// Forgets what `id` announced (gossip declared it gone): its next announcement is new.
    pub fn forget(&mut self, id: NodeId) {
        self.heard.remove(&id);
        if let Some(a) = self.assembling.remove(&id) {
            self.assembly_topics -= a.topics();
        }
    }

    /// Counters.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats
    }

    /// The next complete, new or newer announcement.
    pub fn poll_announced(&mut self) -> Option<Announced> {
        self.announced.pop_front()
    }

    /// Handles an announcement `sender` sent (the datagram was already opened).
    pub fn handle_announce(&mut self, now: Instant, sender: NodeId, a: Announce) {
        if sender == self.id {
            return;
        }
        match self.heard.get(&sender) {
            Some(h) if a.incarnation < h.incarnation => {
                self.stats.stale += 1;
                return;
            }
            Some(h)
                if a.incarnation == h.incarnation
                    && a.topics_version.wrapping_sub(h.version) as i32 <= 0 =>
            {
                self.stats.announces_received += 1;
                if (a.topics_version, a.unicast, a.leaving) != (h.version, h.unicast, h.leaving)
                    && a.topics_version == h.version
                {
                    // Same subscriptions, new address or a goodbye: no chunks to assemble.
                    self.accept_same(sender, &a);
                } else if a.topics_version != h.version {
                    self.stats.stale += 1;
                }
                return;
            }
            Some(_) => {}
            None if self.heard.len() >= self.config.max_peers => {
                self.stats.table_full += 1;
                return;
            }
            None => {}
        }
        self.stats.announces_received += 1;
        self.assemble(now, sender, a);
    }

    /// An announcement repeating a known version with another address or the leaving flag.
    fn accept_same(&mut self, sender: NodeId, a: &Announce) {
        let Some(h) = self.heard.get_mut(&sender) else {
            return;
        };
        h.unicast = a.unicast;
        h.leaving = a.leaving;
        self.push(Announced {
            id: sender,
            unicast: a.unicast,
            incarnation: a.incarnation,
            version: a.topics_version,
            signature: None,
            departing: None,
            leaving: a.leaving,
        });
    }

    fn assemble(&mut self, now: Instant, sender: NodeId, a: Announce) {
        let per_chunk = Announce::topics_per_chunk(self.config.max_datagram).max(1);
        let max_chunks = self.config.max_topics_per_peer.div_ceil(per_chunk).max(1);
        if usize::from(a.chunk_count) > max_chunks
            || a.topics.len() > self.config.max_topics_per_peer
        {
            self.stats.invalid += 1;
            return;
        }
        let matches = |x: &Assembly| {
            (
                x.incarnation,
                x.version,
                x.digest,
                x.departing,
                x.chunks.len(),
            ) == (
                a.incarnation,
                a.topics_version,
                a.digest,
                a.departing,
                usize::from(a.chunk_count),
            )
        };
        if let Some(x) = self.assembling.get(&sender) {
            if !matches(x) {
                let x = self.assembling.remove(&sender).expect("present");
                self.assembly_topics -= x.topics();
            }
        }
        if !self.assembling.contains_key(&sender) {
            if self.assembling.len() >= self.config.max_assemblies {
                self.stats.assemblies_dropped += 1;
                return;
            }
            self.assembling.insert(
                sender,
                Assembly {
                    incarnation: a.incarnation,
                    version: a.topics_version,
                    digest: a.digest,
                    departing: a.departing,
                    started: now,
                    chunks: vec![None; usize::from(a.chunk_count)],
                },
            );
        }
        let chunk = usize::from(a.chunk);
        let entry = self.assembling.get_mut(&sender).expect("present");
        if entry.chunks[chunk].is_none() {
            if self.assembly_topics + a.topics.len() > self.config.max_assembly_topics {
                self.stats.assemblies_dropped += 1;
                return;
            }
            self.assembly_topics += a.topics.len();
            entry.chunks[chunk] = Some(a.topics);
        }
        if entry.chunks.iter().any(Option::is_none) {
            return;
        }
        let done = self.assembling.remove(&sender).expect("present");
        self.assembly_topics -= done.topics();
        let topics: Vec<TopicId> = done.chunks.into_iter().flatten().flatten().collect();
        let signature = Signature::new(topics.iter().copied());
        if signature.len() != topics.len()
            || signature.len() > self.config.max_topics_per_peer
            || RegionId(signature.digest()) != done.digest
        {
            self.stats.invalid += 1;
            return;
        }
        self.heard.insert(
            sender,
            Heard {
                incarnation: done.incarnation,
                version: done.version,
                unicast: a.unicast,
                leaving: a.leaving,
            },
        );
        self.push(Announced {
            id: sender,
            unicast: a.unicast,
            incarnation: done.incarnation,
            version: done.version,
            signature: Some(signature),
            departing: (done.departing != RegionId(0)).then_some(done.departing),
            leaving: a.leaving,
        });
    }

    fn push(&mut self, a: Announced) {
        if self.announced.len() < ANNOUNCED_MAX {
            self.announced.push_back(a);
        }
    }

    /// Expires stale partial assemblies and schedules announcements.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.assembly_timeout;
        let (mut dropped, mut freed) = (0, 0);
        self.assembling.retain(|_, a| {
            let keep = now < a.started + timeout;
            if !keep {
                dropped += 1;
                freed += a.topics();
            }
            keep
        });
        self.stats.assemblies_dropped += dropped;
        self.assembly_topics -= freed;
    }

    /// The next deadline: an announcement due or a partial assembly expiring.
    pub fn poll_timeout(&self) -> Instant {
        let expiry = self
            .assembling
            .values()
            .map(|a| a.started + self.config.assembly_timeout)
            .min();
        expiry.map_or(self.next_announce, |e| e.min(self.next_announce))
    }

    /// Writes the next announcement chunk (header and body, unsealed) into `buf` if one is
    /// due; returns its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if now < self.next_announce {
            return None;
        }
        let per_chunk = Announce::topics_per_chunk(buf.len().min(self.config.max_datagram));
        if per_chunk == 0 {
            return None;
        }
        let topics = self.signature.topics();
        let chunk_count = topics.len().div_ceil(per_chunk).max(1);
        let chunk = self.sending_chunk.unwrap_or(0);
        let start = usize::from(chunk) * per_chunk;
        let slice = &topics[start.min(topics.len())..(start + per_chunk).min(topics.len())];
        let announce = Announce {
            incarnation: self.incarnation,
            unicast: self.unicast,
            leaving: self.leaving,
            topics_version: self.topics_version,
            chunk,
            chunk_count: u16::try_from(chunk_count).unwrap_or(u16::MAX),
            digest: RegionId(self.signature.digest()),
            departing: self.departing,
            topics: slice.to_vec(),
        };
        let header = Header::new(PacketKind::Announce, self.cluster, self.id);
        header.write(buf).ok()?;
        let len = HEADER_LEN + announce.write(&mut buf[HEADER_LEN..]).ok()?;
        self.stats.announces_sent += 1;
        if usize::from(chunk) + 1 < chunk_count {
            self.sending_chunk = Some(chunk + 1);
        } else {
            self.sending_chunk = None;
            self.next_announce = now + self.next_interval();
        }
        Some(len)
    }

    fn next_interval(&mut self) -> Duration {
        if self.quick_left > 0 {
            self.quick_left -= 1;
            return self.config.quick_interval;
        }
        // Uniform in [0.75, 1.25) of the interval, so nodes started together drift apart.
        let base = self.config.announce_interval;
        base * 3 / 4 + base.mul_f64(self.prng.unit() / 2.0)
    }

    /// Panics if the bookkeeping drifted or a bound was exceeded.
    pub fn check_invariants(&self) {
        let topics: usize = self.assembling.values().map(Assembly::topics).sum();
        assert_eq!(topics, self.assembly_topics, "assembly topic count drifted");
        assert!(self.assembly_topics <= self.config.max_assembly_topics);
        assert!(self.assembling.len() <= self.config.max_assemblies);
        assert!(self.heard.len() <= self.config.max_peers);
        assert!(self.announced.len() <= ANNOUNCED_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qs_transport::wire;
    use std::net::Ipv4Addr;

    fn node(id: u64, now: Instant) -> Discovery {
        let config = DiscoveryConfig {
            max_datagram: 200,
            ..DiscoveryConfig::default()
        };
        Discovery::new(
            config,
            NodeId(id),
            ClusterId(1),
            1,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000 + id as u16),
            Prng::new(id),
            now,
        )
    }

    /// Delivers every announcement `from` has due to `to`; returns how many chunks went.
    fn exchange(from: &mut Discovery, to: &mut Discovery, now: Instant) -> usize {
        let mut buf = [0u8; 1500];
        let mut n = 0;
        while let Some(len) = from.poll_transmit(now, &mut buf) {
            let len = wire::Seal::new().seal(&mut buf, len).unwrap();
            let (h, body) = wire::Seal::new().open(&buf[..len]).unwrap();
            to.handle_announce(now, h.sender, Announce::parse(body).unwrap());
            n += 1;
        }
        to.check_invariants();
        n
    }

    #[test]
    fn a_large_signature_travels_in_chunks_and_is_assembled() {
        let t0 = Instant::ZERO;
        let (mut a, mut b) = (node(1, t0), node(2, t0));
        let sig = Signature::new((0..100).map(TopicId));
        a.set_signature(t0, sig.clone(), 1, None);
        let chunks = exchange(&mut a, &mut b, t0);
        assert!(chunks > 1, "{chunks} chunk(s)");
        let got = b.poll_announced().expect("announced");
        assert_eq!(
            (got.id, got.signature, got.version),
            (NodeId(1), Some(sig), 1)
        );
        assert!(b.heard_from(NodeId(1)));
    }

    #[test]
    fn a_repeated_announcement_is_reported_once_and_a_newer_version_again() {
        let t0 = Instant::ZERO;
        let (mut a, mut b) = (node(1, t0), node(2, t0));
        exchange(&mut a, &mut b, t0);
        assert!(b.poll_announced().is_some());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(exchange(&mut a, &mut b, t1), 1);
        assert_eq!(b.poll_announced(), None, "nothing new");
        a.set_signature(t1, Signature::new([TopicId(5)]), 1, None);
        assert_eq!(exchange(&mut a, &mut b, t1), 1);
        let got = b.poll_announced().expect("newer version");
        assert!(got.signature.unwrap().contains(TopicId(5)));
    }

    #[test]
    fn forgetting_a_node_makes_its_next_announcement_new_and_silence_changes_nothing() {
        let t0 = Instant::ZERO;
        let (mut a, mut b) = (node(1, t0), node(2, t0));
        exchange(&mut a, &mut b, t0);
        b.poll_announced();
        b.handle_timeout(t0 + Duration::from_secs(60));
        assert!(b.heard_from(NodeId(1)), "silence is gossip's business");
        b.forget(NodeId(1));
        assert!(!b.heard_from(NodeId(1)));
        exchange(&mut a, &mut b, t0 + Duration::from_secs(61));
        assert!(b.poll_announced().is_some());
    }

    #[test]
    fn a_goodbye_is_reported_with_the_leaving_flag() {
        let t0 = Instant::ZERO;
        let (mut a, mut b) = (node(1, t0), node(2, t0));
        exchange(&mut a, &mut b, t0);
        b.poll_announced();
        a.leave(t0);
        exchange(&mut a, &mut b, t0);
        assert!(b.poll_announced().expect("goodbye").leaving);
        assert_eq!(b.announcers().count(), 0);
    }

    #[test]
    fn a_chunk_with_a_wrong_digest_is_rejected() {
        let t0 = Instant::ZERO;
        let mut b = node(2, t0);
        let bad = Announce {
            incarnation: 1,
            unicast: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            leaving: false,
            topics_version: 1,
            chunk: 0,
            chunk_count: 1,
            digest: RegionId(12345),
            departing: RegionId(0),
            topics: vec![TopicId(1)],
        };
        b.handle_announce(t0, NodeId(1), bad);
        assert_eq!(b.poll_announced(), None);
        assert_eq!(b.stats().invalid, 1);
    }

    #[test]
    fn forged_first_chunks_are_bounded_and_expire() {
        let t0 = Instant::ZERO;
        let mut b = node(2, t0);
        let chunk = |id: u64| Announce {
            incarnation: 1,
            unicast: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            leaving: false,
            topics_version: 1,
            chunk: 0,
            chunk_count: 100,
            digest: RegionId(id),
            departing: RegionId(0),
            topics: (0..20).map(TopicId).collect(),
        };
        for id in 10..1010 {
            b.handle_announce(t0, NodeId(id), chunk(id));
        }
        b.check_invariants();
        assert_eq!(b.assembling.len(), b.config.max_assemblies);
        assert!(b.stats().assemblies_dropped >= 1000 - 64);
        b.handle_timeout(t0 + b.config.assembly_timeout);
        assert!(b.assembling.is_empty(), "partial announcements expire");
        b.check_invariants();
    }
}
