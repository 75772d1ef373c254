//! The node core's settings ([`CoreConfig`]): identity, addresses, bounds of every queue,
//! window and cache, the recovery ring's and the discovery bootstrap's settings. Plain data:
//! the builder in `node.rs` fills it, the core only reads it.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use qs_discovery::DiscoveryConfig;
use std::collections::BTreeMap;

use qs_recovery::{LecConfig, RingConfig};
use qs_regions::GroupRange;
use qs_transport::wire::KeyRing;
use qs_transport::{ClusterId, NodeId, RegionId};

use super::repair_limit::RepairLimit;

/// The least a time-bounded send queue may hold (bytes): enough for a burst of datagrams
/// however slowly the queue drained lately.
pub const SEND_QUEUE_FLOOR: usize = 64 << 10;

/// The least a time-bounded send window may hold (bytes): a ring round or two of
/// acknowledgement delay at a fast stream's rate (256 KiB is 6.5 ms at 40 MB/s), so that the
/// delay in acknowledging does not throttle the stream however low the measured rate fell.
pub const SEND_WINDOW_FLOOR: usize = 256 << 10;

/// Settings of a [`NodeCore`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's id.
    pub id: NodeId,
    /// Increases across restarts of a node that keeps its id.
    pub incarnation: u64,
    /// The cluster; datagrams of other clusters are dropped. With a [`CoreConfig::key`] the
    /// key's cluster id replaces this one.
    pub cluster: ClusterId,
    /// The cluster keys: every datagram is authenticated with them (a keyed MAC and, for
    /// control traffic, a replay window); `None` seals with a checksum only.
    pub key: Option<KeyRing>,
    /// Where this node receives unicast (announced to peers).
    pub unicast: SocketAddrV4,
    /// The well-known control group and port (discovery).
    pub control_group: SocketAddrV4,
    /// The port every region group uses.
    pub data_port: u16,
    /// Where region groups are allocated.
    pub group_range: GroupRange,
    /// Largest datagram sent (IP and UDP headers excluded): 1472 fits a 1500-byte MTU.
    pub max_datagram: usize,
    /// Most bytes queued for sending over all regions; beyond it `publish` refuses.
    pub send_queue_bytes: usize,
    /// The send queue is also bounded by time: once it holds more than this long's worth at
    /// the rate it has been draining (and at least [`SEND_QUEUE_FLOOR`] bytes), `publish`
    /// refuses, so a saturating publisher waits instead of queueing hundreds of milliseconds
    /// ahead of the wire. Zero: bounded by `send_queue_bytes` alone.
    pub send_queue_time: Duration,
    /// Largest message accepted (sent or reassembled).
    pub max_message_bytes: usize,
    /// Most (sender, region) streams tracked at once.
    pub max_streams: usize,
    /// Most packets of one stream held back waiting for an earlier one (reordering).
    pub reorder_window_packets: usize,
    /// The sequence number every send stream starts at, and every receive stream is expected
    /// to start at (default [`qs_transport::Seq::FIRST`], 1). Every node of a cluster must
    /// use the same value; it exists so that a stream can be started just before the 32-bit
    /// sequence space wraps (tests of the wrap, end to end).
    pub first_seq: qs_transport::Seq,
    /// Most out-of-order packets all receive windows together hold (one memory budget
    /// whatever the number of streams: 4,096 streams of phantom senders cannot each fill a
    /// window).
    pub max_held_packets: usize,
    /// How long a hole in a stream is waited for before it is reported as a gap.
    pub reorder_timeout: Duration,
    /// Idle time after a stream's last packet before its state is sent.
    pub stream_state_delay: Duration,
    /// Times a stream state is repeated (at growing intervals) while the stream stays idle.
    pub stream_state_repeats: u32,
    /// Reliable delivery (the QSM ring repairs every hole); `false` reports gaps instead.
    pub reliable: bool,
    /// Reliable mode: most packets a sender keeps unacknowledged per region; a full window
    /// pauses sending to that region. Must not exceed `reorder_window_packets`.
    pub send_window_packets: usize,
    /// Reliable mode: the send window is also bounded by time: a stream stops taking new data
    /// into flight while it holds more than this long's worth unacknowledged at the rate the
    /// region has been acknowledging it (and at least [`SEND_WINDOW_FLOOR`] bytes), so that a
    /// member descheduled for a while finds a few milliseconds of data waiting in its socket
    /// buffer, not a whole window. Zero (the default): bounded by `send_window_packets` alone.
    /// With the bound on, a slow member lags the stream by about this time's worth, not by
    /// a full window: `ring.slow_lag` above that (default 4,096 packets) never marks it slow,
    /// so rate control and the isolation policy see it only with a lower `slow_lag`.
    pub send_window_time: Duration,
    /// Reliable mode: pace senders to the slowest member's receive rate while a region falls
    /// behind (rate control through the ring); `false` leaves only the window.
    pub rate_control: bool,
    /// Reliable mode: most events (deliveries) waiting for the application; beyond it the
    /// receive windows stop releasing packets, so a slow application slows the senders
    /// instead of losing messages.
    pub max_pending_events: usize,
    /// Reliable mode: most bytes of caretaker cache (beyond it packets are not cached and the
    /// sender re-multicasts them if needed).
    pub cache_max_bytes: usize,
    /// Most control and repair datagrams queued for sending (beyond it they are dropped,
    /// counted, and recovered by the next round).
    pub max_out_queue: usize,
    /// The recovery ring's settings.
    pub ring: RingConfig,
    /// Reliable mode: the bytes of repairs served to one requester per interval, scaled to
    /// the data this node takes in (see [`RepairLimit`]).
    pub repair_limit: RepairLimit,
    /// The gossip round (SWIM protocol period).
    pub gossip_round: Duration,
    /// Unicast addresses of peers to join the gossip plane through (besides the peers the
    /// multicast announcements find).
    pub gossip_seeds: Vec<SocketAddr>,
    /// How long the streams of a sender that gossip declared down are kept open (its members'
    /// holes still waiting for it) before they are closed and what they lack reported as
    /// gaps. A paused or falsely suspected sender that comes back within it loses nothing.
    pub departed_grace: Duration,
    /// About how long a silent member stays before the gossip plane's failure detector
    /// declares it down (it scales SWIM's suspicion timeout); `None`: gossip's default.
    pub failure_timeout: Option<Duration>,
    /// Probability of dropping an incoming data packet on purpose (loss injection for demos and
    /// tests; 0 in production).
    pub inject_loss: f64,
    /// Lateral error correction (Ricochet LEC, issue 12) of the regions this node is in:
    /// receivers send each other XOR repairs of the packets they got, so most losses are
    /// rebuilt within a bin's fill time, before the ring would ask for them. `None` (the
    /// default): off, every hole waits for the ring; [`default_lec`] turns it on. Senders
    /// build data datagrams no longer than [`LecConfig::max_canonical_len`] while it is on.
    pub lec: Option<LecConfig>,
    /// Per-region exceptions to `lec` (`None`: off in that region).
    pub lec_regions: BTreeMap<RegionId, Option<LecConfig>>,
    /// How long the receive streams of a sender that gossip does not know as a live member
    /// are kept (a phantom: forged or buggy sender id, or a forgotten member still sending)
    /// before they are freed (`phantom_streams_expired`). Far longer than a join takes.
    pub phantom_after: Duration,
    /// Subscription handover: the shortest time a node that changed its subscriptions keeps
    /// departing its old region (senders that have not learned the move yet still send
    /// there). Every node of a cluster should use the same value.
    pub handover_min: Duration,
    /// Subscription handover: the longest time a departure (and a gate waiting for its
    /// sender's cut) lasts; past it what the old region's streams lack is reported as gaps.
    pub handover_timeout: Duration,
    /// Keyed nodes: how long after switching to a new key the previous one is still
    /// accepted (members whose gossip view lags switch later), before it is retired.
    pub key_retire_after: Duration,
    /// Discovery settings.
    pub discovery: DiscoveryConfig,
    /// Seed of this core's Prng.
    pub seed: u64,
}

impl CoreConfig {
    /// Defaults for node `id` reachable at `unicast`.
    pub fn new(id: NodeId, unicast: SocketAddrV4) -> CoreConfig {
        CoreConfig {
            id,
            incarnation: 0,
            cluster: ClusterId::from_name("quicksilver"),
            key: None,
            unicast,
            control_group: SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, 0, 1), 7400),
            data_port: 7401,
            group_range: GroupRange::default(),
            max_datagram: 1472,
            send_queue_bytes: 16 << 20,
            send_queue_time: Duration::from_millis(5),
            max_message_bytes: 16 << 20,
            max_streams: 4096,
            reorder_window_packets: 16384,
            first_seq: qs_transport::Seq::FIRST,
            max_held_packets: 65536,
            reorder_timeout: Duration::from_millis(10),
            stream_state_delay: Duration::from_millis(20),
            stream_state_repeats: 3,
            inject_loss: 0.0,
            reliable: true,
            send_window_packets: 8192,
            send_window_time: Duration::ZERO,
            rate_control: true,
            max_pending_events: 65536,
            cache_max_bytes: 64 << 20,
            max_out_queue: 16384,
            ring: RingConfig::default(),
            repair_limit: RepairLimit::default(),
            gossip_round: Duration::from_millis(200),
            gossip_seeds: Vec::new(),
            failure_timeout: None,
            departed_grace: Duration::from_secs(30),
            lec: None,
            lec_regions: BTreeMap::new(),
            key_retire_after: Duration::from_secs(30),
            handover_min: super::handover::HANDOVER_MIN,
            handover_timeout: super::handover::HANDOVER_TIMEOUT,
            phantom_after: Duration::from_secs(10),
            discovery: DiscoveryConfig::default(),
            seed: id.0,
        }
    }
}

/// The node's default LEC: the core's defaults with four targets per repair (the core's three
/// rebuild about 94% of losses at 1% loss, four about 98%: `qs-testbed sim-lec --loss 0.01
/// --burst 1 --scheme r8c3s2m3 --scheme r8c4s2m3`). Adaptive, so a clean region sends no
/// repairs.
pub fn default_lec() -> LecConfig {
    LecConfig {
        targets: 4,
        ..LecConfig::default()
    }
}
