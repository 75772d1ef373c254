//! Multicast reachability (DESIGN.md §5): every node says which region groups it should hear
//! but does not, so that senders can serve those members by unicast fan-out until the
//! multicast path works (IGMP snooping gone wrong, clouds without multicast).
//!
//! * Local detection: the owner declares each region it should hear with
//!   [`Reachability::expect`] (and how many members are currently sending to it) and reports
//!   multicast data with [`Reachability::heard`]. A region is *silent* when senders are active
//!   and nothing was heard for longer than `silence_threshold` (counted from the later of the
//!   last data heard and the moment senders became active).
//! * Reports: our report is the sorted list of our silent regions (at most
//!   `regions_per_report_max`), versioned by us. It is published when the list changes and
//!   re-published every `refresh` while not empty; an empty report (all clear) is published
//!   once and then left to expire. Replicas keep the highest version per node, at most
//!   `reports_max` (empty reports are evicted first, then the oldest), and drop reports older
//!   than `expiry` or of members that are down or left ([`Reachability::forget`]).
//! * Reports are accepted only from their author (a report about member X only in a datagram
//!   from X; relayed or forged copies are refused, counted), and a region holds at most
//!   `deaf_per_region_max` members reported deaf (a report that would exceed it is refused,
//!   counted): a forged report cannot turn senders into unbounded unicast firehoses.
//! * Dissemination: a node pushes its own report to the round's partner while it is new
//!   (`hot_sends` pushes) and every `cold_every` rounds while it is not empty, and to any
//!   address the owner names ([`crate::GossipNode::push_reachability_to`]: the senders of
//!   its region, who act on it), within `payload_max` bytes.
//! * Every node (ourselves included) keeps the index region → members that do not hear it
//!   ([`Reachability::unreachable_members`]) and emits a [`ReachabilityEvent`] whenever a pair
//!   enters or leaves it, whatever the cause (report, expiry, forget).
//!
//! Not done: per-sender silence (a member hearing some senders of a region but not others
//! counts as hearing it); active probing of the path (we rely on data, so a region without
//! traffic is never judged).
//!
//! Bulk payload: `reports u8 | report*`, `report = node u64 | version u64 | age ms u32 |
//! regions u8 | regions × region u64` (regions strictly increasing).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use qs_transport::wire::WireError;
use qs_transport::{Instant, NodeId, RegionId};

use crate::epidemic::{born_at, ms, older_than, Owed};
use crate::object::{GossipObject, Outbox, Peer, PeerView};
use crate::wire::{Priority, Reader};

/// Section tag of the reachability object.
pub const REACHABILITY_TAG: u8 = 2;

/// A change in who does not hear which region's multicast, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReachabilityEvent {
    /// `member` reported it does not hear `region`: serve it by unicast.
    MemberUnreachable {
        /// The silent member (possibly ourselves).
        member: NodeId,
        /// The region it does not hear.
        region: RegionId,
    },
    /// `member` hears `region` again (or its report expired, or it is gone).
    MemberReachable {
        /// The member.
        member: NodeId,
        /// The region.
        region: RegionId,
    },
}

/// One node's replicated reachability report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachabilityReport {
    /// Bumped by the node on every change and refresh.
    pub version: u64,
    /// Regions it does not hear, strictly increasing.
    pub silent: Vec<RegionId>,
}

/// Reachability settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReachabilityConfig {
    /// Silence while senders are active for longer than this makes a region unreachable.
    pub silence_threshold: Duration,
    /// A non-empty report is re-published this often.
    pub refresh: Duration,
    /// Reports older than this are dropped (a few `refresh`es).
    pub expiry: Duration,
    /// Most silent regions per report (ours are truncated; longer ones are malformed).
    pub regions_per_report_max: usize,
    /// Most reports held (ours included).
    pub reports_max: usize,
    /// Most regions we watch.
    pub expected_max: usize,
    /// Most members held as deaf to one region.
    pub deaf_per_region_max: usize,
    /// Pushes of each new report before it only travels with the round-robin walk.
    pub hot_sends: u8,
    /// With nothing new, push every this many rounds.
    pub cold_every: u32,
    /// Largest payload per push (further bounded by the runtime's budget).
    pub payload_max: usize,
}

impl Default for ReachabilityConfig {
    fn default() -> ReachabilityConfig {
        ReachabilityConfig {
            silence_threshold: Duration::from_secs(2),
            refresh: Duration::from_secs(10),
            expiry: Duration::from_secs(35),
            regions_per_report_max: 32,
            reports_max: 1024,
            expected_max: 1024,
            deaf_per_region_max: 32,
            hot_sends: 8,
            cold_every: 5,
            payload_max: 400,
        }
    }
}

/// Counters of the reachability object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReachabilityStats {
    /// Reports accepted (new or newer).
    pub reports_merged: u64,
    /// Reports refused or evicted because the table was full.
    pub reports_overflow: u64,
    /// Reports dropped because they expired.
    pub reports_expired: u64,
    /// Reports refused: too old, or born before their node was forgotten.
    pub reports_stale: u64,
    /// Reports refused because they did not come from their author.
    pub reports_not_own: u64,
    /// Reports refused because a region already holds `deaf_per_region_max` deaf members.
    pub deaf_overflow: u64,
    /// Versions of our own report published.
    pub reports_published: u64,
    /// Regions not watched because `expected_max` were.
    pub expected_overflow: u64,
    /// Reports sent.
    pub reports_sent: u64,
    /// Events dropped from the full queue.
    pub events_overflow: u64,
    /// Payloads that would have exceeded the budget (a bug if not zero).
    pub budget_exceeded: u64,
    /// Peers dropped because too many pushes were pending.
    pub owed_overflow: u64,
}

#[derive(Debug, Clone, Copy)]
struct Watch {
    senders: usize,
    /// Silence is measured from here: when senders became active, or data was last heard.
    since: Instant,
}

#[derive(Debug, Clone)]
struct Entry {
    report: ReachabilityReport,
    born: i64,
    hot: u8,
}

const EVENTS_MAX: usize = 4096;
const FORGOTTEN_MAX: usize = 4096;

fn report_len(r: &ReachabilityReport) -> usize {
    8 + 8 + 4 + 1 + 8 * r.silent.len()
}

type Decoded = Vec<(NodeId, ReachabilityReport, u32)>;

fn decode(payload: &[u8], regions_max: usize) -> Result<Decoded, WireError> {
    let mut r = Reader::new(payload);
    let n = usize::from(r.u8()?);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = NodeId(r.u64()?);
        let version = r.u64()?;
        let age = r.u32()?;
        let k = usize::from(r.u8()?);
        if k > regions_max {
            return Err(WireError::Malformed);
        }
        let mut silent = Vec::with_capacity(k);
        for _ in 0..k {
            silent.push(RegionId(r.u64()?));
        }
        if silent.windows(2).any(|w| w[0] >= w[1]) {
            return Err(WireError::Malformed);
        }
        out.push((id, ReachabilityReport { version, silent }, age));
    }
    if !r.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok(out)
}

/// The multicast reachability object. See the module documentation.
#[derive(Debug)]
pub struct Reachability {
    me: NodeId,
    config: ReachabilityConfig,
    watch: BTreeMap<RegionId, Watch>,
    version: u64,
    reports: BTreeMap<NodeId, Entry>,
    index: BTreeMap<RegionId, BTreeSet<NodeId>>,
    forgotten: BTreeMap<NodeId, i64>,
    events: VecDeque<ReachabilityEvent>,
    owed: Owed,
    rounds: u64,
    stats: ReachabilityStats,
}

impl Reachability {
    /// The reachability object of node `me`, watching nothing.
    pub fn new(me: NodeId, config: ReachabilityConfig) -> Reachability {
        Reachability {
            me,
            config,
            watch: BTreeMap::new(),
            version: 0,
            reports: BTreeMap::new(),
            index: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            events: VecDeque::new(),
            owed: Owed::new(64),
            rounds: 0,
            stats: ReachabilityStats::default(),
        }
    }

    /// We should hear `region`'s multicast, to which `senders` members are currently sending
    /// (0: nothing to hear, silence is fine). Call again whenever the count changes.
    pub fn expect(&mut self, now: Instant, region: RegionId, senders: usize) {
        let full = self.watch.len() >= self.config.expected_max;
        match self.watch.get_mut(&region) {
            Some(w) => {
                if w.senders == 0 && senders > 0 {
                    w.since = now;
                }
                w.senders = senders;
            }
            None if full => {
                self.stats.expected_overflow += 1;
            }
            None => {
                self.watch.insert(
                    region,
                    Watch {
                        senders,
                        since: now,
                    },
                );
            }
        }
        self.evaluate(now);
    }

    /// We no longer need to hear `region`.
    pub fn unexpect(&mut self, now: Instant, region: RegionId) {
        self.watch.remove(&region);
        self.evaluate(now);
    }

    /// Multicast data for `region` arrived at `now`.
    pub fn heard(&mut self, now: Instant, region: RegionId) {
        if let Some(w) = self.watch.get_mut(&region) {
            if w.since < now {
                w.since = now;
            }
            if self.silent_regions().binary_search(&region).is_ok() {
                self.evaluate(now);
            }
        }
    }

    /// The regions we do not hear (our current report).
    pub fn silent_regions(&self) -> &[RegionId] {
        self.reports
            .get(&self.me)
            .map_or(&[], |e| e.report.silent.as_slice())
    }

    /// Members that reported they do not hear `region` (serve them by unicast), by id.
    pub fn unreachable_members(&self, region: RegionId) -> impl Iterator<Item = NodeId> + '_ {
        self.index.get(&region).into_iter().flatten().copied()
    }

    /// Whether `member` is not known to miss `region`'s multicast.
    pub fn is_reachable(&self, member: NodeId, region: RegionId) -> bool {
        !self.index.get(&region).is_some_and(|s| s.contains(&member))
    }

    /// Regions some member does not hear.
    pub fn unreachable_regions(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.index.keys().copied()
    }

    /// The held report of `id`.
    pub fn report(&self, id: NodeId) -> Option<&ReachabilityReport> {
        self.reports.get(&id).map(|e| &e.report)
    }

    /// Reports held (empty ones included).
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// No report held.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ReachabilityEvent> {
        self.events.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> ReachabilityStats {
        ReachabilityStats {
            owed_overflow: self.owed.overflow,
            ..self.stats
        }
    }

    /// Accepts copies about `id` again (membership holds it live again).
    pub fn readmit(&mut self, id: NodeId) {
        self.forgotten.remove(&id);
    }

    /// Drops the report of a member that is down or left, and refuses copies until it is readmitted (or
    /// twice `expiry` passed).
    pub fn forget(&mut self, now: Instant, id: NodeId) {
        if id == self.me {
            return;
        }
        self.set(id, None);
        if self.forgotten.len() < FORGOTTEN_MAX || self.forgotten.contains_key(&id) {
            self.forgotten.insert(id, born_at(now, 0));
        }
    }

    fn push_event(&mut self, e: ReachabilityEvent) {
        if self.events.len() >= EVENTS_MAX {
            self.stats.events_overflow += 1;
        } else {
            self.events.push_back(e);
        }
    }

    /// Replaces (or removes) the report of `id`, keeping the index and emitting events.
    fn set(&mut self, id: NodeId, new: Option<Entry>) {
        let old: Vec<RegionId> = self
            .reports
            .get(&id)
            .map(|e| e.report.silent.clone())
            .unwrap_or_default();
        let now_silent: Vec<RegionId> = new
            .as_ref()
            .map(|e| e.report.silent.clone())
            .unwrap_or_default();
        match new {
            Some(e) => {
                self.reports.insert(id, e);
            }
            None => {
                self.reports.remove(&id);
            }
        }
        for r in &old {
            if now_silent.binary_search(r).is_err() {
                if let Some(s) = self.index.get_mut(r) {
                    s.remove(&id);
                    if s.is_empty() {
                        self.index.remove(r);
                    }
                }
                self.push_event(ReachabilityEvent::MemberReachable {
                    member: id,
                    region: *r,
                });
            }
        }
        for r in &now_silent {
            if old.binary_search(r).is_err() {
                self.index.entry(*r).or_default().insert(id);
                self.push_event(ReachabilityEvent::MemberUnreachable {
                    member: id,
                    region: *r,
                });
            }
        }
    }

    /// Recomputes our silent regions and publishes a new report if they changed.
    fn evaluate(&mut self, now: Instant) {
        let threshold = self.config.silence_threshold;
        let mut silent: Vec<RegionId> = self
            .watch
            .iter()
            .filter(|(_, w)| w.senders > 0 && now - w.since > threshold)
            .map(|(r, _)| *r)
            .collect();
        silent.truncate(self.config.regions_per_report_max);
        let current = self.reports.get(&self.me).map(|e| &e.report.silent);
        if current.map_or(silent.is_empty(), |c| *c == silent) {
            return;
        }
        self.publish(now, silent);
    }

    fn publish(&mut self, now: Instant, silent: Vec<RegionId>) {
        self.version += 1;
        self.stats.reports_published += 1;
        let e = Entry {
            report: ReachabilityReport {
                version: self.version,
                silent,
            },
            born: born_at(now, 0),
            hot: self.config.hot_sends,
        };
        self.set(self.me, Some(e));
    }

    /// Queues a push of our own report to `to`; false if too many pushes are pending.
    pub(crate) fn owe(&mut self, to: std::net::SocketAddr) -> bool {
        self.reports.contains_key(&self.me) && self.owed.add(to)
    }

    fn merge(
        &mut self,
        now: Instant,
        from: Option<NodeId>,
        id: NodeId,
        report: ReachabilityReport,
        age: u32,
    ) {
        if id == self.me {
            return;
        }
        if from != Some(id) {
            // Only a member says what it does not hear.
            self.stats.reports_not_own += 1;
            return;
        }
        let old_silent: &[RegionId] = self
            .reports
            .get(&id)
            .map_or(&[], |e| e.report.silent.as_slice());
        let full = report.silent.iter().any(|r| {
            old_silent.binary_search(r).is_err()
                && self
                    .index
                    .get(r)
                    .is_some_and(|s| s.len() >= self.config.deaf_per_region_max)
        });
        if full {
            self.stats.deaf_overflow += 1;
            return;
        }
        let born = born_at(now, age);
        // A forgotten node stays out until membership readmits it ([`Self::readmit`]): a
        // copy from someone who has not heard yet (and vouched for it since) must not bring
        // it back.
        if age >= ms(self.config.expiry) || self.forgotten.contains_key(&id) {
            self.stats.reports_stale += 1;
            return;
        }
        match self.reports.get(&id) {
            Some(old) if old.report.version >= report.version => return,
            Some(_) => {}
            None if self.reports.len() >= self.config.reports_max => {
                // Evict an empty report first, then the oldest; never ours.
                let victim = self
                    .reports
                    .iter()
                    .filter(|(vid, _)| **vid != self.me)
                    .map(|(vid, e)| ((!e.report.silent.is_empty(), e.born), *vid))
                    .min();
                self.stats.reports_overflow += 1;
                match victim {
                    Some(((nonempty, vborn), vid))
                        if (nonempty, vborn) < (!report.silent.is_empty(), born) =>
                    {
                        self.set(vid, None);
                    }
                    _ => return,
                }
            }
            None => {}
        }
        self.stats.reports_merged += 1;
        let e = Entry {
            report,
            born,
            hot: self.config.hot_sends,
        };
        self.set(id, Some(e));
    }

    fn expire(&mut self, now: Instant) {
        let expiry = self.config.expiry;
        let me = self.me;
        let old: Vec<NodeId> = self
            .reports
            .iter()
            .filter(|(id, e)| {
                older_than(now, e.born, expiry) && (**id != me || e.report.silent.is_empty())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.stats.reports_expired += 1;
            self.set(id, None);
        }
        self.forgotten
            .retain(|_, f| !older_than(now, *f, expiry + expiry));
    }

    fn refresh_own(&mut self, now: Instant) {
        let due = self.reports.get(&self.me).is_some_and(|e| {
            !e.report.silent.is_empty() && older_than(now, e.born, self.config.refresh)
        });
        if due {
            let silent = self.silent_regions().to_vec();
            self.publish(now, silent);
        }
    }

    fn write_push(&mut self, now: Instant, budget: usize, out: &mut Vec<u8>) {
        let budget = budget.min(self.config.payload_max);
        let Some(e) = self.reports.get_mut(&self.me) else {
            return;
        };
        if 1 + report_len(&e.report) > budget {
            return;
        }
        e.hot = e.hot.saturating_sub(1);
        out.push(1);
        out.extend_from_slice(&self.me.0.to_be_bytes());
        out.extend_from_slice(&e.report.version.to_be_bytes());
        out.extend_from_slice(&crate::epidemic::age_ms(now, e.born).to_be_bytes());
        out.push(e.report.silent.len() as u8);
        for r in &e.report.silent {
            out.extend_from_slice(&r.0.to_be_bytes());
        }
        self.stats.reports_sent += 1;
    }
}

impl GossipObject for Reachability {
    fn tag(&self) -> u8 {
        REACHABILITY_TAG
    }
    fn name(&self) -> &'static str {
        "reachability"
    }
    fn view(&self) -> PeerView {
        let Some(own) = self.reports.get(&self.me) else {
            return PeerView::Nobody;
        };
        let cold = self.rounds % u64::from(self.config.cold_every.max(1)) == 0;
        if own.hot > 0 || (cold && !own.report.silent.is_empty()) {
            PeerView::Uniform
        } else {
            PeerView::Nobody
        }
    }
    fn on_round(&mut self, now: Instant, _out: &mut Outbox<'_>) {
        self.rounds += 1;
        self.expire(now);
        self.evaluate(now);
        self.refresh_own(now);
    }
    fn gossip_with(&mut self, _now: Instant, peer: &Peer, out: &mut Outbox<'_>) {
        if self.owed.add(peer.addr) {
            out.initiate(peer);
        }
    }
    fn forget_peer(&mut self, addr: std::net::SocketAddr) {
        self.owed.take(addr);
    }
    fn write(
        &mut self,
        now: Instant,
        to: &Peer,
        priority: Priority,
        budget: usize,
        out: &mut Vec<u8>,
    ) {
        if priority == Priority::Bulk && self.owed.take(to.addr) {
            let _ = to;
            self.write_push(now, budget, out);
        }
    }
    fn handle(
        &mut self,
        now: Instant,
        from: &Peer,
        priority: Priority,
        payload: &[u8],
        _out: &mut Outbox<'_>,
    ) -> Result<(), WireError> {
        if priority != Priority::Bulk {
            return Err(WireError::Malformed);
        }
        for (id, report, age) in decode(payload, self.config.regions_per_report_max)? {
            self.merge(now, from.id, id, report, age);
        }
        Ok(())
    }
    fn check_invariants(&self) {
        assert!(self.reports.len() <= self.config.reports_max.max(1) + 1);
        assert!(self.watch.len() <= self.config.expected_max);
        assert!(self.events.len() <= EVENTS_MAX);
        assert!(self.forgotten.len() <= FORGOTTEN_MAX);
        assert!(self.owed.len() <= self.owed.max());
        for s in self.index.values() {
            assert!(s.len() <= self.config.deaf_per_region_max + 1);
        }
        let mut index: BTreeMap<RegionId, BTreeSet<NodeId>> = BTreeMap::new();
        for (id, e) in &self.reports {
            assert!(e.report.silent.windows(2).all(|w| w[0] < w[1]));
            assert!(e.report.silent.len() <= self.config.regions_per_report_max);
            for r in &e.report.silent {
                index.entry(*r).or_default().insert(*id);
            }
        }
        assert_eq!(index, self.index, "the region index drifted");
        if let Some(e) = self.reports.get(&self.me) {
            assert_eq!(e.report.version, self.version);
        }
        assert_eq!(
            self.stats.budget_exceeded, 0,
            "a payload exceeded its budget"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::Peers;
    use std::net::SocketAddr;

    fn peer(i: u64) -> Peer {
        Peer {
            id: Some(NodeId(i)),
            addr: SocketAddr::from(([10, 0, 0, i as u8], 7000)),
        }
    }

    fn push(from: &mut Reachability, to: &mut Reachability, now: Instant, budget: usize) {
        let mut peers = Peers::scratch(now);
        let p = peer(to.me.0);
        from.gossip_with(now, &p, &mut Outbox::new(&mut peers, 0, now));
        let mut out = Vec::new();
        from.write(now, &p, Priority::Bulk, budget, &mut out);
        assert!(out.len() <= budget);
        if !out.is_empty() {
            to.handle(
                now,
                &peer(from.me.0),
                Priority::Bulk,
                &out,
                &mut Outbox::new(&mut peers, 0, now),
            )
            .unwrap();
        }
    }

    #[test]
    fn silence_with_active_senders_is_reported_and_cleared_when_data_returns() {
        let cfg = ReachabilityConfig::default();
        let r = RegionId(42);
        let t0 = Instant(1_000_000_000);
        let mut a = Reachability::new(NodeId(1), cfg.clone());
        let mut b = Reachability::new(NodeId(2), cfg.clone());
        a.expect(t0, r, 0);
        let mut peers = Peers::scratch(t0);
        a.on_round(
            t0 + Duration::from_secs(10),
            &mut Outbox::new(&mut peers, 0, t0),
        );
        assert!(a.silent_regions().is_empty(), "no sender, no silence");
        let t1 = t0 + Duration::from_secs(10);
        a.expect(t1, r, 2);
        a.on_round(
            t1 + cfg.silence_threshold,
            &mut Outbox::new(&mut peers, 0, t0),
        );
        assert!(
            a.silent_regions().is_empty(),
            "threshold is not exceeded yet"
        );
        let t2 = t1 + cfg.silence_threshold + Duration::from_millis(1);
        a.on_round(t2, &mut Outbox::new(&mut peers, 0, t0));
        assert_eq!(a.silent_regions(), &[r]);
        assert_eq!(
            a.poll_event(),
            Some(ReachabilityEvent::MemberUnreachable {
                member: NodeId(1),
                region: r
            })
        );
        push(&mut a, &mut b, t2, 400);
        assert_eq!(
            b.unreachable_members(r).collect::<Vec<_>>(),
            vec![NodeId(1)]
        );
        a.heard(t2 + Duration::from_millis(5), r);
        assert!(a.silent_regions().is_empty());
        push(&mut a, &mut b, t2, 400);
        assert!(b.is_reachable(NodeId(1), r));
        assert_eq!(b.poll_event().map(|_| ()), Some(()));
        assert!(matches!(
            b.poll_event(),
            Some(ReachabilityEvent::MemberReachable { .. })
        ));
        a.check_invariants();
        b.check_invariants();
    }

    #[test]
    fn a_full_table_evicts_empty_reports_first() {
        let cfg = ReachabilityConfig {
            reports_max: 3,
            ..ReachabilityConfig::default()
        };
        let now = Instant(1_000_000_000);
        let mut me = Reachability::new(NodeId(100), cfg.clone());
        let mk = |v: u64, s: &[u64]| ReachabilityReport {
            version: v,
            silent: s.iter().map(|x| RegionId(*x)).collect(),
        };
        let own = |i: u64| Some(NodeId(i));
        me.merge(now, own(1), NodeId(1), mk(1, &[]), 0);
        me.merge(now, own(2), NodeId(2), mk(1, &[5]), 0);
        me.merge(now, own(3), NodeId(3), mk(1, &[5, 6]), 0);
        me.merge(now, own(4), NodeId(4), mk(1, &[7]), 0);
        assert_eq!(me.len(), 3);
        assert!(me.report(NodeId(1)).is_none());
        assert_eq!(me.unreachable_members(RegionId(5)).count(), 2);
        me.forget(now, NodeId(3));
        assert_eq!(me.unreachable_members(RegionId(5)).count(), 1);
        me.merge(now, own(3), NodeId(3), mk(2, &[5]), 10);
        assert!(
            me.report(NodeId(3)).is_none(),
            "born before it was forgotten"
        );
        me.check_invariants();
    }

    #[test]
    fn a_report_is_taken_only_from_its_author_and_a_region_holds_a_bounded_number_of_deaf_members()
    {
        let cfg = ReachabilityConfig {
            deaf_per_region_max: 2,
            ..ReachabilityConfig::default()
        };
        let now = Instant(1_000_000_000);
        let mut me = Reachability::new(NodeId(100), cfg);
        let mk = |v: u64, s: &[u64]| ReachabilityReport {
            version: v,
            silent: s.iter().map(|x| RegionId(*x)).collect(),
        };
        // A third party claims node 1 is deaf: refused.
        me.merge(now, Some(NodeId(9)), NodeId(1), mk(1, &[5]), 0);
        assert!(me.report(NodeId(1)).is_none());
        assert_eq!(me.stats().reports_not_own, 1);
        for i in 1..=3u64 {
            me.merge(now, Some(NodeId(i)), NodeId(i), mk(1, &[5]), 0);
        }
        assert_eq!(me.unreachable_members(RegionId(5)).count(), 2, "at the cap");
        assert_eq!(me.stats().deaf_overflow, 1);
        // A member already counted may refresh its report; another region is unaffected.
        me.merge(now, Some(NodeId(1)), NodeId(1), mk(2, &[5, 6]), 0);
        assert_eq!(me.unreachable_members(RegionId(6)).count(), 1);
        assert_eq!(me.stats().deaf_overflow, 1);
        me.check_invariants();
    }
}
