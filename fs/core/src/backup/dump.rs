//! The metadata dump of a point: every sealed record as stored, sorted by key, in a framed
//! format whose reader bounds every length and detects truncation.

use crate::confined::{Access, Confined};
use crate::{Error, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

const DUMP_MAGIC: &[u8; 8] = b"DGMDUMP1";
const DUMP_END: &[u8; 4] = b"END!";
/// Largest key and value a dump may hold (records are far smaller).
const MAX_DUMP_KEY: usize = 1 << 16;
const MAX_DUMP_VALUE: usize = 1 << 24;

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

/// Reads a metadata dump, calling `f` for each record; returns the dump's fs UUID and count.
/// A truncated or malformed dump is an error naming the offset.
pub fn read_dump(
    dir: &Confined,
    rel: &str,
    f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<([u8; 16], u64)> {
    let file = dir.open_file(rel, Access::Read)?;
    let path = &dir.display(rel);
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    // The buffer grows with the bytes actually read, so a length field claiming more than the
    // file holds costs nothing.
    let mut read = |n: usize, offset: &mut u64| -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let got = (&mut r)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        if got < n {
            return Err(Error::format(format!(
                "{}: metadata dump truncated at byte {}",
                path.display(),
                *offset + got as u64
            )));
        }
        *offset += n as u64;
        Ok(buf)
    };
    if read(8, &mut offset)?.as_slice() != DUMP_MAGIC {
        return Err(Error::format(format!(
            "{}: not a digimedfs metadata dump",
            path.display()
        )));
    }
    let uuid: [u8; 16] = read(16, &mut offset)?
        .try_into()
        .map_err(|_| Error::format("dump uuid"))?;
    let mut count = 0u64;
    loop {
        let head = read(4, &mut offset)?;
        if head.as_slice() == DUMP_END {
            let n = read(8, &mut offset)?;
            let want = u64::from_le_bytes(n.try_into().map_err(|_| Error::format("dump count"))?);
            if want != count {
                return Err(Error::format(format!(
                    "{}: metadata dump holds {count} records, its trailer says {want}",
                    path.display()
                )));
            }
            return Ok((uuid, count));
        }
        let kl = u32::from_le_bytes(
            head.try_into()
                .map_err(|_| Error::format("dump key length"))?,
        ) as usize;
        if kl == 0 || kl > MAX_DUMP_KEY {
            return Err(Error::format(format!(
                "{}: bad key length {kl} at byte {offset}",
                path.display()
            )));
        }
        let key = read(kl, &mut offset)?;
        let vl = u32::from_le_bytes(
            read(4, &mut offset)?
                .try_into()
                .map_err(|_| Error::format("dump value length"))?,
        ) as usize;
        if vl > MAX_DUMP_VALUE {
            return Err(Error::format(format!(
                "{}: bad value length {vl} at byte {offset}",
                path.display()
            )));
        }
        let value = read(vl, &mut offset)?;
        f(key, value)?;
        count += 1;
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
