//! The per-requester limit on served repairs: how many bytes of repairs this node sends one
//! region member per interval, so that requests in a member's name (spoofed by an outsider
//! of a keyless cluster, or sent by a buggy member) cannot make this node reflect much more
//! than the data itself onto that member.
//!
//! Each requester has a token bucket of bytes. It refills by [`RepairLimit::floor_bytes`]
//! plus [`RepairLimit::inflow_percent`] of the data bytes that entered this node (its own
//! first transmissions and the packets it cached for its region) during the last interval
//! and of the bytes it holds for repairs now (unstable data: what members can still lack),
//! and holds at most [`RepairLimit::burst_intervals`] refills. An honest member lacks at
//! most what the stream carried, usually a few percent of it, so the share leaves it room
//! many times over; a member far behind when the stream stops still gets a share of all
//! that is unstable, so it catches up in a few intervals instead of at the floor's pace.
//! A flood of requests gets the refill and no more. Because the held share is part of every
//! refill, that bound follows what the node holds, not only the data rate: a flood in one
//! member's name can draw `inflow_percent` % of the held bytes every interval (2.5× them per
//! second with the defaults) after a first burst of `burst_intervals` refills. That is what
//! the region may still need; with a cluster key such requests never get here at all.
//!
//! Not here: which requests are served at all (members' known addresses only, `recovery.rs`
//! decides), and the requesting side (the ring).

use std::collections::BTreeMap;
use std::time::Duration;

use qs_transport::{Instant, NodeId};

/// Settings of the per-requester repair limit (`CoreConfig::repair_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairLimit {
    /// The refill period; the inflow share is measured over it.
    pub interval: Duration,
    /// Bytes every requester may be served per interval whatever the inflow (a new stream's
    /// first losses, a quiet cluster).
    pub floor_bytes: u64,
    /// Percent of the data bytes that entered this node in the last interval, plus those it
    /// holds for repairs, that each requester may be served per interval on top of the
    /// floor.
    pub inflow_percent: u64,
    /// Refills a bucket holds at most (a burst of losses is served at once up to this).
    pub burst_intervals: u64,
    /// Requesters tracked at most (only region members with a known address reach the
    /// table; beyond it the least recently served is forgotten, counted).
    pub max_requesters: usize,
}

impl Default for RepairLimit {
    fn default() -> RepairLimit {
        RepairLimit {
            interval: Duration::from_millis(100),
            // 320 KB/s per requester on an idle cluster, plus a quarter of the data rate:
            // five times what 5% loss needs, and a flood gets no more.
            floor_bytes: 32 << 10,
            inflow_percent: 25,
            burst_intervals: 10,
            max_requesters: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    at: Instant,
}

/// The buckets of all requesters and the inflow measurement. Sans-IO: `now` and the inflow
/// counter are arguments.
#[derive(Debug, Clone)]
pub(super) struct RepairLimiter {
    config: RepairLimit,
    /// Bytes per interval a bucket refills now (set from the last interval's inflow).
    refill: u64,
    /// When the current inflow interval ends.
    roll_at: Instant,
    /// The inflow counter when the current interval began.
    inflow_mark: u64,
    buckets: BTreeMap<NodeId, Bucket>,
    /// Requesters forgotten because the table was full.
    pub evicted: u64,
}

impl RepairLimiter {
    pub(super) fn new(config: RepairLimit, now: Instant) -> RepairLimiter {
        RepairLimiter {
            config,
            refill: config.floor_bytes,
            roll_at: now + config.interval,
            inflow_mark: 0,
            buckets: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Requesters tracked now.
    #[cfg(test)]
    fn requesters(&self) -> usize {
        self.buckets.len()
    }

    /// Takes `bytes` from `requester`'s bucket if it holds them. `inflow` is the running
    /// total of data bytes that entered this node (it only grows), `held` the bytes it holds
    /// for repairs now.
    pub(super) fn take(
        &mut self,
        now: Instant,
        (inflow, held): (u64, u64),
        requester: NodeId,
        bytes: u64,
    ) -> bool {
        self.roll(now, inflow, held);
        let cap = self.cap();
        let per = self.interval_nanos();
        let refill = self.refill;
        if !self.buckets.contains_key(&requester)
            && self.buckets.len() >= self.config.max_requesters
        {
            let stalest = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(id, _)| *id);
            if let Some(id) = stalest {
                self.buckets.remove(&id);
                self.evicted += 1;
            }
        }
        let b = self.buckets.entry(requester).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_nanos();
        let earned = (u128::from(refill) * elapsed / per).min(u128::from(u64::MAX)) as u64;
        if earned > 0 {
            b.tokens = b.tokens.saturating_add(earned).min(cap);
            b.at = now;
        }
        if b.tokens < bytes {
            return false;
        }
        b.tokens -= bytes;
        true
    }

    fn cap(&self) -> u64 {
        self.refill
            .saturating_mul(self.config.burst_intervals.max(1))
    }

    fn interval_nanos(&self) -> u128 {
        self.config.interval.as_nanos().max(1)
    }

    /// Ends the inflow intervals that are over: the refill follows the last one's inflow.
    fn roll(&mut self, now: Instant, inflow: u64, held: u64) {
        if now < self.roll_at {
            return;
        }
        let periods =
            now.saturating_duration_since(self.roll_at).as_nanos() / self.interval_nanos() + 1;
        // Spread over every interval that passed: a pause of several intervals must not
        // read as one interval's worth of inflow.
        let per_interval =
            inflow.wrapping_sub(self.inflow_mark) / periods.min(u128::from(u64::MAX)) as u64;
        let basis = per_interval.saturating_add(held);
        self.refill = self
            .config
            .floor_bytes
            .saturating_add(basis.saturating_mul(self.config.inflow_percent) / 100);
        self.inflow_mark = inflow;
        self.roll_at =
            self.roll_at + self.config.interval * periods.min(u128::from(u32::MAX)) as u32;
        // A bucket never holds more than the cap in force (the inflow may have fallen).
        let cap = self.cap();
        for b in self.buckets.values_mut() {
            b.tokens = b.tokens.min(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> RepairLimit {
        RepairLimit {
            interval: Duration::from_millis(100),
            floor_bytes: 1000,
            inflow_percent: 50,
            burst_intervals: 2,
            max_requesters: 2,
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn a_requester_gets_its_burst_then_the_refill_and_no_more() {
        let mut l = RepairLimiter::new(limit(), at(0));
        // Full bucket: two refills of the floor.
        assert!(l.take(at(0), (0, 0), NodeId(1), 2000));
        assert!(
            !l.take(at(0), (0, 0), NodeId(1), 1),
            "empty after the burst"
        );
        // Half an interval refills half the floor.
        assert!(l.take(at(50), (0, 0), NodeId(1), 500));
        assert!(!l.take(at(50), (0, 0), NodeId(1), 1));
        // Another requester has its own bucket.
        assert!(l.take(at(50), (0, 0), NodeId(2), 2000));
    }

    #[test]
    fn the_refill_grows_with_the_data_that_came_in() {
        let mut l = RepairLimiter::new(limit(), at(0));
        assert!(l.take(at(0), (0, 0), NodeId(1), 2000));
        // 10,000 bytes came in during the first interval: the refill is 1000 + 5000.
        assert!(l.take(at(100), (10_000, 0), NodeId(1), 6000));
        assert!(!l.take(at(100), (10_000, 0), NodeId(1), 1));
        // Without more inflow the next interval falls back to the floor (and the cap with
        // it: at most two floors).
        assert!(!l.take(at(300), (10_000, 0), NodeId(1), 2001));
        assert!(l.take(at(300), (10_000, 0), NodeId(1), 2000));
    }

    #[test]
    fn what_the_node_holds_for_repairs_raises_the_refill_after_the_inflow_stopped() {
        let mut l = RepairLimiter::new(limit(), at(0));
        assert!(l.take(at(0), (0, 0), NodeId(1), 2000));
        // No inflow, 20,000 bytes unstable: the refill is 1000 + 10,000.
        assert!(!l.take(at(100), (0, 20_000), NodeId(1), 11_001));
        assert!(l.take(at(100), (0, 20_000), NodeId(1), 11_000));
    }

    #[test]
    fn a_long_pause_spreads_its_inflow_over_the_intervals_it_lasted() {
        let mut l = RepairLimiter::new(limit(), at(0));
        assert!(l.take(at(0), (0, 0), NodeId(1), 2000));
        // 10,000 bytes over ten intervals: 1,000 an interval, refill 1500, cap 3000.
        assert!(!l.take(at(1000), (10_000, 0), NodeId(1), 3001));
        assert!(l.take(at(1000), (10_000, 0), NodeId(1), 3000));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_stalest_requester() {
        let mut l = RepairLimiter::new(limit(), at(0));
        assert!(l.take(at(0), (0, 0), NodeId(1), 10));
        assert!(l.take(at(1), (0, 0), NodeId(2), 10));
        assert_eq!(l.evicted, 0);
        assert!(l.take(at(2), (0, 0), NodeId(3), 10));
        assert_eq!((l.requesters(), l.evicted), (2, 1));
    }
}
