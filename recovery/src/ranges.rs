//! A set of sequence numbers held as sorted, disjoint runs relative to a base point, so that
//! NAK and lack lists are intersected and merged run by run instead of being expanded into
//! one entry per sequence number.
//!
//! Sequence numbers wrap ([`Seq`]): a set covers the half of the sequence space after its
//! `base` (distances `1 ..= 2^31 - 1`); anything at or before the base is outside every set
//! (it is already stable).

use qs_transport::wire::SeqRange;
use qs_transport::Seq;

/// Sorted, disjoint, non-adjacent runs of sequence numbers after a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    base: Seq,
    /// `(offset from base ≥ 1, length ≥ 1)`, sorted, neither overlapping nor touching.
    runs: Vec<(u32, u32)>,
}

/// Largest distance after the base a set holds.
const HORIZON: u64 = (1 << 31) - 1;

impl RangeSet {
    /// The empty set after `base`.
    pub fn new(base: Seq) -> RangeSet {
        RangeSet {
            base,
            runs: Vec::new(),
        }
    }

    /// The set of `ranges` (any order, overlaps allowed), clipped to the base's horizon.
    pub fn from_ranges(base: Seq, ranges: &[SeqRange]) -> RangeSet {
        let mut set = RangeSet::new(base);
        for r in ranges {
            set.insert(*r);
        }
        set
    }

    /// The base point.
    pub fn base(&self) -> Seq {
        self.base
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Sequence numbers in the set.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|(_, n)| u64::from(*n)).sum()
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: Seq) -> bool {
        let d = self.base.distance_to(seq);
        if d <= 0 {
            return false;
        }
        let d = d as u32;
        let i = self.runs.partition_point(|(off, _)| *off <= d);
        i > 0 && {
            let (off, n) = self.runs[i - 1];
            u64::from(d) < u64::from(off) + u64::from(n)
        }
    }

    /// Adds `range` (the part of it within the horizon).
    pub fn insert(&mut self, range: SeqRange) {
        if range.count == 0 {
            return;
        }
        let start = self.base.distance_to(range.first);
        let end = start + i64::from(range.count); // exclusive
        let (start, end) = (start.max(1), end.min(HORIZON as i64 + 1));
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start as u64, end as u64);
        // Runs overlapping or touching [start, end) merge into it.
        let first = self
            .runs
            .partition_point(|(off, n)| u64::from(*off) + u64::from(*n) < start);
        let mut last = first;
        while last < self.runs.len() && u64::from(self.runs[last].0) <= end {
            let (off, n) = self.runs[last];
            start = start.min(u64::from(off));
            end = end.max(u64::from(off) + u64::from(n));
            last += 1;
        }
        self.runs
            .splice(first..last, [(start as u32, (end - start) as u32)]);
    }

    /// The sequence numbers in both sets (`other` is read relative to its own base).
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        let other = other.rebased(self.base);
        let mut out = RangeSet::new(self.base);
        let (mut i, mut j) = (0, 0);
        while i < self.runs.len() && j < other.runs.len() {
            let (a0, an) = self.runs[i];
            let (b0, bn) = other.runs[j];
            let (a1, b1) = (u64::from(a0) + u64::from(an), u64::from(b0) + u64::from(bn));
            let lo = u64::from(a0.max(b0));
            let hi = a1.min(b1);
            if lo < hi {
                out.runs.push((lo as u32, (hi - lo) as u32));
            }
            if a1 <= b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        out
    }

    /// Adds every sequence number of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for r in other.ranges(usize::MAX) {
            self.insert(r);
        }
    }

    /// The same sequence numbers relative to another base (those at or before it drop out).
    pub fn rebased(&self, base: Seq) -> RangeSet {
        if base == self.base {
            return self.clone();
        }
        let mut out = RangeSet::new(base);
        for r in self.ranges(usize::MAX) {
            out.insert(r);
        }
        out
    }

    /// The first `max` runs, in order after the base.
    pub fn ranges(&self, max: usize) -> impl Iterator<Item = SeqRange> + '_ {
        self.runs.iter().take(max).map(|(off, n)| SeqRange {
            first: self.base.advance(*off),
            count: *n,
        })
    }

    /// The first `max` runs as a list.
    pub fn to_ranges(&self, max: usize) -> Vec<SeqRange> {
        self.ranges(max).collect()
    }

    /// The sequence numbers in order.
    pub fn iter(&self) -> impl Iterator<Item = Seq> + '_ {
        self.ranges(usize::MAX).flat_map(SeqRange::iter)
    }

    /// Panics if the runs are not sorted, disjoint, non-adjacent and within the horizon.
    pub fn check_invariants(&self) {
        let mut end = 0u64;
        for (i, (off, n)) in self.runs.iter().enumerate() {
            assert!(*off >= 1 && *n >= 1, "empty or base-covering run {i}");
            assert!(i == 0 || u64::from(*off) > end, "runs overlap or touch");
            end = u64::from(*off) + u64::from(*n);
            assert!(end <= HORIZON + 1, "run beyond the horizon");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn r(first: u32, count: u32) -> SeqRange {
        SeqRange {
            first: Seq(first),
            count,
        }
    }

    #[test]
    fn overlapping_and_touching_ranges_merge_into_one_run() {
        let s = RangeSet::from_ranges(Seq(0), &[r(5, 3), r(8, 2), r(3, 3), r(20, 1)]);
        assert_eq!(s.to_ranges(10), vec![r(3, 7), r(20, 1)]);
        assert!(s.contains(Seq(9)) && !s.contains(Seq(10)) && !s.contains(Seq(0)));
        s.check_invariants();
    }

    #[test]
    fn sequence_numbers_at_or_before_the_base_are_outside_the_set() {
        let s = RangeSet::from_ranges(Seq(10), &[r(8, 5)]);
        assert_eq!(s.to_ranges(10), vec![r(11, 2)]);
    }

    #[test]
    fn a_set_across_the_wrap_keeps_circular_order() {
        let s = RangeSet::from_ranges(Seq(u32::MAX - 2), &[r(2, 2), r(u32::MAX, 2)]);
        assert_eq!(s.to_ranges(10), vec![r(u32::MAX, 2), r(2, 2)]);
    }

    fn model(base: u32, ranges: &[(u32, u32)]) -> BTreeSet<u32> {
        let b = Seq(base);
        ranges
            .iter()
            .flat_map(|(f, n)| (0..*n).map(move |i| Seq(base.wrapping_add(*f)).advance(i)))
            .filter(|s| b.distance_to(*s) > 0)
            .map(|s| s.0)
            .collect()
    }

    fn set(base: u32, ranges: &[(u32, u32)]) -> RangeSet {
        let rs: Vec<SeqRange> = ranges
            .iter()
            .map(|(f, n)| r(base.wrapping_add(*f), *n))
            .collect();
        RangeSet::from_ranges(Seq(base), &rs)
    }

    proptest! {
        #[test]
        fn a_range_set_agrees_with_a_plain_set(
            base in any::<u32>(),
            a in proptest::collection::vec((0u32..200, 0u32..20), 0..12),
            b in proptest::collection::vec((0u32..200, 0u32..20), 0..12),
        ) {
            let (sa, sb) = (set(base, &a), set(base, &b));
            sa.check_invariants();
            let (ma, mb) = (model(base, &a), model(base, &b));
            prop_assert_eq!(sa.iter().map(|s| s.0).collect::<BTreeSet<_>>(), ma.clone());
            prop_assert_eq!(sa.len(), ma.len() as u64);
            let i = sa.intersection(&sb);
            i.check_invariants();
            prop_assert_eq!(
                i.iter().map(|s| s.0).collect::<BTreeSet<_>>(),
                ma.intersection(&mb).copied().collect::<BTreeSet<_>>()
            );
            let mut u = sa.clone();
            u.union_with(&sb);
            u.check_invariants();
            prop_assert_eq!(
                u.iter().map(|s| s.0).collect::<BTreeSet<_>>(),
                ma.union(&mb).copied().collect::<BTreeSet<_>>()
            );
            for s in ma.iter().take(5) {
                prop_assert!(sa.contains(Seq(*s)));
            }
        }

        #[test]
        fn rebasing_drops_exactly_what_is_at_or_before_the_new_base(
            base in any::<u32>(), shift in 0u32..100,
            a in proptest::collection::vec((0u32..200, 1u32..20), 0..12),
        ) {
            let s = set(base, &a);
            let nb = Seq(base).advance(shift);
            let r = s.rebased(nb);
            r.check_invariants();
            let expect: BTreeSet<u32> = model(base, &a)
                .into_iter()
                .filter(|x| nb.distance_to(Seq(*x)) > 0)
                .collect();
            prop_assert_eq!(r.iter().map(|s| s.0).collect::<BTreeSet<_>>(), expect);
        }
    }
}
