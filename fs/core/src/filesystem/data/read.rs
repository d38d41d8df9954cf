//! The read path: blocks come from the node's dirty buffers, the blocks of a running
//! writeback, or the object; stored blocks are read under the node lock but verified and
//! decrypted after it is released, and no block is returned unverified.

use crate::crypto::incarnation::{incarnation_of, BlockKeys};
use crate::filesystem::{lock, posix, Inner, Node};
use crate::format::records::{BlockEntry, Chunk, Storage};
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::sync::Arc;

/// Stored blocks read from an object, still to be verified and decrypted.
pub(super) struct Run {
    ino: u64,
    id: ObjectId,
    idx: u64,
    entries: Vec<BlockEntry>,
    buf: Vec<u8>,
    got: usize,
    /// Per block: position in the output, and the byte range of the block wanted.
    slices: Vec<(usize, usize, usize)>,
}

pub(super) enum Src<'a> {
    Dirty,
    Hole,
    InFlight(u64, &'a [u8]),
    Stored(BlockEntry),
}

impl Inner {
    /// Reads `[offset, offset+len)` of an object-backed file into `out`. Stored blocks are
    /// only read from storage here (under the node lock, so no writeback can overwrite them
    /// mid-read); their verification and decryption is left in `runs`, with zeros in `out` at
    /// their place, so callers can do the crypto after releasing the lock ([`Inner::finish_runs`]).
    pub(super) fn read_object(
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
    pub(super) fn finish_runs(&self, runs: Vec<Run>, out: &mut [u8]) -> Result<()> {
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
        if n.inode.kind == crate::filesystem::FileKind::Dir {
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
}
