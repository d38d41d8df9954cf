//! Rollback anchors: the newest epoch recorded per filesystem, and the tenant it belongs to.
//!
//! A filesystem is bound to a tenant when that tenant's key wraps its master key (`/v1/wrap`
//! at mkfs) or, for a filesystem not bound yet (made before binding existed, or whose only
//! claim came from another tenant's wrap and was never anchored), when a wrap bound to that
//! tenant opens (`/v1/unwrap`, `/v1/rewrap`): the AEAD's associated data names the tenant, so
//! only the owner can do that. Anchors are recorded and checked only for the bound tenant, so
//! another tenant, who can read the filesystem UUID in the plaintext superblock, can neither
//! claim nor poison a new filesystem's anchor.
//!
//! Stored in `STATE_DIR/anchors.json`, replaced atomically under an exclusive `flock` on
//! `anchors.lock` (servers bind and record; the admin CLI's `accept-rollback` sets a one-shot
//! permission to go back and `anchor clear` removes an entry). Unlike the registry this file
//! has several writers, serialized by the lock.

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
    /// Newest epoch recorded (0 and an empty digest: bound, not anchored yet).
    pub epoch: u64,
    /// Metadata digest at that epoch (hex; empty while only bound).
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
    /// `epoch` is the recorded epoch, but the metadata digest differs from the recorded one
    /// (the recorded digest is given): the metadata was replaced or rolled back under the
    /// newest superblock.
    Replaced(String),
    /// The filesystem belongs to another tenant.
    OtherTenant,
    /// No key of the filesystem was wrapped or unwrapped by any tenant here: nothing to
    /// anchor against, and no proof that the caller owns it.
    Unbound,
}

/// How a tenant showed that a filesystem's key is wrapped under its KEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// It wrapped a key for the filesystem (mkfs): binds only a filesystem not bound yet.
    Wrap,
    /// A wrap bound to it and the filesystem opened: also takes over a binding that came from
    /// another tenant's wrap alone and was never anchored.
    Unwrap,
}

type Anchors = BTreeMap<String, Anchor>;

/// Runs `f` on the anchors under the lock; saves them if `f` says it changed them.
fn with_anchors<T>(state: &StateDir, f: impl FnOnce(&mut Anchors) -> (T, bool)) -> Result<T> {
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
    let (out, changed) = f(&mut anchors);
    if changed {
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

/// Binds `fs_uuid` to `tenant` (see [`Proof`]); [`Check::OtherTenant`] if it stays bound to
/// another tenant.
pub fn bind(state: &StateDir, tenant: &str, fs_uuid: &str, proof: Proof) -> Result<Check> {
    with_anchors(state, |a| match a.get_mut(fs_uuid) {
        Some(cur) if cur.tenant == tenant => (Check::Ok(cur.epoch), false),
        Some(cur) if proof == Proof::Unwrap && cur.digest.is_empty() => {
            cur.tenant = tenant.to_string();
            cur.epoch = 0;
            cur.accept_rollback = false;
            (Check::Ok(0), true)
        }
        Some(_) => (Check::OtherTenant, false),
        None => {
            a.insert(
                fs_uuid.to_string(),
                Anchor {
                    tenant: tenant.to_string(),
                    epoch: 0,
                    digest: String::new(),
                    accept_rollback: false,
                },
            );
            (Check::Ok(0), true)
        }
    })
}

/// Records `epoch` and `digest` for `fs_uuid` unless that would go back: an older epoch, or the
/// recorded epoch with another digest (unless an admin accepted a rollback), or the filesystem
/// is not bound to `tenant`.
pub fn record(
    state: &StateDir,
    tenant: &str,
    fs_uuid: &str,
    epoch: u64,
    digest: &str,
) -> Result<Check> {
    with_anchors(state, |a| match a.get_mut(fs_uuid) {
        None => (Check::Unbound, false),
        Some(cur) => match compare(cur, tenant, epoch, Some(digest)) {
            Check::Ok(_) => {
                let changed = cur.epoch != epoch || cur.digest != digest || cur.accept_rollback;
                cur.epoch = epoch;
                cur.digest = digest.to_string();
                cur.accept_rollback = false;
                (Check::Ok(epoch), changed)
            }
            refused => (refused, false),
        },
    })
}

/// Checks `epoch` (and `digest`, if the client sent it) of `fs_uuid` for `tenant` against the
/// anchor: an older epoch is a rollback; the recorded epoch with another digest is a
/// replacement of the metadata under the newest superblock.
pub fn check(
    state: &StateDir,
    tenant: &str,
    fs_uuid: &str,
    epoch: u64,
    digest: Option<&str>,
) -> Result<Check> {
    with_anchors(state, |a| {
        let c = match a.get(fs_uuid) {
            None => Check::Unbound,
            Some(cur) => match compare(cur, tenant, epoch, digest) {
                Check::Ok(_) => Check::Ok(cur.epoch.max(epoch)),
                refused => refused,
            },
        };
        (c, false)
    })
}

/// `epoch`/`digest` of `tenant` against the anchor `cur`.
fn compare(cur: &Anchor, tenant: &str, epoch: u64, digest: Option<&str>) -> Check {
    if cur.tenant != tenant {
        return Check::OtherTenant;
    }
    if cur.accept_rollback {
        return Check::Ok(epoch);
    }
    if epoch < cur.epoch {
        return Check::Rollback(cur.epoch);
    }
    match digest {
        Some(d) if epoch == cur.epoch && !cur.digest.is_empty() && d != cur.digest => {
            Check::Replaced(cur.digest.clone())
        }
        _ => Check::Ok(epoch),
    }
}

/// Admin: lets `fs_uuid` go back to an older epoch once (at its next anchor).
pub fn accept_rollback(state: &StateDir, fs_uuid: &str) -> Result<()> {
    with_anchors(state, |a| match a.get_mut(fs_uuid) {
        Some(cur) => {
            cur.accept_rollback = true;
            (Ok(()), true)
        }
        None => (
            Err(Error::Invalid(format!(
                "no anchor for filesystem {fs_uuid}"
            ))),
            false,
        ),
    })?
}

/// Admin: the anchor of `fs_uuid`, if any.
pub fn get(state: &StateDir, fs_uuid: &str) -> Result<Option<Anchor>> {
    with_anchors(state, |a| (a.get(fs_uuid).cloned(), false))
}

/// Admin: removes the anchor and the tenant binding of `fs_uuid`; returns what was removed.
/// The next unwrap by the tenant whose key opens the filesystem binds it again.
pub fn clear(state: &StateDir, fs_uuid: &str) -> Result<Anchor> {
    with_anchors(state, |a| match a.remove(fs_uuid) {
        Some(old) => (Ok(old), true),
        None => (
            Err(Error::Invalid(format!(
                "no anchor for filesystem {fs_uuid}"
            ))),
            false,
        ),
    })?
}
