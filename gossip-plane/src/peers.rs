//! The runtime's per-peer table: pending sends (which objects want to write to an address),
//! the reply budget that keeps the node from amplifying, return-address cookies, and the
//! expiry of everything kept per peer.
//!
//! * **Initiative and replies.** A datagram to a peer some object chose on its own
//!   ([`Outbox::initiate`](crate::Outbox::initiate): a round's gossip partner, a probe, a seed)
//!   may use the whole MTU. Anything else is a reply and is paid from the peer's *credit*: the
//!   bytes received from that address (amplification ≤ 1), capped at `reply_credit_max` (the
//!   window). A reply that does not fit waits (deferred, counted) until credit arrives.
//! * **Proven addresses.** A datagram may carry, in a small runtime section, the *cookie* the
//!   receiver gave us earlier (a keyed hash of our address under its rotating secret; the
//!   receiver hands it out when it had to cut a reply short). A correct echo proves the
//!   sender receives at that address, so its requests are not spoofed: while its datagrams
//!   keep proving it, such a peer may also draw replies at `proven_reply_rate` (a token
//!   bucket), all proven peers together at most `reply_rate`. One datagram without the proof
//!   demotes the address until the next. This is what lets a joiner pull the tables quickly
//!   while a forged source address — a stranger's or a member's — still gets at most what it
//!   sent.
//! * **Expiry.** A slot nobody heard from for `slot_ttl` is dropped, and every object is told
//!   to forget that address ([`GossipObject::forget_peer`](crate::GossipObject::forget_peer));
//!   the table holds at most `slots_max` slots (the stalest is evicted, counted). A round
//!   looks only at the slots whose deadline came due (a heap of deadlines, moved on lazily)
//!   and at the replies waiting for credit, not at the whole table; an eviction finds the
//!   stalest slot from the same heap.
//!
//! Runtime section (tag [`RUNTIME_TAG`], first in a datagram): `echo u32 | [cookie u32]` —
//! the cookie the receiver gave us (0: none), then, when the receiver's last echo to us was
//! missing or stale, the cookie it should echo from now on.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use qs_transport::{Instant, NodeId, Prng};

use crate::sync::mix;

/// Section tag of the runtime's own section (echo and cookie).
pub const RUNTIME_TAG: u8 = 255;

/// Reply budget and per-peer table settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PeersConfig {
    /// Most peers with a slot (pending sends or recent traffic).
    pub slots_max: usize,
    /// A slot with no datagram from its peer for this long is dropped.
    pub slot_ttl: Duration,
    /// Most reply credit a peer can bank from the bytes it sent (the amplification window).
    pub reply_credit_max: usize,
    /// Extra reply bytes per second a proven peer may draw.
    pub proven_reply_rate: usize,
    /// Burst of the proven peers' token bucket.
    pub proven_burst: usize,
    /// Extra reply bytes per second all proven peers together may draw.
    pub reply_rate: usize,
    /// Burst of the node-wide token bucket.
    pub reply_burst: usize,
    /// The cookie secret changes this often (the previous one stays valid one more period).
    pub cookie_rotate: Duration,
}

impl Default for PeersConfig {
    fn default() -> PeersConfig {
        PeersConfig {
            slots_max: 4096,
            slot_ttl: Duration::from_secs(10),
            reply_credit_max: 64 * 1024,
            proven_reply_rate: 96 * 1024,
            proven_burst: 24 * 1024,
            reply_rate: 1024 * 1024,
            reply_burst: 128 * 1024,
            cookie_rotate: Duration::from_secs(60),
        }
    }
}

/// Counters of the per-peer table and the reply budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeersStats {
    /// Datagrams sent on initiative.
    pub initiative_datagrams: u64,
    /// Datagrams sent as replies (paid from credit or tokens).
    pub reply_datagrams: u64,
    /// Reply bytes sent.
    pub reply_bytes: u64,
    /// Times a reply waited for credit.
    pub replies_deferred: u64,
    /// Replies dropped with their slot while still waiting for credit.
    pub replies_dropped: u64,
    /// Datagrams whose echo proved the sender's address.
    pub echoes_valid: u64,
    /// Datagrams with a missing or wrong echo (their replies are held to amplification 1).
    pub echoes_invalid: u64,
    /// Slots dropped because their peer went quiet.
    pub slots_expired: u64,
    /// Slots evicted because the table was full.
    pub slots_evicted: u64,
    /// Send requests refused because the table was full and nothing could be evicted.
    pub slots_overflow: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    mask: u64,
    queued: bool,
    deferred: bool,
    free: u8,
    credit: usize,
    tokens: usize,
    refilled: Instant,
    proven: bool,
    their_cookie: u32,
    send_cookie: bool,
    /// A new cookie arrived from a peer we are talking to: echo it at once, so that its
    /// deferred answers flow without waiting for our next round.
    echo_due: bool,
    /// When we last sent it a datagram (initiative or reply): a cookie from a peer we are
    /// talking to is echoed at once.
    sent_at: Option<Instant>,
    id: Option<NodeId>,
    touched: Instant,
    /// The time of this slot's one entry in the expiry heap (older entries of the same
    /// address, left by an earlier slot, are skipped).
    due: Instant,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            mask: 0,
            queued: false,
            deferred: false,
            free: 0,
            credit: 0,
            tokens: 0,
            refilled: now,
            proven: false,
            their_cookie: 0,
            send_cookie: false,
            echo_due: false,
            sent_at: None,
            id: None,
            touched: now,
            due: now,
        }
    }
}

/// Smallest datagram worth sending as a reply (header, a section header, an ack).
pub(crate) const REPLY_MIN: usize = qs_transport::wire::HEADER_LEN + 4 + 8;

/// Mask bit of a datagram owed by the runtime itself (an echo), not by an object.
pub(crate) const ECHO_BIT: u64 = 1 << 63;

/// The per-peer table. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    config: PeersConfig,
    order: VecDeque<SocketAddr>,
    slots: BTreeMap<SocketAddr, Slot>,
    /// Expiry deadlines, soonest first: one entry per slot, at most as late as the slot's
    /// `touched` (the entry is moved on only when it comes due, not on every datagram), so a
    /// round looks only at slots that may have expired instead of walking the table.
    expiry: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// The slots waiting for credit (`deferred`): a round retries only these.
    deferred: BTreeSet<SocketAddr>,
    global: usize,
    global_refilled: Instant,
    secrets: [u64; 2],
    rotated: Instant,
    rng: Prng,
    forgotten: Vec<SocketAddr>,
    pub(crate) stats: PeersStats,
}

/// A datagram's budget: how many bytes, and whether it is on initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) bytes: usize,
    pub(crate) free: bool,
}

impl Peers {
    pub(crate) fn new(config: PeersConfig, mut rng: Prng, now: Instant) -> Peers {
        let secrets = [rng.next_u64(), rng.next_u64()];
        Peers {
            global: config.reply_burst,
            global_refilled: now,
            config,
            order: VecDeque::new(),
            slots: BTreeMap::new(),
            expiry: BinaryHeap::new(),
            deferred: BTreeSet::new(),
            secrets,
            rotated: now,
            rng,
            forgotten: Vec::new(),
            stats: PeersStats::default(),
        }
    }

    /// A table for unit tests of objects (their outboxes need one).
    #[cfg(test)]
    pub(crate) fn scratch(now: Instant) -> Peers {
        Peers::new(PeersConfig::default(), Prng::new(0), now)
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.slots.contains_key(&addr)
    }

    /// The slot of `addr`, made if needed (evicting the stalest when full).
    fn slot(&mut self, addr: SocketAddr, now: Instant) -> Option<&mut Slot> {
        if !self.slots.contains_key(&addr) {
            if self.slots.len() >= self.config.slots_max.max(1) {
                // Evict the stalest slot that is not waiting to send.
                match self.stalest_unqueued() {
                    Some(v) => {
                        self.drop_slot(v);
                        self.stats.slots_evicted += 1;
                    }
                    None => {
                        self.stats.slots_overflow += 1;
                        return None;
                    }
                }
            }
            self.slots.insert(addr, Slot::new(now));
            self.expiry.push(Reverse((now, addr)));
            if self.expiry.len() > 2 * self.config.slots_max.max(1) {
                // Dropped slots' entries pile up under churn: keep only the live ones (a
                // walk at most once per `slots_max` new slots).
                self.expiry = self
                    .slots
                    .iter()
                    .map(|(a, s)| Reverse((s.due, *a)))
                    .collect();
            }
        }
        self.slots.get_mut(&addr)
    }

    /// The least recently touched slot not waiting to send (ties: the lowest address), found
    /// from the expiry heap instead of a walk of the table: entries behind their slot's
    /// `touched` are moved on (as [`Peers::tick`] does), queued slots are passed over and put
    /// back, so an eviction costs the entries it passes, not the table.
    fn stalest_unqueued(&mut self) -> Option<SocketAddr> {
        let mut passed = Vec::new();
        let found = loop {
            let Some(Reverse((t, a))) = self.expiry.pop() else {
                break None;
            };
            let Some(s) = self.slots.get_mut(&a).filter(|s| s.due == t) else {
                continue;
            };
            if s.touched != t {
                s.due = s.touched;
                self.expiry.push(Reverse((s.touched, a)));
                continue;
            }
            passed.push(Reverse((t, a)));
            if !s.queued {
                break Some(a);
            }
        };
        self.expiry.extend(passed);
        found
    }

    fn drop_slot(&mut self, addr: SocketAddr) {
        if let Some(s) = self.slots.remove(&addr) {
            if s.deferred {
                self.deferred.remove(&addr);
            }
            if s.deferred && s.mask != 0 {
                self.stats.replies_dropped += 1;
            }
            if s.queued {
                self.order.retain(|a| *a != addr);
            }
            self.forgotten.push(addr);
        }
    }

    /// Addresses whose slots were dropped since the last call (objects forget them).
    pub(crate) fn take_forgotten(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.forgotten)
    }

    fn enqueue(order: &mut VecDeque<SocketAddr>, addr: SocketAddr, s: &mut Slot) {
        if !s.queued && !s.deferred && s.mask != 0 {
            s.queued = true;
            order.push_back(addr);
        }
    }

    /// Object `object` wants to write to `addr`; `initiative` grants a full-size datagram.
    pub(crate) fn add(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        object: usize,
        initiative: bool,
        id: Option<NodeId>,
    ) {
        let Some(s) = self.slot(addr, now) else {
            return;
        };
        s.mask |= 1 << object;
        if id.is_some() {
            s.id = id;
        }
        if initiative {
            s.free = (s.free + 1).min(2);
            s.deferred = false;
            self.deferred.remove(&addr);
        }
        let s = self.slots.get_mut(&addr).expect("just made");
        Self::enqueue(&mut self.order, addr, s);
    }

    /// The next address to write to, its objects, and whom it belongs to.
    pub(crate) fn pop(&mut self) -> Option<(SocketAddr, u64, Option<NodeId>)> {
        while let Some(addr) = self.order.pop_front() {
            if let Some(s) = self.slots.get_mut(&addr) {
                s.queued = false;
                let mask = std::mem::take(&mut s.mask);
                if mask != 0 {
                    return Some((addr, mask, s.id));
                }
            }
        }
        None
    }

    /// Puts objects back for `addr` (they still have something to say).
    pub(crate) fn put_back(&mut self, addr: SocketAddr, mask: u64, front: bool) {
        if mask == 0 {
            return;
        }
        if let Some(s) = self.slots.get_mut(&addr) {
            s.mask |= mask;
            if !s.queued && !s.deferred {
                s.queued = true;
                if front {
                    self.order.push_front(addr);
                } else {
                    self.order.push_back(addr);
                }
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        let rate = |bytes_per_s: usize, since: Instant| {
            let dt = now.saturating_duration_since(since).as_secs_f64();
            (dt * bytes_per_s as f64) as usize
        };
        let g = rate(self.config.reply_rate, self.global_refilled);
        if g > 0 {
            self.global = (self.global + g).min(self.config.reply_burst);
            self.global_refilled = now;
        }
    }

    fn refill_slot(config: &PeersConfig, s: &mut Slot, now: Instant) {
        let dt = now.saturating_duration_since(s.refilled).as_secs_f64();
        let add = (dt * config.proven_reply_rate as f64) as usize;
        if add > 0 {
            s.tokens = (s.tokens + add).min(config.proven_burst);
            s.refilled = now;
        }
    }

    /// The budget of a datagram to `addr` now, within `mtu`; `None` if it must wait.
    pub(crate) fn budget(&mut self, now: Instant, addr: SocketAddr, mtu: usize) -> Option<Budget> {
        self.refill(now);
        let global = self.global;
        let config = self.config.clone();
        let s = self.slots.get_mut(&addr)?;
        if s.free > 0 || s.echo_due {
            return Some(Budget {
                bytes: mtu,
                free: true,
            });
        }
        let mut avail = s.credit;
        if s.proven {
            Self::refill_slot(&config, s, now);
            avail += s.tokens.min(global);
        }
        if avail.min(mtu) < REPLY_MIN {
            return None;
        }
        Some(Budget {
            bytes: avail.min(mtu),
            free: false,
        })
    }

    /// A datagram of `len` bytes went to `addr` under `budget` at `now`.
    pub(crate) fn spent(&mut self, now: Instant, addr: SocketAddr, budget: Budget, len: usize) {
        if let Some(s) = self.slots.get_mut(&addr) {
            s.sent_at = Some(now);
        }
        if budget.free {
            self.stats.initiative_datagrams += 1;
        } else {
            self.stats.reply_datagrams += 1;
            self.stats.reply_bytes += len as u64;
        }
        let Some(s) = self.slots.get_mut(&addr) else {
            return;
        };
        if s.echo_due {
            // This datagram carries the echo (every one does).
            s.echo_due = false;
            if s.free == 0 {
                return;
            }
        }
        if budget.free {
            s.free = s.free.saturating_sub(1);
            return;
        }
        let from_credit = len.min(s.credit);
        s.credit -= from_credit;
        let rest = len - from_credit;
        s.tokens = s.tokens.saturating_sub(rest);
        self.global = self.global.saturating_sub(rest);
    }

    /// `addr` must wait for credit with these objects pending.
    pub(crate) fn defer(&mut self, addr: SocketAddr, mask: u64) {
        if let Some(s) = self.slots.get_mut(&addr) {
            s.mask |= mask;
            if !s.deferred {
                self.stats.replies_deferred += 1;
            }
            s.deferred = true;
            self.deferred.insert(addr);
            // Our next datagram to it says how to prove its address.
            s.send_cookie = true;
        }
    }

    /// A reply to `addr` was cut short by its budget: tell it how to prove its address.
    pub(crate) fn limited(&mut self, addr: SocketAddr) {
        if let Some(s) = self.slots.get_mut(&addr) {
            s.send_cookie = true;
        }
    }

    fn cookie_with(secret: u64, addr: &SocketAddr) -> u32 {
        let mut h = secret;
        match addr {
            SocketAddr::V4(a) => {
                h ^= u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port());
            }
            SocketAddr::V6(a) => {
                let o = a.ip().octets();
                let mut hi = [0u8; 8];
                let mut lo = [0u8; 8];
                hi.copy_from_slice(&o[..8]);
                lo.copy_from_slice(&o[8..]);
                h ^= mix(NodeId(u64::from_be_bytes(hi))) ^ u64::from_be_bytes(lo);
                h ^= u64::from(a.port()) << 48;
            }
        }
        ((mix(NodeId(h)) >> 32) as u32) | 1
    }

    /// The cookie a peer at `addr` must echo to us.
    pub(crate) fn cookie(&self, addr: &SocketAddr) -> u32 {
        Self::cookie_with(self.secrets[0], addr)
    }

    /// What our runtime section to `addr` carries (`None`: no section): our echo of its
    /// cookie (0 if we have none), and our cookie if it needs one (our replies to it were cut
    /// short, or its echo was stale).
    pub(crate) fn section(&self, addr: SocketAddr) -> Option<(u32, Option<u32>)> {
        let s = self.slots.get(&addr)?;
        let cookie = s.send_cookie.then(|| self.cookie(&addr));
        (s.their_cookie != 0 || cookie.is_some()).then_some((s.their_cookie, cookie))
    }

    /// Our section to `addr` was written: it has our cookie now.
    pub(crate) fn cookie_sent(&mut self, addr: SocketAddr) {
        if let Some(s) = self.slots.get_mut(&addr) {
            s.send_cookie = false;
        }
    }

    /// A datagram of `len` bytes from `id` at `addr` arrived with this echo and cookie.
    pub(crate) fn received(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        id: NodeId,
        len: usize,
        echo: u32,
        cookie: Option<u32>,
    ) {
        let valid = echo != 0
            && (echo == Self::cookie_with(self.secrets[0], &addr)
                || echo == Self::cookie_with(self.secrets[1], &addr));
        let current = echo != 0 && echo == Self::cookie_with(self.secrets[0], &addr);
        if valid {
            self.stats.echoes_valid += 1;
        } else {
            self.stats.echoes_invalid += 1;
        }
        let max = self.config.reply_credit_max;
        let config = self.config.clone();
        let Some(s) = self.slot(addr, now) else {
            return;
        };
        s.touched = now;
        s.id = Some(id);
        s.credit = (s.credit + len).min(max);
        if let Some(c) = cookie {
            let talking = s
                .sent_at
                .is_some_and(|t| now.saturating_duration_since(t) <= config.slot_ttl);
            if c != s.their_cookie && talking {
                s.echo_due = true;
                s.mask |= ECHO_BIT;
            }
            s.their_cookie = c;
        }
        if valid && !s.proven {
            s.proven = true;
            s.refilled = now;
            s.tokens = config.proven_burst;
        } else if valid {
            Self::refill_slot(&config, s, now);
        } else if s.proven {
            // Proof is per datagram: one without it (spoofed with this address as its
            // source, or from a peer that lost our cookie) earns only what it brought, and
            // the address must prove itself again.
            s.proven = false;
            s.tokens = 0;
            s.send_cookie = true;
        }
        if echo != 0 && !current {
            s.send_cookie = true;
        }
        if std::mem::take(&mut s.deferred) {
            self.deferred.remove(&addr);
        }
        let s = self.slots.get_mut(&addr).expect("present");
        Self::enqueue(&mut self.order, addr, s);
    }

    /// Whether `addr` proved it receives there (echoed our cookie) while its slot lived.
    pub(crate) fn is_proven(&self, addr: SocketAddr) -> bool {
        self.slots.get(&addr).is_some_and(|s| s.proven)
    }

    /// Per round: rotate the cookie secret, retry deferred replies that can now be paid,
    /// expire quiet slots.
    pub(crate) fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= self.config.cookie_rotate {
            self.secrets = [self.rng.next_u64(), self.secrets[0]];
            self.rotated = now;
        }
        self.refill(now);
        let ttl = self.config.slot_ttl;
        // Only the deadlines that came due: a slot heard from since moves its entry on; the
        // others expire, in address order.
        let mut stale: Vec<SocketAddr> = Vec::new();
        while let Some(Reverse((t, a))) = self.expiry.peek().copied() {
            if now.saturating_duration_since(t) <= ttl {
                break;
            }
            self.expiry.pop();
            let Some(s) = self.slots.get_mut(&a).filter(|s| s.due == t) else {
                continue;
            };
            if now.saturating_duration_since(s.touched) > ttl {
                stale.push(a);
            } else {
                s.due = s.touched;
                self.expiry.push(Reverse((s.touched, a)));
            }
        }
        stale.sort_unstable();
        for a in stale {
            self.drop_slot(a);
            self.stats.slots_expired += 1;
        }
        let slots = &self.slots;
        let waiting: Vec<SocketAddr> = self
            .deferred
            .iter()
            .filter(|a| slots.get(a).is_some_and(|s| s.proven))
            .copied()
            .collect();
        let mtu = REPLY_MIN;
        for a in waiting {
            if self
                .budget(now, a, usize::MAX)
                .is_some_and(|b| b.bytes >= mtu)
            {
                if let Some(s) = self.slots.get_mut(&a) {
                    s.deferred = false;
                    self.deferred.remove(&a);
                    Self::enqueue(&mut self.order, a, s);
                }
            }
        }
    }

    /// Panics if the table and the queue disagree or a bound is broken.
    pub(crate) fn check_invariants(&self) {
        assert!(self.slots.len() <= self.config.slots_max.max(1));
        assert!(self.order.len() <= self.slots.len());
        let queued = self.slots.values().filter(|s| s.queued).count();
        assert_eq!(
            queued,
            self.order.len(),
            "queued slots and the queue disagree"
        );
        for (a, s) in &self.slots {
            assert!(s.credit <= self.config.reply_credit_max);
            assert!(s.tokens <= self.config.proven_burst);
            assert!(
                s.due <= s.touched,
                "an expiry deadline after the last datagram"
            );
            assert!(
                self.expiry.iter().any(|Reverse(e)| *e == (s.due, *a)),
                "a slot without its expiry deadline"
            );
            assert_eq!(s.deferred, self.deferred.contains(a), "deferred index");
        }
        assert!(self.deferred.len() <= self.slots.len());
        assert!(self.expiry.len() <= 2 * self.config.slots_max.max(1));
        assert!(self.global <= self.config.reply_burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7000))
    }

    #[test]
    fn an_unproven_peer_gets_at_most_what_it_sent() {
        let now = Instant(1_000_000_000);
        let mut p = Peers::new(PeersConfig::default(), Prng::new(1), now);
        p.add(now, a(1), 0, false, None);
        assert_eq!(p.pop().map(|x| x.0), Some(a(1)));
        assert_eq!(
            p.budget(now, a(1), 1400),
            None,
            "nothing received, nothing owed"
        );
        p.defer(a(1), 1);
        p.received(now, a(1), NodeId(5), 100, 0, None);
        let b = p.budget(now, a(1), 1400).unwrap();
        assert_eq!(
            b,
            Budget {
                bytes: 100,
                free: false
            }
        );
        p.spent(now, a(1), b, 100);
        assert_eq!(p.budget(now, a(1), 1400), None);
        p.check_invariants();
    }

    #[test]
    fn an_echoed_cookie_proves_the_address_and_opens_the_token_bucket() {
        let now = Instant(1_000_000_000);
        let mut p = Peers::new(PeersConfig::default(), Prng::new(1), now);
        let cookie = p.cookie(&a(2));
        p.received(now, a(2), NodeId(5), 50, cookie ^ 2, None);
        assert!(!p.is_proven(a(2)));
        p.received(now, a(2), NodeId(5), 50, cookie, None);
        assert!(p.is_proven(a(2)));
        let b = p.budget(now, a(2), 1400).unwrap();
        assert_eq!(b.bytes, 1400);
        // A cookie for another address proves nothing.
        p.received(now, a(3), NodeId(6), 50, cookie, None);
        assert!(!p.is_proven(a(3)));
        assert_eq!(p.stats.echoes_valid, 1);
        assert_eq!(p.stats.echoes_invalid, 2);
    }

    #[test]
    fn quiet_slots_expire_and_are_reported_forgotten() {
        let now = Instant(1_000_000_000);
        let cfg = PeersConfig::default();
        let ttl = cfg.slot_ttl;
        let mut p = Peers::new(cfg, Prng::new(1), now);
        p.received(now, a(1), NodeId(1), 10, 0, None);
        p.tick(now + ttl);
        assert_eq!(p.len(), 1, "not yet past the time to live");
        p.tick(now + ttl + Duration::from_millis(1));
        assert_eq!(p.len(), 0);
        assert_eq!(p.take_forgotten(), vec![a(1)]);
    }

    #[test]
    fn a_slot_heard_from_again_expires_a_time_to_live_after_its_last_datagram() {
        let now = Instant(1_000_000_000);
        let cfg = PeersConfig::default();
        let ttl = cfg.slot_ttl;
        let later = Duration::from_secs(3);
        let mut p = Peers::new(cfg, Prng::new(1), now);
        p.received(now, a(1), NodeId(1), 10, 0, None);
        p.received(now, a(2), NodeId(2), 10, 0, None);
        p.received(now + later, a(1), NodeId(1), 10, 0, None);
        p.tick(now + ttl + Duration::from_millis(1));
        assert_eq!(
            p.take_forgotten(),
            vec![a(2)],
            "only the slot not heard from since"
        );
        p.check_invariants();
        p.tick(now + later + ttl);
        assert!(p.contains(a(1)), "not yet past its refreshed time to live");
        p.tick(now + later + ttl + Duration::from_millis(1));
        assert_eq!(p.take_forgotten(), vec![a(1)]);
        assert_eq!(p.stats.slots_expired, 2);
        p.check_invariants();
    }

    #[test]
    fn churn_through_a_full_table_keeps_the_expiry_deadlines_bounded() {
        let now = Instant(1_000_000_000);
        let cfg = PeersConfig {
            slots_max: 4,
            ..PeersConfig::default()
        };
        let mut p = Peers::new(cfg, Prng::new(1), now);
        for i in 0..200u64 {
            let t = now + Duration::from_millis(i);
            p.received(t, a((i % 50) as u8), NodeId(i), 10, 0, None);
            p.tick(t);
            p.check_invariants();
        }
        assert_eq!(p.len(), 4);
        assert_eq!(p.stats.slots_evicted, 196);
    }

    #[test]
    fn a_full_table_evicts_the_stalest_slot() {
        let now = Instant(1_000_000_000);
        let cfg = PeersConfig {
            slots_max: 2,
            ..PeersConfig::default()
        };
        let mut p = Peers::new(cfg, Prng::new(1), now);
        p.received(now, a(1), NodeId(1), 10, 0, None);
        p.received(now + Duration::from_millis(1), a(2), NodeId(2), 10, 0, None);
        p.received(now + Duration::from_millis(2), a(3), NodeId(3), 10, 0, None);
        assert_eq!(p.len(), 2);
        assert_eq!(p.take_forgotten(), vec![a(1)]);
        assert_eq!(p.stats.slots_evicted, 1);
    }

    #[test]
    fn an_eviction_passes_over_slots_heard_from_since_and_slots_waiting_to_send() {
        let now = Instant(1_000_000_000);
        let at = |ms: u64| now + Duration::from_millis(ms);
        let cfg = PeersConfig {
            slots_max: 3,
            ..PeersConfig::default()
        };
        let mut p = Peers::new(cfg, Prng::new(1), now);
        p.received(at(0), a(1), NodeId(1), 10, 0, None);
        p.received(at(1), a(2), NodeId(2), 10, 0, None);
        p.received(at(2), a(3), NodeId(3), 10, 0, None);
        // 1 is heard from again (its heap entry still says 0); 2 waits to send.
        p.received(at(3), a(1), NodeId(1), 10, 0, None);
        p.add(at(4), a(2), 0, true, Some(NodeId(2)));
        p.received(at(5), a(4), NodeId(4), 10, 0, None);
        assert_eq!(
            p.take_forgotten(),
            vec![a(3)],
            "the stalest slot not queued"
        );
        p.check_invariants();
        p.received(at(6), a(5), NodeId(5), 10, 0, None);
        assert_eq!(p.take_forgotten(), vec![a(1)], "touched at 3, before 4");
        assert!(p.contains(a(2)), "still waiting to send");
        assert_eq!(p.stats.slots_evicted, 2);
        p.check_invariants();
    }
}
