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
//! ("Crash atomicity of data and tags") and implemented in `data.rs`.

mod backup;
mod data;
mod ns;
pub mod perms;
pub use backup::{begin_point, PointInfo};
mod types;

pub use types::{AtimeMode, Attr, Ctx, DirEntry, FileKind, SetAttr, StatFs, TimeSet};

pub use crate::backing::unlock_superblock;
pub use crate::format::format_uuid;

use crate::backing::{BackingDir, MountLock};
use crate::crypto::incarnation::{
    first_generation, incarnation_of, BlockKeys, KeyRing, GENERATIONS_PER_INCARNATION,
    MAX_INCARNATION,
};
use crate::crypto::FsKeys;
use crate::format::records::{Chunk, Counters, Inode, Storage, StoreState, Timestamp};
use crate::format::superblock::{Superblock, FLAG_CLEAN, FLAG_STORE_STATE};
use crate::meta::{DigestStore, MetaEngine, MetaStore, Records};
use crate::objects::{DirObjects, ObjectId, ObjectStore};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

struct CounterState {
    next_ino: u64,
    ino_reserved: u64,
    next_gen: u64,
    gen_reserved: u64,
    /// The incarnation this mount writes blocks under, and its keys (from the salt this
    /// mount drew; see [`crate::crypto::incarnation`]). `None` until the first one starts.
    current: Option<(u32, Arc<BlockKeys>)>,
}

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
    superblock: Mutex<Superblock>,
    backing: Option<BackingDir>,
    mount_lock: Mutex<Option<MountLock>>,
    /// Where the epoch is recorded outside the storage (key service), if anywhere.
    anchor: Mutex<Option<Arc<dyn crate::keysource::KeySource>>>,
    nodes: Mutex<HashMap<u64, NodeRef>>,
    /// Size of `nodes` at which the next trim runs (see [`Inner::insert_node`]).
    node_trim_at: AtomicUsize,
    pub(crate) ns_lock: Mutex<()>,
    pub(crate) wb_lock: Mutex<()>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    counters: Mutex<CounterState>,
    pub(crate) dirty_bytes: AtomicUsize,
    /// Bytes of blocks on their way to storage ([`data::InFlight`]): with the dirty bytes,
    /// what the dirty-memory bound limits.
    pub(crate) in_flight_bytes: AtomicUsize,
    /// Bytes of inline contents not yet stored (towards `max_dirty`).
    pub(crate) inline_dirty_bytes: AtomicUsize,
    /// Chunks whose entries carry a `prev` version (data not yet known durable).
    pub(crate) pending: Mutex<HashSet<(u64, u64)>>,
    pub(crate) chunk_cache: Mutex<lru::LruCache<(u64, u64), Arc<Chunk>>>,
    /// Objects to delete once the metadata that dropped them is durable.
    pub(crate) doomed: Mutex<Vec<ObjectId>>,
    /// Deleted inodes whose inline data record is still stored (each has a reclaim mark), and
    /// when the last inode was deleted ([`Inner::reclaim_inline`]).
    pub(crate) reclaim: Mutex<Reclaim>,
    closed: AtomicBool,
    /// Wakes the background threads: to stop, or (the flusher) to write back early.
    signal: (Mutex<Signal>, Condvar),
}

/// Deleted inodes waiting for their inline data record to be removed.
#[derive(Default)]
pub(crate) struct Reclaim {
    pub(crate) inos: Vec<u64>,
    pub(crate) last_deletion: Option<std::time::Instant>,
}

/// What the background threads are asked to do.
#[derive(Default)]
struct Signal {
    stopped: bool,
    /// Buffered writes passed half the dirty-memory bound: the flusher should write back now.
    writeback_wanted: bool,
}

/// Why the flusher woke.
enum FlusherWake {
    Stopped,
    WritebackWanted,
    Periodic,
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

impl Filesystem {
    /// Opens the filesystem in `backing`, unlocking it with `key`, its metadata store through
    /// `engine`.
    pub fn open(
        backing: &Path,
        key: &dyn crate::keysource::KeySource,
        opts: &OpenOptions,
        engine: &dyn MetaEngine,
    ) -> Result<Filesystem> {
        let dir = BackingDir::open(backing)?;
        let (superblock, keys) = unlock_superblock(&dir, key)?;
        let lock = if opts.read_only {
            None
        } else {
            Some(dir.lock(opts.force_unlock)?)
        };
        let meta_dir = dir.meta_for_open()?;
        let ctx = crate::keysource::SlotContext {
            fs_uuid: superblock.fs_uuid,
            tenant: superblock.tenant.clone(),
        };
        // A backing directory older than what the anchor last saw is a rollback.
        key.check_anchor(&ctx, superblock.epoch, &superblock.meta_digest)?;
        let sled: Arc<dyn MetaStore> =
            dir.fenced(engine.open_in(&meta_dir, opts.meta_cache_bytes)?)?;
        // The running digest is kept below the group commit, by its hand-over thread.
        let tracked: Arc<dyn MetaStore> =
            Arc::new(DigestStore::open(sled, keys.clone(), &superblock.fs_uuid)?);
        let meta = Arc::new(crate::meta::BufferedStore::with_handover_thread(
            tracked,
            META_GROUP_KEYS,
        )?);
        let objects = Arc::new(DirObjects::open(dir.confined())?);
        let parts = Parts {
            superblock,
            keys,
            meta,
            objects,
            backing: Some(dir),
        };
        let fs = Filesystem::from_parts(parts, lock, opts)?;
        if !opts.read_only {
            if let Some(anchor) = key.anchor_handle() {
                let sb = fs.superblock();
                anchor.anchor(&ctx, sb.epoch, &sb.meta_digest)?;
                *self::lock(&fs.inner.anchor) = Some(anchor);
            }
        }
        Ok(fs)
    }

    /// Opens a filesystem over explicit storage parts (tests, fsck).
    pub fn from_parts(
        parts: Parts,
        mount_lock: Option<MountLock>,
        opts: &OpenOptions,
    ) -> Result<Filesystem> {
        let Parts {
            mut superblock,
            keys,
            meta,
            objects,
            backing,
        } = parts;
        // Every store is tracked; a caller that did not put a digest store under its group
        // commit gets one on top (same digest, computed per operation instead of per group).
        let meta = if meta.digest_store().is_some() {
            meta
        } else {
            Arc::new(DigestStore::open(meta, keys.clone(), &superblock.fs_uuid)?)
        };
        let mut records = Records::new(meta, keys.clone(), &superblock.fs_uuid);
        if let Some(gate) = objects.point_gate() {
            records.set_gate(gate);
        }
        let tracker = records
            .digest_store()
            .ok_or_else(|| Error::invalid("metadata store without a digest store"))?;
        let state = tracker.state();
        match state {
            Some(state) => check_store_epoch(&state, &superblock, backing.as_ref())?,
            None if superblock.flags & FLAG_STORE_STATE != 0 => {
                let dir = backing_name(backing.as_ref());
                return Err(Error::integrity(format!(
                    "metadata store has no store state record, but the superblock (epoch {}) \
                     says it has one: the store was replaced on storage or the record deleted; \
                     nothing was changed. `fsck.digimed -n` with this mount's key options on \
                     {dir} reports it",
                    superblock.epoch
                )));
            }
            None => {}
        }
        let counters = records.counters()?.ok_or_else(|| {
            Error::integrity("counters record missing from the metadata store (run fsck.digimed)")
        })?;
        if records.inode(ROOT_INO)?.is_none() {
            return Err(Error::integrity("root inode missing (run fsck.digimed)"));
        }
        let block_size = u64::from(superblock.block_size);
        if !opts.read_only {
            // The store is bound to the new epoch and flushed before the superblock says it:
            // a crash in between leaves the store one epoch ahead, which open accepts. Without
            // a superblock to write (in-memory tests) the store stays at the superblock's.
            let epoch = superblock.epoch + 1;
            let bind_to = if backing.is_some() {
                epoch
            } else {
                superblock.epoch
            };
            match state {
                Some(_) => {
                    if backing.is_some() {
                        tracker.bind_epoch(bind_to)?;
                    }
                }
                None => adopt_legacy_store(tracker, &superblock, bind_to, backing.as_ref())?,
            }
            records.flush()?;
            superblock.flags &= !FLAG_CLEAN;
            superblock.flags |= FLAG_STORE_STATE;
            superblock.epoch = epoch;
            if let Some(b) = &backing {
                b.write_superblock(&superblock.encode(&keys.superblock)?)?;
            }
        }
        let chunk_cap =
            std::num::NonZeroUsize::new(CHUNK_CACHE).unwrap_or(std::num::NonZeroUsize::MIN);
        let inner = Arc::new(Inner {
            records,
            ring: KeyRing::new(keys.clone()),
            keys,
            objects,
            block_size,
            read_only: opts.read_only,
            check_perms: opts.check_permissions,
            atime: opts.atime,
            diratime: opts.diratime,
            max_dirty: opts.max_dirty_bytes.max(1 << 20),
            superblock: Mutex::new(superblock),
            backing,
            mount_lock: Mutex::new(mount_lock),
            anchor: Mutex::new(None),
            nodes: Mutex::new(HashMap::new()),
            node_trim_at: AtomicUsize::new(NODE_CACHE),
            ns_lock: Mutex::new(()),
            wb_lock: Mutex::new(()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            counters: Mutex::new(CounterState {
                next_ino: counters.ino_reserved,
                ino_reserved: counters.ino_reserved,
                next_gen: counters.gen_reserved,
                gen_reserved: counters.gen_reserved,
                current: None,
            }),
            dirty_bytes: AtomicUsize::new(0),
            in_flight_bytes: AtomicUsize::new(0),
            inline_dirty_bytes: AtomicUsize::new(0),
            pending: Mutex::new(HashSet::new()),
            chunk_cache: Mutex::new(lru::LruCache::new(chunk_cap)),
            doomed: Mutex::new(Vec::new()),
            reclaim: Mutex::new(Reclaim::default()),
            closed: AtomicBool::new(false),
            signal: (Mutex::new(Signal::default()), Condvar::new()),
        });
        let fs = Filesystem {
            inner: inner.clone(),
            flusher: Mutex::new(None),
            backup_watcher: Mutex::new(None),
        };
        if !opts.read_only {
            fs.inner.recover()?;
            let weak = Arc::downgrade(&inner);
            let handle = std::thread::Builder::new()
                .name("digimedfs-flush".into())
                .spawn(move || flusher(weak))
                .map_err(|e| Error::io("flusher thread", e))?;
            *lock(&fs.flusher) = Some(handle);
            if fs.inner.backing.is_some() {
                let weak = Arc::downgrade(&inner);
                let handle = std::thread::Builder::new()
                    .name("digimedfs-backup".into())
                    .spawn(move || backup_watcher(weak))
                    .map_err(|e| Error::io("backup request thread", e))?;
                *lock(&fs.backup_watcher) = Some(handle);
            }
        }
        Ok(fs)
    }

    /// The superblock as of now.
    pub fn superblock(&self) -> Superblock {
        lock(&self.inner.superblock).clone()
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.inner.block_size as u32
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
    /// [`OpenOptions::atime`]): the FUSE kernel serves reads of pages it has cached
    /// (`FOPEN_KEEP_CACHE`) without asking the filesystem, so the read itself may never
    /// arrive. Reads that do arrive count as well ([`Filesystem::read`]). When atime changed,
    /// the kernel's cached attributes of the file should be invalidated.
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
    /// updates atime as [`OpenOptions::atime`] says.
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
    /// Writes back everything, marks the filesystem clean and releases the lock.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        {
            let (m, cv) = &self.inner.signal;
            lock(m).stopped = true;
            cv.notify_all();
        }
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
        if let Some(h) = lock(&self.backup_watcher).take() {
            let _ = h.join();
        }
        if self.inner.read_only {
            return Ok(());
        }
        self.inner.sync_all_final()?;
        // The running digest, never a recomputation: a record put back behind the mount's back
        // stays a mismatch for fsck instead of being absorbed into a fresh digest.
        let tracker = self
            .inner
            .records
            .digest_store()
            .ok_or_else(|| Error::invalid("metadata store without a digest store"))?;
        let digest = tracker
            .state()
            .ok_or_else(|| Error::invalid("metadata store has no running digest"))?
            .digest;
        let mut sb = lock(&self.inner.superblock);
        if self.inner.backing.is_some() {
            tracker.bind_epoch(sb.epoch + 1)?;
            self.inner.records.flush()?;
        }
        sb.meta_digest = digest;
        sb.flags |= FLAG_CLEAN;
        sb.epoch += 1;
        if let Some(b) = &self.inner.backing {
            b.write_superblock(&sb.encode(&self.inner.keys.superblock)?)?;
        }
        let (epoch, digest) = (sb.epoch, sb.meta_digest);
        let ctx = crate::keysource::SlotContext {
            fs_uuid: sb.fs_uuid,
            tenant: sb.tenant.clone(),
        };
        drop(sb);
        if let Some(anchor) = lock(&self.inner.anchor).take() {
            anchor.anchor(&ctx, epoch, &digest)?;
        }
        lock(&self.inner.mount_lock).take();
        Ok(())
    }
}

impl Drop for Filesystem {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the filesystem failed; data written since the last sync may be lost");
        }
    }
}

/// Waits `interval` or until the filesystem is closed; returns false once closed.
fn wait_or_stop(inner: &Inner, interval: Duration) -> bool {
    let (m, cv) = &inner.signal;
    let (signal, _) = cv
        .wait_timeout_while(lock(m), interval, |s| !s.stopped)
        .unwrap_or_else(|p| p.into_inner());
    !signal.stopped
}

/// Waits until the filesystem is closed, a writer asks for an early writeback, or `interval`
/// has passed.
fn wait_for_flusher_work(inner: &Inner, interval: Duration) -> FlusherWake {
    let (m, cv) = &inner.signal;
    let (mut signal, _) = cv
        .wait_timeout_while(lock(m), interval, |s| !s.stopped && !s.writeback_wanted)
        .unwrap_or_else(|p| p.into_inner());
    if signal.stopped {
        FlusherWake::Stopped
    } else if std::mem::take(&mut signal.writeback_wanted) {
        FlusherWake::WritebackWanted
    } else {
        FlusherWake::Periodic
    }
}

/// The commit cycle every [`FLUSH_INTERVAL`], and writebacks that writers ask for when half
/// the dirty-memory bound is used, so that they rarely reach the bound and wait themselves.
fn flusher(weak: std::sync::Weak<Inner>) {
    let mut next_cycle = std::time::Instant::now() + FLUSH_INTERVAL;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wait = next_cycle.saturating_duration_since(std::time::Instant::now());
        let done = match wait_for_flusher_work(&inner, wait) {
            FlusherWake::Stopped => return,
            FlusherWake::WritebackWanted => inner.writeback_over(inner.max_dirty / 2),
            FlusherWake::Periodic => {
                next_cycle = std::time::Instant::now() + FLUSH_INTERVAL;
                // A failed reclaim keeps its marks for the next cycle; the writeback runs
                // either way.
                let reclaimed = inner.reclaim_inline(false);
                inner.writeback_all().and(reclaimed)
            }
        };
        if let Err(e) = done {
            tracing::error!(error = %e, "background writeback failed");
        }
    }
}

/// Serves backup requests that backup jobs leave in the backing directory.
fn backup_watcher(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if !wait_or_stop(&inner, backup::REQUEST_POLL) {
            return;
        }
        inner.serve_backup_request();
    }
}

impl Inner {
    /// The time the daemon stamps on inodes: the kernel's coarse clock (one tick resolution).
    /// The kernel stamps the times it keeps under FUSE_WRITEBACK_CACHE (c/mtime on write,
    /// ctime on link and unlink) from that clock too, unless someone looked at the inode's
    /// times since (multigrain timestamps, Linux 6.13+, then give a fine time); a finer daemon
    /// clock made a later change carry an earlier time than one the kernel had just stamped
    /// (xfstests generic/423). The reverse, a kernel fine time followed within a tick by a
    /// daemon change, can still order the two the wrong way round.
    pub(crate) fn now() -> Timestamp {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through the valid pointer it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        match u32::try_from(ts.tv_nsec) {
            Ok(nanos) if rc == 0 && nanos < 1_000_000_000 => Timestamp {
                secs: ts.tv_sec,
                nanos,
            },
            _ => Timestamp::now(),
        }
    }

    /// Records a read of `n` (a file's data, or a directory's entries) in its atime as the
    /// mount's atime mode says, the way Linux's `touch_atime` does: under `relatime` only when
    /// atime is not later than mtime or ctime or is a day old, under `strictatime` always,
    /// under `noatime` (and `nodiratime` for directories) or read-only never. Cheap: the node
    /// is only marked dirty and goes to the store with the next writeback (the 5 s flusher,
    /// fsync, unmount), never from here. Returns whether atime changed.
    pub(crate) fn touch_atime(&self, n: &mut Node) -> bool {
        if self.read_only || n.purged {
            return false;
        }
        let i = &n.inode;
        if i.kind == FileKind::Dir && !self.diratime {
            return false;
        }
        let now = Inner::now();
        let due = match self.atime {
            AtimeMode::Never => false,
            AtimeMode::Strict => true,
            AtimeMode::Relatime => {
                i.atime <= i.mtime
                    || i.atime <= i.ctime
                    || now.secs.saturating_sub(i.atime.secs) >= RELATIME_MAX_AGE
            }
        };
        if !due || i.atime == now {
            return false;
        }
        n.inode.atime = now;
        n.attr_dirty = true;
        true
    }

    /// Removes orphans left by a crash and reserves fresh number ranges.
    fn recover(&self) -> Result<()> {
        for ino in self.records.orphans()? {
            tracing::info!(
                ino,
                "removing inode left unlinked-but-open by an earlier mount"
            );
            if let Some(inode) = self.records.inode(ino)? {
                self.purge_inode(&inode)?;
            } else {
                let mut b = self.records.batch();
                b.set_orphan(ino, false);
                b.commit()?;
            }
        }
        // Inline data of inodes deleted before a crash or an unmount that did not finish is
        // reclaimed by the commit cycle like that of inodes deleted from now on. A mark is
        // written in the batch that deletes its inode, and inode numbers are never reused, so
        // a mark beside a live inode is damage: keep the data, drop the mark.
        for ino in self.records.reclaims()? {
            if self.records.inode(ino)?.is_some() {
                tracing::warn!(ino, "reclaim mark for an inode that exists; mark removed");
                let mut b = self.records.batch();
                b.set_reclaim(ino, false);
                b.commit()?;
            } else {
                lock(&self.reclaim).inos.push(ino);
            }
        }
        self.resolve_prev()?;
        let mut c = lock(&self.counters);
        c.ino_reserved = c.next_ino + INO_RESERVE;
        // Every read-write mount writes its blocks under a new incarnation: a copy or
        // restore of this store that mounts too continues from the same counters, but
        // not with the same salt.
        self.start_incarnation(&mut c)?;
        drop(c);
        self.flush_and_delete_doomed()
    }

    fn store_counters(&self, c: &CounterState) -> Result<()> {
        let mut b = self.records.batch();
        b.put_counters(&Counters {
            ino_reserved: c.ino_reserved,
            gen_reserved: c.gen_reserved,
        });
        b.commit()
    }

    pub(crate) fn alloc_ino(&self) -> Result<u64> {
        let mut c = lock(&self.counters);
        let mut step = 1u64;
        loop {
            if c.next_ino >= c.ino_reserved {
                c.ino_reserved = c.next_ino + INO_RESERVE;
                self.store_counters(&c)?;
                self.records.flush()?;
            }
            let ino = c.next_ino;
            if !self.ino_in_use(ino)? {
                c.next_ino += 1;
                return Ok(ino);
            }
            // Numbers are never reused, so one in use means the counters record was put back
            // from an older copy on storage: a new file must not take over an existing inode
            // (and its contents). Skip ahead, doubling the stride, and check every number.
            tracing::error!(
                ino,
                "inode number already in use: the counters record was rolled back on storage; \
                 skipping ahead (check with fsck.digimed -n)"
            );
            c.next_ino = ino.saturating_add(step);
            step = step.saturating_mul(2);
        }
    }

    /// Whether inode number `ino` has an inode record or a pending reclaim mark.
    fn ino_in_use(&self, ino: u64) -> Result<bool> {
        use crate::format::records::{ino_prefix, inode_key, prefix};
        let store = self.records.store();
        Ok(store.get(&inode_key(ino))?.is_some()
            || store.get(&ino_prefix(prefix::RECLAIM, ino))?.is_some())
    }

    /// Reserves `n` consecutive block generations, all of one incarnation; returns the first
    /// and the keys that encrypt and tag the blocks written with them.
    pub(crate) fn alloc_gens(&self, n: u64) -> Result<(u64, Arc<BlockKeys>)> {
        if n > GENERATIONS_PER_INCARNATION {
            return Err(Error::invalid(format!(
                "{n} block generations asked for at once"
            )));
        }
        let mut c = lock(&self.counters);
        let used = c.next_gen % GENERATIONS_PER_INCARNATION;
        let keys = match &c.current {
            Some((_, keys)) if used + n <= GENERATIONS_PER_INCARNATION => Arc::clone(keys),
            _ => self.start_incarnation(&mut c)?,
        };
        if c.next_gen + n > c.gen_reserved {
            c.gen_reserved = c.next_gen + n + GEN_RESERVE;
            self.store_counters(&c)?;
            self.records.flush()?;
        }
        let g = c.next_gen;
        c.next_gen += n;
        Ok((g, keys))
    }

    /// Starts the next incarnation: draws its salt, stores the salt record and counters
    /// that start at its first generation, and makes both durable before any block can be
    /// written under it. The number is above every generation the counters may have handed
    /// out, and an incarnation that already has a salt record is skipped (its blocks would
    /// stop verifying if the salt changed), so a counters record older than the salts
    /// cannot make a mount reuse one.
    fn start_incarnation(&self, c: &mut CounterState) -> Result<Arc<BlockKeys>> {
        let exhausted = || {
            posix(
                libc::ENOSPC,
                format!(
                    "start a new incarnation: all {MAX_INCARNATION} incarnation numbers are used \
                     (block generation {:#x})",
                    c.gen_reserved.max(c.next_gen)
                ),
            )
        };
        let mut k = incarnation_of(c.gen_reserved.max(c.next_gen))
            .checked_add(1)
            .ok_or_else(exhausted)?;
        while k <= MAX_INCARNATION && self.records.has_incarnation(k)? {
            tracing::warn!(
                incarnation = k,
                "salt record of an incarnation above the counters found; skipping it"
            );
            k += 1;
        }
        if k > MAX_INCARNATION {
            return Err(exhausted());
        }
        let (salt, keys) = self.ring.create(k)?;
        let next_gen = first_generation(k);
        let gen_reserved = next_gen + GEN_RESERVE;
        let mut b = self.records.batch();
        b.put_incarnation(k, &salt);
        b.put_counters(&Counters {
            ino_reserved: c.ino_reserved,
            gen_reserved,
        });
        b.commit()?;
        self.records.flush()?;
        c.next_gen = next_gen;
        c.gen_reserved = gen_reserved;
        let keys = self.ring.adopt(k, keys);
        c.current = Some((k, Arc::clone(&keys)));
        tracing::debug!(incarnation = k, "started a new incarnation");
        Ok(keys)
    }

    /// The keys of the blocks written with generation `gen`; `None` if its incarnation has no
    /// salt record (damage or a mix of two stores: the block cannot be verified).
    pub(crate) fn keys_of(&self, gen: u64) -> Result<Option<Arc<BlockKeys>>> {
        let k = incarnation_of(gen);
        self.ring.get(k, || self.records.incarnation_salt(k))
    }

    pub(crate) fn check_writable(&self, op: &str) -> Result<()> {
        if self.read_only {
            Err(posix(libc::EROFS, format!("{op}: read-only filesystem")))
        } else if let Some(e) = self.backing.as_ref().and_then(|b| b.fenced_error(op)) {
            Err(e)
        } else {
            Ok(())
        }
    }

    /// The loaded node of `ino`, loading it from the store if needed.
    pub(crate) fn node(&self, ino: u64) -> Result<NodeRef> {
        if let Some(n) = lock(&self.nodes).get(&ino) {
            return Ok(n.clone());
        }
        let inode = self
            .records
            .inode(ino)?
            .ok_or_else(|| posix(libc::ENOENT, format!("inode {ino}: no such inode")))?;
        Ok(self.insert_node(inode, false))
    }

    /// Caches the node of `inode`; `created` says it was just created (so it has no xattrs).
    pub(crate) fn insert_node(&self, inode: Inode, created: bool) -> NodeRef {
        let ino = inode.ino;
        let mut nodes = lock(&self.nodes);
        if let Some(n) = nodes.get(&ino) {
            return n.clone();
        }
        if nodes.len() >= self.node_trim_at.load(Ordering::Relaxed) {
            nodes.retain(|_, n| {
                if Arc::strong_count(n) > 1 {
                    return true;
                }
                match n.try_lock() {
                    Ok(g) => g.is_dirty() || g.open_count > 0,
                    Err(_) => true,
                }
            });
            // Dirty and open nodes stay. Until the cache has grown by a quarter again, do not
            // trim: with thousands of dirty nodes (access times of a tree being read, waiting
            // for the 5 s writeback) every insert rescanned them all, 7% of the daemon's time
            // reading the benchmark tree.
            self.node_trim_at.store(
                nodes.len().max(NODE_CACHE) + NODE_CACHE / 4,
                Ordering::Relaxed,
            );
        }
        let node = Arc::new(Mutex::new(Node {
            inode,
            attr_dirty: false,
            open_count: 0,
            inline: None,
            inline_dirty: false,
            inline_charge: 0,
            dirty: BTreeMap::new(),
            purged: false,
            xattrs_absent: created,
            in_flight: None,
        }));
        nodes.insert(ino, node.clone());
        node
    }

    pub(crate) fn forget_node(&self, ino: u64) {
        lock(&self.nodes).remove(&ino);
    }

    /// Registers an open handle of `node`; fails if the inode was deleted meanwhile (its
    /// last name went while the caller was on its way here).
    pub(crate) fn new_handle(&self, node: &NodeRef, ino: u64) -> Result<u64> {
        {
            let mut n = lock(node);
            ensure_live(&n, "open")?;
            n.open_count += 1;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino });
        Ok(fh)
    }

    pub(crate) fn attr_of(&self, i: &Inode) -> Attr {
        let bs = self.block_size;
        let blocks = match i.storage {
            Storage::Object(_) => i.size.div_ceil(bs) * (bs / 512),
            Storage::Inline => i.size.div_ceil(512),
            Storage::None => 0,
        };
        let size = if i.kind == FileKind::Symlink {
            i.target.len() as u64
        } else {
            i.size
        };
        Attr {
            ino: i.ino,
            size,
            blocks,
            atime: i.atime.to_system(),
            mtime: i.mtime.to_system(),
            ctime: i.ctime.to_system(),
            crtime: i.crtime.to_system(),
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            blksize: bs as u32,
            generation: i.generation,
        }
    }

    fn release_node(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        let purge = {
            let mut n = lock(&node);
            n.open_count = n.open_count.saturating_sub(1);
            if n.open_count == 0 && !n.inline_dirty {
                // Stored: keep memory bounded by not caching contents of closed files.
                n.inline = None;
            }
            n.open_count == 0 && n.inode.nlink == 0 && !n.purged
        };
        if purge {
            let _ns = lock(&self.ns_lock);
            let _wb = lock(&self.wb_lock);
            let mut n = lock(&node);
            if n.open_count == 0 && n.inode.nlink == 0 && !n.purged {
                self.drop_dirty(&mut n);
                n.purged = true;
                let inode = n.inode.clone();
                drop(n);
                self.purge_inode(&inode)?;
                self.forget_node(ino);
            }
        }
        Ok(())
    }

    /// Sets a node's inline-dirty flag and recounts its unstored inline bytes (call it again
    /// after changing dirty inline contents).
    pub(crate) fn set_inline_dirty(&self, n: &mut Node, dirty: bool) {
        n.inline_dirty = dirty;
        let charge = if dirty {
            n.inline.as_ref().map_or(0, Vec::len).max(512)
        } else {
            0
        };
        if charge >= n.inline_charge {
            self.inline_dirty_bytes
                .fetch_add(charge - n.inline_charge, Ordering::Relaxed);
        } else {
            self.inline_dirty_bytes
                .fetch_sub(n.inline_charge - charge, Ordering::Relaxed);
        }
        n.inline_charge = charge;
    }

    /// Bytes of buffered writes (blocks and inline contents) not yet written back.
    fn dirty_total(&self) -> usize {
        self.dirty_bytes.load(Ordering::Relaxed) + self.inline_dirty_bytes.load(Ordering::Relaxed)
    }

    /// After a write: past half the dirty-memory bound the flusher is asked to write back (in
    /// the background, while writers go on). A writer that finds dirty and in-flight bytes
    /// together past the bound waits for the running writeback, and writes back itself if
    /// dirty bytes alone are still past it: memory stays bounded while writes and writeback
    /// overlap.
    pub(crate) fn after_write(&self) -> Result<()> {
        if self.dirty_total() > self.max_dirty / 2 {
            let (m, cv) = &self.signal;
            let mut signal = lock(m);
            if !signal.writeback_wanted {
                signal.writeback_wanted = true;
                cv.notify_all();
            }
        }
        // In flight first, then dirty: a writeback moves bytes from dirty to in flight
        // (publishing the latter with Release), so this order never counts them twice; counting
        // them twice made a writer wait for a writeback it had just asked for.
        let in_flight = self.in_flight_bytes.load(Ordering::Acquire);
        if self.dirty_total() + in_flight > self.max_dirty {
            self.writeback_over(self.max_dirty)
        } else {
            Ok(())
        }
    }

    pub(crate) fn drop_dirty(&self, n: &mut Node) {
        let bytes = n.dirty.len() * self.block_size as usize;
        n.dirty.clear();
        self.dirty_bytes.fetch_sub(
            bytes.min(self.dirty_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.set_inline_dirty(n, false);
        n.attr_dirty = false;
    }

    /// Deletes every record of `inode` and schedules its object for deletion.
    pub(crate) fn purge_inode(&self, inode: &Inode) -> Result<()> {
        let mut b = self.records.batch();
        self.purge_into(&mut b, inode, false)?;
        b.commit()?;
        self.after_purge(inode);
        Ok(())
    }

    /// Removes the inline data records of deleted inodes, with their reclaim marks. Deleting
    /// a record makes the store load the part of its tree that holds it, and the inline
    /// records of small files are their contents: done inside the unlink, an `rm -rf` of
    /// small files read them all back from disk (docs/performance.md, tuning table:
    /// `RECLAIM_QUIET`). So the unlink leaves a reclaim mark and this removes the records
    /// later, once no inode was deleted for [`RECLAIM_QUIET`] or more than
    /// [`RECLAIM_BACKLOG`] wait, and always when `force` (unmount). No lock of the namespace
    /// or of any node is needed: inode numbers are never reused, so nothing else refers to
    /// these records.
    pub(crate) fn reclaim_inline(&self, force: bool) -> Result<()> {
        let inos = {
            let mut r = lock(&self.reclaim);
            let quiet = r.last_deletion.is_none_or(|t| t.elapsed() >= RECLAIM_QUIET);
            if !(force || quiet || r.inos.len() > RECLAIM_BACKLOG) {
                return Ok(());
            }
            std::mem::take(&mut r.inos)
        };
        // In key order: neighbouring records share the parts of the tree loaded for them.
        let mut inos = inos;
        inos.sort_unstable();
        inos.dedup();
        for (k, batch) in inos.chunks(RECLAIM_BATCH).enumerate() {
            let mut b = self.records.batch();
            for &ino in batch {
                b.delete_key(&crate::format::records::ino_prefix(
                    crate::format::records::prefix::INLINE,
                    ino,
                ));
                b.set_reclaim(ino, false);
            }
            if let Err(e) = b.commit() {
                let rest = inos.get(k * RECLAIM_BATCH..).unwrap_or_default();
                lock(&self.reclaim).inos.extend_from_slice(rest);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes the metadata store durable, then removes the objects whose deletion it now
    /// records. The list is taken before the flush: an object doomed by a deletion committed
    /// during the flush waits for the next one (its deletion may not be in this flush).
    pub(crate) fn flush_and_delete_doomed(&self) -> Result<()> {
        let doomed: Vec<ObjectId> = std::mem::take(&mut *lock(&self.doomed));
        if let Err(e) = self.records.flush() {
            lock(&self.doomed).extend(doomed);
            return Err(e);
        }
        for (k, id) in doomed.iter().enumerate() {
            if let Err(e) = self.objects.remove(id) {
                lock(&self.doomed).extend(doomed.iter().skip(k).copied());
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn statfs(&self) -> Result<StatFs> {
        let (blocks, bfree, bavail, files, ffree, frsize) = match &self.backing {
            Some(b) => statvfs(b.root())?,
            None => (1 << 32, 1 << 31, 1 << 31, 1 << 20, 1 << 19, 4096),
        };
        let scale = |v: u64| v.saturating_mul(frsize) / self.block_size;
        Ok(StatFs {
            blocks: scale(blocks),
            bfree: scale(bfree),
            bavail: scale(bavail),
            files,
            ffree,
            bsize: self.block_size as u32,
            namelen: NAME_MAX as u32,
            frsize: self.block_size as u32,
        })
    }

    /// Writes back every dirty node (not necessarily durable).
    pub(crate) fn writeback_dirty(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.writeback_nodes(self.dirty_nodes())
    }

    /// Writes back every dirty node if buffered writes still exceed `level` bytes once no
    /// other writeback runs. Writers that cross the bound while a writeback is under way wait
    /// for it and then find the bound met, instead of each running (and syncing the metadata
    /// store for) a writeback of the few blocks written meanwhile.
    fn writeback_over(&self, level: usize) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let wb = lock(&self.wb_lock);
        if self.dirty_total() <= level {
            return Ok(());
        }
        self.writeback_nodes_locked(&wb, self.dirty_nodes())
    }

    /// Nodes with changes not yet written back (and any node locked right now, which may).
    fn dirty_nodes(&self) -> Vec<(u64, NodeRef)> {
        let nodes: Vec<(u64, NodeRef)> = lock(&self.nodes)
            .iter()
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        nodes
            .into_iter()
            .filter(|(_, n)| n.try_lock().map(|g| g.is_dirty()).unwrap_or(true))
            .collect()
    }

    /// Writes back every dirty node, runs a data barrier and flushes the metadata store; then
    /// removes objects whose deletion is durable.
    pub(crate) fn writeback_all(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.writeback_dirty()?;
        self.barrier()?;
        // Every cycle ends durable: the metadata store has no flusher of its own, so this is the
        // commit interval (as ext4's 5 s journal commit).
        self.flush_and_delete_doomed()
    }

    fn sync_all(&self) -> Result<()> {
        self.writeback_all()
    }

    /// Unmount: every pending reclaim done, then everything durable.
    fn sync_all_final(&self) -> Result<()> {
        self.reclaim_inline(true)?;
        self.writeback_all()
    }
}

/// The backing directory for messages.
fn backing_name(backing: Option<&BackingDir>) -> String {
    backing.map_or_else(
        || "the backing directory".to_string(),
        |b| b.root().display().to_string(),
    )
}

/// Refuses a metadata store that belongs to another superblock epoch than `sb`'s (or the one
/// after it, which a crash between binding the store and writing the superblock leaves).
fn check_store_epoch(
    state: &StoreState,
    sb: &Superblock,
    backing: Option<&BackingDir>,
) -> Result<()> {
    if state.epoch == sb.epoch || Some(state.epoch) == sb.epoch.checked_add(1) {
        return Ok(());
    }
    let dir = backing_name(backing);
    let what = if state.epoch < sb.epoch {
        "the store was rolled back (an older copy of meta/ put back) or replaced on storage"
    } else {
        "the store is newer than the superblock (the superblock was rolled back, or the store \
         comes from elsewhere)"
    };
    Err(Error::integrity(format!(
        "metadata store belongs to epoch {} but the superblock is at epoch {}: {what}; nothing \
         was changed. `fsck.digimed -n` with this mount's key options on {dir} reports it; to \
         go back to an earlier state deliberately, restore a backup point (docs/backup.md)",
        state.epoch, sb.epoch
    )))
}

/// First read-write mount of a store made before the store state record: computes its digest
/// once (O(records)) and writes the record bound to `epoch`. When the superblock is clean, the
/// digest must be the one the last unmount recorded, or the store is refused rather than
/// adopted as it is.
fn adopt_legacy_store(
    tracker: &DigestStore,
    sb: &Superblock,
    epoch: u64,
    backing: Option<&BackingDir>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let digest = tracker.recompute()?;
    if sb.is_clean() && digest != sb.meta_digest {
        let dir = backing_name(backing);
        return Err(Error::integrity(format!(
            "metadata store differs from what the last clean unmount recorded in the superblock \
             (records rolled back, changed outside digimedfs, or lost); nothing was changed. \
             `fsck.digimed -n` with this mount's key options on {dir} reports it"
        )));
    }
    tracker.adopt(epoch, digest)?;
    tracing::info!(
        epoch,
        ms = started.elapsed().as_millis() as u64,
        "metadata store given its state record (running digest and epoch) on its first mount by this version"
    );
    Ok(())
}

fn statvfs(path: &Path) -> Result<(u64, u64, u64, u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("backing path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Ok((
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_frsize.max(1),
    ))
}
