//! rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE: every check runs before the batch is
//! built, and both entries, the inodes and a replaced target's purge go in one batch.

use super::{check_name, is_dot, lock_nodes, Locked};
use crate::filesystem::{lock, perms, posix, Ctx, FileKind, Inner, ROOT_INO};
use crate::format::records::{Dirent, Inode};
use crate::{Error, Result};

impl Inner {
    /// Whether `ancestor` is `ino` or one of its ancestors.
    pub(super) fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> Result<bool> {
        for _ in 0..100_000 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            let node = self.node(ino)?;
            let parent = lock(&node).inode.parent;
            if parent == 0 || parent == ino {
                return Ok(false);
            }
            ino = parent;
        }
        Err(Error::integrity(format!(
            "directory loop above inode {ino}"
        )))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.check_writable("rename")?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(posix(
                libc::EINVAL,
                format!("rename: unsupported flags {flags:#x}"),
            ));
        }
        check_name(name, "rename")?;
        check_name(newname, "rename")?;
        if is_dot(name) || is_dot(newname) {
            return Err(posix(libc::EBUSY, "rename: . or .."));
        }
        let _ns = lock(&self.ns_lock);
        let _wb = lock(&self.wb_lock);
        let src = self.records.dirent(parent, name)?.ok_or_else(|| {
            posix(
                libc::ENOENT,
                format!("rename: no entry in directory {parent}"),
            )
        })?;
        let dst = self.records.dirent(newparent, newname)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        if noreplace && dst.is_some() {
            return Err(posix(
                libc::EEXIST,
                format!("rename: target exists in directory {newparent}"),
            ));
        }
        if exchange && dst.is_none() {
            return Err(posix(
                libc::ENOENT,
                format!("rename exchange: no target in directory {newparent}"),
            ));
        }
        if let Some(d) = &dst {
            if d.ino == src.ino {
                // Both names are links to the same inode: POSIX says do nothing.
                return Ok(());
            }
        }
        // Moving a directory under itself.
        if src.kind == FileKind::Dir
            && parent != newparent
            && self.is_ancestor(src.ino, newparent)?
        {
            return Err(posix(
                libc::EINVAL,
                "rename: directory into its own subtree",
            ));
        }
        if exchange {
            if let Some(d) = &dst {
                if d.kind == FileKind::Dir
                    && parent != newparent
                    && self.is_ancestor(d.ino, parent)?
                {
                    return Err(posix(
                        libc::EINVAL,
                        "rename exchange: directory into its own subtree",
                    ));
                }
            }
        }
        let mut list = vec![
            (parent, self.node(parent)?),
            (newparent, self.node(newparent)?),
            (src.ino, self.node(src.ino)?),
        ];
        if let Some(d) = &dst {
            list.push((d.ino, self.node(d.ino)?));
        }
        let nodes = lock_nodes(list);
        let mut l = Locked::new(&nodes);
        self.parent_for_change(l.get(parent)?, ctx, "rename")?;
        self.parent_for_change(l.get(newparent)?, ctx, "rename")?;
        if !exchange {
            if let Some(d) = &dst {
                let dkind = l.get(d.ino)?.inode.kind;
                if src.kind == FileKind::Dir && dkind != FileKind::Dir {
                    return Err(posix(libc::ENOTDIR, "rename: directory over non-directory"));
                }
                if src.kind != FileKind::Dir && dkind == FileKind::Dir {
                    return Err(posix(libc::EISDIR, "rename: non-directory over directory"));
                }
                if dkind == FileKind::Dir && !self.records.dir_is_empty(d.ino)? {
                    return Err(posix(libc::ENOTEMPTY, "rename: target directory not empty"));
                }
            }
        }
        if self.check_perms {
            let pi = l.get(parent)?.inode.clone();
            let si = l.get(src.ino)?.inode.clone();
            if !perms::may_delete(&pi, &si, ctx) {
                return Err(posix(libc::EPERM, "rename: sticky source directory"));
            }
            if let Some(d) = &dst {
                let npi = l.get(newparent)?.inode.clone();
                let di = l.get(d.ino)?.inode.clone();
                if !perms::may_delete(&npi, &di, ctx) {
                    return Err(posix(libc::EPERM, "rename: sticky target directory"));
                }
            }
            if src.kind == FileKind::Dir
                && parent != newparent
                && !perms::may_access(&si, ctx, perms::W)
            {
                return Err(posix(
                    libc::EACCES,
                    "rename: moving a directory needs write permission on it",
                ));
            }
        }
        let now = Inner::now();
        let mut b = self.records.batch();
        let mut purge: Option<Inode> = None;
        if exchange {
            let d = dst
                .clone()
                .ok_or_else(|| posix(libc::ENOENT, "rename exchange"))?;
            b.put_dirent(
                parent,
                &Dirent {
                    name: name.to_vec(),
                    ino: d.ino,
                    kind: d.kind,
                },
            )?;
            b.put_dirent(
                newparent,
                &Dirent {
                    name: newname.to_vec(),
                    ino: src.ino,
                    kind: src.kind,
                },
            )?;
            if parent != newparent {
                if src.kind == FileKind::Dir {
                    l.get(src.ino)?.inode.parent = newparent;
                    l.get(parent)?.inode.nlink -= 1;
                    l.get(newparent)?.inode.nlink += 1;
                }
                if d.kind == FileKind::Dir {
                    l.get(d.ino)?.inode.parent = parent;
                    l.get(newparent)?.inode.nlink -= 1;
                    l.get(parent)?.inode.nlink += 1;
                }
            }
            for ino in [src.ino, d.ino] {
                let n = l.get(ino)?;
                n.inode.ctime = now;
                self.persist_into(&mut b, n)?;
            }
        } else {
            b.delete_dirent(parent, name);
            b.put_dirent(
                newparent,
                &Dirent {
                    name: newname.to_vec(),
                    ino: src.ino,
                    kind: src.kind,
                },
            )?;
            if let Some(d) = &dst {
                let v = l.get(d.ino)?;
                let dir_replaced = v.inode.kind == FileKind::Dir;
                if self.drop_link(&mut b, v, now)? {
                    self.drop_dirty(v);
                    v.purged = true;
                    purge = Some(v.inode.clone());
                }
                if dir_replaced {
                    l.get(newparent)?.inode.nlink -= 1;
                }
            }
            if src.kind == FileKind::Dir && parent != newparent {
                l.get(src.ino)?.inode.parent = newparent;
                l.get(parent)?.inode.nlink -= 1;
                l.get(newparent)?.inode.nlink += 1;
            }
            let s = l.get(src.ino)?;
            s.inode.ctime = now;
            self.persist_into(&mut b, s)?;
        }
        for ino in [parent, newparent] {
            let n = l.get(ino)?;
            n.inode.mtime = now;
            n.inode.ctime = now;
            self.persist_into(&mut b, n)?;
        }
        if let Some(inode) = &purge {
            self.purge_into(&mut b, inode, false)?;
        }
        b.commit()?;
        drop(l);
        if let Some(inode) = purge {
            self.after_purge(&inode);
            self.forget_node(inode.ino);
        }
        Ok(())
    }
}
