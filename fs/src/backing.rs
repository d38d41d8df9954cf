//! The backing directory: where a filesystem's superblock, metadata store, data objects and
//! lock file live, and how the superblock is replaced atomically (write, fsync, rename, fsync
//! the directory; a redundant copy is kept in `superblock.bak`).

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
/// Every name a backing directory may contain.
pub const KNOWN_NAMES: [&str; 5] = [SUPERBLOCK, SUPERBLOCK_BAK, META_DIR, OBJECTS_DIR, LOCK_FILE];
const MAX_SUPERBLOCK: u64 = 64 * 1024;
/// How long (in 100 ms steps) a mount waits for a lock held by a daemon that is shutting down.
const LOCK_WAIT_TRIES: u32 = 30;

/// Paths inside one backing directory.
#[derive(Debug, Clone)]
pub struct BackingDir {
    root: PathBuf,
}

impl BackingDir {
    /// The backing directory at `root`.
    pub fn new(root: &Path) -> BackingDir {
        BackingDir {
            root: root.to_path_buf(),
        }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Path of a file inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Reads the primary superblock, falling back to the copy if the primary is missing.
    pub fn read_superblock(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::format(format!(
                    "{}: no superblock; not a digimedfs filesystem (run mkfs.digimed first)",
                    path.display()
                ))
            } else {
                Error::io(&path, e)
            }
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_SUPERBLOCK)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        Ok(bytes)
    }

    /// Atomically replaces both superblock copies with `bytes`.
    pub fn write_superblock(&self, bytes: &[u8]) -> Result<()> {
        for name in [SUPERBLOCK, SUPERBLOCK_BAK] {
            let tmp = self.path(&format!("{name}.tmp"));
            let dst = self.path(name);
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, e))?;
            f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
            self.sync_dir()?;
        }
        Ok(())
    }

    /// fsyncs the directory itself.
    pub fn sync_dir(&self) -> Result<()> {
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.root, e))
    }

    /// Takes the mount lock: an exclusive `flock` on the lock file, which also records the
    /// holder (host, pid, time) so a refused second mount can name it. The lock is released
    /// when the returned guard is dropped or the process dies.
    pub fn lock(&self, force: bool) -> Result<MountLock> {
        let path = self.path(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
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
                let mut holder = String::new();
                let _ = (&file).take(4096).read_to_string(&mut holder);
                let holder = holder.trim();
                if !force {
                    return Err(Error::Busy {
                        what: format!(
                            "{} is already mounted by {}; unmount it there first (or, if that \
                             host is dead and its lock is stale, mount with -o force_unlock)",
                            self.root.display(),
                            if holder.is_empty() {
                                "another process"
                            } else {
                                holder
                            }
                        ),
                    });
                }
                tracing::warn!(holder, "taking over the mount lock by force_unlock");
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
        let info = format!(
            "host {host} pid {} since unix time {now}\n",
            std::process::id()
        );
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        std::os::unix::fs::FileExt::write_all_at(&file, info.as_bytes(), 0)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MountLock { _file: file })
    }
}

/// Holds the mount lock while alive.
#[derive(Debug)]
pub struct MountLock {
    _file: File,
}
