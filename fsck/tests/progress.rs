//! Progress of the `fsck-digimed` binary: `-C FD` writes e2fsck's completion lines
//! (`PASS CURRENT MAX DEVICE`) to the descriptor, pass by pass, each pass reaching its total
//! (pass 1 with -n: the bytes of the metadata store's copy),
//! without changing the report or exit status; without -C and with stderr not a terminal,
//! nothing progress-like is written.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use digimedfs_core::filesystem::{Ctx, Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::keysource::KeyFile;
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FILES: u64 = 3000;

/// A filesystem with [`FILES`] files in directories of 500 (every 50th large enough for an
/// object) and a stale temporary file, so the report has a problem and exit status 4.
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
    let fs = Filesystem::open(
        &dir,
        &KeyFile::open(&key).unwrap(),
        &OpenOptions::default(),
        &digimedfs_sled::Sled,
    )
    .unwrap();
    let ctx = Ctx::ROOT;
    let mut parent = ROOT_INO;
    for i in 0..FILES {
        if i % 500 == 0 {
            let name = format!("d{:03}", i / 500);
            parent = fs
                .mkdir(&ctx, ROOT_INO, name.as_bytes(), 0o755, 0)
                .unwrap()
                .ino;
        }
        let (a, fh) = fs
            .create(
                &ctx,
                parent,
                format!("f{i:05}").as_bytes(),
                0o644,
                0,
                libc::O_RDWR,
            )
            .unwrap();
        let len = if i % 50 == 0 { 200_000 } else { 100 + i % 900 };
        fs.write(a.ino, fh, 0, &vec![i as u8; len as usize])
            .unwrap();
        fs.release(a.ino, fh).unwrap();
    }
    fs.close().unwrap();
    std::fs::write(dir.join("superblock.tmp"), b"x").unwrap();
    (tmp, key, dir)
}

fn fsck() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fsck-digimed"))
}

/// Runs fsck with `args` and a pipe as its descriptor 3; returns its output and what it
/// wrote to descriptor 3.
fn fsck_with_fd3(args: &[&str]) -> (Output, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let raw = writer.as_raw_fd();
    let mut cmd = fsck();
    cmd.args(args);
    // SAFETY: dup2 is async-signal-safe; the child only duplicates the inherited pipe end.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(writer);
    // Read while the child runs, so a full pipe never blocks it.
    let read = std::thread::spawn(move || {
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        s
    });
    let out = child.wait_with_output().unwrap();
    (out, read.join().unwrap())
}

/// Bytes of the regular files beneath `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                tree_bytes(&e.path())
            } else if t.is_file() {
                e.metadata().unwrap().len()
            } else {
                0
            }
        })
        .sum()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dash_c_fd_writes_e2fsck_completion_lines_pass_by_pass() {
    let (_tmp, key, dir) = setup();
    let args = ["-n", "--key-file", s(&key), s(&dir)];
    let plain = fsck().args(args).output().unwrap();
    assert_eq!(plain.status.code(), Some(4), "{plain:?}");

    let with_c: Vec<&str> = ["-C", "3"].iter().copied().chain(args).collect();
    let (out, lines) = fsck_with_fd3(&with_c);
    // The report and the exit status are those of the run without progress.
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&plain.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stale_temp"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains(&b'\r'),
        "no display on a pipe: {out:?}"
    );

    // (pass, current, max) per line.
    let mut parsed = Vec::new();
    for line in lines.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "PASS CURRENT MAX DEVICE: {line:?}");
        let pass: u8 = f[0].parse().expect("pass");
        let cur: u64 = f[1].parse().expect("current");
        let max: u64 = f[2].parse().expect("max");
        assert_eq!(f[3], s(&dir), "device field: {line:?}");
        assert!((1..=7).contains(&pass), "{line:?}");
        assert!(max == 0 || cur <= max, "current beyond max: {line:?}");
        parsed.push((pass, cur, max));
    }
    // Passes in order, every one present; within a pass the count never goes back.
    let passes: Vec<u8> = parsed.iter().map(|p| p.0).collect();
    assert!(passes.windows(2).all(|w| w[0] <= w[1]), "{lines}");
    for pass in 1..=7u8 {
        let of: Vec<&(u8, u64, u64)> = parsed.iter().filter(|p| p.0 == pass).collect();
        assert!(!of.is_empty(), "pass {pass} missing:\n{lines}");
        assert!(of.windows(2).all(|w| w[0].1 <= w[1].1), "{lines}");
        let last = of.last().unwrap();
        assert!(
            last.2 > 0 && last.1 == last.2,
            "pass {pass} ends at its max: {last:?}\n{lines}"
        );
    }
    // The totals are the work: the bytes of meta/ that -n copies, records in pass 2 and 7,
    // the directory entries, object bytes.
    let last = |pass: u8| parsed.iter().rev().find(|p| p.0 == pass).unwrap().2;
    assert_eq!(last(1), tree_bytes(&dir.join("meta")), "{lines}");
    assert_eq!(last(2), last(7), "{lines}");
    assert!(last(3) >= FILES + FILES / 500, "{lines}");
    assert!(last(5) >= (FILES / 50) * 200_000, "{lines}");
}

#[test]
fn nothing_progress_like_without_dash_c_when_stderr_is_not_a_terminal() {
    let (_tmp, key, dir) = setup();
    for args in [
        vec!["-n", "--key-file", s(&key), s(&dir)],
        vec!["-n", "-v", "--key-file", s(&key), s(&dir)],
        vec!["-n", "--json", "--key-file", s(&key), s(&dir)],
    ] {
        // No -C: descriptor 3 is there but must stay unused.
        let (out, fd3) = fsck_with_fd3(&args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert_eq!(fd3, "", "{args:?}");
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains('\r'), "{args:?}: {text:?}");
            assert!(!text.contains('%'), "{args:?}: {text:?}");
            assert!(!text.contains("/7 "), "{args:?}: {text:?}");
        }
    }
    // A descriptor that is not open is an error before anything is checked.
    let out = fsck()
        .args(["-C", "97", "-n", "--key-file", s(&key), s(&dir)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("file descriptor 97"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
