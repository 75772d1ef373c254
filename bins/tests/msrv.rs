//! The workspace's minimum supported Rust version (`rust-version` in `[workspace.package]`)
//! against its locked dependencies: every dependency built on this platform must declare a
//! `rust-version` no newer than ours (or none). This machine has one toolchain, so the
//! workspace itself is not compiled with the MSRV here; clippy's `incompatible_msrv` lint
//! (in `clippy::all`, read from the same `rust-version`) catches uses of newer std APIs.
//! Outside the workspace (a published crate) there is no lock file and the test passes as
//! skipped.

use std::process::Command;

/// `1.88` or `1.88.0` as a comparable triple.
fn version(v: &str) -> (u32, u32, u32) {
    let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    )
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_the_workspace_declares() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("Cargo.lock").exists() {
        eprintln!("SKIP: not in the workspace");
        return;
    }
    let host = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Offline and for this platform only: exactly the packages the build already fetched.
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used: Vec<&str> = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let packages = m["packages"].as_array().unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "quicksilver-cli")
        .and_then(|p| p["rust_version"].as_str())
        .expect("the workspace declares a rust-version");
    let mut too_new = Vec::new();
    for p in packages
        .iter()
        .filter(|p| used.contains(&p["id"].as_str().unwrap()))
    {
        if let Some(rv) = p["rust_version"].as_str() {
            if version(rv) > version(ours) {
                let (name, v) = (p["name"].as_str(), p["version"].as_str());
                too_new.push(format!(
                    "{} {} needs {rv}",
                    name.unwrap_or("?"),
                    v.unwrap_or("?")
                ));
            }
        }
    }
    assert!(
        too_new.is_empty(),
        "dependencies newer than rust-version {ours}: {too_new:?}"
    );
    assert!(used.len() > 50, "the resolve covers the workspace");
}
