//! The FUSE-independent filesystem core.
//!
//! [`Filesystem`] is an API over inode numbers that the FUSE adapter calls one-to-one and that
//! tests, mkfs and fsck drive directly. It is `Send + Sync`: every method takes `&self` and may
//! be called from many threads at once.

mod types;

pub use types::{Attr, Ctx, DirEntry, FileKind, SetAttr, StatFs, TimeSet};

use crate::Result;
use std::path::Path;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Options for opening (mounting) a filesystem.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open read-only: nothing is written to the backing directory (fsck -n, ro mounts).
    pub read_only: bool,
    /// Take over a lock left by a mount that no longer runs.
    pub force_unlock: bool,
    /// Upper bound of dirty (not yet written back) file data kept in memory, in bytes.
    pub max_dirty_bytes: usize,
    /// Upper bound of cached decrypted blocks, in bytes.
    pub block_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            force_unlock: false,
            max_dirty_bytes: 64 << 20,
            block_cache_bytes: 32 << 20,
        }
    }
}

/// An open digimedfs filesystem.
pub struct Filesystem {}

#[allow(unused_variables, clippy::too_many_arguments)]
impl Filesystem {
    /// Opens the filesystem in `backing`, unlocking it with `key`.
    pub fn open(
        backing: &Path,
        key: &dyn crate::keysource::KeySource,
        opts: &OpenOptions,
    ) -> Result<Filesystem> {
        todo!()
    }
    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Attr> {
        todo!()
    }
    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {}
    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        todo!()
    }
    /// chmod, chown, truncate, utimens.
    pub fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> Result<Attr> {
        todo!()
    }
    /// Target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        todo!()
    }
    /// Creates a file, fifo, socket or device node. `mode` includes the `S_IFMT` bits.
    pub fn mknod(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, umask: u32, rdev: u32) -> Result<Attr> {
        todo!()
    }
    /// Creates a directory.
    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, umask: u32) -> Result<Attr> {
        todo!()
    }
    /// Removes a non-directory entry.
    pub fn unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        todo!()
    }
    /// Removes an empty directory.
    pub fn rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        todo!()
    }
    /// Creates a symlink `name` in `parent` pointing at `target`.
    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr> {
        todo!()
    }
    /// Renames; `flags` takes `libc::RENAME_NOREPLACE` or `libc::RENAME_EXCHANGE`.
    pub fn rename(&self, ctx: &Ctx, parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> Result<()> {
        todo!()
    }
    /// Creates a hard link to `ino` as `newname` in `newparent`.
    pub fn link(&self, ctx: &Ctx, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        todo!()
    }
    /// Opens a file; returns a file handle. `flags` are the open(2) flags.
    pub fn open_file(&self, ctx: &Ctx, ino: u64, flags: i32) -> Result<u64> {
        todo!()
    }
    /// Creates and opens a regular file.
    pub fn create(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, umask: u32, flags: i32) -> Result<(Attr, u64)> {
        todo!()
    }
    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        todo!()
    }
    /// Writes `data` at `offset` (the kernel resolves O_APPEND offsets); returns bytes written.
    pub fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        todo!()
    }
    /// Called on every close(2) of a descriptor.
    pub fn flush(&self, ino: u64, fh: u64) -> Result<()> {
        todo!()
    }
    /// The last reference to a file handle is gone.
    pub fn release(&self, ino: u64, fh: u64) -> Result<()> {
        todo!()
    }
    /// Makes the file's data (and with `datasync == false` its metadata) durable.
    pub fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> Result<()> {
        todo!()
    }
    /// Opens a directory; returns a handle.
    pub fn opendir(&self, ctx: &Ctx, ino: u64, flags: i32) -> Result<u64> {
        todo!()
    }
    /// Lists entries after cookie `offset` (0 = start, including `.` and `..`), at most `max`.
    pub fn readdir(&self, ino: u64, fh: u64, offset: i64, max: usize) -> Result<Vec<DirEntry>> {
        todo!()
    }
    /// Like readdir, with each entry's attributes (entries `.` and `..` included).
    pub fn readdirplus(&self, ino: u64, fh: u64, offset: i64, max: usize) -> Result<Vec<(DirEntry, Attr)>> {
        todo!()
    }
    /// Releases a directory handle.
    pub fn releasedir(&self, ino: u64, fh: u64) -> Result<()> {
        todo!()
    }
    /// Makes a directory's entries durable.
    pub fn fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> Result<()> {
        todo!()
    }
    /// Filesystem statistics.
    pub fn statfs(&self) -> Result<StatFs> {
        todo!()
    }
    /// Sets an xattr; `flags` takes `libc::XATTR_CREATE` / `libc::XATTR_REPLACE`.
    pub fn setxattr(&self, ctx: &Ctx, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        todo!()
    }
    /// Value of an xattr (ENODATA if absent).
    pub fn getxattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        todo!()
    }
    /// All xattr names, each followed by a NUL byte.
    pub fn listxattr(&self, ctx: &Ctx, ino: u64) -> Result<Vec<u8>> {
        todo!()
    }
    /// Removes an xattr (ENODATA if absent).
    pub fn removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<()> {
        todo!()
    }
    /// Checks access(2) `mask` (R_OK, W_OK, X_OK, F_OK) for `ctx`.
    pub fn access(&self, ctx: &Ctx, ino: u64, mask: i32) -> Result<()> {
        todo!()
    }
    /// fallocate(2): `mode` 0 (allocate, may extend), FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|KEEP_SIZE, FALLOC_FL_ZERO_RANGE.
    pub fn fallocate(&self, ctx: &Ctx, ino: u64, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        todo!()
    }
    /// lseek(2) with SEEK_DATA / SEEK_HOLE (others are handled by the kernel).
    pub fn lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        todo!()
    }
    /// Writes back everything dirty and makes it durable (syncfs, unmount).
    pub fn sync_all(&self) -> Result<()> {
        todo!()
    }
    /// Writes back everything, marks the filesystem clean and releases the lock.
    pub fn close(&self) -> Result<()> {
        todo!()
    }
}
