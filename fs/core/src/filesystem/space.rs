//! Giving storage back: deleting inodes' records, reclaiming their inline data later, and
//! removing data objects only once the metadata that dropped them is durable; and statfs.

use super::{lock, Inner, StatFs, NAME_MAX, RECLAIM_BACKLOG, RECLAIM_BATCH, RECLAIM_QUIET};
use crate::format::records::Inode;
use crate::objects::ObjectId;
use crate::{Error, Result};
use std::path::Path;

pub(super) fn statvfs(path: &Path) -> Result<(u64, u64, u64, u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("backing path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Ok((
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_frsize.max(1),
    ))
}

impl Inner {
    /// Deletes every record of `inode` and schedules its object for deletion.
    pub(crate) fn purge_inode(&self, inode: &Inode) -> Result<()> {
        let mut b = self.records.batch();
        self.purge_into(&mut b, inode, false)?;
        b.commit()?;
        self.after_purge(inode);
        Ok(())
    }

    /// Removes the inline data records of deleted inodes, with their reclaim marks. Deleting
    /// a record makes the store load the part of its tree that holds it, and the inline
    /// records of small files are their contents: done inside the unlink, an `rm -rf` of
    /// small files read them all back from disk (docs/performance.md, tuning table:
    /// `RECLAIM_QUIET`). So the unlink leaves a reclaim mark and this removes the records
    /// later, once no inode was deleted for [`RECLAIM_QUIET`] or more than
    /// [`RECLAIM_BACKLOG`] wait, and always when `force` (unmount). No lock of the namespace
    /// or of any node is needed: inode numbers are never reused, so nothing else refers to
    /// these records.
    pub(crate) fn reclaim_inline(&self, force: bool) -> Result<()> {
        let inos = {
            let mut r = lock(&self.deletions.reclaim);
            let quiet = r.last_deletion.is_none_or(|t| t.elapsed() >= RECLAIM_QUIET);
            if !(force || quiet || r.inos.len() > RECLAIM_BACKLOG) {
                return Ok(());
            }
            std::mem::take(&mut r.inos)
        };
        // In key order: neighbouring records share the parts of the tree loaded for them.
        let mut inos = inos;
        inos.sort_unstable();
        inos.dedup();
        for (k, batch) in inos.chunks(RECLAIM_BATCH).enumerate() {
            let mut b = self.records.batch();
            for &ino in batch {
                b.delete_key(&crate::format::records::ino_prefix(
                    crate::format::records::prefix::INLINE,
                    ino,
                ));
                b.set_reclaim(ino, false);
            }
            if let Err(e) = b.commit() {
                let rest = inos.get(k * RECLAIM_BATCH..).unwrap_or_default();
                lock(&self.deletions.reclaim).inos.extend_from_slice(rest);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes the metadata store durable, then removes the objects whose deletion it now
    /// records. The list is taken before the flush: an object doomed by a deletion committed
    /// during the flush waits for the next one (its deletion may not be in this flush).
    pub(crate) fn flush_and_delete_doomed(&self) -> Result<()> {
        let doomed: Vec<ObjectId> = std::mem::take(&mut *lock(&self.deletions.doomed));
        if let Err(e) = self.records.flush() {
            lock(&self.deletions.doomed).extend(doomed);
            return Err(e);
        }
        for (k, id) in doomed.iter().enumerate() {
            if let Err(e) = self.objects.remove(id) {
                lock(&self.deletions.doomed).extend(doomed.iter().skip(k).copied());
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn statfs(&self) -> Result<StatFs> {
        let (blocks, bfree, bavail, files, ffree, frsize) = match &self.mount.backing {
            Some(b) => statvfs(b.root())?,
            None => (1 << 32, 1 << 31, 1 << 31, 1 << 20, 1 << 19, 4096),
        };
        let scale = |v: u64| v.saturating_mul(frsize) / self.block_size;
        Ok(StatFs {
            blocks: scale(blocks),
            bfree: scale(bfree),
            bavail: scale(bavail),
            files,
            ffree,
            bsize: self.block_size as u32,
            namelen: NAME_MAX as u32,
            frsize: self.block_size as u32,
        })
    }
}
