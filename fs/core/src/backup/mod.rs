//! Backup points: a consistent, self-contained state of a live filesystem that backup jobs copy
//! with ordinary tools, verify without keys, and restore to a mountable backing directory.
//!
//! A point lives in `BACKING/backup/point/` (see docs/backup.md and docs/format.md):
//!
//! - `superblock`: the superblock as of the point (clean, with the digest of the dumped records);
//! - `meta.dump`: every sealed metadata record as stored, sorted by key, so unchanged records
//!   are unchanged bytes between points and delta tools send only what changed;
//! - `objects/XX/<id>`: hard links to the data objects, kept unchanged by copy-on-write in the
//!   object store until the point is ended or replaced;
//! - `MANIFEST`: every file above with its length and BLAKE3 hash, and a MAC for key holders.
//!
//! The daemon takes and ends points on request: `digimedfs backup begin` (on any host that sees
//! the backing directory, without keys) writes `backup/request` and waits for `backup/reply`.
//! This module holds the formats, the request protocol, keyless verification and restore; the
//! point itself is taken by the core (`Filesystem::backup_begin`).

use crate::backing::{BackingDir, META_DIR, OBJECTS_DIR};
use crate::confined::{Access, Confined, Kind};
use crate::crypto::RecordMac;
use crate::meta::{Batch, MetaEngine};
use crate::objects::{copy_sparse, parse_object_name};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::backing::BACKUP_DIR;
/// The current point, inside [`BACKUP_DIR`].
pub const POINT_DIR: &str = "point";
/// A point being built, inside [`BACKUP_DIR`]; renamed to [`POINT_DIR`] when complete.
pub const POINT_NEW_DIR: &str = "point.new";
/// The manifest of a point.
pub const MANIFEST: &str = "MANIFEST";
/// The metadata dump of a point.
pub const DUMP: &str = "meta.dump";
/// The superblock of a point.
pub const POINT_SUPERBLOCK: &str = "superblock";
/// A request to the daemon, inside [`BACKUP_DIR`].
pub const REQUEST: &str = "request";
/// The daemon's reply, inside [`BACKUP_DIR`].
pub const REPLY: &str = "reply";
/// Longest request file read.
const REQUEST_MAX: u64 = 256;
/// Longest reply file read.
const REPLY_MAX: u64 = 64 << 10;

const MANIFEST_MAGIC: &str = "digimedfs-backup-point 1";
const DUMP_MAGIC: &[u8; 8] = b"DGMDUMP1";
const DUMP_END: &[u8; 4] = b"END!";
/// Largest key and value a dump may hold (records are far smaller).
const MAX_DUMP_KEY: usize = 1 << 16;
const MAX_DUMP_VALUE: usize = 1 << 24;

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

fn manifest_err(what: &str) -> Error {
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
struct ManifestStream {
    reader: BufReader<File>,
    shown: PathBuf,
    /// Bytes of the manifest before its MAC line so far (the MACed body).
    body_len: u64,
    mac: Option<[u8; 32]>,
    line_no: u64,
}

impl ManifestStream {
    /// Opens `rel` beneath `dir` and reads its header; None if there is no such file.
    fn open(dir: &Confined, rel: &str) -> Result<Option<(ManifestHeader, ManifestStream)>> {
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
    fn next_entry(&mut self) -> Result<Option<ManifestEntry>> {
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
    let file = dir.open_file(rel, Access::Read)?;
    hash_reader(file, &dir.display(rel))
}

/// BLAKE3 of what `reader` holds and its length (`path` for messages).
fn hash_reader(mut reader: File, path: &Path) -> Result<([u8; 32], u64)> {
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

/// What a keyless check of a point copy found.
#[derive(Debug)]
pub struct VerifyReport {
    /// The copy's manifest header.
    pub header: ManifestHeader,
    /// The manifest's MAC, if it has one.
    pub mac: Option<[u8; 32]>,
    /// Bytes of the manifest its MAC covers.
    body_len: u64,
    /// Files the manifest lists.
    pub files: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// The first [`MAX_PROBLEMS_LISTED`] problems, one line each, naming the file.
    pub problems: Vec<String>,
    /// How many problems there are in all.
    pub problem_count: usize,
    /// Whether the manifest MAC was checked (with keys) and verified.
    pub mac_verified: bool,
}

/// Problems listed one by one in a report; the rest are only counted.
pub const MAX_PROBLEMS_LISTED: usize = 1000;

impl VerifyReport {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS_LISTED {
            self.problems.push(what);
        }
    }
}

/// Non-object files a manifest may list (a point has its superblock and dump).
const MAX_TOP_LEVEL_ENTRIES: usize = 16;

/// Checks a copy of a point against its manifest without keys: every listed file present with
/// its recorded length and hash, nothing else present. The MAC is not checked here (it needs
/// keys; see [`verify_manifest_mac`]). The manifest is read as a stream, twice (the files it
/// lists, then a merge with the copy's `objects/` listing), so memory does not grow with it;
/// object entries must be in ascending order, as digimedfs writes them.
pub fn verify_copy(copy: &Path) -> Result<VerifyReport> {
    let dir = Confined::open(copy)?;
    let no_manifest = || {
        Error::format(format!(
            "{}: no {MANIFEST}: not a copy of a digimedfs backup point (copy BACKING/{BACKUP_DIR}/{POINT_DIR}/ after `digimedfs backup begin`)",
            copy.display()
        ))
    };
    let (header, mut stream) = ManifestStream::open(&dir, MANIFEST)?.ok_or_else(no_manifest)?;
    let mut report = VerifyReport {
        header,
        mac: None,
        body_len: 0,
        files: 0,
        bytes: 0,
        problems: Vec::new(),
        problem_count: 0,
        mac_verified: false,
    };
    let mut top_level: Vec<String> = Vec::new();
    let mut last_object: Option<String> = None;
    while let Some(e) = stream.next_entry()? {
        report.files += 1;
        if e.path.starts_with("objects/") {
            if last_object
                .as_deref()
                .is_some_and(|prev| prev >= e.path.as_str())
            {
                return Err(manifest_err(&format!(
                    "object entries out of order at {} (digimedfs writes them sorted)",
                    e.path
                )));
            }
            last_object = Some(e.path.clone());
        } else {
            if top_level.len() >= MAX_TOP_LEVEL_ENTRIES {
                return Err(manifest_err(&format!(
                    "more than {MAX_TOP_LEVEL_ENTRIES} files outside objects/ (a point has 2)"
                )));
            }
            top_level.push(e.path.clone());
        }
        check_entry(&dir, &e, &mut report);
    }
    report.mac = stream.mac;
    report.body_len = stream.body_len;

    // Nothing else: the top level, then objects/ merged with the (sorted) object entries.
    for ent in dir.list()? {
        let name = ent.name.to_string_lossy().into_owned();
        let listed = name == MANIFEST
            || (name == "objects" && ent.kind == Kind::Dir)
            || top_level.contains(&name);
        if !listed {
            report.problem(format!("not part of point {}: {name}", report.header.point));
        }
    }
    if let Some(objects) = dir.try_open_dir("objects")? {
        let (_, mut again) = ManifestStream::open(&dir, MANIFEST)?.ok_or_else(no_manifest)?;
        let mut next_listed = || -> Result<Option<String>> {
            while let Some(e) = again.next_entry()? {
                if e.path.starts_with("objects/") {
                    return Ok(Some(e.path));
                }
            }
            Ok(None)
        };
        let mut listed = next_listed()?;
        let mut subs = objects.list()?;
        subs.sort_by(|a, b| a.name.cmp(&b.name));
        for sub in subs {
            let sub_name = sub.name.to_string_lossy().into_owned();
            let (Kind::Dir, Some(plain)) = (sub.kind, sub.name.to_str()) else {
                report.problem(format!(
                    "not part of point {}: objects/{sub_name}",
                    report.header.point
                ));
                continue;
            };
            let mut files = objects.open_dir(plain)?.list()?;
            files.sort_by(|a, b| a.name.cmp(&b.name));
            for f in files {
                let path = format!("objects/{sub_name}/{}", f.name.to_string_lossy());
                // Entries before this file are missing from the copy (already reported).
                while listed.as_deref().is_some_and(|l| l < path.as_str()) {
                    listed = next_listed()?;
                }
                if listed.as_deref() == Some(path.as_str()) && f.kind != Kind::Dir {
                    listed = next_listed()?;
                } else {
                    report.problem(format!("not part of point {}: {path}", report.header.point));
                }
            }
        }
    }
    Ok(report)
}

/// Checks one listed file of a copy: present, a regular file, the recorded length and hash.
fn check_entry(dir: &Confined, e: &ManifestEntry, report: &mut VerifyReport) {
    match dir.status(&e.path) {
        Ok(None) => return report.problem(format!("missing: {}", e.path)),
        Err(err) => return report.problem(format!("unreadable: {}: {err}", e.path)),
        Ok(Some(st)) if st.kind != Kind::File => {
            return report.problem(format!("not a regular file: {}", e.path))
        }
        Ok(Some(st)) if st.len != e.len => {
            return report.problem(format!(
                "changed: {} (length {}, the point recorded {})",
                e.path, st.len, e.len
            ))
        }
        Ok(Some(_)) => {}
    }
    match hash_file(dir, &e.path) {
        Ok((hash, len)) => {
            report.bytes += len;
            if hash != e.hash || len != e.len {
                let point = report.header.point.clone();
                report.problem(format!(
                    "changed: {} (contents differ from point {point})",
                    e.path
                ));
            }
        }
        Err(err) => report.problem(format!("unreadable: {}: {err}", e.path)),
    }
}

/// [`verify_copy`], plus the manifest MAC if `key` is given (a MAC failure is an error).
pub fn verify(copy: &Path, key: Option<&dyn crate::keysource::KeySource>) -> Result<VerifyReport> {
    let mut report = verify_copy(copy)?;
    if let Some(key) = key {
        verify_manifest_mac(copy, &report, key)?;
        report.mac_verified = true;
    }
    Ok(report)
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        if self.problems.is_empty() {
            write!(
                f,
                "complete copy of point {} ({} files, {} bytes, all hashes match{})",
                self.header.point,
                self.files,
                self.bytes,
                match (self.mac_verified, self.mac.is_some()) {
                    (true, _) => ", manifest MAC verified",
                    (false, true) =>
                        ", manifest MAC not checked (give the key options to check it)",
                    // Every manifest digimedfs writes has one.
                    (false, false) => {
                        "; WARNING: the manifest has no MAC line, so nothing vouches that \
                         digimedfs wrote it (with the key options this copy is refused)"
                    }
                }
            )
        } else {
            if self.problem_count > self.problems.len() {
                writeln!(f, "… and {} more", self.problem_count - self.problems.len())?;
            }
            write!(
                f,
                "{} problem(s): the copy is not point {} as taken",
                self.problem_count, self.header.point
            )
        }
    }
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uuid = crate::format::format_uuid(&self.header.fs_uuid);
        writeln!(
            f,
            "restored point {} of filesystem {uuid} (epoch {}, taken at unix time {}) into {}: \
             {} metadata records, {} data objects{}.",
            self.header.point,
            self.header.epoch,
            self.header.taken,
            self.target.display(),
            self.records,
            self.objects,
            match (self.mac_verified, self.mac_missing) {
                (true, _) => "; manifest MAC verified",
                (false, false) => "; manifest MAC not checked (no key options given)",
                (false, true) => {
                    "; WARNING: the manifest has no MAC line, so nothing vouches that digimedfs \
                     wrote it (restore with the key options refuses such a copy)"
                }
            },
        )?;
        match &self.check_command {
            Some(cmd) => write!(f, "Check it with `{cmd}`.")?,
            None => write!(
                f,
                "Check it with `fsck.digimed -n` and the filesystem's key options (--key-file \
                 PATH, or --keyservice URL --tenant ID --token-file PATH --ca-file PATH) and {}.",
                self.target.display()
            )?,
        }
        write!(
            f,
            " A filesystem unlocked by the key service will be refused as a rollback until an \
             admin runs `digimed-keyservice accept-rollback STATE_DIR {uuid}`."
        )
    }
}

/// One line about the current point of `backing`.
pub fn status(backing: &Path) -> Result<String> {
    let dir = Confined::open(backing)?;
    Ok(match current_point(&dir)? {
        Some(m) => format!(
            "point {} of filesystem {} taken at unix time {} (epoch {}), {} files; copy {}",
            m.point,
            crate::format::format_uuid(&m.fs_uuid),
            m.taken,
            m.epoch,
            m.entries.len(),
            backing.join(BACKUP_DIR).join(POINT_DIR).display()
        ),
        None => format!("no backup point in {}", backing.display()),
    })
}

/// Checks the manifest MAC of a copy with the filesystem's keys (from the copy's superblock),
/// reading the manifest as a stream.
pub fn verify_manifest_mac(
    copy: &Path,
    report: &VerifyReport,
    key: &dyn crate::keysource::KeySource,
) -> Result<()> {
    let dir = BackingDir::open(copy)?;
    let (sb, keys) = crate::backing::unlock_superblock(&dir, key)?;
    if sb.fs_uuid != report.header.fs_uuid {
        return Err(Error::integrity(format!(
            "{}: the superblock belongs to filesystem {}, the manifest to {}",
            copy.display(),
            crate::format::format_uuid(&sb.fs_uuid),
            crate::format::format_uuid(&report.header.fs_uuid)
        )));
    }
    let shown = copy.join(MANIFEST);
    let Some(tag) = &report.mac else {
        return Err(Error::integrity(format!(
            "{}: the manifest has no MAC",
            shown.display()
        )));
    };
    let mut file = dir.confined().open_file(MANIFEST, Access::Read)?;
    let want = keys
        .superblock
        .mac_parts_streamed(
            &[crate::crypto::kdf::DOMAIN_MANIFEST],
            report.body_len,
            &mut file,
        )
        .map_err(|e| Error::io(&shown, e))?;
    use subtle::ConstantTimeEq;
    if bool::from(want.ct_eq(tag)) {
        Ok(())
    } else {
        Err(Error::integrity(format!(
            "{}: the manifest's MAC does not verify: the manifest was changed or forged",
            shown.display()
        )))
    }
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

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// The restored point's manifest header.
    pub header: ManifestHeader,
    /// Metadata records imported.
    pub records: u64,
    /// Data objects copied.
    pub objects: usize,
    /// The new backing directory.
    pub target: PathBuf,
    /// Whether the manifest's MAC was checked with the filesystem's key.
    pub mac_verified: bool,
    /// Whether the manifest had no MAC line at all (only possible without key options).
    pub mac_missing: bool,
    /// The command that checks the restored filesystem (with the key options restore got), or
    /// None if it got none.
    pub check_command: Option<String>,
}

/// Turns a verified copy of a point into a new backing directory at `target` (missing or
/// empty). Needs no keys: every byte is copied as stored. The copy is checked first; a copy
/// with problems is refused.
///
/// With `key`, the manifest's MAC must verify (a manifest without one is refused); without,
/// the copy is checked against its manifest only.
pub fn restore(
    copy: &Path,
    target: &Path,
    key: Option<&dyn crate::keysource::KeySource>,
    engine: &dyn MetaEngine,
) -> Result<RestoreReport> {
    let report = verify_copy(copy)?;
    if let Some(key) = key {
        verify_manifest_mac(copy, &report, key)?;
    } else if report.mac.is_none() {
        tracing::warn!(
            copy = %copy.display(),
            "the manifest has no MAC line; restoring without the key options, nothing vouches for it"
        );
    }
    let mac_verified = key.is_some();
    let mac_missing = report.mac.is_none();
    if report.problem_count > 0 {
        return Err(Error::integrity(format!(
            "{}: the copy does not match its manifest ({} problems; first: {}); run `digimedfs backup verify` for the list",
            copy.display(),
            report.problem_count,
            report.problems.first().map(String::as_str).unwrap_or_default()
        )));
    }
    let manifest = report.header;
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    let dir = BackingDir::open(target)?;
    let tdir = dir.confined().clone();
    if !tdir.list()?.is_empty() {
        return Err(Error::invalid(format!(
            "{}: restore target is not empty",
            target.display()
        )));
    }
    let src = Confined::open(copy)?;
    let sb_bytes = src.read_small(POINT_SUPERBLOCK, 64 << 10)?.ok_or_else(|| {
        Error::io(
            copy.join(POINT_SUPERBLOCK),
            std::io::Error::from_raw_os_error(libc::ENOENT),
        )
    })?;
    let sb = crate::format::superblock::Superblock::decode_unverified(&sb_bytes)?;
    if sb.fs_uuid != manifest.fs_uuid {
        return Err(Error::integrity(format!(
            "{}: superblock of filesystem {} in a point of {}",
            copy.display(),
            crate::format::format_uuid(&sb.fs_uuid),
            crate::format::format_uuid(&manifest.fs_uuid)
        )));
    }

    // Objects first, the superblock last: a half-done restore is not a filesystem.
    let mut objects = 0usize;
    tdir.create_dir_all(OBJECTS_DIR)?;
    let (_, mut entries) = ManifestStream::open(&src, MANIFEST)?
        .ok_or_else(|| Error::format(format!("{}: the manifest disappeared", copy.display())))?;
    while let Some(e) = entries.next_entry()? {
        let Some(rest) = e.path.strip_prefix("objects/") else {
            continue;
        };
        let name = rest.rsplit('/').next().unwrap_or_default();
        if parse_object_name(name).is_none() {
            return Err(Error::format(format!(
                "backup manifest: bad object path {}",
                e.path
            )));
        }
        let dst_dir = format!("{OBJECTS_DIR}/{}", name.get(..2).unwrap_or("00"));
        tdir.create_dir_all(&dst_dir)?;
        let dst_rel = format!("{dst_dir}/{name}");
        let from = src.open_file(&e.path, Access::Read)?;
        let to = tdir.open_file(&dst_rel, Access::CreateNew)?;
        let dst_path = tdir.display(&dst_rel);
        copy_sparse(&from, &src.display(&e.path), &to, &dst_path)?;
        to.sync_all().map_err(|e| Error::io(&dst_path, e))?;
        objects += 1;
    }

    tdir.create_dir_all(META_DIR)?;
    let store = engine.open_in(&tdir.open_dir(META_DIR)?, 64 << 20)?;
    let mut batch = Batch::default();
    let (dump_uuid, records) = read_dump(&src, DUMP, &mut |k, v| {
        batch.ops_push(k, v);
        if batch.len() >= 4096 {
            store.apply(&batch)?;
            batch = Batch::default();
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        store.apply(&batch)?;
    }
    store.flush()?;
    drop(store);
    if dump_uuid != manifest.fs_uuid {
        return Err(Error::integrity(format!(
            "{}: metadata dump of filesystem {} in a point of {}",
            copy.display(),
            crate::format::format_uuid(&dump_uuid),
            crate::format::format_uuid(&manifest.fs_uuid)
        )));
    }
    dir.write_superblock(&sb_bytes)?;
    Ok(RestoreReport {
        header: manifest,
        records,
        objects,
        target: target.to_path_buf(),
        mac_verified,
        mac_missing,
        check_command: None,
    })
}

/// What the daemon is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take a point (replacing any existing one).
    Begin,
    /// End the current point.
    End,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Begin => "begin",
            Action::End => "end",
        }
    }
}

/// Whether a daemon holds the mount lock of `backing` (on any host that honours flock there).
pub fn daemon_holds_lock(backing: &Confined) -> Result<bool> {
    let path = backing.display(crate::backing::LOCK_FILE);
    // flock needs no write access: a backup operator may only read the backing directory.
    let Some(file) = backing.try_open_file(crate::backing::LOCK_FILE, Access::Read)? else {
        return Ok(false);
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Asks the daemon serving `backing` (on whichever host) to carry out `action`; waits up to
/// `timeout` for its reply and returns the daemon's message.
pub fn request(backing: &Confined, action: Action, timeout: Duration) -> Result<String> {
    backing.create_dir_all(BACKUP_DIR)?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    backing.write_atomically(
        &format!("{BACKUP_DIR}/{REQUEST}"),
        format!("{} {nonce}\n", action.word()).as_bytes(),
    )?;
    let reply_rel = format!("{BACKUP_DIR}/{REPLY}");
    let start = Instant::now();
    loop {
        if let Ok(Some(raw)) = backing.read_small(&reply_rel, REPLY_MAX) {
            let text = String::from_utf8_lossy(&raw);
            let mut parts = text.trim_end().splitn(3, ' ');
            if parts.next() == Some(nonce.as_str()) {
                let status = parts.next().unwrap_or_default();
                let msg = parts.next().unwrap_or_default().replace("\\n", "\n");
                return if status == "ok" {
                    Ok(msg)
                } else {
                    Err(Error::invalid(format!("the daemon refused: {msg}")))
                };
            }
        }
        if start.elapsed() > timeout {
            let _ = backing.remove_file(&format!("{BACKUP_DIR}/{REQUEST}"));
            return Err(Error::Busy {
                what: format!(
                    "no answer from the daemon serving {} within {} s (is it mounted read-write?)",
                    backing.path().display(),
                    timeout.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The backing directory `path` names: a backing directory itself, or the mountpoint of a
/// digimedfs mount on this host (whose /proc/mounts source is its backing directory).
pub fn resolve_backing(path: &Path) -> Result<PathBuf> {
    let canon = path.canonicalize().map_err(|e| Error::io(path, e))?;
    if canon.join(crate::backing::SUPERBLOCK).is_file() {
        return Ok(canon);
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (Some(src), Some(mnt), Some(ty)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ty == "fuse.digimedfs" && Path::new(mnt) == canon {
            let src = PathBuf::from(src);
            if src.join(crate::backing::SUPERBLOCK).is_file() {
                return Ok(src);
            }
        }
    }
    Err(Error::invalid(format!(
        "{}: neither a digimedfs backing directory nor the mountpoint of one on this host",
        path.display()
    )))
}

/// Ends the point of `backing`: through the daemon, or directly if none runs.
pub fn end(backing: &Path, timeout: Duration) -> Result<String> {
    let dir = Confined::open(backing)?;
    if daemon_holds_lock(&dir)? {
        return request(&dir, Action::End, timeout);
    }
    let existed = dir.remove_tree(&format!("{BACKUP_DIR}/{POINT_DIR}"))?;
    dir.remove_tree(&format!("{BACKUP_DIR}/{POINT_NEW_DIR}"))?;
    Ok(if existed {
        "backup point ended".into()
    } else {
        "no backup point was active".into()
    })
}

/// Daemon side: takes a pending request out of `backing` (removing it). Only the request
/// words are used (`begin`/`end` and a hex nonce); nothing else of the file is repeated.
pub fn take_request(backing: &Confined) -> Result<Option<(Action, String)>> {
    let rel = format!("{BACKUP_DIR}/{REQUEST}");
    // Claimed by a rename, so a request written while this one is read is not removed unread.
    let claimed = format!("{BACKUP_DIR}/{REQUEST}.taken");
    match backing.rename(&rel, &claimed) {
        Ok(()) => {}
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    let raw = backing.read_small(&claimed, REQUEST_MAX);
    backing.remove_file(&claimed)?;
    let raw = raw?.unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let mut parts = text.split_whitespace();
    let action = match parts.next() {
        Some("begin") => Action::Begin,
        Some("end") => Action::End,
        _ => {
            tracing::warn!("ignoring a malformed backup request");
            return Ok(None);
        }
    };
    let nonce = parts.next().unwrap_or_default();
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        tracing::warn!("ignoring a backup request without a valid nonce");
        return Ok(None);
    }
    Ok(Some((action, nonce.to_string())))
}

/// Daemon side: answers the request `nonce`. A success carries the point's description (our
/// own words and numbers); a failure only the kind of error and its errno, never the error's
/// text: that may hold things read from storage or from the VM, and the reply goes to storage.
/// The daemon's log has the whole error.
pub fn write_reply(backing: &Confined, nonce: &str, result: &Result<String>) -> Result<()> {
    let (status, msg) = match result {
        Ok(m) => ("ok", m.clone()),
        Err(e) => ("error", reply_for_error(e)),
    };
    backing.write_atomically(
        &format!("{BACKUP_DIR}/{REPLY}"),
        format!("{nonce} {status} {}\n", msg.replace('\n', "\\n")).as_bytes(),
    )
}

/// What a reply says about a failed request (see [`write_reply`]).
fn reply_for_error(e: &Error) -> String {
    let kind = match e {
        Error::Posix { .. } | Error::Io { .. } => "the filesystem refused or failed",
        Error::Integrity { .. } => "an integrity check failed",
        Error::WrongKey { .. } => "a key was refused",
        Error::Format { .. } | Error::Meta { .. } => "the stored data is damaged",
        Error::Busy { .. } => "the filesystem is busy or fenced",
        Error::Invalid { .. } => "the request is not possible now",
    };
    let errno = e.errno();
    format!(
        "{kind} ({}, errno {errno}); the log of the daemon that mounts the filesystem has the details",
        std::io::Error::from_raw_os_error(errno)
    )
}

/// The manifest of the current point of `backing`, if there is one.
pub fn current_point(backing: &Confined) -> Result<Option<Manifest>> {
    let rel = format!("{BACKUP_DIR}/{POINT_DIR}/{MANIFEST}");
    match read_manifest(backing, &rel)? {
        Some(text) => Ok(Some(Manifest::parse(&text)?.0)),
        None => Ok(None),
    }
}

/// Hashes of the current point's objects, by path, for reuse by the next point.
pub(crate) fn previous_hashes(backing: &Confined) -> BTreeMap<String, ManifestEntry> {
    match current_point(backing) {
        Ok(Some(m)) => m
            .entries
            .into_iter()
            .filter(|e| e.stamp.is_some())
            .map(|e| (e.path.clone(), e))
            .collect(),
        _ => BTreeMap::new(),
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
