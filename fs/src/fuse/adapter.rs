//! The `fuser::Filesystem` implementation: decodes each kernel request, calls the matching
//! [`core::Filesystem`] method one-to-one and encodes the reply.
//!
//! No filesystem logic lives here. Errors become errnos through [`Error::errno`]; integrity
//! failures are additionally logged at `warn` with the inode they concern, everything else at
//! `debug` (ENOENT on lookup is normal traffic).

use crate::core::{self, Attr, Ctx, FileKind, SetAttr, TimeSet};
use crate::Error;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache attributes and directory entries.
pub const TTL: Duration = Duration::from_secs(1);

/// Largest write request we ask the kernel for.
const MAX_WRITE: u32 = 1 << 20;
/// Readahead window we ask the kernel for.
const MAX_READAHEAD: u32 = 1 << 20;
/// Entries asked from the core per `readdir` call (a 4 KiB reply holds at most 128).
const READDIR_BATCH: usize = 128;
/// Entries asked from the core per `readdirplus` call (a 4 KiB reply holds at most 25).
const READDIRPLUS_BATCH: usize = 32;

/// Capabilities requested at init when the kernel offers them.
const WANTED_CAPABILITIES: &[(InitFlags, &str)] = &[
    (InitFlags::FUSE_ASYNC_READ, "async read"),
    (InitFlags::FUSE_BIG_WRITES, "big writes"),
    (InitFlags::FUSE_WRITEBACK_CACHE, "writeback cache"),
    // Always READDIRPLUS, not FUSE_READDIRPLUS_AUTO: the kernel's adaptive mode fell back to
    // plain READDIR for most directory reads, and find, rm -rf and cat then cost one LOOKUP
    // round trip per entry (docs/design.md).
    (InitFlags::FUSE_DO_READDIRPLUS, "readdirplus"),
    (InitFlags::FUSE_PARALLEL_DIROPS, "parallel dirops"),
    (InitFlags::FUSE_MAX_PAGES, "max pages"),
    (InitFlags::FUSE_HANDLE_KILLPRIV_V2, "kill privileges v2"),
];

/// The FUSE adapter over one open [`core::Filesystem`].
pub struct DigimedFuse {
    fs: Arc<core::Filesystem>,
    /// Set once [`core::Filesystem::close`] has run, so that it runs exactly once whether the
    /// session's `destroy` or the mount driver gets there first.
    closed: Arc<AtomicBool>,
    /// The session's channel for invalidating the kernel's caches, once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
}

impl DigimedFuse {
    /// An adapter serving `fs`.
    pub fn new(fs: Arc<core::Filesystem>) -> DigimedFuse {
        DigimedFuse {
            fs,
            closed: Arc::new(AtomicBool::new(false)),
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Where the mount driver puts the session's notifier once the session is up.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Drops the kernel's cached attributes of `ino`; a failure only leaves them cached until
    /// their TTL ends, so it is logged, not returned.
    fn invalidate_attributes(&self, ino: INodeNo) {
        if let Some(notifier) = self.notifier.get() {
            // A negative offset invalidates the attributes only, not the page cache.
            if let Err(e) = notifier.inval_inode(ino, -1, 0) {
                tracing::debug!("invalidating attributes of inode {}: {e}", ino.0);
            }
        }
    }

    /// A handle that closes the filesystem at most once, shared with this adapter.
    pub fn closer(&self) -> Closer {
        Closer {
            fs: Arc::clone(&self.fs),
            closed: Arc::clone(&self.closed),
        }
    }
}

/// Closes the filesystem once: the first call runs [`core::Filesystem::close`], later calls
/// (from the adapter's `destroy` or the mount driver) do nothing.
#[derive(Clone)]
pub struct Closer {
    fs: Arc<core::Filesystem>,
    closed: Arc<AtomicBool>,
}

impl Closer {
    /// Writes everything back, marks the filesystem clean and releases its lock, unless that
    /// already happened. Returns `Ok(false)` if it had already happened.
    pub fn close(&self) -> crate::Result<bool> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(false);
        }
        self.fs.close().map(|()| true)
    }
}

/// The caller identity of a request.
fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// A fuser file type for a core file kind.
fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// Converts core attributes to the attributes fuser sends to the kernel.
pub fn convert(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.crtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: attr.blksize,
        flags: 0,
    }
}

/// A core time setting for a fuser one.
fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(at) => TimeSet::At(at),
    }
}

/// Maps an error to its errno, logging it; `op` and `ino` say what failed.
fn errno(op: &str, ino: u64, err: &Error) -> Errno {
    match err {
        Error::Integrity { .. } => {
            tracing::warn!(inode = ino, "{op}: {err}");
        }
        Error::Io { .. } | Error::Meta { .. } | Error::Format { .. } => {
            tracing::error!(inode = ino, "{op}: {err}");
        }
        _ => tracing::debug!(inode = ino, "{op}: {err}"),
    }
    Errno::from_i32(err.errno())
}

/// A core directory cookie as the kernel carries it. Cookies are opaque to the kernel: the
/// bits pass through unchanged, and [`cookie_from_kernel`] undoes this exactly.
fn cookie_to_kernel(cookie: i64) -> u64 {
    u64::from_ne_bytes(cookie.to_ne_bytes())
}

/// The core directory cookie for an offset the kernel sends back.
fn cookie_from_kernel(offset: u64) -> i64 {
    i64::from_ne_bytes(offset.to_ne_bytes())
}

/// Replies to an xattr value or name-list request: the length for a size probe, `ERANGE` when
/// the caller's buffer is too small, the data otherwise.
fn reply_xattr(data: &[u8], size: u32, reply: ReplyXattr) {
    let Ok(len) = u32::try_from(data.len()) else {
        reply.error(Errno::from_i32(libc::E2BIG));
        return;
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

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
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(&ctx(req), parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &convert(&a), Generation(a.generation)),
            // A negative entry (node id 0) lets the kernel cache the miss: only this mount
            // changes the namespace (the mount lock), so the kernel sees every later create.
            Err(e) if e.errno() == libc::ENOENT => {
                reply.entry(&TTL, &convert(&negative_attr()), Generation(0))
            }
            Err(e) => reply.error(errno("lookup", parent.0, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &convert(&a)),
            Err(e) => reply.error(errno("getattr", ino.0, &e)),
        }
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
        match self.fs.setattr(&ctx(req), ino.0, &set) {
            Ok(a) => reply.attr(&TTL, &convert(&a)),
            Err(e) => reply.error(errno("setattr", ino.0, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", ino.0, &e)),
        }
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
        match self
            .fs
            .mknod(&ctx(req), parent.0, name.as_bytes(), mode, umask, rdev)
        {
            Ok(a) => reply.entry(&TTL, &convert(&a), Generation(a.generation)),
            Err(e) => reply.error(errno("mknod", parent.0, &e)),
        }
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
        match self
            .fs
            .mkdir(&ctx(req), parent.0, name.as_bytes(), mode, umask)
        {
            Ok(a) => reply.entry(&TTL, &convert(&a), Generation(a.generation)),
            Err(e) => reply.error(errno("mkdir", parent.0, &e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(&ctx(req), parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", parent.0, &e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(&ctx(req), parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", parent.0, &e)),
        }
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
        match self
            .fs
            .symlink(&ctx(req), parent.0, link_name.as_bytes(), target)
        {
            Ok(a) => reply.entry(&TTL, &convert(&a), Generation(a.generation)),
            Err(e) => reply.error(errno("symlink", parent.0, &e)),
        }
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
        let res = self.fs.rename(
            &ctx(req),
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", parent.0, &e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .link(&ctx(req), ino.0, newparent.0, newname.as_bytes())
        {
            Ok(a) => reply.entry(&TTL, &convert(&a), Generation(a.generation)),
            Err(e) => reply.error(errno("link", ino.0, &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open_file_reporting_atime(&ctx(req), ino.0, flags.0) {
            Ok((fh, atime_changed)) => {
                if atime_changed {
                    // The kernel drops its cached atime after a READ, but a read served from
                    // its page cache sends none; without this it would show the old atime for
                    // the attribute TTL.
                    self.invalidate_attributes(ino);
                }
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(errno("open", ino.0, &e)),
        }
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
        match self
            .fs
            .create(&ctx(req), parent.0, name.as_bytes(), mode, umask, flags)
        {
            Ok((a, fh)) => reply.created(
                &TTL,
                &convert(&a),
                Generation(a.generation),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno("create", parent.0, &e)),
        }
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
        // `flags` are those of the file the kernel reads through. Through a write-only file it
        // only fills its page cache for a partial-page write (writeback cache): not a read that
        // counts for atime.
        let data = if flags.0 & libc::O_ACCMODE == libc::O_WRONLY {
            self.fs.read_for_write(ino.0, fh.0, offset, size)
        } else {
            self.fs.read(ino.0, fh.0, offset, size)
        };
        match data {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno("read", ino.0, &e)),
        }
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
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves dropping setuid/setgid on write to us
        // and says when (a writer without CAP_FSETID); that spares a GETXATTR and a GETATTR
        // round trip on most writes and chowns.
        let written = if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            self.fs
                .write_dropping_suidgid(&ctx(req), ino.0, fh.0, offset, data)
                .map(|(n, mode_changed)| {
                    if mode_changed {
                        // The kernel does not refresh the mode after a write; without this it
                        // would show the dropped bits for the attribute TTL.
                        self.invalidate_attributes(ino);
                    }
                    n
                })
        } else {
            self.fs.write(ino.0, fh.0, offset, data)
        };
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", ino.0, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close(2): the kernel has already written the file's dirty pages
        // back and reported their errors before it sends FLUSH. ENOSYS tells it never to send
        // FLUSH again, which saves a round trip on every close.
        reply.error(Errno::ENOSYS);
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
        match self.fs.release(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("release", ino.0, &e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", ino.0, &e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(&ctx(req), ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", ino.0, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let offset = cookie_from_kernel(offset);
        match self.fs.readdir(ino.0, fh.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for ent in entries {
                    let name = OsStr::from_bytes(&ent.name);
                    let next = cookie_to_kernel(ent.next_offset);
                    if reply.add(INodeNo(ent.ino), next, file_type(ent.kind), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdir", ino.0, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let offset = cookie_from_kernel(offset);
        match self.fs.readdirplus(ino.0, fh.0, offset, READDIRPLUS_BATCH) {
            Ok(entries) => {
                let mut entries = entries.into_iter();
                for (ent, attr) in entries.by_ref() {
                    let name = OsStr::from_bytes(&ent.name);
                    let next = cookie_to_kernel(ent.next_offset);
                    let gen = Generation(attr.generation);
                    if reply.add(INodeNo(ent.ino), next, name, &TTL, &convert(&attr), gen) {
                        // This entry did not fit: the kernel never sees it, so it will never
                        // forget the lookup reference the core took for it.
                        self.forget_unsent(&ent);
                        break;
                    }
                }
                for (ent, _) in entries {
                    self.forget_unsent(&ent);
                }
                reply.ok();
            }
            Err(e) => reply.error(errno("readdirplus", ino.0, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.fs.releasedir(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("releasedir", ino.0, &e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsyncdir(ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", ino.0, &e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", ino.0, &e)),
        }
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
        if position != 0 {
            // Only macOS resource forks use a position.
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        match self
            .fs
            .setxattr(&ctx(req), ino.0, name.as_bytes(), value, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("setxattr", ino.0, &e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(&ctx(req), ino.0, name.as_bytes()) {
            Ok(value) => reply_xattr(&value, size, reply),
            Err(e) => reply.error(errno("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(&ctx(req), ino.0) {
            Ok(names) => reply_xattr(&names, size, reply),
            Err(e) => reply.error(errno("listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(&ctx(req), ino.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("removexattr", ino.0, &e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(&ctx(req), ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("access", ino.0, &e)),
        }
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
        match self
            .fs
            .fallocate(&ctx(req), ino.0, fh.0, offset, length, mode)
        {
            Ok(mode_changed) => {
                if mode_changed {
                    // The kernel refreshes only size and times after fallocate; without this
                    // it would show the old setuid/setgid bits for the attribute TTL.
                    self.invalidate_attributes(ino);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno("fallocate", ino.0, &e)),
        }
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
        // No ioctls are supported. Programs probe with them all the time (isatty() sends
        // TCGETS on every open in many runtimes), so answer quietly like a plain file does.
        reply.error(Errno::from_i32(libc::ENOTTY));
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
        match self.fs.lseek(ino.0, fh.0, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(errno("lseek", ino.0, &e)),
        }
    }
}

impl DigimedFuse {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_keeps_every_field() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = Attr {
            ino: 42,
            size: 5000,
            blocks: 16,
            atime: t,
            mtime: t + Duration::from_secs(1),
            ctime: t + Duration::from_secs(2),
            crtime: t + Duration::from_secs(3),
            kind: FileKind::Symlink,
            perm: 0o4755,
            nlink: 3,
            uid: 1000,
            gid: 100,
            rdev: 7,
            blksize: 65536,
            generation: 9,
        };
        let f = convert(&a);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!((f.size, f.blocks), (5000, 16));
        assert_eq!(
            (f.atime, f.mtime, f.ctime, f.crtime),
            (a.atime, a.mtime, a.ctime, a.crtime)
        );
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!((f.perm, f.nlink, f.uid, f.gid), (0o4755, 3, 1000, 100));
        assert_eq!((f.rdev, f.blksize, f.flags), (7, 65536, 0));
    }

    #[test]
    fn file_types_map_one_to_one() {
        let kinds = [
            (FileKind::File, FileType::RegularFile),
            (FileKind::Dir, FileType::Directory),
            (FileKind::Symlink, FileType::Symlink),
            (FileKind::Fifo, FileType::NamedPipe),
            (FileKind::CharDev, FileType::CharDevice),
            (FileKind::BlockDev, FileType::BlockDevice),
            (FileKind::Socket, FileType::Socket),
        ];
        for (k, t) in kinds {
            assert_eq!(file_type(k), t);
        }
    }

    #[test]
    fn utime_now_maps_to_timeset_now() {
        assert_eq!(time_set(TimeOrNow::Now), TimeSet::Now);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(time_set(TimeOrNow::SpecificTime(t)), TimeSet::At(t));
    }

    #[test]
    fn cookies_round_trip() {
        for c in [0i64, 1, 2, i64::MAX, -1, i64::MIN] {
            assert_eq!(cookie_from_kernel(cookie_to_kernel(c)), c);
        }
    }

    #[test]
    fn errors_map_to_their_errno() {
        let e = Error::posix(libc::ENOENT, "lookup");
        assert_eq!(errno("lookup", 1, &e).code(), libc::ENOENT);
        let e = Error::integrity("inode 5 block 0");
        assert_eq!(errno("read", 5, &e).code(), libc::EIO);
    }
}
