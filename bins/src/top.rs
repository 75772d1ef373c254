//! `qs top`: the cluster map as one node sees it. The command owns its own node (same
//! `--cluster`, `--iface` and groups as `qs pub`/`qs sub`, subscribing nothing) that joins the
//! gossip plane, and shows what that node learns: members with their gossip status and health,
//! regions with their members and roll-up, and the cluster aggregate.
//!
//! - `qs top` on a terminal: a full-screen view (ratatui over crossterm, alternate screen)
//!   redrawn every `--interval`; `q`, Esc or Ctrl-C quits, as do SIGTERM and `--duration`.
//!   When stdout is not a terminal, plain-text frames (comfy-table tables) are printed one
//!   after another instead.
//! - `qs top --json`: lets gossip converge for `--wait-secs`, prints one JSON snapshot
//!   (members with every field, status as a lowercase string; regions; cluster aggregate; the
//!   wall-clock time it was taken) and exits.
//!
//! Either way the node leaves gracefully at the end, so the others see it as `left`. This
//! file only displays; the map itself is the core's (`ClusterMap`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use comfy_table::{presets::NOTHING, Table};
use qs_gossip::{Aggregate, Metric, NodeHealth, Status};
use quicksilver::core::{ClusterMap, MemberView, RegionView};
use quicksilver::{Node, RegionId};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table as TuiTable};
use ratatui::Frame;
use serde::Serialize;

use crate::config::parse_duration;
use crate::NodeOpts;

/// `qs top` options.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Time between redraws of the live view (`500ms`, or bare seconds).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Stop the live view after this long [default: run until q or Ctrl-C]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Print one JSON snapshot after `--wait` and exit (no live view).
    #[arg(long)]
    pub json: bool,
    /// With `--json`: how long to let discovery and gossip converge before the snapshot.
    #[arg(long, alias = "wait-secs", default_value = "3s", value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Duration,
    #[command(flatten)]
    pub net: NodeOpts,
}

/// Set by SIGINT/SIGTERM (so the node still leaves gracefully): stop at the next check.
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn stopped() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::SeqCst))
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
    if a.interval.is_zero() {
        bail!("--interval must be longer than zero");
    }
    let (interval, wait, duration) = (a.interval, a.wait, a.duration);
    STOP.get_or_init(qs_runtime::os::interrupt_flag);
    let node = a.net.builder()?.build().context("starting the node")?;
    a.net.reload_key_file_on_sighup(&node)?;
    let cluster = a.net.cluster_name().to_owned();
    let result = if a.json {
        snapshot(&node, &cluster, wait)
    } else if std::io::stdout().is_terminal() {
        live(&node, &cluster, interval, duration)
    } else {
        plain(&node, &cluster, interval, duration)
    };
    let left = node.shutdown().context("shutting the node down");
    let code = result?;
    left?;
    Ok(code)
}

/// `--json`: one snapshot after `wait`.
fn snapshot(node: &Node, cluster: &str, wait: Duration) -> anyhow::Result<ExitCode> {
    if !sleep_unless_stopped(wait) {
        bail!("interrupted before the snapshot");
    }
    let map = node.cluster_map().context("reading the cluster map")?;
    // When the snapshot was taken (scripts time events by it, not by when the process ends).
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    println!(
        "{}",
        serde_json::to_string(&Snapshot::new(&map, cluster, unix_ms))?
    );
    Ok(ExitCode::SUCCESS)
}

/// Time left until `duration` (from `start`) runs out, capped at `interval`; `None` when out.
fn next_wait(start: Instant, interval: Duration, duration: Option<Duration>) -> Option<Duration> {
    match duration {
        Some(d) => {
            let left = d.saturating_sub(start.elapsed());
            (!left.is_zero()).then(|| interval.min(left))
        }
        None => Some(interval),
    }
}

/// Not a terminal: text frames one after another.
fn plain(
    node: &Node,
    cluster: &str,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        let map = node.cluster_map().context("reading the cluster map")?;
        match writeln!(out, "{}", render(&map, cluster, start.elapsed())) {
            // The reader went away (`qs top | head`): done, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            r => r?,
        }
        let Some(next) = next_wait(start, interval, duration) else {
            break;
        };
        if !sleep_unless_stopped(next) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The full-screen view on a terminal, until a key, a signal or `duration`.
fn live(
    node: &Node,
    cluster: &str,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    // ratatui::init enters raw mode and the alternate screen and restores both on panic.
    let mut terminal = ratatui::init();
    let start = Instant::now();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let map = node.cluster_map().context("reading the cluster map")?;
            terminal.draw(|f| draw(f, &map, cluster, start.elapsed()))?;
            let Some(mut left) = next_wait(start, interval, duration) else {
                return Ok(());
            };
            // Raw mode turns Ctrl-C into a key: wait for keys and signals until the next frame.
            let until = Instant::now() + left;
            loop {
                if stopped() {
                    return Ok(());
                }
                if event::poll(left.min(Duration::from_millis(50)))? {
                    if let Event::Key(k) = event::read()? {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if k.kind == KeyEventKind::Press
                            && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                        {
                            return Ok(());
                        }
                    }
                }
                left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
            }
        }
    })();
    ratatui::restore();
    result?;
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
        Metric::Lateral => "repaired_lateral",
        Metric::Peer => "repaired_peer",
        Metric::Sender => "repaired_sender",
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

/// `mean/max` of one metric (load, a fraction, with two decimals).
fn mean_max(a: &Aggregate, m: Metric) -> String {
    let (mean, max) = (a.mean(m), f64::from(a.metric(m).max));
    if m == Metric::Load {
        format!("{mean:.2}/{max:.2}")
    } else {
        format!("{}/{}", num(mean), num(max))
    }
}

/// The header lines: who, how many, cluster health.
fn header(map: &ClusterMap, cluster: &str, up: Duration) -> Vec<String> {
    let me = map.members.iter().find(|m| m.id == map.me);
    let counts = status_counts(map)
        .iter()
        .map(|(n, c)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut v = vec![
        format!(
            "qs top  cluster {cluster:?}  node {}{}  up {}",
            map.me,
            me.map(|m| format!(" ({})", m.addr)).unwrap_or_default(),
            humantime::format_duration(Duration::from_secs(up.as_secs()))
        ),
        format!(
            "members {}: {counts}   regions {}",
            map.members.len(),
            map.regions.len()
        ),
    ];
    match &map.cluster {
        Some(a) => v.push(format!(
            "cluster health over {} nodes (mean/max): recv/s {}  loss/s {}  repairs/s {}  repaired/s lateral {} peer {} sender {}  lag {}  backlog {}  load {}",
            a.count,
            mean_max(a, Metric::RecvRate),
            mean_max(a, Metric::Loss),
            mean_max(a, Metric::Repairs),
            mean_max(a, Metric::Lateral),
            mean_max(a, Metric::Peer),
            mean_max(a, Metric::Sender),
            mean_max(a, Metric::Lag),
            mean_max(a, Metric::Backlog),
            mean_max(a, Metric::Load),
        )),
        None => v.push("cluster health: not known yet".into()),
    }
    let d = &map.drops;
    v.push(format!(
        "dropped here: auth {}  replay {}  malformed {}  foreign cluster {}",
        d.auth, d.replay, d.malformed, d.foreign_cluster
    ));
    v
}

const MEMBER_HEADER: [&str; 13] = [
    "",
    "MEMBER",
    "ADDRESS",
    "STATUS",
    "INC",
    "REGION",
    "TOPICS",
    "RECV/S",
    "LOSS/S",
    "REPAIR/S",
    "LATERAL/PEER/SENDER",
    "LAG",
    "BACKLOG",
];
const REGION_HEADER: [&str; 7] = [
    "REGION",
    "GROUP",
    "TOPICS",
    "MEMBERS",
    "LEADER",
    "MEAN RECV/S",
    "MEAN LOSS/S",
];

/// One member's cells, in [`MEMBER_HEADER`] order plus the unreachable regions.
fn member_cells(m: &MemberView, me: bool) -> Vec<String> {
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
    vec![
        if me { "*" } else { "" }.into(),
        m.id.to_string(),
        m.addr.to_string(),
        status_name(m.status).into(),
        m.incarnation.to_string(),
        m.region.map_or_else(|| "-".into(), short_region),
        m.topics.to_string(),
        hv(|h| h.recv_rate),
        hv(|h| h.loss),
        hv(|h| h.repairs),
        h.map_or_else(
            || "-".into(),
            |h| {
                format!(
                    "{}/{}/{}",
                    num(f64::from(h.lateral)),
                    num(f64::from(h.peer)),
                    num(f64::from(h.sender))
                )
            },
        ),
        hv(|h| h.lag),
        hv(|h| h.backlog),
        unreachable,
    ]
}

/// One region's cells, in [`REGION_HEADER`] order.
fn region_cells(r: &RegionView) -> Vec<String> {
    let agg = |m: Metric| {
        r.health
            .as_ref()
            .map_or_else(|| "-".into(), |a| num(a.mean(m)))
    };
    vec![
        r.id.to_string(),
        r.group.to_string(),
        r.topics.to_string(),
        r.members.len().to_string(),
        r.members
            .first()
            .map_or_else(|| "-".into(), ToString::to_string),
        agg(Metric::RecvRate),
        agg(Metric::Loss),
    ]
}

/// A plain-text frame (no escape codes): what is printed when stdout is not a terminal.
fn render(map: &ClusterMap, cluster: &str, up: Duration) -> String {
    let mut s = header(map, cluster, up).join("\n");
    let mut members = Table::new();
    members.load_preset(NOTHING);
    let mut head: Vec<&str> = MEMBER_HEADER.to_vec();
    head.push("UNREACHABLE");
    members.set_header(head);
    for m in &map.members {
        members.add_row(member_cells(m, m.id == map.me));
    }
    let _ = write!(s, "\n\n{members}\n\n");
    if map.regions.is_empty() {
        s.push_str("  (no regions: nobody subscribes anything yet)\n");
    } else {
        let mut regions = Table::new();
        regions.load_preset(NOTHING).set_header(REGION_HEADER);
        for r in &map.regions {
            regions.add_row(region_cells(r));
        }
        let _ = writeln!(s, "{regions}");
    }
    s
}

/// The full-screen frame.
fn draw(f: &mut Frame, map: &ClusterMap, cluster: &str, up: Duration) {
    let rows = map.members.len() as u16;
    let [head, members, regions, foot] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(rows.min(20) + 3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let lines: Vec<Line> = header(map, cluster, up)
        .into_iter()
        .map(Line::from)
        .collect();
    f.render_widget(Paragraph::new(lines), head);

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let member_rows = map.members.iter().map(|m| {
        let style = match m.status {
            Some(Status::Alive) => Style::default(),
            Some(Status::Suspect) => Style::default().fg(Color::Yellow),
            Some(Status::Down) => Style::default().fg(Color::Red),
            Some(Status::Left) | None => Style::default().fg(Color::DarkGray),
        };
        Row::new(member_cells(m, m.id == map.me)).style(style)
    });
    let mut head_cells: Vec<&str> = MEMBER_HEADER.to_vec();
    head_cells.push("UNREACHABLE");
    let widths = [
        Constraint::Length(1),
        Constraint::Length(16),
        Constraint::Length(21),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(19),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Min(11),
    ];
    f.render_widget(
        TuiTable::new(member_rows, widths)
            .header(Row::new(head_cells).style(bold))
            .block(Block::bordered().title(" members ")),
        members,
    );
    let region_widths = [
        Constraint::Length(16),
        Constraint::Length(15),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(16),
        Constraint::Length(11),
        Constraint::Length(11),
    ];
    let title = if map.regions.is_empty() {
        " regions (none: nobody subscribes anything yet) "
    } else {
        " regions "
    };
    f.render_widget(
        TuiTable::new(
            map.regions.iter().map(|r| Row::new(region_cells(r))),
            region_widths,
        )
        .header(Row::new(REGION_HEADER).style(bold))
        .block(Block::bordered().title(title)),
        regions,
    );
    f.render_widget(
        Paragraph::new("q, Esc or Ctrl-C quits").style(Style::default().fg(Color::DarkGray)),
        foot,
    );
}

/// A metric's summary in the JSON snapshot.
#[derive(Serialize)]
struct MetricJson {
    min: f32,
    max: f32,
    sum: f64,
    mean: f64,
    worst: String,
}

/// An aggregate in the JSON snapshot: the count and one summary per metric, by name.
#[derive(Serialize)]
struct AggregateJson {
    count: u32,
    metrics: BTreeMap<&'static str, MetricJson>,
}

impl AggregateJson {
    fn new(a: &Aggregate) -> AggregateJson {
        AggregateJson {
            count: a.count,
            metrics: Metric::ALL
                .into_iter()
                .map(|m| {
                    let s = a.metric(m);
                    (
                        metric_name(m),
                        MetricJson {
                            min: s.min,
                            max: s.max,
                            sum: s.sum,
                            mean: a.mean(m),
                            worst: s.worst.to_string(),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct MemberJson {
    id: String,
    addr: String,
    me: bool,
    status: &'static str,
    incarnation: u32,
    region: Option<String>,
    topics: usize,
    health: Option<BTreeMap<&'static str, f32>>,
    unreachable: Vec<String>,
}

#[derive(Serialize)]
struct RegionJson {
    id: String,
    group: String,
    topics: usize,
    members: Vec<String>,
    leader: Option<String>,
    health: Option<AggregateJson>,
}

/// The snapshot `qs top --json` prints (ids as hex strings, statuses as lowercase words).
#[derive(Serialize)]
struct Snapshot {
    cluster_name: String,
    me: String,
    counts: BTreeMap<&'static str, usize>,
    members: Vec<MemberJson>,
    regions: Vec<RegionJson>,
    cluster: Option<AggregateJson>,
    /// This node's drops by reason (`auth`, `replay`, ...).
    drops: quicksilver::core::DropStats,
    unix_ms: u64,
}

impl Snapshot {
    fn new(map: &ClusterMap, cluster: &str, unix_ms: u64) -> Snapshot {
        Snapshot {
            cluster_name: cluster.to_owned(),
            me: map.me.to_string(),
            counts: status_counts(map).into_iter().collect(),
            members: map
                .members
                .iter()
                .map(|m| MemberJson {
                    id: m.id.to_string(),
                    addr: m.addr.to_string(),
                    me: m.id == map.me,
                    status: status_name(m.status),
                    incarnation: m.incarnation,
                    region: m.region.map(|r| r.to_string()),
                    topics: m.topics,
                    health: m.health.as_ref().map(|h| {
                        Metric::ALL
                            .into_iter()
                            .map(|x| (metric_name(x), h.value(x)))
                            .collect()
                    }),
                    unreachable: m.unreachable.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            regions: map
                .regions
                .iter()
                .map(|r| RegionJson {
                    id: r.id.to_string(),
                    group: r.group.to_string(),
                    topics: r.topics,
                    members: r.members.iter().map(ToString::to_string).collect(),
                    leader: r.members.first().map(ToString::to_string),
                    health: r.health.as_ref().map(AggregateJson::new),
                })
                .collect(),
            cluster: map.cluster.as_ref().map(AggregateJson::new),
            drops: map.drops,
            unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quicksilver::NodeId;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn map() -> ClusterMap {
        let member = |id: u64, status, region: Option<RegionId>| MemberView {
            id: NodeId(id),
            addr: format!("10.0.0.{id}:4000").parse().unwrap(),
            status,
            incarnation: 1,
            region,
            topics: usize::from(region.is_some()),
            health: None,
            unreachable: Vec::new(),
        };
        ClusterMap {
            me: NodeId(1),
            members: vec![
                member(1, Some(Status::Alive), None),
                member(2, Some(Status::Alive), Some(RegionId(0xabcd_ef12_3456))),
                member(3, Some(Status::Down), Some(RegionId(0xabcd_ef12_3456))),
            ],
            regions: vec![RegionView {
                id: RegionId(0xabcd_ef12_3456),
                group: "239.255.16.7".parse().unwrap(),
                topics: 1,
                members: vec![NodeId(2), NodeId(3)],
                health: None,
            }],
            cluster: None,
            drops: quicksilver::core::DropStats {
                auth: 7,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_live_view_draws_every_member_and_region() {
        let mut t = Terminal::new(TestBackend::new(160, 30)).unwrap();
        t.draw(|f| draw(f, &map(), "c", Duration::from_secs(5)))
            .unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for id in [NodeId(1), NodeId(2), NodeId(3)] {
            assert!(screen.contains(&id.to_string()), "{id} on screen");
        }
        assert!(screen.contains("239.255.16.7"), "the region's group");
        assert!(screen.contains("2 alive, 0 suspect, 1 down"), "the counts");
    }

    #[test]
    fn the_plain_frame_and_the_snapshot_agree_on_statuses() {
        let text = render(&map(), "c", Duration::ZERO);
        assert!(text.contains("down") && text.contains("alive"));
        let v = serde_json::to_value(Snapshot::new(&map(), "c", 7)).unwrap();
        assert_eq!(v["members"][2]["status"], "down");
        assert_eq!(v["regions"][0]["leader"], NodeId(2).to_string());
        assert_eq!(v["counts"]["alive"], 2);
        assert_eq!(v["unix_ms"], 7);
        assert_eq!(v["drops"]["auth"], 7);
        assert!(text.contains("auth 7"), "{text}");
    }

    #[test]
    fn each_member_shows_how_its_losses_were_repaired() {
        let mut m = map();
        m.members[1].health = Some(NodeHealth {
            lateral: 120.0,
            peer: 3.0,
            sender: 1.0,
            ..NodeHealth::default()
        });
        let text = render(&m, "c", Duration::ZERO);
        assert!(text.contains("LATERAL/PEER/SENDER"), "{text}");
        assert!(text.contains("120/3.0/1.0"), "{text}");
        let v = serde_json::to_value(Snapshot::new(&m, "c", 7)).unwrap();
        assert_eq!(v["members"][1]["health"]["repaired_lateral"], 120.0);
        assert_eq!(v["members"][1]["health"]["repaired_peer"], 3.0);
        assert_eq!(v["members"][1]["health"]["repaired_sender"], 1.0);
        assert!(v["members"][0]["health"].is_null());
    }
}
