//! The private copy of the metadata store a read-only check (`-n`) opens, so it works on a
//! mounted filesystem and changes nothing. The copy never follows a link and is removed when
//! dropped.

use crate::confined::{Access, Confined, Kind};
use crate::{Error, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes copied per read (and per progress count).
const COPY_CHUNK: usize = 1 << 20;

/// A private copy of the metadata store, removed when dropped.
pub(super) struct Snapshot {
    pub(super) path: PathBuf,
}

impl Snapshot {
    /// Copies `src`; `progress(done, total)` gets the bytes copied so far (first with 0) of
    /// those the files held when the copy started (a live store may grow meanwhile).
    pub(super) fn copy_of(src: &Confined, progress: &mut dyn FnMut(u64, u64)) -> Result<Snapshot> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("fsck-digimed-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        let snap = Snapshot { path };
        let total = tree_bytes(src)?;
        progress(0, total);
        let mut done = 0;
        copy_dir(src, &snap.path, &mut |n| {
            done += n;
            progress(done, total);
        })?;
        Ok(snap)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Bytes of the regular files beneath `src` (links and special files are not counted; the
/// copy refuses them).
fn tree_bytes(src: &Confined) -> Result<u64> {
    let mut total = 0u64;
    for ent in src.list()? {
        let name = ent.name.to_str().unwrap_or_default();
        match ent.kind {
            Kind::Dir => total = total.saturating_add(tree_bytes(&src.open_dir(name)?)?),
            Kind::File => {
                let len = src.status(name)?.map_or(0, |s| s.len);
                total = total.saturating_add(len);
            }
            Kind::Symlink | Kind::Other => {}
        }
    }
    Ok(total)
}

/// Copies the regular files and directories of `src` into `dst`, telling `copied` every
/// chunk's bytes; a link or special file in the store is refused (it is never followed).
fn copy_dir(src: &Confined, dst: &Path, copied: &mut dyn FnMut(u64)) -> Result<()> {
    for ent in src.list()? {
        let to = dst.join(&ent.name);
        let name = ent.name.to_str().unwrap_or_default();
        match ent.kind {
            Kind::Dir => {
                std::fs::create_dir(&to).map_err(|e| Error::io(&to, e))?;
                copy_dir(&src.open_dir(name)?, &to, copied)?;
            }
            Kind::File => {
                // A live store may remove a file while we copy.
                let Some(mut from) = src.try_open_file(name, Access::Read)? else {
                    continue;
                };
                let mut out = std::fs::File::create(&to).map_err(|e| Error::io(&to, e))?;
                let mut buf = vec![0u8; COPY_CHUNK];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Error::io(src.display(name), e)),
                    };
                    out.write_all(buf.get(..n).unwrap_or_default())
                        .map_err(|e| Error::io(&to, e))?;
                    copied(n as u64);
                }
            }
            Kind::Symlink | Kind::Other => {
                return Err(Error::integrity(format!(
                    "{}: not a regular file or directory; refused (a sled store holds none)",
                    src.display(name).display()
                )))
            }
        }
    }
    Ok(())
}
