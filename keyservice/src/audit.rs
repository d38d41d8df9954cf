//! The audit log: append-only, hash-chained JSON lines.
//!
//! Each line is one JSON object: `time, request_id, tenant, fs_uuid, op, key_version, client,
//! outcome, reason, prev, hash`, where `prev` is the hex SHA-256 of the previous line's bytes
//! (64 zeros for the first line) and `hash` is the hex SHA-256 of the line's bytes up to the
//! `,"hash"` member plus the closing `}`. Editing a line therefore breaks its own `hash`, and
//! removing or reordering lines breaks the next line's `prev`. Truncating the tail is not
//! detected by the log alone (keep a copy of the last hash elsewhere to catch it).
//!
//! Every append is fsynced before the request is answered; a failed append fails the request.
//! Appends take an exclusive `flock` and pick up lines written by other instances, so several
//! servers may share one log. Records never contain key material or tokens.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

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
    pub fn open(path: &Path) -> Result<AuditLog> {
        let mut f = open_append(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let prev = match last_line(&mut f, len).map_err(|e| Error::io(path, e))? {
            Some(l) => Sha256::digest(&l).into(),
            None => [0u8; 32],
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail { prev, len }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` and fsyncs; any failure is an error (the request must then fail).
    pub fn append(&self, event: &Event) -> Result<()> {
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
                Some(l) => Sha256::digest(&l).into(),
                None => [0u8; 32],
            };
        }
        let line = Line {
            time: now_rfc3339(),
            event,
            prev: hex::encode(tail.prev),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| Error::Audit(e.to_string()))?;
        let hash = Sha256::digest(&bytes);
        bytes.pop(); // the closing brace
        bytes.extend_from_slice(format!(",\"hash\":\"{}\"}}", hex::encode(hash)).as_bytes());
        let full_hash: [u8; 32] = Sha256::digest(&bytes).into();
        bytes.push(b'\n');
        f.write_all(&bytes).map_err(err)?;
        f.sync_data().map_err(err)?;
        tail.prev = full_hash;
        tail.len = len + bytes.len() as u64;
        Ok(())
    }
}

/// Checks the chain of the log at `path`; returns the number of lines, or an
/// [`Error::Audit`] naming the first bad line (1-based).
pub fn verify(path: &Path) -> Result<usize> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut prev = [0u8; 32];
    let mut n = 0usize;
    if data.is_empty() {
        return Ok(0);
    }
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
            return Err(bad("prev does not match the hash of the line before (a line was removed, reordered or edited)"));
        }
        // The line must end with ,"hash":"<64 hex>"}
        const SUFFIX_LEN: usize = 9 + 64 + 2;
        let split = line
            .len()
            .checked_sub(SUFFIX_LEN)
            .ok_or_else(|| bad("too short"))?;
        let (head, suffix) = line.split_at(split);
        let hex_part = suffix
            .strip_prefix(b",\"hash\":\"")
            .and_then(|s| s.strip_suffix(b"\"}"))
            .ok_or_else(|| bad("does not end with its hash"))?;
        let mut signed = head.to_vec();
        signed.push(b'}');
        if hex::encode(Sha256::digest(&signed)).as_bytes() != hex_part {
            return Err(bad(
                "its content does not match its hash (the line was edited)",
            ));
        }
        prev = Sha256::digest(line).into();
        n = no;
    }
    Ok(n)
}
