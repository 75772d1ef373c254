//! The receiver's view of one (sender, region) stream: packets back in sequence order,
//! duplicates dropped, holes either waited out and reported as gaps (best-effort mode) or held
//! until repaired (reliable mode, where the regional protocol fills them).
//!
//! Sans-IO: `now` is an argument, the owner calls [`ReceiveWindow::handle_timeout`] at
//! [`ReceiveWindow::deadline`]. Sequence numbers wrap ([`Seq`]); every comparison is circular.

use std::collections::VecDeque;
use std::time::Duration;

use qs_transport::wire::SeqRange;
use qs_transport::{Instant, Seq};

/// What [`ReceiveWindow::insert`] made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first packet heard on this stream; `missed_before` packets of the stream were sent
    /// before it (streams start at [`Seq::FIRST`]) and never reached this receiver, typically
    /// because it joined later. They are not gaps.
    First {
        /// Packets the stream had sent before this one.
        missed_before: u32,
    },
    /// A new packet, kept until everything before it is delivered or given up.
    Accepted,
    /// A duplicate, or a packet older than what was already delivered or given up.
    Stale,
    /// Reliable mode only: the packet lies beyond the window and was not taken; it will be
    /// repaired once the window moves on.
    Beyond,
}

/// The next thing to hand on, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popped<T> {
    /// A packet, in order.
    Packet(Seq, T),
    /// `count` packets from `first` on never arrived and were given up: a gap.
    Lost {
        /// The first lost sequence number.
        first: Seq,
        /// How many.
        count: u32,
    },
    /// `count` packets from the start of the stream, before the first packet this receiver
    /// heard, never came: it most likely joined after they were sent. Not a gap.
    NotHeard {
        /// How many.
        count: u32,
    },
}

/// A window as [`ReceiveWindow::state`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    /// Everything up to here was handed on or given up.
    pub prefix: Seq,
    /// The highest sequence number known to exist (at least `prefix`).
    pub highest: Seq,
    /// Holes after `prefix`, in order (the first ones, when there are more than asked for).
    pub holes: Vec<SeqRange>,
    /// Every position from `prefix + 1` up to here was looked at: holes beyond it may exist
    /// but are not listed. At least `highest` when the list is complete.
    pub examined_to: Seq,
    /// The last position the window would take a packet at now (reliable mode refuses what
    /// lies beyond; the room shrinks while the owner has not taken released packets).
    pub room_end: Seq,
}

fn push_seq(list: &mut Vec<SeqRange>, seq: Seq) {
    match list.last_mut() {
        Some(r) if r.first.advance(r.count) == seq => r.count += 1,
        _ => list.push(SeqRange {
            first: seq,
            count: 1,
        }),
    }
}

/// Reorders one stream's packets, within a bounded window.
///
/// A packet that arrives in order is handed on at once. One that arrives after a hole waits
/// (at most `capacity` packets wait). In best-effort mode ([`ReceiveWindow::new`]) the hole is
/// given up when it is older than `timeout` or when waiting packets would overflow the
/// window, and becomes a [`Popped::Lost`] at its place in the order. In reliable mode
/// ([`ReceiveWindow::reliable`]) holes wait for repair: packets beyond the window are refused
/// ([`Arrival::Beyond`]), and only the owner gives holes up ([`ReceiveWindow::skip_to`],
/// [`ReceiveWindow::give_up_all`]).
#[derive(Debug, Clone)]
pub struct ReceiveWindow<T> {
    capacity: usize,
    /// `None` in reliable mode: holes are never given up on a timer.
    timeout: Option<Duration>,
    /// Next sequence number to hand on; `None` until the first packet.
    next: Option<Seq>,
    /// `slots[i]` holds packet `next + i` if it arrived.
    slots: VecDeque<Option<T>>,
    /// Highest sequence number known to exist (received, or announced by the sender).
    highest: Option<Seq>,
    /// Since when the head has been missing while something after it is known.
    waiting_since: Option<Instant>,
    /// The first packet heard, when earlier ones of the stream may still arrive.
    first_heard: Option<Seq>,
    /// The stream's first sequence number ([`Seq::FIRST`] unless set otherwise).
    first: Seq,
    /// A first packet heard mid-stream waits this long for up to this many positions before
    /// it (see [`ReceiveWindow::look_back`]).
    look_back: (u32, Duration),
    /// Until when the positions before `first_heard` are waited for (a first packet heard
    /// mid-stream that looked back).
    first_wait: Option<Instant>,
    /// The last runs of positions given up (lost or not heard), oldest first, at most
    /// [`GIVEN_UP_MAX`]: see [`ReceiveWindow::was_given_up`].
    given_up: VecDeque<(Seq, u32)>,
    out: VecDeque<Popped<T>>,
}

/// Most runs of given-up positions a window remembers.
const GIVEN_UP_MAX: usize = 16;

impl<T> ReceiveWindow<T> {
    /// A window holding at most `capacity` (≥ 1) waiting packets, giving up holes after
    /// `timeout`.
    pub fn new(capacity: usize, timeout: Duration) -> ReceiveWindow<T> {
        ReceiveWindow {
            capacity: capacity.max(1),
            timeout: Some(timeout),
            next: None,
            slots: VecDeque::new(),
            highest: None,
            waiting_since: None,
            first_heard: None,
            first: Seq::FIRST,
            look_back: (0, Duration::ZERO),
            first_wait: None,
            given_up: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    /// The same window for a stream whose first packet is `first` instead of
    /// [`Seq::FIRST`] (a sender and its receivers must agree on it).
    pub fn starting_at(self, first: Seq) -> ReceiveWindow<T> {
        ReceiveWindow { first, ..self }
    }

    /// Until the first packet is heard: a first packet heard mid-stream (not within the
    /// window's capacity of the stream's start, where the window waits from the start) waits
    /// up to `wait` for the `positions` (at most) before it, which may still come: a packet
    /// lost just before it, rebuilt from a neighbour's lateral repair once the packets after it
    /// arrived. Those that do not come in time are [`Popped::NotHeard`], like everything before
    /// them. Without it (0 positions, the default) the window starts right after the first
    /// packet heard and anything before it is [`Arrival::Stale`].
    pub fn look_back(&mut self, positions: u32, wait: Duration) {
        self.look_back = (positions, wait);
    }

    /// A reliable-mode window of `capacity` (≥ 1) positions: holes wait for repair.
    pub fn reliable(capacity: usize) -> ReceiveWindow<T> {
        ReceiveWindow {
            timeout: None,
            ..ReceiveWindow::new(capacity, Duration::ZERO)
        }
    }

    /// The next sequence number to hand on, once anything was heard.
    pub fn next_expected(&self) -> Option<Seq> {
        self.next
    }

    /// Packets waiting behind a hole.
    pub fn waiting(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// The packets the window holds that were not popped yet: those released in order
    /// first, then those waiting behind a hole, in sequence order.
    pub fn held(&self) -> impl Iterator<Item = &T> {
        let released = self.out.iter().filter_map(|p| match p {
            Popped::Packet(_, item) => Some(item),
            _ => None,
        });
        released.chain(self.slots.iter().flatten())
    }

    /// Accounts for packet `seq` carrying `item`.
    pub fn insert(&mut self, now: Instant, seq: Seq, item: T) -> Arrival {
        let Some(next) = self.next else {
            let before = self.first.distance_to(seq);
            if before > 0 && (before as usize) < self.capacity {
                // Early in the stream: the first packets may merely be late (reordered),
                // so wait for them like for any hole; those that never come are NotHeard.
                self.next = Some(self.first);
                self.first_heard = Some(seq);
                self.slots.resize_with(before as usize, || None);
                self.slots.push_back(Some(item));
                self.highest = Some(seq);
                self.advance(now);
                return Arrival::First { missed_before: 0 };
            }
            let (positions, wait) = self.look_back;
            let back = i64::from(positions)
                .min(before)
                .min(self.capacity as i64 - 1)
                .max(0) as u32;
            if back > 0 {
                // Mid-stream: the packets just before it may still come.
                self.next = Some(Seq(seq.0.wrapping_sub(back)));
                self.first_heard = Some(seq);
                self.first_wait = Some(now + wait);
                self.slots.resize_with(back as usize, || None);
                self.slots.push_back(Some(item));
                self.highest = Some(seq);
                self.advance(now);
                return Arrival::First {
                    missed_before: before as u32 - back,
                };
            }
            self.next = Some(seq.next());
            self.highest = Some(seq);
            self.out.push_back(Popped::Packet(seq, item));
            return Arrival::First {
                missed_before: before.max(0) as u32,
            };
        };
        let ahead = next.distance_to(seq);
        if ahead < 0 {
            return Arrival::Stale;
        }
        let mut ahead = ahead as usize;
        if self.timeout.is_none() && ahead + self.out.len() >= self.capacity {
            // Reliable mode: what waits here and what the owner has not popped yet share the
            // window, so a slow owner stops the window (and, through the ring, the sender).
            return Arrival::Beyond;
        }
        if ahead >= self.capacity {
            // Holding it would overflow the window: give up the oldest positions now.
            self.drop_head(ahead + 1 - self.capacity);
            self.advance(now);
            ahead = self.next.expect("started").distance_to(seq) as usize;
        }
        if self.slots.len() <= ahead {
            self.slots.resize_with(ahead + 1, || None);
        }
        if self.slots[ahead].is_some() {
            return Arrival::Stale;
        }
        self.slots[ahead] = Some(item);
        if self.highest.is_none_or(|h| h.is_before(seq)) {
            self.highest = Some(seq);
        }
        self.advance(now);
        Arrival::Accepted
    }

    /// The sender says it has sent up to `highest`: a missing tail starts waiting too.
    pub fn on_highest(&mut self, now: Instant, highest: Seq) {
        let Some(next) = self.next else {
            // Nothing heard: the stream's history is not ours to claim.
            self.next = Some(highest.next());
            self.highest = Some(highest);
            return;
        };
        if next.distance_to(highest) < 0 {
            return;
        }
        if self.highest.is_none_or(|h| h.is_before(highest)) {
            self.highest = Some(highest);
        }
        self.advance(now);
    }

    /// When [`ReceiveWindow::handle_timeout`] must run, if a hole is waiting (best-effort
    /// mode) or a first packet looks back ([`ReceiveWindow::look_back`]).
    pub fn deadline(&self) -> Option<Instant> {
        let first = self.first_wait.filter(|_| self.first_heard.is_some());
        let hole = self
            .timeout
            .and_then(|timeout| self.waiting_since.map(|t| t + timeout));
        first.into_iter().chain(hole).min()
    }

    /// Whether `seq` lies in one of the last runs of positions the window gave up (as lost or
    /// not heard) rather than handed on: a packet for it that comes now is too late, not a
    /// duplicate. Only the last few runs are remembered.
    pub fn was_given_up(&self, seq: Seq) -> bool {
        self.given_up
            .iter()
            .any(|(first, count)| (0..i64::from(*count)).contains(&first.distance_to(seq)))
    }

    /// Whether `seq` was handed on or given up already, or is held waiting behind a hole;
    /// `None` before anything was heard.
    pub fn has_or_passed(&self, seq: Seq) -> Option<bool> {
        let next = self.next?;
        let Ok(i) = usize::try_from(next.distance_to(seq)) else {
            return Some(true);
        };
        Some(matches!(self.slots.get(i), Some(Some(_))))
    }

    /// Everything up to here was handed on or given up; `None` before anything was heard.
    pub fn prefix(&self) -> Option<Seq> {
        self.next.map(|n| Seq(n.0.wrapping_sub(1)))
    }

    /// The highest sequence number known to exist.
    pub fn highest(&self) -> Option<Seq> {
        self.highest
    }

    /// The holes up to and including `upto` (at most `max` sequence numbers, and only within
    /// the room the window has now), in order.
    pub fn missing(&self, upto: Seq, max: usize) -> Vec<SeqRange> {
        let mut out: Vec<SeqRange> = Vec::new();
        let Some(next) = self.next else {
            return out;
        };
        let Some(highest) = self.highest else {
            return out;
        };
        let last = if upto.is_before(highest) {
            upto
        } else {
            highest
        };
        // Only what the window could take now (reliable mode refuses the rest).
        let room = self.capacity.saturating_sub(self.out.len()) as i64;
        let span = (next.distance_to(last) + 1).min(room);
        let mut taken = 0;
        for i in 0..span.max(0) as u32 {
            if taken == max {
                break;
            }
            if let Some(Some(_)) = self.slots.get(i as usize) {
                continue;
            }
            let seq = next.advance(i);
            taken += 1;
            match out.last_mut() {
                Some(r) if r.first.advance(r.count) == seq => r.count += 1,
                _ => out.push(SeqRange {
                    first: seq,
                    count: 1,
                }),
            }
        }
        out
    }

    /// A read-only summary for the recovery ring: prefix, highest, the first holes (at most
    /// `max` sequence numbers) and how far the window could take packets now. `None` before
    /// anything was heard.
    pub fn state(&self, max: usize) -> Option<WindowState> {
        let next = self.next?;
        let prefix = Seq(next.0.wrapping_sub(1));
        let highest = match self.highest {
            Some(h) if !h.is_before(next) => h,
            _ => prefix,
        };
        let span = (next.distance_to(highest) + 1).max(0) as u64;
        let mut holes: Vec<SeqRange> = Vec::new();
        let mut taken = 0usize;
        let mut examined = 0u64;
        let in_slots = span.min(self.slots.len() as u64);
        while examined < in_slots && taken < max {
            if self.slots[examined as usize].is_none() {
                push_seq(&mut holes, next.advance(examined as u32));
                taken += 1;
            }
            examined += 1;
        }
        if examined == in_slots && in_slots < span && taken < max {
            // Beyond the slots every position up to the highest is a hole: one run.
            let n = (span - in_slots).min((max - taken) as u64) as u32;
            holes.push(SeqRange {
                first: next.advance(in_slots as u32),
                count: n,
            });
            examined += u64::from(n);
        }
        let room = self.capacity.saturating_sub(self.out.len()) as u32;
        Some(WindowState {
            prefix,
            highest,
            holes,
            examined_to: Seq(next.0.wrapping_add(examined as u32).wrapping_sub(1)),
            room_end: Seq(next.0.wrapping_add(room).wrapping_sub(1)),
        })
    }

    /// Moves the window on so that `to` is the next position: packets before it are handed
    /// on, holes before it given up, as [`Popped::NotHeard`] (positions before this receiver's
    /// time) or, when `as_gap`, as [`Popped::Lost`]. A window that heard nothing starts at `to`.
    pub fn skip_to(&mut self, now: Instant, to: Seq, as_gap: bool) {
        let Some(next) = self.next else {
            self.next = Some(to);
            self.highest = Some(Seq(to.0.wrapping_sub(1)));
            return;
        };
        let n = next.distance_to(to);
        if n <= 0 {
            return;
        }
        if !as_gap {
            self.first_heard = Some(to);
        }
        self.drop_head(n as usize);
        if self
            .highest
            .is_some_and(|h| h.is_before(next.advance(n as u32 - 1)))
        {
            self.highest = Some(next.advance(n as u32 - 1));
        }
        self.first_heard = None;
        self.advance(now);
    }

    /// Gives up every hole up to the highest known packet, as [`Popped::Lost`] (the sender is
    /// gone and nobody can repair them).
    pub fn give_up_all(&mut self, now: Instant) {
        if let (Some(_), Some(highest)) = (self.next, self.highest) {
            self.skip_to(now, highest.next(), true);
        }
    }

    /// Gives up holes older than the timeout, and the positions a first packet heard
    /// mid-stream waited for once its wait is over (as not heard).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.first_wait.is_some_and(|t| t <= now) {
            self.first_wait = None;
            if let Some(first) = self.first_heard {
                self.skip_to(now, first, false);
            }
        }
        while self.timeout.is_some() && self.deadline().is_some_and(|d| d <= now) {
            self.give_up_head();
            self.advance(now);
        }
    }

    /// The next packet or gap, in order.
    pub fn pop(&mut self) -> Option<Popped<T>> {
        self.out.pop_front()
    }

    /// Moves the contiguous packets at the head out; (re)starts the hole timer.
    fn advance(&mut self, now: Instant) {
        let Some(mut next) = self.next else { return };
        while let Some(Some(_)) = self.slots.front() {
            let item = self.slots.pop_front().flatten().expect("checked");
            self.out.push_back(Popped::Packet(next, item));
            next = next.next();
            self.waiting_since = None;
        }
        self.next = Some(next);
        if self.first_heard.is_some_and(|f| f.is_before(next)) {
            self.first_heard = None;
        }
        let hole = self.highest.is_some_and(|h| !h.is_before(next));
        if !hole {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// Moves the head `n` positions on: packets there are handed on, holes become gaps.
    fn drop_head(&mut self, n: usize) {
        let mut next = self.next.expect("started");
        let mut lost: Option<(Seq, u32)> = None;
        // Beyond the slots everything is a hole: counted at once, not position by position.
        let beyond = n.saturating_sub(self.slots.len());
        for _ in 0..n - beyond {
            match self.slots.pop_front() {
                Some(Some(item)) => {
                    if let Some((first, count)) = lost.take() {
                        self.push_lost(first, count);
                    }
                    self.out.push_back(Popped::Packet(next, item));
                }
                Some(None) | None => {
                    lost.get_or_insert((next, 0)).1 += 1;
                }
            }
            next = next.next();
        }
        if beyond > 0 {
            let count = u32::try_from(beyond).unwrap_or(u32::MAX);
            lost.get_or_insert((next, 0)).1 += count;
            next = next.advance(count);
        }
        if let Some((first, count)) = lost {
            self.push_lost(first, count);
        }
        self.next = Some(next);
        self.waiting_since = None;
    }

    /// Reports `count` given-up packets from `first`: those before the first packet heard
    /// are [`Popped::NotHeard`], the rest a gap.
    fn push_lost(&mut self, first: Seq, count: u32) {
        if self.given_up.len() >= GIVEN_UP_MAX {
            self.given_up.pop_front();
        }
        self.given_up.push_back((first, count));
        let unheard = match self.first_heard {
            Some(f) => (first.distance_to(f).max(0) as u32).min(count),
            None => 0,
        };
        if unheard > 0 {
            self.out.push_back(Popped::NotHeard { count: unheard });
        }
        if unheard < count {
            self.out.push_back(Popped::Lost {
                first: first.advance(unheard),
                count: count - unheard,
            });
        }
        if self
            .first_heard
            .is_some_and(|f| !first.advance(count).is_before(f))
        {
            self.first_heard = None;
        }
    }

    /// Declares the missing run at the head lost.
    fn give_up_head(&mut self) {
        let Some(next) = self.next else { return };
        let mut count = 0u32;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            count += 1;
        }
        if self.slots.is_empty() {
            // A tail known only from the sender's stream state.
            let beyond = self
                .highest
                .map_or(0, |h| next.advance(count).distance_to(h) + 1);
            count += beyond.max(0) as u32;
        }
        if count > 0 {
            self.push_lost(next, count);
            self.next = Some(next.advance(count));
        }
        self.waiting_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    const T0: Instant = Instant::ZERO;
    const WAIT: Duration = Duration::from_millis(10);

    fn drain(w: &mut ReceiveWindow<u32>) -> Vec<Popped<u32>> {
        std::iter::from_fn(|| w.pop()).collect()
    }

    #[test]
    fn held_lists_what_was_not_popped_in_order_then_behind_holes() {
        let mut w = ReceiveWindow::reliable(16);
        for s in [1u32, 2, 5, 4, 8] {
            w.insert(T0, Seq(s), s * 10);
        }
        assert_eq!(w.held().copied().collect::<Vec<_>>(), [10, 20, 40, 50, 80]);
        w.pop();
        assert_eq!(w.held().copied().collect::<Vec<_>>(), [20, 40, 50, 80]);
        w.give_up_all(T0);
        drain(&mut w);
        assert_eq!(w.held().count(), 0);
    }

    #[test]
    fn a_first_packet_heard_mid_stream_waits_for_the_positions_it_looks_back_at() {
        for reliable in [true, false] {
            let mut w = if reliable {
                ReceiveWindow::reliable(64)
            } else {
                ReceiveWindow::new(64, WAIT)
            };
            w.look_back(4, Duration::from_millis(2));
            // Mid-stream (past the capacity from the start): 96..=99 are waited for.
            assert_eq!(
                w.insert(T0, Seq(100), 100),
                Arrival::First { missed_before: 95 }
            );
            assert_eq!(w.prefix(), Some(Seq(95)));
            assert_eq!(w.insert(T0, Seq(101), 101), Arrival::Accepted);
            assert_eq!(w.insert(T0, Seq(98), 98), Arrival::Accepted);
            assert!(drain(&mut w).is_empty(), "nothing before the wait is over");
            assert_eq!(w.deadline(), Some(T0 + Duration::from_millis(2)));
            w.handle_timeout(T0 + Duration::from_millis(2) - Duration::from_nanos(1));
            assert!(drain(&mut w).is_empty());
            w.handle_timeout(T0 + Duration::from_millis(2));
            assert_eq!(
                drain(&mut w),
                vec![
                    Popped::NotHeard { count: 2 },
                    Popped::Packet(Seq(98), 98),
                    Popped::NotHeard { count: 1 },
                    Popped::Packet(Seq(100), 100),
                    Popped::Packet(Seq(101), 101),
                ],
                "reliable {reliable}"
            );
            assert_eq!(w.deadline(), None);
            assert_eq!(w.insert(T0, Seq(99), 99), Arrival::Stale);
            assert!(w.was_given_up(Seq(99)) && w.was_given_up(Seq(96)));
            assert!(!w.was_given_up(Seq(98)) && !w.was_given_up(Seq(100)));
        }
        // Without a look-back the window starts after the first packet heard.
        let mut w = ReceiveWindow::reliable(64);
        assert_eq!(
            w.insert(T0, Seq(100), 100),
            Arrival::First { missed_before: 99 }
        );
        assert_eq!(w.insert(T0, Seq(99), 99), Arrival::Stale);
    }

    #[test]
    fn reordered_packets_come_out_in_order_without_a_gap() {
        let mut w = ReceiveWindow::new(64, WAIT);
        assert_eq!(w.insert(T0, Seq(1), 1), Arrival::First { missed_before: 0 });
        assert_eq!(w.insert(T0, Seq(3), 3), Arrival::Accepted);
        assert_eq!(drain(&mut w), vec![Popped::Packet(Seq(1), 1)]);
        assert_eq!(w.deadline(), Some(T0 + WAIT));
        assert_eq!(w.insert(T0, Seq(2), 2), Arrival::Accepted);
        assert_eq!(
            drain(&mut w),
            vec![Popped::Packet(Seq(2), 2), Popped::Packet(Seq(3), 3)]
        );
        assert_eq!(w.deadline(), None);
        assert_eq!(w.insert(T0, Seq(2), 2), Arrival::Stale);
    }

    #[test]
    fn a_hole_older_than_the_timeout_becomes_a_gap_in_its_place() {
        let mut w = ReceiveWindow::new(64, WAIT);
        w.insert(T0, Seq(1), 1);
        w.insert(T0, Seq(4), 4);
        w.handle_timeout(T0 + WAIT - Duration::from_nanos(1));
        assert_eq!(drain(&mut w), vec![Popped::Packet(Seq(1), 1)]);
        w.handle_timeout(T0 + WAIT);
        assert_eq!(
            drain(&mut w),
            vec![
                Popped::Lost {
                    first: Seq(2),
                    count: 2
                },
                Popped::Packet(Seq(4), 4)
            ]
        );
        assert_eq!(w.insert(T0, Seq(3), 3), Arrival::Stale, "too late");
    }

    #[test]
    fn a_missing_tail_announced_by_the_sender_becomes_a_gap() {
        let mut w = ReceiveWindow::new(64, WAIT);
        w.insert(T0, Seq(1), 1);
        drain(&mut w);
        w.on_highest(T0, Seq(1));
        assert_eq!(w.deadline(), None);
        w.on_highest(T0, Seq(3));
        w.handle_timeout(T0 + WAIT);
        assert_eq!(
            drain(&mut w),
            vec![Popped::Lost {
                first: Seq(2),
                count: 2
            }]
        );
        assert_eq!(w.insert(T0, Seq(4), 4), Arrival::Accepted);
        assert_eq!(drain(&mut w), vec![Popped::Packet(Seq(4), 4)]);
    }

    #[test]
    fn a_full_window_gives_up_the_oldest_hole_at_once() {
        let mut w = ReceiveWindow::new(4, WAIT);
        w.insert(T0, Seq(1), 1);
        w.insert(T0, Seq(3), 3);
        w.insert(T0, Seq(6), 6);
        assert_eq!(
            drain(&mut w),
            vec![
                Popped::Packet(Seq(1), 1),
                Popped::Lost {
                    first: Seq(2),
                    count: 1
                },
                Popped::Packet(Seq(3), 3),
            ]
        );
        assert_eq!(w.insert(T0, Seq(9), 9), Arrival::Accepted);
        assert_eq!(
            drain(&mut w),
            vec![
                Popped::Lost {
                    first: Seq(4),
                    count: 2
                },
                Popped::Packet(Seq(6), 6)
            ]
        );
        assert_eq!(w.waiting(), 1);
        // Far ahead of an empty window: everything in between is lost at once.
        let mut e = ReceiveWindow::new(2, WAIT);
        e.insert(T0, Seq(1), 1);
        assert_eq!(e.insert(T0, Seq(100), 100), Arrival::Accepted);
        assert_eq!(
            drain(&mut e),
            vec![
                Popped::Packet(Seq(1), 1),
                Popped::Lost {
                    first: Seq(2),
                    count: 97
                }
            ]
        );
    }

    #[test]
    fn the_first_packets_of_a_stream_may_arrive_out_of_order() {
        let mut w = ReceiveWindow::new(8, WAIT);
        assert_eq!(w.insert(T0, Seq(2), 2), Arrival::First { missed_before: 0 });
        assert_eq!(w.insert(T0, Seq(1), 1), Arrival::Accepted);
        assert_eq!(
            drain(&mut w),
            vec![Popped::Packet(Seq(1), 1), Popped::Packet(Seq(2), 2)]
        );
        // A joiner that starts at 4: 1..3 are waited for, then reported as not heard, and a
        // real hole after the first packet heard is a gap.
        let mut j = ReceiveWindow::new(8, WAIT);
        j.insert(T0, Seq(4), 4);
        j.insert(T0, Seq(6), 6);
        j.handle_timeout(T0 + WAIT);
        j.handle_timeout(T0 + WAIT + WAIT);
        assert_eq!(
            drain(&mut j),
            vec![
                Popped::NotHeard { count: 3 },
                Popped::Packet(Seq(4), 4),
                Popped::Lost {
                    first: Seq(5),
                    count: 1
                },
                Popped::Packet(Seq(6), 6),
            ]
        );
    }

    #[test]
    fn a_late_joiner_reports_what_it_missed_before_separately() {
        let mut w = ReceiveWindow::new(8, WAIT);
        assert_eq!(
            w.insert(T0, Seq(10), 10),
            Arrival::First { missed_before: 9 }
        );
        let mut quiet = ReceiveWindow::new(8, WAIT);
        quiet.on_highest(T0, Seq(10));
        assert_eq!(quiet.insert(T0, Seq(11), 11), Arrival::Accepted);
        assert_eq!(drain(&mut quiet), vec![Popped::Packet(Seq(11), 11)]);
    }

    /// What comes out is in sequence order, each packet at most once, and packets plus gaps
    /// cover the stream exactly once the sender's highest is known and holes time out.
    /// `fate[i]`: whether packet `i` arrives, its extra copies, how many places late.
    fn check_coverage(
        start: u32,
        fate: &[(bool, u8, usize)],
        capacity: usize,
    ) -> Result<(), TestCaseError> {
        let first = Seq(start).advance(1);
        let n = fate.len();
        // Arrival order: each kept packet (0..n), with copies, displaced by up to 5 places.
        let mut arrivals: Vec<(usize, u32)> = Vec::new();
        for (i, (keep, copies, shift)) in fate.iter().enumerate() {
            if *keep || i == 0 {
                for c in 0..=*copies {
                    arrivals.push((i + shift + c as usize, i as u32));
                }
            }
        }
        arrivals.sort_by_key(|(k, _)| *k);
        let mut w = ReceiveWindow::new(capacity, WAIT);
        w.on_highest(T0, Seq(start));
        let mut now = T0;
        let mut out = Vec::new();
        for (_, i) in arrivals {
            now = now + Duration::from_millis(1);
            w.handle_timeout(now);
            w.insert(now, first.advance(i), i);
            out.extend(std::iter::from_fn(|| w.pop()));
        }
        w.on_highest(now, first.advance(n as u32 - 1));
        // Each hole waits its own timeout once it reaches the head; a timeout handled at its
        // deadline leaves nothing due then.
        while let Some(d) = w.deadline() {
            w.handle_timeout(d);
            prop_assert!(
                w.deadline().is_none_or(|next| next > d),
                "still due at {:?}",
                d
            );
        }
        out.extend(std::iter::from_fn(|| w.pop()));
        let mut expect = first;
        for p in out {
            match p {
                Popped::Packet(seq, i) => {
                    prop_assert_eq!(seq, expect);
                    prop_assert_eq!(seq, first.advance(i));
                    expect = expect.next();
                }
                Popped::Lost { first: f, count } => {
                    prop_assert_eq!(f, expect);
                    prop_assert!(count > 0);
                    expect = expect.advance(count);
                }
                Popped::NotHeard { .. } => prop_assert!(false, "the start was announced"),
            }
        }
        prop_assert_eq!(expect, first.advance(n as u32));
        prop_assert!(w.waiting() == 0 && w.deadline().is_none());
        Ok(())
    }

    /// A case proptest once shrank to (its regression file named a test that no longer
    /// exists): losses at the start of a stream and a window of two.
    #[test]
    fn early_losses_in_a_window_of_two_still_cover_the_stream() {
        let fate = [(false, 0, 0), (false, 0, 0), (true, 0, 0), (false, 0, 0)];
        check_coverage(0, &fate, 2).unwrap();
    }

    #[test]
    fn a_hole_filled_just_before_the_timeout_is_no_gap_and_just_after_it_is() {
        let just_before = T0 + WAIT - Duration::from_nanos(1);
        let mut w = ReceiveWindow::new(64, WAIT);
        w.insert(T0, Seq(1), 1);
        w.insert(T0, Seq(3), 3);
        w.handle_timeout(just_before);
        assert_eq!(w.insert(just_before, Seq(2), 2), Arrival::Accepted);
        assert_eq!(
            drain(&mut w),
            vec![
                Popped::Packet(Seq(1), 1),
                Popped::Packet(Seq(2), 2),
                Popped::Packet(Seq(3), 3)
            ]
        );
        let mut late = ReceiveWindow::new(64, WAIT);
        late.insert(T0, Seq(1), 1);
        late.insert(T0, Seq(3), 3);
        late.handle_timeout(T0 + WAIT);
        assert_eq!(late.insert(T0 + WAIT, Seq(2), 2), Arrival::Stale);
        assert_eq!(
            drain(&mut late),
            vec![
                Popped::Packet(Seq(1), 1),
                Popped::Lost {
                    first: Seq(2),
                    count: 1
                },
                Popped::Packet(Seq(3), 3)
            ]
        );
    }

    /// Reliable mode: the window holds `capacity` positions, counting packets handed on but
    /// not yet popped by the owner; one position further is refused (repaired later).
    #[test]
    fn a_reliable_window_takes_its_last_position_and_refuses_the_next() {
        let mut w = ReceiveWindow::reliable(8);
        w.insert(T0, Seq(1), 1);
        assert_eq!(drain(&mut w), vec![Popped::Packet(Seq(1), 1)]);
        // Eight positions from the head (2): 2..=9.
        assert_eq!(w.insert(T0, Seq(9), 9), Arrival::Accepted, "last position");
        assert_eq!(w.insert(T0, Seq(10), 10), Arrival::Beyond, "one further");
        // A packet handed on but not popped still takes room: 2 arrives, the head moves to
        // 3, and 10 is still one too far until the owner pops 2.
        assert_eq!(w.insert(T0, Seq(2), 2), Arrival::Accepted);
        assert_eq!(w.insert(T0, Seq(10), 10), Arrival::Beyond);
        assert_eq!(drain(&mut w), vec![Popped::Packet(Seq(2), 2)]);
        assert_eq!(
            w.insert(T0, Seq(10), 10),
            Arrival::Accepted,
            "room once popped"
        );
        assert_eq!(w.insert(T0, Seq(11), 11), Arrival::Beyond);
        assert_eq!(w.deadline(), None, "reliable holes never time out");
    }

    /// Best effort: a window of `capacity` holds a packet `capacity - 1` places past the
    /// head without giving anything up; one place further gives up the oldest hole at once.
    #[test]
    fn a_best_effort_window_holds_capacity_positions_and_gives_up_one_beyond() {
        let mut w = ReceiveWindow::new(4, WAIT);
        w.insert(T0, Seq(1), 1);
        drain(&mut w);
        assert_eq!(w.insert(T0, Seq(5), 5), Arrival::Accepted);
        assert_eq!(drain(&mut w), vec![], "head 2 still awaited");
        assert_eq!(w.insert(T0, Seq(6), 6), Arrival::Accepted);
        assert_eq!(
            drain(&mut w),
            vec![Popped::Lost {
                first: Seq(2),
                count: 1
            }],
            "the oldest hole given up, not the others"
        );
        assert_eq!(w.waiting(), 2);
    }

    proptest! {
        /// Whatever arrives (reordered, duplicated, lost, across wrap-around), the output
        /// covers the stream exactly once ([`check_coverage`]).
        #[test]
        fn output_is_ordered_exactly_once_and_covers_the_stream(
            start: u32,
            fate in prop::collection::vec((any::<bool>(), 0u8..3, 0usize..6), 1..300),
            capacity in 1usize..40,
        ) {
            check_coverage(start, &fate, capacity)?;
        }
    }
}
