//! `qs`: the Quicksilver command-line tool.
//!
//! - `qs demo`: a whole cluster in one process on loopback multicast (no root, no setup):
//!   several nodes, overlapping subscriptions, several publishers, a live progress bar and a
//!   final per-subscriber table.
//! - `qs pub` / `qs sub`: publish lines of text (stdin or `--message`) and print what arrives,
//!   by hand across terminals or hosts; with `--count` the publisher sends stamped benchmark
//!   messages and `qs sub --json` prints one JSON summary line for scripts and the testbed.
//! - `qs doctor`: checks that a node can run on an interface (buffers, MTU, multicast route and
//!   loopback, reverse-path filter, firewall), each check with its fix.
//! - `qs bench`: throughput of Quicksilver next to a raw UDP multicast blaster measured in the
//!   same run (the physical limit).
//! - `qs top`: a live view of the cluster map (members, gossip status, regions, health) from a
//!   node that joins the cluster; `qs top --json` prints one snapshot.
//! - `qs keygen`: writes a new cluster key file (or a rotation step of one) to stdout.
//! - `qs config`, `qs completions`, `qs man`: the effective node options, shell completions
//!   and man pages, generated from the same clap definitions.
//!
//! Node options come from flags, `QS_*` variables and a `--config` TOML file, in that order
//! (see `config.rs`). This file parses the command line, sets up logging and dispatches; it
//! does not run nodes itself.
#![forbid(unsafe_code)]

mod bench;
mod config;
mod cpu;
mod demo;
mod doctor;
mod keygen;
mod pubsub;
mod stamp;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

pub use config::NodeOpts;

#[derive(Parser)]
#[command(
    name = "qs",
    version,
    about = "Quicksilver: reliable publish/subscribe over IP multicast",
    after_help = "First steps: `qs demo` (a cluster on this machine), then `qs sub --topic t` in one \
                  terminal and `qs pub --topic t` in another; `qs doctor` checks a real network."
)]
struct Cli {
    /// TOML file with node options (the keys are the long flag names with `_`, e.g.
    /// `cluster = "prod"`, `iface = "eth0"`); flags and QS_* variables override it.
    #[arg(long, global = true, env = "QS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax: `info`, `quicksilver=debug`) [default: warn, or
    /// RUST_LOG]
    #[arg(long, global = true, env = "QS_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "QS_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (with the span and event fields).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine (loopback multicast) and report delivery.
    Demo(demo::DemoArgs),
    /// Publish lines from stdin (or --message), or stamped benchmark messages (--count).
    Pub(pubsub::PubArgs),
    /// Subscribe and print each message (or a JSON summary with --json).
    Sub(pubsub::SubArgs),
    /// Check that a node can run here: buffers, MTU, multicast route and loopback, firewall.
    Doctor(doctor::DoctorArgs),
    /// Measure throughput against raw UDP multicast, in one process on loopback.
    Bench(bench::BenchArgs),
    /// Show the cluster map live: members, their gossip status and health, regions.
    Top(top::TopArgs),
    /// Write a new cluster key file to stdout (`qs keygen > cluster.key`), or a key-rotation
    /// step of an existing one (--add, --promote, --retire).
    Keygen(keygen::KeygenArgs),
    /// Print the node options in effect (from flags, QS_* variables and --config) as TOML.
    Config(ConfigArgs),
    /// Print a shell completion script (e.g. `qs completions bash > /etc/bash_completion.d/qs`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a man page in roff (e.g. `qs man | man -l -`, `qs man pub > qs-pub.1`).
    Man {
        /// A subcommand's page instead of the main one.
        subcommand: Option<String>,
    },
}

/// `qs config` options.
#[derive(clap::Args, Debug)]
struct ConfigArgs {
    #[command(flatten)]
    net: NodeOpts,
}

/// Installs the log subscriber on stderr.
fn init_logging(filter: Option<&str>, format: LogFormat) {
    let filter = match filter {
        Some(f) => tracing_subscriber::EnvFilter::new(f),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().with_current_span(true).init(),
    }
}

fn man_page(sub: Option<&str>) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let page = match sub {
        None => cmd,
        Some(name) => cmd
            .find_subcommand(name)
            .with_context(|| format!("no subcommand {name:?}"))?
            .clone()
            .name(format!("qs-{name}")),
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = match &cli.config {
        Some(p) => config::FileConfig::load(p)?,
        None => config::FileConfig::default(),
    };
    let format = match (cli.log_format, &file.log_format) {
        (Some(f), _) => f,
        (None, Some(f)) => LogFormat::from_str(f, true)
            .map_err(|e| anyhow::anyhow!("log_format in the config file: {e}"))?,
        (None, None) => LogFormat::Text,
    };
    init_logging(cli.log.as_deref().or(file.log.as_deref()), format);
    let f = &file.node;
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Pub(mut a) => {
            a.net = a.net.or(f);
            pubsub::run_pub(a)
        }
        Command::Sub(mut a) => {
            a.net = a.net.or(f);
            pubsub::run_sub(a)
        }
        Command::Doctor(mut a) => {
            a.net = a.net.or(f);
            doctor::run(a)
        }
        Command::Bench(a) => bench::run(a),
        Command::Top(mut a) => {
            a.net = a.net.or(f);
            top::run(a)
        }
        Command::Keygen(a) => keygen::run(a),
        Command::Config(a) => {
            print!("{}", toml::to_string(&a.net.or(f))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "qs", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { subcommand } => {
            man_page(subcommand.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qs: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
