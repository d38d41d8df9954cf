//! Costs that must not grow with the file count or with what earlier sessions wrote.

use digimedfs_tests::{walk_files, TestFs};
use std::fs;

/// 1–3 KiB of bytes that differ per file (so nothing can share them).
fn contents(i: usize) -> Vec<u8> {
    let len = 1024 + (i * 7919) % 2048;
    (0..len)
        .map(|j| (j as u64 * 131 + i as u64 * 7).to_le_bytes()[0])
        .collect()
}

/// Bytes `pid` has read through read(2) and its kind (`rchar`), page cache hits included.
fn bytes_read(pid: i32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// Files the busy session writes: enough metadata log (about 8 KiB per file) that its replay
/// would dwarf what sled reads on any open.
const SESSION_FILES: usize = 12_000;

/// Mount time does not grow with what the previous mount wrote: the unmount leaves the
/// metadata store so that the next mount reads its snapshot, not the log the session wrote.
#[test]
fn a_mount_after_a_busy_session_does_not_replay_its_log() {
    let mut t = TestFs::new();
    let root = t.path("tree");
    fs::create_dir(&root).expect("mkdir");
    for i in 0..SESSION_FILES {
        fs::write(root.join(format!("f{i:05}")), contents(i)).expect("write");
    }
    t.unmount();
    let log_bytes: u64 = walk_files(&t.backing().join("meta"))
        .iter()
        .map(|f| fs::metadata(f).expect("stat").len())
        .sum();
    t.mount();
    let pid = t.daemon_pid().expect("daemon pid");
    let read = bytes_read(pid);
    eprintln!("metadata store {log_bytes} bytes; the mount read {read} bytes");
    // sled reads its snapshot and the log segment (8 MiB) the snapshot ends in, whatever the
    // store holds; a replay reads the whole log.
    assert!(
        log_bytes > 64 << 20,
        "the session wrote {log_bytes} bytes of metadata, too few to tell a replay"
    );
    assert!(
        read < log_bytes / 3,
        "the mount read {read} bytes, as much as replaying the {log_bytes}-byte store"
    );
    assert_eq!(fs::read_dir(&root).expect("list").count(), SESSION_FILES);
}
