//! Core operations one by one over the in-memory stores, including their errno cases.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::ROOT;
use digimedfs_core::filesystem::{Ctx, FileKind, OpenOptions, SetAttr, ROOT_INO};
use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_core::objects::ObjectStore;
use digimedfs_core::testing::MemImage;
use digimedfs_sled::Sled;

fn fs() -> (MemImage, digimedfs_core::filesystem::Filesystem) {
    let img = MemImage::create(4096).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    (img, fs)
}

fn errno<T: std::fmt::Debug>(r: digimedfs_core::Result<T>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn create_write_read_small_and_large() {
    let (img, fs) = fs();
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"a", 0o644, 0o022, libc::O_RDWR)
        .unwrap();
    assert_eq!(a.kind, FileKind::File);
    assert_eq!(a.perm, 0o644);
    fs.write(a.ino, fh, 0, b"hello").unwrap();
    assert_eq!(fs.read(a.ino, fh, 0, 100).unwrap(), b"hello");
    // Grows the inline file past INLINE_MAX: its contents move to a data object.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert!(10 + big.len() as u64 > INLINE_MAX);
    fs.write(a.ino, fh, 10, &big).unwrap();
    let got = fs.read(a.ino, fh, 0, 200_000).unwrap();
    assert_eq!(got.len(), 100_010);
    assert_eq!(&got[..5], b"hello");
    assert_eq!(&got[10..], &big[..]);
    fs.fsync(a.ino, fh, false).unwrap();
    let got = fs.read(a.ino, fh, 4000, 10_000).unwrap();
    assert_eq!(&got[..], &big[3990..13990]);
    assert_eq!(img.objects.list().unwrap().len(), 1, "no data object");
    fs.release(a.ino, fh).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().size, 100_010);
}

#[test]
fn reopen_keeps_everything_synced() {
    let img = MemImage::create(4096).unwrap();
    // Over INLINE_MAX: a data object and its block map.
    let data: Vec<u8> = (0..INLINE_MAX as u32 + 50_000)
        .map(|i| (i * 7) as u8)
        .collect();
    let ino;
    {
        let fs = img.open(&OpenOptions::default()).unwrap();
        let d = fs.mkdir(&ROOT, ROOT_INO, b"dir", 0o755, 0).unwrap();
        let (a, fh) = fs
            .create(&ROOT, d.ino, b"f", 0o600, 0, libc::O_RDWR)
            .unwrap();
        ino = a.ino;
        fs.write(a.ino, fh, 0, &data).unwrap();
        fs.setxattr(&ROOT, a.ino, b"user.k", b"v", 0).unwrap();
        fs.symlink(&ROOT, d.ino, b"ln", b"f").unwrap();
        fs.release(a.ino, fh).unwrap();
        fs.close().unwrap();
    }
    let fs = img.open(&OpenOptions::default()).unwrap();
    let d = fs.lookup(&ROOT, ROOT_INO, b"dir").unwrap();
    let a = fs.lookup(&ROOT, d.ino, b"f").unwrap();
    assert_eq!(a.ino, ino);
    assert_eq!(img.objects.list().unwrap().len(), 1, "no data object");
    assert_eq!(fs.read(a.ino, 0, 0, 1 << 20).unwrap(), data);
    assert_eq!(fs.getxattr(&ROOT, a.ino, b"user.k").unwrap(), b"v");
    let l = fs.lookup(&ROOT, d.ino, b"ln").unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), b"f");
}

#[test]
fn errno_cases() {
    let (_img, fs) = fs();
    let d = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap();
    let (f, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.release(f.ino, fh).unwrap();
    assert_eq!(errno(fs.lookup(&ROOT, ROOT_INO, b"nope")), libc::ENOENT);
    assert_eq!(
        errno(fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_EXCL | libc::O_RDWR)),
        libc::EEXIST
    );
    fs.create(&ROOT, d.ino, b"x", 0o644, 0, libc::O_RDWR)
        .unwrap();
    assert_eq!(errno(fs.rmdir(&ROOT, ROOT_INO, b"d")), libc::ENOTEMPTY);
    assert_eq!(errno(fs.unlink(&ROOT, ROOT_INO, b"d")), libc::EISDIR);
    assert_eq!(errno(fs.rmdir(&ROOT, ROOT_INO, b"f")), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup(&ROOT, f.ino, b"x")), libc::ENOTDIR);
    assert_eq!(
        errno(fs.mkdir(&ROOT, ROOT_INO, &[b'a'; 256], 0o755, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.rename(&ROOT, ROOT_INO, b"d", d.ino, b"sub", 0)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.rename(&ROOT, ROOT_INO, b"f", ROOT_INO, b"d", 0)),
        libc::EISDIR
    );
    assert_eq!(
        errno(fs.rename(
            &ROOT,
            ROOT_INO,
            b"f",
            ROOT_INO,
            b"d",
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.rename(
            &ROOT,
            ROOT_INO,
            b"f",
            ROOT_INO,
            b"zz",
            libc::RENAME_EXCHANGE
        )),
        libc::ENOENT
    );
    assert_eq!(errno(fs.link(&ROOT, d.ino, ROOT_INO, b"dl")), libc::EPERM);
    assert_eq!(
        errno(fs.getxattr(&ROOT, f.ino, b"user.none")),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.setxattr(&ROOT, f.ino, b"user.a", b"1", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    fs.setxattr(&ROOT, f.ino, b"user.a", b"1", libc::XATTR_CREATE)
        .unwrap();
    assert_eq!(
        errno(fs.setxattr(&ROOT, f.ino, b"user.a", b"1", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(errno(fs.readlink(f.ino)), libc::EINVAL);
    assert_eq!(
        errno(fs.setattr(
            &ROOT,
            d.ino,
            &SetAttr {
                size: Some(0),
                ..Default::default()
            }
        )),
        libc::EISDIR
    );
    let user = Ctx {
        uid: 1000,
        gid: 1000,
        pid: 1,
    };
    assert_eq!(
        errno(fs.setattr(
            &user,
            f.ino,
            &SetAttr {
                mode: Some(0o777),
                ..Default::default()
            }
        )),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.setattr(
            &user,
            f.ino,
            &SetAttr {
                uid: Some(1000),
                ..Default::default()
            }
        )),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.mkdir(&user, ROOT_INO, b"u", 0o755, 0)),
        libc::EACCES
    );
}

#[test]
fn rename_exchange_and_links() {
    let (_img, fs) = fs();
    let a = fs.mkdir(&ROOT, ROOT_INO, b"a", 0o755, 0).unwrap();
    let b = fs.mkdir(&ROOT, ROOT_INO, b"b", 0o755, 0).unwrap();
    let (f, fh) = fs
        .create(&ROOT, a.ino, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(f.ino, fh, 0, b"data").unwrap();
    fs.link(&ROOT, f.ino, b.ino, b"g").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
    fs.rename(&ROOT, ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs.lookup(&ROOT, ROOT_INO, b"a").unwrap().ino, b.ino);
    assert_eq!(fs.lookup(&ROOT, ROOT_INO, b"b").unwrap().ino, a.ino);
    let sub = fs.mkdir(&ROOT, a.ino, b"sub", 0o755, 0).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 3);
    fs.rename(&ROOT, a.ino, b"sub", b.ino, b"sub2", 0).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(fs.lookup(&ROOT, sub.ino, b"..").unwrap().ino, b.ino);
    // Unlinked but open: readable until released.
    fs.unlink(&ROOT, a.ino, b"f").unwrap();
    fs.unlink(&ROOT, b.ino, b"g").unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 0);
    assert_eq!(fs.read(f.ino, fh, 0, 10).unwrap(), b"data");
    fs.release(f.ino, fh).unwrap();
    assert_eq!(errno(fs.getattr(f.ino)), libc::ENOENT);
}

#[test]
fn readdir_lists_all_with_cookies() {
    let (_img, fs) = fs();
    let d = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap();
    for i in 0..300 {
        fs.mknod(
            &ROOT,
            d.ino,
            format!("n{i}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            0,
        )
        .unwrap();
    }
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let ents = fs.readdir(d.ino, 0, off, 17).unwrap();
        if ents.is_empty() {
            break;
        }
        for e in &ents {
            names.push(String::from_utf8(e.name.clone()).unwrap());
        }
        off = ents.last().unwrap().next_offset;
    }
    assert_eq!(names.len(), 302);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 302);
}

#[test]
fn truncate_holes_fallocate_seek() {
    let (_img, fs) = fs();
    let (f, fh) = fs
        .create(&ROOT, ROOT_INO, b"s", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(f.ino, fh, 1 << 20, b"end").unwrap();
    assert_eq!(fs.read(f.ino, fh, 0, 10).unwrap(), vec![0; 10]);
    fs.fsync(f.ino, fh, false).unwrap();
    assert_eq!(fs.lseek(f.ino, fh, 0, libc::SEEK_DATA).unwrap(), 1 << 20);
    assert_eq!(fs.lseek(f.ino, fh, 0, libc::SEEK_HOLE).unwrap(), 0);
    fs.write(f.ino, fh, 0, &vec![9u8; 20_000]).unwrap();
    fs.fallocate(
        &ROOT,
        f.ino,
        fh,
        100,
        10_000,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    let got = fs.read(f.ino, fh, 0, 20_000).unwrap();
    assert!(got[..100].iter().all(|b| *b == 9));
    assert!(got[100..10_100].iter().all(|b| *b == 0));
    assert!(got[10_100..].iter().all(|b| *b == 9));
    fs.setattr(
        &ROOT,
        f.ino,
        &SetAttr {
            size: Some(5000),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        &ROOT,
        f.ino,
        &SetAttr {
            size: Some(9000),
            ..Default::default()
        },
    )
    .unwrap();
    let got = fs.read(f.ino, fh, 0, 20_000).unwrap();
    assert_eq!(got.len(), 9000);
    assert!(got[..100].iter().all(|b| *b == 9));
    assert!(got[5000..].iter().all(|b| *b == 0));
    fs.fallocate(&ROOT, f.ino, fh, 0, 5 << 30, 0).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 5 << 30);
    fs.write(f.ino, fh, (5 << 30) - 3, b"xyz").unwrap();
    assert_eq!(fs.read(f.ino, fh, (5 << 30) - 3, 10).unwrap(), b"xyz");
}

#[test]
fn removed_directory_stays_statable_while_open() {
    let (_img, fs) = fs();
    let d = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap();
    let fh = fs.opendir(&ROOT, d.ino, 0).unwrap();
    fs.rmdir(&ROOT, ROOT_INO, b"d").unwrap();
    let attr = fs.getattr(d.ino).unwrap();
    assert_eq!(attr.nlink, 0);
    assert_eq!(errno(fs.mkdir(&ROOT, d.ino, b"x", 0o755, 0)), libc::ENOENT);
    fs.releasedir(d.ino, fh).unwrap();
    assert_eq!(errno(fs.getattr(d.ino)), libc::ENOENT);
}

#[test]
fn data_limits_and_privilege_dropping() {
    let (_img, fs) = fs();
    let (f, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o6666, 0, libc::O_RDWR)
        .unwrap();
    // Data ending beyond the largest file offset is refused, not lost.
    assert_eq!(
        errno(fs.write(f.ino, fh, i64::MAX as u64 - 1, b"xx")),
        libc::EFBIG
    );
    // A sparse size beyond it is fine.
    fs.setattr(
        &ROOT,
        f.ino,
        &SetAttr {
            size: Some(1 << 50),
            ..Default::default()
        },
    )
    .unwrap();
    // An allocation larger than the free space fails at once.
    assert_eq!(
        errno(fs.fallocate(&ROOT, f.ino, fh, 0, u64::MAX >> 2, 0)),
        libc::ENOSPC
    );
    // A user outside the file's group modifying it drops setuid and setgid.
    let user = Ctx {
        uid: 1000,
        gid: 1000,
        pid: 1,
    };
    fs.fallocate(&user, f.ino, fh, 0, 4096, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().perm, 0o666);
}

#[test]
fn buffered_store_matches_a_plain_map() {
    use digimedfs_core::meta::{BufferedStore, MemStore};
    use std::sync::Arc;
    let inner = Arc::new(MemStore::new());
    buffered_store_against_a_plain_map(&BufferedStore::new(inner.clone(), 7), &inner);
}

/// The same with a hand-over thread: groups reach the inner store while reads go on.
#[test]
fn buffered_store_with_a_handover_thread_matches_a_plain_map() {
    use digimedfs_core::meta::{BufferedStore, MemStore};
    use std::sync::Arc;
    let inner = Arc::new(MemStore::new());
    let store = BufferedStore::with_handover_thread(inner.clone(), 7).unwrap();
    buffered_store_against_a_plain_map(&store, &inner);
}

fn buffered_store_against_a_plain_map(
    store: &digimedfs_core::meta::BufferedStore,
    inner: &digimedfs_core::meta::MemStore,
) {
    use digimedfs_core::meta::{Batch, MetaStore};
    use std::collections::BTreeMap;
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for step in 0..3000u32 {
        let key = vec![b'a' + (rnd() % 3) as u8, (rnd() % 16) as u8];
        let mut b = Batch::default();
        if rnd() % 3 == 0 {
            b.delete(&key);
            model.remove(&key);
        } else {
            let v = step.to_le_bytes().to_vec();
            b.ops_push(key.clone(), v.clone());
            model.insert(key, v);
        }
        store.apply(&b).unwrap();
        if rnd() % 50 == 0 {
            store.flush().unwrap();
        }
        let prefix = [b'a' + (rnd() % 3) as u8];
        let after = if rnd() % 2 == 0 {
            Some(vec![prefix[0], (rnd() % 16) as u8])
        } else {
            None
        };
        let mut got = Vec::new();
        let limit = (rnd() % 20) as usize + 1;
        store
            .scan(&prefix, after.as_deref(), &mut |k, v| {
                got.push((k.to_vec(), v.to_vec()));
                Ok(got.len() < limit)
            })
            .unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && after.as_ref().is_none_or(|a| k > &a))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want, "step {step}");
        let probe = vec![b'a' + (rnd() % 3) as u8, (rnd() % 16) as u8];
        assert_eq!(store.get(&probe).unwrap(), model.get(&probe).cloned());
    }
    store.flush().unwrap();
    assert_eq!(inner.dump(), model);
}

/// An inner store whose batches wait at a gate and whose first `fail` batches fail, to watch
/// when and by whom a [`digimedfs_core::meta::BufferedStore`] hands groups over.
#[derive(Default)]
struct GatedStore {
    inner: digimedfs_core::meta::MemStore,
    /// While true, `apply` waits.
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// Batches that reached `apply` (including waiting and failed ones).
    arrived: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicUsize,
    /// How long each batch takes to apply.
    apply_delay: std::time::Duration,
}

impl GatedStore {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
    fn wait_for_arrivals(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.arrived.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "no hand-over reached the inner store"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl digimedfs_core::meta::MetaStore for GatedStore {
    fn get(&self, key: &[u8]) -> digimedfs_core::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut digimedfs_core::meta::ScanFn<'_>,
    ) -> digimedfs_core::Result<()> {
        self.inner.scan(prefix, after, f)
    }
    fn apply(&self, batch: &digimedfs_core::meta::Batch) -> digimedfs_core::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.arrived.fetch_add(1, SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        std::thread::sleep(self.apply_delay);
        if self
            .fail
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(digimedfs_core::Error::io(
                "gated store",
                std::io::Error::other("injected failure"),
            ));
        }
        self.inner.apply(batch)
    }
    fn flush(&self) -> digimedfs_core::Result<()> {
        self.inner.flush()
    }
}

struct OpenOnDrop(std::sync::Arc<GatedStore>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set_closed(false);
    }
}

fn one_key_batch(i: u32) -> digimedfs_core::meta::Batch {
    let mut b = digimedfs_core::meta::Batch::default();
    b.ops_push(i.to_be_bytes().to_vec(), vec![7; 8]);
    b
}

/// With a hand-over thread, the operation that fills a group returns at once while the
/// thread hands the group over (here held at the gate); the operation that finds
/// `BACKLOG_GROUPS` groups buffered hands them over itself and so waits for the gate too.
#[test]
fn handover_thread_takes_full_groups_and_a_backlog_makes_writers_wait() {
    use digimedfs_core::meta::{BufferedStore, MetaStore, BACKLOG_GROUPS};
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;
    const LIMIT: u32 = 4;
    let inner = Arc::new(GatedStore::default());
    inner.set_closed(true);
    let store =
        Arc::new(BufferedStore::with_handover_thread(inner.clone(), LIMIT as usize).unwrap());
    // Opens the gate before the store (declared earlier) is dropped, should an assertion fail.
    let _open = OpenOnDrop(Arc::clone(&inner));
    for i in 0..LIMIT {
        store.apply(&one_key_batch(i)).unwrap();
    }
    // The thread took the full group and waits at the gate; nobody else did.
    inner.wait_for_arrivals(1);
    // Readers still see the group being handed over, and new changes buffer behind it.
    assert_eq!(store.get(&0u32.to_be_bytes()).unwrap(), Some(vec![7; 8]));
    // Behind the group in hand-over, `BACKLOG_GROUPS` more fill up before a writer waits.
    let backlog = LIMIT + LIMIT * BACKLOG_GROUPS as u32;
    for i in LIMIT..backlog - 1 {
        store.apply(&one_key_batch(i)).unwrap();
    }
    assert_eq!(inner.arrived.load(SeqCst), 1);
    // The change that makes the backlog full waits for the hand-over ahead of it.
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.apply(&one_key_batch(backlog - 1)))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !writer.is_finished(),
        "a writer over the backlog did not wait"
    );
    inner.set_closed(false);
    writer.join().unwrap().unwrap();
    assert!(inner.inner.dump().len() >= LIMIT as usize);
    store.flush().unwrap();
    assert_eq!(inner.inner.dump().len(), backlog as usize);
}

/// Readers never miss a change that was applied before they started, while the hand-over
/// thread moves groups to the inner store under them (a scan that took the two buffered maps
/// one after the other could fall between a group's move and its arrival).
#[test]
fn readers_see_every_applied_change_while_groups_are_handed_over() {
    use digimedfs_core::meta::{BufferedStore, MetaStore};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    // Each group stays between the buffer and the inner store for a while.
    let inner = Arc::new(GatedStore {
        apply_delay: std::time::Duration::from_micros(200),
        ..Default::default()
    });
    let store = Arc::new(BufferedStore::with_handover_thread(inner, 3).unwrap());
    let applied = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, applied, done) = (Arc::clone(&store), Arc::clone(&applied), Arc::clone(&done));
        std::thread::spawn(move || {
            for i in 0..10_000u32 {
                store.apply(&one_key_batch(i)).unwrap();
                applied.store(i + 1, SeqCst);
            }
            done.store(true, SeqCst);
        })
    };
    let mut rounds = 0u32;
    while !done.load(SeqCst) {
        let before = applied.load(SeqCst);
        let mut seen = 0u32;
        store
            .scan(&[], None, &mut |_, _| {
                seen += 1;
                Ok(true)
            })
            .unwrap();
        assert!(
            seen >= before,
            "scan saw {seen} keys, {before} were applied before it"
        );
        let probe = before.saturating_sub(1);
        if before > 0 {
            assert!(
                store.get(&probe.to_be_bytes()).unwrap().is_some(),
                "key {probe} missing"
            );
        }
        rounds += 1;
    }
    writer.join().unwrap();
    assert!(rounds > 0);
}

/// A hand-over that fails in the thread loses nothing: the changes stay visible and the next
/// flush hands them over.
#[test]
fn failed_handover_in_the_thread_keeps_the_changes_for_the_next_flush() {
    use digimedfs_core::meta::{BufferedStore, MetaStore};
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;
    let inner = Arc::new(GatedStore::default());
    inner.fail.store(1, SeqCst);
    let store = BufferedStore::with_handover_thread(inner.clone(), 3).unwrap();
    for i in 0..3 {
        store.apply(&one_key_batch(i)).unwrap();
    }
    inner.wait_for_arrivals(1);
    // The failed group is back in the buffer (the thread puts it back before it waits again).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while inner.fail.load(SeqCst) != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for i in 0..3u32 {
        assert_eq!(store.get(&i.to_be_bytes()).unwrap(), Some(vec![7; 8]));
    }
    assert!(inner.inner.dump().is_empty());
    store.flush().unwrap();
    assert_eq!(inner.inner.dump().len(), 3);
}

#[test]
fn reads_update_atime_per_mode() {
    use digimedfs_core::filesystem::{AtimeMode, TimeSet};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let at = |secs: u64| TimeSet::At(UNIX_EPOCH + Duration::from_secs(secs));
    let set_times =
        |fs: &digimedfs_core::filesystem::Filesystem, ino: u64, atime: u64, mtime: u64| {
            fs.setattr(
                &ROOT,
                ino,
                &SetAttr {
                    atime: Some(at(atime)),
                    mtime: Some(at(mtime)),
                    // The kernel's ctime, as it sends one; keeps ctime before atime.
                    ctime: Some(UNIX_EPOCH + Duration::from_secs(mtime)),
                    ..Default::default()
                },
            )
            .unwrap();
        };
    let atime =
        |fs: &digimedfs_core::filesystem::Filesystem, ino: u64| fs.getattr(ino).unwrap().atime;
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    // A second early: the filesystem's coarse clock may lag the real one by a tick.
    let now = secs(SystemTime::now()) - 1;
    let img = MemImage::create(4096).unwrap();
    let open_with = |atime: AtimeMode, diratime: bool, read_only: bool| {
        img.open(&OpenOptions {
            atime,
            diratime,
            read_only,
            ..Default::default()
        })
        .unwrap()
    };
    let (f, d);
    {
        // relatime (the default).
        let fs = img.open(&OpenOptions::default()).unwrap();
        let dir = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap();
        let (a, fh) = fs
            .create(&ROOT, dir.ino, b"f", 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(a.ino, fh, 0, b"data").unwrap();
        fs.release(a.ino, fh).unwrap();
        (f, d) = (a.ino, dir.ino);
        // atime before mtime: the next read updates it.
        set_times(&fs, f, 1000, 2000);
        let fh = fs.open_file(&ROOT, f, libc::O_RDONLY).unwrap();
        assert!(secs(atime(&fs, f)) >= now, "relatime: read after a change");
        // A read-only open counts as a read (the kernel may serve the data from its cache).
        set_times(&fs, f, 1000, 2000);
        let (fh2, changed) = fs
            .open_file_reporting_atime(&ROOT, f, libc::O_RDONLY)
            .unwrap();
        assert!(
            changed && secs(atime(&fs, f)) >= now,
            "relatime: open for reading"
        );
        fs.release(f, fh2).unwrap();
        // atime after mtime and ctime, and recent: reads leave it alone.
        set_times(&fs, f, now - 10, now - 20);
        fs.read(f, fh, 0, 10).unwrap();
        assert_eq!(secs(atime(&fs, f)), now - 10, "relatime: no change since");
        // ... unless it is a day old.
        set_times(&fs, f, now - 2 * 86_400, now - 3 * 86_400);
        fs.read(f, fh, 0, 10).unwrap();
        assert!(secs(atime(&fs, f)) >= now, "relatime: day-old atime");
        // The kernel filling its cache for a write, and write-only opens, are not reads.
        set_times(&fs, f, 1000, 2000);
        fs.read_for_write(f, fh, 0, 10).unwrap();
        let (wfh, changed) = fs
            .open_file_reporting_atime(&ROOT, f, libc::O_WRONLY)
            .unwrap();
        assert!(!changed);
        fs.release(f, wfh).unwrap();
        assert_eq!(secs(atime(&fs, f)), 1000, "not reads");
        fs.release(f, fh).unwrap();
        // Listing a directory counts for it.
        set_times(&fs, d, 1000, 2000);
        fs.readdir(d, 0, 0, 100).unwrap();
        assert!(secs(atime(&fs, d)) >= now, "relatime: readdir");
        // The last update is kept over a close and reopen.
        set_times(&fs, f, 1000, 2000);
        let fh = fs.open_file(&ROOT, f, libc::O_RDONLY).unwrap();
        fs.release(f, fh).unwrap();
    }
    {
        let fs = img.open(&OpenOptions::default()).unwrap();
        assert!(secs(atime(&fs, f)) >= now, "atime after reopen");
    }
    {
        // noatime, nodiratime: nothing changes.
        let fs = open_with(AtimeMode::Never, false, false);
        set_times(&fs, f, 1000, 2000);
        set_times(&fs, d, 1000, 2000);
        let fh = fs.open_file(&ROOT, f, libc::O_RDONLY).unwrap();
        fs.read(f, fh, 0, 10).unwrap();
        fs.release(f, fh).unwrap();
        fs.readdir(d, 0, 0, 100).unwrap();
        assert_eq!(secs(atime(&fs, f)), 1000, "noatime: file");
        assert_eq!(secs(atime(&fs, d)), 1000, "noatime: directory");
    }
    let strict = {
        // strictatime: every read, even with atime after mtime; nodiratime spares directories.
        let fs = open_with(AtimeMode::Strict, false, false);
        set_times(&fs, f, now - 10, now - 20);
        let fh = fs.open_file(&ROOT, f, libc::O_RDWR).unwrap();
        fs.read(f, fh, 0, 10).unwrap();
        fs.release(f, fh).unwrap();
        assert!(secs(atime(&fs, f)) >= now, "strictatime: read");
        set_times(&fs, d, now - 10, now - 20);
        fs.readdir(d, 0, 0, 100).unwrap();
        assert_eq!(secs(atime(&fs, d)), now - 10, "nodiratime: directory");
        atime(&fs, f)
    };
    {
        // Read-only: never, and nothing to write back.
        let fs = open_with(AtimeMode::Strict, true, true);
        assert_eq!(atime(&fs, f), strict, "the strictatime update was kept");
        let dir_before = atime(&fs, d);
        let fh = fs.open_file(&ROOT, f, libc::O_RDONLY).unwrap();
        fs.read(f, fh, 0, 10).unwrap();
        fs.release(f, fh).unwrap();
        fs.readdir(d, 0, 0, 100).unwrap();
        assert_eq!(atime(&fs, f), strict, "read-only: file");
        assert_eq!(atime(&fs, d), dir_before, "read-only: directory");
    }
}

#[test]
fn writeback_of_more_nodes_than_one_slice_keeps_every_change() {
    // The writeback goes out in slices of a few hundred nodes (memory of sled batches); every
    // dirty node of every slice must reach the store: data, inline contents and attributes.
    let img = MemImage::create(4096).unwrap();
    let n = 700u32;
    let content = |i: u32, round: u32| -> Vec<u8> {
        let len = if i.is_multiple_of(7) {
            70_000
        } else {
            (i as usize * 13) % 3000 + 1
        };
        (0..len).map(|j| (j as u32 ^ i ^ round) as u8).collect()
    };
    let mut inos = Vec::new();
    {
        let fs = img.open(&OpenOptions::default()).unwrap();
        for round in 0..2 {
            for i in 0..n {
                let name = format!("f{i}");
                let (ino, fh) = if round == 0 {
                    let (a, fh) = fs
                        .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
                        .unwrap();
                    inos.push(a.ino);
                    (a.ino, fh)
                } else {
                    let ino = inos[i as usize];
                    (ino, fs.open_file(&ROOT, ino, libc::O_RDWR).unwrap())
                };
                // Left dirty in memory (a write marks data and attributes) for the writeback.
                fs.write(ino, fh, 0, &content(i, round)).unwrap();
                fs.release(ino, fh).unwrap();
            }
            // The first round goes out with a sync, the second with the close.
            if round == 0 {
                fs.sync_all().unwrap();
            }
        }
        fs.close().unwrap();
    }
    let fs = img.open(&OpenOptions::default()).unwrap();
    for (i, ino) in inos.iter().enumerate() {
        let got = fs.read(*ino, 0, 0, 1 << 20).unwrap();
        assert!(got == content(i as u32, 1), "data of f{i}");
    }
}

/// SEEK_DATA and SEEK_HOLE on a sparse file of 2^50 bytes (2^32 chunks of block map) find the
/// data at its end by the chunk records that exist, not by probing every chunk: probing took
/// hours, holding the file's lock (found by the io_uring request fuzzer).
#[test]
fn seek_on_a_huge_sparse_file_skips_empty_chunks() {
    use digimedfs_core::testing::StaticKey;
    let dir = tempfile::tempdir().unwrap();
    let key = StaticKey([4; 32]);
    digimedfs_core::mkfs::mkfs(dir.path(), &key, &Default::default(), &Sled).unwrap();
    let fs = std::sync::Arc::new(
        digimedfs_core::filesystem::Filesystem::open(
            dir.path(),
            &key,
            &OpenOptions::default(),
            &Sled,
        )
        .unwrap(),
    );
    let (f, fh) = fs
        .create(&ROOT, ROOT_INO, b"sparse", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let end = 1u64 << 50;
    fs.write(f.ino, fh, end - 3, b"end").unwrap();
    fs.write(f.ino, fh, 1 << 40, b"mid").unwrap();
    let (done, seen) = std::sync::mpsc::channel();
    let worker = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            // The block at 2^40 is still dirty (in memory), the last one too until the fsync.
            let before = fs.lseek(f.ino, fh, 4096, libc::SEEK_DATA).unwrap();
            fs.fsync(f.ino, fh, false).unwrap();
            let after_mid = fs
                .lseek(f.ino, fh, (1 << 40) + 4096, libc::SEEK_DATA)
                .unwrap();
            let hole = fs.lseek(f.ino, fh, 1 << 40, libc::SEEK_HOLE).unwrap();
            let _ = done.send((before, after_mid, hole));
        })
    };
    // Generous: the answer takes milliseconds; the old probe loop never finished.
    let (before, after_mid, hole) = seen
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("lseek on a sparse file did not finish");
    worker.join().unwrap();
    assert_eq!(before, 1 << 40);
    assert_eq!(after_mid as u64, end - 4096);
    assert_eq!(hole as u64, (1 << 40) + 4096);
    assert_eq!(fs.lseek(f.ino, fh, 0, libc::SEEK_HOLE).unwrap(), 0);
    fs.release(f.ino, fh).unwrap();
    fs.close().unwrap();
}
