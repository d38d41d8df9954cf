//! Rollback anchors: the newest epoch recorded per (tenant, filesystem).
//!
//! Stored in `STATE_DIR/anchors.json`, replaced atomically under an exclusive `flock` on
//! `anchors.lock` (servers record anchors; the admin CLI's `accept-rollback` sets a one-shot
//! permission to go back). Unlike the registry this file has several writers, serialized by the
//! lock.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state::StateDir;
use crate::{Error, Result};

/// File name of the anchors lock.
pub const ANCHORS_LOCK: &str = "anchors.lock";

/// One filesystem's anchor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The tenant owning the filesystem.
    pub tenant: String,
    /// Newest epoch recorded.
    pub epoch: u64,
    /// Metadata digest at that epoch (hex).
    pub digest: String,
    /// An admin accepted a rollback: the next older epoch is accepted once.
    pub accept_rollback: bool,
}

/// Outcome of an anchor operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Accepted; the newest recorded epoch.
    Ok(u64),
    /// `epoch` is older than the recorded newest epoch.
    Rollback(u64),
    /// The filesystem belongs to another tenant.
    OtherTenant,
}

type Anchors = BTreeMap<String, Anchor>;

fn with_anchors<T>(state: &StateDir, write: bool, f: impl FnOnce(&mut Anchors) -> T) -> Result<T> {
    use std::os::unix::io::AsRawFd;
    let lock_path = state.file(ANCHORS_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    // SAFETY: flock on a valid fd owned by `lock`; the lock is released when it is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(&lock_path, std::io::Error::last_os_error()));
    }
    let path = state.file(crate::state::ANCHORS_FILE);
    let mut anchors: Anchors = load(&path)?;
    let out = f(&mut anchors);
    if write {
        let json =
            serde_json::to_vec_pretty(&anchors).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::state::write_atomic(&path, &json)?;
    }
    drop(lock);
    Ok(out)
}

fn load(path: &Path) -> Result<Anchors> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::bad_state(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Anchors::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Records `epoch` for `fs_uuid` unless it is older than the recorded one.
pub fn record(
    state: &StateDir,
    tenant: &str,
    fs_uuid: &str,
    epoch: u64,
    digest: &str,
) -> Result<Check> {
    with_anchors(state, true, |a| match a.get_mut(fs_uuid) {
        Some(cur) if cur.tenant != tenant => Check::OtherTenant,
        Some(cur) if epoch < cur.epoch && !cur.accept_rollback => Check::Rollback(cur.epoch),
        Some(cur) => {
            cur.epoch = epoch;
            cur.digest = digest.to_string();
            cur.accept_rollback = false;
            Check::Ok(epoch)
        }
        None => {
            a.insert(
                fs_uuid.to_string(),
                Anchor {
                    tenant: tenant.to_string(),
                    epoch,
                    digest: digest.to_string(),
                    accept_rollback: false,
                },
            );
            Check::Ok(epoch)
        }
    })
}

/// Checks that `epoch` is not older than the recorded epoch of `fs_uuid`.
pub fn check(state: &StateDir, tenant: &str, fs_uuid: &str, epoch: u64) -> Result<Check> {
    with_anchors(state, false, |a| match a.get(fs_uuid) {
        Some(cur) if cur.tenant != tenant => Check::OtherTenant,
        Some(cur) if epoch < cur.epoch && !cur.accept_rollback => Check::Rollback(cur.epoch),
        Some(cur) => Check::Ok(cur.epoch),
        None => Check::Ok(epoch),
    })
}

/// Admin: lets `fs_uuid` go back to an older epoch once (at its next anchor).
pub fn accept_rollback(state: &StateDir, fs_uuid: &str) -> Result<()> {
    with_anchors(state, true, |a| match a.get_mut(fs_uuid) {
        Some(cur) => {
            cur.accept_rollback = true;
            Ok(())
        }
        None => Err(Error::Invalid(format!(
            "no anchor for filesystem {fs_uuid}"
        ))),
    })?
}
