//! Plain data types of the filesystem core's API: attributes, caller identity, directory
//! entries, statfs. They carry no FUSE types so the core can be driven without a mount.

use std::time::SystemTime;

/// Who is calling: used for ownership of new inodes and permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Effective user id of the caller.
    pub uid: u32,
    /// Effective group id of the caller.
    pub gid: u32,
    /// Process id of the caller (for logs only).
    pub pid: u32,
}

impl Ctx {
    /// The superuser, as fsck and tests use it.
    pub const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

pub use crate::format::kind::FileKind;

/// Attributes of an inode, as `stat(2)` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (1 is the root directory).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte units.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification of contents.
    pub mtime: SystemTime,
    /// Last change of the inode.
    pub ctime: SystemTime,
    /// Creation.
    pub crtime: SystemTime,
    /// Type.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (lower 12 bits).
    pub perm: u16,
    /// Number of hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Preferred I/O size (the filesystem block size).
    pub blksize: u32,
    /// Inode generation, for NFS-style handles.
    pub generation: u64,
}

/// How to set a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (`UTIME_NOW`).
    Now,
    /// A given time.
    At(SystemTime),
}

/// When reads update access times: the mount options `relatime` (Linux's default),
/// `strictatime` and `noatime`. The kernel leaves atime of FUSE inodes to the filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// Update when atime is not later than mtime or ctime, or is a day old (Linux's
    /// `relatime`): a read after each change, and once a day, is recorded.
    #[default]
    Relatime,
    /// Update on every read (`strictatime`).
    Strict,
    /// Never update on reads (`noatime`); utimensat still sets atime.
    Never,
}

/// The changes of one `setattr` call; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (the lower 12 bits are used).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The change time the kernel stamped (it keeps c/mtime of regular files itself under
    /// FUSE_WRITEBACK_CACHE and sends them with every change); `None`: now.
    pub ctime: Option<SystemTime>,
    /// The file handle when called through an open file (ftruncate, futimens).
    pub fh: Option<u64>,
}

/// One directory entry as readdir returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode of the entry.
    pub ino: u64,
    /// Cookie to pass as `offset` to continue after this entry.
    pub next_offset: i64,
    /// Type of the entry.
    pub kind: FileKind,
    /// Name (no `/`, no NUL).
    pub name: Vec<u8>,
}

/// Filesystem statistics, as `statfs(2)` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of `frsize`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// What the mount's caches and write buffers hold, and how often the caches were enough: the
/// counters an administrator reads to size `max_dirty` and to tell a cold store from a slow
/// one (counts since the mount; bytes as of now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Bytes of written file data not yet handed to storage.
    pub dirty_bytes: u64,
    /// Bytes of file data being written to storage.
    pub in_flight_bytes: u64,
    /// Bytes of small files' contents not yet stored.
    pub inline_dirty_bytes: u64,
    /// The dirty-memory bound the three above are held to.
    pub max_dirty_bytes: u64,
    /// Inodes loaded in memory.
    pub nodes_loaded: u64,
    /// Inode lookups served from memory, and those that read the metadata store.
    pub node_hits: u64,
    /// See `node_hits`.
    pub node_misses: u64,
    /// Block-map chunk lookups served from memory, and those that read the metadata store.
    pub chunk_hits: u64,
    /// See `chunk_hits`.
    pub chunk_misses: u64,
}
