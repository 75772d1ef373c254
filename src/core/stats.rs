//! The node core's counters ([`CoreStats`], [`DropStats`]): plain numbers, gauges marked as
//! such; the parts owned by sub-cores (ring, discovery) are copied in when read.

use qs_discovery::DiscoveryStats;
use qs_recovery::RingStats;

use super::lec::{LecCounters, RepairSplit};

/// Datagrams dropped on receipt, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropStats {
    /// Failed the header, length or checksum checks, or a malformed body.
    pub malformed: u64,
    /// Another cluster's datagram.
    pub foreign_cluster: u64,
    /// Keyed cluster: a datagram without a valid MAC under a key this node holds (a forgery,
    /// an outsider, a node with another key, or a keyed datagram at a keyless node).
    pub auth: u64,
    /// Keyed cluster: an authentic control datagram seen before (a replay) or older than the
    /// replay window.
    pub replay: u64,
    /// Data for a region this node is not in (group address collision or a stale region).
    pub foreign_region: u64,
    /// A duplicate or late packet (at or before one already accepted).
    pub stale: u64,
    /// Messages on topics this node does not subscribe (during a subscription change).
    pub unsubscribed: u64,
    /// Messages lost because a fragment of theirs was lost or inconsistent.
    pub incomplete_message: u64,
    /// Messages larger than `max_message_bytes`.
    pub oversized: u64,
    /// Packets refused because the stream table was full.
    pub stream_table_full: u64,
    /// Data packets dropped by the loss injector.
    pub injected_loss: u64,
    /// Queued messages thrown away because their region vanished before they were sent.
    pub region_gone: u64,
    /// Reliable mode: packets beyond the receive window (repaired later).
    pub beyond_window: u64,
    /// Packets not cached because the caretaker cache was full.
    pub cache_full: u64,
    /// Control or repair datagrams dropped because the out queue was full.
    pub out_queue_full: u64,
    /// Control or repair datagrams for a peer whose address is unknown.
    pub no_address: u64,
    /// Requests refused because their sender is not a member of the region they name (or
    /// its address is unknown): repairs only go to members' known addresses.
    pub not_member: u64,
    /// Stream states claiming a position further ahead than the sender's window and this
    /// node's reorder window together allow (refused: they would skip or invent losses).
    pub out_of_bounds: u64,
    /// Out-of-order packets refused because all receive windows together already hold
    /// `max_held_packets` (reliable mode repairs them later, like packets beyond a window).
    pub held_budget: u64,
    /// Repair packets not served because their requester had used up its repair budget
    /// (`CoreConfig::repair_limit`: requests in its name came faster than any real loss).
    pub repair_limited: u64,
}

/// Counters of a [`NodeCore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CoreStats {
    /// Messages accepted by `publish`.
    pub published: u64,
    /// Messages published on a topic no other node subscribed (nothing to send).
    pub published_unheard: u64,
    /// Data datagrams sent (packed or fragments).
    pub data_packets_sent: u64,
    /// Message copies sent (one per region reached).
    pub messages_sent: u64,
    /// Payload bytes sent.
    pub payload_bytes_sent: u64,
    /// Control datagrams sent.
    pub control_packets_sent: u64,
    /// Datagrams received (all kinds).
    pub datagrams_received: u64,
    /// Own multicast datagrams looped back and ignored.
    pub own_looped: u64,
    /// Data packets accepted in order or after a gap.
    pub data_packets_received: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Payload bytes delivered.
    pub delivered_bytes: u64,
    /// Packets lost in gaps.
    pub gaps: u64,
    /// Packets that arrived after a hole and were held back until it filled or was given up.
    pub held_back: u64,
    /// Packets a stream had sent before this node first heard it (not counted as gaps).
    pub missed_on_join: u64,
    /// Packets served to peers that asked for them.
    pub repairs_served: u64,
    /// Packets this node re-multicast as a sender because a whole caretaker partition lacked
    /// them.
    pub retransmitted: u64,
    /// Repairs and resends not sent because the packet became stable (freed) before the
    /// driver took them.
    pub repairs_obsolete: u64,
    /// Repair requests received.
    pub requests_received: u64,
    /// Packets this node's regions acknowledged as stable (freed from the send window).
    pub acked_packets: u64,
    /// Packets held for retransmission now (gauge).
    pub unacked_packets: u64,
    /// Stable packets still held because a member the ring skipped may lack them (gauge;
    /// a send window's worth of them per stream closes the window until the floor advances
    /// or the retention hold passes).
    pub retained_packets: u64,
    /// Retained packets dropped, oldest first, because the retention stayed full past its
    /// hold (a member the ring kept skipping while the view kept it: a one-way failure).
    pub retained_dropped: u64,
    /// Packets in the caretaker cache now (gauge).
    pub cached_packets: u64,
    /// Bytes in the caretaker cache now (gauge).
    pub cached_bytes: u64,
    /// Highest `cached_bytes` seen.
    pub cached_bytes_peak: u64,
    /// Highest bytes held for retransmission seen.
    pub unacked_bytes_peak: u64,
    /// Control and repair bytes sent (datagrams, headers included).
    pub control_bytes_sent: u64,
    /// Data bytes sent (datagrams, headers included; first transmissions).
    pub data_bytes_sent: u64,
    /// Slow-receiver reports.
    pub slow_receivers: u64,
    /// Acknowledgements refused: not from the region's leader in this node's view.
    pub acks_refused: u64,
    /// Naks not honoured because the packet was re-multicast moments ago.
    pub resends_held_off: u64,
    /// Acknowledgements that set or lowered a stream's pacing rate.
    pub pacing_engaged: u64,
    /// Lowest pacing rate in force now, packets per second (0: no stream is paced).
    pub pacing_rate: u64,
    /// Gossip datagrams sent.
    pub gossip_datagrams_sent: u64,
    /// Gossip bytes sent.
    pub gossip_bytes_sent: u64,
    /// Data datagrams sent by unicast to members that do not hear a region's multicast.
    pub unicast_copies_sent: u64,
    /// Receive streams freed because their sender was no live member for `phantom_after`.
    pub phantom_streams_expired: u64,
    /// Keyed nodes: times this node started sealing with a next key by itself (every
    /// member held it).
    pub key_switches: u64,
    /// Keyed nodes: previous keys retired after a switch.
    pub keys_retired: u64,
    /// Requesters the repair limit forgot because its table was full.
    pub repair_limit_evicted: u64,
    /// The recovery ring's counters.
    pub ring: RingStats,
    /// Lateral error correction counters.
    pub lec: LecCounters,
    /// How the packets this node lost were repaired: laterally, by a peer, by the sender.
    pub repaired: RepairSplit,
    /// Subscription handover counters.
    pub handover: super::HandoverStats,
    /// Drops by reason.
    pub drops: DropStats,
    /// Discovery counters.
    pub discovery: DiscoveryStats,
}
