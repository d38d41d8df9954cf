//! The framed record format of a point's metadata: every sealed record as stored, sorted by
//! key, framed so that the reader bounds every length and detects truncation. Points are
//! written as segments of this format (`segments.rs`); the single-file dump of earlier builds
//! (`meta.dump`) is still read.

use crate::confined::{Access, Confined};
use crate::{Error, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

pub(super) const DUMP_MAGIC: &[u8; 8] = b"DGMDUMP1";
pub(super) const DUMP_END: &[u8; 4] = b"END!";
/// Largest key and value a dump may hold (records are far smaller).
pub(super) const MAX_DUMP_KEY: usize = 1 << 16;
pub(super) const MAX_DUMP_VALUE: usize = 1 << 24;

/// Writes a metadata dump: `DGMDUMP1 ‖ fs_uuid ‖ (le32 klen ‖ key ‖ le32 vlen ‖ value)* ‖
/// END! ‖ le64 count`, records in the order given (ascending keys).
pub struct DumpWriter {
    out: BufWriter<File>,
    path: PathBuf,
    count: u64,
}

impl DumpWriter {
    /// Creates the dump file `rel` beneath `dir` (it must not exist).
    pub fn create(dir: &Confined, rel: &str, fs_uuid: &[u8; 16]) -> Result<DumpWriter> {
        let file = dir.open_file(rel, Access::CreateNew)?;
        let mut w = DumpWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path: dir.display(rel),
            count: 0,
        };
        w.put(DUMP_MAGIC)?;
        w.put(fs_uuid)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Appends one record.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (Ok(kl), Ok(vl)) = (u32::try_from(key.len()), u32::try_from(value.len())) else {
            return Err(Error::invalid("metadata record too large to dump"));
        };
        self.put(&kl.to_le_bytes())?;
        self.put(key)?;
        self.put(&vl.to_le_bytes())?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and makes the file durable; returns the record count.
    pub fn finish(mut self) -> Result<u64> {
        self.put(DUMP_END)?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(count)
    }
}

/// Reads a framed file (a dump, a segment or a segment index) piece by piece: every read is
/// bounded by what the file holds, a short read is a truncation naming the offset, and with
/// `hash` set everything read is also hashed.
pub(super) struct FrameReader {
    r: BufReader<File>,
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    hash: Option<blake3::Hasher>,
    what: &'static str,
}

impl FrameReader {
    /// Opens `rel` beneath `dir`; `what` names the kind of file in messages.
    pub(super) fn open(
        dir: &Confined,
        rel: &str,
        what: &'static str,
        hash: bool,
    ) -> Result<FrameReader> {
        let file = dir.open_file(rel, Access::Read)?;
        Ok(FrameReader {
            r: BufReader::with_capacity(1 << 20, file),
            path: dir.display(rel),
            offset: 0,
            hash: hash.then(blake3::Hasher::new),
            what,
        })
    }

    pub(super) fn err(&self, what: &str) -> Error {
        Error::format(format!("{}: {}: {what}", self.path.display(), self.what))
    }

    /// The next `n` bytes. The buffer grows with the bytes actually read, so a length field
    /// claiming more than the file holds costs nothing.
    pub(super) fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let got = (&mut self.r)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if got < n {
            return Err(self.err(&format!("truncated at byte {}", self.offset + got as u64)));
        }
        self.offset += n as u64;
        if let Some(h) = &mut self.hash {
            h.update(&buf);
        }
        Ok(buf)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.bytes(N)?;
        b.try_into().map_err(|_| self.err("short field"))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A key of a record: `le32 len ‖ key`, 1..=[`MAX_DUMP_KEY`] bytes.
    pub(super) fn key(&mut self) -> Result<Vec<u8>> {
        let at = self.offset;
        let kl = self.u32()? as usize;
        self.key_of_len(kl, at)
    }

    fn key_of_len(&mut self, kl: usize, at: u64) -> Result<Vec<u8>> {
        if kl == 0 || kl > MAX_DUMP_KEY {
            return Err(self.err(&format!("bad key length {kl} at byte {at}")));
        }
        self.bytes(kl)
    }

    /// The next record, or None at the `END!` marker (whose count is read and returned).
    pub(super) fn record_or_end(&mut self) -> Result<Frame> {
        let at = self.offset;
        let head: [u8; 4] = self.array()?;
        if &head == DUMP_END {
            return Ok(Frame::End(self.u64()?));
        }
        let key = self.key_of_len(u32::from_le_bytes(head) as usize, at)?;
        let at = self.offset;
        let vl = self.u32()? as usize;
        if vl > MAX_DUMP_VALUE {
            return Err(self.err(&format!("bad value length {vl} at byte {at}")));
        }
        Ok(Frame::Record(key, self.bytes(vl)?))
    }

    /// Fails unless the whole file was read.
    pub(super) fn expect_eof(&mut self) -> Result<()> {
        let mut one = [0u8; 1];
        match self.r.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.err(&format!("bytes after the end at byte {}", self.offset))),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// The hash of everything read so far (only if opened with `hash`).
    pub(super) fn hash(&self) -> Option<[u8; 32]> {
        self.hash.as_ref().map(|h| *h.finalize().as_bytes())
    }
}

/// One item of a framed record stream.
pub(super) enum Frame {
    Record(Vec<u8>, Vec<u8>),
    /// The `END!` marker and the count after it.
    End(u64),
}

/// Reads a single-file metadata dump (`meta.dump`, the layout of points taken by earlier
/// builds), calling `f` for each record; returns the dump's fs UUID and count. A truncated or
/// malformed dump is an error naming the offset.
pub fn read_dump(
    dir: &Confined,
    rel: &str,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<([u8; 16], u64)> {
    let mut r = FrameReader::open(dir, rel, "metadata dump", false)?;
    if &r.array::<8>()? != DUMP_MAGIC {
        return Err(r.err("not a digimedfs metadata dump"));
    }
    let uuid: [u8; 16] = r.array()?;
    let mut count = 0u64;
    loop {
        match r.record_or_end()? {
            Frame::End(want) => {
                if want != count {
                    return Err(r.err(&format!("holds {count} records, its trailer says {want}")));
                }
                return Ok((uuid, count));
            }
            Frame::Record(key, value) => {
                f(key, value)?;
                count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn dump_round_trips_and_detects_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d");
        let c = Confined::open(dir.path()).expect("dir");
        let mut w = DumpWriter::create(&c, "d", &[3; 16]).expect("create");
        w.record(b"Ia", b"value one").expect("record");
        w.record(b"Ib", b"").expect("record");
        assert_eq!(w.finish().expect("finish"), 2);
        let mut seen = Vec::new();
        let (uuid, n) = read_dump(&c, "d", &mut |k, v| {
            seen.push((k, v));
            Ok(())
        })
        .expect("read");
        assert_eq!((uuid, n), ([3; 16], 2));
        assert_eq!(seen[0], (b"Ia".to_vec(), b"value one".to_vec()));
        let bytes = std::fs::read(&path).expect("read file");
        for cut in [0, 10, 24, 30, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            let err = read_dump(&c, "d", &mut |_, _| Ok(())).expect_err("truncated dump accepted");
            assert!(err.to_string().contains("truncated") || err.to_string().contains("not a"));
        }
    }
}
