//! The `fuser::Filesystem` implementation: decodes each kernel request, calls the matching
//! [`core::Filesystem`] method one-to-one and encodes the reply.
//!
//! No filesystem logic lives here. Errors become errnos through [`Error::errno`]; integrity
//! failures are additionally logged at `warn` with the inode they concern, everything else at
//! `debug` (ENOENT on lookup is normal traffic).

use digimedfs_core::filesystem::{self as core, Attr, Ctx, FileKind, SetAttr, TimeSet};
use digimedfs_core::Error;
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

/// Whether requests are served over FUSE's io_uring transport ([`super::uring`]) or over
/// `/dev/fuse`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UringMode {
    /// io_uring when the kernel allows it (the fuse module's `enable_uring`, which an
    /// administrator switches on), else `/dev/fuse`, logged at info level. The default: an
    /// administrator who switched the kernel's transport on wants it used, and it is the faster
    /// one for metadata work and random reads (docs/performance.md, "Current results").
    #[default]
    Auto,
    /// `uring`: as `Auto`, but a kernel that does not offer it is worth a warning.
    Requested,
    /// `nouring`: always `/dev/fuse` (cold sequential reads of large files were faster there).
    Off,
}

/// How long the kernel may cache attributes and directory entries.
pub const TTL: Duration = Duration::from_secs(1);

/// Largest write request we ask the kernel for.
pub const MAX_WRITE: u32 = 1 << 20;
/// Readahead window we ask the kernel for (and set as the mount's readahead, see
/// `mount::raise_readahead`).
pub const MAX_READAHEAD: u32 = 1 << 20;
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

/// The FUSE adapter over one open [`core::Filesystem`]. Clones share the filesystem and
/// state: the fuser session owns one, the io_uring queues ([`super::uring`]) another.
#[derive(Clone)]
pub struct DigimedFuse {
    fs: Arc<core::Filesystem>,
    /// Set once [`core::Filesystem::close`] has run, so that it runs exactly once whether the
    /// session's `destroy` or the mount driver gets there first.
    closed: Arc<AtomicBool>,
    /// The session's channel for invalidating the kernel's caches, once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
    /// Whether to ask for FUSE over io_uring at INIT, and how loudly to say the kernel refused.
    uring: UringMode,
    /// Whether INIT agreed to it (set by `init`).
    uring_agreed: Arc<AtomicBool>,
    /// Called once the session's `destroy` has closed the filesystem: how the mount driver
    /// learns that the session is over without joining fuser's session thread (see
    /// `mount::serve`).
    on_destroyed: Arc<OnceLock<SessionOver>>,
}

/// What [`DigimedFuse`] calls when the session has ended and the filesystem is closed.
pub type SessionOver = Box<dyn Fn() + Send + Sync>;

impl DigimedFuse {
    /// An adapter serving `fs`.
    pub fn new(fs: Arc<core::Filesystem>) -> DigimedFuse {
        DigimedFuse {
            fs,
            closed: Arc::new(AtomicBool::new(false)),
            notifier: Arc::new(OnceLock::new()),
            uring: UringMode::Off,
            uring_agreed: Arc::new(AtomicBool::new(false)),
            on_destroyed: Arc::new(OnceLock::new()),
        }
    }

    /// Has `f` called once the session has ended and its `destroy` closed the filesystem
    /// (shared by every clone; only the first call sets it).
    pub fn on_destroyed(&self, f: SessionOver) {
        let _ = self.on_destroyed.set(f);
    }

    /// This adapter, asking the kernel at INIT to deliver requests over io_uring as `mode`
    /// says (not at all for [`UringMode::Off`], the default).
    pub fn with_uring(mut self, mode: UringMode) -> DigimedFuse {
        self.uring = mode;
        self
    }

    /// Whether INIT agreed to FUSE over io_uring (the kernel offered it and we asked).
    pub fn uring_agreed(&self) -> bool {
        self.uring_agreed.load(Ordering::SeqCst)
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
    pub fn close(&self) -> digimedfs_core::Result<bool> {
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

/// The answer to an xattr value or name-list request: its length for a size probe (`size`
/// 0), the data otherwise.
pub enum XattrReply {
    /// Length of the value or list.
    Size(u32),
    /// The value or list.
    Data(Vec<u8>),
}

/// `data` as the answer to a request that allows `size` bytes: the length for a size probe,
/// `ERANGE` when the caller's buffer is too small, the data otherwise.
fn xattr_reply(data: Vec<u8>, size: u32) -> Result<XattrReply, Errno> {
    let Ok(len) = u32::try_from(data.len()) else {
        return Err(Errno::from_i32(libc::E2BIG));
    };
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if len > size {
        Err(Errno::from_i32(libc::ERANGE))
    } else {
        Ok(XattrReply::Data(data))
    }
}

/// What a request handler answers: the reply's content, or the errno.
pub type OpResult<T> = Result<T, Errno>;

/// The request handlers, independent of how requests reach the daemon: the `fuser` session
/// over `/dev/fuse` (below) and the io_uring transport ([`super::uring`]) decode a request,
/// call one of these and encode what it returns. Names are bytes, node ids and handles the
/// kernel's numbers.
impl DigimedFuse {
    /// LOOKUP. A miss is a negative entry (node id 0), which lets the kernel cache it: only
    /// this mount changes the namespace (the mount lock), so the kernel sees every later
    /// create.
    pub fn op_lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<Attr> {
        match self.fs.lookup(ctx, parent, name) {
            Ok(a) => Ok(a),
            Err(e) if e.errno() == libc::ENOENT => Ok(negative_attr()),
            Err(e) => Err(errno("lookup", parent, &e)),
        }
    }

    /// GETATTR.
    pub fn op_getattr(&self, ino: u64) -> OpResult<Attr> {
        self.fs.getattr(ino).map_err(|e| errno("getattr", ino, &e))
    }

    /// SETATTR.
    pub fn op_setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> OpResult<Attr> {
        self.fs
            .setattr(ctx, ino, set)
            .map_err(|e| errno("setattr", ino, &e))
    }

    /// READLINK.
    pub fn op_readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        self.fs
            .readlink(ino)
            .map_err(|e| errno("readlink", ino, &e))
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
        self.fs
            .mknod(ctx, parent, name, mode, umask, rdev)
            .map_err(|e| errno("mknod", parent, &e))
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
        self.fs
            .mkdir(ctx, parent, name, mode, umask)
            .map_err(|e| errno("mkdir", parent, &e))
    }

    /// UNLINK.
    pub fn op_unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<()> {
        self.fs
            .unlink(ctx, parent, name)
            .map_err(|e| errno("unlink", parent, &e))
    }

    /// RMDIR.
    pub fn op_rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<()> {
        self.fs
            .rmdir(ctx, parent, name)
            .map_err(|e| errno("rmdir", parent, &e))
    }

    /// SYMLINK: `name` in `parent`, pointing at `target`.
    pub fn op_symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> OpResult<Attr> {
        self.fs
            .symlink(ctx, parent, name, target)
            .map_err(|e| errno("symlink", parent, &e))
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
        self.fs
            .rename(ctx, parent, name, newparent, newname, flags)
            .map_err(|e| errno("rename", parent, &e))
    }

    /// LINK: a new name `newname` in `newparent` for `ino`.
    pub fn op_link(&self, ctx: &Ctx, ino: u64, newparent: u64, newname: &[u8]) -> OpResult<Attr> {
        self.fs
            .link(ctx, ino, newparent, newname)
            .map_err(|e| errno("link", ino, &e))
    }

    /// OPEN: the handle and the open flags for the kernel.
    pub fn op_open(&self, ctx: &Ctx, ino: u64, flags: i32) -> OpResult<(u64, FopenFlags)> {
        let (fh, atime_changed) = self
            .fs
            .open_file_reporting_atime(ctx, ino, flags)
            .map_err(|e| errno("open", ino, &e))?;
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
        let (a, fh) = self
            .fs
            .create(ctx, parent, name, mode, umask, flags)
            .map_err(|e| errno("create", parent, &e))?;
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
        let data = if open_flags & libc::O_ACCMODE == libc::O_WRONLY {
            self.fs.read_for_write(ino, fh, offset, size)
        } else {
            self.fs.read(ino, fh, offset, size)
        };
        data.map_err(|e| errno("read", ino, &e))
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
        written.map_err(|e| errno("write", ino, &e))
    }

    /// FLUSH: nothing to do at close(2), since the kernel has already written the file's
    /// dirty pages back and reported their errors before it sends FLUSH. ENOSYS tells it never
    /// to send FLUSH again, which saves a round trip on every close.
    pub fn op_flush(&self) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }

    /// RELEASE.
    pub fn op_release(&self, ino: u64, fh: u64) -> OpResult<()> {
        self.fs
            .release(ino, fh)
            .map_err(|e| errno("release", ino, &e))
    }

    /// FSYNC.
    pub fn op_fsync(&self, ino: u64, fh: u64, datasync: bool) -> OpResult<()> {
        self.fs
            .fsync(ino, fh, datasync)
            .map_err(|e| errno("fsync", ino, &e))
    }

    /// OPENDIR.
    pub fn op_opendir(&self, ctx: &Ctx, ino: u64, flags: i32) -> OpResult<u64> {
        self.fs
            .opendir(ctx, ino, flags)
            .map_err(|e| errno("opendir", ino, &e))
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
        let entries = self
            .fs
            .readdir(ino, fh, cookie_from_kernel(offset), READDIR_BATCH)
            .map_err(|e| errno("readdir", ino, &e))?;
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
        let entries = self
            .fs
            .readdirplus(ino, fh, cookie_from_kernel(offset), READDIRPLUS_BATCH)
            .map_err(|e| errno("readdirplus", ino, &e))?;
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
        self.fs
            .releasedir(ino, fh)
            .map_err(|e| errno("releasedir", ino, &e))
    }

    /// FSYNCDIR.
    pub fn op_fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> OpResult<()> {
        self.fs
            .fsyncdir(ino, fh, datasync)
            .map_err(|e| errno("fsyncdir", ino, &e))
    }

    /// STATFS.
    pub fn op_statfs(&self, ino: u64) -> OpResult<core::StatFs> {
        self.fs.statfs().map_err(|e| errno("statfs", ino, &e))
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
        if position != 0 {
            return Err(Errno::from_i32(libc::EINVAL));
        }
        self.fs
            .setxattr(ctx, ino, name, value, flags)
            .map_err(|e| errno("setxattr", ino, &e))
    }

    /// GETXATTR for a caller buffer of `size` bytes (0: a size probe).
    pub fn op_getxattr(&self, ctx: &Ctx, ino: u64, name: &[u8], size: u32) -> OpResult<XattrReply> {
        let value = self
            .fs
            .getxattr(ctx, ino, name)
            .map_err(|e| errno("getxattr", ino, &e))?;
        xattr_reply(value, size)
    }

    /// LISTXATTR for a caller buffer of `size` bytes (0: a size probe).
    pub fn op_listxattr(&self, ctx: &Ctx, ino: u64, size: u32) -> OpResult<XattrReply> {
        let names = self
            .fs
            .listxattr(ctx, ino)
            .map_err(|e| errno("listxattr", ino, &e))?;
        xattr_reply(names, size)
    }

    /// REMOVEXATTR.
    pub fn op_removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> OpResult<()> {
        self.fs
            .removexattr(ctx, ino, name)
            .map_err(|e| errno("removexattr", ino, &e))
    }

    /// ACCESS.
    pub fn op_access(&self, ctx: &Ctx, ino: u64, mask: i32) -> OpResult<()> {
        self.fs
            .access(ctx, ino, mask)
            .map_err(|e| errno("access", ino, &e))
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
        let mode_changed = self
            .fs
            .fallocate(ctx, ino, fh, offset, length, mode)
            .map_err(|e| errno("fallocate", ino, &e))?;
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
        Err(Errno::from_i32(libc::ENOTTY))
    }

    /// LSEEK (SEEK_DATA, SEEK_HOLE).
    pub fn op_lseek(&self, ino: u64, fh: u64, offset: i64, whence: i32) -> OpResult<i64> {
        self.fs
            .lseek(ino, fh, offset, whence)
            .map_err(|e| errno("lseek", ino, &e))
    }

    /// FORGET and BATCH_FORGET.
    pub fn op_forget(&self, ino: u64, nlookup: u64) {
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
