//! Writeback of buffered blocks and the data barrier: every block entry is durable before its
//! ciphertext can reach storage, and a block whose entry still names a previous version is
//! never overwritten before a barrier made the current version durable (see the parent
//! module's docs).

use super::{InFlight, WRITEBACK_SLICE};
use crate::crypto::incarnation::BlockKeys;
use crate::crypto::TAG_LEN;
use crate::filesystem::{lock, Inner, Node, NodeRef};
use crate::format::records::{BlockEntry, BlockVersion, Chunk, Storage, CHUNK_BLOCKS};
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest `pwrite` of consecutive ciphertext blocks to an object. Larger writes cost far
/// more kernel time copying into the backing file's page cache (docs/performance.md, tuning
/// table: `MAX_WRITE_RUN`).
pub(super) const MAX_WRITE_RUN: usize = 128 << 10;

/// Ciphertext of one node ready to be written after its entries are durable.
pub(super) struct Prepared {
    ino: u64,
    id: ObjectId,
    blocks: Arc<InFlight>,
    chunks: Vec<u64>,
}

/// A block being written back: index, generation, plaintext (ciphertext after sealing), tag.
pub(super) type SealItem = (u64, u64, Box<[u8]>, [u8; TAG_LEN]);

impl Inner {
    /// Writes a node's dirty state back to storage (not necessarily durable).
    pub(crate) fn writeback(&self, node: &NodeRef) -> Result<()> {
        let ino = lock(node).inode.ino;
        self.writeback_nodes(vec![(ino, node.clone())])
    }

    /// Writes back several nodes, [`WRITEBACK_SLICE`] at a time, each slice in one cycle: one
    /// metadata batch, one metadata flush (if the slice has data), then the ciphertext. Every
    /// block entry is durable before its data can reach storage, so no ciphertext exists on
    /// storage that its entry does not describe (see the module docs). The nodes are released
    /// once the batch is committed; until their data is written, their blocks in flight are
    /// read from memory ([`InFlight`]), never from the object.
    pub(crate) fn writeback_nodes(&self, nodes: Vec<(u64, NodeRef)>) -> Result<()> {
        let wb = lock(&self.wb_lock);
        self.writeback_nodes_locked(&wb, nodes)
    }

    /// [`Inner::writeback_nodes`] for a caller that holds `wb_lock` (`_wb` is its guard).
    pub(crate) fn writeback_nodes_locked(
        &self,
        _wb: &std::sync::MutexGuard<'_, ()>,
        mut nodes: Vec<(u64, NodeRef)>,
    ) -> Result<()> {
        nodes.sort_by_key(|(i, _)| *i);
        nodes.dedup_by_key(|(i, _)| *i);
        for slice in nodes.chunks(WRITEBACK_SLICE) {
            self.writeback_slice(slice)?;
        }
        Ok(())
    }

    /// One cycle of [`Inner::writeback_nodes`]; the caller holds `wb_lock`, so no other
    /// writeback, truncation, hole punch or deletion touches these objects until it returns.
    pub(super) fn writeback_slice(&self, nodes: &[(u64, NodeRef)]) -> Result<()> {
        let mut locked: Vec<(&NodeRef, std::sync::MutexGuard<'_, Node>)> =
            Vec::with_capacity(nodes.len());
        for (_, node) in nodes {
            let g = lock(node);
            if g.is_dirty() && !g.purged {
                locked.push((node, g));
            }
        }
        if locked.is_empty() {
            return Ok(());
        }
        let mut b = self.records.batch();
        // Each with the position of its node in `locked`.
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (k, (_, g)) in locked.iter_mut().enumerate() {
            if let Some(p) = self.prepare_writeback(g, &mut b)? {
                prepared.push((k, p));
            }
        }
        b.commit()?;
        let mut flying: Vec<(&NodeRef, &Arc<InFlight>)> = Vec::with_capacity(prepared.len());
        for (k, p) in &prepared {
            if let Some((node, g)) = locked.get_mut(*k) {
                g.in_flight = Some(Arc::clone(&p.blocks));
                flying.push((*node, &p.blocks));
            }
        }
        let in_flight_bytes = prepared
            .iter()
            .map(|(_, p)| p.blocks.blocks.len() * self.block_size as usize)
            .sum::<usize>();
        // Release: a writer that sees these bytes in flight also sees them gone from dirty
        // (`after_write`).
        self.mem
            .in_flight_bytes
            .fetch_add(in_flight_bytes, Ordering::Release);
        // The metadata flush and the object writes below take most of a writeback's time;
        // writes to these files meanwhile go to their dirty blocks (so a large sequential
        // write keeps streaming while the previous part is stored).
        drop(locked);
        if prepared.is_empty() {
            return Ok(());
        }
        let stored = self.store_prepared(&prepared);
        for (node, blocks) in flying {
            let mut n = lock(node);
            if n.in_flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, blocks)) {
                n.in_flight = None;
            }
        }
        self.mem
            .in_flight_bytes
            .fetch_sub(in_flight_bytes, Ordering::Relaxed);
        stored
    }

    /// Makes the committed entries of `prepared` durable, then writes their ciphertext.
    pub(super) fn store_prepared(&self, prepared: &[(usize, Prepared)]) -> Result<()> {
        self.records.flush()?;
        for (ino, c) in prepared
            .iter()
            .flat_map(|(_, p)| p.chunks.iter().map(move |c| (p.ino, *c)))
        {
            lock(&self.pending).insert((ino, c));
        }
        let bs = self.block_size;
        for (_, p) in prepared {
            // One write per run of consecutive blocks.
            let blocks = &p.blocks.blocks;
            let mut i = 0;
            let mut run = Vec::new();
            while let Some((start, _, _)) = blocks.get(i) {
                let start = *start;
                run.clear();
                let mut j = i;
                while let Some((idx, _, blk)) = blocks.get(j) {
                    if *idx != start + (j - i) as u64 || run.len() >= MAX_WRITE_RUN {
                        break;
                    }
                    run.extend_from_slice(blk);
                    j += 1;
                }
                self.objects.write_at(&p.id, start * bs, &run)?;
                i = j;
            }
        }
        Ok(())
    }

    /// Encrypts a node's dirty blocks and adds their entries (and the inode) to `b`.
    pub(super) fn prepare_writeback(
        &self,
        n: &mut Node,
        b: &mut crate::meta::RecordBatch<'_>,
    ) -> Result<Option<Prepared>> {
        let ino = n.inode.ino;
        if n.dirty.is_empty() {
            self.persist_into(b, n)?;
            return Ok(None);
        }
        let Storage::Object(id) = n.inode.storage else {
            return Err(Error::integrity(format!(
                "inode {ino}: dirty blocks without a data object"
            )));
        };
        let dirty = std::mem::take(&mut n.dirty);
        let count = dirty.len() as u64;
        self.mem
            .dirty_bytes
            .fetch_sub((count * self.block_size) as usize, Ordering::Relaxed);
        // A block whose entry still names a previous version must not be overwritten before
        // its current version is durable.
        let touched: std::collections::BTreeSet<u64> =
            dirty.keys().map(|i| i / CHUNK_BLOCKS).collect();
        let needs_barrier = {
            let pend = lock(&self.pending);
            touched.iter().any(|c| pend.contains(&(ino, *c)))
        };
        if needs_barrier {
            self.objects.sync(&id)?;
            self.clear_prev_of(ino, b)?;
        }
        let (first_gen, keys) = self.alloc_gens(count)?;
        // Encrypt and tag on every core: blocks are independent.
        let mut sealed: Vec<SealItem> = dirty
            .into_iter()
            .enumerate()
            .map(|(k, (idx, block))| (idx, first_gen + k as u64, block, [0u8; TAG_LEN]))
            .collect();
        self.seal_blocks(&keys, ino, &mut sealed)?;
        let mut chunks: std::collections::BTreeMap<u64, Chunk> = std::collections::BTreeMap::new();
        let mut blocks: Vec<(u64, u64, Box<[u8]>)> = Vec::with_capacity(sealed.len());
        for (idx, gen, block, tag) in sealed {
            let c = idx / CHUNK_BLOCKS;
            let ch = match chunks.entry(c) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(self.chunk_to_change(ino, c)?)
                }
            };
            let slot = (idx % CHUNK_BLOCKS) as u8;
            let old = ch.entries.get(&slot).map(|e| e.cur);
            ch.entries.insert(
                slot,
                BlockEntry {
                    cur: BlockVersion {
                        generation: gen,
                        tag,
                    },
                    prev: Some(old),
                },
            );
            blocks.push((idx, gen, block));
        }
        let mut touched_chunks = Vec::with_capacity(chunks.len());
        for (c, ch) in chunks {
            b.put_chunk(ino, c, &ch);
            self.cache_chunk(ino, c, ch);
            touched_chunks.push(c);
        }
        self.persist_into(b, n)?;
        Ok(Some(Prepared {
            ino,
            id,
            blocks: Arc::new(InFlight { blocks }),
            chunks: touched_chunks,
        }))
    }

    /// Encrypts each `(block index, generation, plaintext, tag out)` in place and fills in its
    /// tag, spreading large batches over the available cores.
    /// All generations are of the incarnation whose keys are `keys`.
    pub(super) fn seal_blocks(
        &self,
        keys: &BlockKeys,
        ino: u64,
        items: &mut [SealItem],
    ) -> Result<()> {
        let seal = |part: &mut [SealItem]| -> Result<()> {
            for (idx, gen, block, tag) in part.iter_mut() {
                keys.data.encrypt_block(ino, *gen, block)?;
                *tag = keys.blocks.tag(ino, *idx, *gen, block);
            }
            Ok(())
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if cores < 2 || items.len() < 64 {
            return seal(items);
        }
        let per = items.len().div_ceil(cores);
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks_mut(per)
                .map(|part| s.spawn(move || seal(part)))
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| Error::integrity("block encryption thread panicked"))??;
            }
            Ok(())
        })
    }

    /// Adds the clearing of `prev` versions of every pending chunk of `ino` to `b`.
    pub(super) fn clear_prev_of(
        &self,
        ino: u64,
        b: &mut crate::meta::RecordBatch<'_>,
    ) -> Result<()> {
        let chunks: Vec<u64> = {
            let mut pend = lock(&self.pending);
            let mine: Vec<u64> = pend
                .iter()
                .filter(|(i, _)| *i == ino)
                .map(|(_, c)| *c)
                .collect();
            for c in &mine {
                pend.remove(&(ino, *c));
            }
            mine
        };
        for c in chunks {
            let mut ch = self.chunk_to_change(ino, c)?;
            for e in ch.entries.values_mut() {
                e.prev = None;
            }
            b.put_chunk(ino, c, &ch);
            self.cache_chunk(ino, c, ch);
        }
        Ok(())
    }

    /// Data barrier: makes all written blocks durable, then drops their previous versions.
    pub(crate) fn barrier(&self) -> Result<()> {
        let _wb = lock(&self.wb_lock);
        let pend: Vec<(u64, u64)> = lock(&self.pending).drain().collect();
        if pend.is_empty() {
            return Ok(());
        }
        self.objects.sync_all()?;
        let mut b = self.records.batch();
        for (ino, c) in pend {
            let mut ch = self.chunk_to_change(ino, c)?;
            if ch.entries.values().all(|e| e.prev.is_none()) {
                continue;
            }
            for e in ch.entries.values_mut() {
                e.prev = None;
            }
            b.put_chunk(ino, c, &ch);
            self.cache_chunk(ino, c, ch);
        }
        b.commit()
    }

    pub(crate) fn fsync(&self, ino: u64) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let node = self.node(ino)?;
        self.writeback(&node)?;
        {
            let _wb = lock(&self.wb_lock);
            let storage = lock(&node).inode.storage;
            if let Storage::Object(id) = storage {
                self.objects.sync(&id)?;
                let mut b = self.records.batch();
                self.clear_prev_of(ino, &mut b)?;
                b.commit()?;
            }
        }
        self.records.flush()
    }
}
