//! `aeron_bench`: Aeron on the namespace LAN, in the shape of the other peer harnesses
//! (`../bench_common.h`): `recv`, `send`, `ping`, `pong`. Each process embeds its own C media
//! driver (`rusteron-media-driver`, a unique Aeron directory), so one process per namespace is
//! all a run needs. It measures; it does not tune Aeron beyond what the README says.
//!
//! - `send --iface A --group G --port P --size B --count N --receivers K [--fc min]`:
//!   publication `aeron:udp?endpoint=G:P|interface=A|ttl=1|fc=min` (the slowest receiver sets
//!   the pace, so all of them get everything), offers with the stamp, retries on
//!   back-pressure; lingers `--linger` s so NAK repairs can still be served.
//! - `recv --iface A --group G --port P --count N --timeout T --idle I`: subscription on the
//!   same channel; one JSON line at the end.
//! - `ping`/`pong`: round trips over two multicast channels (`--group` and `--pong-group`).
//!
//! Aeron's multicast data address must be odd (its control address is data + 1).

#[path = "../../common/bench.rs"]
mod bench;

use std::time::Duration;

use bench::{now_ns, stamp, stopped, Opts, RStats, END, HDR};
use rusteron_client::*;
use rusteron_media_driver::testing::EmbeddedDriver;

const STREAM: i32 = 1001;
const PONG_STREAM: i32 = 1002;
const FRAGMENTS: usize = 64;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The channel of `--group`/`--port` (or `--pong-group`/`--pong-port`: the echo channel of a
/// ping-pong gets its own port, so the two never share a socket).
fn channel(o: &Opts, group_opt: &str, default_group: &str) -> String {
    let group = o.str_or(group_opt, default_group);
    let port = if group_opt == "--pong-group" {
        o.num("--pong-port", 40466)
    } else {
        o.num("--port", 40456)
    };
    let iface = o.str_or("--iface", "127.0.0.1");
    format!("aeron:udp?endpoint={group}:{port}|interface={iface}|ttl=1")
}

fn client(dir: &str) -> Res<Aeron> {
    let ctx = AeronContext::new()?;
    ctx.set_dir(&cformat!("{dir}"))?;
    ctx.set_error_handler(Some(|code: i32, msg: &str| eprintln!("aeron error {code}: {msg}")))?;
    let aeron = Aeron::new(&ctx)?;
    aeron.start()?;
    Ok(aeron)
}

fn main() -> Res<()> {
    let o = Opts::from_env();
    let stop = bench::stop_flag();
    // The driver outlives the client (declared first, dropped last).
    let driver = EmbeddedDriver::launch()?;
    let aeron = client(driver.dir())?;
    match o.mode() {
        "send" => send(&o, &aeron, &stop),
        "recv" => recv(&o, &aeron, &stop),
        "ping" => ping(&o, &aeron, &stop),
        "pong" => pong(&o, &aeron, &stop),
        m => Err(format!("aeron_bench: unknown mode '{m}' (send|recv|ping|pong)").into()),
    }
}

fn send(o: &Opts, aeron: &Aeron, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let size = o.num("--size", 1024) as usize;
    let count = o.num("--count", 100_000);
    let fc = o.str_or("--fc", "min");
    let chan = format!("{}|fc={fc}", channel(o, "--group", "239.255.92.1"));
    let publication = aeron
        .async_add_publication(&cformat!("{chan}"), STREAM)?
        .poll_blocking(Duration::from_secs(10))?;
    // Connected = at least one receiver; give the others a moment to attach too.
    let deadline = now_ns() + 20_000_000_000;
    while !publication.is_connected() {
        if now_ns() > deadline || stopped(stop) {
            return Err("no receiver connected within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut buf = vec![0u8; size.max(HDR)];
    let t0 = now_ns();
    let mut sent = 0;
    let mut retries = 0u64;
    while sent < count && !stopped(stop) {
        stamp(&mut buf, sent);
        match publication.offer(&buf) {
            Ok(_) => sent += 1,
            Err(e) if e.is_retryable() => {
                retries += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(format!("publication failed: {e}").into()),
        }
    }
    let t1 = now_ns();
    bench::send_print(
        "aeron",
        sent,
        t0,
        t1,
        size,
        &format!("\"channel\":\"{chan}\",\"back_pressure_retries\":{retries}"),
    );
    let linger = now_ns() + o.num("--linger", 30) * 1_000_000_000;
    while now_ns() < linger && !stopped(stop) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn recv(o: &Opts, aeron: &Aeron, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let count = o.num("--count", 100_000);
    let timeout_ns = o.num("--timeout", 45) * 1_000_000_000;
    let idle_ns = o.num("--idle", 5) * 1_000_000_000;
    let chan = channel(o, "--group", "239.255.92.1");
    let sub = aeron
        .async_add_subscription(&cformat!("{chan}"), STREAM, Handlers::NONE, Handlers::NONE)?
        .poll_blocking(Duration::from_secs(10))?;
    let mut st = RStats::new(count);
    let start = now_ns();
    let mut done = false;
    let status = loop {
        let n = sub.poll_fn(
            |buf, _header| {
                if st.add(buf) {
                    done = true;
                }
            },
            FRAGMENTS,
        )?;
        if done {
            break "complete";
        }
        if stopped(stop) {
            break "signal";
        }
        if n == 0 {
            match st.idle_ns() {
                Some(i) if i > idle_ns => break "idle",
                None if now_ns() - start > timeout_ns => break "timeout",
                _ => {}
            }
            std::thread::yield_now();
        }
    };
    st.print("aeron", status, &format!("\"channel\":\"{chan}\""));
    Ok(())
}

fn ping(o: &Opts, aeron: &Aeron, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let size = o.num("--size", 64) as usize;
    let count = o.num("--count", 10_000);
    let warmup = o.num("--warmup", 500);
    let ping_chan = channel(o, "--group", "239.255.92.3");
    let pong_chan = channel(o, "--pong-group", "239.255.92.5");
    let publication = aeron
        .async_add_exclusive_publication(&cformat!("{ping_chan}"), STREAM)?
        .poll_blocking(Duration::from_secs(10))?;
    let sub = aeron
        .async_add_subscription(&cformat!("{pong_chan}"), PONG_STREAM, Handlers::NONE, Handlers::NONE)?
        .poll_blocking(Duration::from_secs(10))?;
    let deadline = now_ns() + 20_000_000_000;
    while !(publication.is_connected() && sub.image_count()? > 0) {
        if now_ns() > deadline {
            return Err("pong never connected".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut buf = vec![0u8; size.max(HDR)];
    let mut rtts = Vec::with_capacity(count as usize);
    let mut lost = 0;
    let mut lost_in_a_row = 0;
    for i in 0..warmup + count {
        if stopped(stop) || lost_in_a_row >= 20 {
            return Err(format!("ping stopped after {i} pings ({lost_in_a_row} unanswered in a row)").into());
        }
        stamp(&mut buf, i);
        loop {
            match publication.offer(&buf) {
                Ok(_) => break,
                Err(e) if e.is_retryable() => std::hint::spin_loop(),
                Err(e) => return Err(format!("publication failed: {e}").into()),
            }
        }
        let give_up = now_ns() + 200_000_000;
        let mut rtt = None;
        while rtt.is_none() && now_ns() < give_up {
            let n = sub.poll_fn(
                |reply, _| {
                    if let Some((seq, t)) = bench::read(reply) {
                        if seq == i {
                            rtt = Some(now_ns().saturating_sub(t));
                        }
                    }
                },
                FRAGMENTS,
            )?;
            if n == 0 {
                // Yield rather than spin: on a small machine the client shares cores with
                // its own media driver.
                std::thread::yield_now();
            }
        }
        if rtt.is_some() {
            lost_in_a_row = 0;
        } else {
            lost_in_a_row += 1;
        }
        if i >= warmup {
            match rtt {
                Some(r) => rtts.push(r),
                None => lost += 1,
            }
        }
    }
    stamp(&mut buf, END);
    for _ in 0..10 {
        let _ = publication.offer(&buf);
        std::thread::sleep(Duration::from_millis(5));
    }
    bench::ping_print("aeron", size, &mut rtts, lost, "\"idle\":\"yield\"");
    Ok(())
}

fn pong(o: &Opts, aeron: &Aeron, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let ping_chan = channel(o, "--group", "239.255.92.3");
    let pong_chan = channel(o, "--pong-group", "239.255.92.5");
    let idle_ns = o.num("--idle", 30) * 1_000_000_000;
    let publication = aeron
        .async_add_exclusive_publication(&cformat!("{pong_chan}"), PONG_STREAM)?
        .poll_blocking(Duration::from_secs(10))?;
    let sub = aeron
        .async_add_subscription(&cformat!("{ping_chan}"), STREAM, Handlers::NONE, Handlers::NONE)?
        .poll_blocking(Duration::from_secs(10))?;
    let mut last = now_ns();
    let mut end = false;
    let mut failed = None;
    let mut echoed = 0u64;
    while !end && !stopped(stop) && now_ns() - last < idle_ns {
        let n = sub.poll_fn(
            |msg, _| {
                if bench::read(msg).is_some_and(|(seq, _)| seq == END) {
                    end = true;
                    return;
                }
                echoed += 1;
                loop {
                    match publication.offer(msg) {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => std::hint::spin_loop(),
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
            },
            FRAGMENTS,
        )?;
        if let Some(e) = failed.take() {
            return Err(e.into());
        }
        if n > 0 {
            last = now_ns();
        } else {
            std::thread::yield_now();
        }
    }
    eprintln!("aeron_bench pong: echoed {echoed}");
    Ok(())
}
