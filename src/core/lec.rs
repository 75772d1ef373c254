//! The node's lateral error correction (Ricochet LEC, issue 12): the [`Lec`] of the region this
//! node is a member of, wired into the node's receive path, out path, timers and counters.
//!
//! Owns: creating, re-viewing and dropping the region's [`Lec`] as the region table changes
//! (the same membership truth the ring follows), the canonical bytes of every data packet the
//! node gets or publishes into its own region (the datagram as its sender built it: flags,
//! length and checksum zeroed, no seal trailer, so unicast copies, repairs served by peers and
//! multicast copies all XOR alike), opening lateral repair datagrams and handing them to the
//! core, re-entering rebuilt packets into the receive path (as not heard by multicast),
//! building repair datagrams at `poll_transmit` time (Repair class, to the target's unicast
//! address from [`NodeCore::address_of`]), and the counters: [`LecCounters`] and how each
//! lost packet was repaired ([`RepairSplit`]).
//!
//! Does not: decode or encode repairs (`qs_recovery::lec`), decide what is delivered (the
//! receive window drops what it has), or repair what LEC cannot: the ring stays the backstop,
//! and only waits [`Lec::hold_off`] for a new hole before it requests it (`recv.rs` keeps the
//! young holes of each stream, `RecvStream::progress` hides them from the ring).
//!
//! Cost: with LEC on, every data packet of a region with other members that the core has not
//! stored yet is copied once, into a buffer the core recycles (its canonical bytes; the
//! received buffer is shared and cannot be zeroed in place), and senders
//! build data datagrams no longer than [`LecConfig::max_canonical_len`] so a full bin fits one
//! repair datagram.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;
use qs_recovery::{Lec, LecConfig, LecStats, PacketId};
use qs_transport::wire::{self, Header, LecRepair, PacketKind, HEADER_LEN};
use qs_transport::{Instant, NodeId, RegionId, TrafficClass, Transmit};

use super::NodeCore;

/// How the lost packets of this node were repaired: a packet counts once, when it fills a
/// hole of its stream's receive window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairSplit {
    /// Rebuilt by lateral error correction from a neighbour's repair.
    pub lateral: u64,
    /// Served by a peer (a ring neighbour or a caretaker).
    pub peer: u64,
    /// Sent again by the sender itself (its re-multicast or unicast answer; a late original
    /// counts here too).
    pub sender: u64,
}

/// Lateral error correction counters, summed over the regions this node has been in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LecCounters {
    /// Repair datagrams sent.
    pub repairs_sent: u64,
    /// Bytes of repair datagrams sent (common header included).
    pub repair_bytes_sent: u64,
    /// Repair datagrams received from members.
    pub repairs_received: u64,
    /// Packets rebuilt from repairs.
    pub rebuilt: u64,
    /// Of those, rebuilt from a kept repair once other packets arrived (cascades).
    pub cascades: u64,
    /// Repairs that missed more packets than they can rebuild when they arrived.
    pub undecodable: u64,
    /// Kept repairs that expired undecoded.
    pub expired: u64,
    /// Repairs from non-members, for another region, or while LEC is off (dropped).
    pub foreign: u64,
    /// Rebuilt packets whose digest did not match (dropped).
    pub digest_mismatch: u64,
    /// Data packets too long to be repaired laterally.
    pub unrepairable: u64,
    /// Repair intents dropped (queue full, expired, target gone, no address).
    pub intents_dropped: u64,
    /// Rebuilt packets that did not re-enter the receive path (not a data packet of this
    /// node's region and cluster).
    pub rebuilt_refused: u64,
    /// Rebuilt packets that were not known holes yet (after their stream's highest), parked
    /// for a moment in case the original was only behind the repair.
    pub rebuilt_parked: u64,
    /// Parked packets whose original arrived meanwhile (dropped as duplicates: a repair
    /// overtook the data it covers).
    pub rebuilt_overtaken: u64,
    /// Rebuilt packets that came too late: the receive window had given their position up
    /// (as lost, or as not heard: a joiner's look-back was over before they came), so their
    /// messages are not delivered. (A rebuilt copy of a packet already delivered is a
    /// duplicate, not counted here.)
    pub rebuilt_stale: u64,
    /// Rebuilt packets dropped because the parking was full.
    pub parked_full: u64,
    /// Rebuilt packets whose original then arrived (late, not lost: LEC takes their loss back
    /// from the estimate its rate of fire follows).
    pub rebuilt_then_heard: u64,
    /// Datagrams this node's receive sockets dropped (its own overflow, which LEC takes out of
    /// its loss estimate), as the driver reported them.
    pub socket_drops: u64,
    /// Times LEC woke from sleep (a clean region stores nothing).
    pub wakes: u64,
    /// Repairs not decoded because they covered packets heard while asleep.
    pub repairs_asleep: u64,
}

impl LecCounters {
    fn add(&mut self, s: &LecStats) {
        self.repairs_sent += s.repairs_sent;
        self.repair_bytes_sent += s.repair_bytes_sent;
        self.repairs_received += s.repairs_received;
        self.rebuilt += s.rebuilt;
        self.cascades += s.cascades;
        self.undecodable += s.repairs_undecodable;
        self.expired += s.repairs_expired;
        self.foreign += s.repairs_foreign;
        self.digest_mismatch += s.digest_mismatch;
        self.unrepairable += s.unrepairable;
        self.intents_dropped += s.intents_dropped;
        self.rebuilt_then_heard += s.rebuilt_then_heard;
        self.socket_drops += s.socket_drops;
        self.wakes += s.wakes;
        self.repairs_asleep += s.repairs_asleep;
    }
}

/// How a data packet reached the receive path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// From the network, sent from this address.
    Net(SocketAddr),
    /// Rebuilt by LEC.
    Rebuilt,
}

/// The node's LEC state.
#[derive(Debug, Default)]
pub(super) struct LecState {
    /// The own region's core.
    core: Option<(RegionId, Lec)>,
    /// Counters of cores dropped (region changes), and the node's own.
    retired: LecCounters,
    /// The own region has members besides this node (nothing to exchange otherwise).
    has_peers: bool,
    /// Per lost packet, how it was repaired.
    pub(super) repaired: RepairSplit,
    /// Rebuilt packets after their stream's highest, waiting a moment before they enter the
    /// receive path (see [`NodeCore::pump_lec`]), oldest first.
    parked: VecDeque<(Instant, PacketId, Bytes)>,
    /// Repair datagrams received and not yet decoded (bodies), oldest first: they wait for
    /// the data received in the same driver iteration (see [`NodeCore::handle_lec_repair`]).
    deferred: VecDeque<(Instant, NodeId, Bytes)>,
}

/// Most repair datagrams waiting for their iteration's data (beyond it they are decoded at
/// once).
const DEFERRED_MAX: usize = 1024;

/// Most rebuilt packets parked at once (beyond it they are dropped, counted: the original or
/// the ring brings them).
const PARKED_MAX: usize = 256;

/// Turns a copy of a data datagram (header and body, no seal trailer) into its canonical
/// bytes in place: flags, length and checksum zeroed, the fields the path (unicast copy flag)
/// and the seal write.
fn canonicalize(c: &mut [u8]) {
    c[wire::field::FLAGS] = 0;
    c[wire::field::LENGTH].fill(0);
    c[wire::field::CHECKSUM].fill(0);
}

impl NodeCore {
    /// The LEC configuration of `region` (`None`: off there).
    fn lec_config_for(&self, region: RegionId) -> Option<LecConfig> {
        match self.config.lec_regions.get(&region) {
            Some(c) => c.clone(),
            None => self.config.lec.clone(),
        }
    }

    /// Longest unsealed data datagram to build into `region`, so that the region's members
    /// can repair it laterally.
    pub(super) fn lec_data_budget(&self, region: RegionId) -> usize {
        match self.config.lec_regions.get(&region) {
            Some(c) => c.as_ref(),
            None => self.config.lec.as_ref(),
        }
        .map_or(usize::MAX, |c| c.max_canonical_len().max(HEADER_LEN + 64))
    }

    /// Follows the region table: a core for the own region (a new one when the region
    /// changes), viewing its current members; none when the node is in no region or LEC is
    /// off there.
    pub(super) fn refresh_lec(&mut self) {
        let want = self
            .own_region
            .and_then(|r| self.lec_config_for(r).map(|c| (r, c)));
        let Some((region, config)) = want else {
            self.retire_lec();
            return;
        };
        if self.lec.core.as_ref().is_none_or(|(r, _)| *r != region) {
            self.retire_lec();
            let seed = self.prng.next_u64();
            self.lec.core = Some((region, Lec::new(config, self.config.id, region, seed)));
        }
        let members: Vec<NodeId> = self
            .regions
            .region(region)
            .map(|r| r.members.iter().copied().collect())
            .unwrap_or_default();
        self.lec.has_peers = members.iter().any(|m| *m != self.config.id);
        if let Some((_, lec)) = self.lec.core.as_mut() {
            lec.set_view(&members);
        }
    }

    fn retire_lec(&mut self) {
        if let Some((_, lec)) = self.lec.core.take() {
            self.lec.retired.add(&lec.stats());
        }
        self.lec.has_peers = false;
        self.lec.parked.clear();
        self.lec.deferred.clear();
    }

    /// The LEC counters (all regions so far).
    pub(super) fn lec_counters(&self) -> LecCounters {
        let mut c = self.lec.retired;
        if let Some((_, lec)) = &self.lec.core {
            c.add(&lec.stats());
        }
        c
    }

    /// The own region's LEC core, if LEC runs there.
    pub fn lec(&self) -> Option<&Lec> {
        self.lec.core.as_ref().map(|(_, l)| l)
    }

    /// How long a new hole waits for LEC before the ring requests it (zero: LEC is off or has
    /// nobody to hear from).
    pub(super) fn lec_hold_off(&self) -> std::time::Duration {
        match &self.lec.core {
            Some((_, lec)) if self.lec.has_peers => lec.hold_off(),
            _ => std::time::Duration::ZERO,
        }
    }

    /// A data packet of the own region (`datagram`: header and body as opened or built).
    pub(super) fn lec_on_packet(&mut self, now: Instant, id: PacketId, datagram: &[u8]) {
        if !self.lec.has_peers {
            return;
        }
        let Some((_, lec)) = self.lec.core.as_mut() else {
            return;
        };
        if datagram.len() > lec.config().max_canonical_len() {
            // Counted by the core as unrepairable only when handed in; skip the copy.
            self.lec.retired.unrepairable += 1;
            return;
        }
        lec.on_packet_from(now, id, datagram, canonicalize);
    }

    /// The driver's view of the receive sockets: `drops` more datagrams dropped by the kernel
    /// since the last call (the node's own overflow: not the network's loss, so LEC does not
    /// answer it with repair traffic) and how far behind the receive queues are (`behind`: a
    /// node that is behind fires fewer repairs and asks for fewer). Without LEC in the own
    /// region it only counts the drops.
    pub fn note_receive_load(&mut self, drops: u64, behind: std::time::Duration) {
        match self.lec.core.as_mut() {
            Some((_, lec)) => {
                lec.on_socket_drops(drops);
                lec.set_backlog(behind);
            }
            None => self.lec.retired.socket_drops += drops,
        }
    }

    /// The receive window found `id` missing.
    pub(super) fn lec_on_missing(&mut self, now: Instant, id: PacketId) {
        if !self.lec.has_peers {
            return;
        }
        if let Some((_, lec)) = self.lec.core.as_mut() {
            lec.on_missing(now, id);
        }
    }

    /// A lateral repair datagram (its body, opened). It is decoded at the end of the
    /// driver's iteration (the timer is due at once): the runtime reads the unicast socket
    /// (repairs) before the multicast one (data), and a repair decoded before the data of the
    /// same batch would rebuild packets that are only waiting in the socket.
    pub(super) fn handle_lec_repair(&mut self, now: Instant, from: NodeId, body: &Bytes) {
        if LecRepair::parse(body).is_err() {
            self.stats.drops.malformed += 1;
            return;
        }
        if self.lec.core.is_none() {
            self.lec.retired.foreign += 1;
            return;
        }
        if self.lec.deferred.len() >= DEFERRED_MAX {
            self.decode_deferred(now);
        }
        self.lec.deferred.push_back((now, from, body.clone()));
    }

    /// Decodes the deferred repairs received at or before `now`.
    fn decode_deferred(&mut self, now: Instant) {
        while self.lec.deferred.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, from, body) = self.lec.deferred.pop_front().expect("checked");
            let Some((_, lec)) = self.lec.core.as_mut() else {
                self.lec.retired.foreign += 1;
                continue;
            };
            if let Ok(repair) = LecRepair::parse(&body) {
                lec.handle_repair(now, from, &repair);
            }
            self.pump_lec(now);
        }
    }

    /// Feeds the packets LEC rebuilt into the receive path, as if received (not by
    /// multicast). Rebuilt packets are not handed back to LEC (it stored them already).
    ///
    /// A rebuilt packet its stream does not know as a hole yet (after the highest) may merely
    /// be behind the repair that rebuilt it: the runtime reads unicast (repairs) before
    /// multicast (data), so a receiver that was descheduled for a moment finds repairs
    /// covering packets still in its multicast socket. Such a packet waits a repair's trip
    /// ([`LecConfig::hold_off_slack`], at least one driver iteration) before it enters the
    /// receive path; if the original came meanwhile, it is dropped. Otherwise it would open
    /// holes the originals then fill, counted as losses that never were.
    pub(super) fn pump_lec(&mut self, now: Instant) {
        while let Some((id, bytes)) = self
            .lec
            .core
            .as_mut()
            .and_then(|(_, lec)| lec.poll_rebuilt())
        {
            if self.is_known_hole(id) {
                // A duplicate here is a packet that came in the same iteration as the repair.
                self.enter_rebuilt(now, id, bytes);
                continue;
            }
            self.lec.retired.rebuilt_parked += 1;
            if self.lec.parked.len() >= PARKED_MAX {
                self.lec.retired.parked_full += 1;
                continue;
            }
            let wait = self
                .lec
                .core
                .as_ref()
                .map_or(std::time::Duration::ZERO, |(_, l)| {
                    l.config().hold_off_slack
                });
            let due = now + wait.max(std::time::Duration::from_micros(1));
            self.lec.parked.push_back((due, id, bytes));
        }
    }

    /// Whether `id` lies at or before its stream's highest known packet (a hole, if it is
    /// missing at all).
    fn is_known_hole(&self, id: PacketId) -> bool {
        let Some(region) = self.own_region else {
            return false;
        };
        self.recv
            .get(&(id.sender, region))
            .filter(|s| s.epoch == id.epoch)
            .and_then(|s| s.window.highest())
            .is_some_and(|h| !h.is_before(id.seq))
    }

    /// Releases the parked rebuilt packets that are due: those whose original arrived
    /// meanwhile are dropped.
    fn release_parked(&mut self, now: Instant) {
        while self.lec.parked.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, id, bytes) = self.lec.parked.pop_front().expect("checked");
            // The window drops it as a duplicate if the original came meanwhile.
            if self.enter_rebuilt(now, id, bytes) {
                self.lec.retired.rebuilt_overtaken += 1;
            }
        }
    }

    /// A rebuilt packet enters the receive path; returns whether the window dropped it as a
    /// duplicate (one whose position the window gave up is counted as
    /// [`LecCounters::rebuilt_stale`]).
    fn enter_rebuilt(&mut self, now: Instant, id: PacketId, bytes: Bytes) -> bool {
        let header = match Header::peek(&bytes) {
            Ok(h)
                if h.sender == id.sender
                    && h.cluster == self.config.cluster
                    && matches!(h.kind, PacketKind::Data | PacketKind::Fragment) =>
            {
                h
            }
            _ => {
                self.lec.retired.rebuilt_refused += 1;
                return false;
            }
        };
        // Given up by the window (not delivered): too late rather than a duplicate.
        let too_late = self
            .own_region
            .and_then(|r| self.recv.get(&(id.sender, r)))
            .is_some_and(|s| s.epoch == id.epoch && s.window.was_given_up(id.seq));
        let stale = self.stats.drops.stale;
        let body = bytes.slice(HEADER_LEN..);
        self.receive_data(now, &header, &bytes, body, Via::Rebuilt);
        let refused = self.stats.drops.stale > stale;
        if refused && too_late {
            self.lec.retired.rebuilt_stale += 1;
        }
        refused && !too_late
    }

    /// LEC's timers.
    pub(super) fn lec_timeout(&mut self, now: Instant) {
        self.decode_deferred(now);
        if let Some((_, lec)) = self.lec.core.as_mut() {
            if lec.poll_timeout().is_some_and(|t| t <= now) {
                lec.handle_timeout(now);
            }
        }
        self.pump_lec(now);
        self.release_parked(now);
    }

    /// When LEC's timers are due (its core's, and the parked rebuilt packets').
    pub(super) fn lec_poll_timeout(&self) -> Option<Instant> {
        let parked = self.lec.parked.front().map(|(t, _, _)| *t);
        let deferred = self.lec.deferred.front().map(|(t, _, _)| *t);
        let core = self
            .lec
            .core
            .as_ref()
            .and_then(|(_, lec)| lec.poll_timeout());
        parked.into_iter().chain(deferred).chain(core).min()
    }

    /// Builds the next lateral repair (unsealed) into `buf`: Repair class, to the target's
    /// unicast address. Its bytes count as control and repair overhead and take a pacing
    /// token of this node's stream into the region, if it has one (receivers absorb repairs
    /// like data).
    pub(super) fn poll_lec(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (region, intent) = {
                let (region, lec) = self.lec.core.as_mut()?;
                (*region, lec.poll_repair()?)
            };
            let Some(destination) = self.address_of(intent.to) else {
                self.stats.drops.no_address += 1;
                continue;
            };
            if self.header(PacketKind::LecRepair).write(buf).is_err() {
                return None;
            }
            let (_, lec) = self.lec.core.as_mut()?;
            let Ok(n) = lec.encode(&intent, &mut buf[HEADER_LEN..]) else {
                continue;
            };
            let len = HEADER_LEN + n;
            self.stats.control_bytes_sent += len as u64;
            if let Some(s) = self.send.get_mut(&region) {
                s.pacer.on_sent();
            }
            return Some(Transmit {
                destination,
                class: TrafficClass::Repair,
                len,
            });
        }
    }

    /// Checks the LEC core's bookkeeping (the simulator calls it after every event).
    pub(super) fn check_lec_invariants(&self) {
        if let Some((region, lec)) = &self.lec.core {
            assert_eq!(Some(*region), self.own_region, "LEC core of another region");
            lec.check_invariants();
        }
        assert!(
            self.lec.parked.len() <= PARKED_MAX,
            "parking over its bound"
        );
        assert!(
            self.lec.deferred.len() <= DEFERRED_MAX,
            "deferred repairs over their bound"
        );
    }
}
