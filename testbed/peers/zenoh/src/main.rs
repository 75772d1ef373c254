//! `zenoh_bench`: Zenoh (peer mode) on the namespace LAN, in the shape of the other peer
//! harnesses (`../bench_common.h`): `recv`, `send`, `ping`, `pong`.
//!
//! Zenoh has no multicast data path here: every peer opens a TCP session to the publisher
//! (`--connect tcp/ADDR:PORT`, multicast scouting off so the topology is exactly that) and the
//! publisher writes each sample once **per subscriber session**: unicast fan-out, reported as
//! such next to the multicast systems. Samples are reliable (TCP) with
//! `CongestionControl::Block` (a slow subscriber blocks the publisher instead of losing data,
//! the default `Drop` would lose it). Small samples are batched by Zenoh's transport.
//! It measures; it does not tune Zenoh beyond that.

#[path = "../../common/bench.rs"]
mod bench;

use std::time::Duration;

use bench::{now_ns, stamp, stopped, Opts, RStats, END, HDR};
use zenoh::qos::CongestionControl;
use zenoh::{Config, Wait};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn session(o: &Opts) -> Res<zenoh::Session> {
    let iface = o.str_or("--iface", "127.0.0.1");
    let port = o.num("--port", 7447);
    let mut c = Config::default();
    c.insert_json5("mode", r#""peer""#)?;
    c.insert_json5("scouting/multicast/enabled", "false")?;
    c.insert_json5("listen/endpoints", &format!(r#"["tcp/{iface}:{port}"]"#))?;
    if let Some(peer) = o.get("--connect") {
        c.insert_json5("connect/endpoints", &format!(r#"["{peer}"]"#))?;
    }
    zenoh::open(c).wait()
}

fn main() -> Res<()> {
    let o = Opts::from_env();
    let stop = bench::stop_flag();
    let s = session(&o)?;
    let r = match o.mode() {
        "send" => send(&o, &s, &stop),
        "recv" => recv(&o, &s, &stop),
        "ping" => ping(&o, &s),
        "pong" => pong(&o, &s, &stop),
        m => Err(format!("zenoh_bench: unknown mode '{m}' (send|recv|ping|pong)").into()),
    };
    // The result line is out; a slow close must not hold the run.
    std::process::exit(if r.is_ok() { 0 } else { 1 });
}

fn wait_peers(s: &zenoh::Session, want: usize, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let deadline = now_ns() + 30_000_000_000;
    loop {
        let have = s.info().peers_zid().wait().count();
        if have >= want {
            return Ok(());
        }
        if now_ns() > deadline || stopped(stop) {
            return Err(format!("only {have} of {want} peers connected within 30 s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(o: &Opts, s: &zenoh::Session, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let size = o.num("--size", 1024) as usize;
    let count = o.num("--count", 100_000);
    let receivers = o.num("--receivers", 3) as usize;
    let publisher = s
        .declare_publisher("bench/data")
        .congestion_control(CongestionControl::Block)
        .wait()?;
    wait_peers(s, receivers, stop)?;
    // The subscribers' declarations travel after their sessions open.
    std::thread::sleep(Duration::from_millis(1500));
    let mut buf = vec![0u8; size.max(HDR)];
    let t0 = now_ns();
    let mut sent = 0;
    while sent < count && !stopped(stop) {
        stamp(&mut buf, sent);
        publisher.put(buf.clone()).wait()?;
        sent += 1;
    }
    let t1 = now_ns();
    bench::send_print("zenoh", sent, t0, t1, size, "\"fan_out\":\"unicast tcp\"");
    let linger = now_ns() + o.num("--linger", 30) * 1_000_000_000;
    while now_ns() < linger && !stopped(stop) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn recv(o: &Opts, s: &zenoh::Session, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let count = o.num("--count", 100_000);
    let timeout_ns = o.num("--timeout", 45) * 1_000_000_000;
    let idle_ns = o.num("--idle", 5) * 1_000_000_000;
    let sub = s.declare_subscriber("bench/data").wait()?;
    let mut st = RStats::new(count);
    let start = now_ns();
    let status = loop {
        if stopped(stop) {
            break "signal";
        }
        match sub.recv_timeout(Duration::from_millis(50))? {
            Some(sample) => {
                if st.add(&sample.payload().to_bytes()) {
                    break "complete";
                }
            }
            None => match st.idle_ns() {
                Some(i) if i > idle_ns => break "idle",
                None if now_ns() - start > timeout_ns => break "timeout",
                _ => {}
            },
        }
    };
    st.print("zenoh", status, "\"fan_out\":\"unicast tcp\"");
    Ok(())
}

fn ping(o: &Opts, s: &zenoh::Session) -> Res<()> {
    let size = o.num("--size", 64) as usize;
    let count = o.num("--count", 10_000);
    let warmup = o.num("--warmup", 500);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let publisher = s
        .declare_publisher("bench/ping")
        .congestion_control(CongestionControl::Block)
        .express(true)
        .wait()?;
    let sub = s.declare_subscriber("bench/pong").wait()?;
    wait_peers(s, 1, &stop)?;
    let mut buf = vec![0u8; size.max(HDR)];
    // Ready: the ponger's subscription has arrived once an echo comes back.
    let ready = now_ns() + 20_000_000_000;
    'ready: loop {
        stamp(&mut buf, 0);
        publisher.put(buf.clone()).wait()?;
        let until = now_ns() + 50_000_000;
        while now_ns() < until {
            if sub.recv_timeout(Duration::from_millis(10))?.is_some() {
                break 'ready;
            }
        }
        if now_ns() > ready {
            return Err("no echo from the ponger within 20 s".into());
        }
    }
    while sub.try_recv()?.is_some() {}
    let mut rtts = Vec::with_capacity(count as usize);
    let mut lost = 0;
    for i in 1..=warmup + count {
        stamp(&mut buf, i);
        publisher.put(buf.clone()).wait()?;
        let give_up = now_ns() + 200_000_000;
        let mut rtt = None;
        while rtt.is_none() && now_ns() < give_up {
            if let Some(reply) = sub.recv_timeout(Duration::from_millis(200))? {
                if let Some((seq, t)) = bench::read(&reply.payload().to_bytes()) {
                    if seq == i {
                        rtt = Some(now_ns().saturating_sub(t));
                    }
                }
            }
        }
        if i > warmup {
            match rtt {
                Some(r) => rtts.push(r),
                None => lost += 1,
            }
        }
    }
    stamp(&mut buf, END);
    publisher.put(buf.clone()).wait()?;
    std::thread::sleep(Duration::from_millis(50));
    bench::ping_print("zenoh", size, &mut rtts, lost, "\"fan_out\":\"unicast tcp\"");
    Ok(())
}

fn pong(o: &Opts, s: &zenoh::Session, stop: &std::sync::atomic::AtomicBool) -> Res<()> {
    let idle = Duration::from_secs(o.num("--idle", 30));
    let publisher = s
        .declare_publisher("bench/pong")
        .congestion_control(CongestionControl::Block)
        .express(true)
        .wait()?;
    let sub = s.declare_subscriber("bench/ping").wait()?;
    while !stopped(stop) {
        let Some(sample) = sub.recv_timeout(idle)? else {
            break;
        };
        let msg = sample.payload().to_bytes();
        if bench::read(&msg).is_some_and(|(seq, _)| seq == END) {
            break;
        }
        publisher.put(msg.into_owned()).wait()?;
    }
    Ok(())
}
