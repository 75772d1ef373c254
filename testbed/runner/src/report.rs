//! `results.md` of one run, and `qs-testbed report`: plots and `BENCHMARKS.md` from results
//! files (and peer result lines). Every number comes from those files; none is typed in.
//!
//! Besides the peers' throughput lines, the `--peers` files may carry summary lines with a
//! `kind` (written by `testbed/scripts/bench-ns.sh --jsonl` and `benches/instructions.sh
//! --json`) and peer ping-pong lines (`"role": "ping"`, `run-peer.sh --ping`):
//! `raw-limit` (blast and paced sweep), `throughput` (Quicksilver against that limit),
//! `paced-latency`, `ping` and `instructions`. Each kind gets its section; a Quicksilver/raw
//! ratio above 1.0 where Quicksilver sends one message per datagram is marked as a
//! measurement fault wherever it appears.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// Figures of one receiving host in a case: Quicksilver and the raw baseline on that host.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    /// Host index.
    pub host: u64,
    /// Subscriber process name.
    pub name: String,
    /// `qs sub` message rate.
    pub qs_rate: Option<f64>,
    /// Messages delivered.
    pub received: Option<u64>,
    /// Messages expected.
    pub expected: Option<u64>,
    /// Duplicates, out of order, gaps.
    pub dup_ooo_gaps: (u64, u64, u64),
    /// Latency percentiles p50, p90, p99, p99.9, max (µs).
    pub latency: Option<[f64; 5]>,
    /// `raw-recv` message rate on the same host.
    pub raw_rate: Option<f64>,
    /// Raw datagrams received / sent.
    pub raw_received: Option<(u64, u64)>,
    /// Raw latency p50, p99 (µs).
    pub raw_latency: Option<(f64, f64)>,
    /// Killed by a fault or a deadline.
    pub killed: Option<String>,
}

/// Figures of one case, ready for tables and plots.
#[derive(Debug, Clone, Default)]
pub struct CaseSummary {
    /// Scenario name.
    pub scenario: String,
    /// Case name.
    pub case: String,
    /// `exact` or `report`.
    pub expect: String,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
    /// Payload size of the publishers (or the raw size).
    pub size: Option<u64>,
    /// Topics of the publisher with the most.
    pub topics: Option<u64>,
    /// Loss label (`none`, `random 1%`, ...).
    pub loss: String,
    /// Random loss percent when the case has only from-the-start random loss (0 for none).
    pub loss_pct: Option<f64>,
    /// Publisher rate limit (0: unpaced).
    pub rate: Option<u64>,
    /// Per receiving host.
    pub receivers: Vec<Receiver>,
    /// Publisher send rate and MB/s (first publisher).
    pub pub_rate: Option<(f64, f64)>,
    /// Checks run and failed.
    pub checks: (usize, usize),
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = xs.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

impl CaseSummary {
    /// Mean Quicksilver rate over receivers that were not killed.
    pub fn qs_rate(&self) -> Option<f64> {
        mean(
            self.receivers
                .iter()
                .filter(|r| r.killed.is_none())
                .filter_map(|r| r.qs_rate),
        )
    }

    /// Mean raw rate over receivers.
    pub fn raw_rate(&self) -> Option<f64> {
        mean(self.receivers.iter().filter_map(|r| r.raw_rate))
    }

    /// Delivered fraction (sum received / sum expected) over receivers not killed.
    pub fn delivered(&self) -> Option<f64> {
        let (mut got, mut want) = (0u64, 0u64);
        for r in self.receivers.iter().filter(|r| r.killed.is_none()) {
            got += r.received?;
            want += r.expected?;
        }
        (want > 0).then(|| got as f64 / want as f64)
    }

    /// Gaps summed over receivers.
    pub fn gaps(&self) -> u64 {
        self.receivers.iter().map(|r| r.dup_ooo_gaps.2).sum()
    }

    /// Mean latency percentiles over receivers.
    pub fn latency(&self) -> Option<[f64; 5]> {
        let l: Vec<[f64; 5]> = self.receivers.iter().filter_map(|r| r.latency).collect();
        if l.is_empty() {
            return None;
        }
        let mut m = [0.0; 5];
        for x in &l {
            for (a, b) in m.iter_mut().zip(x) {
                *a += b / l.len() as f64;
            }
        }
        Some(m)
    }

    /// Mean raw latency p50, p99.
    pub fn raw_latency(&self) -> Option<(f64, f64)> {
        let l: Vec<(f64, f64)> = self
            .receivers
            .iter()
            .filter_map(|r| r.raw_latency)
            .collect();
        (!l.is_empty()).then(|| {
            let n = l.len() as f64;
            (
                l.iter().map(|x| x.0).sum::<f64>() / n,
                l.iter().map(|x| x.1).sum::<f64>() / n,
            )
        })
    }
}

/// The summaries of every case of a results document.
pub fn summarize(results: &Value) -> Vec<CaseSummary> {
    let scenario = results["scenario"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let mut out = Vec::new();
    for c in results["cases"].as_array().into_iter().flatten() {
        let p = &c["params"];
        let mut s = CaseSummary {
            scenario: scenario.clone(),
            case: c["name"].as_str().unwrap_or("?").to_string(),
            expect: c["expect"].as_str().unwrap_or("?").to_string(),
            skipped: c["skipped"].as_str().map(str::to_string),
            size: u(&p["size"]).or(u(&p["raw_size"])),
            topics: u(&p["topics"]),
            loss: p["loss"].as_str().unwrap_or("none").to_string(),
            loss_pct: f(&p["loss_pct"]),
            rate: u(&p["rate"]),
            ..CaseSummary::default()
        };
        let procs: Vec<&Value> = c["processes"].as_array().into_iter().flatten().collect();
        let mut by_host: BTreeMap<u64, Receiver> = BTreeMap::new();
        for pr in &procs {
            let host = u(&pr["host"]).unwrap_or(0);
            let j = &pr["json"];
            match pr["role"].as_str() {
                Some("sub") => {
                    let r = by_host.entry(host).or_default();
                    r.host = host;
                    r.name = pr["name"].as_str().unwrap_or("").to_string();
                    r.qs_rate = f(&j["rate_msgs_s"]);
                    r.received = u(&j["received"]);
                    r.expected = u(&c["expected"][&r.name]);
                    r.dup_ooo_gaps = (
                        u(&j["duplicates"]).unwrap_or(0),
                        u(&j["out_of_order"]).unwrap_or(0),
                        u(&j["gaps"]).unwrap_or(0),
                    );
                    let l = &j["latency_us"];
                    if let (Some(a), Some(b), Some(c2), Some(d), Some(e)) = (
                        f(&l["p50"]),
                        f(&l["p90"]),
                        f(&l["p99"]),
                        f(&l["p999"]),
                        f(&l["max"]),
                    ) {
                        r.latency = Some([a, b, c2, d, e]);
                    }
                    r.killed = pr["killed_by"].as_str().map(str::to_string);
                }
                Some("raw-recv") => {
                    let r = by_host.entry(host).or_default();
                    r.host = host;
                    r.raw_rate = f(&j["rate_msgs_s"]);
                    let sent = c["params"]["raw_count"].as_u64().or_else(|| {
                        procs
                            .iter()
                            .find(|q| q["role"] == "raw-send")
                            .and_then(|q| u(&q["json"]["sent"]))
                    });
                    if let (Some(g), Some(w)) = (u(&j["received"]), sent) {
                        r.raw_received = Some((g, w));
                    }
                    if let (Some(a), Some(b)) =
                        (f(&j["latency_us"]["p50"]), f(&j["latency_us"]["p99"]))
                    {
                        r.raw_latency = Some((a, b));
                    }
                }
                Some("pub") if s.pub_rate.is_none() => {
                    if let (Some(r), Some(m)) = (f(&j["rate_msgs_s"]), f(&j["mb_s"])) {
                        s.pub_rate = Some((r, m));
                    }
                }
                _ => {}
            }
        }
        s.receivers = by_host.into_values().collect();
        let checks: Vec<&Value> = c["checks"].as_array().into_iter().flatten().collect();
        s.checks = (
            checks.len(),
            checks.iter().filter(|k| k["pass"] == false).count(),
        );
        out.push(s);
    }
    out
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn rate(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.0}", v))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

fn machine_line(r: &Value) -> String {
    let m = &r["machine"];
    format!(
        "{} cores ({}), kernel {}, {} MB RAM, net.core.rmem_max {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["mem_total_mb"],
        m["rmem_max"].as_str().unwrap_or("?")
    )
}

/// The Markdown report of one run.
pub fn results_md(r: &Value) -> String {
    let mut s = String::new();
    let name = r["scenario"]["name"].as_str().unwrap_or("?");
    let _ = writeln!(s, "# qs-testbed results: {name}\n");
    if let Some(d) = r["scenario"]["description"]
        .as_str()
        .filter(|d| !d.is_empty())
    {
        let _ = writeln!(s, "{d}\n");
    }
    let _ = writeln!(
        s,
        "- date (UTC): {}",
        r["machine"]["date_utc"].as_str().unwrap_or("?")
    );
    let _ = writeln!(s, "- machine: {}", machine_line(r));
    let _ = writeln!(
        s,
        "- qs: `{}` ({})",
        r["qs"]["path"].as_str().unwrap_or("?"),
        r["qs"]["version"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "- LAN: {} hosts (namespaces on one bridge), MTU {}, prefix `{}`",
        r["lan"]["hosts"],
        r["lan"]["mtu"],
        r["lan"]["prefix"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "- command: `{}`",
        r["invocation"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "- verdict: **{}** ({} failed checks in `expect = \"exact\"` cases), {:.1} s\n",
        if r["passed"] == true { "PASS" } else { "FAIL" },
        r["enforced_failures"],
        f(&r["duration_s"]).unwrap_or(0.0)
    );
    let _ = writeln!(
        s,
        "Rates are messages per second per receiver (first to last delivery). `raw` is `qs bench \
         raw-recv` on the same host in the same run (the physical limit); `qs/raw` divides the \
         two. The raw sender puts one message in each datagram; Quicksilver may pack several small \
         messages into one, so a ratio above 1 at small sizes is packing, not a faster wire. \
         Latency is one-way (shared kernel clock), µs.\n"
    );
    let cases: Vec<&Value> = r["cases"].as_array().into_iter().flatten().collect();
    for (cs, c) in summarize(r).iter().zip(cases) {
        let _ = writeln!(
            s,
            "## Case `{}` (expect = {})\n\nsize {} B, topics {}, loss {}, publisher rate {}\n",
            cs.case,
            cs.expect,
            cs.size.map_or("–".into(), |x| x.to_string()),
            cs.topics.map_or("–".into(), |x| x.to_string()),
            cs.loss,
            match cs.rate {
                Some(0) => "unpaced".to_string(),
                Some(x) => format!("{x}/s"),
                None => "–".into(),
            }
        );
        if let Some(why) = &cs.skipped {
            let _ = writeln!(s, "SKIPPED: {why}\n");
            continue;
        }
        let _ = writeln!(
            s,
            "| receiver | raw msg/s | raw got/sent | qs msg/s | qs got/expected | dup | ooo | gaps | qs p50/p99/p99.9 µs | raw p50/p99 µs | qs/raw |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for rc in &cs.receivers {
            let who = if rc.name.is_empty() {
                format!("h{}", rc.host)
            } else {
                rc.name.clone()
            };
            let got = match (rc.received, rc.expected) {
                (Some(g), Some(e)) => format!("{g}/{e}"),
                (None, Some(e)) => format!("–/{e}"),
                _ => "–".into(),
            };
            let got = match &rc.killed {
                Some(k) => format!("{got} (killed: {k})"),
                None => got,
            };
            let _ = writeln!(
                s,
                "| {who} | {} | {} | {} | {got} | {} | {} | {} | {} | {} | {} |",
                rate(rc.raw_rate),
                rc.raw_received
                    .map_or("–".into(), |(g, w)| format!("{g}/{w}")),
                rate(rc.qs_rate),
                rc.dup_ooo_gaps.0,
                rc.dup_ooo_gaps.1,
                rc.dup_ooo_gaps.2,
                rc.latency.map_or("–".into(), |l| format!(
                    "{:.0}/{:.0}/{:.0}",
                    l[0], l[2], l[3]
                )),
                rc.raw_latency
                    .map_or("–".into(), |l| format!("{:.0}/{:.0}", l.0, l.1)),
                ratio(rc.qs_rate, rc.raw_rate),
            );
        }
        if cs.receivers.len() > 1 {
            let _ = writeln!(
                s,
                "| **mean** | {} | | {} | {} | | | {} | {} | {} | {} |",
                rate(cs.raw_rate()),
                rate(cs.qs_rate()),
                cs.delivered()
                    .map_or("–".into(), |d| format!("{:.2}%", d * 100.0)),
                cs.gaps(),
                cs.latency().map_or("–".into(), |l| format!(
                    "{:.0}/{:.0}/{:.0}",
                    l[0], l[2], l[3]
                )),
                cs.raw_latency()
                    .map_or("–".into(), |l| format!("{:.0}/{:.0}", l.0, l.1)),
                ratio(cs.qs_rate(), cs.raw_rate()),
            );
        }
        s.push('\n');
        for p in c["processes"].as_array().into_iter().flatten() {
            match p["role"].as_str() {
                Some("pub") => {
                    let j = &p["json"];
                    let _ = writeln!(
                        s,
                        "- publisher {}: sent {} at {} msg/s ({} MB/s), exit {}",
                        p["name"].as_str().unwrap_or("?"),
                        j["sent"],
                        rate(f(&j["rate_msgs_s"])),
                        opt(f(&j["mb_s"]), 1),
                        p["exit_code"]
                    );
                }
                Some("raw-send") => {
                    let _ = writeln!(
                        s,
                        "- raw sender {}: sent {} at {} msg/s",
                        p["name"].as_str().unwrap_or("?"),
                        p["json"]["sent"],
                        rate(f(&p["json"]["rate_msgs_s"]))
                    );
                }
                _ => {}
            }
        }
        for l in c["loss_counters"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "- loss on h{}: {}",
                l["host"],
                l["show"].as_str().unwrap_or("")
            );
        }
        for fl in c["faults"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "- fault: signal {} to {} at {} s",
                fl["signal"],
                fl["kill"].as_str().unwrap_or("?"),
                fl["at_s"]
            );
        }
        let failed: Vec<&Value> = c["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["pass"] == false)
            .collect();
        if failed.is_empty() {
            let _ = writeln!(s, "- checks: all {} passed", cs.checks.0);
        } else {
            let _ = writeln!(
                s,
                "- checks: {} of {} failed{}:",
                failed.len(),
                cs.checks.0,
                if cs.expect == "exact" {
                    ""
                } else {
                    " (reported, not fatal)"
                }
            );
            for k in failed {
                let got = k["got"].to_string();
                let got = if got.len() > 80 {
                    format!("{}...", &got[..80])
                } else {
                    got
                };
                let _ = writeln!(
                    s,
                    "  - {} {}: want {}, got {}{}",
                    k["process"].as_str().unwrap_or("?"),
                    k["check"].as_str().unwrap_or("?"),
                    k["want"],
                    got,
                    if k["enforced"] == true {
                        " **(fatal)**"
                    } else {
                        ""
                    }
                );
            }
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Commands\n\n```");
    for c in r["commands"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "{:>8.3}s  {}",
            f(&c["t_s"]).unwrap_or(0.0),
            c["cmd"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(s, "```");
    s
}

/// Peer result lines (`{"peer": ..., "role": "recv", "rate_msgs_s": ..., ...}`) and summary
/// lines (`{"kind": "raw-limit" | "throughput" | "paced-latency" | "ping" | "instructions", ...}`).
pub fn load_peers(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let j: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        // Peer lines name a peer; summary lines (bench-ns.sh, instructions.sh) a kind.
        if j["peer"].is_string() || j["kind"].is_string() {
            v.push(j);
        }
    }
    Ok(v)
}

/// Output formats of the plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SVG (text rendered by the viewer).
    Svg,
    /// PNG (text drawn with a TrueType font found on the machine).
    Png,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a TrueType font for the plots' text (both backends measure text with it); false
/// when none is installed (Debian: `apt-get install fonts-dejavu-core`).
fn register_plot_font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// A line chart; `x_log`/`y_log` plot log10 of the values with labels in real units, and
/// `x_cats` turns the x axis into named categories at 0, 1, 2, ...
struct Chart {
    file: String,
    title: String,
    x_label: String,
    y_label: String,
    x_log: bool,
    y_log: bool,
    x_cats: Option<Vec<String>>,
    series: Vec<Series>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {}: {e:?}", c.file);
    root.fill(&WHITE).map_err(e)?;
    let tx = |x: f64| if c.x_log { x.max(1e-9).log10() } else { x };
    let ty = |y: f64| if c.y_log { y.max(1e-9).log10() } else { y };
    let pts: Vec<(f64, f64)> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), ty(y))))
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if c.x_cats.is_some() || x1 - x0 < 1e-9 {
        x0 -= 0.5;
        x1 += 0.5;
    } else {
        let pad = (x1 - x0) * 0.05;
        x0 -= pad;
        x1 += pad;
    }
    if c.y_log {
        y0 = y0.floor();
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = 0.0;
        y1 = if y1 > 0.0 { y1 * 1.12 } else { 1.0 };
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let xfmt = |x: &f64| -> String {
        if let Some(cats) = &c.x_cats {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cats.len() {
                return cats[i as usize].clone();
            }
            return String::new();
        }
        if c.x_log {
            human(10f64.powf(*x))
        } else {
            human(*x)
        }
    };
    let yfmt = |y: &f64| {
        if c.y_log {
            human(10f64.powf(*y))
        } else {
            human(*y)
        }
    };
    let n_x = c.x_cats.as_ref().map_or(8, |v| v.len() * 2 + 1);
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .x_labels(n_x)
        .y_labels(if c.y_log { (y1 - y0) as usize + 1 } else { 8 })
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .draw()
        .map_err(e)?;
    for s in &c.series {
        let col = s.color;
        let p: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (tx(x), ty(y))).collect();
        chart
            .draw_series(LineSeries::new(p.clone(), col.stroke_width(2)))
            .map_err(e)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        chart
            .draw_series(p.iter().map(|&xy| Circle::new(xy, 4, col.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

fn write_chart(c: &Chart, out: &Path, formats: &[Format]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for fmt in formats {
        match fmt {
            Format::Svg => {
                let p = out.join(format!("{}.svg", c.file));
                draw(SVGBackend::new(&p, (900, 560)).into_drawing_area(), c)?;
                files.push(p);
            }
            Format::Png => {
                let p = out.join(format!("{}.png", c.file));
                draw(BitMapBackend::new(&p, (900, 560)).into_drawing_area(), c)?;
                files.push(p);
            }
        }
    }
    Ok(files)
}

fn label(cs: &CaseSummary) -> String {
    format!("{}/{}", cs.scenario, cs.case)
}

/// The charts the summaries support (an empty chart list when they support none).
fn charts(all: &[CaseSummary]) -> Vec<Chart> {
    let live: Vec<&CaseSummary> = all.iter().filter(|c| c.skipped.is_none()).collect();
    let mut charts = Vec::new();
    // Throughput vs size: unpaced, loss-free, single-topic cases, one line per scenario.
    let mut by_scen: BTreeMap<String, Vec<&CaseSummary>> = BTreeMap::new();
    for c in &live {
        if c.rate == Some(0) && c.loss == "none" && c.topics.unwrap_or(1) <= 1 && c.size.is_some() {
            by_scen.entry(c.scenario.clone()).or_default().push(c);
        }
    }
    let mut series = Vec::new();
    for (scen, cs) in &by_scen {
        let mut qs: Vec<(f64, f64)> = cs
            .iter()
            .filter_map(|c| Some((c.size? as f64, c.qs_rate()?)))
            .collect();
        let mut raw: Vec<(f64, f64)> = cs
            .iter()
            .filter_map(|c| Some((c.size? as f64, c.raw_rate()?)))
            .collect();
        qs.sort_by(|a, b| a.0.total_cmp(&b.0));
        raw.sort_by(|a, b| a.0.total_cmp(&b.0));
        let sizes: std::collections::BTreeSet<u64> = cs.iter().filter_map(|c| c.size).collect();
        if sizes.len() >= 2 {
            if !raw.is_empty() {
                series.push((format!("raw UDP ({scen})"), raw));
            }
            if !qs.is_empty() {
                series.push((format!("Quicksilver ({scen})"), qs));
            }
        }
    }
    if !series.is_empty() {
        let (cats, series) = categorize(series);
        charts.push(Chart {
            file: "throughput-vs-size".into(),
            title: "Throughput per receiver vs message size".into(),
            x_label: "payload bytes".into(),
            y_label: "messages/s per receiver".into(),
            x_log: false,
            y_log: false,
            x_cats: Some(cats),
            series: color(series),
        });
    }
    // Throughput vs topics: scenarios whose cases vary the topic count; the raw baseline (one
    // topic is all raw has) is drawn flat across the categories.
    let mut scen_topics: BTreeMap<&str, Vec<&&CaseSummary>> = BTreeMap::new();
    for c in live
        .iter()
        .filter(|c| c.rate == Some(0) && c.loss == "none" && c.topics.is_some())
    {
        scen_topics.entry(c.scenario.as_str()).or_default().push(c);
    }
    scen_topics.retain(|_, cs| {
        cs.iter()
            .filter_map(|c| c.topics)
            .collect::<std::collections::BTreeSet<u64>>()
            .len()
            >= 2
    });
    if !scen_topics.is_empty() {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (scen, cs) in &scen_topics {
            let size = cs.first().and_then(|c| c.size).unwrap_or(0);
            let mut qs: Vec<(f64, f64)> = cs
                .iter()
                .filter_map(|c| Some((c.topics? as f64, c.qs_rate()?)))
                .collect();
            qs.sort_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(raw) = mean(cs.iter().filter_map(|c| c.raw_rate())) {
                let flat = qs.iter().map(|(x, _)| (*x, raw)).collect();
                series.push((format!("raw UDP, {size} B ({scen})"), flat));
            }
            series.push((format!("Quicksilver, {size} B ({scen})"), qs));
        }
        let (cats, series) = categorize(series);
        charts.push(Chart {
            file: "throughput-vs-topics".into(),
            title: "Throughput per receiver vs topics (round robin, all subscribed)".into(),
            x_label: "topics".into(),
            y_label: "messages/s per receiver".into(),
            x_log: false,
            y_log: false,
            x_cats: Some(cats),
            series: color(series),
        });
    }
    // Throughput vs loss: scenarios with at least one loss case, categories in file order.
    let lossy: std::collections::BTreeSet<&str> = live
        .iter()
        .filter(|c| c.loss != "none")
        .map(|c| c.scenario.as_str())
        .collect();
    let lc: Vec<&&CaseSummary> = live
        .iter()
        .filter(|c| c.rate == Some(0) && lossy.contains(c.scenario.as_str()))
        .collect();
    let losses: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for c in &lc {
            if !v.contains(&c.loss) {
                v.push(c.loss.clone());
            }
        }
        v
    };
    if losses.len() >= 2 {
        let mut qs: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
        let mut raw: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
        for c in &lc {
            let i = losses.iter().position(|l| *l == c.loss).unwrap_or(0) as f64;
            let size = c.size.unwrap_or(0);
            if let Some(r) = c.qs_rate() {
                qs.entry(size).or_default().push((i, r));
            }
            if let Some(r) = c.raw_rate() {
                raw.entry(size).or_default().push((i, r));
            }
        }
        let mut series = Vec::new();
        for (size, v) in raw {
            series.push((format!("raw UDP, {size} B"), v));
        }
        for (size, v) in qs {
            series.push((format!("Quicksilver, {size} B"), v));
        }
        for s in &mut series {
            s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        charts.push(Chart {
            file: "throughput-vs-loss".into(),
            title: "Throughput per receiver vs frame loss".into(),
            x_label: "loss on every receiver's link".into(),
            y_label: "messages/s per receiver".into(),
            x_log: false,
            y_log: false,
            x_cats: Some(losses),
            series: color(series),
        });
    }
    // Latency percentiles.
    let lat: Vec<&&CaseSummary> = live
        .iter()
        .filter(|c| c.latency().is_some())
        .take(8)
        .collect();
    if !lat.is_empty() {
        let cats = vec![
            "p50".to_string(),
            "p90".into(),
            "p99".into(),
            "p99.9".into(),
            "max".into(),
        ];
        let series = lat
            .iter()
            .map(|c| {
                let l = c.latency().unwrap_or_default();
                (
                    label(c),
                    l.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect(),
                )
            })
            .collect();
        charts.push(Chart {
            file: "latency-percentiles".into(),
            title: "One-way latency percentiles (Quicksilver, mean over receivers)".into(),
            x_label: "percentile".into(),
            y_label: "µs (log scale)".into(),
            x_log: false,
            y_log: true,
            x_cats: Some(cats),
            series: color(series),
        });
    }
    charts
}

/// A series name and its points.
type NamedPoints = (String, Vec<(f64, f64)>);

/// Turns numeric x values into evenly spaced categories labelled with the values (sizes and
/// topic counts read better that way than on a log axis).
fn categorize(v: Vec<NamedPoints>) -> (Vec<String>, Vec<NamedPoints>) {
    let mut xs: Vec<f64> = v.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let cats = xs.iter().map(|x| human(*x)).collect();
    let v = v
        .into_iter()
        .map(|(n, p)| {
            let p = p
                .into_iter()
                .map(|(x, y)| (xs.iter().position(|v| *v == x).unwrap_or(0) as f64, y))
                .collect();
            (n, p)
        })
        .collect();
    (cats, v)
}

fn color(v: Vec<(String, Vec<(f64, f64)>)>) -> Vec<Series> {
    v.into_iter()
        .enumerate()
        .map(|(i, (name, points))| Series {
            name,
            points,
            color: COLORS[i % COLORS.len()],
        })
        .collect()
}

/// Writes the plots and `BENCHMARKS.md` into `out` from results files and peer lines.
pub fn report(
    inputs: &[PathBuf],
    peer_files: &[PathBuf],
    out: &Path,
    formats: &[Format],
) -> anyhow::Result<PathBuf> {
    let mut results = Vec::new();
    for p in inputs {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
        if !v["format"]
            .as_str()
            .is_some_and(|f| f.starts_with("qs-testbed results"))
        {
            anyhow::bail!("{}: not a qs-testbed results.json", p.display());
        }
        results.push((p.clone(), v));
    }
    let mut peers = Vec::new();
    for p in peer_files {
        peers.extend(load_peers(p)?);
    }
    // Summary lines (a `kind`) and ping-pong lines have their own sections.
    let (kinded, peers): (Vec<Value>, Vec<Value>) = peers
        .into_iter()
        .partition(|p| p.get("kind").is_some() || p["role"] == "ping");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let all: Vec<CaseSummary> = results.iter().flat_map(|(_, v)| summarize(v)).collect();
    let font = register_plot_font();
    let mut figures = Vec::new();
    if font {
        for c in charts(&all).into_iter().chain(latency_charts(&kinded)) {
            let files = write_chart(&c, out, formats)?;
            figures.push((c.title.clone(), files));
        }
    }

    let mut s = String::new();
    let _ = writeln!(s, "# Quicksilver benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `qs-testbed report` from the results files below; every number is read \
         from them (or from the peer result lines), none is typed in. Rates are messages per \
         second per receiver; `raw` is `qs bench raw-send`/`raw-recv` (plain UDP multicast \
         blasted with sendmmsg/recvmmsg, no protocol) measured on the same LAN in the same run, \
         and `qs/raw` divides Quicksilver's rate by it. On 2 cores the blast can overrun its \
         receivers or lose the CPU to other work, so it is a baseline, not the limit: the \
         honest limit (blast and paced sweep) has its own section when the run measured it, \
         and an unpaced ratio above 1.0 at one message per datagram is marked as a \
         measurement fault. The raw sender puts one message in each \
         datagram; Quicksilver may pack several small messages into one, so a ratio above 1 at \
         small sizes is packing, not a faster wire.\n"
    );
    let _ = writeln!(s, "## Runs\n");
    let _ = writeln!(
        s,
        "| results file | scenario | date (UTC) | machine | LAN | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (p, r) in &results {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} hosts, MTU {} | {} |",
            p.display(),
            r["scenario"]["name"].as_str().unwrap_or("?"),
            r["machine"]["date_utc"].as_str().unwrap_or("?"),
            machine_line(r),
            r["lan"]["hosts"],
            r["lan"]["mtu"],
            if r["passed"] == true { "pass" } else { "FAIL" }
        );
    }
    let _ = writeln!(s, "\n## Figures next to the physical limit\n");
    let _ = writeln!(
        s,
        "| scenario | case | size B | topics | loss | receivers | raw msg/s | Quicksilver msg/s | qs/raw | delivered | gaps | qs p50/p99/p99.9 µs | raw p50/p99 µs | checks failed |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in &all {
        if let Some(why) = &c.skipped {
            let _ = writeln!(
                s,
                "| {} | {} | | | | | | skipped: {why} | | | | | | |",
                c.scenario, c.case
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{}{} |",
            c.scenario,
            c.case,
            c.size.map_or("–".into(), |x| x.to_string()),
            c.topics.map_or("–".into(), |x| x.to_string()),
            c.loss,
            c.receivers.iter().filter(|r| !r.name.is_empty()).count(),
            rate(c.raw_rate()),
            match c.rate {
                Some(r) if r > 0 => format!("{} (paced {r}/s)", rate(c.qs_rate())),
                _ => rate(c.qs_rate()),
            },
            fault_mark(c.size, c.rate, ratio(c.qs_rate(), c.raw_rate())),
            c.delivered()
                .map_or("–".into(), |d| format!("{:.2}%", d * 100.0)),
            c.gaps(),
            c.latency().map_or("–".into(), |l| format!(
                "{:.0}/{:.0}/{:.0}",
                l[0], l[2], l[3]
            )),
            c.raw_latency()
                .map_or("–".into(), |l| format!("{:.0}/{:.0}", l.0, l.1)),
            c.checks.1,
            c.checks.0,
            if c.expect == "report" {
                " (report)"
            } else {
                ""
            },
        );
    }
    if !peers.is_empty() {
        let _ = writeln!(s, "\n## Peers\n");
        let _ = writeln!(
            s,
            "Peer lines as given (`--peers`); `raw msg/s` is the mean raw baseline of the results \
             cases with the same message size and loss (when the line names a `size`), `peer/raw` \
             divides by it, and `Quicksilver msg/s` is the same for Quicksilver.\n"
        );
        let _ = writeln!(s, "| peer | role | size B | loss | rate msg/s | received/expected | raw msg/s | peer/raw | Quicksilver msg/s | qs/raw |");
        let _ = writeln!(s, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
        for p in &peers {
            let size = u(&p["size"]);
            let loss = p["loss"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    f(&p["loss_pct"]).map(|x| {
                        if x == 0.0 {
                            "none".into()
                        } else {
                            format!("random {}%", trim(x))
                        }
                    })
                })
                .unwrap_or_else(|| "none".into());
            let same: Vec<&CaseSummary> = all
                .iter()
                .filter(|c| {
                    c.skipped.is_none()
                        && size.is_some()
                        && c.size == size
                        && c.loss == loss
                        && c.rate == Some(0)
                })
                .collect();
            let raw = mean(same.iter().filter_map(|c| c.raw_rate()));
            let qs = mean(same.iter().filter_map(|c| c.qs_rate()));
            let pr = f(&p["rate_msgs_s"]);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
                p["peer"].as_str().unwrap_or("?"),
                p["role"].as_str().unwrap_or("?"),
                size.map_or("–".into(), |x| x.to_string()),
                loss,
                rate(pr),
                p["received"].as_u64().map_or("–".into(), |x| x.to_string()),
                p["expected"].as_u64().map_or("–".into(), |x| x.to_string()),
                rate(raw),
                ratio(pr, raw),
                rate(qs),
                ratio(qs, raw),
            );
        }
    }
    extra_sections(&kinded, &all, &mut s);
    if !figures.is_empty() {
        let _ = writeln!(s, "\n## Plots\n");
        for (title, files) in &figures {
            let _ = writeln!(s, "### {title}\n");
            if let Some(f) = files
                .iter()
                .find(|f| f.extension().is_some_and(|e| e == "svg"))
                .or(files.first())
            {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let _ = writeln!(s, "![{title}]({name})\n");
            }
        }
    }
    if !font {
        let _ = writeln!(
            s,
            "\n(No plots: no TrueType font found in {FONT_PATHS:?}; `apt-get install \
             fonts-dejavu-core` and run the report again.)"
        );
    }
    let _ = writeln!(s, "\n## Commands\n");
    for (p, r) in &results {
        let _ = writeln!(
            s,
            "`{}` (`{}`):\n\n```",
            p.display(),
            r["invocation"].as_str().unwrap_or("?")
        );
        for c in r["commands"].as_array().into_iter().flatten() {
            let _ = writeln!(s, "{}", c["cmd"].as_str().unwrap_or(""));
        }
        let _ = writeln!(s, "```\n");
    }
    let path = out.join("BENCHMARKS.md");
    std::fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Quicksilver sends one message per datagram at this size (two do not fit its default
/// 1472-byte datagram with their headers).
fn one_per_datagram(size: u64) -> bool {
    2 * (size + 16) + 40 > 1472
}

/// The ratio cell, marked when an unpaced ratio above 1.0 at one message per datagram shows
/// that the raw baseline did not reach the path's limit.
fn fault_mark(size: Option<u64>, rate: Option<u64>, ratio: String) -> String {
    let unpaced = rate.is_none_or(|r| r == 0);
    match ratio.parse::<f64>() {
        Ok(r) if r > 1.0 && unpaced && size.is_some_and(one_per_datagram) => {
            format!("{ratio} ⚠ measurement fault")
        }
        _ => ratio,
    }
}

const PCTS: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
    ("max", 100.0),
];

/// The one-way percentiles of a ping or paced-latency line.
fn one_way(p: &Value) -> Option<[f64; 5]> {
    let o = &p["one_way_us"];
    let mut v = [0.0; 5];
    for (slot, (k, _)) in v.iter_mut().zip(PCTS) {
        *slot = f(&o[k])?;
    }
    Some(v)
}

fn system_name(p: &Value) -> String {
    p["system"]
        .as_str()
        .or_else(|| p["peer"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// Lines of `kind` (ping lines also from `"role": "ping"`).
fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|p| p["kind"] == kind || (kind == "ping" && p["role"] == "ping"))
        .collect()
}

/// The sections of the summary lines: honest raw limit, ping-pong, paced and unpaced latency,
/// instructions per message.
fn extra_sections(lines: &[Value], all: &[CaseSummary], s: &mut String) {
    let limits = of_kind(lines, "raw-limit");
    let thr = of_kind(lines, "throughput");
    if !limits.is_empty() {
        let _ = writeln!(s, "\n## The honest raw limit: blast and paced sweep\n");
        let _ = writeln!(
            s,
            "`testbed/scripts/bench-ns.sh` in the same suite run, across namespaces. The blast \
             sends as fast as the socket takes datagrams and on 2 cores overruns its receivers; \
             the sweep paces short runs at rising rates, and the limit is the highest \
             per-receiver rate whose worst receiver lost at most 0.1 % (or the blast, if it lost \
             no more). `qs/limit` divides Quicksilver's unpaced rate of the same run by it; above \
             1.0 at one message per datagram it is a measurement fault (marked).\n"
        );
        let _ = writeln!(s, "| size B | receivers | blast msg/s | blast delivered | sweep (pacing/s: msg/s, worst loss) | best paced msg/s | limit msg/s | Quicksilver msg/s | qs/limit | qs/blast |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        for l in &limits {
            let size = u(&l["size"]);
            let sweep: Vec<String> = l["sweep"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|st| {
                    format!(
                        "{}: {} ({:.2} %)",
                        st["target_per_sec"],
                        rate(f(&st["recv_per_sec"])),
                        f(&st["loss_max"]).unwrap_or(0.0) * 100.0
                    )
                })
                .collect();
            let q = thr.iter().find(|t| u(&t["size"]) == size);
            let qr = q.and_then(|t| f(&t["msgs_s"]));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size.map_or("–".into(), |x| x.to_string()),
                l["receivers"],
                rate(f(&l["blast_msgs_s"])),
                opt(f(&l["blast_delivered"]).map(|d| d * 100.0), 2) + " %",
                if sweep.is_empty() {
                    "–".into()
                } else {
                    sweep.join("; ")
                },
                rate(f(&l["best_paced"]["recv_per_sec"])),
                rate(f(&l["limit_msgs_s"])),
                rate(qr),
                fault_mark(size, None, ratio(qr, f(&l["limit_msgs_s"]))),
                ratio(qr, f(&l["blast_msgs_s"])),
            );
        }
    }
    let pings = of_kind(lines, "ping");
    if !pings.is_empty() {
        let _ = writeln!(s, "\n## Ping-pong latency (one-way = RTT/2)\n");
        let _ = writeln!(
            s,
            "One message at a time between host 1 and host 2 of a namespace LAN: raw UDP \
             multicast and Quicksilver from `qs bench ping --role ping/pong` \
             (`bench-ns.sh --ping`), Aeron and Zenoh from `run-peer.sh --ping`. Quicksilver's \
             figure runs from the application's publish to the application's receipt of the \
             echo (node-thread hand-offs included). Aeron's media driver yields when idle \
             (shared thread); Zenoh is TCP (unicast). Ratios divide by raw of the same size. \
             The machine has 2 cores shared with other work: tails are scheduling noise.\n"
        );
        let _ = writeln!(s, "| system | size B | samples | lost | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p50/raw | p99/raw |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in &pings {
            let Some(o) = one_way(p) else {
                let _ = writeln!(
                    s,
                    "| {} | {} | – | – | {} | | | | | | |",
                    system_name(p),
                    p["size"],
                    p["error"].as_str().unwrap_or("no figures")
                );
                continue;
            };
            let raw = pings
                .iter()
                .find(|r| r["system"] == "raw" && r["size"] == p["size"])
                .and_then(|r| one_way(r));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                system_name(p),
                p["size"],
                p["samples"],
                p["lost"],
                o[0],
                o[1],
                o[2],
                o[3],
                o[4],
                ratio(Some(o[0]), raw.map(|r| r[0])),
                ratio(Some(o[2]), raw.map(|r| r[2])),
            );
        }
    }
    let paced = of_kind(lines, "paced-latency");
    if !paced.is_empty() {
        let _ = writeln!(s, "\n## Paced one-way latency\n");
        let _ = writeln!(
            s,
            "1 -> K receivers across namespaces, `qs bench raw-send --rate R` beside `qs pub \
             --rate R` (`bench-ns.sh --rate R`); one-way from the send call to the application, \
             mean of the receivers' percentiles. The aim (issue 13) is p50 <= 2x and p99 <= 3x \
             raw at 10,000/s.\n"
        );
        let _ = writeln!(s, "| system | size B | rate/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p50/raw | p99/raw |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in &paced {
            let Some(o) = one_way(p) else { continue };
            let raw = paced
                .iter()
                .find(|r| r["system"] == "raw" && r["size"] == p["size"] && r["rate"] == p["rate"])
                .and_then(|r| one_way(r));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                system_name(p),
                p["size"],
                p["rate"],
                o[0],
                o[1],
                o[2],
                o[3],
                o[4],
                ratio(Some(o[0]), raw.map(|r| r[0])),
                ratio(Some(o[2]), raw.map(|r| r[2])),
            );
        }
    }
    let unpaced: Vec<&CaseSummary> = all
        .iter()
        .filter(|c| c.skipped.is_none() && c.rate == Some(0) && c.latency().is_some())
        .collect();
    if !unpaced.is_empty() {
        let _ = writeln!(s, "\n## Unpaced latency (at saturation)\n");
        let _ = writeln!(
            s,
            "The unpaced cases above, as fast as back-pressure allows: one-way latency is then \
             mostly time in the send queue (its bound, by bytes today, sets it).\n"
        );
        let _ = writeln!(s, "| scenario | case | size B | loss | Quicksilver p50/p99/p99.9 µs | raw blast p50/p99 µs |");
        let _ = writeln!(s, "|---|---|---:|---|---:|---:|");
        for c in unpaced {
            let l = c.latency().unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0}/{:.0}/{:.0} | {} |",
                c.scenario,
                c.case,
                c.size.map_or("–".into(), |x| x.to_string()),
                c.loss,
                l[0],
                l[2],
                l[3],
                c.raw_latency()
                    .map_or("–".into(), |r| format!("{:.0}/{:.0}", r.0, r.1)),
            );
        }
    }
    let instr = of_kind(lines, "instructions");
    if !instr.is_empty() {
        let _ = writeln!(s, "\n## Instructions per message\n");
        let _ = writeln!(
            s,
            "`benches/instructions.sh`: the sans-IO `NodeCore` of a publisher and its subscribers \
             driven in one process (no sockets, virtual clock) under `valgrind --tool=callgrind`; \
             the difference between two message counts divided by the extra messages. Counts do \
             not move with the machine's load: a change here is a change of the code.\n"
        );
        let _ = writeln!(
            s,
            "| size B | path | instructions/message | messages/packet | subscribers | counts |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---|");
        for p in instr {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                p["size"],
                p["path"].as_str().unwrap_or("?"),
                p["instructions_per_msg"],
                opt(f(&p["messages_per_packet"]), 2),
                p["subscribers"],
                p["counts"]
            );
        }
    }
}

/// Latency CDFs (percentile against one-way latency, log scale) of the ping-pong and paced
/// lines, each system beside raw.
fn latency_charts(lines: &[Value]) -> Vec<Chart> {
    let mut charts = Vec::new();
    for (kind, file, title) in [
        (
            "ping",
            "latency-cdf-ping",
            "Ping-pong one-way latency (RTT/2), CDF",
        ),
        (
            "paced-latency",
            "latency-cdf-paced",
            "Paced one-way latency, CDF",
        ),
    ] {
        let series: Vec<(String, Vec<(f64, f64)>)> = of_kind(lines, kind)
            .iter()
            .filter_map(|p| {
                let o = one_way(p)?;
                let pts = o
                    .iter()
                    .zip(PCTS)
                    .map(|(v, (_, q))| (v.max(0.1), q))
                    .collect();
                Some((format!("{} {} B", system_name(p), p["size"]), pts))
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        charts.push(Chart {
            file: file.into(),
            title: title.into(),
            x_label: "one-way latency µs (log)".into(),
            y_label: "percentile".into(),
            x_log: true,
            y_log: false,
            x_cats: None,
            series: color(series),
        });
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "format": "qs-testbed results 1",
            "scenario": {"name": "s", "description": ""},
            "machine": {"cores": 2, "cpu": "x", "kernel": "k", "mem_total_mb": 1, "rmem_max": "1", "date_utc": "d"},
            "qs": {"path": "/q", "version": "qs 0"},
            "lan": {"prefix": "p", "hosts": 3, "mtu": 1500},
            "invocation": "qs-testbed run s.toml",
            "duration_s": 1.0,
            "commands": [{"t_s": 0.0, "what": "lan", "cmd": "lan.sh up p 3"}],
            "passed": true,
            "enforced_failures": 0,
            "cases": [
                {"name": "a", "expect": "exact", "skipped": null,
                 "params": {"size": 64, "topics": 1, "loss": "none", "loss_pct": 0.0, "rate": 0},
                 "expected": {"sub@h2": 100},
                 "processes": [
                    {"name": "raw-recv@h2", "role": "raw-recv", "host": 2, "json": {"received": 100, "rate_msgs_s": 1000.0, "latency_us": {"p50": 20.0, "p99": 40.0}}},
                    {"name": "raw-send@h1", "role": "raw-send", "host": 1, "json": {"sent": 100, "rate_msgs_s": 1100.0}},
                    {"name": "sub@h2", "role": "sub", "host": 2, "json": {"received": 100, "duplicates": 0, "out_of_order": 0, "gaps": 0, "rate_msgs_s": 500.0,
                        "latency_us": {"p50": 30.0, "p90": 40.0, "p99": 50.0, "p999": 60.0, "max": 70.0}}},
                    {"name": "p@h1", "role": "pub", "host": 1, "json": {"sent": 100, "rate_msgs_s": 600.0, "mb_s": 0.1}}
                 ],
                 "checks": [{"pass": true}]},
                {"name": "b", "expect": "exact", "skipped": null,
                 "params": {"size": 1024, "topics": 1, "loss": "none", "loss_pct": 0.0, "rate": 0},
                 "expected": {"sub@h2": 100},
                 "processes": [
                    {"name": "raw-recv@h2", "role": "raw-recv", "host": 2, "json": {"received": 100, "rate_msgs_s": 800.0}},
                    {"name": "sub@h2", "role": "sub", "host": 2, "json": {"received": 90, "duplicates": 0, "out_of_order": 0, "gaps": 10, "rate_msgs_s": 400.0}}
                 ],
                 "checks": [{"pass": false}]}
            ]
        })
    }

    #[test]
    fn summaries_pair_each_subscriber_with_the_raw_receiver_on_its_host() {
        let s = summarize(&sample());
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].qs_rate(), Some(500.0));
        assert_eq!(s[0].raw_rate(), Some(1000.0));
        assert_eq!(s[0].receivers[0].raw_received, Some((100, 100)));
        assert_eq!(s[1].delivered(), Some(0.9));
        assert_eq!(s[1].gaps(), 10);
    }

    #[test]
    fn results_markdown_shows_the_ratio_to_the_raw_baseline() {
        let md = results_md(&sample());
        assert!(
            md.contains(
                "| sub@h2 | 1000 | 100/100 | 500 | 100/100 | 0 | 0 | 0 | 30/50/60 | 20/40 | 0.50 |"
            ),
            "{md}"
        );
        assert!(md.contains("lan.sh up p 3"));
    }

    #[test]
    fn report_writes_benchmarks_with_peers_and_an_svg_per_supported_chart() {
        let dir = std::env::temp_dir().join(format!("qs-testbed-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rp = dir.join("results.json");
        std::fs::write(&rp, sample().to_string()).unwrap();
        let pp = dir.join("peers.jsonl");
        std::fs::write(&pp, "noise\n{\"peer\":\"zeromq-epgm\",\"role\":\"recv\",\"rate_msgs_s\":700.0,\"received\":99,\"expected\":100,\"size\":64}\n").unwrap();
        let out = dir.join("out");
        let md = report(&[rp], &[pp], &out, &[Format::Svg, Format::Png]).unwrap();
        let text = std::fs::read_to_string(md).unwrap();
        if !register_plot_font() {
            println!("SKIP plot files: no TrueType font installed");
            assert!(text.contains("No plots"), "{text}");
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        assert!(
            text.contains(
                "| zeromq-epgm | recv | 64 | none | 700 | 99/100 | 1000 | 0.70 | 500 | 0.50 |"
            ),
            "{text}"
        );
        assert!(out.join("throughput-vs-size.svg").exists());
        assert!(out.join("latency-percentiles.svg").exists());
        assert!(out.join("latency-percentiles.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn summary_lines() -> String {
        [
            json!({"kind": "raw-limit", "size": 1024, "receivers": 3, "blast_msgs_s": 50000.0,
                   "blast_delivered": 0.97, "limit_msgs_s": 80000.0, "max_loss": 0.001,
                   "best_paced": {"target_per_sec": 80000, "recv_per_sec": 80000.0, "loss_max": 0.0},
                   "sweep": [{"target_per_sec": 80000, "recv_per_sec": 80000.0, "loss_max": 0.0},
                             {"target_per_sec": 100000, "recv_per_sec": 90000.0, "loss_max": 0.02}]}),
            json!({"kind": "throughput", "system": "quicksilver", "size": 1024, "msgs_s": 84000.0}),
            json!({"kind": "ping", "system": "raw", "size": 64, "samples": 10, "lost": 0,
                   "one_way_us": {"p50": 10.0, "p90": 12.0, "p99": 20.0, "p999": 30.0, "max": 40.0}}),
            json!({"peer": "aeron", "role": "ping", "size": 64, "samples": 10, "lost": 1,
                   "one_way_us": {"p50": 25.0, "p90": 30.0, "p99": 50.0, "p999": 60.0, "max": 70.0}}),
            json!({"kind": "paced-latency", "system": "raw", "size": 1024, "rate": 10000,
                   "one_way_us": {"p50": 20.0, "p90": 25.0, "p99": 40.0, "p999": 50.0, "max": 60.0}}),
            json!({"kind": "paced-latency", "system": "quicksilver", "size": 1024, "rate": 10000,
                   "one_way_us": {"p50": 38.0, "p90": 45.0, "p99": 130.0, "p999": 150.0, "max": 160.0}}),
            json!({"kind": "instructions", "size": 64, "path": "send", "instructions_per_msg": 1081,
                   "messages_per_packet": 16.0, "subscribers": 2, "counts": [2000, 12000]}),
        ]
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect()
    }

    #[test]
    fn summary_lines_get_their_sections_and_stay_out_of_the_peer_table() {
        let dir = std::env::temp_dir().join(format!("qs-testbed-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rp = dir.join("results.json");
        std::fs::write(&rp, sample().to_string()).unwrap();
        let pp = dir.join("lines.jsonl");
        std::fs::write(&pp, summary_lines()).unwrap();
        let out = dir.join("out");
        let text =
            std::fs::read_to_string(report(&[rp], &[pp], &out, &[Format::Svg]).unwrap()).unwrap();
        // The limit is the sweep's clean step, not the overrun blast nor the lossy step.
        assert!(
            text.contains("| 1024 | 3 | 50000 | 97.00 % | 80000: 80000 (0.00 %); 100000: 90000 (2.00 %) | 80000 | 80000 | 84000 | 1.05 ⚠ measurement fault | 1.68 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| aeron | 64 | 10 | 1 | 25.0 | 30.0 | 50.0 | 60.0 | 70.0 | 2.50 | 2.50 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| quicksilver | 1024 | 10000 | 38 | 45 | 130 | 150 | 160 | 1.90 | 3.25 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| 64 | send | 1081 | 16.00 | 2 | [2000,12000] |"),
            "{text}"
        );
        assert!(
            !text.contains("## Peers"),
            "summary lines are no peer lines: {text}"
        );
        if register_plot_font() {
            assert!(out.join("latency-cdf-ping.svg").exists());
            assert!(out.join("latency-cdf-paced.svg").exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ratio_above_one_is_a_fault_only_unpaced_at_one_message_per_datagram() {
        let fault = |size, rate, r: &str| fault_mark(Some(size), rate, r.into()).contains("fault");
        assert!(fault(1024, Some(0), "1.01"));
        assert!(!fault(1024, Some(0), "1.00"));
        assert!(
            !fault(1024, Some(20_000), "1.01"),
            "paced: both run at the pacing rate"
        );
        assert!(
            !fault(64, Some(0), "13.76"),
            "64 B packs several messages per datagram"
        );
        // The packing threshold: 700 B is the largest size two of which fit a datagram.
        assert!(!one_per_datagram(700) && one_per_datagram(701));
    }
}
