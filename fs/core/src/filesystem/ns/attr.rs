//! Attribute and extended attribute changes: setattr (chmod, chown, truncate, utimens) and
//! the xattr operations, with the permission checks Linux applies to each.

use super::{XATTR_NAME_MAX, XATTR_VALUE_MAX};
use crate::filesystem::{lock, perms, posix, Attr, Ctx, FileKind, Inner, Node, SetAttr, TimeSet};
use crate::format::records::{Timestamp, Xattr};
use crate::Result;

impl Inner {
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

    pub(super) fn xattr_check(&self, ctx: &Ctx, n: &Node, name: &[u8], write: bool) -> Result<()> {
        if write {
            crate::filesystem::ensure_live(n, "setxattr")?;
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
