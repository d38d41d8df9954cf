//! The `digimed-keyservice` command line: exit statuses as `digimedfs` has them, and errors as
//! one line of context, never a Rust backtrace.

use std::process::Command;

fn keyservice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_digimed-keyservice"))
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let out = keyservice().output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let out = keyservice().arg("--help").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn errors_are_one_line_without_a_backtrace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = dir.path().join("cred");
    std::fs::write(&cred, [7u8; 32]).expect("cred");
    let missing = dir.path().join("no-such-state");
    let out = keyservice()
        .env("RUST_BACKTRACE", "1")
        .arg("--credential-file")
        .arg(&cred)
        .args(["tenant", "list"])
        .arg(&missing)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("digimed-keyservice: "), "{stderr}");
    assert!(stderr.contains("no-such-state"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
