//! The request handlers of [`DigimedFuse`], independent of the transport: each takes the
//! kernel's numbers and names as bytes, makes one core call and returns the reply's content or
//! the errno, so that `/dev/fuse` and io_uring answer every request alike.

use super::{cookie_from_kernel, cookie_to_kernel, xattr_reply};
use super::{DigimedFuse, OpResult, XattrReply, READDIRPLUS_BATCH, READDIR_BATCH};
use crate::fuse::stats::Op;
use digimedfs_core::filesystem::{self as core, Attr, Ctx, SetAttr};
use fuser::{Errno, FopenFlags, INodeNo};

/// The request handlers, independent of how requests reach the daemon: the `fuser` session
/// over `/dev/fuse` (`fuser_impl`) and the io_uring transport
/// ([`crate::fuse::uring`]) decode a request,
/// call one of these and encode what it returns. Names are bytes, node ids and handles the
/// kernel's numbers.
impl DigimedFuse {
    /// LOOKUP. A miss is a negative entry (node id 0), which lets the kernel cache it: only
    /// this mount changes the namespace (the mount lock), so the kernel sees every later
    /// create.
    pub fn op_lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<Attr> {
        self.stats.request(Op::Lookup);
        match self.fs.lookup(ctx, parent, name) {
            Ok(a) => Ok(a),
            Err(e) if e.errno() == libc::ENOENT => Ok(negative_attr()),
            Err(e) => Err(self.errno(Op::Lookup, parent, &e)),
        }
    }

    /// GETATTR.
    pub fn op_getattr(&self, ino: u64) -> OpResult<Attr> {
        self.stats.request(Op::Getattr);
        self.fs
            .getattr(ino)
            .map_err(|e| self.errno(Op::Getattr, ino, &e))
    }

    /// SETATTR.
    pub fn op_setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> OpResult<Attr> {
        self.stats.request(Op::Setattr);
        self.fs
            .setattr(ctx, ino, set)
            .map_err(|e| self.errno(Op::Setattr, ino, &e))
    }

    /// READLINK.
    pub fn op_readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        self.stats.request(Op::Readlink);
        self.fs
            .readlink(ino)
            .map_err(|e| self.errno(Op::Readlink, ino, &e))
    }

    /// MKNOD.
    pub fn op_mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> OpResult<Attr> {
        self.stats.request(Op::Mknod);
        self.fs
            .mknod(ctx, parent, name, mode, umask, rdev)
            .map_err(|e| self.errno(Op::Mknod, parent, &e))
    }

    /// MKDIR.
    pub fn op_mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> OpResult<Attr> {
        self.stats.request(Op::Mkdir);
        self.fs
            .mkdir(ctx, parent, name, mode, umask)
            .map_err(|e| self.errno(Op::Mkdir, parent, &e))
    }

    /// UNLINK.
    pub fn op_unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<()> {
        self.stats.request(Op::Unlink);
        self.fs
            .unlink(ctx, parent, name)
            .map_err(|e| self.errno(Op::Unlink, parent, &e))
    }

    /// RMDIR.
    pub fn op_rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<()> {
        self.stats.request(Op::Rmdir);
        self.fs
            .rmdir(ctx, parent, name)
            .map_err(|e| self.errno(Op::Rmdir, parent, &e))
    }

    /// SYMLINK: `name` in `parent`, pointing at `target`.
    pub fn op_symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> OpResult<Attr> {
        self.stats.request(Op::Symlink);
        self.fs
            .symlink(ctx, parent, name, target)
            .map_err(|e| self.errno(Op::Symlink, parent, &e))
    }

    /// RENAME and RENAME2.
    pub fn op_rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        self.stats.request(Op::Rename);
        self.fs
            .rename(ctx, parent, name, newparent, newname, flags)
            .map_err(|e| self.errno(Op::Rename, parent, &e))
    }

    /// LINK: a new name `newname` in `newparent` for `ino`.
    pub fn op_link(&self, ctx: &Ctx, ino: u64, newparent: u64, newname: &[u8]) -> OpResult<Attr> {
        self.stats.request(Op::Link);
        self.fs
            .link(ctx, ino, newparent, newname)
            .map_err(|e| self.errno(Op::Link, ino, &e))
    }

    /// OPEN: the handle and the open flags for the kernel.
    pub fn op_open(&self, ctx: &Ctx, ino: u64, flags: i32) -> OpResult<(u64, FopenFlags)> {
        self.stats.request(Op::Open);
        let (fh, atime_changed) = self
            .fs
            .open_file_reporting_atime(ctx, ino, flags)
            .map_err(|e| self.errno(Op::Open, ino, &e))?;
        if atime_changed {
            // The kernel drops its cached atime after a READ, but a read served from its page
            // cache sends none; without this it would show the old atime for the attribute TTL.
            self.invalidate_attributes(INodeNo(ino));
        }
        Ok((fh, FopenFlags::FOPEN_KEEP_CACHE))
    }

    /// CREATE: the new file's attributes, its handle and the open flags for the kernel.
    pub fn op_create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> OpResult<(Attr, u64, FopenFlags)> {
        self.stats.request(Op::Create);
        let (a, fh) = self
            .fs
            .create(ctx, parent, name, mode, umask, flags)
            .map_err(|e| self.errno(Op::Create, parent, &e))?;
        Ok((a, fh, FopenFlags::FOPEN_KEEP_CACHE))
    }

    /// READ. `open_flags` are those of the file the kernel reads through: through a
    /// write-only file it only fills its page cache for a partial-page write (writeback
    /// cache), not a read that counts for atime.
    pub fn op_read(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        open_flags: i32,
    ) -> OpResult<Vec<u8>> {
        self.stats.request(Op::Read);
        let data = if open_flags & libc::O_ACCMODE == libc::O_WRONLY {
            self.fs.read_for_write(ino, fh, offset, size)
        } else {
            self.fs.read(ino, fh, offset, size)
        };
        let data = data.map_err(|e| self.errno(Op::Read, ino, &e))?;
        self.stats.read_bytes(data.len());
        Ok(data)
    }

    /// WRITE. `kill_suidgid`: the kernel says the writer lacks CAP_FSETID; with
    /// FUSE_HANDLE_KILLPRIV_V2 it leaves dropping setuid/setgid to us, which spares a
    /// GETXATTR and a GETATTR round trip on most writes and chowns.
    pub fn op_write(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> OpResult<u32> {
        self.stats.request(Op::Write);
        let written = if kill_suidgid {
            self.fs
                .write_dropping_suidgid(ctx, ino, fh, offset, data)
                .map(|(n, mode_changed)| {
                    if mode_changed {
                        // The kernel does not refresh the mode after a write; without this it
                        // would show the dropped bits for the attribute TTL.
                        self.invalidate_attributes(INodeNo(ino));
                    }
                    n
                })
        } else {
            self.fs.write(ino, fh, offset, data)
        };
        let written = written.map_err(|e| self.errno(Op::Write, ino, &e))?;
        self.stats.written_bytes(written);
        Ok(written)
    }

    /// FLUSH: nothing to do at close(2), since the kernel has already written the file's
    /// dirty pages back and reported their errors before it sends FLUSH. ENOSYS tells it never
    /// to send FLUSH again, which saves a round trip on every close.
    pub fn op_flush(&self) -> OpResult<()> {
        self.stats.request(Op::Flush);
        Err(Errno::ENOSYS)
    }

    /// RELEASE.
    pub fn op_release(&self, ino: u64, fh: u64) -> OpResult<()> {
        self.stats.request(Op::Release);
        self.fs
            .release(ino, fh)
            .map_err(|e| self.errno(Op::Release, ino, &e))
    }

    /// FSYNC.
    pub fn op_fsync(&self, ino: u64, fh: u64, datasync: bool) -> OpResult<()> {
        self.stats.request(Op::Fsync);
        self.fs
            .fsync(ino, fh, datasync)
            .map_err(|e| self.errno(Op::Fsync, ino, &e))
    }

    /// OPENDIR.
    pub fn op_opendir(&self, ctx: &Ctx, ino: u64, flags: i32) -> OpResult<u64> {
        self.stats.request(Op::Opendir);
        self.fs
            .opendir(ctx, ino, flags)
            .map_err(|e| self.errno(Op::Opendir, ino, &e))
    }

    /// READDIR from the kernel's `offset`: hands each entry and the offset after it to `add`
    /// until `add` says the reply is full.
    pub fn op_readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&core::DirEntry, u64) -> bool,
    ) -> OpResult<()> {
        self.stats.request(Op::Readdir);
        let entries = self
            .fs
            .readdir(ino, fh, cookie_from_kernel(offset), READDIR_BATCH)
            .map_err(|e| self.errno(Op::Readdir, ino, &e))?;
        for ent in &entries {
            if add(ent, cookie_to_kernel(ent.next_offset)) {
                break;
            }
        }
        Ok(())
    }

    /// READDIRPLUS from the kernel's `offset`: hands each entry, the offset after it and its
    /// attributes to `add` until `add` says the reply is full. Entries the reply did not take
    /// give back the lookup reference the core took for them.
    pub fn op_readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&core::DirEntry, u64, &Attr) -> bool,
    ) -> OpResult<()> {
        self.stats.request(Op::Readdirplus);
        let entries = self
            .fs
            .readdirplus(ino, fh, cookie_from_kernel(offset), READDIRPLUS_BATCH)
            .map_err(|e| self.errno(Op::Readdirplus, ino, &e))?;
        let mut entries = entries.into_iter();
        for (ent, attr) in entries.by_ref() {
            if add(&ent, cookie_to_kernel(ent.next_offset), &attr) {
                // This entry did not fit: the kernel never sees it, so it will never forget
                // the lookup reference the core took for it.
                self.forget_unsent(&ent);
                break;
            }
        }
        for (ent, _) in entries {
            self.forget_unsent(&ent);
        }
        Ok(())
    }

    /// RELEASEDIR.
    pub fn op_releasedir(&self, ino: u64, fh: u64) -> OpResult<()> {
        self.stats.request(Op::Releasedir);
        self.fs
            .releasedir(ino, fh)
            .map_err(|e| self.errno(Op::Releasedir, ino, &e))
    }

    /// FSYNCDIR.
    pub fn op_fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> OpResult<()> {
        self.stats.request(Op::Fsyncdir);
        self.fs
            .fsyncdir(ino, fh, datasync)
            .map_err(|e| self.errno(Op::Fsyncdir, ino, &e))
    }

    /// STATFS.
    pub fn op_statfs(&self, ino: u64) -> OpResult<core::StatFs> {
        self.stats.request(Op::Statfs);
        self.fs
            .statfs()
            .map_err(|e| self.errno(Op::Statfs, ino, &e))
    }

    /// SETXATTR. Only macOS resource forks use a `position`.
    pub fn op_setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        position: u32,
    ) -> OpResult<()> {
        self.stats.request(Op::Setxattr);
        if position != 0 {
            return Err(Errno::from_i32(libc::EINVAL));
        }
        self.fs
            .setxattr(ctx, ino, name, value, flags)
            .map_err(|e| self.errno(Op::Setxattr, ino, &e))
    }

    /// GETXATTR for a caller buffer of `size` bytes (0: a size probe).
    pub fn op_getxattr(&self, ctx: &Ctx, ino: u64, name: &[u8], size: u32) -> OpResult<XattrReply> {
        self.stats.request(Op::Getxattr);
        let value = self
            .fs
            .getxattr(ctx, ino, name)
            .map_err(|e| self.errno(Op::Getxattr, ino, &e))?;
        xattr_reply(value, size)
    }

    /// LISTXATTR for a caller buffer of `size` bytes (0: a size probe).
    pub fn op_listxattr(&self, ctx: &Ctx, ino: u64, size: u32) -> OpResult<XattrReply> {
        self.stats.request(Op::Listxattr);
        let names = self
            .fs
            .listxattr(ctx, ino)
            .map_err(|e| self.errno(Op::Listxattr, ino, &e))?;
        xattr_reply(names, size)
    }

    /// REMOVEXATTR.
    pub fn op_removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> OpResult<()> {
        self.stats.request(Op::Removexattr);
        self.fs
            .removexattr(ctx, ino, name)
            .map_err(|e| self.errno(Op::Removexattr, ino, &e))
    }

    /// ACCESS.
    pub fn op_access(&self, ctx: &Ctx, ino: u64, mask: i32) -> OpResult<()> {
        self.stats.request(Op::Access);
        self.fs
            .access(ctx, ino, mask)
            .map_err(|e| self.errno(Op::Access, ino, &e))
    }

    /// FALLOCATE.
    pub fn op_fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> OpResult<()> {
        self.stats.request(Op::Fallocate);
        let mode_changed = self
            .fs
            .fallocate(ctx, ino, fh, offset, length, mode)
            .map_err(|e| self.errno(Op::Fallocate, ino, &e))?;
        if mode_changed {
            // The kernel refreshes only size and times after fallocate; without this it would
            // show the old setuid/setgid bits for the attribute TTL.
            self.invalidate_attributes(INodeNo(ino));
        }
        Ok(())
    }

    /// IOCTL: none are supported. Programs probe with them all the time (isatty() sends TCGETS
    /// on every open in many runtimes), so answer quietly like a plain file does.
    pub fn op_ioctl(&self) -> OpResult<()> {
        self.stats.request(Op::Ioctl);
        Err(Errno::from_i32(libc::ENOTTY))
    }

    /// LSEEK (SEEK_DATA, SEEK_HOLE).
    pub fn op_lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> OpResult<i64> {
        self.stats.request(Op::Lseek);
        self.fs
            .lseek(ino, fh, offset, whence)
            .map_err(|e| self.errno(Op::Lseek, ino, &e))
    }

    /// FORGET and BATCH_FORGET.
    pub fn op_forget(&self, ino: u64, nlookup: u64) {
        self.stats.request(Op::Forget);
        self.fs.forget(ino, nlookup);
    }

    /// Returns the lookup reference the core took for a readdirplus entry that did not fit in
    /// the reply. The kernel takes no reference for `.` and `..`, and neither does the core.
    fn forget_unsent(&self, ent: &core::DirEntry) {
        if ent.name != b"." && ent.name != b".." {
            self.fs.forget(ent.ino, 1);
        }
    }
}

/// Attributes of a negative lookup reply (node id 0).
fn negative_attr() -> core::Attr {
    core::Attr {
        ino: 0,
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: core::FileKind::File,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        generation: 0,
    }
}
