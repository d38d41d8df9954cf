//! Rollback of the metadata store (issue 22, finding 2), over a real backing directory.
//!
//! Proves that: a store put back from an earlier time under the newest superblock is refused
//! by every open (read-write and read-only) with an integrity error naming both epochs, without
//! changing the backing directory, that `fsck -n` reports it as `epoch_mismatch` and `fsck -y`
//! accepts it deliberately (the earlier state then mounts and checks clean); a single
//! record put back (replayed) is not noticed by the mount but is reported by fsck as
//! `digest_mismatch`, and still after mounts that write (also to that very record) and unmount
//! cleanly, because unmount stores the running digest instead of recomputing one; the store
//! one epoch ahead of the superblock (a crash between binding the store and writing the
//! superblock) is accepted, two ahead is not; a store whose state record was deleted is refused
//! (the superblock says it has one); a store made before the state record existed is given one
//! on its first read-write mount, unless it differs from its clean superblock; a crash after a
//! backup point (which raises the live epoch) leaves a store that still opens.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{KEY, ROOT};
use digimedfs_core::backing::{BackingDir, META_DIR, OBJECTS_DIR};
use digimedfs_core::check::{check, CheckOptions, Mode, ProblemKind, Report};
use digimedfs_core::filesystem::{unlock_superblock, Filesystem, OpenOptions, SetAttr, ROOT_INO};
use digimedfs_core::format::records::{inode_key, StoreState, STATE_KEY};
use digimedfs_core::format::superblock::FLAG_STORE_STATE;
use digimedfs_core::meta::{Batch, DigestStore, MetaStore, Records};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_core::Error;
use digimedfs_sled::{Sled, SledStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
}

fn write_file(fs: &Filesystem, name: &str, data: &[u8]) -> u64 {
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
        .expect("create");
    fs.write(a.ino, fh, 0, data).expect("write");
    fs.release(a.ino, fh).expect("release");
    a.ino
}

fn open(dir: &Path) -> Filesystem {
    Filesystem::open(dir, &KEY, &OpenOptions::default(), &Sled).expect("open")
}

fn fsck_n(dir: &Path) -> Report {
    check(
        dir,
        &KEY,
        &CheckOptions {
            mode: Mode::Check,
            threads: 1,
        },
        &mut (),
        &Sled,
    )
    .expect("fsck -n runs")
}

fn kinds(r: &Report) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

fn replace_dir(copy: &Path, dst: &Path) {
    std::fs::remove_dir_all(dst).expect("remove");
    copy_dir(copy, dst);
}

/// Every file of the backing directory and its hash, and every metadata record. Left out:
/// `lock`, which every read-write open attempt rewrites with its holder (host, pid, time)
/// before it opens the store, and sled's `meta/snap.*`, an index of sled's own log that sled
/// rewrites whenever it opens a store whose index is behind the log; neither holds content.
fn hash_tree(dir: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, blake3::Hash>) {
        for e in std::fs::read_dir(d).expect("read_dir") {
            let e = e.expect("entry");
            let rel = e.path().strip_prefix(root).expect("prefix").to_path_buf();
            if rel == Path::new("lock")
                || (rel.starts_with(META_DIR)
                    && e.file_name().to_string_lossy().starts_with("snap."))
            {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                out.insert(rel, blake3::hash(b"<dir>"));
                walk(root, &e.path(), out);
            } else {
                out.insert(rel, blake3::hash(&std::fs::read(e.path()).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    let store = SledStore::open(&dir.join(META_DIR), 16 << 20).expect("sled");
    store
        .scan(&[], None, &mut |k, v| {
            let name = PathBuf::from(format!("record {}", hex::encode(k)));
            out.insert(name, blake3::hash(v));
            Ok(true)
        })
        .expect("scan");
    out
}

/// The raw store of an unmounted filesystem, with its superblock's epoch.
struct RawStore {
    store: Arc<SledStore>,
    records: Records,
    keys: Arc<digimedfs_core::crypto::FsKeys>,
    uuid: [u8; 16],
    sb_epoch: u64,
}

fn raw(dir: &Path) -> RawStore {
    let (sb, keys) =
        unlock_superblock(&BackingDir::open(dir).expect("backing"), &KEY).expect("unlock");
    let store = Arc::new(SledStore::open(&dir.join(META_DIR), 16 << 20).expect("sled"));
    let records = Records::new(store.clone(), keys.clone(), &sb.fs_uuid);
    RawStore {
        store,
        records,
        keys,
        uuid: sb.fs_uuid,
        sb_epoch: sb.epoch,
    }
}

fn new_fs() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).expect("mkfs");
    (tmp, dir)
}

#[test]
fn rolled_back_store_is_refused_at_open_and_reported_by_fsck() {
    let (tmp, dir) = new_fs();
    let fs = open(&dir);
    let small = write_file(&fs, "small", &content(1, 3000));
    write_file(&fs, "big", &content(2, 300_000));
    fs.close().expect("close");
    drop(fs);
    let t1 = tmp.path().join("t1");
    copy_dir(&dir.join(META_DIR), &t1.join(META_DIR));
    copy_dir(&dir.join(OBJECTS_DIR), &t1.join(OBJECTS_DIR));

    // The user goes on: changes a file's contents and mode, deletes another.
    let fs = open(&dir);
    let fh = fs.open_file(&ROOT, small, libc::O_RDWR).expect("open");
    fs.write(small, fh, 0, b"changed").expect("write");
    fs.release(small, fh).expect("release");
    fs.setattr(
        &ROOT,
        small,
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .expect("chmod");
    fs.unlink(&ROOT, ROOT_INO, b"big").expect("unlink");
    fs.close().expect("close");
    drop(fs);
    let sb_epoch = raw(&dir).sb_epoch;

    // Storage puts the T1 copies back under the newest superblock.
    replace_dir(&t1.join(META_DIR), &dir.join(META_DIR));
    replace_dir(&t1.join(OBJECTS_DIR), &dir.join(OBJECTS_DIR));
    let store_epoch = {
        let r = raw(&dir);
        r.records
            .store_state()
            .expect("state")
            .expect("store has a state record")
            .epoch
    };
    assert!(
        store_epoch + 1 < sb_epoch,
        "store {store_epoch}, superblock {sb_epoch}"
    );
    let before = hash_tree(&dir);
    for read_only in [false, true] {
        let opts = OpenOptions {
            read_only,
            ..Default::default()
        };
        let e = match Filesystem::open(&dir, &KEY, &opts, &Sled) {
            Ok(_) => panic!("rolled-back store opened (read_only {read_only})"),
            Err(e) => e,
        };
        assert!(matches!(e, Error::Integrity { .. }), "{e:?}");
        assert_eq!(e.errno(), libc::EIO);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "metadata store belongs to epoch {store_epoch} but the superblock is at epoch {sb_epoch}"
            )) && msg.contains("rolled back")
                && msg.contains("nothing was changed")
                && msg.contains("fsck.digimed -n"),
            "{msg}"
        );
    }
    let after = hash_tree(&dir);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, h)| before.get(*p) != Some(*h))
        .map(|(p, _)| p.clone())
        .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
        .collect();
    assert!(
        changed.is_empty(),
        "a refused open changed the backing directory: {changed:?}"
    );

    let report = fsck_n(&dir);
    let found = report.of_kind(ProblemKind::EpochMismatch);
    assert_eq!(found.len(), 1, "{:?}", kinds(&report));
    assert!(
        found[0].detail.contains(&format!(
            "epoch {store_epoch} but the superblock is at epoch {sb_epoch}"
        )),
        "{}",
        found[0].detail
    );
    assert!(!report.modified);
    assert_eq!(
        hash_tree(&dir),
        before,
        "fsck -n changed the backing directory"
    );

    // An admin accepts the rollback deliberately with fsck -y: the T1 state mounts.
    let report = check(
        &dir,
        &KEY,
        &CheckOptions {
            mode: Mode::Repair,
            threads: 1,
        },
        &mut (),
        &Sled,
    )
    .expect("fsck -y runs");
    assert!(report.modified);
    assert!(
        report.of_kind(ProblemKind::EpochMismatch)[0].fixed,
        "{:?}",
        kinds(&report)
    );
    let fs = open(&dir);
    assert_eq!(
        fs.read(small, 0, 0, 10_000).expect("read"),
        content(1, 3000)
    );
    fs.close().expect("close");
    drop(fs);
    let after = fsck_n(&dir);
    assert!(after.is_clean(), "{:?}", kinds(&after));
}

#[test]
fn replayed_record_is_reported_by_fsck_and_never_laundered() {
    let (_tmp, dir) = new_fs();
    let fs = open(&dir);
    let ino = write_file(&fs, "f", &content(3, 2000));
    fs.close().expect("close");
    drop(fs);
    let old = raw(&dir)
        .store
        .get(&inode_key(ino))
        .expect("get")
        .expect("inode record");

    let fs = open(&dir);
    fs.setattr(
        &ROOT,
        ino,
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .expect("chmod");
    fs.close().expect("close");
    drop(fs);
    assert!(fsck_n(&dir).is_clean());

    // Storage puts the inode's older sealed record back (mode 644).
    {
        let r = raw(&dir);
        let mut b = Batch::default();
        b.ops_push(inode_key(ino).to_vec(), old);
        r.store.apply(&b).expect("put back");
        r.store.flush().expect("flush");
    }
    let report = fsck_n(&dir);
    assert_eq!(
        kinds(&report),
        vec![ProblemKind::DigestMismatch],
        "replay before any mount"
    );

    // Single-record replay is not noticed by the mount (docs/crypto.md): it serves the old mode.
    let fs = open(&dir);
    assert_eq!(fs.getattr(ino).expect("getattr").perm, 0o644);
    write_file(&fs, "g", &content(4, 100));
    fs.close().expect("close");
    drop(fs);
    let report = fsck_n(&dir);
    assert_eq!(
        kinds(&report),
        vec![ProblemKind::DigestMismatch],
        "replay laundered by a mount and a clean unmount"
    );
    assert!(
        report.problems[0].detail.contains("running digest")
            && report.problems[0].detail.contains("clean unmount"),
        "{}",
        report.problems[0].detail
    );

    // Writing the replayed record itself does not absorb it either.
    let fs = open(&dir);
    fs.setattr(
        &ROOT,
        ino,
        &SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .expect("chmod");
    fs.close().expect("close");
    drop(fs);
    assert_eq!(
        kinds(&fsck_n(&dir)),
        vec![ProblemKind::DigestMismatch],
        "replay laundered by rewriting the replayed record"
    );
}

/// Binds the unmounted store in `dir` to `epoch` as an open does before its superblock write.
fn bind_store(dir: &Path, epoch: u64) {
    let r = raw(dir);
    let tracker =
        DigestStore::open(r.store.clone(), r.keys.clone(), &r.uuid).expect("digest store");
    tracker.bind_epoch(epoch).expect("bind");
    tracker.flush().expect("flush");
}

#[test]
fn store_one_epoch_ahead_after_a_crash_is_accepted() {
    let (_tmp, dir) = new_fs();
    let fs = open(&dir);
    let ino = write_file(&fs, "f", &content(5, 5000));
    fs.close().expect("close");
    drop(fs);
    // A crash between the store's flush and the superblock write of the next open.
    let sb_epoch = raw(&dir).sb_epoch;
    bind_store(&dir, sb_epoch + 1);
    let fs = open(&dir);
    assert_eq!(fs.read(ino, 0, 0, 10_000).expect("read"), content(5, 5000));
    fs.close().expect("close");
    drop(fs);
    assert!(fsck_n(&dir).is_clean());

    // Two ahead is not a crash window.
    let sb_epoch = raw(&dir).sb_epoch;
    bind_store(&dir, sb_epoch + 2);
    let e = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled)
        .err()
        .expect("store two epochs ahead opened");
    assert!(
        e.to_string().contains(&format!(
            "belongs to epoch {} but the superblock is at epoch {sb_epoch}",
            sb_epoch + 2
        )),
        "{e}"
    );
    assert_eq!(
        kinds(&fsck_n(&dir)),
        vec![ProblemKind::EpochMismatch],
        "fsck of a store two epochs ahead"
    );
}

/// Removes the state record, as storage could.
fn delete_state_record(dir: &Path) {
    let r = raw(dir);
    let mut b = Batch::default();
    b.delete(&STATE_KEY);
    r.store.apply(&b).expect("delete");
    r.store.flush().expect("flush");
}

/// Makes `dir` what an earlier build left: no state record, no superblock flag saying there is
/// one.
fn make_legacy(dir: &Path) {
    delete_state_record(dir);
    let bdir = BackingDir::open(dir).expect("backing");
    let (mut sb, keys) = unlock_superblock(&bdir, &KEY).expect("unlock");
    sb.flags &= !FLAG_STORE_STATE;
    bdir.write_superblock(&sb.encode(&keys.superblock).expect("encode"))
        .expect("write superblock");
}

#[test]
fn deleted_state_record_is_refused_not_taken_for_an_earlier_build() {
    let (_tmp, dir) = new_fs();
    let fs = open(&dir);
    write_file(&fs, "f", &content(7, 100));
    fs.close().expect("close");
    drop(fs);
    delete_state_record(&dir);
    let before = hash_tree(&dir);
    for read_only in [false, true] {
        let opts = OpenOptions {
            read_only,
            ..Default::default()
        };
        let e = Filesystem::open(&dir, &KEY, &opts, &Sled)
            .err()
            .expect("store without its state record opened");
        assert!(matches!(e, Error::Integrity { .. }), "{e:?}");
        assert!(e.to_string().contains("no store state record"), "{e}");
    }
    assert_eq!(
        hash_tree(&dir),
        before,
        "a refused open changed the backing directory"
    );
    assert_eq!(kinds(&fsck_n(&dir)), vec![ProblemKind::EpochMismatch]);
}

#[test]
fn legacy_store_gets_its_state_record_once_unless_it_differs_from_its_superblock() {
    let (_tmp, dir) = new_fs();
    let fs = open(&dir);
    let ino = write_file(&fs, "f", &content(6, 1000));
    fs.close().expect("close");
    drop(fs);
    make_legacy(&dir);
    assert!(raw(&dir).records.store_state().expect("read").is_none());
    assert!(fsck_n(&dir).is_clean(), "a legacy store is not a problem");

    let fs = open(&dir);
    fs.close().expect("close");
    drop(fs);
    let r = raw(&dir);
    let state: StoreState = r.records.store_state().expect("read").expect("adopted");
    let (sb, _) =
        unlock_superblock(&BackingDir::open(&dir).expect("backing"), &KEY).expect("unlock");
    assert_ne!(
        sb.flags & FLAG_STORE_STATE,
        0,
        "superblock does not require the record"
    );
    assert_eq!(state.epoch, r.sb_epoch);
    assert_eq!(state.digest, r.records.digest().expect("digest"));
    drop(r);
    assert!(fsck_n(&dir).is_clean());

    // A legacy store that differs from its clean superblock is refused, not adopted.
    let old = raw(&dir)
        .store
        .get(&inode_key(ino))
        .expect("get")
        .expect("inode");
    let fs = open(&dir);
    fs.setattr(
        &ROOT,
        ino,
        &SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .expect("chmod");
    fs.close().expect("close");
    drop(fs);
    make_legacy(&dir);
    {
        let r = raw(&dir);
        let mut b = Batch::default();
        b.ops_push(inode_key(ino).to_vec(), old);
        r.store.apply(&b).expect("put back");
        r.store.flush().expect("flush");
    }
    let e = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled)
        .err()
        .expect("legacy store differing from its superblock opened");
    assert!(matches!(e, Error::Integrity { .. }), "{e:?}");
    assert!(raw(&dir).records.store_state().expect("read").is_none());
}

/// A backup point raises the live superblock's epoch: the live store is bound to it first, so
/// a crash after the point (here: a copy of the backing directory taken while mounted, after the
/// point) still opens, and the store is not taken for a rolled-back one.
#[test]
fn crash_after_a_backup_point_still_opens() {
    let (tmp, dir) = new_fs();
    let fs = open(&dir);
    let ino = write_file(&fs, "f", &content(8, 70_000));
    let point = fs.backup_begin().expect("backup point");
    let crashed = tmp.path().join("crashed");
    copy_dir(&dir, &crashed);
    let sb_epoch = raw(&crashed).sb_epoch;
    assert_eq!(
        sb_epoch,
        point.epoch + 1,
        "the point moves the live epoch on"
    );
    let copy = open(&crashed);
    assert_eq!(
        copy.read(ino, 0, 0, 100_000).expect("read"),
        content(8, 70_000)
    );
    copy.close().expect("close");
    drop(copy);
    fs.backup_end().expect("end point");
    fs.close().expect("close");
}

/// Storage puts an older counters record back (a single-record replay the mount does not
/// detect): a file created afterwards must not take over an existing file's inode number and
/// with it that file's contents. Before the check, the new file got the number of a file
/// written after the old counters and replaced its contents.
#[test]
fn replayed_counters_never_hand_out_an_inode_in_use() {
    use digimedfs_core::format::records::COUNTERS_KEY;
    let (_tmp, dir) = new_fs();
    let fs = open(&dir);
    write_file(&fs, "a", &content(1, 100));
    fs.close().expect("close");
    drop(fs);
    let old_counters = raw(&dir)
        .store
        .get(&COUNTERS_KEY)
        .expect("get")
        .expect("counters record");

    // The next mount allocates from the reserved value the old record names.
    let fs = open(&dir);
    let b = write_file(&fs, "b", &content(2, 3000));
    fs.close().expect("close");
    drop(fs);
    {
        let r = raw(&dir);
        let mut batch = Batch::default();
        batch.ops_push(COUNTERS_KEY.to_vec(), old_counters);
        r.store.apply(&batch).expect("put back");
        r.store.flush().expect("flush");
    }

    let fs = open(&dir);
    let c = write_file(&fs, "c", &content(3, 500));
    assert_ne!(
        c, b,
        "the new file took the inode number of an existing one"
    );
    let got = fs.lookup(&ROOT, ROOT_INO, b"b").expect("lookup b");
    assert_eq!(got.ino, b);
    let fh = fs.open_file(&ROOT, b, libc::O_RDONLY).expect("open b");
    assert_eq!(
        fs.read(b, fh, 0, 10_000).expect("read b"),
        content(2, 3000),
        "b's contents were replaced"
    );
    fs.release(b, fh).expect("release");
    fs.close().expect("close");
}
