//! [`DirObjects`]: the object store on the `objects/` directory of a backing directory, with
//! objects split into segments the backing filesystem can hold, every file reached through
//! [`Confined`], and data barriers by syncfs(2) only where that is one.

use super::read::{read_full, ObjectFile, READ_AROUND, STREAMING_WRITE};
use super::{
    lock, parse_object_name, parse_segment_name, ObjectId, ObjectStore, SEGMENT_DIR_SUFFIX,
    SEGMENT_LEN,
};
use crate::confined::{Access, Confined, Kind};
use crate::{Error, Result};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Above this many dirty objects a data barrier uses syncfs(2).
const SYNCFS_THRESHOLD: usize = 16;

/// Splits `[offset, offset + len)` of an object into per-segment pieces:
/// (segment, offset within the segment, range of the buffer).
fn pieces(offset: u64, len: usize) -> Vec<(u64, u64, std::ops::Range<usize>)> {
    let mut out = Vec::with_capacity(1);
    let mut done = 0usize;
    while done < len {
        let pos = offset.saturating_add(done as u64);
        let seg = pos / SEGMENT_LEN;
        let within = pos % SEGMENT_LEN;
        let room = SEGMENT_LEN - within;
        let take = ((len - done) as u64).min(room) as usize;
        out.push((seg, within, done..done + take));
        done += take;
    }
    out
}

/// [`ObjectStore`] on a POSIX directory: `objects/` of a backing directory, every file in it
/// reached through [`Confined`] (never through a link, never outside).
pub struct DirObjects {
    /// The backing directory (backup points link objects into it).
    pub(super) backing: Confined,
    /// Its `objects/` directory.
    pub(super) dir: Confined,
    /// Open files by (object, segment).
    pub(super) files: Mutex<lru::LruCache<(ObjectId, u64), Arc<ObjectFile>>>,
    /// Written (object, segment) files not yet synced.
    pub(super) dirty: Mutex<std::collections::HashSet<(ObjectId, u64)>>,
    /// Shared by every mutation, exclusive while a backup point is taken.
    pub(super) gate: Arc<RwLock<()>>,
    /// A backup point may share objects (hard links): mutations must check before writing.
    pub(super) point_active: AtomicBool,
    /// Object files (object, segment) known not to be shared with a point since it was taken.
    pub(super) private: Mutex<std::collections::HashSet<(ObjectId, u64)>>,
    /// Serializes copy-on-write so one object is copied once.
    pub(super) cow: Mutex<()>,
    /// Whether syncfs(2) on the backing filesystem makes written data durable. Not on FUSE
    /// (ceph-fuse keeps written data in its own cache until each file is fsynced) nor on
    /// network filesystems; there every dirty object gets its own fdatasync.
    pub(super) syncfs_is_durable: bool,
    /// Opened for reading only (fsck -n): every change fails with EROFS.
    pub(super) read_only: bool,
}

impl DirObjects {
    /// The store in `objects/` of the backing directory `backing` (created if missing).
    pub fn open(backing: &Confined) -> Result<DirObjects> {
        backing.create_dir_all(crate::backing::OBJECTS_DIR)?;
        let dir = backing.open_dir(crate::backing::OBJECTS_DIR)?;
        // A point left by an earlier mount (or one taken offline) still shares objects: every
        // writer, fsck's repairs included, must copy before changing them.
        let point_active = ["point", "point.new"].iter().any(|p| {
            backing
                .status(&format!("{}/{p}", crate::backing::BACKUP_DIR))
                .ok()
                .flatten()
                .is_some()
        });
        let syncfs_is_durable = local_filesystem(&dir);
        Ok(DirObjects::with(
            backing.clone(),
            dir,
            point_active,
            syncfs_is_durable,
            false,
        ))
    }

    /// The store in `objects/` of `backing`, read-only: nothing is created, files are opened
    /// for reading, and every change fails with EROFS (fsck -n).
    pub fn open_read_only(backing: &Confined) -> Result<DirObjects> {
        let dir = backing.open_dir(crate::backing::OBJECTS_DIR)?;
        Ok(DirObjects::with(backing.clone(), dir, false, false, true))
    }

    fn with(
        backing: Confined,
        dir: Confined,
        point_active: bool,
        syncfs_is_durable: bool,
        read_only: bool,
    ) -> DirObjects {
        DirObjects {
            backing,
            dir,
            files: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            )),
            dirty: Mutex::new(Default::default()),
            gate: Arc::new(RwLock::new(())),
            point_active: AtomicBool::new(point_active),
            private: Mutex::new(Default::default()),
            cow: Mutex::new(()),
            syncfs_is_durable,
            read_only,
        }
    }

    fn refuse_read_only(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::posix(libc::EROFS, "objects are opened read-only"));
        }
        Ok(())
    }

    /// Directory of object `id`'s segments `1, 2, …`, relative to `objects/`.
    pub fn segment_dir(&self, id: &ObjectId) -> String {
        let name = hex::encode(id);
        format!(
            "{}/{name}{SEGMENT_DIR_SUFFIX}",
            name.get(..2).unwrap_or("00")
        )
    }

    /// Path of segment `seg` of object `id` relative to `objects/` (segment 0 is the object
    /// file).
    pub fn segment_path(&self, id: &ObjectId, seg: u64) -> String {
        if seg == 0 {
            self.path_of(id)
        } else {
            format!("{}/{seg}", self.segment_dir(id))
        }
    }

    /// A path relative to `objects/` as a full path, for messages.
    pub(super) fn shown(&self, rel: &str) -> PathBuf {
        self.dir.display(rel)
    }

    /// The segments `k ≥ 1` of object `id` that exist, with their lengths, in order.
    fn segments(&self, id: &ObjectId) -> Result<Vec<(u64, u64)>> {
        let dir = self.segment_dir(id);
        let Some(entries) = self.dir.list_dir(&dir)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for ent in entries {
            if ent.kind != Kind::File {
                continue;
            }
            if let Some(k) = ent.name.to_str().and_then(parse_segment_name) {
                let len = self
                    .dir
                    .status(&format!("{dir}/{k}"))?
                    .map_or(0, |st| st.len);
                out.push((k, len));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Length of object `id` as one address space: the end of its last segment's data.
    fn logical_len(&self, id: &ObjectId) -> Result<u64> {
        let base = self.dir.status(&self.path_of(id))?.map_or(0, |st| st.len);
        Ok(self
            .segments(id)?
            .into_iter()
            .map(|(k, len)| k.saturating_mul(SEGMENT_LEN).saturating_add(len))
            .fold(base, u64::max))
    }

    /// Forgets the open file and the bookkeeping of one object file.
    fn forget(&self, id: &ObjectId, seg: u64) {
        lock(&self.files).pop(&(*id, seg));
        lock(&self.dirty).remove(&(*id, seg));
        lock(&self.private).remove(&(*id, seg));
    }

    /// Path of object `id` relative to `objects/`.
    pub fn path_of(&self, id: &ObjectId) -> String {
        let name = hex::encode(id);
        format!("{}/{name}", name.get(..2).unwrap_or("00"))
    }

    pub(super) fn file(
        &self,
        id: &ObjectId,
        seg: u64,
        create: bool,
    ) -> Result<Option<Arc<ObjectFile>>> {
        if let Some(f) = lock(&self.files).get(&(*id, seg)) {
            return Ok(Some(f.clone()));
        }
        let path = self.segment_path(id, seg);
        let access = if self.read_only {
            Access::Read
        } else {
            Access::ReadWrite
        };
        let opened = match self.dir.try_open_file(&path, access) {
            // A read-only backing directory (ro mount, fsck -n on a snapshot) can still be read.
            Err(Error::Io { source, .. })
                if !create
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::EACCES) | Some(libc::EROFS)
                    ) =>
            {
                self.dir.try_open_file(&path, Access::Read)?
            }
            other => other?,
        };
        let file = match opened {
            Some(f) => f,
            None => {
                if !create {
                    return Ok(None);
                }
                if let Some((dir, _)) = path.rsplit_once('/') {
                    self.dir.create_dir_all(dir)?;
                }
                self.dir.open_file(&path, Access::Create)?
            }
        };
        let file = Arc::new(ObjectFile::new(file));
        lock(&self.files).put((*id, seg), file.clone());
        Ok(Some(file))
    }

    /// Makes `[offset, offset+len)` of one object file read as zeros.
    fn punch_file(&self, id: &ObjectId, seg: u64, offset: u64, len: u64) -> Result<()> {
        self.unshare(id, seg)?;
        let Some(f) = self.file(id, seg, false)? else {
            return Ok(());
        };
        let path = self.shown(&self.segment_path(id, seg));
        let size = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        if offset >= size {
            return Ok(());
        }
        let len = len.min(size - offset);
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::invalid("punch range out of range"));
        };
        // SAFETY: fallocate on a valid, open descriptor owned by `f`; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc != 0 {
            // Backing filesystems without hole punching get explicit zeros.
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut pos = offset;
            while pos < offset + len {
                let n = (offset + len - pos).min(zeros.len() as u64) as usize;
                f.write_all_at(zeros.get(..n).unwrap_or_default(), pos)
                    .map_err(|e| Error::io(&path, e))?;
                pos += n as u64;
            }
        }
        lock(&self.dirty).insert((*id, seg));
        Ok(())
    }

    fn sync_file(&self, id: &ObjectId, seg: u64) -> Result<()> {
        if let Some(f) = self.file(id, seg, false)? {
            f.sync_data()
                .map_err(|e| Error::io(self.shown(&self.segment_path(id, seg)), e))?;
        }
        Ok(())
    }
}

impl ObjectStore for DirObjects {
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if (buf.len() as u64) < READ_AROUND {
            if let Some(n) = self.read_around(id, offset, buf)? {
                return Ok(n);
            }
        }
        let mut short = false;
        for (seg, within, range) in pieces(offset, buf.len()) {
            let part = buf.get_mut(range).unwrap_or_default();
            let mut done = 0;
            if let Some(f) = self.file(id, seg, false)? {
                f.read_ahead_for(within, part.len());
                done = read_full(&f, part, within)
                    .map_err(|e| Error::io(self.shown(&self.segment_path(id, seg)), e))?;
            }
            if done < part.len() {
                // A hole up to a later segment, or the end of the object.
                part.get_mut(done..).unwrap_or_default().fill(0);
                short = true;
            }
        }
        if !short {
            return Ok(buf.len());
        }
        let end = self.logical_len(id)?;
        Ok(end.saturating_sub(offset).min(buf.len() as u64) as usize)
    }

    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        for (seg, within, range) in pieces(offset, data.len()) {
            self.unshare(id, seg)?;
            let f = self
                .file(id, seg, true)?
                .ok_or_else(|| Error::integrity("object vanished"))?;
            let part = data.get(range).unwrap_or_default();
            f.write_all_at(part, within)
                .map_err(|e| Error::io(self.shown(&self.segment_path(id, seg)), e))?;
            if part.len() >= STREAMING_WRITE {
                f.start_write_out(within, part.len());
            }
            lock(&self.dirty).insert((*id, seg));
        }
        Ok(())
    }

    fn set_len(&self, id: &ObjectId, len: u64) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let last = len.saturating_sub(1) / SEGMENT_LEN;
        // Segments wholly beyond the new end go; the one holding the end gets its length.
        let segments = self.segments(id)?;
        let mut kept = 0usize;
        for (seg, _) in &segments {
            if *seg > last {
                self.forget(id, *seg);
                self.dir.remove_file(&self.segment_path(id, *seg))?;
            } else {
                kept += 1;
            }
        }
        if kept == 0 && !segments.is_empty() && last == 0 {
            // Best effort: an empty directory is harmless, but tidier gone.
            let _ = self.dir.remove_dir(&self.segment_dir(id));
        }
        self.unshare(id, last)?;
        let f = self
            .file(id, last, true)?
            .ok_or_else(|| Error::integrity("object vanished"))?;
        f.set_len(len - last * SEGMENT_LEN)
            .map_err(|e| Error::io(self.shown(&self.segment_path(id, last)), e))?;
        lock(&self.dirty).insert((*id, last));
        Ok(())
    }

    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let seg = pos / SEGMENT_LEN;
            let within = pos % SEGMENT_LEN;
            let take = (end - pos).min(SEGMENT_LEN - within);
            if seg == 0 || self.dir.status(&self.segment_path(id, seg))?.is_some() {
                self.punch_file(id, seg, within, take)?;
            }
            pos += take;
        }
        Ok(())
    }

    fn sync(&self, id: &ObjectId) -> Result<()> {
        self.sync_file(id, 0)?;
        let segs: Vec<u64> = {
            let mut dirty = lock(&self.dirty);
            dirty.remove(&(*id, 0));
            let segs: Vec<u64> = dirty
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, s)| *s)
                .collect();
            for s in &segs {
                dirty.remove(&(*id, *s));
            }
            segs
        };
        for seg in segs {
            self.sync_file(id, seg)?;
        }
        Ok(())
    }

    fn sync_all(&self) -> Result<()> {
        let files: Vec<(ObjectId, u64)> = lock(&self.dirty).drain().collect();
        if files.len() > SYNCFS_THRESHOLD && self.syncfs_is_durable {
            // One syncfs(2) of the backing filesystem beats thousands of fdatasync calls (one
            // journal commit instead of one per object).
            match rustix::fs::syncfs(self.dir.as_fd()) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "syncfs failed; syncing objects one by one"),
            }
        }
        for (id, seg) in files {
            self.sync_file(&id, seg)?;
        }
        Ok(())
    }

    fn remove(&self, id: &ObjectId) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        {
            let mut files = lock(&self.files);
            let open: Vec<(ObjectId, u64)> = files
                .iter()
                .map(|(k, _)| *k)
                .filter(|(i, _)| i == id)
                .collect();
            for k in open {
                files.pop(&k);
            }
        }
        lock(&self.dirty).retain(|(i, _)| i != id);
        lock(&self.private).retain(|(i, _)| i != id);
        self.dir.remove_file(&self.path_of(id))?;
        self.dir.remove_tree(&self.segment_dir(id))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<(ObjectId, u64)>> {
        let mut out: HashMap<ObjectId, u64> = HashMap::new();
        for sub in self.dir.list()? {
            // Only the fan-out directories this store writes; anything else is fsck's to report.
            let (Kind::Dir, Some(sub_name)) = (sub.kind, sub.name.to_str()) else {
                continue;
            };
            for ent in self.dir.open_dir(sub_name)?.list()? {
                let Some(name) = ent.name.to_str() else {
                    continue;
                };
                if let (Kind::File, Some(id)) = (ent.kind, parse_object_name(name)) {
                    let len = self
                        .dir
                        .status(&format!("{sub_name}/{name}"))?
                        .map_or(0, |st| st.len);
                    let e = out.entry(id).or_insert(0);
                    *e = (*e).max(len);
                } else if let (Kind::Dir, Some(id)) = (
                    ent.kind,
                    name.strip_suffix(SEGMENT_DIR_SUFFIX)
                        .and_then(parse_object_name),
                ) {
                    let end = self
                        .segments(&id)?
                        .into_iter()
                        .map(|(k, len)| k.saturating_mul(SEGMENT_LEN).saturating_add(len))
                        .max()
                        .unwrap_or(0);
                    let e = out.entry(id).or_insert(0);
                    *e = (*e).max(end);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn point_gate(&self) -> Option<Arc<RwLock<()>>> {
        Some(self.gate.clone())
    }

    fn freeze_into(
        &self,
        dest: &str,
        wanted: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(ObjectId, u64)>> {
        self.freeze(dest, wanted)
    }

    fn set_point_active(&self, active: bool) {
        self.point_active.store(active, Ordering::Release);
        lock(&self.private).clear();
    }
}

/// Whether `dir` is on a local disk filesystem whose syncfs(2) is a full data barrier.
fn local_filesystem(dir: &Confined) -> bool {
    const LOCAL: [i64; 5] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x2FC1_2FC1, // zfs
    ];
    // `f_type` is i64 here but narrower on other targets.
    #[allow(clippy::unnecessary_cast)]
    let local = |t| LOCAL.contains(&(t as i64));
    rustix::fs::fstatfs(dir.as_fd()).is_ok_and(|st| local(st.f_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn syncfs_is_trusted_only_on_local_disk_filesystems() {
        // procfs is no disk filesystem; FUSE and network mounts are refused the same way.
        assert!(!local_filesystem(
            &Confined::open(Path::new("/proc")).expect("proc")
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let on_disk = local_filesystem(&Confined::open(dir.path()).expect("dir"));
        let fs_type = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let expected = ["ext2/ext3", "xfs", "btrfs", "tmpfs", "zfs"].contains(&fs_type.as_str());
        assert_eq!(on_disk, expected, "temp dir on {fs_type}");
    }
}
