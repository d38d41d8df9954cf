//! Creating a filesystem (`mkfs.digimed`): a fresh UUID and master key, the key slot wrapping it,
//! the root directory and counters in a new metadata store, and the superblock written last, so
//! an interrupted mkfs leaves no superblock and is simply run again.

use crate::backing::{BackingDir, KNOWN_NAMES, LOCK_FILE, META_DIR, OBJECTS_DIR};
use crate::crypto::{FsKeys, MasterKey};
use crate::filesystem::{format_uuid, FileKind, ROOT_INO};
use crate::format::records::{Counters, Inode, StoreState, Timestamp};
use crate::format::superblock::{
    check_block_size, check_label, Superblock, CIPHER_SUITE_V1, FLAG_CLEAN, FLAG_STORE_STATE,
};
use crate::keysource::{KeySource, SlotContext};
use crate::meta::{MetaEngine, MetaStore, Records};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Options of mkfs.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    /// Data block size (4096..=65536, power of two).
    pub block_size: u32,
    /// Label.
    pub label: String,
    /// Tenant id.
    pub tenant: String,
    /// Overwrite an existing filesystem or use a non-empty directory.
    pub force: bool,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            block_size: 4096,
            label: String::new(),
            tenant: "default".into(),
            force: false,
        }
    }
}

/// What mkfs created.
#[derive(Debug, Clone)]
pub struct MkfsReport {
    /// Filesystem UUID, hyphenated.
    pub uuid: String,
    /// Block size.
    pub block_size: u32,
    /// Tenant id.
    pub tenant: String,
    /// Label.
    pub label: String,
}

/// A new superblock and its master key (not yet written anywhere).
pub fn new_superblock(key: &dyn KeySource, opts: &MkfsOptions) -> Result<(Superblock, MasterKey)> {
    check_block_size(opts.block_size)?;
    check_label(&opts.label)?;
    crate::keysource::check_tenant_id(&opts.tenant)?;
    let mut fs_uuid: [u8; 16] = rand::random();
    // RFC 4122 version 4 (random) and variant bits.
    fs_uuid[6] = (fs_uuid[6] & 0x0f) | 0x40;
    fs_uuid[8] = (fs_uuid[8] & 0x3f) | 0x80;
    let master = MasterKey::generate();
    let ctx = SlotContext {
        fs_uuid,
        tenant: opts.tenant.clone(),
    };
    let slot = key.seal_slot(0, &ctx, &master)?;
    let sb = Superblock {
        flags: FLAG_CLEAN | FLAG_STORE_STATE,
        fs_uuid,
        block_size: opts.block_size,
        cipher_suite: CIPHER_SUITE_V1,
        created: Timestamp::now().secs,
        epoch: 1,
        meta_digest: [0; 32],
        label: opts.label.clone(),
        tenant: opts.tenant.clone(),
        slots: vec![slot],
    };
    Ok((sb, master))
}

/// Writes the root directory, counters and store state into an empty store; returns the store
/// digest.
pub fn init_records(
    meta: Arc<dyn MetaStore>,
    keys: Arc<FsKeys>,
    sb: &Superblock,
) -> Result<[u8; 32]> {
    let records = Records::new(meta, keys, &sb.fs_uuid);
    let now = Timestamp::now();
    let root = Inode::new(ROOT_INO, FileKind::Dir, 0o755, 0, 0, ROOT_INO, now);
    let mut b = records.batch();
    b.put_inode(&root)?;
    b.put_counters(&Counters {
        ino_reserved: ROOT_INO + 1,
        gen_reserved: 1,
    });
    b.commit()?;
    // The store belongs to the superblock's epoch from the start (docs/format.md "Store state").
    let digest = records.digest()?;
    let mut b = records.batch();
    b.put_state(&StoreState {
        epoch: sb.epoch,
        digest,
    });
    b.commit()?;
    records.flush()?;
    Ok(digest)
}

/// Creates a filesystem in `backing`.
pub fn mkfs(
    backing: &Path,
    key: &dyn KeySource,
    opts: &MkfsOptions,
    engine: &dyn MetaEngine,
) -> Result<MkfsReport> {
    if backing.exists() {
        if !backing.is_dir() {
            return Err(Error::invalid(format!(
                "{} exists and is not a directory",
                backing.display()
            )));
        }
    } else {
        std::fs::create_dir_all(backing).map_err(|e| Error::io(backing, e))?;
    }
    let dir = BackingDir::open(backing)?;
    let root = dir.confined().clone();
    let entries: Vec<String> = root
        .list()?
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    if !entries.is_empty() && !opts.force {
        let what = if entries.iter().any(|e| e == "superblock") {
            "contains a digimedfs filesystem"
        } else {
            "is not empty"
        };
        return Err(Error::invalid(format!(
            "{} {what}; use -f to overwrite",
            backing.display()
        )));
    }
    // -f replaces a digimedfs filesystem; anything else in the directory would end up mixed
    // into the new one (or, removed, lost), so it is refused.
    let foreign: Vec<&String> = entries
        .iter()
        .filter(|e| {
            !KNOWN_NAMES.contains(&e.as_str())
                && !["superblock.tmp", "superblock.bak.tmp"].contains(&e.as_str())
        })
        .collect();
    if opts.force && !foreign.is_empty() {
        let shown: Vec<&str> = foreign.iter().take(5).map(|s| s.as_str()).collect();
        return Err(Error::invalid(format!(
            "{} holds files that are not part of a digimedfs filesystem ({}{}); -f replaces \
             only a digimedfs filesystem: move them away first",
            backing.display(),
            shown.join(", "),
            if foreign.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    let _lock = if opts.force && !entries.is_empty() {
        // Refuse to destroy a filesystem that is mounted right now.
        let lock = dir.lock(false)?;
        for name in KNOWN_NAMES
            .iter()
            .chain(["superblock.tmp", "superblock.bak.tmp"].iter())
            .filter(|n| **n != LOCK_FILE)
        {
            // Links are removed as links; nothing outside is touched.
            root.remove_tree(name)?;
        }
        Some(lock)
    } else {
        None
    };
    let (mut sb, master) = new_superblock(key, opts)?;
    let keys = Arc::new(FsKeys::derive(&master, &sb.fs_uuid)?);
    root.create_dir_all(OBJECTS_DIR)?;
    root.create_dir_all(META_DIR)?;
    {
        let meta: Arc<dyn MetaStore> = engine.open_in(&root.open_dir(META_DIR)?, 16 << 20)?;
        sb.meta_digest = init_records(meta, keys.clone(), &sb)?;
    }
    dir.write_superblock(&sb.encode(&keys.superblock)?)?;
    Ok(MkfsReport {
        uuid: format_uuid(&sb.fs_uuid),
        block_size: sb.block_size,
        tenant: sb.tenant.clone(),
        label: sb.label.clone(),
    })
}
