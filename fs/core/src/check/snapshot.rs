//! The private copy of the metadata store a read-only check (`-n`) opens, so it works on a
//! mounted filesystem and changes nothing. The copy never follows a link and is removed when
//! dropped.

use crate::confined::{Access, Confined, Kind};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A private copy of the metadata store, removed when dropped.
pub(super) struct Snapshot {
    pub(super) path: PathBuf,
}

impl Snapshot {
    pub(super) fn copy_of(src: &Confined) -> Result<Snapshot> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("fsck-digimed-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        let snap = Snapshot { path };
        copy_dir(src, &snap.path)?;
        Ok(snap)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Copies the regular files and directories of `src` into `dst`; a link or special file in
/// the store is refused (it is never followed).
fn copy_dir(src: &Confined, dst: &Path) -> Result<()> {
    for ent in src.list()? {
        let to = dst.join(&ent.name);
        let name = ent.name.to_str().unwrap_or_default();
        match ent.kind {
            Kind::Dir => {
                std::fs::create_dir(&to).map_err(|e| Error::io(&to, e))?;
                copy_dir(&src.open_dir(name)?, &to)?;
            }
            Kind::File => {
                // A live store may remove a file while we copy.
                let Some(mut from) = src.try_open_file(name, Access::Read)? else {
                    continue;
                };
                let mut out = std::fs::File::create(&to).map_err(|e| Error::io(&to, e))?;
                std::io::copy(&mut from, &mut out).map_err(|e| Error::io(src.display(name), e))?;
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
