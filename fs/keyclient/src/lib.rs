//! Blocking client of the digimedfs key service, and its [`KeySource`] implementation (key slot
//! kind 2).
//!
//! Speaks HTTP/1.1 over rustls (`Connection: close`, one request per connection) and trusts only
//! the configured CA certificate. Called from synchronous code (mount, mkfs, rewrap, fsck). The
//! server side lives in the `digimedfs-keyservice` crate, which re-exports this crate as its
//! `client`. [`open_key_source`] turns the key options every command takes into a
//! [`KeySource`]. [`rewrap_filesystem`] moves a filesystem's kind-2 key slot to the tenant's newest
//! key version without touching data. With feature `cli`: the key options of every command
//! (`cli`) and the `-o` mount option parser with the fstab lookup (`mount_options`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use zeroize::Zeroizing;

#[cfg(feature = "cli")]
pub mod cli;
mod error;
mod http;
#[cfg(feature = "cli")]
pub mod mount_options;
#[cfg(feature = "cli")]
pub mod progress_line;
pub mod protocol;
mod rewrap;

pub use error::{Result, ServiceError};
pub use http::{client_config, Reply};
use http::{read_http_reply, ReplyError};
pub use rewrap::{rewrap_filesystem, RewrapReport, SlotRewrap};

use digimedfs_core::crypto::{MasterKey, WrappingKey};
use digimedfs_core::format::superblock::KeySlot;
use digimedfs_core::keysource::{KeyFile, KeySource, SlotContext};
use protocol::{
    AnchorRequest, CheckAnchorRequest, ErrorReply, KeyReply, UnwrapRequest, WrapRequest,
    WrappedReply, PATH_ANCHOR, PATH_CHECK_ANCHOR, PATH_REWRAP, PATH_UNWRAP, PATH_WRAP,
};

/// Key slot kind of the key service.
pub const KIND: u8 = 2;
const TIMEOUT: Duration = Duration::from_secs(15);

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
        let body = UnwrapRequest::new(fs_uuid, version, wrapped);
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
        let body = UnwrapRequest::new(fs_uuid, version, wrapped);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_RESPONSE;

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
