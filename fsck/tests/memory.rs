//! fsck's peak memory per file: what a check holds grows by a bounded number of bytes for
//! each file it checks, in check-only (`-n`) and repair (`-y`) mode, so a million small
//! files fit in the bound docs/fsck.md states. Measured as the slope of the child process's
//! peak resident set (`wait4`) between two sizes of the same filesystem, so fixed costs
//! (the binary, the store's cache and buffers) cancel out.
//!
//! Linux reports a child's peak as at least its parent's peak when it was started, so the
//! files are written by another run of this program (see [`BUILD_ENV`]) and this process
//! stays small. No test harness: `main` is the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use digimedfs_core::filesystem::{Ctx, Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::keysource::KeyFile;
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use std::path::Path;
use std::process::Command;

/// Files added between the two measurements (and present at the first).
const STEP: u64 = 40_000;
/// Files per directory, as a bulk copy makes them.
const PER_DIR: u64 = 1000;
/// Bound on the peak memory fsck adds per file. The checker keeps about 200 bytes per
/// small file (inode summary, inline length, entry and name, walk state); before its model
/// was made compact, and while sled kept every page a scan pulled in, it was over 2 KiB.
const MAX_BYTES_PER_FILE: u64 = 512;

/// Set (to `DIR KEY FROM TO`) in the child run that adds files.
const BUILD_ENV: &str = "FSCK_MEMORY_TEST_BUILD";

/// Adds files `from..to` in a child run of this program.
fn add_files_in_child(dir: &Path, key: &Path, from: u64, to: u64) {
    let spec = format!("{} {} {from} {to}", dir.display(), key.display());
    let status = Command::new(std::env::current_exe().unwrap())
        .env(BUILD_ENV, spec)
        .status()
        .unwrap();
    assert!(status.success(), "adding files {from}..{to}: {status}");
}

/// Adds files `from..to` (1–3 KiB each, stored inline) in directories of [`PER_DIR`].
fn add_files(dir: &Path, key: &Path, from: u64, to: u64) {
    let fs = Filesystem::open(
        dir,
        &KeyFile::open(key).unwrap(),
        &OpenOptions::default(),
        &digimedfs_sled::Sled,
    )
    .unwrap();
    let ctx = Ctx::ROOT;
    let mut parent = ROOT_INO;
    for i in from..to {
        if i % PER_DIR == 0 || parent == ROOT_INO {
            let name = format!("d{:05}", i / PER_DIR);
            parent = fs
                .mkdir(&ctx, ROOT_INO, name.as_bytes(), 0o755, 0)
                .unwrap()
                .ino;
        }
        let name = format!("f{i:07}");
        let (a, fh) = fs
            .create(&ctx, parent, name.as_bytes(), 0o644, 0, libc::O_RDWR)
            .unwrap();
        let len = 1024 + (i * 7919) % 2048;
        let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (i as u8)).collect();
        fs.write(a.ino, fh, 0, &data).unwrap();
        fs.release(a.ino, fh).unwrap();
    }
    fs.close().unwrap();
}

/// Runs fsck with `args`; returns its exit code and peak resident set in bytes.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also reports its peak memory"
)]
fn fsck_peak(args: &[&str]) -> (i32, u64) {
    let child = Command::new(env!("CARGO_BIN_EXE_fsck-digimed"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (reaped here, not through `child`); both pointers
    // are to live locals of the right types.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "fsck did not exit normally");
    // ru_maxrss is in KiB on Linux.
    let peak = u64::try_from(usage.ru_maxrss).unwrap() * 1024;
    (libc::WEXITSTATUS(status), peak)
}

fn main() {
    if let Ok(spec) = std::env::var(BUILD_ENV) {
        let parts: Vec<&str> = spec.split(' ').collect();
        let [dir, key, from, to] = parts[..] else {
            panic!("{BUILD_ENV}={spec}: expected DIR KEY FROM TO");
        };
        add_files(
            Path::new(dir),
            Path::new(key),
            from.parse().unwrap(),
            to.parse().unwrap(),
        );
        return;
    }
    peak_memory_per_file_is_bounded();
    println!("peak_memory_per_file_is_bounded: ok");
}

fn peak_memory_per_file_is_bounded() {
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
    let (k, d) = (key.to_str().unwrap(), dir.to_str().unwrap());
    let measure = |files: u64| {
        let mut peaks = Vec::new();
        for mode in ["-n", "-y"] {
            let (code, peak) = fsck_peak(&[mode, "--key-file", k, d]);
            assert_eq!(code, 0, "fsck {mode} on {files} files");
            peaks.push(peak);
        }
        peaks
    };
    add_files_in_child(&dir, &key, 0, STEP);
    let small = measure(STEP);
    add_files_in_child(&dir, &key, STEP, 2 * STEP);
    let large = measure(2 * STEP);
    for (i, mode) in ["-n", "-y"].iter().enumerate() {
        println!(
            "fsck {mode}: peak {} bytes at {STEP} files, {} at {} files",
            small[i],
            large[i],
            2 * STEP
        );
        let per_file = large[i].saturating_sub(small[i]) / STEP;
        assert!(
            per_file <= MAX_BYTES_PER_FILE,
            "fsck {mode}: peak {} bytes at {STEP} files, {} at {} files: {per_file} bytes per \
             file (bound {MAX_BYTES_PER_FILE})",
            small[i],
            large[i],
            2 * STEP
        );
    }
}
