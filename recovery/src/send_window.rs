//! A sender's window of one (sender, region) stream: the sequence numbers it hands out, and
//! (reliable mode) every packet sent but not yet acknowledged as stable by the region, kept
//! for re-multicast when a whole caretaker partition lacks it (QSM) and for peers' requests.
//!
//! The window builds no packet and sends nothing: the owner writes the packet with
//! [`SendWindow::next_seq`], records it with [`SendWindow::sent`], applies the region leader's
//! acknowledgements with [`SendWindow::ack`] and copies kept packets out with
//! [`SendWindow::get`] when it sends them again. A full window ([`SendWindow::is_open`]) stops
//! the stream, which pushes back on the publisher. Kept packets live in recycled buffers, so
//! steady state allocates nothing per packet.
//!
//! Past stability, the window also *retains* what the region acknowledged but some member
//! may still lack: the acknowledgement's `stable` point passes members the ring skipped this
//! round (a crashed or unreachable hop), its `floor` does not. A skipped member may be the
//! caretaker partition of what it lacks, so no cache holds it; the sender is then the only
//! copy. Packets between the floor and the stability point are kept for re-multicast and do
//! not close the window, so a skipped member does not hold the stream back, until they are a
//! window's worth: the window then closes until the floor advances (the skipped member
//! catches up, or the view drops it). Dropping the oldest at once loses what nobody else
//! holds (seed 61803: a crashed partition leader left its four live partition-mates
//! unvisited for seconds; all four lacked a packet their partition was the caretaker of, and
//! the sender had dropped it: they waited for it for ever). So the window holds at most
//! twice its capacity. It stays closed for at most the retention hold
//! ([`SendWindow::set_retention_hold`], the owner's bound on failure detection): a member
//! that stays skipped while the view keeps it (a one-way link failure, which no failure
//! detector sees) would otherwise stop the stream for as long as the failure lasts. Past the
//! hold the window opens again and the oldest retained packets beyond a window's worth are
//! dropped, counted ([`SendWindow::retained_dropped`]), until the floor advances.
//!
//! The window is bounded by packets and, optionally ([`SendWindow::bound_by_time`]), by time:
//! it also closes once it holds more than a given time's worth of data at the rate the region
//! has been acknowledging it (issue 13: a member descheduled for 100 ms otherwise lets the
//! sender pour a whole 8,192-packet window, 200 ms of 1 KB messages, into its socket buffer,
//! and those messages arrive late however fast the member catches up).

use std::collections::VecDeque;
use std::time::Duration;

use qs_transport::{Instant, Seq};

use crate::drain::DrainRate;
use crate::store::BufferPool;

/// What [`SendWindow::resend`] decided about a packet the region asks for again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Send it again (its time was noted).
    Go,
    /// It was sent again moments ago: not again within the hold-off (no storm while
    /// stability is held back by a slow member).
    HeldOff,
    /// Not in the window (acknowledged already, or never sent).
    Gone,
}

/// The send side of one stream.
#[derive(Debug)]
pub struct SendWindow {
    /// Most packets kept unacknowledged (0: best-effort, nothing is kept).
    capacity: usize,
    /// The first unacknowledged sequence number; everything before it is stable.
    base: Seq,
    /// Packets before `base` still kept (stable, past the floor): the front of `packets`.
    retained: usize,
    retained_bytes: usize,
    /// Since when the retention holds a window's worth (the floor not advancing).
    retention_full_since: Option<Instant>,
    /// How long a full retention may close the window.
    retention_hold: Duration,
    /// Whether the hold passed: the retention drops its oldest beyond a window's worth.
    retention_dropping: bool,
    /// Retained packets dropped that way.
    retained_dropped: u64,
    next: Seq,
    /// The stream's first sequence number.
    first: Seq,
    packets: VecDeque<Kept>,
    bytes: usize,
    peak_bytes: usize,
    pool: BufferPool,
    /// The time bound: most time's worth of data held at the acknowledgement rate (zero:
    /// bounded by packets only), and the fewest bytes it ever limits the window to.
    time: Duration,
    floor: usize,
    /// Bytes per second the region acknowledges while the window holds something.
    acks: DrainRate,
}

#[derive(Debug)]
struct Kept {
    datagram: Vec<u8>,
    resent_at: Option<Instant>,
}

impl SendWindow {
    /// A window keeping at most `capacity` unacknowledged packets; 0 keeps nothing (best
    /// effort: the window never closes).
    pub fn new(capacity: usize) -> SendWindow {
        SendWindow::starting_at(capacity, Seq::FIRST)
    }

    /// Like [`SendWindow::new`], for a stream whose first packet is `first` (receivers must
    /// expect the same start; see `CoreConfig::first_seq`).
    pub fn starting_at(capacity: usize, first: Seq) -> SendWindow {
        SendWindow {
            capacity,
            base: first,
            retained: 0,
            retained_bytes: 0,
            retention_full_since: None,
            retention_hold: Duration::MAX,
            retention_dropping: false,
            retained_dropped: 0,
            next: first,
            first,
            packets: VecDeque::new(),
            bytes: 0,
            peak_bytes: 0,
            // A full window's worth, so a window in steady state allocates nothing.
            pool: BufferPool::new(capacity),
            time: Duration::ZERO,
            floor: 0,
            acks: DrainRate::new(),
        }
    }

    /// Bounds the window by time as well: it closes while it holds more than `time`'s worth of
    /// data at the rate the region acknowledged it lately, but never below `floor` bytes (so
    /// that the acknowledgement delay, a ring round or two, does not hold the stream back
    /// whatever the rate). Until a rate is measured, and with `time` zero, only the packet
    /// bound applies.
    pub fn bound_by_time(mut self, time: Duration, floor: usize) -> SendWindow {
        self.time = time;
        self.floor = floor;
        self
    }

    /// How long a window's worth of retained packets may close the window (unbounded until
    /// set; see the module docs).
    pub fn set_retention_hold(&mut self, hold: Duration) {
        self.retention_hold = hold;
    }

    /// Retained packets dropped, oldest first, because the retention stayed full past the
    /// hold. A member the ring kept skipping may lack them; nobody tells it they are gone
    /// yet, so it asks for them in vain (issue 10, open).
    pub fn retained_dropped(&self) -> u64 {
        self.retained_dropped
    }

    /// The sequence number the next packet gets.
    pub fn next_seq(&self) -> Seq {
        self.next
    }

    /// Whether anything was sent yet.
    pub fn started(&self) -> bool {
        self.next != self.first
    }

    /// The highest sequence number sent.
    pub fn highest(&self) -> Seq {
        Seq(self.next.0.wrapping_sub(1))
    }

    /// The stability point the region acknowledged: everything before the window.
    pub fn acked(&self) -> Seq {
        Seq(self.base.0.wrapping_sub(1))
    }

    /// Whether another packet may be sent (reliable mode: the window holds fewer than its
    /// packets unacknowledged and retained each, and no more than
    /// [`SendWindow::byte_limit`] bytes).
    pub fn is_open(&self) -> bool {
        self.capacity == 0
            || (!self.is_full()
                && (self.retained < self.capacity || self.retention_dropping)
                && self.bytes <= self.byte_limit())
    }

    /// Whether the window holds all the unacknowledged packets it may (reliable mode): closed
    /// by its packets, not by its time bound or its retention.
    pub fn is_full(&self) -> bool {
        self.capacity != 0 && self.len() >= self.capacity
    }

    /// The most bytes the window holds before it closes: the time bound's share of the
    /// acknowledgement rate ([`SendWindow::bound_by_time`]), unbounded without one.
    pub fn byte_limit(&self) -> usize {
        self.acks.limit(self.time, self.floor, usize::MAX)
    }

    /// Bytes per second the region acknowledged lately (while the window held something),
    /// once measured.
    pub fn ack_rate(&self) -> Option<f64> {
        self.acks.rate()
    }

    /// Packets held unacknowledged.
    pub fn len(&self) -> usize {
        self.packets.len() - self.retained
    }

    /// Whether nothing is held unacknowledged (retained packets do not count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stable packets kept because a member the ring skipped may lack them, and their bytes.
    pub fn retained(&self) -> (usize, usize) {
        (self.retained, self.retained_bytes)
    }

    /// The sequence number before the oldest packet kept, retained ones included: everything
    /// up to it was freed.
    pub fn kept_after(&self) -> Seq {
        Seq(self.kept_from().0.wrapping_sub(1))
    }

    /// The oldest packet kept, retained ones included.
    fn kept_from(&self) -> Seq {
        Seq(self.base.0.wrapping_sub(self.retained as u32))
    }

    /// Bytes held unacknowledged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Highest [`SendWindow::bytes`] seen.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Records the packet just written with [`SendWindow::next_seq`] (kept in reliable mode)
    /// and moves on to the next sequence number.
    pub fn sent(&mut self, datagram: &[u8]) {
        self.next = self.next.next();
        if self.capacity == 0 {
            return; // Best effort: nothing kept, nothing ever acknowledged.
        }
        let datagram = self.pool.copy_of(datagram);
        self.bytes += datagram.len();
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        self.packets.push_back(Kept {
            datagram,
            resent_at: None,
        });
    }

    /// The region holds everything up to `stable` (told at `now`), and every member, those
    /// the ring skipped included, up to `floor`: acknowledges up to `stable` and keeps what
    /// lies past `floor` ([`SendWindow::retained`]). Returns how many packets left the window
    /// (a point before the window acknowledges nothing; one beyond what was sent, all).
    pub fn ack(&mut self, now: Instant, stable: Seq, floor: Seq) -> u64 {
        let before = self.bytes;
        let mut freed = 0;
        while !stable.is_before(self.base) && !self.is_empty() {
            let len = self.packets[self.retained].datagram.len();
            self.bytes -= len;
            self.retained_bytes += len;
            self.retained += 1;
            self.base = self.base.next();
            freed += 1;
        }
        // Free what every member has, and past the hold the oldest beyond a window's worth
        // (see the module docs).
        let mut first = self.kept_from();
        while self.retained > 0 && !floor.is_before(first) {
            self.drop_oldest_retained();
            first = first.next();
        }
        if self.retained < self.capacity {
            self.retention_full_since = None;
            self.retention_dropping = false;
        } else {
            let since = *self.retention_full_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.retention_hold {
                self.retention_dropping = true;
            }
        }
        if self.retention_dropping {
            while self.retained > self.capacity {
                self.drop_oldest_retained();
                self.retained_dropped += 1;
            }
        }
        // What this acknowledgement freed belongs to the time since the last one (counted
        // only if the window held something then: the first acknowledgement, or the first
        // after an empty window, measures nothing), and the time until the next one is busy
        // if the window still holds something.
        self.acks.on_drained(before - self.bytes);
        self.acks.on_poll(now, self.bytes);
        freed
    }

    fn drop_oldest_retained(&mut self) {
        let k = self.packets.pop_front().expect("retained");
        self.retained -= 1;
        self.retained_bytes -= k.datagram.len();
        self.pool.give_back(k.datagram);
    }

    /// Packet `seq`, if it is still held.
    pub fn get(&self, seq: Seq) -> Option<&[u8]> {
        self.kept(seq).map(|k| k.datagram.as_slice())
    }

    /// Whether packet `seq` may be re-multicast now; notes the time if so.
    pub fn resend(&mut self, now: Instant, seq: Seq, holdoff: Duration) -> Resend {
        let Some(i) = self.index(seq) else {
            return Resend::Gone;
        };
        let k = &mut self.packets[i];
        if k.resent_at.is_some_and(|t| now < t + holdoff) {
            return Resend::HeldOff;
        }
        k.resent_at = Some(now);
        Resend::Go
    }

    fn index(&self, seq: Seq) -> Option<usize> {
        let i = usize::try_from(self.kept_from().distance_to(seq)).ok()?;
        (i < self.packets.len()).then_some(i)
    }

    fn kept(&self, seq: Seq) -> Option<&Kept> {
        self.packets.get(self.index(seq)?)
    }

    /// Panics if counts drifted or the window overflowed.
    pub fn check_invariants(&self) {
        assert!(self.retained <= self.packets.len());
        let bytes = |ks: &mut dyn Iterator<Item = &Kept>| ks.map(|k| k.datagram.len()).sum();
        assert_eq!(
            self.retained_bytes,
            bytes(&mut self.packets.iter().take(self.retained)),
            "retained byte count drifted"
        );
        assert_eq!(
            self.bytes,
            bytes(&mut self.packets.iter().skip(self.retained)),
            "unacked byte count drifted"
        );
        if self.capacity == 0 {
            assert!(
                self.packets.is_empty(),
                "a best-effort window keeps nothing"
            );
            return;
        }
        // Retention closes the window below a window's worth, and one more window's worth
        // may become stable behind it.
        assert!(self.len() <= self.capacity && self.retained < 2 * self.capacity);
        assert_eq!(
            self.base.advance(self.len() as u32),
            self.next,
            "send window does not end at the next sequence number"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::ZERO;
    const HOLD: Duration = Duration::from_millis(20);

    fn filled(capacity: usize, n: u32) -> SendWindow {
        let mut w = SendWindow::new(capacity);
        for i in 0..n {
            assert_eq!(w.next_seq(), Seq(i + 1));
            w.sent(&[i as u8; 10]);
        }
        w
    }

    #[test]
    fn a_full_window_closes_and_an_acknowledgement_reopens_it() {
        let mut w = filled(4, 4);
        assert!(!w.is_open() && w.is_full());
        assert_eq!(w.ack(T0, Seq(2), Seq(2)), 2);
        assert!(w.is_open());
        assert_eq!((w.len(), w.bytes(), w.acked()), (2, 20, Seq(2)));
        assert_eq!(w.get(Seq(2)), None);
        assert_eq!(w.get(Seq(3)), Some(&[2u8; 10][..]));
        w.check_invariants();
    }

    #[test]
    fn what_a_skipped_member_may_lack_is_retained_but_does_not_close_the_window() {
        let mut w = filled(4, 4);
        // Stable to 4, but a skipped member is known to hold only up to 1.
        assert_eq!(w.ack(T0, Seq(4), Seq(1)), 4);
        assert!(w.is_open() && w.is_empty());
        assert_eq!((w.len(), w.bytes(), w.acked()), (0, 0, Seq(4)));
        assert_eq!(w.retained(), (3, 30));
        assert_eq!(w.get(Seq(1)), None, "every member has it");
        assert_eq!(w.get(Seq(2)), Some(&[1u8; 10][..]));
        assert_eq!(w.resend(T0, Seq(4), HOLD), Resend::Go);
        w.check_invariants();
        // The window fills again; a window's worth retained closes it, and nothing retained
        // is dropped (a skipped member may lack it, and nobody else hold it).
        for i in 4..10 {
            if w.is_open() {
                w.sent(&[i as u8; 10]);
            }
        }
        assert!(w.is_full());
        assert_eq!(w.ack(T0, Seq(7), Seq(1)), 3);
        assert_eq!(w.retained(), (6, 60));
        assert!(w.len() == 1 && !w.is_full() && !w.is_open());
        assert_eq!(w.get(Seq(2)), Some(&[1u8; 10][..]), "kept, not dropped");
        assert_eq!(w.kept_after(), Seq(1));
        w.check_invariants();
        // The floor moves but the retention still holds a window's worth: still closed.
        assert_eq!(w.ack(T0, Seq(7), Seq(3)), 0);
        assert!(w.retained() == (4, 40) && !w.is_open());
        // Below a window's worth it opens again; the floor catching up empties it.
        assert_eq!(w.ack(T0, Seq(7), Seq(4)), 0);
        assert!(w.is_open());
        assert_eq!(w.ack(T0, Seq(8), Seq(8)), 1);
        assert_eq!((w.retained(), w.len()), ((0, 0), 0));
        w.check_invariants();
    }

    #[test]
    fn a_full_retention_closes_the_window_only_for_its_hold_then_drops_the_oldest_counted() {
        let hold = Duration::from_secs(4);
        let mut w = filled(4, 4);
        w.set_retention_hold(hold);
        // A skipped member holds only up to 0: everything stable is retained.
        assert_eq!(w.ack(T0, Seq(4), Seq(0)), 4);
        assert!(
            w.retained() == (4, 40) && !w.is_open(),
            "a window's worth retained"
        );
        let just_inside = T0 + hold - Duration::from_nanos(1);
        w.ack(just_inside, Seq(4), Seq(0));
        assert!(
            !w.is_open() && w.retained_dropped() == 0,
            "closed within the hold"
        );
        // Past the hold the window opens; what becomes stable beyond a window's worth pushes
        // the oldest out, counted.
        w.ack(T0 + hold, Seq(4), Seq(0));
        assert!(w.is_open());
        for i in 4..6 {
            w.sent(&[i as u8; 10]);
        }
        assert_eq!(w.ack(T0 + hold, Seq(6), Seq(0)), 2);
        assert_eq!((w.retained(), w.retained_dropped()), ((4, 40), 2));
        assert_eq!(w.get(Seq(2)), None, "dropped, oldest first");
        assert_eq!(w.get(Seq(3)), Some(&[2u8; 10][..]));
        assert!(w.is_open());
        w.check_invariants();
        // The floor advancing below a window's worth ends it: a full retention closes the
        // window again, for a new hold.
        w.ack(T0 + hold, Seq(6), Seq(4));
        assert_eq!(w.retained(), (2, 20));
        for i in 6..8 {
            w.sent(&[i as u8; 10]);
        }
        let later = T0 + hold * 2;
        w.ack(later, Seq(8), Seq(4));
        assert!(w.retained() == (4, 40) && !w.is_open());
        w.ack(later + hold, Seq(8), Seq(4));
        assert!(w.is_open() && w.retained_dropped() == 2);
        w.check_invariants();
    }

    #[test]
    fn a_window_just_below_its_capacity_stays_open() {
        let w = filled(4, 3);
        assert!(w.is_open());
        assert!(!filled(4, 4).is_open());
    }

    #[test]
    fn an_acknowledgement_before_the_window_frees_nothing_and_beyond_frees_everything() {
        let mut w = filled(8, 5);
        w.ack(T0, Seq(3), Seq(3));
        assert_eq!(w.ack(T0, Seq(1), Seq(1)), 0);
        assert_eq!(w.ack(T0, Seq(100), Seq(100)), 2);
        assert!(w.is_empty());
        w.check_invariants();
    }

    #[test]
    fn a_resend_is_held_off_just_inside_the_hold_off_and_allowed_at_its_end() {
        let mut w = filled(8, 3);
        assert_eq!(w.resend(T0, Seq(2), HOLD), Resend::Go);
        let just_inside = T0 + HOLD - Duration::from_nanos(1);
        assert_eq!(w.resend(just_inside, Seq(2), HOLD), Resend::HeldOff);
        assert_eq!(w.resend(T0 + HOLD, Seq(2), HOLD), Resend::Go);
        assert_eq!(w.resend(T0, Seq(9), HOLD), Resend::Gone);
    }

    #[test]
    fn a_best_effort_window_keeps_nothing_and_never_closes() {
        let w = filled(0, 100);
        assert!(w.is_open() && w.is_empty());
        assert_eq!(w.highest(), Seq(100));
        assert_eq!(w.acked(), Seq(0), "nothing is ever acknowledged");
        w.check_invariants();
    }

    fn at_ms(ms: u64) -> Instant {
        T0 + Duration::from_millis(ms)
    }

    /// A window whose region acknowledged `per_ms` packets of 1,000 bytes every millisecond
    /// for 60 ms (the window never empty), then is filled until it closes.
    fn filled_at_ack_rate(
        capacity: usize,
        time: Duration,
        floor: usize,
        per_ms: u32,
    ) -> SendWindow {
        let mut w = SendWindow::new(capacity).bound_by_time(time, floor);
        for ms in 0..60 {
            for _ in 0..per_ms {
                w.sent(&[0u8; 1000]);
            }
            // Everything but the last packet: the window is never seen empty.
            let stable = Seq(w.highest().0 - 1);
            w.ack(at_ms(ms), stable, stable);
        }
        while w.is_open() {
            w.sent(&[0u8; 1000]);
            assert!(w.len() <= capacity, "bounded by packets at least");
        }
        w.check_invariants();
        w
    }

    #[test]
    fn a_time_bounded_window_closes_just_past_its_time_at_the_acknowledgement_rate() {
        // 100 packets of 1,000 bytes acknowledged per millisecond: 100 MB/s, 5 ms = 500 KB.
        let w = filled_at_ack_rate(100_000, Duration::from_millis(5), 64 << 10, 100);
        let rate = w.ack_rate().expect("measured");
        assert!((rate - 1e8).abs() < 1e6, "{rate}");
        let limit = w.byte_limit();
        assert!((495_000..=505_000).contains(&limit), "{limit}");
        // Open up to the limit, closed by the first packet past it.
        assert!(
            w.bytes() > limit && w.bytes() - 1000 <= limit,
            "{} {limit}",
            w.bytes()
        );
        assert!(
            w.len() < 1000 && !w.is_full(),
            "far below its packets: {}",
            w.len()
        );
    }

    #[test]
    fn without_a_time_bound_the_window_fills_to_its_packets() {
        let w = filled_at_ack_rate(2000, Duration::ZERO, 64 << 10, 100);
        assert_eq!(w.len(), 2000);
        assert_eq!(w.byte_limit(), usize::MAX);
    }

    #[test]
    fn a_slowly_acknowledged_window_still_holds_its_floor() {
        // 1 MB/s acknowledged: 5 ms of it is 5 KB, below the 64 KiB floor.
        let w = filled_at_ack_rate(100_000, Duration::from_millis(5), 64 << 10, 1);
        assert_eq!(w.byte_limit(), 64 << 10);
        assert!(w.bytes() > 64 << 10 && w.bytes() - 1000 <= 64 << 10);
        // Nothing measured yet: the packets alone bound it.
        let fresh = SendWindow::new(10).bound_by_time(Duration::from_millis(5), 64 << 10);
        assert_eq!(fresh.byte_limit(), usize::MAX);
    }

    #[test]
    fn sequence_numbers_wrap_inside_the_window() {
        let mut w = SendWindow::new(8);
        w.base = Seq(u32::MAX - 1);
        w.next = w.base;
        for _ in 0..4 {
            w.sent(&[1]);
        }
        assert!(w.get(Seq(u32::MAX)).is_some() && w.get(Seq(1)).is_some());
        assert_eq!(w.ack(T0, Seq(0), Seq(0)), 3);
        w.check_invariants();
    }
}
