//! Block verification for pass 5: every block entry of the object-backed files is checked
//! against its tag, each object read once front to back in segments spread over threads.
//! Memory stays bounded by one read buffer and one segment's entries per thread.

use super::model::{block_index, scan_chunks};
use super::CheckUi;
use crate::crypto::incarnation::{incarnation_of, KeyRing};
use crate::filesystem::Parts;
use crate::format::records::{BlockEntry, CHUNK_BLOCKS};
use crate::integrity::{held_version, Held};
use crate::meta::Records;
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::collections::BTreeSet;

/// Bytes read from an object at a time while verifying it.
const READ_CHUNK: usize = 8 << 20;
/// Objects are verified in segments of at most this many bytes, so one large file is spread
/// over all threads and no thread holds more than one segment's block entries.
const SEGMENT_BYTES: u64 = 64 << 20;
/// A file spanning more verification segments than this has them listed from its block map
/// (only those with entries), so a sparse file of 2^63 bytes is not read hole by hole.
const SPARSE_SEGMENTS: u64 = 1 << 14;

/// One object-backed file to verify (a small record: the entries stay in the store).
pub(super) struct FileJob {
    pub(super) ino: u64,
    pub(super) id: ObjectId,
    /// Object length (0 when missing).
    pub(super) len: u64,
    /// The object does not exist: entries must accept a hole.
    pub(super) missing: bool,
    /// Entries at or beyond this block are being dropped (planned repair): not verified.
    pub(super) keep: Option<u64>,
    /// One past the highest block index with an entry.
    pub(super) end_block: u64,
}

/// A range of blocks of one file: the unit of work of a verification thread.
struct Segment {
    file: usize,
    first: u64,
    end: u64,
}

#[derive(Default)]
pub(super) struct JobResult {
    /// Block entries checked.
    pub(super) entries: u64,
    /// Failed blocks: (index, beyond the end of the object).
    pub(super) bad: Vec<(u64, bool)>,
    /// Entries with a previous version: (index, the version the block holds).
    pub(super) resolved: Vec<(u64, Held)>,
}

/// Verifies every block entry of `files`: each object is read once, front to back, in
/// [`READ_CHUNK`] reads, split into [`SEGMENT_BYTES`] segments that threads (one per core
/// unless `threads` says otherwise) take in order, so large files use every core and small
/// ones are read one after the other. Memory: one read buffer and one segment's entries per
/// thread, plus a small result per file. The calling thread reports progress in bytes.
pub(super) fn verify_objects(
    parts: &Parts,
    records: &Records,
    files: &[FileJob],
    bs: u64,
    threads: usize,
    ui: &mut dyn CheckUi,
) -> Result<Vec<JobResult>> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let (segments, total_bytes) = plan_segments(records, files, bs)?;
    ui.progress(5, 0, total_bytes);
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    }
    .min(segments.len().max(1));
    // Block keys of every incarnation, derived from the salt records as reads derive them.
    let ring = KeyRing::new(parts.keys.clone());
    let next = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let out: std::sync::Mutex<Vec<Option<Result<JobResult>>>> =
        std::sync::Mutex::new((0..segments.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        let (alive, finished) = std::sync::mpsc::channel::<()>();
        for _ in 0..threads {
            let alive = alive.clone();
            let (next, done_bytes, out, segments, ring) =
                (&next, &done_bytes, &out, &segments, &ring);
            s.spawn(move || {
                let _alive = alive;
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seg) = segments.get(i) else { break };
                    let Some(file) = files.get(seg.file) else {
                        break;
                    };
                    let r =
                        verify_segment(parts, records, ring, file, seg, bs, &mut buf, done_bytes);
                    if let Some(slot) = out.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
                        *slot = Some(r);
                    }
                }
            });
        }
        drop(alive);
        // Every sender gone (all threads done) ends the wait at once.
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(std::time::Duration::from_millis(100))
        {
            let done = done_bytes.load(Ordering::Relaxed).min(total_bytes);
            ui.progress(5, done, total_bytes);
        }
    });
    ui.progress(5, total_bytes, total_bytes);
    let mut results: Vec<JobResult> = (0..files.len()).map(|_| JobResult::default()).collect();
    let seg_results = out.into_inner().unwrap_or_else(|p| p.into_inner());
    for (seg, r) in segments.iter().zip(seg_results) {
        let r = r.unwrap_or_else(|| Err(Error::integrity("verification thread did not finish")))?;
        if let Some(res) = results.get_mut(seg.file) {
            res.entries += r.entries;
            res.bad.extend(r.bad);
            res.resolved.extend(r.resolved);
        }
    }
    for r in &mut results {
        r.bad.sort_unstable();
    }
    Ok(results)
}

/// Cuts `files` into verification segments in read order; returns them and the bytes of
/// object data they read (the progress total).
fn plan_segments(records: &Records, files: &[FileJob], bs: u64) -> Result<(Vec<Segment>, u64)> {
    let seg_blocks = (SEGMENT_BYTES / bs).max(1);
    let mut segments: Vec<Segment> = Vec::new();
    let mut total_bytes = 0u64;
    for (i, f) in files.iter().enumerate() {
        let end = f.keep.map_or(f.end_block, |k| k.min(f.end_block));
        // Blocks at or beyond the object's end read as nothing: one segment checks them all.
        let data_end = end.min(f.len.div_ceil(bs));
        if data_end / seg_blocks > SPARSE_SEGMENTS {
            // A huge sparse file (up to 2^63 bytes): only the segments its block map names
            // are read, not the holes between them.
            let mut firsts: BTreeSet<u64> = BTreeSet::new();
            scan_chunks(records, f.ino, 0, &mut |c, _| {
                let first_block = block_index(c, 0);
                if first_block >= end {
                    return false;
                }
                firsts.insert(first_block / seg_blocks * seg_blocks);
                true
            })?;
            for first in firsts {
                let seg_end = first.saturating_add(seg_blocks).min(end);
                let span = seg_end.min(data_end).saturating_sub(first);
                total_bytes = total_bytes.saturating_add(span.saturating_mul(bs));
                segments.push(Segment {
                    file: i,
                    first,
                    end: seg_end,
                });
            }
            continue;
        }
        total_bytes = total_bytes.saturating_add(f.len.min(data_end.saturating_mul(bs)));
        let mut first = 0;
        loop {
            let seg_end = if first + seg_blocks >= data_end {
                end
            } else {
                first + seg_blocks
            };
            segments.push(Segment {
                file: i,
                first,
                end: seg_end,
            });
            if seg_end >= end {
                break;
            }
            first = seg_end;
        }
    }
    Ok((segments, total_bytes))
}

#[allow(clippy::too_many_arguments)]
fn verify_segment(
    parts: &Parts,
    records: &Records,
    ring: &KeyRing,
    job: &FileJob,
    seg: &Segment,
    bs: u64,
    buf: &mut Vec<u8>,
    done_bytes: &std::sync::atomic::AtomicU64,
) -> Result<JobResult> {
    let bsz = usize::try_from(bs).map_err(|_| Error::format("block size"))?;
    let per_read = (READ_CHUNK / bsz).max(1) as u64;
    let mut res = JobResult::default();
    // This segment's entries, from the store.
    let mut entries: Vec<(u64, BlockEntry)> = Vec::new();
    let end = job.keep.map_or(seg.end, |k| k.min(seg.end));
    scan_chunks(records, job.ino, seg.first / CHUNK_BLOCKS, &mut |c, ch| {
        if block_index(c, 0) >= end {
            return false;
        }
        for (slot, e) in &ch.entries {
            let idx = block_index(c, *slot);
            if idx >= seg.first && idx < end {
                entries.push((idx, *e));
            }
        }
        true
    })?;
    res.entries = entries.len() as u64;
    let held = |idx: u64, e: &BlockEntry, block: &[u8]| -> Held {
        let full = block.len() == bsz;
        let verifies = |v: &crate::format::records::BlockVersion| -> Result<bool> {
            // A version of an incarnation without a (readable) salt record cannot verify;
            // the missing record is its own problem (pass 3), a damaged one is a bad record.
            let k = incarnation_of(v.generation);
            Ok(full
                && ring
                    .get(k, || records.incarnation_salt(k))
                    .ok()
                    .flatten()
                    .is_some_and(|keys| {
                        keys.blocks
                            .verify(job.ino, idx, v.generation, block, &v.tag)
                    }))
        };
        // `verifies` never fails, so neither does the rule.
        held_version(e, block, verifies).unwrap_or(Held::Neither)
    };
    // Every block verifies against its current version or its previous one (as reads
    // accept); which one it holds is kept for the entries that still have a previous one.
    let mut check = |idx: u64, e: &BlockEntry, block: &[u8]| -> bool {
        let h = held(idx, e, block);
        if e.prev.is_some() {
            res.resolved.push((idx, h));
        }
        h != Held::Neither
    };
    // Entries whose block starts at or beyond the end of the object read as nothing.
    let within = |idx: u64| idx.checked_mul(bs).is_some_and(|off| off < job.len);
    for (idx, e) in entries.iter().filter(|(i, _)| !within(*i)) {
        if !check(*idx, e, &[]) {
            res.bad.push((*idx, !job.missing));
        }
    }
    if buf.len() < per_read as usize * bsz {
        buf.resize(per_read as usize * bsz, 0);
    }
    // Read the segment's range of the object front to back (whole reads, also across holes in
    // the block map, so the object is read sequentially).
    let data_end = end.min(job.len.div_ceil(bs));
    let mut pos = seg.first;
    let mut it = entries.iter().filter(|(i, _)| within(*i)).peekable();
    while pos < data_end {
        let n = per_read.min(data_end - pos);
        let off = pos * bs;
        let read_len = (job.len - off).min(n * bs);
        let slice = buf.get_mut(..read_len as usize).unwrap_or_default();
        let got = parts.objects.read_at(&job.id, off, slice)?;
        done_bytes.fetch_add(read_len, std::sync::atomic::Ordering::Relaxed);
        while let Some(&&(idx, e)) = it.peek() {
            if idx >= pos + n {
                break;
            }
            it.next();
            let lo = ((idx - pos) * bs) as usize;
            let have = got.saturating_sub(lo).min(bsz);
            let block = buf.get(lo..lo + have).unwrap_or_default();
            if !check(idx, &e, block) {
                res.bad.push((idx, have != bsz));
            }
        }
        pos += n;
    }
    Ok(res)
}
