//! Checking a copy of a point: keyless against its manifest (every listed file present with
//! its length and hash, nothing else), and the manifest MAC for key holders.

use super::manifest::{
    hash_file_with, manifest_err, ManifestEntry, ManifestHeader, ManifestStream,
};
use super::progress::{manifest_totals, CopyProgress, Reporter, Stage};
use super::{BACKUP_DIR, MANIFEST, POINT_DIR};
use crate::backing::BackingDir;
use crate::confined::{Access, Confined, Kind};
use crate::{Error, Result};
use std::path::Path;

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

/// Top-level files a manifest may list (a point has its superblock, and the dump if taken by
/// an earlier build).
const MAX_TOP_LEVEL_ENTRIES: usize = 16;

/// Checks a copy of a point against its manifest without keys: every listed file present with
/// its recorded length and hash, nothing else present. The MAC is not checked here (it needs
/// keys; see [`verify_manifest_mac`]). The manifest is read as a stream (the files it lists,
/// then once per directory a merge with the copy's listing of `meta/` and `objects/`), so
/// memory does not grow with it; entries below a directory must be in ascending order, as
/// digimedfs writes them.
pub fn verify_copy(copy: &Path) -> Result<VerifyReport> {
    verify_copy_with(copy, &mut |_| {})
}

/// [`verify_copy`], reporting the files and bytes hashed to `on_progress` (throttled; see
/// [`CopyProgress`]). The totals cost one more streamed read of the manifest.
pub fn verify_copy_with(
    copy: &Path,
    on_progress: &mut dyn FnMut(CopyProgress),
) -> Result<VerifyReport> {
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
    let totals = manifest_totals(&dir, copy)?;
    let mut progress = Reporter::start(Stage::Verify, totals, on_progress);
    let mut top_level: Vec<String> = Vec::new();
    let mut last_nested: Option<String> = None;
    while let Some(e) = stream.next_entry()? {
        report.files += 1;
        if let Some((top, _)) = e.path.split_once('/') {
            if !TREES.contains(&top) {
                return Err(manifest_err(&format!(
                    "{} is below neither {} (a point has nothing else in directories)",
                    e.path,
                    TREES.join(" nor ")
                )));
            }
            if last_nested
                .as_deref()
                .is_some_and(|prev| prev >= e.path.as_str())
            {
                return Err(manifest_err(&format!(
                    "entries out of order at {} (digimedfs writes them sorted)",
                    e.path
                )));
            }
            last_nested = Some(e.path.clone());
        } else {
            if top_level.len() >= MAX_TOP_LEVEL_ENTRIES {
                return Err(manifest_err(&format!(
                    "more than {MAX_TOP_LEVEL_ENTRIES} files outside {} (a point has at most 2)",
                    TREES.join(" and ")
                )));
            }
            top_level.push(e.path.clone());
        }
        check_entry(&dir, &e, &mut report, &mut progress);
    }
    progress.finish();
    report.mac = stream.mac;
    report.body_len = stream.body_len;

    // Nothing else: the top level, then each directory merged with its (sorted) entries.
    for ent in dir.list()? {
        let name = ent.name.to_string_lossy().into_owned();
        let listed = name == MANIFEST
            || (TREES.contains(&name.as_str()) && ent.kind == Kind::Dir)
            || top_level.contains(&name);
        if !listed {
            report.problem(format!("not part of point {}: {name}", report.header.point));
        }
    }
    for (tree, depth) in TREES.iter().zip(TREE_DEPTHS) {
        let Some(top) = dir.try_open_dir(tree)? else {
            continue;
        };
        let (_, mut again) = ManifestStream::open(&dir, MANIFEST)?.ok_or_else(no_manifest)?;
        let prefix = format!("{tree}/");
        let mut next_listed = || -> Result<Option<String>> {
            while let Some(e) = again.next_entry()? {
                if e.path.starts_with(&prefix) {
                    return Ok(Some(e.path));
                }
            }
            Ok(None)
        };
        let mut listed = next_listed()?;
        let point = report.header.point.clone();
        let mut seen = |path: String, is_file: bool, report: &mut VerifyReport| -> Result<()> {
            // Entries before this file are missing from the copy (already reported).
            while listed.as_deref().is_some_and(|l| l < path.as_str()) {
                listed = next_listed()?;
            }
            if listed.as_deref() == Some(path.as_str()) && is_file {
                listed = next_listed()?;
            } else {
                report.problem(format!("not part of point {point}: {path}"));
            }
            Ok(())
        };
        walk(&top, tree, depth, &mut report, &mut seen)?;
    }
    Ok(report)
}

/// Directories of a point, and how deep their files lie (`meta/<segment>`,
/// `objects/XX/<id>`), in path order.
const TREES: [&str; 2] = ["meta", "objects"];
const TREE_DEPTHS: [usize; 2] = [1, 2];

/// Calls `seen` for every entry `depth` levels below `dir` (named `path`), in name order;
/// anything that is not a directory above that depth is reported as not part of the point.
fn walk(
    dir: &Confined,
    path: &str,
    depth: usize,
    report: &mut VerifyReport,
    seen: &mut dyn FnMut(String, bool, &mut VerifyReport) -> Result<()>,
) -> Result<()> {
    let mut entries = dir.list()?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let name = format!("{path}/{}", e.name.to_string_lossy());
        if depth <= 1 {
            seen(name, e.kind != Kind::Dir, report)?;
            continue;
        }
        match (e.kind, e.name.to_str()) {
            (Kind::Dir, Some(plain)) => {
                walk(&dir.open_dir(plain)?, &name, depth - 1, report, seen)?
            }
            _ => report.problem(format!("not part of point {}: {name}", report.header.point)),
        }
    }
    Ok(())
}

/// Checks one listed file of a copy: present, a regular file, the recorded length and hash;
/// counts it in `progress` either way.
fn check_entry(
    dir: &Confined,
    e: &ManifestEntry,
    report: &mut VerifyReport,
    progress: &mut Reporter<'_>,
) {
    let mut counted = 0u64;
    check_entry_counting(dir, e, report, &mut |n| {
        // Never more than the manifest's length, so a grown file cannot run past the total.
        let part = n.min(e.len.saturating_sub(counted));
        counted += part;
        progress.bytes(part);
    });
    progress.file(e.len, counted);
}

/// [`check_entry`]'s checks; `on_read` gets the length of each piece hashed.
fn check_entry_counting(
    dir: &Confined,
    e: &ManifestEntry,
    report: &mut VerifyReport,
    on_read: &mut dyn FnMut(u64),
) {
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
    match hash_file_with(dir, &e.path, on_read) {
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
    verify_with(copy, key, &mut |_| {})
}

/// [`verify`], reporting progress as [`verify_copy_with`] does.
pub fn verify_with(
    copy: &Path,
    key: Option<&dyn crate::keysource::KeySource>,
    on_progress: &mut dyn FnMut(CopyProgress),
) -> Result<VerifyReport> {
    let mut report = verify_copy_with(copy, on_progress)?;
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
