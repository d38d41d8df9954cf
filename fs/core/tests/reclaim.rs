//! Inline data of deleted files is reclaimed after the unlink: the unlink's batch leaves a
//! reclaim mark beside the inline record, the commit cycle (once deletions pause) or the
//! unmount removes both, a mount after a crash finishes what the marks say, fsck treats a
//! marked record as pending work and a mark beside a live inode as damage, and a live file's
//! data is never touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::ROOT;
use digimedfs_core::check::{check_parts, CheckOptions, Mode, ProblemKind, Report};
use digimedfs_core::filesystem::{Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::testing::MemImage;

fn write_file(fs: &Filesystem, name: &str, data: &[u8]) -> u64 {
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
        .expect("create");
    fs.write(a.ino, fh, 0, data).expect("write");
    fs.release(a.ino, fh).expect("release");
    a.ino
}

fn check(img: &MemImage, mode: Mode) -> Report {
    check_parts(
        &img.parts_to_check(),
        &CheckOptions { mode, threads: 1 },
        &mut (),
    )
    .expect("check runs")
}

/// Writes a reclaim mark for `ino` (as only damage would beside a live inode) and flushes it.
fn mark_for_reclaim(fs: &Filesystem, ino: u64) {
    let mut b = fs.records().batch();
    b.set_reclaim(ino, true);
    b.commit().expect("commit");
    fs.sync_all().expect("sync");
}

fn kinds(r: &Report) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

#[test]
fn inline_data_goes_after_the_unlink_and_by_unmount() {
    let img = MemImage::create(4096).expect("image");
    let fs = img.open(&OpenOptions::default()).expect("open");
    let gone = write_file(&fs, "gone", &[1u8; 3000]);
    let kept = write_file(&fs, "kept", &[2u8; 3000]);
    fs.sync_all().expect("sync");
    assert!(fs.records().inline(gone).expect("read").is_some());

    fs.unlink(&ROOT, ROOT_INO, b"gone").expect("unlink");
    // Directories have no inline data: no mark for them.
    fs.mkdir(&ROOT, ROOT_INO, b"dir", 0o755, 0).expect("mkdir");
    fs.rmdir(&ROOT, ROOT_INO, b"dir").expect("rmdir");
    fs.sync_all().expect("sync");
    // Right after the unlink the record is still there, with its mark...
    assert!(fs.records().inline(gone).expect("read").is_some());
    assert_eq!(fs.records().reclaims().expect("marks"), vec![gone]);
    // ...which fsck takes for pending work, not for a stray record.
    let r = check(&img, Mode::Check);
    assert!(r.problems.is_empty(), "problems: {:?}", kinds(&r));

    fs.close().expect("close");
    let fs = img.open(&OpenOptions::default()).expect("reopen");
    assert!(fs.records().inline(gone).expect("read").is_none());
    assert!(fs.records().reclaims().expect("marks").is_empty());
    assert_eq!(
        fs.records().inline(kept).expect("read"),
        Some(vec![2u8; 3000])
    );
    fs.close().expect("close");
}

#[test]
fn a_mount_after_a_crash_finishes_the_reclaim() {
    let img = MemImage::create(4096).expect("image");
    let fs = img.open(&OpenOptions::default()).expect("open");
    let gone = write_file(&fs, "gone", &[3u8; 500]);
    let kept = write_file(&fs, "kept", &[4u8; 500]);
    fs.sync_all().expect("sync");
    fs.unlink(&ROOT, ROOT_INO, b"gone").expect("unlink");
    fs.sync_all().expect("sync");
    // A crash now: only what was flushed survives; this mount is never closed.
    let crashed = img.crash_image(0, &mut |_| true);
    drop(fs);

    let fs = crashed
        .open(&OpenOptions::default())
        .expect("open after crash");
    assert!(
        fs.records().inline(gone).expect("read").is_some(),
        "not yet"
    );
    fs.close().expect("close");
    let fs = crashed.open(&OpenOptions::default()).expect("reopen");
    assert!(fs.records().inline(gone).expect("read").is_none());
    assert!(fs.records().reclaims().expect("marks").is_empty());
    assert_eq!(
        fs.records().inline(kept).expect("read"),
        Some(vec![4u8; 500])
    );
    fs.close().expect("close");
    assert!(check(&crashed, Mode::Check).problems.is_empty());
}

#[test]
fn a_mark_beside_a_live_inode_is_damage_that_never_costs_its_data() {
    let img = MemImage::create(4096).expect("image");
    let fs = img.open(&OpenOptions::default()).expect("open");
    let live = write_file(&fs, "live", &[5u8; 700]);
    fs.sync_all().expect("sync");
    mark_for_reclaim(&fs, live);

    let r = check(&img, Mode::Check);
    assert_eq!(kinds(&r), vec![ProblemKind::StaleReclaim]);
    assert_eq!(r.problems.first().and_then(|p| p.ino), Some(live));
    drop(fs);

    // A mount drops the mark and keeps the data, even across its own unmount.
    let fs = img.open(&OpenOptions::default()).expect("open");
    assert!(fs.records().reclaims().expect("marks").is_empty());
    fs.close().expect("close");
    let fs = img.open(&OpenOptions::default()).expect("reopen");
    assert_eq!(
        fs.records().inline(live).expect("read"),
        Some(vec![5u8; 700])
    );
    fs.close().expect("close");

    // fsck's repair does the same.
    let fs = img.open(&OpenOptions::default()).expect("open");
    mark_for_reclaim(&fs, live);
    drop(fs);
    let repaired = check(&img, Mode::Repair);
    assert_eq!(kinds(&repaired), vec![ProblemKind::StaleReclaim]);
    assert!(check(&img, Mode::Check).problems.is_empty());
    let fs = img.open(&OpenOptions::default()).expect("open");
    assert_eq!(
        fs.records().inline(live).expect("read"),
        Some(vec![5u8; 700])
    );
    fs.close().expect("close");
}
