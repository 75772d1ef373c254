//! QuickSilver's regional recovery protocol for one region view (seed `002_*`, "QuickSilver";
//! design section 4), as a sans-IO state machine.
//!
//! * **View and partitions**: members sorted by id; partition of the member at index `i` is
//!   `i mod P`, `P = max(1, N / partition_size)` (interleaved partitions of ~5). Each
//!   partition's lowest id leads it; the region leader is the lowest id overall (partition 0's
//!   leader).
//! * **Two walks** ([`Scope`]): a *partition token* walks one partition's members, starting and
//!   ending at its leader; the *region token* walks the ring of partition leaders, starting
//!   and ending at the region leader. When the region token reaches a partition leader, the
//!   leader merges the result of its partition's last completed round into it, starts its
//!   partition's next round (with the region's cut-off, cleanup and proven prefixes), and
//!   passes the region token on at once: partitions work in parallel, so a round takes about
//!   one partition's walk plus the leaders' ring, not a walk over all N members.
//! * **Caretakers**: packet `s` of a sender is kept by partition `(s - 1) mod P` only, until
//!   the cleanup point passes it.
//! * **Records**: one per active sender stream ([`TokenRecord`]): highest heard, NAK cut-off
//!   (last round's highest), lowest contiguous prefix and who holds it, cleanup and stable
//!   points, per-partition prefixes, what a partition's members all lack among the packets it
//!   takes care of (`lack`, intersected along the partition walk) and what whole caretaker
//!   partitions lack (`naks`, for the sender). A member holding a stream the token does not
//!   list adds its record, so a new leader learns every stream from its members.
//! * **Repair order**: a member missing `s` (at or before the cut-off) pulls it from a
//!   neighbour of its own partition when it is a caretaker of `s`, else from the caretaker
//!   partition (one member when that partition's proven prefix covers `s`, two while it may
//!   not); the sender re-multicasts only what a whole caretaker partition cannot serve.
//! * **Rates**: each member reports how fast its contiguous prefix of each stream advanced
//!   since its previous visit; the region leader tells the sender the slowest member's rate.
//! * **Stability**: when the region token returns, the leader sends each sender a
//!   [`SenderAck`] (region-wide prefix, highest, naks); the next round carries the prefix as
//!   cleanup point.
//! * **Liveness**: each hop is acknowledged ([`TokenAck`]) and retransmitted; a hop that
//!   stays unanswered after `hop_retries` is *skipped* (the token goes on to the next member
//!   and records the skip), so a crashed member stalls stability for a few hop timeouts, not
//!   until failure detection: skipped members do not hold the sender's window back, but the
//!   caches keep what they may lack (cleanup holds; the cache may evict it when full) until
//!   the view drops them, and so does the sender (the acknowledgement's `floor`), since a
//!   skipped partition may be the caretaker of what it lacks. Hop and round timeouts follow
//!   measured round-trip and round times. Rounds that do not come back are regenerated;
//!   round numbers per walk plus the view hash drop stale tokens. A member no walk visits
//!   for long (it cannot hear the member before it) asks for its holes itself
//!   ([`RingConfig::unvisited_after`]); after a view change re-partitions the region, a
//!   member also asks an old caretaker ([`Ring::set_view`]).
//! * **Slow receivers**: a member that holds the stream's lowest prefix far behind for a while
//!   is reported ([`SlowReceiver`]); by default the sender's window keeps everyone reliable
//!   (the sender slows to it). With [`RingConfig::isolate_slow`] a member that finds itself
//!   that far behind for that long isolates itself from the stream: it stops holding back
//!   stability, gives up what the region has cleaned as gaps, and rejoins once it has caught
//!   up, so one bad host cannot stall a cluster.
//!
//! Input in, actions out: the owner (the node core) passes a read-only snapshot of its
//! streams ([`Local`]: each receive window's [`StreamProgress`], its own stream, the senders
//! it closed, its caretaker cache) into [`Ring::handle_token`] and [`Ring::handle_timeout`];
//! the ring never reaches into the node. What a visit decides for the node's windows and
//! cache comes out as [`RingAction::Update`], next to the tokens, acknowledgements and
//! requests the owner encodes and sends. The per-record arithmetic is pure and lives in
//! [`crate::merge`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use qs_transport::wire::{
    RateAggregate, RepairRequest, Scope, SenderAck, SeqRange, Token, TokenAck, TokenRecord,
    HEADER_LEN, MAX_PARTITIONS,
};
use qs_transport::{Instant, NodeId, RegionId, Seq};

use crate::cache::Cache;
use crate::merge::{
    effective_progress, merge_record, repair_targets, Position, Progress, StreamProgress,
    StreamUpdate, VisitInput,
};
use crate::ranges::RangeSet;

/// Senders whose cut-off at the first visit after a view change is remembered, at most.
const PREV_CUTOFFS_MAX: usize = 4096;

/// Earlier views whose caretakers a member still asks for packets sent before a change.
const PREV_VIEWS_MAX: usize = 4;

/// Settings of a [`Ring`].
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Time between rounds while something is unstable.
    pub interval: Duration,
    /// Time between rounds while everything is stable (tail-loss backstop).
    pub idle_interval: Duration,
    /// Shortest wait for a hop's acknowledgement before retransmitting (the wait follows
    /// the measured hop round trip above it).
    pub hop_timeout: Duration,
    /// Retransmissions of one hop before the member is skipped for the round.
    pub hop_retries: u32,
    /// Shortest wait for a round to come back before it is regenerated (the wait follows the
    /// measured round time above it).
    pub round_timeout: Duration,
    /// Target members per partition.
    pub partition_size: usize,
    /// Largest token datagram (header included); records and ranges are cut to fit.
    pub max_token_bytes: usize,
    /// Most sequence numbers one member requests per sender per token visit.
    pub max_request: usize,
    /// A member this many packets behind a stream's highest is lagging.
    pub slow_lag: u32,
    /// How long lagging lasts before it is reported.
    pub slow_after: Duration,
    /// Opt-in policy: a member lagging `slow_lag` for `slow_after` isolates itself (loses
    /// messages, reported as gaps) instead of slowing the senders.
    pub isolate_slow: bool,
    /// Longest the leader holds a new stream's first stability back while its sender's data
    /// says it sees the region's members otherwise than the leader does (gossip has not
    /// converged: typically a subscriber the sender waited for and the ring does not know
    /// yet). Within this time nothing the sender sent is freed or skipped over a member the
    /// ring has not admitted yet; past it the ring goes on with its own view.
    pub view_wait: Duration,
    /// Shortest time a member with holes waits for a token visit before it asks for them
    /// itself (the wait follows four times its measured gap between visits above it). A
    /// member the walks skip every round — one that cannot hear the member before it, a
    /// lasting one-way failure — is never told to repair: past this it asks another member
    /// (rotating over the view) and the sender directly, every quarter of the wait, up to
    /// `max_request` packets per stream each time, until a token visits it again.
    pub unvisited_after: Duration,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            interval: Duration::from_millis(2),
            idle_interval: Duration::from_millis(200),
            hop_timeout: Duration::from_millis(4),
            hop_retries: 8,
            round_timeout: Duration::from_millis(200),
            partition_size: 5,
            max_token_bytes: 1472,
            max_request: 512,
            slow_lag: 4096,
            slow_after: Duration::from_secs(2),
            isolate_slow: false,
            view_wait: Duration::from_secs(1),
            unvisited_after: Duration::from_secs(1),
        }
    }
}

/// A region view: its members and how they are partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Members sorted by id.
    members: Vec<NodeId>,
    /// Members per partition, in id order.
    partitions: Vec<Vec<NodeId>>,
    /// The ring of partition leaders (the region token's walk): each partition's lowest id,
    /// in partition order; the first is the region leader.
    leaders: Vec<NodeId>,
    hash: u64,
}

impl View {
    /// The view of `members` (any order, duplicates ignored) with partitions of about
    /// `partition_size` (at most [`MAX_PARTITIONS`]).
    pub fn new(members: impl IntoIterator<Item = NodeId>, partition_size: usize) -> View {
        let members: Vec<NodeId> = members
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let p = (members.len() / partition_size.max(1)).clamp(1, MAX_PARTITIONS);
        let mut partitions = vec![Vec::new(); p];
        for (i, m) in members.iter().enumerate() {
            partitions[i % p].push(*m);
        }
        let leaders: Vec<NodeId> = partitions
            .iter()
            .filter_map(|p| p.first().copied())
            .collect();
        let hash = qs_transport::wire::members_hash(&members);
        View {
            members,
            partitions,
            leaders,
            hash,
        }
    }

    /// Members sorted by id.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The members of partition `q`, in id order (empty if there is no such partition).
    pub fn partition(&self, q: usize) -> &[NodeId] {
        self.partitions.get(q).map_or(&[], Vec::as_slice)
    }

    /// The partition `id` belongs to.
    pub fn partition_of(&self, id: NodeId) -> Option<usize> {
        let i = self.members.binary_search(&id).ok()?;
        Some(i % self.partitions.len())
    }

    /// The partition that caches packet `seq` of every stream.
    pub fn caretaker(&self, seq: Seq) -> usize {
        (seq.0.wrapping_sub(1) % self.partitions.len() as u32) as usize
    }

    /// The leader (lowest id), if the view is not empty.
    pub fn leader(&self) -> Option<NodeId> {
        self.members.first().copied()
    }

    /// The ring of partition leaders, region leader first.
    pub fn leaders(&self) -> &[NodeId] {
        &self.leaders
    }

    /// The members a token of `scope` walks, starter first (empty for a partition that does
    /// not exist).
    pub fn walk(&self, scope: Scope) -> &[NodeId] {
        match scope {
            Scope::Region => &self.leaders,
            Scope::Partition(q) => self.partition(usize::from(q)),
        }
    }

    /// A hash identifying the member list.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The view's tag as senders put it on data packets ([`qs_transport::wire::view_tag`]).
    pub fn tag(&self) -> u16 {
        qs_transport::wire::view_tag(self.hash, self.members.len())
    }
}

/// What the node knows, as the ring needs it at a visit or a timer: a read-only snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    /// The node's receive streams in the ring's region, sorted by sender.
    pub streams: &'a [StreamProgress],
    /// The node's own stream into the region (it sends there) — its epoch and highest packet
    /// — if any went out: that stream needs rounds too (acknowledgements, repairs for the
    /// others).
    pub own: Option<(u64, Seq)>,
    /// Streams this node closed for good (their sender left, failed or restarted), as each
    /// sender and its latest closed epoch, sorted by sender: records of those epochs and
    /// older are dropped.
    pub closed: &'a [(NodeId, u64)],
    /// The node's caretaker cache.
    pub cache: &'a Cache,
    /// Its receive windows' capacity.
    pub window_capacity: usize,
    /// Whether it may create another receive stream.
    pub can_add_stream: bool,
    /// Its application is behind (deliveries wait for it).
    pub app_behind: bool,
    /// Where streams start ([`Seq::FIRST`] unless the cluster starts them elsewhere).
    pub first_seq: Seq,
}

impl Local<'_> {
    fn stream(&self, sender: NodeId) -> Option<&StreamProgress> {
        let i = self
            .streams
            .binary_search_by_key(&sender, |s| s.sender)
            .ok()?;
        Some(&self.streams[i])
    }

    /// Whether `sender`'s stream of `epoch` is not closed here.
    fn is_live(&self, sender: NodeId, epoch: u64) -> bool {
        match self.closed.binary_search_by_key(&sender, |(s, _)| *s) {
            Ok(i) => self.closed[i].1 < epoch,
            Err(_) => true,
        }
    }

    /// Streams here, with epoch and the highest packet known of each (the own included).
    fn senders(&self, me: NodeId) -> impl Iterator<Item = (NodeId, u64, Seq)> + '_ {
        let own = self.own.map(|(e, h)| (me, e, h));
        self.streams
            .iter()
            .filter_map(|s| Some((s.sender, s.epoch, s.window.as_ref()?.highest)))
            .chain(own)
    }
}

/// A member kept a stream's lowest prefix far behind for longer than `slow_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowReceiver {
    /// The stream's sender.
    pub sender: NodeId,
    /// The lagging member.
    pub member: NodeId,
    /// Packets it is behind the stream's highest.
    pub lag: u32,
}

/// What the ring asks its owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingAction {
    /// Bring a receive stream (and the cache) in line with a visit.
    Update(StreamUpdate),
    /// Send a token to a member (unicast, control class).
    Token {
        /// The member.
        to: NodeId,
        /// The token.
        token: Token,
    },
    /// Acknowledge a token hop to the previous holder.
    TokenAck {
        /// The previous holder.
        to: NodeId,
        /// The acknowledgement.
        ack: TokenAck,
    },
    /// Ask a peer for packets.
    Request {
        /// The peer.
        to: NodeId,
        /// What to ask for.
        request: RepairRequest,
    },
    /// Tell a sender what is stable and what to re-multicast (possibly this node itself).
    Ack {
        /// The sender.
        to: NodeId,
        /// The acknowledgement.
        ack: SenderAck,
    },
    /// Report a slow receiver.
    Slow(SlowReceiver),
    /// This node isolated itself from a sender's stream (opt-in policy): it no longer holds
    /// back stability and loses what it cannot keep up with.
    Isolated {
        /// The stream's sender.
        sender: NodeId,
        /// Packets it was behind.
        lag: u32,
    },
    /// This node caught up with a stream it had isolated itself from.
    Rejoined {
        /// The stream's sender.
        sender: NodeId,
    },
    /// A member sent a token of another view: the two disagree on the region's members (the
    /// owner should reconcile, e.g. by exchanging membership with it).
    ViewMismatch {
        /// The member.
        from: NodeId,
    },
}

/// Counters of a [`Ring`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RingStats {
    /// Region rounds this node started as leader.
    pub rounds_started: u64,
    /// Region rounds that came back to this node as leader.
    pub rounds_completed: u64,
    /// Region rounds the leader gave up and regenerated.
    pub rounds_regenerated: u64,
    /// Partition rounds this node started as its partition's leader.
    pub partition_rounds_started: u64,
    /// Partition rounds that came back.
    pub partition_rounds_completed: u64,
    /// Partition rounds given up and regenerated.
    pub partition_rounds_regenerated: u64,
    /// Tokens this node processed (as any member).
    pub tokens_processed: u64,
    /// Token hops retransmitted.
    pub hop_retransmits: u64,
    /// Members skipped after all retransmissions of a hop.
    pub hops_skipped: u64,
    /// Token hops back to a walk's starter given up after all retries.
    pub hop_failures: u64,
    /// Tokens dropped: stale round, other view, not addressed to this node.
    pub tokens_ignored: u64,
    /// Tokens of another view (members disagree on the region's members).
    pub view_mismatches: u64,
    /// Region rounds (per stream) whose stability the leader held back because the stream's
    /// sender saw the region's members otherwise (see [`RingConfig::view_wait`]).
    pub view_holds: u64,
    /// Region rounds (per stream) whose stability the leader held before a handover marker
    /// because the node that marker admits is not in this view yet (see
    /// [`Ring::hold_for_joiner`]).
    pub join_holds: u64,
    /// Records this node added for streams the token did not list.
    pub records_added: u64,
    /// Sequence numbers requested from peers.
    pub requested: u64,
    /// Sequence numbers the leader asked senders to re-multicast.
    pub naked: u64,
    /// Slow-receiver reports.
    pub slow_reports: u64,
    /// Times this node isolated itself from a stream.
    pub isolations: u64,
    /// Smoothed region round time, microseconds (gauge; 0 before the first).
    pub round_time_us: u64,
    /// Smoothed hop round trip, microseconds (gauge).
    pub hop_rtt_us: u64,
    /// Times this member, not visited by a token for longer than it should have been and
    /// holding holes, asked for them itself (see [`RingConfig::unvisited_after`]); a member
    /// the walks visit never does.
    pub unvisited_fallbacks: u64,
    /// Sequence numbers those fallbacks asked for (counted once per packet, not per peer).
    pub unvisited_requested: u64,
    /// Sequence numbers also asked of a caretaker of the previous view (see
    /// [`Ring::set_view`]).
    pub old_caretaker_requests: u64,
}

/// The view a sender's data says it sees the region with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SenderView {
    epoch: u64,
    tag: u16,
    since: Instant,
}

/// A stream's stability held before a handover marker until the node it admits is in the
/// view (see [`Ring::hold_for_joiner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JoinHold {
    epoch: u64,
    /// The marker's sequence number: stability stays before it.
    marker: Seq,
    member: NodeId,
    until: Instant,
}

/// Most join holds kept (one per sender).
const JOIN_HOLDS_MAX: usize = 4096;

#[derive(Debug, Clone)]
struct Held {
    token: Token,
    to: NodeId,
    sent_at: Instant,
    retry_at: Instant,
    retries_left: u32,
    retransmitted: bool,
}

#[derive(Debug, Clone)]
struct Lagging {
    member: NodeId,
    since: Instant,
    reported: bool,
}

/// A smoothed duration (RFC 6298-style: 7/8 old, 1/8 new).
#[derive(Debug, Clone, Copy, Default)]
struct Smoothed(Option<Duration>);

impl Smoothed {
    fn sample(&mut self, d: Duration) {
        self.0 = Some(match self.0 {
            None => d,
            Some(s) => (s * 7 + d) / 8,
        });
    }

    /// `mult` times the smoothed value plus `add`, at least `min`, at most `max`.
    fn timeout(&self, min: Duration, mult: u32, add: Duration, max: Duration) -> Duration {
        self.0
            .map_or(min, |s| (s * mult + add).clamp(min, max.max(min)))
    }

    fn micros(&self) -> u64 {
        self.0.map_or(0, |d| d.as_micros() as u64)
    }
}

/// A stream's epoch and, per partition, its last complete prefix (`None`: none yet).
type Floors = (u64, Vec<Option<Option<Seq>>>);

/// A partition round this node leads: the round and when it started.
#[derive(Debug, Clone, Copy)]
struct PartRound {
    round: u32,
    started: Instant,
}

/// The recovery protocol of one region, for this node. See the module docs.
#[derive(Debug, Clone)]
pub struct Ring {
    config: RingConfig,
    me: NodeId,
    region: RegionId,
    view: View,
    /// Per walk: the last round processed in this view and when (drops duplicates and stale
    /// rounds; a starter that restarted is accepted after a quiet spell).
    seen: BTreeMap<Scope, (u32, Instant)>,
    /// Region leader: per sender, the state the next round starts from.
    basis: BTreeMap<NodeId, TokenRecord>,
    /// Region leader: the round counter, the round in flight and when it started.
    round: u32,
    in_flight: Option<(u32, Instant)>,
    next_round_at: Instant,
    last_start: Instant,
    /// Data arrived since the current round started (leader: run another round).
    dirty: bool,
    /// Partition leader: its round counter, the round in flight, and the records of the last
    /// completed round (merged into the next region token that passes).
    part_round: u32,
    part_in_flight: Option<PartRound>,
    part_result: Option<Vec<TokenRecord>>,
    /// Region leader: per sender, the stream's epoch and per partition its last prefix that
    /// no skip cut short (the cleanup bound).
    floors: BTreeMap<NodeId, Floors>,
    /// Tokens this node passed on and waits to see acknowledged, per walk.
    held: BTreeMap<Scope, Held>,
    hop_rtt: Smoothed,
    round_time: Smoothed,
    part_time: Smoothed,
    lagging: BTreeMap<NodeId, Lagging>,
    /// Per sender: since when this node itself lags (isolation policy).
    self_lag: BTreeMap<NodeId, Instant>,
    /// Senders whose streams this node isolated itself from, with the earliest time it may
    /// rejoin (the wait doubles with every isolation, up to 64 × `slow_after`).
    isolated: BTreeMap<NodeId, Instant>,
    /// Per sender: this node's prefix and the time at its previous visit (receive rate).
    last_prefix: BTreeMap<NodeId, (Seq, Instant)>,
    /// Per sender: the view tag its latest data carried, for which epoch, and since when
    /// (one entry per sender with a stream here: bounded like the streams).
    sender_views: BTreeMap<NodeId, SenderView>,
    /// Per sender: the handover marker whose joiner this view lacks (stability waits).
    join_holds: BTreeMap<NodeId, JoinHold>,
    /// When a partition token last visited this node (or its view last changed), the
    /// smoothed gap between visits, and when it next checks whether it was left out (see
    /// [`RingConfig::unvisited_after`]).
    last_visit: Instant,
    /// The views before the latest changes (newest first, at most [`PREV_VIEWS_MAX`]), and
    /// per sender the cut-off of its record at this node's first visit since the latest:
    /// packets up to there were cached by the old views' caretakers (only senders this
    /// member has a stream of, at most [`PREV_CUTOFFS_MAX`]).
    prev_views: VecDeque<View>,
    prev_cutoffs: BTreeMap<NodeId, Seq>,
    /// Per sender: the epoch and the known cleanup point of the last record of its stream a
    /// visit applied here (senders whose records this member applied, at most
    /// [`PREV_CUTOFFS_MAX`]). A leader new to the region learns it when this member adds the
    /// record the token lacks.
    cleaned: BTreeMap<NodeId, (u64, Seq)>,
    visit_gap: Smoothed,
    fallback_at: Instant,
    /// Fallbacks so far since the last visit (rotates the member asked).
    fallback_turn: u32,
    actions: VecDeque<RingAction>,
    stats: RingStats,
}

impl Ring {
    /// The ring of `region` for member `me`, with an empty view until [`Ring::set_view`].
    pub fn new(config: RingConfig, me: NodeId, region: RegionId, now: Instant) -> Ring {
        let fallback_at = now + config.unvisited_after;
        Ring {
            view: View::new([], config.partition_size),
            config,
            me,
            region,
            seen: BTreeMap::new(),
            basis: BTreeMap::new(),
            round: 0,
            in_flight: None,
            next_round_at: now,
            last_start: now,
            dirty: false,
            part_round: 0,
            part_in_flight: None,
            part_result: None,
            floors: BTreeMap::new(),
            held: BTreeMap::new(),
            hop_rtt: Smoothed::default(),
            round_time: Smoothed::default(),
            part_time: Smoothed::default(),
            lagging: BTreeMap::new(),
            self_lag: BTreeMap::new(),
            isolated: BTreeMap::new(),
            last_prefix: BTreeMap::new(),
            sender_views: BTreeMap::new(),
            join_holds: BTreeMap::new(),
            last_visit: now,
            prev_views: VecDeque::new(),
            prev_cutoffs: BTreeMap::new(),
            cleaned: BTreeMap::new(),
            visit_gap: Smoothed::default(),
            fallback_at,
            fallback_turn: 0,
            actions: VecDeque::new(),
            stats: RingStats::default(),
        }
    }

    /// The region.
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Senders this ring keeps records of (for the owner's snapshot of who departed).
    pub fn senders(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.basis.keys().copied()
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        RingStats {
            round_time_us: self.round_time.micros(),
            hop_rtt_us: self.hop_rtt.micros(),
            ..self.stats
        }
    }

    /// Whether this node caches packet `seq` (its partition takes care of it).
    pub fn is_caretaker(&self, seq: Seq) -> bool {
        self.view
            .partition_of(self.me)
            .is_some_and(|p| p == self.view.caretaker(seq))
    }

    /// Re-forms the ring on a new member list. Rounds in flight are abandoned (the leader
    /// starts a new one at once); what the last rounds established (stability, cut-offs) is
    /// kept, so messages unstable in the old view are still recovered in the new one.
    ///
    /// A new member list re-partitions the region (partitions interleave by index), so the
    /// packets the sender sent before the change sit in the caches of their *old*
    /// caretakers, and the sender may have freed them already (a member the walks skipped
    /// does not hold its window back). A member missing such a packet therefore also asks a
    /// caretaker of the previous view for it (one, rotating with the round, while it is
    /// still a member), or it could ask only new caretakers that never cached it.
    pub fn set_view(&mut self, now: Instant, members: impl IntoIterator<Item = NodeId>) {
        let view = View::new(members, self.config.partition_size);
        if view == self.view {
            return;
        }
        let p = view.partitions();
        let old = std::mem::replace(&mut self.view, view);
        if !old.members().is_empty() {
            self.prev_views.push_front(old);
            self.prev_views.truncate(PREV_VIEWS_MAX);
        }
        self.prev_cutoffs.clear();
        if let Some((r, _)) = self.seen.get(&Scope::Region) {
            self.round = self.round.max(*r);
        }
        if let Some((r, _)) = self.seen.get(&Scope::Partition(0)) {
            self.part_round = self.part_round.max(*r);
        }
        self.seen.clear();
        self.held.clear();
        self.in_flight = None;
        self.part_in_flight = None;
        self.part_result = None;
        self.floors.clear();
        self.next_round_at = now;
        // The walks change: whether this node is left out is judged anew.
        self.last_visit = now;
        self.fallback_at = now + self.unvisited_wait();
        self.fallback_turn = 0;
        for rec in self.basis.values_mut() {
            rec.partition_prefix = vec![None; p];
            rec.partition_current = vec![None; p];
        }
    }

    /// A data packet of `sender`'s stream `epoch` carried view tag `tag` (0: none): the
    /// sender saw the region's members so when it sent it. A tag that changed is noted with
    /// the time, so the leader can hold that stream's stability back for a while (see
    /// [`RingConfig::view_wait`]).
    pub fn note_sender_view(&mut self, now: Instant, sender: NodeId, epoch: u64, tag: u16) {
        if tag == 0 || sender == self.me {
            return;
        }
        match self.sender_views.get(&sender) {
            Some(v) if v.epoch > epoch => {}
            Some(v) if v.epoch == epoch && v.tag == tag => {}
            _ => {
                self.sender_views.insert(
                    sender,
                    SenderView {
                        epoch,
                        tag,
                        since: now,
                    },
                );
            }
        }
    }

    /// Whether the leader holds `sender`'s stream of `epoch` back at `now`: its latest data
    /// was sent in another view of the region than this ring's, one with no fewer members
    /// (it may count one this view lacks), and the sender's view changed to that at most
    /// `view_wait` ago. A member the sender dropped first holds nothing back, nor does an
    /// old disagreement (a view change the leader saw first while the sender kept its tag).
    fn view_held(&self, now: Instant, sender: NodeId, epoch: u64) -> bool {
        use qs_transport::wire::view_tag_members;
        let own = self.view.tag();
        self.sender_views.get(&sender).is_some_and(|v| {
            v.epoch == epoch
                && v.tag != own
                && view_tag_members(v.tag) >= view_tag_members(own)
                && now < v.since + self.config.view_wait
        })
    }

    /// `sender`'s stream `epoch` carries, at `marker`, the cut at which its sender started
    /// sending to `member` in this region (a handover marker; the member moved here from
    /// another region). If this view lacks `member`, the leader keeps the stream's stability
    /// (and so the sender's window and the caretakers' caches) before the marker until the
    /// view has it or `view_wait` passed: otherwise a ring that learns of the member late
    /// could free what the member needs from the cut on. One hold per sender, the latest.
    pub fn hold_for_joiner(
        &mut self,
        now: Instant,
        sender: NodeId,
        epoch: u64,
        marker: Seq,
        member: NodeId,
    ) {
        if self.view.members().contains(&member) {
            return;
        }
        if !self.join_holds.contains_key(&sender) && self.join_holds.len() >= JOIN_HOLDS_MAX {
            return;
        }
        self.join_holds.insert(
            sender,
            JoinHold {
                epoch,
                marker,
                member,
                until: now + self.config.view_wait,
            },
        );
    }

    /// Where a join hold keeps `rec`'s stability at `now` (`None`: no hold); drops holds that
    /// are over (the member is in the view, the wait passed, another epoch).
    fn join_held(&mut self, now: Instant, rec: &TokenRecord) -> Option<Seq> {
        let h = *self.join_holds.get(&rec.sender)?;
        if h.epoch != rec.epoch || now >= h.until || self.view.members().contains(&h.member) {
            if h.epoch <= rec.epoch {
                self.join_holds.remove(&rec.sender);
            }
            return None;
        }
        Some(Seq(h.marker.0.wrapping_sub(1)))
    }

    /// Data of this region arrived or was sent: the leader runs another round soon.
    pub fn on_data(&mut self) {
        self.dirty = true;
    }

    /// A sender left or crashed: its record is dropped.
    pub fn forget_sender(&mut self, sender: NodeId) {
        self.basis.remove(&sender);
        self.floors.remove(&sender);
        self.lagging.remove(&sender);
        self.self_lag.remove(&sender);
        self.isolated.remove(&sender);
        self.last_prefix.remove(&sender);
        self.sender_views.remove(&sender);
        self.join_holds.remove(&sender);
        self.prev_cutoffs.remove(&sender);
        self.cleaned.remove(&sender);
    }

    /// Panics if the ring's state is inconsistent (the simulator calls it after every
    /// event).
    pub fn check_invariants(&self) {
        assert!(self.join_holds.len() <= JOIN_HOLDS_MAX);
        let v = &self.view;
        assert!(
            v.members.windows(2).all(|w| w[0] < w[1]),
            "members not sorted"
        );
        let p = (v.members.len() / self.config.partition_size.max(1)).clamp(1, MAX_PARTITIONS);
        assert_eq!(v.partitions(), p, "partition count");
        for (i, m) in v.members.iter().enumerate() {
            assert_eq!(
                v.partition_of(*m),
                Some(i % p),
                "member in the wrong partition"
            );
        }
        let firsts = v.partitions.iter().filter_map(|q| q.first().copied());
        assert!(
            firsts.eq(v.leaders.iter().copied()),
            "leaders are not the partitions' firsts"
        );
        if let Some((round, _)) = self.in_flight {
            assert_eq!(
                v.leader(),
                Some(self.me),
                "a region round in flight at a non-leader"
            );
            assert!(
                !Seq(self.round).is_before(Seq(round)),
                "in flight ahead of the counter"
            );
        }
        if self.part_in_flight.is_some() {
            assert!(
                self.leads_partition().is_some(),
                "a partition round at a non-leader"
            );
        }
        for (scope, h) in &self.held {
            assert_eq!(h.token.view, v.hash(), "holding a token of another view");
            assert_eq!(h.token.scope, *scope, "held under another walk");
            assert!(
                v.walk(*scope).contains(&h.to),
                "holding a hop to a non-member"
            );
            assert!(h.retries_left <= self.config.hop_retries);
        }
        for (s, rec) in &self.basis {
            assert_eq!(rec.sender, *s, "record filed under another sender");
            assert_eq!(
                rec.partition_prefix.len(),
                v.partitions(),
                "record of another view"
            );
            assert_eq!(
                rec.partition_current.len(),
                v.partitions(),
                "record of another view"
            );
        }
        assert!(self.isolated.is_empty() || self.config.isolate_slow);
    }

    /// The next action for the owner.
    pub fn poll_action(&mut self) -> Option<RingAction> {
        self.actions.pop_front()
    }

    /// The partition this node leads, if it leads one.
    fn leads_partition(&self) -> Option<usize> {
        let q = self.view.partition_of(self.me)?;
        (self.view.partition(q).first() == Some(&self.me)).then_some(q)
    }

    fn hop_timeout(&self) -> Duration {
        let min = self.config.hop_timeout;
        self.hop_rtt
            .timeout(min, 2, Duration::from_millis(1), min * 256)
    }

    fn round_timeout(&self) -> Duration {
        let min = self.config.round_timeout;
        self.round_time
            .timeout(min, 4, Duration::ZERO, Duration::from_secs(30))
    }

    fn part_timeout(&self) -> Duration {
        let min = self.config.round_timeout;
        self.part_time
            .timeout(min, 4, Duration::ZERO, Duration::from_secs(30))
    }

    /// How long this member waits for a visit before it asks for its holes itself.
    fn unvisited_wait(&self) -> Duration {
        let min = self.config.unvisited_after;
        self.visit_gap
            .timeout(min, 4, Duration::ZERO, Duration::from_secs(30))
    }

    /// Whether this node walks with others (a lone member visits itself every round).
    fn has_peers(&self) -> bool {
        self.view.members().len() > 1 && self.view.partition_of(self.me).is_some()
    }

    /// When [`Ring::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.values().map(|h| h.retry_at).min();
        let leader = if self.view.leader() == Some(self.me) {
            Some(match self.in_flight {
                Some((_, started)) => started + self.round_timeout(),
                None if self.dirty || self.unstable() => self.next_round_at,
                None => self
                    .next_round_at
                    .max(self.last_start + self.config.idle_interval),
            })
        } else {
            None
        };
        let part = self.part_in_flight.map(|r| r.started + self.part_timeout());
        let fallback = self.has_peers().then_some(self.fallback_at);
        [held, leader, part, fallback].into_iter().flatten().min()
    }

    fn unstable(&self) -> bool {
        self.basis
            .values()
            .any(|r| r.cleanup != r.cutoff || !r.naks.is_empty())
    }

    /// Retransmits unacknowledged hops and skips members that stay silent; as leader,
    /// regenerates lost rounds and starts due ones.
    pub fn handle_timeout(&mut self, now: Instant, local: &Local<'_>) {
        let due: Vec<Scope> = self
            .held
            .iter()
            .filter(|(_, h)| h.retry_at <= now)
            .map(|(s, _)| *s)
            .collect();
        for scope in due {
            self.retry_hop(now, scope);
        }
        if let Some(r) = self.part_in_flight {
            if now >= r.started + self.part_timeout() {
                self.part_in_flight = None;
                self.held.remove(&self.part_scope());
                self.stats.partition_rounds_regenerated += 1;
            }
        }
        if self.has_peers() && now >= self.fallback_at {
            self.fall_back(now, local);
        }
        if self.view.leader() != Some(self.me) {
            return;
        }
        if let Some((_, started)) = self.in_flight {
            if now < started + self.round_timeout() {
                return;
            }
            self.in_flight = None;
            self.held.remove(&Scope::Region);
            self.stats.rounds_regenerated += 1;
        }
        let due = if self.dirty || self.unstable() {
            now >= self.next_round_at
        } else {
            now >= self
                .next_round_at
                .max(self.last_start + self.config.idle_interval)
        };
        if due {
            self.start_round(now, local);
        }
    }

    fn part_scope(&self) -> Scope {
        Scope::Partition(self.view.partition_of(self.me).unwrap_or(0) as u8)
    }

    /// A held hop's wait is over: send it again, or skip the silent member.
    fn retry_hop(&mut self, now: Instant, scope: Scope) {
        let timeout = self.hop_timeout();
        let Some(h) = self.held.get_mut(&scope) else {
            return;
        };
        if h.retries_left > 0 {
            h.retries_left -= 1;
            h.retry_at = now + timeout;
            h.retransmitted = true;
            self.stats.hop_retransmits += 1;
            self.actions.push_back(RingAction::Token {
                to: h.to,
                token: h.token.clone(),
            });
            return;
        }
        let h = self.held.remove(&scope).expect("held");
        let n = self.view.walk(scope).len();
        let k = usize::from(h.token.hop);
        if k >= n || k >= 64 {
            // The way back to the walk's starter: the starter regenerates the round.
            self.stats.hop_failures += 1;
            return;
        }
        // The member at position `k` does not answer: the walk goes on without it.
        self.stats.hops_skipped += 1;
        let mut token = h.token;
        token.skipped |= 1 << k;
        self.pass_on(now, token);
    }

    fn start_round(&mut self, now: Instant, local: &Local<'_>) {
        let p = self.view.partitions();
        self.basis.retain(|s, r| local.is_live(*s, r.epoch));
        for (s, epoch, h) in local.senders(self.me) {
            // A stream new to this leader starts from what the leader knows of it (not from
            // 0, which is half the sequence space away once a stream has wrapped); a newer
            // epoch of a sender replaces its record.
            if !local.is_live(s, epoch) || self.basis.get(&s).is_some_and(|r| r.epoch >= epoch) {
                continue;
            }
            self.basis
                .insert(s, fresh_record(s, epoch, h, p, local.first_seq));
        }
        self.round = self.round.wrapping_add(1);
        let mut token = Token {
            region: self.region,
            view: self.view.hash(),
            round: self.round,
            scope: Scope::Region,
            hop: 0,
            skipped: 0,
            records: Vec::new(),
        };
        // Fit as many records as leave room for ranges; rotate who goes first so every
        // sender gets rounds when there are more than fit.
        let budget = self.token_budget() * 3 / 4;
        let n = self.basis.len();
        let skip = if n == 0 { 0 } else { self.round as usize % n };
        for rec in self.basis.values().cycle().skip(skip).take(n) {
            if token.wire_len() + rec.wire_len() > budget {
                break;
            }
            token.records.push(TokenRecord {
                prefix: None,
                laggard: None,
                partial: 0,
                incomplete: false,
                reported: 0,
                partition_current: vec![None; p],
                lack: Vec::new(),
                naks: Vec::new(),
                rates: RateAggregate::default(),
                ..rec.clone()
            });
        }
        self.dirty = false;
        self.last_start = now;
        self.next_round_at = now + self.config.interval;
        self.in_flight = Some((self.round, now));
        self.stats.rounds_started += 1;
        self.seen.insert(Scope::Region, (self.round, now));
        self.leader_visit(now, &mut token, local);
        self.pass_on(now, token);
    }

    fn token_budget(&self) -> usize {
        self.config.max_token_bytes.saturating_sub(HEADER_LEN)
    }

    /// A token arrived from `from`.
    pub fn handle_token(
        &mut self,
        now: Instant,
        from: NodeId,
        mut token: Token,
        local: &Local<'_>,
    ) {
        let walk = self.view.walk(token.scope);
        let n = walk.len();
        let hop = usize::from(token.hop);
        let addressee = if hop == n {
            walk.first()
        } else {
            walk.get(hop)
        };
        let p = self.view.partitions();
        if token.view != self.view.hash() && token.region == self.region {
            self.stats.tokens_ignored += 1;
            self.stats.view_mismatches += 1;
            self.actions.push_back(RingAction::ViewMismatch { from });
            return;
        }
        if token.region != self.region
            || addressee != Some(&self.me)
            || token
                .records
                .iter()
                .any(|r| r.partition_prefix.len() != p || r.partition_current.len() != p)
        {
            self.stats.tokens_ignored += 1;
            return;
        }
        self.actions.push_back(RingAction::TokenAck {
            to: from,
            ack: TokenAck {
                region: self.region,
                view: token.view,
                round: token.round,
                scope: token.scope,
                hop: token.hop,
            },
        });
        if hop == n {
            match token.scope {
                Scope::Region if self.in_flight.is_some_and(|(r, _)| r == token.round) => {
                    self.complete_round(now, token);
                }
                Scope::Partition(_)
                    if self.part_in_flight.is_some_and(|r| r.round == token.round) =>
                {
                    self.complete_partition(now, token);
                }
                _ => self.stats.tokens_ignored += 1,
            }
            return;
        }
        // An old round number is stale, unless no token came for a while: then the starter
        // may have restarted (same id, same view) and counts from scratch again.
        let quiet = |at: Instant| now >= at + self.config.round_timeout * 2;
        if self
            .seen
            .get(&token.scope)
            .is_some_and(|(r, at)| !quiet(*at) && !Seq(*r).is_before(Seq(token.round)))
        {
            self.stats.tokens_ignored += 1;
            return;
        }
        self.seen.insert(token.scope, (token.round, now));
        match token.scope {
            Scope::Region => self.leader_visit(now, &mut token, local),
            Scope::Partition(_) => self.visit(now, &mut token, local),
        }
        self.pass_on(now, token);
    }

    /// A hop was acknowledged.
    pub fn handle_token_ack(&mut self, now: Instant, ack: TokenAck) {
        let Some(h) = self.held.get(&ack.scope) else {
            return;
        };
        if h.token.round == ack.round && h.token.hop == ack.hop && h.token.view == ack.view {
            if !h.retransmitted {
                let rtt = now.saturating_duration_since(h.sent_at);
                self.hop_rtt.sample(rtt);
            }
            self.held.remove(&ack.scope);
        }
    }

    fn pass_on(&mut self, now: Instant, mut token: Token) {
        let walk = self.view.walk(token.scope);
        let n = walk.len();
        let next = usize::from(token.hop) + 1;
        token.hop = next as u16;
        if n <= 1 || (next == n && walk[0] == self.me) {
            match token.scope {
                Scope::Region => self.complete_round(now, token),
                Scope::Partition(_) => self.complete_partition(now, token),
            }
            return;
        }
        let to = if next >= n { walk[0] } else { walk[next] };
        self.held.insert(
            token.scope,
            Held {
                token: token.clone(),
                to,
                sent_at: now,
                retry_at: now + self.hop_timeout(),
                retries_left: self.config.hop_retries,
                retransmitted: false,
            },
        );
        self.actions.push_back(RingAction::Token { to, token });
    }

    /// The region token reached this partition leader: merge the partition's last result,
    /// start the partition's next round.
    fn leader_visit(&mut self, now: Instant, token: &mut Token, local: &Local<'_>) {
        let Some(q) = self.leads_partition() else {
            return;
        };
        self.stats.tokens_processed += 1;
        let p = self.view.partitions();
        if let Some(result) = self.part_result.take() {
            let budget = self.token_budget();
            for r in result {
                match token.records.iter_mut().find(|x| x.sender == r.sender) {
                    Some(x) if x.epoch == r.epoch => merge_partition(x, &r, q),
                    Some(_) => {}
                    None if local.is_live(r.sender, r.epoch) => {
                        // A stream a member of this partition added: the region learns it
                        // (partitions before this one report nothing of it: not stable yet).
                        let mut x = TokenRecord {
                            partition_current: vec![None; p],
                            prefix: None,
                            laggard: None,
                            naks: Vec::new(),
                            rates: RateAggregate::default(),
                            partial: 0,
                            incomplete: false,
                            reported: 0,
                            ..r.clone()
                        };
                        merge_partition(&mut x, &r, q);
                        if token.wire_len() + x.wire_len() <= budget * 3 / 4 {
                            token.records.push(x);
                        }
                    }
                    None => {}
                }
            }
        }
        if self.part_in_flight.is_none() {
            let context = token.records.clone();
            self.start_partition_round(now, q, context, local);
        }
    }

    fn start_partition_round(
        &mut self,
        now: Instant,
        q: usize,
        context: Vec<TokenRecord>,
        local: &Local<'_>,
    ) {
        let p = self.view.partitions();
        self.part_round = self.part_round.wrapping_add(1);
        let records = context
            .into_iter()
            .map(|r| TokenRecord {
                prefix: None,
                laggard: None,
                partial: 0,
                incomplete: false,
                reported: 0,
                partition_current: vec![None; p],
                lack: Vec::new(),
                naks: Vec::new(),
                rates: RateAggregate::default(),
                ..r
            })
            .collect();
        let mut token = Token {
            region: self.region,
            view: self.view.hash(),
            round: self.part_round,
            scope: Scope::Partition(q as u8),
            hop: 0,
            skipped: 0,
            records,
        };
        self.part_in_flight = Some(PartRound {
            round: self.part_round,
            started: now,
        });
        self.stats.partition_rounds_started += 1;
        self.seen.insert(token.scope, (self.part_round, now));
        self.visit(now, &mut token, local);
        self.pass_on(now, token);
    }

    /// The partition round came back: keep its result for the next region token.
    fn complete_partition(&mut self, now: Instant, mut token: Token) {
        if let Some(r) = self.part_in_flight.take() {
            self.part_time
                .sample(now.saturating_duration_since(r.started));
        }
        self.held.remove(&token.scope);
        self.stats.partition_rounds_completed += 1;
        let partial = u32::from(token.skipped != 0);
        for rec in &mut token.records {
            // A walk cut short before its last member: what the visited ones lack may still
            // be with the skipped one, so it is not asked of the sender (the next round sees).
            rec.lack.clear();
            rec.partial = partial;
        }
        // The region leader merges its own partition's result in its next round: when it
        // shows progress, run that round soon (stability would wait for the idle interval).
        if self.view.leader() == Some(self.me) {
            let basis = &self.basis;
            let progress = token.records.iter().any(|r| {
                basis.get(&r.sender).is_none_or(|b| {
                    b.epoch != r.epoch
                        || b.cutoff.is_before(r.highest)
                        || r.prefix.is_some_and(|p| b.cleanup.is_before(p))
                        || !r.naks.is_empty()
                })
            });
            self.dirty |= progress;
        }
        self.part_result = Some(token.records);
    }

    /// This node's part of a partition round: merge its streams into the token, pull what it
    /// misses, and tell the owner how its streams move on.
    fn visit(&mut self, now: Instant, token: &mut Token, local: &Local<'_>) {
        let Some(p) = self.view.partition_of(self.me) else {
            return;
        };
        self.stats.tokens_processed += 1;
        if self.last_visit < now {
            self.visit_gap
                .sample(now.saturating_duration_since(self.last_visit));
        }
        self.last_visit = now;
        self.fallback_turn = 0;
        self.fallback_at = now + self.unvisited_wait();
        let n = self.view.walk(token.scope).len();
        let hop = usize::from(token.hop);
        let first_in_partition = hop == 0;
        let last_in_partition = hop + 1 == n;
        let budget = self.token_budget();
        self.add_missing_records(token, local, hop > 0);
        let mut requests = Requests::new();
        for i in 0..token.records.len() {
            let sender = token.records[i].sender;
            let isolated = self.isolated.contains_key(&sender);
            let progress = if sender == self.me {
                // The sender has its whole stream: its prefix is its highest.
                let own = local
                    .own
                    .filter(|(e, _)| *e == token.records[i].epoch)
                    .map(|(_, h)| h);
                Progress {
                    highest: own,
                    prefix: own,
                    ..Progress::default()
                }
            } else if !local.is_live(sender, token.records[i].epoch) {
                // A sender whose stream this node closed: its record is inert here.
                Progress::default()
            } else {
                let input = VisitInput {
                    partition: p,
                    partitions: self.view.partitions(),
                    max: self.config.max_request,
                    isolated,
                    window_capacity: local.window_capacity,
                    can_add_stream: local.can_add_stream,
                    app_behind: local.app_behind,
                    cache: local.cache,
                    first: local.first_seq,
                };
                let (progress, update) =
                    effective_progress(&token.records[i], local.stream(sender), &input);
                if let Some(u) = update {
                    let rec = &token.records[i];
                    let room =
                        self.cleaned.contains_key(&sender) || self.cleaned.len() < PREV_CUTOFFS_MAX;
                    if !rec.cleanup_unknown && room {
                        self.cleaned.insert(sender, (rec.epoch, rec.cleanup));
                    }
                    self.actions.push_back(RingAction::Update(u));
                }
                progress
            };
            if self.config.isolate_slow {
                self.check_isolation(now, &token.records[i], &progress);
            }
            let isolated = self.isolated.contains_key(&sender);
            // A member that holds everything the sender had sent when the round began is not
            // what limits the stream: its rate only says how little the sender published, and
            // a zero from it would hide the slow member's rate.
            let highest = token.records[i].highest;
            let rate = match progress.prefix.filter(|_| !isolated) {
                Some(prefix) => self
                    .receive_rate(now, sender, prefix)
                    .filter(|_| prefix.is_before(highest)),
                None => None,
            };
            let pos = Position {
                me: self.me,
                partition: p,
                first_in_partition,
                last_in_partition,
                room: budget.saturating_sub(token.wire_len()) / 8,
            };
            let rec = &mut token.records[i];
            merge_record(rec, &progress, &pos, rate, isolated);
            // Only senders this member holds a stream of get an entry (a token's records
            // come from the network: they must not grow the map), at most PREV_CUTOFFS_MAX.
            let tracked = self.prev_cutoffs.contains_key(&sender)
                || (local.stream(sender).is_some() && self.prev_cutoffs.len() < PREV_CUTOFFS_MAX);
            let before_change = match self.prev_views.front() {
                Some(_) if tracked => Some(*self.prev_cutoffs.entry(sender).or_insert(rec.cutoff)),
                _ => None,
            };
            // Pull what this member misses from whoever can serve it; what no caretaker has
            // comes from the sender (naks).
            for s in progress.missing.iter().flat_map(|r| r.iter()) {
                let targets =
                    repair_targets(&self.view, self.me, token.round, s, &rec.partition_prefix);
                let old = before_change
                    .filter(|c| !c.is_before(s))
                    .and_then(|_| self.old_caretaker(token.round, s))
                    .filter(|o| !targets.contains(&Some(*o)));
                self.stats.old_caretaker_requests += u64::from(old.is_some());
                for t in targets.into_iter().flatten().chain(old) {
                    add_request(&mut requests, (t, sender, rec.epoch), s);
                    self.stats.requested += 1;
                }
            }
        }
        self.send_requests(requests);
    }

    /// A member of an earlier view's caretaker partition of `seq` that is still a member
    /// (not this node), rotating with `round` over those of the last [`PREV_VIEWS_MAX`]
    /// views (see [`Ring::set_view`]): after two changes in a row (a crash, then a member
    /// moving out), the packet may be cached only by caretakers of the view before the last.
    fn old_caretaker(&self, round: u32, seq: Seq) -> Option<NodeId> {
        let current = |m: &&NodeId| **m != self.me && self.view.members().binary_search(m).is_ok();
        let mut candidates: Vec<NodeId> = self
            .prev_views
            .iter()
            .flat_map(|v| {
                v.partition(v.caretaker(seq))
                    .iter()
                    .filter(current)
                    .copied()
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[round as usize % candidates.len()])
    }

    /// Sends the gathered requests, each cut to what fits a datagram.
    fn send_requests(&mut self, requests: Requests) {
        let max_ranges = (self.token_budget().saturating_sub(24) / 8).max(1);
        for ((to, sender, epoch), mut list) in requests {
            list.truncate(max_ranges);
            self.actions.push_back(RingAction::Request {
                to,
                request: RepairRequest {
                    region: self.region,
                    sender,
                    epoch,
                    ranges: list,
                },
            });
        }
    }

    /// No token visited this node for longer than the walks take (it may not hear the member
    /// before it: every round skips it), so nobody tells it to repair. It asks for its holes
    /// itself: each from one other member (rotating over the whole view with every
    /// fallback: the caretakers of this view and of earlier ones all come up) and from the
    /// sender, which may still hold it. Checked again every quarter of the wait until a
    /// visit comes.
    fn fall_back(&mut self, now: Instant, local: &Local<'_>) {
        self.fallback_at = now + self.unvisited_wait() / 4;
        let turn = self.fallback_turn as usize;
        let members = self.view.members();
        let others = members.len() - 1;
        let at = members.binary_search(&self.me).unwrap_or(0);
        // The `turn`-th member after this one, this one left out.
        let peer = members[(at + 1 + turn % others) % members.len()];
        let mut requests = Requests::new();
        for st in local.streams {
            let Some(w) = st.window.as_ref() else {
                continue;
            };
            if st.sender == self.me
                || !local.is_live(st.sender, st.epoch)
                || self.isolated.contains_key(&st.sender)
            {
                continue;
            }
            let holes = w.holes.iter().flat_map(|r| r.iter());
            for s in holes.take(self.config.max_request) {
                // A sender that is also the member asked gets the request once.
                let sender = Some(st.sender).filter(|x| *x != peer);
                for t in std::iter::once(peer).chain(sender) {
                    add_request(&mut requests, (t, st.sender, st.epoch), s);
                }
                self.stats.unvisited_requested += 1;
            }
        }
        if !requests.is_empty() {
            self.stats.unvisited_fallbacks += 1;
            self.fallback_turn = self.fallback_turn.wrapping_add(1);
            self.send_requests(requests);
        }
    }

    /// Streams this node has that the token does not list get a record (while there is
    /// room): a leader new to the region learns every stream from its members. A record
    /// added after the walk's first member is `incomplete` (the members before did not see
    /// it).
    fn add_missing_records(&mut self, token: &mut Token, local: &Local<'_>, part_way: bool) {
        let p = self.view.partitions();
        let budget = self.token_budget() * 3 / 4;
        for (s, epoch, h) in local.senders(self.me) {
            if !local.is_live(s, epoch)
                || token
                    .records
                    .iter()
                    .any(|r| r.sender == s && r.epoch >= epoch)
            {
                continue;
            }
            let mut rec = TokenRecord {
                incomplete: part_way,
                ..fresh_record(s, epoch, h, p, local.first_seq)
            };
            // The cleanup point this member knows of the stream stays (seed 63580: a joiner
            // with the lowest id became leader, the old leader had crashed, and the record
            // the remaining member added started from nothing, so the joiner was handed
            // packets stable before it came, which nobody cached any more: a gap).
            if let Some((_, c)) = self.cleaned.get(&s).filter(|(e, _)| *e == epoch) {
                rec.cleanup = *c;
                rec.cleanup_unknown = false;
            }
            if token.wire_len() + rec.wire_len() > budget {
                return;
            }
            token.records.retain(|r| r.sender != s);
            token.records.push(rec);
            self.stats.records_added += 1;
        }
    }

    /// Packets per second this node's prefix of `sender`'s stream advanced since its previous
    /// visit (none for its own stream or at the first visit).
    fn receive_rate(&mut self, now: Instant, sender: NodeId, prefix: Seq) -> Option<u32> {
        let previous = self.last_prefix.insert(sender, (prefix, now));
        let (then, at) = previous.filter(|(_, at)| *at < now && sender != self.me)?;
        let secs = now.saturating_duration_since(at).as_secs_f64();
        let moved = then.distance_to(prefix).max(0) as f64;
        Some((moved / secs).min(f64::from(u32::MAX)) as u32)
    }

    /// The region round came back: acknowledge senders, set up the next round.
    fn complete_round(&mut self, now: Instant, token: Token) {
        if let Some((_, started)) = self.in_flight.take() {
            self.round_time
                .sample(now.saturating_duration_since(started));
        }
        self.held.remove(&Scope::Region);
        self.stats.rounds_completed += 1;
        let p = self.view.partitions();
        for rec in token.records {
            // Each partition counts with this round's result, or the proven prefix of an
            // earlier one; a partition whose leader was skipped holds the sender's window back
            // no longer, but its last proven prefix bounds the cleanup.
            let mut stable: Option<Seq> = None;
            let mut unknown = false;
            let mut next_prefix = rec.partition_prefix.clone();
            // The cleanup bound per partition: its last prefix that no skip cut short
            // (`Some(None)`: complete, and none of its members holds the stream).
            let floors = self.floors.entry(rec.sender).or_default();
            if floors.1.len() != p || floors.0 != rec.epoch {
                *floors = (rec.epoch, vec![None; p]);
            }
            let floors = &mut floors.1;
            for q in 0..p {
                let reported = rec.reported & (1 << q) != 0;
                if token.skipped & (1 << q) != 0 {
                    continue;
                }
                let contribution = if reported {
                    // This round's complete result (`None`: none of its members holds or
                    // claims the stream, nothing to wait for).
                    if rec.partial & (1 << q) == 0 {
                        floors[q] = Some(rec.partition_current[q]);
                    }
                    rec.partition_current[q]
                } else {
                    match rec.partition_prefix[q] {
                        Some(x) => Some(x),
                        None => {
                            // Nothing proven for this partition yet: nothing is stable.
                            unknown = true;
                            None
                        }
                    }
                };
                next_prefix[q] = contribution;
                stable = earliest(stable, contribution);
            }
            if unknown {
                stable = None;
            }
            let mut stable = stable.unwrap_or(rec.cleanup);
            if !rec.cleanup_unknown && stable.is_before(rec.cleanup) {
                stable = rec.cleanup;
            }
            // Caches free only what every member has, those that did not answer included.
            let mut cleanup = stable;
            for f in floors.iter() {
                match f {
                    None => cleanup = rec.cleanup,
                    Some(Some(x)) if x.is_before(cleanup) => cleanup = *x,
                    Some(_) => {}
                }
            }
            if !rec.cleanup_unknown && cleanup.is_before(rec.cleanup) {
                cleanup = rec.cleanup;
            }
            // A stream's start, while its sender counts the region's members otherwise: a
            // member it already sends to may be missing from this view (a sender that waited
            // for its subscribers must not lose one to the ring's slower gossip). Nothing is
            // freed or skipped until the views agree (or `view_wait` passed): the record stays
            // one whose cleanup is unknown. Later joiners are admitted as the ring learns of
            // them (what came before is theirs only if still unstable), so a view change
            // mid-stream holds nothing back.
            let held = rec.cleanup_unknown && self.view_held(now, rec.sender, rec.epoch);
            if held {
                self.stats.view_holds += 1;
                stable = rec.cleanup;
                cleanup = rec.cleanup;
            }
            // A handover marker admits a member this view lacks yet: nothing from the marker
            // on is freed or cleaned until the view has it (or `view_wait` passed).
            if let Some(before) = self.join_held(now, &rec) {
                let bound = if rec.cleanup_unknown || rec.cleanup.is_before(before) {
                    before
                } else {
                    rec.cleanup
                };
                if bound.is_before(stable) || bound.is_before(cleanup) {
                    self.stats.join_holds += 1;
                }
                if bound.is_before(stable) {
                    stable = bound;
                }
                if bound.is_before(cleanup) {
                    cleanup = bound;
                }
            }
            self.stats.naked += rec.naks.iter().map(|r| u64::from(r.count)).sum::<u64>();
            self.check_slow(now, &rec, stable);
            self.actions.push_back(RingAction::Ack {
                to: rec.sender,
                ack: SenderAck {
                    region: self.region,
                    epoch: rec.epoch,
                    stable,
                    floor: cleanup,
                    highest: rec.highest,
                    naks: rec.naks.clone(),
                    slowest_rate: rec.rates.slowest().unwrap_or(0),
                },
            });
            if self
                .basis
                .get(&rec.sender)
                .is_some_and(|b| b.epoch > rec.epoch)
            {
                continue;
            }
            self.basis.insert(
                rec.sender,
                TokenRecord {
                    cutoff: rec.highest,
                    cleanup,
                    cleanup_unknown: held,
                    partial: 0,
                    incomplete: false,
                    reported: 0,
                    prefix: None,
                    laggard: None,
                    partition_prefix: next_prefix,
                    partition_current: vec![None; p],
                    lack: Vec::new(),
                    naks: rec.naks,
                    rates: RateAggregate::default(),
                    ..rec
                },
            );
        }
    }

    /// Isolation policy: this node isolates itself from a stream it has lagged far behind
    /// for `slow_after`, and rejoins once it is within half of `slow_lag` and its application
    /// has caught up.
    fn check_isolation(&mut self, now: Instant, rec: &TokenRecord, progress: &Progress) {
        let Some(prefix) = progress.prefix else {
            return;
        };
        let highest = match progress.highest {
            Some(h) if rec.highest.is_before(h) => h,
            _ => rec.highest,
        };
        let lag = prefix.distance_to(highest).max(0) as u32;
        let sender = rec.sender;
        if lag >= self.config.slow_lag {
            let since = *self.self_lag.entry(sender).or_insert(now);
            if now >= since + self.config.slow_after && !self.isolated.contains_key(&sender) {
                let backoff = 1u32 << self.stats.isolations.min(6);
                self.isolated
                    .insert(sender, now + self.config.slow_after * backoff);
                self.stats.isolations += 1;
                self.actions.push_back(RingAction::Isolated { sender, lag });
            }
        } else if lag < self.config.slow_lag / 2 && !progress.app_behind {
            self.self_lag.remove(&sender);
            if self
                .isolated
                .get(&sender)
                .is_some_and(|until| now >= *until)
            {
                self.isolated.remove(&sender);
                self.actions.push_back(RingAction::Rejoined { sender });
            }
        }
    }

    fn check_slow(&mut self, now: Instant, rec: &TokenRecord, stable: Seq) {
        let lag = stable.distance_to(rec.highest).max(0) as u32;
        match rec.laggard {
            Some(member) if lag >= self.config.slow_lag => {
                let l = self.lagging.entry(rec.sender).or_insert(Lagging {
                    member,
                    since: now,
                    reported: false,
                });
                if l.member != member {
                    *l = Lagging {
                        member,
                        since: now,
                        reported: false,
                    };
                }
                if !l.reported && now >= l.since + self.config.slow_after {
                    l.reported = true;
                    self.stats.slow_reports += 1;
                    self.actions.push_back(RingAction::Slow(SlowReceiver {
                        sender: rec.sender,
                        member,
                        lag,
                    }));
                }
            }
            _ => {
                self.lagging.remove(&rec.sender);
            }
        }
    }
}

/// Repair requests being gathered: per peer asked, sender and epoch, the ranges wanted.
type Requests = BTreeMap<(NodeId, NodeId, u64), Vec<SeqRange>>;

/// Adds `seq` to the ranges asked of `key`'s peer (in increasing order, merged).
fn add_request(requests: &mut Requests, key: (NodeId, NodeId, u64), seq: Seq) {
    let list = requests.entry(key).or_default();
    match list.last_mut() {
        Some(r) if r.first.advance(r.count) == seq => r.count += 1,
        _ => list.push(SeqRange {
            first: seq,
            count: 1,
        }),
    }
}

/// A record for a stream nobody counted yet: its cleanup is unknown (nobody frees or skips
/// on it until a round completes; until then it stands just before the stream's `first`
/// packet, so an acknowledgement of it frees nothing even where the stream starts near the
/// wrap).
fn fresh_record(
    sender: NodeId,
    epoch: u64,
    highest: Seq,
    partitions: usize,
    first: Seq,
) -> TokenRecord {
    TokenRecord {
        sender,
        epoch,
        highest,
        cutoff: highest,
        prefix: None,
        laggard: None,
        cleanup: Seq(first.0.wrapping_sub(1)),
        cleanup_unknown: true,
        partial: 0,
        incomplete: false,
        reported: 0,
        partition_prefix: vec![None; partitions],
        partition_current: vec![None; partitions],
        lack: Vec::new(),
        naks: Vec::new(),
        rates: RateAggregate::default(),
    }
}

/// Merges partition `q`'s round result `r` into region record `x` (an incomplete result
/// only brings the highest and the naks).
fn merge_partition(x: &mut TokenRecord, r: &TokenRecord, q: usize) {
    if x.highest.is_before(r.highest) {
        x.highest = r.highest;
    }
    let mut naks = RangeSet::from_ranges(x.cleanup, &x.naks);
    naks.union_with(&RangeSet::from_ranges(x.cleanup, &r.naks));
    x.naks = naks.to_ranges(usize::MAX);
    if r.incomplete {
        return;
    }
    x.reported |= 1 << q;
    if let Some(slot) = x.partition_current.get_mut(q) {
        *slot = r.prefix;
    }
    if let Some(prefix) = r.prefix {
        if x.prefix.is_none_or(|p| prefix.is_before(p)) {
            x.prefix = Some(prefix);
            x.laggard = r.laggard;
        }
    }
    x.rates.merge(&r.rates);
    if r.partial != 0 {
        x.partial |= 1 << q;
    }
}

/// The earlier of an optional bound and an optional value (`None` value: no bound).
fn earliest(a: Option<Seq>, b: Option<Seq>) -> Option<Seq> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.is_before(a) { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::ReceiveWindow;

    const S: NodeId = NodeId(1000); // a sender outside the region
    const T0: Instant = Instant::ZERO;
    const REGION: RegionId = RegionId(9);

    /// One member: its ring, its receive window of `S`'s stream, its cache.
    struct Member {
        ring: Ring,
        window: Option<(ReceiveWindow<u32>, bool)>,
        cache: Cache,
    }

    impl Member {
        fn streams(&self) -> Vec<StreamProgress> {
            self.window
                .iter()
                .map(|(w, synced)| StreamProgress {
                    sender: S,
                    epoch: 1,
                    window: w.state(512),
                    synced: *synced,
                })
                .collect()
        }

        fn apply(&mut self, u: &StreamUpdate) {
            let (w, synced) = self
                .window
                .get_or_insert_with(|| (ReceiveWindow::reliable(1024), false));
            w.skip_to(T0, u.skip_to, u.as_loss);
            *synced = u.synced;
            w.on_highest(T0, u.highest);
            while w.pop().is_some() {}
            self.cache.clean(u.sender, u.epoch, u.clean);
        }
    }

    /// Members `1..=n`, each having received `S`'s packets `1..=have(i)` except `holes(i)`;
    /// caretakers cache their share.
    fn region(n: u64, have: impl Fn(u64) -> u32, holes: impl Fn(u64) -> Vec<u32>) -> Vec<Member> {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        ids.iter()
            .map(|id| {
                let mut ring = Ring::new(RingConfig::default(), *id, REGION, T0);
                ring.set_view(T0, ids.clone());
                let mut w = ReceiveWindow::reliable(1024);
                let mut cache = Cache::new(1 << 20);
                for s in 1..=have(id.0) {
                    if holes(id.0).contains(&s) {
                        continue;
                    }
                    w.insert(T0, Seq(s), s);
                    if ring.is_caretaker(Seq(s)) {
                        cache.insert(S, 1, Seq(s), &[0; 16]).unwrap();
                    }
                }
                while w.pop().is_some() {}
                Member {
                    ring,
                    window: Some((w, false)),
                    cache,
                }
            })
            .collect()
    }

    /// What left the region while tokens went round until quiet.
    #[derive(Default)]
    struct Log {
        visits: Vec<NodeId>,
        requests: Vec<(NodeId, NodeId, RepairRequest)>,
        acks: Vec<(NodeId, SenderAck)>,
    }

    fn pump(members: &mut [Member], now: Instant, log: &mut Log) {
        loop {
            let mut moved = false;
            for i in 0..members.len() {
                let me = members[i].ring.me;
                while let Some(a) = members[i].ring.poll_action() {
                    moved = true;
                    match a {
                        RingAction::Token { to, token } => {
                            let j = members.iter().position(|m| m.ring.me == to).unwrap();
                            let streams = members[j].streams();
                            let m = &mut members[j];
                            let local = local(&streams, &m.cache);
                            log.visits.push(to);
                            m.ring.handle_token(now, me, token, &local);
                        }
                        RingAction::TokenAck { to, ack } => {
                            let j = members.iter().position(|m| m.ring.me == to).unwrap();
                            members[j].ring.handle_token_ack(now, ack);
                        }
                        RingAction::Update(u) => members[i].apply(&u),
                        RingAction::Request { to, request } => log.requests.push((me, to, request)),
                        RingAction::Ack { to, ack } => log.acks.push((to, ack)),
                        _ => {}
                    }
                }
                members[i].ring.check_invariants();
            }
            if !moved {
                return;
            }
        }
    }

    fn local<'a>(streams: &'a [StreamProgress], cache: &'a Cache) -> Local<'a> {
        Local {
            streams,
            own: None,
            closed: &[],
            cache,
            window_capacity: 1024,
            can_add_stream: true,
            app_behind: false,
            first_seq: Seq::FIRST,
        }
    }

    /// The leader starts a round at `now` and the token goes round.
    fn round(members: &mut [Member], now: Instant) -> Log {
        let mut log = Log::default();
        let streams = members[0].streams();
        let m = &mut members[0];
        let l = local(&streams, &m.cache);
        m.ring.on_data();
        m.ring.handle_timeout(now, &l);
        pump(members, now, &mut log);
        log
    }

    fn ms(n: u64) -> Instant {
        T0 + Duration::from_millis(n)
    }

    #[test]
    fn partitions_walk_in_parallel_and_the_leader_acks_the_lowest_prefix() {
        let mut region = region(10, |i| 40 + i as u32, |_| vec![]);
        assert_eq!(region[0].ring.view().partitions(), 2);
        assert_eq!(region[0].ring.view().leaders(), &[NodeId(1), NodeId(2)]);
        let first = round(&mut region, ms(0));
        // Partition 0 (odd ids) is walked by its leader's round, partition 1 (even ids) by
        // its leader's, started as the region token passed; the region token visits the
        // leaders only.
        for id in 2..=10 {
            assert!(first.visits.contains(&NodeId(id)), "member {id} visited");
        }
        assert_eq!(region[0].ring.stats().partition_rounds_started, 1);
        assert_eq!(region[1].ring.stats().partition_rounds_started, 1);
        // The first region round carries no partition results yet; the second does.
        let second = round(&mut region, ms(3));
        let (to, ack) = second.acks.last().expect("acknowledged");
        assert_eq!(
            (*to, ack.stable),
            (S, Seq(41)),
            "the lowest prefix is member 1's"
        );
        assert_eq!(region[0].ring.stats().rounds_completed, 2);
    }

    #[test]
    fn stability_waits_while_the_sender_sees_other_members_and_goes_on_after_view_wait() {
        let wait = RingConfig::default().view_wait;
        let acked = |members: &mut Vec<Member>, at: Instant| {
            round(members, at);
            let log = round(members, at + Duration::from_millis(3));
            log.acks.last().expect("acknowledged").1.stable
        };
        // The sender tagged its data for a member list with a fourth member in it.
        let mut members = region(3, |_| 30, |_| vec![]);
        let four = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
        let other = qs_transport::wire::view_tag(qs_transport::wire::members_hash(&four), 4);
        assert_ne!(other, members[0].ring.view().tag());
        members[0].ring.note_sender_view(T0, S, 1, other);
        assert_eq!(acked(&mut members, ms(0)), Seq(0), "held within view_wait");
        assert!(members[0].ring.stats().view_holds >= 2);
        let late = T0 + wait + Duration::from_millis(10);
        assert_eq!(
            acked(&mut members, late),
            Seq(30),
            "past view_wait it goes on"
        );
        // A tag equal to the ring's own view holds nothing.
        let mut members = region(3, |_| 30, |_| vec![]);
        let own = members[0].ring.view().tag();
        members[0].ring.note_sender_view(T0, S, 1, own);
        assert_eq!(acked(&mut members, ms(0)), Seq(30));
        assert_eq!(members[0].ring.stats().view_holds, 0);
    }

    #[test]
    fn stability_stays_before_a_handover_marker_until_the_joiner_is_in_the_view() {
        let wait = RingConfig::default().view_wait;
        let acked = |members: &mut Vec<Member>, at: Instant| {
            round(members, at);
            let log = round(members, at + Duration::from_millis(3));
            let (_, ack) = log.acks.last().expect("acknowledged").clone();
            (ack.stable, ack.floor)
        };
        // Packet 21 of S's stream marks where S started sending to node 9, which this view
        // does not have yet: nothing from 21 on is freed or cleaned.
        let mut members = region(3, |_| 30, |_| vec![]);
        members[0]
            .ring
            .hold_for_joiner(T0, S, 1, Seq(21), NodeId(9));
        assert_eq!(acked(&mut members, ms(0)), (Seq(20), Seq(20)), "held");
        assert!(members[0].ring.stats().join_holds >= 1);
        // Another epoch's marker holds nothing of this one.
        let mut other = region(3, |_| 30, |_| vec![]);
        other[0].ring.hold_for_joiner(T0, S, 2, Seq(21), NodeId(9));
        assert_eq!(acked(&mut other, ms(0)).0, Seq(30));
        // Once the view has the joiner, it goes on.
        let ids: Vec<NodeId> = [1, 2, 3, 9].into_iter().map(NodeId).collect();
        for m in members.iter_mut() {
            m.ring.set_view(ms(10), ids.clone());
        }
        members.push({
            let mut ring = Ring::new(RingConfig::default(), NodeId(9), REGION, T0);
            ring.set_view(ms(10), ids.clone());
            let mut w = ReceiveWindow::reliable(1024);
            for q in 1..=30 {
                w.insert(T0, Seq(q), q);
            }
            Member {
                ring,
                window: Some((w, false)),
                cache: Cache::new(1 << 20),
            }
        });
        assert_eq!(
            acked(&mut members, ms(20)).0,
            Seq(30),
            "the joiner is in the view"
        );
        // A joiner that never comes holds for `view_wait` only.
        let mut members = region(3, |_| 30, |_| vec![]);
        members[0]
            .ring
            .hold_for_joiner(T0, S, 1, Seq(21), NodeId(9));
        assert_eq!(acked(&mut members, ms(0)).0, Seq(20));
        let late = T0 + wait + Duration::from_millis(10);
        assert_eq!(
            acked(&mut members, late).0,
            Seq(30),
            "past view_wait it goes on"
        );
        // A joiner already in the view holds nothing.
        let mut members = region(3, |_| 30, |_| vec![]);
        members[0]
            .ring
            .hold_for_joiner(T0, S, 1, Seq(21), NodeId(2));
        assert_eq!(acked(&mut members, ms(0)).0, Seq(30));
        assert_eq!(members[0].ring.stats().join_holds, 0);
    }

    #[test]
    fn a_member_missing_a_packet_asks_a_caretaker_for_it() {
        let mut region = region(5, |_| 30, |i| if i == 3 { vec![7] } else { vec![] });
        round(&mut region, ms(0));
        round(&mut region, ms(3));
        let third = round(&mut region, ms(6));
        let asked: Vec<_> = third
            .requests
            .iter()
            .filter(|(from, _, _)| *from == NodeId(3))
            .collect();
        assert!(!asked.is_empty(), "member 3 asks for its hole");
        for (_, to, req) in asked {
            assert_ne!(*to, NodeId(3));
            assert_eq!((req.sender, req.ranges[0].first), (S, Seq(7)));
        }
        let (_, ack) = third.acks.last().unwrap();
        assert_eq!(ack.stable, Seq(6), "stability waits below the hole");
    }

    #[test]
    fn after_a_view_change_a_member_also_asks_a_caretaker_of_the_old_view() {
        // Eleven members in two partitions cache their shares; member 5 lacks packet 8. Then
        // member 1 leaves: every index shifts by one, so the partitions swap their members
        // and the new caretakers of packet 8 never cached it. Member 5 must also ask one of
        // the old caretakers, which still hold it (the sender may have freed it).
        let mut members = region(11, |_| 30, |i| if i == 5 { vec![8] } else { vec![] });
        let old: Vec<NodeId> = members
            .iter()
            .filter(|m| m.cache.holds(S, 1, Seq(8)))
            .map(|m| m.ring.me)
            .collect();
        members.remove(0);
        let ids: Vec<NodeId> = (2..=11).map(NodeId).collect();
        for m in &mut members {
            m.ring.set_view(T0, ids.clone());
        }
        let view = members[0].ring.view().clone();
        let new: Vec<NodeId> = view.partition(view.caretaker(Seq(8))).to_vec();
        assert!(
            new.iter().all(|m| !old.contains(m)),
            "the caretakers changed"
        );
        let mut asked = BTreeSet::new();
        for k in 0..6 {
            let log = round(&mut members, ms(3 * k));
            for (from, to, req) in &log.requests {
                if *from == NodeId(5) && req.ranges.iter().any(|r| r.first == Seq(8)) {
                    asked.insert(*to);
                }
            }
        }
        assert!(
            asked.iter().any(|m| old.contains(m)),
            "member 5 asked {asked:?}, old caretakers {old:?}"
        );
        let m5 = members.iter().find(|m| m.ring.me == NodeId(5)).unwrap();
        assert!(m5.ring.stats().old_caretaker_requests > 0);
        // In an unchanged view nobody asks an old caretaker: the same member list set again
        // (a repeated announce) is no view change, though member 5 still asks for its hole.
        // (A fresh region alone would prove nothing: it has no previous view to ask.)
        let mut members = region(11, |_| 30, |i| if i == 5 { vec![8] } else { vec![] });
        let ids: Vec<NodeId> = (1..=11).map(NodeId).collect();
        for m in &mut members {
            m.ring.set_view(ms(1), ids.clone());
        }
        let mut asked = 0;
        for k in 0..6 {
            let log = round(&mut members, ms(3 * k + 2));
            asked += log
                .requests
                .iter()
                .filter(|(from, _, req)| {
                    *from == NodeId(5) && req.ranges.iter().any(|r| r.first == Seq(8))
                })
                .count();
        }
        assert!(asked > 0, "member 5 asks for its hole");
        let old_asks: u64 = members
            .iter()
            .map(|m| m.ring.stats().old_caretaker_requests)
            .sum();
        assert_eq!(old_asks, 0, "an unchanged view has no old caretakers");
    }

    #[test]
    fn what_no_caretaker_holds_is_nakked_to_the_sender() {
        // Nobody has packet 12: every caretaker lacks it, so the sender must resend it.
        let mut region = region(5, |_| 20, |_| vec![12]);
        round(&mut region, ms(0));
        round(&mut region, ms(3));
        let third = round(&mut region, ms(6));
        let (_, ack) = third.acks.last().unwrap();
        assert!(
            ack.naks.iter().any(|r| r.iter().any(|s| s == Seq(12))),
            "{:?}",
            ack.naks
        );
        assert!(
            !ack.naks.iter().any(|r| r.iter().any(|s| s == Seq(11))),
            "11 is cached"
        );
    }

    #[test]
    fn a_token_of_another_view_or_a_replayed_round_is_ignored() {
        let mut region = region(3, |_| 5, |_| vec![]);
        round(&mut region, ms(0));
        let streams = region[1].streams();
        let cache = Cache::new(16);
        let l = local(&streams, &cache);
        let token = Token {
            region: REGION,
            view: region[1].ring.view().hash() ^ 1,
            round: 99,
            scope: Scope::Partition(0),
            hop: 1,
            skipped: 0,
            records: Vec::new(),
        };
        let before = region[1].ring.stats().tokens_ignored;
        region[1]
            .ring
            .handle_token(ms(1), NodeId(1), token.clone(), &l);
        assert_eq!(
            region[1].ring.poll_action(),
            Some(RingAction::ViewMismatch { from: NodeId(1) }),
            "another view is reported"
        );
        let replay = Token {
            view: region[1].ring.view().hash(),
            round: 1,
            ..token
        };
        region[1].ring.handle_token(ms(1), NodeId(1), replay, &l);
        assert_eq!(region[1].ring.stats().tokens_ignored, before + 2);
        // A duplicate is acknowledged again (the holder may have missed the first
        // acknowledgement) but not visited: nothing else comes out.
        let actions: Vec<RingAction> =
            std::iter::from_fn(|| region[1].ring.poll_action()).collect();
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, RingAction::TokenAck { .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn a_silent_member_is_retried_then_skipped_and_the_walk_goes_on() {
        let mut region = region(3, |_| 5, |_| vec![]);
        let streams = region[0].streams();
        let leader = &mut region[0];
        let l = local(&streams, &leader.cache);
        leader.ring.on_data();
        leader.ring.handle_timeout(ms(0), &l);
        let to = |a: &RingAction| match a {
            RingAction::Token { to, .. } => Some(*to),
            _ => None,
        };
        let sent: Vec<NodeId> = std::iter::from_fn(|| leader.ring.poll_action())
            .filter_map(|a| to(&a))
            .collect();
        assert_eq!(
            sent,
            vec![NodeId(2)],
            "the partition token goes to member 2"
        );
        let cfg = RingConfig::default();
        let mut t = ms(0);
        let mut retried = 0;
        for _ in 0..cfg.hop_retries {
            t = t + cfg.hop_timeout;
            leader.ring.handle_timeout(t, &l);
            retried += std::iter::from_fn(|| leader.ring.poll_action())
                .filter_map(|a| to(&a))
                .filter(|t| *t == NodeId(2))
                .count();
        }
        assert_eq!(
            retried as u32, cfg.hop_retries,
            "retransmitted to the silent member"
        );
        assert_eq!(
            leader.ring.stats().hops_skipped,
            0,
            "one retry short: not skipped"
        );
        t = t + cfg.hop_timeout;
        leader.ring.handle_timeout(t, &l);
        let next: Vec<NodeId> = std::iter::from_fn(|| leader.ring.poll_action())
            .filter_map(|a| to(&a))
            .collect();
        assert_eq!(
            next,
            vec![NodeId(3)],
            "member 2 skipped: member 3 gets the token"
        );
        assert_eq!(leader.ring.stats().hops_skipped, 1);
        leader.ring.check_invariants();
    }

    #[test]
    fn a_round_that_does_not_come_back_is_regenerated_after_the_round_timeout() {
        let mut region = region(3, |_| 5, |_| vec![]);
        let streams: Vec<Vec<StreamProgress>> = region.iter().map(Member::streams).collect();
        let caches = [Cache::new(16), Cache::new(16)];
        let l0 = local(&streams[0], &caches[0]);
        let l1 = local(&streams[1], &caches[1]);
        region[0].ring.on_data();
        region[0].ring.handle_timeout(ms(0), &l0);
        // Member 2 takes the partition token, acknowledges it, and dies before passing it on.
        let token = std::iter::from_fn(|| region[0].ring.poll_action())
            .find_map(|a| match a {
                RingAction::Token {
                    to: NodeId(2),
                    token,
                } => Some(token),
                _ => None,
            })
            .expect("the partition token goes to member 2");
        region[1].ring.handle_token(ms(0), NodeId(1), token, &l1);
        let ack = std::iter::from_fn(|| region[1].ring.poll_action())
            .find_map(|a| match a {
                RingAction::TokenAck { ack, .. } => Some(ack),
                _ => None,
            })
            .expect("acknowledged");
        region[0].ring.handle_token_ack(ms(0), ack);
        let cfg = RingConfig::default();
        let just_before = ms(0) + cfg.round_timeout - Duration::from_millis(1);
        region[0].ring.handle_timeout(just_before, &l0);
        assert_eq!(
            region[0].ring.stats().partition_rounds_regenerated,
            0,
            "just before"
        );
        region[0]
            .ring
            .handle_timeout(ms(0) + cfg.round_timeout, &l0);
        assert_eq!(
            region[0].ring.stats().partition_rounds_regenerated,
            1,
            "at the timeout"
        );
        region[0].ring.check_invariants();
    }

    #[test]
    fn a_new_leader_learns_a_stream_it_never_heard_from_its_members() {
        // Member 1 (the leader) has nothing of S; members 2 and 3 have 1..=9.
        let mut region = region(3, |i| if i == 1 { 0 } else { 9 }, |_| vec![]);
        region[0].window = None;
        round(&mut region, ms(0));
        let added = region[1].ring.stats().records_added + region[2].ring.stats().records_added;
        assert!(added > 0, "members add the stream the token lacks");
        round(&mut region, ms(3));
        let third = round(&mut region, ms(6));
        assert!(
            third.acks.iter().any(|(to, _)| *to == S),
            "the leader acknowledges the stream it learned"
        );
    }

    #[test]
    fn a_new_leader_learns_what_was_cleaned_before_it_came_from_its_members() {
        // Everyone has 1..=9; rounds make it stable and clean the caches.
        let mut region = region(3, |_| 9, |_| vec![]);
        for k in 0..3 {
            round(&mut region, ms(3 * k));
        }
        assert!(region[1].cache.get(S, 1, Seq(9)).is_none(), "cleaned");
        // The leader leaves and a node new to the region, with a lower id, joins (no record,
        // no stream of S): it must not be handed 1..=9, which nobody caches any more.
        let ids = [NodeId(0), NodeId(2), NodeId(3)];
        for m in &mut region[1..] {
            m.ring.set_view(ms(9), ids);
        }
        let mut ring = Ring::new(RingConfig::default(), NodeId(0), REGION, ms(9));
        ring.set_view(ms(9), ids);
        region[0] = Member {
            ring,
            window: None,
            cache: Cache::new(1 << 20),
        };
        for k in 3..6 {
            round(&mut region, ms(3 * k));
        }
        let (w, _) = region[0].window.as_ref().expect("the stream was learned");
        assert_eq!(
            w.next_expected(),
            Some(Seq(10)),
            "what was stable before the new leader came is not its"
        );
    }

    #[test]
    fn a_lone_member_completes_every_round_at_once() {
        let mut region = region(1, |_| 3, |_| vec![]);
        let log = round(&mut region, ms(0));
        assert!(log.visits.is_empty());
        round(&mut region, ms(3));
        assert_eq!(region[0].ring.stats().rounds_completed, 2);
        assert_eq!(region[0].ring.stats().partition_rounds_completed, 2);
        let log = round(&mut region, ms(6));
        assert_eq!(log.acks.last().unwrap().1.stable, Seq(3));
    }
}
