//! Where the wrapping key of a filesystem comes from.
//!
//! The master key of a filesystem is stored only wrapped (see [`crate::crypto::slots`]); a
//! [`KeySource`] supplies the key that unwraps it. Two implementations: [`file::KeyFile`] (key
//! slot kind 1, a local key file, the single-machine default) and the key service client (kind 2,
//! `digimedfs_keyclient::KeyService`, whose keys never leave the service).

pub mod file;

pub use file::KeyFile;

use crate::crypto::{MasterKey, WrappingKey};
use crate::format::superblock::KeySlot;
use crate::Result;

/// Checks a tenant id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`. One rule for mkfs and the key
/// service, so every tenant a filesystem names is one the key service can hold (and no tenant
/// carries spaces or slashes into file names, logs or URLs).
pub fn check_tenant_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!(
            "tenant id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// What a key source may bind a key slot to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotContext {
    /// The filesystem's UUID.
    pub fs_uuid: [u8; 16],
    /// The tenant the filesystem belongs to.
    pub tenant: String,
}

/// A source of the key that wraps a filesystem's master key.
///
/// Local sources (a key file) hand out a wrapping key and use the default slot methods; a remote
/// source (the key service) overrides [`KeySource::seal_slot`] and [`KeySource::open_slot`] so
/// that its key never leaves the service.
pub trait KeySource: Send + Sync {
    /// Short description for messages, e.g. `key file /etc/x.key`.
    fn describe(&self) -> String;
    /// The kind code stored in the key slot (1 = key file, 2 = key service).
    fn kind(&self) -> u8;
    /// The wrapping key for the filesystem `fs_uuid` (local sources only).
    fn wrapping_key(&self, fs_uuid: &[u8; 16]) -> Result<WrappingKey>;
    /// Wraps `master` into key slot number `index`.
    fn seal_slot(&self, index: u8, ctx: &SlotContext, master: &MasterKey) -> Result<KeySlot> {
        let wrapping = self.wrapping_key(&ctx.fs_uuid)?;
        Ok(KeySlot::seal(
            index,
            self.kind(),
            Vec::new(),
            &wrapping,
            &ctx.fs_uuid,
            master,
        ))
    }
    /// Unwraps the master key from `slot`; `Ok(None)` if this source's key does not open it.
    fn open_slot(&self, slot: &KeySlot, ctx: &SlotContext) -> Result<Option<MasterKey>> {
        let wrapping = self.wrapping_key(&ctx.fs_uuid)?;
        Ok(slot.open(&wrapping, &ctx.fs_uuid))
    }
    /// Records the filesystem's epoch and metadata digest outside the storage (rollback anchor).
    fn anchor(&self, _ctx: &SlotContext, _epoch: u64, _digest: &[u8; 32]) -> Result<()> {
        Ok(())
    }
    /// Fails if `epoch` is older than the newest epoch recorded for this filesystem, or equal to
    /// it with a metadata digest other than `digest` (the superblock's): either is a rollback.
    fn check_anchor(&self, _ctx: &SlotContext, _epoch: u64, _digest: &[u8; 32]) -> Result<()> {
        Ok(())
    }
    /// A handle the open filesystem keeps to record its epoch when it closes; `None` for
    /// sources that keep no anchor (a key file).
    fn anchor_handle(&self) -> Option<std::sync::Arc<dyn KeySource>> {
        None
    }
}
