//! The event loop: virtual clock, event heap, nodes, routing and fault injection.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_transport::{Driven, Instant, Prng, SocketCommand, TrafficClass};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{LossModel, LossState, SimConfig};
use crate::stats::SimStats;

/// Size of the buffer handed to `poll_transmit` (the largest UDP payload plus headers).
pub const TRANSMIT_BUF_LEN: usize = 65536;

/// A core that is still due after this many `handle_timeout` calls at one instant is livelocked.
const TIMER_SPIN_MAX: u32 = 10_000;

/// A core that emits this many datagrams in one drain is assumed to loop forever.
const DRAIN_TRANSMITS_MAX: u64 = 10_000_000;

/// Position of a node in its [`Sim`], in the order nodes were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub usize);

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Why a copy of a datagram never reached its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The receiver's loss model lost it.
    Loss,
    /// Sender and receiver were on different sides of a partition when it was sent.
    Partition,
    /// The receiver had crashed by the time it arrived.
    Crash,
}

impl DropReason {
    /// Loss and partitions are network drops; a crashed receiver is not the network's fault.
    pub fn is_network_drop(self) -> bool {
        matches!(self, DropReason::Loss | DropReason::Partition)
    }
}

/// What a processed event did to the node it touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A datagram was handed to the node's `handle_datagram`.
    Delivered {
        /// Unicast address of the sender.
        from: SocketAddr,
        /// Traffic class the sender gave it.
        class: TrafficClass,
        /// The bytes as delivered (after corruption, if any).
        datagram: Bytes,
        /// A bit of this copy was flipped on the way.
        corrupted: bool,
        /// This is the extra copy made by duplication.
        duplicate: bool,
    },
    /// The node's `handle_timeout` ran.
    Timeout,
    /// A copy addressed to the node never reached it.
    Dropped {
        /// Unicast address of the sender.
        from: SocketAddr,
        /// Traffic class the sender gave it.
        class: TrafficClass,
        /// The bytes that were dropped.
        datagram: Bytes,
        /// Why it was dropped.
        reason: DropReason,
    },
    /// A copy arrived while the node was frozen; it is queued and delivered when it resumes.
    Deferred {
        /// Unicast address of the sender.
        from: SocketAddr,
        /// Traffic class the sender gave it.
        class: TrafficClass,
        /// The queued bytes.
        datagram: Bytes,
    },
    /// The node's freeze ended; its queued datagrams follow as `Delivered` events.
    Resumed,
}

impl EventKind {
    fn tag(&self) -> u8 {
        match self {
            EventKind::Delivered { .. } => 1,
            EventKind::Timeout => 2,
            EventKind::Dropped {
                reason: DropReason::Loss,
                ..
            } => 3,
            EventKind::Dropped {
                reason: DropReason::Partition,
                ..
            } => 4,
            EventKind::Dropped {
                reason: DropReason::Crash,
                ..
            } => 5,
            EventKind::Deferred { .. } => 6,
            EventKind::Resumed => 7,
        }
    }

    fn datagram(&self) -> Option<(&SocketAddr, &Bytes)> {
        match self {
            EventKind::Delivered { from, datagram, .. }
            | EventKind::Dropped { from, datagram, .. }
            | EventKind::Deferred { from, datagram, .. } => Some((from, datagram)),
            EventKind::Timeout | EventKind::Resumed => None,
        }
    }
}

/// What the observer sees after every processed event.
#[derive(Debug)]
pub struct Observation<'a, N> {
    /// Virtual time of the event.
    pub now: Instant,
    /// The node the event touched.
    pub index: NodeIndex,
    /// That node, after it processed the event and the simulator drained its outputs (so its
    /// events, stats and invariants can be checked here).
    pub node: &'a mut N,
    /// What happened.
    pub event: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Lost,
    Partitioned,
}

#[derive(Debug)]
struct Arrival {
    to: NodeIndex,
    from: SocketAddr,
    class: TrafficClass,
    datagram: Bytes,
    fate: Fate,
    corrupted: bool,
    duplicate: bool,
}

#[derive(Debug)]
enum Event {
    Arrival(Arrival),
    Timer { node: NodeIndex, generation: u64 },
    Thaw { node: NodeIndex, generation: u64 },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    // Reversed: `BinaryHeap` is a max-heap and we pop the earliest (time, seq) first. `seq` is
    // unique, so the order is total and ties at one instant resolve in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
struct Slot<N> {
    node: N,
    addr: SocketAddr,
    stats: SimStats,
    /// This receiver's own network randomness (loss, jitter, corruption, duplication), so
    /// changing one node's parameters does not perturb the others' draws.
    rng: Prng,
    loss: Option<LossModel>,
    loss_state: LossState,
    extra_delay: Duration,
    /// Multicast copies never reach this node (IGMP snooping gone wrong, a cloud network).
    multicast_deaf: bool,
    side: Option<usize>,
    crashed: bool,
    frozen_until: Option<Instant>,
    thaw_generation: u64,
    backlog: VecDeque<Arrival>,
    timer_generation: u64,
    /// The deadline the pending timer event was scheduled for.
    timer_at: Option<Instant>,
    spin_at: Instant,
    spin_count: u32,
}

/// A deterministic discrete-event network of sans-IO nodes. See the crate documentation.
#[derive(Debug)]
pub struct Sim<N> {
    config: SimConfig,
    rng: Prng,
    now: Instant,
    seq: u64,
    heap: BinaryHeap<Scheduled>,
    slots: Vec<Slot<N>>,
    by_addr: BTreeMap<SocketAddr, NodeIndex>,
    groups: BTreeMap<SocketAddrV4, BTreeSet<NodeIndex>>,
    partitioned: bool,
    /// One-way blocks: datagrams from the first node to the second are dropped.
    blocked: BTreeSet<(NodeIndex, NodeIndex)>,
    buf: Box<[u8]>,
    trace: u64,
    events: u64,
}

impl<N: Driven> Sim<N> {
    /// An empty world at [`Instant::ZERO`].
    pub fn new(config: SimConfig) -> Sim<N> {
        Sim {
            rng: Prng::new(config.seed),
            config,
            now: Instant::ZERO,
            seq: 0,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            by_addr: BTreeMap::new(),
            groups: BTreeMap::new(),
            partitioned: false,
            blocked: BTreeSet::new(),
            buf: vec![0; TRANSMIT_BUF_LEN].into_boxed_slice(),
            trace: 0,
            events: 0,
        }
    }

    /// Adds a node with unicast address `addr` at the current time and immediately drains it
    /// (group joins, first transmits, first timer).
    ///
    /// # Panics
    /// If another node already has `addr`.
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> NodeIndex {
        let index = NodeIndex(self.slots.len());
        assert!(
            self.by_addr.insert(addr, index).is_none(),
            "qs-sim: two nodes with address {addr}"
        );
        let rng = self.rng.fork();
        self.slots.push(Slot {
            node,
            addr,
            stats: SimStats::default(),
            rng,
            loss: None,
            loss_state: LossState::default(),
            extra_delay: Duration::ZERO,
            multicast_deaf: false,
            side: None,
            crashed: false,
            frozen_until: None,
            thaw_generation: 0,
            backlog: VecDeque::new(),
            timer_generation: 0,
            timer_at: None,
            spin_at: Instant::ZERO,
            spin_count: 0,
        });
        self.drain(index);
        index
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The network configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The network configuration, to change faults between phases (e.g. stop the loss for a
    /// healed phase). The seed is only read by [`Sim::new`].
    pub fn config_mut(&mut self) -> &mut SimConfig {
        &mut self.config
    }

    /// A generator derived from the simulation seed, to seed the nodes' own `Prng`s so that the
    /// whole run follows from one seed.
    pub fn fork_prng(&mut self) -> Prng {
        self.rng.fork()
    }

    /// Number of nodes ever added (crashed ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No node has been added yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Indices of all nodes, in the order they were added.
    pub fn indices(&self) -> impl Iterator<Item = NodeIndex> {
        (0..self.slots.len()).map(NodeIndex)
    }

    /// The node at `idx`.
    pub fn node(&self, idx: NodeIndex) -> &N {
        &self.slots[idx.0].node
    }

    /// The node at `idx`, to call its API from the test. Call [`Sim::poke`] afterwards so the
    /// simulator picks up what the call produced.
    pub fn node_mut(&mut self, idx: NodeIndex) -> &mut N {
        &mut self.slots[idx.0].node
    }

    /// The unicast address of the node at `idx`.
    pub fn addr(&self, idx: NodeIndex) -> SocketAddr {
        self.slots[idx.0].addr
    }

    /// The node whose unicast address is `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<NodeIndex> {
        self.by_addr.get(&addr).copied()
    }

    /// Nodes that have joined `group` (crashed ones included: they keep their memberships).
    pub fn members(&self, group: SocketAddrV4) -> Vec<NodeIndex> {
        self.groups
            .get(&group)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Counters of the node at `idx`.
    pub fn stats(&self, idx: NodeIndex) -> SimStats {
        self.slots[idx.0].stats
    }

    /// Counters summed over all nodes.
    pub fn total_stats(&self) -> SimStats {
        let mut total = SimStats::default();
        for slot in &self.slots {
            total += &slot.stats;
        }
        total
    }

    /// A hash of every event processed so far (time, node, kind, sender and bytes). Equal seeds
    /// and equal nodes driven the same way give equal hashes.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Number of events processed so far (each observation counts once).
    pub fn events_processed(&self) -> u64 {
        self.events
    }

    /// Time of the next scheduled event (possibly a stale timer that will do nothing).
    pub fn next_event_time(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.at)
    }

    /// Drains the node at `idx` at the current time (commands, transmits, timer). Call it after
    /// mutating a node from outside. Does nothing to a crashed node, and is deferred to the end
    /// of a freeze for a frozen one.
    pub fn poke(&mut self, idx: NodeIndex) {
        self.drain(idx);
    }

    /// Extra one-way delay for every datagram this node receives (on top of the base latency).
    /// Lowering it while datagrams are in flight can reorder them.
    pub fn set_node_delay(&mut self, idx: NodeIndex, delay: Duration) {
        self.slots[idx.0].extra_delay = delay;
    }

    /// Makes every multicast copy addressed to this node get lost (or not): its multicast path
    /// is broken while unicast still works. Its own multicast loopback is unaffected.
    pub fn set_multicast_deaf(&mut self, idx: NodeIndex, deaf: bool) {
        self.slots[idx.0].multicast_deaf = deaf;
    }

    /// Overrides the loss model of this receiver's link (its burst state is kept).
    pub fn set_node_loss(&mut self, idx: NodeIndex, loss: LossModel) {
        self.slots[idx.0].loss = Some(loss);
    }

    /// Returns this receiver to the global loss model of [`SimConfig::loss`].
    pub fn clear_node_loss(&mut self, idx: NodeIndex) {
        self.slots[idx.0].loss = None;
    }

    /// Splits the network: datagrams sent from then on between nodes of different groups are
    /// dropped. Nodes listed in no group (including nodes added later) form one more group
    /// together. Replaces any earlier partition. Datagrams already in flight are unaffected.
    ///
    /// # Panics
    /// If a node is listed twice.
    pub fn partition(&mut self, groups: &[Vec<NodeIndex>]) {
        for slot in &mut self.slots {
            slot.side = None;
        }
        for (side, group) in groups.iter().enumerate() {
            for idx in group {
                let slot = &mut self.slots[idx.0];
                assert!(slot.side.is_none(), "qs-sim: {idx} in two partition groups");
                slot.side = Some(side);
            }
        }
        self.partitioned = true;
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        for slot in &mut self.slots {
            slot.side = None;
        }
        self.partitioned = false;
    }

    /// Crashes the node forever: it stops receiving, sending and timing out. Its value stays
    /// inspectable and its group memberships stay, so later copies addressed to it (and
    /// whatever it had queued while frozen) count as [`DropReason::Crash`].
    pub fn crash(&mut self, idx: NodeIndex) {
        let slot = &mut self.slots[idx.0];
        if slot.crashed {
            return;
        }
        slot.crashed = true;
        slot.frozen_until = None;
        slot.thaw_generation += 1;
        slot.timer_generation += 1;
        slot.timer_at = None;
        let backlog = std::mem::take(&mut slot.backlog);
        for arrival in backlog {
            self.schedule(self.now, Event::Arrival(arrival));
        }
    }

    /// Restarts a crashed node as `node` (a new process at the same address, e.g. with the
    /// same id and a new incarnation): it starts with empty group memberships, receives what
    /// arrives from now on, and is drained at once. No effect on a node that did not crash.
    pub fn restart(&mut self, idx: NodeIndex, node: N) {
        let slot = &mut self.slots[idx.0];
        if !slot.crashed {
            return;
        }
        slot.node = node;
        slot.crashed = false;
        slot.backlog.clear();
        slot.timer_generation += 1;
        slot.timer_at = None;
        for members in self.groups.values_mut() {
            members.remove(&idx);
        }
        self.drain(idx);
    }

    /// Drops every datagram sent from `from` to `to` from now on (one way: `to` may still
    /// reach `from`), as a partition does, until [`Sim::unblock_all`].
    pub fn block(&mut self, from: NodeIndex, to: NodeIndex) {
        self.blocked.insert((from, to));
    }

    /// Lifts every one-way block.
    pub fn unblock_all(&mut self) {
        self.blocked.clear();
    }

    /// The node crashed.
    pub fn is_crashed(&self, idx: NodeIndex) -> bool {
        self.slots[idx.0].crashed
    }

    /// Stalls the node until `until`: it processes nothing (no datagrams, timers or sends);
    /// datagrams arriving meanwhile are queued and delivered in arrival order when it resumes,
    /// like a stalled process whose socket buffer holds them. Freezing a frozen node extends
    /// the freeze to the later deadline. No effect on a crashed node or if `until <= now`.
    pub fn freeze(&mut self, idx: NodeIndex, until: Instant) {
        let now = self.now;
        let slot = &mut self.slots[idx.0];
        if slot.crashed || until <= now {
            return;
        }
        let until = slot.frozen_until.map_or(until, |u| u.max(until));
        slot.frozen_until = Some(until);
        slot.thaw_generation += 1;
        let generation = slot.thaw_generation;
        self.schedule(
            until,
            Event::Thaw {
                node: idx,
                generation,
            },
        );
    }

    /// The node is frozen now.
    pub fn is_frozen(&self, idx: NodeIndex) -> bool {
        self.slots[idx.0].frozen_until.is_some()
    }

    /// Processes every event with time `<= t`, calling `observer` after each, then sets the
    /// clock to `t` (if later).
    pub fn run_until(&mut self, t: Instant, observer: &mut impl FnMut(&mut Observation<'_, N>)) {
        while self.heap.peek().is_some_and(|s| s.at <= t) {
            self.step(observer);
        }
        self.now = self.now.max(t);
    }

    /// Advances the clock by `d`, as [`Sim::run_until`].
    pub fn run_for(&mut self, d: Duration, observer: &mut impl FnMut(&mut Observation<'_, N>)) {
        self.run_until(self.now + d, observer);
    }

    /// Processes events until none remain (returns `true`, the clock stays at the last event)
    /// or the next one is after `max_t` (returns `false`, the clock is set to `max_t`). Nodes
    /// with periodic timers are never idle: use [`Sim::run_while`] for them.
    pub fn run_until_idle(
        &mut self,
        max_t: Instant,
        observer: &mut impl FnMut(&mut Observation<'_, N>),
    ) -> bool {
        while self.heap.peek().is_some_and(|s| s.at <= max_t) {
            self.step(observer);
        }
        if self.heap.is_empty() {
            true
        } else {
            self.now = self.now.max(max_t);
            false
        }
    }

    /// Processes events while `keep_going(self)` holds (checked before each event). Returns
    /// `true` as soon as it no longer holds (the clock stays at the last event), or `false`
    /// when the next event is after `max_t` or none remains (the clock is set to `max_t`).
    pub fn run_while(
        &mut self,
        max_t: Instant,
        observer: &mut impl FnMut(&mut Observation<'_, N>),
        mut keep_going: impl FnMut(&Self) -> bool,
    ) -> bool {
        loop {
            if !keep_going(self) {
                return true;
            }
            if self.heap.peek().is_none_or(|s| s.at > max_t) {
                self.now = self.now.max(max_t);
                return false;
            }
            self.step(observer);
        }
    }

    /// Processes the earliest scheduled event (which may be a stale timer that does nothing).
    /// Returns `false` if there was none.
    pub fn step(&mut self, observer: &mut impl FnMut(&mut Observation<'_, N>)) -> bool {
        let Some(Scheduled { at, event, .. }) = self.heap.pop() else {
            return false;
        };
        debug_assert!(at >= self.now, "qs-sim: event scheduled in the past");
        self.now = at;
        match event {
            Event::Arrival(arrival) => self.arrive(arrival, observer),
            Event::Timer { node, generation } => self.fire_timer(node, generation, observer),
            Event::Thaw { node, generation } => self.thaw(node, generation, observer),
        }
        true
    }

    fn arrive(&mut self, a: Arrival, observer: &mut impl FnMut(&mut Observation<'_, N>)) {
        let slot = &mut self.slots[a.to.0];
        let reason = match a.fate {
            Fate::Lost => Some(DropReason::Loss),
            Fate::Partitioned => Some(DropReason::Partition),
            Fate::Deliver if slot.crashed => Some(DropReason::Crash),
            Fate::Deliver => None,
        };
        if let Some(reason) = reason {
            slot.stats.in_flight -= 1;
            match reason {
                DropReason::Loss => slot.stats.dropped_loss += 1,
                DropReason::Partition => slot.stats.dropped_partition += 1,
                DropReason::Crash => slot.stats.dropped_crash += 1,
            }
            let event = EventKind::Dropped {
                from: a.from,
                class: a.class,
                datagram: a.datagram,
                reason,
            };
            self.observe(a.to, event, observer);
        } else if slot.frozen_until.is_some() {
            let event = EventKind::Deferred {
                from: a.from,
                class: a.class,
                datagram: a.datagram.clone(),
            };
            let to = a.to;
            slot.backlog.push_back(a);
            self.observe(to, event, observer);
        } else {
            self.deliver(a, observer);
        }
    }

    /// Hands a copy to a live, unfrozen node, drains it and reports it.
    fn deliver(&mut self, a: Arrival, observer: &mut impl FnMut(&mut Observation<'_, N>)) {
        let now = self.now;
        let slot = &mut self.slots[a.to.0];
        slot.stats.in_flight -= 1;
        slot.stats.delivered += 1;
        slot.node.handle_datagram(now, a.from, a.datagram.clone());
        self.drain(a.to);
        let event = EventKind::Delivered {
            from: a.from,
            class: a.class,
            datagram: a.datagram,
            corrupted: a.corrupted,
            duplicate: a.duplicate,
        };
        self.observe(a.to, event, observer);
    }

    fn fire_timer(
        &mut self,
        idx: NodeIndex,
        generation: u64,
        observer: &mut impl FnMut(&mut Observation<'_, N>),
    ) {
        let now = self.now;
        let slot = &mut self.slots[idx.0];
        if generation != slot.timer_generation || slot.crashed || slot.frozen_until.is_some() {
            // Stale, or the node cannot run: a thaw re-arms the timer.
            return;
        }
        slot.timer_at = None;
        let due = slot.node.poll_timeout().is_some_and(|d| d <= now);
        if due {
            if slot.spin_at == now {
                slot.spin_count += 1;
                assert!(
                    slot.spin_count < TIMER_SPIN_MAX,
                    "qs-sim: {idx} still has a timer due at {now:?} after {TIMER_SPIN_MAX} \
                     handle_timeout calls (a core must leave nothing due after handle_timeout)"
                );
            } else {
                slot.spin_at = now;
                slot.spin_count = 0;
            }
            slot.stats.timeouts += 1;
            slot.node.handle_timeout(now);
        }
        self.drain(idx);
        if due {
            self.observe(idx, EventKind::Timeout, observer);
        }
    }

    fn thaw(
        &mut self,
        idx: NodeIndex,
        generation: u64,
        observer: &mut impl FnMut(&mut Observation<'_, N>),
    ) {
        let slot = &mut self.slots[idx.0];
        if generation != slot.thaw_generation || slot.crashed {
            return;
        }
        slot.frozen_until = None;
        // Timer events that fired during the freeze were skipped: arm the timer afresh.
        slot.timer_generation += 1;
        slot.timer_at = None;
        self.drain(idx);
        self.observe(idx, EventKind::Resumed, observer);
        // Deliver the whole backlog inside this event so that nothing scheduled for the same
        // instant can overtake it.
        while let Some(a) = self.slots[idx.0].backlog.pop_front() {
            if self.slots[idx.0].crashed || self.slots[idx.0].frozen_until.is_some() {
                // The observer cannot crash or freeze a node, but stay safe if that changes.
                self.slots[idx.0].backlog.push_front(a);
                break;
            }
            self.deliver(a, observer);
        }
    }

    /// Folds the event into the trace hash, then lets the observer look at the node.
    fn observe(
        &mut self,
        idx: NodeIndex,
        event: EventKind,
        observer: &mut impl FnMut(&mut Observation<'_, N>),
    ) {
        let mut record = [0u8; 52];
        record[..8].copy_from_slice(&self.trace.to_le_bytes());
        record[8..16].copy_from_slice(&self.now.as_nanos().to_le_bytes());
        record[16..24].copy_from_slice(&(idx.0 as u64).to_le_bytes());
        record[24] = event.tag();
        if let Some((from, datagram)) = event.datagram() {
            record[25..33].copy_from_slice(&xxh3_64(datagram).to_le_bytes());
            record[33..52].copy_from_slice(&addr_bytes(from));
        }
        self.trace = xxh3_64(&record);
        self.events += 1;
        let mut observation = Observation {
            now: self.now,
            index: idx,
            node: &mut self.slots[idx.0].node,
            event,
        };
        observer(&mut observation);
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Applies the node's commands, sends everything it has to send and re-arms its timer.
    fn drain(&mut self, idx: NodeIndex) {
        let now = self.now;
        {
            let slot = &self.slots[idx.0];
            if slot.crashed || slot.frozen_until.is_some() {
                return;
            }
        }
        self.apply_commands(idx);
        let mut sent = 0u64;
        while let Some(t) = self.slots[idx.0].node.poll_transmit(now, &mut self.buf) {
            assert!(
                t.len <= self.buf.len(),
                "qs-sim: {idx} reported a {}-byte transmit into a {}-byte buffer",
                t.len,
                self.buf.len()
            );
            sent += 1;
            assert!(
                sent < DRAIN_TRANSMITS_MAX,
                "qs-sim: {idx} never stops transmitting"
            );
            let datagram = Bytes::copy_from_slice(&self.buf[..t.len]);
            self.route(idx, t.destination, t.class, datagram);
        }
        // Building packets may have changed memberships too.
        self.apply_commands(idx);
        let slot = &mut self.slots[idx.0];
        let deadline = slot.node.poll_timeout();
        if deadline != slot.timer_at {
            slot.timer_generation += 1;
            slot.timer_at = deadline;
            if let Some(deadline) = deadline {
                let generation = slot.timer_generation;
                self.schedule(
                    deadline.max(now),
                    Event::Timer {
                        node: idx,
                        generation,
                    },
                );
            }
        }
    }

    fn apply_commands(&mut self, idx: NodeIndex) {
        while let Some(command) = self.slots[idx.0].node.poll_command() {
            match command {
                SocketCommand::JoinGroup(group) => {
                    self.groups.entry(group).or_default().insert(idx);
                }
                SocketCommand::LeaveGroup(group) => {
                    if let Some(members) = self.groups.get_mut(&group) {
                        members.remove(&idx);
                        if members.is_empty() {
                            self.groups.remove(&group);
                        }
                    }
                }
            }
        }
    }

    /// Sends one transmitted datagram to its receivers.
    fn route(&mut self, from: NodeIndex, to: SocketAddr, class: TrafficClass, datagram: Bytes) {
        self.slots[from.0].stats.sent += 1;
        match to {
            SocketAddr::V4(v4) if v4.ip().is_multicast() => {
                // Collected first: routing needs `&mut self`. Index order keeps it deterministic.
                let members: Vec<NodeIndex> = self
                    .groups
                    .get(&v4)
                    .map(|m| m.iter().copied().collect())
                    .unwrap_or_default();
                for receiver in members {
                    self.send_copy(from, receiver, class, datagram.clone(), false);
                }
            }
            // Nobody can join an IPv6 group: such a datagram reaches no one, like a multicast
            // group without members.
            SocketAddr::V6(v6) if v6.ip().is_multicast() => {}
            unicast => match self.by_addr.get(&unicast) {
                Some(&receiver) => self.send_copy(from, receiver, class, datagram, true),
                None => self.slots[from.0].stats.unroutable += 1,
            },
        }
    }

    /// Decides the fate of one copy for one receiver and schedules its arrival.
    fn send_copy(
        &mut self,
        from: NodeIndex,
        to: NodeIndex,
        class: TrafficClass,
        datagram: Bytes,
        unicast: bool,
    ) {
        let now = self.now;
        let from_addr = self.slots[from.0].addr;
        let crosses = (self.partitioned && self.slots[from.0].side != self.slots[to.0].side)
            || self.blocked.contains(&(from, to));
        let config = &self.config;
        let slot = &mut self.slots[to.0];
        slot.stats.routed += 1;
        if from == to {
            // Multicast loopback never touches the wire: no faults, base latency only.
            slot.stats.in_flight += 1;
            let arrival = Arrival {
                to,
                from: from_addr,
                class,
                datagram,
                fate: Fate::Deliver,
                corrupted: false,
                duplicate: false,
            };
            self.schedule(now + self.config.latency, Event::Arrival(arrival));
            return;
        }
        let model = slot.loss.unwrap_or(config.loss);
        let fate = if crosses {
            Fate::Partitioned
        } else if (!unicast && slot.multicast_deaf)
            || slot.loss_state.lose(&model, &mut slot.rng)
            || (unicast
                && class == TrafficClass::Control
                && config.unicast_control_loss > 0.0
                && slot.rng.chance(config.unicast_control_loss))
        {
            Fate::Lost
        } else {
            Fate::Deliver
        };
        let mut delay = config.latency + slot.extra_delay;
        if !config.jitter.is_zero() {
            let span = u64::try_from(config.jitter.as_nanos()).unwrap_or(u64::MAX - 1);
            delay += Duration::from_nanos(slot.rng.below(span + 1));
        }
        let mut datagram = datagram;
        let mut corrupted = false;
        let mut duplicate = false;
        if fate == Fate::Deliver {
            if !datagram.is_empty() && slot.rng.chance(config.corrupt) {
                let bit = slot.rng.below(datagram.len() as u64 * 8);
                let mut bytes = datagram.to_vec();
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                datagram = Bytes::from(bytes);
                corrupted = true;
                slot.stats.corrupted += 1;
            }
            duplicate = slot.rng.chance(config.duplicate);
        }
        let duplicate_delay = config.duplicate_delay;
        slot.stats.in_flight += 1;
        let at = now + delay;
        if duplicate {
            slot.stats.duplicated += 1;
            slot.stats.in_flight += 1;
        }
        let copy = duplicate.then(|| datagram.clone());
        let arrival = Arrival {
            to,
            from: from_addr,
            class,
            datagram,
            fate,
            corrupted,
            duplicate: false,
        };
        self.schedule(at, Event::Arrival(arrival));
        if let Some(datagram) = copy {
            let arrival = Arrival {
                to,
                from: from_addr,
                class,
                datagram,
                fate,
                corrupted,
                duplicate: true,
            };
            self.schedule(at + duplicate_delay, Event::Arrival(arrival));
        }
    }
}

fn addr_bytes(addr: &SocketAddr) -> [u8; 19] {
    let mut out = [0u8; 19];
    match addr {
        SocketAddr::V4(a) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&a.ip().octets());
            out[5..7].copy_from_slice(&a.port().to_le_bytes());
        }
        SocketAddr::V6(a) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&a.ip().octets());
            out[17..19].copy_from_slice(&a.port().to_le_bytes());
        }
    }
    out
}
