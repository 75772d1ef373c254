//! CI smoke test: `qs-testbed run testbed/scenarios/smoke.toml` on a real namespace LAN with
//! the release `qs` binary, asserting that every delivery check passes and the LAN is gone
//! afterwards. Needs root and `target/release/qs` (built by `cargo test --workspace
//! --release`, or `cargo build --release -p quicksilver-cli`); without either it prints SKIP and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use qs_runtime::os::is_root;

/// `target/release/qs` of the target directory this test binary was built into.
fn release_qs() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // .../target/<profile>/deps/smoke-<hash>
    let target = exe.parent()?.parent()?.parent()?;
    let qs = target.join("release").join("qs");
    qs.exists().then_some(qs)
}

#[test]
fn smoke_scenario_delivers_everything_on_a_namespace_lan() {
    if !is_root() {
        println!("SKIP: the smoke scenario needs root for network namespaces");
        return;
    }
    let Some(qs) = release_qs() else {
        println!("SKIP: target/release/qs not found (cargo build --release -p quicksilver-cli)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("qs-testbed-smoke-{}", std::process::id()));
    let prefix = format!("qsk{}", std::process::id() % 100_000_000);
    let run = Command::new(env!("CARGO_BIN_EXE_qs-testbed"))
        .arg("run")
        .arg(root.join("../scenarios/smoke.toml"))
        .arg("--qs")
        .arg(&qs)
        .arg("--out")
        .arg(&out)
        .args(["--prefix", &prefix])
        .output()
        .expect("qs-testbed runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{text}");
    assert!(run.status.success(), "smoke scenario failed:\n{text}");

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["passed"], true);
    let checks = results["cases"][0]["checks"].as_array().unwrap();
    assert!(checks.len() >= 10, "{checks:?}");
    for c in checks {
        assert_eq!(c["pass"], true, "check failed: {c}");
    }
    for name in ["sub@h2", "sub@h3"] {
        let p = results["cases"][0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        assert_eq!(p["json"]["received"], 10_000, "{p}");
    }
    assert!(out.join("results.md").exists());

    // Torn down: no namespace of the prefix is left.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(!ns.contains(&format!("{prefix}h")), "namespaces left: {ns}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_broken_scenario_is_refused_with_a_clear_message_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("qs-testbed-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nhosts = 2\n[[case]]\nname = \"c\"\n[[case.pub]]\nname = \"p\"\nhost = 3\ntopics = [\"a\"]\ncount = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qs-testbed"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("host 3 is not on the LAN"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
