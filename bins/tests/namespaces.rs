//! Real sockets across network namespaces: `qs pub` in one namespace, `qs sub --json` in two
//! others, on a bridge built by `testbed/scripts/ns-pubsub-test.sh` (torn down afterwards).
//! Needs root for namespaces; without it the test says so and passes as skipped.

use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn qs_pub_reaches_two_qs_subs_in_other_namespaces_completely() {
    if !is_root() {
        eprintln!("SKIP: network namespaces need root");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testbed/scripts/ns-pubsub-test.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .args(["--qs", env!("CARGO_BIN_EXE_qs"), "--count", "10000"])
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "namespace test failed:\n{text}");
    assert_eq!(
        text.matches("PASS").count(),
        2,
        "two subscribers passed:\n{text}"
    );
}
