//! What a check reports: the kinds of problem, their fixability, and the [`Report`] a check
//! returns. Plain data; the kinds' snake_case names are stable (JSON output, messages).

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
