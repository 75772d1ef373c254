//! Prometheus metrics: every counter of [`Node::stats`](crate::Node::stats) and the per-region
//! health of the [`ClusterMap`], as Prometheus text at `http://ADDR/metrics`.
//!
//! [`render`] turns snapshots into the exposition format; [`serve`] (and
//! [`NodeBuilder::metrics`](crate::NodeBuilder::metrics)) run a small HTTP endpoint that takes
//! a fresh snapshot at every scrape. This file does not count anything itself (the node's
//! cores do) and keeps no history: a scrape is a snapshot.
//!
//! Names are derived from the [`Stats`] fields, so a counter added to the stats is exported
//! without touching this file: `Stats.core.drops.malformed` becomes
//! `qs_core_drops_malformed_total`. Units go last, as Prometheus asks: a field naming bytes,
//! packets, datagrams or messages ends in that unit (`payload_bytes_sent` →
//! `qs_core_payload_sent_bytes_total`), and nanoseconds become seconds
//! (`runtime.busy_nanos` → `qs_runtime_busy_seconds_total`). Levels (queue depths, buffer
//! sizes, peaks, rates) are gauges, the rest counters. Every sample carries a `node` label (the
//! node id), per-region samples a `region` label too.
//!
//! The encoder is `prometheus-client` (the Prometheus project's Rust client: escaping,
//! `# TYPE`/`# UNIT` lines, `# EOF`); the endpoint is `tiny_http` (a blocking HTTP/1.1 server
//! on one thread, no async runtime to pull in).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use qs_gossip::Metric;
use qs_transport::NodeId;

use crate::core::ClusterMap;
use crate::node::Handle;
use crate::{Error, Node, Stats};

/// One node's state at a scrape: what [`render`] exports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The node.
    pub node: NodeId,
    /// Its counters.
    pub stats: Stats,
    /// Its view of the cluster (regions and their health), when it could be read.
    pub map: Option<ClusterMap>,
}

/// Stats fields that are levels, not running totals (by their path in [`Stats`]).
const GAUGES: &[&str] = &[
    "core.unacked_packets",
    "core.retained_packets",
    "core.cached_packets",
    "core.cached_bytes",
    "core.cached_bytes_peak",
    "core.unacked_bytes_peak",
    "core.pacing_rate",
    "runtime.longest_turn_nanos",
    "runtime.timer_lateness_max_nanos",
    "socket_buffers.recv_bytes",
    "socket_buffers.send_bytes",
    "socket_buffers.forced",
    "socket_buffers.capped",
    "peers",
];

/// Words that name a unit inside a field's name, and the unit Prometheus should see last.
const UNITS: &[(&str, &str)] = &[
    ("bytes", "bytes"),
    ("nanos", "seconds"),
    ("packets", "packets"),
    ("datagrams", "datagrams"),
    ("messages", "messages"),
];

/// A field's Prometheus name (without `qs_` and `_total`), its unit and its scale.
fn name_of(path: &str) -> (String, Option<&'static str>, f64) {
    let mut words: Vec<&str> = path.split(['.', '_']).collect();
    for (word, unit) in UNITS {
        if let Some(i) = words.iter().position(|w| w == word) {
            words.remove(i);
            let scale = if *word == "nanos" { 1e-9 } else { 1.0 };
            return (words.join("_"), Some(unit), scale);
        }
    }
    (words.join("_"), None, 1.0)
}

/// Flattens a serialized value into `(path, number)` leaves, in field order.
fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    use serde_json::Value;
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| leaves(&join(k), v, out)),
        Value::Number(n) => out.push((prefix.to_owned(), n.as_f64().unwrap_or(0.0))),
        Value::Bool(b) => out.push((prefix.to_owned(), f64::from(u8::from(*b)))),
        // Strings and lists are not counters.
        _ => {}
    }
}

/// The collector of one scrape: owns the snapshots it encodes.
#[derive(Debug)]
struct Scrape(Vec<Snapshot>);

type Labels = Vec<(&'static str, String)>;

/// Samples of one metric family, grouped so that each family is described once.
struct Family {
    name: String,
    help: String,
    unit: Option<&'static str>,
    gauge: bool,
    samples: Vec<(Labels, f64)>,
}

fn unit_of(u: &str) -> Unit {
    match u {
        "bytes" => Unit::Bytes,
        "seconds" => Unit::Seconds,
        other => Unit::Other(other.to_owned()),
    }
}

impl Scrape {
    fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = Vec::new();
        let mut add = |name: String,
                       help: String,
                       unit: Option<&'static str>,
                       gauge: bool,
                       labels: Labels,
                       v: f64| {
            match families
                .iter_mut()
                .find(|f| f.name == name && f.unit == unit)
            {
                Some(f) => f.samples.push((labels, v)),
                None => families.push(Family {
                    name,
                    help,
                    unit,
                    gauge,
                    samples: vec![(labels, v)],
                }),
            }
        };
        for s in &self.0 {
            let node = s.node.to_string();
            let mut flat = Vec::new();
            if let Ok(v) = serde_json::to_value(&s.stats) {
                leaves("", &v, &mut flat);
            }
            for (path, value) in flat {
                let (name, unit, scale) = name_of(&path);
                add(
                    name,
                    format!("quicksilver::Stats field {path}"),
                    unit,
                    GAUGES.contains(&path.as_str()),
                    vec![("node", node.clone())],
                    value * scale,
                );
            }
            let Some(map) = &s.map else { continue };
            for r in &map.regions {
                let labels = || {
                    vec![
                        ("node", node.clone()),
                        ("region", r.id.to_string()),
                        ("group", r.group.to_string()),
                    ]
                };
                add(
                    "region_members".into(),
                    "Members of the region in this node's view".into(),
                    None,
                    true,
                    labels(),
                    r.members.len() as f64,
                );
                add(
                    "region_topics".into(),
                    "Topics in the region's signature".into(),
                    None,
                    true,
                    labels(),
                    r.topics as f64,
                );
                let Some(h) = &r.health else { continue };
                for m in Metric::ALL {
                    let (name, unit, help) = health_name(m);
                    for (stat, v) in [("mean", h.mean(m)), ("max", f64::from(h.metric(m).max))] {
                        let mut l = labels();
                        l.push(("stat", stat.to_owned()));
                        add(format!("region_{name}"), help.into(), unit, true, l, v);
                    }
                }
            }
        }
        families
    }
}

/// A gossip health metric's Prometheus name, unit and help.
fn health_name(m: Metric) -> (&'static str, Option<&'static str>, &'static str) {
    match m {
        Metric::Load => (
            "load",
            Some("ratio"),
            "CPU load of the members' node threads",
        ),
        Metric::RecvRate => (
            "recv_rate",
            Some("messages_per_second"),
            "Data messages received per second by the members",
        ),
        Metric::Loss => (
            "loss",
            Some("packets_per_second"),
            "Packets lost per second (before repair) at the members",
        ),
        Metric::Repairs => (
            "repairs",
            Some("per_second"),
            "Repairs sent and received per second by the members",
        ),
        Metric::Backlog => ("backlog", None, "Queued outgoing data at the members"),
        Metric::Lag => (
            "lag",
            Some("packets"),
            "Packets the members are behind the newest known",
        ),
        Metric::Lateral => (
            "repaired_lateral",
            Some("packets_per_second"),
            "Lost packets per second rebuilt laterally at the members",
        ),
        Metric::Peer => (
            "repaired_peer",
            Some("packets_per_second"),
            "Lost packets per second served by a peer to the members",
        ),
        Metric::Sender => (
            "repaired_sender",
            Some("packets_per_second"),
            "Lost packets per second sent again by their sender to the members",
        ),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in self.families() {
            let unit = f.unit.map(unit_of);
            if f.gauge {
                let mut family = encoder.encode_descriptor(
                    &f.name,
                    &f.help,
                    unit.as_ref(),
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
                for (labels, v) in &f.samples {
                    ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
                }
            } else {
                let mut family = encoder.encode_descriptor(
                    &f.name,
                    &f.help,
                    unit.as_ref(),
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (labels, v) in &f.samples {
                    ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The Prometheus text exposition of `snapshots` (OpenMetrics flavour, `# EOF` last).
pub fn render(snapshots: Vec<Snapshot>) -> String {
    let mut registry = Registry::with_prefix("qs");
    registry.register_collector(Box::new(Scrape(snapshots)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A running metrics endpoint; dropping it stops it.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Serves `nodes`' metrics (one `node` label each) at `http://ADDR/metrics` until the
/// returned server is dropped: for a process that runs several nodes (`qs demo`). One node
/// serves itself with [`NodeBuilder::metrics`](crate::NodeBuilder::metrics).
pub fn serve(addr: SocketAddr, nodes: &[&Node]) -> Result<MetricsServer, Error> {
    MetricsServer::start_many(addr, nodes.iter().map(|n| (n.id(), n.handle())).collect())
}

impl MetricsServer {
    pub(crate) fn start(addr: SocketAddr, id: NodeId, node: Handle) -> Result<Self, Error> {
        Self::start_many(addr, vec![(id, node)])
    }

    fn start_many(addr: SocketAddr, nodes: Vec<(NodeId, Handle)>) -> Result<Self, Error> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| Error::Config(format!("metrics endpoint on {addr}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::Config("metrics endpoint is not on an IP address".into()))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("qs-metrics".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    answer(req, &nodes);
                }
            })?;
        Ok(MetricsServer {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Answers one request: `/metrics` (or `/`) with a fresh snapshot, anything else 404.
fn answer(req: tiny_http::Request, nodes: &[(NodeId, Handle)]) {
    let path = req.url().split('?').next().unwrap_or("");
    if path != "/metrics" && path != "/" {
        let _ = req.respond(tiny_http::Response::from_string("not found\n").with_status_code(404));
        return;
    }
    let mut snapshots = Vec::with_capacity(nodes.len());
    for (id, h) in nodes {
        // A node that shut down has nothing to report; the others still do.
        if let Ok(stats) = h.stats() {
            snapshots.push(Snapshot {
                node: *id,
                stats,
                map: h.cluster_map().ok(),
            });
        }
    }
    let body = render(snapshots);
    let header = tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
    )
    .expect("a valid static header");
    let _ = req.respond(tiny_http::Response::from_string(body).with_header(header));
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_move_to_the_end_of_names_and_nanoseconds_become_seconds() {
        assert_eq!(
            name_of("core.payload_bytes_sent"),
            ("core_payload_sent".into(), Some("bytes"), 1.0)
        );
        assert_eq!(
            name_of("runtime.busy_nanos"),
            ("runtime_busy".into(), Some("seconds"), 1e-9)
        );
        assert_eq!(
            name_of("core.drops.malformed"),
            ("core_drops_malformed".into(), None, 1.0)
        );
    }

    fn snapshot() -> Snapshot {
        let mut stats = Stats::default();
        stats.core.delivered = 42;
        stats.core.drops.malformed = 3;
        stats.runtime.busy_nanos = 2_500_000_000;
        stats.core.cached_bytes = 1000;
        Snapshot {
            node: NodeId(0xab),
            stats,
            map: None,
        }
    }

    #[test]
    fn every_numeric_stats_field_is_exported_with_its_value() {
        let text = render(vec![snapshot()]);
        let mut flat = Vec::new();
        leaves(
            "",
            &serde_json::to_value(snapshot().stats).unwrap(),
            &mut flat,
        );
        assert!(flat.len() > 60, "the stats have many counters");
        for (path, _) in &flat {
            let (name, _, _) = name_of(path);
            assert!(
                text.contains(&format!("qs_{name}")),
                "{path} is exported as qs_{name}*:\n{text}"
            );
        }
        let node = NodeId(0xab).to_string();
        assert!(text.contains(&format!("qs_core_delivered_total{{node=\"{node}\"}} 42")));
        assert!(text.contains(&format!(
            "qs_core_drops_malformed_total{{node=\"{node}\"}} 3"
        )));
        assert!(text.contains(&format!(
            "qs_runtime_busy_seconds_total{{node=\"{node}\"}} 2.5"
        )));
        assert!(text.contains("# TYPE qs_core_cached_bytes gauge"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn two_nodes_share_one_family_with_a_sample_each() {
        let (a, mut b) = (snapshot(), snapshot());
        b.node = NodeId(0xcd);
        let text = render(vec![a, b]);
        assert_eq!(text.matches("# TYPE qs_core_delivered counter").count(), 1);
        assert_eq!(text.matches("qs_core_delivered_total{").count(), 2);
        assert_eq!(text.matches("qs_core_delivered_bytes_total{").count(), 2);
    }
}
