//! Removing names and inodes: unlink and rmdir, the link count, and the purge of an inode
//! whose last name and last open handle are gone (or its orphan record while it is open).

use super::{check_name, lock_nodes, Locked};
use crate::filesystem::{lock, perms, posix, Ctx, FileKind, Inner, Node};
use crate::format::records::{self, Inode, Storage, Timestamp};
use crate::meta::RecordBatch;
use crate::Result;

/// Whether `inode` may have an inline data record: a regular file whose contents are inline,
/// or none (an empty file may keep an empty record). The core writes none for other kinds,
/// and deletes a file's record in the batch that moves it to an object.
pub(super) fn may_have_inline(inode: &Inode) -> bool {
    inode.kind == FileKind::File && !matches!(inode.storage, Storage::Object(_))
}

impl Inner {
    /// Decrements the link count of a node losing an entry; purges or orphans it at zero.
    pub(super) fn drop_link(
        &self,
        b: &mut RecordBatch<'_>,
        v: &mut Node,
        now: Timestamp,
    ) -> Result<bool> {
        if v.inode.kind == FileKind::Dir {
            v.inode.nlink = 0;
        } else {
            v.inode.nlink = v.inode.nlink.saturating_sub(1);
        }
        v.inode.ctime = now;
        if v.inode.nlink > 0 {
            self.persist_into(b, v)?;
            return Ok(false);
        }
        if v.open_count > 0 {
            b.set_orphan(v.inode.ino, true);
            self.persist_into(b, v)?;
            return Ok(false);
        }
        Ok(true)
    }

    pub(crate) fn remove_entry(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        is_dir: bool,
    ) -> Result<()> {
        let op = if is_dir { "rmdir" } else { "unlink" };
        self.check_writable(op)?;
        check_name(name, op)?;
        if is_dir && name == b"." {
            return Err(posix(libc::EINVAL, "rmdir: ."));
        }
        if is_dir && name == b".." {
            return Err(posix(libc::ENOTEMPTY, "rmdir: .."));
        }
        let _ns = lock(&self.ns_lock);
        let _wb = lock(&self.wb_lock);
        let entry = self.records.dirent(parent, name)?.ok_or_else(|| {
            posix(
                libc::ENOENT,
                format!("{op} in directory {parent}: no such entry"),
            )
        })?;
        let nodes = lock_nodes(vec![
            (parent, self.node(parent)?),
            (entry.ino, self.node(entry.ino)?),
        ]);
        let mut l = Locked::new(&nodes);
        {
            let p = l.get(parent)?;
            self.parent_for_change(p, ctx, op)?;
        }
        let vkind = l.get(entry.ino)?.inode.kind;
        if is_dir && vkind != FileKind::Dir {
            return Err(posix(
                libc::ENOTDIR,
                format!("rmdir inode {}: not a directory", entry.ino),
            ));
        }
        if !is_dir && vkind == FileKind::Dir {
            return Err(posix(
                libc::EISDIR,
                format!("unlink inode {}: is a directory", entry.ino),
            ));
        }
        if is_dir && !self.records.dir_is_empty(entry.ino)? {
            return Err(posix(
                libc::ENOTEMPTY,
                format!("rmdir inode {}: directory not empty", entry.ino),
            ));
        }
        if self.check_perms {
            let pi = l.get(parent)?.inode.clone();
            let vi = l.get(entry.ino)?.inode.clone();
            if !perms::may_delete(&pi, &vi, ctx) {
                return Err(posix(
                    libc::EPERM,
                    format!("{op}: sticky directory {parent}"),
                ));
            }
        }
        let now = Inner::now();
        let mut b = self.records.batch();
        b.delete_dirent(parent, name);
        {
            let p = l.get(parent)?;
            p.inode.mtime = now;
            p.inode.ctime = now;
            if is_dir {
                p.inode.nlink = p.inode.nlink.saturating_sub(1);
            }
            self.persist_into(&mut b, p)?;
        }
        let purge = {
            let v = l.get(entry.ino)?;
            self.drop_link(&mut b, v, now)?
        };
        if purge {
            let v = l.get(entry.ino)?;
            self.drop_dirty(v);
            v.purged = true;
            let inode = v.inode.clone();
            let xattrs_absent = v.xattrs_absent;
            self.purge_into(&mut b, &inode, xattrs_absent)?;
            b.commit()?;
            self.after_purge(&inode);
            drop(l);
            self.forget_node(entry.ino);
        } else {
            b.commit()?;
        }
        Ok(())
    }

    /// Adds the deletion of every record of `inode` to `b`. `xattrs_absent`: the inode is
    /// known to have no xattrs (see [`Node::xattrs_absent`]), so the store need not be searched
    /// for them; only object-backed files have block maps to search for. Most files of an
    /// `rm -rf` are small and have neither, which spares two prefix scans per unlink.
    pub(crate) fn purge_into(
        &self,
        b: &mut RecordBatch<'_>,
        inode: &Inode,
        xattrs_absent: bool,
    ) -> Result<()> {
        let ino = inode.ino;
        b.delete_key(&records::inode_key(ino));
        let searches = [
            (
                records::prefix::CHUNK,
                matches!(inode.storage, Storage::Object(_)),
            ),
            (records::prefix::XATTR, !xattrs_absent),
        ];
        for (p, _) in searches.into_iter().filter(|(_, needed)| *needed) {
            for k in self.records.keys_of(p, ino)? {
                b.delete_chunk_key(&k);
            }
        }
        // The inline data record goes later ([`Inner::reclaim_inline`]): deleting it here
        // would load its part of the store's tree, small files' contents, from disk. Only
        // regular files not stored in an object have one.
        if may_have_inline(inode) {
            b.set_reclaim(ino, true);
        }
        b.set_orphan(ino, false);
        Ok(())
    }

    /// Cache and object bookkeeping after a purge was committed.
    pub(crate) fn after_purge(&self, inode: &Inode) {
        let ino = inode.ino;
        if may_have_inline(inode) {
            let mut r = lock(&self.deletions.reclaim);
            r.inos.push(ino);
            r.last_deletion = Some(std::time::Instant::now());
        }
        // Only object-backed files have block maps: skip the cache sweep (linear in the cache
        // size) for everything else, which is most of an `rm -rf`.
        if let Storage::Object(id) = inode.storage {
            let mut cache = lock(&self.cache.chunk_cache);
            let keys: Vec<(u64, u64)> = cache
                .iter()
                .filter(|((i, _), _)| *i == ino)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                cache.pop(&k);
            }
            drop(cache);
            lock(&self.pending).retain(|(i, _)| *i != ino);
            lock(&self.deletions.doomed).push(id);
        }
    }
}
