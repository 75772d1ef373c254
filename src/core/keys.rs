//! The automatic key switch of a keyed node: it tells the cluster which key epochs it holds
//! (the newest, in its gossip subscription record), starts sealing with a next key once every
//! live member it knows holds that key, and retires the previous key `key_retire_after`
//! later. The operator only hands each node the next key ([`NodeCore::add_key`], or
//! [`NodeCore::set_keys`] with a ring whose second key is newer than its sealing one).
//!
//! Why this order is safe: every node accepts both epochs from the moment it holds the next
//! key, and no node seals with the next key before gossip says every live member holds it,
//! so no datagram is sealed with a key a member lacks. The previous key stays accepted for
//! `key_retire_after` after the switch, for members whose gossip view lags; for the same
//! reason a node switches no sooner than `key_retire_after` after it started (before, its
//! view of the members may be partial), and never while it knows no other member.
//!
//! Not done here: sealing and opening (`wire::Seal`), the record's replication (gossip's
//! `Subscriptions`). A member that never gets the next key holds every switch back; a node
//! that joins with only the old key after the others retired it sees nothing of the cluster
//! (it is an outsider then, as any node without the current key).

use qs_transport::wire::{ClusterKey, KeyRing};
use qs_transport::Instant;

use super::{KeysRefused, NodeCore};

/// Where the node's key rotation stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KeySwitch {
    /// When the node started: it switches only `key_retire_after` later, once its view of
    /// the members can be complete (a node started with two keys knows nobody at first).
    started: Instant,
    /// When the current sealing key replaced the previous one still held (the retirement
    /// clock; `None` until the next timeout after a change sets it).
    switched_at: Option<Instant>,
    /// The next check of the switch condition (every gossip round while a next key waits).
    check_at: Option<Instant>,
}

impl KeySwitch {
    /// The state of a node started at `now`.
    pub(super) fn new(now: Instant) -> KeySwitch {
        KeySwitch {
            started: now,
            ..KeySwitch::default()
        }
    }
}

/// What a ring is waiting for.
enum Pending {
    Nothing,
    /// The second key is newer than the sealing one: switch when every member holds it.
    Switch(u32),
    /// The second key is the previous one: retire it in time.
    Retire,
}

fn pending(ring: &KeyRing) -> Pending {
    match &ring.also {
        None => Pending::Nothing,
        Some(k) if k.epoch > ring.seal_with.epoch => Pending::Switch(k.epoch),
        Some(_) => Pending::Retire,
    }
}

impl NodeCore {
    /// Hands a keyed node the next key (its epoch newer than every key it holds): it accepts
    /// datagrams sealed with it at once, gossips that it holds it, and seals with it once
    /// every live member holds it too; the previous key is retired `key_retire_after` later.
    /// Refused, changing nothing, for a keyless node, a key not newer than those held, or
    /// while a rotation is under way (the node holds two keys).
    pub fn add_key(&mut self, key: ClusterKey) -> Result<(), KeysRefused> {
        let Some(ring) = self.seal.keys() else {
            return Err(KeysRefused::Keyless);
        };
        if key.epoch <= ring.newest_epoch() {
            return Err(KeysRefused::NotNewer);
        }
        if ring.also.is_some() {
            return Err(KeysRefused::RotationUnderway);
        }
        let ring = KeyRing {
            also: Some(key),
            ..ring.clone()
        };
        self.install_keys(ring);
        Ok(())
    }

    /// Replaces the ring and tells gossip the newest epoch held.
    pub(super) fn install_keys(&mut self, ring: KeyRing) {
        self.gossip.set_key_epoch(ring.newest_epoch());
        self.config.key = Some(ring.clone());
        self.seal.set_keys(ring);
        // The clocks start at the next timeout (this path has no `now`).
        self.key_switch = KeySwitch {
            started: self.key_switch.started,
            ..KeySwitch::default()
        };
    }

    /// Whether this node knows at least one other live member and every live member it
    /// knows holds key `epoch`, as their gossip records say.
    fn all_hold(&self, epoch: u32) -> bool {
        let subs = self.gossip.subscriptions();
        let mut others = self
            .gossip
            .membership()
            .members()
            .filter(|(id, m)| *id != self.config.id && m.status.is_live())
            .peekable();
        others.peek().is_some()
            && others.all(|(id, _)| {
                subs.record(id)
                    .is_some_and(|r| r.key_epoch.wrapping_sub(epoch) < 1 << 31)
            })
    }

    /// Runs the switch and the retirement when due.
    pub(super) fn keys_timeout(&mut self, now: Instant) {
        let Some(ring) = self.seal.keys().cloned() else {
            return;
        };
        match pending(&ring) {
            Pending::Nothing => {}
            Pending::Switch(epoch) => {
                if self.key_switch.check_at.is_some_and(|t| t > now) {
                    return;
                }
                let settled = now >= self.key_switch.started + self.config.key_retire_after;
                if settled && self.all_hold(epoch) {
                    let promoted = ring.promote();
                    self.install_keys(promoted);
                    self.key_switch.switched_at = Some(now);
                    self.stats.key_switches += 1;
                } else {
                    self.key_switch.check_at = Some(now + self.config.gossip_round);
                }
            }
            Pending::Retire => {
                let at = *self.key_switch.switched_at.get_or_insert(now);
                if now >= at + self.config.key_retire_after {
                    let retired = ring.retire();
                    self.install_keys(retired);
                    self.stats.keys_retired += 1;
                }
            }
        }
    }

    /// The next instant [`NodeCore::keys_timeout`] has work.
    pub(super) fn keys_poll_timeout(&self) -> Option<Instant> {
        let ring = self.seal.keys()?;
        match pending(ring) {
            Pending::Nothing => None,
            // Unset clocks are set at the earliest timeout.
            Pending::Switch(_) => Some(self.key_switch.check_at.unwrap_or(Instant::ZERO)),
            Pending::Retire => Some(
                self.key_switch
                    .switched_at
                    .map_or(Instant::ZERO, |t| t + self.config.key_retire_after),
            ),
        }
    }
}
