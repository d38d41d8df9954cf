//! One HTTP/1.1 exchange over TLS as the client makes it: the TLS configuration that trusts
//! only the given CA, and a bounded reader of one reply (never more than [`MAX_RESPONSE`]
//! bytes, whatever the peer sends).

use crate::{Result, ServiceError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Largest reply the client reads.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

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

/// A response: status and JSON body.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (zeroized on drop).
    pub body: Zeroizing<Vec<u8>>,
}

/// Why a reply could not be read.
pub(crate) enum ReplyError {
    /// The connection failed.
    Io(std::io::Error),
    /// The bytes are not a reply this client accepts.
    Malformed(&'static str),
}

/// Reads one HTTP/1.1 response with a Content-Length body of at most [`MAX_RESPONSE`] bytes
/// from `r`. The buffer never grows past the headers' limit plus the announced length.
pub(crate) fn read_http_reply(r: &mut impl Read) -> std::result::Result<Reply, ReplyError> {
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

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
