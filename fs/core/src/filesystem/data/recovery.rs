//! Mount-time resolution of the previous block versions that a crash or a fenced mount left
//! in chunk entries: afterwards every entry names exactly the version the object holds.

use super::WRITEBACK_SLICE;
use crate::filesystem::{lock, Inner};
use crate::format::records::{BlockEntry, BlockVersion, Storage, CHUNK_BLOCKS};
use crate::integrity::{held_version, Held};
use crate::{Error, Result};

impl Inner {
    /// Resolves the previous versions that a crash or a fenced mount left in chunk entries
    /// (found through their marks, so the cost grows with the chunks written back in the
    /// last seconds before, not with the files): makes each such object durable, reads every
    /// block whose entry has a `prev`, and keeps exactly the version the object holds (the
    /// current one, the previous one, or a hole). A block that holds neither keeps only its
    /// current version: it is damaged, and no older version may become acceptable later.
    /// Without this, storage could put a previous version back (or zero a block whose
    /// previous state was a hole) at any time after the crash and reads would accept it.
    pub(crate) fn resolve_prev(&self) -> Result<()> {
        let marks = self.records.prev_marks()?;
        if marks.is_empty() {
            return Ok(());
        }
        let bs = self.block_size;
        let bsz = usize::try_from(bs).map_err(|_| Error::format("block size"))?;
        let mut buf = vec![0u8; bsz];
        let mut synced = std::collections::HashSet::new();
        let (mut kept_cur, mut kept_prev, mut holes, mut damaged) = (0u64, 0u64, 0u64, 0u64);
        for part in marks.chunks(WRITEBACK_SLICE) {
            let mut b = self.records.batch();
            for &(ino, c) in part {
                let mut ch = self.records.chunk(ino, c)?;
                let object = match self.records.inode(ino)?.map(|i| i.storage) {
                    Some(Storage::Object(id)) => Some(id),
                    _ => None,
                };
                let slots: Vec<u8> = ch
                    .entries
                    .iter()
                    .filter(|(_, e)| e.prev.is_some())
                    .map(|(s, _)| *s)
                    .collect();
                if let Some(id) = object.filter(|_| !slots.is_empty()) {
                    if synced.insert(id) {
                        self.objects.sync(&id)?;
                    }
                    for slot in slots {
                        let idx = c * CHUNK_BLOCKS + u64::from(slot);
                        let Some(e) = ch.entries.get(&slot).copied() else {
                            continue;
                        };
                        buf.fill(0);
                        let got = self.objects.read_at(&id, idx * bs, &mut buf)?;
                        let holds = |v: &BlockVersion| -> Result<bool> {
                            Ok(got == bsz
                                && self.keys_of(v.generation)?.is_some_and(|k| {
                                    k.blocks.verify(ino, idx, v.generation, &buf, &v.tag)
                                }))
                        };
                        let stored = buf.get(..got).unwrap_or_default();
                        let keep = match held_version(&e, stored, holds)? {
                            Held::Cur => {
                                kept_cur += 1;
                                Some(e.cur)
                            }
                            Held::Prev => {
                                kept_prev += 1;
                                e.prev.flatten()
                            }
                            Held::Hole => {
                                holes += 1;
                                None
                            }
                            Held::Neither => {
                                damaged += 1;
                                tracing::warn!(
                                    ino,
                                    block = idx,
                                    object = %hex::encode(id),
                                    "block holds neither its current nor its previous \
                                     version; only the current one stays acceptable"
                                );
                                Some(e.cur)
                            }
                        };
                        match keep {
                            Some(v) => {
                                ch.entries.insert(slot, BlockEntry { cur: v, prev: None });
                            }
                            None => {
                                ch.entries.remove(&slot);
                            }
                        }
                    }
                } else {
                    // No object-backed inode owns the chunk (fsck reports the records):
                    // nothing to read, and no previous version stays acceptable.
                    for e in ch.entries.values_mut() {
                        e.prev = None;
                    }
                }
                b.put_chunk(ino, c, &ch);
                lock(&self.cache.chunk_cache).pop(&(ino, c));
            }
            b.commit()?;
        }
        tracing::info!(
            chunks = marks.len(),
            kept_cur,
            kept_prev,
            holes,
            damaged,
            "resolved previous block versions left by an earlier mount"
        );
        Ok(())
    }
}
