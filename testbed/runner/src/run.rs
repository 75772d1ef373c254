//! `qs-testbed run`: one scenario on a namespace LAN, from `lan.sh up` to `results.json`.
//!
//! Per case: loss events without a time are applied, the raw baseline runs (receivers first,
//! the sender 0.5 s later), then the `qs sub` processes and the `qs pub` processes start
//! together (the publishers wait for their `--subscribers`) and that instant is t = 0 for the
//! timed loss events and the faults. Each phase is bounded by the case's `timeout_s`; what is
//! still running then is killed and reported as such. The LAN is torn down whatever happens
//! (drop guard; SIGINT/SIGTERM stop the run and still tear down).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::machine;
use crate::scenario::{Case, CasePlan, Expect, LossEvent, Role, Scenario, TopicArgs, TopicRange};

/// Where things are and where results go.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The scenario file.
    pub scenario: PathBuf,
    /// The `qs` binary.
    pub qs: PathBuf,
    /// Output directory (created): `results.json`, `results.md`, `logs/`.
    pub out: PathBuf,
    /// `testbed/scripts` (lan.sh, loss.sh).
    pub scripts: PathBuf,
    /// LAN prefix (default `qsr<pid>`).
    pub prefix: Option<String>,
    /// Only run the cases with these names (empty: all).
    pub only: Vec<String>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The results document (also written to `results.json`).
    pub results: Value,
    /// Checks that failed in cases with `expect = "exact"`.
    pub enforced_failures: usize,
}

/// Set by SIGINT/SIGTERM: the run stops and cleans up at the next check.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn install_signal_handlers() {
    INTERRUPTED.get_or_init(qs_runtime::os::interrupt_flag);
}

fn was_interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

fn interrupted() -> anyhow::Result<()> {
    if was_interrupted() {
        bail!("interrupted (SIGINT/SIGTERM)");
    }
    Ok(())
}

pub use qs_runtime::os::is_root;

/// The commands run, in order, with their time since the start of the run.
struct Log {
    start: Instant,
    commands: Vec<Value>,
}

impl Log {
    fn push(&mut self, what: &str, cmd: String) {
        self.commands.push(json!({
            "t_s": round3(self.start.elapsed().as_secs_f64()),
            "what": what,
            "cmd": cmd,
        }));
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The testbed LAN; dropping it runs `lan.sh down`.
struct Lan {
    scripts: PathBuf,
    prefix: String,
    addrs: BTreeMap<usize, String>,
}

impl Lan {
    fn up(scripts: &Path, prefix: &str, s: &Scenario, log: &mut Log) -> anyhow::Result<Lan> {
        let mut args = vec!["up".to_string(), prefix.to_string(), s.hosts.to_string()];
        if let Some(m) = s.mtu {
            args.push("--mtu".into());
            args.push(m.to_string());
        }
        // From here on a half-built LAN is ours to remove, too.
        let mut lan = Lan {
            scripts: scripts.to_path_buf(),
            prefix: prefix.to_string(),
            addrs: BTreeMap::new(),
        };
        log.push("lan", format!("lan.sh {}", args.join(" ")));
        lan.script("lan.sh", &args)?;
        for i in 1..=s.hosts {
            let a = lan.script("lan.sh", &["addr".into(), prefix.into(), i.to_string()])?;
            lan.addrs.insert(i, a.trim().to_string());
        }
        Ok(lan)
    }

    fn script(&self, name: &str, args: &[String]) -> anyhow::Result<String> {
        let out = Command::new("bash")
            .arg(self.scripts.join(name))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {name}"))?;
        if !out.status.success() {
            bail!(
                "{name} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn addr(&self, host: usize) -> &str {
        self.addrs.get(&host).map_or("?", String::as_str)
    }

    fn loss(&self, host: usize, args: &[String], log: &mut Log) -> anyhow::Result<()> {
        let mut a = vec![self.prefix.clone(), host.to_string()];
        a.extend_from_slice(args);
        log.push("loss", format!("loss.sh {}", a.join(" ")));
        self.script("loss.sh", &a).map(|_| ())
    }

    fn spawn(
        &self,
        host: usize,
        qs: &Path,
        args: &[String],
        out: &Path,
        err: &Path,
    ) -> anyhow::Result<Child> {
        // lan.sh exec ends in `exec ip netns exec NS ...`, which execs qs: the child's pid is
        // the qs process itself, so signals reach it directly.
        Command::new("bash")
            .arg(self.scripts.join("lan.sh"))
            .args(["exec", &self.prefix, &host.to_string()])
            .arg(qs)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(out)?)
            .stderr(File::create(err)?)
            .spawn()
            .context("starting a process in the LAN")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let r = Command::new("bash")
            .arg(self.scripts.join("lan.sh"))
            .args(["down", &self.prefix])
            .stdin(Stdio::null())
            .output();
        match r {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "qs-testbed: WARNING lan.sh down {} failed: {}",
                self.prefix,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("qs-testbed: WARNING lan.sh down {}: {e}", self.prefix),
        }
    }
}

/// A process of a case.
struct Proc {
    name: String,
    role: Role,
    host: usize,
    addr: String,
    display: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    started_s: f64,
    ended_s: Option<f64>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    killed_by: Option<String>,
}

impl Proc {
    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn poll(&mut self, t0: Instant) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(st) = c.try_wait()? {
                use std::os::unix::process::ExitStatusExt;
                self.exit_code = st.code();
                self.signal = st.signal();
                self.ended_s = Some(round3(t0.elapsed().as_secs_f64()));
                self.child = None;
            }
        }
        Ok(())
    }

    fn kill(&mut self, signal: i32, why: &str) {
        if let Some(c) = &self.child {
            qs_runtime::os::kill(c.id(), signal);
            self.killed_by = Some(why.to_string());
        }
    }

    fn to_json(&self) -> Value {
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let line = stdout
            .lines()
            .rev()
            .filter(|l| l.trim_start().starts_with('{'))
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let bad = line.is_none() || self.exit_code != Some(0);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        json!({
            "name": self.name,
            "role": self.role,
            "host": self.host,
            "addr": self.addr,
            "command": self.display,
            "started_s": self.started_s,
            "ended_s": self.ended_s,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "killed_by": self.killed_by,
            "json": line,
            "stderr_tail": if bad { Value::String(tail.join("\n")) } else { Value::Null },
        })
    }
}

/// Up to 6 topic flags shown, then a count: a 10,000-topic command stays readable.
fn display_cmd(qs: &Path, host: usize, args: &[String]) -> String {
    let mut shown = Vec::new();
    let mut topics = 0usize;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--topic" && i + 1 < args.len() {
            topics += 1;
            if topics <= 6 {
                shown.push(format!("--topic {}", args[i + 1]));
            } else if topics == 7 {
                shown.push("...".into());
            }
            i += 2;
        } else {
            shown.push(args[i].clone());
            i += 1;
        }
    }
    let mut s = format!("[h{host}] {} {}", qs.display(), shown.join(" "));
    if topics > 6 {
        s.push_str(&format!(" ({topics} --topic flags)"));
    }
    s
}

fn topic_args(topics: &[String], range: &Option<TopicRange>, explicit: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    match range {
        Some(r) if r.args == TopicArgs::RangeFlag => {
            for t in explicit {
                v.push("--topic".into());
                v.push(t.clone());
            }
            v.push("--topics-prefix".into());
            v.push(r.prefix.clone());
            v.push("--topics".into());
            v.push(r.count.to_string());
        }
        _ => {
            for t in topics {
                v.push("--topic".into());
                v.push(t.clone());
            }
        }
    }
    v
}

fn uses_range_flag(c: &Case) -> bool {
    let flag = |r: &Option<TopicRange>| r.as_ref().is_some_and(|r| r.args == TopicArgs::RangeFlag);
    c.subs.iter().any(|s| flag(&s.topic_range)) || c.pubs.iter().any(|p| flag(&p.topic_range))
}

fn qs_has_range_flag(qs: &Path) -> bool {
    let help = |sub: &str| {
        Command::new(qs)
            .args([sub, "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--topics-prefix"))
            .unwrap_or(false)
    };
    help("pub") && help("sub")
}

fn qs_version(qs: &Path) -> String {
    Command::new(qs)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs a scenario; writes `results.json`, `results.md` and the process logs under `out`.
pub fn run(opts: &RunOptions) -> anyhow::Result<RunOutcome> {
    let scenario = Scenario::load(&opts.scenario)?;
    if !is_root() {
        bail!("needs root (network namespaces, bridges, nftables)");
    }
    let qs = std::fs::canonicalize(&opts.qs)
        .with_context(|| format!("qs binary {}", opts.qs.display()))?;
    for s in ["lan.sh", "loss.sh"] {
        if !opts.scripts.join(s).exists() {
            bail!(
                "{} not found (pass --scripts DIR)",
                opts.scripts.join(s).display()
            );
        }
    }
    std::fs::create_dir_all(opts.out.join("logs"))
        .with_context(|| format!("creating {}", opts.out.display()))?;
    install_signal_handlers();
    let prefix = opts
        .prefix
        .clone()
        .unwrap_or_else(|| format!("qsr{}", std::process::id() % 100_000_000));
    let machine = machine::describe();
    let mut log = Log {
        start: Instant::now(),
        commands: Vec::new(),
    };
    let range_flag = scenario.cases.iter().any(uses_range_flag) && qs_has_range_flag(&qs);
    let mut cases = Vec::new();
    {
        let lan = Lan::up(&opts.scripts, &prefix, &scenario, &mut log)?;
        for case in &scenario.cases {
            if !opts.only.is_empty() && !opts.only.contains(&case.name) {
                continue;
            }
            interrupted()?;
            eprintln!("qs-testbed: case {} ...", case.name);
            let v = if uses_range_flag(case) && !range_flag {
                skipped_case(&scenario, case, "qs lacks --topics-prefix/--topics (the proposed topic-range flag): case not run")?
            } else {
                run_case(&scenario, case, &lan, &qs, opts, &mut log)?
            };
            eprintln!("qs-testbed: case {} done: {}", case.name, case_verdict(&v));
            cases.push(v);
        }
        // `lan` drops here: lan.sh down.
    }
    log.push("lan", format!("lan.sh down {prefix}"));
    let enforced_failures: usize = cases
        .iter()
        .flat_map(|c| c["checks"].as_array().cloned().unwrap_or_default())
        .filter(|k| k["enforced"] == true && k["pass"] == false)
        .count();
    let results = json!({
        "format": "qs-testbed results 1",
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "file": opts.scenario.display().to_string(),
            "definition": serde_json::to_value(&scenario)?,
        },
        "machine": machine,
        "qs": {"path": qs.display().to_string(), "version": qs_version(&qs)},
        "lan": {"prefix": prefix, "hosts": scenario.hosts, "mtu": scenario.mtu.unwrap_or(1500)},
        "invocation": std::env::args().collect::<Vec<_>>().join(" "),
        "duration_s": round3(log.start.elapsed().as_secs_f64()),
        "commands": log.commands,
        "cases": cases,
        "enforced_failures": enforced_failures,
        "passed": enforced_failures == 0,
    });
    let path = opts.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(
        opts.out.join("results.md"),
        crate::report::results_md(&results),
    )?;
    Ok(RunOutcome {
        results,
        enforced_failures,
    })
}

fn case_verdict(v: &Value) -> String {
    if let Some(s) = v["skipped"].as_str() {
        return format!("SKIPPED ({s})");
    }
    let checks = v["checks"].as_array().cloned().unwrap_or_default();
    let failed: Vec<String> = checks
        .iter()
        .filter(|k| k["pass"] == false)
        .map(|k| {
            format!(
                "{} {}",
                k["process"].as_str().unwrap_or(""),
                k["check"].as_str().unwrap_or("")
            )
        })
        .collect();
    let enforced = v["expect"] == "exact";
    if failed.is_empty() {
        format!("{} checks passed", checks.len())
    } else {
        format!(
            "{} of {} checks failed{}: {}",
            failed.len(),
            checks.len(),
            if enforced {
                ""
            } else {
                " (expect = report: not fatal)"
            },
            failed.join(", ")
        )
    }
}

/// Parameters of a case that reports group by (all derived from the scenario).
fn case_params(s: &Scenario, case: &Case) -> anyhow::Result<Value> {
    let plan = s.plan(case)?;
    let size = plan.pubs.first().map(|p| p.spec.size);
    let topics = plan.pubs.iter().map(|p| p.topics.len()).max();
    let mut labels: Vec<String> = case.loss.iter().map(LossEvent::label).collect();
    labels.dedup();
    let loss_pct: Option<f64> = match case.loss.as_slice() {
        [] => Some(0.0),
        ls if ls
            .iter()
            .all(|l| l.mode == crate::scenario::LossMode::Random && l.at_s.is_none()) =>
        {
            ls.first().and_then(|l| l.pct)
        }
        _ => None,
    };
    Ok(json!({
        "size": size,
        "raw_size": case.raw.as_ref().map(|r| r.size),
        "topics": topics,
        "publishers": plan.pubs.len(),
        "receivers": plan.subs.len(),
        "rate": plan.pubs.first().map(|p| p.spec.rate),
        "loss": if labels.is_empty() { "none".to_string() } else { labels.join(", ") },
        "loss_pct": loss_pct,
        "faults": case.fault.len(),
    }))
}

fn skipped_case(s: &Scenario, case: &Case, why: &str) -> anyhow::Result<Value> {
    Ok(json!({
        "name": case.name,
        "expect": case.expect,
        "params": case_params(s, case)?,
        "skipped": why,
        "processes": [],
        "checks": [],
    }))
}

enum Action {
    Loss(usize, Vec<String>, String),
    Clear(usize),
    Kill(String, i32),
}

fn run_case(
    s: &Scenario,
    case: &Case,
    lan: &Lan,
    qs: &Path,
    opts: &RunOptions,
    log: &mut Log,
) -> anyhow::Result<Value> {
    let plan = s.plan(case)?;
    let limit = Duration::from_secs_f64(case.timeout_s.unwrap_or(s.timeout_s));
    let logs = opts.out.join("logs").join(&case.name);
    std::fs::create_dir_all(&logs)?;
    let cluster = format!("{}-{}", lan.prefix, case.name);
    let mut loss_applied = Vec::new();
    let mut loss_hosts = std::collections::BTreeSet::new();
    for l in case.loss.iter().filter(|l| l.at_s.is_none()) {
        for h in &l.hosts {
            lan.loss(*h, &l.loss_args(), log)?;
            loss_hosts.insert(*h);
            loss_applied.push(
                json!({"host": h, "rule": l.label(), "at_s": Value::Null, "phase": "case start"}),
            );
        }
    }
    let mut procs: Vec<Proc> = Vec::new();
    let start = |name: String,
                 role: Role,
                 host: usize,
                 args: Vec<String>,
                 t0: Instant,
                 log: &mut Log|
     -> anyhow::Result<Proc> {
        let display = display_cmd(qs, host, &args);
        log.push(&name, display.clone());
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let child = lan.spawn(host, qs, &args, &stdout, &stderr)?;
        Ok(Proc {
            name,
            role,
            host,
            addr: lan.addr(host).to_string(),
            display,
            child: Some(child),
            stdout,
            stderr,
            started_s: round3(t0.elapsed().as_secs_f64()),
            ended_s: None,
            exit_code: None,
            signal: None,
            killed_by: None,
        })
    };

    // Phase 1: the raw baseline.
    if let Some(r) = &case.raw {
        let t0 = Instant::now();
        let mut raw = Vec::new();
        for h in &r.to {
            let args = vec![
                "bench".into(),
                "raw-recv".into(),
                "--iface".into(),
                lan.addr(*h).into(),
                "--size".into(),
                r.size.to_string(),
                "--count".into(),
                r.count.to_string(),
                "--timeout".into(),
                r.timeout_s.to_string(),
            ];
            raw.push(start(
                crate::scenario::proc_name("raw-recv", *h),
                Role::RawRecv,
                *h,
                args,
                t0,
                log,
            )?);
        }
        std::thread::sleep(Duration::from_millis(500));
        let args = vec![
            "bench".into(),
            "raw-send".into(),
            "--iface".into(),
            lan.addr(r.from).into(),
            "--size".into(),
            r.size.to_string(),
            "--count".into(),
            r.count.to_string(),
        ];
        raw.push(start(
            crate::scenario::proc_name("raw-send", r.from),
            Role::RawSend,
            r.from,
            args,
            t0,
            log,
        )?);
        supervise(
            &mut raw,
            t0,
            limit,
            Vec::new(),
            lan,
            log,
            &mut loss_applied,
            &mut loss_hosts,
        )?;
        procs.extend(raw);
    }

    // Phase 2: Quicksilver.
    if !plan.pubs.is_empty() {
        let t0 = Instant::now();
        let mut qsp = Vec::new();
        for sp in &plan.subs {
            let mut args = vec!["sub".to_string(), "--json".into()];
            args.extend(topic_args(
                &sp.topics,
                &sp.spec.topic_range,
                &sp.spec.topics,
            ));
            args.extend([
                "--count".into(),
                sp.spec.count.unwrap_or(sp.expected).to_string(),
                "--timeout".into(),
                sp.spec.timeout_s.to_string(),
                "--iface".into(),
                lan.addr(sp.host).into(),
                "--cluster".into(),
                cluster.clone(),
            ]);
            qsp.push(start(sp.name.clone(), Role::Sub, sp.host, args, t0, log)?);
        }
        for pp in &plan.pubs {
            let mut args = vec!["pub".to_string(), "--json".into()];
            args.extend(topic_args(
                &pp.topics,
                &pp.spec.topic_range,
                &pp.spec.topics,
            ));
            args.extend([
                "--count".into(),
                pp.spec.count.to_string(),
                "--size".into(),
                pp.spec.size.to_string(),
                "--rate".into(),
                pp.spec.rate.to_string(),
                "--subscribers".into(),
                pp.subscribers.to_string(),
                "--wait-secs".into(),
                pp.spec.wait_s.to_string(),
                "--iface".into(),
                lan.addr(pp.spec.host).into(),
                "--cluster".into(),
                cluster.clone(),
            ]);
            qsp.push(start(
                pp.name.clone(),
                Role::Pub,
                pp.spec.host,
                args,
                t0,
                log,
            )?);
        }
        let mut events: Vec<(f64, Action)> = Vec::new();
        for l in &case.loss {
            if let Some(at) = l.at_s {
                for h in &l.hosts {
                    events.push((at, Action::Loss(*h, l.loss_args(), l.label())));
                    if let Some(u) = l.until_s {
                        events.push((u, Action::Clear(*h)));
                    }
                }
            } else if let Some(u) = l.until_s {
                for h in &l.hosts {
                    events.push((u, Action::Clear(*h)));
                }
            }
        }
        for f in &case.fault {
            events.push((f.at_s, Action::Kill(f.kill.clone(), f.signal)));
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        supervise(
            &mut qsp,
            t0,
            limit,
            events,
            lan,
            log,
            &mut loss_applied,
            &mut loss_hosts,
        )?;
        procs.extend(qsp);
    }

    let mut counters = Vec::new();
    for h in &loss_hosts {
        let show = lan
            .script(
                "loss.sh",
                &[lan.prefix.clone(), h.to_string(), "show".into()],
            )
            .unwrap_or_else(|e| format!("error: {e:#}"));
        counters.push(json!({"host": h, "show": show.trim(), "dropped": parse_counter(&show, "dropped"), "seen": parse_counter(&show, "seen")}));
        lan.loss(*h, &["clear".into()], log)?;
    }
    let processes: Vec<Value> = procs.iter().map(Proc::to_json).collect();
    let checks = checks(case, &plan, &processes);
    Ok(json!({
        "name": case.name,
        "expect": case.expect,
        "params": case_params(s, case)?,
        "skipped": Value::Null,
        "cluster": cluster,
        "loss_applied": loss_applied,
        "loss_counters": counters,
        "faults": case.fault.iter().map(|f| json!({"at_s": f.at_s, "kill": f.kill, "signal": f.signal})).collect::<Vec<_>>(),
        "expected": plan.subs.iter().map(|s| (s.name.clone(), json!(s.expected))).collect::<serde_json::Map<_, _>>(),
        "processes": processes,
        "checks": checks,
    }))
}

fn parse_counter(show: &str, key: &str) -> Option<u64> {
    show.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    procs: &mut [Proc],
    t0: Instant,
    limit: Duration,
    events: Vec<(f64, Action)>,
    lan: &Lan,
    log: &mut Log,
    loss_applied: &mut Vec<Value>,
    loss_hosts: &mut std::collections::BTreeSet<usize>,
) -> anyhow::Result<()> {
    let mut events = events.into_iter().peekable();
    loop {
        for p in procs.iter_mut() {
            p.poll(t0)?;
        }
        if !procs.iter().any(Proc::running) {
            break;
        }
        if was_interrupted() {
            for p in procs.iter_mut() {
                p.kill(libc::SIGKILL, "interrupt");
            }
            for p in procs.iter_mut() {
                if let Some(c) = &mut p.child {
                    let _ = c.wait();
                }
            }
            interrupted()?;
        }
        let now = t0.elapsed();
        if now >= limit {
            for p in procs.iter_mut() {
                p.kill(libc::SIGKILL, "deadline");
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        while let Some((at, _)) = events.peek() {
            if *at > now.as_secs_f64() {
                break;
            }
            let (at, a) = events.next().expect("peeked");
            match a {
                Action::Loss(h, args, label) => {
                    lan.loss(h, &args, log)?;
                    loss_hosts.insert(h);
                    loss_applied.push(json!({"host": h, "rule": label, "at_s": at, "applied_s": round3(t0.elapsed().as_secs_f64())}));
                }
                Action::Clear(h) => {
                    lan.loss(h, &["clear".into()], log)?;
                    loss_applied.push(json!({"host": h, "rule": "clear", "at_s": at, "applied_s": round3(t0.elapsed().as_secs_f64())}));
                }
                Action::Kill(name, sig) => {
                    if let Some(p) = procs.iter_mut().find(|p| p.name == name) {
                        log.push("fault", format!("kill -{sig} {name} (t = {at} s)"));
                        p.kill(sig, &format!("fault at {at} s"));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (at, _) in events {
        log.push(
            "event",
            format!("event at {at} s not applied: every process had already ended"),
        );
    }
    Ok(())
}

fn check(
    case: &Case,
    process: &str,
    name: &str,
    want: Value,
    got: Value,
    pass: bool,
    enforced: bool,
) -> Value {
    json!({
        "case": case.name,
        "process": process,
        "check": name,
        "want": want,
        "got": got,
        "pass": pass,
        "enforced": enforced && case.expect == Expect::Exact,
    })
}

/// Delivery checks of a case from its processes' results.
fn checks(case: &Case, plan: &CasePlan, processes: &[Value]) -> Vec<Value> {
    let by_name: BTreeMap<&str, &Value> = processes
        .iter()
        .filter_map(|p| p["name"].as_str().map(|n| (n, p)))
        .collect();
    let faulted = |p: &Value| {
        p["killed_by"]
            .as_str()
            .is_some_and(|k| k.starts_with("fault"))
    };
    let pub_killed = plan
        .pubs
        .iter()
        .any(|pp| by_name.get(pp.name.as_str()).is_some_and(|p| faulted(p)));
    let mut v = Vec::new();
    for pp in &plan.pubs {
        let Some(p) = by_name.get(pp.name.as_str()) else {
            continue;
        };
        if faulted(p) {
            v.push(check(
                case,
                &pp.name,
                "killed by fault",
                json!("killed"),
                p["killed_by"].clone(),
                true,
                false,
            ));
            continue;
        }
        let j = &p["json"];
        v.push(check(
            case,
            &pp.name,
            "exit",
            json!(0),
            p["exit_code"].clone(),
            p["exit_code"] == 0,
            true,
        ));
        v.push(check(
            case,
            &pp.name,
            "sent",
            json!(pp.spec.count),
            j["sent"].clone(),
            j["sent"] == pp.spec.count,
            true,
        ));
    }
    for sp in &plan.subs {
        let Some(p) = by_name.get(sp.name.as_str()) else {
            continue;
        };
        if faulted(p) {
            v.push(check(
                case,
                &sp.name,
                "killed by fault",
                json!("killed"),
                p["killed_by"].clone(),
                true,
                false,
            ));
            continue;
        }
        // A killed publisher makes the expected count unknowable: report only.
        let exact = !pub_killed;
        let j = &p["json"];
        if j.is_null() {
            v.push(check(
                case,
                &sp.name,
                "json summary",
                json!("present"),
                json!("missing"),
                false,
                true,
            ));
            continue;
        }
        v.push(check(
            case,
            &sp.name,
            "exit",
            json!(0),
            p["exit_code"].clone(),
            p["exit_code"] == 0,
            exact,
        ));
        v.push(check(
            case,
            &sp.name,
            "received",
            json!(sp.expected),
            j["received"].clone(),
            j["received"] == sp.expected,
            exact,
        ));
        for k in ["duplicates", "out_of_order", "gaps"] {
            v.push(check(
                case,
                &sp.name,
                k,
                json!(0),
                j[k].clone(),
                j[k] == 0,
                true,
            ));
        }
        let mine: std::collections::BTreeSet<&String> = sp.topics.iter().collect();
        for pp in &plan.pubs {
            if !pp.topics.iter().all(|t| mine.contains(t)) {
                continue;
            }
            let Some(pj) = by_name.get(pp.name.as_str()) else {
                continue;
            };
            let want = &pj["json"]["checksum"];
            if want.is_null() || faulted(pj) {
                continue;
            }
            let got: Vec<Value> = j["checksums"]
                .as_object()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            let pass = got.contains(want);
            v.push(check(
                case,
                &sp.name,
                &format!("checksum of {}", pp.name),
                want.clone(),
                json!(got),
                pass,
                exact,
            ));
        }
    }
    if let Some(r) = &case.raw {
        for h in &r.to {
            let name = crate::scenario::proc_name("raw-recv", *h);
            let Some(p) = by_name.get(name.as_str()) else {
                continue;
            };
            let got = p["json"]["received"].clone();
            // The baseline is the physical limit: its losses are figures, never failures.
            v.push(check(
                case,
                &name,
                "raw received",
                json!(r.count),
                got.clone(),
                got == r.count,
                false,
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_topic_lists_are_shortened_in_displayed_commands() {
        let mut args = vec!["sub".to_string()];
        for i in 0..100 {
            args.push("--topic".into());
            args.push(format!("t{i}"));
        }
        args.push("--json".into());
        let s = display_cmd(Path::new("/q"), 2, &args);
        assert!(s.starts_with("[h2] /q sub --topic t0"), "{s}");
        assert!(
            s.contains("(100 --topic flags)") && s.contains("--json"),
            "{s}"
        );
        assert!(!s.contains("t50"), "{s}");
    }

    #[test]
    fn loss_counters_parse_from_loss_sh_show() {
        let s = "dropped=12 seen=1000 rule=\"random 1% of udp\"";
        assert_eq!(parse_counter(s, "dropped"), Some(12));
        assert_eq!(parse_counter(s, "seen"), Some(1000));
        assert_eq!(parse_counter(s, "rule"), None);
    }

    #[test]
    fn range_flag_topics_become_prefix_and_count_flags() {
        let r = Some(TopicRange {
            prefix: "t".into(),
            count: 5,
            args: TopicArgs::RangeFlag,
        });
        let a = topic_args(&r.as_ref().unwrap().names(), &r, &[]);
        assert_eq!(a, ["--topics-prefix", "t", "--topics", "5"]);
        let r = Some(TopicRange {
            prefix: "t".into(),
            count: 2,
            args: TopicArgs::Repeat,
        });
        let a = topic_args(&r.as_ref().unwrap().names(), &r, &[]);
        assert_eq!(a, ["--topic", "t0", "--topic", "t1"]);
    }
}
