//! CPU time per thread of this process, from Linux's `/proc/self/task/*/schedstat`, so the
//! benchmark commands can state what busy-poll mode costs: the share of a core the node
//! threads (named `qs-node-*`) and the application threads used over a measured stretch.
//! It reads only this process; where `/proc` is missing every figure is 0.

use std::collections::BTreeMap;
use std::time::Instant;

/// Nanoseconds on a CPU so far of each thread of this process, by thread id, with its name.
fn threads() -> BTreeMap<u64, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let on_cpu = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (name.trim().to_owned(), on_cpu));
    }
    out
}

/// A stretch of time over which this process's CPU use is measured.
pub struct CpuMeter {
    start: Instant,
    before: BTreeMap<u64, (String, u64)>,
}

/// CPU use over a [`CpuMeter`]'s stretch, in percent of one core.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// The node threads (`qs-node-*`), summed.
    pub node_pct: f64,
    /// Every other thread (the application's), summed.
    pub app_pct: f64,
    /// Node threads of the process.
    pub node_threads: usize,
    /// CPU time of the node threads over the stretch, in nanoseconds (divided by messages,
    /// the CPU cost per message).
    pub node_ns: u64,
    /// The same for the other threads.
    pub app_ns: u64,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start() -> CpuMeter {
        CpuMeter {
            start: Instant::now(),
            before: threads(),
        }
    }

    /// Nanoseconds since the start.
    pub fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// CPU use since the start (threads started meanwhile count from zero).
    pub fn stop(&self) -> CpuUse {
        let wall = self.start.elapsed().as_nanos().max(1) as f64;
        let mut u = CpuUse::default();
        for (tid, (name, on_cpu)) in threads() {
            let was = self.before.get(&tid).map_or(0, |(_, n)| *n);
            let ns = on_cpu.saturating_sub(was);
            let pct = ns as f64 / wall * 100.0;
            if name.starts_with("qs-node") {
                u.node_pct += pct;
                u.node_ns += ns;
                u.node_threads += 1;
            } else {
                u.app_pct += pct;
                u.app_ns += ns;
            }
        }
        u
    }
}
