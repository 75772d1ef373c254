//! Rate control through the ring (QSM, design section 4): a sender's pacing of one region's
//! stream, set from the region leader's acknowledgements. While the region fails to keep up
//! with the send window, the rate follows the slowest member's receive rate with 10% headroom
//! to probe (about 1.1 times it, damped); while the region keeps up, the rate probes upward,
//! and after a run of calm acknowledgements only the window limits sending again.
//!
//! A token bucket turns the rate into permission to send one packet at a time. The pacer
//! sends nothing and reads no clock: the owner asks [`Pacer::allows`] before building a
//! packet, reports it with [`Pacer::on_sent`], and feeds every acknowledgement to
//! [`Pacer::on_ack`].

use std::time::Duration;

use qs_transport::Instant;

/// The lowest pacing rate, packets per second (a sender is never paced to a halt).
pub const MIN_PACING_RATE: f64 = 200.0;
/// Acknowledgements without a full window after which pacing is lifted.
pub const CALM_ROUNDS: u32 = 8;
/// Headroom over the slowest member's rate (QSM's 1.1).
const HEADROOM: f64 = 1.1;
/// Upward probe per calm acknowledgement.
const PROBE: f64 = 1.25;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Packets per second.
    rate: f64,
    tokens: f64,
    at: Instant,
    /// Acknowledgements in a row without a full window.
    calm: u32,
}

/// What an acknowledgement did to the pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceChange {
    /// Nothing (no rate report, or not paced and the window was not full).
    None,
    /// Pacing was set or lowered towards the slowest member.
    Engaged,
    /// The rate probed upward.
    Probed,
    /// Pacing was lifted.
    Lifted,
}

/// Pacing of one stream (`None` inside: only the window limits sending).
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    bucket: Option<Bucket>,
    /// The window was full with data queued since the last acknowledgement.
    window_hit: bool,
}

impl Pacer {
    /// An unpaced stream.
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// The rate in force, packets per second.
    pub fn rate(&self) -> Option<f64> {
        self.bucket.map(|b| b.rate)
    }

    /// Refills the bucket; whether a packet may go now.
    pub fn allows(&mut self, now: Instant) -> bool {
        let Some(b) = self.bucket.as_mut() else {
            return true;
        };
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        // Bursts of at most 2 ms worth (and at least a few packets).
        let burst = (b.rate * 0.002).max(4.0);
        b.tokens = (b.tokens + b.rate * dt).min(burst);
        b.at = now;
        b.tokens >= 1.0
    }

    /// A packet went out.
    pub fn on_sent(&mut self) {
        if let Some(b) = self.bucket.as_mut() {
            b.tokens -= 1.0;
        }
    }

    /// The window was full while data waited.
    pub fn on_window_full(&mut self) {
        self.window_hit = true;
    }

    /// When a paced stream gets its next token (`None`: unpaced, or a token is there).
    pub fn deadline(&self) -> Option<Instant> {
        let b = self.bucket.as_ref()?;
        if b.tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - b.tokens) / b.rate;
        Some(b.at + Duration::from_secs_f64(wait.clamp(1e-6, 1.0)))
    }

    /// The region acknowledged the stream and reported its slowest member's receive rate
    /// (packets per second; 0: no report).
    pub fn on_ack(&mut self, now: Instant, slowest_rate: u32) -> PaceChange {
        if slowest_rate == 0 {
            return PaceChange::None;
        }
        if std::mem::take(&mut self.window_hit) {
            // The region did not keep up with the window: follow its slowest member, with
            // headroom to probe, damped.
            let target = (f64::from(slowest_rate) * HEADROOM).max(MIN_PACING_RATE);
            self.bucket = Some(match self.bucket {
                Some(b) => Bucket {
                    rate: 0.5 * b.rate + 0.5 * target,
                    calm: 0,
                    ..b
                },
                None => Bucket {
                    rate: target,
                    tokens: 0.0,
                    at: now,
                    calm: 0,
                },
            });
            return PaceChange::Engaged;
        }
        let Some(b) = self.bucket.as_mut() else {
            return PaceChange::None;
        };
        // It keeps up: probe upward; after a run of calm rounds only the window limits.
        b.rate *= PROBE;
        b.calm += 1;
        if b.calm >= CALM_ROUNDS {
            self.bucket = None;
            return PaceChange::Lifted;
        }
        PaceChange::Probed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::ZERO;

    fn ms(n: u64) -> Instant {
        T0 + Duration::from_millis(n)
    }

    #[test]
    fn a_full_window_engages_pacing_at_the_slowest_rate_with_headroom() {
        let mut p = Pacer::new();
        assert_eq!(p.on_ack(T0, 10_000), PaceChange::None, "no full window");
        p.on_window_full();
        assert_eq!(p.on_ack(T0, 10_000), PaceChange::Engaged);
        assert_eq!(p.rate(), Some(11_000.0));
        p.on_window_full();
        p.on_ack(T0, 1_000);
        assert_eq!(p.rate(), Some(0.5 * 11_000.0 + 0.5 * 1_100.0), "damped");
    }

    #[test]
    fn pacing_never_goes_below_the_floor_rate() {
        let mut p = Pacer::new();
        p.on_window_full();
        p.on_ack(T0, 1);
        assert_eq!(p.rate(), Some(MIN_PACING_RATE));
    }

    #[test]
    fn calm_acknowledgements_probe_up_and_lift_pacing_after_the_last_calm_round() {
        let mut p = Pacer::new();
        p.on_window_full();
        p.on_ack(T0, 1_000);
        for _ in 1..CALM_ROUNDS {
            assert_eq!(p.on_ack(T0, 1_000), PaceChange::Probed);
        }
        assert!(p.rate().is_some(), "one calm round short: still paced");
        assert_eq!(p.on_ack(T0, 1_000), PaceChange::Lifted);
        assert_eq!(p.rate(), None);
    }

    #[test]
    fn the_bucket_spaces_packets_at_the_rate() {
        let mut p = Pacer::new();
        p.on_window_full();
        p.on_ack(T0, 909); // about 1,000 packets per second
        let mut sent = 0;
        for t in 0..1000 {
            if p.allows(ms(t)) {
                p.on_sent();
                sent += 1;
            }
        }
        assert!((950..=1010).contains(&sent), "{sent} packets in one second");
        assert!(!p.allows(ms(999)) || p.deadline().is_none());
    }

    #[test]
    fn an_unpaced_stream_always_may_send_and_has_no_deadline() {
        let mut p = Pacer::new();
        assert!(p.allows(T0));
        assert_eq!(p.deadline(), None);
    }
}
