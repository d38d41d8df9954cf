//! One request → one handler call → one reply: decodes the request in an entry with the
//! bounds-checked readers of [`super::wire`], calls the matching [`DigimedFuse`] handler and
//! writes the reply (or the errno) back into the entry, never past its buffers.

use super::wire::{
    cstr, einval, ne_u32, ne_u64, op, put_attr_out, put_dirent, put_direntplus, put_entry,
    put_open_out, put_u32s, put_xattr, setattr_in, Request, FSYNC_FDATASYNC, IN_OUT_SIZE,
    OUT_HEADER_SIZE, WRITE_KILL_SUIDGID,
};
use super::{DigimedFuse, Entry};
use crate::fuse::adapter::OpResult;
use digimedfs_core::filesystem::Ctx;
use fuser::{Errno, FopenFlags};

/// Decodes the request in `entry`, runs it and writes the reply into `entry`; `out` is scratch
/// space for the reply body.
pub(super) fn answer_request(entry: &mut Entry, handlers: &DigimedFuse, out: &mut Vec<u8>) {
    let h = &entry.header;
    let unique = ne_u64(&h.in_out, 8).unwrap_or(0);
    let opcode = ne_u32(&h.in_out, 4).unwrap_or(0);
    let payload_len = ne_u32(&h.ent, 16)
        .map_or(0, |n| n as usize)
        .min(entry.payload.len());
    let req = Request {
        nodeid: ne_u64(&h.in_out, 16).unwrap_or(0),
        ctx: Ctx {
            uid: ne_u32(&h.in_out, 24).unwrap_or(u32::MAX),
            gid: ne_u32(&h.in_out, 28).unwrap_or(u32::MAX),
            pid: ne_u32(&h.in_out, 32).unwrap_or(0),
        },
        op_in: h.op_in,
    };
    out.clear();
    let result = dispatch(
        handlers,
        opcode,
        &req,
        entry.payload.get(..payload_len).unwrap_or(&[]),
        out,
    );
    let (error, body_len) = match result {
        Ok(data) => {
            // READ data comes back as its own buffer: copied once, into the entry.
            let body = data.as_deref().unwrap_or(out);
            match entry.payload.get_mut(..body.len()) {
                Some(dst) => {
                    dst.copy_from_slice(body);
                    (0i32, body.len())
                }
                None => (-libc::ERANGE, 0),
            }
        }
        Err(e) => (-e.code(), 0),
    };
    let h = &mut entry.header;
    h.in_out = [0; IN_OUT_SIZE];
    let total = (OUT_HEADER_SIZE + body_len) as u32;
    h.in_out[0..4].copy_from_slice(&total.to_ne_bytes());
    h.in_out[4..8].copy_from_slice(&error.to_ne_bytes());
    h.in_out[8..16].copy_from_slice(&unique.to_ne_bytes());
    h.ent[16..20].copy_from_slice(&(body_len as u32).to_ne_bytes());
}
/// Runs request `opcode`: its reply body is either returned (data the handler produced as
/// one buffer) or appended to `out`.
fn dispatch(
    h: &DigimedFuse,
    opcode: u32,
    r: &Request,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> OpResult<Option<Vec<u8>>> {
    let ino = r.nodeid;
    let ctx = &r.ctx;
    match opcode {
        op::LOOKUP => put_entry(out, &h.op_lookup(ctx, ino, cstr(payload)?.0)?),
        op::GETATTR => put_attr_out(out, &h.op_getattr(ino)?),
        op::SETATTR => put_attr_out(out, &h.op_setattr(ctx, ino, &setattr_in(r)?)?),
        op::READLINK => return h.op_readlink(ino).map(Some),
        op::SYMLINK => {
            let (name, rest) = cstr(payload)?;
            let (target, _) = cstr(rest)?;
            put_entry(out, &h.op_symlink(ctx, ino, name, target)?)
        }
        op::MKNOD => {
            let (mode, rdev, umask) = (r.u32_at(0)?, r.u32_at(4)?, r.u32_at(8)?);
            let name = cstr(payload)?.0;
            put_entry(out, &h.op_mknod(ctx, ino, name, mode, umask, rdev)?)
        }
        op::MKDIR => {
            let (mode, umask) = (r.u32_at(0)?, r.u32_at(4)?);
            put_entry(out, &h.op_mkdir(ctx, ino, cstr(payload)?.0, mode, umask)?)
        }
        op::UNLINK => h.op_unlink(ctx, ino, cstr(payload)?.0)?,
        op::RMDIR => h.op_rmdir(ctx, ino, cstr(payload)?.0)?,
        op::RENAME | op::RENAME2 => {
            let newdir = r.u64_at(0)?;
            let flags = if opcode == op::RENAME2 {
                r.u32_at(8)?
            } else {
                0
            };
            let (name, rest) = cstr(payload)?;
            let (newname, _) = cstr(rest)?;
            h.op_rename(ctx, ino, name, newdir, newname, flags)?
        }
        op::LINK => {
            let old = r.u64_at(0)?;
            put_entry(out, &h.op_link(ctx, old, ino, cstr(payload)?.0)?)
        }
        op::OPEN => {
            let (fh, flags) = h.op_open(ctx, ino, r.u32_at(0)? as i32)?;
            put_open_out(out, fh, flags)
        }
        op::CREATE => {
            let (flags, mode, umask) = (r.u32_at(0)? as i32, r.u32_at(4)?, r.u32_at(8)?);
            let name = cstr(payload)?.0;
            let (a, fh, open_flags) = h.op_create(ctx, ino, name, mode, umask, flags)?;
            put_entry(out, &a);
            put_open_out(out, fh, open_flags)
        }
        op::READ => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)?);
            let flags = r.u32_at(32)? as i32;
            return h.op_read(ino, fh, offset, size, flags).map(Some);
        }
        op::WRITE => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)? as usize);
            let kill = r.u32_at(20)? & WRITE_KILL_SUIDGID != 0;
            let data = payload.get(..size).ok_or(einval())?;
            let n = h.op_write(ctx, ino, fh, offset, data, kill)?;
            put_u32s(out, &[n, 0])
        }
        op::FLUSH => h.op_flush()?,
        op::RELEASE => h.op_release(ino, r.u64_at(0)?)?,
        op::FSYNC => {
            let datasync = r.u32_at(8)? & FSYNC_FDATASYNC != 0;
            h.op_fsync(ino, r.u64_at(0)?, datasync)?
        }
        op::OPENDIR => {
            let fh = h.op_opendir(ctx, ino, r.u32_at(0)? as i32)?;
            put_open_out(out, fh, FopenFlags::empty())
        }
        op::READDIR => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)? as usize);
            h.op_readdir(ino, fh, offset, |ent, next| {
                !put_dirent(out, size, ent, next)
            })?
        }
        op::READDIRPLUS => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)? as usize);
            h.op_readdirplus(ino, fh, offset, |ent, next, a| {
                !put_direntplus(out, size, ent, next, a)
            })?
        }
        op::RELEASEDIR => h.op_releasedir(ino, r.u64_at(0)?)?,
        op::FSYNCDIR => {
            let datasync = r.u32_at(8)? & FSYNC_FDATASYNC != 0;
            h.op_fsyncdir(ino, r.u64_at(0)?, datasync)?
        }
        op::STATFS => {
            let s = h.op_statfs(ino)?;
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            put_u32s(out, &[s.bsize, s.namelen, s.frsize, 0, 0, 0, 0, 0, 0, 0])
        }
        op::SETXATTR => {
            let (size, flags) = (r.u32_at(0)? as usize, r.u32_at(4)? as i32);
            let (name, rest) = cstr(payload)?;
            let value = rest.get(..size).ok_or(einval())?;
            h.op_setxattr(ctx, ino, name, value, flags, 0)?
        }
        op::GETXATTR => {
            let size = r.u32_at(0)?;
            put_xattr(out, h.op_getxattr(ctx, ino, cstr(payload)?.0, size)?)
        }
        op::LISTXATTR => put_xattr(out, h.op_listxattr(ctx, ino, r.u32_at(0)?)?),
        op::REMOVEXATTR => h.op_removexattr(ctx, ino, cstr(payload)?.0)?,
        op::ACCESS => h.op_access(ctx, ino, r.u32_at(0)? as i32)?,
        op::FALLOCATE => {
            let (fh, offset, length) = (r.u64_at(0)?, r.u64_at(8)?, r.u64_at(16)?);
            let mode = r.u32_at(24)? as i32;
            h.op_fallocate(ctx, ino, fh, offset, length, mode)?
        }
        op::IOCTL => h.op_ioctl()?,
        op::LSEEK => {
            let (fh, offset, whence) = (r.u64_at(0)?, r.u64_at(8)? as i64, r.u32_at(16)? as i32);
            let pos = h.op_lseek(ino, fh, offset, whence)?;
            out.extend_from_slice(&pos.to_ne_bytes())
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(None)
}
#[cfg(test)]
mod tests {
    use super::super::wire::{Header, OP_IN_SIZE};
    use super::*;
    use std::sync::Arc;

    /// Fuzzes the request decoder and dispatch with the kernel's side as the adversary: random
    /// opcodes, node ids, fixed arguments and payloads (names with and without their NUL,
    /// sizes beyond the payload) run against a real in-memory filesystem. Every request must be
    /// answered with a reply that fits its entry, never a panic. `DIGIMEDFS_FUZZ_ITERS` sets
    /// the number of requests (default 3 000).
    #[test]
    fn random_requests_get_replies_never_panics() {
        use digimedfs_core::testing::{Mutator, StaticKey};
        let iters = digimedfs_core::testing::fuzz_iterations();
        // A real backing directory: requests may write at any offset, which only a sparse
        // object file holds.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = StaticKey([3; 32]);
        digimedfs_core::mkfs::mkfs(dir.path(), &key, &Default::default(), &digimedfs_sled::Sled)
            .expect("mkfs");
        let fs = Arc::new(
            digimedfs_core::filesystem::Filesystem::open(
                dir.path(),
                &key,
                &Default::default(),
                &digimedfs_sled::Sled,
            )
            .expect("open"),
        );
        let handlers = DigimedFuse::new(fs.clone());
        const OPS: [u32; 33] = [
            op::LOOKUP,
            op::GETATTR,
            op::SETATTR,
            op::READLINK,
            op::SYMLINK,
            op::MKNOD,
            op::MKDIR,
            op::UNLINK,
            op::RMDIR,
            op::RENAME,
            op::LINK,
            op::OPEN,
            op::READ,
            op::WRITE,
            op::STATFS,
            op::RELEASE,
            op::FSYNC,
            op::SETXATTR,
            op::GETXATTR,
            op::LISTXATTR,
            op::REMOVEXATTR,
            op::FLUSH,
            op::OPENDIR,
            op::READDIR,
            op::RELEASEDIR,
            op::FSYNCDIR,
            op::ACCESS,
            op::CREATE,
            op::IOCTL,
            op::FALLOCATE,
            op::READDIRPLUS,
            op::RENAME2,
            op::LSEEK,
        ];
        let names: Vec<Vec<u8>> = vec![
            b"a\0".to_vec(),
            b"b\0c\0".to_vec(),
            b"user.x\0value".to_vec(),
            b"noterminator".to_vec(),
            Vec::new(),
            vec![b'n'; 300],
        ];
        let mut m = Mutator::new(0x5EED_0001);
        let mut out = Vec::new();
        for n in 0..iters {
            let mut header = Box::new(Header {
                in_out: [0; IN_OUT_SIZE],
                op_in: [0; OP_IN_SIZE],
                ent: [0; 32],
            });
            let opcode = if m.below(20) == 0 {
                m.next_u64() as u32
            } else {
                OPS[m.below(OPS.len())]
            };
            let nodeid = [1, 2, 3, 4, m.next_u64()][m.below(5)];
            header.in_out[4..8].copy_from_slice(&opcode.to_ne_bytes());
            header.in_out[8..16].copy_from_slice(&(n as u64).to_ne_bytes());
            header.in_out[16..24].copy_from_slice(&nodeid.to_ne_bytes());
            for field in header.op_in.chunks_mut(4) {
                let v: u32 = match m.below(4) {
                    0 => 0,
                    1 => m.below(5000) as u32,
                    2 => [0o644, 0o755, libc::O_RDWR as u32, 1, 3][m.below(5)],
                    _ => m.next_u64() as u32,
                };
                field.copy_from_slice(&v.to_ne_bytes());
            }
            let payload = m.input(&names);
            let declared = match m.below(3) {
                0 => payload.len() as u32,
                1 => m.next_u64() as u32,
                _ => m.below(payload.len() + 2) as u32,
            };
            header.ent[16..20].copy_from_slice(&declared.to_ne_bytes());
            let mut buffer = vec![0u8; 64 << 10];
            let start = buffer.len().min(payload.len());
            buffer[..start].copy_from_slice(&payload[..start]);
            let mut entry = Entry {
                header,
                payload: buffer,
                iov: Box::new(
                    [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; 2],
                ),
            };
            answer_request(&mut entry, &handlers, &mut out);
            let total = ne_u32(&entry.header.in_out, 0).expect("reply length");
            let body = ne_u32(&entry.header.ent, 16).expect("body length") as usize;
            assert!(
                body <= entry.payload.len(),
                "request {n}: body {body} beyond the entry"
            );
            assert_eq!(total as usize, OUT_HEADER_SIZE + body, "request {n}");
        }
        drop(handlers);
        fs.close().expect("close");
    }
}
