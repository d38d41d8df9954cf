//! Copy-on-write for backup points: [`DirObjects`] hard-links objects into a point and, while
//! a point exists, copies an object still shared with it to a fresh file before its first
//! change, so the point keeps the bytes it had; [`copy_sparse`] makes such copies keeping holes.

use super::read::ObjectFile;
use super::{lock, DirObjects, ObjectId, ObjectStore, SEGMENT_LEN};
use crate::confined::Access;
use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl DirObjects {
    /// Before the first change of an object after a point: if the object is still shared with
    /// the point (more than one link), copy it to a fresh file and rename that over the live
    /// name, so the point keeps the old bytes. The copy is durable before the rename, so a
    /// crash leaves either the old or the copied file under the live name, both complete.
    pub(super) fn unshare(&self, id: &ObjectId, seg: u64) -> Result<()> {
        let key = (*id, seg);
        if !self.point_active.load(Ordering::Acquire) || lock(&self.private).contains(&key) {
            return Ok(());
        }
        let _one = lock(&self.cow);
        if lock(&self.private).contains(&key) {
            return Ok(());
        }
        let path = self.segment_path(id, seg);
        let Some(st) = self.dir.status(&path)? else {
            lock(&self.private).insert(key);
            return Ok(());
        };
        if st.nlink > 1 {
            let tmp = format!("{path}.cow");
            let src = self.dir.open_file(&path, Access::Read)?;
            // Never written through: a leftover (or anything planted) is removed first.
            self.dir.remove_file(&tmp)?;
            let dst = self.dir.open_file(&tmp, Access::CreateNew)?;
            copy_sparse(&src, &self.shown(&path), &dst, &self.shown(&tmp))?;
            dst.sync_all().map_err(|e| Error::io(self.shown(&tmp), e))?;
            self.dir.rename(&tmp, &path)?;
            match path.rsplit_once('/') {
                Some((parent, _)) => self.dir.open_dir(parent)?.sync()?,
                None => self.dir.sync()?,
            }
            lock(&self.files).put(key, Arc::new(ObjectFile::new(dst)));
            tracing::debug!(object = %hex::encode(id), segment = seg, "object copied on write (shared with a backup point)");
        }
        lock(&self.private).insert(key);
        Ok(())
    }

    /// [`ObjectStore::freeze_into`] of [`DirObjects`]: links the wanted objects into `dest`
    /// and marks the point active, so every later change copies first.
    pub(super) fn freeze(
        &self,
        dest: &str,
        wanted: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(ObjectId, u64)>> {
        let mut objects = self.list()?;
        objects.retain(|(id, _)| wanted(id));
        // A point is one file per object (its manifest, verification and restore know no
        // segments): refuse rather than take a point that silently lacks data.
        for (id, _) in &objects {
            if self.dir.status(&self.segment_dir(id))?.is_some() {
                return Err(Error::posix(
                    libc::EFBIG,
                    format!(
                        "backup point: object {} holds data beyond {SEGMENT_LEN} bytes (16 TiB), which backup points cannot carry yet",
                        hex::encode(id)
                    ),
                ));
            }
        }
        // Mark first: from here on every mutation checks the link count.
        self.point_active.store(true, Ordering::Release);
        lock(&self.private).clear();
        for (id, _) in &objects {
            let rel = self.path_of(id);
            if let Some((sub, _)) = rel.split_once('/') {
                self.backing.create_dir_all(&format!("{dest}/{sub}"))?;
            }
            self.backing.hard_link(
                &format!("{}/{rel}", crate::backing::OBJECTS_DIR),
                &format!("{dest}/{rel}"),
            )?;
        }
        Ok(objects)
    }
}

/// Copies `src` to `dst` keeping holes: only the data ranges (SEEK_DATA/SEEK_HOLE) are copied,
/// and `dst` gets `src`'s length. Paths are for error messages.
pub fn copy_sparse(src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let len = src.metadata().map_err(|e| Error::io(src_path, e))?.len();
    dst.set_len(0).map_err(|e| Error::io(dst_path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let Ok(off) = i64::try_from(pos) else { break };
        // SAFETY: lseek on a valid, open descriptor owned by `src`; no memory is passed.
        let data = unsafe { libc::lseek(src.as_raw_fd(), off, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            if err.raw_os_error() == Some(libc::EINVAL) {
                // No SEEK_DATA support: copy everything.
                copy_range(src, src_path, dst, dst_path, pos, len, &mut buf)?;
                break;
            }
            return Err(Error::io(src_path, err));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let (start, end) = (
            data as u64,
            if hole < 0 {
                len
            } else {
                (hole as u64).min(len)
            },
        );
        copy_range(src, src_path, dst, dst_path, start, end, &mut buf)?;
        pos = end.max(start + 1);
    }
    dst.set_len(len).map_err(|e| Error::io(dst_path, e))
}

fn copy_range(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = src
            .read_at(chunk, pos)
            .map_err(|e| Error::io(src_path, e))?;
        if n == 0 {
            break;
        }
        dst.write_all_at(chunk.get(..n).unwrap_or_default(), pos)
            .map_err(|e| Error::io(dst_path, e))?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sparse_keeps_contents_length_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let src = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&a)
            .expect("create a");
        src.write_all_at(b"head", 0).expect("write");
        src.write_all_at(b"tail", 10 << 20).expect("write");
        src.set_len((12 << 20) + 3).expect("len");
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&b)
            .expect("create b");
        copy_sparse(&src, &a, &dst, &b).expect("copy");
        assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        use std::os::unix::fs::MetadataExt;
        let blocks = dst.metadata().expect("meta").blocks();
        assert!(blocks < 1024, "the hole was filled: {blocks} sectors");
    }
}
