//! Helpers shared by the rumor-mongering objects ([`crate::health`], [`crate::reachability`]):
//! relative ages instead of clocks, and the bounded set of peers owed a push.
//!
//! Nodes' [`Instant`]s share no epoch, so an entry never carries a timestamp on the wire: it
//! carries its age in milliseconds, and each receiver keeps the local instant the entry was
//! born at (`now - age`, as signed nanoseconds so that an entry older than our own epoch stays
//! old). Ages only grow as an entry travels (by at least nothing, at most the path delay it
//! leaves out), so an expired entry cannot come back from a peer that still held it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use qs_transport::Instant;

/// Nanoseconds of `now`, as a signed number (an `Instant` below 2^63 ns, 292 years).
fn nanos(now: Instant) -> i64 {
    i64::try_from(now.0).unwrap_or(i64::MAX)
}

/// The local instant (signed nanoseconds) an entry of age `age_ms` heard at `now` was born.
pub(crate) fn born_at(now: Instant, age_ms: u32) -> i64 {
    nanos(now).saturating_sub(i64::from(age_ms) * 1_000_000)
}

/// The age, in milliseconds (saturated), at `now` of an entry born at `born`.
pub(crate) fn age_ms(now: Instant, born: i64) -> u32 {
    let ms = nanos(now).saturating_sub(born).max(0) / 1_000_000;
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// Whether an entry born at `born` is older than `d` at `now`.
pub(crate) fn older_than(now: Instant, born: i64, d: Duration) -> bool {
    let d = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    nanos(now).saturating_sub(born) > d
}

/// A milliseconds value of a duration, saturated.
pub(crate) fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Peers chosen by the runtime that we still owe a push (bounded; overflow is counted).
#[derive(Debug, Clone)]
pub(crate) struct Owed {
    set: BTreeSet<SocketAddr>,
    max: usize,
    pub(crate) overflow: u64,
}

impl Owed {
    pub(crate) fn new(max: usize) -> Owed {
        Owed {
            set: BTreeSet::new(),
            max,
            overflow: 0,
        }
    }
    pub(crate) fn add(&mut self, a: SocketAddr) -> bool {
        if self.set.contains(&a) {
            return true;
        }
        if self.set.len() >= self.max {
            self.overflow += 1;
            return false;
        }
        self.set.insert(a)
    }
    pub(crate) fn take(&mut self, a: SocketAddr) -> bool {
        self.set.remove(&a)
    }
    pub(crate) fn contains(&self, a: SocketAddr) -> bool {
        self.set.contains(&a)
    }
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.set.iter().copied()
    }
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_survive_a_round_trip_and_stay_old_before_our_epoch() {
        let now = Instant(5_000_000_000);
        let born = born_at(now, 7_000);
        assert!(born < 0);
        assert_eq!(age_ms(now, born), 7_000);
        assert!(older_than(now, born, Duration::from_secs(6)));
        assert!(!older_than(now, born, Duration::from_secs(8)));
        assert_eq!(age_ms(Instant::ZERO, i64::MAX), 0);
    }
}
