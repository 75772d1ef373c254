//! Node options for every `qs` command, from three sources in a fixed order: a command-line
//! flag beats its `QS_*` environment variable (both through clap), which beats the TOML file
//! named by `--config`/`QS_CONFIG`, which beats the library's default.
//!
//! One struct, [`NodeOpts`], is at once the clap flags and the file's schema (serde), so a
//! new option is one field here and one line in [`NodeOpts::apply`]. Every field is an
//! `Option`: "not given" must stay distinguishable from a value, or a file could not be
//! overridden by a flag set back to the default. This file also resolves interfaces given by
//! name and parses durations; it does not start nodes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use quicksilver::{NodeBuilder, NodeId};
use serde::{Deserialize, Serialize};

/// Parses a duration: humantime (`500ms`, `1m 30s`) or a bare number of seconds (`15`,
/// `0.5`), the form scripts used before durations had units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a non-negative number of seconds"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 15s, 2m)"))
}

/// Serde for optional durations written like the flags (`"500ms"`, `"15"`, or a number).
mod opt_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(f64),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Text(t)) => parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
            Some(Raw::Secs(s)) => parse_duration(&s.to_string())
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a busy-poll spin budget: `always` (also `on`, `true`: spin without end), `off`
/// (also `false`, `0`: never spin) or a duration (`200us`: spin that long before sleeping).
pub fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "always" | "on" | "true" => Ok(Duration::MAX),
        "off" | "false" => Ok(Duration::ZERO),
        other => parse_duration(other).map_err(|e| format!("{e}; or always / off")),
    }
}

/// Serde for the busy-poll budget, written like the flag (`"always"`, `"off"`, `"200us"`).
mod opt_busy_poll {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) if *d == Duration::MAX => s.serialize_str("always"),
            Some(d) if d.is_zero() => s.serialize_str("off"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| parse_busy_poll(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A node id in hex, as `qs top` shows them.
fn parse_node_id(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

/// `on` / `off` (also `true` / `false`).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
}

/// A block of multicast addresses, `BASE/PREFIX`.
fn parse_group_range(s: &str) -> Result<String, String> {
    let (base, len) = s
        .split_once('/')
        .ok_or("expected BASE/PREFIX, e.g. 239.255.16.0/20")?;
    base.parse::<Ipv4Addr>()
        .map_err(|e| format!("{base:?}: {e}"))?;
    len.parse::<u8>().map_err(|e| format!("{len:?}: {e}"))?;
    Ok(s.to_owned())
}

/// The node options every command shares (flags, `QS_*` variables, config file keys).
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Node options (flag > QS_* variable > --config file > default)")]
pub struct NodeOpts {
    /// Interface for multicast and unicast, by name (eth0) or IPv4 address [default:
    /// 127.0.0.1: loopback, nothing leaves the machine]
    #[arg(long, env = "QS_IFACE", value_name = "NAME|ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// Cluster key file (from `qs keygen`): every datagram is authenticated with it and the
    /// cluster id is the file's; nodes without the key see nothing of the cluster. SIGHUP
    /// re-reads it: a newer key in it is the next key, switched to once every member holds
    /// it [default: none, a checksum only]
    #[arg(long, env = "QS_KEY_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    /// Cluster name; nodes only talk within their cluster [default: quicksilver]
    #[arg(long, env = "QS_CLUSTER", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Control (discovery) multicast group and port [default: 239.255.0.1:7400]
    #[arg(long, env = "QS_CONTROL_GROUP", value_name = "GROUP:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_group: Option<SocketAddrV4>,
    /// UDP port of the region data groups [default: 7401]
    #[arg(long, env = "QS_DATA_PORT", value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_port: Option<u16>,
    /// The node's unicast port [default: 0, any free port]
    #[arg(long, env = "QS_UNICAST_PORT", value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unicast_port: Option<u16>,
    /// The block region groups are allocated from [default: 239.255.16.0/20]
    #[arg(long, env = "QS_GROUP_RANGE", value_name = "BASE/PREFIX", value_parser = parse_group_range)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_range: Option<String>,
    /// A peer's unicast address to join the gossip plane through, where multicast
    /// announcements do not reach (repeatable; comma separated in QS_SEED)
    #[arg(
        long = "seed",
        env = "QS_SEED",
        value_name = "IP:PORT",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SocketAddr>,
    /// Best-effort delivery: report losses as gaps instead of repairing them [default: false]
    #[arg(long, env = "QS_BEST_EFFORT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_effort: Option<bool>,
    /// Slow-receiver policy: isolate this node when it falls far behind (it loses messages,
    /// reported as gaps) instead of slowing the senders [default: false]
    #[arg(long, env = "QS_ISOLATE_SLOW", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolate_slow: Option<bool>,
    /// Drop this fraction of incoming data packets on purpose (loss injection) [default: 0]
    #[arg(long, env = "QS_INJECT_LOSS", value_name = "FRACTION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inject_loss: Option<f64>,
    /// Lateral error correction: receivers repair each other's losses with XOR repairs
    /// before the recovery ring asks (adaptive: nothing is sent without loss) [default: on]
    #[arg(long, env = "QS_LEC", value_name = "on|off", value_parser = parse_on_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lec: Option<bool>,
    /// Requested socket receive buffer; the kernel may cap it (`qs doctor` tells)
    /// [default: 8388608]
    #[arg(long, env = "QS_RECV_BUFFER_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recv_buffer_bytes: Option<usize>,
    /// Requested socket send buffer [default: 4194304]
    #[arg(long, env = "QS_SEND_BUFFER_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_buffer_bytes: Option<usize>,
    /// Largest datagram sent, IP and UDP headers excluded: the interface MTU minus 28
    /// [default: 1472]
    #[arg(long, env = "QS_MAX_DATAGRAM", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_datagram: Option<usize>,
    /// Bytes that may wait in the send queue before publishing blocks [default: 16777216]
    #[arg(long, env = "QS_SEND_QUEUE_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_queue_bytes: Option<usize>,
    /// Time's worth of data the send queue may hold at its drain rate before publishing
    /// blocks (0s: bytes only) [default: 5ms]
    #[arg(long, env = "QS_SEND_QUEUE_TIME", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub send_queue_time: Option<Duration>,
    /// Time's worth of data the send window may hold unacknowledged at the region's
    /// acknowledgement rate (at least 256 KiB) before the stream waits (0s: packets only)
    /// [default: 0s]
    #[arg(long, env = "QS_SEND_WINDOW_TIME", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub send_window_time: Option<Duration>,
    /// Largest message published or accepted [default: 16777216]
    #[arg(long, env = "QS_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// Messages a subscription holds before the node waits for the application
    /// [default: 65536]
    #[arg(long, env = "QS_SUBSCRIPTION_QUEUE", value_name = "MESSAGES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_queue: Option<usize>,
    /// Publishes that may wait for the node thread [default: 4096]
    #[arg(long, env = "QS_PUBLISH_QUEUE", value_name = "MESSAGES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_queue: Option<usize>,
    /// Payload bytes that may wait for the node thread before publishing blocks
    /// [default: 262144]
    #[arg(long, env = "QS_PUBLISH_QUEUE_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_queue_bytes: Option<usize>,
    /// Node events an event queue holds [default: 1024]
    #[arg(long, env = "QS_EVENT_QUEUE", value_name = "EVENTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_queue: Option<usize>,
    /// Mean time between discovery announcements [default: 500ms]
    #[arg(long, env = "QS_ANNOUNCE_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub announce_interval: Option<Duration>,
    /// Silence after which a peer is declared gone [default: 3s]
    #[arg(long, env = "QS_PEER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub peer_timeout: Option<Duration>,
    /// How long a failed sender's streams stay open (survivors repair each other; a paused
    /// sender that returns loses nothing) before they end with "sender lost" [default: 30s]
    #[arg(long, env = "QS_SENDER_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub sender_grace: Option<Duration>,
    /// A fixed node id, in hex [default: random]
    #[arg(long, env = "QS_NODE_ID", value_name = "HEX", value_parser = parse_node_id)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Seed of the node's protocol randomness [default: from the node id]
    #[arg(long = "rng-seed", env = "QS_RNG_SEED", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rng_seed: Option<u64>,
    /// Busy-poll mode, trading cores for latency: the node thread and blocking receives spin
    /// instead of sleeping, for up to this long (`always`: never sleep, a core per spinning
    /// thread; `200us`: spin that long after each event, then sleep) [default: off]
    #[arg(long, env = "QS_BUSY_POLL", value_name = "always|DURATION|off", num_args = 0..=1,
        default_missing_value = "always", value_parser = parse_busy_poll)]
    #[serde(with = "opt_busy_poll", skip_serializing_if = "Option::is_none")]
    pub busy_poll: Option<Duration>,
    /// UDP GSO (`UDP_SEGMENT`): hand the kernel runs of equal-sized datagrams as one buffer
    /// each; the wire is unchanged, and the node falls back to plain sends if the kernel
    /// refuses [default: on]
    #[arg(long, env = "QS_GSO", value_name = "on|off", value_parser = parse_on_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gso: Option<bool>,
    /// UDP GRO (`UDP_GRO`) on the data socket: receive a run of equal-sized datagrams as one
    /// buffer and split it; one `recvmsg` per buffer instead of one `recvmmsg` per batch
    /// [default: off]
    #[arg(long, env = "QS_GRO", value_name = "on|off", value_parser = parse_on_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gro: Option<bool>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464) [default: off]
    #[arg(long, env = "QS_METRICS", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

/// Fills every option of `$dst` that is not set from `$src`.
macro_rules! fill {
    ($dst:ident, $src:ident: $($f:ident),* $(,)?) => {
        $( if $dst.$f.is_none() { $dst.$f = $src.$f.clone(); } )*
    };
}

impl NodeOpts {
    /// With a key file: a thread re-reads it at every SIGHUP and hands the node its newest
    /// key when that is newer than the node's (the node switches to it once every member
    /// holds it). Without one SIGHUP keeps its default action.
    pub fn reload_key_file_on_sighup(&self, node: &quicksilver::Node) -> anyhow::Result<()> {
        let Some(path) = self.key_file.clone() else {
            return Ok(());
        };
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .context("watching SIGHUP")?;
        let keys = node.key_control();
        std::thread::Builder::new()
            .name("qs-key-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    match keys.add_key_file(&path) {
                        Ok(Some(epoch)) => eprintln!(
                            "qs: {}: key epoch {epoch} added; sealing switches to it once \
                             every member holds it",
                            path.display()
                        ),
                        Ok(None) => eprintln!("qs: {}: no newer key", path.display()),
                        Err(quicksilver::Error::Closed) => return,
                        Err(e) => eprintln!("qs: {e}"),
                    }
                }
            })
            .context("starting the key reload thread")?;
        Ok(())
    }

    /// These options with what is unset taken from `file` (flags and variables win).
    pub fn or(mut self, file: &NodeOpts) -> NodeOpts {
        let o = &mut self;
        fill!(o, file: iface, key_file, cluster, control_group, data_port, unicast_port,
            group_range, best_effort, isolate_slow, inject_loss, lec, recv_buffer_bytes,
            send_buffer_bytes, max_datagram, send_queue_bytes, send_queue_time,
            send_window_time, max_message_bytes, subscription_queue, publish_queue, publish_queue_bytes,
            event_queue, announce_interval, peer_timeout, sender_grace, node_id, rng_seed,
            busy_poll, gso, gro, metrics);
        if o.seeds.is_empty() {
            o.seeds = file.seeds.clone();
        }
        self
    }

    /// The interface address (loopback unless named).
    pub fn interface(&self) -> anyhow::Result<Ipv4Addr> {
        match &self.iface {
            None => Ok(Ipv4Addr::LOCALHOST),
            Some(s) => Ok(resolve_iface(s)?.addr),
        }
    }

    /// The cluster name.
    pub fn cluster_name(&self) -> &str {
        self.cluster.as_deref().unwrap_or("quicksilver")
    }

    /// A node builder with these options (the library's defaults for the rest).
    pub fn builder(&self) -> anyhow::Result<NodeBuilder> {
        let mut b = quicksilver::Node::builder().interface(self.interface()?);
        macro_rules! set {
            ($($f:ident => $m:ident),* $(,)?) => { $( if let Some(v) = self.$f.clone() { b = b.$m(v); } )* };
        }
        set!(control_group => control_group, data_port => data_port, unicast_port => unicast_port,
            isolate_slow => isolate_slow, inject_loss => inject_loss, lec => lec,
            recv_buffer_bytes => recv_buffer_bytes, send_buffer_bytes => send_buffer_bytes,
            max_datagram => max_datagram, send_queue_bytes => send_queue_bytes,
            send_queue_time => send_queue_time, send_window_time => send_window_time,
            max_message_bytes => max_message_bytes, subscription_queue => subscription_queue,
            publish_queue => publish_queue, publish_queue_bytes => publish_queue_bytes,
            event_queue => event_queue,
            announce_interval => announce_interval, peer_timeout => peer_timeout,
            sender_grace => sender_grace, busy_poll => busy_poll, gso => gso, gro => gro,
            rng_seed => seed, metrics => metrics);
        if let Some(c) = &self.cluster {
            b = b.cluster(c);
        }
        if let Some(path) = &self.key_file {
            b = b.key_file(path)?;
        }
        if let Some(be) = self.best_effort {
            b = b.reliable(!be);
        }
        if let Some(id) = self.node_id {
            b = b.node_id(NodeId(id));
        }
        if let Some(r) = &self.group_range {
            let (base, len) = r.split_once('/').expect("checked when parsed");
            b = b.group_range(base.parse()?, len.parse()?);
        }
        Ok(self.seeds.iter().fold(b, |b, s| b.gossip_seed(*s)))
    }
}

/// The whole `--config` file: node options and logging.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Node options.
    #[serde(flatten)]
    pub node: NodeOpts,
    /// Log filter (tracing's EnvFilter syntax), as `--log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// `text` or `json`, as `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

impl FileConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
    }
}

/// An interface as found on this machine.
#[derive(Debug, Clone)]
pub struct Iface {
    /// Its name (`lo`, `eth0`), when an interface holds the address.
    pub name: Option<String>,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
}

/// The IPv4 interfaces of this machine: (name, address), in the system's order.
pub fn interfaces() -> Vec<(String, Ipv4Addr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(a) => Some((i.name, a)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

/// Resolves `--iface`: an interface name (its first IPv4 address) or an address that one of
/// this machine's interfaces holds. The error lists what there is.
pub fn resolve_iface(s: &str) -> anyhow::Result<Iface> {
    let all = interfaces();
    let listing = || {
        all.iter()
            .map(|(n, a)| format!("{n} ({a})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Ok(addr) = s.parse::<Ipv4Addr>() {
        let name = all.iter().find(|(_, a)| *a == addr).map(|(n, _)| n.clone());
        if name.is_none() && !addr.is_loopback() {
            bail!(
                "no interface of this machine has the address {addr} (interfaces: {})",
                listing()
            );
        }
        return Ok(Iface { name, addr });
    }
    match all.iter().find(|(n, _)| n == s) {
        Some((n, a)) => Ok(Iface {
            name: Some(n.clone()),
            addr: *a,
        }),
        None => bail!(
            "no interface named {s:?} with an IPv4 address (interfaces: {})",
            listing()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_config_file_fills_only_what_flags_and_variables_left_unset() {
        let file: FileConfig = toml::from_str(
            "cluster = \"from-file\"\ndata_port = 9001\npeer_timeout = \"2s\"\nseeds = [\"10.0.0.1:4000\"]\n",
        )
        .unwrap();
        let given = NodeOpts {
            cluster: Some("from-flag".into()),
            ..NodeOpts::default()
        };
        let o = given.or(&file.node);
        assert_eq!(o.cluster.as_deref(), Some("from-flag"));
        assert_eq!(o.data_port, Some(9001));
        assert_eq!(o.peer_timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.seeds.len(), 1);
        assert_eq!(
            o.control_group, None,
            "neither source set it: the default stays"
        );
    }

    #[test]
    fn a_key_file_comes_from_the_flag_or_the_config_file_and_a_bad_one_is_refused() {
        let file: FileConfig = toml::from_str("key_file = \"/etc/qs/cluster.key\"\n").unwrap();
        let o = NodeOpts::default().or(&file.node);
        assert_eq!(
            o.key_file.as_deref(),
            Some(Path::new("/etc/qs/cluster.key"))
        );
        let flag = NodeOpts {
            key_file: Some("/tmp/flag.key".into()),
            ..NodeOpts::default()
        };
        assert_eq!(
            flag.or(&file.node).key_file.as_deref(),
            Some(Path::new("/tmp/flag.key"))
        );
        let dir = std::env::temp_dir().join(format!("qs-keyfile-test-{}", std::process::id()));
        std::fs::write(&dir, "not a key\n").unwrap();
        let bad = NodeOpts {
            key_file: Some(dir.clone()),
            ..NodeOpts::default()
        };
        let e = bad
            .builder()
            .expect_err("a bad key file is refused")
            .to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.contains("key file"), "{e}");
    }

    #[test]
    fn busy_poll_is_always_off_or_a_spin_budget_in_flags_and_files_alike() {
        assert_eq!(parse_busy_poll("always"), Ok(Duration::MAX));
        assert_eq!(parse_busy_poll("off"), Ok(Duration::ZERO));
        assert_eq!(parse_busy_poll("0"), Ok(Duration::ZERO));
        assert_eq!(parse_busy_poll("200us"), Ok(Duration::from_micros(200)));
        assert!(parse_busy_poll("sometimes").is_err());
        for text in ["always", "off", "200us"] {
            let file: FileConfig = toml::from_str(&format!("busy_poll = \"{text}\"\n")).unwrap();
            assert_eq!(file.node.busy_poll, parse_busy_poll(text).ok(), "{text}");
            let back = toml::to_string(&file.node).unwrap();
            assert_eq!(back, format!("busy_poll = \"{text}\"\n"));
        }
    }

    #[test]
    fn an_unknown_key_in_the_config_file_is_an_error_not_ignored() {
        let e = toml::from_str::<FileConfig>("clustr = \"typo\"\n").unwrap_err();
        assert!(e.to_string().contains("clustr"), "{e}");
    }

    #[test]
    fn loopback_resolves_by_name_and_by_address_and_a_bogus_name_is_refused() {
        assert_eq!(resolve_iface("lo").unwrap().addr, Ipv4Addr::LOCALHOST);
        assert_eq!(
            resolve_iface("127.0.0.1").unwrap().name.as_deref(),
            Some("lo")
        );
        let e = resolve_iface("bogus0").unwrap_err().to_string();
        assert!(e.contains("bogus0") && e.contains("lo (127.0.0.1)"), "{e}");
    }
}
