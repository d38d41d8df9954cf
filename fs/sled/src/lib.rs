//! The sled metadata store engine: [`SledStore`] implements the core's [`MetaStore`] on a sled
//! database, and [`Sled`] is the [`MetaEngine`] that opens one in a backing directory.
//!
//! What it guarantees is the contract `digimedfs_core::meta` relies on (sled 0.34 provides
//! it): a batch is applied atomically, and after a crash the store holds a prefix of the
//! applied batches that includes every batch applied before the last completed flush. sled
//! only ever sees sealed records.

use digimedfs_core::confined::Confined;
use digimedfs_core::meta::{key_name, Batch, MetaEngine, MetaStore, ScanFn};
use digimedfs_core::{Error, Result};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// The sled engine, to hand to `Filesystem::open`, `check`, `mkfs` and `restore`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sled;

impl MetaEngine for Sled {
    fn open_in(&self, meta: &Confined, cache_bytes: u64) -> Result<Arc<dyn MetaStore>> {
        Ok(Arc::new(SledStore::open_in(meta, cache_bytes)?))
    }

    fn open_path(&self, path: &Path, cache_bytes: u64) -> Result<Arc<dyn MetaStore>> {
        Ok(Arc::new(SledStore::open(path, cache_bytes)?))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`MetaStore`] on sled.
pub struct SledStore {
    /// The open database, until [`MetaStore::close`] takes it.
    handles: RwLock<Option<Handles>>,
    /// Where sled opens the store (a `/proc/self/fd` path for a backing directory's store).
    open_path: std::path::PathBuf,
    /// The store's directory as the user knows it, for messages.
    path: std::path::PathBuf,
    cache_bytes: u64,
    /// The directory descriptor the store was opened through (its `/proc/self/fd` path is
    /// sled's), kept open as long as the store so that number never names another file.
    _pinned: Option<Confined>,
    /// One writer at a time: sled 0.34 can deadlock when many threads seal log buffers while
    /// the log file shrinks (sled issue 1412: the truncation task queues behind writer tasks
    /// that wait for the lock its waiter holds). Serializing our writes keeps the number of
    /// concurrently sealed buffers small.
    writer: Mutex<()>,
}

/// Records a scan visits before it starts looking each scanned key up again. sled 0.34
/// evicts from its cache only when one of its 256 LRU shards has queued 64 page accesses,
/// and a scan accesses each page once when it pulls it in: a long scan (fsck reading every
/// record) keeps up to 16 384 pages cached whatever the cache capacity, hundreds of MiB on a
/// store of a million files. One lookup per record counts an access for every record of the
/// page, so the shards evict as the scan moves on and the cache stays near its capacity.
/// Short scans (a small directory, one file's block map) are left as they are.
const TOUCH_AFTER: u64 = 64;

struct Handles {
    db: sled::Db,
    tree: sled::Tree,
}

/// sled log segment size of new stores: large segments mean fewer sealed buffers and fewer
/// log truncations (see [`SledStore`]). Fixed at creation; sled refuses to open a store with
/// another value.
pub const SLED_SEGMENT_SIZE: usize = 8 << 20;

impl SledStore {
    /// Opens (or creates) the store in the backing directory's `meta/`, which must hold only
    /// regular files and directories before and after the open. sled opens its files by
    /// name, following links, but creates and writes files only while it opens a store (its
    /// log, config and snapshot; values never reach its blob size): the store's directory is
    /// pinned by descriptor ([`Confined::proc_path`]) and checked on both sides of the open,
    /// so a link planted there stops the mount (see docs/threat-model.md for the window that
    /// remains while the open runs).
    pub fn open_in(meta: &Confined, cache_bytes: u64) -> Result<SledStore> {
        meta.check_plain_tree()?;
        let mut store = SledStore::open(&meta.proc_path(), cache_bytes).map_err(|e| match e {
            Error::Meta { source, .. } => Error::meta(
                format!("open metadata store {}", meta.path().display()),
                source,
            ),
            Error::Busy { .. } => store_busy(meta.path()),
            other => other,
        })?;
        store.path = meta.path().to_path_buf();
        store._pinned = Some(meta.clone());
        meta.check_plain_tree()?;
        Ok(store)
    }

    /// Opens (or creates) the store in directory `path` (a private copy, a test directory; the
    /// store of a backing directory is opened with [`SledStore::open_in`]).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledStore> {
        let handles = open_handles(path, cache_bytes)?;
        Ok(SledStore {
            handles: RwLock::new(Some(handles)),
            open_path: path.to_path_buf(),
            path: path.to_path_buf(),
            cache_bytes,
            _pinned: None,
            writer: Mutex::new(()),
        })
    }

    /// Runs `f` on the open database; fails once the store is closed.
    fn with<T>(&self, f: impl FnOnce(&Handles) -> Result<T>) -> Result<T> {
        let guard = self.handles.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(h) => f(h),
            None => Err(Error::invalid(format!(
                "metadata store {} already closed",
                self.path.display()
            ))),
        }
    }

    /// Opens the closed store once more and closes it again. sled writes its snapshot (where
    /// every page lives in the log) only when it opens, after replaying the log written since
    /// the previous snapshot: done here, that replay of what this mount wrote is paid by the
    /// unmount, not by the next mount.
    fn record_snapshot(&self) -> Result<()> {
        if let Some(dir) = &self._pinned {
            dir.check_plain_tree()?;
        }
        let started = std::time::Instant::now();
        drop(open_handles(
            &self.open_path,
            self.cache_bytes.min(1 << 20),
        )?);
        if let Some(dir) = &self._pinned {
            dir.check_plain_tree()?;
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "metadata store's snapshot recorded for the next mount"
        );
        Ok(())
    }
}

/// The error for a store another process holds open (sled locks its database exclusively):
/// worded as the mount lock's "already mounted", since a mount or a repair is what holds it.
fn store_busy(meta: &Path) -> Error {
    let backing = meta.parent().unwrap_or(meta);
    Error::Busy {
        what: format!(
            "the metadata store {} is open in another process: the filesystem is mounted (or \
             being repaired by fsck.digimed); unmount it there first (`cat {}` names the \
             host and pid of the mount)",
            meta.display(),
            backing.join(digimedfs_core::backing::LOCK_FILE).display()
        ),
    }
}

/// Opens sled's database and our tree in `path`.
fn open_handles(path: &Path, cache_bytes: u64) -> Result<Handles> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .segment_size(SLED_SEGMENT_SIZE)
        // Durability points are ours: fsync, the 5 s writeback cycle, unmount.
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    // sled releases its file lock only when its last background task lets go of the
    // database, a moment after the handle is dropped: a reopen in the same process (mkfs
    // then mount, fsck repair then mount, the snapshot at close) waits briefly for it. Other
    // processes are kept out by our own mount lock before we get here.
    let mut tries = 0;
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if tries >= 40 {
                    return Err(store_busy(path));
                }
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                return Err(Error::meta(
                    format!("open metadata store {}", path.display()),
                    e,
                ))
            }
        }
    };
    let tree = db
        .open_tree(b"records")
        .map_err(|e| Error::meta(format!("open tree in {}", path.display()), e))?;
    Ok(Handles { db, tree })
}

impl MetaStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(|h| {
            h.tree
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(|e| Error::meta(format!("read {}", key_name(key)), e))
        })
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        self.with(|h| {
            let iter = match after {
                Some(after) => {
                    let mut start = after.to_vec();
                    start.push(0);
                    h.tree.range(start..)
                }
                None => h.tree.range(prefix.to_vec()..),
            };
            let mut seen = 0u64;
            for item in iter {
                let (k, v) =
                    item.map_err(|e| Error::meta(format!("scan {}", key_name(prefix)), e))?;
                if !k.starts_with(prefix) {
                    break;
                }
                seen += 1;
                if seen > TOUCH_AFTER {
                    // Counts an access of the page holding `k` (see TOUCH_AFTER); the value
                    // is not copied and a failure here is the iterator's to report.
                    let _ = h.tree.get(&k);
                }
                if !f(&k, &v)? {
                    break;
                }
            }
            Ok(())
        })
    }

    fn apply(&self, batch: &Batch) -> Result<()> {
        self.with(|h| {
            if let [(k, v)] = batch.ops() {
                // A single change is atomic on its own; sled's batches roll the log buffer
                // twice (two writes to the log file each), single inserts do not.
                let _one_writer = lock(&self.writer);
                let res = match v {
                    Some(v) => h.tree.insert(k.as_slice(), v.as_slice()).map(|_| ()),
                    None => h.tree.remove(k.as_slice()).map(|_| ()),
                };
                return res.map_err(|e| Error::meta(format!("write {}", key_name(k)), e));
            }
            let mut b = sled::Batch::default();
            for (k, v) in batch.ops() {
                match v {
                    Some(v) => b.insert(k.as_slice(), v.as_slice()),
                    None => b.remove(k.as_slice()),
                }
            }
            let _one_writer = lock(&self.writer);
            h.tree
                .apply_batch(b)
                .map_err(|e| Error::meta(format!("write batch of {} records", batch.len()), e))
        })
    }

    fn flush(&self) -> Result<()> {
        self.with(|h| {
            let _one_writer = lock(&self.writer);
            h.db.flush()
                .map(|_| ())
                .map_err(|e| Error::meta(format!("flush {}", self.path.display()), e))
        })
    }

    fn close(&self) -> Result<()> {
        self.flush()?;
        let handles = self
            .handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(handles);
        self.record_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store another open holds (sled's exclusive file lock; a second open description in
    /// one process is refused like another process) is "busy" in the words of the mount
    /// lock, naming the store and the lock file, never sled's raw `WouldBlock`.
    #[test]
    fn a_store_held_open_elsewhere_is_busy_not_a_raw_lock_error() {
        let dir = std::env::temp_dir().join(format!("digimedfs-sled-busy-{}", std::process::id()));
        let meta = dir.join("meta");
        std::fs::create_dir_all(&meta).expect("mkdir");
        let first = SledStore::open(&meta, 1 << 20).expect("first open");
        let err = match SledStore::open(&meta, 1 << 20) {
            Ok(_) => panic!("a second open of a held store succeeded"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(matches!(err, Error::Busy { .. }), "{msg}");
        assert!(
            msg.starts_with("filesystem busy: the metadata store")
                && msg.contains(&format!("cat {}/lock", dir.display()))
                && !msg.contains("WouldBlock"),
            "{msg}"
        );
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
