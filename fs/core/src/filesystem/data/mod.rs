//! File contents: reads, writes, truncation, hole punching, SEEK_DATA/SEEK_HOLE, and the
//! writeback protocol that keeps every block verifiable across crashes.
//!
//! Small files (up to [`INLINE_MAX`](crate::format::records::INLINE_MAX)) live in a sealed
//! inline record. Larger files live in a data object, one AES-256-XTS block per file block,
//! each block authenticated by a tag kept in the sealed chunk records of the metadata store.
//!
//! Writeback protocol (see docs/crypto.md, "Crash atomicity of data and tags"): a block's
//! entry holds its current version and, until that version is known durable, the version the
//! storage may still hold after a crash (the previous one, or "hole"). Before a block is
//! overwritten in place, the entry naming both versions is made durable (metadata flush); a
//! block whose entry still carries a previous version is never overwritten before a data
//! barrier (fdatasync) has made the current version durable. Barriers run at fsync, every few
//! seconds, and at unmount; they then clear the previous versions, which closes the replay
//! window they open. Previous versions that a crash or a fenced mount left are resolved by
//! the next read-write mount ([`Inner::resolve_prev`]), through the marks every chunk record
//! with one carries.

mod range;
mod read;
mod recovery;
mod write;
mod writeback;

use super::{lock, Inner, Node};
use crate::crypto::incarnation::incarnation_of;
use crate::format::records::{BlockEntry, Chunk, Storage, CHUNK_BLOCKS};
use crate::integrity::{held_version, Held};
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Nodes written back in one metadata batch. sled applies a batch under one epoch guard, so
/// the superseded copy of every tree page the batch touches stays allocated until the whole
/// batch is in (docs/performance.md, tuning table: `WRITEBACK_SLICE`).
const WRITEBACK_SLICE: usize = 256;
/// Largest end offset of file data: the largest file size (objects are split into segment
/// files below the backing filesystem's limit, see `crate::objects`).
pub(crate) const MAX_DATA_END: u64 = i64::MAX as u64;

/// The blocks of one node's writeback, from the commit of their entries until the object
/// holds them. The writeback releases the node once the entries are committed (so writers
/// and readers of the file are not held up by the metadata flush and the object write), and
/// the node keeps this for reads: the object may still hold the previous versions.
pub(crate) struct InFlight {
    /// `(block index, generation, ciphertext)`, by block index.
    blocks: Vec<(u64, u64, Box<[u8]>)>,
}

impl InFlight {
    /// Generation and ciphertext of block `idx`, if it is in flight.
    fn get(&self, idx: u64) -> Option<(u64, &[u8])> {
        let k = self
            .blocks
            .binary_search_by_key(&idx, |(i, _, _)| *i)
            .ok()?;
        self.blocks.get(k).map(|(_, g, c)| (*g, &c[..]))
    }
}

impl Inner {
    /// Chunk `c` of `ino`, shared with the cache: a 4 KiB read must not copy the whole block
    /// map of its chunk (that copy was 9% of the daemon's time under random 4 KiB reads).
    pub(crate) fn chunk(&self, ino: u64, c: u64) -> Result<Arc<Chunk>> {
        if let Some(ch) = lock(&self.cache.chunk_cache).get(&(ino, c)) {
            self.cache.chunk_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::clone(ch));
        }
        self.cache.chunk_misses.fetch_add(1, Ordering::Relaxed);
        let ch = Arc::new(self.records.chunk(ino, c)?);
        lock(&self.cache.chunk_cache).put((ino, c), Arc::clone(&ch));
        Ok(ch)
    }

    /// Chunk `c` of `ino` to change (a copy unless nothing else holds it).
    fn chunk_to_change(&self, ino: u64, c: u64) -> Result<Chunk> {
        Ok(Arc::unwrap_or_clone(self.chunk(ino, c)?))
    }

    fn cache_chunk(&self, ino: u64, c: u64, ch: Chunk) {
        lock(&self.cache.chunk_cache).put((ino, c), Arc::new(ch));
    }

    /// The entry of block `idx`, reusing `cur` when it already holds that block's chunk.
    fn entry(
        &self,
        ino: u64,
        idx: u64,
        cur: &mut Option<(u64, Arc<Chunk>)>,
    ) -> Result<Option<BlockEntry>> {
        let c = idx / CHUNK_BLOCKS;
        if cur.as_ref().map(|(cc, _)| *cc) != Some(c) {
            *cur = Some((c, self.chunk(ino, c)?));
        }
        Ok(cur
            .as_ref()
            .and_then(|(_, ch)| ch.entries.get(&((idx % CHUNK_BLOCKS) as u8)).copied()))
    }

    /// Verifies and decrypts one stored block in place. `got` is how many bytes the object had.
    fn open_block(
        &self,
        ino: u64,
        id: &ObjectId,
        idx: u64,
        e: &BlockEntry,
        buf: &mut [u8],
        got: usize,
    ) -> Result<()> {
        let full = got == buf.len();
        // An incarnation without a salt record: the version cannot be verified.
        let mut no_salt: Option<u64> = None;
        // The keys of the version that verified, kept for the decryption.
        let mut verified_with = None;
        let held = {
            let stored: &[u8] = buf;
            held_version(e, stored.get(..got).unwrap_or_default(), |v| {
                if !full {
                    return Ok(false);
                }
                let Some(keys) = self.keys_of(v.generation)? else {
                    no_salt.get_or_insert(v.generation);
                    return Ok(false);
                };
                let ok = keys.blocks.verify(ino, idx, v.generation, stored, &v.tag);
                if ok {
                    verified_with = Some((v.generation, keys));
                }
                Ok(ok)
            })?
        };
        match (held, verified_with) {
            (Held::Hole, _) => {
                buf.fill(0);
                return Ok(());
            }
            (Held::Cur | Held::Prev, Some((generation, keys))) => {
                keys.data.decrypt_block(ino, generation, buf)?;
                return Ok(());
            }
            _ => {}
        }
        let what = format!(
            "inode {ino} block {idx} (object {}, offset {}): {}",
            hex::encode(id),
            idx * self.block_size,
            match no_salt {
                Some(gen) => format!(
                    "generation {gen:#x} belongs to incarnation {}, which has no salt record",
                    incarnation_of(gen)
                ),
                None if full => "tag mismatch".to_string(),
                None => "object truncated".to_string(),
            }
        );
        tracing::warn!(ino, block = idx, object = %hex::encode(id), "integrity check failed: {what}");
        Err(Error::integrity(what))
    }

    fn load_inline(&self, n: &mut Node) -> Result<()> {
        if n.inline.is_none() {
            let mut data = match n.inode.storage {
                Storage::Inline => self.records.inline(n.inode.ino)?.unwrap_or_default(),
                _ => Vec::new(),
            };
            data.resize(n.inode.size as usize, 0);
            n.inline = Some(data);
        }
        Ok(())
    }
}
