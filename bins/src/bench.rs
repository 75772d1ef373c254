//! `qs bench`: placeholder until the runtime's raw blaster lands.
use std::process::ExitCode;

use clap::Args;

/// `qs bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_a: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
