//! The node core's settings ([`CoreConfig`]): identity, addresses, bounds of every queue,
//! window and cache, the recovery ring's and the discovery bootstrap's settings. Plain data:
//! the builder in `node.rs` fills it, the core only reads it.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use qs_discovery::DiscoveryConfig;
use qs_recovery::RingConfig;
use qs_regions::GroupRange;
use qs_transport::{ClusterId, NodeId};

/// Settings of a [`NodeCore`].
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's id.
    pub id: NodeId,
    /// Increases across restarts of a node that keeps its id.
    pub incarnation: u64,
    /// The cluster; datagrams of other clusters are dropped.
    pub cluster: ClusterId,
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
    /// Largest message accepted (sent or reassembled).
    pub max_message_bytes: usize,
    /// Most (sender, region) streams tracked at once.
    pub max_streams: usize,
    /// Most packets of one stream held back waiting for an earlier one (reordering).
    pub reorder_window_packets: usize,
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
            unicast,
            control_group: SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, 0, 1), 7400),
            data_port: 7401,
            group_range: GroupRange::default(),
            max_datagram: 1472,
            send_queue_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
            max_streams: 4096,
            reorder_window_packets: 16384,
            reorder_timeout: Duration::from_millis(10),
            stream_state_delay: Duration::from_millis(20),
            stream_state_repeats: 3,
            inject_loss: 0.0,
            reliable: true,
            send_window_packets: 8192,
            rate_control: true,
            max_pending_events: 65536,
            cache_max_bytes: 64 << 20,
            max_out_queue: 16384,
            ring: RingConfig::default(),
            gossip_round: Duration::from_millis(200),
            gossip_seeds: Vec::new(),
            failure_timeout: None,
            departed_grace: Duration::from_secs(30),
            discovery: DiscoveryConfig::default(),
            seed: id.0,
        }
    }
}
