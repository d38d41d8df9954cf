//! The checker's model of the decoded store (filled by passes 2 and 3, adjusted as repairs
//! are decided so later passes see the repaired state), and the helpers that read block map
//! records back from the store. Memory per file is a few fixed-size fields in sorted vectors
//! (an inode summary, an inline length, each accepted entry with its name in one shared
//! buffer, the walk's state); records, names of rejected entries and paths are not kept (a
//! path is built from the walk when a problem is reported). Block entries are never all held
//! in memory.

use crate::filesystem::FileKind;
use crate::format::records::{
    self, prefix, Chunk, Counters, Inode, Storage, StoreState, CHUNK_BLOCKS,
};
use crate::meta::Records;
use crate::objects::ObjectId;
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

/// Where a regular file's contents live, without the object id (kept apart, for the few
/// inodes that have one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StorageKind {
    None,
    Inline,
    Object,
}

/// What the checker keeps of an inode record: the fields later passes check or repair. The
/// rest of the record stays in the store; a repair reads it back (see `Checker::apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InodeSum {
    pub(super) size: u64,
    pub(super) nlink: u32,
    pub(super) kind: FileKind,
    pub(super) storage: StorageKind,
}

impl InodeSum {
    /// The summary of `i`, and its object id if it has one.
    pub(super) fn of(i: &Inode) -> (InodeSum, Option<ObjectId>) {
        let (storage, id) = match i.storage {
            Storage::None => (StorageKind::None, None),
            Storage::Inline => (StorageKind::Inline, None),
            Storage::Object(id) => (StorageKind::Object, Some(id)),
        };
        let sum = InodeSum {
            size: i.size,
            nlink: i.nlink,
            kind: i.kind,
            storage,
        };
        (sum, id)
    }
}

/// A map from inode number to a small value, as one sorted vector: records arrive in key
/// order, so filling it is a push per record; lookups are binary searches. Removed keys stay
/// as dead slots (repairs remove few; a slot never moves while the checker walks the tree).
pub(super) struct InoMap<V> {
    keys: Vec<u64>,
    vals: Vec<V>,
    live: Vec<bool>,
}

impl<V> Default for InoMap<V> {
    fn default() -> Self {
        InoMap {
            keys: Vec::new(),
            vals: Vec::new(),
            live: Vec::new(),
        }
    }
}

impl<V: Copy> InoMap<V> {
    /// The slot of `k`, live or dead.
    pub(super) fn slot(&self, k: u64) -> Option<usize> {
        self.keys.binary_search(&k).ok()
    }

    /// The slot of live key `k`.
    pub(super) fn live_slot(&self, k: u64) -> Option<usize> {
        self.slot(k).filter(|s| self.live.get(*s) == Some(&true))
    }

    pub(super) fn insert(&mut self, k: u64, v: V) {
        if self.keys.last().is_none_or(|last| *last < k) {
            self.keys.push(k);
            self.vals.push(v);
            self.live.push(true);
            return;
        }
        match self.keys.binary_search(&k) {
            Ok(s) => {
                if let (Some(val), Some(live)) = (self.vals.get_mut(s), self.live.get_mut(s)) {
                    *val = v;
                    *live = true;
                }
            }
            Err(s) => {
                self.keys.insert(s, k);
                self.vals.insert(s, v);
                self.live.insert(s, true);
            }
        }
    }

    pub(super) fn get(&self, k: u64) -> Option<V> {
        self.live_slot(k).and_then(|s| self.vals.get(s).copied())
    }

    pub(super) fn get_mut(&mut self, k: u64) -> Option<&mut V> {
        let s = self.live_slot(k)?;
        self.vals.get_mut(s)
    }

    pub(super) fn contains_key(&self, k: u64) -> bool {
        self.live_slot(k).is_some()
    }

    pub(super) fn remove(&mut self, k: u64) -> Option<V> {
        let s = self.live_slot(k)?;
        if let Some(l) = self.live.get_mut(s) {
            *l = false;
        }
        self.vals.get(s).copied()
    }

    /// The live entry in slot `s`.
    pub(super) fn at(&self, s: usize) -> Option<(u64, V)> {
        if self.live.get(s) != Some(&true) {
            return None;
        }
        Some((*self.keys.get(s)?, *self.vals.get(s)?))
    }

    /// Number of slots (live and dead): `at` takes `0..slots()`.
    pub(super) fn slots(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        (0..self.slots()).filter_map(|s| self.at(s))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub(super) fn last_key(&self) -> Option<u64> {
        (0..self.slots())
            .rev()
            .find_map(|s| self.at(s).map(|(k, _)| k))
    }

    /// Bytes the map holds on the heap.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<u64>()
            + self.vals.capacity() * std::mem::size_of::<V>()
            + self.live.capacity()
    }
}

/// A name in [`Names`]: offset (40 bits) and length (24 bits) in one word.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NameRef(u64);

/// Longest name kept whole (names are checked against their key before they are kept; a
/// longer one, which no directory can hold, is shown cut in paths).
const NAME_KEPT: usize = (1 << 24) - 1;

/// Every accepted directory entry name, back to back in one buffer (a name costs its bytes
/// and an 8-byte reference, not an allocation).
#[derive(Default)]
pub(super) struct Names {
    buf: Vec<u8>,
}

impl Names {
    pub(super) fn add(&mut self, name: &[u8]) -> NameRef {
        let name = name.get(..NAME_KEPT).unwrap_or(name);
        let r = NameRef(((self.buf.len() as u64) << 24) | name.len() as u64);
        self.buf.extend_from_slice(name);
        r
    }

    pub(super) fn get(&self, r: NameRef) -> &[u8] {
        let start = usize::try_from(r.0 >> 24).unwrap_or(usize::MAX);
        let len = (r.0 & NAME_KEPT as u64) as usize;
        start
            .checked_add(len)
            .and_then(|end| self.buf.get(start..end))
            .unwrap_or_default()
    }
}

/// An accepted directory entry: its directory, the inode and type it names, its name (in
/// [`Names`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct EntryRec {
    pub(super) dir: u64,
    pub(super) ino: u64,
    pub(super) name: NameRef,
    pub(super) kind: FileKind,
    /// Still an entry of `dir` (a repair may drop one).
    pub(super) live: bool,
}

/// The xattr records found, as (inode, name MAC) in key order: 24 bytes each, the key is
/// rebuilt from them when a repair deletes the records.
#[derive(Default)]
pub(super) struct XattrKeys {
    keys: Vec<(u64, [u8; 16])>,
    /// Inodes whose records were taken by [`XattrKeys::take`].
    taken: BTreeSet<u64>,
}

impl XattrKeys {
    /// Adds xattr record `mac` of `ino` (records come in key order).
    pub(super) fn push(&mut self, ino: u64, mac: [u8; 16]) {
        self.keys.push((ino, mac));
    }

    /// The inodes with xattr records, ascending, each once.
    pub(super) fn inos(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for (ino, _) in &self.keys {
            if out.last() != Some(ino) && !self.taken.contains(ino) {
                out.push(*ino);
            }
        }
        out
    }

    /// The keys of the xattr records of `ino`, once (later calls return none).
    pub(super) fn take(&mut self, ino: u64) -> Vec<Vec<u8>> {
        if !self.taken.insert(ino) {
            return Vec::new();
        }
        let lo = self.keys.partition_point(|(i, _)| *i < ino);
        let hi = self.keys.partition_point(|(i, _)| *i <= ino);
        self.keys
            .get(lo..hi)
            .unwrap_or_default()
            .iter()
            .map(|(i, mac)| records::xattr_key(*i, mac).to_vec())
            .collect()
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<(u64, [u8; 16])>()
    }
}

/// The decoded store, adjusted as repairs are decided.
#[derive(Default)]
pub(super) struct Model {
    pub(super) inodes: InoMap<InodeSum>,
    /// Object ids of the inodes stored in an object.
    pub(super) object_ids: InoMap<ObjectId>,
    /// The parent each directory records.
    pub(super) parents: InoMap<u64>,
    /// Inodes this check creates (root, lost+found): written whole by a repair.
    pub(super) new_inodes: BTreeMap<u64, Inode>,
    /// The accepted entries (pass 3), sorted by directory and name (the order the walk
    /// visits them).
    pub(super) entries: Vec<EntryRec>,
    /// Entries a repair adds (under /lost+found), in the order added.
    pub(super) added_entries: Vec<EntryRec>,
    /// Indices in `added_entries` by directory, and by directory and name.
    pub(super) added_by_dir: HashMap<u64, Vec<usize>>,
    pub(super) added_by_name: HashMap<(u64, Vec<u8>), usize>,
    pub(super) names: Names,
    pub(super) xattr_keys: XattrKeys,
    /// Per inode, a summary of its block map records (the entries stay in the store: pass 5
    /// reads them again segment by segment, so memory does not grow with the data).
    pub(super) chunks: InoMap<ChunkSummary>,
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
    /// Inline data lengths (an inline record holds at most `INLINE_MAX` bytes; a longer one
    /// counts as `u32::MAX`).
    pub(super) inline: InoMap<u32>,
    pub(super) orphans: BTreeSet<u64>,
    /// Deleted inodes whose inline data record the mount removes later (reclaim marks).
    pub(super) reclaims: BTreeSet<u64>,
    /// Orphan inodes (unlinked while open) left in place; their records go with them.
    pub(super) orphan_inodes: BTreeSet<u64>,
    pub(super) counters: Option<Counters>,
    /// The store state record (epoch and running digest), if the store has one.
    pub(super) state: Option<StoreState>,
    /// What the walk from the root found (pass 3); paths are derived from it.
    pub(super) walk: Option<Walk>,
    pub(super) purged: BTreeSet<u64>,
}

/// How the walk reached an inode: not (yet), as the root, or through an entry.
pub(super) const NO_PATH: u32 = 0;
pub(super) const ROOT_PATH: u32 = 1;

/// What the walk has found, per inode slot of [`Model::inodes`] (dense vectors) and per
/// directory.
#[derive(Default)]
pub(super) struct Walk {
    /// Per slot: reached by the walk.
    pub(super) reached: Vec<bool>,
    /// Per slot: left out of the tree on purpose (an orphan, a disconnected inode left).
    pub(super) unattached: Vec<bool>,
    /// Per slot: entries naming the inode.
    pub(super) refs: Vec<u32>,
    /// Per slot: the entry its path goes through (`2 + entry id`), [`ROOT_PATH`] or
    /// [`NO_PATH`]. Entry ids number `Model::entries`, then `Model::added_entries`.
    pub(super) path: Vec<u32>,
    /// Per directory: subdirectories found.
    pub(super) subdirs: HashMap<u64, u64>,
    /// Per directory: the directory whose entry the walk reached it through.
    pub(super) parent_of: HashMap<u64, u64>,
}

impl Walk {
    /// Makes room for slot `s` (an inode added during the walk).
    pub(super) fn grow(&mut self, slots: usize) {
        if self.reached.len() < slots {
            self.reached.resize(slots, false);
            self.unattached.resize(slots, false);
            self.refs.resize(slots, 0);
            self.path.resize(slots, NO_PATH);
        }
    }
}

impl Model {
    /// The storage of inode `ino` (summary `sum`), with its object id.
    pub(super) fn storage_of(&self, ino: u64, sum: &InodeSum) -> Storage {
        match sum.storage {
            StorageKind::None => Storage::None,
            StorageKind::Inline => Storage::Inline,
            StorageKind::Object => Storage::Object(self.object_ids.get(ino).unwrap_or_default()),
        }
    }

    /// Entry `id` (see [`Walk::path`]).
    pub(super) fn entry(&self, id: usize) -> Option<&EntryRec> {
        match id.checked_sub(self.entries.len()) {
            None => self.entries.get(id),
            Some(a) => self.added_entries.get(a),
        }
    }

    /// Entry ids of directory `dir`, in walk order: its records by name, then added ones.
    pub(super) fn entry_ids_of(&self, dir: u64) -> Vec<usize> {
        let lo = self.entries.partition_point(|e| e.dir < dir);
        let hi = self.entries.partition_point(|e| e.dir <= dir);
        let mut ids: Vec<usize> = (lo..hi).collect();
        let n = self.entries.len();
        if let Some(added) = self.added_by_dir.get(&dir) {
            ids.extend(added.iter().map(|i| n + i));
        }
        ids.retain(|i| self.entry(*i).is_some_and(|e| e.live));
        ids
    }

    /// The live entry named `name` in directory `dir`.
    pub(super) fn lookup(&self, dir: u64, name: &[u8]) -> Option<&EntryRec> {
        let lo = self.entries.partition_point(|e| e.dir < dir);
        let hi = self.entries.partition_point(|e| e.dir <= dir);
        let found = self.entries.get(lo..hi).and_then(|range| {
            range
                .binary_search_by(|e| self.names.get(e.name).cmp(name))
                .ok()
                .and_then(|i| range.get(i))
        });
        found.filter(|e| e.live).or_else(|| {
            self.added_by_name
                .get(&(dir, name.to_vec()))
                .and_then(|i| self.added_entries.get(*i))
                .filter(|e| e.live)
        })
    }

    /// Adds an entry (a repair's); returns its id.
    pub(super) fn add_entry(&mut self, dir: u64, name: &[u8], ino: u64, kind: FileKind) -> usize {
        let name_ref = self.names.add(name);
        let i = self.added_entries.len();
        self.added_entries.push(EntryRec {
            dir,
            ino,
            name: name_ref,
            kind,
            live: true,
        });
        self.added_by_dir.entry(dir).or_default().push(i);
        self.added_by_name.insert((dir, name.to_vec()), i);
        self.entries.len() + i
    }

    /// The path of `ino` as the walk reached it, if it did (built on demand from the
    /// entries the walk went through, so no path is kept per inode).
    pub(super) fn path_of(&self, ino: u64) -> Option<String> {
        let walk = self.walk.as_ref()?;
        let mut names: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        let base = loop {
            let via = self
                .inodes
                .slot(cur)
                .and_then(|s| walk.path.get(s).copied())
                .unwrap_or(NO_PATH);
            match via {
                NO_PATH if names.is_empty() => return None,
                NO_PATH => break "",
                ROOT_PATH => break "/",
                id => {
                    let e = self.entry(id as usize - 2)?;
                    names.push(self.names.get(e.name));
                    cur = e.dir;
                    // Paths are assigned parent first, so this ends; the bound is a guard.
                    if names.len() > self.inodes.slots() + self.added_entries.len() {
                        return None;
                    }
                }
            }
        };
        let mut path = base.to_string();
        for name in names.iter().rev() {
            path = join_path(&path, name);
        }
        Some(path)
    }

    /// Bytes the per-file structures hold on the heap (inodes, inline lengths, entries and
    /// their names, the walk's per-inode state).
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        let walk = self.walk.as_ref().map_or(0, |w| {
            w.reached.capacity()
                + w.unattached.capacity()
                + w.refs.capacity() * 4
                + w.path.capacity() * 4
                + (w.subdirs.capacity() + w.parent_of.capacity()) * 16
        });
        self.inodes.heap_bytes()
            + self.chunks.heap_bytes()
            + self.xattr_keys.heap_bytes()
            + self.object_ids.heap_bytes()
            + self.parents.heap_bytes()
            + self.inline.heap_bytes()
            + (self.entries.capacity() + self.added_entries.capacity())
                * std::mem::size_of::<EntryRec>()
            + self.names.buf.capacity()
            + walk
    }
}

pub(super) fn join_path(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
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
