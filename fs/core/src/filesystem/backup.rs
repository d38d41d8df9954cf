//! Taking and ending backup points on a live filesystem (formats in [`crate::backup`]).
//!
//! A point is the state at one instant: while the point gate is held exclusively (no metadata
//! batch applied, no object changed) everything buffered is flushed, the metadata store starts
//! recording pre-images ([`crate::meta::DigestStore::scan_as_of_start`]) and every data object
//! is hard-linked. Writers then go on while the metadata is dumped as of that instant (each
//! record changed since is dumped from its pre-image), and links to objects no dumped inode
//! refers to are removed again. The pair (dump, links) is exactly the state a crash at that
//! instant would leave, which the writeback protocol makes a valid filesystem (entries before
//! data; `prev` versions cover blocks whose new data had not been written yet). Hashing the
//! frozen objects happens after the gate is released: copy-on-write keeps them unchanged. A
//! store without a running digest (none in a mount) is dumped under the gate instead.

use super::{lock, Filesystem, Inner};
use crate::backup::{
    self, file_stamp, hash_file, Manifest, ManifestEntry, SegmentWriter, BACKUP_DIR, KEPT_DIR,
    MANIFEST, POINT_DIR, POINT_NEW_DIR, POINT_SUPERBLOCK,
};
use crate::confined::{Access, Confined};
use crate::format::superblock::FLAG_CLEAN;
use crate::meta::MetaEngine;
use crate::{Error, Result};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// How often the daemon looks for a backup request in the backing directory.
pub(super) const REQUEST_POLL: Duration = Duration::from_secs(1);

/// Serializes points of one process.
static POINT_LOCK: Mutex<()> = Mutex::new(());

/// A point that was taken.
#[derive(Debug, Clone)]
pub struct PointInfo {
    /// The point's id.
    pub id: String,
    /// The superblock epoch it holds.
    pub epoch: u64,
    /// Metadata records dumped.
    pub records: u64,
    /// Data objects frozen.
    pub objects: usize,
    /// Segments of the metadata dump.
    pub meta_segments: usize,
    /// Of those, segments hard-linked from the previous point (unchanged since).
    pub meta_segments_reused: usize,
    /// Bytes of metadata dump written (segments not reused, and the segment index).
    pub meta_bytes_written: u64,
    /// Total bytes the point's files hold.
    pub bytes: u64,
    /// Objects whose hash came from the previous point (unchanged since).
    pub reused_hashes: usize,
    /// The directory a backup job copies.
    pub dir: std::path::PathBuf,
    /// How long writers were held at the point gate.
    pub frozen_for: Duration,
    /// Metadata records changed while the dump ran, dumped from their recorded pre-images.
    pub preimages: usize,
    /// How long taking the point took in all.
    pub took: Duration,
}

impl std::fmt::Display for PointInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "point {} (epoch {}): {} metadata records in {} segments ({} unchanged, {} bytes written), {} data objects, {} bytes; writers held {} ms ({} records changed during the dump), took {} ms; copy everything in {} (and nothing else of the backing directory)",
            self.id,
            self.epoch,
            self.records,
            self.meta_segments,
            self.meta_segments_reused,
            self.meta_bytes_written,
            self.objects,
            self.bytes,
            self.frozen_for.as_millis(),
            self.preimages,
            self.took.as_millis(),
            self.dir.display()
        )
    }
}

impl Filesystem {
    /// Takes a backup point now, replacing any existing one (see docs/backup.md).
    pub fn backup_begin(&self) -> Result<PointInfo> {
        self.inner.take_point(&|| {}, &|_| {})
    }

    /// [`Filesystem::backup_begin`], calling `at_gate` at the instant the point holds (while
    /// writers are held), so a caller can tell which of its operations the point contains.
    pub fn backup_begin_at(&self, at_gate: &dyn Fn()) -> Result<PointInfo> {
        self.inner.take_point(at_gate, &|_| {})
    }

    /// [`Filesystem::backup_begin`], calling `progress` with the number of metadata dump
    /// segments finished each time it grows (the daemon reports it to a waiting client).
    pub fn backup_begin_progress(&self, progress: &dyn Fn(usize)) -> Result<PointInfo> {
        self.inner.take_point(&|| {}, progress)
    }

    /// Ends the current point (its links are removed; copy-on-write stops). Returns whether
    /// there was one.
    pub fn backup_end(&self) -> Result<bool> {
        self.inner.end_point()
    }
}

impl Inner {
    fn backing_root(&self) -> Result<&Confined> {
        self.mount
            .backing
            .as_ref()
            .map(|b| b.confined())
            .ok_or_else(|| Error::invalid("backup points need a backing directory"))
    }

    /// Takes a point; `at_gate` runs while writers are held, `progress` gets the number of
    /// dump segments finished each time it grows.
    pub(super) fn take_point(
        &self,
        at_gate: &dyn Fn(),
        progress: &dyn Fn(usize),
    ) -> Result<PointInfo> {
        self.check_writable("backup begin")?;
        let _one = lock(&POINT_LOCK);
        let started = std::time::Instant::now();
        let root = self.backing_root()?.clone();
        let gate = self
            .objects
            .point_gate()
            .ok_or_else(|| Error::invalid("this object store cannot take backup points"))?;
        // Everything acknowledged so far goes into the point, and the freeze below stays short.
        self.sync_all()?;

        root.create_dir_all(BACKUP_DIR)?;
        let new = format!("{BACKUP_DIR}/{POINT_NEW_DIR}");
        root.remove_tree(&new)?;
        root.create_dir(&new)?;
        let cur = format!("{BACKUP_DIR}/{POINT_DIR}");
        let kept = format!("{BACKUP_DIR}/{KEPT_DIR}");
        // The segments to link from: the current point's, or those kept when it was ended.
        let base = if root.status(&format!("{cur}/{MANIFEST}"))?.is_some() {
            cur.clone()
        } else {
            kept.clone()
        };
        let previous = backup::previous_hashes(&root, &base);
        let fs_uuid = lock(&self.mount.superblock).fs_uuid;

        // Segments the previous point holds unchanged are linked, not written again.
        let mut dump = SegmentWriter::create(&root, &new, &fs_uuid, Some((&base, &previous)))?;
        let mut digest = [0u8; 32];
        // Only objects an inode of the dump refers to belong to the point: a deleted file's
        // object is removed only after the deletion is durable, and a file moving out of
        // inline storage gets its object before its inode points at it.
        let mut referenced = std::collections::HashSet::new();
        let mut segments_reported = 0;
        let objects_dir = format!("{new}/objects");
        let (frozen, frozen_for, preimages) = match self.records.digest_store() {
            Some(ds) => {
                // Writers are held only to flush, to start recording pre-images and to link
                // the objects; the dump then reads the store as of that instant while they go on.
                let (all, held) = {
                    let _frozen = gate.write().unwrap_or_else(|p| p.into_inner());
                    let freeze_start = std::time::Instant::now();
                    self.records.flush()?;
                    ds.start_recording();
                    at_gate();
                    let all = match self.objects.freeze_into(&objects_dir, &|_| true) {
                        Ok(all) => all,
                        Err(e) => {
                            ds.stop_recording();
                            return Err(e);
                        }
                    };
                    (all, freeze_start.elapsed())
                };
                let scanned = ds.scan_as_of_start(&mut |k, v| {
                    self.dump_record(&k, &v, &mut dump, &mut digest, &mut referenced)?;
                    report_segments(&dump, &mut segments_reported, progress);
                    Ok(())
                });
                let preimages = ds.stop_recording();
                scanned?;
                // Linked at the gate, but no inode of the point refers to them.
                let mut frozen = Vec::with_capacity(all.len());
                for (id, len) in all {
                    if referenced.contains(&id) {
                        frozen.push((id, len));
                    } else {
                        let name = hex::encode(id);
                        root.remove_file(&format!(
                            "{objects_dir}/{}/{name}",
                            name.get(..2).unwrap_or("00")
                        ))?;
                    }
                }
                (frozen, held, preimages)
            }
            None => {
                let _frozen = gate.write().unwrap_or_else(|p| p.into_inner());
                let freeze_start = std::time::Instant::now();
                self.records.flush()?;
                at_gate();
                self.records.store().scan(&[], None, &mut |k, v| {
                    self.dump_record(k, v, &mut dump, &mut digest, &mut referenced)?;
                    report_segments(&dump, &mut segments_reported, progress);
                    Ok(true)
                })?;
                let frozen = self
                    .objects
                    .freeze_into(&objects_dir, &|id| referenced.contains(id))?;
                (frozen, freeze_start.elapsed(), 0)
            }
        };
        let dump = dump.finish()?;

        // The point's superblock: clean, with the digest of the dumped records. The live
        // filesystem moves to the next epoch, so the key service's anchor is newer than the
        // point and a restore is a rollback an admin must accept. The anchor records the digest
        // the live superblock states at that epoch: the service refuses another digest at the
        // anchored epoch, which is what a remount after a crash here presents.
        let (point_sb, ctx, live_epoch, live_digest) = {
            let mut sb = lock(&self.mount.superblock);
            let mut point_sb = sb.clone();
            point_sb.flags |= FLAG_CLEAN;
            point_sb.meta_digest = digest;
            // The dump holds the store bound to the point's epoch; the live store moves on
            // with the live superblock, bound first (docs/format.md "Store state").
            if let Some(tracker) = self.records.digest_store() {
                tracker.bind_epoch(sb.epoch + 1)?;
                self.records.flush()?;
            }
            sb.epoch += 1;
            if let Some(b) = &self.mount.backing {
                b.write_superblock(&sb.encode(&self.keys.superblock)?)?;
            }
            let ctx = crate::keysource::SlotContext {
                fs_uuid: sb.fs_uuid,
                tenant: sb.tenant.clone(),
            };
            (point_sb, ctx, sb.epoch, sb.meta_digest)
        };
        let anchor = lock(&self.mount.anchor).clone();
        if let Some(anchor) = anchor {
            anchor.anchor(&ctx, live_epoch, &live_digest)?;
        }
        write_durable(
            &root,
            &format!("{new}/{POINT_SUPERBLOCK}"),
            &point_sb.encode(&self.keys.superblock)?,
        )?;

        let mut entries = Vec::with_capacity(frozen.len() + dump.segments.len() + 2);
        let mut bytes = 0u64;
        let (hash, len) = hash_file(&root, &format!("{new}/{POINT_SUPERBLOCK}"))?;
        bytes += len;
        entries.push(ManifestEntry {
            path: POINT_SUPERBLOCK.to_string(),
            len,
            hash,
            stamp: None,
        });
        let (index_hash, index_len) = hash_file(&root, &format!("{new}/{}", dump.index_path))?;
        let mut meta: Vec<ManifestEntry> = dump
            .segments
            .iter()
            .map(|s| ManifestEntry {
                path: s.path.clone(),
                len: s.len,
                hash: s.hash,
                stamp: Some(s.stamp.clone()),
            })
            .chain(std::iter::once(ManifestEntry {
                path: dump.index_path.clone(),
                len: index_len,
                hash: index_hash,
                stamp: None,
            }))
            .collect();
        // Entries below a directory are listed in path order (verify merges them with a listing).
        meta.sort_by(|a, b| a.path.cmp(&b.path));
        bytes += meta.iter().map(|e| e.len).sum::<u64>();
        entries.extend(meta);
        let mut reused = 0usize;
        let mut objects: Vec<_> = frozen.iter().map(|(id, _)| hex::encode(id)).collect();
        objects.sort();
        for name in objects {
            let rel = format!("objects/{}/{name}", name.get(..2).unwrap_or("00"));
            let path = format!("{new}/{rel}");
            let (stamp, len) = file_stamp(&root, &path)?;
            let hash = match previous.get(&rel) {
                Some(p) if p.len == len && p.stamp.as_deref() == Some(stamp.as_str()) => {
                    reused += 1;
                    p.hash
                }
                _ => hash_file(&root, &path)?.0,
            };
            bytes += len;
            entries.push(ManifestEntry {
                path: rel,
                len,
                hash,
                stamp: Some(stamp),
            });
        }
        let manifest = Manifest {
            fs_uuid,
            point: hex::encode(rand::random::<[u8; 8]>()),
            taken: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            epoch: point_sb.epoch,
            entries,
        };
        write_durable(
            &root,
            &format!("{new}/{MANIFEST}"),
            manifest.encode(&self.keys.superblock).as_bytes(),
        )?;
        // The links and directories of the point are durable before it is announced.
        rustix::fs::syncfs(root.as_fd()).map_err(|e| {
            Error::io(
                root.display(&new),
                std::io::Error::from_raw_os_error(e.raw_os_error()),
            )
        })?;
        root.remove_tree(&cur)?;
        root.rename(&new, &cur)?;
        root.remove_tree(&kept)?;
        root.open_dir(BACKUP_DIR)?.sync()?;
        let info = PointInfo {
            id: manifest.point.clone(),
            epoch: manifest.epoch,
            records: dump.records,
            objects: frozen.len(),
            meta_segments: dump.segments.len(),
            meta_segments_reused: dump.segments.iter().filter(|s| s.reused).count(),
            meta_bytes_written: dump.bytes_written(index_len),
            bytes,
            reused_hashes: reused,
            dir: root.display(&cur),
            frozen_for,
            preimages,
            took: started.elapsed(),
        };
        tracing::info!(point = %info.id, epoch = info.epoch, objects = info.objects, records = info.records, segments = info.meta_segments, reused_segments = info.meta_segments_reused, "backup point taken");
        Ok(info)
    }

    /// Adds one record to the point's dump, its digest and (for an inode) the objects it
    /// refers to.
    fn dump_record(
        &self,
        k: &[u8],
        v: &[u8],
        dump: &mut SegmentWriter<'_>,
        digest: &mut [u8; 32],
        referenced: &mut std::collections::HashSet<crate::objects::ObjectId>,
    ) -> Result<()> {
        if k.first() == Some(&crate::format::records::prefix::INODE) {
            let ino = k
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let plain = self.records.open(k, v)?;
            let inode = crate::format::records::Inode::decode(ino, &plain)?;
            if let crate::format::records::Storage::Object(id) = inode.storage {
                referenced.insert(id);
            }
        }
        self.records.add_to_digest(digest, k, v);
        dump.record(k, v)
    }

    pub(super) fn end_point(&self) -> Result<bool> {
        let _one = lock(&POINT_LOCK);
        let root = self.backing_root()?;
        let existed = backup::retire_point(root)?;
        self.objects.set_point_active(false);
        if existed {
            tracing::info!("backup point ended");
        }
        Ok(existed)
    }

    /// Carries out a backup request found in the backing directory, if any.
    pub(super) fn serve_backup_request(&self) {
        let Some(root) = self.mount.backing.as_ref().map(|b| b.confined().clone()) else {
            return;
        };
        let (action, nonce) = match backup::take_request(&root) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the backup request");
                return;
            }
        };
        let result = match action {
            backup::Action::Begin => {
                // Progress for the waiting client, at most every PROGRESS_EVERY; a failure
                // to write it only costs the client its count.
                let last = std::cell::Cell::new(None::<std::time::Instant>);
                let report = |n: usize| {
                    let due = last
                        .get()
                        .is_none_or(|t| t.elapsed() >= backup::PROGRESS_EVERY);
                    if due {
                        last.set(Some(std::time::Instant::now()));
                        if let Err(e) = backup::write_progress(&root, &nonce, n as u64) {
                            tracing::debug!(error = %e, "cannot write the backup progress");
                        }
                    }
                };
                report(0);
                self.take_point(&|| {}, &report).map(|p| p.to_string())
            }
            backup::Action::End => self.end_point().map(|existed| {
                if existed {
                    "backup point ended".to_string()
                } else {
                    "no backup point was active".to_string()
                }
            }),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "backup request failed");
        }
        if let Err(e) = backup::write_reply(&root, &nonce, &result) {
            tracing::error!(error = %e, "cannot write the backup reply");
        }
        let _ = root.remove_file(&format!("{}/{}", backup::BACKUP_DIR, backup::PROGRESS));
    }
}

/// Calls `progress` when the dump has finished more segments than last reported.
fn report_segments(dump: &SegmentWriter<'_>, reported: &mut usize, progress: &dyn Fn(usize)) {
    let n = dump.segments_done();
    if n != *reported {
        *reported = n;
        progress(n);
    }
}

/// Writes a new file `rel` beneath `dir` and makes it durable (a leftover is replaced, never
/// written through).
fn write_durable(dir: &Confined, rel: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    dir.remove_file(rel)?;
    let mut f = dir.open_file(rel, Access::CreateNew)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(dir.display(rel), e))
}

/// Takes a point of `backing`: through the daemon that serves it (any host), or, if none
/// does, in this process with `key` and `engine`.
pub fn begin_point(
    backing: &Path,
    key: Option<&dyn crate::keysource::KeySource>,
    timeout: Duration,
    engine: &dyn MetaEngine,
) -> Result<String> {
    begin_point_with(backing, key, timeout, engine, &mut |_| {})
}

/// [`begin_point`], calling `on_wait` about every second while waiting for a daemon
/// ([`backup::request_with`]).
pub fn begin_point_with(
    backing: &Path,
    key: Option<&dyn crate::keysource::KeySource>,
    timeout: Duration,
    engine: &dyn MetaEngine,
    on_wait: &mut dyn FnMut(backup::Waiting),
) -> Result<String> {
    let dir = Confined::open(backing)?;
    if backup::daemon_holds_lock(&dir)? {
        return backup::request_with(&dir, backup::Action::Begin, timeout, on_wait);
    }
    let Some(key) = key else {
        return Err(Error::invalid(format!(
            "{} is not mounted anywhere (no daemon holds its lock): give the key options \
             (--key-file, or the key service options) to take the point offline",
            backing.display()
        )));
    };
    let fs = Filesystem::open(backing, key, &super::OpenOptions::default(), engine)?;
    let info = fs.backup_begin()?;
    fs.close()?;
    Ok(info.to_string())
}
