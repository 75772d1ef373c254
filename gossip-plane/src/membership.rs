//! Membership and failure detection (SWIM with Lifeguard), as a gossip object.
//!
//! * **Probing.** Each round the runtime picks a peer; we ping it (a random 32-bit nonce, so
//!   acks cannot be guessed). No ack within the *direct timeout* → the same ping once more
//!   (`direct_retry`: a lost datagram is the likeliest cause, and the retry costs two
//!   datagrams where helpers cost 4k); no ack within another direct timeout → ping-req through
//!   `indirect_probes` other members and a further direct ping; still nothing within the
//!   *indirect timeout* → the target is *suspect*. Both timeouts follow the measured round
//!   trip (RFC 6298 smoothing over direct acks: `srtt + 4·rttvar`, ×3 for the indirect path),
//!   clamped to `[probe_timeout_min, probe_timeout]` and `[indirect_timeout_min,
//!   indirect_timeout]`, then stretched by Lifeguard's `1 + lhm`.
//! * **Lifeguard.** A relay that gets no ack from the target within 80% of the requester's
//!   timeout sends a *nack*: nacks prove the requester's own path works, so a failed probe
//!   raises the local health score (LHM) by the number of *missing* nacks (by 1 when no relay
//!   was asked). A refutation and a detected stall (a wake-up more than a round late) raise
//!   it by one; every direct ack lowers it by one, so it rises and decays gradually. Timeouts
//!   and the round interval stretch by `1 + lhm`; probes that expired while we were stalled
//!   accuse nobody. The suspicion timeout starts at `suspicion_max_mult ×` the minimum
//!   `suspicion_mult × max(1, log10 n) × round` and shrinks with each independent confirmation.
//! * **Incarnations** compare in serial-number arithmetic (RFC 1982): `b` is newer than `a` if
//!   `b - a` (wrapping) is below 2³¹. A refutation is the accused incarnation plus one,
//!   wrapping, so it never saturates: a `Down` at `u32::MAX` is refuted by `alive(0)`.
//!   Precedence at one incarnation: `alive < suspect < down < left`. A record more than
//!   `incarnation_jump_max` ahead of the one held is refused unless its member says it
//!   itself (counted): a forged incarnation cannot push a member's records out of the window
//!   where the order is total.
//! * **Left** is taken at once only from the member itself (its own datagram). A `left`
//!   relayed by anyone else is a claim: we probe the member first and record the leave only
//!   if the probe fails (nobody can declare a live node left). A live node that hears a
//!   `left` about itself refutes it like a suspicion.
//! * **Dissemination.** A change we decided or heard first-hand or as a rumor is piggybacked
//!   on liveness payloads, fewest-sent first, `retransmit_mult × ⌈log10(n+1)⌉` times; bad news
//!   about the destination goes to it first (Lifeguard's buddy system); hearing a rumor one
//!   already knows counts as a send of it, so a saturated rumor dies out, and a rumor still
//!   queued `rumor_life_mult × ⌈log2(n+1)⌉` rounds after it was queued is dropped. Anti-entropy
//!   ([`crate::sync`], range reconciliation from a root sum) runs with the round's partner
//!   every `sync_every` rounds; what it learns is not re-gossiped. A node missing whole
//!   ranges (a joiner) asks several peers at once (`catch_up_fanout` extra exchanges).
//! * **Reaping.** `down` and `left` records carry their age on the wire (a death
//!   certificate that only grows older) and are dropped `reap_after` after the death, on
//!   every node alike; an older certificate is refused. A member first learned of as dead is
//!   kept only as such a tombstone, and [`MembershipEvent::MemberForgotten`] tells the other
//!   objects to drop anything they hold about it (also when a record is reaped). A phantom
//!   (a member that never answers) is suspected, declared down and reaped like any other.
//! * **Bounds.** At most `members_max` records (a full table evicts the oldest tombstone,
//!   else refuses, counted), bounded probe, relay, control and broadcast tables; per-peer
//!   state is dropped when the runtime forgets the peer.
//! * Join: ping the seed addresses every round until some member is known. Leave: broadcast
//!   `left` for a few rounds, then go quiet. Down members are pinged now and then
//!   (`reconnect_every` rounds) so a healed partition merges back.
//!
//! Not done: per-peer round-trip estimates (one estimate for all peers); TCP push-pull.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId, Prng};

use crate::epidemic::{age_ms, born_at, ms, older_than};
use crate::object::{GossipObject, Outbox, Peer};
use crate::sync::{self, fingerprint, listing_answer, Codec, SyncRecord, SyncStats, Syncer, Table};
use crate::wire::{put_addr, Priority, Reader};

/// Section tag of the membership object.
pub const MEMBERSHIP_TAG: u8 = 0;

/// What a node is, as far as the cluster knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Status {
    /// Answering probes.
    Alive = 0,
    /// Missed a probe; will be declared down unless it refutes.
    Suspect = 1,
    /// Declared failed (it may come back with a higher incarnation).
    Down = 2,
    /// Left gracefully.
    Left = 3,
}

impl Status {
    fn from_u8(v: u8) -> Result<Status, WireError> {
        Ok(match v {
            0 => Status::Alive,
            1 => Status::Suspect,
            2 => Status::Down,
            3 => Status::Left,
            _ => return Err(WireError::Malformed),
        })
    }
    /// Alive or suspect: still a member one gossips with.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }
}

/// Whether incarnation `a` is newer than `b` (serial-number arithmetic: the difference,
/// wrapping, is below 2³¹).
pub fn incarnation_newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

/// One member's replicated record, as this node holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its unicast gossip address.
    pub addr: SocketAddr,
    /// Its incarnation (bumped to refute suspicion; compared with [`incarnation_newer`]).
    pub incarnation: u32,
    /// Its status.
    pub status: Status,
    /// Who suspected it (meaningful when suspect).
    pub suspecter: NodeId,
}

impl Member {
    /// Whether this record replaces `other` (same member): a newer incarnation, or the same
    /// with a graver status.
    pub fn supersedes(&self, other: &Member) -> bool {
        supersedes(
            self.incarnation,
            self.status,
            other.incarnation,
            other.status,
        )
    }
}

fn supersedes(inc: u32, status: Status, old_inc: u32, old_status: Status) -> bool {
    incarnation_newer(inc, old_inc) || (inc == old_inc && status > old_status)
}

/// A change in membership, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node became a live member (first heard of, or back after being down).
    MemberUp {
        /// The node.
        id: NodeId,
        /// Its gossip address.
        addr: SocketAddr,
    },
    /// A member is suspected of having failed.
    MemberSuspect {
        /// The node.
        id: NodeId,
        /// The suspected incarnation.
        incarnation: u32,
    },
    /// A suspect refuted the suspicion.
    MemberAlive {
        /// The node.
        id: NodeId,
        /// Its new incarnation.
        incarnation: u32,
    },
    /// A member was declared failed.
    MemberDown {
        /// The node.
        id: NodeId,
    },
    /// A member left gracefully.
    MemberLeft {
        /// The node.
        id: NodeId,
    },
    /// Drop anything held about this node: its record was reaped, or it was first heard of
    /// already dead (it never was a member here).
    MemberForgotten {
        /// The node.
        id: NodeId,
    },
}

/// Membership settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// Addresses to ping until some member is known.
    pub seeds: Vec<SocketAddr>,
    /// Longest wait for a direct ack (the fixed timeout without `rtt_timeouts`).
    pub probe_timeout: Duration,
    /// Shortest wait for a direct ack.
    pub probe_timeout_min: Duration,
    /// Longest wait for an indirect ack after sending ping-reqs.
    pub indirect_timeout: Duration,
    /// Shortest wait for an indirect ack.
    pub indirect_timeout_min: Duration,
    /// Timeouts follow the measured round trip (else they are the fixed maxima).
    pub rtt_timeouts: bool,
    /// Members asked to ping a silent target on our behalf (SWIM's k).
    pub indirect_probes: usize,
    /// α: minimum suspicion timeout = α × max(1, log10 n) × round.
    pub suspicion_mult: f64,
    /// β: with Lifeguard the suspicion timeout starts at β × the minimum.
    pub suspicion_max_mult: f64,
    /// K: confirmations that bring the suspicion timeout down to the minimum.
    pub suspicion_confirmations: u32,
    /// λ: each change is piggybacked λ × ⌈log10(n+1)⌉ times.
    pub retransmit_mult: u32,
    /// Most piggybacked changes per message.
    pub piggyback_max: usize,
    /// Most changes queued for dissemination (the most-sent is dropped first, counted).
    pub broadcast_queue_max: usize,
    /// A change still queued `rumor_life_mult × ⌈log2(n+1)⌉` rounds after it was queued is
    /// dropped (counted): an epidemic has reached everyone long before, and anti-entropy
    /// settles stragglers. Without it a backlog (a cold start queues every join) keeps
    /// every datagram full of stale news for hundreds of rounds. 0: no limit.
    pub rumor_life_mult: u32,
    /// Most records kept (tombstones included).
    pub members_max: usize,
    /// Lifeguard: local health multiplier, nacks, dynamic suspicion, stall detection.
    pub lifeguard: bool,
    /// A probe without an ack pings the target directly once more (waiting the direct
    /// timeout again) before it asks helpers.
    pub direct_retry: bool,
    /// Highest local health score.
    pub lhm_max: u32,
    /// Ping one down member every this many rounds (0 = never).
    pub reconnect_every: u32,
    /// Rounds spent spreading our `left` record after [`Membership::leave`].
    pub leave_rounds: u32,
    /// Down and left records are dropped this long after the death.
    pub reap_after: Duration,
    /// A record this far ahead of the held incarnation is refused unless first-hand.
    pub incarnation_jump_max: u32,
    /// Anti-entropy with the round's partner every this many rounds.
    pub sync_every: u32,
    /// Extra exchanges per round while we lack whole ranges (joining).
    pub catch_up_fanout: usize,
}

impl Default for MembershipConfig {
    fn default() -> MembershipConfig {
        MembershipConfig {
            seeds: Vec::new(),
            probe_timeout: Duration::from_millis(100),
            probe_timeout_min: Duration::from_millis(5),
            indirect_timeout: Duration::from_millis(200),
            indirect_timeout_min: Duration::from_millis(10),
            rtt_timeouts: true,
            indirect_probes: 3,
            suspicion_mult: 8.0,
            suspicion_max_mult: 4.0,
            suspicion_confirmations: 3,
            retransmit_mult: 4,
            piggyback_max: 8,
            broadcast_queue_max: 1024,
            rumor_life_mult: 3,
            members_max: 65_536,
            lifeguard: true,
            direct_retry: true,
            lhm_max: 8,
            reconnect_every: 5,
            leave_rounds: 3,
            reap_after: Duration::from_secs(30),
            incarnation_jump_max: 1024,
            sync_every: 2,
            catch_up_fanout: 3,
        }
    }
}

/// Counters of the membership object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MembershipStats {
    /// Probes started.
    pub probes: u64,
    /// Probes answered directly or indirectly.
    pub probes_acked: u64,
    /// Probes that ended in a suspicion we raised.
    pub probes_failed: u64,
    /// Probes cancelled because we had been stalled (Lifeguard).
    pub probes_cancelled_stall: u64,
    /// Ping-reqs sent.
    pub ping_reqs_sent: u64,
    /// Direct pings sent again before the indirect phase.
    pub direct_retries: u64,
    /// Ping-reqs relayed for others.
    pub ping_reqs_relayed: u64,
    /// Ping-reqs refused (unknown target or address, full relay table).
    pub ping_reqs_refused: u64,
    /// Nacks sent for relayed probes that got no ack in time.
    pub nacks_sent: u64,
    /// Nacks received for our probes.
    pub nacks_received: u64,
    /// Suspicions we raised ourselves.
    pub suspicions_raised: u64,
    /// Times we refuted a suspicion about ourselves.
    pub refutations: u64,
    /// Members we declared down when their suspicion timer expired.
    pub declared_down: u64,
    /// Stalls noticed (Lifeguard).
    pub stalls: u64,
    /// Piggybacked changes sent.
    pub piggybacked: u64,
    /// Changes dropped from the full broadcast queue.
    pub broadcast_overflow: u64,
    /// Changes dropped from the queue for age (see `rumor_life_mult`).
    pub rumors_expired: u64,
    /// Members ignored because the table was full.
    pub members_overflow: u64,
    /// Control messages dropped (per-peer queue, probe or relay table full).
    pub control_overflow: u64,
    /// Events dropped from the full event queue.
    pub events_overflow: u64,
    /// `left` records about others taken as claims to check by a probe.
    pub left_claims: u64,
    /// Of those, refuted by the member answering our probe.
    pub left_claims_refuted: u64,
    /// Records refused for an incarnation implausibly far ahead (or accusations of us).
    pub implausible_incarnations: u64,
    /// Death certificates refused as older than `reap_after`.
    pub stale_deaths: u64,
    /// Down and left records reaped.
    pub reaped: u64,
    /// Members first learned of already dead (kept as tombstones only).
    pub first_seen_dead: u64,
    /// Anti-entropy counters.
    pub sync: SyncStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctrl {
    Ping(u32),
    Ack(u32),
    PingReq {
        nonce: u32,
        target: NodeId,
        addr: SocketAddr,
        timeout_ms: u16,
    },
    Nack(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Direct,
    /// The direct ping was sent again (no helpers asked yet).
    Retry,
    Indirect,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    target: NodeId,
    addr: SocketAddr,
    incarnation: u32,
    started: Instant,
    deadline: Instant,
    phase: Phase,
    expected_nacks: u32,
    nacks: u32,
    /// The probe checks a `left` claim about the target.
    verify_left: bool,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    origin: SocketAddr,
    origin_nonce: u32,
    nack_at: Instant,
    nacked: bool,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Suspicion {
    started: Instant,
    deadline: Instant,
    confirmers: BTreeSet<NodeId>,
    suspecter: NodeId,
}

/// Round-trip estimate (RFC 6298).
#[derive(Debug, Clone, Copy, Default)]
struct Rtt {
    srtt: f64,
    rttvar: f64,
    samples: u64,
}

impl Rtt {
    fn sample(&mut self, r: Duration) {
        let r = r.as_secs_f64();
        if self.samples == 0 {
            self.srtt = r;
            self.rttvar = r / 2.0;
        } else {
            self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - r).abs();
            self.srtt = 0.875 * self.srtt + 0.125 * r;
        }
        self.samples += 1;
    }
    fn rto(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_secs_f64(self.srtt + 4.0 * self.rttvar))
    }
}

const PROBES_MAX: usize = 16;
const RELAYS_MAX: usize = 64;
const CTRL_PEERS_MAX: usize = 1024;
const CTRL_PER_PEER_MAX: usize = 8;
const EVENTS_MAX: usize = 4096;
const SYNC_PEERS_MAX: usize = 256;
const SYNC_WORK_MAX: usize = 128;
const SAMPLE_TRIES: usize = 64;

const ST_MASK: u8 = 0b11;
const V6_FLAG: u8 = 0b100;

/// A member record packed for the table (12 bytes): incarnation, IPv4 address and port
/// (or an index into the IPv6 arena), status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    inc: u32,
    ip: u32,
    port: u16,
    flags: u8,
}

impl Rec {
    fn status(&self) -> Status {
        Status::from_u8(self.flags & ST_MASK).unwrap_or(Status::Down)
    }
    fn with_status(mut self, s: Status) -> Rec {
        self.flags = (self.flags & !ST_MASK) | s as u8;
        self
    }
}

impl SyncRecord for Rec {
    fn fingerprint(&self, id: NodeId) -> u32 {
        fingerprint(
            id,
            &[u64::from(self.inc) << 2 | u64::from(self.flags & ST_MASK)],
        )
    }
}

/// IPv6 addresses, interned (the packed record holds an index).
#[derive(Debug, Default)]
struct V6Arena {
    addrs: Vec<(SocketAddrV6, u32)>,
    index: BTreeMap<SocketAddrV6, u32>,
    free: Vec<u32>,
}

impl V6Arena {
    fn intern(&mut self, a: SocketAddrV6) -> u32 {
        if let Some(&i) = self.index.get(&a) {
            self.addrs[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.addrs[i as usize] = (a, 1);
                i
            }
            None => {
                self.addrs.push((a, 1));
                (self.addrs.len() - 1) as u32
            }
        };
        self.index.insert(a, i);
        i
    }
    fn release(&mut self, i: u32) {
        let Some(e) = self.addrs.get_mut(i as usize) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            self.index.remove(&e.0);
            self.free.push(i);
        }
    }
    fn get(&self, i: u32) -> SocketAddr {
        self.addrs.get(i as usize).map_or(
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            |e| SocketAddr::V6(e.0),
        )
    }
}

/// Encodes member records for the synchroniser (needs the arena, the suspicions and the
/// death ages).
struct MemberCodec<'a> {
    m: &'a Membership,
    now: Instant,
}

impl Codec<Rec> for MemberCodec<'_> {
    fn encoded_len(&self, id: NodeId, r: &Rec) -> usize {
        self.m.record_len(id, r)
    }
    fn encode(&self, id: NodeId, r: &Rec, out: &mut Vec<u8>) {
        self.m.encode_record(self.now, id, r, out);
    }
}

/// A record as it arrives from the network.
#[derive(Debug, Clone, Copy)]
struct Incoming {
    addr: SocketAddr,
    inc: u32,
    status: Status,
    suspecter: NodeId,
    /// For down and left records: how long ago the death happened.
    age_ms: u32,
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The member's own datagram says so.
    FirstHand,
    /// A piggybacked rumor.
    Rumor,
    /// Anti-entropy.
    Sync,
    /// Our own verdict.
    Own,
}

fn decode_member(r: &mut Reader<'_>) -> Result<(NodeId, Incoming), WireError> {
    let id = NodeId(r.u64()?);
    let inc = r.u32()?;
    let status = Status::from_u8(r.u8()?)?;
    let addr = r.addr()?;
    let suspecter = if status == Status::Suspect {
        NodeId(r.u64()?)
    } else {
        NodeId(0)
    };
    let age_ms = if status.is_live() { 0 } else { r.u32()? };
    Ok((
        id,
        Incoming {
            addr,
            inc,
            status,
            suspecter,
            age_ms,
        },
    ))
}

/// The SWIM/Lifeguard membership object. See the module documentation.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    my_addr: SocketAddr,
    config: MembershipConfig,
    round: Duration,
    incarnation: u32,
    table: Table<Rec>,
    v6: V6Arena,
    live: usize,
    suspicions: BTreeMap<NodeId, Suspicion>,
    /// Birth (signed local nanoseconds) of each down or left record's death.
    dead: BTreeMap<NodeId, i64>,
    // Piggyback queue: (times sent, newest first, id) ordered; `queued` maps id -> its key.
    queue: BTreeSet<(u32, u64, NodeId)>,
    queued: BTreeMap<NodeId, (u32, u64)>,
    queue_seq: u64,
    /// (round queued, queue key, id) in queueing order, to expire old changes; entries of
    /// changes since sent out or requeued are skipped when they come up.
    births: VecDeque<(u64, u64, NodeId)>,
    probes: BTreeMap<u32, Probe>,
    relays: BTreeMap<u32, Relay>,
    ctrl: BTreeMap<SocketAddr, Vec<Ctrl>>,
    rtt: Rtt,
    lhm: u32,
    rounds: u64,
    left_at_round: Option<u64>,
    expected_wakeup: Option<Instant>,
    syncer: Syncer,
    rng: Prng,
    events: VecDeque<MembershipEvent>,
    stats: MembershipStats,
}

impl Membership {
    /// A membership object for node `me` at `my_addr`, gossiping every `round`.
    pub fn new(
        me: NodeId,
        my_addr: SocketAddr,
        round: Duration,
        config: MembershipConfig,
        rng: Prng,
    ) -> Membership {
        let mut m = Membership {
            me,
            my_addr,
            config,
            round,
            incarnation: 0,
            table: Table::default(),
            v6: V6Arena::default(),
            live: 1,
            suspicions: BTreeMap::new(),
            dead: BTreeMap::new(),
            queue: BTreeSet::new(),
            queued: BTreeMap::new(),
            queue_seq: 0,
            births: VecDeque::new(),
            probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            ctrl: BTreeMap::new(),
            rtt: Rtt::default(),
            lhm: 0,
            rounds: 0,
            left_at_round: None,
            expected_wakeup: None,
            syncer: Syncer::new(SYNC_PEERS_MAX, SYNC_WORK_MAX),
            rng,
            events: VecDeque::new(),
            stats: MembershipStats::default(),
        };
        let rec = m.pack(my_addr, 0, Status::Alive);
        m.table.insert(me, rec);
        m
    }

    fn pack(&mut self, addr: SocketAddr, inc: u32, status: Status) -> Rec {
        match addr {
            SocketAddr::V4(a) => Rec {
                inc,
                ip: u32::from(*a.ip()),
                port: a.port(),
                flags: status as u8,
            },
            SocketAddr::V6(a) => Rec {
                inc,
                ip: self.v6.intern(a),
                port: a.port(),
                flags: status as u8 | V6_FLAG,
            },
        }
    }

    fn addr_of(&self, r: &Rec) -> SocketAddr {
        if r.flags & V6_FLAG != 0 {
            self.v6.get(r.ip)
        } else {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(r.ip), r.port))
        }
    }

    fn same_addr(&self, r: &Rec, addr: &SocketAddr) -> bool {
        match addr {
            SocketAddr::V4(a) => {
                r.flags & V6_FLAG == 0 && r.ip == u32::from(*a.ip()) && r.port == a.port()
            }
            SocketAddr::V6(_) => r.flags & V6_FLAG != 0 && self.addr_of(r) == *addr,
        }
    }

    /// Replaces the record of `id` (releasing an interned address it no longer uses).
    fn store(&mut self, id: NodeId, rec: Rec) {
        if let Some(old) = self.table.get(id).copied() {
            if old.flags & V6_FLAG != 0 && !(rec.flags & V6_FLAG != 0 && rec.ip == old.ip) {
                self.v6.release(old.ip);
            }
        }
        self.table.insert(id, rec);
    }

    fn unstore(&mut self, id: NodeId) {
        if let Some(old) = self.table.remove(id) {
            if old.flags & V6_FLAG != 0 {
                self.v6.release(old.ip);
            }
        }
    }

    fn view(&self, id: NodeId, r: &Rec) -> Member {
        Member {
            addr: self.addr_of(r),
            incarnation: r.inc,
            status: r.status(),
            suspecter: if r.status() == Status::Suspect {
                self.suspicions.get(&id).map_or(NodeId(0), |s| s.suspecter)
            } else {
                NodeId(0)
            },
        }
    }

    fn record_len(&self, _id: NodeId, r: &Rec) -> usize {
        let addr = if r.flags & V6_FLAG != 0 { 19 } else { 7 };
        8 + 4
            + 1
            + addr
            + match r.status() {
                Status::Suspect => 8,
                Status::Alive => 0,
                Status::Down | Status::Left => 4,
            }
    }

    fn encode_record(&self, now: Instant, id: NodeId, r: &Rec, out: &mut Vec<u8>) {
        out.extend_from_slice(&id.0.to_be_bytes());
        out.extend_from_slice(&r.inc.to_be_bytes());
        out.push(r.status() as u8);
        put_addr(out, &self.addr_of(r));
        match r.status() {
            Status::Suspect => {
                let s = self.suspicions.get(&id).map_or(NodeId(0), |s| s.suspecter);
                out.extend_from_slice(&s.0.to_be_bytes());
            }
            Status::Alive => {}
            Status::Down | Status::Left => {
                let age = self.dead.get(&id).map_or(0, |b| age_ms(now, *b));
                out.extend_from_slice(&age.to_be_bytes());
            }
        }
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Our current incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The record of `id`.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.table.get(id).map(|r| self.view(id, r))
    }

    /// Every known node (ourselves and down/left ones included), in a fixed pseudo-random
    /// order.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, Member)> + '_ {
        self.table.iter().map(|(id, r)| (id, self.view(id, r)))
    }

    /// How long ago `id` died (was declared down or left), for a down or left record.
    pub fn death_age(&self, now: Instant, id: NodeId) -> Option<Duration> {
        self.dead
            .get(&id)
            .map(|b| Duration::from_millis(u64::from(age_ms(now, *b))))
    }

    /// Changes still queued for piggybacking (rumors not yet sent enough times).
    pub fn rumors(&self) -> usize {
        self.queue.len()
    }

    /// Records held (tombstones included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Never true: our own record is always held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of live (alive or suspect) members, ourselves included.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// A fingerprint of the whole table (equal tables, equal fingerprints).
    pub fn table_hash(&self) -> u32 {
        self.table.root().hash
    }

    /// Live members other than ourselves (O(N); the runtime samples with
    /// [`Membership::sample_peer`] instead).
    pub fn peers(&self) -> Vec<Peer> {
        if self.left_at_round.is_some() {
            return Vec::new();
        }
        self.table
            .iter()
            .filter(|(id, r)| *id != self.me && r.status().is_live())
            .map(|(id, r)| Peer {
                id: Some(id),
                addr: self.addr_of(r),
            })
            .collect()
    }

    /// Number of peers [`Membership::sample_peer`] draws from.
    pub fn peer_count(&self) -> usize {
        if self.left_at_round.is_some() {
            0
        } else {
            self.live.saturating_sub(1)
        }
    }

    /// A live member other than ourselves, uniformly at random (O(1) expected).
    pub fn sample_peer(&self, rng: &mut Prng) -> Option<Peer> {
        self.sample(rng, |id, r| id != self.me && r.status().is_live())
    }

    fn sample(&self, rng: &mut Prng, ok: impl Fn(NodeId, &Rec) -> bool) -> Option<Peer> {
        let n = self.table.len();
        // `live` counts us only while we are live ourselves.
        let others = if self.left_at_round.is_some() {
            self.live
        } else {
            self.live.saturating_sub(1)
        };
        if n == 0 || others == 0 {
            return None;
        }
        let peer = |id: NodeId, r: &Rec| Peer {
            id: Some(id),
            addr: self.addr_of(r),
        };
        for _ in 0..SAMPLE_TRIES {
            let i = rng.below(n as u64) as usize;
            if let Some((id, r)) = self.table.nth(i) {
                if ok(id, r) {
                    return Some(peer(id, r));
                }
            }
        }
        // Mostly dead table: scan from a random start.
        let start = rng.below(n as u64) as usize;
        (0..n)
            .filter_map(|k| self.table.nth((start + k) % n))
            .find(|(id, r)| ok(*id, r))
            .map(|(id, r)| peer(id, r))
    }

    /// The live member `id` as a peer.
    pub fn peer(&self, id: NodeId) -> Option<Peer> {
        let r = self.table.get(id)?;
        (id != self.me && r.status().is_live()).then(|| Peer {
            id: Some(id),
            addr: self.addr_of(r),
        })
    }

    /// The node at `addr`, if it is a known member (O(N): a scan).
    pub fn id_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.table
            .iter()
            .find(|(_, r)| self.same_addr(r, &addr))
            .map(|(id, _)| id)
    }

    /// Current Lifeguard local health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.lhm
    }

    /// The factor by which Lifeguard stretches timeouts and the round interval.
    pub fn health_multiplier(&self) -> u32 {
        1 + self.lhm
    }

    /// About the longest a crashed member stays live in this view: a probe round, its
    /// indirect probes, and a suspicion no other member confirms.
    pub fn detection_time(&self) -> Duration {
        self.round * 2 + self.suspicion_timeout(0)
    }

    /// The smoothed round trip of direct probes, once measured.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        (self.rtt.samples > 0).then(|| Duration::from_secs_f64(self.rtt.srtt))
    }

    /// Counters.
    pub fn stats(&self) -> MembershipStats {
        MembershipStats {
            sync: self.syncer.stats(),
            ..self.stats
        }
    }

    /// The next membership change.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// Leaves the cluster gracefully: our `left` record is spread for `leave_rounds` rounds,
    /// then we go quiet.
    pub fn leave(&mut self, _now: Instant) {
        if self.left_at_round.is_some() {
            return;
        }
        self.left_at_round = Some(self.rounds);
        self.set_self(Status::Left);
        self.probes.clear();
    }

    /// Adds an address to ping while no member is known (for example a peer found by the
    /// multicast announce bootstrap). At most 64 seeds are kept.
    pub fn add_seed(&mut self, addr: SocketAddr) {
        if addr != self.my_addr
            && !self.config.seeds.contains(&addr)
            && self.config.seeds.len() < 64
        {
            self.config.seeds.push(addr);
        }
    }

    /// Whether [`Membership::leave`] was called and the leave rounds are over.
    pub fn is_gone(&self) -> bool {
        self.left_at_round
            .is_some_and(|r| self.rounds > r + u64::from(self.config.leave_rounds))
    }

    /// Lifeguard stall detection: the driver calls this on every entry with the deadline it
    /// had asked for. If we run more than a round late we were stalled: our pending probes say
    /// nothing about their targets.
    pub(crate) fn observe_clock(&mut self, now: Instant) {
        let Some(expected) = self.expected_wakeup else {
            return;
        };
        if !self.config.lifeguard || now <= expected + self.round {
            return;
        }
        self.expected_wakeup = None;
        self.stats.stalls += 1;
        self.lhm = (self.lhm + 1).min(self.config.lhm_max);
        let n = self.probes.len() as u64;
        self.stats.probes_cancelled_stall += n;
        self.probes.clear();
        // Suspicions that ran out while we slept get a fresh minimum timeout: we could not
        // have heard the refutation.
        let min = self.suspicion_min();
        for s in self.suspicions.values_mut() {
            if s.deadline <= now {
                s.deadline = now + min;
            }
        }
    }

    pub(crate) fn set_expected_wakeup(&mut self, at: Option<Instant>) {
        self.expected_wakeup = at;
    }

    fn set_self(&mut self, status: Status) {
        let was_live = self
            .table
            .get(self.me)
            .is_some_and(|r| r.status().is_live());
        let old = self.table.get(self.me).copied();
        let mut rec = old.unwrap_or(Rec {
            inc: 0,
            ip: 0,
            port: 0,
            flags: 0,
        });
        if old.is_none() {
            let addr = self.my_addr;
            rec = self.pack(addr, self.incarnation, status);
        }
        rec.inc = self.incarnation;
        let rec = rec.with_status(status);
        self.table.insert(self.me, rec);
        if was_live && !status.is_live() {
            self.live -= 1;
        }
        self.enqueue(self.me);
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.live as f64 + 1.0;
        self.config.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    fn suspicion_min(&self) -> Duration {
        let n = (self.live as f64).max(1.0);
        self.round
            .mul_f64(self.config.suspicion_mult * n.log10().max(1.0))
    }

    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let min = self.suspicion_min();
        if !self.config.lifeguard {
            return min;
        }
        // Confirmations can only come from members other than us and the suspect: when
        // fewer than K exist, none are expected and the timer starts at the minimum
        // (memberlist's rule, `n - 2 < k => k = 0`). Otherwise a cluster of four waits
        // β × the minimum (6.4 s) for confirmations that cannot all arrive.
        let confirmers = self.live.saturating_sub(2);
        if confirmers < self.config.suspicion_confirmations as usize {
            return min;
        }
        let max = min.mul_f64(self.config.suspicion_max_mult.max(1.0));
        let k = f64::from(self.config.suspicion_confirmations.max(1));
        let frac = ((confirmations as f64) + 1.0).ln() / (k + 1.0).ln();
        let t = max.as_secs_f64() - (max - min).as_secs_f64() * frac.min(1.0);
        Duration::from_secs_f64(t.max(min.as_secs_f64()))
    }

    fn direct_timeout(&self) -> Duration {
        let base = match self.rtt.rto() {
            Some(rto) if self.config.rtt_timeouts => {
                rto.clamp(self.config.probe_timeout_min, self.config.probe_timeout)
            }
            _ => self.config.probe_timeout,
        };
        base * self.health_multiplier()
    }

    fn indirect_timeout(&self) -> Duration {
        let base = match self.rtt.rto() {
            Some(rto) if self.config.rtt_timeouts => (rto * 3).clamp(
                self.config.indirect_timeout_min,
                self.config.indirect_timeout,
            ),
            _ => self.config.indirect_timeout,
        };
        base * self.health_multiplier()
    }

    fn emit(&mut self, e: MembershipEvent) {
        if self.events.len() >= EVENTS_MAX {
            self.stats.events_overflow += 1;
            return;
        }
        self.events.push_back(e);
    }

    fn enqueue(&mut self, id: NodeId) {
        if let Some(old) = self.queued.remove(&id) {
            self.queue.remove(&(old.0, old.1, id));
        }
        if self.queue.len() >= self.config.broadcast_queue_max {
            // Drop the most-sent change: it has had the most chances already.
            if let Some(last) = self.queue.iter().next_back().copied() {
                self.queue.remove(&last);
                self.queued.remove(&last.2);
                self.stats.broadcast_overflow += 1;
            }
        }
        self.queue_seq += 1;
        let key = (0, u64::MAX - self.queue_seq);
        self.queue.insert((key.0, key.1, id));
        self.queued.insert(id, key);
        if self.config.rumor_life_mult > 0 {
            if self.births.len() >= 4 * self.config.broadcast_queue_max.max(1) {
                // Bounded: the oldest entry goes untracked (its change still ends by sends).
                self.births.pop_front();
            }
            self.births.push_back((self.rounds, key.1, id));
        }
    }

    /// Drops queued changes older than their life (see `rumor_life_mult`).
    fn expire_rumors(&mut self) {
        if self.config.rumor_life_mult == 0 {
            self.births.clear();
            return;
        }
        let n = self.live as f64 + 1.0;
        let life = u64::from(self.config.rumor_life_mult) * (n.log2().ceil() as u64).max(1);
        while let Some(&(born, key, id)) = self.births.front() {
            if self.rounds < born + life {
                break;
            }
            self.births.pop_front();
            if let Some((sent, order)) = self.queued.get(&id).copied() {
                if order == key {
                    self.queued.remove(&id);
                    self.queue.remove(&(sent, order, id));
                    self.stats.rumors_expired += 1;
                }
            }
        }
    }

    /// Counts a duplicate of a queued rumor as one more send of it.
    fn heard_again(&mut self, id: NodeId) {
        let limit = self.retransmit_limit();
        if let Some((sent, order)) = self.queued.remove(&id) {
            self.queue.remove(&(sent, order, id));
            if sent + 1 < limit {
                self.queue.insert((sent + 1, order, id));
                self.queued.insert(id, (sent + 1, order));
            }
        }
    }

    fn dequeue(&mut self, id: NodeId) {
        if let Some(old) = self.queued.remove(&id) {
            self.queue.remove(&(old.0, old.1, id));
        }
    }

    fn push_ctrl(&mut self, to: Peer, c: Ctrl, initiative: bool, out: &mut Outbox<'_>) {
        if !self.ctrl.contains_key(&to.addr) && self.ctrl.len() >= CTRL_PEERS_MAX {
            self.stats.control_overflow += 1;
            return;
        }
        let q = self.ctrl.entry(to.addr).or_default();
        if q.len() >= CTRL_PER_PEER_MAX {
            self.stats.control_overflow += 1;
            return;
        }
        q.push(c);
        if initiative {
            out.initiate(&to);
        } else {
            out.send_to(to.addr);
        }
    }

    fn nonce(&mut self) -> u32 {
        loop {
            let n = self.rng.next_u64() as u32;
            if n != 0 && !self.probes.contains_key(&n) && !self.relays.contains_key(&n) {
                return n;
            }
        }
    }

    fn start_probe(
        &mut self,
        now: Instant,
        peer: Peer,
        verify_left: bool,
        out: &mut Outbox<'_>,
    ) -> bool {
        let Some(id) = peer.id else { return false };
        let Some(r) = self.table.get(id).copied() else {
            return false;
        };
        if let Some(p) = self.probes.values_mut().find(|p| p.target == id) {
            p.verify_left |= verify_left;
            return true;
        }
        if self.probes.len() >= PROBES_MAX {
            self.stats.control_overflow += 1;
            return false;
        }
        let nonce = self.nonce();
        self.stats.probes += 1;
        self.probes.insert(
            nonce,
            Probe {
                target: id,
                addr: peer.addr,
                incarnation: r.inc,
                started: now,
                deadline: now + self.direct_timeout(),
                phase: Phase::Direct,
                expected_nacks: 0,
                nacks: 0,
                verify_left,
            },
        );
        self.push_ctrl(peer, Ctrl::Ping(nonce), true, out);
        true
    }

    /// Applies a record heard from the network (or our own verdict).
    fn apply(
        &mut self,
        now: Instant,
        id: NodeId,
        rec: Incoming,
        src: Source,
        out: &mut Outbox<'_>,
    ) {
        if id == self.me {
            self.accused(rec);
            return;
        }
        if !rec.status.is_live() && src != Source::Own && rec.age_ms >= ms(self.config.reap_after) {
            self.stats.stale_deaths += 1;
            return;
        }
        let jump = self.config.incarnation_jump_max;
        let Some(old) = self.table.get(id).copied() else {
            self.insert_new(now, id, rec, src);
            return;
        };
        let (old_inc, old_status) = (old.inc, old.status());
        let newer = supersedes(rec.inc, rec.status, old_inc, old_status);
        let ahead = rec.inc.wrapping_sub(old_inc);
        if !newer {
            // The member itself overrides a record implausibly far ahead of what it says.
            let implausible_old =
                old_inc.wrapping_sub(rec.inc) > jump && old_inc.wrapping_sub(rec.inc) < 1 << 31;
            if src == Source::FirstHand && implausible_old {
                self.stats.implausible_incarnations += 1;
            } else {
                if rec.status == Status::Suspect
                    && old_status == Status::Suspect
                    && rec.inc == old_inc
                {
                    self.confirm(id, rec.suspecter);
                } else if src == Source::Rumor && rec.inc == old_inc && rec.status == old_status {
                    // The rumor reached someone who already had it: it is saturating, spread
                    // it less (Demers et al.'s counter).
                    self.heard_again(id);
                }
                return;
            }
        } else if src != Source::FirstHand && src != Source::Own && ahead > jump {
            self.stats.implausible_incarnations += 1;
            return;
        }
        if rec.status == Status::Left
            && src != Source::FirstHand
            && src != Source::Own
            && old_status.is_live()
        {
            // Nobody can declare another node left: check it ourselves first.
            self.stats.left_claims += 1;
            if let Some(p) = self.peer(id) {
                self.start_probe(now, p, true, out);
            }
            return;
        }
        let addr_changed = !self.same_addr(&old, &rec.addr);
        let mut new = if addr_changed {
            self.pack(rec.addr, rec.inc, rec.status)
        } else {
            old.with_status(rec.status)
        };
        new.inc = rec.inc;
        self.store(id, new);
        match (old_status.is_live(), rec.status.is_live()) {
            (true, false) => self.live -= 1,
            (false, true) => self.live += 1,
            _ => {}
        }
        if old_status == Status::Suspect && rec.status != Status::Suspect {
            self.suspicions.remove(&id);
        }
        if rec.status.is_live() {
            self.dead.remove(&id);
        } else {
            let born = if src == Source::Own {
                born_at(now, 0)
            } else {
                born_at(now, rec.age_ms)
            };
            self.dead.insert(id, born);
        }
        match rec.status {
            Status::Alive if old_status.is_live() => {
                if old_status == Status::Suspect {
                    self.emit(MembershipEvent::MemberAlive {
                        id,
                        incarnation: rec.inc,
                    });
                }
            }
            Status::Alive => self.emit(MembershipEvent::MemberUp { id, addr: rec.addr }),
            Status::Suspect => {
                if !old_status.is_live() {
                    self.emit(MembershipEvent::MemberUp { id, addr: rec.addr });
                }
                self.start_suspicion(now, id, rec);
            }
            Status::Down if old_status.is_live() => self.emit(MembershipEvent::MemberDown { id }),
            Status::Left if old_status.is_live() => self.emit(MembershipEvent::MemberLeft { id }),
            Status::Down | Status::Left => {}
        }
        if src != Source::Sync {
            self.enqueue(id);
        }
    }

    /// A record about a node we did not know.
    fn insert_new(&mut self, now: Instant, id: NodeId, rec: Incoming, src: Source) {
        if self.table.len() >= self.config.members_max {
            // Make room by dropping the oldest tombstone; never a live member.
            let oldest = self.dead.iter().min_by_key(|(_, b)| **b).map(|(id, _)| *id);
            match oldest {
                Some(victim) if rec.status.is_live() => {
                    self.reap(victim);
                    self.stats.members_overflow += 1;
                }
                _ => {
                    self.stats.members_overflow += 1;
                    return;
                }
            }
        }
        let r = self.pack(rec.addr, rec.inc, rec.status);
        self.store(id, r);
        if rec.status.is_live() {
            self.live += 1;
            self.emit(MembershipEvent::MemberUp { id, addr: rec.addr });
            if rec.status == Status::Suspect {
                self.start_suspicion(now, id, rec);
            }
        } else {
            // Known only as dead: a tombstone that keeps stale copies out; nobody else
            // should hold anything about it.
            self.stats.first_seen_dead += 1;
            self.dead.insert(id, born_at(now, rec.age_ms));
            self.emit(MembershipEvent::MemberForgotten { id });
        }
        if src != Source::Sync {
            self.enqueue(id);
        }
    }

    /// Someone says we are suspect, down or left: refute with a higher incarnation.
    fn accused(&mut self, rec: Incoming) {
        if self.left_at_round.is_some() || rec.status == Status::Alive {
            return;
        }
        let d = rec.inc.wrapping_sub(self.incarnation);
        if d >= 1 << 31 {
            return; // about an incarnation we left behind
        }
        self.incarnation = if d == 0 {
            self.incarnation.wrapping_add(1)
        } else if d <= self.config.incarnation_jump_max {
            rec.inc.wrapping_add(1)
        } else {
            // Only we bump our incarnation: this one is forged or corrupt.
            self.stats.implausible_incarnations += 1;
            self.incarnation.wrapping_add(1)
        };
        self.stats.refutations += 1;
        if self.config.lifeguard {
            self.lhm = (self.lhm + 1).min(self.config.lhm_max);
        }
        self.set_self(Status::Alive);
    }

    fn confirm(&mut self, id: NodeId, suspecter: NodeId) {
        // Lifeguard: an independent confirmation shortens the timer.
        let k = self.config.suspicion_confirmations as usize;
        let Some(s) = self.suspicions.get(&id) else {
            return;
        };
        if s.confirmers.contains(&suspecter) || s.confirmers.len() > k {
            return;
        }
        let deadline = s.started + self.suspicion_timeout(s.confirmers.len());
        if let Some(s) = self.suspicions.get_mut(&id) {
            s.confirmers.insert(suspecter);
            s.deadline = deadline;
            // Re-broadcast naming the new suspecter, so others count it too (the suspecter is
            // not part of the fingerprint: digests are unaffected).
            s.suspecter = suspecter;
        }
        self.enqueue(id);
    }

    fn start_suspicion(&mut self, now: Instant, id: NodeId, rec: Incoming) {
        let timeout = self.suspicion_timeout(0);
        let mut confirmers = BTreeSet::new();
        confirmers.insert(rec.suspecter);
        self.suspicions.insert(
            id,
            Suspicion {
                started: now,
                deadline: now + timeout,
                confirmers,
                suspecter: rec.suspecter,
            },
        );
        self.emit(MembershipEvent::MemberSuspect {
            id,
            incarnation: rec.inc,
        });
    }

    fn suspect(&mut self, now: Instant, id: NodeId, incarnation: u32, out: &mut Outbox<'_>) {
        let Some(r) = self.table.get(id).copied() else {
            return;
        };
        if r.inc != incarnation || !r.status().is_live() {
            return;
        }
        if r.status() == Status::Suspect {
            if self
                .suspicions
                .get(&id)
                .is_none_or(|s| s.confirmers.contains(&self.me))
            {
                return;
            }
            // A suspect we failed to reach too: our suspicion is a Lifeguard confirmation.
            self.stats.suspicions_raised += 1;
            self.confirm(id, self.me);
            return;
        }
        self.stats.suspicions_raised += 1;
        let rec = Incoming {
            addr: self.addr_of(&r),
            inc: r.inc,
            status: Status::Suspect,
            suspecter: self.me,
            age_ms: 0,
        };
        self.apply(now, id, rec, Source::Own, out);
    }

    fn reap(&mut self, id: NodeId) {
        self.dead.remove(&id);
        self.dequeue(id);
        self.unstore(id);
        self.stats.reaped += 1;
        self.emit(MembershipEvent::MemberForgotten { id });
    }

    fn write_liveness(&mut self, now: Instant, to: &Peer, budget: usize, out: &mut Vec<u8>) {
        let start = out.len();
        let self_status = if self.left_at_round.is_some() {
            Status::Left
        } else {
            Status::Alive
        };
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.push(self_status as u8);
        // Control messages owed to this peer.
        let ctrl = self.ctrl.remove(&to.addr).unwrap_or_default();
        let n_at = out.len();
        out.push(0);
        let mut n = 0u8;
        let mut left = Vec::new();
        for c in ctrl {
            let before = out.len();
            match c {
                Ctrl::Ping(s) => {
                    out.push(1);
                    out.extend_from_slice(&s.to_be_bytes());
                }
                Ctrl::Ack(s) => {
                    out.push(2);
                    out.extend_from_slice(&s.to_be_bytes());
                }
                Ctrl::PingReq {
                    nonce,
                    target,
                    addr,
                    timeout_ms,
                } => {
                    out.push(3);
                    out.extend_from_slice(&nonce.to_be_bytes());
                    out.extend_from_slice(&target.0.to_be_bytes());
                    put_addr(out, &addr);
                    out.extend_from_slice(&timeout_ms.to_be_bytes());
                }
                Ctrl::Nack(s) => {
                    out.push(4);
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            if out.len() - start + 1 > budget {
                // It waits for the next datagram to this peer.
                out.truncate(before);
                left.push(c);
                continue;
            }
            n += 1;
        }
        if !left.is_empty() {
            self.ctrl.insert(to.addr, left);
        }
        out[n_at] = n;
        // Piggybacked changes: the peer's own bad news first (buddy system), then fewest-sent.
        let u_at = out.len();
        out.push(0);
        let mut u = 0u8;
        let limit = self.retransmit_limit();
        let mut picked: Vec<NodeId> = Vec::new();
        if let Some(id) = to.id {
            if self
                .table
                .get(id)
                .is_some_and(|r| r.status() != Status::Alive)
            {
                picked.push(id);
            }
        }
        for &(_, _, id) in self.queue.iter() {
            if picked.len() >= self.config.piggyback_max {
                break;
            }
            if Some(id) != to.id {
                picked.push(id);
            }
        }
        for id in picked {
            let Some(r) = self.table.get(id).copied() else {
                continue;
            };
            if out.len() - start + self.record_len(id, &r) > budget {
                break;
            }
            self.encode_record(now, id, &r, out);
            u += 1;
            self.stats.piggybacked += 1;
            if let Some((sent, order)) = self.queued.remove(&id) {
                self.queue.remove(&(sent, order, id));
                if sent + 1 < limit {
                    self.queue.insert((sent + 1, order, id));
                    self.queued.insert(id, (sent + 1, order));
                }
            }
        }
        out[u_at] = u;
    }

    fn handle_liveness(
        &mut self,
        now: Instant,
        from: &Peer,
        payload: &[u8],
        out: &mut Outbox<'_>,
    ) -> Result<(), WireError> {
        let Some(sender) = from.id else {
            return Err(WireError::Malformed);
        };
        let mut r = Reader::new(payload);
        let inc = r.u32()?;
        let status = Status::from_u8(r.u8()?)?;
        if !matches!(status, Status::Alive | Status::Left) {
            return Err(WireError::Malformed);
        }
        if sender != self.me {
            let rec = Incoming {
                addr: from.addr,
                inc,
                status,
                suspecter: NodeId(0),
                age_ms: 0,
            };
            self.apply(now, sender, rec, Source::FirstHand, out);
        }
        let n = r.u8()?;
        for _ in 0..n {
            match r.u8()? {
                1 => {
                    let s = r.u32()?;
                    if self.left_at_round.is_none() {
                        self.push_ctrl(*from, Ctrl::Ack(s), false, out);
                    }
                }
                2 => {
                    let s = r.u32()?;
                    self.acked(now, s, from, out);
                }
                3 => {
                    let nonce = r.u32()?;
                    let target = NodeId(r.u64()?);
                    let addr = r.addr()?;
                    let timeout_ms = r.u16()?;
                    self.relay(now, from, nonce, target, addr, timeout_ms, out);
                }
                4 => {
                    let s = r.u32()?;
                    if let Some(p) = self.probes.get_mut(&s) {
                        p.nacks += 1;
                        self.stats.nacks_received += 1;
                    }
                }
                _ => return Err(WireError::Malformed),
            }
        }
        let u = r.u8()?;
        for _ in 0..u {
            let (id, rec) = decode_member(&mut r)?;
            self.apply(now, id, rec, Source::Rumor, out);
        }
        Ok(())
    }

    fn acked(&mut self, now: Instant, nonce: u32, from: &Peer, out: &mut Outbox<'_>) {
        if let Some(p) = self.probes.get(&nonce).copied() {
            // The ack must come from the member we pinged, or from a relay we asked.
            let from_target = from.id == Some(p.target);
            if !from_target && p.phase != Phase::Indirect {
                return;
            }
            self.probes.remove(&nonce);
            self.stats.probes_acked += 1;
            if p.phase == Phase::Direct && from_target {
                self.rtt.sample(now.saturating_duration_since(p.started));
                self.lhm = self.lhm.saturating_sub(1);
            }
            if p.verify_left {
                self.stats.left_claims_refuted += 1;
            }
        } else if let Some(relay) = self.relays.remove(&nonce) {
            let origin = Peer {
                id: None,
                addr: relay.origin,
            };
            self.push_ctrl(origin, Ctrl::Ack(relay.origin_nonce), false, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relay(
        &mut self,
        now: Instant,
        from: &Peer,
        nonce: u32,
        target: NodeId,
        addr: SocketAddr,
        timeout_ms: u16,
        out: &mut Outbox<'_>,
    ) {
        // Only a member we know, at the address we know: a ping-req cannot aim our pings
        // at an arbitrary address.
        let known = self
            .table
            .get(target)
            .is_some_and(|r| r.status().is_live() && self.same_addr(r, &addr));
        if !known || self.relays.len() >= RELAYS_MAX || self.left_at_round.is_some() {
            self.stats.ping_reqs_refused += 1;
            return;
        }
        let mine = self.nonce();
        let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
        self.relays.insert(
            mine,
            Relay {
                origin: from.addr,
                origin_nonce: nonce,
                nack_at: now + timeout.mul_f64(0.8),
                nacked: false,
                deadline: now + timeout,
            },
        );
        self.stats.ping_reqs_relayed += 1;
        let peer = Peer {
            id: Some(target),
            addr,
        };
        self.push_ctrl(peer, Ctrl::Ping(mine), true, out);
    }

    /// Panics if the table, counts, queues or timers are inconsistent (O(N)).
    pub fn check_invariants(&self) {
        self.table.check_invariants();
        self.syncer.check_invariants();
        let live = self
            .table
            .iter()
            .filter(|(_, r)| r.status().is_live())
            .count();
        assert_eq!(live, self.live, "live count drifted");
        self.check_bounds();
        for (id, r) in self.table.iter().filter(|(id, _)| *id != self.me) {
            assert_eq!(
                self.dead.contains_key(&id),
                !r.status().is_live(),
                "tombstones and dead records disagree"
            );
        }
    }

    /// The O(1)-ish part of [`Membership::check_invariants`]: bounds and cross-checks that do
    /// not walk the table.
    pub fn check_bounds(&self) {
        assert_eq!(self.queue.len(), self.queued.len());
        assert!(self.queue.len() <= self.config.broadcast_queue_max);
        assert!(self.births.len() <= 4 * self.config.broadcast_queue_max.max(1));
        assert!(self.table.len() <= self.config.members_max.max(1) + 1);
        assert!(self.probes.len() <= PROBES_MAX);
        assert!(self.relays.len() <= RELAYS_MAX);
        assert!(self.ctrl.len() <= CTRL_PEERS_MAX);
        assert!(self.events.len() <= EVENTS_MAX);
        assert!(self.lhm <= self.config.lhm_max);
        assert!(self.dead.len() <= self.table.len());
        for (id, s) in &self.suspicions {
            assert_eq!(
                self.table.get(*id).map(|r| r.status()),
                Some(Status::Suspect),
                "suspicion timer for a non-suspect"
            );
            assert!(s.confirmers.len() <= self.config.suspicion_confirmations as usize + 2);
        }
        assert_eq!(
            self.table.get(self.me).map(|r| r.inc),
            Some(self.incarnation)
        );
    }

    /// Bytes of memory the member table holds.
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }
}

impl GossipObject for Membership {
    fn tag(&self) -> u8 {
        MEMBERSHIP_TAG
    }

    fn name(&self) -> &'static str {
        "membership"
    }

    fn on_round(&mut self, now: Instant, out: &mut Outbox<'_>) {
        self.rounds += 1;
        self.syncer.expire(now);
        self.expire_rumors();
        if self.is_gone() {
            return;
        }
        if let Some(r) = self.left_at_round {
            // Spread the leave directly to a few members.
            if self.rounds <= r + u64::from(self.config.leave_rounds) {
                for _ in 0..self.config.indirect_probes {
                    let mut rng = self.rng.fork();
                    let p = self.sample(&mut rng, |id, r| id != self.me && r.status().is_live());
                    if let Some(p) = p {
                        out.initiate(&p);
                    }
                }
            }
            return;
        }
        // Reap dead records whose certificate ran out.
        let reap_after = self.config.reap_after;
        let expired: Vec<NodeId> = self
            .dead
            .iter()
            .filter(|(_, b)| older_than(now, **b, reap_after))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.reap(id);
        }
        if self.live <= 1 {
            let seeds: Vec<SocketAddr> = self
                .config
                .seeds
                .iter()
                .copied()
                .filter(|s| *s != self.my_addr)
                .collect();
            for s in seeds {
                let nonce = self.nonce();
                let seed = Peer { id: None, addr: s };
                self.push_ctrl(seed, Ctrl::Ping(nonce), true, out);
                self.syncer.start(s);
            }
        }
        let every = u64::from(self.config.reconnect_every);
        if every > 0 && self.rounds % every == 0 && !self.dead.is_empty() {
            let k = self.rng.below(self.dead.len() as u64) as usize;
            if let Some(id) = self.dead.keys().nth(k).copied() {
                if let Some(r) = self.table.get(id).copied() {
                    let nonce = self.nonce();
                    let p = Peer {
                        id: Some(id),
                        addr: self.addr_of(&r),
                    };
                    self.push_ctrl(p, Ctrl::Ping(nonce), true, out);
                }
            }
        }
    }

    fn gossip_with(&mut self, now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        if self.left_at_round.is_some() {
            return;
        }
        if !self.start_probe(now, *peer, false, out) {
            let nonce = self.nonce();
            self.push_ctrl(*peer, Ctrl::Ping(nonce), true, out);
        }
        let every = u64::from(self.config.sync_every.max(1));
        if self.rounds % every == 0 {
            self.syncer.start(peer.addr);
        }
    }

    fn extra_peers(&mut self) -> usize {
        // We lack whole ranges: ask more peers at once (each for different ranges).
        if self.left_at_round.is_none() && self.syncer.take_backlog() {
            self.config.catch_up_fanout
        } else {
            0
        }
    }

    fn catch_up_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        self.syncer.start(peer.addr);
        out.initiate(peer);
    }

    fn write(
        &mut self,
        now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        match priority {
            Priority::Liveness => {
                if budget >= 7 {
                    self.write_liveness(now, to, budget, out);
                }
            }
            Priority::Bulk => {
                let mut syncer = std::mem::replace(&mut self.syncer, Syncer::new(0, 0));
                let codec = MemberCodec { m: self, now };
                syncer.write(to.addr, &self.table, &codec, &[], budget, out);
                self.syncer = syncer;
            }
        }
    }

    fn has_more(&self, to: &Peer) -> bool {
        self.syncer.owes(to.addr) || self.ctrl.contains_key(&to.addr)
    }

    fn handle(
        &mut self,
        now: Instant,
        from: &Peer,
        priority: Priority,
        payload: &[u8],
        out: &mut Outbox<'_>,
    ) -> Result<(), WireError> {
        match priority {
            Priority::Liveness => self.handle_liveness(now, from, payload, out),
            Priority::Bulk => {
                let bulk = sync::parse(payload)?;
                let mut r = bulk.reader.clone();
                let mut read = 0usize;
                let haves: Vec<_> = bulk.haves().collect();
                let mut answers = Vec::new();
                for (range, n) in haves {
                    let mut listing = Vec::with_capacity(usize::from(n));
                    for _ in 0..n {
                        let (id, rec) = decode_member(&mut r)?;
                        if !range.contains(sync::mix(id)) {
                            return Err(WireError::Malformed);
                        }
                        self.apply(now, id, rec, Source::Sync, out);
                        listing.push((id, (rec.inc, rec.status)));
                    }
                    read += usize::from(n);
                    answers.push((range, listing));
                }
                for k in read..usize::from(bulk.records) {
                    let (id, rec) = decode_member(&mut r)?;
                    let src = if k < read + usize::from(bulk.rumors) {
                        Source::Rumor
                    } else {
                        Source::Sync
                    };
                    self.apply(now, id, rec, src, out);
                }
                if self.left_at_round.is_some() {
                    return Ok(());
                }
                for (range, listing) in answers {
                    let ids = listing_answer(&self.table, range, &listing, |ours, theirs| {
                        supersedes(ours.inc, ours.status(), theirs.0, theirs.1)
                    });
                    self.syncer.send_ids(from.addr, ids);
                }
                self.syncer.handle(now, from.addr, &bulk.items, &self.table);
                if self.syncer.owes(from.addr) {
                    out.send_to(from.addr);
                }
                Ok(())
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox<'_>) {
        // Probes.
        let due: Vec<u32> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for nonce in due {
            let Some(mut p) = self.probes.remove(&nonce) else {
                continue;
            };
            match p.phase {
                Phase::Direct if self.config.direct_retry => {
                    // A lost ping or ack is the likeliest reason for the silence: ping once
                    // more before asking k helpers (two datagrams instead of 4k + 2, and a
                    // false suspicion now needs the retry lost too).
                    self.stats.direct_retries += 1;
                    let target = Peer {
                        id: Some(p.target),
                        addr: p.addr,
                    };
                    self.push_ctrl(target, Ctrl::Ping(nonce), true, out);
                    p.phase = Phase::Retry;
                    p.deadline = now + self.direct_timeout();
                    self.probes.insert(nonce, p);
                }
                Phase::Direct | Phase::Retry => {
                    // Helpers at distinct addresses, none at the target's: live members may
                    // share an address (nodes behind one announced ip:port, a restart reusing
                    // it), and a helper there only pings itself. The draw is bounded (4k
                    // tries): with fewer distinct addresses than k it asks the ones it found.
                    let k = self.config.indirect_probes;
                    let mut chosen: Vec<Peer> = Vec::new();
                    for _ in 0..k * 4 {
                        if chosen.len() >= k {
                            break;
                        }
                        let mut rng = self.rng.fork();
                        let c = self.sample(&mut rng, |id, r| {
                            id != self.me
                                && id != p.target
                                && r.status() == Status::Alive
                                && !self.same_addr(r, &p.addr)
                        });
                        match c {
                            Some(c) if !chosen.iter().any(|x| x.addr == c.addr) => chosen.push(c),
                            Some(_) => {}
                            None => break,
                        }
                    }
                    let timeout = self.indirect_timeout();
                    let timeout_ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
                    for c in &chosen {
                        self.stats.ping_reqs_sent += 1;
                        let req = Ctrl::PingReq {
                            nonce,
                            target: p.target,
                            addr: p.addr,
                            timeout_ms,
                        };
                        self.push_ctrl(*c, req, true, out);
                    }
                    // SWIM: keep listening for the direct ack too (ping again alongside).
                    let target = Peer {
                        id: Some(p.target),
                        addr: p.addr,
                    };
                    self.push_ctrl(target, Ctrl::Ping(nonce), true, out);
                    p.phase = Phase::Indirect;
                    p.expected_nacks = chosen.len() as u32;
                    p.deadline = now + timeout;
                    self.probes.insert(nonce, p);
                }
                Phase::Indirect => {
                    self.stats.probes_failed += 1;
                    if self.config.lifeguard {
                        // Missing nacks say our own path is bad, not the target.
                        let delta = if p.expected_nacks > 0 {
                            p.expected_nacks.saturating_sub(p.nacks)
                        } else {
                            1
                        };
                        self.lhm = (self.lhm + delta).min(self.config.lhm_max);
                    }
                    if p.verify_left {
                        // The claim holds: it does not answer.
                        if let Some(r) = self.table.get(p.target).copied() {
                            let rec = Incoming {
                                addr: self.addr_of(&r),
                                inc: r.inc,
                                status: Status::Left,
                                suspecter: NodeId(0),
                                age_ms: 0,
                            };
                            self.apply(now, p.target, rec, Source::Own, out);
                        }
                    } else {
                        self.suspect(now, p.target, p.incarnation, out);
                    }
                }
            }
        }
        // Relays: nack at 80% of the requester's timeout, give up at the timeout.
        let nacks: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| !r.nacked && r.nack_at <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in nacks {
            if let Some(r) = self.relays.get_mut(&n) {
                r.nacked = true;
                let (origin, nonce) = (r.origin, r.origin_nonce);
                self.stats.nacks_sent += 1;
                let p = Peer {
                    id: None,
                    addr: origin,
                };
                self.push_ctrl(p, Ctrl::Nack(nonce), false, out);
            }
        }
        self.relays.retain(|_, r| r.deadline > now);
        // Suspicions.
        let expired: Vec<NodeId> = self
            .suspicions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.suspicions.remove(&id);
            if let Some(r) = self.table.get(id).copied() {
                self.stats.declared_down += 1;
                let rec = Incoming {
                    addr: self.addr_of(&r),
                    inc: r.inc,
                    status: Status::Down,
                    suspecter: NodeId(0),
                    age_ms: 0,
                };
                self.apply(now, id, rec, Source::Own, out);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let p = self.probes.values().map(|p| p.deadline).min();
        let s = self.suspicions.values().map(|s| s.deadline).min();
        let r = self
            .relays
            .values()
            .map(|r| if r.nacked { r.deadline } else { r.nack_at })
            .min();
        [p, s, r].into_iter().flatten().min()
    }

    fn forget_peer(&mut self, addr: SocketAddr) {
        self.ctrl.remove(&addr);
        self.syncer.forget(addr);
    }

    fn check_invariants(&self) {
        Membership::check_invariants(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::Peers;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7000))
    }

    fn node(i: u8) -> Membership {
        Membership::new(
            NodeId(u64::from(i)),
            addr(i),
            Duration::from_millis(200),
            MembershipConfig::default(),
            Prng::new(u64::from(i)),
        )
    }

    fn inc(status: Status, inc: u32, a: SocketAddr) -> Incoming {
        Incoming {
            addr: a,
            inc,
            status,
            suspecter: NodeId(99),
            age_ms: 0,
        }
    }

    #[test]
    fn a_suspicion_waits_for_confirmations_only_when_enough_members_could_send_them() {
        let mut m = node(1);
        let k = m.config.suspicion_confirmations as usize;
        // Us, the suspect and k - 1 others: k confirmations cannot arrive.
        m.live = k + 1;
        let min = m.suspicion_min();
        assert_eq!(m.suspicion_timeout(0), min);
        assert_eq!(m.suspicion_timeout(k), min);
        // One more member and all k can: the timer starts at β × the minimum and shrinks.
        m.live = k + 2;
        let min = m.suspicion_min();
        let beta = m.config.suspicion_max_mult;
        let near = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()).abs() < 1e-6;
        assert!(near(m.suspicion_timeout(0), min.mul_f64(beta)));
        assert!(m.suspicion_timeout(1) < m.suspicion_timeout(0));
        assert!(near(m.suspicion_timeout(k), min));
    }

    #[test]
    fn indirect_probe_helpers_have_distinct_addresses_and_none_shares_the_targets() {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut out = Outbox::new(&mut peers, 0, now);
        let mut m = node(1);
        // The target 2; 3 behind the target's address; 4 and 5 behind one address; 6 alone.
        for (id, a) in [(2, 2), (3, 2), (4, 4), (5, 4), (6, 6)] {
            m.apply(
                now,
                NodeId(id),
                inc(Status::Alive, 1, addr(a)),
                Source::FirstHand,
                &mut out,
            );
        }
        let target = Peer {
            id: Some(NodeId(2)),
            addr: addr(2),
        };
        assert!(m.start_probe(now, target, false, &mut out));
        m.ctrl.clear();
        // First the direct retry, then the helpers.
        m.handle_timeout(now + Duration::from_secs(1), &mut out);
        m.handle_timeout(now + Duration::from_secs(2), &mut out);
        let helpers: Vec<SocketAddr> = m
            .ctrl
            .iter()
            .filter(|(_, q)| q.iter().any(|c| matches!(c, Ctrl::PingReq { .. })))
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(helpers, vec![addr(4), addr(6)]);
        assert_eq!(m.stats().ping_reqs_sent, 2);
        // The probe went on to its indirect phase (it did not hang or vanish).
        assert_eq!(m.probes.len(), 1);
        m.check_invariants();
    }

    fn probe_one_silent_target(direct_retry: bool) -> (Membership, Vec<Vec<Ctrl>>) {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut out = Outbox::new(&mut peers, 0, now);
        let mut m = node(1);
        m.config.direct_retry = direct_retry;
        for id in 2..=6 {
            m.apply(
                now,
                NodeId(id),
                inc(Status::Alive, 1, addr(id as u8)),
                Source::FirstHand,
                &mut out,
            );
        }
        let target = Peer {
            id: Some(NodeId(2)),
            addr: addr(2),
        };
        assert!(m.start_probe(now, target, false, &mut out));
        let mut steps = Vec::new();
        for s in 1..=3 {
            m.ctrl.clear();
            m.handle_timeout(now + Duration::from_secs(s), &mut out);
            steps.push(m.ctrl.values().flatten().copied().collect());
        }
        (m, steps)
    }

    #[test]
    fn a_silent_target_is_pinged_again_before_any_helper_is_asked() {
        let (m, steps) = probe_one_silent_target(true);
        assert!(
            matches!(steps[0].as_slice(), [Ctrl::Ping(_)]),
            "{:?}",
            steps[0]
        );
        let reqs = steps[1]
            .iter()
            .filter(|c| matches!(c, Ctrl::PingReq { .. }))
            .count();
        assert_eq!(reqs, m.config.indirect_probes);
        assert_eq!(m.stats().direct_retries, 1);
        // The indirect phase ended without an ack: suspect.
        assert_eq!(m.stats().probes_failed, 1);
        assert_eq!(m.member(NodeId(2)).map(|r| r.status), Some(Status::Suspect));
    }

    #[test]
    fn without_direct_retry_the_first_timeout_asks_the_helpers() {
        let (m, steps) = probe_one_silent_target(false);
        let reqs = steps[0]
            .iter()
            .filter(|c| matches!(c, Ctrl::PingReq { .. }))
            .count();
        assert_eq!(reqs, m.config.indirect_probes);
        assert_eq!(m.stats().direct_retries, 0);
        assert_eq!(m.stats().probes_failed, 1);
    }

    #[test]
    fn a_rumor_is_dropped_at_the_end_of_its_life_and_not_before() {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut out = Outbox::new(&mut peers, 0, now);
        let mut m = node(1);
        m.apply(
            now,
            NodeId(2),
            inc(Status::Alive, 1, addr(2)),
            Source::FirstHand,
            &mut out,
        );
        assert_eq!(m.rumors(), 1);
        // n = 2 live members: life = mult × ⌈log2 3⌉ = 2 × mult rounds.
        let life = u64::from(m.config.rumor_life_mult) * 2;
        for _ in 0..life - 1 {
            m.rounds += 1;
            m.expire_rumors();
        }
        assert_eq!(m.rumors(), 1, "dropped before the end of its life");
        m.rounds += 1;
        m.expire_rumors();
        assert_eq!(m.rumors(), 0);
        assert_eq!(m.stats().rumors_expired, 1);
        m.check_invariants();
    }

    #[test]
    fn incarnations_compare_across_the_wrap() {
        assert!(incarnation_newer(1, 0));
        assert!(incarnation_newer(0, u32::MAX));
        assert!(!incarnation_newer(u32::MAX, 0));
        assert!(!incarnation_newer(5, 5));
        assert!(incarnation_newer(5 + (1 << 31) - 1, 5));
        assert!(!incarnation_newer(5 + (1 << 31), 5));
    }

    #[test]
    fn a_down_at_the_highest_incarnation_is_refuted_without_saturating() {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut out = Outbox::new(&mut peers, 0, now);
        let mut me = node(1);
        me.incarnation = u32::MAX;
        me.set_self(Status::Alive);
        me.apply(
            now,
            NodeId(1),
            inc(Status::Down, u32::MAX, addr(1)),
            Source::Rumor,
            &mut out,
        );
        assert_eq!(me.incarnation(), 0, "u32::MAX + 1 wraps to 0");
        assert_eq!(me.stats().refutations, 1);
        // A node that holds the down record takes the refutation as newer.
        let mut other = node(2);
        other.apply(
            now,
            NodeId(1),
            inc(Status::Down, u32::MAX, addr(1)),
            Source::Rumor,
            &mut out,
        );
        assert_eq!(other.member(NodeId(1)).unwrap().status, Status::Down);
        other.apply(
            now,
            NodeId(1),
            inc(Status::Alive, 0, addr(1)),
            Source::Rumor,
            &mut out,
        );
        let m = other.member(NodeId(1)).unwrap();
        assert_eq!((m.status, m.incarnation), (Status::Alive, 0));
        me.check_invariants();
        other.check_invariants();
    }

    #[test]
    fn a_relayed_left_about_a_live_member_is_only_a_claim_to_check() {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut out = Outbox::new(&mut peers, 0, now);
        let mut m = node(1);
        m.apply(
            now,
            NodeId(2),
            inc(Status::Alive, 3, addr(2)),
            Source::FirstHand,
            &mut out,
        );
        m.apply(
            now,
            NodeId(2),
            inc(Status::Left, 3, addr(2)),
            Source::Rumor,
            &mut out,
        );
        assert_eq!(m.member(NodeId(2)).unwrap().status, Status::Alive);
        assert_eq!(m.stats().left_claims, 1);
        assert_eq!(m.probes.values().filter(|p| p.verify_left).count(), 1);
        // It answers: the claim is refuted and it stays alive.
        let nonce = *m.probes.keys().next().unwrap();
        let from = Peer {
            id: Some(NodeId(2)),
            addr: addr(2),
        };
        m.acked(now + Duration::from_millis(1), nonce, &from, &mut out);
        assert_eq!(m.stats().left_claims_refuted, 1);
        assert_eq!(m.member(NodeId(2)).unwrap().status, Status::Alive);
        // Its own word is taken at once.
        m.apply(
            now,
            NodeId(2),
            inc(Status::Left, 3, addr(2)),
            Source::FirstHand,
            &mut out,
        );
        assert_eq!(m.member(NodeId(2)).unwrap().status, Status::Left);
        m.check_invariants();
    }

    #[test]
    fn a_record_far_ahead_of_the_held_incarnation_is_refused_unless_first_hand() {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut out = Outbox::new(&mut peers, 0, now);
        let mut m = node(1);
        let jump = m.config.incarnation_jump_max;
        m.apply(
            now,
            NodeId(2),
            inc(Status::Alive, 10, addr(2)),
            Source::FirstHand,
            &mut out,
        );
        m.apply(
            now,
            NodeId(2),
            inc(Status::Down, 10 + jump + 1, addr(2)),
            Source::Rumor,
            &mut out,
        );
        assert_eq!(m.member(NodeId(2)).unwrap().status, Status::Alive);
        m.apply(
            now,
            NodeId(2),
            inc(Status::Down, 10 + jump, addr(2)),
            Source::Rumor,
            &mut out,
        );
        assert_eq!(
            m.member(NodeId(2)).unwrap().status,
            Status::Down,
            "inside the window"
        );
        assert_eq!(m.stats().implausible_incarnations, 1);
        // A forged accusation of ourselves far ahead is refuted from our own incarnation.
        m.apply(
            now,
            NodeId(1),
            inc(Status::Down, 1 << 20, addr(1)),
            Source::Rumor,
            &mut out,
        );
        assert_eq!(m.incarnation(), 1);
        m.check_invariants();
    }

    #[test]
    fn death_certificates_are_reaped_on_time_and_refused_when_older() {
        let now = Instant(1_000_000_000);
        let mut peers = Peers::scratch(now);
        let mut m = node(1);
        let reap = m.config.reap_after;
        {
            let mut out = Outbox::new(&mut peers, 0, now);
            m.apply(
                now,
                NodeId(2),
                inc(Status::Alive, 0, addr(2)),
                Source::FirstHand,
                &mut out,
            );
            let mut down = inc(Status::Down, 0, addr(2));
            down.age_ms = 1000;
            m.apply(now, NodeId(2), down, Source::Rumor, &mut out);
            // First heard of already dead: a tombstone, and the others are told to forget.
            let mut dead = inc(Status::Down, 0, addr(3));
            dead.age_ms = 500;
            m.apply(now, NodeId(3), dead, Source::Sync, &mut out);
            let mut stale = inc(Status::Down, 0, addr(4));
            stale.age_ms = ms(reap);
            m.apply(now, NodeId(4), stale, Source::Sync, &mut out);
        }
        assert!(
            m.member(NodeId(4)).is_none(),
            "an expired certificate is refused"
        );
        assert_eq!(m.stats().stale_deaths, 1);
        let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
        assert!(events.contains(&MembershipEvent::MemberForgotten { id: NodeId(3) }));
        assert!(events.contains(&MembershipEvent::MemberDown { id: NodeId(2) }));
        // Node 2 died 1 s ago: reaped at reap_after - 1 s, node 3 at reap_after - 0.5 s.
        let mut out = Outbox::new(&mut peers, 0, now);
        m.on_round(now + reap - Duration::from_millis(1001), &mut out);
        assert!(m.member(NodeId(2)).is_some());
        m.on_round(now + reap - Duration::from_millis(999), &mut out);
        assert!(m.member(NodeId(2)).is_none());
        assert!(m.member(NodeId(3)).is_some());
        m.on_round(now + reap, &mut out);
        assert!(m.member(NodeId(3)).is_none());
        assert_eq!(m.stats().reaped, 2);
        m.check_invariants();
    }

    #[test]
    fn round_trip_samples_shorten_the_probe_timeout_within_its_bounds() {
        let mut m = node(1);
        assert_eq!(m.direct_timeout(), m.config.probe_timeout);
        for _ in 0..20 {
            m.rtt.sample(Duration::from_micros(200));
        }
        assert_eq!(m.direct_timeout(), m.config.probe_timeout_min);
        for _ in 0..50 {
            m.rtt.sample(Duration::from_millis(30));
        }
        let t = m.direct_timeout();
        assert!(
            t > Duration::from_millis(30) && t < m.config.probe_timeout,
            "{t:?}"
        );
        for _ in 0..50 {
            m.rtt.sample(Duration::from_secs(1));
        }
        assert_eq!(m.direct_timeout(), m.config.probe_timeout);
        m.lhm = 2;
        assert_eq!(m.direct_timeout(), m.config.probe_timeout * 3);
    }

    #[test]
    fn a_stall_raises_local_health_by_one_and_acks_bring_it_down() {
        let now = Instant(1_000_000_000);
        let mut m = node(1);
        m.set_expected_wakeup(Some(now));
        m.observe_clock(now + Duration::from_secs(1));
        assert_eq!(
            m.local_health(),
            1,
            "one late wake-up is one step, not the maximum"
        );
        m.set_expected_wakeup(Some(now + Duration::from_secs(2)));
        m.observe_clock(now + Duration::from_secs(3));
        assert_eq!(m.local_health(), 2);
        m.set_expected_wakeup(Some(now + Duration::from_secs(3)));
        m.observe_clock(now + Duration::from_secs(3) + Duration::from_millis(199));
        assert_eq!(m.local_health(), 2, "less than a round late is no stall");
    }
}
