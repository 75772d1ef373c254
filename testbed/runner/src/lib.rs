//! The testbed's scenario runner and report generator (`qs-testbed`).
//!
//! Owns: the scenario file format (TOML, [`scenario`]), running a scenario on a namespace LAN
//! built by `testbed/scripts/lan.sh` with loss from `loss.sh` and faults (kill a process at a
//! time) ([`run`]), the delivery checks of every subscriber against counts computed from the
//! scenario, `results.json` / `results.md`, and the benchmark report (`BENCHMARKS.md` and
//! plots, [`report`]) from results files and peer result lines.
//!
//! Also a standalone sweep of lateral error correction over a small deterministic model
//! ([`sim_lec`], `qs-testbed sim-lec`).
//!
//! Does not: build the LAN or inject loss itself (the scripts in `testbed/scripts` do), build
//! or measure anything inside `qs` (it runs the `qs` binary and reads its JSON lines), run the
//! peers (`testbed/peers` prints their lines), or simulate (that is `qs-sim`; [`sim_gossip`]
//! only drives it for the gossip-plane figures). Running needs root (network namespaces);
//! parsing, planning, reporting and `sim-gossip` do not.
#![forbid(unsafe_code)]

pub mod machine;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sim_gossip;
pub mod sim_lec;
