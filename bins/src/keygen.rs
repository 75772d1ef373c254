//! `qs keygen`: writes cluster key files. Without options a new cluster's (a random key of
//! epoch 1, the cluster id derived from it); with `--add` an existing file plus its next key
//! (nodes switch to it by themselves), with `--promote`/`--retire` the manual steps (see
//! the README's key section). Always to
//! stdout, so the operator chooses where the secret goes (`umask 077; qs keygen > FILE`).
//! It does not distribute keys nor tell running nodes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use quicksilver::KeyRing;

/// `qs keygen` options.
#[derive(Args, Debug)]
#[group(multiple = false)]
pub struct KeygenArgs {
    /// FILE's key plus a new one of the next epoch. Nodes given this file (at start, or by
    /// SIGHUP with `--key-file`) open with both and switch to the new key by themselves once
    /// every member holds it; the old one is retired 30 s later.
    #[arg(long, value_name = "FILE")]
    add: Option<PathBuf>,
    /// Manual rotation step 2: FILE's newest key seals, the older one still opens (nodes do
    /// this by themselves once every member holds the newest key).
    #[arg(long, value_name = "FILE")]
    promote: Option<PathBuf>,
    /// Manual rotation step 3: FILE's sealing key alone.
    #[arg(long, value_name = "FILE")]
    retire: Option<PathBuf>,
}

fn random_key() -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    // The OS's generator (getrandom(2)): a key must not come from a seeded Prng.
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(bytes)
}

fn load(path: &PathBuf) -> anyhow::Result<KeyRing> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    KeyRing::parse(&text).with_context(|| format!("in the key file {}", path.display()))
}

/// Prints the key file asked for.
pub fn run(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    let ring = if let Some(p) = &a.add {
        load(p)?.add_next(random_key()?)
    } else if let Some(p) = &a.promote {
        load(p)?.promote()
    } else if let Some(p) = &a.retire {
        load(p)?.retire()
    } else {
        KeyRing::generate(random_key()?)
    };
    std::io::stdout().write_all(ring.to_file().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
