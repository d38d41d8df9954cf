//! Blocking client of the digimedfs key service, and its [`KeySource`] implementation (key slot
//! kind 2).
//!
//! Speaks HTTP/1.1 over rustls (`Connection: close`, one request per connection) and trusts only
//! the configured CA certificate. Called from synchronous code (mount, mkfs, rewrap, fsck). The
//! server side lives in the `digimedfs-keyservice` crate, which re-exports this crate as its
//! `client`. [`open_key_source`] turns the key options every command takes into a
//! [`KeySource`]. [`rewrap_filesystem`] moves a filesystem's kind-2 key slot to the tenant's newest
//! key version without touching data.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use zeroize::Zeroizing;

#[cfg(feature = "cli")]
pub mod cli;
pub mod protocol;

use digimedfs_core::crypto::{MasterKey, WrappingKey};
use digimedfs_core::format::superblock::KeySlot;
use digimedfs_core::keysource::{KeyFile, KeySource, SlotContext};
use protocol::{
    AnchorRequest, CheckAnchorRequest, ErrorReply, KeyReply, UnwrapRequest, WrapRequest,
    WrappedReply, PATH_ANCHOR, PATH_CHECK_ANCHOR, PATH_REWRAP, PATH_UNWRAP, PATH_WRAP,
};

/// Key slot kind of the key service.
pub const KIND: u8 = 2;
const MAX_RESPONSE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);

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

/// Client TLS config trusting only the CA certificate(s) in `ca` (PEM).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let bad = |e: &dyn std::fmt::Display| ServiceError::TlsConfig(format!("{}: {e}", ca.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A configured key service client for one tenant.
#[derive(Clone)]
pub struct KeyService {
    /// `https://host:port`.
    pub url: String,
    /// The tenant this client's token belongs to.
    pub tenant: String,
    token: Zeroizing<String>,
    /// CA certificate file (PEM) the server must chain to.
    pub ca: PathBuf,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("url", &self.url)
            .field("tenant", &self.tenant)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// A response: status and JSON body.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (zeroized on drop).
    pub body: Zeroizing<Vec<u8>>,
}

impl KeyService {
    /// A client for `url` (`https://host:port`), `tenant`, `token` (hex), trusting `ca`.
    pub fn new(url: &str, tenant: &str, token: &str, ca: &Path) -> Result<KeyService> {
        let invalid =
            |what: &str| ServiceError::Invalid(format!("key service URL {url:?}: {what}"));
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| invalid("must start with https://"))?
            .trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| invalid("need [v6]:port"))?;
            (h.to_string(), p)
        } else {
            let (h, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid("need host:port"))?;
            (h.to_string(), p)
        };
        let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
        if tenant.is_empty() || tenant.len() > 128 {
            return Err(ServiceError::Invalid(
                "tenant id must be 1 to 128 bytes".into(),
            ));
        }
        let token = Zeroizing::new(token.trim().to_string());
        if token.is_empty() || token.contains(|c: char| c.is_control() || c == ' ') {
            return Err(ServiceError::Invalid(
                "the token must be one line without spaces (as printed by `digimed-keyservice token issue`)".into(),
            ));
        }
        Ok(KeyService {
            url: url.trim_end_matches('/').to_string(),
            tenant: tenant.to_string(),
            token,
            ca: ca.to_path_buf(),
            host,
            port,
            tls: client_config(ca)?,
        })
    }

    /// A client whose token is the content of `token_file` (one line). A token file writable
    /// by group or others is refused; one only readable by them is used with a warning.
    pub fn from_files(url: &str, tenant: &str, token_file: &Path, ca: &Path) -> Result<KeyService> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| ServiceError::Io {
            path: token_file.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(token_file).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(ServiceError::Invalid(format!(
                "token file {} is writable by group or others (mode {:04o}): whoever can write \
                 it can replace the credential; run `chmod 600 {}`",
                token_file.display(),
                mode & 0o7777,
                token_file.display()
            )));
        }
        if let Some(warning) =
            digimedfs_core::keysource::file::loose_mode_warning("token file", token_file, mode)
        {
            tracing::warn!("{warning}");
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(4096 + 1));
        (&mut file).take(4096).read_to_end(&mut raw).map_err(io)?;
        let text = std::str::from_utf8(&raw).map_err(|_| {
            ServiceError::Invalid(format!("token file {} is not text", token_file.display()))
        })?;
        KeyService::new(url, tenant, text, ca)
    }

    fn unreachable(&self, what: impl std::fmt::Display) -> ServiceError {
        ServiceError::Unreachable {
            url: self.url.clone(),
            what: what.to_string(),
            errno: libc::EHOSTUNREACH,
        }
    }

    /// A failed connection or exchange, with the errno of what the kernel said.
    fn unreachable_io(&self, e: &std::io::Error) -> ServiceError {
        let errno = e.raw_os_error().unwrap_or(match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => libc::ETIMEDOUT,
            std::io::ErrorKind::ConnectionRefused => libc::ECONNREFUSED,
            _ => libc::EHOSTUNREACH,
        });
        let what = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                "no answer in time".to_string()
            }
            _ => e.to_string(),
        };
        ServiceError::Unreachable {
            url: self.url.clone(),
            what,
            errno,
        }
    }

    fn classify_io(&self, e: std::io::Error) -> ServiceError {
        let is_tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_tls {
            ServiceError::Tls {
                url: self.url.clone(),
                what: e.to_string(),
            }
        } else {
            self.unreachable(e)
        }
    }

    /// POSTs `body` (JSON) to `path` and returns the reply.
    pub fn post(&self, path: &str, body: &[u8]) -> Result<Reply> {
        let mut req = Zeroizing::new(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.host,
                self.token.as_str(),
                body.len()
            )
            .into_bytes(),
        );
        req.extend_from_slice(body);
        self.exchange(&req)
    }

    /// Sends raw request bytes over a new TLS connection and reads one reply (diagnostics,
    /// tests).
    pub fn exchange(&self, raw: &[u8]) -> Result<Reply> {
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| self.unreachable(format!("resolve {}: {e}", self.host)))?
            .collect();
        let mut last = None;
        let mut sock = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, TIMEOUT) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let sock = sock.ok_or_else(|| match &last {
            Some(e) => self.unreachable_io(e),
            None => self.unreachable("no address"),
        })?;
        sock.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| self.unreachable(e))?;
        sock.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| self.unreachable(e))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| ServiceError::Invalid(format!("server name {}: {e}", self.host)))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| {
            ServiceError::Tls {
                url: self.url.clone(),
                what: e.to_string(),
            }
        })?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| self.classify_io(e))?;
        }
        tls.write_all(raw).map_err(|e| self.classify_io(e))?;
        tls.flush().map_err(|e| self.classify_io(e))?;
        self.read_reply(&mut tls)
    }

    fn read_reply(&self, r: &mut impl Read) -> Result<Reply> {
        read_http_reply(r).map_err(|e| match e {
            ReplyError::Io(e) => self.classify_io(e),
            ReplyError::Malformed(what) => self.unreachable(what),
        })
    }

    /// Turns a non-200 reply into the matching error.
    fn refusal(&self, reply: &Reply, version: Option<u32>) -> ServiceError {
        let eb: ErrorReply = serde_json::from_slice(&reply.body).unwrap_or(ErrorReply {
            error: String::new(),
            message: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect(),
            request_id: None,
        });
        let what = format!("{} ({})", eb.message, eb.error);
        match (reply.status, eb.error.as_str()) {
            (401, _) => ServiceError::BadCredential {
                tenant: self.tenant.clone(),
                what,
            },
            (403, "wrong_tenant") | (422, _) => ServiceError::WrongTenant {
                what: format!(
                    "the key service (tenant {:?}) cannot unwrap this key: {what}",
                    self.tenant
                ),
            },
            (403, _) => ServiceError::Revoked {
                tenant: self.tenant.clone(),
                what,
            },
            (404, "unknown_key_version") => ServiceError::UnknownKeyVersion {
                tenant: self.tenant.clone(),
                version: version.unwrap_or(0),
            },
            (409, "rollback") => ServiceError::Rollback { what },
            (429, _) => ServiceError::RateLimited(what),
            (status, _) => ServiceError::Service {
                url: self.url.clone(),
                status,
                what,
            },
        }
    }

    fn call(&self, path: &str, body: &impl Serialize, version: Option<u32>) -> Result<Reply> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(body).map_err(|e| ServiceError::Invalid(e.to_string()))?,
        );
        let reply = self.post(path, &bytes)?;
        if reply.status != 200 {
            return Err(self.refusal(&reply, version));
        }
        Ok(reply)
    }

    fn malformed(&self, what: &str, e: impl std::fmt::Display) -> ServiceError {
        self.unreachable(format!("malformed {what} response: {e}"))
    }

    /// Wraps a 64-byte master key for `fs_uuid`; returns (key version, wrapped).
    pub fn wrap(&self, fs_uuid: &[u8; 16], key: &[u8]) -> Result<(u32, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        // Zeroized when dropped, on every path.
        let body = WrapRequest {
            fs_uuid: hex::encode(fs_uuid),
            key: b64.encode(key),
        };
        let reply = self.call(PATH_WRAP, &body, None);
        drop(body);
        let r: WrappedReply =
            serde_json::from_slice(&reply?.body).map_err(|e| self.malformed("wrap", e))?;
        let wrapped = b64
            .decode(&r.wrapped)
            .map_err(|e| self.malformed("wrap", e))?;
        Ok((r.key_version, wrapped))
    }

    /// Unwraps a key wrapped under `version` for `fs_uuid`.
    pub fn unwrap(
        &self,
        fs_uuid: &[u8; 16],
        version: u32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = UnwrapRequest {
            fs_uuid: hex::encode(fs_uuid),
            key_version: version,
            wrapped: b64.encode(wrapped),
        };
        let reply = self.call(PATH_UNWRAP, &body, Some(version))?;
        // Zeroized when dropped.
        let r: KeyReply =
            serde_json::from_slice(&reply.body).map_err(|e| self.malformed("unwrap", e))?;
        b64.decode(&r.key)
            .map(Zeroizing::new)
            .map_err(|e| self.malformed("unwrap", e))
    }

    /// Re-wraps under the tenant's newest key version; returns (new version, wrapped).
    pub fn rewrap(
        &self,
        fs_uuid: &[u8; 16],
        version: u32,
        wrapped: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = UnwrapRequest {
            fs_uuid: hex::encode(fs_uuid),
            key_version: version,
            wrapped: b64.encode(wrapped),
        };
        let reply = self.call(PATH_REWRAP, &body, Some(version))?;
        let r: WrappedReply =
            serde_json::from_slice(&reply.body).map_err(|e| self.malformed("rewrap", e))?;
        let wrapped = b64
            .decode(&r.wrapped)
            .map_err(|e| self.malformed("rewrap", e))?;
        Ok((r.key_version, wrapped))
    }

    /// Records the filesystem's epoch and digest (rollback anchor).
    pub fn record_anchor(&self, fs_uuid: &[u8; 16], epoch: u64, digest: &[u8; 32]) -> Result<()> {
        let body = AnchorRequest {
            fs_uuid: hex::encode(fs_uuid),
            epoch,
            digest: hex::encode(digest),
        };
        self.call(PATH_ANCHOR, &body, None).map(|_| ())
    }

    /// Fails if `epoch` is older than the newest recorded for the filesystem, or equal to it
    /// with another metadata digest than `digest`.
    pub fn verify_anchor(&self, fs_uuid: &[u8; 16], epoch: u64, digest: &[u8; 32]) -> Result<()> {
        let body = CheckAnchorRequest {
            fs_uuid: hex::encode(fs_uuid),
            epoch,
            digest: Some(hex::encode(digest)),
        };
        self.call(PATH_CHECK_ANCHOR, &body, None).map(|_| ())
    }

    fn check_tenant(&self, ctx: &SlotContext) -> Result<()> {
        if ctx.tenant != self.tenant {
            return Err(ServiceError::WrongTenant {
                what: format!(
                    "the filesystem belongs to tenant {:?}, the key service client is configured for tenant {:?}",
                    ctx.tenant, self.tenant
                ),
            });
        }
        Ok(())
    }
}

/// Why a reply could not be read.
enum ReplyError {
    /// The connection failed.
    Io(std::io::Error),
    /// The bytes are not a reply this client accepts.
    Malformed(&'static str),
}

/// Reads one HTTP/1.1 response with a Content-Length body of at most [`MAX_RESPONSE`] bytes
/// from `r`. The buffer never grows past the headers' limit plus the announced length.
fn read_http_reply(r: &mut impl Read) -> std::result::Result<Reply, ReplyError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_RESPONSE + 4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    let header_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(ReplyError::Malformed("response headers too large"));
        }
        let n = r.read(&mut chunk[..]).map_err(ReplyError::Io)?;
        if n == 0 {
            return Err(ReplyError::Malformed("connection closed before a response"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(buf.get(..header_end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(ReplyError::Malformed("malformed HTTP status line"))?;
    let mut len = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let len = len.ok_or(ReplyError::Malformed("response without Content-Length"))?;
    if len > MAX_RESPONSE {
        return Err(ReplyError::Malformed("response too large"));
    }
    let start = header_end + 4;
    while buf.len() < start + len {
        let n = r.read(&mut chunk[..]).map_err(ReplyError::Io)?;
        if n == 0 {
            return Err(ReplyError::Malformed("connection closed mid-response"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let body = Zeroizing::new(buf.get(start..start + len).unwrap_or_default().to_vec());
    Ok(Reply { status, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The key version a kind-2 slot names (its key id, little-endian u32).
pub fn slot_version(slot: &KeySlot) -> digimedfs_core::Result<u32> {
    <[u8; 4]>::try_from(slot.key_id.as_slice())
        .map(u32::from_le_bytes)
        .map_err(|_| {
            digimedfs_core::Error::format(format!(
                "key slot {}: key id is {} bytes, expected a 4-byte key version",
                slot.index,
                slot.key_id.len()
            ))
        })
}

impl KeySource for KeyService {
    fn describe(&self) -> String {
        format!("key service {} (tenant {})", self.url, self.tenant)
    }

    fn kind(&self) -> u8 {
        KIND
    }

    fn wrapping_key(&self, _fs_uuid: &[u8; 16]) -> digimedfs_core::Result<WrappingKey> {
        Err(digimedfs_core::Error::invalid(
            "the key service never hands out its wrapping key; use seal_slot/open_slot",
        ))
    }

    fn seal_slot(
        &self,
        index: u8,
        ctx: &SlotContext,
        master: &MasterKey,
    ) -> digimedfs_core::Result<KeySlot> {
        self.check_tenant(ctx)?;
        let (version, wrapped) = self.wrap(&ctx.fs_uuid, master.expose())?;
        Ok(KeySlot {
            index,
            kind: KIND,
            key_id: version.to_le_bytes().to_vec(),
            wrapped,
        })
    }

    fn open_slot(
        &self,
        slot: &KeySlot,
        ctx: &SlotContext,
    ) -> digimedfs_core::Result<Option<MasterKey>> {
        if slot.kind != KIND {
            return Ok(None);
        }
        self.check_tenant(ctx)?;
        let version = slot_version(slot)?;
        let key = self.unwrap(&ctx.fs_uuid, version, &slot.wrapped)?;
        Ok(Some(MasterKey::from_bytes(&key)?))
    }

    fn anchor(
        &self,
        ctx: &SlotContext,
        epoch: u64,
        digest: &[u8; 32],
    ) -> digimedfs_core::Result<()> {
        self.check_tenant(ctx)?;
        self.record_anchor(&ctx.fs_uuid, epoch, digest)
            .map_err(|e| anchor_err(e, ctx))
    }

    fn check_anchor(
        &self,
        ctx: &SlotContext,
        epoch: u64,
        digest: &[u8; 32],
    ) -> digimedfs_core::Result<()> {
        self.check_tenant(ctx)?;
        self.verify_anchor(&ctx.fs_uuid, epoch, digest)
            .map_err(|e| anchor_err(e, ctx))
    }

    fn anchor_handle(&self) -> Option<Arc<dyn KeySource>> {
        Some(Arc::new(self.clone()))
    }
}

fn anchor_err(e: ServiceError, ctx: &SlotContext) -> digimedfs_core::Error {
    match e {
        ServiceError::Rollback { what } => digimedfs_core::Error::integrity(format!(
            "rollback detected by the key service: the backing directory of filesystem {} is \
             not what the service last saw ({what}); it may have been replaced by an old copy. \
             If this restore is intended, the key service admin runs \
             `digimed-keyservice accept-rollback STATE_DIR {}`",
            digimedfs_core::filesystem::format_uuid(&ctx.fs_uuid),
            digimedfs_core::filesystem::format_uuid(&ctx.fs_uuid)
        )),
        ServiceError::WrongTenant { what } => digimedfs_core::Error::WrongKey {
            what: format!(
                "the key service refuses the rollback anchor of filesystem {} to tenant {:?} \
                 ({what}). If the filesystem is this tenant's and its anchor was taken by \
                 another, the key service admin runs `digimed-keyservice anchor show STATE_DIR \
                 {}` and then `digimed-keyservice anchor clear STATE_DIR {}`",
                digimedfs_core::filesystem::format_uuid(&ctx.fs_uuid),
                ctx.tenant,
                digimedfs_core::filesystem::format_uuid(&ctx.fs_uuid),
                digimedfs_core::filesystem::format_uuid(&ctx.fs_uuid)
            ),
        },
        other => other.into(),
    }
}

/// What [`rewrap_filesystem`] did to one key slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRewrap {
    /// The slot index.
    pub index: u8,
    /// Key version before.
    pub from: u32,
    /// Key version after (equal to `from` if it already was the newest).
    pub to: u32,
}

/// What [`rewrap_filesystem`] did.
#[derive(Debug, Clone)]
pub struct RewrapReport {
    /// Filesystem UUID, hyphenated.
    pub fs_uuid: String,
    /// Tenant.
    pub tenant: String,
    /// One entry per kind-2 slot.
    pub slots: Vec<SlotRewrap>,
    /// Whether the superblock was rewritten.
    pub changed: bool,
}

/// Opens the key source a command line names: a key file, or the key service with its tenant,
/// token file and CA certificate. Exactly one of `key_file` and `keyservice_url` must be given.
/// Shared by `digimedfs`, `mkfs.digimed` and `fsck.digimed`.
pub fn open_key_source(
    key_file: Option<&std::path::Path>,
    keyservice_url: Option<&str>,
    tenant: Option<&str>,
    token_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> digimedfs_core::Result<Box<dyn KeySource>> {
    match (key_file, keyservice_url) {
        (Some(path), None) => Ok(Box::new(KeyFile::open(path)?)),
        (None, Some(url)) => {
            let (Some(tenant), Some(token), Some(ca)) = (tenant, token_file, ca_file) else {
                return Err(digimedfs_core::Error::invalid(
                    "--keyservice needs --tenant, --token-file and --ca-file",
                ));
            };
            Ok(Box::new(KeyService::from_files(url, tenant, token, ca)?))
        }
        _ => Err(digimedfs_core::Error::invalid(
            "give exactly one of --key-file PATH and --keyservice URL",
        )),
    }
}

/// Moves every key-service slot (kind 2) of the filesystem in `backing` to the tenant's newest
/// key version (`/v1/rewrap`), then rewrites the superblock (both copies, MAC kept valid). Data
/// and metadata are not touched; the master key stays the same. Refuses while the filesystem is
/// mounted (it takes the mount lock) and when the rollback anchor refuses the superblock.
pub fn rewrap_filesystem(backing: &Path, ks: &KeyService) -> digimedfs_core::Result<RewrapReport> {
    use digimedfs_core::backing::BackingDir;
    use digimedfs_core::format::superblock::Superblock;

    let dir = BackingDir::open(backing)?;
    let _lock = dir.lock(false)?;
    let (mut sb, keys) = digimedfs_core::filesystem::unlock_superblock(&dir, ks)?;
    let ctx = SlotContext {
        fs_uuid: sb.fs_uuid,
        tenant: sb.tenant.clone(),
    };
    ks.check_anchor(&ctx, sb.epoch, &sb.meta_digest)?;
    let mut slots = Vec::new();
    for slot in sb.slots.iter_mut().filter(|s| s.kind == KIND) {
        let from = slot_version(slot)?;
        let (to, wrapped) = ks.rewrap(&sb.fs_uuid, from, &slot.wrapped)?;
        if to != from {
            slot.key_id = to.to_le_bytes().to_vec();
            slot.wrapped = wrapped;
        }
        slots.push(SlotRewrap {
            index: slot.index,
            from,
            to,
        });
    }
    if slots.is_empty() {
        return Err(digimedfs_core::Error::invalid(format!(
            "{} has no key service key slot (it uses a key file)",
            backing.display()
        )));
    }
    let changed = slots.iter().any(|s| s.from != s.to);
    if changed {
        let bytes = sb.encode(&keys.superblock)?;
        // Before replacing anything: the new slots must open to the same master key. A master
        // key derives the superblock MAC key, so a MAC that verifies proves it.
        for slot in sb.slots.iter().filter(|s| s.kind == KIND) {
            let master = ks.open_slot(slot, &ctx)?.ok_or_else(|| {
                digimedfs_core::Error::integrity("the rewrapped key slot does not open")
            })?;
            let check = digimedfs_core::crypto::FsKeys::derive(&master, &sb.fs_uuid)?;
            Superblock::verify(&bytes, &check.superblock).map_err(|_| {
                digimedfs_core::Error::integrity(
                    "the rewrapped key slot opens to a different master key; superblock left as it was",
                )
            })?;
        }
        dir.write_superblock(&bytes)?;
    }
    Ok(RewrapReport {
        fs_uuid: digimedfs_core::filesystem::format_uuid(&sb.fs_uuid),
        tenant: sb.tenant.clone(),
        slots,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "secret-token\n").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let Err(err) =
            KeyService::from_files("https://127.0.0.1:1", "t", &token, &dir.path().join("ca"))
        else {
            panic!("a world-writable token file was accepted");
        };
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    /// Fuzzes the client's HTTP reply reader and the JSON shapes it decodes (the key service's
    /// replies): mutated replies must come back as a reply or an error, never a panic, and the
    /// reader never keeps more than the headers' limit plus one announced body.
    /// `DIGIMEDFS_FUZZ_ITERS` sets the number of inputs (default 3 000).
    #[test]
    fn reply_reader_and_decoders_never_panic() {
        let iters = digimedfs_core::testing::fuzz_iterations();
        let reply = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let seeds = vec![
            reply(
                "200 OK",
                r#"{"key_version":3,"wrapped":"AAECAwQFBgcICQ=="}"#,
            ),
            reply("200 OK", r#"{"key":"AAECAwQFBgcICQoLDA0ODw=="}"#),
            reply("200 OK", r#"{"newest_epoch":18446744073709551615}"#),
            reply(
                "409 Conflict",
                r#"{"error":"rollback","message":"epoch 3 is older"}"#,
            ),
            reply(
                "401 Unauthorized",
                r#"{"error":"bad_token","message":"no"}"#,
            ),
        ];
        let mut m = digimedfs_core::testing::Mutator::new(0x4B53_0001);
        let mut parsed = 0usize;
        for n in 0..iters {
            let input = m.input(&seeds);
            let outcome = std::panic::catch_unwind(|| {
                let mut cursor = std::io::Cursor::new(&input);
                match read_http_reply(&mut cursor) {
                    Ok(r) => {
                        assert!(r.body.len() <= MAX_RESPONSE);
                        let _ = serde_json::from_slice::<WrappedReply>(&r.body);
                        let _ = serde_json::from_slice::<KeyReply>(&r.body);
                        let _ = serde_json::from_slice::<ErrorReply>(&r.body);
                        true
                    }
                    Err(_) => false,
                }
            });
            match outcome {
                Ok(ok) => parsed += usize::from(ok),
                Err(_) => panic!("input {n} panicked: {}", hex::encode(&input)),
            }
        }
        assert!(parsed > 0, "no mutated reply was read at all");
    }
}
