//! The local key file (key slot kind 1): one line, `digimedfs-key-v1 ` and 64 hex digits.

use super::KeySource;
use crate::crypto::WrappingKey;
use crate::Result;
use std::path::Path;

/// The first bytes of every key file, before the 64 hex digits of the key.
const KEY_FILE_MAGIC: &[u8] = b"digimedfs-key-v1 ";
/// Number of hex digits of the key in a key file.
const KEY_HEX_LEN: usize = 2 * crate::crypto::WRAPPING_KEY_LEN;
/// Exact length of a key file: magic, hex digits, newline.
const KEY_FILE_LEN: usize = KEY_FILE_MAGIC.len() + KEY_HEX_LEN + 1;

/// A wrapping key read from a local key file (key slot kind 1).
///
/// The file holds exactly one line: `digimedfs-key-v1 ` followed by 64 hex digits (the 32-byte
/// key) and a newline. [`KeyFile::create_new`] writes such a file with mode 0600.
pub struct KeyFile {
    path: std::path::PathBuf,
    key: WrappingKey,
}

impl KeyFile {
    /// Reads the key file at `path`.
    ///
    /// Anything but the exact key file format is rejected with [`crate::Error::Invalid`], and so
    /// is a file writable by group or others (it could be replaced); one only readable by them
    /// is accepted but logged as a warning.
    pub fn open(path: &std::path::Path) -> Result<KeyFile> {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        use zeroize::Zeroizing;

        let file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| crate::Error::io(path, e))?;
        if !meta.is_file() {
            return Err(crate::Error::invalid(format!(
                "key file {} is not a regular file",
                path.display()
            )));
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(crate::Error::invalid(format!(
                "key file {} is writable by group or others (mode {:04o}): whoever can write it \
                 can replace the key; run `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            )));
        }
        if let Some(warning) = loose_mode_warning("key file", path, mode) {
            tracing::warn!("{warning}");
        }

        // The capacity exceeds the bytes `take` lets through, so the buffer never reallocates
        // and leaves no unzeroized copy of the key behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN + 64));
        file.take(KEY_FILE_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| crate::Error::io(path, e))?;

        let bad = || {
            crate::Error::invalid(format!(
                "{} is not a digimedfs key file (expected one line: \"digimedfs-key-v1 \" \
                 followed by {KEY_HEX_LEN} hex digits)",
                path.display()
            ))
        };
        let rest = buf.strip_prefix(KEY_FILE_MAGIC).ok_or_else(bad)?;
        let hex_digits = rest.strip_suffix(b"\n").ok_or_else(bad)?;
        if hex_digits.len() != KEY_HEX_LEN {
            return Err(bad());
        }
        let mut raw = Zeroizing::new([0u8; crate::crypto::WRAPPING_KEY_LEN]);
        hex::decode_to_slice(hex_digits, raw.as_mut_slice()).map_err(|_| bad())?;
        let key = WrappingKey::from_bytes(raw.as_slice())?;
        Ok(KeyFile {
            path: path.to_path_buf(),
            key,
        })
    }

    /// Writes a new random key to a new file at `path` with mode 0600 and makes it durable.
    ///
    /// Refuses to overwrite an existing file (`EEXIST`). On a write error the partial file is
    /// removed.
    pub fn create_new(path: &std::path::Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        use zeroize::Zeroizing;

        let key = WrappingKey::generate();
        let mut line = Zeroizing::new(vec![0u8; KEY_FILE_LEN]);
        let (magic, tail) = line.split_at_mut(KEY_FILE_MAGIC.len());
        magic.copy_from_slice(KEY_FILE_MAGIC);
        let (hex_part, newline) = tail.split_at_mut(KEY_HEX_LEN);
        hex::encode_to_slice(key.expose(), hex_part)
            .map_err(|e| crate::Error::invalid(format!("encoding key: {e}")))?;
        newline.copy_from_slice(b"\n");

        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    crate::Error::posix(
                        libc::EEXIST,
                        format!("create key file {} (refusing to overwrite)", path.display()),
                    )
                } else {
                    crate::Error::io(path, e)
                }
            })?;
        let written = file.write_all(&line).and_then(|()| file.sync_all());
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(crate::Error::io(path, e));
        }
        drop(file);
        // Make the new directory entry durable too (best effort: some filesystems refuse to
        // fsync directories).
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// The path the key was read from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl KeySource for KeyFile {
    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }

    fn kind(&self) -> u8 {
        1
    }

    fn wrapping_key(&self, _fs_uuid: &[u8; 16]) -> Result<WrappingKey> {
        WrappingKey::from_bytes(self.key.expose())
    }
}

/// The warning for a secret file (`what`: "key file", "token file") that group or others may
/// read, given its `mode`; `None` when only the owner can. Commands print it where their user
/// sees it (the terminal), the mount's daemon logs it.
pub fn loose_mode_warning(what: &str, path: &Path, mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is readable by group or others (mode {:04o}): whoever can read it can \
             read the filesystem; run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

/// [`loose_mode_warning`] for the file at `path` (nothing if it cannot be read).
pub fn loose_file_warning(what: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    loose_mode_warning(what, path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_then_open_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        KeyFile::create_new(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_FILE_LEN as u64);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("digimedfs-key-v1 "));
        assert!(text.ends_with('\n'));

        let kf = KeyFile::open(&path).unwrap();
        assert_eq!(kf.kind(), 1);
        assert!(kf.describe().contains(path.to_str().unwrap()));
        let hex_digits = &text[KEY_FILE_MAGIC.len()..KEY_FILE_LEN - 1];
        let expected = hex::decode(hex_digits).unwrap();
        let k = kf.wrapping_key(&[0u8; 16]).unwrap();
        assert_eq!(k.expose().as_slice(), expected.as_slice());
    }

    #[test]
    fn two_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        KeyFile::create_new(&a).unwrap();
        KeyFile::create_new(&b).unwrap();
        let ka = KeyFile::open(&a).unwrap().wrapping_key(&[0; 16]).unwrap();
        let kb = KeyFile::open(&b).unwrap().wrapping_key(&[0; 16]).unwrap();
        assert_ne!(ka.expose(), kb.expose());
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, b"precious").unwrap();
        let err = KeyFile::create_new(&path).unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn open_accepts_uppercase_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let line = format!("digimedfs-key-v1 {}\n", "AB".repeat(32));
        std::fs::write(&path, line).unwrap();
        let k = KeyFile::open(&path)
            .unwrap()
            .wrapping_key(&[0; 16])
            .unwrap();
        assert_eq!(k.expose(), &[0xab; 32]);
    }

    #[test]
    fn open_rejects_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let good_hex = "0f".repeat(32);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            (
                "no newline",
                format!("digimedfs-key-v1 {good_hex}").into_bytes(),
            ),
            (
                "bad magic",
                format!("digimedfs-key-v2 {good_hex}\n").into_bytes(),
            ),
            (
                "short",
                format!("digimedfs-key-v1 {}\n", &good_hex[2..]).into_bytes(),
            ),
            (
                "long",
                format!("digimedfs-key-v1 {good_hex}00\n").into_bytes(),
            ),
            (
                "not hex",
                format!("digimedfs-key-v1 {}zz\n", &good_hex[2..]).into_bytes(),
            ),
            (
                "crlf",
                format!("digimedfs-key-v1 {good_hex}\r\n").into_bytes(),
            ),
            (
                "trailing line",
                format!("digimedfs-key-v1 {good_hex}\nmore\n").into_bytes(),
            ),
            ("raw bytes", vec![0u8; 32]),
        ];
        for (name, content) in cases {
            let path = dir.path().join(name.replace(' ', "_"));
            std::fs::write(&path, &content).unwrap();
            match KeyFile::open(&path) {
                Err(crate::Error::Invalid { what }) => {
                    assert!(what.contains(path.to_str().unwrap()), "{name}: {what}")
                }
                Err(e) => panic!("{name}: unexpected error {e}"),
                Ok(_) => panic!("{name}: accepted"),
            }
        }
    }

    #[test]
    fn open_refuses_a_key_file_others_can_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        KeyFile::create_new(&path).unwrap();
        for mode in [0o620, 0o602, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = KeyFile::open(&path)
                .err()
                .expect("writable key file accepted");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        KeyFile::open(&path).expect("a readable key file is only warned about");
    }

    #[test]
    fn open_missing_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyFile::open(&dir.path().join("nope")).err().unwrap();
        assert_eq!(err.errno(), libc::ENOENT);
    }

    #[test]
    fn open_rejects_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            KeyFile::open(dir.path()),
            Err(crate::Error::Invalid { .. } | crate::Error::Io { .. })
        ));
    }
}
