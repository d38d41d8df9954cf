//! Hard links and directory listing.

use super::{check_name, is_dot, lock_nodes, Locked, LINK_MAX};
use crate::filesystem::{lock, posix, Attr, Ctx, DirEntry, FileKind, Inner, ROOT_INO};
use crate::format::records::Dirent;
use crate::Result;

impl Inner {
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
}
