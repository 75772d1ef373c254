//! How fast a send queue drains, so that it can be bounded by time rather than bytes (issue
//! 13: unpaced, a 16 MiB queue held ~200 ms of data and every message waited that long).
//!
//! Owns: an estimate of the bytes per second a queue hands to the network *while it holds
//! something* (time with an empty queue says how little was published, not how fast the path
//! is), and the byte limit that keeps about a given time's worth queued.
//!
//! Does not: queue anything, or decide what is sent (the node's send path reports what it
//! took off the queue and when it looked). Sans-IO: `now` is an argument.

use std::time::Duration;

use qs_transport::Instant;

/// Busy time one rate sample covers: long enough to average a few datagrams and wake-ups,
/// short enough to follow a change of pace within milliseconds.
const SAMPLE: Duration = Duration::from_millis(2);
/// Weight of a new sample in the average.
const GAIN: f64 = 0.25;

/// The drain rate of one send queue (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct DrainRate {
    /// Bytes per second, once a sample was taken.
    rate: Option<f64>,
    /// Busy time and bytes drained in the sample being taken.
    busy: Duration,
    drained: usize,
    /// When the queue was last seen holding something.
    seen_busy: Option<Instant>,
}

impl DrainRate {
    /// A queue nothing was measured of yet.
    pub fn new() -> DrainRate {
        DrainRate::default()
    }

    /// The sender looked at the queue at `now`, holding `queued` bytes (before taking any).
    /// Time since the previous look counts as busy only if the queue held something then.
    pub fn on_poll(&mut self, now: Instant, queued: usize) {
        if let Some(t) = self.seen_busy {
            self.busy += now.saturating_duration_since(t);
        }
        self.seen_busy = (queued > 0).then_some(now);
        if self.busy >= SAMPLE {
            let sample = self.drained as f64 / self.busy.as_secs_f64();
            self.rate = Some(match self.rate {
                Some(r) => r + GAIN * (sample - r),
                None => sample,
            });
            self.busy = Duration::ZERO;
            self.drained = 0;
        }
    }

    /// `bytes` left the queue since the last look. Bytes that left while the last look saw
    /// nothing queued (or before any look) count for nothing: no busy time measured them, and
    /// counting them would make the rate a burst's.
    pub fn on_drained(&mut self, bytes: usize) {
        if self.seen_busy.is_some() {
            self.drained = self.drained.saturating_add(bytes);
        }
    }

    /// Bytes per second while busy, once measured.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The queue limit that holds about `time` at the measured rate, within `floor..=cap`
    /// (`cap` while nothing was measured, or when `time` is zero: bounded by bytes only).
    pub fn limit(&self, time: Duration, floor: usize, cap: usize) -> usize {
        match self.rate {
            Some(r) if !time.is_zero() => {
                let want = (r * time.as_secs_f64()).min(cap as f64) as usize;
                want.clamp(floor.min(cap), cap)
            }
            _ => cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> Instant {
        Instant::ZERO + Duration::from_micros(us)
    }

    #[test]
    fn a_steady_drain_is_measured_and_the_limit_is_that_many_milliseconds_of_it() {
        let mut d = DrainRate::new();
        // 1,000 bytes every 10 µs: 100 MB/s.
        for i in 0..1000 {
            d.on_poll(at(i * 10), 50_000);
            d.on_drained(1000);
        }
        let r = d.rate().expect("measured");
        assert!((r - 1e8).abs() < 1e6, "{r}");
        let five_ms = d.limit(Duration::from_millis(5), 64 << 10, 16 << 20);
        assert!((490_000..=510_000).contains(&five_ms), "{five_ms}");
        assert_eq!(d.limit(Duration::ZERO, 64 << 10, 16 << 20), 16 << 20);
    }

    #[test]
    fn time_with_an_empty_queue_does_not_lower_the_rate() {
        let mut d = DrainRate::new();
        for i in 0..400 {
            d.on_poll(at(i * 10), 10_000);
            d.on_drained(1000);
        }
        let before = d.rate().expect("measured");
        // Empty for a second, then one look: nothing of that second counts.
        d.on_poll(at(4_000), 0);
        d.on_poll(at(1_004_000), 0);
        for i in 0..400 {
            d.on_poll(at(1_004_000 + i * 10), 10_000);
            d.on_drained(1000);
        }
        let after = d.rate().expect("measured");
        assert!(after > 0.9 * before, "{before} -> {after}");
    }

    #[test]
    fn bytes_drained_without_a_busy_look_are_not_a_burst_of_rate() {
        let mut d = DrainRate::new();
        // A megabyte left before anything was looked at (a window's first acknowledgement).
        d.on_drained(1_000_000);
        // Then 1,000 bytes every 10 µs for 2 ms: one sample, 100 MB/s.
        for i in 0..=200 {
            d.on_poll(at(i * 10), 10_000);
            d.on_drained(1000);
        }
        let r = d.rate().expect("measured");
        assert!((r - 1e8).abs() < 2e6, "{r}");
    }

    #[test]
    fn a_stalled_queue_lowers_the_limit_to_its_floor_but_never_past_the_cap() {
        let mut d = DrainRate::new();
        for i in 0..400 {
            d.on_poll(at(i * 10), 10_000);
            d.on_drained(1000);
        }
        // Nothing leaves for 100 ms while it holds data (a full window).
        for i in 0..50 {
            d.on_poll(at(4_000 + i * 2_000), 10_000);
        }
        assert_eq!(
            d.limit(Duration::from_millis(5), 64 << 10, 16 << 20),
            64 << 10
        );
        assert_eq!(d.limit(Duration::from_millis(5), 64 << 10, 1000), 1000);
        assert_eq!(DrainRate::new().limit(Duration::from_millis(5), 1, 77), 77);
    }
}
