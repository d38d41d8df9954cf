//! Restoring a point: a verified copy becomes a new backing directory, every byte copied as
//! stored, so no key is needed; a copy with problems is refused.

use super::dump::read_dump;
use super::manifest::{ManifestHeader, ManifestStream};
use super::progress::{CopyProgress, Reporter, Stage};
use super::segments::{is_segmented, read_segmented_with};
use super::verify::{verify_copy_with, verify_manifest_mac};
use super::{DUMP, MANIFEST, POINT_SUPERBLOCK, SEGMENT_DIR, SEGMENT_INDEX};
use crate::backing::{BackingDir, META_DIR, OBJECTS_DIR};
use crate::confined::{Access, Confined};
use crate::meta::{Batch, MetaEngine};
use crate::objects::{copy_sparse, parse_object_name};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

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
    restore_with(copy, target, key, engine, &mut |_| {})
}

/// [`restore`], reporting progress to `on_progress` (throttled; see [`CopyProgress`]): the
/// verification of the copy ([`Stage::Verify`]), then the files copied or imported
/// ([`Stage::Restore`]), each up to the manifest's totals.
pub fn restore_with(
    copy: &Path,
    target: &Path,
    key: Option<&dyn crate::keysource::KeySource>,
    engine: &dyn MetaEngine,
    on_progress: &mut dyn FnMut(CopyProgress),
) -> Result<RestoreReport> {
    let report = verify_copy_with(copy, on_progress)?;
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
    // A copy without problems holds every listed file with its listed length, all hashed.
    let totals = (report.files as u64, report.bytes);
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
    let mut progress = Reporter::start(Stage::Restore, totals, on_progress);
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
        progress.file(e.len, 0);
    }

    tdir.create_dir_all(META_DIR)?;
    let store = engine.open_in(&tdir.open_dir(META_DIR)?, 64 << 20)?;
    let mut batch = Batch::default();
    let mut load = |k, v| {
        batch.ops_push(k, v);
        if batch.len() >= 4096 {
            store.apply(&batch)?;
            batch = Batch::default();
        }
        Ok(())
    };
    // Points of earlier builds hold one `meta.dump` instead of segments.
    let mut segment_done = |rel: &str| {
        // The copy was verified: each segment has its manifest length.
        let len = src.status(rel).ok().flatten().map_or(0, |st| st.len);
        progress.file(len, 0);
    };
    let (dump_uuid, records) = if is_segmented(&src)? {
        read_segmented_with(&src, &mut load, &mut segment_done)?
    } else {
        read_dump(&src, DUMP, &mut load)?
    };
    if !batch.is_empty() {
        store.apply(&batch)?;
    }
    store.flush()?;
    drop(store);
    // The rest of the point's files went in with the records (the segment index or the
    // dump) or go in now (the superblock).
    for rel in [
        format!("{SEGMENT_DIR}/{SEGMENT_INDEX}"),
        DUMP.to_string(),
        POINT_SUPERBLOCK.to_string(),
    ] {
        if let Some(st) = src.status(&rel)? {
            progress.file(st.len, 0);
        }
    }
    if dump_uuid != manifest.fs_uuid {
        return Err(Error::integrity(format!(
            "{}: metadata dump of filesystem {} in a point of {}",
            copy.display(),
            crate::format::format_uuid(&dump_uuid),
            crate::format::format_uuid(&manifest.fs_uuid)
        )));
    }
    dir.write_superblock(&sb_bytes)?;
    progress.finish();
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
