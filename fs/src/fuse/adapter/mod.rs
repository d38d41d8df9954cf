//! The FUSE adapter over one open [`core::Filesystem`]: [`DigimedFuse`], its options and the
//! conversions between core and kernel types, shared by both transports.
//!
//! - `handlers`: the transport-independent request handlers (`op_*`), one core call each.
//! - `fuser_impl`: the `fuser::Filesystem` implementation, which decodes each `/dev/fuse`
//!   request, calls its handler and encodes the reply.
//!
//! No filesystem logic lives here. Errors become errnos through [`Error::errno`]; integrity
//! failures are additionally logged at `warn` with the inode they concern, everything else at
//! `debug` (ENOENT on lookup is normal traffic).

mod fuser_impl;
mod handlers;

use crate::fuse::stats::{MountStats, Op};
use digimedfs_core::filesystem::{self as core, Attr, Ctx, FileKind, TimeSet};
use digimedfs_core::Error;
use fuser::{Errno, FileAttr, FileType, INodeNo, InitFlags, Notifier, Request, TimeOrNow};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use digimedfs_keyclient::mount_options::UringMode;

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
    /// The counters of this mount's requests (`crate::fuse::stats`).
    stats: Arc<MountStats>,
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
            stats: Arc::new(MountStats::default()),
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

impl DigimedFuse {
    /// The counters of this mount's requests.
    pub fn stats(&self) -> Arc<MountStats> {
        Arc::clone(&self.stats)
    }

    /// Maps an error to its errno ([`errno`]) and counts it against `op`.
    fn errno(&self, op: Op, ino: u64, err: &Error) -> Errno {
        self.stats.error(op, err);
        errno(op.name(), ino, err)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

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
