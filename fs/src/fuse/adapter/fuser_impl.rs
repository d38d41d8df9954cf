//! The `/dev/fuse` transport: the `fuser::Filesystem` implementation of [`DigimedFuse`], which
//! turns each request fuser decoded into one handler call and sends its answer with fuser's
//! reply object.

use super::{convert, ctx, file_type, time_set, DigimedFuse, OpResult, XattrReply, TTL};
use super::{UringMode, MAX_READAHEAD, MAX_WRITE, WANTED_CAPABILITIES};
use digimedfs_core::filesystem::{Attr, SetAttr};
use fuser::{
    AccessFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
/// Sends a handler's answer with fuser's reply object: `ok` turns the content into the reply.
fn answer<T, R: ReplyError>(result: OpResult<T>, reply: R, ok: impl FnOnce(T, R)) {
    match result {
        Ok(v) => ok(v, reply),
        Err(e) => reply.fail(e),
    }
}

/// fuser's reply objects all answer errors the same way.
trait ReplyError {
    fn fail(self, e: Errno);
}

macro_rules! reply_error {
    ($($t:ty),*) => {$(
        impl ReplyError for $t {
            fn fail(self, e: Errno) {
                self.error(e);
            }
        }
    )*};
}
reply_error!(
    ReplyEntry,
    ReplyAttr,
    ReplyData,
    ReplyEmpty,
    ReplyOpen,
    ReplyCreate,
    ReplyWrite,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyStatfs,
    ReplyXattr,
    ReplyLseek,
    fuser::ReplyIoctl
);

fn entry(a: Attr, reply: ReplyEntry) {
    reply.entry(&TTL, &convert(&a), Generation(a.generation));
}

fn attr(a: Attr, reply: ReplyAttr) {
    reply.attr(&TTL, &convert(&a));
}

fn empty((): (), reply: ReplyEmpty) {
    reply.ok();
}

fn xattr(x: XattrReply, reply: ReplyXattr) {
    match x {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(&d),
    }
}

/// The `/dev/fuse` transport: fuser decodes each request and this passes it to the handler.
impl fuser::Filesystem for DigimedFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities();
        for &(flag, name) in WANTED_CAPABILITIES {
            if offered.contains(flag) {
                if let Err(missing) = config.add_capabilities(flag) {
                    tracing::debug!("kernel refused capability {name} ({missing:?})");
                }
            } else {
                tracing::info!("kernel does not offer {name}; continuing without it");
            }
        }
        if self.uring != UringMode::Off {
            let offered = config
                .capabilities()
                .contains(InitFlags::FUSE_OVER_IO_URING);
            if offered
                && config
                    .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                    .is_ok()
            {
                self.uring_agreed.store(true, Ordering::SeqCst);
            } else if self.uring == UringMode::Requested {
                tracing::warn!(
                    "io_uring asked for, but the kernel does not offer it \
                     (enable_uring off, or a kernel before 6.14): using /dev/fuse"
                );
            } else {
                tracing::info!(
                    "kernel does not offer FUSE over io_uring (enable_uring off, or a kernel \
                     before 6.14): serving over /dev/fuse"
                );
            }
        }
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(nearest);
        }
        tracing::debug!(
            "fuse session initialised, kernel ABI {:?}",
            config.kernel_abi()
        );
        Ok(())
    }

    fn destroy(&mut self) {
        match self.closer().close() {
            Ok(true) => tracing::info!("filesystem closed cleanly"),
            Ok(false) => {}
            Err(e) => tracing::error!("closing the filesystem failed: {e}"),
        }
        if let Some(f) = self.on_destroyed.get() {
            f();
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer(
            self.op_lookup(&ctx(req), parent.0, name.as_bytes()),
            reply,
            entry,
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.op_forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer(self.op_getattr(ino.0), reply, attr);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime,
            fh: fh.map(|h| h.0),
        };
        answer(self.op_setattr(&ctx(req), ino.0, &set), reply, attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        answer(self.op_readlink(ino.0), reply, |t, r| r.data(&t));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let res = self.op_mknod(&ctx(req), parent.0, name.as_bytes(), mode, umask, rdev);
        answer(res, reply, entry);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.op_mkdir(&ctx(req), parent.0, name.as_bytes(), mode, umask);
        answer(res, reply, entry);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            self.op_unlink(&ctx(req), parent.0, name.as_bytes()),
            reply,
            empty,
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            self.op_rmdir(&ctx(req), parent.0, name.as_bytes()),
            reply,
            empty,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        let res = self.op_symlink(&ctx(req), parent.0, link_name.as_bytes(), target);
        answer(res, reply, entry);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res = self.op_rename(
            &ctx(req),
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        answer(res, reply, empty);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = self.op_link(&ctx(req), ino.0, newparent.0, newname.as_bytes());
        answer(res, reply, entry);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        answer(
            self.op_open(&ctx(req), ino.0, flags.0),
            reply,
            |(fh, f), r| r.opened(FileHandle(fh), f),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self.op_create(&ctx(req), parent.0, name.as_bytes(), mode, umask, flags);
        answer(res, reply, |(a, fh, f), r| {
            r.created(
                &TTL,
                &convert(&a),
                Generation(a.generation),
                FileHandle(fh),
                f,
            )
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res = self.op_read(ino.0, fh.0, offset, size, flags.0);
        answer(res, reply, |d, r| r.data(&d));
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let res = self.op_write(&ctx(req), ino.0, fh.0, offset, data, kill);
        answer(res, reply, |n, r| r.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        answer(self.op_flush(), reply, empty);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        answer(self.op_release(ino.0, fh.0), reply, empty);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(self.op_fsync(ino.0, fh.0, datasync), reply, empty);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        answer(
            self.op_opendir(&ctx(req), ino.0, flags.0),
            reply,
            |fh, r| r.opened(FileHandle(fh), FopenFlags::empty()),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.op_readdir(ino.0, fh.0, offset, |ent, next| {
            let name = OsStr::from_bytes(&ent.name);
            reply.add(INodeNo(ent.ino), next, file_type(ent.kind), name)
        });
        answer(res, reply, |(), r| r.ok());
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let res = self.op_readdirplus(ino.0, fh.0, offset, |ent, next, a| {
            let name = OsStr::from_bytes(&ent.name);
            let gen = Generation(a.generation);
            reply.add(INodeNo(ent.ino), next, name, &TTL, &convert(a), gen)
        });
        answer(res, reply, |(), r| r.ok());
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        answer(self.op_releasedir(ino.0, fh.0), reply, empty);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(self.op_fsyncdir(ino.0, fh.0, datasync), reply, empty);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        answer(self.op_statfs(ino.0), reply, |s, r| {
            r.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            )
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let res = self.op_setxattr(&ctx(req), ino.0, name.as_bytes(), value, flags, position);
        answer(res, reply, empty);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let res = self.op_getxattr(&ctx(req), ino.0, name.as_bytes(), size);
        answer(res, reply, xattr);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        answer(self.op_listxattr(&ctx(req), ino.0, size), reply, xattr);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            self.op_removexattr(&ctx(req), ino.0, name.as_bytes()),
            reply,
            empty,
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        answer(self.op_access(&ctx(req), ino.0, mask.bits()), reply, empty);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = self.op_fallocate(&ctx(req), ino.0, fh.0, offset, length, mode);
        answer(res, reply, empty);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        answer(self.op_ioctl(), reply, |(), r| r.ioctl(0, &[]));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let res = self.op_lseek(ino.0, fh.0, offset, whence);
        answer(res, reply, |p, r| r.offset(p));
    }
}
