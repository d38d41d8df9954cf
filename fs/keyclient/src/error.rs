//! What can go wrong talking to the key service, one variant per failure a caller must tell
//! apart, and how each maps to the core's error (and errno) with its text kept.

use std::path::PathBuf;

/// Result of the client's own calls.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What can go wrong talking to the key service. Each failure a caller must tell apart has its
/// own variant; [`From<ServiceError> for digimedfs_core::Error`] keeps the text, which says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Invalid client configuration (URL, tenant, token).
    #[error("key service client: {0}")]
    Invalid(String),
    /// The CA file cannot be used.
    #[error("key service CA file: {0}")]
    TlsConfig(String),
    /// A local file (token, CA) cannot be read.
    #[error("key service client: cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key service cannot be reached (connect failed, timed out, connection closed).
    #[error(
        "key service {url} unreachable ({what}): is it running, and reachable from this host? \
         Nothing was unlocked, written or lost"
    )]
    Unreachable {
        /// The service URL.
        url: String,
        /// What failed.
        what: String,
        /// The errno it maps to (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...).
        errno: i32,
    },
    /// The TLS handshake with the key service failed (certificate not trusted, name mismatch).
    #[error("TLS handshake with key service {url} failed: {what} (is --ca-file the CA that signed the service's certificate?)")]
    Tls {
        /// The service URL.
        url: String,
        /// What failed.
        what: String,
    },
    /// The key service rejected the token (HTTP 401).
    #[error("key service rejected the credential (token) for tenant {tenant:?}: {what}")]
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
    /// The key version named by the slot is unknown to (or retired at) the service (HTTP 404).
    #[error("key version {version} unknown to the key service for tenant {tenant:?} (never issued or retired)")]
    UnknownKeyVersion {
        /// The tenant.
        tenant: String,
        /// The version.
        version: u32,
    },
    /// The epoch presented is older than the one the service recorded (HTTP 409).
    #[error("rollback detected by the key service: {what}")]
    Rollback {
        /// The service's reason.
        what: String,
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

impl From<ServiceError> for digimedfs_core::Error {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Io { path, source } => digimedfs_core::Error::io(path, source),
            ServiceError::Unreachable { errno, .. } => {
                digimedfs_core::Error::posix(errno, e.to_string())
            }
            ServiceError::Tls { .. } => digimedfs_core::Error::posix(libc::EPROTO, e.to_string()),
            ServiceError::BadCredential { .. }
            | ServiceError::Revoked { .. }
            | ServiceError::WrongTenant { .. }
            | ServiceError::UnknownKeyVersion { .. } => digimedfs_core::Error::WrongKey {
                what: e.to_string(),
            },
            ServiceError::Rollback { .. } => digimedfs_core::Error::integrity(e.to_string()),
            ServiceError::RateLimited(_) => {
                digimedfs_core::Error::posix(libc::EAGAIN, e.to_string())
            }
            ServiceError::Invalid(_)
            | ServiceError::TlsConfig(_)
            | ServiceError::Service { .. } => digimedfs_core::Error::invalid(e.to_string()),
        }
    }
}
