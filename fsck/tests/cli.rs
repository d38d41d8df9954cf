//! The `fsck-digimed` binary: exit codes 0/1/4/8/16 and the JSON report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use digimedfs_core::keysource::KeyFile;
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fsck(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fsck-digimed"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    KeyFile::create_new(&key).unwrap();
    let dir = tmp.path().join("fs");
    mkfs(
        &dir,
        &KeyFile::open(&key).unwrap(),
        &MkfsOptions::default(),
        &digimedfs_sled::Sled,
    )
    .unwrap();
    (tmp, key, dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn exit_codes() {
    let (tmp, key, dir) = setup();
    assert_eq!(fsck(&["-n", "--key-file", s(&key), s(&dir)]).0, 0);
    std::fs::write(dir.join("superblock.tmp"), b"x").unwrap();
    let (code, out) = fsck(&["-n", "--key-file", s(&key), s(&dir)]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("errors left uncorrected"), "{out}");
    let (code, json) = fsck(&["-n", "--json", "--key-file", s(&key), s(&dir)]);
    assert_eq!(code, 4);
    assert!(
        json.contains("\"kind\":\"stale_temp\"") && json.contains("\"exit_code\":4"),
        "{json}"
    );
    assert_eq!(fsck(&["-p", "--key-file", s(&key), s(&dir)]).0, 1);
    assert_eq!(fsck(&["-n", "-v", "--key-file", s(&key), s(&dir)]).0, 0);
    // Wrong key: operational error.
    let other = tmp.path().join("other");
    KeyFile::create_new(&other).unwrap();
    assert_eq!(fsck(&["-n", "--key-file", s(&other), s(&dir)]).0, 8);
    // Repairing a mounted filesystem is refused.
    let lock = digimedfs_core::backing::BackingDir::open(&dir)
        .unwrap()
        .lock(false)
        .unwrap();
    assert_eq!(fsck(&["-y", "--key-file", s(&key), s(&dir)]).0, 8);
    assert_eq!(fsck(&["-n", "--key-file", s(&key), s(&dir)]).0, 0);
    drop(lock);
    // Usage errors.
    assert_eq!(fsck(&[]).0, 16);
    assert_eq!(fsck(&["-n", "-y", "--key-file", s(&key), s(&dir)]).0, 16);
    assert_eq!(fsck(&["--bogus"]).0, 16);
}

/// A backing directory that does not exist is named as missing (it used to be "not a
/// directory"), and nothing is reported clean: exit 8.
#[test]
fn missing_backing_directory_is_named_as_missing() {
    let (tmp, key, _dir) = setup();
    let missing = tmp.path().join("nope");
    let out = Command::new(env!("CARGO_BIN_EXE_fsck-digimed"))
        .args(["-n", "--key-file", s(&key), s(&missing)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(!stderr.contains("not a directory"), "{stderr}");
}
