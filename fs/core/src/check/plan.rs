//! The repair plan: every repair the passes decide is recorded here and nothing is written
//! until all passes ran; then `Checker::apply` writes it in one metadata batch, removes
//! objects and stray files once no record names them, rebinds the store state record to the
//! next epoch and rewrites the superblock clean.

use super::model::{block_index, scan_chunks};
use super::Checker;
use crate::backing::OBJECTS_DIR;
use crate::filesystem::Parts;
use crate::format::records::{prefix, BlockEntry, Chunk, Dirent, StoreState, CHUNK_BLOCKS};
use crate::format::superblock::{FLAG_CLEAN, FLAG_STORE_STATE};
use crate::integrity::Held;
use crate::meta::Records;
use crate::objects::ObjectId;
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};

/// Changes decided during analysis, applied at the end.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) delete_keys: BTreeSet<Vec<u8>>,
    pub(super) put_inodes: BTreeSet<u64>,
    pub(super) put_dirents: Vec<(u64, Dirent)>,
    pub(super) delete_dirents: Vec<(u64, Vec<u8>)>,
    /// Inode → number of blocks to keep: block entries at or beyond it are dropped.
    pub(super) trim_chunks: BTreeMap<u64, u64>,
    /// Inodes whose block map records are all deleted.
    pub(super) delete_chunks: BTreeSet<u64>,
    /// Inode → entries with a previous version and the version their block holds.
    pub(super) resolve_prev: BTreeMap<u64, Vec<(u64, Held)>>,
    /// Inode → new length of its inline data.
    pub(super) resize_inline: BTreeMap<u64, u64>,
    pub(super) put_counters: bool,
    pub(super) remove_objects: BTreeSet<ObjectId>,
    pub(super) truncate_objects: Vec<(ObjectId, u64)>,
    /// Stray files to remove, relative to the backing directory.
    pub(super) remove_files: Vec<String>,
    pub(super) create_objects_dir: bool,
    pub(super) rewrite_superblock: bool,
}

impl Plan {
    pub(super) fn is_empty(&self) -> bool {
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

    /// Chunk records to rewrite: resolved previous versions first, then trims applied to the
    /// same records (a chunk may need both; one put per record).
    fn rewritten_chunks(&self, records: &Records) -> Result<BTreeMap<(u64, u64), Chunk>> {
        let mut changed: BTreeMap<(u64, u64), Chunk> = BTreeMap::new();
        for (ino, held) in &self.resolve_prev {
            if self.delete_chunks.contains(ino) {
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
        for (ino, keep) in &self.trim_chunks {
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
        Ok(changed)
    }
}

impl Checker<'_> {
    pub(super) fn apply(&mut self, parts: &Parts, records: &Records) -> Result<()> {
        let mut b = records.batch();
        for k in &self.plan.delete_keys {
            b.delete_key(k);
        }
        for (dir, name) in &self.plan.delete_dirents {
            b.delete_dirent(*dir, name);
        }
        for ino in &self.plan.put_inodes {
            let Some(sum) = self.model.inodes.get(*ino) else {
                continue;
            };
            // A new inode, or a repaired one: the record as stored, with what the check changed.
            let i = match self.model.new_inodes.get(ino) {
                Some(i) => Some(i.clone()),
                None => records.inode(*ino)?,
            };
            let Some(mut i) = i else {
                continue;
            };
            i.nlink = sum.nlink;
            if let Some(p) = self.model.parents.get(*ino) {
                i.parent = p;
            }
            b.put_inode(&i)?;
        }
        for (dir, d) in &self.plan.put_dirents {
            b.put_dirent(*dir, d)?;
        }
        for ino in &self.plan.delete_chunks {
            for k in records.keys_of(prefix::CHUNK, *ino)? {
                b.delete_chunk_key(&k);
            }
        }
        let changed = self.plan.rewritten_chunks(records)?;
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
        bind_to_next_epoch(parts, records)
    }
}

/// Rewrites the store's state record for the repaired records, bound to the epoch of the
/// superblock written next (in-memory images keep theirs), then that superblock: the new
/// digest, the next epoch, clean.
fn bind_to_next_epoch(parts: &Parts, records: &Records) -> Result<()> {
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
