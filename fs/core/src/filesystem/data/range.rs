//! Size and extent changes: truncate, fallocate (allocation, hole punching, zeroing) and
//! SEEK_DATA/SEEK_HOLE. Dropped blocks lose their entries in the same batch that changes the
//! size, so no stale block can reappear inside the file.

use crate::filesystem::{lock, perms, posix, Inner, Node, NodeRef};
use crate::format::records::{Chunk, Storage, CHUNK_BLOCKS, INLINE_MAX};
use crate::Result;
use std::sync::atomic::Ordering;

impl Inner {
    /// Sets the size of a regular file.
    pub(crate) fn truncate(&self, node: &NodeRef, size: u64) -> Result<()> {
        self.check_writable("truncate")?;
        if size > i64::MAX as u64 {
            return Err(posix(libc::EFBIG, "truncate: size too large"));
        }
        let _wb = lock(&self.wb_lock);
        let mut n = lock(node);
        crate::filesystem::ensure_live(&n, "truncate")?;
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
                    lock(&self.deletions.doomed).push(id);
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
                                self.mem
                                    .dirty_bytes
                                    .fetch_sub(bs as usize, Ordering::Relaxed);
                                b
                            }
                            None => self.block_for_update(&n, &id, idx)?,
                        };
                        if let Some(t) = block.get_mut((size % bs) as usize..) {
                            t.fill(0);
                        }
                        n.dirty.insert(idx, block);
                        self.mem
                            .dirty_bytes
                            .fetch_add(bs as usize, Ordering::Relaxed);
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

    pub(super) fn drop_dirty_blocks(&self, n: &mut Node, from: u64) {
        let gone = n.dirty.split_off(&from);
        self.mem
            .dirty_bytes
            .fetch_sub(gone.len() * self.block_size as usize, Ordering::Relaxed);
    }

    pub(super) fn forget_chunks(&self, ino: u64, from_chunk: u64) {
        let mut cache = lock(&self.cache.chunk_cache);
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
    pub(super) fn drop_entries_from(
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
        let cached: Vec<(u64, Chunk)> = lock(&self.cache.chunk_cache)
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
        ctx: &crate::filesystem::Ctx,
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
            if n.inode.kind != crate::filesystem::FileKind::File {
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
    pub(super) fn zero_range(&self, node: &NodeRef, start: u64, end: u64) -> Result<()> {
        let _wb = lock(&self.wb_lock);
        let mut n = lock(node);
        crate::filesystem::ensure_live(&n, "fallocate")?;
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
                self.mem
                    .dirty_bytes
                    .fetch_add(bs as usize, Ordering::Relaxed);
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
                    self.mem
                        .dirty_bytes
                        .fetch_sub(bs as usize, Ordering::Relaxed);
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
    pub(super) fn next_chunk_record(&self, ino: u64, c: u64) -> Result<Option<u64>> {
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
