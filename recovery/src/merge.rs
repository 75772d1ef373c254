//! The pure parts of a token visit: what one member's stream becomes under a token record
//! ([`effective_progress`]), how the member's progress merges into the record
//! ([`merge_record`]) and whom it asks for each missing packet ([`repair_targets`]).
//!
//! Nothing here has state or touches the node: inputs are a read-only snapshot of the
//! member's receive window ([`StreamProgress`], taken with
//! [`crate::ReceiveWindow::state`]) and its caretaker cache; outputs are the member's
//! progress as the token must see it and the [`StreamUpdate`] the node applies to its window
//! and cache afterwards. The ring ([`crate::Ring`]) composes these per record.

use qs_transport::wire::{SeqRange, TokenRecord};
use qs_transport::{NodeId, Seq};

use crate::cache::Cache;
use crate::ranges::RangeSet;
use crate::ring::View;
use crate::window::WindowState;

/// One of this member's receive streams in the ring's region, read before a visit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamProgress {
    /// The stream's sender.
    pub sender: NodeId,
    /// The stream's epoch.
    pub epoch: u64,
    /// The window's state (`None`: nothing heard yet).
    pub window: Option<WindowState>,
    /// A ring round has counted this member's prefix of the stream: from then on, what the
    /// region's stability point passes that this member lacks is a loss, not history from
    /// before it joined.
    pub synced: bool,
}

/// A member's state of one sender's stream, as the token needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest sequence number this member knows of.
    pub highest: Option<Seq>,
    /// Everything up to here is delivered (or was before this member's time).
    pub prefix: Option<Seq>,
    /// Holes at or before the cut-off.
    pub missing: Vec<SeqRange>,
    /// Packets this member takes care of (after cleanup, at or before the cut-off) that it
    /// cannot serve: missing, or received but not cached (e.g. before a view change).
    pub cannot_serve: Vec<SeqRange>,
    /// The application is behind: deliveries wait for it (an isolated member rejoins only
    /// once it has caught up).
    pub app_behind: bool,
}

/// What a visit decided for one of this member's streams; the node applies it after the
/// visit: create the stream if it has none, `skip_to` (positions before it handed on or given
/// up, as losses when `as_loss`), mark it `synced`, learn that packets up to `highest` exist,
/// and free the cache up to `clean`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamUpdate {
    /// The stream's sender.
    pub sender: NodeId,
    /// The stream's epoch (a member holding an older epoch's stream replaces it).
    pub epoch: u64,
    /// The window's next position from now on (at least).
    pub skip_to: Seq,
    /// Positions skipped that this member lacks are losses (else: before its time).
    pub as_loss: bool,
    /// Whether a round has now counted the member's prefix.
    pub synced: bool,
    /// Packets up to here exist (the NAK cut-off).
    pub highest: Seq,
    /// Stable region-wide up to here: no longer cached.
    pub clean: Seq,
}

/// What the member brings to a visit besides the record and its stream.
#[derive(Debug, Clone, Copy)]
pub struct VisitInput<'a> {
    /// This member's partition.
    pub partition: usize,
    /// Partitions in the view.
    pub partitions: usize,
    /// Most sequence numbers per reported list.
    pub max: usize,
    /// This member isolated itself from the stream: what it lacks up to the cleanup point is
    /// given up as lost.
    pub isolated: bool,
    /// The receive window's capacity (a stream younger than this is claimed from its start).
    pub window_capacity: usize,
    /// The member may create another stream (its stream table is not full).
    pub can_add_stream: bool,
    /// The application is behind.
    pub app_behind: bool,
    /// The member's caretaker cache.
    pub cache: &'a Cache,
    /// Where streams start ([`Seq::FIRST`] unless the cluster starts them elsewhere).
    pub first: Seq,
}

/// The member's progress on `rec`'s stream as the token must see it, and what the node must
/// do to its window and cache (the same result as bringing the window in line first and
/// reading it afterwards; prefix and holes are conservative where the snapshot was cut).
pub fn effective_progress(
    rec: &TokenRecord,
    stream: Option<&StreamProgress>,
    input: &VisitInput<'_>,
) -> (Progress, Option<StreamUpdate>) {
    // A member's stream of an older epoch is over: for this record it has none. A record of
    // an older epoch than the member's stream is stale.
    let stream = match stream {
        Some(s) if s.epoch > rec.epoch => return (Progress::default(), None),
        Some(s) if s.epoch < rec.epoch => None,
        other => other,
    };
    let state = stream.and_then(|s| s.window.as_ref());
    let (cleanup, young_claim) = if rec.cleanup_unknown {
        // The leader's first round of this stream: a stream this member has is reported as
        // it is (nothing freed or skipped).
        if stream.is_some() {
            let progress = Progress {
                highest: state.map(|w| w.highest),
                prefix: state.map(|w| w.prefix),
                app_behind: input.app_behind,
                ..Progress::default()
            };
            return (progress, None);
        }
        // A young stream (its start still within the window) is claimed from its start, so
        // this member holds stability back until it has caught up; an old one is left for a
        // round whose cleanup is known.
        let young =
            (0..input.window_capacity as i64).contains(&input.first.distance_to(rec.cutoff));
        if !young {
            return (Progress::default(), None);
        }
        (Seq(input.first.0.wrapping_sub(1)), true)
    } else {
        (rec.cleanup, false)
    };
    if stream.is_none() && !input.can_add_stream {
        return (Progress::default(), None);
    }
    let synced_before = stream.is_some_and(|s| s.synced);
    let capacity = u32::try_from(input.window_capacity).unwrap_or(u32::MAX);
    // The window as the snapshot shows it (an empty one starts right after the cleanup).
    let (next, highest, holes, examined, room_end): (Seq, Seq, &[SeqRange], Seq, Seq) = match state
    {
        Some(w) => (
            w.prefix.next(),
            w.highest,
            &w.holes,
            w.examined_to,
            w.room_end,
        ),
        None => (
            cleanup.next(),
            cleanup,
            &[],
            cleanup,
            cleanup.advance(capacity),
        ),
    };
    let listed = RangeSet::from_ranges(Seq(next.0.wrapping_sub(1)), holes);
    let after_cleanup = cleanup.next();
    // Skipping to the cleanup point: what lies before it goes; the window then hands on the
    // packets it holds right after it.
    let (next, highest, room_end) = if next.is_before(after_cleanup) {
        let skipped: RangeSet = {
            let mut set = RangeSet::new(listed.base());
            for r in listed.ranges(usize::MAX) {
                if let Some(r) = clip(r, next, cleanup) {
                    set.insert(r);
                }
            }
            if highest.is_before(cleanup) {
                set.insert(SeqRange {
                    first: highest.next(),
                    count: highest.distance_to(cleanup) as u32,
                });
            }
            set
        };
        let new_highest = later(highest, cleanup);
        let first_hole = listed.iter().find(|s| cleanup.is_before(*s));
        let new_next = match first_hole {
            Some(h) => h,
            None if !examined.is_before(highest) => new_highest.next(),
            // Positions after the examined ones are unknown: assume the first is a hole.
            None => later(examined, cleanup).next(),
        };
        // The room moves on by the holes skipped, less the window's entry (up to two) for
        // each run of them it hands on as given up.
        let runs = skipped.ranges(usize::MAX).count() as i64;
        let moved = skipped.len() as i64 - 2 * runs;
        (
            new_next,
            new_highest,
            Seq((i64::from(room_end.0) + moved) as u32),
        )
    } else {
        (next, highest, room_end)
    };
    let highest = later(highest, rec.cutoff);
    let prefix = Seq(next.0.wrapping_sub(1));
    // The holes up to the cut-off the window could take now: listed ones, and every position
    // after the highest the snapshot knew of (never received).
    let last = earliest([rec.cutoff, highest, room_end]);
    let mut missing = RangeSet::new(prefix);
    let mut budget = input.max as u64;
    for r in listed.ranges(usize::MAX) {
        let clipped = clip(r, next, last);
        if let Some(r) = clipped.map(|r| take(r, &mut budget)) {
            missing.insert(r);
        }
    }
    let old_highest = match state {
        Some(w) if w.examined_to.is_before(w.highest) => None, // incomplete: unknown tail
        Some(w) => Some(later(w.highest, cleanup)),
        None => Some(cleanup),
    };
    if let Some(h) = old_highest {
        let tail = SeqRange {
            first: later(h, prefix).next(),
            count: u32::MAX,
        };
        if let Some(r) = clip(tail, next, last).map(|r| take(r, &mut budget)) {
            missing.insert(r);
        }
    }
    let progress = Progress {
        highest: Some(highest),
        prefix: Some(prefix),
        missing: missing.to_ranges(usize::MAX),
        cannot_serve: cannot_serve(rec, cleanup, input),
        app_behind: input.app_behind,
    };
    let update = StreamUpdate {
        sender: rec.sender,
        epoch: rec.epoch,
        skip_to: after_cleanup,
        as_loss: input.isolated || synced_before,
        synced: !young_claim,
        highest: rec.cutoff,
        clean: cleanup,
    };
    (progress, Some(update))
}

/// The packets after `cleanup`, at or before the cut-off, this member's partition takes care
/// of (caretaker of `s` is `(s - 1) mod P`) but does not hold (at most `max`).
fn cannot_serve(rec: &TokenRecord, cleanup: Seq, input: &VisitInput<'_>) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    let span = cleanup.distance_to(rec.cutoff);
    if span <= 0 {
        return out;
    }
    let epoch = rec.epoch;
    let p = input.partitions.max(1) as u64;
    let mut off = (input.partition as u64 + 1 + p - u64::from(cleanup.0) % p) % p;
    if off == 0 {
        off = p;
    }
    let mut taken = 0;
    while off <= span as u64 && taken < input.max {
        let s = cleanup.advance(off as u32);
        if !input.cache.holds(rec.sender, epoch, s) {
            taken += 1;
            out.push(SeqRange { first: s, count: 1 });
        }
        off += p;
    }
    out
}

/// Where the visiting member stands in the token's walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The member.
    pub me: NodeId,
    /// Its partition.
    pub partition: usize,
    /// The token enters the member's partition here.
    pub first_in_partition: bool,
    /// The token leaves the member's partition here.
    pub last_in_partition: bool,
    /// Ranges the token still has room for (beyond what its lists hold now).
    pub room: usize,
}

/// Merges one member's progress into its stream's record: the highest seen, the lowest
/// prefix (and who holds it), the partition's prefix, the receive rate, what the partition
/// lacks among its caretaker packets (intersected member by member) and, when the token
/// leaves the partition, the packets the sender must re-multicast (`naks`). An isolated
/// member's prefix does not hold the region back.
pub fn merge_record(
    rec: &mut TokenRecord,
    progress: &Progress,
    pos: &Position,
    rate: Option<u32>,
    isolated: bool,
) {
    if let Some(h) = progress.highest {
        if rec.highest.is_before(h) {
            rec.highest = h;
        }
    }
    if let Some(prefix) = progress.prefix.filter(|_| !isolated) {
        if let Some(r) = rate {
            rec.rates.add(r);
        }
        if rec.prefix.is_none_or(|q| prefix.is_before(q)) {
            rec.prefix = Some(prefix);
            rec.laggard = Some(pos.me);
        }
        if let Some(cur) = rec.partition_current.get_mut(pos.partition) {
            if cur.is_none_or(|q| prefix.is_before(q)) {
                *cur = Some(prefix);
            }
        }
    }
    let mine = RangeSet::from_ranges(rec.cleanup, &progress.cannot_serve);
    let lack = if pos.first_in_partition {
        mine
    } else {
        RangeSet::from_ranges(rec.cleanup, &rec.lack).intersection(&mine)
    };
    if pos.last_in_partition {
        let mut naks = RangeSet::from_ranges(rec.cleanup, &rec.naks);
        naks.union_with(&lack);
        rec.naks = naks.to_ranges(pos.room + rec.naks.len());
        rec.lack.clear();
    } else {
        rec.lack = lack.to_ranges(pos.room + rec.lack.len());
    }
}

/// Whom a member asks for packet `seq`: a neighbour of its own partition when its partition
/// takes care of `seq`, else a member of the caretaker partition — one when that partition's
/// proven prefix (`partition_prefix`, last round's) covers the packet (someone surely has
/// it), two while only some of its members may (a partition whose prefix is held back by an
/// unrelated hole must not hold this repair back). Targets rotate with the round.
pub fn repair_targets(
    view: &View,
    me: NodeId,
    round: u32,
    seq: Seq,
    partition_prefix: &[Option<Seq>],
) -> [Option<NodeId>; 2] {
    let mut targets = [None, None];
    let (Some(p), Ok(my_index)) = (view.partition_of(me), view.members().binary_search(&me)) else {
        return targets;
    };
    let round = round as usize;
    let q = view.caretaker(seq);
    let part = view.partition(q);
    if part.is_empty() {
        return targets;
    }
    if q == p {
        let pos = part.iter().position(|m| *m == me).unwrap_or(0);
        let t = part[(pos + 1 + round) % part.len()];
        targets[0] = (t != me).then_some(t);
    } else {
        let first = (my_index + round) % part.len();
        targets[0] = Some(part[first]);
        let proven = partition_prefix
            .get(q)
            .copied()
            .flatten()
            .is_some_and(|pp| !pp.is_before(seq));
        if !proven && part.len() > 1 {
            targets[1] = Some(part[(first + 1) % part.len()]);
        }
    }
    targets
}

/// The later of two sequence numbers.
fn later(a: Seq, b: Seq) -> Seq {
    if a.is_before(b) {
        b
    } else {
        a
    }
}

/// The earliest of several sequence numbers.
fn earliest(seqs: [Seq; 3]) -> Seq {
    seqs.into_iter()
        .reduce(|a, b| if b.is_before(a) { b } else { a })
        .expect("three values")
}

/// `r` cut to `[from, to]`, if anything is left.
fn clip(r: SeqRange, from: Seq, to: Seq) -> Option<SeqRange> {
    let start = if r.first.is_before(from) {
        from
    } else {
        r.first
    };
    let end = r.first.advance(r.count.saturating_sub(1)); // inclusive
    let end = if r.count as u64 > (1 << 31) || to.is_before(end) {
        to
    } else {
        end
    };
    let n = start.distance_to(end) + 1;
    (n > 0).then_some(SeqRange {
        first: start,
        count: n as u32,
    })
}

/// `r` cut to what is left of `budget` sequence numbers (which it uses up).
fn take(r: SeqRange, budget: &mut u64) -> SeqRange {
    let n = u64::from(r.count).min(*budget) as u32;
    *budget -= u64::from(n);
    SeqRange {
        first: r.first,
        count: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::ReceiveWindow;
    use proptest::prelude::*;
    use qs_transport::wire::RateAggregate;
    use qs_transport::Instant;
    use std::collections::BTreeSet;

    const T0: Instant = Instant::ZERO;
    const S: NodeId = NodeId(7);

    fn record(cutoff: u32, cleanup: Option<u32>, partitions: usize) -> TokenRecord {
        TokenRecord {
            sender: S,
            epoch: 1,
            highest: Seq(cutoff),
            cutoff: Seq(cutoff),
            prefix: None,
            laggard: None,
            cleanup: Seq(cleanup.unwrap_or(0)),
            cleanup_unknown: cleanup.is_none(),
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

    fn input(cache: &Cache, capacity: usize, max: usize) -> VisitInput<'_> {
        VisitInput {
            partition: 0,
            partitions: 1,
            max,
            isolated: false,
            window_capacity: capacity,
            can_add_stream: true,
            app_behind: false,
            cache,
            first: Seq::FIRST,
        }
    }

    /// Applies an update as the node does.
    fn apply(w: &mut ReceiveWindow<u32>, u: &StreamUpdate) {
        w.skip_to(T0, u.skip_to, u.as_loss);
        w.on_highest(T0, u.highest);
    }

    fn seqs(ranges: &[SeqRange]) -> BTreeSet<u32> {
        ranges.iter().flat_map(|r| r.iter()).map(|s| s.0).collect()
    }

    #[test]
    fn a_member_without_the_stream_starts_after_the_cleanup_and_misses_the_rest() {
        let cache = Cache::new(1 << 20);
        let (p, u) = effective_progress(&record(20, Some(10), 1), None, &input(&cache, 64, 100));
        let u = u.expect("created");
        assert_eq!((u.skip_to, u.as_loss, u.synced), (Seq(11), false, true));
        assert_eq!((p.prefix, p.highest), (Some(Seq(10)), Some(Seq(20))));
        assert_eq!(seqs(&p.missing), (11..=20).collect());
        assert_eq!(seqs(&p.cannot_serve), (11..=20).collect(), "nothing cached");
    }

    #[test]
    fn a_young_stream_is_claimed_from_its_start_and_an_old_one_is_left_alone() {
        let cache = Cache::new(1 << 20);
        let (p, u) = effective_progress(&record(30, None, 1), None, &input(&cache, 64, 100));
        let u = u.expect("claimed");
        assert_eq!((u.skip_to, u.synced), (Seq(1), false));
        assert_eq!(seqs(&p.missing), (1..=30).collect());
        let (p, u) = effective_progress(&record(65, None, 1), None, &input(&cache, 64, 100));
        assert_eq!((p, u), (Progress::default(), None), "older than the window");
        let (_, u) = effective_progress(&record(64, None, 1), None, &input(&cache, 64, 100));
        assert!(u.is_some(), "just inside the window");
    }

    #[test]
    fn a_stream_of_an_older_epoch_is_replaced_and_a_stale_record_ignored() {
        let cache = Cache::new(1 << 20);
        let mut w: ReceiveWindow<u32> = ReceiveWindow::reliable(64);
        for s in 1..=30 {
            w.insert(T0, Seq(s), s);
        }
        let old = StreamProgress {
            sender: S,
            epoch: 0,
            window: w.state(100),
            synced: true,
        };
        let (p, u) =
            effective_progress(&record(5, Some(0), 1), Some(&old), &input(&cache, 64, 100));
        let u = u.expect("a new stream");
        assert_eq!(
            (u.epoch, u.skip_to, u.as_loss),
            (1, Seq(1), false),
            "starts clean"
        );
        assert_eq!(
            seqs(&p.missing),
            (1..=5).collect(),
            "nothing of the old epoch counts"
        );
        let newer = StreamProgress { epoch: 2, ..old };
        let r = effective_progress(
            &record(5, Some(0), 1),
            Some(&newer),
            &input(&cache, 64, 100),
        );
        assert_eq!(r, (Progress::default(), None));
    }

    #[test]
    fn a_full_stream_table_creates_nothing() {
        let cache = Cache::new(1 << 20);
        let mut i = input(&cache, 64, 100);
        i.can_add_stream = false;
        assert_eq!(
            effective_progress(&record(20, Some(10), 1), None, &i),
            (Progress::default(), None)
        );
    }

    #[test]
    fn cached_caretaker_packets_are_served_and_the_rest_reported() {
        let mut cache = Cache::new(1 << 20);
        for s in [11u32, 13] {
            cache.insert(S, 1, Seq(s), &[0; 8]).unwrap();
        }
        let mut i = input(&cache, 64, 100);
        i.partitions = 2; // partition 0 keeps the odd packets
        let (p, _) = effective_progress(&record(16, Some(10), 2), None, &i);
        assert_eq!(seqs(&p.cannot_serve), [15].into());
    }

    #[test]
    fn merging_keeps_the_lowest_prefix_and_its_holder() {
        let mut rec = record(20, Some(10), 2);
        let pos = Position {
            me: NodeId(1),
            partition: 1,
            first_in_partition: true,
            last_in_partition: false,
            room: 100,
        };
        let mine = Progress {
            highest: Some(Seq(25)),
            prefix: Some(Seq(15)),
            ..Progress::default()
        };
        merge_record(&mut rec, &mine, &pos, Some(500), false);
        assert_eq!(
            (rec.highest, rec.prefix, rec.laggard),
            (Seq(25), Some(Seq(15)), Some(NodeId(1)))
        );
        assert_eq!(rec.partition_current, vec![None, Some(Seq(15))]);
        let other = Progress {
            prefix: Some(Seq(18)),
            ..Progress::default()
        };
        merge_record(
            &mut rec,
            &other,
            &Position {
                me: NodeId(2),
                ..pos
            },
            None,
            false,
        );
        assert_eq!(
            rec.laggard,
            Some(NodeId(1)),
            "a higher prefix does not replace it"
        );
        let isolated = Progress {
            prefix: Some(Seq(11)),
            ..Progress::default()
        };
        merge_record(
            &mut rec,
            &isolated,
            &Position {
                me: NodeId(3),
                ..pos
            },
            None,
            true,
        );
        assert_eq!(
            rec.prefix,
            Some(Seq(15)),
            "an isolated member does not hold it back"
        );
        assert_eq!(rec.rates.count, 1);
    }

    #[test]
    fn what_a_whole_partition_lacks_becomes_a_nak_when_the_token_leaves_it() {
        let mut rec = record(30, Some(10), 1);
        let lacking = |r: &[(u32, u32)]| Progress {
            cannot_serve: r
                .iter()
                .map(|(f, n)| SeqRange {
                    first: Seq(*f),
                    count: *n,
                })
                .collect(),
            ..Progress::default()
        };
        let first = Position {
            me: NodeId(1),
            partition: 0,
            first_in_partition: true,
            last_in_partition: false,
            room: 100,
        };
        merge_record(&mut rec, &lacking(&[(11, 5)]), &first, None, false);
        let last = Position {
            me: NodeId(2),
            first_in_partition: false,
            last_in_partition: true,
            ..first
        };
        merge_record(&mut rec, &lacking(&[(14, 4)]), &last, None, false);
        assert_eq!(seqs(&rec.naks), [14, 15].into());
        assert!(rec.lack.is_empty());
    }

    #[test]
    fn a_member_asks_a_partition_neighbour_for_its_own_share_and_two_caretakers_while_unproven() {
        let view = View::new((1..=10).map(NodeId), 5); // two partitions
        let me = NodeId(1); // partition 0 with 3, 5, 7, 9
        let own = repair_targets(&view, me, 0, Seq(1), &[None, None]);
        assert_eq!(own, [Some(NodeId(3)), None]);
        let theirs = repair_targets(&view, me, 0, Seq(2), &[None, None]);
        assert!(theirs[0].is_some() && theirs[1].is_some());
        assert!(theirs
            .iter()
            .flatten()
            .all(|t| view.partition_of(*t) == Some(1)));
        let proven = repair_targets(&view, me, 0, Seq(2), &[None, Some(Seq(5))]);
        assert_eq!(
            proven[1], None,
            "the partition's prefix covers it: one is enough"
        );
    }

    proptest! {
        /// The pure result matches the window brought in line afterwards: the highest exactly,
        /// the prefix never above the real one (equal when the snapshot saw every hole), the
        /// holes a subset of the real ones (equal when nothing was cut).
        #[test]
        fn effective_progress_agrees_with_the_window_after_the_update(
            arrivals in proptest::collection::vec(1u32..60, 0..40),
            pops in 0usize..50,
            cutoff in 0u32..80,
            cleanup in proptest::option::of(0u32..70),
            max in prop_oneof![1usize..40, Just(10_000usize)],
            synced in any::<bool>(),
            capacity in 20usize..70,
        ) {
            let mut w: ReceiveWindow<u32> = ReceiveWindow::reliable(capacity);
            for a in &arrivals {
                w.insert(T0, Seq(*a), *a);
            }
            for _ in 0..pops {
                w.pop();
            }
            let cache = Cache::new(1 << 20);
            let heard = !arrivals.is_empty();
            let snapshot = StreamProgress { sender: S, epoch: 1, window: w.state(max), synced };
            let stream = heard.then_some(&snapshot);
            let rec = record(cutoff, cleanup, 1);
            let (p, u) = effective_progress(&rec, stream, &input(&cache, capacity, max));
            let Some(u) = u else { return Ok(()); };
            let mut w2 = if heard { w.clone() } else { ReceiveWindow::reliable(capacity) };
            apply(&mut w2, &u);
            prop_assert_eq!(p.highest, w2.highest());
            let (ep, rp) = (p.prefix.unwrap(), w2.prefix().unwrap());
            prop_assert!(!rp.is_before(ep), "effective prefix {} above the real {}", ep, rp);
            let real = seqs(&w2.missing(rec.cutoff, usize::MAX));
            let eff = seqs(&p.missing);
            prop_assert!(eff.is_subset(&real), "{:?} not within {:?}", eff, real);
            prop_assert!(eff.len() <= max);
            let complete = snapshot.window.as_ref().is_none_or(|s| !s.examined_to.is_before(s.highest));
            if complete || !heard {
                prop_assert_eq!(ep, rp, "the snapshot saw every hole: the prefix is exact");
            }
        }

        #[test]
        fn merging_never_raises_the_prefix_or_lowers_the_highest(
            prefixes in proptest::collection::vec(proptest::option::of(0u32..100), 1..8),
            highests in proptest::collection::vec(0u32..100, 1..8),
            lacks in proptest::collection::vec(proptest::collection::vec((1u32..60, 1u32..5), 0..4), 1..8),
        ) {
            let mut rec = record(50, Some(0), 1);
            let mut min_prefix: Option<u32> = None;
            let mut max_highest = 50u32;
            let mut inter: Option<BTreeSet<u32>> = None;
            let n = prefixes.len().min(highests.len()).min(lacks.len());
            for i in 0..n {
                let cannot: Vec<SeqRange> = lacks[i].iter().map(|(f, c)| SeqRange { first: Seq(*f), count: *c }).collect();
                let p = Progress {
                    highest: Some(Seq(highests[i])),
                    prefix: prefixes[i].map(Seq),
                    cannot_serve: cannot.clone(),
                    ..Progress::default()
                };
                let pos = Position { me: NodeId(i as u64), partition: 0, first_in_partition: i == 0, last_in_partition: i + 1 == n, room: 1000 };
                let before_naks = seqs(&rec.naks);
                merge_record(&mut rec, &p, &pos, None, false);
                if let Some(x) = prefixes[i] { min_prefix = Some(min_prefix.map_or(x, |m| m.min(x))); }
                max_highest = max_highest.max(highests[i]);
                let mine = seqs(&cannot);
                inter = Some(match inter { None => mine, Some(s) => s.intersection(&mine).copied().collect() });
                prop_assert!(before_naks.is_subset(&seqs(&rec.naks)));
            }
            prop_assert_eq!(rec.prefix.map(|s| s.0), min_prefix);
            prop_assert_eq!(rec.highest, Seq(max_highest));
            prop_assert_eq!(seqs(&rec.naks), inter.unwrap_or_default(), "naks are what everyone lacked");
        }
    }
}
