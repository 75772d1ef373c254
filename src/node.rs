//! The public node handle: a [`NodeCore`] running on its own thread under the `qs-runtime`
//! event loop, talked to through bounded channels and a mio `Waker`.
//!
//! Two channels reach the node thread: one for publishes (drained only while the core's send
//! queue has room, so a full queue fills the channel and blocks the publisher: back-pressure,
//! not loss), and one for everything else (always drained). The publisher wakes the node thread
//! only when it is asleep, so a stream of publishes costs no system call per message. The
//! node thread takes the publish channel's whole content under one lock (`drain`) into its
//! own reused queue, so a saturating publisher costs one channel lock per batch on this side,
//! not one per message.
//!
//! The publish channel and the subscription queues are `flume` channels: one queue serves a
//! blocking caller (`recv`, `publish`) and an async one (`recv_async`, `publish_async`, the
//! [`Stream`](futures_core::Stream) impls) alike, on any executor, so the async API is the same
//! queues, not a second path. This file does not run an executor and does not own the event
//! and metrics types ([`crate::events`], [`crate::metrics`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use crossbeam_utils::CachePadded;
use qs_discovery::DiscoveryConfig;
use qs_regions::GroupRange;
use qs_runtime::{Runtime, RuntimeConfig, RuntimeStats, SocketBuffers};
use qs_transport::wire::{ClusterKey, KeyRing};
use qs_transport::{ClusterId, Instant, NodeId, TopicId};

use crate::core::{CoreConfig, CoreStats, Delivery, Event, NodeCore, PublishRefused};
use crate::events::{Events, Listeners};
use crate::metrics::MetricsServer;
use crate::Error;

const MAX_TOPIC_LEN: usize = 1024;

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The node that published it.
    pub sender: NodeId,
    /// The topic's name.
    pub topic: Arc<str>,
    /// The payload (zero-copy: a slice of the received datagram when it fit one).
    pub payload: Bytes,
}

/// Why a publish failed. The message was not queued in any case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The send queue is full (only from [`Node::try_publish`]); retry later.
    #[error("send queue full")]
    WouldBlock,
    /// The message is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The topic name is empty or longer than 1,024 bytes.
    #[error("invalid topic name")]
    InvalidTopic,
    /// The node has shut down.
    #[error("node is shut down")]
    Closed,
}

/// Why a receive returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing arrived in time (or nothing is there, for `try_recv`).
    #[error("no message")]
    Empty,
    /// The node has shut down and the queue is drained.
    #[error("node is shut down")]
    Closed,
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Protocol counters (sent, received, delivered, gaps, drops by reason).
    pub core: CoreStats,
    /// Event-loop and socket counters.
    pub runtime: RuntimeStats,
    /// The socket buffer sizes the kernel granted.
    pub socket_buffers: SocketBuffers,
    /// Best-effort mode: messages lost because a subscription's queue was full (the
    /// application read too slowly). Always 0 in reliable mode, which waits instead.
    pub subscriber_overflow: u64,
    /// Known peers.
    pub peers: usize,
    /// Node events lost because an [`Events`] queue was full (the application read too
    /// slowly); the node never waits for an event listener.
    pub events_dropped: u64,
}

/// What this node knows of another.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: NodeId,
    /// Its unicast address.
    pub unicast: SocketAddrV4,
    /// The ids of the topics it subscribes.
    pub topics: Vec<TopicId>,
}

/// Configures and starts a [`Node`]. Every setting has a default that works on loopback.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    cluster: String,
    interface: Ipv4Addr,
    unicast_port: u16,
    control_group: SocketAddrV4,
    data_port: u16,
    group_range: (Ipv4Addr, u8),
    recv_buffer_bytes: usize,
    send_buffer_bytes: usize,
    max_datagram: usize,
    send_queue_bytes: usize,
    send_queue_time: Duration,
    send_window_time: Duration,
    max_message_bytes: usize,
    subscription_queue: usize,
    publish_queue: usize,
    publish_queue_bytes: usize,
    event_queue: usize,
    metrics: Option<SocketAddr>,
    announce_interval: Duration,
    peer_timeout: Option<Duration>,
    sender_grace: Duration,
    inject_loss: f64,
    reliable: bool,
    isolate_slow: bool,
    lec: Option<qs_recovery::LecConfig>,
    node_id: Option<NodeId>,
    gossip_seeds: Vec<SocketAddr>,
    seed: Option<u64>,
    key: Option<KeyRing>,
    busy_poll: Option<Duration>,
    gso: bool,
    gro: bool,
    key_retire_after: Duration,
}

impl Default for NodeBuilder {
    fn default() -> NodeBuilder {
        NodeBuilder {
            cluster: "quicksilver".into(),
            interface: Ipv4Addr::LOCALHOST,
            unicast_port: 0,
            control_group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), 7400),
            data_port: 7401,
            group_range: (Ipv4Addr::new(239, 255, 16, 0), 20),
            recv_buffer_bytes: 8 << 20,
            send_buffer_bytes: 4 << 20,
            max_datagram: 1472,
            send_queue_bytes: 16 << 20,
            send_queue_time: Duration::from_millis(5),
            send_window_time: Duration::ZERO,
            max_message_bytes: 16 << 20,
            subscription_queue: 65_536,
            publish_queue: 4096,
            publish_queue_bytes: 256 << 10,
            event_queue: 1024,
            metrics: None,
            announce_interval: Duration::from_millis(500),
            peer_timeout: None,
            sender_grace: Duration::from_secs(30),
            inject_loss: 0.0,
            reliable: true,
            isolate_slow: false,
            lec: Some(crate::core::default_lec()),
            node_id: None,
            gossip_seeds: Vec::new(),
            seed: None,
            key: None,
            busy_poll: None,
            gso: true,
            gro: false,
            key_retire_after: Duration::from_secs(30),
        }
    }
}

impl NodeBuilder {
    /// The cluster name: nodes only talk to nodes of the same cluster. Default `quicksilver`.
    pub fn cluster(mut self, name: &str) -> Self {
        self.cluster = name.to_owned();
        self
    }

    /// The interface address for multicast and unicast. Default 127.0.0.1 (loopback), so
    /// nothing leaves the machine unless an interface is named.
    pub fn interface(mut self, addr: Ipv4Addr) -> Self {
        self.interface = addr;
        self
    }

    /// The unicast port (0, the default, picks a free one).
    pub fn unicast_port(mut self, port: u16) -> Self {
        self.unicast_port = port;
        self
    }

    /// The well-known control group and port every node of the cluster announces on.
    /// Default 239.255.0.1:7400.
    pub fn control_group(mut self, group: SocketAddrV4) -> Self {
        self.control_group = group;
        self
    }

    /// The port of every region's data group. Default 7401.
    pub fn data_port(mut self, port: u16) -> Self {
        self.data_port = port;
        self
    }

    /// The block region groups are allocated from. Default 239.255.16.0/20.
    pub fn group_range(mut self, base: Ipv4Addr, prefix_len: u8) -> Self {
        self.group_range = (base, prefix_len);
        self
    }

    /// Requested socket receive buffer (the kernel may cap it; see [`Stats::socket_buffers`]).
    pub fn recv_buffer_bytes(mut self, bytes: usize) -> Self {
        self.recv_buffer_bytes = bytes;
        self
    }

    /// Requested socket send buffer.
    pub fn send_buffer_bytes(mut self, bytes: usize) -> Self {
        self.send_buffer_bytes = bytes;
        self
    }

    /// Largest datagram sent, headers of IP and UDP excluded. Default 1472 (a 1500-byte MTU).
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = bytes;
        self
    }

    /// Bytes that may wait in the send queue before publishing blocks. Default 16 MiB.
    pub fn send_queue_bytes(mut self, bytes: usize) -> Self {
        self.send_queue_bytes = bytes;
        self
    }

    /// The send queue is also bounded by time: publishing blocks once it holds more than this
    /// long's worth at the rate it has been draining (never less than 64 KiB), so that a
    /// publisher faster than the network waits rather than queueing far ahead of the wire
    /// (latency at saturation is then about this, not `send_queue_bytes` / rate).
    /// `Duration::ZERO`: bounded by [`NodeBuilder::send_queue_bytes`] alone. Default 5 ms.
    pub fn send_queue_time(mut self, time: Duration) -> Self {
        self.send_queue_time = time;
        self
    }

    /// Reliable mode: the send window (data sent and not yet acknowledged by the region) is
    /// bounded by time as well as by its 8,192 packets: a stream stops sending new data while
    /// it holds more than this long's worth unacknowledged at the rate the region has been
    /// acknowledging it (never less than 256 KiB), so that a subscriber descheduled for a
    /// moment finds milliseconds of data waiting in its socket buffer rather than a whole
    /// window (the tail of latency at saturation): with small queues
    /// (`publish_queue_bytes(32768)`, `send_queue_time(1ms)`, `subscription_queue(1024)`),
    /// 5 ms kept the unpaced 1 KB p99 near 10 ms in BENCHMARKS.md's runs, at a throughput
    /// cost. A slow subscriber then lags by this time's worth, not a whole window, so it
    /// reaches the isolation policy's lag ([`NodeBuilder::isolate_slow`]) later or never.
    /// `Duration::ZERO` (the default): bounded by packets alone.
    pub fn send_window_time(mut self, time: Duration) -> Self {
        self.send_window_time = time;
        self
    }

    /// Largest message published or accepted. Default 16 MiB.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Messages a subscription holds. When it is full a reliable node waits for the
    /// application (its receive windows stall and the senders slow down); a best-effort node
    /// drops further messages and counts them in [`Stats::subscriber_overflow`].
    pub fn subscription_queue(mut self, messages: usize) -> Self {
        self.subscription_queue = messages;
        self
    }

    /// Publishes that may wait between the application and the node thread, on top of the
    /// core's send queue ([`NodeBuilder::send_queue_bytes`]). When both are full,
    /// [`Node::publish`] blocks, [`Node::publish_async`] waits and [`Node::try_publish`]
    /// returns [`PublishError::WouldBlock`]. Default 4,096.
    pub fn publish_queue(mut self, messages: usize) -> Self {
        self.publish_queue = messages;
        self
    }

    /// Payload bytes that may wait between the application and the node thread (besides the
    /// [`NodeBuilder::publish_queue`] count): a blocking publish waits, and
    /// [`Node::try_publish`] returns [`PublishError::WouldBlock`], while more than this waits
    /// (a single larger message always gets through). With the time-bounded send queue
    /// ([`NodeBuilder::send_queue_time`]) it keeps a saturating publisher's messages a few
    /// milliseconds from the wire instead of 4,096 messages away. `publish_async` is bounded
    /// by the count only. Default 256 KiB.
    pub fn publish_queue_bytes(mut self, bytes: usize) -> Self {
        self.publish_queue_bytes = bytes;
        self
    }

    /// Events each [`Node::events`] queue holds before further events are dropped (and
    /// counted in [`Stats::events_dropped`]). Default 1,024.
    pub fn event_queue(mut self, events: usize) -> Self {
        self.event_queue = events;
        self
    }

    /// Serves Prometheus metrics over HTTP at `http://ADDR/metrics` (every counter of
    /// [`Node::stats`], per region where it exists; see [`crate::metrics`]). Port 0 picks a
    /// free port: [`Node::metrics_addr`] tells which. Default: no endpoint.
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// Mean time between discovery announcements. Default 500 ms.
    pub fn announce_interval(mut self, interval: Duration) -> Self {
        self.announce_interval = interval;
        self
    }

    /// About how long a silent peer stays before the gossip plane's failure detector declares
    /// it down (it scales the suspicion timeout). Default: the detector's own, 2–4 s on a
    /// small cluster.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = Some(timeout);
        self
    }

    /// How long the streams of a sender declared down stay open before they end. Within it
    /// the region's surviving members keep repairing each other (so they all deliver the same
    /// messages of it), and a sender that was only paused or falsely suspected and comes back
    /// loses nothing. Then the stream ends with [`NodeEvent::SenderLost`](crate::NodeEvent)
    /// (what no member had reported as a gap first). A sender that leaves (shuts down) ends
    /// its streams at once. Default 30 s.
    pub fn sender_grace(mut self, grace: Duration) -> Self {
        self.sender_grace = grace;
        self
    }

    /// Drops this fraction of incoming data packets on purpose (loss injection for demos and
    /// tests). Default 0.
    pub fn inject_loss(mut self, fraction: f64) -> Self {
        self.inject_loss = fraction;
        self
    }

    /// Reliable delivery (default): the region's recovery ring repairs every loss and the
    /// publisher is slowed rather than anything dropped. `false` gives best-effort delivery:
    /// losses are reported as gaps in the stats, never repaired.
    pub fn reliable(mut self, on: bool) -> Self {
        self.reliable = on;
        self
    }

    /// Opt-in slow-receiver policy: when this node falls far behind a sender for a while it
    /// isolates itself (stops holding the region back, loses what it cannot keep up with,
    /// reported as gaps) instead of slowing the senders down (the default).
    pub fn isolate_slow(mut self, on: bool) -> Self {
        self.isolate_slow = on;
        self
    }

    /// Lateral error correction (default on): receivers of a region send each other XOR
    /// repairs of the packets they got, so most losses are rebuilt within about a millisecond
    /// instead of waiting for the recovery ring. Adaptive: a region without loss sends no
    /// repairs and, after a clean second, stores nothing; a receiver's own socket overflow
    /// and a receive queue that is behind turn it down. `false` leaves every repair to the
    /// ring.
    pub fn lec(mut self, on: bool) -> Self {
        self.lec = on.then(|| self.lec.take().unwrap_or_else(crate::core::default_lec));
        self
    }

    /// The lateral error correction settings (packets per repair, targets, stagger, parity,
    /// adaptive rate; see [`qs_recovery::LecConfig`]); turns it on.
    pub fn lec_config(mut self, config: qs_recovery::LecConfig) -> Self {
        self.lec = Some(config);
        self
    }

    /// A peer's unicast address to join the gossip plane through (repeatable), for networks
    /// where the multicast announcements do not reach (by default peers found by the
    /// announcements are the seeds).
    pub fn gossip_seed(mut self, addr: SocketAddr) -> Self {
        self.gossip_seeds.push(addr);
        self
    }

    /// A fixed node id (default: random).
    pub fn node_id(mut self, id: NodeId) -> Self {
        self.node_id = Some(id);
        self
    }

    /// The cluster keys: every datagram is authenticated (a keyed MAC; control traffic also
    /// against replay), and the cluster id is the key file's, not [`NodeBuilder::cluster`]'s.
    /// Nodes without the key (or with another) see nothing of this node, nor it of them.
    /// Default: none (a checksum only). See [`qs_transport::wire::Seal`] and the README's
    /// threat model.
    pub fn key(mut self, keys: KeyRing) -> Self {
        self.key = Some(keys);
        self
    }

    /// How long after switching to a next key (see [`Node::add_key`]) the previous key is
    /// still accepted before it is retired. Default 30 s: it must exceed the time gossip
    /// takes to reach every member, or a member that switches late loses datagrams.
    pub fn key_retire_after(mut self, d: Duration) -> Self {
        self.key_retire_after = d;
        self
    }

    /// Reads the cluster keys from a key file (as written by `qs keygen`); see
    /// [`NodeBuilder::key`].
    pub fn key_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read key file {}: {e}", path.display())))?;
        let keys = KeyRing::parse(&text)
            .map_err(|e| Error::Config(format!("key file {}: {e}", path.display())))?;
        Ok(self.key(keys))
    }

    /// Busy-poll mode, for users who trade cores for latency (like Aeron's spinning idle
    /// strategies): the node thread, instead of sleeping in `epoll_wait` between events,
    /// polls its sockets without blocking for up to `spin` after each turn of work, and only
    /// then sleeps; [`Subscription::recv`] and [`Subscription::recv_timeout`] likewise spin on
    /// the queue for up to `spin` before they block. A message that arrives while they spin
    /// skips the wake-up of a sleeping thread, twice (node thread, then application thread).
    ///
    /// The cost: each spinning thread keeps a core busy while it spins, traffic or not.
    /// `Duration::MAX` never sleeps (a core per node thread and per waiting receiver, all the
    /// time); a budget a little longer than the gap between messages (e.g. 200 µs at 10,000
    /// messages/s) keeps a steady stream off the sleeping path and lets an idle node sleep.
    /// Spinning threads on a machine with fewer cores than spinners steal each other's time:
    /// latency then gets worse, not better. [`Stats::runtime`] counts the node thread's
    /// spinning (`spin_nanos`, `spin_hits`, `spin_blocks`). `Duration::ZERO` turns it off.
    /// Async receivers (`recv_async`, the `Stream`) never spin. Default: off.
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = (!spin.is_zero()).then_some(spin);
        self
    }

    /// UDP generic segmentation offload for sending (default on; Linux 4.18+): the node
    /// thread hands the kernel each run of equal-sized datagrams to one destination (the
    /// packed data stream, mostly) as one buffer, which the kernel splits into the same
    /// datagrams, saving most of its per-datagram work. Receivers see no difference. If the
    /// kernel or device refuses, the node sends plainly from then on
    /// (`Stats::runtime.gso_fallbacks`). The variable `QS_GSO=on|off` overrides this.
    pub fn gso(mut self, on: bool) -> Self {
        self.gso = on;
        self
    }

    /// UDP generic receive offload on the data socket (default off; Linux 5.0+): the kernel
    /// queues a run of equal-sized datagrams from one sender (a GSO send over veth or
    /// loopback, or what the NIC coalesced) as one buffer, received with one `recvmsg` and
    /// split into the datagrams without copying. It saves most of the receiver's
    /// per-datagram kernel work when runs arrive, and costs one `recvmsg` per datagram
    /// instead of one `recvmmsg` per batch when they do not. `Stats::runtime.gro_segments`
    /// counts what arrived coalesced. The variable `QS_GRO=on|off` overrides this.
    pub fn gro(mut self, on: bool) -> Self {
        self.gro = on;
        self
    }

    /// The seed of the node's protocol randomness (default: from the node id).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Opens the sockets and starts the node's thread.
    pub fn build(self) -> Result<Node, Error> {
        if self.max_datagram < 128 || self.max_datagram > 65_000 {
            return Err(Error::Config(format!(
                "max_datagram {} must be within 128..=65000",
                self.max_datagram
            )));
        }
        if !(0.0..1.0).contains(&self.inject_loss) {
            return Err(Error::Config("inject_loss must be in [0, 1)".into()));
        }
        if !self.control_group.ip().is_multicast() {
            return Err(Error::Config(format!(
                "control group {} is not a multicast address",
                self.control_group.ip()
            )));
        }
        let group_range = GroupRange::new(self.group_range.0, self.group_range.1)
            .map_err(|e| Error::Config(e.to_string()))?;
        if self.subscription_queue == 0 {
            return Err(Error::Config(
                "subscription_queue must be at least 1".into(),
            ));
        }
        if self.publish_queue == 0 || self.event_queue == 0 {
            return Err(Error::Config(
                "publish_queue and event_queue must be at least 1".into(),
            ));
        }
        let runtime = Runtime::new(RuntimeConfig {
            interface: self.interface,
            unicast_port: self.unicast_port,
            control_port: self.control_group.port(),
            data_port: self.data_port,
            recv_buffer_bytes: self.recv_buffer_bytes,
            send_buffer_bytes: self.send_buffer_bytes,
            recv_slot_bytes: self.max_datagram.max(2048),
            busy_poll: self.busy_poll,
            gso: self.gso,
            gro: self.gro,
            ..RuntimeConfig::default()
        })?;
        let id = self.node_id.unwrap_or_else(random_node_id);
        let mut config = CoreConfig::new(id, runtime.local_addr());
        config.incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        config.cluster = ClusterId::from_name(&self.cluster);
        config.key = self.key.clone();
        config.key_retire_after = self.key_retire_after;
        config.control_group = self.control_group;
        config.data_port = self.data_port;
        config.group_range = group_range;
        config.max_datagram = self.max_datagram;
        config.send_queue_bytes = self.send_queue_bytes;
        config.send_queue_time = self.send_queue_time;
        config.send_window_time = self.send_window_time;
        config.max_message_bytes = self.max_message_bytes;
        config.inject_loss = self.inject_loss;
        config.reliable = self.reliable;
        config.gossip_seeds = self.gossip_seeds.clone();
        config.ring.isolate_slow = self.isolate_slow;
        config.lec = self.lec.clone();
        config.failure_timeout = self.peer_timeout;
        config.departed_grace = self.sender_grace;
        config.discovery = DiscoveryConfig {
            announce_interval: self.announce_interval,
            ..DiscoveryConfig::default()
        };
        config.seed = self.seed.unwrap_or(id.0);
        let core = NodeCore::new(config, runtime.now());

        let (control_tx, control_rx) = bounded(1024);
        let (publish_tx, publish_rx) = flume::bounded(self.publish_queue);
        let shared = Arc::new(Shared {
            waker: runtime.waker(),
            sleeping: CachePadded::new(AtomicBool::new(false)),
            channel_bytes: CachePadded::new(AtomicI64::new(0)),
            channel_bytes_max: self.publish_queue_bytes.max(1),
            next_subscription: AtomicU64::new(0),
            spin: self.busy_poll,
        });
        let local_addr = runtime.local_addr();
        let worker = Worker {
            runtime,
            core,
            control: control_rx,
            publishes: publish_rx,
            shared: shared.clone(),
            subscriptions: BTreeMap::new(),
            subscriber_overflow: 0,
            blocked: None,
            pending: VecDeque::new(),
            listeners: Listeners::default(),
            load: LoadSampler::default(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("qs-node-{id}"))
            .spawn(move || {
                // Every log line of the node thread names the node (a field in JSON logs).
                let _span = tracing::info_span!("qs_node", node = %id).entered();
                worker.run()
            })?;
        let mut node = Node {
            id,
            local_addr,
            max_message_bytes: self.max_message_bytes,
            subscription_queue: self.subscription_queue,
            event_queue: self.event_queue,
            control: control_tx,
            publishes: publish_tx,
            shared,
            thread: Some(thread),
            metrics: None,
        };
        if let Some(addr) = self.metrics {
            // On failure the node is dropped, which stops its thread.
            node.metrics = Some(MetricsServer::start(addr, id, node.handle())?);
        }
        Ok(node)
    }
}

fn random_node_id() -> NodeId {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    NodeId(h.finish())
}

pub(crate) struct Shared {
    waker: Arc<mio::Waker>,
    /// Set by the node thread before it blocks; a publisher that sees it wakes the thread.
    /// On a cache line of its own, apart from the byte count both sides write.
    sleeping: CachePadded<AtomicBool>,
    next_subscription: AtomicU64,
    /// Payload bytes in the publish channel, and the most that may wait there. Publishers
    /// add a message's bytes once it is in the channel (so a cancelled `publish_async` leaves
    /// nothing behind) and the node thread takes them off when it takes the message, so the
    /// count can be briefly negative; the bound is soft by a message per publisher thread.
    channel_bytes: CachePadded<AtomicI64>,
    channel_bytes_max: usize,
    /// Busy-poll mode ([`NodeBuilder::busy_poll`]): how long a blocking receive spins on its
    /// queue before it blocks.
    spin: Option<Duration>,
}

impl Shared {
    /// Whether `len` more payload bytes may enter the publish channel now.
    fn channel_has_room(&self, len: usize) -> bool {
        let queued = self.channel_bytes.load(Ordering::Relaxed);
        queued <= 0 || queued.unsigned_abs() as usize + len <= self.channel_bytes_max
    }

    /// `len` payload bytes entered the publish channel.
    fn added(&self, len: usize) {
        self.channel_bytes.fetch_add(len as i64, Ordering::Relaxed);
    }

    pub(crate) fn nudge(&self) {
        // A load first: while the node thread is awake (a saturating publisher's case) this
        // reads a shared cache line instead of taking it exclusive once per message. It is as
        // safe as the swap alone: the node thread sets `sleeping` before it looks at the
        // channel once more, and the publisher reads it after its message is in the channel.
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            // A failed wake only delays the node until its next timer.
            let _ = self.waker.wake();
        }
    }
}

enum Command {
    Subscribe {
        id: u64,
        topics: Vec<(TopicId, Arc<str>)>,
        tx: Feed,
    },
    Unsubscribe {
        id: u64,
        topics: Vec<TopicId>,
    },
    Stats(Sender<Stats>),
    Events(flume::Sender<crate::NodeEvent>),
    Peers(Sender<Vec<PeerInfo>>),
    SubscribersOf(Vec<TopicId>, Sender<usize>),
    ClusterMap(Sender<crate::core::ClusterMap>),
    SetKeys(KeyRing, Sender<Result<(), crate::core::KeysRefused>>),
    AddKey(ClusterKey, Sender<Result<(), crate::core::KeysRefused>>),
    Idle(Sender<bool>),
    Shutdown,
}

/// A running node. Dropping it shuts it down (use [`Node::shutdown`] to see errors).
pub struct Node {
    id: NodeId,
    local_addr: SocketAddrV4,
    max_message_bytes: usize,
    subscription_queue: usize,
    event_queue: usize,
    control: Sender<Command>,
    publishes: flume::Sender<(TopicId, Bytes)>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
}

/// What other threads (the metrics server) need to ask the node thread: a cloneable share of
/// [`Node`]'s command path, without its ownership of the thread.
#[derive(Clone)]
pub(crate) struct Handle {
    control: Sender<Command>,
    shared: Arc<Shared>,
}

impl Handle {
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = bounded(1);
        self.control.send(make(tx)).map_err(|_| Error::Closed)?;
        self.shared.nudge();
        rx.recv().map_err(|_| Error::Closed)
    }

    /// The node's counters.
    pub(crate) fn stats(&self) -> Result<Stats, Error> {
        self.ask(Command::Stats)
    }

    /// The node's cluster map.
    pub(crate) fn cluster_map(&self) -> Result<crate::core::ClusterMap, Error> {
        self.ask(Command::ClusterMap)
    }
}

/// Hands a running node cluster keys from any thread (see [`Node::key_control`]).
#[derive(Clone)]
pub struct KeyControl {
    handle: Handle,
}

impl std::fmt::Debug for KeyControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyControl")
    }
}

impl KeyControl {
    /// As [`Node::add_key`].
    pub fn add_key(&self, key: ClusterKey) -> Result<(), Error> {
        self.handle
            .ask(|tx| Command::AddKey(key, tx))?
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads a key file and hands the node its newest key when that is newer than every key
    /// the node holds (the key file's other key, if any, is the one the node has). Returns
    /// the epoch handed over, `None` when the file holds nothing newer.
    pub fn add_key_file(&self, path: impl AsRef<std::path::Path>) -> Result<Option<u32>, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read key file {}: {e}", path.display())))?;
        let ring = KeyRing::parse(&text)
            .map_err(|e| Error::Config(format!("key file {}: {e}", path.display())))?;
        let newest = std::iter::once(ring.seal_with)
            .chain(ring.also)
            .max_by_key(|k| k.epoch)
            .expect("a ring holds a key");
        let epoch = newest.epoch;
        match self.handle.ask(|tx| Command::AddKey(newest, tx))? {
            Ok(()) => Ok(Some(epoch)),
            Err(crate::core::KeysRefused::NotNewer) => Ok(None),
            Err(e) => Err(Error::Config(e.to_string())),
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

fn check_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN
}

impl Node {
    /// A builder with loopback defaults.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's unicast address.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    fn command(&self, c: Command) -> Result<(), Error> {
        self.control.send(c).map_err(|_| Error::Closed)?;
        self.shared.nudge();
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = bounded(1);
        self.command(make(tx))?;
        rx.recv().map_err(|_| Error::Closed)
    }

    pub(crate) fn handle(&self) -> Handle {
        Handle {
            control: self.control.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Where the Prometheus endpoint listens, when [`NodeBuilder::metrics`] asked for one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// A queue of the node's [`NodeEvent`](crate::NodeEvent)s from now on (gaps, peers up and
    /// down, slow receivers, isolation, multicast reachability). Each call makes a new queue
    /// that gets every event; it holds [`NodeBuilder::event_queue`] events, and events a full
    /// queue cannot take are dropped and counted in [`Stats::events_dropped`] (the node never
    /// waits for a listener). Dropping the queue stops its feed. A node feeds at most 64
    /// queues at once; a queue asked for beyond that is closed at once
    /// ([`RecvError::Closed`]).
    pub fn events(&self) -> Result<Events, Error> {
        let (tx, rx) = flume::bounded(self.event_queue);
        self.command(Command::Events(tx))?;
        Ok(Events::new(rx))
    }

    /// A handle that publishes on `topic`, checked and hashed once here instead of at every
    /// publish: the way to publish a stream of messages on one topic. Cheap to clone.
    pub fn publisher(&self, topic: &str) -> Result<crate::Publisher, Error> {
        if !check_topic(topic) {
            return Err(Error::InvalidTopic(topic.to_owned()));
        }
        Ok(crate::Publisher::new(
            TopicId::from_name(topic),
            Arc::from(topic),
            self.max_message_bytes,
            self.publishes.clone(),
            self.shared.clone(),
        ))
    }

    /// Publishes `payload` on `topic`, waiting (without blocking a thread) while the send
    /// queue is full: the async form of [`Node::publish`].
    pub async fn publish_async(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let msg = self.check_publish(topic, payload.into())?;
        send_publish_async(&self.publishes, &self.shared, msg).await
    }

    /// Subscribes `topic`. Messages published after the subscription has reached the
    /// publishers (one discovery round: milliseconds on a LAN) are delivered to it.
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        self.subscribe_all(&[topic])
    }

    /// Subscribes several topics into one [`Subscription`] (one queue, per-sender order kept
    /// across the topics of one region).
    pub fn subscribe_all(&self, topics: &[&str]) -> Result<Subscription, Error> {
        if let Some(bad) = topics.iter().find(|t| !check_topic(t)) {
            return Err(Error::InvalidTopic((*bad).to_owned()));
        }
        if topics.is_empty() {
            return Err(Error::InvalidTopic(String::new()));
        }
        let id = self
            .shared
            .next_subscription
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = flume::bounded(self.subscription_queue);
        // Busy-poll mode: a counter the spinning receiver watches instead of the queue's lock.
        let sent = self.shared.spin.map(|_| Arc::new(AtomicU64::new(0)));
        let named: Vec<(TopicId, Arc<str>)> = topics
            .iter()
            .map(|t| (TopicId::from_name(t), Arc::from(*t)))
            .collect();
        let ids = named.iter().map(|(t, _)| *t).collect();
        self.command(Command::Subscribe {
            id,
            topics: named,
            tx: Feed {
                tx,
                sent: sent.clone(),
            },
        })?;
        Ok(Subscription {
            id,
            sent,
            topics: ids,
            stream: rx.clone().into_stream(),
            rx,
            control: self.control.clone(),
            shared: self.shared.clone(),
        })
    }

    /// Publishes `payload` on `topic`, blocking while the send queue is full.
    pub fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        let msg = self.check_publish(topic, payload.into())?;
        send_publish(&self.publishes, &self.shared, msg)
    }

    /// Publishes without blocking: [`PublishError::WouldBlock`] when the send queue is full.
    pub fn try_publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        let msg = self.check_publish(topic, payload.into())?;
        try_send_publish(&self.publishes, &self.shared, msg)
    }

    fn check_publish(&self, topic: &str, payload: Bytes) -> Result<(TopicId, Bytes), PublishError> {
        if !check_topic(topic) {
            return Err(PublishError::InvalidTopic);
        }
        if payload.len() > self.max_message_bytes {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                max: self.max_message_bytes,
            });
        }
        Ok((TopicId::from_name(topic), payload))
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.ask(Command::Stats)
    }

    /// The peers this node knows.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.ask(Command::Peers)
    }

    /// The cluster as this node sees it: members and their gossip state, regions and their
    /// members, health per node, per region and for the cluster (what `qs top` shows).
    pub fn cluster_map(&self) -> Result<crate::core::ClusterMap, Error> {
        self.ask(Command::ClusterMap)
    }

    /// Replaces the cluster keys while the node runs (one step of a key rotation: see the
    /// README's threat model). Only for a node started with a key, and only keys of its
    /// cluster.
    pub fn set_keys(&self, keys: KeyRing) -> Result<(), Error> {
        let tx = |tx| Command::SetKeys(keys, tx);
        self.ask(tx)?.map_err(|e| Error::Config(e.to_string()))
    }

    /// Hands the node the next cluster key (a rotation without downtime, see the README's key
    /// section): it accepts datagrams sealed with it at once, tells the cluster it holds it,
    /// and seals with it once every live member holds it too; the previous key is retired
    /// [`NodeBuilder::key_retire_after`] later. Refused for a keyless node, a key whose epoch
    /// is not newer than the node's, or while the node holds two keys already.
    pub fn add_key(&self, key: ClusterKey) -> Result<(), Error> {
        self.key_control().add_key(key)
    }

    /// A handle that hands the node keys from another thread (e.g. one that waits for
    /// SIGHUP and re-reads the key file); it fails with [`Error::Closed`] once the node is
    /// gone.
    pub fn key_control(&self) -> KeyControl {
        KeyControl {
            handle: self.handle(),
        }
    }

    /// Waits until everything published so far was sent and (reliable mode) acknowledged by
    /// every region it went to, or `timeout` passed. Returns whether it all was.
    pub fn flush(&self, timeout: Duration) -> Result<bool, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.ask(Command::Idle)? {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// How many other nodes subscribe at least one of `topics`.
    pub fn subscribers_of(&self, topics: &[&str]) -> Result<usize, Error> {
        let ids = topics.iter().map(|t| TopicId::from_name(t)).collect();
        self.ask(|tx| Command::SubscribersOf(ids, tx))
    }

    /// Sends what is queued (for at most a few seconds), tells the peers goodbye and stops the
    /// node's thread. Subscriptions then drain and report [`RecvError::Closed`].
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        // The endpoint first: a scrape must not wait on a node thread that is going away.
        drop(self.metrics.take());
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.command(Command::Shutdown);
        thread
            .join()
            .map_err(|_| Error::Config("node thread panicked".into()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Messages of the subscribed topics, in per-sender order. Dropping it unsubscribes.
///
/// Receive by blocking ([`recv`](Subscription::recv), [`iter`](Subscription::iter)), with a
/// timeout, or asynchronously ([`recv_async`](Subscription::recv_async), or as a
/// [`futures_core::Stream`] of [`Message`]s that ends when the node shuts down), on any
/// executor.
pub struct Subscription {
    id: u64,
    /// Busy-poll mode: messages the node thread has put in the queue so far.
    sent: Option<Arc<AtomicU64>>,
    topics: Vec<TopicId>,
    rx: flume::Receiver<Message>,
    stream: flume::r#async::RecvStream<'static, Message>,
    control: Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics)
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl Subscription {
    /// Waits for the next message.
    pub fn recv(&self) -> Result<Message, RecvError> {
        let spun = match (self.shared.spin, &self.sent) {
            (Some(spin), Some(sent)) => recv_busy(&self.rx, sent, spin),
            _ => recv_spinning(&self.rx),
        };
        match spun {
            Some(r) => r,
            None => self.rx.recv().map_err(|_| RecvError::Closed),
        }
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvError> {
        // A waiting message first: no clock read (a measurable share of a fast consumer's
        // time) unless the call may have to wait.
        if let Ok(m) = self.rx.try_recv() {
            return Ok(m);
        }
        let deadline = std::time::Instant::now() + timeout;
        let spun = match (self.shared.spin, &self.sent) {
            (Some(spin), Some(sent)) => recv_busy(&self.rx, sent, spin.min(timeout)),
            _ => recv_spinning(&self.rx),
        };
        match spun {
            Some(r) => r,
            None => self.rx.recv_deadline(deadline).map_err(|e| match e {
                flume::RecvTimeoutError::Timeout => RecvError::Empty,
                flume::RecvTimeoutError::Disconnected => RecvError::Closed,
            }),
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Result<Message, RecvError> {
        self.rx.try_recv().map_err(|e| match e {
            flume::TryRecvError::Empty => RecvError::Empty,
            flume::TryRecvError::Disconnected => RecvError::Closed,
        })
    }

    /// Takes every message waiting now: a long queue under one lock (where `try_recv` takes
    /// the lock once per message), the way for a fast consumer to keep up with small
    /// messages. Empty when nothing waits; never blocks.
    ///
    /// ```
    /// # fn main() -> Result<(), quicksilver::Error> {
    /// let node = quicksilver::Node::builder().cluster("drain-doc").build()?;
    /// let quotes = node.subscribe("quotes")?;
    /// node.publish("quotes", "a")?;
    /// node.publish("quotes", "b")?;
    /// let first = quotes.recv()?; // waits for the first, then takes the rest at once
    /// let mut got = vec![first.payload];
    /// while got.len() < 2 {
    ///     got.extend(quotes.drain().map(|m| m.payload));
    /// }
    /// assert_eq!(got, [&b"a"[..], &b"b"[..]]);
    /// assert_eq!(quotes.drain().count(), 0, "nothing waits: empty at once");
    /// # Ok(())
    /// # }
    /// ```
    pub fn drain(&self) -> impl Iterator<Item = Message> + '_ {
        Batch::new(&self.rx)
    }

    /// Iterates over messages until the node shuts down.
    pub fn iter(&self) -> impl Iterator<Item = Message> + '_ {
        self.rx.iter()
    }

    /// Waits for the next message without blocking a thread.
    pub async fn recv_async(&self) -> Result<Message, RecvError> {
        self.rx.recv_async().await.map_err(|_| RecvError::Closed)
    }

    /// Messages waiting in the queue now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.control.send(Command::Unsubscribe {
            id: self.id,
            topics: std::mem::take(&mut self.topics),
        });
        self.shared.nudge();
    }
}

/// One subscription's queue for one topic: (subscription id, topic name, queue).
type SubscriberQueue = (u64, Arc<str>, Feed);

/// The node thread's end of a subscription's queue.
#[derive(Clone)]
struct Feed {
    tx: flume::Sender<Message>,
    /// Busy-poll mode: counts the messages queued, for [`recv_busy`].
    sent: Option<Arc<AtomicU64>>,
}

impl Feed {
    fn try_send(&self, m: Message) -> Result<(), flume::TrySendError<Message>> {
        self.tx.try_send(m)?;
        if let Some(sent) = &self.sent {
            sent.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }
}

/// The node thread's state.
struct Worker {
    runtime: Runtime,
    core: NodeCore,
    control: Receiver<Command>,
    publishes: flume::Receiver<(TopicId, Bytes)>,
    shared: Arc<Shared>,
    subscriptions: BTreeMap<TopicId, Vec<SubscriberQueue>>,
    subscriber_overflow: u64,
    /// Reliable mode: a delivery a full subscription queue did not take yet, and the
    /// subscriptions of its topic that already have it. Until the others take it no further
    /// event is taken from the core, whose windows then stall and slow the senders down
    /// (back-pressure instead of loss).
    blocked: Option<(Delivery, Vec<u64>)>,
    /// Publishes taken from the channel in one batch that the core has not taken yet (its
    /// send queue filled): offered first. The channel is only drained again once this is
    /// empty, so it holds at most one channel's worth; their bytes still count against
    /// [`NodeBuilder::publish_queue_bytes`] until the core takes them.
    pending: VecDeque<(TopicId, Bytes)>,
    /// The application's event queues ([`Node::events`]).
    listeners: Listeners,
    /// When the receive sockets' load was last read, and their drop count then.
    load: LoadSampler,
}

/// Reads the receive sockets' load ([`Runtime::receive_load`]) for the core's lateral error
/// correction at most every [`LOAD_SAMPLE`]: three system calls, not per turn.
#[derive(Debug, Default)]
struct LoadSampler {
    at: Option<Instant>,
    drops: u32,
    /// The runtime's received byte count then.
    bytes: u64,
}

/// How often the receive sockets' drop count and queue fill are read (their drops tell LEC
/// its own overflow from the network's loss within about a bin's fill time).
const LOAD_SAMPLE: Duration = Duration::from_millis(1);

const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often a delivery blocked on a full subscription queue is retried.
const BLOCKED_RETRY: Duration = Duration::from_millis(1);
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// Long enough for the gossip goodbye's quick rounds (a quarter of the 200 ms round each) to
/// reach peers, so they record a leave rather than a failure.
const GOODBYE_FLUSH: Duration = Duration::from_millis(250);

impl Worker {
    fn run(mut self) {
        let mut shutdown_at: Option<Instant> = None;
        loop {
            let now = self.runtime.now();
            while let Ok(c) = self.control.try_recv() {
                if self.handle_command(now, c) {
                    shutdown_at.get_or_insert(now);
                }
            }
            self.take_publishes();
            if let Some(t) = shutdown_at {
                let drained =
                    self.core.is_idle() && self.pending.is_empty() && self.publishes.is_empty();
                if drained || now.saturating_duration_since(t) > SHUTDOWN_DRAIN {
                    break;
                }
            }
            let wait = if self.has_work() {
                Duration::ZERO
            } else {
                self.shared.sleeping.store(true, Ordering::SeqCst);
                // A publisher that sent just before `sleeping` was set did not wake us.
                if self.has_work() {
                    self.shared.sleeping.store(false, Ordering::SeqCst);
                    Duration::ZERO
                } else if self.blocked.is_some() {
                    BLOCKED_RETRY
                } else {
                    IDLE_WAIT
                }
            };
            if let Err(e) = self.runtime.turn(&mut self.core, Some(wait)) {
                tracing::error!("node event loop failed: {e}");
                break;
            }
            if self.shared.sleeping.load(Ordering::Relaxed) {
                self.shared.sleeping.store(false, Ordering::SeqCst);
            }
            self.sample_load();
            self.route_events();
        }
        // Goodbye: announce the leave and give it a moment to go out.
        let start = self.runtime.now();
        self.core.leave(start);
        while self.runtime.now().saturating_duration_since(start) < GOODBYE_FLUSH {
            if self
                .runtime
                .turn(&mut self.core, Some(Duration::from_millis(10)))
                .is_err()
            {
                break;
            }
            self.route_events();
        }
    }

    fn sample_load(&mut self) {
        let now = self.runtime.now();
        if self
            .load
            .at
            .is_some_and(|t| now.saturating_duration_since(t) < LOAD_SAMPLE)
        {
            return;
        }
        let load = self.runtime.receive_load();
        let bytes = self.runtime.stats().bytes_received;
        // The first reading is the baseline (drops before this node ran are not its load).
        let (drops, behind) = match self.load.at {
            Some(t) => {
                // How long the queued bytes take at the rate they were read since the last
                // reading; nothing read while bytes wait is as far behind as it gets.
                let read = bytes.saturating_sub(self.load.bytes) as f64;
                let secs = now.saturating_duration_since(t).as_secs_f64();
                let behind = match load.queued_bytes {
                    0 => Duration::ZERO,
                    q if read > 0.0 => {
                        Duration::try_from_secs_f64(q as f64 * secs / read).unwrap_or(Duration::MAX)
                    }
                    _ => Duration::MAX,
                };
                (load.drops.wrapping_sub(self.load.drops), behind)
            }
            None => (0, Duration::ZERO),
        };
        self.load = LoadSampler {
            at: Some(now),
            drops: load.drops,
            bytes,
        };
        self.core.note_receive_load(u64::from(drops), behind);
    }

    /// Whether a command, or a publish the core could take, is waiting in the channels.
    fn has_work(&self) -> bool {
        (self.pending.is_empty() && !self.publishes.is_empty()) || !self.control.is_empty()
    }

    /// Hands waiting publishes to the core while its send queue has room: first those left
    /// over from the last batch, then the channel's whole content, taken under one lock.
    fn take_publishes(&mut self) {
        loop {
            if self.pending.is_empty() {
                self.pending.extend(Batch::new(&self.publishes));
                if self.pending.is_empty() {
                    return;
                }
            }
            let mut taken = 0usize;
            let mut full = false;
            while let Some((topic, payload)) = self.pending.pop_front() {
                if !self.core.can_publish(payload.len()) {
                    self.pending.push_front((topic, payload));
                    full = true;
                    break;
                }
                taken += payload.len();
                // Moved, not cloned: a clone of a `Bytes` made from a `Vec` allocates.
                match self.core.publish(topic, payload) {
                    Ok(()) => {}
                    Err(PublishRefused::QueueFull) => unreachable!("room was checked"),
                    Err(PublishRefused::ReservedTopic) => {
                        tracing::warn!("a message on the reserved handover topic was dropped");
                    }
                    Err(PublishRefused::TooLarge) => {
                        // Checked by the handle against the same limit; unreachable unless
                        // the message needs more than 65,535 fragments of a tiny datagram.
                        tracing::warn!("a message is too large to fragment");
                    }
                }
            }
            // One update of the shared byte count per batch, not per message.
            self.shared
                .channel_bytes
                .fetch_sub(taken as i64, Ordering::Relaxed);
            if full {
                return;
            }
        }
    }

    /// Returns whether the command asks to shut down.
    fn handle_command(&mut self, now: Instant, c: Command) -> bool {
        match c {
            Command::Subscribe { id, topics, tx } => {
                for (topic, name) in &topics {
                    let queue = (id, name.clone(), tx.clone());
                    self.subscriptions.entry(*topic).or_default().push(queue);
                }
                self.core
                    .subscribe_all(now, topics.into_iter().map(|(t, _)| t));
            }
            Command::Unsubscribe { id, topics } => {
                let mut emptied = Vec::new();
                for topic in topics {
                    if let Some(list) = self.subscriptions.get_mut(&topic) {
                        list.retain(|(i, _, _)| *i != id);
                        if list.is_empty() {
                            self.subscriptions.remove(&topic);
                            emptied.push(topic);
                        }
                    }
                }
                self.core.unsubscribe_all(now, emptied);
            }
            Command::Stats(tx) => {
                let _ = tx.send(Stats {
                    core: self.core.stats(),
                    runtime: self.runtime.stats().clone(),
                    socket_buffers: self.runtime.socket_buffers(),
                    subscriber_overflow: self.subscriber_overflow,
                    peers: self.core.peers().count(),
                    events_dropped: self.listeners.dropped,
                });
            }
            Command::Peers(tx) => {
                let peers = self
                    .core
                    .peers()
                    .map(|p| PeerInfo {
                        id: p.id,
                        unicast: p.unicast,
                        topics: p.topics.to_vec(),
                    })
                    .collect();
                let _ = tx.send(peers);
            }
            Command::SubscribersOf(topics, tx) => {
                let _ = tx.send(self.core.subscribers_of_any(&topics));
            }
            Command::ClusterMap(tx) => {
                let _ = tx.send(self.core.cluster_map());
            }
            Command::SetKeys(keys, tx) => {
                let _ = tx.send(self.core.set_keys(keys));
            }
            Command::AddKey(key, tx) => {
                let _ = tx.send(self.core.add_key(key));
            }
            Command::Idle(tx) => {
                let idle =
                    self.core.is_idle() && self.pending.is_empty() && self.publishes.is_empty();
                let _ = tx.send(idle);
            }
            Command::Events(tx) => self.listeners.add(tx),
            Command::Shutdown => return true,
        }
        false
    }

    /// Hands deliveries to the subscription queues. Reliable nodes wait for a full queue
    /// (keeping the rest in the core); best-effort nodes drop into `subscriber_overflow`.
    /// Allocation-free per message: the topic's name is shared, and the list of
    /// subscriptions already served is only built when a full queue blocks a delivery.
    fn route_events(&mut self) {
        let reliable = self.core.config().reliable;
        if let Some((d, served)) = self.blocked.take() {
            if !self.offer(d, served, reliable) {
                return;
            }
        }
        while let Some(e) = self.core.poll_event() {
            let d = match e {
                Event::Delivered(d) => d,
                other => {
                    self.listeners.offer(&other);
                    continue;
                }
            };
            if !self.offer(d, Vec::new(), reliable) {
                return;
            }
        }
    }

    /// Offers `d` to the subscriptions of its topic not in `served`; returns `false` when a
    /// full queue blocked it (reliable mode; it is kept in `blocked`). Subscriptions are
    /// tracked by id, so one that goes away meanwhile does not shift the others.
    fn offer(&mut self, mut d: Delivery, served: Vec<u64>, reliable: bool) -> bool {
        let Some(list) = self.subscriptions.get(&d.topic) else {
            return true;
        };
        let last = list.len().saturating_sub(1);
        for (i, (id, name, tx)) in list.iter().enumerate() {
            if served.contains(id) {
                continue;
            }
            // The last subscription takes the payload itself: a clone and a drop are two
            // atomic operations on the receive buffer's count, which the application thread
            // also writes as it drops messages.
            let payload = if i == last {
                std::mem::take(&mut d.payload)
            } else {
                d.payload.clone()
            };
            let m = Message {
                sender: d.sender,
                topic: name.clone(),
                payload,
            };
            match tx.try_send(m) {
                Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
                Err(flume::TrySendError::Full(m)) if reliable => {
                    if i == last {
                        d.payload = m.payload;
                    }
                    // Everyone before `i` has it now, and so has whoever had it before.
                    let mut now_served: Vec<u64> = list[..i].iter().map(|(id, _, _)| *id).collect();
                    now_served.extend(
                        served
                            .iter()
                            .filter(|id| !now_served.contains(id))
                            .copied()
                            .collect::<Vec<_>>(),
                    );
                    self.blocked = Some((d, now_served));
                    return false;
                }
                Err(flume::TrySendError::Full(_)) => self.subscriber_overflow += 1,
            }
        }
        true
    }
}

/// How many items [`Batch`] takes one by one before it takes the rest of the queue at once.
const BATCH_SINGLES: usize = 32;

/// Everything waiting in a flume queue now. A few items are taken one by one; past
/// [`BATCH_SINGLES`] the rest goes under one lock (`drain`). `drain` alone would cost more
/// on short queues: it hands the queue's buffer over, so the senders' next items allocate a
/// new one, once per batch, which is once per message when messages come one at a time.
struct Batch<'a, T> {
    rx: &'a flume::Receiver<T>,
    taken: usize,
    rest: Option<flume::Drain<'a, T>>,
    done: bool,
}

impl<'a, T> Batch<'a, T> {
    fn new(rx: &'a flume::Receiver<T>) -> Batch<'a, T> {
        Batch {
            rx,
            taken: 0,
            rest: None,
            done: false,
        }
    }
}

impl<T> Iterator for Batch<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if let Some(rest) = &mut self.rest {
            return rest.next();
        }
        if self.done {
            return None;
        }
        if self.taken < BATCH_SINGLES {
            let item = self.rx.try_recv().ok();
            self.taken += 1;
            self.done = item.is_none();
            return item;
        }
        self.rest.insert(self.rx.drain()).next()
    }
}

/// Queues a publish for the node thread, blocking while the channel is full.
///
/// Like crossbeam's channels (and unlike flume's blocking `send`, which parks at once) it
/// spins and yields briefly first: the node thread drains a full channel continuously, so the
/// slot usually frees within microseconds, and parking would cost two context switches per
/// message. Measured with a publisher against a 4,096-slot channel drained by another thread:
/// flume's `send` alone made ~15,700 voluntary context switches per 2 M messages and took 1.7×
/// the time of crossbeam's; with this backoff, 2 and the same time.
pub(crate) fn send_publish(
    tx: &flume::Sender<(TopicId, Bytes)>,
    shared: &Shared,
    mut msg: (TopicId, Bytes),
) -> Result<(), PublishError> {
    let backoff = crossbeam_utils::Backoff::new();
    // The byte bound first: the node thread takes messages off continuously, so room comes
    // within microseconds unless the core's queue is full too; then wait in short sleeps.
    while !shared.channel_has_room(msg.1.len()) {
        if tx.is_disconnected() {
            return Err(PublishError::Closed);
        }
        if backoff.is_completed() {
            shared.nudge();
            std::thread::sleep(Duration::from_micros(50));
        } else {
            backoff.snooze();
        }
    }
    let len = msg.1.len();
    let backoff = crossbeam_utils::Backoff::new();
    loop {
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(flume::TrySendError::Full(m)) if !backoff.is_completed() => {
                msg = m;
                backoff.snooze();
            }
            Err(flume::TrySendError::Full(m)) => {
                tx.send(m).map_err(|_| PublishError::Closed)?;
                break;
            }
            Err(flume::TrySendError::Disconnected(_)) => return Err(PublishError::Closed),
        }
    }
    shared.added(len);
    shared.nudge();
    Ok(())
}

/// The receive side of the same backoff: a message (or the queue's end) if one comes while
/// spinning and yielding briefly, `None` when the caller should block.
fn recv_spinning<T>(rx: &flume::Receiver<T>) -> Option<Result<T, RecvError>> {
    let backoff = crossbeam_utils::Backoff::new();
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(Ok(m)),
            Err(flume::TryRecvError::Disconnected) => return Some(Err(RecvError::Closed)),
            Err(flume::TryRecvError::Empty) if !backoff.is_completed() => backoff.snooze(),
            Err(flume::TryRecvError::Empty) => return None,
        }
    }
}

/// Busy-poll mode's receive, for up to `spin`: `None` when the caller should block. It
/// watches the queue's message counter `sent` (a plain load, while the queue itself has a lock
/// the node thread needs to fill it) and takes from the queue when the count moves, or every
/// 64 rounds (to see a closed queue). Every 64 rounds it also yields the core: on a machine
/// with fewer cores than spinning threads, the thread that has work for us may be waiting for
/// it.
fn recv_busy<T>(
    rx: &flume::Receiver<T>,
    sent: &AtomicU64,
    spin: Duration,
) -> Option<Result<T, RecvError>> {
    let start = std::time::Instant::now();
    let mut seen = sent.load(Ordering::Acquire);
    let mut rounds = 0u32;
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(Ok(m)),
            Err(flume::TryRecvError::Disconnected) => return Some(Err(RecvError::Closed)),
            Err(flume::TryRecvError::Empty) => {}
        }
        loop {
            rounds = rounds.wrapping_add(1);
            if rounds % 64 == 0 {
                if start.elapsed() >= spin {
                    return None;
                }
                std::thread::yield_now();
                break;
            }
            let now_sent = sent.load(Ordering::Acquire);
            if now_sent != seen {
                seen = now_sent;
                break;
            }
            std::hint::spin_loop();
        }
    }
}

/// Queues a publish for the node thread if the channel has room.
pub(crate) fn try_send_publish(
    tx: &flume::Sender<(TopicId, Bytes)>,
    shared: &Shared,
    msg: (TopicId, Bytes),
) -> Result<(), PublishError> {
    let len = msg.1.len();
    if !shared.channel_has_room(len) {
        shared.nudge();
        return Err(PublishError::WouldBlock);
    }
    match tx.try_send(msg) {
        Ok(()) => {
            shared.added(len);
            shared.nudge();
            Ok(())
        }
        Err(e) => try_send_failed(shared, e),
    }
}

fn try_send_failed(
    shared: &Shared,
    e: flume::TrySendError<(TopicId, Bytes)>,
) -> Result<(), PublishError> {
    match e {
        flume::TrySendError::Full(_) => {
            // The node thread may be asleep with the channel full of work for it.
            shared.nudge();
            Err(PublishError::WouldBlock)
        }
        flume::TrySendError::Disconnected(_) => Err(PublishError::Closed),
    }
}

/// Queues a publish for the node thread, waiting without blocking while the channel is full.
pub(crate) async fn send_publish_async(
    tx: &flume::Sender<(TopicId, Bytes)>,
    shared: &Shared,
    msg: (TopicId, Bytes),
) -> Result<(), PublishError> {
    // A full channel means the node thread has work: make sure it is awake before waiting.
    if tx.is_full() {
        shared.nudge();
    }
    let len = msg.1.len();
    tx.send_async(msg).await.map_err(|_| PublishError::Closed)?;
    shared.added(len);
    shared.nudge();
    Ok(())
}
