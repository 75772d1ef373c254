//! Loss detection and recovery.
//!
//! Today this crate owns the receiver's view of one (sender, region) stream: which packet comes
//! next, which arrivals are in order, and how many packets a jump in sequence numbers skipped
//! (a **gap**). Gaps are reported, not repaired. The QSM regional protocol (token rings, peer
//! repair, stability, rate control; seed `002_*`, design section 4) and Ricochet's lateral
//! error correction will grow here on top of this accounting.
//!
//! Sequence numbers wrap ([`Seq`]); every comparison here is circular.

use qs_transport::Seq;

/// What one arriving packet means for its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first packet heard on this stream; `missed_before` packets of the stream were sent
    /// before it (streams start at [`Seq::FIRST`]) and never reached this receiver, typically
    /// because it joined later.
    First {
        /// Packets the stream had sent before this one.
        missed_before: u32,
    },
    /// The next packet in order.
    InOrder,
    /// A later packet: `missed` packets in between were lost (a gap).
    Skipped {
        /// Number of packets skipped.
        missed: u32,
    },
    /// A packet at or before one already accepted: a duplicate or a late arrival.
    Stale,
}

impl Arrival {
    /// Whether the packet's contents should be delivered.
    pub fn is_fresh(self) -> bool {
        !matches!(self, Arrival::Stale)
    }

    /// Packets this arrival proves lost (excluding those missed before the first).
    pub fn missed(self) -> u32 {
        match self {
            Arrival::Skipped { missed } => missed,
            _ => 0,
        }
    }
}

/// Tracks one stream's next expected sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderTracker {
    next: Option<Seq>,
}

impl OrderTracker {
    /// A tracker that has heard nothing yet.
    pub fn new() -> OrderTracker {
        OrderTracker::default()
    }

    /// The next sequence number expected, once anything was heard.
    pub fn next_expected(&self) -> Option<Seq> {
        self.next
    }

    /// Accounts for the arrival of packet `seq`.
    pub fn on_packet(&mut self, seq: Seq) -> Arrival {
        let Some(next) = self.next else {
            self.next = Some(seq.next());
            let missed_before = Seq::FIRST.distance_to(seq).max(0) as u32;
            return Arrival::First { missed_before };
        };
        let ahead = next.distance_to(seq);
        if ahead < 0 {
            return Arrival::Stale;
        }
        self.next = Some(seq.next());
        if ahead == 0 {
            Arrival::InOrder
        } else {
            Arrival::Skipped {
                missed: ahead as u32,
            }
        }
    }

    /// Accounts for the sender saying its highest sequence number is `highest`; returns the
    /// packets at the stream's tail that never arrived (0 if none, or if nothing was heard
    /// before: a receiver that heard nothing of a stream does not claim its history).
    pub fn on_highest(&mut self, highest: Seq) -> u32 {
        let Some(next) = self.next else {
            self.next = Some(highest.next());
            return 0;
        };
        let missing = next.distance_to(highest) + 1;
        if missing <= 0 {
            return 0;
        }
        self.next = Some(highest.next());
        missing as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_gap_and_stale_arrivals_are_told_apart() {
        let mut t = OrderTracker::new();
        assert_eq!(t.on_packet(Seq(1)), Arrival::First { missed_before: 0 });
        assert_eq!(t.on_packet(Seq(2)), Arrival::InOrder);
        assert_eq!(t.on_packet(Seq(5)), Arrival::Skipped { missed: 2 });
        assert_eq!(t.on_packet(Seq(3)), Arrival::Stale);
        assert_eq!(t.on_packet(Seq(5)), Arrival::Stale);
        assert_eq!(t.on_highest(Seq(8)), 3);
        assert_eq!(t.on_highest(Seq(8)), 0);
        assert_eq!(t.on_packet(Seq(9)), Arrival::InOrder);
    }

    #[test]
    fn a_late_joiner_reports_what_it_missed_before_separately() {
        let mut t = OrderTracker::new();
        assert_eq!(t.on_packet(Seq(10)), Arrival::First { missed_before: 9 });
        let mut quiet = OrderTracker::new();
        assert_eq!(quiet.on_highest(Seq(10)), 0);
        assert_eq!(quiet.on_packet(Seq(11)), Arrival::InOrder);
    }

    proptest! {
        /// Whatever subset of a stream arrives (in order, across wrap-around), fresh arrivals
        /// plus reported losses account for every packet exactly once.
        #[test]
        fn losses_plus_deliveries_cover_the_stream(start: u32, kept in prop::collection::vec(any::<bool>(), 1..500)) {
            let mut t = OrderTracker::new();
            t.on_highest(Seq(start));
            let (mut fresh, mut lost) = (0u64, 0u64);
            for (i, keep) in kept.iter().enumerate() {
                if *keep {
                    let a = t.on_packet(Seq(start).advance(i as u32 + 1));
                    prop_assert!(a.is_fresh());
                    fresh += 1;
                    lost += u64::from(a.missed());
                }
            }
            lost += u64::from(t.on_highest(Seq(start).advance(kept.len() as u32)));
            prop_assert_eq!(fresh + lost, kept.len() as u64);
        }
    }
}
