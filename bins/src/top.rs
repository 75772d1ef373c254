//! `qs top`: the cluster map as one node sees it. The command owns its own node (same
//! `--cluster`, `--iface` and groups as `qs pub`/`qs sub`, subscribing nothing) that joins the
//! gossip plane, and shows what that node learns: members with their gossip status and health,
//! regions with their members and roll-up, and the cluster aggregate.
//!
//! - `qs top`: a live terminal view redrawn every `--interval` (ANSI home + clear, no TUI
//!   crate); stops on Ctrl-C (or SIGTERM) or after `--duration` seconds. When stdout is not a
//!   terminal the frames are printed one after another instead.
//! - `qs top --json`: lets gossip converge for `--wait-secs`, prints one JSON snapshot
//!   (members with every field, status as a lowercase string; regions; cluster aggregate; the
//!   wall-clock time it was taken) and exits.
//!
//! Either way the node leaves gracefully at the end, so the others see it as `left`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use qs_gossip::{Aggregate, Metric, NodeHealth, Status};
use quicksilver::core::{ClusterMap, MemberView, RegionView};
use quicksilver::{Node, RegionId};
use serde_json::{json, Value};

use crate::NodeOpts as NetArgs;

/// `qs top` options.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Seconds between redraws of the live view.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
    /// Stop the live view after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Print one JSON snapshot after `--wait-secs` and exit (no live view).
    #[arg(long)]
    pub json: bool,
    /// With `--json`: seconds to let discovery and gossip converge before the snapshot.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub wait_secs: f64,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Set by SIGINT/SIGTERM (so the node still leaves gracefully): stop at the next check.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn stopped() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// A positive, finite number of seconds as a duration (`what` names the option in errors).
fn seconds(what: &str, secs: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    let ok = secs.is_finite() && (secs > 0.0 || (allow_zero && secs == 0.0));
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if ok => Ok(d),
        _ => bail!(
            "{what} must be a {} number of seconds, not {secs}",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        ),
    }
}

/// Sleeps `d` in short steps; returns `false` early when a stop signal arrived.
fn sleep_unless_stopped(d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

pub fn run(a: TopArgs) -> anyhow::Result<ExitCode> {
    let interval = seconds("--interval", a.interval, false)?;
    let wait = seconds("--wait-secs", a.wait_secs, true)?;
    let duration = a
        .duration
        .map(|d| seconds("--duration", d, true))
        .transpose()?;
    STOP.get_or_init(qs_runtime::os::interrupt_flag);
    let node = a.net.builder()?.build().context("starting the node")?;
    let result = if a.json {
        snapshot(&node, &a.net, wait)
    } else {
        live(&node, &a.net, interval, duration)
    };
    let left = node.shutdown().context("shutting the node down");
    let code = result?;
    left?;
    Ok(code)
}

/// `--json`: one snapshot after `wait`.
fn snapshot(node: &Node, net: &NetArgs, wait: Duration) -> anyhow::Result<ExitCode> {
    if !sleep_unless_stopped(wait) {
        bail!("interrupted before the snapshot");
    }
    let map = node.cluster_map().context("reading the cluster map")?;
    let mut v = map_json(&map, net);
    // When the snapshot was taken (scripts time events by it, not by when the process ends).
    v["unix_ms"] = json!(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64));
    println!("{v}");
    Ok(ExitCode::SUCCESS)
}

/// The live view, until a signal or `duration`.
fn live(
    node: &Node,
    net: &NetArgs,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    if tty {
        // Clear once; later frames go home and overwrite (less flicker than clearing).
        write!(out, "\x1b[2J")?;
    }
    loop {
        let map = node.cluster_map().context("reading the cluster map")?;
        let frame = render(&map, net, start.elapsed());
        if tty {
            let mut s = String::from("\x1b[H");
            for line in frame.lines() {
                s.push_str(line);
                s.push_str("\x1b[K\n");
            }
            s.push_str("\x1b[J");
            out.write_all(s.as_bytes())?;
        } else {
            writeln!(out, "{frame}")?;
        }
        out.flush()?;
        let mut next = interval;
        if let Some(d) = duration {
            let left = d.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            next = next.min(left);
        }
        if !sleep_unless_stopped(next) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Gossip's verdict as a lowercase word (`unknown`: only heard of by multicast announcement).
fn status_name(s: Option<Status>) -> &'static str {
    match s {
        Some(Status::Alive) => "alive",
        Some(Status::Suspect) => "suspect",
        Some(Status::Down) => "down",
        Some(Status::Left) => "left",
        None => "unknown",
    }
}

/// The metric's name in JSON and headers.
fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Load => "load",
        Metric::RecvRate => "recv_rate",
        Metric::Loss => "loss",
        Metric::Repairs => "repairs",
        Metric::Backlog => "backlog",
        Metric::Lag => "lag",
    }
}

/// The first 8 hex digits of a region id (enough to tell regions apart on screen).
fn short_region(r: RegionId) -> String {
    let s = r.to_string();
    s[..8.min(s.len())].to_owned()
}

/// A rate or count, compact: `0`, `3.5`, `812`, `12.3k`, `4.1M`.
fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 100.0 {
        format!("{v:.1}")
    } else if a < 10_000.0 {
        format!("{v:.0}")
    } else if a < 10_000_000.0 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{:.1}M", v / 1e6)
    }
}

/// Members per status word, in a fixed order.
fn status_counts(map: &ClusterMap) -> [(&'static str, usize); 5] {
    let mut c = [
        ("alive", 0),
        ("suspect", 0),
        ("down", 0),
        ("left", 0),
        ("unknown", 0),
    ];
    for m in &map.members {
        let name = status_name(m.status);
        if let Some(e) = c.iter_mut().find(|(n, _)| *n == name) {
            e.1 += 1;
        }
    }
    c
}

/// The live view's text (no escape codes).
fn render(map: &ClusterMap, net: &NetArgs, up: Duration) -> String {
    let mut s = String::new();
    let me = map.members.iter().find(|m| m.id == map.me);
    let _ = writeln!(
        s,
        "qs top  cluster {:?}  node {}{}  up {:.0} s  (Ctrl-C to quit)",
        net.cluster_name(),
        map.me,
        me.map(|m| format!(" ({})", m.addr)).unwrap_or_default(),
        up.as_secs_f64()
    );
    let counts = status_counts(map)
        .iter()
        .map(|(n, c)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "members {}: {counts}   regions {}",
        map.members.len(),
        map.regions.len()
    );
    match &map.cluster {
        Some(a) => {
            let _ = writeln!(s, "cluster health over {} nodes (mean/max):", a.count);
            let _ = writeln!(
                s,
                "  recv/s {}  loss/s {}  repairs/s {}  lag {}  backlog {}  load {}",
                mean_max(a, Metric::RecvRate),
                mean_max(a, Metric::Loss),
                mean_max(a, Metric::Repairs),
                mean_max(a, Metric::Lag),
                mean_max(a, Metric::Backlog),
                mean_max(a, Metric::Load),
            );
        }
        None => {
            let _ = writeln!(s, "cluster health: not known yet");
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  {:<16} {:<21} {:<7} {:>10} {:<8} {:>6} {:>8} {:>7} {:>8} {:>7} {:>8}  UNREACHABLE",
        "MEMBER",
        "ADDRESS",
        "STATUS",
        "INC",
        "REGION",
        "TOPICS",
        "RECV/S",
        "LOSS/S",
        "REPAIR/S",
        "LAG",
        "BACKLOG"
    );
    for m in &map.members {
        member_row(&mut s, m, m.id == map.me);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  {:<16} {:<15} {:>6} {:>7}  {:<16} {:>11} {:>11}",
        "REGION", "GROUP", "TOPICS", "MEMBERS", "LEADER", "MEAN RECV/S", "MEAN LOSS/S"
    );
    if map.regions.is_empty() {
        let _ = writeln!(s, "  (no regions: nobody subscribes anything yet)");
    }
    for r in &map.regions {
        region_row(&mut s, r);
    }
    s
}

/// `mean/max` of one metric (load, a fraction, with two decimals).
fn mean_max(a: &Aggregate, m: Metric) -> String {
    let (mean, max) = (a.mean(m), f64::from(a.metric(m).max));
    if m == Metric::Load {
        format!("{mean:.2}/{max:.2}")
    } else {
        format!("{}/{}", num(mean), num(max))
    }
}

fn member_row(s: &mut String, m: &MemberView, me: bool) {
    let h = m.health.as_ref();
    let hv = |f: fn(&NodeHealth) -> f32| h.map_or_else(|| "-".into(), |h| num(f64::from(f(h))));
    let unreachable = if m.unreachable.is_empty() {
        "-".to_owned()
    } else {
        m.unreachable
            .iter()
            .map(|r| short_region(*r))
            .collect::<Vec<_>>()
            .join(",")
    };
    let _ = writeln!(
        s,
        "{} {:<16} {:<21} {:<7} {:>10} {:<8} {:>6} {:>8} {:>7} {:>8} {:>7} {:>8}  {}",
        if me { '*' } else { ' ' },
        m.id.to_string(),
        m.addr.to_string(),
        status_name(m.status),
        m.incarnation,
        m.region.map_or_else(|| "-".into(), short_region),
        m.topics,
        hv(|h| h.recv_rate),
        hv(|h| h.loss),
        hv(|h| h.repairs),
        hv(|h| h.lag),
        hv(|h| h.backlog),
        unreachable
    );
}

fn region_row(s: &mut String, r: &RegionView) {
    let agg = |m: Metric| {
        r.health
            .as_ref()
            .map_or_else(|| "-".into(), |a| num(a.mean(m)))
    };
    let _ = writeln!(
        s,
        "  {:<16} {:<15} {:>6} {:>7}  {:<16} {:>11} {:>11}",
        r.id.to_string(),
        r.group.to_string(),
        r.topics,
        r.members.len(),
        r.members
            .first()
            .map_or_else(|| "-".into(), ToString::to_string),
        agg(Metric::RecvRate),
        agg(Metric::Loss),
    );
}

fn health_json(h: &NodeHealth) -> Value {
    let mut o = serde_json::Map::new();
    for m in Metric::ALL {
        o.insert(metric_name(m).into(), json!(h.value(m)));
    }
    Value::Object(o)
}

fn aggregate_json(a: &Aggregate) -> Value {
    let mut metrics = serde_json::Map::new();
    for m in Metric::ALL {
        let s = a.metric(m);
        metrics.insert(
            metric_name(m).into(),
            json!({
                "min": s.min,
                "max": s.max,
                "sum": s.sum,
                "mean": a.mean(m),
                "worst": s.worst.to_string(),
            }),
        );
    }
    json!({ "count": a.count, "metrics": metrics })
}

/// The snapshot `qs top --json` prints.
fn map_json(map: &ClusterMap, net: &NetArgs) -> Value {
    let members: Vec<Value> = map
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id.to_string(),
                "addr": m.addr.to_string(),
                "me": m.id == map.me,
                "status": status_name(m.status),
                "incarnation": m.incarnation,
                "region": m.region.map(|r| r.to_string()),
                "topics": m.topics,
                "health": m.health.as_ref().map(health_json),
                "unreachable": m.unreachable.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let regions: Vec<Value> = map
        .regions
        .iter()
        .map(|r| {
            json!({
                "id": r.id.to_string(),
                "group": r.group.to_string(),
                "topics": r.topics,
                "members": r.members.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "leader": r.members.first().map(ToString::to_string),
                "health": r.health.as_ref().map(aggregate_json),
            })
        })
        .collect();
    let counts: serde_json::Map<String, Value> = status_counts(map)
        .iter()
        .map(|(n, c)| ((*n).to_owned(), json!(c)))
        .collect();
    json!({
        "cluster_name": net.cluster_name(),
        "me": map.me.to_string(),
        "counts": counts,
        "members": members,
        "regions": regions,
        "cluster": map.cluster.as_ref().map(aggregate_json),
    })
}
