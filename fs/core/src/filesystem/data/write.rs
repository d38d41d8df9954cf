//! The write path: writes are buffered in whole plaintext blocks on the node (bounded by the
//! dirty-memory limit), and an inline file that outgrows [`INLINE_MAX`] moves to a data object
//! whose contents are durable before the inode stops naming the inline record.

use super::MAX_DATA_END;
use crate::filesystem::{lock, perms, posix, Ctx, Inner, Node};
use crate::format::records::{BlockEntry, BlockVersion, Chunk, Storage, CHUNK_BLOCKS, INLINE_MAX};
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::sync::atomic::Ordering;

impl Inner {
    /// Plaintext of block `idx` for a read-modify-write (zeros beyond EOF or in holes).
    pub(super) fn block_for_update(&self, n: &Node, id: &ObjectId, idx: u64) -> Result<Box<[u8]>> {
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
    pub(super) fn convert_to_object(&self, n: &mut Node) -> Result<ObjectId> {
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
                self.mem.dirty_bytes.fetch_add(bs, Ordering::Relaxed);
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
            crate::filesystem::ensure_live(&n, "write")?;
            if n.inode.kind != crate::filesystem::FileKind::File {
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

    pub(super) fn write_locked(
        &self,
        n: &mut Node,
        offset: u64,
        data: &[u8],
        end: u64,
    ) -> Result<()> {
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
                self.mem
                    .dirty_bytes
                    .fetch_add(bs as usize, Ordering::Relaxed);
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
}
