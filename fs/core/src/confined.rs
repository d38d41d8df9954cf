//! Confined access to a directory on untrusted storage.
//!
//! Storage is the adversary (docs/threat-model.md): it can rename, replace and symlink anything
//! in a backing directory, while the mount runs as root on the VM. A path opened by name would
//! follow a planted `lock -> /etc/digimedfs/proj.key` and read or overwrite the VM's files.
//! [`Confined`] holds a descriptor of one directory, opened once, and resolves every path
//! relative to it so that nothing leaves it and no symbolic link is followed:
//!
//! - opens go through `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS` (on kernels without it, each component is opened with `O_NOFOLLOW`
//!   relative to its parent's descriptor);
//! - what was opened is checked on the descriptor (`fstat`): a file must be a regular file, a
//!   directory a directory. Read-only opens use `O_NONBLOCK` (a read-write open of a FIFO never
//!   blocks), so a FIFO planted in place of a file cannot block the open, and is then refused;
//! - rename, unlink, link and mkdir run on the parent's descriptor with a single name, which
//!   the kernel never follows;
//! - relative paths are made of plain names: empty components, `.` and `..` are refused.
//!
//! A symbolic link, a special file or an escape attempt is reported as an integrity error
//! (EIO) naming the path; nothing read from what it points to is ever used.

use crate::{Error, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Mode of files created in a backing directory (the data is ciphertext; storage decides who
/// reads it).
const FILE_MODE: u32 = 0o600;
/// Mode of directories created in a backing directory.
const DIR_MODE: u32 = 0o700;

/// A directory whose contents are reached only beneath it and never through symbolic links.
#[derive(Clone, Debug)]
pub struct Confined {
    fd: Arc<OwnedFd>,
    /// The path the directory was reached by (for messages only).
    path: PathBuf,
}

/// What kind of entry a name is (never following it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (FIFO, socket, device).
    Other,
}

impl Kind {
    fn of(t: FileType) -> Kind {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry's name.
    pub name: OsString,
    /// Its kind, as the directory reports it (not followed).
    pub kind: Kind,
}

/// What an entry is, without following it.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Its kind.
    pub kind: Kind,
    /// Its length in bytes.
    pub len: u64,
    /// Its number of hard links.
    pub nlink: u64,
    /// Its inode number on the backing filesystem.
    pub ino: u64,
    /// Its modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only; it must exist.
    Read,
    /// Read and write; it must exist.
    ReadWrite,
    /// Read and write, created if missing, contents kept.
    Create,
    /// Read and write, created if missing, truncated.
    CreateTruncate,
    /// Read and write, created; it must not exist yet.
    CreateNew,
}

impl Access {
    fn flags(self) -> OFlags {
        match self {
            Access::Read => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
            Access::Create => OFlags::RDWR | OFlags::CREATE,
            Access::CreateTruncate => OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC,
            Access::CreateNew => OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        }
    }
}

/// Splits a relative path into its names, refusing anything but plain names.
fn components(rel: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(Error::invalid(format!(
            "internal: {rel:?} is not a plain relative path"
        )));
    }
    Ok(parts)
}

fn io_err(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

impl Confined {
    /// Opens the directory at `path`. The path itself is the administrator's (a mount
    /// argument, an fstab line) and is resolved as given; everything beneath it is confined.
    pub fn open(path: &Path) -> Result<Confined> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, io_err(e)))?;
        Ok(Confined {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was reached by (messages only: never reopen by it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` beneath this directory, for messages.
    pub fn display(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// A path that names this very directory through the process's descriptor table, for
    /// libraries that only take paths: it cannot be redirected by renaming or replacing the
    /// directory on storage (names beneath it still can; see [`Confined::check_plain_tree`]).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The directory's descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The error for an entry that is not what it must be.
    fn refused(&self, rel: &str, what: &str) -> Error {
        Error::integrity(format!(
            "{}: {what}; refused (storage may only hold regular files and directories here; \
             see docs/threat-model.md)",
            self.display(rel).display()
        ))
    }

    /// Maps a resolution error: a symbolic link or an escape is an integrity error, anything
    /// else an I/O error on the path.
    fn resolve_err(&self, rel: &str, e: Errno) -> Error {
        match e {
            Errno::LOOP => self.refused(rel, "a symbolic link"),
            Errno::XDEV => self.refused(rel, "leads outside the backing directory"),
            _ => Error::io(self.display(rel), io_err(e)),
        }
    }

    /// Opens `rel` with `flags` beneath this directory without following any link.
    fn open_at(&self, rel: &str, flags: OFlags, mode: Mode) -> std::result::Result<OwnedFd, Errno> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        // openat2(2) refuses a mode without O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) {
            mode
        } else {
            Mode::empty()
        };
        match rustix::fs::openat2(
            self.fd.as_fd(),
            rel,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::NOSYS) => self.open_walk(rel, flags, mode),
            Err(Errno::AGAIN) => {
                // openat2 may ask for a retry when a rename raced the lookup.
                rustix::fs::openat2(
                    self.fd.as_fd(),
                    rel,
                    flags,
                    mode,
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                )
            }
            other => other,
        }
    }

    /// Component-by-component resolution for kernels without openat2(2).
    fn open_walk(
        &self,
        rel: &str,
        flags: OFlags,
        mode: Mode,
    ) -> std::result::Result<OwnedFd, Errno> {
        let parts: Vec<&str> = rel.split('/').collect();
        let Some((last, dirs)) = parts.split_last() else {
            return Err(Errno::INVAL);
        };
        let mut cur: Option<OwnedFd> = None;
        for name in dirs {
            let at = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let next = rustix::fs::openat(
                at,
                *name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            cur = Some(next);
        }
        let at = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
        rustix::fs::openat(at, *last, flags, mode)
    }

    /// Opens the regular file `rel`; `Ok(None)` if it does not exist (and `access` does not
    /// create it).
    pub fn try_open_file(&self, rel: &str, access: Access) -> Result<Option<File>> {
        components(rel)?;
        // An O_RDONLY open of a FIFO would block until a writer comes; O_RDWR never does.
        let nonblock = access == Access::Read;
        let flags = if nonblock {
            access.flags() | OFlags::NONBLOCK
        } else {
            access.flags()
        };
        let fd = match self.open_at(rel, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.resolve_err(rel, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(self.display(rel), io_err(e)))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.refused(rel, "not a regular file"));
        }
        if nonblock {
            // O_NONBLOCK was only there to keep a FIFO from blocking the open.
            let fl = rustix::fs::fcntl_getfl(&fd)
                .map_err(|e| Error::io(self.display(rel), io_err(e)))?;
            rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)
                .map_err(|e| Error::io(self.display(rel), io_err(e)))?;
        }
        Ok(Some(File::from(fd)))
    }

    /// Opens the regular file `rel` (ENOENT as an I/O error if it does not exist).
    pub fn open_file(&self, rel: &str, access: Access) -> Result<File> {
        self.try_open_file(rel, access)?.ok_or_else(|| {
            Error::io(
                self.display(rel),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            )
        })
    }

    /// Opens the directory `rel` as a confined directory of its own; `Ok(None)` if missing.
    pub fn try_open_dir(&self, rel: &str) -> Result<Option<Confined>> {
        components(rel)?;
        let fd = match self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::NOTDIR) => return Err(self.refused(rel, "not a directory")),
            Err(e) => return Err(self.resolve_err(rel, e)),
        };
        Ok(Some(Confined {
            fd: Arc::new(fd),
            path: self.display(rel),
        }))
    }

    /// Opens the directory `rel` (ENOENT as an I/O error if it does not exist).
    pub fn open_dir(&self, rel: &str) -> Result<Confined> {
        self.try_open_dir(rel)?.ok_or_else(|| {
            Error::io(
                self.display(rel),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            )
        })
    }

    /// The directory holding `rel` and `rel`'s last name.
    fn parent<'a>(&self, rel: &'a str) -> Result<(Confined, &'a str)> {
        let parts = components(rel)?;
        match rel.rsplit_once('/') {
            None => Ok((self.clone(), rel)),
            Some((dir, name)) => {
                debug_assert!(parts.len() > 1);
                Ok((self.open_dir(dir)?, name))
            }
        }
    }

    /// [`Confined::parent`], or None when the directory holding `rel` does not exist.
    fn parent_if_present<'a>(&self, rel: &'a str) -> Result<Option<(Confined, &'a str)>> {
        match self.parent(rel) {
            Ok(p) => Ok(Some(p)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the directory `rel` and any missing parents (existing directories are fine; a
    /// non-directory in the way is refused).
    pub fn create_dir_all(&self, rel: &str) -> Result<()> {
        let parts = components(rel)?;
        let mut cur = self.clone();
        let mut done = String::new();
        for name in parts {
            if !done.is_empty() {
                done.push('/');
            }
            done.push_str(name);
            match rustix::fs::mkdirat(cur.fd.as_fd(), name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::io(self.display(&done), io_err(e))),
            }
            let next = cur.open_dir(name).map_err(|e| match e {
                Error::Integrity { .. } => self.refused(&done, "not a plain directory"),
                other => other,
            })?;
            cur = next;
        }
        Ok(())
    }

    /// Creates the directory `rel`; it must not exist (EEXIST otherwise).
    pub fn create_dir(&self, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::mkdirat(dir.fd.as_fd(), name, Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| Error::io(self.display(rel), io_err(e)))
    }

    /// Renames `from` to `to` (both beneath this directory). The names themselves are never
    /// followed: a symbolic link is renamed as the link it is.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        rustix::fs::renameat(fdir.fd.as_fd(), fname, tdir.fd.as_fd(), tname)
            .map_err(|e| Error::io(self.display(to), io_err(e)))
    }

    /// Removes the file (or symbolic link, or special file) `rel`; `Ok(false)` if absent.
    pub fn remove_file(&self, rel: &str) -> Result<bool> {
        let Some((dir, name)) = self.parent_if_present(rel)? else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(dir.fd.as_fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io(self.display(rel), io_err(e))),
        }
    }

    /// Removes the empty directory `rel`; `Ok(false)` if absent.
    pub fn remove_dir(&self, rel: &str) -> Result<bool> {
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::unlinkat(dir.fd.as_fd(), name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io(self.display(rel), io_err(e))),
        }
    }

    /// Removes `rel` and everything beneath it, never following a link (a link is removed as
    /// the link it is); `Ok(false)` if it did not exist.
    pub fn remove_tree(&self, rel: &str) -> Result<bool> {
        let Some((parent, name)) = self.parent_if_present(rel)? else {
            return Ok(false);
        };
        parent.remove_tree_at(name, &self.display(rel))
    }

    fn remove_tree_at(&self, name: &str, shown: &Path) -> Result<bool> {
        let st = match rustix::fs::statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(Error::io(shown, io_err(e))),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = self.open_dir(name)?;
            for ent in sub.list()? {
                let Some(child) = ent.name.to_str() else {
                    // Not a name we write; remove it by its bytes.
                    let bytes = ent.name.clone().into_vec();
                    match rustix::fs::unlinkat(sub.fd.as_fd(), bytes.as_slice(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(Errno::ISDIR) => {
                            return Err(Error::io(
                                shown,
                                std::io::Error::other("a directory with a non-UTF-8 name"),
                            ))
                        }
                        Err(e) => return Err(Error::io(shown, io_err(e))),
                    }
                    continue;
                };
                sub.remove_tree_at(child, &shown.join(child))?;
            }
            match rustix::fs::unlinkat(self.fd.as_fd(), name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(true),
                Err(e) => Err(Error::io(shown, io_err(e))),
            }
        } else {
            match rustix::fs::unlinkat(self.fd.as_fd(), name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(true),
                Err(e) => Err(Error::io(shown, io_err(e))),
            }
        }
    }

    /// Makes `dst` a hard link to the regular file `src` (never following a link).
    pub fn hard_link(&self, src: &str, dst: &str) -> Result<()> {
        let (sdir, sname) = self.parent(src)?;
        let st = rustix::fs::statat(sdir.fd.as_fd(), sname, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(self.display(src), io_err(e)))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.refused(src, "not a regular file"));
        }
        let (ddir, dname) = self.parent(dst)?;
        rustix::fs::linkat(
            sdir.fd.as_fd(),
            sname,
            ddir.fd.as_fd(),
            dname,
            AtFlags::empty(),
        )
        .map_err(|e| Error::io(self.display(dst), io_err(e)))
    }

    /// What `rel` is, without following it; `Ok(None)` if absent.
    pub fn status(&self, rel: &str) -> Result<Option<Status>> {
        let Some((dir, name)) = self.parent_if_present(rel)? else {
            return Ok(None);
        };
        match rustix::fs::statat(dir.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Status {
                kind: Kind::of(FileType::from_raw_mode(st.st_mode)),
                len: u64::try_from(st.st_size).unwrap_or(0),
                nlink: st.st_nlink,
                ino: st.st_ino,
                mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io(self.display(rel), io_err(e))),
        }
    }

    /// The entries of this directory (without `.` and `..`), kinds as reported, not followed.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let dir = rustix::fs::Dir::read_from(self.fd.as_fd())
            .map_err(|e| Error::io(&self.path, io_err(e)))?;
        let mut out = Vec::new();
        for ent in dir {
            let ent = ent.map_err(|e| Error::io(&self.path, io_err(e)))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut kind = Kind::of(ent.file_type());
            if ent.file_type() == FileType::Unknown {
                kind = match rustix::fs::statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => Kind::of(FileType::from_raw_mode(st.st_mode)),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(Error::io(&self.path, io_err(e))),
                };
            }
            out.push(Entry {
                name: OsString::from_vec(name.to_vec()),
                kind,
            });
        }
        Ok(out)
    }

    /// The entries of the directory `rel`; `Ok(None)` if it does not exist.
    pub fn list_dir(&self, rel: &str) -> Result<Option<Vec<Entry>>> {
        match self.try_open_dir(rel)? {
            Some(d) => d.list().map(Some),
            None => Ok(None),
        }
    }

    /// Refuses a tree that holds anything but regular files and directories (walks it
    /// without following links).
    pub fn check_plain_tree(&self) -> Result<()> {
        for ent in self.list()? {
            let shown = ent.name.to_string_lossy().into_owned();
            match ent.kind {
                Kind::File => {}
                Kind::Dir => match ent.name.to_str() {
                    Some(name) => self.open_dir(name)?.check_plain_tree()?,
                    None => return Err(self.refused(&shown, "a directory with a non-UTF-8 name")),
                },
                Kind::Symlink => return Err(self.refused(&shown, "a symbolic link")),
                Kind::Other => return Err(self.refused(&shown, "a special file")),
            }
        }
        Ok(())
    }

    /// fsyncs this directory.
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(self.fd.as_fd()).map_err(|e| Error::io(&self.path, io_err(e)))
    }

    /// Reads the regular file `rel` up to `max` bytes; `Ok(None)` if it does not exist.
    pub fn read_small(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let Some(f) = self.try_open_file(rel, Access::Read)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        f.take(max)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(self.display(rel), e))?;
        Ok(Some(bytes))
    }

    /// Replaces the file `rel` with `bytes` atomically: a fresh temporary file (created, never
    /// reused) written and fsynced, renamed over `rel`, and the directory fsynced.
    pub fn write_atomically(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let tmp = format!("{rel}.tmp{}", std::process::id());
        // A leftover of a crashed writer (or something storage put there) is not reused.
        self.remove_file(&tmp)?;
        let mut f = self.open_file(&tmp, Access::CreateNew)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(self.display(&tmp), e))?;
        self.rename(&tmp, rel)?;
        let (dir, _) = self.parent(rel)?;
        dir.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fixture() -> (tempfile::TempDir, tempfile::TempDir, Confined) {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Confined::open(dir.path()).expect("open");
        (outside, dir, c)
    }

    #[test]
    fn a_symlink_is_never_followed_for_reading_or_writing() {
        let (outside, dir, c) = fixture();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"key material").expect("write");
        symlink(&secret, dir.path().join("lock")).expect("symlink");
        for access in [
            Access::Read,
            Access::ReadWrite,
            Access::Create,
            Access::CreateTruncate,
        ] {
            let err = c.open_file("lock", access).expect_err("followed a symlink");
            assert_eq!(err.errno(), libc::EIO, "{err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        assert!(c.read_small("lock", 100).is_err());
        assert_eq!(std::fs::read(&secret).expect("read"), b"key material");
    }

    #[test]
    fn a_symlinked_directory_is_never_entered() {
        let (outside, dir, c) = fixture();
        symlink(outside.path(), dir.path().join("objects")).expect("symlink");
        assert!(c.open_file("objects/x", Access::Create).is_err());
        assert!(c.create_dir_all("objects/ab").is_err());
        assert!(c.open_dir("objects").is_err());
        assert!(c.write_atomically("objects/r", b"x").is_err());
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("ls").count(),
            0,
            "something was created outside"
        );
        // Removing the tree removes the link, not what it points to.
        std::fs::write(outside.path().join("keep"), b"k").expect("write");
        assert!(c.remove_tree("objects").expect("remove"));
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let (_o, dir, c) = fixture();
        let fifo = dir.path().join("superblock");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        for access in [Access::Read, Access::ReadWrite, Access::Create] {
            let err = c.open_file("superblock", access).expect_err("fifo");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        assert!(c.check_plain_tree().is_err());
    }

    #[test]
    fn write_atomically_replaces_a_planted_link_instead_of_writing_through_it() {
        let (outside, dir, c) = fixture();
        let target = outside.path().join("victim");
        std::fs::write(&target, b"precious").expect("write");
        symlink(&target, dir.path().join("reply")).expect("symlink");
        symlink(
            &target,
            dir.path().join(format!("reply.tmp{}", std::process::id())),
        )
        .expect("symlink");
        c.write_atomically("reply", b"answer").expect("write");
        assert_eq!(std::fs::read(&target).expect("read"), b"precious");
        assert_eq!(
            std::fs::read(dir.path().join("reply")).expect("read"),
            b"answer"
        );
        assert!(!std::fs::symlink_metadata(dir.path().join("reply"))
            .expect("stat")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn plain_names_only() {
        let (_o, _d, c) = fixture();
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a"] {
            assert!(c.open_file(bad, Access::Read).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hard_links_and_renames_stay_inside() {
        let (outside, dir, c) = fixture();
        c.create_dir_all("objects/ab").expect("mkdir");
        std::fs::write(dir.path().join("objects/ab/o"), b"obj").expect("write");
        c.hard_link("objects/ab/o", "objects/ab/p").expect("link");
        assert_eq!(
            c.status("objects/ab/o").expect("st").map(|s| s.nlink),
            Some(2)
        );
        symlink(outside.path().join("f"), dir.path().join("s")).expect("symlink");
        assert!(c.hard_link("s", "t").is_err(), "linked a symlink");
        c.rename("objects/ab/p", "objects/ab/q").expect("rename");
        assert_eq!(
            std::fs::read(dir.path().join("objects/ab/q")).expect("read"),
            b"obj"
        );
    }
}
