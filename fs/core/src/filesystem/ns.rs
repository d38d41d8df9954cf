//! Namespace operations: lookup, create, link, unlink, rename, readdir, setattr and xattrs.
//! Every change is one atomic batch of records, so a crash never leaves a half-done rename.

use super::{
    lock, perms, posix, Attr, Ctx, DirEntry, FileKind, Inner, Node, NodeRef, SetAttr, TimeSet,
    NAME_MAX, ROOT_INO,
};
use crate::format::records::{self, Dirent, Inode, Storage, Timestamp, Xattr};
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

    /// Decrements the link count of a node losing an entry; purges or orphans it at zero.
    fn drop_link(&self, b: &mut RecordBatch<'_>, v: &mut Node, now: Timestamp) -> Result<bool> {
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
            let mut r = lock(&self.reclaim);
            r.inos.push(ino);
            r.last_deletion = Some(std::time::Instant::now());
        }
        // Only object-backed files have block maps: skip the cache sweep (linear in the cache
        // size) for everything else, which is most of an `rm -rf`.
        if let Storage::Object(id) = inode.storage {
            let mut cache = lock(&self.chunk_cache);
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
            lock(&self.doomed).push(id);
        }
    }

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

    pub(crate) fn link(&self, ctx: &Ctx, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        self.check_writable("link")?;
        check_name(newname, "link")?;
        if is_dot(newname) {
            return Err(posix(libc::EEXIST, "link: . or .."));
        }
        let _ns = lock(&self.ns_lock);
        let nodes = lock_nodes(vec![
            (ino, self.node(ino)?),
            (newparent, self.node(newparent)?),
        ]);
        let mut l = Locked::new(&nodes);
        self.parent_for_change(l.get(newparent)?, ctx, "link")?;
        {
            let n = l.get(ino)?;
            if n.inode.kind == FileKind::Dir {
                return Err(posix(
                    libc::EPERM,
                    format!("link inode {ino}: is a directory"),
                ));
            }
            if n.inode.nlink == 0 {
                return Err(posix(
                    libc::ENOENT,
                    format!("link inode {ino}: was removed"),
                ));
            }
            if n.inode.nlink >= LINK_MAX {
                return Err(posix(
                    libc::EMLINK,
                    format!("link inode {ino}: too many links"),
                ));
            }
        }
        if self.records.dirent(newparent, newname)?.is_some() {
            return Err(posix(
                libc::EEXIST,
                format!("link in directory {newparent}: entry exists"),
            ));
        }
        let now = Inner::now();
        let mut b = self.records.batch();
        let kind = {
            let n = l.get(ino)?;
            n.inode.nlink += 1;
            n.inode.ctime = now;
            self.persist_into(&mut b, n)?;
            n.inode.kind
        };
        b.put_dirent(
            newparent,
            &Dirent {
                name: newname.to_vec(),
                ino,
                kind,
            },
        )?;
        {
            let p = l.get(newparent)?;
            p.inode.mtime = now;
            p.inode.ctime = now;
            self.persist_into(&mut b, p)?;
        }
        b.commit()?;
        let attr = self.attr_of(&l.get(ino)?.inode);
        Ok(attr)
    }

    pub(crate) fn readdir(&self, ino: u64, offset: i64, max: usize) -> Result<Vec<DirEntry>> {
        let node = self.node(ino)?;
        let parent = {
            let mut n = lock(&node);
            if n.inode.kind != FileKind::Dir {
                return Err(posix(
                    libc::ENOTDIR,
                    format!("readdir inode {ino}: not a directory"),
                ));
            }
            // Reading a directory counts for its atime, as getdents does on Linux.
            self.touch_atime(&mut n);
            if ino == ROOT_INO {
                ROOT_INO
            } else {
                n.inode.parent
            }
        };
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        if offset < 1 {
            out.push(DirEntry {
                ino,
                next_offset: 1,
                kind: FileKind::Dir,
                name: b".".to_vec(),
            });
        }
        if offset < 2 && out.len() < max {
            out.push(DirEntry {
                ino: parent,
                next_offset: 2,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
            });
        }
        if out.len() >= max {
            return Ok(out);
        }
        let after = if offset >= 3 { Some(offset) } else { None };
        self.records.scan_dir(ino, after, &mut |cookie, d| {
            out.push(DirEntry {
                ino: d.ino,
                next_offset: cookie,
                kind: d.kind,
                name: d.name,
            });
            Ok(out.len() < max)
        })?;
        Ok(out)
    }

    pub(crate) fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr) -> Result<Attr> {
        self.check_writable("setattr")?;
        let node = self.node(ino)?;
        if let Some(size) = set.size {
            {
                let n = lock(&node);
                match n.inode.kind {
                    FileKind::File => {}
                    FileKind::Dir => {
                        return Err(posix(
                            libc::EISDIR,
                            format!("truncate inode {ino}: is a directory"),
                        ))
                    }
                    _ => {
                        return Err(posix(
                            libc::EINVAL,
                            format!("truncate inode {ino}: not a regular file"),
                        ))
                    }
                }
                if self.check_perms
                    && set.fh.is_none()
                    && !perms::may_access(&n.inode, ctx, perms::W)
                {
                    return Err(posix(
                        libc::EACCES,
                        format!("truncate inode {ino}: permission denied"),
                    ));
                }
            }
            self.truncate(&node, size)?;
        }
        let _ns = lock(&self.ns_lock);
        let mut n = lock(&node);
        let now = Inner::now();
        let mut changed = set.size.is_some();
        if set.size.is_some() {
            // Truncation is a modification: the kernel (FUSE_HANDLE_KILLPRIV_V2) leaves dropping
            // setuid/setgid to us.
            n.inode.perm = perms::perm_after_modification(&n.inode, ctx);
        }
        if let Some(mode) = set.mode {
            if self.check_perms && !perms::is_owner(&n.inode, ctx) {
                return Err(posix(
                    libc::EPERM,
                    format!("chmod inode {ino}: not the owner"),
                ));
            }
            let mut perm = mode & 0o7777;
            if self.check_perms && ctx.uid != 0 && ctx.gid != n.inode.gid {
                perm &= !libc::S_ISGID;
            }
            n.inode.perm = perm as u16;
            changed = true;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let new_uid = set.uid.unwrap_or(n.inode.uid);
            let new_gid = set.gid.unwrap_or(n.inode.gid);
            if self.check_perms && ctx.uid != 0 {
                if new_uid != n.inode.uid {
                    return Err(posix(
                        libc::EPERM,
                        format!("chown inode {ino}: only root may change the owner"),
                    ));
                }
                if new_gid != n.inode.gid && (ctx.uid != n.inode.uid || new_gid != ctx.gid) {
                    return Err(posix(
                        libc::EPERM,
                        format!("chown inode {ino}: not permitted"),
                    ));
                }
            }
            // Linux drops setuid (and setgid with group exec) on every chown of a
            // non-directory, by root too and even to the same owner; with
            // FUSE_HANDLE_KILLPRIV_V2 the kernel leaves that to us.
            if n.inode.kind != FileKind::Dir {
                let mut perm = u32::from(n.inode.perm) & !libc::S_ISUID;
                if perm & 0o010 != 0 {
                    perm &= !libc::S_ISGID;
                }
                n.inode.perm = perm as u16;
            }
            n.inode.uid = new_uid;
            n.inode.gid = new_gid;
            changed = true;
        }
        for (which, value) in [(0, set.atime), (1, set.mtime)] {
            let Some(value) = value else { continue };
            if self.check_perms {
                let ok = match value {
                    TimeSet::Now => {
                        perms::is_owner(&n.inode, ctx) || perms::may_access(&n.inode, ctx, perms::W)
                    }
                    TimeSet::At(_) => perms::is_owner(&n.inode, ctx),
                };
                if !ok {
                    return Err(posix(
                        libc::EPERM,
                        format!("utimens inode {ino}: not permitted"),
                    ));
                }
            }
            let t = match value {
                TimeSet::Now => now,
                TimeSet::At(t) => Timestamp::from_system(t),
            };
            if which == 0 {
                n.inode.atime = t;
            } else {
                n.inode.mtime = t;
            }
            changed = true;
        }
        if changed || set.ctime.is_some() {
            n.inode.ctime = set.ctime.map(Timestamp::from_system).unwrap_or(now);
            let mut b = self.records.batch();
            self.persist_into(&mut b, &mut n)?;
            b.commit()?;
        }
        Ok(self.attr_of(&n.inode))
    }

    fn xattr_check(&self, ctx: &Ctx, n: &Node, name: &[u8], write: bool) -> Result<()> {
        if write {
            super::ensure_live(n, "setxattr")?;
        }
        if name.is_empty() {
            return Err(posix(libc::EINVAL, "xattr: empty name"));
        }
        if name.len() > XATTR_NAME_MAX {
            return Err(posix(libc::ERANGE, "xattr: name longer than 255 bytes"));
        }
        let ns_ok = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len());
        if name.starts_with(b"system.") {
            return Err(posix(
                libc::EOPNOTSUPP,
                "xattr: system.* (ACLs) not supported",
            ));
        }
        if name == b"security.selinux" {
            // SELinux labels FUSE mounts by policy (genfscon), not from xattrs, so none are
            // stored. EOPNOTSUPP rather than ENODATA also tells `ls -l`, which asks for every
            // entry, that the filesystem has none: it stops asking (coreutils caches this per
            // device), which spares a round trip per entry of `ls -lR`.
            return Err(posix(
                libc::EOPNOTSUPP,
                "xattr: security.selinux (SELinux labels) not supported",
            ));
        }
        if !ns_ok {
            return Err(posix(libc::EOPNOTSUPP, "xattr: unknown namespace"));
        }
        if name.starts_with(b"trusted.") && ctx.uid != 0 && self.check_perms {
            return Err(posix(libc::EPERM, "xattr: trusted.* needs root"));
        }
        if name.starts_with(b"user.") {
            if write && !matches!(n.inode.kind, FileKind::File | FileKind::Dir) {
                return Err(posix(
                    libc::EPERM,
                    "xattr: user.* only on files and directories",
                ));
            }
            let mask = if write { perms::W } else { perms::R };
            if self.check_perms && !perms::may_access(&n.inode, ctx, mask) {
                return Err(posix(
                    libc::EACCES,
                    format!("xattr on inode {}: permission denied", n.inode.ino),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.check_writable("setxattr")?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(posix(libc::E2BIG, "setxattr: value larger than 64 KiB"));
        }
        let node = self.node(ino)?;
        let mut n = lock(&node);
        self.xattr_check(ctx, &n, name, true)?;
        let exists = self.records.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(posix(libc::EEXIST, format!("setxattr inode {ino}: exists")));
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(posix(
                libc::ENODATA,
                format!("setxattr inode {ino}: no such attribute"),
            ));
        }
        n.xattrs_absent = false;
        let mut b = self.records.batch();
        b.put_xattr(
            ino,
            &Xattr {
                name: name.to_vec(),
                value: value.to_vec(),
            },
        )?;
        n.inode.ctime = Inner::now();
        self.persist_into(&mut b, &mut n)?;
        b.commit()
    }

    pub(crate) fn getxattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let mut n = lock(&node);
        self.xattr_check(ctx, &n, name, false)?;
        let found = if n.xattrs_absent {
            None
        } else {
            let found = self.records.xattr(ino, name)?;
            if found.is_none() && !self.records.has_xattrs(ino)? {
                n.xattrs_absent = true;
            }
            found
        };
        match found {
            Some(x) => Ok(x.value),
            None => Err(posix(
                libc::ENODATA,
                format!("getxattr inode {ino}: no such attribute"),
            )),
        }
    }

    pub(crate) fn removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<()> {
        self.check_writable("removexattr")?;
        let node = self.node(ino)?;
        let mut n = lock(&node);
        self.xattr_check(ctx, &n, name, true)?;
        if self.records.xattr(ino, name)?.is_none() {
            return Err(posix(
                libc::ENODATA,
                format!("removexattr inode {ino}: no such attribute"),
            ));
        }
        let mut b = self.records.batch();
        b.delete_xattr(ino, name);
        n.inode.ctime = Inner::now();
        self.persist_into(&mut b, &mut n)?;
        b.commit()
    }
}

/// Whether `inode` may have an inline data record: a regular file whose contents are inline,
/// or none (an empty file may keep an empty record). The core writes none for other kinds,
/// and deletes a file's record in the batch that moves it to an object.
fn may_have_inline(inode: &Inode) -> bool {
    inode.kind == FileKind::File && !matches!(inode.storage, Storage::Object(_))
}
