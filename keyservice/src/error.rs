//! The one error type of the key service crate.
//!
//! Client-side variants map one to one onto the failures a caller must tell apart (service
//! unreachable, TLS failure, bad credential, revoked tenant, wrong tenant, unknown key version);
//! [`From<Error> for digimedfs::Error`] carries them into the filesystem's error type with text
//! that says what to do.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the key service and its client.
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
    /// The key service cannot be reached (connect failed, timed out, connection closed).
    #[error("key service {url} unreachable: {what}")]
    Unreachable {
        /// The service URL.
        url: String,
        /// What failed.
        what: String,
    },
    /// The TLS handshake with the key service failed (certificate not trusted, name mismatch).
    #[error("TLS handshake with key service {url} failed: {what}")]
    Tls {
        /// The service URL.
        url: String,
        /// What failed.
        what: String,
    },
    /// The key service rejected the token (HTTP 401).
    #[error("key service rejected the credential for tenant {tenant:?}: {what}")]
    BadCredential {
        /// The tenant the client is configured for.
        tenant: String,
        /// The service's reason.
        what: String,
    },
    /// The tenant or the token is revoked (HTTP 403).
    #[error("tenant {tenant:?} or its token is revoked at the key service: {what}")]
    Revoked {
        /// The tenant.
        tenant: String,
        /// The service's reason.
        what: String,
    },
    /// The wrapped key does not belong to this tenant or this filesystem.
    #[error("wrong tenant for this filesystem: {what}")]
    WrongTenant {
        /// Details.
        what: String,
    },
    /// The key version named by the slot is unknown to the service (HTTP 404).
    #[error("key version {version} unknown to the key service for tenant {tenant:?}")]
    UnknownKeyVersion {
        /// The tenant.
        tenant: String,
        /// The version.
        version: u32,
    },
    /// Too many failed requests from this address (HTTP 429).
    #[error("key service rate limit: {0}")]
    RateLimited(String),
    /// Any other refusal or malformed answer of the service.
    #[error("key service {url} answered {status}: {what}")]
    Service {
        /// The service URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The service's reason.
        what: String,
    },
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

impl From<Error> for digimedfs::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { path, source } => digimedfs::Error::io(path, source),
            Error::Unreachable { .. } => digimedfs::Error::posix(libc::EHOSTUNREACH, e.to_string()),
            Error::Tls { .. } => digimedfs::Error::posix(libc::EPROTO, e.to_string()),
            Error::BadCredential { .. }
            | Error::Revoked { .. }
            | Error::WrongTenant { .. }
            | Error::UnknownKeyVersion { .. }
            | Error::WrongCredential { .. } => digimedfs::Error::WrongKey {
                what: e.to_string(),
            },
            Error::RateLimited(_) => digimedfs::Error::posix(libc::EAGAIN, e.to_string()),
            Error::BadState { .. } | Error::Audit(_) | Error::Crypto(_) => {
                digimedfs::Error::format(e.to_string())
            }
            Error::Invalid(_) | Error::TlsConfig(_) | Error::Service { .. } => {
                digimedfs::Error::invalid(e.to_string())
            }
        }
    }
}
