//! Namespace operations: lookup, create, link, unlink, rename, readdir, setattr and xattrs.
//! Every change is one atomic batch of records, so a crash never leaves a half-done rename.

mod attr;
mod dir;
mod remove;
mod rename;

use super::{lock, perms, posix, Attr, Ctx, FileKind, Inner, Node, NodeRef, NAME_MAX, ROOT_INO};
use crate::format::records::{Dirent, Inode};
use crate::meta::RecordBatch;
use crate::{Error, Result};
use std::sync::MutexGuard;

const LINK_MAX: u32 = 65_000;
const XATTR_NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 65_536;

fn check_name(name: &[u8], op: &str) -> Result<()> {
    if name.is_empty() {
        return Err(posix(libc::ENOENT, format!("{op}: empty name")));
    }
    if name.len() > NAME_MAX {
        return Err(posix(
            libc::ENAMETOOLONG,
            format!("{op}: name longer than {NAME_MAX} bytes"),
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(posix(
            libc::EINVAL,
            format!("{op}: name contains '/' or NUL"),
        ));
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Locks several nodes in ascending inode order (deduplicated).
fn lock_nodes(mut nodes: Vec<(u64, NodeRef)>) -> Vec<(u64, NodeRef)> {
    nodes.sort_by_key(|(i, _)| *i);
    nodes.dedup_by_key(|(i, _)| *i);
    nodes
}

struct Locked<'a> {
    guards: Vec<(u64, MutexGuard<'a, Node>)>,
}

impl<'a> Locked<'a> {
    fn new(nodes: &'a [(u64, NodeRef)]) -> Locked<'a> {
        Locked {
            guards: nodes.iter().map(|(i, n)| (*i, lock(n))).collect(),
        }
    }
    fn get(&mut self, ino: u64) -> Result<&mut Node> {
        self.guards
            .iter_mut()
            .find(|(i, _)| *i == ino)
            .map(|(_, g)| &mut **g)
            .ok_or_else(|| Error::integrity(format!("inode {ino} not locked")))
    }
}

impl Inner {
    pub(crate) fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Attr> {
        let pnode = self.node(parent)?;
        let target = {
            let p = lock(&pnode);
            if p.inode.kind != FileKind::Dir {
                return Err(posix(
                    libc::ENOTDIR,
                    format!("lookup in inode {parent}: not a directory"),
                ));
            }
            if self.check_perms && !perms::may_access(&p.inode, ctx, perms::X) {
                return Err(posix(
                    libc::EACCES,
                    format!("lookup in inode {parent}: permission denied"),
                ));
            }
            if name == b"." {
                parent
            } else if name == b".." {
                if parent == ROOT_INO {
                    ROOT_INO
                } else {
                    p.inode.parent
                }
            } else {
                if name.len() > NAME_MAX {
                    return Err(posix(libc::ENAMETOOLONG, "lookup: name too long"));
                }
                match self.records.dirent(parent, name)? {
                    Some(d) => d.ino,
                    None => {
                        return Err(posix(
                            libc::ENOENT,
                            format!("lookup in inode {parent}: no such entry"),
                        ))
                    }
                }
            }
        };
        let node = match self.node(target) {
            Ok(node) => node,
            Err(e) if e.errno() == libc::ENOENT => {
                // The entry names an inode without a record. Either an unlink removed both
                // since the entry was read (the entry is gone now, and ENOENT is the answer),
                // or the store holds an entry without its inode: damage, which must not pass
                // for a missing name (the kernel would cache that, and nothing would say why).
                if self
                    .records
                    .dirent(parent, name)?
                    .is_some_and(|d| d.ino == target)
                {
                    return Err(Error::integrity(format!(
                        "lookup in inode {parent}: the entry names inode {target}, \
                         which has no record"
                    )));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let n = lock(&node);
        Ok(self.attr_of(&n.inode))
    }

    fn parent_for_change(&self, p: &Node, ctx: &Ctx, op: &str) -> Result<()> {
        if p.inode.kind != FileKind::Dir {
            return Err(posix(
                libc::ENOTDIR,
                format!("{op}: inode {} is not a directory", p.inode.ino),
            ));
        }
        if p.inode.nlink == 0 {
            return Err(posix(
                libc::ENOENT,
                format!("{op}: directory {} was removed", p.inode.ino),
            ));
        }
        if self.check_perms && !perms::may_access(&p.inode, ctx, perms::W | perms::X) {
            return Err(posix(
                libc::EACCES,
                format!("{op}: no write permission on directory {}", p.inode.ino),
            ));
        }
        Ok(())
    }

    /// Persists a node's inode (and pending inline data) into `b`; fails for a deleted inode
    /// ([`super::ensure_live`]).
    pub(crate) fn persist_into(&self, b: &mut RecordBatch<'_>, n: &mut Node) -> Result<()> {
        super::ensure_live(n, "store")?;
        b.put_inode(&n.inode)?;
        if n.inline_dirty {
            if let Some(data) = &n.inline {
                b.put_inline(n.inode.ino, data);
            }
            self.set_inline_dirty(n, false);
        }
        if n.open_count == 0 {
            // Stored now; keep memory bounded by not caching contents of closed files.
            n.inline = None;
        }
        n.attr_dirty = false;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_node(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u32,
        target: Vec<u8>,
        open: bool,
    ) -> Result<(Attr, Option<u64>)> {
        self.check_writable("create")?;
        check_name(name, "create")?;
        if is_dot(name) {
            return Err(posix(libc::EEXIST, "create: . or .."));
        }
        let _ns = lock(&self.ns_lock);
        let pnode = self.node(parent)?;
        let mut p = lock(&pnode);
        self.parent_for_change(&p, ctx, "create")?;
        if self.records.dirent(parent, name)?.is_some() {
            return Err(posix(
                libc::EEXIST,
                format!("create in directory {parent}: entry exists"),
            ));
        }
        if kind == FileKind::Dir && p.inode.nlink >= LINK_MAX {
            return Err(posix(
                libc::EMLINK,
                format!("mkdir in directory {parent}: too many links"),
            ));
        }
        let ino = self.alloc_ino()?;
        let now = Inner::now();
        let mut perm = perm;
        let sgid_dir = u32::from(p.inode.perm) & libc::S_ISGID != 0;
        let gid = if sgid_dir { p.inode.gid } else { ctx.gid };
        if sgid_dir && kind == FileKind::Dir {
            perm |= libc::S_ISGID;
        }
        let inode = Inode {
            rdev,
            target,
            ..Inode::new(ino, kind, perm as u16, ctx.uid, gid, parent, now)
        };
        p.inode.mtime = now;
        p.inode.ctime = now;
        if kind == FileKind::Dir {
            p.inode.nlink += 1;
        }
        let mut b = self.records.batch();
        b.put_inode(&inode)?;
        b.put_dirent(
            parent,
            &Dirent {
                name: name.to_vec(),
                ino,
                kind,
            },
        )?;
        self.persist_into(&mut b, &mut p)?;
        b.commit()?;
        drop(p);
        let attr = self.attr_of(&inode);
        let node = self.insert_node(inode, true);
        // Opened before the namespace lock goes, so the new name cannot be removed (and the
        // inode deleted) between its creation and its first open.
        let fh = if open {
            Some(self.new_handle(&node, ino)?)
        } else {
            None
        };
        Ok((attr, fh))
    }
}
