//! The manifest of a point: every file with its length and BLAKE3 hash, and a MAC for key
//! holders. Paths in it are checked to stay inside the point, and it is read as a stream, so
//! a manifest of any size (or a hostile one) costs one line of memory.

use super::{BACKUP_DIR, MANIFEST, POINT_DIR};
use crate::confined::{Access, Confined, Kind};
use crate::crypto::RecordMac;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

const MANIFEST_MAGIC: &str = "digimedfs-backup-point 1";

/// One file of a point, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Path relative to the point directory.
    pub path: String,
    /// Length in bytes.
    pub len: u64,
    /// BLAKE3 hash of the contents.
    pub hash: [u8; 32],
    /// Identity of the stored file when hashed (`inode.mtime_ns`), so the next point can reuse
    /// the hash of an object that did not change.
    pub stamp: Option<String>,
}

/// The manifest of a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The filesystem's UUID.
    pub fs_uuid: [u8; 16],
    /// Random id of the point (hex).
    pub point: String,
    /// When the point was taken (seconds since the epoch).
    pub taken: u64,
    /// The superblock epoch the point holds.
    pub epoch: u64,
    /// Every file of the point.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The manifest text without its MAC line.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{MANIFEST_MAGIC}\nfs {}\npoint {}\ntaken {}\nepoch {}\n",
            hex::encode(self.fs_uuid),
            self.point,
            self.taken,
            self.epoch
        );
        for e in &self.entries {
            s.push_str(&format!(
                "file {} {} {}",
                e.path,
                e.len,
                hex::encode(e.hash)
            ));
            if let Some(stamp) = &e.stamp {
                s.push(' ');
                s.push_str(stamp);
            }
            s.push('\n');
        }
        s
    }

    /// The manifest text with its MAC line (MAC under the superblock MAC key).
    pub fn encode(&self, mac: &RecordMac) -> String {
        let body = self.body();
        let tag = mac.mac_parts(&[crate::crypto::kdf::DOMAIN_MANIFEST, body.as_bytes()]);
        format!("{body}mac {}\n", hex::encode(tag))
    }

    /// Parses a manifest; returns it with its MAC (absent if the text has none).
    pub fn parse(text: &str) -> Result<(Manifest, Option<[u8; 32]>)> {
        let mut lines = text.lines();
        let header = ManifestHeader::parse(&mut || Ok(lines.next().map(str::to_string)))?;
        let mut entries = Vec::new();
        let mut mac = None;
        for line in lines {
            match BodyLine::parse(line, mac.is_some())? {
                BodyLine::File(e) => entries.push(e),
                BodyLine::Mac(tag) => mac = Some(tag),
            }
        }
        Ok((
            Manifest {
                fs_uuid: header.fs_uuid,
                point: header.point,
                taken: header.taken,
                epoch: header.epoch,
                entries,
            },
            mac,
        ))
    }
}

/// A manifest's first lines: which filesystem and point it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHeader {
    /// The filesystem's UUID.
    pub fs_uuid: [u8; 16],
    /// Random id of the point (hex).
    pub point: String,
    /// When the point was taken (seconds since the epoch).
    pub taken: u64,
    /// The superblock epoch the point holds.
    pub epoch: u64,
}

pub(super) fn manifest_err(what: &str) -> Error {
    Error::format(format!("backup manifest: {what}"))
}

impl ManifestHeader {
    /// Parses the magic and header lines, each taken from `next_line`.
    fn parse(next_line: &mut dyn FnMut() -> Result<Option<String>>) -> Result<ManifestHeader> {
        if next_line()?.as_deref() != Some(MANIFEST_MAGIC) {
            return Err(manifest_err(&format!(
                "does not start with \"{MANIFEST_MAGIC}\" (not a digimedfs backup point, or an unsupported version)"
            )));
        }
        let mut field = |name: &str| -> Result<String> {
            let line = next_line()?.unwrap_or_default();
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| manifest_err(&format!("expected \"{name} …\", found {line:?}")))
        };
        let fs_hex = field("fs")?;
        let fs_uuid: [u8; 16] = hex::decode(&fs_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| manifest_err("bad fs uuid"))?;
        let point = field("point")?;
        let taken = field("taken")?
            .parse()
            .map_err(|_| manifest_err("bad taken time"))?;
        let epoch = field("epoch")?
            .parse()
            .map_err(|_| manifest_err("bad epoch"))?;
        Ok(ManifestHeader {
            fs_uuid,
            point,
            taken,
            epoch,
        })
    }
}

/// One line after a manifest's header.
enum BodyLine {
    File(ManifestEntry),
    Mac([u8; 32]),
}

impl BodyLine {
    fn parse(line: &str, mac_seen: bool) -> Result<BodyLine> {
        let bad = |what: &str| manifest_err(what);
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            _ if mac_seen => Err(bad(&format!("line after the MAC line: {line:?}"))),
            ["file", path, len, hash, rest @ ..] if rest.len() <= 1 => {
                let hash: [u8; 32] = hex::decode(hash)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| bad(&format!("bad hash of {path}")))?;
                if !safe_relative(path) {
                    return Err(bad(&format!("unsafe path {path:?}")));
                }
                Ok(BodyLine::File(ManifestEntry {
                    path: (*path).to_string(),
                    len: len
                        .parse()
                        .map_err(|_| bad(&format!("bad length of {path}")))?,
                    hash,
                    stamp: rest.first().map(|s| (*s).to_string()),
                }))
            }
            ["mac", tag] => Ok(BodyLine::Mac(
                hex::decode(tag)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| bad("bad mac"))?,
            )),
            _ => Err(bad(&format!("unexpected line {line:?}"))),
        }
    }
}

/// Longest manifest line accepted (a genuine line is under 200 bytes).
const MANIFEST_LINE_MAX: u64 = 4096;

/// A manifest read line by line from its file, so a manifest of any size (a point of a
/// million files, or a hostile one) costs one line of memory.
pub(super) struct ManifestStream {
    reader: BufReader<File>,
    shown: PathBuf,
    /// Bytes of the manifest before its MAC line so far (the MACed body).
    pub(super) body_len: u64,
    pub(super) mac: Option<[u8; 32]>,
    line_no: u64,
}

impl ManifestStream {
    /// Opens `rel` beneath `dir` and reads its header; None if there is no such file.
    pub(super) fn open(
        dir: &Confined,
        rel: &str,
    ) -> Result<Option<(ManifestHeader, ManifestStream)>> {
        let Some(file) = dir.try_open_file(rel, Access::Read)? else {
            return Ok(None);
        };
        let mut s = ManifestStream {
            reader: BufReader::with_capacity(1 << 16, file),
            shown: dir.display(rel),
            body_len: 0,
            mac: None,
            line_no: 0,
        };
        let header = ManifestHeader::parse(&mut || s.line())?;
        Ok(Some((header, s)))
    }

    /// The next line without its newline; None at the end.
    fn line(&mut self) -> Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MANIFEST_LINE_MAX + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(&self.shown, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if buf.last() != Some(&b'\n') {
            return Err(manifest_err(&format!(
                "line {} is longer than {MANIFEST_LINE_MAX} bytes or not terminated",
                self.line_no
            )));
        }
        buf.pop();
        let line = String::from_utf8(buf)
            .map_err(|_| manifest_err(&format!("line {} is not UTF-8", self.line_no)))?;
        if self.mac.is_none() && !line.starts_with("mac ") {
            self.body_len += n as u64;
        }
        Ok(Some(line))
    }

    /// The next file entry; None once the entries (and the MAC line, if any) are read.
    pub(super) fn next_entry(&mut self) -> Result<Option<ManifestEntry>> {
        while let Some(line) = self.line()? {
            match BodyLine::parse(&line, self.mac.is_some())? {
                BodyLine::File(e) => return Ok(Some(e)),
                BodyLine::Mac(tag) => self.mac = Some(tag),
            }
        }
        Ok(None)
    }
}

/// A manifest path: relative, `/`-separated, no `.`/`..`, only safe characters.
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        })
}

/// BLAKE3 of the contents of the regular file `rel` beneath `dir`, and its length.
pub fn hash_file(dir: &Confined, rel: &str) -> Result<([u8; 32], u64)> {
    hash_file_with(dir, rel, &mut |_| {})
}

/// [`hash_file`], calling `on_read` with the length of each piece read (for progress).
pub(super) fn hash_file_with(
    dir: &Confined,
    rel: &str,
    on_read: &mut dyn FnMut(u64),
) -> Result<([u8; 32], u64)> {
    let file = dir.open_file(rel, Access::Read)?;
    hash_reader(file, &dir.display(rel), on_read)
}

/// BLAKE3 of what `reader` holds and its length (`path` for messages); `on_read` gets the
/// length of each piece read.
fn hash_reader(
    mut reader: File,
    path: &Path,
    on_read: &mut dyn FnMut(u64),
) -> Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
        on_read(n as u64);
    }
    Ok((*hasher.finalize().as_bytes(), len))
}

/// Identity of a stored file for hash reuse (inode number and modification time), and its
/// length; the file `rel` beneath `dir` must be a regular file.
pub fn file_stamp(dir: &Confined, rel: &str) -> Result<(String, u64)> {
    let st = dir.status(rel)?.ok_or_else(|| {
        Error::io(
            dir.display(rel),
            std::io::Error::from_raw_os_error(libc::ENOENT),
        )
    })?;
    if st.kind != Kind::File {
        return Err(Error::integrity(format!(
            "{}: not a regular file",
            dir.display(rel).display()
        )));
    }
    Ok((format!("{}.{}", st.ino, st.mtime_ns), st.len))
}

/// The manifest text of `rel` beneath `dir` (None if absent). Manifests list one line per
/// object, so their size is bounded only by the object count.
fn read_manifest(dir: &Confined, rel: &str) -> Result<Option<String>> {
    let Some(mut f) = dir.try_open_file(rel, Access::Read)? else {
        return Ok(None);
    };
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| Error::io(dir.display(rel), e))?;
    Ok(Some(text))
}

/// The manifest of the current point of `backing`, if there is one.
pub fn current_point(backing: &Confined) -> Result<Option<Manifest>> {
    let rel = format!("{BACKUP_DIR}/{POINT_DIR}/{MANIFEST}");
    match read_manifest(backing, &rel)? {
        Some(text) => Ok(Some(Manifest::parse(&text)?.0)),
        None => Ok(None),
    }
}

/// The entries with a stamp of the manifest of the point directory `point` (relative to
/// `backing`), by path, for reuse by the next point; empty if it has none or it is unreadable.
pub(crate) fn previous_hashes(backing: &Confined, point: &str) -> BTreeMap<String, ManifestEntry> {
    let manifest = match read_manifest(backing, &format!("{point}/{MANIFEST}")) {
        Ok(Some(text)) => Manifest::parse(&text).ok().map(|(m, _)| m),
        _ => None,
    };
    match manifest {
        Some(m) => m
            .entries
            .into_iter()
            .filter(|e| e.stamp.is_some())
            .map(|e| (e.path.clone(), e))
            .collect(),
        None => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            fs_uuid: [7; 16],
            point: "00ff".into(),
            taken: 1_700_000_000,
            epoch: 42,
            entries: vec![
                ManifestEntry {
                    path: "superblock".into(),
                    len: 300,
                    hash: [1; 32],
                    stamp: None,
                },
                ManifestEntry {
                    path: "objects/ab/abcd".into(),
                    len: 8192,
                    hash: [2; 32],
                    stamp: Some("12.345".into()),
                },
            ],
        }
    }

    /// Whether `tag` is `m`'s MAC under `mac` (what verify_manifest_mac computes, streamed).
    fn verify_mac(m: &Manifest, tag: &[u8; 32], mac: &RecordMac) -> bool {
        mac.mac_parts(&[crate::crypto::kdf::DOMAIN_MANIFEST, m.body().as_bytes()]) == *tag
    }

    #[test]
    fn manifest_round_trips_and_its_mac_binds_every_line() {
        let mac = RecordMac::new(&[9; 32]);
        let text = sample().encode(&mac);
        let (m, tag) = Manifest::parse(&text).expect("parse");
        assert_eq!(m, sample());
        let tag = tag.expect("mac line");
        assert!(verify_mac(&m, &tag, &mac));
        assert!(!verify_mac(&m, &tag, &RecordMac::new(&[8; 32])));
        let mut changed = m.clone();
        changed.entries[1].len += 1;
        assert!(!verify_mac(&changed, &tag, &mac));
    }

    #[test]
    fn manifest_refuses_unsafe_paths_and_garbage() {
        let text = sample()
            .encode(&RecordMac::new(&[9; 32]))
            .replace("objects/ab/abcd", "../../etc/passwd");
        assert!(Manifest::parse(&text).is_err());
        assert!(Manifest::parse("hello\n").is_err());
        assert!(Manifest::parse("").is_err());
    }
}
