//! Permission rules as pure functions over an inode's owner, group and mode, following
//! POSIX and Linux (`generic_permission`, `inode_change_ok`). Root bypasses read/write checks
//! and needs an execute bit somewhere for execute.

use super::Ctx;
use crate::format::records::Inode;

/// Read permission.
pub const R: u32 = 4;
/// Write permission.
pub const W: u32 = 2;
/// Execute / search permission.
pub const X: u32 = 1;

/// Whether `ctx` may access `inode` with `mask` (a combination of R, W, X).
pub fn may_access(inode: &Inode, ctx: &Ctx, mask: u32) -> bool {
    let perm = u32::from(inode.perm);
    if ctx.uid == 0 {
        // Root may execute only if some execute bit is set (or it is a directory).
        if mask & X != 0 && inode.kind != super::FileKind::Dir && perm & 0o111 == 0 {
            return false;
        }
        return true;
    }
    let bits = if ctx.uid == inode.uid {
        (perm >> 6) & 7
    } else if ctx.gid == inode.gid {
        (perm >> 3) & 7
    } else {
        perm & 7
    };
    bits & mask == mask
}

/// Whether `ctx` may remove or rename entry `victim` out of directory `dir` (sticky bit rule).
pub fn may_delete(dir: &Inode, victim: &Inode, ctx: &Ctx) -> bool {
    if u32::from(dir.perm) & libc::S_ISVTX == 0 || ctx.uid == 0 {
        return true;
    }
    ctx.uid == dir.uid || ctx.uid == victim.uid
}

/// Whether `ctx` owns `inode` (or is root): needed for chmod and explicit utimens.
pub fn is_owner(inode: &Inode, ctx: &Ctx) -> bool {
    ctx.uid == 0 || ctx.uid == inode.uid
}

/// The mode bits left after a modification of `inode`'s contents by `ctx` (write, truncate,
/// fallocate), as Linux leaves them (`setattr_should_drop_suidgid`): setuid goes, setgid goes
/// if the file is group-executable or `ctx` is not in its group; root (standing in for
/// CAP_FSETID) keeps both. Only the primary group of `ctx` is known here.
pub fn perm_after_modification(inode: &Inode, ctx: &Ctx) -> u16 {
    let perm = u32::from(inode.perm);
    if ctx.uid == 0 || perm & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return inode.perm;
    }
    let mut kept = perm & !libc::S_ISUID;
    if kept & 0o010 != 0 || ctx.gid != inode.gid {
        kept &= !libc::S_ISGID;
    }
    kept as u16
}
