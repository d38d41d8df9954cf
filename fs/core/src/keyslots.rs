//! Key slot management (`digimedfs key list|add|remove|change`): which keys unlock a
//! filesystem, changed offline without touching data or metadata records.
//!
//! Every change holds the mount lock (so it is refused while the filesystem is mounted, with the
//! lock's own message), unlocks the superblock with a current key, edits the slot list, checks
//! that every new slot opens to the same master key (its superblock MAC verifies), and writes the
//! result as ONE atomic superblock rewrite ([`BackingDir::write_superblock`]: primary, then the
//! copy). The epoch, flags and metadata digest are kept, as `digimedfs rewrap` keeps them: the
//! metadata store and the key service's rollback anchor stay bound to the same superblock state,
//! and a fenced-out mount elsewhere sees a different primary and stays fenced.
//!
//! Guarantees: at most 8 slots; no two slots of the same kind with the same key id (for key
//! files, whose slots carry no key id, no two slots the same key opens); never zero slots;
//! removing the slot the given key opened needs `force`. A crash leaves the old or the new slot
//! set: before the primary's rename both copies are old; after it the primary is new and wins
//! (see [`crate::backing::unlock_superblock`], which refuses a key that only the stale copy
//! lists). Key material stays in zeroizing types and is never part of any report.

use crate::backing::{unlock_superblock, BackingDir, SUPERBLOCK, SUPERBLOCK_BAK};
use crate::crypto::{FsKeys, MasterKey};
use crate::format::format_uuid;
use crate::format::superblock::{KeySlot, Superblock, MAX_SLOTS};
use crate::keysource::{KeySource, SlotContext};
use crate::{Error, Result};
use std::path::Path;

/// Slot kind of a key file.
pub const KIND_KEY_FILE: u8 = 1;
/// Slot kind of the key service.
pub const KIND_KEY_SERVICE: u8 = 2;

/// A key slot as listed: everything but the wrapped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot number.
    pub index: u8,
    /// Key source kind (1 key file, 2 key service).
    pub kind: u8,
    /// The key id within its source (key service: the key version, le32; key file: empty).
    pub key_id: Vec<u8>,
}

impl SlotInfo {
    fn of(slot: &KeySlot) -> SlotInfo {
        SlotInfo {
            index: slot.index,
            kind: slot.kind,
            key_id: slot.key_id.clone(),
        }
    }
}

impl std::fmt::Display for SlotInfo {
    /// `slot 0: key file`, `slot 1: key service, key version 3`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slot {}: ", self.index)?;
        let version = <[u8; 4]>::try_from(self.key_id.as_slice()).map(u32::from_le_bytes);
        match (self.kind, version) {
            (KIND_KEY_FILE, _) if self.key_id.is_empty() => f.write_str("key file"),
            (KIND_KEY_SERVICE, Ok(v)) => write!(f, "key service, key version {v}"),
            (KIND_KEY_FILE, _) => write!(f, "key file, key id {}", hex::encode(&self.key_id)),
            (KIND_KEY_SERVICE, Err(_)) => {
                write!(
                    f,
                    "key service, malformed key id {}",
                    hex::encode(&self.key_id)
                )
            }
            (kind, _) => write!(
                f,
                "unknown kind {kind}, key id {}",
                if self.key_id.is_empty() {
                    "(none)".to_string()
                } else {
                    hex::encode(&self.key_id)
                }
            ),
        }
    }
}

/// What `digimedfs key list` shows.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Filesystem UUID, hyphenated.
    pub fs_uuid: String,
    /// Tenant.
    pub tenant: String,
    /// The slots, as the superblock lists them.
    pub slots: Vec<SlotInfo>,
    /// Which superblock file the list comes from (the primary unless it does not decode).
    pub source: &'static str,
    /// The other copy decodes but lists other slots (an interrupted update; the next read-write
    /// mount, key change or `fsck.digimed` rewrites it).
    pub copy_differs: bool,
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "filesystem {} (tenant {}): {} of {MAX_SLOTS} key slots in use",
            self.fs_uuid,
            self.tenant,
            self.slots.len()
        )?;
        for s in &self.slots {
            writeln!(f, "  {s}")?;
        }
        if self.source != SUPERBLOCK {
            writeln!(
                f,
                "(read from {}: the primary superblock does not decode)",
                self.source
            )?;
        }
        if self.copy_differs {
            writeln!(
                f,
                "note: {SUPERBLOCK_BAK} lists other slots (an interrupted update); the primary \
                 is the one in force, and the next read-write mount, key change or fsck.digimed \
                 repair rewrites the copy"
            )?;
        }
        Ok(())
    }
}

/// Lists the key slots of the filesystem in `backing`, without a key: read from the primary
/// superblock (its copy if the primary does not decode), unauthenticated.
pub fn list(backing: &Path) -> Result<Listing> {
    let dir = BackingDir::open(backing)?;
    let decode = |name| {
        dir.read_superblock(name)
            .and_then(|b| Superblock::decode_unverified(&b))
    };
    let (primary, copy) = (decode(SUPERBLOCK), decode(SUPERBLOCK_BAK));
    let (sb, source, other) = match (primary, copy) {
        (Ok(p), c) => (p, SUPERBLOCK, c.ok()),
        (Err(_), Ok(c)) => (c, SUPERBLOCK_BAK, None),
        (Err(e), Err(_)) => return Err(e),
    };
    let copy_differs = other.is_some_and(|c| c.slots != sb.slots);
    Ok(Listing {
        fs_uuid: format_uuid(&sb.fs_uuid),
        tenant: sb.tenant.clone(),
        slots: sb.slots.iter().map(SlotInfo::of).collect(),
        source,
        copy_differs,
    })
}

/// What a key slot change did.
#[derive(Debug, Clone)]
pub struct SlotChange {
    /// Filesystem UUID, hyphenated.
    pub fs_uuid: String,
    /// The slot the current key opened.
    pub unlocked: u8,
    /// The slot added, if any.
    pub added: Option<SlotInfo>,
    /// The slot removed, if any.
    pub removed: Option<SlotInfo>,
    /// The slots after the change.
    pub slots: Vec<SlotInfo>,
}

/// The first slot in `sb` that `key` opens, with the master key; `None` if no slot opens. A
/// slot the source fails on (a retired key version, say) is skipped; its error is returned
/// only when no slot opens, as when mounting.
fn open_with(
    sb: &Superblock,
    key: &dyn KeySource,
    ctx: &SlotContext,
) -> Result<Option<(MasterKey, u8)>> {
    let mut failed = None;
    for slot in sb.slots.iter().filter(|s| s.kind == key.kind()) {
        match key.open_slot(slot, ctx) {
            Ok(Some(m)) => return Ok(Some((m, slot.index))),
            Ok(None) => {}
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(None), Err)
}

/// The unlocked superblock a change edits.
pub struct Unlocked {
    /// The superblock (MAC verified).
    pub sb: Superblock,
    /// Its working keys.
    keys: FsKeys,
    /// The master key.
    master: MasterKey,
    /// The slot the current key opened.
    pub unlocked: u8,
    /// Fs uuid and tenant.
    pub ctx: SlotContext,
    /// The backing directory, for hints (empty: not known).
    pub backing: std::path::PathBuf,
}

impl Unlocked {
    /// Unlocks `sb` (already MAC-verified under `keys`) with `current`, finding the slot it opens.
    pub fn new(sb: Superblock, keys: &FsKeys, current: &dyn KeySource) -> Result<Unlocked> {
        let ctx = SlotContext {
            fs_uuid: sb.fs_uuid,
            tenant: sb.tenant.clone(),
        };
        let (master, unlocked) = open_with(&sb, current, &ctx)?.ok_or_else(|| Error::WrongKey {
            what: format!("{} opens no key slot", current.describe()),
        })?;
        let mine = FsKeys::derive(&master, &sb.fs_uuid)?;
        // The slot must hold the master key the verified superblock was sealed with.
        if sb.encode(&mine.superblock)? != sb.encode(&keys.superblock)? {
            return Err(Error::integrity(format!(
                "key slot {unlocked} opens to another master key than the superblock's"
            )));
        }
        Ok(Unlocked {
            sb,
            keys: mine,
            master,
            unlocked,
            ctx,
            backing: std::path::PathBuf::new(),
        })
    }

    /// `digimedfs key list BACKING`, for hints.
    fn list_command(&self) -> String {
        if self.backing.as_os_str().is_empty() {
            "digimedfs key list BACKING".to_string()
        } else {
            format!("digimedfs key list {}", self.backing.display())
        }
    }

    /// Whether `new` duplicates slot `slot`: same kind and key id, or (a slot without key id,
    /// i.e. a key file) the same key.
    fn duplicates(&self, new: &dyn KeySource, sealed: &KeySlot, slot: &KeySlot) -> Result<bool> {
        if slot.kind != sealed.kind {
            return Ok(false);
        }
        if !slot.key_id.is_empty() || !sealed.key_id.is_empty() {
            return Ok(slot.key_id == sealed.key_id);
        }
        // No key ids (key files): the same key is what opens the slot.
        Ok(new.open_slot(slot, &self.ctx)?.is_some())
    }

    /// Seals the master key for `new` in slot `index`; refuses a duplicate of any existing slot
    /// (also of the slot a change replaces: the same key again changes nothing).
    fn seal_new(&self, new: &dyn KeySource, index: u8) -> Result<KeySlot> {
        let sealed = new.seal_slot(index, &self.ctx, &self.master)?;
        for slot in &self.sb.slots {
            if self.duplicates(new, &sealed, slot)? {
                let what = if slot.index == self.unlocked {
                    " (the key that unlocked it)".to_string()
                } else {
                    String::new()
                };
                return Err(Error::invalid(format!(
                    "{} is already in key slot {}{what} of {}: nothing to add",
                    new.describe(),
                    slot.index,
                    format_uuid(&self.sb.fs_uuid)
                )));
            }
        }
        Ok(sealed)
    }

    /// Adds a slot for `new` at the lowest free index. Refuses a full slot table and a
    /// duplicate.
    pub fn add(&mut self, new: &dyn KeySource) -> Result<SlotInfo> {
        if self.sb.slots.len() >= MAX_SLOTS {
            return Err(Error::invalid(format!(
                "all {MAX_SLOTS} key slots of {} are in use: remove one first (`{}` shows \
                 them)",
                format_uuid(&self.sb.fs_uuid),
                self.list_command()
            )));
        }
        let index = (0..=u8::MAX)
            .find(|i| !self.sb.slots.iter().any(|s| s.index == *i))
            .ok_or_else(|| Error::invalid("no free key slot index"))?;
        let slot = self.seal_new(new, index)?;
        let info = SlotInfo::of(&slot);
        self.sb.slots.push(slot);
        self.sb.slots.sort_by_key(|s| s.index);
        Ok(info)
    }

    /// Removes slot `index`. Refuses a slot that does not exist, the last slot, and without
    /// `force` the slot the current key opened.
    pub fn remove(&mut self, index: u8, force: bool) -> Result<SlotInfo> {
        let uuid = format_uuid(&self.sb.fs_uuid);
        let pos = self
            .sb
            .slots
            .iter()
            .position(|s| s.index == index)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{uuid} has no key slot {index} (`{}` shows the slots)",
                    self.list_command()
                ))
            })?;
        if self.sb.slots.len() == 1 {
            return Err(Error::invalid(format!(
                "key slot {index} is the last key slot of {uuid}: without it nothing unlocks \
                 the filesystem; add another key first"
            )));
        }
        if index == self.unlocked && !force {
            return Err(Error::invalid(format!(
                "key slot {index} is the slot the given key opens: after removing it, this key \
                 no longer unlocks {uuid}. Give the key of another slot, or add --force"
            )));
        }
        let removed = self.sb.slots.remove(pos);
        Ok(SlotInfo::of(&removed))
    }

    /// Replaces the slot the current key opened by one for `new`, at the same index.
    pub fn change(&mut self, new: &dyn KeySource) -> Result<(SlotInfo, SlotInfo)> {
        let index = self.unlocked;
        let slot = self.seal_new(new, index)?;
        let added = SlotInfo::of(&slot);
        let old = self
            .sb
            .slots
            .iter_mut()
            .find(|s| s.index == index)
            .ok_or_else(|| Error::invalid(format!("no key slot {index}")))?;
        let removed = SlotInfo::of(old);
        *old = slot;
        Ok((removed, added))
    }

    /// The superblock bytes after the change, once the new slot `new.1` opens with `new.0` to
    /// the same master key: the MAC verifies under the keys derived from what it opens to.
    pub fn encode_checked(&self, new: Option<(&dyn KeySource, u8)>) -> Result<Vec<u8>> {
        let bytes = self.sb.encode(&self.keys.superblock)?;
        if let Some((new, index)) = new {
            let slot = self
                .sb
                .slots
                .iter()
                .find(|s| s.index == index)
                .ok_or_else(|| Error::invalid(format!("no key slot {index}")))?;
            let master = new.open_slot(slot, &self.ctx)?.ok_or_else(|| {
                Error::integrity(format!(
                    "the new key slot {index} does not open with {}",
                    new.describe()
                ))
            })?;
            let check = FsKeys::derive(&master, &self.sb.fs_uuid)?;
            Superblock::verify(&bytes, &check.superblock).map_err(|_| {
                Error::integrity(
                    "the new key slot opens to a different master key; superblock left as it was",
                )
            })?;
        }
        Ok(bytes)
    }
}

/// What to change.
pub enum Edit<'a> {
    /// Add a slot for this key source.
    Add(&'a dyn KeySource),
    /// Remove this slot (`force`: even the one the current key opens).
    Remove {
        /// The slot index.
        index: u8,
        /// Allow removing the slot the current key opened.
        force: bool,
    },
    /// Replace the slot the current key opened with one for this key source.
    Change(&'a dyn KeySource),
}

/// Applies `edit` to the filesystem in `backing`, unlocked with `current`, offline: refused
/// while mounted (the mount lock), and by the key service's rollback anchor like a mount.
pub fn edit(backing: &Path, current: &dyn KeySource, edit: Edit<'_>) -> Result<SlotChange> {
    let dir = BackingDir::open(backing)?;
    let _lock = dir.lock(false)?;
    let (sb, keys) = unlock_superblock(&dir, current)?;
    let mut u = Unlocked::new(sb, &keys, current)?;
    u.backing = dir.root().to_path_buf();
    current.check_anchor(&u.ctx, u.sb.epoch, &u.sb.meta_digest)?;
    let (added, removed, new) = match edit {
        Edit::Add(new) => {
            let added = u.add(new)?;
            let index = added.index;
            (Some(added), None, Some((new, index)))
        }
        Edit::Remove { index, force } => (None, Some(u.remove(index, force)?), None),
        Edit::Change(new) => {
            let (removed, added) = u.change(new)?;
            let index = added.index;
            (Some(added), Some(removed), Some((new, index)))
        }
    };
    let bytes = u.encode_checked(new)?;
    dir.write_superblock(&bytes)?;
    Ok(SlotChange {
        fs_uuid: format_uuid(&u.sb.fs_uuid),
        unlocked: u.unlocked,
        added,
        removed,
        slots: u.sb.slots.iter().map(SlotInfo::of).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::mkfs::{new_superblock, MkfsOptions};
    use crate::testing::StaticKey;

    fn unlocked(key: &StaticKey) -> Unlocked {
        let (sb, master) = new_superblock(key, &MkfsOptions::default()).unwrap();
        let keys = FsKeys::derive(&master, &sb.fs_uuid).unwrap();
        Unlocked::new(sb, &keys, key).unwrap()
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn add_then_both_keys_open_and_the_mac_verifies() {
        let (a, b) = (StaticKey([1; 32]), StaticKey([2; 32]));
        let mut u = unlocked(&a);
        let added = u.add(&b).unwrap();
        assert_eq!(added.index, 1);
        let bytes = u.encode_checked(Some((&b, 1))).unwrap();
        // The check opens the new slot itself: A does not open slot 1.
        assert!(u.encode_checked(Some((&a, 1))).is_err());
        let sb = Superblock::decode_unverified(&bytes).unwrap();
        assert_eq!(sb.slots.len(), 2);
        for key in [&a, &b] {
            let (m, _) = open_with(&sb, key, &u.ctx).unwrap().expect("opens");
            let k = FsKeys::derive(&m, &sb.fs_uuid).unwrap();
            Superblock::verify(&bytes, &k.superblock).unwrap();
        }
    }

    #[test]
    fn duplicate_key_is_refused() {
        let a = StaticKey([1; 32]);
        let mut u = unlocked(&a);
        let e = err(u.add(&StaticKey([1; 32])));
        assert!(e.contains("already in key slot 0"), "{e}");
        assert_eq!(u.sb.slots.len(), 1);
        u.add(&StaticKey([2; 32])).unwrap();
        let e = err(u.add(&StaticKey([2; 32])));
        assert!(e.contains("already in key slot 1"), "{e}");
        // A change to the key it replaces is a duplicate as well.
        let e = err(u.change(&StaticKey([1; 32])));
        assert!(e.contains("already in key slot 0"), "{e}");
    }

    #[test]
    fn same_kind_and_key_id_is_a_duplicate() {
        let a = StaticKey([1; 32]);
        let mut u = unlocked(&a);
        let id = 7u32.to_le_bytes().to_vec();
        let mk = |index| KeySlot {
            index,
            kind: KIND_KEY_SERVICE,
            key_id: id.clone(),
            wrapped: vec![0; 92],
        };
        u.sb.slots.push(mk(1));
        let sealed = mk(2);
        assert!(u.duplicates(&a, &sealed, &u.sb.slots[1]).unwrap());
        let other = KeySlot {
            key_id: 8u32.to_le_bytes().to_vec(),
            ..mk(2)
        };
        assert!(!u.duplicates(&a, &other, &u.sb.slots[1]).unwrap());
    }

    #[test]
    fn full_slot_table_is_refused() {
        let mut u = unlocked(&StaticKey([0; 32]));
        for n in 1..8u8 {
            assert_eq!(u.add(&StaticKey([n; 32])).unwrap().index, n);
        }
        let e = err(u.add(&StaticKey([9; 32])));
        assert!(e.contains("all 8 key slots"), "{e}");
        assert_eq!(u.sb.slots.len(), 8);
        // A freed index is reused.
        u.remove(3, false).unwrap();
        assert_eq!(u.add(&StaticKey([9; 32])).unwrap().index, 3);
        u.encode_checked(None).unwrap();
    }

    #[test]
    fn remove_rules() {
        let (a, b) = (StaticKey([1; 32]), StaticKey([2; 32]));
        let mut u = unlocked(&a);
        let e = err(u.remove(0, true));
        assert!(e.contains("last key slot"), "{e}");
        let e = err(u.remove(5, false));
        assert!(e.contains("no key slot 5"), "{e}");
        u.add(&b).unwrap();
        let e = err(u.remove(0, false));
        assert!(e.contains("--force"), "{e}");
        assert_eq!(u.sb.slots.len(), 2);
        let removed = u.remove(0, true).unwrap();
        assert_eq!(removed.index, 0);
        let bytes = u.encode_checked(None).unwrap();
        let sb = Superblock::decode_unverified(&bytes).unwrap();
        assert!(open_with(&sb, &a, &u.ctx).unwrap().is_none());
        assert!(open_with(&sb, &b, &u.ctx).unwrap().is_some());
    }

    #[test]
    fn change_replaces_the_unlocked_slot_in_place() {
        let (a, b, c) = (StaticKey([1; 32]), StaticKey([2; 32]), StaticKey([3; 32]));
        let mut u = unlocked(&a);
        u.add(&c).unwrap();
        let (removed, added) = u.change(&b).unwrap();
        assert_eq!((removed.index, added.index), (0, 0));
        let bytes = u.encode_checked(Some((&b, 0))).unwrap();
        let sb = Superblock::decode_unverified(&bytes).unwrap();
        assert_eq!(sb.slots.len(), 2);
        assert!(open_with(&sb, &a, &u.ctx).unwrap().is_none());
        assert_eq!(open_with(&sb, &b, &u.ctx).unwrap().expect("b").1, 0);
        assert_eq!(open_with(&sb, &c, &u.ctx).unwrap().expect("c").1, 1);
    }

    #[test]
    fn listing_names_kinds_and_versions_never_wrapped_bytes() {
        let s = SlotInfo {
            index: 1,
            kind: KIND_KEY_SERVICE,
            key_id: 3u32.to_le_bytes().to_vec(),
        };
        assert_eq!(s.to_string(), "slot 1: key service, key version 3");
        let f = SlotInfo {
            index: 0,
            kind: KIND_KEY_FILE,
            key_id: Vec::new(),
        };
        assert_eq!(f.to_string(), "slot 0: key file");
    }
}
