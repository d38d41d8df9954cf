//! The one error type of the key service (server and admin side).
//!
//! The client's errors (service unreachable, TLS failure, bad credential, revoked tenant, wrong
//! tenant, unknown key version, rollback) are `digimedfs_keyclient::ServiceError`,
//! re-exported as [`crate::client::ServiceError`].

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the key service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file of the state directory.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A state file (sealed root, registry, audit log, certificate) is malformed.
    #[error("bad state file {}: {what}", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The passphrase or credential file does not unseal the root secret.
    #[error("the passphrase or credential does not unseal {}", path.display())]
    WrongCredential {
        /// The sealed root file.
        path: PathBuf,
    },
    /// Invalid argument or configuration.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// TLS configuration error (certificates, keys).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// A cryptographic operation failed (derivation length, certificate generation).
    #[error("crypto: {0}")]
    Crypto(String),
    /// The audit log cannot be written or does not verify.
    #[error("audit log: {0}")]
    Audit(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed state file.
    pub fn bad_state(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::BadState {
            path: path.into(),
            what: what.into(),
        }
    }
}

impl From<Error> for digimedfs_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { path, source } => digimedfs_core::Error::io(path, source),
            Error::WrongCredential { .. } => digimedfs_core::Error::WrongKey {
                what: e.to_string(),
            },
            Error::BadState { .. } | Error::Audit(_) | Error::Crypto(_) => {
                digimedfs_core::Error::format(e.to_string())
            }
            Error::Invalid(_) | Error::TlsConfig(_) => {
                digimedfs_core::Error::invalid(e.to_string())
            }
        }
    }
}
