//! Process-level helpers the tools and tests share (the one place outside the socket code
//! that talks to the OS directly): whether we run as root, our CPU time, signalling a child,
//! and a flag set by Ctrl-C / SIGTERM.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// True when running as root (network namespaces, `SO_RCVBUFFORCE` and nftables need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// User + system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Sends `signal` (e.g. `libc::SIGKILL`) to process `pid`; whether it was delivered.
pub fn kill(pid: u32, signal: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// A flag that becomes true on SIGINT or SIGTERM (the handler only stores to it, which is
/// async-signal-safe). Each call registers another flag; registering never fails on Linux
/// for these signals, and if it did the flag would simply never be set.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            tracing::warn!("cannot watch signal {sig}: {e}");
        }
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_can_be_signalled() {
        let spin: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(cpu_time() > Duration::ZERO);
        assert!(kill(std::process::id(), 0), "signal 0 to ourselves");
        assert!(!kill(u32::MAX, 0), "no such process");
    }
}
