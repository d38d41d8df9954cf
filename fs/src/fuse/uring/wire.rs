//! The kernel's FUSE wire format as the io_uring transport sees it (`<linux/fuse.h>`,
//! protocol 7.42+): the entry header, opcodes, the bounds-checked readers of request fields
//! and names, and the encoders of reply structures. Nothing here trusts the kernel's bytes: a
//! short field or a name without its NUL is an `EINVAL`, never a panic.

use crate::fuse::adapter::{OpResult, XattrReply, TTL};
use digimedfs_core::filesystem::{Attr, Ctx, DirEntry, FileKind, SetAttr, TimeSet};
use fuser::{Errno, FopenFlags};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sizes of `struct fuse_uring_req_header`'s parts and of `fuse_out_header`.
pub(super) const IN_OUT_SIZE: usize = 128;
pub(super) const OP_IN_SIZE: usize = 128;
pub(super) const OUT_HEADER_SIZE: usize = 16;
/// `struct fuse_uring_req_header`: the request's `fuse_in_header` (and then the reply's
/// `fuse_out_header`), the op's fixed-size arguments, and `fuse_uring_ent_in_out`.
#[repr(C, align(8))]
pub(super) struct Header {
    pub(super) in_out: [u8; IN_OUT_SIZE],
    pub(super) op_in: [u8; OP_IN_SIZE],
    pub(super) ent: [u8; 32],
}
/// What a request carries besides its payload.
pub(super) struct Request {
    pub(super) nodeid: u64,
    pub(super) ctx: Ctx,
    pub(super) op_in: [u8; OP_IN_SIZE],
}

impl Request {
    pub(super) fn u32_at(&self, off: usize) -> OpResult<u32> {
        ne_u32(&self.op_in, off).ok_or(einval())
    }
    pub(super) fn u64_at(&self, off: usize) -> OpResult<u64> {
        ne_u64(&self.op_in, off).ok_or(einval())
    }
}

pub(super) fn einval() -> Errno {
    Errno::from_i32(libc::EINVAL)
}

pub(super) fn ne_u32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

pub(super) fn ne_u64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
}

/// The NUL-terminated string at the start of `b` and what follows its NUL.
pub(super) fn cstr(b: &[u8]) -> OpResult<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0).ok_or(einval())?;
    let head = b.get(..end).ok_or(einval())?;
    Ok((head, b.get(end + 1..).unwrap_or(&[])))
}

/// FUSE opcodes served here (`enum fuse_opcode`).
pub(super) mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const IOCTL: u32 = 39;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// `fuse_setattr_in.valid` bits.
mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const CTIME: u32 = 1 << 10;
}

/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
pub(super) const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_FSYNC_FDATASYNC` in `fuse_fsync_in.fsync_flags`.
pub(super) const FSYNC_FDATASYNC: u32 = 1;
/// The core's view of a `fuse_setattr_in`.
pub(super) fn setattr_in(r: &Request) -> OpResult<SetAttr> {
    let valid = r.u32_at(0)?;
    // The field decoded by `read` if `bit` is set in `valid`, else None.
    fn field<T>(valid: u32, bit: u32, read: impl FnOnce() -> OpResult<T>) -> OpResult<Option<T>> {
        if valid & bit != 0 {
            read().map(Some)
        } else {
            Ok(None)
        }
    }
    let time = |secs_at: usize, nsec_at: usize, now_bit: u32| -> OpResult<TimeSet> {
        if valid & now_bit != 0 {
            return Ok(TimeSet::Now);
        }
        let secs = r.u64_at(secs_at)? as i64;
        Ok(TimeSet::At(system_time(secs, r.u32_at(nsec_at)?)))
    };
    Ok(SetAttr {
        mode: field(valid, fattr::MODE, || Ok(r.u32_at(68)? & 0o7777))?,
        uid: field(valid, fattr::UID, || r.u32_at(76))?,
        gid: field(valid, fattr::GID, || r.u32_at(80))?,
        size: field(valid, fattr::SIZE, || r.u64_at(16))?,
        atime: field(valid, fattr::ATIME, || time(32, 56, fattr::ATIME_NOW))?,
        mtime: field(valid, fattr::MTIME, || time(40, 60, fattr::MTIME_NOW))?,
        ctime: field(valid, fattr::CTIME, || {
            Ok(system_time(r.u64_at(48)? as i64, r.u32_at(64)?))
        })?,
        fh: field(valid, fattr::FH, || r.u64_at(8))?,
    })
}

fn system_time(secs: i64, nsecs: u32) -> SystemTime {
    let nsecs = Duration::from_nanos(u64::from(nsecs.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsecs
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsecs
    }
}

/// Seconds and nanoseconds since the epoch, as `fuse_attr` carries them.
fn time_parts(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs as u64, nanos)
        }
    }
}

fn type_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::File => libc::S_IFREG,
        FileKind::Dir => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::CharDev => libc::S_IFCHR,
        FileKind::BlockDev => libc::S_IFBLK,
        FileKind::Socket => libc::S_IFSOCK,
    }
}

pub(super) fn put_u32s(out: &mut Vec<u8>, vs: &[u32]) {
    for v in vs {
        out.extend_from_slice(&v.to_ne_bytes());
    }
}

/// `struct fuse_attr` (88 bytes).
fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    let (at, an) = time_parts(a.atime);
    let (mt, mn) = time_parts(a.mtime);
    let (ct, cn) = time_parts(a.ctime);
    for v in [a.ino, a.size, a.blocks, at, mt, ct] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    let mode = type_bits(a.kind) | u32::from(a.perm);
    put_u32s(
        out,
        &[
            an, mn, cn, mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0,
        ],
    );
}

/// `struct fuse_entry_out` (128 bytes); a node id of 0 is a negative entry.
pub(super) fn put_entry(out: &mut Vec<u8>, a: &Attr) {
    let ttl = TTL.as_secs();
    for v in [a.ino, a.generation, ttl, ttl] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    put_u32s(out, &[TTL.subsec_nanos(), TTL.subsec_nanos()]);
    put_attr(out, a);
}

/// `struct fuse_attr_out` (104 bytes).
pub(super) fn put_attr_out(out: &mut Vec<u8>, a: &Attr) {
    out.extend_from_slice(&TTL.as_secs().to_ne_bytes());
    put_u32s(out, &[TTL.subsec_nanos(), 0]);
    put_attr(out, a);
}

/// `struct fuse_open_out` (16 bytes).
pub(super) fn put_open_out(out: &mut Vec<u8>, fh: u64, flags: FopenFlags) {
    out.extend_from_slice(&fh.to_ne_bytes());
    put_u32s(out, &[flags.bits(), 0]);
}

pub(super) fn put_xattr(out: &mut Vec<u8>, x: XattrReply) {
    match x {
        // struct fuse_getxattr_out
        XattrReply::Size(n) => put_u32s(out, &[n, 0]),
        XattrReply::Data(d) => out.extend_from_slice(&d),
    }
}

/// `struct fuse_dirent` for `ent` if it fits within `limit` bytes of reply; false if not.
pub(super) fn put_dirent(out: &mut Vec<u8>, limit: usize, ent: &DirEntry, next: u64) -> bool {
    let len = dirent_len(ent.name.len());
    if out.len() + len > limit {
        return false;
    }
    dirent_body(out, ent.ino, next, type_bits(ent.kind) >> 12, &ent.name);
    true
}

/// `struct fuse_direntplus` (an entry_out, then the dirent) if it fits; false if not.
pub(super) fn put_direntplus(
    out: &mut Vec<u8>,
    limit: usize,
    ent: &DirEntry,
    next: u64,
    a: &Attr,
) -> bool {
    let len = 128 + dirent_len(ent.name.len());
    if out.len() + len > limit {
        return false;
    }
    put_entry(out, a);
    dirent_body(out, ent.ino, next, type_bits(ent.kind) >> 12, &ent.name);
    true
}

/// Size of a `fuse_dirent` with a name of `n` bytes, padded to 8.
fn dirent_len(n: usize) -> usize {
    (24 + n + 7) & !7
}

fn dirent_body(out: &mut Vec<u8>, ino: u64, next: u64, dtype: u32, name: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&next.to_ne_bytes());
    put_u32s(out, &[name.len() as u32, dtype]);
    out.extend_from_slice(name);
    out.resize(start + dirent_len(name.len()), 0);
}
#[cfg(test)]
mod tests {
    use super::*;

    fn attr() -> Attr {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        Attr {
            ino: 7,
            size: 100,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileKind::File,
            perm: 0o640,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
            generation: 3,
        }
    }

    #[test]
    fn replies_have_the_kernels_sizes() {
        let mut out = Vec::new();
        put_attr(&mut out, &attr());
        assert_eq!(out.len(), 88);
        out.clear();
        put_entry(&mut out, &attr());
        assert_eq!(out.len(), 128);
        assert_eq!(ne_u64(&out, 0), Some(7));
        assert_eq!(ne_u64(&out, 8), Some(3));
        // mode at 40 + 60
        assert_eq!(ne_u32(&out, 100), Some(libc::S_IFREG | 0o640));
        out.clear();
        put_attr_out(&mut out, &attr());
        assert_eq!(out.len(), 104);
        out.clear();
        put_open_out(&mut out, 9, FopenFlags::FOPEN_KEEP_CACHE);
        assert_eq!(out.len(), 16);
        assert_eq!(std::mem::size_of::<Header>(), 288);
    }

    #[test]
    fn dirents_are_padded_and_stop_at_the_limit() {
        let ent = DirEntry {
            ino: 5,
            next_offset: 1,
            kind: FileKind::Dir,
            name: b"abc".to_vec(),
        };
        let mut out = Vec::new();
        assert!(put_dirent(&mut out, 64, &ent, 1));
        assert_eq!(out.len(), 32);
        assert_eq!(ne_u32(&out, 16), Some(3));
        assert_eq!(ne_u32(&out, 20), Some(libc::DT_DIR as u32));
        assert!(put_dirent(&mut out, 64, &ent, 2));
        assert!(!put_dirent(&mut out, 64, &ent, 3));
        assert_eq!(out.len(), 64);
        let mut plus = Vec::new();
        assert!(!put_direntplus(&mut plus, 150, &ent, 1, &attr()));
        assert!(put_direntplus(&mut plus, 160, &ent, 1, &attr()));
        assert_eq!(plus.len(), 160);
    }

    #[test]
    fn times_round_trip_either_side_of_the_epoch() {
        for t in [
            UNIX_EPOCH + Duration::new(5, 7),
            UNIX_EPOCH - Duration::new(5, 7),
            UNIX_EPOCH,
        ] {
            let (s, n) = time_parts(t);
            assert_eq!(system_time(s as i64, n), t);
        }
    }

    #[test]
    fn names_need_their_nul() {
        assert_eq!(cstr(b"a\0b\0").ok(), Some((&b"a"[..], &b"b\0"[..])));
        assert!(cstr(b"abc").is_err());
    }

    #[test]
    fn setattr_decodes_the_fields_marked_valid() {
        let mut op_in = [0u8; OP_IN_SIZE];
        let valid = fattr::MODE | fattr::SIZE | fattr::MTIME | fattr::MTIME_NOW | fattr::FH;
        op_in[0..4].copy_from_slice(&valid.to_ne_bytes());
        op_in[8..16].copy_from_slice(&42u64.to_ne_bytes());
        op_in[16..24].copy_from_slice(&4096u64.to_ne_bytes());
        op_in[68..72].copy_from_slice(&(libc::S_IFREG | 0o4755).to_ne_bytes());
        op_in[76..80].copy_from_slice(&1000u32.to_ne_bytes());
        let r = Request {
            nodeid: 1,
            ctx: Ctx {
                uid: 0,
                gid: 0,
                pid: 1,
            },
            op_in,
        };
        let s = setattr_in(&r).expect("decodes");
        assert_eq!(s.mode, Some(0o4755));
        assert_eq!(s.size, Some(4096));
        assert_eq!(s.mtime, Some(TimeSet::Now));
        assert_eq!(s.fh, Some(42));
        assert_eq!((s.uid, s.gid, s.atime, s.ctime), (None, None, None, None));
    }
}
