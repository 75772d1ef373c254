//! Membership and failure detection (SWIM with Lifeguard), as a gossip object.
//!
//! * Probing: each round the runtime picks a peer; we ping it. No ack within
//!   `probe_timeout × (1 + lhm)` → ping-req through `indirect_probes` other members; still
//!   nothing within `indirect_timeout × (1 + lhm)` → the target is *suspect*.
//! * Suspicion: a suspect is declared *down* when its timer expires. With Lifeguard the timer
//!   starts at `suspicion_max_mult ×` the minimum and shrinks logarithmically with each
//!   independent confirmation (another member suspecting the same incarnation), reaching the
//!   minimum `suspicion_mult × max(1, log10 n) × round` after `suspicion_confirmations`.
//! * Refutation: a node that hears it is suspect (or down) bumps its incarnation and
//!   disseminates `alive`. Precedence: `alive(i) < suspect(i) < down(i) < alive(i+1)`, `left`
//!   beats everything (ids are unique per process lifetime, so a left node never returns).
//! * Dissemination: every change is piggybacked on liveness payloads, fewest-sent first, each
//!   `retransmit_mult × ⌈log10(n+1)⌉` times; a message about a suspect/down peer goes to that
//!   peer first (Lifeguard's buddy system), so it can refute at once. Bulk anti-entropy
//!   ([`crate::sync`]) makes all tables converge, including nodes that joined late or missed
//!   broadcasts.
//! * Lifeguard local health (LHM, 0..=`lhm_max`): +1 per failed probe and per refutation,
//!   −1 per successful probe, set to the maximum when the node notices it was stalled (its
//!   timer ran more than a round late); probe timeouts and the round interval stretch by
//!   `1 + lhm`, and probes that expired while we were stalled accuse nobody.
//! * Join: ping the seed addresses every round until some member is known. Leave: broadcast
//!   `left` for a few rounds, then go quiet. Down members are pinged now and then
//!   (`reconnect_every` rounds) so a healed partition merges back.
//!
//! Not done: per-peer RTT estimates, nack messages of Lifeguard, TCP push-pull.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId, Prng};

use crate::object::{GossipObject, Outbox, Peer};
use crate::sync::{fingerprint, SyncRecord, SyncStats, Syncer, Table};
use crate::wire::{addr_len, put_addr, Priority, Reader};

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
    /// Left gracefully (final).
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

/// One member's replicated record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its unicast gossip address.
    pub addr: SocketAddr,
    /// Its incarnation (bumped to refute suspicion).
    pub incarnation: u32,
    /// Its status.
    pub status: Status,
    /// Who suspected it (meaningful when suspect).
    pub suspecter: NodeId,
}

impl Member {
    /// The precedence key: a record replaces another iff its key is greater.
    pub fn key(&self) -> u64 {
        match self.status {
            Status::Left => u64::MAX,
            s => u64::from(self.incarnation) * 3 + s as u64,
        }
    }
}

impl SyncRecord for Member {
    fn fingerprint(&self, id: NodeId) -> u32 {
        fingerprint(id, &[self.key()])
    }
    fn encoded_len(&self) -> usize {
        8 + 4 + 1 + addr_len(&self.addr) + if self.status == Status::Suspect { 8 } else { 0 }
    }
    fn encode(&self, id: NodeId, out: &mut Vec<u8>) {
        out.extend_from_slice(&id.0.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.push(self.status as u8);
        put_addr(out, &self.addr);
        if self.status == Status::Suspect {
            out.extend_from_slice(&self.suspecter.0.to_be_bytes());
        }
    }
}

fn decode_member(r: &mut Reader<'_>) -> Result<(NodeId, Member), WireError> {
    let id = NodeId(r.u64()?);
    let incarnation = r.u32()?;
    let status = Status::from_u8(r.u8()?)?;
    let addr = r.addr()?;
    let suspecter = if status == Status::Suspect {
        NodeId(r.u64()?)
    } else {
        NodeId(0)
    };
    Ok((
        id,
        Member {
            addr,
            incarnation,
            status,
            suspecter,
        },
    ))
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
}

/// Membership settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// Addresses to ping until some member is known.
    pub seeds: Vec<SocketAddr>,
    /// Wait for a direct ack.
    pub probe_timeout: Duration,
    /// Wait for an indirect ack after sending ping-reqs.
    pub indirect_timeout: Duration,
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
    /// Most members (down ones included) kept; further nodes are counted and ignored.
    pub members_max: usize,
    /// Lifeguard: local health multiplier, dynamic suspicion, stall detection.
    pub lifeguard: bool,
    /// Highest local health score.
    pub lhm_max: u32,
    /// Ping one down member every this many rounds (0 = never).
    pub reconnect_every: u32,
    /// Rounds spent spreading our `left` record after [`Membership::leave`].
    pub leave_rounds: u32,
}

impl Default for MembershipConfig {
    fn default() -> MembershipConfig {
        MembershipConfig {
            seeds: Vec::new(),
            probe_timeout: Duration::from_millis(50),
            indirect_timeout: Duration::from_millis(100),
            indirect_probes: 3,
            suspicion_mult: 8.0,
            suspicion_max_mult: 4.0,
            suspicion_confirmations: 3,
            retransmit_mult: 4,
            piggyback_max: 8,
            broadcast_queue_max: 1024,
            members_max: 16_384,
            lifeguard: true,
            lhm_max: 8,
            reconnect_every: 5,
            leave_rounds: 3,
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
    /// Ping-reqs relayed for others.
    pub ping_reqs_relayed: u64,
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
    /// Members ignored because the table was full.
    pub members_overflow: u64,
    /// Control messages dropped (per-peer queue, probe or relay table full).
    pub control_overflow: u64,
    /// Events dropped from the full event queue.
    pub events_overflow: u64,
    /// Anti-entropy counters.
    pub sync: SyncStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctrl {
    Ping(u32),
    Ack(u32),
    PingReq(u32, NodeId, SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Direct,
    Indirect,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    target: NodeId,
    addr: SocketAddr,
    incarnation: u32,
    deadline: Instant,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    origin: SocketAddr,
    origin_seq: u32,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Suspicion {
    started: Instant,
    deadline: Instant,
    confirmers: BTreeSet<NodeId>,
}

const PROBES_MAX: usize = 16;
const RELAYS_MAX: usize = 64;
const CTRL_PEERS_MAX: usize = 256;
const CTRL_PER_PEER_MAX: usize = 8;
const EVENTS_MAX: usize = 4096;

/// The SWIM/Lifeguard membership object. See the module documentation.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    my_addr: SocketAddr,
    config: MembershipConfig,
    round: Duration,
    incarnation: u32,
    table: Table<Member>,
    by_addr: BTreeMap<SocketAddr, NodeId>,
    live: usize,
    suspicions: BTreeMap<NodeId, Suspicion>,
    // Piggyback queue: (times sent, newest first, id) ordered; `queued` maps id -> its key.
    queue: BTreeSet<(u32, u64, NodeId)>,
    queued: BTreeMap<NodeId, (u32, u64)>,
    queue_seq: u64,
    probes: BTreeMap<u32, Probe>,
    relays: BTreeMap<u32, Relay>,
    ctrl: BTreeMap<SocketAddr, Vec<Ctrl>>,
    seq: u32,
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
        mut rng: Prng,
    ) -> Membership {
        let mut table = Table::default();
        table.insert(
            me,
            Member {
                addr: my_addr,
                incarnation: 0,
                status: Status::Alive,
                suspecter: NodeId(0),
            },
        );
        let syncer = Syncer::new(rng.fork(), CTRL_PEERS_MAX);
        Membership {
            me,
            my_addr,
            config,
            round,
            incarnation: 0,
            table,
            by_addr: BTreeMap::from([(my_addr, me)]),
            live: 1,
            suspicions: BTreeMap::new(),
            queue: BTreeSet::new(),
            queued: BTreeMap::new(),
            queue_seq: 0,
            probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            ctrl: BTreeMap::new(),
            seq: 0,
            lhm: 0,
            rounds: 0,
            left_at_round: None,
            expected_wakeup: None,
            syncer,
            rng,
            events: VecDeque::new(),
            stats: MembershipStats::default(),
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
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.table.get(id)
    }

    /// Every known node (ourselves and down/left ones included), in a fixed pseudo-random
    /// order.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &Member)> {
        self.table.iter()
    }

    /// Number of live (alive or suspect) members, ourselves included.
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// Live members other than ourselves: the peer list the runtime selects from.
    pub fn peers(&self) -> Vec<Peer> {
        if self.left_at_round.is_some() {
            return Vec::new();
        }
        self.table
            .iter()
            .filter(|(id, m)| *id != self.me && m.status.is_live())
            .map(|(id, m)| Peer {
                id: Some(id),
                addr: m.addr,
            })
            .collect()
    }

    /// The node at `addr`, if it is a known member.
    pub fn id_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.by_addr.get(&addr).copied()
    }

    /// Current Lifeguard local health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.lhm
    }

    /// The factor by which Lifeguard stretches timeouts and the round interval.
    pub fn health_multiplier(&self) -> u32 {
        1 + self.lhm
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
        self.lhm = self.config.lhm_max;
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
        let rec = Member {
            addr: self.my_addr,
            incarnation: self.incarnation,
            status,
            suspecter: NodeId(0),
        };
        let was_live = self.table.get(self.me).is_some_and(|m| m.status.is_live());
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
        let max = min.mul_f64(self.config.suspicion_max_mult.max(1.0));
        let k = f64::from(self.config.suspicion_confirmations.max(1));
        let frac = ((confirmations as f64) + 1.0).ln() / (k + 1.0).ln();
        let t = max.as_secs_f64() - (max - min).as_secs_f64() * frac.min(1.0);
        Duration::from_secs_f64(t.max(min.as_secs_f64()))
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
    }

    fn push_ctrl(&mut self, to: SocketAddr, c: Ctrl, out: &mut Outbox<'_>) {
        if !self.ctrl.contains_key(&to) && self.ctrl.len() >= CTRL_PEERS_MAX {
            self.stats.control_overflow += 1;
            return;
        }
        let q = self.ctrl.entry(to).or_default();
        if q.len() >= CTRL_PER_PEER_MAX {
            self.stats.control_overflow += 1;
            return;
        }
        q.push(c);
        out.send_to(to);
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Applies a record heard from the network (or our own verdict).
    fn apply(&mut self, now: Instant, id: NodeId, rec: Member) {
        if id == self.me {
            if self.left_at_round.is_some() {
                return;
            }
            let mine = self.table.get(self.me).copied();
            if matches!(rec.status, Status::Suspect | Status::Down)
                && mine.is_some_and(|m| rec.key() >= m.key())
            {
                self.incarnation = rec.incarnation.saturating_add(1);
                self.stats.refutations += 1;
                if self.config.lifeguard {
                    self.lhm = (self.lhm + 1).min(self.config.lhm_max);
                }
                self.set_self(Status::Alive);
            }
            return;
        }
        let old = self.table.get(id).copied();
        match old {
            None => {
                if self.table.len() >= self.config.members_max {
                    self.stats.members_overflow += 1;
                    return;
                }
                self.table.insert(id, rec);
                self.by_addr.insert(rec.addr, id);
                if rec.status.is_live() {
                    self.live += 1;
                    self.emit(MembershipEvent::MemberUp { id, addr: rec.addr });
                }
                if rec.status == Status::Suspect {
                    self.start_suspicion(now, id, rec);
                }
                self.enqueue(id);
            }
            Some(old) if rec.key() > old.key() => {
                self.table.insert(id, rec);
                match (old.status.is_live(), rec.status.is_live()) {
                    (true, false) => self.live -= 1,
                    (false, true) => self.live += 1,
                    _ => {}
                }
                if old.status == Status::Suspect && rec.status != Status::Suspect {
                    self.suspicions.remove(&id);
                }
                match rec.status {
                    Status::Alive if old.status.is_live() => {
                        if old.status == Status::Suspect {
                            self.emit(MembershipEvent::MemberAlive {
                                id,
                                incarnation: rec.incarnation,
                            });
                        }
                    }
                    Status::Alive => self.emit(MembershipEvent::MemberUp { id, addr: rec.addr }),
                    Status::Suspect => {
                        if !old.status.is_live() {
                            self.emit(MembershipEvent::MemberUp { id, addr: rec.addr });
                        }
                        self.start_suspicion(now, id, rec);
                    }
                    Status::Down => self.emit(MembershipEvent::MemberDown { id }),
                    Status::Left => self.emit(MembershipEvent::MemberLeft { id }),
                }
                self.enqueue(id);
            }
            Some(old)
                if rec.status == Status::Suspect
                    && old.status == Status::Suspect
                    && rec.key() == old.key() =>
            {
                // Lifeguard: an independent confirmation shortens the timer.
                let mut new_deadline = None;
                if let Some(s) = self.suspicions.get(&id) {
                    if !s.confirmers.contains(&rec.suspecter)
                        && s.confirmers.len() <= self.config.suspicion_confirmations as usize
                    {
                        let c = s.confirmers.len();
                        new_deadline = Some(s.started + self.suspicion_timeout(c));
                    }
                }
                if let (Some(d), Some(s)) = (new_deadline, self.suspicions.get_mut(&id)) {
                    s.confirmers.insert(rec.suspecter);
                    s.deadline = d;
                    // Re-broadcast naming the new suspecter, so others count it too (the
                    // suspecter is not part of the fingerprint: digests are unaffected).
                    self.table.update(id, |m| m.suspecter = rec.suspecter);
                    self.enqueue(id);
                }
            }
            Some(_) => {}
        }
    }

    fn start_suspicion(&mut self, now: Instant, id: NodeId, rec: Member) {
        let timeout = self.suspicion_timeout(0);
        let mut confirmers = BTreeSet::new();
        confirmers.insert(rec.suspecter);
        self.suspicions.insert(
            id,
            Suspicion {
                started: now,
                deadline: now + timeout,
                confirmers,
            },
        );
        self.emit(MembershipEvent::MemberSuspect {
            id,
            incarnation: rec.incarnation,
        });
    }

    fn suspect(&mut self, now: Instant, id: NodeId, incarnation: u32) {
        let Some(m) = self.table.get(id).copied() else {
            return;
        };
        if m.incarnation != incarnation || !m.status.is_live() {
            return;
        }
        if m.status == Status::Suspect
            && self
                .suspicions
                .get(&id)
                .is_none_or(|s| s.confirmers.contains(&self.me))
        {
            return;
        }
        // A suspect we failed to reach too: our suspicion is a Lifeguard confirmation.
        self.stats.suspicions_raised += 1;
        let rec = Member {
            status: Status::Suspect,
            suspecter: self.me,
            ..m
        };
        self.apply(now, id, rec);
    }

    fn write_liveness(&mut self, to: &Peer, budget: usize, out: &mut Vec<u8>) {
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
                Ctrl::PingReq(s, id, addr) => {
                    out.push(3);
                    out.extend_from_slice(&s.to_be_bytes());
                    out.extend_from_slice(&id.0.to_be_bytes());
                    put_addr(out, &addr);
                }
            }
            if out.len() - start + 1 > budget {
                out.truncate(before);
                self.stats.control_overflow += 1;
                continue;
            }
            n += 1;
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
                .is_some_and(|m| matches!(m.status, Status::Suspect | Status::Down))
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
            let Some(m) = self.table.get(id).copied() else {
                continue;
            };
            if out.len() - start + m.encoded_len() > budget {
                break;
            }
            m.encode(id, out);
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
            let rec = Member {
                addr: from.addr,
                incarnation: inc,
                status,
                suspecter: NodeId(0),
            };
            self.apply(now, sender, rec);
        }
        let n = r.u8()?;
        for _ in 0..n {
            match r.u8()? {
                1 => {
                    let s = r.u32()?;
                    if self.left_at_round.is_none() {
                        self.push_ctrl(from.addr, Ctrl::Ack(s), out);
                    }
                }
                2 => {
                    let s = r.u32()?;
                    if let Some(p) = self.probes.remove(&s) {
                        self.stats.probes_acked += 1;
                        if p.phase == Phase::Direct {
                            self.lhm = self.lhm.saturating_sub(1);
                        }
                    } else if let Some(relay) = self.relays.remove(&s) {
                        self.push_ctrl(relay.origin, Ctrl::Ack(relay.origin_seq), out);
                    }
                }
                3 => {
                    let s = r.u32()?;
                    let _target = NodeId(r.u64()?);
                    let addr = r.addr()?;
                    if self.relays.len() >= RELAYS_MAX {
                        self.stats.control_overflow += 1;
                        continue;
                    }
                    let mine = self.next_seq();
                    let deadline = now + self.config.probe_timeout + self.config.indirect_timeout;
                    self.relays.insert(
                        mine,
                        Relay {
                            origin: from.addr,
                            origin_seq: s,
                            deadline,
                        },
                    );
                    self.stats.ping_reqs_relayed += 1;
                    self.push_ctrl(addr, Ctrl::Ping(mine), out);
                }
                _ => return Err(WireError::Malformed),
            }
        }
        let u = r.u8()?;
        for _ in 0..u {
            let (id, rec) = decode_member(&mut r)?;
            self.apply(now, id, rec);
        }
        Ok(())
    }

    /// Panics if the table, counts, queues or timers are inconsistent.
    pub fn check_invariants(&self) {
        self.table.check_invariants();
        self.syncer.check_invariants();
        let live = self
            .table
            .iter()
            .filter(|(_, m)| m.status.is_live())
            .count();
        assert_eq!(live, self.live, "live count drifted");
        assert_eq!(self.queue.len(), self.queued.len());
        assert!(self.queue.len() <= self.config.broadcast_queue_max);
        assert!(self.table.len() <= self.config.members_max.max(1));
        assert!(self.probes.len() <= PROBES_MAX);
        assert!(self.relays.len() <= RELAYS_MAX);
        assert!(self.ctrl.len() <= CTRL_PEERS_MAX);
        assert!(self.events.len() <= EVENTS_MAX);
        assert!(self.lhm <= self.config.lhm_max);
        for id in self.suspicions.keys() {
            assert_eq!(
                self.table.get(*id).map(|m| m.status),
                Some(Status::Suspect),
                "suspicion timer for a non-suspect"
            );
        }
        assert_eq!(
            self.table.get(self.me).map(|m| m.incarnation),
            Some(self.incarnation)
        );
    }
}

impl GossipObject for Membership {
    fn tag(&self) -> u8 {
        MEMBERSHIP_TAG
    }

    fn name(&self) -> &'static str {
        "membership"
    }

    fn on_round(&mut self, _now: Instant, out: &mut Outbox<'_>) {
        self.rounds += 1;
        if self.is_gone() {
            return;
        }
        if let Some(r) = self.left_at_round {
            // Spread the leave directly to a few members.
            if self.rounds <= r + u64::from(self.config.leave_rounds) {
                let peers: Vec<Peer> = self
                    .table
                    .iter()
                    .filter(|(id, m)| *id != self.me && m.status.is_live())
                    .map(|(id, m)| Peer {
                        id: Some(id),
                        addr: m.addr,
                    })
                    .collect();
                for _ in 0..self.config.indirect_probes.min(peers.len()) {
                    let p = peers[self.rng.below(peers.len() as u64) as usize];
                    out.send_to(p.addr);
                }
            }
            return;
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
                let seq = self.next_seq();
                self.push_ctrl(s, Ctrl::Ping(seq), out);
                self.syncer.start(s);
            }
        }
        let every = u64::from(self.config.reconnect_every);
        if every > 0 && self.rounds % every == 0 {
            let down: Vec<SocketAddr> = self
                .table
                .iter()
                .filter(|(_, m)| m.status == Status::Down)
                .map(|(_, m)| m.addr)
                .collect();
            if !down.is_empty() {
                let a = down[self.rng.below(down.len() as u64) as usize];
                let seq = self.next_seq();
                self.push_ctrl(a, Ctrl::Ping(seq), out);
            }
        }
    }

    fn gossip_with(&mut self, now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        if self.left_at_round.is_some() {
            return;
        }
        let Some(id) = peer.id else { return };
        let Some(m) = self.table.get(id).copied() else {
            return;
        };
        let seq = self.next_seq();
        if self.probes.len() < PROBES_MAX {
            self.stats.probes += 1;
            let deadline = now + self.config.probe_timeout * self.health_multiplier();
            self.probes.insert(
                seq,
                Probe {
                    target: id,
                    addr: m.addr,
                    incarnation: m.incarnation,
                    deadline,
                    phase: Phase::Direct,
                },
            );
        } else {
            self.stats.control_overflow += 1;
        }
        self.push_ctrl(peer.addr, Ctrl::Ping(seq), out);
        self.syncer.start(peer.addr);
    }

    fn write(
        &mut self,
        _now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        match priority {
            Priority::Liveness => {
                if budget >= 7 {
                    self.write_liveness(to, budget, out);
                }
            }
            Priority::Bulk => self.syncer.write(to.addr, &self.table, budget, out),
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
                let bulk = Syncer::parse(payload)?;
                let mut r = bulk.records.clone();
                for _ in 0..bulk.count {
                    let (id, rec) = decode_member(&mut r)?;
                    self.apply(now, id, rec);
                }
                if self.left_at_round.is_none()
                    && self
                        .syncer
                        .received(from.addr, bulk.digest, bulk.reply_wanted, &self.table)
                {
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
        for seq in due {
            let Some(mut p) = self.probes.remove(&seq) else {
                continue;
            };
            match p.phase {
                Phase::Direct => {
                    let helpers: Vec<SocketAddr> = self
                        .table
                        .iter()
                        .filter(|(id, m)| {
                            *id != self.me && *id != p.target && m.status == Status::Alive
                        })
                        .map(|(_, m)| m.addr)
                        .collect();
                    let k = self.config.indirect_probes.min(helpers.len());
                    let mut chosen: Vec<SocketAddr> = Vec::new();
                    while chosen.len() < k {
                        let a = helpers[self.rng.below(helpers.len() as u64) as usize];
                        if !chosen.contains(&a) {
                            chosen.push(a);
                        }
                    }
                    for a in chosen {
                        self.stats.ping_reqs_sent += 1;
                        self.push_ctrl(a, Ctrl::PingReq(seq, p.target, p.addr), out);
                    }
                    // SWIM: keep listening for the direct ack too (ping again alongside).
                    self.push_ctrl(p.addr, Ctrl::Ping(seq), out);
                    p.phase = Phase::Indirect;
                    p.deadline = now + self.config.indirect_timeout * self.health_multiplier();
                    self.probes.insert(seq, p);
                }
                Phase::Indirect => {
                    self.stats.probes_failed += 1;
                    if self.config.lifeguard {
                        self.lhm = (self.lhm + 1).min(self.config.lhm_max);
                    }
                    self.suspect(now, p.target, p.incarnation);
                }
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
            if let Some(m) = self.table.get(id).copied() {
                self.stats.declared_down += 1;
                let rec = Member {
                    status: Status::Down,
                    suspecter: NodeId(0),
                    ..m
                };
                self.apply(now, id, rec);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let p = self.probes.values().map(|p| p.deadline).min();
        let s = self.suspicions.values().map(|s| s.deadline).min();
        let r = self.relays.values().map(|r| r.deadline).min();
        [p, s, r].into_iter().flatten().min()
    }

    fn check_invariants(&self) {
        Membership::check_invariants(self);
    }
}
