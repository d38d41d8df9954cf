//! The FUSE-independent filesystem core.
//!
//! [`Filesystem`] is an API over inode numbers that the FUSE adapter calls one-to-one and that
//! tests, mkfs and fsck drive directly. It is `Send + Sync`: every method takes `&self` and may
//! be called from many threads at once.
//!
//! Concurrency: namespace changes (create, link, unlink, rename, ...) are serialized by one
//! lock; each loaded inode has its own lock; writeback of file data is serialized by a third.
//! Lock order: namespace → writeback → inode locks in ascending inode order → leaf locks
//! (node table, handles, caches, counters).
//!
//! Durability: writes are buffered (bounded by [`OpenOptions::max_dirty_bytes`]) and written
//! back by fsync, by a background flusher every few seconds and as soon as half the bound is
//! used, by a writer that finds the bound reached, and at close. The block-versioning
//! protocol that keeps every block verifiable across crashes is described in docs/crypto.md
//! ("Crash atomicity of data and tags") and implemented in `data/`.

mod alloc;
mod api;
mod backup;
mod data;
mod flusher;
mod nodes;
mod ns;
mod open;
pub mod perms;
mod space;
pub use backup::{begin_point, begin_point_with, PointInfo};
mod types;

pub use types::{AtimeMode, Attr, CacheStats, Ctx, DirEntry, FileKind, SetAttr, StatFs, TimeSet};

pub use crate::backing::unlock_superblock;
pub use crate::format::format_uuid;

use crate::backing::{BackingDir, MountLock};
use crate::crypto::incarnation::KeyRing;
use crate::crypto::FsKeys;
use crate::format::records::{Chunk, Inode};
use crate::format::superblock::Superblock;
use crate::meta::{MetaStore, Records};
use crate::objects::{ObjectId, ObjectStore};
use crate::{Error, Result};
use alloc::CounterState;
use flusher::Signal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;
/// Longest file name.
pub const NAME_MAX: usize = 255;
const INO_RESERVE: u64 = 1 << 16;
const GEN_RESERVE: u64 = 1 << 20;
const NODE_CACHE: usize = 16_384;
const CHUNK_CACHE: usize = 4_096;
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Deleted inodes' inline data is reclaimed by the commit cycle once no inode was deleted for
/// this long ([`Inner::reclaim_inline`]).
const RECLAIM_QUIET: Duration = Duration::from_secs(1);
/// More deleted inodes than this waiting for their inline data to go are reclaimed even while
/// deletions go on, which bounds the list (8 bytes each).
const RECLAIM_BACKLOG: usize = 1 << 16;
/// Inline data records removed per batch when reclaiming.
const RECLAIM_BATCH: usize = 512;
/// Under `relatime`, an atime this many seconds old is updated on the next read anyway.
const RELATIME_MAX_AGE: i64 = 24 * 60 * 60;
/// Changed metadata keys buffered in memory before they are handed to sled as one batch.
/// sled keeps the superseded copy of each tree page a batch changes until the batch is in, so
/// the group size bounds that memory (docs/performance.md, tuning table: `META_GROUP_KEYS`).
const META_GROUP_KEYS: usize = 1024;

/// Options for opening (mounting) a filesystem.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open read-only: nothing is written to the backing directory (fsck -n, ro mounts).
    pub read_only: bool,
    /// Take over a lock left by a mount that no longer runs.
    pub force_unlock: bool,
    /// Upper bound of file data kept in memory until stored, in bytes: dirty (not yet written
    /// back) and in flight (being written back). Past half of it in dirty data the flusher
    /// writes back in the background; a writer that finds the bound reached waits for that
    /// writeback (or writes back itself) before its write returns.
    pub max_dirty_bytes: usize,
    /// Upper bound of the metadata store's cache, in bytes.
    pub meta_cache_bytes: u64,
    /// Enforce permissions in the core. The FUSE mount turns this off because the kernel
    /// enforces them (`default_permissions`) with the caller's supplementary groups, which the
    /// core does not see.
    pub check_permissions: bool,
    /// When reads of files update their atime (mount options relatime, strictatime, noatime).
    pub atime: AtimeMode,
    /// Whether reading a directory updates its atime too (`nodiratime` turns this off).
    pub diratime: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            force_unlock: false,
            max_dirty_bytes: 32 << 20,
            meta_cache_bytes: 16 << 20,
            check_permissions: true,
            atime: AtimeMode::Relatime,
            diratime: true,
        }
    }
}

/// The storage parts a filesystem runs on (real backing directory, or in-memory for tests).
pub struct Parts {
    /// The decoded, verified superblock.
    pub superblock: Superblock,
    /// Working keys.
    pub keys: Arc<FsKeys>,
    /// Metadata store.
    pub meta: Arc<dyn MetaStore>,
    /// Data object store.
    pub objects: Arc<dyn ObjectStore>,
    /// The backing directory, if any (superblock updates go there).
    pub backing: Option<BackingDir>,
}

/// An open digimedfs filesystem.
pub struct Filesystem {
    inner: Arc<Inner>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    backup_watcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub(crate) struct Node {
    pub(crate) inode: Inode,
    /// The inode record differs from what the store holds.
    pub(crate) attr_dirty: bool,
    pub(crate) open_count: u32,
    /// Loaded inline contents (storage None/Inline), with `inline_dirty` if not yet stored.
    pub(crate) inline: Option<Vec<u8>>,
    pub(crate) inline_dirty: bool,
    /// Bytes this node counts towards the dirty-memory bound for its unstored inline contents.
    pub(crate) inline_charge: usize,
    /// Plaintext of blocks written but not yet written back, each exactly one block long.
    pub(crate) dirty: BTreeMap<u64, Box<[u8]>>,
    /// The inode was deleted (purged); the node must not be written.
    pub(crate) purged: bool,
    /// The inode is known to have no xattrs, so lookups of one need not touch the store. The
    /// kernel asks for `security.capability` on a file's first write and on chown, and `ls -l`
    /// for `security.selinux` on every entry: nearly always for files that have none.
    pub(crate) xattrs_absent: bool,
    /// Blocks of a writeback that has released the node but not yet written them to the
    /// object: their entries already name the new versions, so reads take them from here.
    pub(crate) in_flight: Option<Arc<data::InFlight>>,
}

impl Node {
    fn is_dirty(&self) -> bool {
        self.attr_dirty || self.inline_dirty || !self.dirty.is_empty()
    }
}

type NodeRef = Arc<Mutex<Node>>;

struct Handle {
    ino: u64,
}

pub(crate) struct Inner {
    pub(crate) records: Records,
    pub(crate) keys: Arc<FsKeys>,
    /// Block keys of every incarnation of this store.
    pub(crate) ring: KeyRing,
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) block_size: u64,
    pub(crate) read_only: bool,
    pub(crate) check_perms: bool,
    /// Atime updates on reads of files and directories (`OpenOptions::atime`, `diratime`).
    pub(crate) atime: AtimeMode,
    pub(crate) diratime: bool,
    pub(crate) max_dirty: usize,
    /// The superblock, backing directory and what this mount holds on them.
    mount: Mount,
    /// Loaded nodes and chunk records.
    cache: Caches,
    pub(crate) ns_lock: Mutex<()>,
    pub(crate) wb_lock: Mutex<()>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    counters: Mutex<CounterState>,
    /// Buffered bytes the dirty-memory bound (`max_dirty`) counts.
    mem: DirtyMemory,
    /// Chunks whose entries carry a `prev` version (data not yet known durable).
    pub(crate) pending: Mutex<HashSet<(u64, u64)>>,
    /// Storage to give back once it is safe to.
    deletions: Deletions,
    closed: AtomicBool,
    /// Wakes the background threads: to stop, or (the flusher) to write back early.
    signal: (Mutex<Signal>, Condvar),
}

/// The superblock and backing directory of the mount, and what it holds on them.
struct Mount {
    superblock: Mutex<Superblock>,
    backing: Option<BackingDir>,
    mount_lock: Mutex<Option<MountLock>>,
    /// Where the epoch is recorded outside the storage (key service), if anywhere.
    anchor: Mutex<Option<Arc<dyn crate::keysource::KeySource>>>,
}

/// In-memory caches of stored state: loaded nodes and chunk records.
struct Caches {
    nodes: Mutex<HashMap<u64, NodeRef>>,
    /// Size of `nodes` at which the next trim runs (see [`Inner::insert_node`]).
    node_trim_at: AtomicUsize,
    chunk_cache: Mutex<lru::LruCache<(u64, u64), Arc<Chunk>>>,
    /// Lookups of the two caches that found their entry, and that had to read the store.
    node_hits: AtomicU64,
    node_misses: AtomicU64,
    chunk_hits: AtomicU64,
    chunk_misses: AtomicU64,
}

/// Bytes of buffered writes, which the dirty-memory bound (`Inner::max_dirty`) limits.
struct DirtyMemory {
    /// Bytes of dirty blocks on nodes.
    dirty_bytes: AtomicUsize,
    /// Bytes of blocks on their way to storage ([`data::InFlight`]): with the dirty bytes,
    /// what the dirty-memory bound limits.
    in_flight_bytes: AtomicUsize,
    /// Bytes of inline contents not yet stored (towards `max_dirty`).
    inline_dirty_bytes: AtomicUsize,
}

/// Storage given back only once it is safe to: objects after the metadata that dropped them
/// is durable, inline data records of deleted inodes in quiet moments.
struct Deletions {
    /// Objects to delete once the metadata that dropped them is durable.
    doomed: Mutex<Vec<ObjectId>>,
    /// Deleted inodes whose inline data record is still stored (each has a reclaim mark), and
    /// when the last inode was deleted ([`Inner::reclaim_inline`]).
    reclaim: Mutex<Reclaim>,
}

/// Deleted inodes waiting for their inline data record to be removed.
#[derive(Default)]
pub(crate) struct Reclaim {
    pub(crate) inos: Vec<u64>,
    pub(crate) last_deletion: Option<std::time::Instant>,
}

/// Fails with ENOENT if `n`'s inode was deleted (purged). An operation that found the node
/// before the deletion and locked it after must not write the inode again: that would bring
/// back an inode no name or orphan record refers to.
pub(crate) fn ensure_live(n: &Node, op: &str) -> Result<()> {
    if n.purged {
        return Err(posix(
            libc::ENOENT,
            format!("{op} inode {}: deleted", n.inode.ino),
        ));
    }
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn posix(errno: i32, op: impl Into<String>) -> Error {
    Error::posix(errno, op)
}
