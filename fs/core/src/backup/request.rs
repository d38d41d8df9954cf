//! The request protocol with the daemon: a request file (`begin`/`end` and a nonce) and a
//! reply file in the backup directory of the backing directory. A reply never repeats what
//! was read from storage, and a failure carries only the kind of error and its errno.

use super::{
    BACKUP_DIR, KEPT_DIR, MANIFEST, POINT_DIR, POINT_NEW_DIR, PROGRESS, REPLY, REQUEST,
    SEGMENT_DIR, SEGMENT_INDEX,
};
use crate::confined::{Access, Confined};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest request file read.
const REQUEST_MAX: u64 = 256;
/// Longest reply file read.
const REPLY_MAX: u64 = 64 << 10;
/// Longest progress file read.
const PROGRESS_MAX: u64 = 256;
/// How often a waiting client reads the daemon's progress, and at most how often the daemon
/// rewrites it.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a client waiting for the daemon's reply knows (see [`request_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Since the request was written.
    pub elapsed: Duration,
    /// Segments of the metadata dump the daemon finished for this request, if it reports them
    /// (daemons of earlier builds do not; nor does one that has not taken the request yet).
    pub segments: Option<u64>,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "waiting for the daemon: {} s", self.elapsed.as_secs())?;
        if let Some(n) = self.segments {
            write!(f, ", {n} metadata segments dumped")?;
        }
        Ok(())
    }
}

/// What the daemon is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take a point (replacing any existing one).
    Begin,
    /// End the current point.
    End,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Begin => "begin",
            Action::End => "end",
        }
    }
}

/// Whether a daemon holds the mount lock of `backing` (on any host that honours flock there).
pub fn daemon_holds_lock(backing: &Confined) -> Result<bool> {
    let path = backing.display(crate::backing::LOCK_FILE);
    // flock needs no write access: a backup operator may only read the backing directory.
    let Some(file) = backing.try_open_file(crate::backing::LOCK_FILE, Access::Read)? else {
        return Ok(false);
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Asks the daemon serving `backing` (on whichever host) to carry out `action`; waits up to
/// `timeout` for its reply and returns the daemon's message.
pub fn request(backing: &Confined, action: Action, timeout: Duration) -> Result<String> {
    request_with(backing, action, timeout, &mut |_| {})
}

/// [`request`], calling `on_wait` about every [`PROGRESS_EVERY`] while it waits, with the
/// time elapsed and the progress the daemon reports.
pub fn request_with(
    backing: &Confined,
    action: Action,
    timeout: Duration,
    on_wait: &mut dyn FnMut(Waiting),
) -> Result<String> {
    backing.create_dir_all(BACKUP_DIR)?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    backing.write_atomically(
        &format!("{BACKUP_DIR}/{REQUEST}"),
        format!("{} {nonce}\n", action.word()).as_bytes(),
    )?;
    let reply_rel = format!("{BACKUP_DIR}/{REPLY}");
    let progress_rel = format!("{BACKUP_DIR}/{PROGRESS}");
    let start = Instant::now();
    let mut next_report = start + PROGRESS_EVERY;
    loop {
        if let Ok(Some(raw)) = backing.read_small(&reply_rel, REPLY_MAX) {
            let text = String::from_utf8_lossy(&raw);
            let mut parts = text.trim_end().splitn(3, ' ');
            if parts.next() == Some(nonce.as_str()) {
                let status = parts.next().unwrap_or_default();
                let msg = parts.next().unwrap_or_default().replace("\\n", "\n");
                return if status == "ok" {
                    Ok(msg)
                } else {
                    Err(Error::invalid(format!("the daemon refused: {msg}")))
                };
            }
        }
        if start.elapsed() > timeout {
            let _ = backing.remove_file(&format!("{BACKUP_DIR}/{REQUEST}"));
            return Err(Error::Busy {
                what: format!(
                    "no answer from the daemon serving {} within {} s (is it mounted read-write?)",
                    backing.path().display(),
                    timeout.as_secs()
                ),
            });
        }
        if Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            let segments = match backing.read_small(&progress_rel, PROGRESS_MAX) {
                Ok(Some(raw)) => parse_progress(&String::from_utf8_lossy(&raw), &nonce),
                _ => None,
            };
            on_wait(Waiting {
                elapsed: start.elapsed(),
                segments,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The segments a progress file `text` reports for request `nonce`: `NONCE segments N`, then
/// possibly more `NAME VALUE` pairs, which this version ignores. Another request's progress,
/// or anything else, is none.
pub fn parse_progress(text: &str, nonce: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    if words.next() != Some(nonce) {
        return None;
    }
    while let (Some(name), Some(value)) = (words.next(), words.next()) {
        if name == "segments" {
            return value.parse().ok();
        }
    }
    None
}

/// Daemon side: reports that `segments` segments of the dump for request `nonce` are done
/// (see [`parse_progress`]). Only our own numbers and the validated nonce are written.
pub fn write_progress(backing: &Confined, nonce: &str, segments: u64) -> Result<()> {
    backing.write_atomically(
        &format!("{BACKUP_DIR}/{PROGRESS}"),
        format!("{nonce} segments {segments}\n").as_bytes(),
    )
}

/// The backing directory `path` names: a backing directory itself, or the mountpoint of a
/// digimedfs mount on this host (whose /proc/mounts source is its backing directory).
pub fn resolve_backing(path: &Path) -> Result<PathBuf> {
    let canon = path.canonicalize().map_err(|e| Error::io(path, e))?;
    if canon.join(crate::backing::SUPERBLOCK).is_file() {
        return Ok(canon);
    }
    if let Some(m) = crate::mounts::at(&crate::mounts::current(), &canon) {
        if m.fstype == "fuse.digimedfs" && m.source.join(crate::backing::SUPERBLOCK).is_file() {
            return Ok(m.source);
        }
    }
    Err(Error::invalid(format!(
        "{}: neither a digimedfs backing directory nor the mountpoint of one on this host",
        path.display()
    )))
}

/// Ends the point of `backing`: through the daemon, or directly if none runs.
pub fn end(backing: &Path, timeout: Duration) -> Result<String> {
    let dir = Confined::open(backing)?;
    if daemon_holds_lock(&dir)? {
        return request(&dir, Action::End, timeout);
    }
    let existed = retire_point(&dir)?;
    Ok(if existed {
        "backup point ended".into()
    } else {
        "no backup point was active".into()
    })
}

/// Removes the current point (and any point being built); its metadata segments and manifest
/// move to [`KEPT_DIR`] (replacing what was kept), so the next point links the unchanged
/// segments. Returns whether there was a point. The manifest moves first: a point interrupted
/// here has no manifest, so it is not taken for a complete one, and the next begin or end
/// removes it.
pub(crate) fn retire_point(dir: &Confined) -> Result<bool> {
    let cur = format!("{BACKUP_DIR}/{POINT_DIR}");
    let kept = format!("{BACKUP_DIR}/{KEPT_DIR}");
    let existed = dir.status(&cur)?.is_some();
    if existed
        && dir.status(&format!("{cur}/{MANIFEST}"))?.is_some()
        && dir
            .status(&format!("{cur}/{SEGMENT_DIR}/{SEGMENT_INDEX}"))?
            .is_some()
    {
        dir.remove_tree(&kept)?;
        dir.create_dir(&kept)?;
        dir.rename(&format!("{cur}/{MANIFEST}"), &format!("{kept}/{MANIFEST}"))?;
        dir.rename(
            &format!("{cur}/{SEGMENT_DIR}"),
            &format!("{kept}/{SEGMENT_DIR}"),
        )?;
    }
    dir.remove_tree(&cur)?;
    dir.remove_tree(&format!("{BACKUP_DIR}/{POINT_NEW_DIR}"))?;
    Ok(existed)
}

/// Daemon side: takes a pending request out of `backing` (removing it). Only the request
/// words are used (`begin`/`end` and a hex nonce); nothing else of the file is repeated.
pub fn take_request(backing: &Confined) -> Result<Option<(Action, String)>> {
    let rel = format!("{BACKUP_DIR}/{REQUEST}");
    // Claimed by a rename, so a request written while this one is read is not removed unread.
    let claimed = format!("{BACKUP_DIR}/{REQUEST}.taken");
    match backing.rename(&rel, &claimed) {
        Ok(()) => {}
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    let raw = backing.read_small(&claimed, REQUEST_MAX);
    backing.remove_file(&claimed)?;
    let raw = raw?.unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let mut parts = text.split_whitespace();
    let action = match parts.next() {
        Some("begin") => Action::Begin,
        Some("end") => Action::End,
        _ => {
            tracing::warn!("ignoring a malformed backup request");
            return Ok(None);
        }
    };
    let nonce = parts.next().unwrap_or_default();
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        tracing::warn!("ignoring a backup request without a valid nonce");
        return Ok(None);
    }
    Ok(Some((action, nonce.to_string())))
}

/// Daemon side: answers the request `nonce`. A success carries the point's description (our
/// own words and numbers); a failure only the kind of error and its errno, never the error's
/// text: that may hold things read from storage or from the VM, and the reply goes to storage.
/// The daemon's log has the whole error.
pub fn write_reply(backing: &Confined, nonce: &str, result: &Result<String>) -> Result<()> {
    let (status, msg) = match result {
        Ok(m) => ("ok", m.clone()),
        Err(e) => ("error", reply_for_error(e)),
    };
    backing.write_atomically(
        &format!("{BACKUP_DIR}/{REPLY}"),
        format!("{nonce} {status} {}\n", msg.replace('\n', "\\n")).as_bytes(),
    )
}

/// What a reply says about a failed request (see [`write_reply`]).
fn reply_for_error(e: &Error) -> String {
    let kind = match e {
        Error::Posix { .. } | Error::Io { .. } => "the filesystem refused or failed",
        Error::Integrity { .. } => "an integrity check failed",
        Error::WrongKey { .. } => "a key was refused",
        Error::Format { .. } | Error::Meta { .. } => "the stored data is damaged",
        Error::Busy { .. } => "the filesystem is busy or fenced",
        Error::Invalid { .. } => "the request is not possible now",
    };
    let errno = e.errno();
    format!(
        "{kind} ({}, errno {errno}); the log of the daemon that mounts the filesystem has the details",
        std::io::Error::from_raw_os_error(errno)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn progress_is_read_only_for_this_request() {
        assert_eq!(
            parse_progress(&format!("{NONCE} segments 12\n"), NONCE),
            Some(12)
        );
        // Fields a later daemon adds are skipped.
        assert_eq!(
            parse_progress(
                &format!("{NONCE} records 9000 segments 3 bytes 77\n"),
                NONCE
            ),
            Some(3)
        );
        assert_eq!(
            parse_progress(&format!("{NONCE} records 9000\n"), NONCE),
            None
        );
        assert_eq!(parse_progress("ffff segments 12\n", NONCE), None);
        assert_eq!(
            parse_progress(&format!("{NONCE} segments x\n"), NONCE),
            None
        );
        assert_eq!(parse_progress("", NONCE), None);
    }

    #[test]
    fn waiting_line_shows_segments_only_when_reported() {
        let w = Waiting {
            elapsed: Duration::from_millis(3500),
            segments: None,
        };
        assert_eq!(w.to_string(), "waiting for the daemon: 3 s");
        let w = Waiting {
            segments: Some(7),
            ..w
        };
        assert_eq!(
            w.to_string(),
            "waiting for the daemon: 3 s, 7 metadata segments dumped"
        );
    }

    /// A daemon (a thread here) that takes the request, optionally reports progress, and
    /// replies once the client has shown what it reported; returns what the client saw.
    fn serve(with_progress: bool) -> (Result<String>, Vec<Waiting>) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = Confined::open(tmp.path()).expect("open");
        let daemon_dir = dir.clone();
        let (shown, seen_by_daemon) = std::sync::mpsc::channel::<Waiting>();
        let daemon = std::thread::spawn(move || {
            let (action, nonce) = loop {
                if let Some(r) = take_request(&daemon_dir).expect("take") {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(action, Action::Begin);
            if with_progress {
                write_progress(&daemon_dir, &nonce, 5).expect("progress");
            }
            // Until the client showed the progress (or, without, showed anything); a client
            // that gave up drops its sender and ends this wait.
            while let Ok(w) = seen_by_daemon.recv() {
                if !with_progress || w.segments.is_some() {
                    break;
                }
            }
            write_reply(&daemon_dir, &nonce, &Ok("point p taken".into())).expect("reply");
        });
        let mut seen = Vec::new();
        let r = request_with(&dir, Action::Begin, Duration::from_secs(30), &mut |w| {
            seen.push(w);
            let _ = shown.send(w);
        });
        drop(shown);
        daemon.join().expect("daemon");
        (r, seen)
    }

    #[test]
    fn a_daemon_reporting_progress_is_shown_and_an_older_one_still_understood() {
        let (r, seen) = serve(true);
        assert_eq!(r.expect("reply"), "point p taken");
        assert!(!seen.is_empty());
        assert!(seen.iter().any(|w| w.segments == Some(5)), "{seen:?}");
        assert!(seen.windows(2).all(|p| p[0].elapsed <= p[1].elapsed));
        // A daemon of an earlier build writes only the reply: elapsed time alone.
        let (r, seen) = serve(false);
        assert_eq!(r.expect("reply"), "point p taken");
        assert!(!seen.is_empty());
        assert!(seen.iter().all(|w| w.segments.is_none()), "{seen:?}");
    }
}
