//! The audit log: append-only JSON lines in a keyed (HMAC-SHA256) chain.
//!
//! Each line is one JSON object: `time, request_id, tenant, fs_uuid, op, key_version, client,
//! outcome, reason, [count,] prev, mac`. `mac` is the hex HMAC-SHA256, under the audit key, of
//! the line's bytes up to the `,"mac"` member plus the closing `}`; `prev` is the previous
//! line's chain value (64 zeros for the first line). A keyed line's chain value is its `mac`.
//! The audit key is HKDF-SHA256(root secret, "", "digimedfs v1 audit chain mac")
//! ([`crate::keys::RootSecret::audit_key`]): only the service, an admin holding the credential,
//! or an auditor given the key (`digimed-keyservice audit key`) can verify or extend the chain.
//!
//! What the chain proves, to a verifier with the key: every line was written by a holder of the
//! key, unchanged, in this order, with none removed or inserted between the first and the last.
//! It does not prove that the tail was not cut off (compare with a checkpoint kept elsewhere:
//! [`Verified::last`], `digimed-keyservice audit checkpoint`), nor anything against a holder of
//! the root secret or of the audit key, who can rewrite the whole chain.
//!
//! Logs written before the chain was keyed start with lines that carry `hash` instead of `mac`:
//! `hash` is the plain SHA-256 of the line up to `,"hash"` plus `}`, and such a line's chain
//! value is the SHA-256 of the whole line. [`verify`] checks that unkeyed prefix as before and
//! reports where the keyed chain starts; the first keyed line's `prev` covers the whole prefix,
//! so the prefix cannot be changed afterwards without the key either. An unkeyed line after the
//! first keyed one is an error.
//!
//! Every append is fsynced before the request is answered; a failed append fails the request.
//! Appends take an exclusive `flock` and chain onto the last line written by any instance, so
//! several servers (sharing the root secret) may share one log. Records never contain key
//! material or tokens.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The key of the audit chain (zeroized on drop).
pub struct AuditKey(pub Zeroizing<[u8; 32]>);

impl AuditKey {
    /// Reads a key file holding the key as 64 hex digits (as `audit key` prints it).
    pub fn from_file(path: &Path) -> Result<AuditKey> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        let mut k = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), k.as_mut_slice()).map_err(|_| {
            Error::Invalid(format!(
                "{}: expected the audit key as 64 hex digits",
                path.display()
            ))
        })?;
        Ok(AuditKey(k))
    }

    /// The key as hex, for `digimed-keyservice audit key`.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_slice()))
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        match <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice()) {
            Ok(mut m) => {
                m.update(data);
                m.finalize().into_bytes().into()
            }
            Err(_) => [0u8; 32],
        }
    }
}

/// One audited event (no key material).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// Random request id, also returned to the client.
    pub request_id: String,
    /// The tenant, if known.
    pub tenant: Option<String>,
    /// The filesystem UUID (hex), if given.
    pub fs_uuid: Option<String>,
    /// The operation (`wrap`, `unwrap`, ...).
    pub op: String,
    /// The key version involved, if any.
    pub key_version: Option<u32>,
    /// Client address.
    pub client: String,
    /// `ok` or `refused` or `error`.
    pub outcome: String,
    /// Why it was refused (empty when ok).
    pub reason: String,
    /// For a summary record: how many requests it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event,
    prev: String,
}

struct Tail {
    prev: [u8; 32],
    len: u64,
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    key: AuditKey,
    tail: Mutex<Tail>,
}

/// RFC 3339 UTC time with milliseconds.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_millis()
    )
}

fn last_line(file: &mut std::fs::File, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(1 << 16);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(len - start).read_to_end(&mut buf)?;
    let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => body.get(i + 1..).unwrap_or_default(),
        None => body,
    };
    Ok(Some(line.to_vec()))
}

/// Length of the `,"mac":"<64 hex>"}` (or `,"hash":...`) suffix without the member name.
const HEX_TAIL: usize = 64 + 2;

/// How a line is chained.
enum Kind<'a> {
    /// `..,"mac":"<hex>"}`: keyed; (signed part without `}`, stated mac hex).
    Keyed(&'a [u8], &'a [u8]),
    /// `..,"hash":"<hex>"}`: unkeyed (before the chain was keyed).
    Legacy(&'a [u8], &'a [u8]),
    /// Neither.
    Other,
}

fn kind(line: &[u8]) -> Kind<'_> {
    let split = |name: &[u8]| -> Option<(&[u8], &[u8])> {
        let n = name.len() + HEX_TAIL;
        let at = line.len().checked_sub(n)?;
        let (head, suffix) = line.split_at(at);
        let hex = suffix.strip_prefix(name)?.strip_suffix(b"\"}")?;
        Some((head, hex))
    };
    if let Some((h, x)) = split(b",\"mac\":\"") {
        Kind::Keyed(h, x)
    } else if let Some((h, x)) = split(b",\"hash\":\"") {
        Kind::Legacy(h, x)
    } else {
        Kind::Other
    }
}

/// The chain value a line hands to the next line's `prev`: its stated `mac` if keyed, else the
/// SHA-256 of the whole line.
fn chain_value(line: &[u8]) -> [u8; 32] {
    if let Kind::Keyed(_, x) = kind(line) {
        let mut v = [0u8; 32];
        if hex::decode_to_slice(x, &mut v).is_ok() {
            return v;
        }
    }
    Sha256::digest(line).into()
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

impl AuditLog {
    /// Opens (creating if needed) the log at `path` and finds the chain's tail.
    pub fn open(path: &Path, key: AuditKey) -> Result<AuditLog> {
        let mut f = open_append(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let prev = match last_line(&mut f, len).map_err(|e| Error::io(path, e))? {
            Some(l) => chain_value(&l),
            None => [0u8; 32],
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            key,
            tail: Mutex::new(Tail { prev, len }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` and fsyncs; any failure is an error (the request must then fail).
    pub fn append(&self, event: &Event) -> Result<()> {
        self.append_all(std::slice::from_ref(event))
    }

    /// Appends `events` in order with one fsync at the end (summaries).
    pub fn append_all(&self, events: &[Event]) -> Result<()> {
        use std::os::unix::io::AsRawFd;
        let mut tail = self
            .tail
            .lock()
            .map_err(|_| Error::Audit("audit lock poisoned".into()))?;
        let err = |e: std::io::Error| Error::Audit(format!("{}: {e}", self.path.display()));
        let mut f = open_append(&self.path).map_err(err)?;
        // SAFETY: flock on a valid fd owned by `f`; released when `f` is dropped.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let len = f.metadata().map_err(err)?.len();
        if len != tail.len {
            // Another instance appended (or the file was replaced): chain onto its last line.
            tail.prev = match last_line(&mut f, len).map_err(err)? {
                Some(l) => chain_value(&l),
                None => [0u8; 32],
            };
        }
        let mut bytes = Vec::new();
        let mut prev = tail.prev;
        for event in events {
            let line = Line {
                time: now_rfc3339(),
                event,
                prev: hex::encode(prev),
            };
            let mut one = serde_json::to_vec(&line).map_err(|e| Error::Audit(e.to_string()))?;
            prev = self.key.mac(&one);
            one.pop(); // the closing brace
            one.extend_from_slice(format!(",\"mac\":\"{}\"}}\n", hex::encode(prev)).as_bytes());
            bytes.extend_from_slice(&one);
        }
        f.write_all(&bytes).map_err(err)?;
        f.sync_data().map_err(err)?;
        tail.prev = prev;
        tail.len = len + bytes.len() as u64;
        Ok(())
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines in the log.
    pub lines: usize,
    /// Leading unkeyed lines (written before the chain was keyed); the keyed chain starts at
    /// line `legacy + 1`.
    pub legacy: usize,
    /// The last line's chain value (hex): a checkpoint to keep elsewhere.
    pub last: Option<String>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.legacy, self.lines) {
            (_, 0) => write!(f, "0 lines"),
            (0, n) => write!(f, "{n} lines, keyed chain intact"),
            (l, n) if l == n => write!(
                f,
                "{n} lines, all unkeyed (written before the chain was keyed; SHA-256 chain \
                 intact, which anyone can recompute)"
            ),
            (l, n) => write!(
                f,
                "{n} lines, chain intact: lines 1-{l} unkeyed (before the chain was keyed), \
                 keyed chain from line {}",
                l + 1
            ),
        }
    }
}

/// What [`verify`] is to require beyond an intact chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOpts {
    /// (line number, chain value in hex) from an earlier checkpoint: that line must still carry
    /// that value, so a tail cut off before it, or a chain rewritten since, is detected.
    pub checkpoint: Option<(usize, String)>,
    /// Accept a non-empty log without any keyed line. Off by default: anyone can rewrite a
    /// whole log as an unkeyed SHA-256 chain, so such a log proves nothing unless it is known
    /// to predate the keyed chain.
    pub allow_unkeyed: bool,
}

/// Checks the chain of the log at `path` with `key`; returns what it found, or an
/// [`Error::Audit`] naming the first bad line (1-based).
pub fn verify(path: &Path, key: &AuditKey, opts: &VerifyOpts) -> Result<Verified> {
    let checkpoint = opts.checkpoint.as_ref().map(|(n, v)| (*n, v.as_str()));
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Verified {
        lines: 0,
        legacy: 0,
        last: None,
    };
    let mut prev = [0u8; 32];
    let mut keyed_started = false;
    let mut checkpoint_seen = false;
    if !data.is_empty() {
        let body = data
            .strip_suffix(b"\n")
            .ok_or_else(|| Error::Audit(format!("{}: last line is incomplete", path.display())))?;
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            let no = i + 1;
            let bad =
                |what: &str| Error::Audit(format!("{}: line {no} is bad: {what}", path.display()));
            let v: serde_json::Value =
                serde_json::from_slice(line).map_err(|_| bad("not valid JSON"))?;
            let stated_prev = v
                .get("prev")
                .and_then(|p| p.as_str())
                .ok_or_else(|| bad("no prev"))?;
            if stated_prev != hex::encode(prev) {
                return Err(bad(
                    "prev does not match the line before (a line was removed, reordered or edited)",
                ));
            }
            match kind(line) {
                Kind::Keyed(head, stated) => {
                    let mut signed = head.to_vec();
                    signed.push(b'}');
                    let mac = key.mac(&signed);
                    if !bool::from(subtle::ConstantTimeEq::ct_eq(
                        hex::encode(mac).as_bytes(),
                        stated,
                    )) {
                        return Err(bad(
                            "its MAC does not verify (the line was edited or written without \
                             the audit key, or this is not the service's audit key)",
                        ));
                    }
                    keyed_started = true;
                    prev = mac;
                }
                Kind::Legacy(head, stated) => {
                    if keyed_started {
                        return Err(bad(
                            "unkeyed line after the keyed chain started (inserted or rewritten)",
                        ));
                    }
                    let mut signed = head.to_vec();
                    signed.push(b'}');
                    if hex::encode(Sha256::digest(&signed)).as_bytes() != stated {
                        return Err(bad(
                            "its content does not match its hash (the line was edited)",
                        ));
                    }
                    out.legacy = no;
                    prev = Sha256::digest(line).into();
                }
                Kind::Other => return Err(bad("does not end with its MAC")),
            }
            out.lines = no;
            if let Some((n, value)) = checkpoint {
                if n == no {
                    if !hex::encode(prev).eq_ignore_ascii_case(value.trim()) {
                        return Err(bad(
                            "its chain value differs from the checkpoint (the log was \
                             rewritten since the checkpoint was taken)",
                        ));
                    }
                    checkpoint_seen = true;
                }
            }
        }
        out.last = Some(hex::encode(prev));
    }
    if out.lines > 0 && out.legacy == out.lines && !opts.allow_unkeyed {
        return Err(Error::Audit(format!(
            "{}: none of its {} lines is keyed: either it was written entirely before the chain \
             was keyed, or it was rewritten by someone without the audit key (an unkeyed \
             SHA-256 chain can be recomputed by anyone); if it is known to predate the keyed \
             chain, verify it with --allow-unkeyed",
            path.display(),
            out.lines
        )));
    }
    if let Some((n, _)) = checkpoint {
        if !checkpoint_seen {
            return Err(Error::Audit(format!(
                "{}: the log has {} lines, the checkpoint is at line {n}: its tail was cut off",
                path.display(),
                out.lines
            )));
        }
    }
    Ok(out)
}
