//! rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE: every check runs before the batch is
//! built, and both entries, the inodes and a replaced target's purge go in one batch.

use super::{check_name, is_dot, lock_nodes, Locked};
use crate::filesystem::{lock, perms, posix, Ctx, FileKind, Inner, ROOT_INO};
use crate::format::records::{Dirent, Inode, Timestamp};
use crate::meta::RecordBatch;
use crate::{Error, Result};

/// The source and target names of a rename.
struct Names<'a> {
    parent: u64,
    name: &'a [u8],
    newparent: u64,
    newname: &'a [u8],
}

/// What the rename flags ask for.
#[derive(Clone, Copy)]
struct Mode {
    /// RENAME_EXCHANGE: swap the two entries.
    exchange: bool,
    /// RENAME_NOREPLACE: fail if the target exists.
    noreplace: bool,
}

/// Decodes `flags` and checks both names; runs before any lock is taken.
fn check_request(flags: u32, name: &[u8], newname: &[u8]) -> Result<Mode> {
    let exchange = flags & libc::RENAME_EXCHANGE != 0;
    let noreplace = flags & libc::RENAME_NOREPLACE != 0;
    if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace) {
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
    Ok(Mode {
        exchange,
        noreplace,
    })
}

/// Checks that the target exists or not as `mode` requires.
fn check_target(mode: Mode, newparent: u64, dst: Option<&Dirent>) -> Result<()> {
    if mode.noreplace && dst.is_some() {
        return Err(posix(
            libc::EEXIST,
            format!("rename: target exists in directory {newparent}"),
        ));
    }
    if mode.exchange && dst.is_none() {
        return Err(posix(
            libc::ENOENT,
            format!("rename exchange: no target in directory {newparent}"),
        ));
    }
    Ok(())
}

impl Inner {
    /// Whether `ancestor` is `ino` or one of its ancestors.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> Result<bool> {
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
        let mode = check_request(flags, name, newname)?;
        let at = Names {
            parent,
            name,
            newparent,
            newname,
        };
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
        check_target(mode, newparent, dst.as_ref())?;
        if let Some(d) = &dst {
            if d.ino == src.ino {
                // Both names are links to the same inode: POSIX says do nothing.
                return Ok(());
            }
        }
        self.check_no_loop(&at, mode, &src, dst.as_ref())?;
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
        if !mode.exchange {
            self.check_replace(&mut l, &src, dst.as_ref())?;
        }
        if self.check_perms {
            check_rename_perms(&mut l, ctx, &at, &src, dst.as_ref())?;
        }
        let now = Inner::now();
        let mut b = self.records.batch();
        let mut purge: Option<Inode> = None;
        if mode.exchange {
            self.exchange_entries(&mut b, &mut l, &at, &src, dst.as_ref(), now)?;
        } else {
            purge = self.move_entry(&mut b, &mut l, &at, &src, dst.as_ref(), now)?;
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

    /// Refuses to move a directory into its own subtree (either one, for an exchange).
    fn check_no_loop(
        &self,
        at: &Names<'_>,
        mode: Mode,
        src: &Dirent,
        dst: Option<&Dirent>,
    ) -> Result<()> {
        let (parent, newparent) = (at.parent, at.newparent);
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
        if mode.exchange {
            if let Some(d) = dst {
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
        Ok(())
    }

    /// Checks that the source may replace the target: a directory only an empty directory,
    /// a non-directory only a non-directory.
    fn check_replace(&self, l: &mut Locked<'_>, src: &Dirent, dst: Option<&Dirent>) -> Result<()> {
        if let Some(d) = dst {
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
        Ok(())
    }

    /// RENAME_EXCHANGE: swaps the two entries (and the parents of directories among them).
    fn exchange_entries(
        &self,
        b: &mut RecordBatch<'_>,
        l: &mut Locked<'_>,
        at: &Names<'_>,
        src: &Dirent,
        dst: Option<&Dirent>,
        now: Timestamp,
    ) -> Result<()> {
        let (parent, newparent) = (at.parent, at.newparent);
        let d = dst
            .cloned()
            .ok_or_else(|| posix(libc::ENOENT, "rename exchange"))?;
        b.put_dirent(
            parent,
            &Dirent {
                name: at.name.to_vec(),
                ino: d.ino,
                kind: d.kind,
            },
        )?;
        b.put_dirent(
            newparent,
            &Dirent {
                name: at.newname.to_vec(),
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
            self.persist_into(b, n)?;
        }
        Ok(())
    }

    /// Moves the source entry to the target name, dropping a replaced target's link; returns
    /// the target's inode if that was its last link and it is to be purged.
    fn move_entry(
        &self,
        b: &mut RecordBatch<'_>,
        l: &mut Locked<'_>,
        at: &Names<'_>,
        src: &Dirent,
        dst: Option<&Dirent>,
        now: Timestamp,
    ) -> Result<Option<Inode>> {
        let (parent, newparent) = (at.parent, at.newparent);
        let mut purge: Option<Inode> = None;
        b.delete_dirent(parent, at.name);
        b.put_dirent(
            newparent,
            &Dirent {
                name: at.newname.to_vec(),
                ino: src.ino,
                kind: src.kind,
            },
        )?;
        if let Some(d) = dst {
            let v = l.get(d.ino)?;
            let dir_replaced = v.inode.kind == FileKind::Dir;
            if self.drop_link(b, v, now)? {
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
        self.persist_into(b, s)?;
        Ok(purge)
    }
}

/// Sticky-directory rules for both names, and write permission on a directory that changes
/// parent (its `..` entry changes).
fn check_rename_perms(
    l: &mut Locked<'_>,
    ctx: &Ctx,
    at: &Names<'_>,
    src: &Dirent,
    dst: Option<&Dirent>,
) -> Result<()> {
    let pi = l.get(at.parent)?.inode.clone();
    let si = l.get(src.ino)?.inode.clone();
    if !perms::may_delete(&pi, &si, ctx) {
        return Err(posix(libc::EPERM, "rename: sticky source directory"));
    }
    if let Some(d) = dst {
        let npi = l.get(at.newparent)?.inode.clone();
        let di = l.get(d.ino)?.inode.clone();
        if !perms::may_delete(&npi, &di, ctx) {
            return Err(posix(libc::EPERM, "rename: sticky target directory"));
        }
    }
    if src.kind == FileKind::Dir
        && at.parent != at.newparent
        && !perms::may_access(&si, ctx, perms::W)
    {
        return Err(posix(
            libc::EACCES,
            "rename: moving a directory needs write permission on it",
        ));
    }
    Ok(())
}
