//! Scenario files: the TOML format, its validation, and the expected delivery counts.
//!
//! A scenario names a LAN (`hosts`, optional `mtu`) and a list of cases run one after the
//! other on that LAN. Each case may have a raw UDP multicast baseline (`[case.raw]`), `qs sub`
//! processes (`[[case.sub]]`), `qs pub` processes (`[[case.pub]]`), loss events
//! (`[[case.loss]]`) and faults (`[[case.fault]]`). See `testbed/runner/README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Largest host count `lan.sh` builds.
pub const HOSTS_MAX: usize = 250;

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario measures.
    #[serde(default)]
    pub description: String,
    /// Hosts (network namespaces) on the LAN.
    pub hosts: usize,
    /// MTU of the bridge and every veth (default: the kernel's, 1500).
    pub mtu: Option<u32>,
    /// Bound in seconds for each phase of a case unless the case sets its own.
    #[serde(default = "default_case_timeout_s")]
    pub timeout_s: f64,
    /// The cases, run in order on the same LAN.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

fn default_case_timeout_s() -> f64 {
    120.0
}

/// What a failed check of a case means for the exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Every subscriber gets exactly what was published: a failed check fails the run.
    #[default]
    Exact,
    /// Numbers only (e.g. loss before repair exists): checks are recorded, never fatal.
    Report,
}

/// One case: processes run together, with their loss and fault events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Name, unique in the scenario (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Whether failed checks fail the run.
    #[serde(default)]
    pub expect: Expect,
    /// Bound in seconds for each phase of this case (default: the scenario's).
    pub timeout_s: Option<f64>,
    /// The raw UDP multicast baseline, run before the Quicksilver processes.
    pub raw: Option<Raw>,
    /// `qs sub` processes.
    #[serde(default, rename = "sub")]
    pub subs: Vec<SubSpec>,
    /// `qs pub` processes.
    #[serde(default, rename = "pub")]
    pub pubs: Vec<PubSpec>,
    /// Loss on hosts' links.
    #[serde(default)]
    pub loss: Vec<LossEvent>,
    /// Faults (kill a process) at given times.
    #[serde(default)]
    pub fault: Vec<Fault>,
}

/// `qs bench raw-send` on one host, `qs bench raw-recv` on others.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// Sending host.
    pub from: usize,
    /// Receiving hosts.
    pub to: Vec<usize>,
    /// Bytes per datagram (at least 16).
    pub size: usize,
    /// Datagrams to send.
    pub count: u64,
    /// Receivers stop after this many seconds without a datagram.
    #[serde(default = "default_raw_timeout_s")]
    pub timeout_s: u64,
}

fn default_raw_timeout_s() -> u64 {
    3
}

/// How a [`TopicRange`] reaches `qs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicArgs {
    /// One `--topic NAME` per topic (works with today's `qs`).
    #[default]
    Repeat,
    /// `--topics-prefix PREFIX --topics N` (a proposed `qs` flag; the case is skipped when
    /// `qs pub --help` does not list `--topics-prefix`).
    RangeFlag,
}

/// Topics `PREFIX0 .. PREFIX{count-1}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRange {
    /// Name prefix.
    pub prefix: String,
    /// Number of topics.
    pub count: usize,
    /// How the list is passed to `qs`.
    #[serde(default)]
    pub args: TopicArgs,
}

impl TopicRange {
    /// The topic names, in order.
    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}{i}", self.prefix))
            .collect()
    }
}

/// `qs sub` on one or more hosts (one process per host).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubSpec {
    /// Name; each process is called `NAME@hI`.
    pub name: String,
    /// Hosts running one such subscriber each.
    pub hosts: Vec<usize>,
    /// Topics (or use `topic_range`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// A generated topic list.
    pub topic_range: Option<TopicRange>,
    /// `--count` (default: the expected count computed from the publishers).
    pub count: Option<u64>,
    /// `--timeout`: seconds without a delivery before giving up.
    #[serde(default = "default_sub_timeout_s")]
    pub timeout_s: u64,
}

fn default_sub_timeout_s() -> u64 {
    5
}

/// `qs pub` on one host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PubSpec {
    /// Name; the process is called `NAME@hI`.
    pub name: String,
    /// Host running it.
    pub host: usize,
    /// Topics, published round robin (or use `topic_range`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// A generated topic list.
    pub topic_range: Option<TopicRange>,
    /// Messages per second (0: as fast as back-pressure allows).
    #[serde(default)]
    pub rate: u64,
    /// Payload bytes per message (at least 16).
    #[serde(default = "default_size")]
    pub size: usize,
    /// Messages to publish.
    pub count: u64,
    /// `--subscribers` (default: the subscriber processes sharing a topic with it).
    pub subscribers: Option<usize>,
    /// `--wait-secs` for the subscribers.
    #[serde(default = "default_wait_s")]
    pub wait_s: u64,
}

fn default_size() -> usize {
    256
}

fn default_wait_s() -> u64 {
    15
}

/// Loss model of a [`LossEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossMode {
    /// `loss.sh random PCT`.
    Random,
    /// `loss.sh burst K EVERY`.
    Burst,
}

/// Frame loss on hosts' links (`testbed/scripts/loss.sh`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LossEvent {
    /// Hosts whose incoming UDP frames are dropped.
    pub hosts: Vec<usize>,
    /// Random or burst.
    pub mode: LossMode,
    /// Random: percent dropped (0..100, two decimals).
    pub pct: Option<f64>,
    /// Burst: consecutive frames dropped...
    pub k: Option<u32>,
    /// ... out of every this many (default 100).
    pub every: Option<u32>,
    /// Seconds after the Quicksilver processes start (absent: from the start of the case,
    /// raw baseline included).
    pub at_s: Option<f64>,
    /// Seconds after the Quicksilver processes start when the loss is cleared (absent: at
    /// the end of the case).
    pub until_s: Option<f64>,
    /// Only these destination ports (`loss.sh --dport`), e.g. `"7401"` or `"7400-7401"`.
    pub dport: Option<String>,
}

impl LossEvent {
    /// The `loss.sh` arguments after `PREFIX I`.
    pub fn loss_args(&self) -> Vec<String> {
        let mut v = match self.mode {
            LossMode::Random => vec!["random".into(), fmt_pct(self.pct.unwrap_or(0.0))],
            LossMode::Burst => vec![
                "burst".into(),
                self.k.unwrap_or(0).to_string(),
                self.every.unwrap_or(100).to_string(),
            ],
        };
        if let Some(p) = &self.dport {
            v.push("--dport".into());
            v.push(p.clone());
        }
        v
    }

    /// A short label: `random 1%`, `burst 10/100`.
    pub fn label(&self) -> String {
        match self.mode {
            LossMode::Random => format!("random {}%", fmt_pct(self.pct.unwrap_or(0.0))),
            LossMode::Burst => format!(
                "burst {}/{}",
                self.k.unwrap_or(0),
                self.every.unwrap_or(100)
            ),
        }
    }
}

fn fmt_pct(p: f64) -> String {
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Kill a named process at a time.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Seconds after the Quicksilver processes start.
    pub at_s: f64,
    /// Process name, `NAME@hI`.
    pub kill: String,
    /// Signal number (default 9, SIGKILL).
    #[serde(default = "default_signal")]
    pub signal: i32,
}

fn default_signal() -> i32 {
    9
}

/// The kind of process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `qs sub`.
    Sub,
    /// `qs pub`.
    Pub,
    /// `qs bench raw-recv`.
    RawRecv,
    /// `qs bench raw-send`.
    RawSend,
}

/// A `qs sub` process of a case, with what it should receive.
#[derive(Debug, Clone)]
pub struct SubPlan {
    /// `NAME@hI`.
    pub name: String,
    /// Host index.
    pub host: usize,
    /// The spec it comes from.
    pub spec: SubSpec,
    /// Topics.
    pub topics: Vec<String>,
    /// Messages all publishers send on these topics.
    pub expected: u64,
}

/// A `qs pub` process of a case.
#[derive(Debug, Clone)]
pub struct PubPlan {
    /// `NAME@hI`.
    pub name: String,
    /// The spec.
    pub spec: PubSpec,
    /// Topics.
    pub topics: Vec<String>,
    /// `--subscribers` value.
    pub subscribers: usize,
}

/// The processes of a case, expanded and with expected counts.
#[derive(Debug, Clone)]
pub struct CasePlan {
    /// Subscribers.
    pub subs: Vec<SubPlan>,
    /// Publishers.
    pub pubs: Vec<PubPlan>,
}

impl CasePlan {
    /// Names of every process of the case (raw ones included).
    pub fn process_names(case: &Case) -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        for sub in &case.subs {
            for h in &sub.hosts {
                s.insert(proc_name(&sub.name, *h));
            }
        }
        for p in &case.pubs {
            s.insert(proc_name(&p.name, p.host));
        }
        if let Some(r) = &case.raw {
            s.insert(proc_name("raw-send", r.from));
            for h in &r.to {
                s.insert(proc_name("raw-recv", *h));
            }
        }
        s
    }
}

/// `NAME@hI`.
pub fn proc_name(name: &str, host: usize) -> String {
    format!("{name}@h{host}")
}

fn topic_list(
    name: &str,
    topics: &[String],
    range: &Option<TopicRange>,
) -> anyhow::Result<Vec<String>> {
    let mut v = topics.to_vec();
    if let Some(r) = range {
        if r.count == 0 {
            bail!("{name}: topic_range.count must be at least 1");
        }
        v.extend(r.names());
    }
    if v.is_empty() {
        bail!("{name}: no topics (give `topics = [...]` or `topic_range`)");
    }
    Ok(v)
}

/// Messages a publisher sending `count` messages round robin over `topics` sends on each
/// topic (`qs pub` sends message `seq` on `topics[seq % len]`).
pub fn per_topic_counts(topics: &[String], count: u64) -> BTreeMap<String, u64> {
    let n = topics.len() as u64;
    let mut m = BTreeMap::new();
    if n == 0 {
        return m;
    }
    for (i, t) in topics.iter().enumerate() {
        let c = count / n + u64::from((i as u64) < count % n);
        *m.entry(t.clone()).or_insert(0) += c;
    }
    m
}

/// Messages a subscriber of `sub_topics` should receive from these publishers.
pub fn expected_count<'a>(
    sub_topics: &[String],
    pubs: impl IntoIterator<Item = (&'a [String], u64)>,
) -> u64 {
    let want: BTreeSet<&String> = sub_topics.iter().collect();
    pubs.into_iter()
        .map(|(topics, count)| {
            per_topic_counts(topics, count)
                .iter()
                .filter(|(t, _)| want.contains(t))
                .map(|(_, c)| c)
                .sum::<u64>()
        })
        .sum()
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

fn check_name(what: &str, n: &str) -> anyhow::Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 40
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("{what} name {n:?}: 1-40 characters of letters, digits, '-', '_', '.'");
    }
    Ok(())
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text).map_err(|e| anyhow::anyhow!("bad TOML: {e}"))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every rule the format has; the first broken one is the error.
    pub fn validate(&self) -> anyhow::Result<()> {
        check_name("scenario", &self.name)?;
        if self.hosts == 0 || self.hosts > HOSTS_MAX {
            bail!("hosts = {}: want 1..={HOSTS_MAX}", self.hosts);
        }
        if let Some(m) = self.mtu {
            if !(576..=65535).contains(&m) {
                bail!("mtu = {m}: want 576..=65535");
            }
        }
        if !positive(self.timeout_s) {
            bail!("timeout_s must be positive");
        }
        if self.cases.is_empty() {
            bail!("no [[case]]");
        }
        let mut names = BTreeSet::new();
        for c in &self.cases {
            self.validate_case(c)
                .with_context(|| format!("case {:?}", c.name))?;
            if !names.insert(&c.name) {
                bail!("case name {:?} appears twice", c.name);
            }
        }
        Ok(())
    }

    fn host(&self, what: &str, h: usize) -> anyhow::Result<()> {
        if h == 0 || h > self.hosts {
            bail!(
                "{what}: host {h} is not on the LAN (hosts 1..={})",
                self.hosts
            );
        }
        Ok(())
    }

    fn validate_case(&self, c: &Case) -> anyhow::Result<()> {
        check_name("case", &c.name)?;
        if let Some(t) = c.timeout_s {
            if !positive(t) {
                bail!("timeout_s must be positive");
            }
        }
        if c.raw.is_none() && c.pubs.is_empty() {
            bail!("nothing to run: no [case.raw] and no [[case.pub]]");
        }
        if let Some(r) = &c.raw {
            self.host("raw.from", r.from)?;
            if r.to.is_empty() {
                bail!("raw.to is empty");
            }
            for h in &r.to {
                self.host("raw.to", *h)?;
                if *h == r.from {
                    bail!("raw: host {h} both sends and receives");
                }
            }
            if r.size < 16 {
                bail!(
                    "raw.size = {}: at least 16 (sequence number and send time)",
                    r.size
                );
            }
            if r.count == 0 {
                bail!("raw.count must be at least 1");
            }
        }
        let mut spec_names = BTreeSet::new();
        for s in &c.subs {
            check_name("sub", &s.name)?;
            if !spec_names.insert(&s.name) {
                bail!("process name {:?} appears twice", s.name);
            }
            if s.hosts.is_empty() {
                bail!("sub {:?}: hosts is empty", s.name);
            }
            let mut seen = BTreeSet::new();
            for h in &s.hosts {
                self.host(&format!("sub {:?}", s.name), *h)?;
                if !seen.insert(h) {
                    bail!("sub {:?}: host {h} listed twice", s.name);
                }
            }
            topic_list(&format!("sub {:?}", s.name), &s.topics, &s.topic_range)?;
        }
        for p in &c.pubs {
            check_name("pub", &p.name)?;
            if !spec_names.insert(&p.name) {
                bail!("process name {:?} appears twice", p.name);
            }
            self.host(&format!("pub {:?}", p.name), p.host)?;
            if p.size < 16 {
                bail!(
                    "pub {:?}: size = {}: at least 16 (sequence number and send time)",
                    p.name,
                    p.size
                );
            }
            if p.count == 0 {
                bail!("pub {:?}: count must be at least 1", p.name);
            }
            topic_list(&format!("pub {:?}", p.name), &p.topics, &p.topic_range)?;
        }
        if spec_names.contains(&"raw-send".to_string())
            || spec_names.contains(&"raw-recv".to_string())
        {
            bail!("the names raw-send and raw-recv are reserved for the raw baseline");
        }
        for l in &c.loss {
            if l.hosts.is_empty() {
                bail!("loss: hosts is empty");
            }
            for h in &l.hosts {
                self.host("loss", *h)?;
            }
            match l.mode {
                LossMode::Random => {
                    let Some(p) = l.pct else {
                        bail!("loss mode random needs pct")
                    };
                    if !(0.0..=100.0).contains(&p) {
                        bail!("loss pct = {p}: want 0..=100");
                    }
                    if l.k.is_some() || l.every.is_some() {
                        bail!("loss mode random takes pct, not k/every");
                    }
                }
                LossMode::Burst => {
                    let Some(k) = l.k else {
                        bail!("loss mode burst needs k")
                    };
                    let every = l.every.unwrap_or(100);
                    if every == 0 || k > every {
                        bail!("loss burst: need 0 <= k <= every, every >= 1 (k = {k}, every = {every})");
                    }
                    if l.pct.is_some() {
                        bail!("loss mode burst takes k/every, not pct");
                    }
                }
            }
            if let Some(a) = l.at_s {
                if !non_negative(a) {
                    bail!("loss at_s must be >= 0");
                }
            }
            if let Some(u) = l.until_s {
                if !positive(u - l.at_s.unwrap_or(0.0)) {
                    bail!("loss until_s must come after at_s");
                }
            }
            if let Some(p) = &l.dport {
                let ok =
                    p.split('-').count() <= 2 && p.split('-').all(|x| x.parse::<u16>().is_ok());
                if !ok {
                    bail!("loss dport {p:?}: want PORT or LO-HI");
                }
            }
        }
        let procs = CasePlan::process_names(c);
        for f in &c.fault {
            if !non_negative(f.at_s) {
                bail!("fault at_s must be >= 0");
            }
            if !procs.contains(&f.kill) {
                bail!(
                    "fault kills {:?}, which is not a process of this case (known: {})",
                    f.kill,
                    procs.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            if f.kill.starts_with("raw-") {
                bail!("faults apply to Quicksilver processes, not to the raw baseline");
            }
            if !(1..=64).contains(&f.signal) {
                bail!("fault signal {}: want 1..=64", f.signal);
            }
        }
        let plan = self.plan(c)?;
        if c.expect == Expect::Exact {
            for s in &plan.subs {
                if s.expected == 0 {
                    bail!(
                        "sub {:?} subscribes no topic any publisher publishes (expected count 0)",
                        s.name
                    );
                }
            }
        }
        Ok(())
    }

    /// Expands a case into processes with their expected counts.
    pub fn plan(&self, c: &Case) -> anyhow::Result<CasePlan> {
        let mut pubs = Vec::new();
        for p in &c.pubs {
            pubs.push(PubPlan {
                name: proc_name(&p.name, p.host),
                topics: topic_list(&p.name, &p.topics, &p.topic_range)?,
                spec: p.clone(),
                subscribers: 0,
            });
        }
        let mut subs = Vec::new();
        for s in &c.subs {
            let topics = topic_list(&s.name, &s.topics, &s.topic_range)?;
            let expected = expected_count(
                &topics,
                pubs.iter().map(|p| (p.topics.as_slice(), p.spec.count)),
            );
            for h in &s.hosts {
                subs.push(SubPlan {
                    name: proc_name(&s.name, *h),
                    host: *h,
                    spec: s.clone(),
                    topics: topics.clone(),
                    expected,
                });
            }
        }
        for p in &mut pubs {
            let mine: BTreeSet<&String> = p.topics.iter().collect();
            let interested = subs
                .iter()
                .filter(|s| s.topics.iter().any(|t| mine.contains(t)))
                .count();
            p.subscribers = p.spec.subscribers.unwrap_or(interested);
        }
        Ok(CasePlan { subs, pubs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
hosts = 4
[[case]]
name = "c1"
[case.raw]
from = 1
to = [2, 3]
size = 64
count = 1000
[[case.sub]]
name = "all"
hosts = [2, 3]
topics = ["a", "b", "c"]
[[case.sub]]
name = "onlyb"
hosts = [4]
topics = ["b"]
[[case.pub]]
name = "p"
host = 1
topics = ["a", "b", "c"]
count = 10
[[case.loss]]
hosts = [2]
mode = "burst"
k = 10
[[case.fault]]
at_s = 1.5
kill = "onlyb@h4"
"#;

    #[test]
    fn a_good_scenario_parses_and_plans_expected_counts() {
        let s = Scenario::parse(GOOD).unwrap();
        let plan = s.plan(&s.cases[0]).unwrap();
        let by: BTreeMap<_, _> = plan
            .subs
            .iter()
            .map(|s| (s.name.as_str(), s.expected))
            .collect();
        assert_eq!(by["all@h2"], 10);
        assert_eq!(by["all@h3"], 10);
        // seq 1, 4, 7 go to "b".
        assert_eq!(by["onlyb@h4"], 3);
        assert_eq!(plan.pubs[0].subscribers, 3);
        assert_eq!(s.cases[0].loss[0].loss_args(), ["burst", "10", "100"]);
        assert_eq!(s.cases[0].expect, Expect::Exact);
    }

    #[test]
    fn round_robin_counts_split_the_remainder_over_the_first_topics() {
        let t: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
        let m = per_topic_counts(&t, 11);
        assert_eq!((m["x"], m["y"], m["z"]), (4, 4, 3));
        let m = per_topic_counts(&t, 2);
        assert_eq!((m["x"], m["y"], m["z"]), (1, 1, 0));
        // A topic named twice gets both shares.
        let d: Vec<String> = ["x", "x", "y"].iter().map(|s| s.to_string()).collect();
        assert_eq!(per_topic_counts(&d, 3)["x"], 2);
    }

    #[test]
    fn expected_count_sums_over_publishers_and_ignores_other_topics() {
        let p1: Vec<String> = vec!["a".into(), "b".into()];
        let p2: Vec<String> = vec!["b".into()];
        let sub: Vec<String> = vec!["b".into(), "zzz".into()];
        assert_eq!(
            expected_count(&sub, [(p1.as_slice(), 5), (p2.as_slice(), 7)]),
            2 + 7
        );
        assert_eq!(
            expected_count(&["none".to_string()], [(p1.as_slice(), 5)]),
            0
        );
    }

    #[test]
    fn topic_ranges_expand_in_order() {
        let r = TopicRange {
            prefix: "t".into(),
            count: 3,
            args: TopicArgs::RangeFlag,
        };
        assert_eq!(r.names(), ["t0", "t1", "t2"]);
    }

    fn err(text: &str) -> String {
        format!("{:#}", Scenario::parse(text).unwrap_err())
    }

    #[test]
    fn bad_toml_is_a_clear_error() {
        let e = err("name = \"x\"\nhosts = [");
        assert!(e.contains("bad TOML"), "{e}");
        let e = err(&GOOD.replace("count = 10\n", "count = 10\nbogus = 1\n"));
        assert!(e.contains("bogus"), "{e}");
        let e = err(&GOOD.replace("hosts = 4\n", ""));
        assert!(e.contains("hosts"), "{e}");
    }

    #[test]
    fn invalid_scenarios_name_the_broken_rule() {
        let cases = [
            (
                GOOD.replace("hosts = [4]", "hosts = [5]"),
                "host 5 is not on the LAN",
            ),
            (
                GOOD.replace("kill = \"onlyb@h4\"", "kill = \"nobody@h4\""),
                "not a process",
            ),
            (GOOD.replace("k = 10", "k = 101"), "k <= every"),
            (
                GOOD.replace("topics = [\"b\"]", "topics = [\"q\"]"),
                "expected count 0",
            ),
            (GOOD.replace("size = 64", "size = 8"), "at least 16"),
            (
                GOOD.replace("to = [2, 3]", "to = [1]"),
                "both sends and receives",
            ),
            (GOOD.replace("name = \"c1\"", "name = \"c 1\""), "case name"),
            (
                GOOD.replace("mode = \"burst\"\nk = 10", "mode = \"random\""),
                "needs pct",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "want {want:?} in: {e}");
        }
    }

    #[test]
    fn report_cases_may_have_subscribers_with_nothing_expected() {
        let t = GOOD
            .replace("topics = [\"b\"]", "topics = [\"q\"]")
            .replace("name = \"c1\"", "name = \"c1\"\nexpect = \"report\"");
        let s = Scenario::parse(&t).unwrap();
        assert_eq!(s.cases[0].expect, Expect::Report);
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "found {n} scenarios in {}", dir.display());
    }
}
