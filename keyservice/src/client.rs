//! Blocking client of the key service, and its [`KeySource`] implementation (kind 2).
//!
//! Speaks HTTP/1.1 over rustls (`Connection: close`, one request per connection) and trusts
//! only the configured CA certificate. Called from synchronous code (mount, mkfs, fsck).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use digimedfs::crypto::{MasterKey, WrappingKey};
use digimedfs::format::superblock::KeySlot;
use digimedfs::keysource::{KeySource, SlotContext};
use serde::Deserialize;
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

/// Key slot kind of the key service.
pub const KIND: u8 = 2;
const MAX_RESPONSE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);

/// A configured key service client for one tenant.
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

/// A response: status and JSON body.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (zeroized on drop).
    pub body: Zeroizing<Vec<u8>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct WrapResp {
    key_version: u32,
    wrapped: String,
}

#[derive(Deserialize)]
struct UnwrapResp {
    key: String,
}

impl KeyService {
    /// A client for `url` (`https://host:port`), `tenant`, `token` (hex), trusting `ca`.
    pub fn new(url: &str, tenant: &str, token: &str, ca: &Path) -> Result<KeyService> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| {
                Error::Invalid(format!("key service URL {url:?} must start with https://"))
            })?
            .trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6.split_once("]:").ok_or_else(|| {
                Error::Invalid(format!("key service URL {url:?}: need [v6]:port"))
            })?;
            (h.to_string(), p)
        } else {
            let (h, p) = rest.rsplit_once(':').ok_or_else(|| {
                Error::Invalid(format!("key service URL {url:?}: need host:port"))
            })?;
            (h.to_string(), p)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| Error::Invalid(format!("key service URL {url:?}: bad port")))?;
        Ok(KeyService {
            url: url.trim_end_matches('/').to_string(),
            tenant: tenant.to_string(),
            token: Zeroizing::new(token.trim().to_string()),
            ca: ca.to_path_buf(),
            host,
            port,
            tls: crate::tls::client_config(ca)?,
        })
    }

    fn unreachable(&self, what: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            url: self.url.clone(),
            what: what.to_string(),
        }
    }

    fn classify_io(&self, e: std::io::Error) -> Error {
        let is_tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_tls {
            Error::Tls {
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
        let sock = sock.ok_or_else(|| {
            self.unreachable(last.map_or_else(|| "no address".to_string(), |e| e.to_string()))
        })?;
        sock.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| self.unreachable(e))?;
        sock.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| self.unreachable(e))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| Error::Invalid(format!("server name {}: {e}", self.host)))?;
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| Error::Tls {
                url: self.url.clone(),
                what: e.to_string(),
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
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_RESPONSE + 4096));
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_RESPONSE {
                return Err(self.unreachable("response headers too large"));
            }
            let n = r.read(&mut chunk).map_err(|e| self.classify_io(e))?;
            if n == 0 {
                return Err(self.unreachable("connection closed before a response"));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        };
        let head = String::from_utf8_lossy(buf.get(..header_end).unwrap_or_default()).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.unreachable("malformed HTTP status line"))?;
        let mut len = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or_else(|| self.unreachable("response without Content-Length"))?;
        if len > MAX_RESPONSE {
            return Err(self.unreachable("response too large"));
        }
        let start = header_end + 4;
        while buf.len() < start + len {
            let n = r.read(&mut chunk).map_err(|e| self.classify_io(e))?;
            if n == 0 {
                return Err(self.unreachable("connection closed mid-response"));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        chunk.zeroize();
        let body = Zeroizing::new(buf.get(start..start + len).unwrap_or_default().to_vec());
        Ok(Reply { status, body })
    }

    /// Turns a non-200 reply into the matching error.
    fn refusal(&self, reply: &Reply, version: Option<u32>) -> Error {
        let eb: ErrorBody = serde_json::from_slice(&reply.body).unwrap_or(ErrorBody {
            error: String::new(),
            message: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect(),
        });
        let what = format!("{} ({})", eb.message, eb.error);
        match (reply.status, eb.error.as_str()) {
            (401, _) => Error::BadCredential {
                tenant: self.tenant.clone(),
                what,
            },
            (403, "wrong_tenant") | (422, _) => Error::WrongTenant {
                what: format!(
                    "the key service (tenant {:?}) cannot unwrap this key: {what}",
                    self.tenant
                ),
            },
            (403, _) => Error::Revoked {
                tenant: self.tenant.clone(),
                what,
            },
            (404, "unknown_key_version") => Error::UnknownKeyVersion {
                tenant: self.tenant.clone(),
                version: version.unwrap_or(0),
            },
            (429, _) => Error::RateLimited(what),
            (status, _) => Error::Service {
                url: self.url.clone(),
                status,
                what,
            },
        }
    }

    fn call(&self, path: &str, body: &serde_json::Value, version: Option<u32>) -> Result<Reply> {
        let bytes =
            Zeroizing::new(serde_json::to_vec(body).map_err(|e| Error::Invalid(e.to_string()))?);
        let reply = self.post(path, &bytes)?;
        if reply.status != 200 {
            return Err(self.refusal(&reply, version));
        }
        Ok(reply)
    }

    /// Wraps a 64-byte master key for `fs_uuid`; returns (key version, wrapped).
    pub fn wrap(&self, fs_uuid: &[u8; 16], key: &[u8]) -> Result<(u32, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body = json!({"fs_uuid": hex::encode(fs_uuid), "key": b64.encode(key)});
        let reply = self.call("/v1/wrap", &body, None);
        if let Some(serde_json::Value::String(s)) = body.get_mut("key") {
            s.zeroize();
        }
        let r: WrapResp = serde_json::from_slice(&reply?.body)
            .map_err(|e| self.unreachable(format!("malformed wrap response: {e}")))?;
        let wrapped = b64
            .decode(&r.wrapped)
            .map_err(|e| self.unreachable(format!("malformed wrap response: {e}")))?;
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
        let body = json!({"fs_uuid": hex::encode(fs_uuid), "key_version": version, "wrapped": b64.encode(wrapped)});
        let reply = self.call("/v1/unwrap", &body, Some(version))?;
        let mut r: UnwrapResp = serde_json::from_slice(&reply.body)
            .map_err(|e| self.unreachable(format!("malformed unwrap response: {e}")))?;
        let key = b64.decode(&r.key).map(Zeroizing::new);
        r.key.zeroize();
        key.map_err(|e| self.unreachable(format!("malformed unwrap response: {e}")))
    }

    /// Re-wraps under the tenant's newest key version; returns (new version, wrapped).
    pub fn rewrap(
        &self,
        fs_uuid: &[u8; 16],
        version: u32,
        wrapped: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = json!({"fs_uuid": hex::encode(fs_uuid), "key_version": version, "wrapped": b64.encode(wrapped)});
        let reply = self.call("/v1/rewrap", &body, Some(version))?;
        let r: WrapResp = serde_json::from_slice(&reply.body)
            .map_err(|e| self.unreachable(format!("malformed rewrap response: {e}")))?;
        let wrapped = b64
            .decode(&r.wrapped)
            .map_err(|e| self.unreachable(format!("malformed rewrap response: {e}")))?;
        Ok((r.key_version, wrapped))
    }

    /// Records the filesystem's epoch and digest (rollback anchor).
    pub fn record_anchor(&self, fs_uuid: &[u8; 16], epoch: u64, digest: &[u8; 32]) -> Result<()> {
        let body =
            json!({"fs_uuid": hex::encode(fs_uuid), "epoch": epoch, "digest": hex::encode(digest)});
        self.call("/v1/anchor", &body, None).map(|_| ())
    }

    /// Fails if `epoch` is older than the newest recorded for the filesystem.
    pub fn verify_anchor(&self, fs_uuid: &[u8; 16], epoch: u64) -> Result<()> {
        let body = json!({"fs_uuid": hex::encode(fs_uuid), "epoch": epoch});
        self.call("/v1/check_anchor", &body, None).map(|_| ())
    }

    fn check_tenant(&self, ctx: &SlotContext) -> Result<()> {
        if ctx.tenant != self.tenant {
            return Err(Error::WrongTenant {
                what: format!(
                    "the filesystem belongs to tenant {:?}, this key service client is for tenant {:?}",
                    ctx.tenant, self.tenant
                ),
            });
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl KeySource for KeyService {
    fn describe(&self) -> String {
        format!("key service {} (tenant {})", self.url, self.tenant)
    }

    fn kind(&self) -> u8 {
        KIND
    }

    fn wrapping_key(&self, _fs_uuid: &[u8; 16]) -> digimedfs::Result<WrappingKey> {
        Err(digimedfs::Error::invalid(
            "the key service never hands out its wrapping key; use seal_slot/open_slot",
        ))
    }

    fn seal_slot(
        &self,
        index: u8,
        ctx: &SlotContext,
        master: &MasterKey,
    ) -> digimedfs::Result<KeySlot> {
        self.check_tenant(ctx)?;
        let (version, wrapped) = self.wrap(&ctx.fs_uuid, master.expose())?;
        Ok(KeySlot {
            index,
            kind: KIND,
            key_id: version.to_le_bytes().to_vec(),
            wrapped,
        })
    }

    fn open_slot(&self, slot: &KeySlot, ctx: &SlotContext) -> digimedfs::Result<Option<MasterKey>> {
        if slot.kind != KIND {
            return Ok(None);
        }
        self.check_tenant(ctx)?;
        let version = <[u8; 4]>::try_from(slot.key_id.as_slice())
            .map(u32::from_le_bytes)
            .map_err(|_| {
                digimedfs::Error::format(format!(
                    "key slot {}: key id is {} bytes, expected a 4-byte key version",
                    slot.index,
                    slot.key_id.len()
                ))
            })?;
        let key = self.unwrap(&ctx.fs_uuid, version, &slot.wrapped)?;
        Ok(Some(MasterKey::from_bytes(&key)?))
    }

    fn anchor(&self, ctx: &SlotContext, epoch: u64, digest: &[u8; 32]) -> digimedfs::Result<()> {
        self.check_tenant(ctx)?;
        self.record_anchor(&ctx.fs_uuid, epoch, digest)
            .map_err(anchor_err)
    }

    fn check_anchor(&self, ctx: &SlotContext, epoch: u64) -> digimedfs::Result<()> {
        self.check_tenant(ctx)?;
        self.verify_anchor(&ctx.fs_uuid, epoch).map_err(anchor_err)
    }
}

fn anchor_err(e: Error) -> digimedfs::Error {
    match e {
        Error::Service {
            status: 409, what, ..
        } => digimedfs::Error::integrity(format!(
            "rollback detected by the key service: {what}; if intended, run \
             `digimed-keyservice accept-rollback STATE_DIR FS_UUID`"
        )),
        other => other.into(),
    }
}
