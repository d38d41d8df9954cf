//! File contents: reads, writes, truncation, hole punching, SEEK_DATA/SEEK_HOLE, and the
//! writeback protocol that keeps every block verifiable across crashes.
//!
//! Small files (up to [`INLINE_MAX`]) live in a sealed inline record. Larger files live in a
//! data object, one AES-256-XTS block per file block, each block authenticated by a tag kept
//! in the sealed chunk records of the metadata store.
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

use super::{lock, perms, posix, Ctx, Inner, Node, NodeRef};
use crate::crypto::incarnation::{incarnation_of, BlockKeys};
use crate::crypto::TAG_LEN;
use crate::format::records::{BlockEntry, BlockVersion, Chunk, Storage, CHUNK_BLOCKS, INLINE_MAX};
use crate::integrity::{held_version, Held};
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Nodes written back in one metadata batch. sled applies a batch under one epoch guard, so
/// the superseded copy of every tree page the batch touches stays allocated until the whole
/// batch is in (docs/performance.md, tuning table: `WRITEBACK_SLICE`).
const WRITEBACK_SLICE: usize = 256;
/// Largest `pwrite` of consecutive ciphertext blocks to an object. Larger writes cost far
/// more kernel time copying into the backing file's page cache (docs/performance.md, tuning
/// table: `MAX_WRITE_RUN`).
const MAX_WRITE_RUN: usize = 128 << 10;

/// Largest end offset of file data: the largest file size (objects are split into segment
/// files below the backing filesystem's limit, see objects.rs).
pub(crate) const MAX_DATA_END: u64 = i64::MAX as u64;

/// Ciphertext of one node ready to be written after its entries are durable.
struct Prepared {
    ino: u64,
    id: ObjectId,
    blocks: Arc<InFlight>,
    chunks: Vec<u64>,
}

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

/// A block being written back: index, generation, plaintext (ciphertext after sealing), tag.
type SealItem = (u64, u64, Box<[u8]>, [u8; TAG_LEN]);

/// Stored blocks read from an object, still to be verified and decrypted.
struct Run {
    ino: u64,
    id: ObjectId,
    idx: u64,
    entries: Vec<BlockEntry>,
    buf: Vec<u8>,
    got: usize,
    /// Per block: position in the output, and the byte range of the block wanted.
    slices: Vec<(usize, usize, usize)>,
}

enum Src<'a> {
    Dirty,
    Hole,
    InFlight(u64, &'a [u8]),
    Stored(BlockEntry),
}

impl Inner {
    /// Chunk `c` of `ino`, shared with the cache: a 4 KiB read must not copy the whole block
    /// map of its chunk (that copy was 9% of the daemon's time under random 4 KiB reads).
    pub(crate) fn chunk(&self, ino: u64, c: u64) -> Result<Arc<Chunk>> {
        if let Some(ch) = lock(&self.chunk_cache).get(&(ino, c)) {
            return Ok(Arc::clone(ch));
        }
        let ch = Arc::new(self.records.chunk(ino, c)?);
        lock(&self.chunk_cache).put((ino, c), Arc::clone(&ch));
        Ok(ch)
    }

    /// Chunk `c` of `ino` to change (a copy unless nothing else holds it).
    fn chunk_to_change(&self, ino: u64, c: u64) -> Result<Chunk> {
        Ok(Arc::unwrap_or_clone(self.chunk(ino, c)?))
    }

    fn cache_chunk(&self, ino: u64, c: u64, ch: Chunk) {
        lock(&self.chunk_cache).put((ino, c), Arc::new(ch));
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
                Ok(keys.blocks.verify(ino, idx, v.generation, stored, &v.tag))
            })?
        };
        let version = match held {
            Held::Cur => Some(e.cur),
            Held::Prev => e.prev.flatten(),
            Held::Hole => {
                buf.fill(0);
                return Ok(());
            }
            Held::Neither => None,
        };
        if let Some(v) = version {
            if let Some(keys) = self.keys_of(v.generation)? {
                keys.data.decrypt_block(ino, v.generation, buf)?;
                return Ok(());
            }
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

    /// Reads `[offset, offset+len)` of an object-backed file into `out`. Stored blocks are
    /// only read from storage here (under the node lock, so no writeback can overwrite them
    /// mid-read); their verification and decryption is left in `runs`, with zeros in `out` at
    /// their place, so callers can do the crypto after releasing the lock ([`Inner::finish_runs`]).
    fn read_object(
        &self,
        n: &Node,
        id: &ObjectId,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        let bs = self.block_size;
        let ino = n.inode.ino;
        let end = offset + len;
        let first = offset / bs;
        let last = (end - 1) / bs;
        let span = |b: u64| {
            let start = if b == first { offset - b * bs } else { 0 };
            let stop = if b == last { end - b * bs } else { bs };
            (start as usize, stop as usize)
        };
        let mut idx = first;
        let mut cur_chunk: Option<(u64, Arc<Chunk>)> = None;
        let in_flight = |i: u64| n.in_flight.as_ref().and_then(|f| f.get(i));
        while idx <= last {
            let src = if n.dirty.contains_key(&idx) {
                Src::Dirty
            } else if let Some((gen, cipher)) = in_flight(idx) {
                Src::InFlight(gen, cipher)
            } else {
                match self.entry(ino, idx, &mut cur_chunk)? {
                    Some(e) => Src::Stored(e),
                    None => Src::Hole,
                }
            };
            match src {
                Src::Dirty | Src::Hole => {
                    let (start, stop) = span(idx);
                    match n.dirty.get(&idx) {
                        Some(b) => out.extend_from_slice(b.get(start..stop).unwrap_or_default()),
                        None => out.resize(out.len() + (stop - start), 0),
                    }
                    idx += 1;
                }
                Src::InFlight(gen, cipher) => {
                    // Already authenticated by this daemon: it sealed the block itself.
                    let mut block = cipher.to_vec();
                    let keys = self.keys_of(gen)?.ok_or_else(|| {
                        Error::integrity(format!(
                            "inode {ino} block {idx}: no keys for incarnation {} of the \
                             block in flight",
                            incarnation_of(gen)
                        ))
                    })?;
                    keys.data.decrypt_block(ino, gen, &mut block)?;
                    let (start, stop) = span(idx);
                    out.extend_from_slice(block.get(start..stop).unwrap_or_default());
                    idx += 1;
                }
                Src::Stored(e0) => {
                    let mut entries = vec![e0];
                    let mut j = idx + 1;
                    while j <= last
                        && entries.len() < 256
                        && !n.dirty.contains_key(&j)
                        && in_flight(j).is_none()
                    {
                        match self.entry(ino, j, &mut cur_chunk)? {
                            Some(e) => entries.push(e),
                            None => break,
                        }
                        j += 1;
                    }
                    let count = entries.len() as u64;
                    let mut buf = vec![0u8; (count * bs) as usize];
                    let got = self.objects.read_at(id, idx * bs, &mut buf)?;
                    let mut slices = Vec::with_capacity(entries.len());
                    for k in 0..count {
                        let (start, stop) = span(idx + k);
                        slices.push((out.len(), start, stop));
                        out.resize(out.len() + (stop - start), 0);
                    }
                    runs.push(Run {
                        ino,
                        id: *id,
                        idx,
                        entries,
                        buf,
                        got,
                        slices,
                    });
                    idx += count;
                }
            }
        }
        Ok(())
    }

    /// Verifies and decrypts the blocks left in `runs` and copies them into `out`.
    fn finish_runs(&self, runs: Vec<Run>, out: &mut [u8]) -> Result<()> {
        let bs = self.block_size as usize;
        // The keys of the last incarnation looked up: a run's blocks nearly always share one.
        let mut memo: Option<(u32, Arc<BlockKeys>)> = None;
        for mut run in runs {
            for (k, (e, (pos, start, stop))) in
                run.entries.iter().zip(run.slices.iter()).enumerate()
            {
                let lo = k * bs;
                let have = run.got.saturating_sub(lo).min(bs);
                let idx = run.idx + k as u64;
                let block = run.buf.get_mut(lo..lo + bs).ok_or_else(|| {
                    Error::integrity(format!(
                        "inode {}: block {idx} outside the read buffer",
                        run.ino
                    ))
                })?;
                // The current version first (the fast path); a block that fails goes through
                // `open_block`, which also tries the previous version.
                let k = incarnation_of(e.cur.generation);
                if memo.as_ref().is_none_or(|(m, _)| *m != k) {
                    memo = self.keys_of(e.cur.generation)?.map(|keys| (k, keys));
                }
                let keys = memo.as_ref().map(|(_, keys)| keys);
                let verified = have == bs
                    && keys.is_some_and(|keys| {
                        keys.blocks
                            .verify(run.ino, idx, e.cur.generation, block, &e.cur.tag)
                    });
                if let (true, Some(keys)) = (verified, keys) {
                    keys.data.decrypt_block(run.ino, e.cur.generation, block)?;
                } else {
                    self.open_block(run.ino, &run.id, idx, e, block, have)?;
                }
                let dst = out.get_mut(*pos..*pos + (stop - start)).ok_or_else(|| {
                    Error::integrity(format!(
                        "inode {}: block {idx} outside the read output",
                        run.ino
                    ))
                })?;
                dst.copy_from_slice(block.get(*start..*stop).unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`; `touch_atime`: the read is a program's and counts
    /// for atime (Linux records reads at end of file too).
    pub(crate) fn read(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        touch_atime: bool,
    ) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let mut n = lock(&node);
        if n.inode.kind == super::FileKind::Dir {
            return Err(posix(
                libc::EISDIR,
                format!("read inode {ino}: is a directory"),
            ));
        }
        if touch_atime {
            self.touch_atime(&mut n);
        }
        let fsize = n.inode.size;
        if offset >= fsize || size == 0 {
            return Ok(Vec::new());
        }
        let len = u64::from(size).min(fsize - offset);
        let mut out = Vec::with_capacity(len as usize);
        match n.inode.storage {
            Storage::Object(id) => {
                let mut runs = Vec::new();
                self.read_object(&n, &id, offset, len, &mut out, &mut runs)?;
                // Crypto without the node lock: concurrent reads of one file use every core.
                drop(n);
                self.finish_runs(runs, &mut out)?;
            }
            Storage::None | Storage::Inline => {
                self.load_inline(&mut n)?;
                let data = n.inline.as_deref().unwrap_or_default();
                let s = offset as usize;
                let e = (offset + len) as usize;
                out.extend_from_slice(data.get(s..e.min(data.len())).unwrap_or_default());
                out.resize(len as usize, 0);
            }
        }
        Ok(out)
    }

    /// Plaintext of block `idx` for a read-modify-write (zeros beyond EOF or in holes).
    fn block_for_update(&self, n: &Node, id: &ObjectId, idx: u64) -> Result<Box<[u8]>> {
        let bs = self.block_size;
        let mut out = Vec::with_capacity(bs as usize);
        let size = n.inode.size;
        if idx * bs < size {
            let len = (size - idx * bs).min(bs);
            let mut runs = Vec::new();
            self.read_object(n, id, idx * bs, len, &mut out, &mut runs)?;
            self.finish_runs(runs, &mut out)?;
        }
        out.resize(bs as usize, 0);
        Ok(out.into_boxed_slice())
    }

    /// Moves an inline file's contents into a new data object. Contents that were stored
    /// inline are written to the object and made durable before the inode stops pointing at
    /// the inline record, so a crash never loses them.
    fn convert_to_object(&self, n: &mut Node) -> Result<ObjectId> {
        if let Storage::Object(id) = n.inode.storage {
            return Ok(id);
        }
        self.load_inline(n)?;
        let had_inline = n.inode.storage == Storage::Inline;
        let data = n.inline.take().unwrap_or_default();
        let id: ObjectId = rand::random();
        n.inode.storage = Storage::Object(id);
        self.set_inline_dirty(n, false);
        n.attr_dirty = true;
        if data.is_empty() {
            if had_inline {
                // An empty inline record must not outlive the switch to an object.
                let mut b = self.records.batch();
                b.delete_key(&crate::format::records::ino_prefix(
                    crate::format::records::prefix::INLINE,
                    n.inode.ino,
                ));
                b.put_inode(&n.inode)?;
                b.commit()?;
                n.attr_dirty = false;
            }
            return Ok(id);
        }
        let ino = n.inode.ino;
        let bs = self.block_size as usize;
        // The inline contents as whole blocks (the last one zero-padded).
        let blocks: Vec<Box<[u8]>> = data
            .chunks(bs)
            .map(|part| {
                let mut block = vec![0u8; bs];
                if let Some(d) = block.get_mut(..part.len()) {
                    d.copy_from_slice(part);
                }
                block.into_boxed_slice()
            })
            .collect();
        if !had_inline {
            for (idx, block) in blocks.into_iter().enumerate() {
                n.dirty.insert(idx as u64, block);
                self.dirty_bytes.fetch_add(bs, Ordering::Relaxed);
            }
            return Ok(id);
        }
        let count = blocks.len() as u64;
        if count > CHUNK_BLOCKS {
            return Err(Error::integrity(format!(
                "inode {ino}: inline contents of {} bytes exceed one chunk",
                data.len()
            )));
        }
        let (first_gen, keys) = self.alloc_gens(count)?;
        let mut ciphertext = Vec::with_capacity(blocks.len() * bs);
        let mut ch = Chunk::default();
        for (idx, mut block) in blocks.into_iter().enumerate() {
            let gen = first_gen + idx as u64;
            keys.data.encrypt_block(ino, gen, &mut block)?;
            let tag = keys.blocks.tag(ino, idx as u64, gen, &block);
            ciphertext.extend_from_slice(&block);
            ch.entries.insert(
                idx as u8,
                BlockEntry {
                    cur: BlockVersion {
                        generation: gen,
                        tag,
                    },
                    prev: None,
                },
            );
        }
        self.objects.write_at(&id, 0, &ciphertext)?;
        self.objects.sync(&id)?;
        let mut b = self.records.batch();
        b.put_chunk(ino, 0, &ch);
        b.delete_key(&crate::format::records::ino_prefix(
            crate::format::records::prefix::INLINE,
            ino,
        ));
        b.put_inode(&n.inode)?;
        b.commit()?;
        self.cache_chunk(ino, 0, ch);
        n.attr_dirty = false;
        Ok(id)
    }

    /// Writes `data` at `offset`; returns the bytes written and whether the mode changed.
    /// `kill_suidgid` names the writer when the kernel asks for setuid/setgid to be dropped (a
    /// writer without CAP_FSETID, FUSE_WRITE_KILL_SUIDGID); page cache writeback never asks,
    /// since the kernel sends writes to such files through.
    pub(crate) fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: Option<&Ctx>,
    ) -> Result<(u32, bool)> {
        self.check_writable("write")?;
        let node = self.node(ino)?;
        if data.is_empty() {
            return Ok((0, false));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_DATA_END)
            .ok_or_else(|| {
                posix(
                    libc::EFBIG,
                    format!("write inode {ino}: data beyond {MAX_DATA_END} bytes"),
                )
            })?;
        let mode_changed = {
            let mut n = lock(&node);
            super::ensure_live(&n, "write")?;
            if n.inode.kind != super::FileKind::File {
                return Err(posix(
                    libc::EINVAL,
                    format!("write inode {ino}: not a regular file"),
                ));
            }
            self.write_locked(&mut n, offset, data, end)?;
            let now = Inner::now();
            n.inode.mtime = now;
            n.inode.ctime = now;
            let mut mode_changed = false;
            if let Some(writer) = kill_suidgid {
                let perm = perms::perm_after_modification(&n.inode, writer);
                mode_changed = perm != n.inode.perm;
                n.inode.perm = perm;
            }
            n.attr_dirty = true;
            mode_changed
        };
        self.after_write()?;
        Ok((data.len() as u32, mode_changed))
    }

    fn write_locked(&self, n: &mut Node, offset: u64, data: &[u8], end: u64) -> Result<()> {
        let small = !matches!(n.inode.storage, Storage::Object(_)) && end <= INLINE_MAX;
        if small {
            self.load_inline(n)?;
            let buf = n.inline.get_or_insert_with(Vec::new);
            if buf.len() < end as usize {
                buf.resize(end as usize, 0);
            }
            if let Some(d) = buf.get_mut(offset as usize..end as usize) {
                d.copy_from_slice(data);
            }
            n.inode.size = n.inode.size.max(end);
            n.inode.storage = Storage::Inline;
            self.set_inline_dirty(n, true);
            return Ok(());
        }
        let id = self.convert_to_object(n)?;
        let bs = self.block_size;
        let mut pos = offset;
        let mut src = data;
        while !src.is_empty() {
            let idx = pos / bs;
            let within = (pos % bs) as usize;
            let take = (bs as usize - within).min(src.len());
            if !n.dirty.contains_key(&idx) {
                let block = if within == 0 && take == bs as usize {
                    vec![0u8; bs as usize].into_boxed_slice()
                } else {
                    self.block_for_update(n, &id, idx)?
                };
                n.dirty.insert(idx, block);
                self.dirty_bytes.fetch_add(bs as usize, Ordering::Relaxed);
            }
            let (head, rest) = src.split_at(take);
            if let Some(d) = n
                .dirty
                .get_mut(&idx)
                .and_then(|b| b.get_mut(within..within + take))
            {
                d.copy_from_slice(head);
            }
            src = rest;
            pos += take as u64;
        }
        n.inode.size = n.inode.size.max(end);
        Ok(())
    }

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
    fn writeback_slice(&self, nodes: &[(u64, NodeRef)]) -> Result<()> {
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
        self.in_flight_bytes
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
        self.in_flight_bytes
            .fetch_sub(in_flight_bytes, Ordering::Relaxed);
        stored
    }

    /// Makes the committed entries of `prepared` durable, then writes their ciphertext.
    fn store_prepared(&self, prepared: &[(usize, Prepared)]) -> Result<()> {
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
    fn prepare_writeback(
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
        self.dirty_bytes
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
    fn seal_blocks(&self, keys: &BlockKeys, ino: u64, items: &mut [SealItem]) -> Result<()> {
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
    fn clear_prev_of(&self, ino: u64, b: &mut crate::meta::RecordBatch<'_>) -> Result<()> {
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
                lock(&self.chunk_cache).pop(&(ino, c));
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

    /// Sets the size of a regular file.
    pub(crate) fn truncate(&self, node: &NodeRef, size: u64) -> Result<()> {
        self.check_writable("truncate")?;
        if size > i64::MAX as u64 {
            return Err(posix(libc::EFBIG, "truncate: size too large"));
        }
        let _wb = lock(&self.wb_lock);
        let mut n = lock(node);
        super::ensure_live(&n, "truncate")?;
        let ino = n.inode.ino;
        let old = n.inode.size;
        let now = Inner::now();
        if size != old {
            n.inode.mtime = now;
            n.inode.ctime = now;
        }
        let mut b = self.records.batch();
        match n.inode.storage {
            Storage::None | Storage::Inline if size <= INLINE_MAX => {
                self.load_inline(&mut n)?;
                if let Some(buf) = n.inline.as_mut() {
                    buf.resize(size as usize, 0);
                }
                n.inode.size = size;
                n.inode.storage = if size == 0 && n.inode.storage == Storage::None {
                    Storage::None
                } else {
                    Storage::Inline
                };
                // A file without storage gets no (empty) inline record.
                let dirty = n.inode.storage == Storage::Inline;
                self.set_inline_dirty(&mut n, dirty);
            }
            Storage::None | Storage::Inline => {
                self.convert_to_object(&mut n)?;
                n.inode.size = size;
            }
            Storage::Object(id) => {
                let bs = self.block_size;
                if size == 0 {
                    self.drop_dirty_blocks(&mut n, 0);
                    for k in self
                        .records
                        .keys_of(crate::format::records::prefix::CHUNK, ino)?
                    {
                        b.delete_chunk_key(&k);
                    }
                    self.forget_chunks(ino, 0);
                    n.inode.storage = Storage::None;
                    n.inline = Some(Vec::new());
                    lock(&self.doomed).push(id);
                    n.inode.size = 0;
                } else if size < old {
                    let keep = size.div_ceil(bs);
                    self.drop_dirty_blocks(&mut n, keep);
                    let tail_has_data = !size.is_multiple_of(bs) && {
                        let idx = keep - 1;
                        n.dirty.contains_key(&idx)
                            || self
                                .chunk(ino, idx / CHUNK_BLOCKS)?
                                .entries
                                .contains_key(&((idx % CHUNK_BLOCKS) as u8))
                    };
                    if tail_has_data {
                        let idx = keep - 1;
                        let mut block = match n.dirty.remove(&idx) {
                            Some(b) => {
                                self.dirty_bytes.fetch_sub(bs as usize, Ordering::Relaxed);
                                b
                            }
                            None => self.block_for_update(&n, &id, idx)?,
                        };
                        if let Some(t) = block.get_mut((size % bs) as usize..) {
                            t.fill(0);
                        }
                        n.dirty.insert(idx, block);
                        self.dirty_bytes.fetch_add(bs as usize, Ordering::Relaxed);
                    }
                    self.drop_entries_from(ino, keep, &mut b)?;
                    n.inode.size = size;
                    self.persist_into(&mut b, &mut n)?;
                    b.commit()?;
                    // Stale ciphertext beyond the new end may go only once no record names it.
                    self.records.flush()?;
                    self.objects.set_len(&id, keep * bs)?;
                    // The dropped blocks must be gone from storage before any of them gets a
                    // new version whose entry says "previously a hole".
                    self.objects.sync(&id)?;
                    return Ok(());
                } else {
                    n.inode.size = size;
                }
            }
        }
        self.persist_into(&mut b, &mut n)?;
        b.commit()
    }

    fn drop_dirty_blocks(&self, n: &mut Node, from: u64) {
        let gone = n.dirty.split_off(&from);
        self.dirty_bytes
            .fetch_sub(gone.len() * self.block_size as usize, Ordering::Relaxed);
    }

    fn forget_chunks(&self, ino: u64, from_chunk: u64) {
        let mut cache = lock(&self.chunk_cache);
        let keys: Vec<(u64, u64)> = cache
            .iter()
            .filter(|((i, c), _)| *i == ino && *c >= from_chunk)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            cache.pop(&k);
        }
        lock(&self.pending).retain(|(i, c)| !(*i == ino && *c >= from_chunk));
    }

    /// Removes every block entry at or after block `from`.
    fn drop_entries_from(
        &self,
        ino: u64,
        from: u64,
        b: &mut crate::meta::RecordBatch<'_>,
    ) -> Result<()> {
        let first_chunk = from / CHUNK_BLOCKS;
        let mut changed = Vec::new();
        self.records
            .chunks_from(ino, first_chunk, &mut |c, mut ch| {
                if c == first_chunk {
                    ch.entries
                        .retain(|slot, _| c * CHUNK_BLOCKS + u64::from(*slot) < from);
                } else {
                    ch.entries.clear();
                }
                changed.push((c, ch));
                Ok(true)
            })?;
        // Entries written since the last store update are in the cache only.
        let cached: Vec<(u64, Chunk)> = lock(&self.chunk_cache)
            .iter()
            .filter(|((i, c), _)| *i == ino && *c >= first_chunk)
            .map(|((_, c), ch)| (*c, Chunk::clone(ch)))
            .collect();
        self.forget_chunks(ino, first_chunk);
        for (c, mut ch) in cached {
            if !changed.iter().any(|(cc, _)| *cc == c) {
                ch.entries
                    .retain(|slot, _| c * CHUNK_BLOCKS + u64::from(*slot) < from);
                changed.push((c, ch));
            }
        }
        for (c, ch) in changed {
            b.put_chunk(ino, c, &ch);
            if !ch.entries.is_empty() {
                self.cache_chunk(ino, c, ch);
            }
        }
        Ok(())
    }

    pub(crate) fn fallocate(
        &self,
        ctx: &super::Ctx,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<bool> {
        self.check_writable("fallocate")?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && zero) {
            return Err(posix(
                libc::EOPNOTSUPP,
                format!("fallocate inode {ino}: mode {mode:#x} not supported"),
            ));
        }
        if punch && !keep_size {
            return Err(posix(libc::EINVAL, "fallocate: PUNCH_HOLE needs KEEP_SIZE"));
        }
        if length == 0 {
            return Err(posix(libc::EINVAL, "fallocate: zero length"));
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or_else(|| posix(libc::EFBIG, "fallocate: range too large"))?;
        let node = self.node(ino)?;
        {
            let n = lock(&node);
            if n.inode.kind != super::FileKind::File {
                return Err(posix(
                    libc::ENODEV,
                    format!("fallocate inode {ino}: not a regular file"),
                ));
            }
        }
        if !punch && !zero {
            // Space is allocated lazily (holes until written), but a request that cannot fit
            // must fail now, as on ext4.
            let st = self.statfs()?;
            let free = st.bavail.saturating_mul(u64::from(st.frsize));
            if length > free {
                return Err(posix(
                    libc::ENOSPC,
                    format!("fallocate inode {ino}: {length} bytes requested, {free} free"),
                ));
            }
        }
        if punch || zero {
            let size = lock(&node).inode.size;
            let zend = end.min(size);
            if offset < zend {
                self.zero_range(&node, offset, zend)?;
            }
        }
        if !keep_size {
            let size = lock(&node).inode.size;
            if end > size {
                self.truncate(&node, end)?;
            }
        }
        let mut n = lock(&node);
        let now = Inner::now();
        if punch || zero {
            n.inode.mtime = now;
        }
        let perm = perms::perm_after_modification(&n.inode, ctx);
        let mode_changed = perm != n.inode.perm;
        n.inode.perm = perm;
        n.inode.ctime = now;
        n.attr_dirty = true;
        Ok(mode_changed)
    }

    /// Makes `[start, end)` (within the file) read as zeros, dropping whole blocks.
    fn zero_range(&self, node: &NodeRef, start: u64, end: u64) -> Result<()> {
        let _wb = lock(&self.wb_lock);
        let mut n = lock(node);
        super::ensure_live(&n, "fallocate")?;
        let ino = n.inode.ino;
        let Storage::Object(id) = n.inode.storage else {
            self.load_inline(&mut n)?;
            if let Some(d) = n
                .inline
                .as_mut()
                .and_then(|b| b.get_mut(start as usize..end as usize))
            {
                d.fill(0);
            }
            self.set_inline_dirty(&mut n, true);
            return Ok(());
        };
        let bs = self.block_size;
        let first_full = start.div_ceil(bs);
        let end_full = end / bs;
        // Partial blocks at either end: read-modify-write zeros.
        for idx in [start / bs, (end - 1) / bs] {
            if idx >= first_full && idx < end_full {
                continue;
            }
            let lo = start.max(idx * bs) - idx * bs;
            let hi = end.min((idx + 1) * bs) - idx * bs;
            if !n.dirty.contains_key(&idx) {
                let blk = self.block_for_update(&n, &id, idx)?;
                n.dirty.insert(idx, blk);
                self.dirty_bytes.fetch_add(bs as usize, Ordering::Relaxed);
            }
            if let Some(d) = n
                .dirty
                .get_mut(&idx)
                .and_then(|b| b.get_mut(lo as usize..hi as usize))
            {
                d.fill(0);
            }
        }
        if first_full < end_full {
            let mut b = self.records.batch();
            for idx in first_full..end_full {
                if n.dirty.remove(&idx).is_some() {
                    self.dirty_bytes.fetch_sub(bs as usize, Ordering::Relaxed);
                }
            }
            let mut c = first_full / CHUNK_BLOCKS;
            while c * CHUNK_BLOCKS < end_full {
                let mut ch = self.chunk_to_change(ino, c)?;
                let before = ch.entries.len();
                ch.entries.retain(|slot, _| {
                    let i = c * CHUNK_BLOCKS + u64::from(*slot);
                    i < first_full || i >= end_full
                });
                if ch.entries.len() != before {
                    b.put_chunk(ino, c, &ch);
                    self.cache_chunk(ino, c, ch);
                }
                c += 1;
            }
            b.commit()?;
            self.records.flush()?;
            self.objects
                .punch_hole(&id, first_full * bs, (end_full - first_full) * bs)?;
        }
        Ok(())
    }

    /// The first chunk at or after `c` of `ino` that has a block map record.
    fn next_chunk_record(&self, ino: u64, c: u64) -> Result<Option<u64>> {
        let prefix = crate::format::records::ino_prefix(crate::format::records::prefix::CHUNK, ino);
        let after = c
            .checked_sub(1)
            .map(|prev| crate::format::records::chunk_key(ino, prev));
        let mut found = None;
        self.records.store().scan(
            &prefix,
            after.as_ref().map(|k| k.as_slice()),
            &mut |k, _| {
                found = k
                    .get(9..17)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                Ok(false)
            },
        )?;
        Ok(found)
    }

    pub(crate) fn lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64> {
        let node = self.node(ino)?;
        let n = lock(&node);
        let size = n.inode.size;
        let off =
            u64::try_from(offset).map_err(|_| posix(libc::EINVAL, "lseek: negative offset"))?;
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(posix(
                libc::EINVAL,
                "lseek: only SEEK_DATA and SEEK_HOLE are handled here",
            ));
        }
        if off >= size {
            return Err(posix(libc::ENXIO, "lseek: offset beyond end of file"));
        }
        let Storage::Object(_) = n.inode.storage else {
            return Ok(if whence == libc::SEEK_DATA {
                offset
            } else {
                size as i64
            });
        };
        let bs = self.block_size;
        let last = (size - 1) / bs;
        let mut idx = off / bs;
        while idx <= last {
            let c = idx / CHUNK_BLOCKS;
            let ch = self.chunk(ino, c)?;
            // A chunk with neither entries nor dirty blocks is all hole: skip to the next one
            // that holds something (one store scan) instead of probing every chunk of a sparse
            // file (a file of 2^60 bytes has 2^42 of them).
            let dirty_here = n
                .dirty
                .range(c * CHUNK_BLOCKS..(c + 1) * CHUNK_BLOCKS)
                .next()
                .is_some();
            if ch.entries.is_empty() && !dirty_here {
                if whence == libc::SEEK_HOLE {
                    return Ok(off.max(idx * bs) as i64);
                }
                let next_record = self.next_chunk_record(ino, c + 1)?;
                let next_dirty = n.dirty.range(idx..).next().map(|(b, _)| b / CHUNK_BLOCKS);
                match [next_record, next_dirty].into_iter().flatten().min() {
                    Some(next) => {
                        idx = next.saturating_mul(CHUNK_BLOCKS);
                        continue;
                    }
                    None => break,
                }
            }
            let chunk_end = ((c + 1) * CHUNK_BLOCKS).min(last + 1);
            while idx < chunk_end {
                let has = n.dirty.contains_key(&idx)
                    || ch.entries.contains_key(&((idx % CHUNK_BLOCKS) as u8));
                if has == (whence == libc::SEEK_DATA) {
                    return Ok(off.max(idx * bs) as i64);
                }
                idx += 1;
            }
        }
        if whence == libc::SEEK_DATA {
            Err(posix(libc::ENXIO, "lseek: no data after offset"))
        } else {
            Ok(size as i64)
        }
    }
}
