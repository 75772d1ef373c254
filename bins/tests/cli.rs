//! The `qs` binary as a person uses it, on loopback: lines piped into `qs pub` come out of
//! `qs sub --print` in another process; `qs doctor` passes on loopback and names a bogus
//! interface; node options come from flags over `QS_*` variables over the config file; the
//! man page and completions are generated. Each test uses its own cluster name and ports.

use std::io::Write;
use std::process::{Command, Stdio};

const QS: &str = env!("CARGO_BIN_EXE_qs");

/// Node flags for a cluster of this test alone (`offset` tells tests apart).
fn cluster_args(name: &str, offset: u16) -> Vec<String> {
    let base = 30_000 + (std::process::id() % 2_000) as u16 * 8 + offset * 2;
    vec![
        "--cluster".into(),
        format!("cli-{name}-{}", std::process::id()),
        "--control-group".into(),
        format!("239.255.0.1:{base}"),
        "--data-port".into(),
        (base + 1).to_string(),
        "--announce-interval".into(),
        "100ms".into(),
    ]
}

/// A `qs` command without any `QS_*` variable of the caller's environment.
fn qs() -> Command {
    let mut c = Command::new(QS);
    for (k, _) in std::env::vars() {
        if k.starts_with("QS_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn lines_piped_into_qs_pub_are_printed_by_qs_sub_in_order() {
    let net = cluster_args("pipe", 0);
    let lines = ["hello, world", "second line", "ünïcode ✓", "", "last"];
    let sub = qs()
        .args(["sub", "--topic", "chat", "--print", "--count"])
        .arg(lines.len().to_string())
        .args(["--wait", "30s"])
        .args(&net)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut publisher = qs()
        .args(["pub", "--topic", "chat", "--wait", "30s", "--linger", "20s"])
        .args(&net)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = publisher.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    } // EOF ends the publisher once everything is acknowledged.
    let p = publisher.wait_with_output().unwrap();
    let s = sub.wait_with_output().unwrap();
    let (p_err, s_err) = (
        String::from_utf8_lossy(&p.stderr),
        String::from_utf8_lossy(&s.stderr),
    );
    assert!(p.status.success(), "qs pub: {:?}\n{p_err}", p.status);
    assert!(s.status.success(), "qs sub: {:?}\n{s_err}", s.status);
    let printed = String::from_utf8(s.stdout).unwrap();
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        lines,
        "exactly the lines, in order (sub stderr: {s_err})"
    );
    assert!(
        s_err.contains("received 5 messages"),
        "the tally goes to stderr when stdout carries messages: {s_err}"
    );
}

#[test]
fn qs_sub_timeout_counts_silence_after_the_latest_message() {
    let net = cluster_args("timeout", 5);
    let sub = qs()
        .args([
            "sub",
            "--topic",
            "once",
            "--json",
            "--timeout",
            "1s",
            "--wait",
            "30s",
        ])
        .args(&net)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = qs()
        .args([
            "pub",
            "--topic",
            "once",
            "--message",
            "only one",
            "--wait",
            "30s",
        ])
        .args(&net)
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let out = sub.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "quiet after a message is a normal end"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["received"], 1);
    assert_eq!(v["ended"], "timeout");
}

#[test]
fn qs_pub_without_a_subscriber_says_so_and_exits_with_code_3() {
    let out = qs()
        .args(["pub", "--topic", "nobody", "--message", "x", "--wait", "1s"])
        .args(cluster_args("nobody", 1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("waiting for 1 subscriber"), "{err}");
    assert!(err.contains("--subscribers 0"), "names the way out: {err}");
}

#[test]
fn qs_sub_json_keeps_its_summary_fields_and_says_why_it_ended() {
    let out = qs()
        .args(["sub", "--topic", "quiet", "--json", "--wait", "500ms"])
        .args(cluster_args("quiet", 2))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "nothing arrived: code 3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "received",
        "duplicates",
        "out_of_order",
        "gaps",
        "bytes",
        "per_sender",
        "checksums",
        "rate_msgs_s",
        "missed_on_join",
        "subscriber_overflow",
        "socket_rcvbuf",
        "senders_lost",
        "handover",
    ] {
        assert!(v.get(field).is_some(), "{field} in {v}");
    }
    assert_eq!(
        v["handover"]["departures"], 0,
        "no subscription change: {v}"
    );
    assert_eq!(v["ended"], "wait");
}

#[test]
fn qs_doctor_passes_on_loopback() {
    let out = qs()
        .args(["doctor", "--json"])
        .args(cluster_args("doctor", 3))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["can_run"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "interface",
        "mtu",
        "socket_buffers",
        "multicast_loopback",
        "node",
    ] {
        assert!(names.contains(&want), "{want} checked: {names:?}");
    }
}

#[test]
fn qs_doctor_on_a_bogus_interface_names_it_and_fails() {
    let out = qs().args(["doctor", "--iface", "bogus0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✗") && text.contains("bogus0"), "{text}");
    assert!(
        text.contains("lo (127.0.0.1)"),
        "lists what there is: {text}"
    );
    assert!(text.contains("cannot run"), "{text}");
}

/// `qs config` with `args` and `QS_CLUSTER`/`QS_DATA_PORT` set to `env` (if any).
fn effective(args: &[&str], env: Option<(&str, &str)>) -> toml::Table {
    let mut c = qs();
    c.arg("config").args(args);
    if let Some((cluster, port)) = env {
        c.env("QS_CLUSTER", cluster).env("QS_DATA_PORT", port);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[test]
fn flags_beat_environment_variables_which_beat_the_config_file() {
    let dir = std::env::temp_dir().join(format!("qs-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("qs.toml");
    std::fs::write(
        &file,
        "cluster = \"from-file\"\ndata_port = 9001\npeer_timeout = \"2s\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let only_file = effective(&["--config", f], None);
    assert_eq!(only_file["cluster"].as_str(), Some("from-file"));
    assert_eq!(only_file["data_port"].as_integer(), Some(9001));

    let env = effective(&["--config", f], Some(("from-env", "9002")));
    assert_eq!(env["cluster"].as_str(), Some("from-env"));
    assert_eq!(env["data_port"].as_integer(), Some(9002));
    assert_eq!(
        env["peer_timeout"].as_str(),
        Some("2s"),
        "what the variables leave unset still comes from the file"
    );

    let flag = effective(
        &["--config", f, "--cluster", "from-flag"],
        Some(("from-env", "9002")),
    );
    assert_eq!(flag["cluster"].as_str(), Some("from-flag"));
    assert_eq!(flag["data_port"].as_integer(), Some(9002));

    // A typo in the file is an error that names it, not a silently ignored key.
    std::fs::write(&file, "clustr = \"x\"\n").unwrap();
    let out = qs().args(["config", "--config", f]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clustr"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn man_pages_and_completions_are_generated_from_the_command_line_definition() {
    let man = qs().args(["man"]).output().unwrap();
    assert!(man.status.success());
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH"),
        "roff: {man:.200}"
    );
    let sub = qs().args(["man", "pub"]).output().unwrap();
    assert!(String::from_utf8_lossy(&sub.stdout).contains("\\-\\-message"));
    let bash = qs().args(["completions", "bash"]).output().unwrap();
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("doctor") && bash.contains("--iface"));
}

#[test]
fn an_interrupted_subscriber_exits_cleanly() {
    let mut sub = qs()
        .args(["sub", "--topic", "t", "--json"])
        .args(cluster_args("interrupt", 4))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line on stderr comes once the node runs and Ctrl-C is handled.
    let mut err = std::io::BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("subscribed to t"), "{line}");
    assert!(qs_runtime::os::kill(sub.id(), 2), "SIGINT delivered");
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ended"], "interrupted");
}

/// A publisher killed mid-stream: the subscriber hears that the sender is gone (after the
/// failure detection and the grace it is given) and reports it.
#[test]
fn a_killed_publisher_is_reported_as_a_lost_sender() {
    let net = cluster_args("killed", 7);
    let fast = ["--peer-timeout", "1s", "--sender-grace", "1s"];
    let sub = qs()
        .args([
            "sub",
            "--topic",
            "k",
            "--json",
            "--timeout",
            "8s",
            "--wait",
            "30s",
        ])
        .args(fast)
        .args(&net)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut publisher = qs()
        .args(["pub", "--topic", "k", "--count", "1000000", "--rate", "200"])
        .args(["--wait", "30s"])
        .args(fast)
        .args(&net)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    publisher.kill().unwrap(); // SIGKILL: no goodbye.
    publisher.wait().unwrap();
    let out = sub.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["senders_lost"], 1, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
}

#[test]
fn a_key_file_from_qs_keygen_lets_keyed_nodes_talk_and_a_node_without_it_hears_nothing() {
    let net = cluster_args("keyed", 6);
    let key = std::env::temp_dir().join(format!("qs-cli-key-{}", std::process::id()));
    let out = qs().arg("keygen").output().unwrap();
    assert!(out.status.success());
    std::fs::write(&key, &out.stdout).unwrap();
    let sub = |keyed: bool, wait: &str| {
        let mut c = qs();
        c.args([
            "sub", "--topic", "k", "--json", "--count", "20", "--wait", wait,
        ])
        .args(&net)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if keyed {
            // The environment variable, as a deployment would set it.
            c.env("QS_KEY_FILE", &key);
        }
        c.spawn().unwrap()
    };
    let keyed = sub(true, "30s");
    let outsider = sub(false, "6s");
    let p = qs()
        .args([
            "pub", "--topic", "k", "--count", "20", "--wait", "30s", "--linger", "20s",
        ])
        .arg("--key-file")
        .arg(&key)
        .args(&net)
        .output()
        .unwrap();
    let (k, o) = (
        keyed.wait_with_output().unwrap(),
        outsider.wait_with_output().unwrap(),
    );
    std::fs::remove_file(&key).unwrap();
    let k: serde_json::Value = serde_json::from_slice(&k.stdout).unwrap();
    assert_eq!(k["received"], 20, "{k}");
    assert_eq!(k["duplicates"], 0);
    assert!(
        p.status.success(),
        "qs pub: {}; the keyed subscriber: {k}",
        String::from_utf8_lossy(&p.stderr)
    );
    assert_eq!(o.status.code(), Some(3), "the outsider received nothing");
    let o: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o["received"], 0);
    assert!(
        o["drops_auth"].as_u64().unwrap() > 0,
        "it saw keyed datagrams it could not open: {o}"
    );
}
