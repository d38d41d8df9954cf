//! Previous block versions left by a crash do not stay acceptable (issue 22, finding 4).
//!
//! A chunk entry carries the previous version of a block (or "was a hole") until a data
//! barrier makes the current one durable. A crash between the writeback and the barrier used
//! to leave those entries for good: storage could zero the object any time later and every
//! read returned zeros without an error, and fsck was clean. These tests crash a
//! [`MemImage`] exactly there (entries durable, object data written but never synced, held at
//! the object sync) and prove that the next mount keeps exactly the version each block holds
//! (found through the chunks' previous-version marks, so nothing else is scanned), after which
//! zeroing the object makes reads fail with EIO and fsck report the damage; that a repairing
//! fsck resolves the same state by itself (while `-n` counts the entries and changes nothing:
//! they are a legitimate state, not a problem); and that marks exist only while a previous
//! version does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::ROOT;
use digimedfs_core::check::{check_parts, CheckOptions, Mode, ProblemKind};
use digimedfs_core::filesystem::{Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::format::records::{chunk_of_key, prefix, Storage};
use digimedfs_core::meta::MetaStore;
use digimedfs_core::objects::{ObjectId, ObjectStore};
use digimedfs_core::testing::MemImage;
use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const BS: usize = 4096;
const BLOCKS: usize = 48;

/// MemObjects whose `sync` waits while the test holds the gate closed.
struct SyncGate {
    inner: Arc<dyn ObjectStore>,
    /// (closed, calls waiting)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl SyncGate {
    fn pass(&self) {
        let mut g = self.state.lock().unwrap();
        g.1 += 1;
        self.changed.notify_all();
        let mut g = self.changed.wait_while(g, |s| s.0).unwrap();
        g.1 -= 1;
    }
    fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap().0 = closed;
        self.changed.notify_all();
    }
    fn wait_for_held_call(&self) {
        let g = self.state.lock().unwrap();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, Duration::from_secs(10), |s| s.1 == 0)
            .unwrap();
        assert!(g.1 > 0, "no object sync reached the gate");
    }
}

impl ObjectStore for SyncGate {
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> digimedfs_core::Result<usize> {
        self.inner.read_at(id, offset, buf)
    }
    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> digimedfs_core::Result<()> {
        self.inner.write_at(id, offset, data)
    }
    fn set_len(&self, id: &ObjectId, len: u64) -> digimedfs_core::Result<()> {
        self.inner.set_len(id, len)
    }
    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> digimedfs_core::Result<()> {
        self.inner.punch_hole(id, offset, len)
    }
    fn sync(&self, id: &ObjectId) -> digimedfs_core::Result<()> {
        self.pass();
        self.inner.sync(id)
    }
    fn sync_all(&self) -> digimedfs_core::Result<()> {
        self.pass();
        self.inner.sync_all()
    }
    fn remove(&self, id: &ObjectId) -> digimedfs_core::Result<()> {
        self.inner.remove(id)
    }
    fn list(&self) -> digimedfs_core::Result<Vec<(ObjectId, u64)>> {
        self.inner.list()
    }
}

fn data(seed: u8) -> Vec<u8> {
    (0..BLOCKS * BS)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 11) as u8 ^ seed)
        .collect()
}

/// Chunks with a previous-version mark in `store`.
fn marks(store: &dyn MetaStore) -> BTreeSet<(u64, u64)> {
    let mut out = BTreeSet::new();
    store
        .scan(&[prefix::PREV_MARK], None, &mut |k, _| {
            out.insert(chunk_of_key(k).unwrap());
            Ok(true)
        })
        .unwrap();
    out
}

/// Entries with a previous version in the chunk records of `ino`.
fn entries_with_prev(fs: &Filesystem, ino: u64) -> usize {
    let mut n = 0;
    fs.records()
        .chunks_from(ino, 0, &mut |_, ch| {
            n += ch.entries.values().filter(|e| e.prev.is_some()).count();
            Ok(true)
        })
        .unwrap();
    n
}

fn read_all(fs: &Filesystem) -> digimedfs_core::Result<Vec<u8>> {
    let a = fs.lookup(&ROOT, ROOT_INO, b"f")?;
    fs.read(a.ino, 0, 0, a.size as u32)
}

/// A new file written without fsync whose writeback reached storage (entries with "was a
/// hole" durable, object data written) and then the crash, before any data barrier.
/// Returns the crash image, the inode and the data written.
fn crash_before_barrier() -> (MemImage, u64, Vec<u8>) {
    let img = MemImage::create(BS as u32).unwrap();
    let gate = Arc::new(SyncGate {
        inner: img.objects.clone(),
        state: Mutex::new((false, 0)),
        changed: Condvar::new(),
    });
    let fs = Arc::new(
        img.open_over(img.meta.clone(), gate.clone(), &OpenOptions::default())
            .unwrap(),
    );
    let d = data(1);
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    // One write: the file goes to an object at once (no inline stage, whose conversion
    // syncs the object).
    fs.write(a.ino, fh, 0, &d).unwrap();
    gate.set_closed(true);
    let f2 = fs.clone();
    let ino = a.ino;
    let syncer = std::thread::spawn(move || f2.fsync(ino, fh, false));
    gate.wait_for_held_call();
    // The crash: durable metadata only, the object's unsynced data kept (it reached the
    // storage, which did not crash).
    let crashed = img.crash_image(0, &mut |_| true);
    gate.set_closed(false);
    syncer.join().unwrap().unwrap();
    fs.release(a.ino, fh).unwrap();
    fs.close().unwrap();
    (crashed, ino, d)
}

/// Writes zeros over the whole object of `ino` (storage's doing) and syncs it.
fn zero_object(img: &MemImage, fs: &Filesystem, ino: u64) {
    let Storage::Object(id) = fs.records().inode(ino).unwrap().unwrap().storage else {
        panic!("inode {ino} has no object");
    };
    img.objects
        .write_at(&id, 0, &vec![0u8; BLOCKS * BS])
        .unwrap();
    img.objects.sync(&id).unwrap();
}

#[test]
fn mount_resolves_previous_versions_left_by_a_crash() {
    let (img, ino, d) = crash_before_barrier();
    // The state the crash left: every entry still says "may be a hole", and marked.
    let ro = img
        .open(&OpenOptions {
            read_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(entries_with_prev(&ro, ino), BLOCKS, "precondition");
    drop(ro);
    assert_eq!(marks(&*img.meta), BTreeSet::from([(ino, 0)]));

    // The next read-write mount resolves them: the object holds the current versions.
    let fs = img.open(&OpenOptions::default()).unwrap();
    assert!(read_all(&fs).unwrap() == d, "f reads back");
    fs.close().unwrap();
    drop(fs);

    // Storage zeroes the object later: reads fail, fsck reports it.
    let fs = img.open(&OpenOptions::default()).unwrap();
    zero_object(&img, &fs, ino);
    let e = read_all(&fs).expect_err("zeroed blocks read back without an error");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert_eq!(entries_with_prev(&fs, ino), 0);
    assert!(marks(&*img.meta).is_empty(), "marks left after resolution");
    fs.close().unwrap();
    drop(fs);
    let r = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    let damaged: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::DamagedBlock && p.ino == Some(ino))
        .collect();
    assert_eq!(damaged.len(), 1, "{:?}", r.problems);
    assert_eq!(damaged[0].blocks.len(), BLOCKS);
}

#[test]
fn fsck_resolves_previous_versions_left_by_a_crash() {
    let (img, ino, d) = crash_before_barrier();
    // Not a problem (a crash, a fence or a backup point under load leaves them), but counted,
    // and -n changes nothing.
    let r = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.previous_versions, BLOCKS as u64);
    assert!(!r.modified);
    assert_eq!(marks(&*img.meta), BTreeSet::from([(ino, 0)]));
    let repaired = check_parts(
        &img.parts_to_check(),
        &CheckOptions {
            mode: Mode::Preen,
            threads: 1,
        },
        &mut (),
    )
    .unwrap();
    assert!(repaired.modified);
    assert_eq!(repaired.previous_versions, BLOCKS as u64);
    assert!(marks(&*img.meta).is_empty(), "marks left after repair");
    let again = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    assert!(again.is_clean(), "{:?}", again.problems);
    assert_eq!(again.previous_versions, 0);

    // Zeroed afterwards (read-only mount, so nothing is resolved by a mount): EIO.
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let fs = img.open(&ro).unwrap();
    assert_eq!(entries_with_prev(&fs, ino), 0);
    assert!(read_all(&fs).unwrap() == d);
    zero_object(&img, &fs, ino);
    let e = read_all(&fs).expect_err("zeroed blocks read back without an error");
    assert_eq!(e.errno(), libc::EIO, "{e}");
}

/// Marks exist exactly while entries carry a previous version: an fsync drops both, and a
/// clean close leaves none, so a mount after a clean unmount scans nothing.
#[test]
fn marks_follow_previous_versions() {
    let img = MemImage::create(BS as u32).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(a.ino, fh, 0, &data(2)).unwrap();
    fs.fsync(a.ino, fh, false).unwrap();
    assert_eq!(entries_with_prev(&fs, a.ino), 0);
    assert!(marks(&*img.meta).is_empty());
    fs.write(a.ino, fh, 0, &data(3)).unwrap();
    fs.release(a.ino, fh).unwrap();
    fs.close().unwrap();
    assert!(marks(&*img.meta).is_empty(), "marks after a clean close");
}

/// fsck's repair of a chunk record that needs both resolving and trimming (blocks beyond a
/// shorter size) writes one record with both applied: no previous version survives.
#[test]
fn fsck_resolves_and_trims_one_chunk_together() {
    let (img, ino, d) = crash_before_barrier();
    let records = digimedfs_core::meta::Records::new(
        img.meta.clone(),
        img.keys.clone(),
        &img.superblock.fs_uuid,
    );
    let mut inode = records.inode(ino).unwrap().unwrap();
    inode.size = (10 * BS) as u64;
    let mut b = records.batch();
    b.put_inode(&inode).unwrap();
    b.commit().unwrap();
    records.flush().unwrap();

    let repaired = check_parts(
        &img.parts_to_check(),
        &CheckOptions {
            mode: Mode::Repair,
            threads: 1,
        },
        &mut (),
    )
    .unwrap();
    let kinds: BTreeSet<ProblemKind> = repaired.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::BlocksBeyondSize), "{kinds:?}");
    assert_eq!(repaired.previous_versions, 10);
    assert_eq!(repaired.uncorrected(), 0, "{:?}", repaired.problems);
    let again = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    assert!(again.is_clean(), "{:?}", again.problems);
    assert_eq!(again.previous_versions, 0);
    assert!(marks(&*img.meta).is_empty());
    let fs = img
        .open(&OpenOptions {
            read_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(entries_with_prev(&fs, ino), 0);
    assert!(read_all(&fs).unwrap() == d[..10 * BS]);
}
