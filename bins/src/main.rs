//! `qs`: the Quicksilver command-line tool.
//!
//! - `qs demo`: a whole cluster in one process on loopback multicast (no root, no setup):
//!   several nodes, overlapping subscriptions, several publishers, a live progress line and a
//!   final per-subscriber summary.
//! - `qs pub` / `qs sub`: publisher and subscriber for a real LAN (default interface: loopback);
//!   `qs sub --json` prints one JSON summary line for scripts and the testbed.
//! - `qs bench`: throughput of Quicksilver next to a raw UDP multicast blaster measured in the
//!   same run (the physical limit).
//! - `qs top`: a live view of the cluster map (members, gossip status, regions, health) from a
//!   node that joins the cluster; `qs top --json` prints one snapshot.
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod pubsub;
mod stamp;
mod top;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qs",
    version,
    about = "Reliable publish/subscribe over IP multicast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine (loopback multicast) and report delivery.
    Demo(demo::DemoArgs),
    /// Publish messages.
    Pub(pubsub::PubArgs),
    /// Subscribe and report what arrived.
    Sub(pubsub::SubArgs),
    /// Measure throughput against raw UDP multicast, in one process on loopback.
    Bench(bench::BenchArgs),
    /// Show the cluster map live: members, their gossip status and health, regions.
    Top(top::TopArgs),
}

/// Network settings shared by every command.
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// Interface address for multicast and unicast (default loopback: nothing leaves the
    /// machine unless you name an interface).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    pub iface: Ipv4Addr,
    /// Cluster name; nodes only talk within their cluster.
    #[arg(long, default_value = "quicksilver")]
    pub cluster: String,
    /// Control (discovery) multicast group and port.
    #[arg(long, default_value = "239.255.0.1:7400")]
    pub control_group: SocketAddrV4,
    /// UDP port of the region data groups.
    #[arg(long, default_value_t = 7401)]
    pub data_port: u16,
    /// Drop this fraction of incoming data packets on purpose (loss injection).
    #[arg(long, default_value_t = 0.0)]
    pub inject_loss: f64,
    /// Best-effort delivery: report losses as gaps instead of repairing them.
    #[arg(long)]
    pub best_effort: bool,
    /// Slow-receiver policy: isolate this node when it falls far behind (it loses messages,
    /// reported as gaps) instead of slowing the senders (default).
    #[arg(long)]
    pub isolate_slow: bool,
    /// A peer's unicast address (IP:PORT) to join the gossip plane through (repeatable), where
    /// multicast announcements do not reach.
    #[arg(long = "seed", value_name = "ADDR")]
    pub seeds: Vec<std::net::SocketAddr>,
}

impl NetArgs {
    /// A node builder with these settings.
    pub fn builder(&self) -> quicksilver::NodeBuilder {
        let b = quicksilver::Node::builder()
            .interface(self.iface)
            .cluster(&self.cluster)
            .control_group(self.control_group)
            .data_port(self.data_port)
            .inject_loss(self.inject_loss)
            .reliable(!self.best_effort)
            .isolate_slow(self.isolate_slow);
        self.seeds.iter().fold(b, |b, s| b.gossip_seed(*s))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Pub(a) => pubsub::run_pub(a),
        Command::Sub(a) => pubsub::run_sub(a),
        Command::Bench(a) => bench::run(a),
        Command::Top(a) => top::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qs: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
