//! The public [`Filesystem`] API: each method checks its handles and arguments and hands the
//! operation to `Inner`, which does the work under the locks the module docs describe.

use super::{
    lock, perms, posix, Attr, CacheStats, Ctx, DirEntry, FileKind, Filesystem, SetAttr, StatFs,
};
use crate::format::superblock::Superblock;
use crate::meta::Records;
use crate::objects::ObjectStore;
use crate::{Error, Result};
use std::sync::Arc;

impl Filesystem {
    /// The superblock as of now.
    pub fn superblock(&self) -> Superblock {
        lock(&self.inner.mount.superblock).clone()
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.inner.block_size as u32
    }

    /// The caches' and write buffers' counters (for a mount's metrics).
    pub fn cache_stats(&self) -> CacheStats {
        use std::sync::atomic::Ordering::Relaxed;
        let i = &self.inner;
        let n = |v: usize| v as u64;
        CacheStats {
            dirty_bytes: n(i.mem.dirty_bytes.load(Relaxed)),
            in_flight_bytes: n(i.mem.in_flight_bytes.load(Relaxed)),
            inline_dirty_bytes: n(i.mem.inline_dirty_bytes.load(Relaxed)),
            max_dirty_bytes: n(i.max_dirty),
            nodes_loaded: n(lock(&i.cache.nodes).len()),
            node_hits: i.cache.node_hits.load(Relaxed),
            node_misses: i.cache.node_misses.load(Relaxed),
            chunk_hits: i.cache.chunk_hits.load(Relaxed),
            chunk_misses: i.cache.chunk_misses.load(Relaxed),
        }
    }

    /// Typed access to the metadata records (fsck).
    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    /// The data object store (fsck).
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.objects
    }

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Attr> {
        self.inner.lookup(ctx, parent, name)
    }
    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, _ino: u64, _nlookup: u64) {}
    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let node = self.inner.node(ino)?;
        let n = lock(&node);
        Ok(self.inner.attr_of(&n.inode))
    }
    /// chmod, chown, truncate, utimens.
    pub fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> Result<Attr> {
        self.inner.setattr(ctx, ino, set)
    }
    /// Target of a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.inner.node(ino)?;
        let n = lock(&node);
        if n.inode.kind != FileKind::Symlink {
            return Err(posix(
                libc::EINVAL,
                format!("readlink inode {ino}: not a symlink"),
            ));
        }
        Ok(n.inode.target.clone())
    }
    /// Creates a file, fifo, socket or device node. `mode` includes the `S_IFMT` bits.
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<Attr> {
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(posix(libc::EINVAL, "mknod: use mkdir/symlink"));
        }
        if matches!(kind, FileKind::CharDev | FileKind::BlockDev)
            && ctx.uid != 0
            && self.inner.check_perms
        {
            return Err(posix(libc::EPERM, "mknod: device nodes need root"));
        }
        self.inner
            .create_node(
                ctx,
                parent,
                name,
                kind,
                mode & !umask & 0o7777,
                rdev,
                Vec::new(),
                false,
            )
            .map(|(attr, _)| attr)
    }
    /// Creates a directory.
    pub fn mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<Attr> {
        self.inner
            .create_node(
                ctx,
                parent,
                name,
                FileKind::Dir,
                mode & !umask & 0o7777,
                0,
                Vec::new(),
                false,
            )
            .map(|(attr, _)| attr)
    }
    /// Removes a non-directory entry.
    pub fn unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        self.inner.remove_entry(ctx, parent, name, false)
    }
    /// Removes an empty directory.
    pub fn rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        self.inner.remove_entry(ctx, parent, name, true)
    }
    /// Creates a symlink `name` in `parent` pointing at `target`.
    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr> {
        if target.is_empty() {
            return Err(posix(libc::ENOENT, "symlink: empty target"));
        }
        if target.len() > 4095 {
            return Err(posix(
                libc::ENAMETOOLONG,
                "symlink: target longer than 4095 bytes",
            ));
        }
        self.inner
            .create_node(
                ctx,
                parent,
                name,
                FileKind::Symlink,
                0o777,
                0,
                target.to_vec(),
                false,
            )
            .map(|(attr, _)| attr)
    }
    /// Renames; `flags` takes `libc::RENAME_NOREPLACE` or `libc::RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.inner
            .rename(ctx, parent, name, newparent, newname, flags)
    }
    /// Creates a hard link to `ino` as `newname` in `newparent`.
    pub fn link(&self, ctx: &Ctx, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        self.inner.link(ctx, ino, newparent, newname)
    }
    /// Opens a file; returns a file handle. `flags` are the open(2) flags. An open for reading
    /// only counts as a read for atime; see [`Filesystem::open_file_reporting_atime`].
    pub fn open_file(&self, ctx: &Ctx, ino: u64, flags: i32) -> Result<u64> {
        self.open_file_reporting_atime(ctx, ino, flags)
            .map(|(fh, _)| fh)
    }
    /// [`Filesystem::open_file`], also saying whether the open changed the file's atime. An
    /// open for reading only (`O_RDONLY`) updates atime as a read does (per
    /// [`OpenOptions::atime`](super::OpenOptions::atime)): the FUSE kernel serves reads of
    /// pages it has cached (`FOPEN_KEEP_CACHE`) without asking the filesystem, so the read
    /// itself may never arrive. Reads that do arrive count as well ([`Filesystem::read`]).
    /// When atime changed, the kernel's cached attributes of the file should be invalidated.
    pub fn open_file_reporting_atime(
        &self,
        ctx: &Ctx,
        ino: u64,
        flags: i32,
    ) -> Result<(u64, bool)> {
        let node = self.inner.node(ino)?;
        let mut atime_changed = false;
        {
            let mut n = lock(&node);
            if n.inode.kind == FileKind::Dir {
                return Err(posix(
                    libc::EISDIR,
                    format!("open inode {ino}: is a directory"),
                ));
            }
            if self.inner.check_perms {
                let mask = match flags & libc::O_ACCMODE {
                    libc::O_RDONLY => perms::R,
                    libc::O_WRONLY => perms::W,
                    _ => perms::R | perms::W,
                };
                if !perms::may_access(&n.inode, ctx, mask) {
                    return Err(posix(
                        libc::EACCES,
                        format!("open inode {ino}: permission denied"),
                    ));
                }
            }
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                atime_changed = self.inner.touch_atime(&mut n);
            }
        }
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            self.inner.truncate(&node, 0)?;
        }
        Ok((self.inner.new_handle(&node, ino)?, atime_changed))
    }
    /// Creates and opens a regular file.
    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(Attr, u64)> {
        let created = self.inner.create_node(
            ctx,
            parent,
            name,
            FileKind::File,
            mode & !umask & 0o7777,
            0,
            Vec::new(),
            true,
        );
        match created {
            Ok((attr, Some(fh))) => Ok((attr, fh)),
            Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                let a = self.inner.lookup(ctx, parent, name)?;
                let fh = self.open_file(ctx, a.ino, flags)?;
                Ok((self.getattr(a.ino)?, fh))
            }
            Ok((_, None)) => Err(Error::integrity("create: no handle for the new file")),
            Err(e) => Err(e),
        }
    }
    /// Reads up to `size` bytes at `offset`; short only at end of file. A program's read: it
    /// updates atime as [`OpenOptions::atime`](super::OpenOptions::atime) says.
    pub fn read(&self, ino: u64, _fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.inner.read(ino, offset, size, true)
    }
    /// [`Filesystem::read`] that leaves atime alone: the kernel filling its page cache before
    /// a partial-page write through a write-only handle (writeback cache), not a program's
    /// read.
    pub fn read_for_write(&self, ino: u64, _fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.inner.read(ino, offset, size, false)
    }
    /// Writes `data` at `offset` (the kernel resolves O_APPEND offsets); returns bytes written.
    /// Leaves the mode alone (page-cache writeback, or a writer with CAP_FSETID).
    pub fn write(&self, ino: u64, _fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        Ok(self.inner.write(ino, offset, data, None)?.0)
    }
    /// [`Filesystem::write`] by `writer`, dropping setuid/setgid as Linux does for a writer
    /// without CAP_FSETID (see [`perms::perm_after_modification`]). Returns the bytes written
    /// and whether the mode changed.
    pub fn write_dropping_suidgid(
        &self,
        writer: &Ctx,
        ino: u64,
        _fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(u32, bool)> {
        self.inner.write(ino, offset, data, Some(writer))
    }
    /// The last reference to a file handle is gone.
    pub fn release(&self, ino: u64, fh: u64) -> Result<()> {
        let ino = lock(&self.inner.handles)
            .remove(&fh)
            .map(|h| h.ino)
            .unwrap_or(ino);
        self.inner.release_node(ino)
    }
    /// Makes the file's data (and with `datasync == false` its metadata) durable.
    pub fn fsync(&self, ino: u64, _fh: u64, _datasync: bool) -> Result<()> {
        self.inner.fsync(ino)
    }
    /// Opens a directory; returns a handle.
    pub fn opendir(&self, ctx: &Ctx, ino: u64, _flags: i32) -> Result<u64> {
        let node = self.inner.node(ino)?;
        {
            let n = lock(&node);
            if n.inode.kind != FileKind::Dir {
                return Err(posix(
                    libc::ENOTDIR,
                    format!("opendir inode {ino}: not a directory"),
                ));
            }
            if self.inner.check_perms && !perms::may_access(&n.inode, ctx, perms::R) {
                return Err(posix(
                    libc::EACCES,
                    format!("opendir inode {ino}: permission denied"),
                ));
            }
        }
        // Counted like an open file, so a removed directory stays stat-able while open.
        self.inner.new_handle(&node, ino)
    }
    /// Lists entries after cookie `offset` (0 = start, including `.` and `..`), at most `max`.
    /// Counts as a read of the directory for its atime (unless `nodiratime`).
    pub fn readdir(&self, ino: u64, _fh: u64, offset: i64, max: usize) -> Result<Vec<DirEntry>> {
        self.inner.readdir(ino, offset, max)
    }
    /// Like readdir, with each entry's attributes (entries `.` and `..` included).
    pub fn readdirplus(
        &self,
        ino: u64,
        _fh: u64,
        offset: i64,
        max: usize,
    ) -> Result<Vec<(DirEntry, Attr)>> {
        let entries = self.inner.readdir(ino, offset, max)?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match self.getattr(e.ino) {
                Ok(attr) => out.push((e, attr)),
                // Removed between the scan and now: skip it, as a later readdir would.
                Err(err) if err.errno() == libc::ENOENT => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }
    /// Releases a directory handle.
    pub fn releasedir(&self, ino: u64, fh: u64) -> Result<()> {
        self.release(ino, fh)
    }
    /// Makes a directory's entries durable.
    pub fn fsyncdir(&self, _ino: u64, _fh: u64, _datasync: bool) -> Result<()> {
        self.inner.records.flush()
    }
    /// Filesystem statistics.
    pub fn statfs(&self) -> Result<StatFs> {
        self.inner.statfs()
    }
    /// Sets an xattr; `flags` takes `libc::XATTR_CREATE` / `libc::XATTR_REPLACE`.
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.inner.setxattr(ctx, ino, name, value, flags)
    }
    /// Value of an xattr (ENODATA if absent).
    pub fn getxattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.inner.getxattr(ctx, ino, name)
    }
    /// All xattr names, each followed by a NUL byte.
    pub fn listxattr(&self, _ctx: &Ctx, ino: u64) -> Result<Vec<u8>> {
        self.inner.node(ino)?;
        let mut out = Vec::new();
        for x in self.inner.records.xattrs(ino)? {
            out.extend_from_slice(&x.name);
            out.push(0);
        }
        Ok(out)
    }
    /// Removes an xattr (ENODATA if absent).
    pub fn removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<()> {
        self.inner.removexattr(ctx, ino, name)
    }
    /// Checks access(2) `mask` (R_OK, W_OK, X_OK, F_OK) for `ctx`.
    pub fn access(&self, ctx: &Ctx, ino: u64, mask: i32) -> Result<()> {
        let node = self.inner.node(ino)?;
        let n = lock(&node);
        let m = (mask as u32) & 7;
        if m != 0 && !perms::may_access(&n.inode, ctx, m) {
            return Err(posix(libc::EACCES, format!("access inode {ino}")));
        }
        Ok(())
    }
    /// fallocate(2): `mode` 0 (allocate, may extend), FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|KEEP_SIZE, FALLOC_FL_ZERO_RANGE.
    /// Returns whether the file's mode changed (setuid/setgid dropped).
    pub fn fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        _fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<bool> {
        self.inner.fallocate(ctx, ino, offset, length, mode)
    }
    /// lseek(2) with SEEK_DATA / SEEK_HOLE (others are handled by the kernel).
    pub fn lseek(&self, ino: u64, _fh: u64, offset: i64, whence: i32) -> Result<i64> {
        self.inner.lseek(ino, offset, whence)
    }
    /// Writes back everything dirty and makes it durable (syncfs, unmount).
    pub fn sync_all(&self) -> Result<()> {
        self.inner.sync_all()
    }
}
