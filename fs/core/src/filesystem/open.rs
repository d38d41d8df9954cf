//! Opening and closing a filesystem: the epoch and store-state checks that refuse a rolled
//! back or foreign metadata store, crash recovery at a read-write mount, and the clean
//! unmount that records the final digest in the superblock.

use super::alloc::CounterState;
use super::flusher::{backup_watcher, flusher, Signal};
use super::{
    lock, unlock_superblock, Caches, Deletions, DirtyMemory, Filesystem, Inner, Mount, OpenOptions,
    Parts, Reclaim, CHUNK_CACHE, INO_RESERVE, META_GROUP_KEYS, NODE_CACHE, ROOT_INO,
};
use crate::backing::{BackingDir, MountLock};
use crate::crypto::incarnation::KeyRing;
use crate::format::records::StoreState;
use crate::format::superblock::{Superblock, FLAG_CLEAN, FLAG_STORE_STATE};
use crate::meta::{DigestStore, MetaEngine, MetaStore, Records};
use crate::objects::DirObjects;
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The backing directory for messages.
pub(super) fn backing_name(backing: Option<&BackingDir>) -> String {
    backing.map_or_else(
        || "the backing directory".to_string(),
        |b| b.root().display().to_string(),
    )
}

/// Refuses a metadata store that belongs to another superblock epoch than `sb`'s (or the one
/// after it, which a crash between binding the store and writing the superblock leaves).
pub(super) fn check_store_epoch(
    state: &StoreState,
    sb: &Superblock,
    backing: Option<&BackingDir>,
) -> Result<()> {
    if state.epoch == sb.epoch || Some(state.epoch) == sb.epoch.checked_add(1) {
        return Ok(());
    }
    let dir = backing_name(backing);
    let what = if state.epoch < sb.epoch {
        "the store was rolled back (an older copy of meta/ put back) or replaced on storage"
    } else {
        "the store is newer than the superblock (the superblock was rolled back, or the store \
         comes from elsewhere)"
    };
    Err(Error::integrity(format!(
        "metadata store belongs to epoch {} but the superblock is at epoch {}: {what}; nothing \
         was changed. `fsck.digimed -n` with this mount's key options on {dir} reports it; to \
         go back to an earlier state deliberately, restore a backup point (docs/backup.md)",
        state.epoch, sb.epoch
    )))
}

/// First read-write mount of a store made before the store state record: computes its digest
/// once (O(records)) and writes the record bound to `epoch`. When the superblock is clean, the
/// digest must be the one the last unmount recorded, or the store is refused rather than
/// adopted as it is.
pub(super) fn adopt_legacy_store(
    tracker: &DigestStore,
    sb: &Superblock,
    epoch: u64,
    backing: Option<&BackingDir>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let digest = tracker.recompute()?;
    if sb.is_clean() && digest != sb.meta_digest {
        let dir = backing_name(backing);
        return Err(Error::integrity(format!(
            "metadata store differs from what the last clean unmount recorded in the superblock \
             (records rolled back, changed outside digimedfs, or lost); nothing was changed. \
             `fsck.digimed -n` with this mount's key options on {dir} reports it"
        )));
    }
    tracker.adopt(epoch, digest)?;
    tracing::info!(
        epoch,
        ms = started.elapsed().as_millis() as u64,
        "metadata store given its state record (running digest and epoch) on its first mount by this version"
    );
    Ok(())
}

impl Filesystem {
    /// Opens the filesystem in `backing`, unlocking it with `key`, its metadata store through
    /// `engine`.
    pub fn open(
        backing: &Path,
        key: &dyn crate::keysource::KeySource,
        opts: &OpenOptions,
        engine: &dyn MetaEngine,
    ) -> Result<Filesystem> {
        let dir = BackingDir::open(backing)?;
        let (superblock, keys) = unlock_superblock(&dir, key)?;
        // Read-only mounts take the lock too: sled opens its store exclusively, so one mount
        // at a time is all there can be, and the lock's holder is what a refusal names.
        let lock = Some(dir.lock(opts.force_unlock)?);
        // The superblock was unlocked before the lock was ours (a wrong key changes nothing, not
        // even the lock file); a key command or rewrap that held the lock meanwhile may have
        // replaced it, and writing the old one back would undo that change.
        let current = dir
            .read_superblock(crate::backing::SUPERBLOCK)
            .and_then(|b| Superblock::decode_unverified(&b));
        let (superblock, keys) = match current {
            Ok(now) if now == superblock => (superblock, keys),
            _ => unlock_superblock(&dir, key)?,
        };
        let meta_dir = dir.meta_for_open()?;
        let ctx = crate::keysource::SlotContext {
            fs_uuid: superblock.fs_uuid,
            tenant: superblock.tenant.clone(),
        };
        // A backing directory older than what the anchor last saw is a rollback.
        key.check_anchor(&ctx, superblock.epoch, &superblock.meta_digest)?;
        let sled: Arc<dyn MetaStore> =
            dir.fenced(engine.open_in(&meta_dir, opts.meta_cache_bytes)?)?;
        // The running digest is kept below the group commit, by its hand-over thread.
        let tracked: Arc<dyn MetaStore> =
            Arc::new(DigestStore::open(sled, keys.clone(), &superblock.fs_uuid)?);
        let meta = Arc::new(crate::meta::BufferedStore::with_handover_thread(
            tracked,
            META_GROUP_KEYS,
        )?);
        let objects = Arc::new(DirObjects::open(dir.confined())?);
        let parts = Parts {
            superblock,
            keys,
            meta,
            objects,
            backing: Some(dir),
        };
        let fs = Filesystem::from_parts(parts, lock, opts)?;
        if !opts.read_only {
            if let Some(anchor) = key.anchor_handle() {
                let sb = fs.superblock();
                anchor.anchor(&ctx, sb.epoch, &sb.meta_digest)?;
                *self::lock(&fs.inner.mount.anchor) = Some(anchor);
            }
        }
        Ok(fs)
    }

    /// Opens a filesystem over explicit storage parts (tests, fsck).
    pub fn from_parts(
        parts: Parts,
        mount_lock: Option<MountLock>,
        opts: &OpenOptions,
    ) -> Result<Filesystem> {
        let Parts {
            mut superblock,
            keys,
            meta,
            objects,
            backing,
        } = parts;
        // Every store is tracked; a caller that did not put a digest store under its group
        // commit gets one on top (same digest, computed per operation instead of per group).
        let meta = if meta.digest_store().is_some() {
            meta
        } else {
            Arc::new(DigestStore::open(meta, keys.clone(), &superblock.fs_uuid)?)
        };
        let mut records = Records::new(meta, keys.clone(), &superblock.fs_uuid);
        if let Some(gate) = objects.point_gate() {
            records.set_gate(gate);
        }
        let tracker = records
            .digest_store()
            .ok_or_else(|| Error::invalid("metadata store without a digest store"))?;
        let state = tracker.state();
        match state {
            Some(state) => check_store_epoch(&state, &superblock, backing.as_ref())?,
            None if superblock.flags & FLAG_STORE_STATE != 0 => {
                let dir = backing_name(backing.as_ref());
                return Err(Error::integrity(format!(
                    "metadata store has no store state record, but the superblock (epoch {}) \
                     says it has one: the store was replaced on storage or the record deleted; \
                     nothing was changed. `fsck.digimed -n` with this mount's key options on \
                     {dir} reports it",
                    superblock.epoch
                )));
            }
            None => {}
        }
        let counters = records.counters()?.ok_or_else(|| {
            Error::integrity("counters record missing from the metadata store (run fsck.digimed)")
        })?;
        if records.inode(ROOT_INO)?.is_none() {
            return Err(Error::integrity("root inode missing (run fsck.digimed)"));
        }
        let block_size = u64::from(superblock.block_size);
        if !opts.read_only {
            // The store is bound to the new epoch and flushed before the superblock says it:
            // a crash in between leaves the store one epoch ahead, which open accepts. Without
            // a superblock to write (in-memory tests) the store stays at the superblock's.
            let epoch = superblock.epoch + 1;
            let bind_to = if backing.is_some() {
                epoch
            } else {
                superblock.epoch
            };
            match state {
                Some(_) => {
                    if backing.is_some() {
                        tracker.bind_epoch(bind_to)?;
                    }
                }
                None => adopt_legacy_store(tracker, &superblock, bind_to, backing.as_ref())?,
            }
            records.flush()?;
            superblock.flags &= !FLAG_CLEAN;
            superblock.flags |= FLAG_STORE_STATE;
            superblock.epoch = epoch;
            if let Some(b) = &backing {
                b.write_superblock(&superblock.encode(&keys.superblock)?)?;
            }
        }
        let chunk_cap =
            std::num::NonZeroUsize::new(CHUNK_CACHE).unwrap_or(std::num::NonZeroUsize::MIN);
        let inner = Arc::new(Inner {
            records,
            ring: KeyRing::new(keys.clone()),
            keys,
            objects,
            block_size,
            read_only: opts.read_only,
            check_perms: opts.check_permissions,
            atime: opts.atime,
            diratime: opts.diratime,
            max_dirty: opts.max_dirty_bytes.max(1 << 20),
            mount: Mount {
                superblock: Mutex::new(superblock),
                backing,
                mount_lock: Mutex::new(mount_lock),
                anchor: Mutex::new(None),
            },
            cache: Caches {
                nodes: Mutex::new(HashMap::new()),
                node_trim_at: AtomicUsize::new(NODE_CACHE),
                chunk_cache: Mutex::new(lru::LruCache::new(chunk_cap)),
                node_hits: AtomicU64::new(0),
                node_misses: AtomicU64::new(0),
                chunk_hits: AtomicU64::new(0),
                chunk_misses: AtomicU64::new(0),
            },
            ns_lock: Mutex::new(()),
            wb_lock: Mutex::new(()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            counters: Mutex::new(CounterState {
                next_ino: counters.ino_reserved,
                ino_reserved: counters.ino_reserved,
                next_gen: counters.gen_reserved,
                gen_reserved: counters.gen_reserved,
                current: None,
            }),
            mem: DirtyMemory {
                dirty_bytes: AtomicUsize::new(0),
                in_flight_bytes: AtomicUsize::new(0),
                inline_dirty_bytes: AtomicUsize::new(0),
            },
            pending: Mutex::new(HashSet::new()),
            deletions: Deletions {
                doomed: Mutex::new(Vec::new()),
                reclaim: Mutex::new(Reclaim::default()),
            },
            closed: AtomicBool::new(false),
            signal: (Mutex::new(Signal::default()), Condvar::new()),
        });
        let fs = Filesystem {
            inner: inner.clone(),
            flusher: Mutex::new(None),
            backup_watcher: Mutex::new(None),
        };
        if !opts.read_only {
            fs.inner.recover()?;
            let weak = Arc::downgrade(&inner);
            let handle = std::thread::Builder::new()
                .name("digimedfs-flush".into())
                .spawn(move || flusher(weak))
                .map_err(|e| Error::io("flusher thread", e))?;
            *lock(&fs.flusher) = Some(handle);
            if fs.inner.mount.backing.is_some() {
                let weak = Arc::downgrade(&inner);
                let handle = std::thread::Builder::new()
                    .name("digimedfs-backup".into())
                    .spawn(move || backup_watcher(weak))
                    .map_err(|e| Error::io("backup request thread", e))?;
                *lock(&fs.backup_watcher) = Some(handle);
            }
        }
        Ok(fs)
    }

    /// Writes back everything, marks the filesystem clean and releases the lock.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        {
            let (m, cv) = &self.inner.signal;
            lock(m).stopped = true;
            cv.notify_all();
        }
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
        if let Some(h) = lock(&self.backup_watcher).take() {
            let _ = h.join();
        }
        if self.inner.read_only {
            return Ok(());
        }
        self.inner.sync_all_final()?;
        // The running digest, never a recomputation: a record put back behind the mount's back
        // stays a mismatch for fsck instead of being absorbed into a fresh digest.
        let tracker = self
            .inner
            .records
            .digest_store()
            .ok_or_else(|| Error::invalid("metadata store without a digest store"))?;
        let digest = tracker
            .state()
            .ok_or_else(|| Error::invalid("metadata store has no running digest"))?
            .digest;
        let mut sb = lock(&self.inner.mount.superblock);
        if self.inner.mount.backing.is_some() {
            tracker.bind_epoch(sb.epoch + 1)?;
            self.inner.records.flush()?;
        }
        sb.meta_digest = digest;
        sb.flags |= FLAG_CLEAN;
        sb.epoch += 1;
        if let Some(b) = &self.inner.mount.backing {
            b.write_superblock(&sb.encode(&self.inner.keys.superblock)?)?;
        }
        let (epoch, digest) = (sb.epoch, sb.meta_digest);
        let ctx = crate::keysource::SlotContext {
            fs_uuid: sb.fs_uuid,
            tenant: sb.tenant.clone(),
        };
        drop(sb);
        // Everything is durable and the superblock says clean: closing the store now only
        // spares the next mount work (sled's log replay), so a failure costs no data.
        if let Err(e) = self.inner.records.close() {
            tracing::warn!(error = %e, "metadata store not closed cleanly; the next mount replays its log");
        }
        if let Some(anchor) = lock(&self.inner.mount.anchor).take() {
            // Everything is on disk and the superblock says clean: an anchor that cannot be
            // recorded only leaves the key service one epoch behind, which the next mount's
            // check accepts (a newer epoch is never a rollback) and then records.
            if let Err(e) = anchor.anchor(&ctx, epoch, &digest) {
                tracing::warn!(
                    error = %e,
                    "filesystem {} closed cleanly and its data is intact, but the key service \
                     did not record epoch {epoch} (rollback anchor); the next mount accepts \
                     the newer epoch and records it, and until then the key service would not \
                     notice the backing directory being replaced by a copy taken during this \
                     mount",
                    crate::filesystem::format_uuid(&ctx.fs_uuid)
                );
            }
        }
        lock(&self.inner.mount.mount_lock).take();
        Ok(())
    }
}

impl Inner {
    /// Removes orphans left by a crash and reserves fresh number ranges.
    pub(super) fn recover(&self) -> Result<()> {
        for ino in self.records.orphans()? {
            tracing::info!(
                ino,
                "removing inode left unlinked-but-open by an earlier mount"
            );
            if let Some(inode) = self.records.inode(ino)? {
                self.purge_inode(&inode)?;
            } else {
                let mut b = self.records.batch();
                b.set_orphan(ino, false);
                b.commit()?;
            }
        }
        // Inline data of inodes deleted before a crash or an unmount that did not finish is
        // reclaimed by the commit cycle like that of inodes deleted from now on. A mark is
        // written in the batch that deletes its inode, and inode numbers are never reused, so
        // a mark beside a live inode is damage: keep the data, drop the mark.
        for ino in self.records.reclaims()? {
            if self.records.inode(ino)?.is_some() {
                tracing::warn!(ino, "reclaim mark for an inode that exists; mark removed");
                let mut b = self.records.batch();
                b.set_reclaim(ino, false);
                b.commit()?;
            } else {
                lock(&self.deletions.reclaim).inos.push(ino);
            }
        }
        self.resolve_prev()?;
        let mut c = lock(&self.counters);
        c.ino_reserved = c.next_ino + INO_RESERVE;
        // Every read-write mount writes its blocks under a new incarnation: a copy or
        // restore of this store that mounts too continues from the same counters, but
        // not with the same salt.
        self.start_incarnation(&mut c)?;
        drop(c);
        self.flush_and_delete_doomed()
    }
}

impl Drop for Filesystem {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the filesystem failed; data written since the last sync may be lost");
        }
    }
}
