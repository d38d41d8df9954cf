//! The checker's model of the decoded store (filled by pass 2, adjusted as repairs are
//! decided so later passes see the repaired state), and the helpers that read block map
//! records back from the store. Block entries are never all held in memory.

use crate::filesystem::FileKind;
use crate::format::records::{
    self, prefix, Chunk, Counters, Dirent, Inode, StoreState, CHUNK_BLOCKS,
};
use crate::meta::Records;
use crate::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What pass 2 keeps of an inode's block map records.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ChunkSummary {
    /// Number of (decodable) chunk records.
    pub(super) records: u64,
    /// Highest block index with an entry.
    pub(super) max_block: u64,
}

/// One directory entry record as found.
pub(super) struct EntryRec {
    pub(super) key: Vec<u8>,
    pub(super) dirent: Dirent,
}

/// The decoded store, adjusted as repairs are decided.
#[derive(Default)]
pub(super) struct Model {
    pub(super) inodes: BTreeMap<u64, Inode>,
    /// Entry records by directory pseudonym.
    pub(super) entries: BTreeMap<[u8; 8], Vec<EntryRec>>,
    pub(super) xattr_keys: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Per inode, a summary of its block map records (the entries stay in the store: pass 5
    /// reads them again segment by segment, so memory does not grow with the data).
    pub(super) chunks: BTreeMap<u64, ChunkSummary>,
    /// Highest block generation in any block map record.
    pub(super) max_gen: u64,
    /// Incarnations with a salt record.
    pub(super) incarnations: BTreeSet<u32>,
    /// Chunks `(ino, chunk)` with a previous-version mark.
    pub(super) prev_marks: BTreeSet<(u64, u64)>,
    /// Chunks `(ino, chunk)` with an entry that has a previous version.
    pub(super) prev_chunks: BTreeSet<(u64, u64)>,
    /// Incarnations ≥ 1 that block versions name: (first inode seen, block versions).
    pub(super) used_incarnations: BTreeMap<u32, (u64, u64)>,
    /// Inline data lengths.
    pub(super) inline: BTreeMap<u64, u64>,
    pub(super) orphans: BTreeSet<u64>,
    /// Deleted inodes whose inline data record the mount removes later (reclaim marks).
    pub(super) reclaims: BTreeSet<u64>,
    /// Orphan inodes (unlinked while open) left in place; their records go with them.
    pub(super) orphan_inodes: BTreeSet<u64>,
    pub(super) counters: Option<Counters>,
    /// The store state record (epoch and running digest), if the store has one.
    pub(super) state: Option<StoreState>,
    /// Accepted entries per directory: name → (ino, kind).
    pub(super) dir_entries: BTreeMap<u64, BTreeMap<Vec<u8>, (u64, FileKind)>>,
    pub(super) paths: HashMap<u64, String>,
    pub(super) purged: BTreeSet<u64>,
}

/// Index of block `slot` of chunk `c` (saturating: chunk numbers come from disk).
pub(super) fn block_index(c: u64, slot: u8) -> u64 {
    c.saturating_mul(CHUNK_BLOCKS)
        .saturating_add(u64::from(slot))
}

/// Scans the block map records of `ino` from chunk `from` on, skipping records that do not
/// open or decode (pass 2 reported those); `f` returns whether to go on.
pub(super) fn scan_chunks(
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
