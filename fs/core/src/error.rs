//! The one error type of the `digimedfs` library.
//!
//! Rules: every error names what failed (inode, object, path in the backing directory, record
//! key), maps to exactly one errno through [`Error::errno`], and nothing read from disk, the
//! network or the user may panic: it becomes one of these variants instead.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in digimedfs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A plain POSIX error from a filesystem operation (ENOENT, EEXIST, ENOTEMPTY, ...).
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Posix {
        /// The operation and its subject, e.g. `unlink inode 12 "a.txt"`.
        op: String,
        /// The errno to report.
        errno: i32,
    },
    /// An I/O error on the backing directory.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The backing path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Stored data or metadata failed its integrity check: tampering or corruption.
    #[error("integrity check failed: {what}")]
    Integrity {
        /// What failed, e.g. `inode 12 block 3 (object 9f..)`.
        what: String,
    },
    /// The key supplied does not open this filesystem.
    #[error("wrong key: {what}")]
    WrongKey {
        /// Which key was tried, e.g. the key file path.
        what: String,
    },
    /// The superblock or a record is malformed, or of a version this build does not know.
    #[error("bad format: {what}")]
    Format {
        /// What is malformed.
        what: String,
    },
    /// The metadata store engine failed.
    #[error("metadata store error ({what}): {source}")]
    Meta {
        /// What was being done.
        what: String,
        /// The engine's own error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The filesystem is in use by another mount or process.
    #[error("filesystem busy: {what}")]
    Busy {
        /// Who holds it.
        what: String,
    },
    /// Invalid argument supplied by the user or caller (bad block size, bad option, ...).
    #[error("invalid argument: {what}")]
    Invalid {
        /// What is wrong.
        what: String,
    },
}

impl Error {
    /// A POSIX error with context.
    pub fn posix(errno: i32, op: impl Into<String>) -> Self {
        Error::Posix {
            op: op.into(),
            errno,
        }
    }

    /// An I/O error with the backing path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An integrity failure with context.
    pub fn integrity(what: impl Into<String>) -> Self {
        Error::Integrity { what: what.into() }
    }

    /// A format error with context.
    pub fn format(what: impl Into<String>) -> Self {
        Error::Format { what: what.into() }
    }

    /// A metadata store error with context.
    pub fn meta(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Meta {
            what: what.into(),
            source: source.into(),
        }
    }

    /// An invalid argument.
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::Invalid { what: what.into() }
    }

    /// The errno this error is reported as through FUSE.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Posix { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Integrity { .. } | Error::Format { .. } | Error::Meta { .. } => libc::EIO,
            Error::WrongKey { .. } => libc::EACCES,
            Error::Busy { .. } => libc::EBUSY,
            Error::Invalid { .. } => libc::EINVAL,
        }
    }
}

/// An error and its causes, `: `-separated like anyhow's `{:#}`, without repeating a cause the
/// text before it already ends with (library errors include their source's text). The binaries
/// print their errors with it.
pub fn render_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
