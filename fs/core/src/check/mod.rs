//! Checking and repairing a filesystem (fsck.digimed).
//!
//! [`check`] runs over a backing directory; [`check_parts`] runs the store-level passes over
//! explicit [`Parts`] (tests use it on a [`crate::testing::MemImage`]). The passes, in order:
//!
//! 1. superblock: both copies decode, unlock and pass their MAC, and agree;
//! 2. records: every metadata record opens (AEAD) and decodes; keys are well formed;
//! 3. tree: connected and acyclic from the root, entries point to live inodes of the right
//!    kind, every inode reachable or an orphan, link counts and `..` consistent;
//! 4. sizes: inline lengths, block entries beyond the size, storage kind per file type;
//! 5. objects: every object belongs to an inode, every referenced object exists, every block
//!    verifies against its tag (current or previous version, as reads accept), and entries
//!    that still have a previous version keep only the one the block holds (repair);
//! 6. backing directory: nothing but the known names (stale `*.tmp` files are removable);
//! 7. digest: the digest recomputed from the records matches the running digest of the store
//!    state record and, when the superblock says clean, the superblock's; the store belongs to
//!    the superblock's epoch (or the next, after a crash).
//!
//! Analysis decides each repair when it finds the problem (so later passes see the repaired
//! state) and records it in a plan; nothing is written until every pass ran, then the plan is
//! applied in one metadata batch, objects and stray files are removed, the store state record
//! is rewritten (fresh digest, bound to the next epoch), and the superblock is rewritten with
//! that digest, the next epoch and the clean flag.

use crate::backing::{BackingDir, LOCK_FILE, META_DIR, OBJECTS_DIR, SUPERBLOCK, SUPERBLOCK_BAK};
use crate::confined::{Access, Confined, Kind};
use crate::crypto::incarnation::{first_generation, incarnation_of, KeyRing};
use crate::crypto::FsKeys;
use crate::filesystem::{unlock_superblock, FileKind, Parts, ROOT_INO};
use crate::format::records::{
    self, prefix, BlockEntry, Chunk, Counters, Dirent, Inode, Storage, StoreState, Timestamp,
    Xattr, CHUNK_BLOCKS,
};
use crate::format::superblock::{Superblock, FLAG_CLEAN, FLAG_STORE_STATE};
use crate::integrity::{held_version, Held};
use crate::keysource::KeySource;
use crate::meta::{key_name, MetaEngine, MetaStore, Records};
use crate::objects::{DirObjects, ObjectId, ObjectStore};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the directory under the root that receives reconnected inodes.
pub const LOST_FOUND: &[u8] = b"lost+found";
/// Bytes read from an object at a time while verifying it.
const READ_CHUNK: usize = 8 << 20;
/// Objects are verified in segments of at most this many bytes, so one large file is spread
/// over all threads and no thread holds more than one segment's block entries.
const SEGMENT_BYTES: u64 = 64 << 20;
/// A file spanning more verification segments than this has them listed from its block map
/// (only those with entries), so a sparse file of 2^63 bytes is not read hole by hole.
const SPARSE_SEGMENTS: u64 = 1 << 14;
/// Records decoded between two progress reports in pass 2.
const RECORD_PROGRESS_EVERY: u64 = 1 << 16;
/// Most block numbers listed in one problem's detail text.
const MAX_LISTED_BLOCKS: usize = 16;

/// What fsck may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check only; change nothing (`-n`). The metadata store is read from a snapshot copy.
    Check,
    /// Repair only what is safe without a human decision (`-p`).
    Preen,
    /// Repair everything repairable (`-y`).
    Repair,
    /// Ask [`CheckUi::ask`] for every repairable problem (interactive).
    Ask,
}

impl Mode {
    /// Whether this mode may write to the filesystem.
    pub fn may_write(self) -> bool {
        self != Mode::Check
    }
}

/// Options of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// What may be changed.
    pub mode: Mode,
    /// Threads verifying block tags (0: one per available core).
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            mode: Mode::Check,
            threads: 0,
        }
    }
}

/// Answer to a repair question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Repair this problem.
    Yes,
    /// Leave this problem.
    No,
    /// Stop: leave everything unchanged.
    Quit,
}

/// Progress and questions of a check (the binary prints and prompts; tests use `()`).
pub trait CheckUi {
    /// Pass `n` (1–7) named `name` starts.
    fn pass(&mut self, _n: u8, _name: &str) {}
    /// Progress within pass `n`: `done` of `total` units (records in pass 2, bytes of object
    /// data in pass 5; `total` 0 when unknown). Called from the checking thread at most every
    /// ~100 ms during long passes, and once with `done == total` at the end of pass 5.
    fn progress(&mut self, _n: u8, _done: u64, _total: u64) {}
    /// [`Mode::Ask`]: whether to apply `action` to `problem`.
    fn ask(&mut self, _problem: &Problem, _action: &str) -> Answer {
        Answer::No
    }
}

impl CheckUi for () {}

/// The kinds of problem fsck finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A superblock copy is missing, malformed or fails its MAC.
    SuperblockDamaged,
    /// Both superblock copies are valid but differ.
    SuperblockMismatch,
    /// The metadata store directory is missing.
    MetaMissing,
    /// The objects directory is missing.
    ObjectsDirMissing,
    /// A metadata record fails authentication, decoding, or has a malformed key.
    BadRecord,
    /// A record with an unknown key prefix.
    UnknownRecord,
    /// The root directory inode is missing or not a directory.
    MissingRoot,
    /// The counters record is missing.
    MissingCounters,
    /// The counters are below numbers already in use.
    CountersBehind,
    /// A directory entry names an inode that does not exist.
    DanglingEntry,
    /// A directory entry's file type differs from its inode's.
    EntryKindMismatch,
    /// A second entry for a directory (hard link to a directory, or a cycle).
    ExtraDirLink,
    /// An inode not reachable from the root and not an orphan.
    DisconnectedInode,
    /// An orphan (unlinked while open, left by a crash) still stored.
    OrphanInode,
    /// An orphan record for an inode that is linked or does not exist.
    StaleOrphan,
    /// A reclaim mark (deleted inode, inline data to remove) for an inode that exists.
    StaleReclaim,
    /// An inode's link count differs from the entries naming it.
    WrongNlink,
    /// A directory's parent (`..`) differs from the directory holding its entry.
    WrongParent,
    /// A file's size disagrees with its stored data.
    SizeMismatch,
    /// Block entries beyond the end of a file.
    BlocksBeyondSize,
    /// A file's storage kind disagrees with its type or records.
    StorageMismatch,
    /// A record belonging to no (suitable) inode.
    StrayRecord,
    /// A data object no inode refers to.
    UnreferencedObject,
    /// A data object referenced by an inode is missing.
    MissingObject,
    /// Two inodes refer to the same data object.
    SharedObject,
    /// Blocks that fail their integrity check.
    DamagedBlock,
    /// An object longer than its file needs.
    ObjectTooLong,
    /// A leftover temporary file in the backing directory.
    StaleTemp,
    /// A file the backing directory should not contain.
    UnknownFile,
    /// The metadata digest differs from the store's running digest, or from the clean
    /// superblock's.
    DigestMismatch,
    /// The metadata store belongs to another superblock epoch (a rolled-back or replaced store).
    EpochMismatch,
    /// Blocks were written under an incarnation that has no salt record (their keys cannot
    /// be derived).
    MissingIncarnation,
}

impl ProblemKind {
    /// Stable snake_case name (JSON, messages).
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::SuperblockDamaged => "superblock_damaged",
            ProblemKind::SuperblockMismatch => "superblock_mismatch",
            ProblemKind::MetaMissing => "meta_missing",
            ProblemKind::ObjectsDirMissing => "objects_dir_missing",
            ProblemKind::BadRecord => "bad_record",
            ProblemKind::UnknownRecord => "unknown_record",
            ProblemKind::MissingRoot => "missing_root",
            ProblemKind::MissingCounters => "missing_counters",
            ProblemKind::CountersBehind => "counters_behind",
            ProblemKind::DanglingEntry => "dangling_entry",
            ProblemKind::EntryKindMismatch => "entry_kind_mismatch",
            ProblemKind::ExtraDirLink => "extra_dir_link",
            ProblemKind::DisconnectedInode => "disconnected_inode",
            ProblemKind::OrphanInode => "orphan_inode",
            ProblemKind::StaleOrphan => "stale_orphan",
            ProblemKind::StaleReclaim => "stale_reclaim",
            ProblemKind::WrongNlink => "wrong_nlink",
            ProblemKind::WrongParent => "wrong_parent",
            ProblemKind::SizeMismatch => "size_mismatch",
            ProblemKind::BlocksBeyondSize => "blocks_beyond_size",
            ProblemKind::StorageMismatch => "storage_mismatch",
            ProblemKind::StrayRecord => "stray_record",
            ProblemKind::UnreferencedObject => "unreferenced_object",
            ProblemKind::MissingObject => "missing_object",
            ProblemKind::SharedObject => "shared_object",
            ProblemKind::DamagedBlock => "damaged_block",
            ProblemKind::ObjectTooLong => "object_too_long",
            ProblemKind::StaleTemp => "stale_temp",
            ProblemKind::UnknownFile => "unknown_file",
            ProblemKind::DigestMismatch => "digest_mismatch",
            ProblemKind::EpochMismatch => "epoch_mismatch",
            ProblemKind::MissingIncarnation => "missing_incarnation",
        }
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether and how a problem can be repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixability {
    /// Nothing fsck can do (reported only).
    None,
    /// Repairable without losing anything (done by `-p`).
    Safe,
    /// Repairable, but the repair discards something (only `-y` or a yes answer).
    Unsafe,
}

/// One problem found.
#[derive(Debug, Clone)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The inode concerned, if any.
    pub ino: Option<u64>,
    /// Its path, when known.
    pub path: Option<String>,
    /// Human-readable description.
    pub detail: String,
    /// Block numbers concerned (damaged blocks).
    pub blocks: Vec<u64>,
    /// Whether it can be repaired.
    pub fixability: Fixability,
    /// The repair (or, if none, what stays as it is).
    pub action: String,
    /// Whether the repair was applied.
    pub fixed: bool,
}

/// What a check found and did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Problems in the order found.
    pub problems: Vec<Problem>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Fifos, sockets, device nodes.
    pub special: u64,
    /// Sum of regular file sizes (u128: sparse files reach 2^63 − 1 bytes each).
    pub bytes: u128,
    /// Data objects.
    pub objects: u64,
    /// Metadata records.
    pub records: u64,
    /// Blocks whose tag was verified.
    pub blocks_verified: u64,
    /// Block entries that still accepted a previous version (left by a crash, a fenced mount
    /// or a backup point taken under load; not a problem: the next read-write mount keeps
    /// the version each block holds, and a repairing run does the same).
    pub previous_versions: u64,
    /// The filesystem was mounted (the check read a snapshot of the metadata store).
    pub mounted: bool,
    /// The superblock's clean flag as found.
    pub was_clean: bool,
    /// The user quit at a question; nothing was changed.
    pub cancelled: bool,
    /// Something was written to the filesystem.
    pub modified: bool,
}

impl Report {
    /// Number of problems repaired.
    pub fn fixed(&self) -> usize {
        self.problems.iter().filter(|p| p.fixed).count()
    }
    /// Number of problems left as they are.
    pub fn uncorrected(&self) -> usize {
        self.problems.iter().filter(|p| !p.fixed).count()
    }
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
    /// Problems of one kind.
    pub fn of_kind(&self, kind: ProblemKind) -> Vec<&Problem> {
        self.problems.iter().filter(|p| p.kind == kind).collect()
    }
}

/// Checks (and, depending on `opts.mode`, repairs) the filesystem in `backing`.
pub fn check(
    backing: &Path,
    key: &dyn KeySource,
    opts: &CheckOptions,
    ui: &mut dyn CheckUi,
    engine: &dyn MetaEngine,
) -> Result<Report> {
    if !backing.is_dir() {
        return Err(Error::invalid(format!(
            "{}: not a directory",
            backing.display()
        )));
    }
    let dir = BackingDir::open(backing)?;
    // Mount lock: a mount holds an exclusive flock on `lock`. Repairs need it; a check only notes it.
    let (mounted, _lock) = probe_lock(&dir, opts.mode.may_write())?;
    if mounted && opts.mode.may_write() {
        return Err(Error::Busy {
            what: format!(
                "{} is mounted; unmount it before repairing (fsck -n checks a mounted filesystem \
                 read-only, from a snapshot of its metadata)",
                backing.display()
            ),
        });
    }
    let mut c = Checker::new(opts.clone(), ui);
    c.root = Some(dir.confined().clone());
    c.report.mounted = mounted;

    c.ui.pass(1, "superblock");
    let (sb, keys) = unlock_superblock(&dir, key)?;
    c.pass_superblock(&dir, &keys);

    let meta_path = dir.path(META_DIR);
    let Some(meta_dir) = dir.confined().try_open_dir(META_DIR)? else {
        c.problem(
            ProblemKind::MetaMissing,
            None,
            format!(
                "{}: metadata store missing; no file can be read without it",
                meta_path.display()
            ),
            Fixability::None,
            "none possible: restore meta/ from a backup",
        );
        c.ui.pass(6, "backing directory");
        c.pass_backing(&dir, &BTreeSet::new());
        return Ok(c.finish_without_store());
    };
    // -n must work on a mounted filesystem and change nothing: sled has no read-only mode and
    // locks its directory, so a check reads a private copy of the store.
    let mut _snapshot = None;
    let meta: Arc<dyn MetaStore> = if opts.mode.may_write() {
        engine.open_in(&meta_dir, 64 << 20)?
    } else {
        let snap = Snapshot::copy_of(&meta_dir)?;
        let store = engine.open_path(&snap.path, 64 << 20)?;
        _snapshot = Some(snap);
        store
    };
    let objects_path = dir.path(OBJECTS_DIR);
    let objects_exist = dir.confined().try_open_dir(OBJECTS_DIR)?.is_some();
    let objects: Arc<dyn ObjectStore> = if !objects_exist {
        Arc::new(crate::objects::NoObjects)
    } else if opts.mode.may_write() {
        Arc::new(DirObjects::open(dir.confined())?)
    } else {
        Arc::new(DirObjects::open_read_only(dir.confined())?)
    };
    if !objects_exist {
        let fix = c.problem(
            ProblemKind::ObjectsDirMissing,
            None,
            format!("{}: objects directory missing", objects_path.display()),
            Fixability::Safe,
            "create an empty objects directory",
        );
        if fix {
            c.plan.create_objects_dir = true;
        }
    }
    let parts = Parts {
        superblock: sb,
        keys,
        meta,
        objects,
        backing: Some(dir),
    };
    let result = c.run_store_passes(&parts);
    drop(parts);
    result
}

/// Runs passes 2–7 over explicit storage parts (pass 6 only if `parts.backing` is set).
pub fn check_parts(parts: &Parts, opts: &CheckOptions, ui: &mut dyn CheckUi) -> Result<Report> {
    Checker::new(opts.clone(), ui).run_store_passes(parts)
}

/// Tests the mount lock. With `hold`, keeps the lock (returned) for the duration of a repair.
fn probe_lock(dir: &BackingDir, hold: bool) -> Result<(bool, Option<std::fs::File>)> {
    let path = dir.path(LOCK_FILE);
    let Some(file) = dir.confined().try_open_file(LOCK_FILE, Access::Read)? else {
        return Ok((false, None));
    };
    match file.try_lock() {
        Ok(()) => {
            if hold {
                Ok((false, Some(file)))
            } else {
                let _ = file.unlock();
                Ok((false, None))
            }
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok((true, None)),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// A private copy of the metadata store, removed when dropped.
struct Snapshot {
    path: PathBuf,
}

impl Snapshot {
    fn copy_of(src: &Confined) -> Result<Snapshot> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("fsck-digimed-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        let snap = Snapshot { path };
        copy_dir(src, &snap.path)?;
        Ok(snap)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Copies the regular files and directories of `src` into `dst`; a link or special file in
/// the store is refused (it is never followed).
fn copy_dir(src: &Confined, dst: &Path) -> Result<()> {
    for ent in src.list()? {
        let to = dst.join(&ent.name);
        let name = ent.name.to_str().unwrap_or_default();
        match ent.kind {
            Kind::Dir => {
                std::fs::create_dir(&to).map_err(|e| Error::io(&to, e))?;
                copy_dir(&src.open_dir(name)?, &to)?;
            }
            Kind::File => {
                // A live store may remove a file while we copy.
                let Some(mut from) = src.try_open_file(name, Access::Read)? else {
                    continue;
                };
                let mut out = std::fs::File::create(&to).map_err(|e| Error::io(&to, e))?;
                std::io::copy(&mut from, &mut out).map_err(|e| Error::io(src.display(name), e))?;
            }
            Kind::Symlink | Kind::Other => {
                return Err(Error::integrity(format!(
                    "{}: not a regular file or directory; refused (a sled store holds none)",
                    src.display(name).display()
                )))
            }
        }
    }
    Ok(())
}

/// Changes decided during analysis, applied at the end.
#[derive(Default)]
struct Plan {
    delete_keys: BTreeSet<Vec<u8>>,
    put_inodes: BTreeSet<u64>,
    put_dirents: Vec<(u64, Dirent)>,
    delete_dirents: Vec<(u64, Vec<u8>)>,
    /// Inode → number of blocks to keep: block entries at or beyond it are dropped.
    trim_chunks: BTreeMap<u64, u64>,
    /// Inodes whose block map records are all deleted.
    delete_chunks: BTreeSet<u64>,
    /// Inode → entries with a previous version and the version their block holds.
    resolve_prev: BTreeMap<u64, Vec<(u64, Held)>>,
    /// Inode → new length of its inline data.
    resize_inline: BTreeMap<u64, u64>,
    put_counters: bool,
    remove_objects: BTreeSet<ObjectId>,
    truncate_objects: Vec<(ObjectId, u64)>,
    /// Stray files to remove, relative to the backing directory.
    remove_files: Vec<String>,
    create_objects_dir: bool,
    rewrite_superblock: bool,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.delete_keys.is_empty()
            && self.put_inodes.is_empty()
            && self.put_dirents.is_empty()
            && self.delete_dirents.is_empty()
            && self.trim_chunks.is_empty()
            && self.delete_chunks.is_empty()
            && self.resolve_prev.is_empty()
            && self.resize_inline.is_empty()
            && !self.put_counters
            && self.remove_objects.is_empty()
            && self.truncate_objects.is_empty()
            && self.remove_files.is_empty()
            && !self.create_objects_dir
            && !self.rewrite_superblock
    }
}

/// What pass 2 keeps of an inode's block map records.
#[derive(Debug, Clone, Copy, Default)]
struct ChunkSummary {
    /// Number of (decodable) chunk records.
    records: u64,
    /// Highest block index with an entry.
    max_block: u64,
}

/// One directory entry record as found.
struct EntryRec {
    key: Vec<u8>,
    dirent: Dirent,
}

/// The decoded store, adjusted as repairs are decided.
#[derive(Default)]
struct Model {
    inodes: BTreeMap<u64, Inode>,
    /// Entry records by directory pseudonym.
    entries: BTreeMap<[u8; 8], Vec<EntryRec>>,
    xattr_keys: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Per inode, a summary of its block map records (the entries stay in the store: pass 5
    /// reads them again segment by segment, so memory does not grow with the data).
    chunks: BTreeMap<u64, ChunkSummary>,
    /// Highest block generation in any block map record.
    max_gen: u64,
    /// Incarnations with a salt record.
    incarnations: BTreeSet<u32>,
    /// Chunks `(ino, chunk)` with a previous-version mark.
    prev_marks: BTreeSet<(u64, u64)>,
    /// Chunks `(ino, chunk)` with an entry that has a previous version.
    prev_chunks: BTreeSet<(u64, u64)>,
    /// Incarnations ≥ 1 that block versions name: (first inode seen, block versions).
    used_incarnations: BTreeMap<u32, (u64, u64)>,
    /// Inline data lengths.
    inline: BTreeMap<u64, u64>,
    orphans: BTreeSet<u64>,
    /// Deleted inodes whose inline data record the mount removes later (reclaim marks).
    reclaims: BTreeSet<u64>,
    /// Orphan inodes (unlinked while open) left in place; their records go with them.
    orphan_inodes: BTreeSet<u64>,
    counters: Option<Counters>,
    /// The store state record (epoch and running digest), if the store has one.
    state: Option<StoreState>,
    /// Accepted entries per directory: name → (ino, kind).
    dir_entries: BTreeMap<u64, BTreeMap<Vec<u8>, (u64, FileKind)>>,
    paths: HashMap<u64, String>,
    purged: BTreeSet<u64>,
}

struct Checker<'u> {
    opts: CheckOptions,
    ui: &'u mut dyn CheckUi,
    report: Report,
    plan: Plan,
    /// Indices of problems whose repair is planned.
    planned: Vec<usize>,
    model: Model,
    /// The backing directory, when checking one.
    root: Option<Confined>,
}

impl<'u> Checker<'u> {
    fn new(opts: CheckOptions, ui: &'u mut dyn CheckUi) -> Checker<'u> {
        Checker {
            opts,
            ui,
            report: Report::default(),
            plan: Plan::default(),
            planned: Vec::new(),
            model: Model::default(),
            root: None,
        }
    }

    /// Records a problem; returns whether its repair is to be applied.
    fn problem(
        &mut self,
        kind: ProblemKind,
        ino: Option<u64>,
        detail: String,
        fixability: Fixability,
        action: &str,
    ) -> bool {
        self.problem_blocks(kind, ino, detail, Vec::new(), fixability, action)
    }

    fn problem_blocks(
        &mut self,
        kind: ProblemKind,
        ino: Option<u64>,
        detail: String,
        blocks: Vec<u64>,
        fixability: Fixability,
        action: &str,
    ) -> bool {
        let path = ino.and_then(|i| self.model.paths.get(&i).cloned());
        let p = Problem {
            kind,
            ino,
            path,
            detail,
            blocks,
            fixability,
            action: action.to_string(),
            fixed: false,
        };
        let fix = if self.report.cancelled {
            false
        } else {
            match (self.opts.mode, fixability) {
                (_, Fixability::None) | (Mode::Check, _) => false,
                (Mode::Preen, f) => f == Fixability::Safe,
                (Mode::Repair, _) => true,
                (Mode::Ask, _) => match self.ui.ask(&p, action) {
                    Answer::Yes => true,
                    Answer::No => false,
                    Answer::Quit => {
                        self.report.cancelled = true;
                        false
                    }
                },
            }
        };
        if fix {
            self.planned.push(self.report.problems.len());
        }
        self.report.problems.push(p);
        fix
    }

    fn pass_superblock(&mut self, dir: &BackingDir, keys: &FsKeys) {
        let mut valid: Vec<Option<Vec<u8>>> = Vec::new();
        for name in [SUPERBLOCK, SUPERBLOCK_BAK] {
            let status = dir.read_superblock(name).and_then(|bytes| {
                Superblock::decode_unverified(&bytes)?;
                Superblock::verify(&bytes, &keys.superblock)?;
                Ok(bytes)
            });
            match status {
                Ok(b) => valid.push(Some(b)),
                Err(e) => {
                    let other = if name == SUPERBLOCK {
                        "backup copy"
                    } else {
                        "primary"
                    };
                    let fix = self.problem(
                        ProblemKind::SuperblockDamaged,
                        None,
                        format!("{name}: {e}"),
                        Fixability::Safe,
                        &format!("rewrite {name} from the {other}"),
                    );
                    self.plan.rewrite_superblock |= fix;
                    valid.push(None);
                }
            }
        }
        if let [Some(a), Some(b)] = valid.as_slice() {
            if a != b {
                let fix = self.problem(
                    ProblemKind::SuperblockMismatch,
                    None,
                    "superblock and superblock.bak are both valid but differ (interrupted update)"
                        .into(),
                    Fixability::Safe,
                    "rewrite superblock.bak from the primary",
                );
                self.plan.rewrite_superblock |= fix;
            }
        }
    }

    fn run_store_passes(mut self, parts: &Parts) -> Result<Report> {
        let records = Records::new(
            parts.meta.clone(),
            parts.keys.clone(),
            &parts.superblock.fs_uuid,
        );
        self.report.was_clean = parts.superblock.is_clean();
        self.ui.pass(2, "metadata records");
        self.pass_records(&records, &parts.keys)?;
        self.ui.pass(3, "directory tree");
        self.pass_tree(&records, &parts.keys);
        self.ui.pass(4, "sizes and storage");
        self.pass_sizes(&records, u64::from(parts.superblock.block_size));
        self.ui.pass(5, "data objects");
        let listed = self.pass_objects(parts, &records)?;
        if let Some(dir) = &parts.backing {
            self.ui.pass(6, "backing directory");
            self.pass_backing(dir, &listed);
        }
        self.ui.pass(7, "metadata digest");
        self.pass_digest(&parts.superblock, records.digest()?);
        self.fill_paths();
        if self.report.cancelled || !self.opts.mode.may_write() {
            return Ok(self.report);
        }
        let mark_clean = !parts.superblock.is_clean() && self.report.problems.is_empty();
        if self.plan.is_empty() && !mark_clean {
            return Ok(self.report);
        }
        self.apply(parts, &records)?;
        for i in std::mem::take(&mut self.planned) {
            if let Some(p) = self.report.problems.get_mut(i) {
                p.fixed = true;
            }
        }
        self.report.modified = true;
        Ok(self.report)
    }

    // ---- pass 7 ----

    /// Compares the recomputed digest of the records with the running digest the store keeps
    /// and, when clean, with the superblock's; and the store's epoch with the superblock's.
    fn pass_digest(&mut self, sb: &Superblock, digest: [u8; 32]) {
        let state = self.model.state;
        let mut differs = Vec::new();
        if let Some(s) = state {
            if s.digest != digest {
                differs.push("the running digest the store keeps with every write");
            }
        }
        if sb.is_clean() && digest != sb.meta_digest {
            differs.push("the digest the last clean unmount recorded in the superblock");
        }
        if !differs.is_empty() {
            let fix = self.problem(
                ProblemKind::DigestMismatch,
                None,
                format!(
                    "metadata records differ from {}: a record was put back from an older copy \
                     (replayed), or records were changed, added or removed outside digimedfs",
                    differs.join(" and from ")
                ),
                Fixability::Unsafe,
                "accept the metadata as it is now and store its digest",
            );
            self.plan.rewrite_superblock |= fix;
        }
        if state.is_none() && sb.flags & FLAG_STORE_STATE != 0 {
            let fix = self.problem(
                ProblemKind::EpochMismatch,
                None,
                format!(
                    "metadata store has no store state record, but the superblock (epoch {}) says \
                     it has one: the store was replaced on storage or the record deleted (mounts \
                     refuse it)",
                    sb.epoch
                ),
                Fixability::Unsafe,
                "accept the metadata store as it is and bind it to the superblock's epoch",
            );
            self.plan.rewrite_superblock |= fix;
        }
        if let Some(s) = state {
            if s.epoch != sb.epoch && Some(s.epoch) != sb.epoch.checked_add(1) {
                let fix = self.problem(
                    ProblemKind::EpochMismatch,
                    None,
                    format!(
                        "metadata store belongs to epoch {} but the superblock is at epoch {}: \
                         the store was {} (mounts refuse it)",
                        s.epoch,
                        sb.epoch,
                        if s.epoch < sb.epoch {
                            "rolled back (an older copy of meta/ put back) or replaced"
                        } else {
                            "replaced, or the superblock rolled back"
                        }
                    ),
                    Fixability::Unsafe,
                    "accept the metadata store as it is (a deliberate rollback) and bind it to the \
                     superblock's epoch",
                );
                self.plan.rewrite_superblock |= fix;
            }
        }
    }

    fn finish_without_store(mut self) -> Report {
        self.fill_paths();
        // Nothing is applied without a store except removing stray temporary files.
        if self.opts.mode.may_write() && !self.report.cancelled {
            let mut ok = true;
            for f in &self.plan.remove_files {
                ok &= self.root.as_ref().is_some_and(|r| r.remove_file(f).is_ok());
            }
            if ok {
                for i in std::mem::take(&mut self.planned) {
                    if let Some(p) = self.report.problems.get_mut(i) {
                        if p.kind == ProblemKind::StaleTemp {
                            p.fixed = true;
                            self.report.modified = true;
                        }
                    }
                }
            }
        }
        self.report
    }

    fn fill_paths(&mut self) {
        for p in &mut self.report.problems {
            if p.path.is_none() {
                if let Some(i) = p.ino {
                    p.path = self.model.paths.get(&i).cloned();
                }
            }
        }
    }

    // ---- pass 2 ----

    fn pass_records(&mut self, records: &Records, keys: &FsKeys) -> Result<()> {
        // Records are decoded as the scan reads them: nothing but the model is kept.
        let mut n = 0u64;
        let mut last = std::time::Instant::now();
        records.store().scan(&[], None, &mut |key, value| {
            n += 1;
            if let Err(e) = self.decode_record(records, keys, key, value) {
                let fix = self.problem(
                    ProblemKind::BadRecord,
                    record_ino(key),
                    format!("{}: {e}", key_name(key)),
                    Fixability::Unsafe,
                    "delete the record",
                );
                if fix {
                    self.plan.delete_keys.insert(key.to_vec());
                }
            }
            if n.is_multiple_of(RECORD_PROGRESS_EVERY) && last.elapsed().as_millis() >= 100 {
                self.ui.progress(2, n, 0);
                last = std::time::Instant::now();
            }
            Ok(true)
        })?;
        self.report.records = n;
        Ok(())
    }

    fn decode_record(
        &mut self,
        records: &Records,
        keys: &FsKeys,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let Some(&p) = key.first() else {
            return Err(Error::format("empty key"));
        };
        let known = [
            prefix::INODE,
            prefix::DIRENT,
            prefix::XATTR,
            prefix::CHUNK,
            prefix::INLINE,
            prefix::ORPHAN,
            prefix::RECLAIM,
            prefix::COUNTERS,
            prefix::STATE,
            prefix::INCARNATION,
            prefix::PREV_MARK,
        ];
        if !known.contains(&p) {
            let fix = self.problem(
                ProblemKind::UnknownRecord,
                None,
                format!("{}: unknown record type", key_name(key)),
                Fixability::Unsafe,
                "delete the record",
            );
            if fix {
                self.plan.delete_keys.insert(key.to_vec());
            }
            return Ok(());
        }
        let want_len = match p {
            prefix::INODE | prefix::INLINE | prefix::ORPHAN | prefix::RECLAIM => 9,
            prefix::DIRENT | prefix::XATTR => 25,
            prefix::CHUNK | prefix::PREV_MARK => 17,
            prefix::INCARNATION => 5,
            _ => 1,
        };
        if key.len() != want_len {
            return Err(Error::format(format!(
                "key of {} bytes, expected {want_len}",
                key.len()
            )));
        }
        let plain = records.open(key, value)?;
        let ino = record_ino(key).unwrap_or(0);
        match p {
            prefix::INODE => {
                let inode = Inode::decode(ino, &plain)?;
                self.model.inodes.insert(ino, inode);
            }
            prefix::DIRENT => {
                let dirent = Dirent::decode(&plain)?;
                let mut pseud = [0u8; 8];
                if let Some(s) = key.get(1..9) {
                    pseud.copy_from_slice(s);
                }
                self.model.entries.entry(pseud).or_default().push(EntryRec {
                    key: key.to_vec(),
                    dirent,
                });
            }
            prefix::XATTR => {
                let x = Xattr::decode(&plain)?;
                let mac = records::xattr_key(ino, &keys.names.xattr_key(ino, &x.name));
                if mac.as_slice() != key {
                    return Err(Error::integrity("xattr name does not match its key"));
                }
                self.model
                    .xattr_keys
                    .entry(ino)
                    .or_default()
                    .push(key.to_vec());
            }
            prefix::CHUNK => {
                let c = Chunk::decode(&plain)?;
                let idx = key
                    .get(9..17)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if c.entries.values().any(|e| e.prev.is_some()) {
                    self.model.prev_chunks.insert((ino, idx));
                }
                let sum = self.model.chunks.entry(ino).or_default();
                sum.records += 1;
                for (slot, e) in &c.entries {
                    sum.max_block = sum.max_block.max(block_index(idx, *slot));
                    self.model.max_gen = self.model.max_gen.max(e.cur.generation);
                    let prev = match e.prev {
                        Some(Some(p)) => Some(p.generation),
                        _ => None,
                    };
                    if let Some(p) = prev {
                        self.model.max_gen = self.model.max_gen.max(p);
                    }
                    for gen in std::iter::once(e.cur.generation).chain(prev) {
                        let k = incarnation_of(gen);
                        if k > 0 {
                            self.model.used_incarnations.entry(k).or_insert((ino, 0)).1 += 1;
                        }
                    }
                }
            }
            prefix::INLINE => {
                self.model.inline.insert(ino, plain.len() as u64);
            }
            prefix::ORPHAN => {
                if !plain.is_empty() {
                    return Err(Error::format("orphan record with contents"));
                }
                self.model.orphans.insert(ino);
            }
            prefix::RECLAIM => {
                if !plain.is_empty() {
                    return Err(Error::format("reclaim mark with contents"));
                }
                self.model.reclaims.insert(ino);
            }
            prefix::STATE => {
                self.model.state = Some(StoreState::decode(&plain)?);
            }
            prefix::PREV_MARK => {
                if !plain.is_empty() {
                    return Err(Error::format("previous-version mark with contents"));
                }
                if let Some(c) = records::chunk_of_key(key) {
                    self.model.prev_marks.insert(c);
                }
            }
            prefix::INCARNATION => {
                records::decode_incarnation(&plain)?;
                if let Some(k) = records::incarnation_of_key(key) {
                    self.model.incarnations.insert(k);
                }
            }
            _ => {
                self.model.counters = Some(Counters::decode(&plain)?);
            }
        }
        Ok(())
    }

    /// A previous-version mark belongs to a chunk record with a previous version (the mount
    /// resolves the chunks it marks; pass 5 resolves every chunk with one, marked or not).
    fn check_prev_marks(&mut self) {
        let stale: Vec<(u64, u64)> = self
            .model
            .prev_marks
            .difference(&self.model.prev_chunks)
            .copied()
            .collect();
        for (ino, c) in stale {
            let fix = self.problem(
                ProblemKind::StrayRecord,
                Some(ino),
                format!(
                    "previous-version mark of inode {ino} chunk {c}, which has no previous version"
                ),
                Fixability::Safe,
                "delete the mark",
            );
            if fix {
                self.plan
                    .delete_keys
                    .insert(records::prev_mark_key(ino, c).to_vec());
            }
        }
    }

    /// Every incarnation that block versions name has its salt record. Without it the keys
    /// of those blocks cannot be derived: pass 5 reports each of them as damaged, and reads
    /// return EIO. Nothing can recreate a salt.
    fn check_incarnations(&mut self) {
        let missing: Vec<(u32, (u64, u64))> = self
            .model
            .used_incarnations
            .iter()
            .filter(|(k, _)| !self.model.incarnations.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, (ino, count)) in missing {
            self.problem(
                ProblemKind::MissingIncarnation,
                Some(ino),
                format!(
                    "incarnation {k} has no salt record: {count} block version(s) written \
                     under it (the first in inode {ino}) cannot be verified"
                ),
                Fixability::None,
                "left; the blocks concerned are reported as damaged and read as EIO",
            );
        }
    }

    // ---- pass 3 ----

    fn pass_tree(&mut self, records: &Records, keys: &FsKeys) {
        self.check_root();
        self.check_counters();
        self.check_incarnations();
        self.check_prev_marks();
        // Directory pseudonyms → directory inode.
        let mut dir_of: HashMap<[u8; 8], u64> = HashMap::new();
        for (ino, i) in &self.model.inodes {
            if i.kind == FileKind::Dir {
                dir_of.insert(records.dir_pseudonym(*ino), *ino);
            }
        }
        let entries = std::mem::take(&mut self.model.entries);
        for (pseud, recs) in entries {
            let dir = dir_of.get(&pseud).copied();
            for EntryRec { key, dirent } in recs {
                let Some(dir) = dir else {
                    let fix = self.problem(
                        ProblemKind::StrayRecord,
                        Some(dirent.ino),
                        format!(
                            "{}: entry {:?} (inode {}) of a directory that does not exist",
                            key_name(&key),
                            String::from_utf8_lossy(&dirent.name),
                            dirent.ino
                        ),
                        Fixability::Unsafe,
                        "delete the entry (the inode it names is reconnected under /lost+found)",
                    );
                    if fix {
                        self.plan.delete_keys.insert(key);
                    }
                    continue;
                };
                let mac = keys.names.entry_key(dir, &dirent.name);
                if key.get(9..) != Some(mac.as_slice()) {
                    let fix = self.problem(
                        ProblemKind::BadRecord,
                        Some(dir),
                        format!("{}: entry name does not match its key", key_name(&key)),
                        Fixability::Unsafe,
                        "delete the record",
                    );
                    if fix {
                        self.plan.delete_keys.insert(key);
                    }
                    continue;
                }
                let name = String::from_utf8_lossy(&dirent.name).into_owned();
                let Some(target) = self.model.inodes.get(&dirent.ino) else {
                    let fix = self.problem(
                        ProblemKind::DanglingEntry,
                        Some(dir),
                        format!("entry {name:?} in directory {dir} names inode {}, which does not exist", dirent.ino),
                        Fixability::Safe,
                        "remove the entry",
                    );
                    if fix {
                        self.plan.delete_keys.insert(key);
                    }
                    continue;
                };
                if target.kind != dirent.kind {
                    let tkind = target.kind;
                    let fix = self.problem(
                        ProblemKind::EntryKindMismatch,
                        Some(dirent.ino),
                        format!(
                            "entry {name:?} in directory {dir} says {:?}, inode {} is {:?}",
                            dirent.kind, dirent.ino, tkind
                        ),
                        Fixability::Safe,
                        "set the entry's type from the inode",
                    );
                    if fix {
                        self.plan.put_dirents.push((
                            dir,
                            Dirent {
                                name: dirent.name.clone(),
                                ino: dirent.ino,
                                kind: tkind,
                            },
                        ));
                    }
                    self.model
                        .dir_entries
                        .entry(dir)
                        .or_default()
                        .insert(dirent.name, (dirent.ino, tkind));
                    continue;
                }
                self.model
                    .dir_entries
                    .entry(dir)
                    .or_default()
                    .insert(dirent.name, (dirent.ino, target.kind));
            }
        }
        self.walk_tree();
    }

    fn check_root(&mut self) {
        let ok = self
            .model
            .inodes
            .get(&ROOT_INO)
            .map(|i| i.kind == FileKind::Dir);
        if ok == Some(true) {
            return;
        }
        let fix = self.problem(
            ProblemKind::MissingRoot,
            Some(ROOT_INO),
            if ok.is_none() {
                "root inode missing".into()
            } else {
                "root inode is not a directory".into()
            },
            Fixability::Unsafe,
            "create a new, empty root directory (existing entries of / reattach to it)",
        );
        if fix {
            let now = Timestamp::now();
            let root = Inode::new(ROOT_INO, FileKind::Dir, 0o755, 0, 0, ROOT_INO, now);
            self.model.inodes.insert(ROOT_INO, root);
            self.plan.put_inodes.insert(ROOT_INO);
        }
    }

    fn check_counters(&mut self) {
        let max_ino = self
            .model
            .inodes
            .keys()
            .next_back()
            .copied()
            .unwrap_or(ROOT_INO);
        // A mount starts its incarnation above the counters; a salt record above them means
        // they were rolled back (the mount skips such incarnations, and so does this check).
        let max_gen = self.model.max_gen.max(
            self.model
                .incarnations
                .last()
                .map_or(0, |k| first_generation(*k)),
        );
        match self.model.counters {
            None => {
                let fix = self.problem(
                    ProblemKind::MissingCounters,
                    None,
                    "counters record missing (the filesystem cannot be mounted)".into(),
                    Fixability::Safe,
                    "recreate it above every inode number and block generation in use",
                );
                if fix {
                    self.model.counters = Some(Counters {
                        ino_reserved: max_ino + 1,
                        gen_reserved: max_gen + 1,
                    });
                    self.plan.put_counters = true;
                }
            }
            Some(c) if c.ino_reserved <= max_ino || c.gen_reserved <= max_gen => {
                let fix = self.problem(
                    ProblemKind::CountersBehind,
                    None,
                    format!(
                        "counters (next inode {}, next generation {}) are behind numbers in use \
                         (inode {max_ino}, generation {max_gen})",
                        c.ino_reserved, c.gen_reserved
                    ),
                    Fixability::Safe,
                    "raise the counters",
                );
                if fix {
                    self.model.counters = Some(Counters {
                        ino_reserved: c.ino_reserved.max(max_ino + 1),
                        gen_reserved: c.gen_reserved.max(max_gen + 1),
                    });
                    self.plan.put_counters = true;
                }
            }
            Some(_) => {}
        }
    }

    fn walk_tree(&mut self) {
        if !self.model.inodes.contains_key(&ROOT_INO) {
            return;
        }
        let mut w = Walk::default();
        w.parent_of.insert(ROOT_INO, ROOT_INO);
        self.model.paths.insert(ROOT_INO, "/".into());
        self.bfs(&mut w, ROOT_INO);

        // Orphans: unlinked-while-open inodes a crash left behind.
        for o in self.model.orphans.clone() {
            let key = records::ino_prefix(prefix::ORPHAN, o).to_vec();
            if !self.model.inodes.contains_key(&o) || w.reached.contains(&o) {
                let what = if w.reached.contains(&o) {
                    "is linked"
                } else {
                    "does not exist"
                };
                let fix = self.problem(
                    ProblemKind::StaleOrphan,
                    Some(o),
                    format!("orphan record for inode {o}, which {what}"),
                    Fixability::Safe,
                    "delete the orphan record",
                );
                if fix {
                    self.plan.delete_keys.insert(key);
                }
                continue;
            }
            let fix = self.problem(
                ProblemKind::OrphanInode,
                Some(o),
                format!("inode {o} was unlinked while open and not removed (crash)"),
                Fixability::Safe,
                "remove the inode and its data",
            );
            if fix {
                self.purge(o);
            } else {
                w.unattached.insert(o);
                self.model.orphan_inodes.insert(o);
            }
        }

        // Disconnected inodes: reconnect the tops of unreachable subtrees under /lost+found.
        loop {
            let remaining: BTreeSet<u64> = self
                .model
                .inodes
                .keys()
                .copied()
                .filter(|i| {
                    !w.reached.contains(i)
                        && !w.unattached.contains(i)
                        && !self.model.purged.contains(i)
                })
                .collect();
            if remaining.is_empty() {
                break;
            }
            let mut incoming: BTreeSet<u64> = BTreeSet::new();
            for (dir, ents) in &self.model.dir_entries {
                if remaining.contains(dir) {
                    incoming.extend(ents.values().map(|(i, _)| *i));
                }
            }
            let mut tops: Vec<u64> = remaining
                .iter()
                .copied()
                .filter(|i| !incoming.contains(i))
                .collect();
            if tops.is_empty() {
                tops.extend(remaining.first().copied());
            }
            for top in tops {
                if w.reached.contains(&top) {
                    continue;
                }
                self.reconnect(&mut w, top);
            }
        }

        // Link counts and parents.
        let inos: Vec<u64> = self.model.inodes.keys().copied().collect();
        for ino in inos {
            if w.unattached.contains(&ino) || self.model.purged.contains(&ino) {
                continue;
            }
            let Some(inode) = self.model.inodes.get(&ino) else {
                continue;
            };
            let (want, what) = if inode.kind == FileKind::Dir {
                (
                    2 + w.subdirs.get(&ino).copied().unwrap_or(0),
                    "2 + subdirectories",
                )
            } else {
                (w.refs.get(&ino).copied().unwrap_or(0), "entries naming it")
            };
            if u64::from(inode.nlink) != want {
                let have = inode.nlink;
                let fix = self.problem(
                    ProblemKind::WrongNlink,
                    Some(ino),
                    format!("inode {ino} has link count {have}, {what} = {want}"),
                    Fixability::Safe,
                    &format!("set the link count to {want}"),
                );
                if fix {
                    if let Some(i) = self.model.inodes.get_mut(&ino) {
                        i.nlink = u32::try_from(want).unwrap_or(u32::MAX);
                        self.plan.put_inodes.insert(ino);
                    }
                }
            }
            let Some(inode) = self.model.inodes.get(&ino) else {
                continue;
            };
            if inode.kind == FileKind::Dir {
                if let Some(&p) = w.parent_of.get(&ino) {
                    if inode.parent != p {
                        let have = inode.parent;
                        let fix = self.problem(
                            ProblemKind::WrongParent,
                            Some(ino),
                            format!("directory {ino} records parent {have}, but its entry is in directory {p}"),
                            Fixability::Safe,
                            &format!("set its parent to {p}"),
                        );
                        if fix {
                            if let Some(i) = self.model.inodes.get_mut(&ino) {
                                i.parent = p;
                                self.plan.put_inodes.insert(ino);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Breadth-first walk from `start` (already reached) over accepted entries.
    fn bfs(&mut self, w: &mut Walk, start: u64) {
        w.reached.insert(start);
        let mut queue = VecDeque::from([start]);
        while let Some(dir) = queue.pop_front() {
            let ents: Vec<(Vec<u8>, (u64, FileKind))> = self
                .model
                .dir_entries
                .get(&dir)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            let base = self.model.paths.get(&dir).cloned().unwrap_or_default();
            for (name, (ino, kind)) in ents {
                let path = join_path(&base, &name);
                if kind == FileKind::Dir {
                    if w.reached.contains(&ino) {
                        let fix = self.problem(
                            ProblemKind::ExtraDirLink,
                            Some(ino),
                            format!("{path}: another link to directory {ino} (a directory has exactly one entry)"),
                            Fixability::Unsafe,
                            "remove this entry",
                        );
                        if fix {
                            self.drop_entry(dir, &name);
                        } else {
                            *w.refs.entry(ino).or_default() += 1;
                        }
                        continue;
                    }
                    w.reached.insert(ino);
                    w.parent_of.insert(ino, dir);
                    *w.subdirs.entry(dir).or_default() += 1;
                    *w.refs.entry(ino).or_default() += 1;
                    self.model.paths.insert(ino, path);
                    queue.push_back(ino);
                } else {
                    w.reached.insert(ino);
                    *w.refs.entry(ino).or_default() += 1;
                    self.model.paths.entry(ino).or_insert(path);
                }
            }
        }
    }

    fn drop_entry(&mut self, dir: u64, name: &[u8]) {
        if let Some(m) = self.model.dir_entries.get_mut(&dir) {
            m.remove(name);
        }
        self.plan.delete_dirents.push((dir, name.to_vec()));
    }

    fn reconnect(&mut self, w: &mut Walk, ino: u64) {
        let kind = self
            .model
            .inodes
            .get(&ino)
            .map(|i| i.kind)
            .unwrap_or(FileKind::File);
        let fix = self.problem(
            ProblemKind::DisconnectedInode,
            Some(ino),
            format!("inode {ino} ({kind:?}) is not reachable from / and not an orphan"),
            Fixability::Safe,
            &format!("reconnect it as /lost+found/#{ino}"),
        );
        let lf = if fix { self.lost_found(w) } else { None };
        let Some(lf) = lf else {
            // Left alone: its subtree is walked so it is not reported again.
            w.unattached.insert(ino);
            self.bfs(w, ino);
            return;
        };
        let mut name = format!("#{ino}").into_bytes();
        let mut n = 1;
        while self
            .model
            .dir_entries
            .get(&lf)
            .is_some_and(|m| m.contains_key(&name))
        {
            name = format!("#{ino}.{n}").into_bytes();
            n += 1;
        }
        self.add_entry(w, lf, &name, ino, kind);
        if kind == FileKind::Dir {
            self.bfs(w, ino);
        }
    }

    fn add_entry(&mut self, w: &mut Walk, dir: u64, name: &[u8], ino: u64, kind: FileKind) {
        self.model
            .dir_entries
            .entry(dir)
            .or_default()
            .insert(name.to_vec(), (ino, kind));
        self.plan.put_dirents.push((
            dir,
            Dirent {
                name: name.to_vec(),
                ino,
                kind,
            },
        ));
        let base = self.model.paths.get(&dir).cloned().unwrap_or_default();
        self.model.paths.insert(ino, join_path(&base, name));
        *w.refs.entry(ino).or_default() += 1;
        w.reached.insert(ino);
        if kind == FileKind::Dir {
            *w.subdirs.entry(dir).or_default() += 1;
            w.parent_of.insert(ino, dir);
        }
    }

    /// The inode of /lost+found, creating it (in the plan) if needed.
    fn lost_found(&mut self, w: &mut Walk) -> Option<u64> {
        match self
            .model
            .dir_entries
            .get(&ROOT_INO)
            .and_then(|m| m.get(LOST_FOUND))
        {
            Some((ino, FileKind::Dir)) => return Some(*ino),
            Some(_) => return None,
            None => {}
        }
        let max_ino = self
            .model
            .inodes
            .keys()
            .next_back()
            .copied()
            .unwrap_or(ROOT_INO);
        let counters = self.model.counters.unwrap_or(Counters {
            ino_reserved: max_ino + 1,
            gen_reserved: 1,
        });
        let ino = counters.ino_reserved.max(max_ino + 1);
        self.model.counters = Some(Counters {
            ino_reserved: ino + 1,
            gen_reserved: counters.gen_reserved,
        });
        self.plan.put_counters = true;
        let now = Timestamp::now();
        let inode = Inode::new(ino, FileKind::Dir, 0o700, 0, 0, ROOT_INO, now);
        self.model.inodes.insert(ino, inode);
        self.plan.put_inodes.insert(ino);
        self.add_entry(w, ROOT_INO, LOST_FOUND, ino, FileKind::Dir);
        Some(ino)
    }

    /// Plans deleting every record and the object of `ino`.
    fn purge(&mut self, ino: u64) {
        self.plan
            .delete_keys
            .insert(records::inode_key(ino).to_vec());
        self.plan
            .delete_keys
            .insert(records::ino_prefix(prefix::ORPHAN, ino).to_vec());
        if self.model.inline.remove(&ino).is_some() {
            self.plan
                .delete_keys
                .insert(records::ino_prefix(prefix::INLINE, ino).to_vec());
        }
        if self.model.chunks.remove(&ino).is_some() {
            self.plan.delete_chunks.insert(ino);
        }
        for k in self.model.xattr_keys.remove(&ino).unwrap_or_default() {
            self.plan.delete_keys.insert(k);
        }
        if let Some(i) = self.model.inodes.remove(&ino) {
            if let Storage::Object(id) = i.storage {
                self.plan.remove_objects.insert(id);
            }
        }
        self.model.purged.insert(ino);
    }

    // ---- pass 4 ----

    fn pass_sizes(&mut self, records: &Records, bs: u64) {
        let inodes: Vec<Inode> = self.model.inodes.values().cloned().collect();
        for inode in &inodes {
            let ino = inode.ino;
            match inode.kind {
                FileKind::File => {
                    self.report.files += 1;
                    self.report.bytes = self.report.bytes.saturating_add(u128::from(inode.size));
                }
                FileKind::Dir => self.report.directories += 1,
                FileKind::Symlink => self.report.symlinks += 1,
                _ => self.report.special += 1,
            }
            // An orphan left in place goes with all its records when it is removed: records
            // that would be stray on a live file (e.g. an inline record an interrupted
            // conversion left) are part of that one problem.
            let orphan = self.model.orphan_inodes.contains(&ino);
            let has_inline = self.model.inline.contains_key(&ino) && !orphan;
            let has_chunks = self.model.chunks.get(&ino).is_some_and(|m| m.records > 0) && !orphan;
            if inode.kind != FileKind::File {
                if inode.storage != Storage::None {
                    self.problem(
                        ProblemKind::StorageMismatch,
                        Some(ino),
                        format!(
                            "inode {ino} is a {:?} but has file storage {:?}",
                            inode.kind, inode.storage
                        ),
                        Fixability::None,
                        "none",
                    );
                }
                if has_inline {
                    self.stray_inline(ino, "not a regular file");
                }
                if has_chunks {
                    self.stray_chunks(ino, "not a regular file");
                }
                continue;
            }
            match inode.storage {
                Storage::Inline => {
                    if has_chunks {
                        self.stray_chunks(ino, "an inline file");
                    }
                    match self.model.inline.get(&ino).copied() {
                        None if inode.size > 0 => {
                            self.problem(
                                ProblemKind::SizeMismatch,
                                Some(ino),
                                format!(
                                    "inode {ino}: size {} but its inline data record is missing",
                                    inode.size
                                ),
                                Fixability::None,
                                "none possible: the contents are lost (reads return zeros)",
                            );
                        }
                        Some(len) if len != inode.size => {
                            let small = inode.size <= records::INLINE_MAX;
                            let fix = self.problem(
                                ProblemKind::SizeMismatch,
                                Some(ino),
                                format!("inode {ino}: size {} but {len} bytes of inline data", inode.size),
                                if small { Fixability::Safe } else { Fixability::None },
                                "resize the inline data to the file size (what reads already return)",
                            );
                            if fix {
                                self.plan.resize_inline.insert(ino, inode.size);
                            }
                        }
                        _ => {}
                    }
                }
                Storage::None => {
                    // The core stores an empty inline record for an empty file without
                    // storage (truncated to 0): consistent, not stray.
                    let empty_inline = self.model.inline.get(&ino) == Some(&0);
                    if has_inline && !(empty_inline && inode.size == 0) {
                        self.stray_inline(ino, "a file without storage");
                    }
                    if has_chunks {
                        self.stray_chunks(ino, "a file without a data object");
                    }
                    if inode.size > 0 {
                        self.problem(
                            ProblemKind::SizeMismatch,
                            Some(ino),
                            format!("inode {ino}: size {} but no stored data", inode.size),
                            Fixability::None,
                            "none (reads return zeros)",
                        );
                    }
                }
                Storage::Object(_) => {
                    if has_inline {
                        self.stray_inline(ino, "a file stored in an object");
                    }
                    self.check_beyond_size(records, inode, bs);
                }
            }
        }
        // Records of inodes that do not exist.
        let missing = |m: &Model, i: &u64| !m.inodes.contains_key(i) && !m.purged.contains(i);
        let stray_chunks: Vec<u64> = self
            .model
            .chunks
            .keys()
            .copied()
            .filter(|i| missing(&self.model, i))
            .collect();
        for ino in stray_chunks {
            self.stray_chunks(ino, "a missing inode");
        }
        // A deleted inode's inline data with a reclaim mark is the mount's pending work, not
        // a problem: the next mount removes it.
        let stray_inline: Vec<u64> = self
            .model
            .inline
            .keys()
            .copied()
            .filter(|i| missing(&self.model, i) && !self.model.reclaims.contains(i))
            .collect();
        for ino in stray_inline {
            self.stray_inline(ino, "a missing inode");
        }
        let stale_reclaims: Vec<u64> = self
            .model
            .reclaims
            .iter()
            .copied()
            .filter(|i| self.model.inodes.contains_key(i))
            .collect();
        for ino in stale_reclaims {
            let fix = self.problem(
                ProblemKind::StaleReclaim,
                Some(ino),
                format!("reclaim mark for inode {ino}, which exists"),
                Fixability::Safe,
                "delete the mark (the inode keeps its inline data)",
            );
            if fix {
                self.model.reclaims.remove(&ino);
                self.plan
                    .delete_keys
                    .insert(records::ino_prefix(prefix::RECLAIM, ino).to_vec());
            }
        }
        let stray_x: Vec<u64> = self
            .model
            .xattr_keys
            .keys()
            .copied()
            .filter(|i| missing(&self.model, i))
            .collect();
        for ino in stray_x {
            let fix = self.problem(
                ProblemKind::StrayRecord,
                Some(ino),
                format!("xattrs of inode {ino}, which does not exist"),
                Fixability::Unsafe,
                "delete them",
            );
            if fix {
                for k in self.model.xattr_keys.remove(&ino).unwrap_or_default() {
                    self.plan.delete_keys.insert(k);
                }
            }
        }
    }

    fn stray_inline(&mut self, ino: u64, owner: &str) {
        let fix = self.problem(
            ProblemKind::StrayRecord,
            Some(ino),
            format!("inline data record of inode {ino}, which is {owner}"),
            Fixability::Unsafe,
            "delete the record",
        );
        if fix {
            self.model.inline.remove(&ino);
            self.plan
                .delete_keys
                .insert(records::ino_prefix(prefix::INLINE, ino).to_vec());
        }
    }

    fn stray_chunks(&mut self, ino: u64, owner: &str) {
        let n = self.model.chunks.get(&ino).map(|m| m.records).unwrap_or(0);
        let fix = self.problem(
            ProblemKind::StrayRecord,
            Some(ino),
            format!("{n} block map record(s) of inode {ino}, which is {owner}"),
            Fixability::Unsafe,
            "delete them",
        );
        if fix {
            self.model.chunks.remove(&ino);
            self.plan.delete_chunks.insert(ino);
        }
    }

    fn check_beyond_size(&mut self, records: &Records, inode: &Inode, bs: u64) {
        let ino = inode.ino;
        let keep = inode.size.div_ceil(bs);
        match self.model.chunks.get(&ino) {
            Some(sum) if sum.records > 0 && sum.max_block >= keep => {}
            _ => return,
        }
        // Rare: only now list the entries (from the store, not from memory).
        let mut beyond = Vec::new();
        let _ = scan_chunks(records, ino, keep / CHUNK_BLOCKS, &mut |c, ch| {
            for slot in ch.entries.keys() {
                let idx = block_index(c, *slot);
                if idx >= keep {
                    beyond.push(idx);
                }
            }
            true
        });
        if beyond.is_empty() {
            return;
        }
        let fix = self.problem_blocks(
            ProblemKind::BlocksBeyondSize,
            Some(ino),
            format!(
                "inode {ino}: {} block entries beyond its size {}",
                beyond.len(),
                inode.size
            ),
            beyond,
            Fixability::Safe,
            "drop the entries (the data beyond the end of the file is never read)",
        );
        if fix {
            self.plan.trim_chunks.insert(ino, keep);
            if let Some(sum) = self.model.chunks.get_mut(&ino) {
                sum.max_block = keep.saturating_sub(1);
            }
        }
    }

    // ---- pass 5 ----

    /// Returns the ids of the objects listed in the store.
    fn pass_objects(&mut self, parts: &Parts, records: &Records) -> Result<BTreeSet<ObjectId>> {
        let bs = u64::from(parts.superblock.block_size);
        let listed: BTreeMap<ObjectId, u64> = parts.objects.list()?.into_iter().collect();
        self.report.objects = listed.len() as u64;
        let mut owner: BTreeMap<ObjectId, u64> = BTreeMap::new();
        // One small record per object-backed file; the block entries are read per segment.
        let mut files: Vec<FileJob> = Vec::new();
        let object_files: Vec<(u64, ObjectId, u64)> = self
            .model
            .inodes
            .values()
            .filter_map(|i| match (i.kind, i.storage) {
                (FileKind::File, Storage::Object(id)) => Some((i.ino, id, i.size)),
                _ => None,
            })
            .collect();
        for (ino, id, size) in object_files {
            if let Some(other) = owner.get(&id) {
                let other = *other;
                self.problem(
                    ProblemKind::SharedObject,
                    Some(ino),
                    format!(
                        "inodes {other} and {ino} both refer to object {}; at most one of them can read it",
                        hex::encode(id)
                    ),
                    Fixability::None,
                    "none",
                );
            } else {
                owner.insert(id, ino);
            }
            let max_block = match self.model.chunks.get(&ino) {
                Some(sum) if sum.records > 0 => Some(sum.max_block),
                _ => None,
            };
            let len = listed.get(&id).copied();
            if let Some(len) = len {
                let need = size.div_ceil(bs).saturating_mul(bs);
                if len > need {
                    let fix = self.problem(
                        ProblemKind::ObjectTooLong,
                        Some(ino),
                        format!(
                            "object {} is {len} bytes, its file needs {need}",
                            hex::encode(id)
                        ),
                        Fixability::Safe,
                        &format!("truncate it to {need} bytes"),
                    );
                    if fix {
                        self.plan.truncate_objects.push((id, need));
                    }
                }
            }
            if let Some(max_block) = max_block {
                files.push(FileJob {
                    ino,
                    id,
                    len: len.unwrap_or(0),
                    missing: len.is_none(),
                    keep: self.plan.trim_chunks.get(&ino).copied(),
                    end_block: max_block.saturating_add(1),
                });
            }
        }
        for (id, len) in &listed {
            if owner.contains_key(id) || self.plan.remove_objects.contains(id) {
                continue;
            }
            let fix = self.problem(
                ProblemKind::UnreferencedObject,
                None,
                format!("object {} ({len} bytes) belongs to no inode", hex::encode(id)),
                Fixability::Unsafe,
                "delete it (its contents are lost: without an inode record nothing can be reconnected)",
            );
            if fix {
                self.plan.remove_objects.insert(*id);
            }
        }
        let results = verify_objects(parts, records, &files, bs, self.opts.threads, &mut *self.ui)?;
        for (job, res) in files.iter().zip(results) {
            self.report.blocks_verified += res.entries;
            // (An orphan goes as a whole: the mount or the repair purges it.)
            if !res.resolved.is_empty() && !job.missing && !self.model.orphans.contains(&job.ino) {
                self.report.previous_versions += res.resolved.len() as u64;
                if self.opts.mode.may_write() {
                    self.plan.resolve_prev.insert(job.ino, res.resolved.clone());
                }
            }
            if res.bad.is_empty() {
                continue;
            }
            let truncated = res.bad.iter().filter(|(_, t)| *t).count();
            let blocks: Vec<u64> = res.bad.iter().map(|(i, _)| *i).collect();
            if job.missing {
                let n = blocks.len();
                self.problem_blocks(
                    ProblemKind::MissingObject,
                    Some(job.ino),
                    format!(
                        "object {} of inode {} is missing: {n} stored blocks unreadable",
                        hex::encode(job.id),
                        job.ino
                    ),
                    blocks,
                    Fixability::None,
                    "none possible: reads of those blocks return EIO (restore the object from a backup)",
                );
                continue;
            }
            let mut listed_blocks: Vec<String> = blocks
                .iter()
                .take(MAX_LISTED_BLOCKS)
                .map(|b| b.to_string())
                .collect();
            if blocks.len() > MAX_LISTED_BLOCKS {
                listed_blocks.push(format!("… ({} in all)", blocks.len()));
            }
            let mut detail = format!(
                "inode {}: {} of {} blocks fail their integrity check (object {}): blocks {}",
                job.ino,
                blocks.len(),
                res.entries,
                hex::encode(job.id),
                listed_blocks.join(", ")
            );
            if truncated > 0 {
                detail.push_str(&format!(
                    "; {truncated} of them beyond the end of the truncated object"
                ));
            }
            if blocks.len() as u64 == res.entries && res.entries > 1 && truncated == 0 {
                detail
                    .push_str("; no block verifies: the object was replaced, swapped or replayed");
            }
            self.problem_blocks(
                ProblemKind::DamagedBlock,
                Some(job.ino),
                detail,
                blocks,
                Fixability::None,
                "left in place: reads of exactly these blocks return EIO, the rest of the file stays readable",
            );
        }
        Ok(listed.keys().copied().collect())
    }

    // ---- pass 6 ----

    fn pass_backing(&mut self, dir: &BackingDir, _listed: &BTreeSet<ObjectId>) {
        let root = dir.confined().clone();
        let Some(names) = sorted_entries(&root, None) else {
            return;
        };
        for (name, kind) in names {
            let is_dir = kind == Kind::Dir;
            let expected_dir =
                name == META_DIR || name == OBJECTS_DIR || name == crate::backing::BACKUP_DIR;
            let expected_file = name == SUPERBLOCK || name == SUPERBLOCK_BAK || name == LOCK_FILE;
            if (expected_dir && is_dir) || (expected_file && kind == Kind::File) {
                continue;
            }
            self.unknown_file(
                &name,
                kind,
                kind == Kind::File && (name == "superblock.tmp" || name == "superblock.bak.tmp"),
            );
        }
        let Some(subs) = sorted_entries(&root, Some(OBJECTS_DIR)) else {
            return;
        };
        for (sub, kind) in subs {
            let path = format!("{OBJECTS_DIR}/{sub}");
            let fanout = sub.len() == 2
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if !fanout || kind != Kind::Dir {
                self.unknown_file(&path, kind, kind == Kind::File && sub.ends_with(".tmp"));
                continue;
            }
            let Some(files) = sorted_entries(&root, Some(&path)) else {
                continue;
            };
            for (f, fkind) in files {
                let fpath = format!("{path}/{f}");
                let is_object_name = |n: &str| {
                    n.len() == 32
                        && n.starts_with(sub.as_str())
                        && n.bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                };
                if fkind == Kind::Dir
                    && f.strip_suffix(crate::objects::SEGMENT_DIR_SUFFIX)
                        .is_some_and(is_object_name)
                {
                    self.check_segment_dir(&root, &fpath);
                    continue;
                }
                let ok = fkind == Kind::File && is_object_name(&f);
                if !ok {
                    // `.cow`: a copy-on-write copy interrupted by a crash (format.md).
                    let leftover = f.ends_with(".tmp") || f.ends_with(".cow");
                    self.unknown_file(&fpath, fkind, fkind == Kind::File && leftover);
                }
            }
        }
    }

    /// The segment files of one object (`objects/XX/<id>.seg/<k>`, format.md).
    fn check_segment_dir(&mut self, root: &Confined, dir: &str) {
        let Some(files) = sorted_entries(root, Some(dir)) else {
            return;
        };
        for (f, kind) in files {
            if kind == Kind::File && crate::objects::parse_segment_name(&f).is_some() {
                continue;
            }
            let leftover = f.ends_with(".tmp") || f.ends_with(".cow");
            self.unknown_file(&format!("{dir}/{f}"), kind, kind == Kind::File && leftover);
        }
    }

    /// Reports `rel` (relative to the backing directory), which digimedfs did not create.
    fn unknown_file(&mut self, rel: &str, kind: Kind, tmp: bool) {
        let path = self
            .root
            .as_ref()
            .map_or_else(|| PathBuf::from(rel), |r| r.display(rel));
        if tmp {
            let fix = self.problem(
                ProblemKind::StaleTemp,
                None,
                format!(
                    "{}: temporary file left by an interrupted write",
                    path.display()
                ),
                Fixability::Safe,
                "delete it",
            );
            if fix {
                self.plan.remove_files.push(rel.to_string());
            }
        } else if kind == Kind::Symlink {
            self.problem(
                ProblemKind::UnknownFile,
                None,
                format!(
                    "{}: a symbolic link; digimedfs never creates one and never follows one \
                     (someone with access to the storage put it there)",
                    path.display()
                ),
                Fixability::None,
                "left alone: find out who created it, then remove it by hand (rm on the link \
                 itself)",
            );
        } else {
            self.problem(
                ProblemKind::UnknownFile,
                None,
                format!(
                    "{}: {} that is not part of a digimedfs backing directory",
                    path.display(),
                    match kind {
                        Kind::Dir => "a directory",
                        Kind::File => "a file",
                        _ => "a special file",
                    }
                ),
                Fixability::None,
                "left alone (not created by digimedfs; remove it by hand if it is not needed)",
            );
        }
    }

    // ---- apply ----

    fn apply(&mut self, parts: &Parts, records: &Records) -> Result<()> {
        let mut b = records.batch();
        for k in &self.plan.delete_keys {
            b.delete_key(k);
        }
        for (dir, name) in &self.plan.delete_dirents {
            b.delete_dirent(*dir, name);
        }
        for ino in &self.plan.put_inodes {
            if let Some(i) = self.model.inodes.get(ino) {
                b.put_inode(i)?;
            }
        }
        for (dir, d) in &self.plan.put_dirents {
            b.put_dirent(*dir, d)?;
        }
        for ino in &self.plan.delete_chunks {
            for k in records.keys_of(prefix::CHUNK, *ino)? {
                b.delete_chunk_key(&k);
            }
        }
        // Chunk records to rewrite: resolved previous versions first, then trims applied
        // to the same records (a chunk may need both; one put per record).
        let mut changed: BTreeMap<(u64, u64), Chunk> = BTreeMap::new();
        for (ino, held) in &self.plan.resolve_prev {
            if self.plan.delete_chunks.contains(ino) {
                continue;
            }
            let mut by_chunk: BTreeMap<u64, Vec<(u8, Held)>> = BTreeMap::new();
            for (idx, h) in held {
                by_chunk
                    .entry(idx / CHUNK_BLOCKS)
                    .or_default()
                    .push(((idx % CHUNK_BLOCKS) as u8, *h));
            }
            for (c, slots) in by_chunk {
                let mut ch = records.chunk(*ino, c)?;
                for (slot, h) in slots {
                    let Some(e) = ch.entries.get(&slot).copied() else {
                        continue;
                    };
                    match (h, e.prev) {
                        (Held::Prev, Some(Some(p))) => {
                            ch.entries.insert(slot, BlockEntry { cur: p, prev: None });
                        }
                        (Held::Hole, Some(None)) => {
                            ch.entries.remove(&slot);
                        }
                        _ => {
                            ch.entries.insert(
                                slot,
                                BlockEntry {
                                    cur: e.cur,
                                    prev: None,
                                },
                            );
                        }
                    }
                }
                changed.insert((*ino, c), ch);
            }
        }
        for (ino, keep) in &self.plan.trim_chunks {
            scan_chunks(records, *ino, keep / CHUNK_BLOCKS, &mut |c, ch| {
                let resolved = changed.remove(&(*ino, c));
                let was_resolved = resolved.is_some();
                let mut ch = resolved.unwrap_or(ch);
                let before = ch.entries.len();
                ch.entries.retain(|slot, _| block_index(c, *slot) < *keep);
                if was_resolved || ch.entries.len() != before {
                    changed.insert((*ino, c), ch);
                }
                true
            })?;
        }
        for ((ino, c), ch) in &changed {
            // An emptied chunk record is deleted.
            b.put_chunk(*ino, *c, ch);
        }
        for (ino, size) in &self.plan.resize_inline {
            if let Some(mut d) = records.inline(*ino)? {
                d.resize(usize::try_from(*size).unwrap_or(0), 0);
                b.put_inline(*ino, &d);
            }
        }
        if self.plan.put_counters {
            if let Some(c) = &self.model.counters {
                b.put_counters(c);
            }
        }
        b.commit()?;
        records.flush()?;
        if self.plan.create_objects_dir {
            if let Some(dir) = &parts.backing {
                dir.confined().create_dir_all(OBJECTS_DIR)?;
            }
        }
        // Objects go only once no durable record names them.
        for id in &self.plan.remove_objects {
            parts.objects.remove(id)?;
        }
        for (id, len) in &self.plan.truncate_objects {
            parts.objects.set_len(id, *len)?;
            parts.objects.sync(id)?;
        }
        if let Some(dir) = &parts.backing {
            for f in &self.plan.remove_files {
                dir.confined().remove_file(f)?;
            }
        }
        // The store's state record is rewritten for the repaired records and bound to the
        // epoch of the superblock written next (in-memory images keep theirs).
        let digest = records.digest()?;
        let epoch = match &parts.backing {
            Some(_) => parts.superblock.epoch + 1,
            None => parts.superblock.epoch,
        };
        let mut b = records.batch();
        b.put_state(&StoreState { epoch, digest });
        b.commit()?;
        records.flush()?;
        if let Some(dir) = &parts.backing {
            let mut sb = parts.superblock.clone();
            sb.meta_digest = digest;
            sb.flags |= FLAG_CLEAN | FLAG_STORE_STATE;
            sb.epoch += 1;
            dir.write_superblock(&sb.encode(&parts.keys.superblock)?)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Walk {
    reached: BTreeSet<u64>,
    unattached: BTreeSet<u64>,
    refs: HashMap<u64, u64>,
    subdirs: HashMap<u64, u64>,
    parent_of: HashMap<u64, u64>,
}

fn join_path(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

fn record_ino(key: &[u8]) -> Option<u64> {
    match key.first().copied() {
        Some(
            prefix::INODE
            | prefix::XATTR
            | prefix::CHUNK
            | prefix::INLINE
            | prefix::ORPHAN
            | prefix::RECLAIM,
        ) => key
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes),
        _ => None,
    }
}

/// Index of block `slot` of chunk `c` (saturating: chunk numbers come from disk).
fn block_index(c: u64, slot: u8) -> u64 {
    c.saturating_mul(CHUNK_BLOCKS)
        .saturating_add(u64::from(slot))
}

/// Scans the block map records of `ino` from chunk `from` on, skipping records that do not
/// open or decode (pass 2 reported those); `f` returns whether to go on.
fn scan_chunks(
    records: &Records,
    ino: u64,
    from: u64,
    f: &mut dyn FnMut(u64, Chunk) -> bool,
) -> Result<()> {
    let pfx = records::ino_prefix(prefix::CHUNK, ino);
    let after = if from == 0 {
        None
    } else {
        Some(records::chunk_key(ino, from - 1).to_vec())
    };
    records.store().scan(&pfx, after.as_deref(), &mut |k, v| {
        let Some(idx) = k
            .get(9..17)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
        else {
            return Ok(true);
        };
        if k.len() != 17 {
            return Ok(true);
        }
        match records.open(k, v).and_then(|p| Chunk::decode(&p)) {
            Ok(c) => Ok(f(idx, c)),
            Err(_) => Ok(true),
        }
    })
}

/// One object-backed file to verify (a small record: the entries stay in the store).
struct FileJob {
    ino: u64,
    id: ObjectId,
    /// Object length (0 when missing).
    len: u64,
    /// The object does not exist: entries must accept a hole.
    missing: bool,
    /// Entries at or beyond this block are being dropped (planned repair): not verified.
    keep: Option<u64>,
    /// One past the highest block index with an entry.
    end_block: u64,
}

/// A range of blocks of one file: the unit of work of a verification thread.
struct Segment {
    file: usize,
    first: u64,
    end: u64,
}

#[derive(Default)]
struct JobResult {
    /// Block entries checked.
    entries: u64,
    /// Failed blocks: (index, beyond the end of the object).
    bad: Vec<(u64, bool)>,
    /// Entries with a previous version: (index, the version the block holds).
    resolved: Vec<(u64, Held)>,
}

/// Verifies every block entry of `files`: each object is read once, front to back, in
/// [`READ_CHUNK`] reads, split into [`SEGMENT_BYTES`] segments that threads (one per core
/// unless `threads` says otherwise) take in order, so large files use every core and small
/// ones are read one after the other. Memory: one read buffer and one segment's entries per
/// thread, plus a small result per file. The calling thread reports progress in bytes.
fn verify_objects(
    parts: &Parts,
    records: &Records,
    files: &[FileJob],
    bs: u64,
    threads: usize,
    ui: &mut dyn CheckUi,
) -> Result<Vec<JobResult>> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let seg_blocks = (SEGMENT_BYTES / bs).max(1);
    let mut segments: Vec<Segment> = Vec::new();
    let mut total_bytes = 0u64;
    for (i, f) in files.iter().enumerate() {
        let end = f.keep.map_or(f.end_block, |k| k.min(f.end_block));
        // Blocks at or beyond the object's end read as nothing: one segment checks them all.
        let data_end = end.min(f.len.div_ceil(bs));
        if data_end / seg_blocks > SPARSE_SEGMENTS {
            // A huge sparse file (up to 2^63 bytes): only the segments its block map names
            // are read, not the holes between them.
            let mut firsts: BTreeSet<u64> = BTreeSet::new();
            scan_chunks(records, f.ino, 0, &mut |c, _| {
                let first_block = block_index(c, 0);
                if first_block >= end {
                    return false;
                }
                firsts.insert(first_block / seg_blocks * seg_blocks);
                true
            })?;
            for first in firsts {
                let seg_end = first.saturating_add(seg_blocks).min(end);
                let span = seg_end.min(data_end).saturating_sub(first);
                total_bytes = total_bytes.saturating_add(span.saturating_mul(bs));
                segments.push(Segment {
                    file: i,
                    first,
                    end: seg_end,
                });
            }
            continue;
        }
        total_bytes = total_bytes.saturating_add(f.len.min(data_end.saturating_mul(bs)));
        let mut first = 0;
        loop {
            let seg_end = if first + seg_blocks >= data_end {
                end
            } else {
                first + seg_blocks
            };
            segments.push(Segment {
                file: i,
                first,
                end: seg_end,
            });
            if seg_end >= end {
                break;
            }
            first = seg_end;
        }
    }
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    }
    .min(segments.len().max(1));
    // Block keys of every incarnation, derived from the salt records as reads derive them.
    let ring = KeyRing::new(parts.keys.clone());
    let next = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let out: std::sync::Mutex<Vec<Option<Result<JobResult>>>> =
        std::sync::Mutex::new((0..segments.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        let (alive, finished) = std::sync::mpsc::channel::<()>();
        for _ in 0..threads {
            let alive = alive.clone();
            let (next, done_bytes, out, segments, ring) =
                (&next, &done_bytes, &out, &segments, &ring);
            s.spawn(move || {
                let _alive = alive;
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seg) = segments.get(i) else { break };
                    let Some(file) = files.get(seg.file) else {
                        break;
                    };
                    let r =
                        verify_segment(parts, records, ring, file, seg, bs, &mut buf, done_bytes);
                    if let Some(slot) = out.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
                        *slot = Some(r);
                    }
                }
            });
        }
        drop(alive);
        // Every sender gone (all threads done) ends the wait at once.
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(std::time::Duration::from_millis(100))
        {
            ui.progress(5, done_bytes.load(Ordering::Relaxed), total_bytes);
        }
    });
    ui.progress(5, total_bytes, total_bytes);
    let mut results: Vec<JobResult> = (0..files.len()).map(|_| JobResult::default()).collect();
    let seg_results = out.into_inner().unwrap_or_else(|p| p.into_inner());
    for (seg, r) in segments.iter().zip(seg_results) {
        let r = r.unwrap_or_else(|| Err(Error::integrity("verification thread did not finish")))?;
        if let Some(res) = results.get_mut(seg.file) {
            res.entries += r.entries;
            res.bad.extend(r.bad);
            res.resolved.extend(r.resolved);
        }
    }
    for r in &mut results {
        r.bad.sort_unstable();
    }
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
fn verify_segment(
    parts: &Parts,
    records: &Records,
    ring: &KeyRing,
    job: &FileJob,
    seg: &Segment,
    bs: u64,
    buf: &mut Vec<u8>,
    done_bytes: &std::sync::atomic::AtomicU64,
) -> Result<JobResult> {
    let bsz = usize::try_from(bs).map_err(|_| Error::format("block size"))?;
    let per_read = (READ_CHUNK / bsz).max(1) as u64;
    let mut res = JobResult::default();
    // This segment's entries, from the store.
    let mut entries: Vec<(u64, BlockEntry)> = Vec::new();
    let end = job.keep.map_or(seg.end, |k| k.min(seg.end));
    scan_chunks(records, job.ino, seg.first / CHUNK_BLOCKS, &mut |c, ch| {
        if block_index(c, 0) >= end {
            return false;
        }
        for (slot, e) in &ch.entries {
            let idx = block_index(c, *slot);
            if idx >= seg.first && idx < end {
                entries.push((idx, *e));
            }
        }
        true
    })?;
    res.entries = entries.len() as u64;
    let held = |idx: u64, e: &BlockEntry, block: &[u8]| -> Held {
        let full = block.len() == bsz;
        let verifies = |v: &crate::format::records::BlockVersion| -> Result<bool> {
            // A version of an incarnation without a (readable) salt record cannot verify;
            // the missing record is its own problem (pass 3), a damaged one is a bad record.
            let k = incarnation_of(v.generation);
            Ok(full
                && ring
                    .get(k, || records.incarnation_salt(k))
                    .ok()
                    .flatten()
                    .is_some_and(|keys| {
                        keys.blocks
                            .verify(job.ino, idx, v.generation, block, &v.tag)
                    }))
        };
        // `verifies` never fails, so neither does the rule.
        held_version(e, block, verifies).unwrap_or(Held::Neither)
    };
    // Every block verifies against its current version or its previous one (as reads
    // accept); which one it holds is kept for the entries that still have a previous one.
    let mut check = |idx: u64, e: &BlockEntry, block: &[u8]| -> bool {
        let h = held(idx, e, block);
        if e.prev.is_some() {
            res.resolved.push((idx, h));
        }
        h != Held::Neither
    };
    // Entries whose block starts at or beyond the end of the object read as nothing.
    let within = |idx: u64| idx.checked_mul(bs).is_some_and(|off| off < job.len);
    for (idx, e) in entries.iter().filter(|(i, _)| !within(*i)) {
        if !check(*idx, e, &[]) {
            res.bad.push((*idx, !job.missing));
        }
    }
    if buf.len() < per_read as usize * bsz {
        buf.resize(per_read as usize * bsz, 0);
    }
    // Read the segment's range of the object front to back (whole reads, also across holes in
    // the block map, so the object is read sequentially).
    let data_end = end.min(job.len.div_ceil(bs));
    let mut pos = seg.first;
    let mut it = entries.iter().filter(|(i, _)| within(*i)).peekable();
    while pos < data_end {
        let n = per_read.min(data_end - pos);
        let off = pos * bs;
        let read_len = (job.len - off).min(n * bs);
        let slice = buf.get_mut(..read_len as usize).unwrap_or_default();
        let got = parts.objects.read_at(&job.id, off, slice)?;
        done_bytes.fetch_add(read_len, std::sync::atomic::Ordering::Relaxed);
        while let Some(&&(idx, e)) = it.peek() {
            if idx >= pos + n {
                break;
            }
            it.next();
            let lo = ((idx - pos) * bs) as usize;
            let have = got.saturating_sub(lo).min(bsz);
            let block = buf.get(lo..lo + have).unwrap_or_default();
            if !check(idx, &e, block) {
                res.bad.push((idx, have != bsz));
            }
        }
        pos += n;
    }
    Ok(res)
}

/// The entries of `rel` beneath `root` (`root` itself for `None`) as (name, kind), sorted by
/// name, never following a link; `None` if it cannot be listed.
fn sorted_entries(root: &Confined, rel: Option<&str>) -> Option<Vec<(String, Kind)>> {
    let entries = match rel {
        None => root.list().ok()?,
        Some(rel) => root.list_dir(rel).ok()??,
    };
    let mut out: Vec<(String, Kind)> = entries
        .into_iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}
