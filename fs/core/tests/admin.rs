//! The admin toolbox (`admin::info`, `admin::set_label`) over a real backing directory.
//!
//! Proves that: info falls back to `superblock.bak` when the primary does not decode and says
//! why, and fails naming both files when neither does; with a key it verifies the copy it shows;
//! it writes nothing; set_label refuses while the mount lock is held and leaves everything but
//! the label as it was (epoch included), so the filesystem still opens and checks clean.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::KEY;
use digimedfs_core::admin::{info, set_label, CopyState, Verification};
use digimedfs_core::backing::{BackingDir, SUPERBLOCK, SUPERBLOCK_BAK};
use digimedfs_core::check::{check, CheckOptions, Mode};
use digimedfs_core::filesystem::{Filesystem, OpenOptions};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_core::Error;
use digimedfs_sled::Sled;
use std::path::{Path, PathBuf};

fn fresh(label: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("b");
    let opts = MkfsOptions {
        label: label.into(),
        ..MkfsOptions::default()
    };
    mkfs(&backing, &KEY, &opts, &Sled).expect("mkfs");
    (dir, backing)
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let len = e.metadata().expect("metadata").len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn info_falls_back_to_the_copy_and_names_both_files_when_neither_decodes() {
    let (_t, backing) = fresh("cohort-a");
    let before = listing(&backing);
    let good = info(&backing, Some(&KEY)).expect("info");
    assert_eq!(good.source, SUPERBLOCK);
    assert_eq!(good.other_copy, CopyState::Identical);
    assert!(good.verification.verified(), "{:?}", good.verification);
    assert_eq!(
        listing(&backing),
        before,
        "info changed the backing directory"
    );

    std::fs::write(backing.join(SUPERBLOCK), b"not a superblock").expect("write");
    let fallback = info(&backing, Some(&KEY)).expect("info from the copy");
    assert_eq!(fallback.source, SUPERBLOCK_BAK);
    assert_eq!(fallback.label, "cohort-a");
    assert_eq!(fallback.other_copy, CopyState::Differs);
    assert!(
        fallback
            .primary_error
            .as_deref()
            .is_some_and(|e| e.contains("bad magic")
                && e.contains(&backing.join(SUPERBLOCK).display().to_string())),
        "{:?}",
        fallback.primary_error
    );
    assert!(
        matches!(
            fallback.verification,
            Verification::Verified { slot: 0, .. }
        ),
        "{:?}",
        fallback.verification
    );

    std::fs::write(backing.join(SUPERBLOCK_BAK), b"garbage too").expect("write");
    let err = info(&backing, None).expect_err("no usable superblock");
    let text = err.to_string();
    for name in [SUPERBLOCK, SUPERBLOCK_BAK] {
        assert!(
            text.contains(&backing.join(name).display().to_string()),
            "{text}"
        );
    }
}

#[test]
fn set_label_waits_for_the_lock_and_changes_only_the_label() {
    let (_t, backing) = fresh("");
    {
        let dir = BackingDir::open(&backing).expect("open");
        let _held = dir.lock(false).expect("lock");
        let err = set_label(&backing, &KEY, "x").expect_err("refused while locked");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
    }
    assert_eq!(info(&backing, None).expect("info").label, "");
    let before = info(&backing, None).expect("info");

    let report = set_label(&backing, &KEY, "cohort-b").expect("set_label");
    assert!(report.changed);
    assert_eq!(report.old_label, "");
    let after = info(&backing, Some(&KEY)).expect("info");
    assert_eq!(after.label, "cohort-b");
    assert!(after.verification.verified(), "{:?}", after.verification);
    assert_eq!(after.other_copy, CopyState::Identical);
    assert_eq!(
        (after.epoch, after.flags, &after.fs_uuid, &after.slots),
        (before.epoch, before.flags, &before.fs_uuid, &before.slots)
    );

    let fs = Filesystem::open(&backing, &KEY, &OpenOptions::default(), &Sled).expect("opens");
    assert_eq!(fs.superblock().label, "cohort-b");
    fs.close().expect("close");
    let opts = CheckOptions {
        mode: Mode::Check,
        threads: 1,
    };
    let report = check(&backing, &KEY, &opts, &mut (), &Sled).expect("fsck");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
