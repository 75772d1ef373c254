//! Node identity and the discovery bootstrap: "anyone out there?".
//!
//! Each node multicasts an [`Announce`] on the well-known control group every
//! `announce_interval` (jittered): its id, unicast address, incarnation and subscribed topics
//! (split into chunks when they do not fit one datagram). Receivers keep a bounded table of
//! peers and expire those they stop hearing from after `peer_timeout`; a graceful leave is an
//! announcement with the leaving flag.
//!
//! This is the bootstrap the gossip plane (`qs-gossip`) builds on, and it keeps working beside
//! it. It does not do failure detection beyond silence (no suspicion, no indirect probes) and
//! sends no unicast.
//!
//! Sans-IO: the owner passes `now` into every call, pulls announcements out with
//! [`Discovery::poll_transmit`], calls [`Discovery::handle_timeout`] at
//! [`Discovery::poll_timeout`], and drains [`Discovery::poll_event`].
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
    /// A peer not heard from for this long is declared down.
    pub peer_timeout: Duration,
    /// Announcements sent in quick succession after a subscription change, so peers learn it
    /// without waiting a whole interval.
    pub quick_announces: u32,
    /// Spacing of those quick announcements.
    pub quick_interval: Duration,
    /// Most peers tracked; announcements from further nodes are counted and dropped.
    pub max_peers: usize,
    /// Most topics accepted from one peer.
    pub max_topics_per_peer: usize,
    /// Datagram budget for one announcement chunk.
    pub max_datagram: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            announce_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            quick_announces: 3,
            quick_interval: Duration::from_millis(30),
            max_peers: 4096,
            max_topics_per_peer: 65_536,
            max_datagram: 1472,
        }
    }
}

/// What discovery knows of another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node.
    pub id: NodeId,
    /// Its unicast address.
    pub unicast: SocketAddrV4,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its subscriptions (complete: all chunks assembled and checked).
    pub signature: Signature,
    /// Version of `signature`.
    pub topics_version: u32,
    /// Last time anything was heard from it.
    pub last_heard: Instant,
}

/// A change in the set of known peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A node was discovered (its whole signature is known).
    PeerUp(NodeId),
    /// A known node changed its subscriptions or address.
    PeerChanged(NodeId),
    /// A node left gracefully or went silent.
    PeerDown {
        /// The node.
        id: NodeId,
        /// Whether it said goodbye (else it timed out).
        left: bool,
    },
}

/// Announcements dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiscoveryStats {
    /// Announcements sent (chunks).
    pub announces_sent: u64,
    /// Announcements received and accepted.
    pub announces_received: u64,
    /// From an older incarnation or topics version than known.
    pub stale: u64,
    /// The peer table was full.
    pub table_full: u64,
    /// Too many topics, inconsistent chunks or a digest mismatch.
    pub invalid: u64,
    /// Peers that timed out.
    pub timeouts: u64,
}

#[derive(Debug, Clone)]
struct Assembly {
    incarnation: u64,
    version: u32,
    digest: RegionId,
    chunks: Vec<Option<Vec<TopicId>>>,
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
    leaving: bool,
    next_announce: Instant,
    /// Chunk of the announcement being sent (`Some` while a multi-chunk announce is going out).
    sending_chunk: Option<u16>,
    quick_left: u32,
    peers: BTreeMap<NodeId, Peer>,
    assembling: BTreeMap<NodeId, Assembly>,
    events: VecDeque<DiscoveryEvent>,
    prng: Prng,
    stats: DiscoveryStats,
}

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
            leaving: false,
            next_announce: now,
            sending_chunk: None,
            quick_left: 0,
            peers: BTreeMap::new(),
            assembling: BTreeMap::new(),
            events: VecDeque::new(),
            prng,
            stats: DiscoveryStats::default(),
        }
    }

    /// Changes this node's announced subscriptions; peers hear of it at once.
    pub fn set_signature(&mut self, now: Instant, signature: Signature) {
        if signature == self.signature {
            return;
        }
        self.signature = signature;
        self.topics_version = self.topics_version.wrapping_add(1);
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

    /// Known peers, in id order.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// A peer by id.
    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// Counters.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats
    }

    /// The next change in the peer set.
    pub fn poll_event(&mut self) -> Option<DiscoveryEvent> {
        self.events.pop_front()
    }

    /// Handles an announcement `sender` sent (the header was already checked).
    pub fn handle_announce(&mut self, now: Instant, sender: NodeId, a: Announce) {
        if sender == self.id {
            return;
        }
        if let Some(p) = self.peers.get_mut(&sender) {
            if a.incarnation < p.incarnation {
                self.stats.stale += 1;
                return;
            }
            p.last_heard = now;
        } else if self.peers.len() >= self.config.max_peers {
            self.stats.table_full += 1;
            return;
        }
        self.stats.announces_received += 1;
        if a.leaving {
            self.assembling.remove(&sender);
            if self.peers.remove(&sender).is_some() {
                self.events.push_back(DiscoveryEvent::PeerDown {
                    id: sender,
                    left: true,
                });
            }
            return;
        }
        if let Some(p) = self.peers.get_mut(&sender) {
            let same = (p.incarnation, p.topics_version) == (a.incarnation, a.topics_version);
            if same {
                if p.unicast != a.unicast {
                    p.unicast = a.unicast;
                    self.events.push_back(DiscoveryEvent::PeerChanged(sender));
                }
                return;
            }
            if a.incarnation == p.incarnation
                && a.topics_version.wrapping_sub(p.topics_version) as i32 <= 0
            {
                self.stats.stale += 1;
                return;
            }
        }
        self.assemble(now, sender, a);
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
        let fresh = |x: &Assembly| {
            (x.incarnation, x.version, x.digest, x.chunks.len())
                == (
                    a.incarnation,
                    a.topics_version,
                    a.digest,
                    usize::from(a.chunk_count),
                )
        };
        let entry = self.assembling.entry(sender).or_insert_with(|| Assembly {
            incarnation: a.incarnation,
            version: a.topics_version,
            digest: a.digest,
            chunks: vec![None; usize::from(a.chunk_count)],
        });
        if !fresh(entry) {
            *entry = Assembly {
                incarnation: a.incarnation,
                version: a.topics_version,
                digest: a.digest,
                chunks: vec![None; usize::from(a.chunk_count)],
            };
        }
        entry.chunks[usize::from(a.chunk)] = Some(a.topics);
        if entry.chunks.iter().any(Option::is_none) {
            return;
        }
        let done = self.assembling.remove(&sender).expect("present");
        let topics: Vec<TopicId> = done.chunks.into_iter().flatten().flatten().collect();
        let signature = Signature::new(topics.iter().copied());
        if signature.len() != topics.len()
            || signature.len() > self.config.max_topics_per_peer
            || RegionId(signature.digest()) != done.digest
        {
            self.stats.invalid += 1;
            return;
        }
        let peer = Peer {
            id: sender,
            unicast: a.unicast,
            incarnation: done.incarnation,
            signature,
            topics_version: done.version,
            last_heard: now,
        };
        let event = match self.peers.insert(sender, peer) {
            Some(_) => DiscoveryEvent::PeerChanged(sender),
            None => DiscoveryEvent::PeerUp(sender),
        };
        self.events.push_back(event);
    }

    /// Expires silent peers and schedules announcements.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.config.peer_timeout;
        let expired: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.last_heard + timeout <= now)
            .map(|p| p.id)
            .collect();
        for id in expired {
            self.peers.remove(&id);
            self.assembling.remove(&id);
            self.stats.timeouts += 1;
            self.events
                .push_back(DiscoveryEvent::PeerDown { id, left: false });
        }
    }

    /// The next deadline: an announcement due or a peer expiring.
    pub fn poll_timeout(&self) -> Instant {
        let expiry = self
            .peers
            .values()
            .map(|p| p.last_heard + self.config.peer_timeout)
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
        n
    }

    #[test]
    fn a_large_signature_travels_in_chunks_and_is_assembled() {
        let t0 = Instant::ZERO;
        let (mut a, mut b) = (node(1, t0), node(2, t0));
        let sig = Signature::new((0..100).map(TopicId));
        a.set_signature(t0, sig.clone());
        let chunks = exchange(&mut a, &mut b, t0);
        assert!(chunks > 1, "{chunks} chunk(s)");
        assert_eq!(b.poll_event(), Some(DiscoveryEvent::PeerUp(NodeId(1))));
        assert_eq!(b.peer(NodeId(1)).unwrap().signature, sig);
    }

    #[test]
    fn silence_expires_a_peer_and_leaving_removes_it_at_once() {
        let t0 = Instant::ZERO;
        let (mut a, mut b, mut c) = (node(1, t0), node(2, t0), node(3, t0));
        exchange(&mut a, &mut c, t0);
        exchange(&mut b, &mut c, t0);
        assert_eq!(c.peers().count(), 2);
        c.poll_event();
        c.poll_event();
        // b keeps announcing, a goes silent.
        let mut now = t0;
        while now < t0 + Duration::from_secs(4) {
            now = now + Duration::from_millis(100);
            exchange(&mut b, &mut c, now);
            c.handle_timeout(now);
        }
        assert_eq!(
            c.poll_event(),
            Some(DiscoveryEvent::PeerDown {
                id: NodeId(1),
                left: false
            })
        );
        b.leave(now);
        exchange(&mut b, &mut c, now);
        assert_eq!(
            c.poll_event(),
            Some(DiscoveryEvent::PeerDown {
                id: NodeId(2),
                left: true
            })
        );
        assert_eq!(c.peers().count(), 0);
    }

    #[test]
    fn a_subscription_change_is_announced_at_once_and_seen_as_changed() {
        let t0 = Instant::ZERO;
        let (mut a, mut b) = (node(1, t0), node(2, t0));
        exchange(&mut a, &mut b, t0);
        assert_eq!(b.poll_event(), Some(DiscoveryEvent::PeerUp(NodeId(1))));
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(exchange(&mut a, &mut b, t1), 0, "nothing due yet");
        a.set_signature(t1, Signature::new([TopicId(5)]));
        assert_eq!(exchange(&mut a, &mut b, t1), 1);
        assert_eq!(b.poll_event(), Some(DiscoveryEvent::PeerChanged(NodeId(1))));
        assert!(b.peer(NodeId(1)).unwrap().signature.contains(TopicId(5)));
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
            topics: vec![TopicId(1)],
        };
        b.handle_announce(t0, NodeId(1), bad);
        assert_eq!(b.peers().count(), 0);
        assert_eq!(b.stats().invalid, 1);
    }
}
