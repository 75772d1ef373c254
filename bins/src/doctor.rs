//! `qs doctor [--iface NAME|ADDR]`: can a Quicksilver node run on this interface, and what
//! stands in the way on this host? Each check prints ✓ (fine), ⚠ (the node runs, but fix
//! this for a real network) or ✗ (the node cannot work), with the fix next to it; `ℹ` lines
//! are hints the host cannot check (switches, other hosts). Exit 0 only when no check failed.
//!
//! Checks: the interface (exists, up, IPv4, multicast), its MTU against the datagram size,
//! the kernel's socket buffer limits against what the node asks for, a multicast route, a
//! multicast loopback self-test on the interface (a datagram to a test group comes back), a
//! node self-test (two real nodes find each other and deliver a message), reverse-path
//! filtering, IGMP snooping on a bridge, and firewall rules that drop by default.
//!
//! Everything is read from `/proc`, `/sys` and real sockets on this host; the self-tests use
//! TTL 1 and a unique cluster name, so no other node is disturbed. It changes nothing.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::config::resolve_iface;
use crate::NodeOpts;

/// `qs doctor` options.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  qs doctor                 (loopback: what `qs demo` needs)\n  qs doctor --iface eth0    (a real LAN)"
)]
pub struct DoctorArgs {
    /// Print the checks as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Skip the node self-test (two nodes exchanging a message; takes about a second).
    #[arg(long)]
    pub no_node_test: bool,
    #[command(flatten)]
    pub net: NodeOpts,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// The node runs, but this should be fixed for a real network.
    Warn,
    /// The node cannot work.
    Fail,
    /// A hint this host cannot check.
    Info,
}

impl Verdict {
    fn mark(self) -> &'static str {
        match self {
            Verdict::Ok => "✓",
            Verdict::Warn => "⚠",
            Verdict::Fail => "✗",
            Verdict::Info => "ℹ",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (a short name).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// How to fix it (when not fine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, verdict: Verdict, detail: String, fix: Option<String>) -> Check {
    Check {
        name,
        verdict,
        detail,
        fix,
    }
}

fn read_sys(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn sys_num(path: &str) -> Option<u64> {
    read_sys(path)?.parse().ok()
}

/// What the node asks for (the library's defaults unless the options say otherwise).
struct Wanted {
    max_datagram: usize,
    recv_buffer: usize,
    send_buffer: usize,
    control: SocketAddrV4,
    data_port: u16,
}

fn wanted(o: &NodeOpts) -> Wanted {
    Wanted {
        max_datagram: o.max_datagram.unwrap_or(1472),
        recv_buffer: o.recv_buffer_bytes.unwrap_or(8 << 20),
        send_buffer: o.send_buffer_bytes.unwrap_or(4 << 20),
        control: o
            .control_group
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), 7400)),
        data_port: o.data_port.unwrap_or(7401),
    }
}

fn mib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", b / 1024)
    }
}

/// Runs every check on `addr` (interface `name`, when it has one).
fn run_checks(a: &DoctorArgs, name: Option<&str>, addr: Ipv4Addr, out: &mut Vec<Check>) {
    let w = wanted(&a.net);
    let loopback = addr.is_loopback();
    let dev = name.unwrap_or("?");
    let sys = |f: &str| format!("/sys/class/net/{dev}/{f}");

    // The interface itself.
    let state = read_sys(&sys("operstate")).unwrap_or_else(|| "unknown".into());
    let flags = read_sys(&sys("flags"))
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    const IFF_UP: u32 = 0x1;
    const IFF_MULTICAST: u32 = 0x1000;
    if name.is_some() && flags & IFF_UP == 0 {
        out.push(check(
            "interface",
            Verdict::Fail,
            format!("{dev} ({addr}) is down"),
            Some(format!("ip link set {dev} up")),
        ));
    } else if !loopback && flags & IFF_MULTICAST == 0 && name.is_some() {
        out.push(check(
            "interface",
            Verdict::Fail,
            format!("{dev} ({addr}) does not do multicast"),
            Some(format!("ip link set {dev} multicast on")),
        ));
    } else {
        out.push(check(
            "interface",
            Verdict::Ok,
            format!("{dev} ({addr}) is up (state {state})"),
            None,
        ));
    }

    // MTU against the datagram size: larger datagrams fragment, and one lost fragment loses
    // the whole datagram (and fills the reassembly cache under loss).
    match sys_num(&sys("mtu")) {
        Some(mtu) if mtu as usize >= w.max_datagram + 28 => out.push(check(
            "mtu",
            Verdict::Ok,
            format!("MTU {mtu} fits datagrams of {} B (+28 B of IP/UDP headers)", w.max_datagram),
            None,
        )),
        Some(mtu) => out.push(check(
            "mtu",
            Verdict::Warn,
            format!(
                "MTU {mtu} is smaller than datagrams of {} B + 28: every datagram would be fragmented",
                w.max_datagram
            ),
            Some(format!("--max-datagram {} (or QS_MAX_DATAGRAM)", mtu.saturating_sub(28))),
        )),
        None => out.push(check(
            "mtu",
            Verdict::Info,
            format!("MTU of {dev} unknown"),
            None,
        )),
    }

    // Socket buffer limits: above them the kernel silently caps the buffers (unless root
    // forces them), and a small receive buffer loses datagrams at full rate.
    for (what, key, asked, flag) in [
        ("receive", "rmem_max", w.recv_buffer, "--recv-buffer-bytes"),
        ("send", "wmem_max", w.send_buffer, "--send-buffer-bytes"),
    ] {
        let Some(max) = sys_num(&format!("/proc/sys/net/core/{key}")) else {
            continue;
        };
        let root = qs_runtime::os::is_root();
        let (verdict, detail, fix) = if max as usize >= asked {
            (
                Verdict::Ok,
                format!(
                    "net.core.{key} = {} ≥ the {} the node asks for its {what} buffers",
                    mib(max),
                    mib(asked as u64)
                ),
                None,
            )
        } else if root {
            (
                Verdict::Ok,
                format!("net.core.{key} = {} < {} asked, but as root the node forces its {what} buffers", mib(max), mib(asked as u64)),
                None,
            )
        } else {
            (
                Verdict::Warn,
                format!("net.core.{key} = {}: the kernel caps the {} {what} buffer the node asks for (datagrams are lost at full rate)", mib(max), mib(asked as u64)),
                Some(format!(
                    "sudo sysctl -w net.core.{key}={asked} (persist: echo net.core.{key}={asked} | sudo tee /etc/sysctl.d/90-quicksilver.conf), or ask for less with {flag}"
                )),
            )
        };
        out.push(check("socket_buffers", verdict, detail, fix));
    }

    // A multicast route: the node names its interface on every socket, but other tools and
    // the kernel's source choice follow the routing table.
    if !loopback {
        out.push(route_check(dev));
    }

    // The multicast loopback self-test: a datagram sent to a test group on this interface
    // must come back to a socket that joined it there.
    out.push(match multicast_self_test(addr) {
        Ok(d) => check(
            "multicast_loopback",
            Verdict::Ok,
            format!("a datagram to a test group on {addr} came back in {} µs", d.as_micros()),
            None,
        ),
        Err(e) => check(
            "multicast_loopback",
            Verdict::Fail,
            format!("multicast on {addr} does not come back: {e}"),
            Some(if loopback {
                "check that the loopback interface is up (ip link set lo up) and that no firewall drops UDP to 239.255.0.0/16".into()
            } else {
                format!("ip route add 224.0.0.0/4 dev {dev}; check the firewall for UDP to 239.255.0.0/16")
            }),
        ),
    });

    if !a.no_node_test {
        out.push(node_self_test(addr, &w));
    }

    // Reverse-path filtering: strict mode drops multicast whose source is not routed back
    // through the receiving interface (multi-homed hosts).
    let rp = |d: &str| sys_num(&format!("/proc/sys/net/ipv4/conf/{d}/rp_filter"));
    if let (Some(all), Some(this)) = (rp("all"), rp(dev)) {
        let effective = all.max(this);
        out.push(if effective == 1 && !loopback {
            check(
                "rp_filter",
                Verdict::Warn,
                format!("strict reverse-path filtering on {dev} (rp_filter = 1): multicast from sources routed via another interface is dropped"),
                Some(format!("sudo sysctl -w net.ipv4.conf.{dev}.rp_filter=2 net.ipv4.conf.all.rp_filter=2 (loose)")),
            )
        } else {
            check(
                "rp_filter",
                Verdict::Ok,
                format!("reverse-path filter {effective} on {dev}"),
                None,
            )
        });
    }

    // IGMP snooping: on a bridge this host can see it; on a switch it cannot.
    let snooping = read_sys(&sys("bridge/multicast_snooping"))
        .or_else(|| read_sys(&sys("master/bridge/multicast_snooping")));
    let querier = read_sys(&sys("bridge/multicast_querier"))
        .or_else(|| read_sys(&sys("master/bridge/multicast_querier")));
    match (snooping.as_deref(), querier.as_deref()) {
        (Some("1"), Some("0")) => out.push(check(
            "igmp_snooping",
            Verdict::Warn,
            format!("the bridge of {dev} snoops IGMP without a querier: groups stop reaching other ports after a few minutes"),
            Some("ip link set BRIDGE type bridge mcast_querier 1 (or mcast_snooping 0)".into()),
        )),
        (Some(_), _) => out.push(check(
            "igmp_snooping",
            Verdict::Ok,
            format!("bridge snooping {} with querier {}", snooping.as_deref().unwrap_or("?"), querier.as_deref().unwrap_or("?")),
            None,
        )),
        (None, _) if !loopback => out.push(check(
            "igmp_snooping",
            Verdict::Info,
            "switches with IGMP snooping forward a group only where a querier (usually the router) keeps memberships alive; without one, hosts stop hearing each other after a few minutes".into(),
            Some("enable an IGMP querier on the VLAN, or disable snooping for it".into()),
        )),
        (None, _) => {}
    }

    out.push(firewall_check(&w));
}

/// Whether the routing table sends 239.255.0.0/16 out of `dev` (or has a default route).
fn route_check(dev: &str) -> Check {
    // /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ... (hex, host
    // byte order on little-endian machines).
    let text = read_sys("/proc/net/route").unwrap_or_default();
    let target = u32::from(Ipv4Addr::new(239, 255, 0, 1));
    let mut best: Option<(u32, String)> = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // Host byte order in the file: the address's bytes are the number's memory bytes.
        let ip = |x: u32| u32::from(Ipv4Addr::from(x.to_ne_bytes()));
        let (dst, mask) = (ip(dst), ip(mask));
        if target & mask == dst & mask
            && best
                .as_ref()
                .is_none_or(|(m, _)| mask.count_ones() > m.count_ones())
        {
            best = Some((mask, f[0].to_owned()));
        }
    }
    match best {
        Some((_, d)) if d == dev => check(
            "multicast_route",
            Verdict::Ok,
            format!("239.255.0.0/16 is routed out of {dev}"),
            None,
        ),
        Some((_, d)) => check(
            "multicast_route",
            Verdict::Warn,
            format!("239.255.0.0/16 is routed out of {d}, not {dev} (the node names {dev} itself, other tools may not)"),
            Some(format!("sudo ip route add 224.0.0.0/4 dev {dev}")),
        ),
        None => check(
            "multicast_route",
            Verdict::Warn,
            "no route covers 239.255.0.0/16 (the node names its interface itself, other tools may not)".into(),
            Some(format!("sudo ip route add 224.0.0.0/4 dev {dev}")),
        ),
    }
}

/// Sends one datagram to a test group through `addr` and waits for it on a socket that joined
/// the group there. TTL 1: it never leaves the link.
fn multicast_self_test(addr: Ipv4Addr) -> std::io::Result<Duration> {
    use socket2::{Domain, Protocol, Socket, Type};
    let group = Ipv4Addr::new(239, 255, 0, 254);
    let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    rx.set_reuse_address(true)?;
    rx.bind(&SocketAddrV4::new(group, 0).into())?;
    let port = rx
        .local_addr()?
        .as_socket_ipv4()
        .map(|a| a.port())
        .unwrap_or(0);
    rx.join_multicast_v4(&group, &addr)?;
    let rx: UdpSocket = rx.into();
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let tx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    tx.set_multicast_if_v4(&addr)?;
    tx.set_multicast_loop_v4(true)?;
    tx.set_multicast_ttl_v4(1)?;
    tx.bind(&SocketAddrV4::new(addr, 0).into())?;
    let tx: UdpSocket = tx.into();
    let token = format!("qs-doctor-{}", std::process::id());
    let start = Instant::now();
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        tx.send_to(token.as_bytes(), SocketAddrV4::new(group, port))?;
        while let Ok((n, _)) = rx.recv_from(&mut buf) {
            if &buf[..n] == token.as_bytes() {
                return Ok(start.elapsed());
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "nothing came back within 1 s",
    ))
}

/// Two real nodes on the interface (a cluster of their own) must find each other and
/// deliver one message; reports the socket buffers the kernel granted.
fn node_self_test(addr: Ipv4Addr, w: &Wanted) -> Check {
    let cluster = format!("qs-doctor-{}", std::process::id());
    let build = || {
        quicksilver::Node::builder()
            .interface(addr)
            .cluster(&cluster)
            .control_group(w.control)
            .data_port(w.data_port)
            .recv_buffer_bytes(w.recv_buffer)
            .send_buffer_bytes(w.send_buffer)
            .max_datagram(w.max_datagram)
            .announce_interval(Duration::from_millis(100))
            .build()
    };
    let fix = format!(
        "another program may hold UDP ports {} and {} exclusively (try --control-group/--data-port), or a firewall drops them",
        w.control.port(),
        w.data_port
    );
    let result = (|| -> anyhow::Result<(Duration, quicksilver::SocketBuffers)> {
        let (x, y) = (build()?, build()?);
        let sub = y.subscribe("qs.doctor")?;
        let start = Instant::now();
        while x.subscribers_of(&["qs.doctor"])? == 0 {
            if start.elapsed() > Duration::from_secs(5) {
                anyhow::bail!("the two nodes did not discover each other within 5 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        x.publish("qs.doctor", "ping")?;
        sub.recv_timeout(Duration::from_secs(5)).map_err(|_| {
            anyhow::anyhow!("discovered each other but the message did not arrive within 5 s")
        })?;
        let took = start.elapsed();
        let buffers = y.stats()?.socket_buffers;
        drop(sub);
        Ok((took, buffers))
    })();
    match result {
        Ok((took, b)) => check(
            "node",
            if b.capped { Verdict::Warn } else { Verdict::Ok },
            format!(
                "two nodes on {addr} found each other and delivered a message in {} ms; socket buffers granted: receive {}, send {}{}",
                took.as_millis(),
                mib(b.recv_bytes as u64),
                mib(b.send_bytes as u64),
                if b.forced { " (forced as root)" } else { "" }
            ),
            b.capped.then(|| "raise net.core.rmem_max / wmem_max (see socket_buffers above)".into()),
        ),
        Err(e) => check("node", Verdict::Fail, format!("node self-test on {addr}: {e:#}"), Some(fix)),
    }
}

/// Firewall rules that drop input by default (nftables or iptables), when they can be read.
fn firewall_check(w: &Wanted) -> Check {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let ports = format!("{}, {}", w.control.port(), w.data_port);
    let fix = format!(
        "allow UDP ports {ports} and the nodes' unicast ports (fixed with --unicast-port), e.g. nft add rule inet filter input udp dport {{ {ports} }} accept"
    );
    if let Some(rules) = run("nft", &["list", "ruleset"]) {
        let drops = rules
            .lines()
            .any(|l| l.contains("hook input") && l.contains("policy drop"));
        return if drops {
            check(
                "firewall",
                Verdict::Warn,
                "an nftables input chain drops by default".into(),
                Some(fix),
            )
        } else {
            check(
                "firewall",
                Verdict::Ok,
                "no nftables input chain drops by default".into(),
                None,
            )
        };
    }
    if let Some(rules) = run("iptables", &["-S", "INPUT"]) {
        return if rules.contains("-P INPUT DROP") {
            check(
                "firewall",
                Verdict::Warn,
                "iptables INPUT policy is DROP".into(),
                Some(fix),
            )
        } else {
            check(
                "firewall",
                Verdict::Ok,
                "iptables INPUT accepts by default".into(),
                None,
            )
        };
    }
    check(
        "firewall",
        Verdict::Info,
        "could not read the firewall rules (nft/iptables missing or not root)".into(),
        Some(fix),
    )
}

#[derive(Serialize)]
struct Report<'a> {
    interface: Option<&'a str>,
    address: Option<Ipv4Addr>,
    can_run: bool,
    checks: &'a [Check],
}

pub fn run(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let spec = a.net.iface.clone().unwrap_or_else(|| "127.0.0.1".into());
    let iface = match resolve_iface(&spec) {
        Ok(i) => Some(i),
        Err(e) => {
            checks.push(check(
                "interface",
                Verdict::Fail,
                format!("--iface {spec}: {e:#}"),
                Some("name an interface (or one of its IPv4 addresses) from the list with --iface or QS_IFACE".into()),
            ));
            None
        }
    };
    if let Some(i) = &iface {
        run_checks(&a, i.name.as_deref(), i.addr, &mut checks);
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    if a.json {
        let r = Report {
            interface: iface.as_ref().and_then(|i| i.name.as_deref()),
            address: iface.as_ref().map(|i| i.addr),
            can_run: failed == 0,
            checks: &checks,
        };
        println!("{}", serde_json::to_string(&r)?);
    } else {
        match &iface {
            Some(i) => println!(
                "qs doctor: interface {} ({})",
                i.name.as_deref().unwrap_or("?"),
                i.addr
            ),
            None => println!("qs doctor: interface {spec}"),
        }
        for c in &checks {
            println!("  {} {:<18} {}", c.verdict.mark(), c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("      fix: {f}");
            }
        }
        println!(
            "{}",
            match (failed, warned) {
                (0, 0) => "a node can run here".to_owned(),
                (0, w) =>
                    format!("a node can run here ({w} warning(s) to look at for a real network)"),
                (f, _) => format!("a node cannot run here: {f} check(s) failed"),
            }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
