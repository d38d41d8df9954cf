//! The segmented metadata dump of a point: every sealed record as stored, sorted by key, cut
//! into segment files at boundaries chosen by the keys, so that a change to a record changes
//! only the segment that holds it, and an unchanged segment is hard-linked from the previous
//! point instead of written again.
//!
//! Layout (docs/backup.md "Files of a point"), beneath the point directory:
//!
//! - `meta/<name>.seg`: `DGMSEG01 ‖ fs_uuid ‖ le32 len ‖ first key ‖ le32 len ‖ last key ‖
//!   (le32 klen ‖ key ‖ le32 vlen ‖ value)* ‖ END! ‖ le64 count`; `<name>` is the hex of the
//!   first 16 bytes of BLAKE3(first key), so a segment keeps its name as long as its first
//!   record stays, whatever happens before it (rsync then finds the previous copy under the
//!   same name and sends a delta);
//! - `meta/index`: `DGMSIDX1 ‖ fs_uuid ‖ le64 n ‖ (name(16) ‖ le64 records ‖ BLAKE3(32))^n ‖
//!   END! ‖ le64 total records`, the segments in key order.
//!
//! Boundaries: after a record whose key hash `h` (BLAKE3 of the stored key bytes, which are
//! already opaque) has its low 12 bits zero; or, once the segment holds [`SOFT_BYTES`], after
//! a record with the low 5 bits of `h` zero; or at the hard caps [`MAX_SEGMENT_BYTES`] and
//! [`MAX_SEGMENT_RECORDS`], which bound the writer's memory. The first two depend on the keys
//! alone (and the size since the segment's start), so after an insertion or deletion the cuts
//! fall on the same keys again from the next key-defined boundary on.
//!
//! The reader checks everything the writer guarantees: magic, the filesystem UUID, every length
//! bounded, keys strictly ascending within and across segments and equal to the header's
//! bounds, counts against the trailers and the index, each segment's BLAKE3 against the index,
//! each segment's name against its first key, and nothing after a trailer.

use super::dump::{Frame, FrameReader, DUMP_END};
use super::manifest::{file_stamp, ManifestEntry};
use crate::confined::{Access, Confined};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;

/// The directory of the segments inside a point.
pub const SEGMENT_DIR: &str = "meta";
/// The segment index, inside [`SEGMENT_DIR`].
pub const SEGMENT_INDEX: &str = "index";
const SEG_MAGIC: &[u8; 8] = b"DGMSEG01";
const INDEX_MAGIC: &[u8; 8] = b"DGMSIDX1";
/// A key-defined boundary: low bits of the key hash all zero (about 4096 records apart).
const NATURAL_MASK: u64 = (1 << 12) - 1;
/// Above this size a segment also ends after a key whose hash has `SOFT_MASK` bits zero, so
/// segments of large records stay small (a change rewrites one segment).
pub const SOFT_BYTES: usize = 256 << 10;
const SOFT_MASK: u64 = (1 << 5) - 1;
/// A segment never holds more than this many bytes of records (plus the last record)...
pub const MAX_SEGMENT_BYTES: usize = 4 << 20;
/// ... nor more records than this.
pub const MAX_SEGMENT_RECORDS: u64 = 1 << 16;

/// The BLAKE3 of a stored key, which decides boundaries and names segments.
fn key_hash(key: &[u8]) -> [u8; 32] {
    *blake3::hash(key).as_bytes()
}

/// The id of a segment whose first key is `first` (its file is `<hex id>.seg`).
fn segment_id(first: &[u8]) -> [u8; 16] {
    let h = key_hash(first);
    let mut id = [0u8; 16];
    id.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
    id
}

fn segment_file(id: &[u8; 16]) -> String {
    format!("{}.seg", hex::encode(id))
}

/// One segment of a written dump.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its path relative to the point (`meta/<name>.seg`).
    pub path: String,
    /// Records it holds.
    pub records: u64,
    /// Its length in bytes.
    pub len: u64,
    /// BLAKE3 of its contents.
    pub hash: [u8; 32],
    /// Identity of the stored file (`inode.mtime_ns`) for the manifest.
    pub stamp: String,
    /// Whether it was hard-linked from the previous point rather than written.
    pub reused: bool,
}

/// What a finished segmented dump holds.
#[derive(Debug, Clone)]
pub struct SegmentedDump {
    /// The segments in key order.
    pub segments: Vec<Segment>,
    /// The index file, relative to the point.
    pub index_path: String,
    /// Records in all.
    pub records: u64,
}

impl SegmentedDump {
    /// Bytes of segments written (not linked) plus the index.
    pub fn bytes_written(&self, index_len: u64) -> u64 {
        self.segments
            .iter()
            .filter(|s| !s.reused)
            .map(|s| s.len)
            .sum::<u64>()
            + index_len
    }
}

/// Writes a segmented dump into `point/meta/`, record by record in ascending key order,
/// reusing the segments of the previous point that are unchanged.
pub struct SegmentWriter<'a> {
    dir: &'a Confined,
    /// The point being written, relative to `dir`.
    point: String,
    /// The previous point, relative to `dir`, and its manifest entries by path.
    previous: Option<(String, &'a BTreeMap<String, ManifestEntry>)>,
    fs_uuid: [u8; 16],
    body: Vec<u8>,
    first: Option<Vec<u8>>,
    last: Vec<u8>,
    count: u64,
    done: Vec<Segment>,
    index: Vec<u8>,
    total: u64,
}

impl<'a> SegmentWriter<'a> {
    /// Segments finished so far (written or linked).
    pub fn segments_done(&self) -> usize {
        self.done.len()
    }

    /// Starts a dump in `point` beneath `dir` (its `meta/` must not exist). Segments of the
    /// point `previous` (relative to `dir`) whose manifest entry (in `previous_entries`) has
    /// the same hash and length, and whose file still has the recorded identity, are linked.
    pub fn create(
        dir: &'a Confined,
        point: &str,
        fs_uuid: &[u8; 16],
        previous: Option<(&str, &'a BTreeMap<String, ManifestEntry>)>,
    ) -> Result<SegmentWriter<'a>> {
        dir.create_dir(&format!("{point}/{SEGMENT_DIR}"))?;
        let mut index = Vec::with_capacity(1 << 16);
        index.extend_from_slice(INDEX_MAGIC);
        index.extend_from_slice(fs_uuid);
        index.extend_from_slice(&0u64.to_le_bytes());
        Ok(SegmentWriter {
            dir,
            point: point.to_string(),
            previous: previous.map(|(p, e)| (p.to_string(), e)),
            fs_uuid: *fs_uuid,
            body: Vec::new(),
            first: None,
            last: Vec::new(),
            count: 0,
            done: Vec::new(),
            index,
            total: 0,
        })
    }

    /// Appends one record (keys must come in ascending order).
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (Ok(kl), Ok(vl)) = (u32::try_from(key.len()), u32::try_from(value.len())) else {
            return Err(Error::invalid("metadata record too large to dump"));
        };
        self.body.extend_from_slice(&kl.to_le_bytes());
        self.body.extend_from_slice(key);
        self.body.extend_from_slice(&vl.to_le_bytes());
        self.body.extend_from_slice(value);
        if self.first.is_none() {
            self.first = Some(key.to_vec());
        }
        self.last.clear();
        self.last.extend_from_slice(key);
        self.count += 1;
        let h = key_hash(key);
        let low = u64::from_le_bytes(
            h.get(..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0xff; 8]),
        );
        if low & NATURAL_MASK == 0
            || (self.body.len() >= SOFT_BYTES && low & SOFT_MASK == 0)
            || self.body.len() >= MAX_SEGMENT_BYTES
            || self.count >= MAX_SEGMENT_RECORDS
        {
            self.cut()?;
        }
        Ok(())
    }

    /// Ends the current segment: links the previous point's copy if it is the same, else
    /// writes it.
    fn cut(&mut self) -> Result<()> {
        let Some(first) = self.first.take() else {
            return Ok(());
        };
        let mut head = Vec::with_capacity(32 + first.len() + self.last.len());
        head.extend_from_slice(SEG_MAGIC);
        head.extend_from_slice(&self.fs_uuid);
        for k in [&first, &self.last] {
            head.extend_from_slice(&u32::try_from(k.len()).unwrap_or(0).to_le_bytes());
            head.extend_from_slice(k);
        }
        let mut tail = [0u8; 12];
        tail[..4].copy_from_slice(DUMP_END);
        tail[4..].copy_from_slice(&self.count.to_le_bytes());
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        hasher.update(&self.body);
        hasher.update(&tail);
        let hash = *hasher.finalize().as_bytes();
        let len = (head.len() + self.body.len() + tail.len()) as u64;
        let id = segment_id(&first);
        let name = segment_file(&id);
        let path = format!("{SEGMENT_DIR}/{name}");
        let rel = format!("{}/{path}", self.point);

        let mut reused = false;
        if let Some((prev, entries)) = &self.previous {
            if let Some(e) = entries.get(&path) {
                let prev_rel = format!("{prev}/{path}");
                // The same contents, and the file still the one hashed then (as for objects).
                if e.hash == hash
                    && e.len == len
                    && file_stamp(self.dir, &prev_rel)
                        .ok()
                        .is_some_and(|(s, l)| l == len && e.stamp.as_deref() == Some(s.as_str()))
                {
                    self.dir.hard_link(&prev_rel, &rel)?;
                    reused = true;
                }
            }
        }
        if !reused {
            // Durability comes from the syncfs before the point is announced.
            let mut f = self.dir.open_file(&rel, Access::CreateNew)?;
            f.write_all(&head)
                .and_then(|()| f.write_all(&self.body))
                .and_then(|()| f.write_all(&tail))
                .map_err(|e| Error::io(self.dir.display(&rel), e))?;
        }
        let (stamp, _) = file_stamp(self.dir, &rel)?;
        self.index.extend_from_slice(&id);
        self.index.extend_from_slice(&self.count.to_le_bytes());
        self.index.extend_from_slice(&hash);
        self.total += self.count;
        self.done.push(Segment {
            path,
            records: self.count,
            len,
            hash,
            stamp,
            reused,
        });
        self.body.clear();
        self.count = 0;
        Ok(())
    }

    /// Ends the last segment and writes the index; returns what was written.
    pub fn finish(mut self) -> Result<SegmentedDump> {
        self.cut()?;
        let n = (self.done.len() as u64).to_le_bytes();
        if let Some(slot) = self.index.get_mut(24..32) {
            slot.copy_from_slice(&n);
        }
        self.index.extend_from_slice(DUMP_END);
        self.index.extend_from_slice(&self.total.to_le_bytes());
        let index_path = format!("{SEGMENT_DIR}/{SEGMENT_INDEX}");
        let rel = format!("{}/{index_path}", self.point);
        let mut f = self.dir.open_file(&rel, Access::CreateNew)?;
        f.write_all(&self.index)
            .map_err(|e| Error::io(self.dir.display(&rel), e))?;
        Ok(SegmentedDump {
            segments: self.done,
            index_path,
            records: self.total,
        })
    }
}

/// Whether the point directory `dir` holds a segmented dump (rather than `meta.dump`).
pub fn is_segmented(dir: &Confined) -> Result<bool> {
    Ok(dir
        .status(&format!("{SEGMENT_DIR}/{SEGMENT_INDEX}"))?
        .is_some())
}

/// Reads the segmented dump of the point directory `dir`, calling `f` for each record in key
/// order; returns the dump's fs UUID and record count. Anything malformed, truncated, out of
/// order or not matching the index is an error naming the file.
pub fn read_segmented(
    dir: &Confined,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<([u8; 16], u64)> {
    read_segmented_with(dir, f, &mut |_| {})
}

/// [`read_segmented`], calling `segment_done` with the path of each segment (relative to
/// `dir`) once all its records went to `f` (for progress).
pub(super) fn read_segmented_with(
    dir: &Confined,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
    segment_done: &mut dyn FnMut(&str),
) -> Result<([u8; 16], u64)> {
    let mut idx = FrameReader::open(
        dir,
        &format!("{SEGMENT_DIR}/{SEGMENT_INDEX}"),
        "metadata segment index",
        false,
    )?;
    if &idx.array::<8>()? != INDEX_MAGIC {
        return Err(idx.err("not a digimedfs metadata segment index"));
    }
    let uuid: [u8; 16] = idx.array()?;
    let n = idx.u64()?;
    let mut last: Option<Vec<u8>> = None;
    let mut total = 0u64;
    // The count is only a loop bound: each entry is read from the file, so a count larger
    // than the file holds ends in a truncation error.
    for _ in 0..n {
        let id: [u8; 16] = idx.array()?;
        let records = idx.u64()?;
        let hash: [u8; 32] = idx.array()?;
        let rel = format!("{SEGMENT_DIR}/{}", segment_file(&id));
        let got = read_segment(dir, &rel, &uuid, &id, &mut last, f)?;
        if got.0 != records || got.1 != hash {
            return Err(Error::integrity(format!(
                "{}: metadata segment does not match the segment index (records {} vs {records}{})",
                dir.display(&rel).display(),
                got.0,
                if got.1 == hash {
                    ""
                } else {
                    ", contents differ"
                }
            )));
        }
        total = total.saturating_add(records);
        segment_done(&rel);
    }
    match idx.record_or_end()? {
        Frame::End(want) if want == total => {}
        Frame::End(want) => {
            return Err(idx.err(&format!(
                "its segments hold {total} records, its trailer says {want}"
            )))
        }
        Frame::Record(..) => return Err(idx.err("more segments than it counts")),
    }
    idx.expect_eof()?;
    Ok((uuid, total))
}

/// Reads one segment, checking it against the index entry (`uuid`, `id`) and the keys before
/// it (`last`, updated); returns its record count and BLAKE3.
fn read_segment(
    dir: &Confined,
    rel: &str,
    uuid: &[u8; 16],
    id: &[u8; 16],
    last: &mut Option<Vec<u8>>,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<(u64, [u8; 32])> {
    let mut r = FrameReader::open(dir, rel, "metadata segment", true)?;
    if &r.array::<8>()? != SEG_MAGIC {
        return Err(r.err("not a digimedfs metadata segment"));
    }
    if &r.array::<16>()? != uuid {
        return Err(r.err("belongs to another filesystem than its index"));
    }
    let first = r.key()?;
    let last_bound = r.key()?;
    if segment_id(&first) != *id {
        return Err(r.err("its first key does not match its name"));
    }
    let mut count = 0u64;
    loop {
        match r.record_or_end()? {
            Frame::Record(key, value) => {
                if count == 0 && key != first {
                    return Err(r.err("first record differs from the header's first key"));
                }
                if last.as_ref().is_some_and(|l| *l >= key) || key > last_bound {
                    return Err(r.err(&format!("key out of order at byte {}", r.offset)));
                }
                *last = Some(key.clone());
                f(key, value)?;
                count += 1;
            }
            Frame::End(want) => {
                if want != count || count == 0 {
                    return Err(r.err(&format!("holds {count} records, its trailer says {want}")));
                }
                if last.as_deref() != Some(last_bound.as_slice()) {
                    return Err(r.err("last record differs from the header's last key"));
                }
                r.expect_eof()?;
                let hash = r.hash().unwrap_or_default();
                return Ok((count, hash));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u32, value_len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let mut k = b"I".to_vec();
                k.extend_from_slice(&u64::from(i).to_be_bytes());
                (k, vec![(i % 251) as u8; value_len])
            })
            .collect()
    }

    fn write(
        c: &Confined,
        point: &str,
        recs: &[(Vec<u8>, Vec<u8>)],
        prev: Option<(&str, &BTreeMap<String, ManifestEntry>)>,
    ) -> SegmentedDump {
        c.create_dir(point).expect("point dir");
        let mut w = SegmentWriter::create(c, point, &[5; 16], prev).expect("create");
        for (k, v) in recs {
            w.record(k, v).expect("record");
        }
        w.finish().expect("finish")
    }

    fn read_all(c: &Confined, point: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let p = c.open_dir(point)?;
        let mut seen = Vec::new();
        let (uuid, n) = read_segmented(&p, &mut |k, v| {
            seen.push((k, v));
            Ok(())
        })?;
        assert_eq!(uuid, [5; 16]);
        assert_eq!(n as usize, seen.len());
        Ok(seen)
    }

    fn entries(d: &SegmentedDump) -> BTreeMap<String, ManifestEntry> {
        d.segments
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    ManifestEntry {
                        path: s.path.clone(),
                        len: s.len,
                        hash: s.hash,
                        stamp: Some(s.stamp.clone()),
                    },
                )
            })
            .collect()
    }

    /// Round trip; a record changed, inserted or removed rewrites only the segments around
    /// it, because boundaries follow the keys (a count-based cut would shift every later one).
    #[test]
    fn segments_round_trip_and_change_locally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Confined::open(dir.path()).expect("dir");
        let mut recs = records(60_000, 40);
        let a = write(&c, "a", &recs, None);
        assert!(a.segments.len() >= 8, "{} segments", a.segments.len());
        assert_eq!(read_all(&c, "a").expect("read a"), recs);

        recs[30_000].1 = b"changed".to_vec();
        recs.insert(
            10_001,
            (b"I\0\0\0\0\0\0\x27\x10x".to_vec(), b"new".to_vec()),
        );
        recs.remove(50_000);
        let prev = entries(&a);
        let b = write(&c, "b", &recs, Some(("a", &prev)));
        assert_eq!(read_all(&c, "b").expect("read b"), recs);
        let written = b.segments.iter().filter(|s| !s.reused).count();
        assert!(
            (1..=6).contains(&written),
            "{written} of {} segments rewritten for three changed records",
            b.segments.len()
        );
        for s in b.segments.iter().filter(|s| s.reused) {
            let (x, y) = (
                c.status(&format!("a/{}", s.path))
                    .expect("stat")
                    .expect("a"),
                c.status(&format!("b/{}", s.path))
                    .expect("stat")
                    .expect("b"),
            );
            assert_eq!(x.ino, y.ino, "reused segment {} is not a link", s.path);
        }
    }

    /// Large records: the size rules keep segments bounded.
    #[test]
    fn segments_stay_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Confined::open(dir.path()).expect("dir");
        let recs = records(400, 60_000);
        let a = write(&c, "a", &recs, None);
        for s in &a.segments {
            assert!(s.len <= (MAX_SEGMENT_BYTES + 61_000 + 100) as u64, "{s:?}");
        }
        assert!(a.segments.len() >= 4);
        assert_eq!(read_all(&c, "a").expect("read"), recs);
    }

    /// Truncation, a flipped byte, a segment from elsewhere and a damaged index are errors.
    #[test]
    fn segment_damage_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Confined::open(dir.path()).expect("dir");
        let recs = records(20_000, 30);
        let a = write(&c, "a", &recs, None);
        let seg = dir.path().join("a").join(&a.segments[1].path);
        let good = std::fs::read(&seg).expect("read segment");
        for cut in [0, 7, 30, good.len() / 2, good.len() - 1] {
            std::fs::write(&seg, &good[..cut]).expect("truncate");
            let e = read_all(&c, "a").expect_err("truncated segment accepted");
            assert!(e.to_string().contains("truncated"), "cut {cut}: {e}");
        }
        let mut flipped = good.clone();
        let at = flipped.len() - 20;
        flipped[at] ^= 1;
        std::fs::write(&seg, &flipped).expect("flip");
        let e = read_all(&c, "a").expect_err("flipped segment accepted");
        assert!(e.to_string().contains("contents differ"), "{e}");
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&seg, &longer).expect("append");
        assert!(
            read_all(&c, "a").is_err(),
            "segment with a trailing byte accepted"
        );
        std::fs::write(&seg, &good).expect("restore");
        assert!(read_all(&c, "a").is_ok());

        // The next segment in place of this one (its name does not match its first key).
        let other = std::fs::read(dir.path().join("a").join(&a.segments[2].path)).expect("read");
        std::fs::write(&seg, &other).expect("swap");
        let e = read_all(&c, "a").expect_err("misplaced segment accepted");
        assert!(e.to_string().contains("name"), "{e}");
        std::fs::write(&seg, &good).expect("restore");

        let idx = dir.path().join("a/meta/index");
        let good_idx = std::fs::read(&idx).expect("index");
        std::fs::write(&idx, &good_idx[..good_idx.len() - 3]).expect("truncate index");
        assert!(read_all(&c, "a").is_err(), "truncated index accepted");
        let mut dup = good_idx.clone();
        // Two segments listed in the other order: keys are no longer ascending.
        let e = 32;
        let (x, y) = (e..e + 56, e + 56..e + 112);
        let (sx, sy) = (dup[x.clone()].to_vec(), dup[y.clone()].to_vec());
        dup[x].copy_from_slice(&sy);
        dup[y].copy_from_slice(&sx);
        std::fs::write(&idx, &dup).expect("reorder index");
        let e = read_all(&c, "a").expect_err("reordered index accepted");
        assert!(e.to_string().contains("order"), "{e}");
    }
}
