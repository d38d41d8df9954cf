//! The backing directory: where a filesystem's superblock, metadata store, data objects and
//! lock file live, and how the superblock is replaced atomically (write, fsync, rename, fsync
//! the directory; a redundant copy is kept in `superblock.bak`).
//!
//! Fencing ([`Fence`]): on shared storage a host can lose its mount lock while its daemon still
//! runs (its storage session evicted, an NFS lease expired during a partition) and another host
//! can then take the filesystem over. Every read-write open writes a superblock with a new
//! epoch, so a mount remembers the superblock it wrote last and, before each metadata commit
//! (each group handed to the metadata store and each flush) and before each superblock write,
//! re-reads the superblock on storage. If it is no longer the one this mount wrote, another
//! mount took over: this mount is fenced and from then on refuses every write (EIO at the
//! commit, EROFS for new changes) and writes nothing to the metadata store, the objects or the
//! superblock again. The window that remains (a commit already past its check) is described in
//! docs/operations.md.

use crate::confined::{Access, Confined};
use crate::crypto::FsKeys;
use crate::format::format_uuid;
use crate::format::superblock::Superblock;
use crate::meta::{Batch, MetaStore, ScanFn};
use crate::{Error, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Primary superblock file name.
pub const SUPERBLOCK: &str = "superblock";
/// Redundant superblock copy.
pub const SUPERBLOCK_BAK: &str = "superblock.bak";
/// Metadata store directory (sled).
pub const META_DIR: &str = "meta";
/// Data objects directory.
pub const OBJECTS_DIR: &str = "objects";
/// Mount lock file.
pub const LOCK_FILE: &str = "lock";
/// Backup points and requests (see `crate::backup`).
pub const BACKUP_DIR: &str = "backup";
/// Every name a backing directory may contain.
pub const KNOWN_NAMES: [&str; 6] = [
    SUPERBLOCK,
    SUPERBLOCK_BAK,
    META_DIR,
    OBJECTS_DIR,
    LOCK_FILE,
    BACKUP_DIR,
];
const MAX_SUPERBLOCK: u64 = 64 * 1024;
/// sled's log file inside [`META_DIR`] (sled 0.34 keeps everything in it).
const SLED_LOG: &str = "db";
/// Longest holder description read from the lock file.
const HOLDER_MAX: u64 = 1024;
/// How long (in 100 ms steps) a mount waits for a lock held by a daemon that is shutting down.
const LOCK_WAIT_TRIES: u32 = 30;

/// One backing directory, reached through a [`Confined`] descriptor: every file in it is
/// opened beneath it and never through a symbolic link (storage is the adversary).
#[derive(Debug, Clone)]
pub struct BackingDir {
    dir: Confined,
    /// Shared by every clone: the fence of the mount that uses this directory.
    fence: Arc<Fence>,
}

impl BackingDir {
    /// The backing directory at `root` (which must exist and be a directory).
    pub fn open(root: &Path) -> Result<BackingDir> {
        let dir = Confined::open(root).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::invalid(format!("{}: no such directory", root.display()))
            }
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR) => {
                Error::invalid(format!("{}: not a directory", root.display()))
            }
            other => other,
        })?;
        Ok(BackingDir {
            fence: Arc::new(Fence::new(dir.clone())),
            dir,
        })
    }

    /// The confined directory handle (every access to the backing directory goes through it).
    pub fn confined(&self) -> &Confined {
        &self.dir
    }

    /// The fence of this directory (armed by the first superblock write through it).
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// The metadata store (sled, in `meta/`) with every write checked against this
    /// directory's fence, and every flush completed by an fsync of sled's log file
    /// ([`FencedMeta`]).
    pub fn fenced(&self, store: Arc<dyn MetaStore>) -> Result<Arc<dyn MetaStore>> {
        let rel = format!("{META_DIR}/{SLED_LOG}");
        let log = self.dir.open_file(&rel, Access::Read)?;
        Ok(Arc::new(FencedMeta {
            inner: Some(store),
            fence: self.fence.clone(),
            log: Some((self.dir.display(&rel), log)),
        }))
    }

    /// The metadata store's directory, for `digimedfs_sled::SledStore::open_in` (which checks
    /// it for links before and after sled opens it).
    pub fn meta_for_open(&self) -> Result<Confined> {
        let meta = self.dir.try_open_dir(META_DIR)?.ok_or_else(|| {
            Error::format(format!(
                "{}: metadata store missing (damaged filesystem; run fsck.digimed)",
                self.dir.display(META_DIR).display()
            ))
        })?;
        Ok(meta)
    }

    /// Path of a file inside it, for messages.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.display(name)
    }

    /// The directory itself (for messages).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The error a change must fail with once this directory's mount is fenced (None while it
    /// is not).
    pub fn fenced_error(&self, op: &str) -> Option<Error> {
        self.fence.refusal(op)
    }

    /// Reads the superblock file `name` (the primary or its copy).
    pub fn read_superblock(&self, name: &str) -> Result<Vec<u8>> {
        self.dir.read_small(name, MAX_SUPERBLOCK)?.ok_or_else(|| {
            Error::format(format!(
                "{}: no superblock; not a digimedfs filesystem (run mkfs.digimed first)",
                self.dir.display(name).display()
            ))
        })
    }

    /// Atomically replaces both superblock copies with `bytes`. Refused once a mount through
    /// this directory is fenced or finds that another mount replaced the superblock it wrote;
    /// after the primary copy is replaced, `bytes` is what the fence expects on storage.
    pub fn write_superblock(&self, bytes: &[u8]) -> Result<()> {
        self.fence.check()?;
        for name in [SUPERBLOCK, SUPERBLOCK_BAK] {
            let tmp = format!("{name}.tmp");
            // Never written through: whatever is there (a leftover, or a planted link) goes.
            self.dir.remove_file(&tmp)?;
            let mut f = self.dir.open_file(&tmp, Access::CreateNew)?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(self.dir.display(&tmp), e))?;
            let rename = || self.dir.rename(&tmp, name);
            if name == SUPERBLOCK {
                self.fence.replacing(bytes, rename)?;
            } else {
                rename()?;
            }
            self.sync_dir()?;
        }
        Ok(())
    }

    /// fsyncs the directory itself.
    pub fn sync_dir(&self) -> Result<()> {
        self.dir.sync()
    }

    /// Takes the mount lock: an exclusive `flock` on the lock file, which also records the
    /// holder (host, pid, time) so a refused second mount can name it. The lock is released
    /// when the returned guard is dropped or the process dies.
    pub fn lock(&self, force: bool) -> Result<MountLock> {
        let file = self.dir.open_file(LOCK_FILE, Access::Create)?;
        let path = self.dir.display(LOCK_FILE);
        // A daemon that was just unmounted may still be writing back for a moment: wait for it
        // briefly before calling the filesystem busy.
        let mut result = file.try_lock();
        for _ in 0..LOCK_WAIT_TRIES {
            if !matches!(result, Err(std::fs::TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            result = file.try_lock();
        }
        match result {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_holder(&file);
                if !force {
                    return Err(Error::Busy {
                        what: format!(
                            "{} is already mounted by {holder}; unmount it there first (if that \
                             host is dead and its lock is stale, `digimedfs mount -o \
                             force_unlock` takes the lock over: docs/operations.md)",
                            self.root().display(),
                        ),
                    });
                }
                tracing::warn!(%holder, "taking over the mount lock by force_unlock");
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The path names the storage mount this host reaches the directory through, which
        // tells apart two mounts on one machine (two storage clients) as well.
        let info = format!(
            "host {host} pid {} path {} since unix time {now}\n",
            std::process::id(),
            self.root().display()
        );
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        std::os::unix::fs::FileExt::write_all_at(&file, info.as_bytes(), 0)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MountLock { _file: file })
    }
}

/// The holder a lock file names, for messages: only a description in the form this build
/// writes (`host H pid P path X since unix time T`, printable ASCII, one line) is repeated;
/// anything else in the file is storage's and never echoed.
fn read_holder(file: &File) -> String {
    let mut raw = Vec::new();
    let _ = file.take(HOLDER_MAX).read_to_end(&mut raw);
    holder_description(&raw).unwrap_or_else(|| "another process".to_string())
}

/// The validated holder description in `raw` (see `read_holder`).
pub fn holder_description(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let printable = line.bytes().all(|b| (0x20..0x7f).contains(&b));
    let mut words = line.split(' ');
    let shaped = words.next() == Some("host")
        && words.next().is_some_and(|h| !h.is_empty())
        && words.next() == Some("pid")
        && words
            .next()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && words.next() == Some("path")
        && line.contains(" since unix time ")
        && line
            .rsplit(' ')
            .next()
            .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    (printable && shaped && !line.is_empty()).then(|| line.to_string())
}

/// Holds the mount lock while alive.
#[derive(Debug)]
pub struct MountLock {
    _file: File,
}

/// How a mount notices that another mount took its filesystem over (see the module docs).
///
/// Armed with the superblock bytes a read-write mount wrote last; [`Fence::check`] compares
/// them with the primary superblock on storage. Once a difference is seen the fence stays shut
/// for the life of the process.
#[derive(Debug)]
pub struct Fence {
    dir: Confined,
    state: Mutex<FenceState>,
}

#[derive(Debug, Default)]
struct FenceState {
    /// The superblock this mount wrote last; None: not armed (read-only use, tools).
    ours: Option<Vec<u8>>,
    /// Set once fenced: the log line's text, repeated in every refusal.
    fenced: Option<String>,
}

impl Fence {
    /// An unarmed fence for the backing directory `dir`.
    pub fn new(dir: Confined) -> Fence {
        Fence {
            dir,
            state: Mutex::new(FenceState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FenceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `replace` (which puts `superblock` on storage) and remembers it as this mount's,
    /// holding the fence's state throughout: a check on another thread must never read the new
    /// superblock while this mount still expects the old one (it would fence itself).
    pub fn replacing(&self, superblock: &[u8], replace: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut st = self.state();
        replace()?;
        if st.fenced.is_none() {
            st.ours = Some(superblock.to_vec());
        }
        Ok(())
    }

    /// Whether another mount took over (as far as this process has seen).
    pub fn is_fenced(&self) -> bool {
        self.state().fenced.is_some()
    }

    /// The error for a change attempted after this mount was fenced.
    pub fn refusal(&self, op: &str) -> Option<Error> {
        self.state()
            .fenced
            .as_ref()
            .map(|why| Error::posix(libc::EROFS, format!("{op}: {why}")))
    }

    /// Ok if this fence is unarmed or the superblock on storage is still the one this mount
    /// wrote; otherwise the mount is fenced (logged once) and this and every later check fail
    /// with EIO. A superblock that cannot be read fails this check (the commit is not made)
    /// without fencing the mount.
    pub fn check(&self) -> Result<()> {
        let mut st = self.state();
        if let Some(why) = &st.fenced {
            return Err(Error::posix(libc::EIO, why.clone()));
        }
        let Some(ours) = &st.ours else {
            return Ok(());
        };
        let on_disk = self
            .dir
            .read_small(SUPERBLOCK, MAX_SUPERBLOCK)?
            .ok_or_else(|| {
                Error::io(
                    self.dir.display(SUPERBLOCK),
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                )
            })?;
        if on_disk == *ours {
            return Ok(());
        }
        let epoch = crate::format::superblock::Superblock::decode_unverified(&on_disk)
            .map(|sb| sb.epoch.to_string())
            .unwrap_or_else(|_| "unknown (the superblock on storage does not decode)".into());
        let holder = self
            .dir
            .read_small(LOCK_FILE, HOLDER_MAX)
            .ok()
            .flatten()
            .and_then(|raw| holder_description(&raw))
            .unwrap_or_else(|| "unknown".to_string());
        let why = format!(
            "fenced: another host took over this filesystem at epoch {epoch} (holder {holder}); \
             {} is no longer written by this mount (unmount it)",
            self.dir.path().display()
        );
        tracing::error!("{why}");
        st.fenced = Some(why.clone());
        Err(Error::posix(libc::EIO, why))
    }
}

/// A [`MetaStore`] whose writes pass [`Fence::check`] first: every group handed over and every
/// flush. Once fenced, the inner store is never written again, not even when dropped (sled
/// writes its buffers on drop, so a fenced store is leaked instead).
///
/// A flush also fsyncs sled's log file: sled 0.34 makes its writes stable with
/// `sync_file_range(2)` only, which neither persists the file's size nor reaches a network
/// filesystem's client (ceph-fuse keeps the data in its own cache, lost if the client is
/// evicted or dies), so "flushed" would not mean durable on shared storage.
pub struct FencedMeta {
    inner: Option<Arc<dyn MetaStore>>,
    fence: Arc<Fence>,
    /// sled's log file, fsynced after every flush (None in tests over other stores).
    log: Option<(PathBuf, File)>,
}

impl FencedMeta {
    fn inner(&self) -> Result<&Arc<dyn MetaStore>> {
        self.inner
            .as_ref()
            .ok_or_else(|| Error::invalid("metadata store already closed"))
    }
}

impl MetaStore for FencedMeta {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner()?.get(key)
    }
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        self.inner()?.scan(prefix, after, f)
    }
    fn apply(&self, batch: &Batch) -> Result<()> {
        self.fence.check()?;
        self.inner()?.apply(batch)
    }
    fn flush(&self) -> Result<()> {
        self.fence.check()?;
        self.inner()?.flush()?;
        if let Some((path, log)) = &self.log {
            log.sync_all().map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }
    fn close(&self) -> Result<()> {
        self.flush()?;
        self.inner()?.close()
    }
}

impl Drop for FencedMeta {
    fn drop(&mut self) {
        if self.fence.is_fenced() {
            if let Some(inner) = self.inner.take() {
                tracing::warn!(
                    "fenced: the metadata store is abandoned without writing its buffers"
                );
                std::mem::forget(inner);
            }
        }
    }
}

/// Reads the superblock (falling back to its copy), unlocks a key slot and verifies the MAC.
///
/// The copy is used only when the primary is unreadable, malformed, or fails its MAC: the
/// primary is always written first, so a primary that is authentic (its MAC verifies under the
/// master key the copy opens to) is the newer one. A key that opens only the copy then is a key
/// the primary no longer lists (a key change interrupted before the copy was rewritten, or a
/// removed key), and is refused like any wrong key.
pub fn unlock_superblock(
    dir: &BackingDir,
    key: &dyn crate::keysource::KeySource,
) -> Result<(Superblock, Arc<FsKeys>)> {
    let primary = dir.read_superblock(SUPERBLOCK);
    let primary_bytes = primary.as_ref().ok().cloned();
    let mut last_err = None;
    for (name, bytes) in [
        (SUPERBLOCK, primary),
        (SUPERBLOCK_BAK, dir.read_superblock(SUPERBLOCK_BAK)),
    ] {
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                last_err.get_or_insert(e);
                continue;
            }
        };
        let sb = match Superblock::decode_unverified(&bytes) {
            Ok(sb) => sb,
            Err(e) => {
                tracing::warn!(file = name, error = %e, "superblock copy unreadable");
                last_err.get_or_insert(e);
                continue;
            }
        };
        let ctx = crate::keysource::SlotContext {
            fs_uuid: sb.fs_uuid,
            tenant: sb.tenant.clone(),
        };
        let mut master = None;
        let mut slot_err = None;
        for slot in sb.slots.iter().filter(|s| s.kind == key.kind()) {
            match key.open_slot(slot, &ctx) {
                Ok(Some(m)) => {
                    master = Some(m);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    slot_err.get_or_insert(e);
                }
            }
        }
        if master.is_none() {
            if let Some(e) = slot_err {
                // The key source refused or failed (service down, revoked, wrong tenant): its
                // own error says more than "wrong key".
                return Err(e);
            }
        }
        let Some(master) = master else {
            // Try the other copy before blaming the key: this copy's slots may be damaged.
            tracing::warn!(
                file = name,
                "no key slot of this superblock copy opens with the key"
            );
            last_err = Some(Error::WrongKey {
                what: format!(
                    "{} does not unlock the filesystem in {} (uuid {})",
                    key.describe(),
                    dir.root().display(),
                    format_uuid(&sb.fs_uuid)
                ),
            });
            continue;
        };
        let keys = Arc::new(FsKeys::derive(&master, &sb.fs_uuid)?);
        match Superblock::verify(&bytes, &keys.superblock) {
            Ok(())
                if name == SUPERBLOCK_BAK
                    && primary_bytes
                        .as_ref()
                        .is_some_and(|p| Superblock::verify(p, &keys.superblock).is_ok()) =>
            {
                tracing::warn!(
                    "{SUPERBLOCK_BAK} lists a key slot the primary superblock no longer has \
                     (an interrupted key change); the primary is in force"
                );
                return Err(Error::WrongKey {
                    what: format!(
                        "{} does not unlock the filesystem in {} (uuid {}): its key slot was \
                         removed",
                        key.describe(),
                        dir.root().display(),
                        format_uuid(&sb.fs_uuid)
                    ),
                });
            }
            Ok(()) => return Ok((sb, keys)),
            Err(e) => {
                tracing::warn!(file = name, error = %e, "superblock copy fails its MAC");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| Error::format("no usable superblock")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MemStore;

    fn fixture() -> (tempfile::TempDir, BackingDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = BackingDir::open(dir.path()).expect("open");
        (dir, b)
    }

    #[test]
    fn unarmed_fence_lets_everything_through() {
        let (_t, b) = fixture();
        assert!(
            b.fence().check().is_ok(),
            "no superblock, not armed: no check"
        );
        assert!(b.fenced_error("write").is_none());
    }

    #[test]
    fn own_superblock_passes_and_a_takeover_fences_for_good() {
        let (_t, a) = fixture();
        a.write_superblock(b"epoch 5 of host a").expect("write");
        a.fence().check().expect("our own superblock");
        let store: Arc<dyn MetaStore> = Arc::new(FencedMeta {
            inner: Some(Arc::new(MemStore::new())),
            fence: a.fence().clone(),
            log: None,
        });
        let mut batch = Batch::default();
        batch.ops_push(b"k".to_vec(), b"v".to_vec());
        store.apply(&batch).expect("apply before takeover");
        store.flush().expect("flush before takeover");

        // Host B opens the same directory (its own BackingDir, its own fence) and bumps the
        // epoch.
        let b = BackingDir::open(a.root()).expect("open");
        b.write_superblock(b"epoch 6 of host b").expect("b writes");

        let err = store.apply(&batch).expect_err("apply after takeover");
        assert_eq!(err.errno(), libc::EIO);
        assert!(
            err.to_string().contains("fenced: another host took over"),
            "{err}"
        );
        assert!(a.fence().is_fenced());
        assert_eq!(
            a.fenced_error("mkdir").map(|e| e.errno()),
            Some(libc::EROFS)
        );
        assert!(store.flush().is_err());
        // A's superblock write (its unmount) must not overwrite B's.
        assert!(a.write_superblock(b"epoch 7 of host a").is_err());
        assert_eq!(
            std::fs::read(a.path(SUPERBLOCK)).expect("read"),
            b"epoch 6 of host b"
        );
        // Fenced for good, even if the superblock went back to what A wrote.
        std::fs::write(a.path(SUPERBLOCK), b"epoch 5 of host a").expect("write back");
        assert!(a.fence().check().is_err());
        std::fs::write(a.path(SUPERBLOCK), b"epoch 6 of host b").expect("undo");
        // B is not fenced by its own writes.
        b.fence().check().expect("b's own superblock");
        b.write_superblock(b"epoch 7 of host b")
            .expect("b writes again");
        b.fence().check().expect("b still holds it");
    }

    #[test]
    fn unreadable_superblock_fails_the_check_without_fencing() {
        let (_t, a) = fixture();
        a.write_superblock(b"sb").expect("write");
        std::fs::remove_file(a.path(SUPERBLOCK)).expect("rm");
        assert!(a.fence().check().is_err());
        assert!(!a.fence().is_fenced());
        std::fs::write(a.path(SUPERBLOCK), b"sb").expect("restore");
        a.fence().check().expect("readable again");
    }

    #[test]
    fn lock_holder_names_host_pid_and_path() {
        let (_t, a) = fixture();
        let _lock = a.lock(false).expect("lock");
        let text = std::fs::read_to_string(a.path(LOCK_FILE)).expect("read lock");
        assert!(text.starts_with("host "), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(
            text.contains(&format!("path {}", a.root().display())),
            "{text}"
        );
    }
}
