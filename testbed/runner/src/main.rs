//! `qs-testbed`: run testbed scenarios on a namespace LAN and report the benchmarks.
//!
//! - `qs-testbed run SCENARIO.toml [--qs PATH] [--out DIR]`: results.json and results.md;
//!   exit 1 when a check of an `expect = "exact"` case fails, 2 on errors.
//! - `qs-testbed report RESULTS.json... --out DIR [--peers FILE]...`: BENCHMARKS.md and plots.
//! - `qs-testbed suite [--out DIR]`: every scenario of testbed/scenarios, then the report.
//! - `qs-testbed check SCENARIO.toml...`: validate scenarios and print expected counts.
//! - `qs-testbed sim-gossip --nodes N [--seed S] [--loss P] --json`: the gossip plane alone in
//!   the simulator; one JSON line of figures.
//! - `qs-testbed sim-lec [...]`: the lateral error correction sweep (a table; no root needed).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use qs_testbed::report::{self, Format};
use qs_testbed::run::{self, RunOptions};
use qs_testbed::scenario::Scenario;
use qs_testbed::sim_lec::{self, Model, Scheme};

#[derive(Parser)]
#[command(
    name = "qs-testbed",
    version,
    about = "Quicksilver testbed: scenario runner and benchmark reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fmt {
    Svg,
    Png,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario on a namespace LAN (root) and write results.json and results.md.
    Run {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// The qs binary (default: target/release/qs of this workspace).
        #[arg(long)]
        qs: Option<PathBuf>,
        /// Output directory (default: testbed-results/<scenario>-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Directory with lan.sh and loss.sh (default: testbed/scripts of this workspace).
        #[arg(long)]
        scripts: Option<PathBuf>,
        /// LAN prefix for lan.sh (default qsr<pid>).
        #[arg(long)]
        prefix: Option<String>,
        /// Only run this case (repeatable).
        #[arg(long = "case")]
        cases: Vec<String>,
    },
    /// Plots and BENCHMARKS.md from results files (and peer result lines).
    Report {
        /// results.json files of `qs-testbed run`.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// File of peer JSON lines ({"peer": ..., "role": "recv", "rate_msgs_s": ...}); repeatable.
        #[arg(long = "peers")]
        peers: Vec<PathBuf>,
        /// Plot formats (comma separated).
        #[arg(long, value_delimiter = ',', default_values = ["svg", "png"])]
        format: Vec<Fmt>,
    },
    /// Run every scenario of a directory (each into OUT/<name>/), then the report into OUT.
    Suite {
        /// Directory of scenario files (default: testbed/scenarios of this workspace).
        #[arg(long)]
        scenarios: Option<PathBuf>,
        /// The qs binary (default: target/release/qs of this workspace).
        #[arg(long)]
        qs: Option<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = "testbed-results/suite")]
        out: PathBuf,
        /// Peer result lines for the report (repeatable).
        #[arg(long = "peers")]
        peers: Vec<PathBuf>,
    },
    /// The gossip plane alone in the simulator: one JSON line of figures (cold start, join,
    /// spread, failure detection, quiet and busy bytes, false downs, wall time, peak RSS).
    SimGossip {
        /// Cluster size.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Simulation seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bernoulli loss per receiver, 0..1.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Print the JSON line (the only output format; progress goes to stderr otherwise).
        #[arg(long)]
        json: bool,
    },
    /// Sweep lateral error correction over a deterministic model and print a table.
    SimLec {
        /// Receivers in the region.
        #[arg(long, default_value_t = 8)]
        receivers: usize,
        /// Senders (round-robin, outside the region).
        #[arg(long, default_value_t = 2)]
        senders: usize,
        /// Data packets per case.
        #[arg(long, default_value_t = 40_000)]
        packets: u32,
        /// Aggregate data rate, packets per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u32,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Loss rates (fractions).
        #[arg(long, value_delimiter = ',', default_values = ["0", "0.001", "0.01", "0.05", "0.1"])]
        loss: Vec<f64>,
        /// Burst lengths.
        #[arg(long, value_delimiter = ',', default_values = ["1", "5", "10", "20"])]
        burst: Vec<u32>,
        /// Schemes as rRcCsSmM[-fixed] (default: a set comparing stagger and parity).
        #[arg(long, value_delimiter = ',')]
        scheme: Vec<String>,
    },
    /// Validate scenario files and print each case's processes and expected counts.
    Check {
        /// Scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

fn workspace() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qs-testbed: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Run {
            scenario,
            qs,
            out,
            scripts,
            prefix,
            cases,
        } => {
            let qs = qs.unwrap_or_else(|| workspace().join("target/release/qs"));
            if !qs.exists() {
                anyhow::bail!(
                    "{} not found: cargo build --release -p quicksilver-cli, or pass --qs PATH",
                    qs.display()
                );
            }
            let out = out.unwrap_or_else(|| {
                let stem = scenario
                    .file_stem()
                    .map_or("run".into(), |s| s.to_string_lossy().into_owned());
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from("testbed-results").join(format!("{stem}-{t}"))
            });
            let opts = RunOptions {
                scenario,
                qs,
                out: out.clone(),
                scripts: scripts.unwrap_or_else(|| workspace().join("testbed/scripts")),
                prefix,
                only: cases,
            };
            let o = run::run(&opts)?;
            println!("{}", report::results_md(&o.results));
            println!("results: {}", out.join("results.json").display());
            if o.enforced_failures > 0 {
                eprintln!(
                    "qs-testbed: FAIL: {} checks of expect = \"exact\" cases failed",
                    o.enforced_failures
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Suite {
            scenarios,
            qs,
            out,
            peers,
        } => suite(scenarios, qs, out, peers),
        Cmd::Report {
            results,
            out,
            peers,
            format,
        } => {
            let formats: Vec<Format> = format
                .iter()
                .map(|f| match f {
                    Fmt::Svg => Format::Svg,
                    Fmt::Png => Format::Png,
                })
                .collect();
            let p = report::report(&results, &peers, &out, &formats)?;
            println!("wrote {}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SimGossip {
            nodes,
            seed,
            loss,
            json,
        } => {
            let opts = qs_testbed::sim_gossip::Options {
                nodes,
                seed,
                loss,
                verbose: !json,
            };
            let r = qs_testbed::sim_gossip::run(&opts);
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SimLec {
            receivers,
            senders,
            packets,
            rate,
            seed,
            loss,
            burst,
            scheme,
        } => {
            let schemes = if scheme.is_empty() {
                sim_lec::default_schemes()
            } else {
                scheme
                    .iter()
                    .map(|s| Scheme::parse(s).with_context(|| format!("bad scheme {s:?}")))
                    .collect::<anyhow::Result<_>>()?
            };
            let model = Model {
                receivers,
                senders,
                packets,
                rate_pps: rate,
                seed,
                ..Model::default()
            };
            print!("{}", sim_lec::sweep(&model, &schemes, &loss, &burst));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { scenarios } => {
            for path in scenarios {
                let s = Scenario::load(&path)?;
                println!(
                    "{}: {} ({} hosts, {} cases)",
                    path.display(),
                    s.name,
                    s.hosts,
                    s.cases.len()
                );
                for c in &s.cases {
                    let plan = s.plan(c).with_context(|| format!("case {}", c.name))?;
                    println!("  case {} (expect {:?}):", c.name, c.expect);
                    if let Some(r) = &c.raw {
                        println!(
                            "    raw h{} -> {:?}: {} x {} B",
                            r.from, r.to, r.count, r.size
                        );
                    }
                    for p in &plan.pubs {
                        println!(
                            "    pub {}: {} x {} B on {} topics, rate {}, --subscribers {}",
                            p.name,
                            p.spec.count,
                            p.spec.size,
                            p.topics.len(),
                            p.spec.rate,
                            p.subscribers
                        );
                    }
                    for sp in &plan.subs {
                        println!(
                            "    sub {}: {} topics, expects {}",
                            sp.name,
                            sp.topics.len(),
                            sp.expected
                        );
                    }
                    for l in &c.loss {
                        println!(
                            "    loss {} on {:?} at {:?} until {:?}",
                            l.label(),
                            l.hosts,
                            l.at_s,
                            l.until_s
                        );
                    }
                    for f in &c.fault {
                        println!(
                            "    fault: signal {} to {} at {} s",
                            f.signal, f.kill, f.at_s
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn suite(
    scenarios: Option<PathBuf>,
    qs: Option<PathBuf>,
    out: PathBuf,
    peers: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let dir = scenarios.unwrap_or_else(|| workspace().join("testbed/scenarios"));
    let qs = qs.unwrap_or_else(|| workspace().join("target/release/qs"));
    if !qs.exists() {
        anyhow::bail!(
            "{} not found: cargo build --release -p quicksilver-cli, or pass --qs PATH",
            qs.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for f in &files {
        Scenario::load(f)?;
    }
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for f in &files {
        let stem = f
            .file_stem()
            .map_or("run".into(), |s| s.to_string_lossy().into_owned());
        eprintln!("qs-testbed suite: {}", f.display());
        let opts = RunOptions {
            scenario: f.clone(),
            qs: qs.clone(),
            out: out.join(&stem),
            scripts: workspace().join("testbed/scripts"),
            prefix: None,
            only: Vec::new(),
        };
        let o = run::run(&opts)?;
        if o.enforced_failures > 0 {
            failed.push(format!("{stem} ({} checks)", o.enforced_failures));
        }
        results.push(opts.out.join("results.json"));
    }
    let p = report::report(&results, &peers, &out, &[Format::Svg, Format::Png])?;
    println!("wrote {}", p.display());
    if !failed.is_empty() {
        eprintln!("qs-testbed suite: FAIL: {}", failed.join(", "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
