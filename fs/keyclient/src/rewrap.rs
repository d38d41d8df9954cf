//! Moving a filesystem's key-service slots to the tenant's newest key version without touching
//! data (`digimedfs rewrap`).

use crate::{slot_version, KeyService, KIND};
use digimedfs_core::keysource::{KeySource, SlotContext};
use std::path::Path;

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
