//! The admin toolbox behind `digimedfs info` and `digimedfs tune` (what dumpe2fs -h and tune2fs
//! are to ext4).
//!
//! [`info`] reports what a backing directory says about its filesystem without a key: the
//! superblock as decoded by [`Superblock::decode_unverified`] (its MAC is only checked when a
//! key source is given, since the MAC key derives from the master key), whether the mount lock
//! is held now and by whom, and the backup point. It writes nothing to the backing directory:
//! the lock is probed with a non-blocking `flock` on a read-only descriptor that is released at
//! once, so a live mount is never disturbed and a mount starting meanwhile only waits.
//!
//! [`set_label`] rewrites the superblock with a new label the way `digimedfs rewrap` rewrites
//! its key slots: under the mount lock (refused while mounted), after unlocking a key slot and
//! the key source's rollback check, through [`BackingDir::write_superblock`] (primary, then the
//! copy; each written to a temporary file, fsynced and renamed), with a fresh MAC. The epoch and
//! every other field stay as they are: the epoch counts opens of the metadata store, which this
//! does not touch, and the store is bound to it (docs/format.md, "Store state").
//!
//! Nothing here exposes key material: key slots are reported by index, kind and key id, never
//! with their wrapped key.

use crate::backing::{
    holder_description, unlock_superblock, BackingDir, LOCK_FILE, SUPERBLOCK, SUPERBLOCK_BAK,
};
use crate::backup::{current_point, daemon_holds_lock, POINT_DIR};
use crate::confined::Confined;
use crate::crypto::FsKeys;
use crate::format::format_uuid;
use crate::format::superblock::{
    check_label, Superblock, FLAG_CLEAN, FLAG_STORE_STATE, FORMAT_VERSION,
};
use crate::keysource::{KeySource, SlotContext};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Longest lock file content read for its holder description (the one line this build writes).
const HOLDER_MAX: u64 = 1024;
/// Largest superblock file read (the real ones are a few hundred bytes).
const SUPERBLOCK_MAX: u64 = 64 * 1024;

/// What [`info`] found in a backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The backing directory as given.
    pub backing: PathBuf,
    /// The superblock file the fields come from: [`SUPERBLOCK`], or [`SUPERBLOCK_BAK`] when the
    /// primary cannot be read or decoded.
    pub source: &'static str,
    /// Why the primary superblock was not used (when `source` is the copy).
    pub primary_error: Option<String>,
    /// How the other superblock file compares with the one shown.
    pub other_copy: CopyState,
    /// Whether the MAC was checked and what came of it.
    pub verification: Verification,
    /// Filesystem UUID, hyphenated.
    pub fs_uuid: String,
    /// Label (may be empty).
    pub label: String,
    /// Tenant.
    pub tenant: String,
    /// On-disk format version.
    pub format_version: u32,
    /// Data block size in bytes.
    pub block_size: u32,
    /// Cipher suite id.
    pub cipher_suite: u16,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// Superblock epoch.
    pub epoch: u64,
    /// The raw flag word.
    pub flags: u32,
    /// Key slots (no key material).
    pub slots: Vec<SlotInfo>,
    /// The mount lock.
    pub lock: LockInfo,
    /// Where this host has the filesystem mounted (mount table entries of type
    /// `fuse.digimedfs` whose source is the backing directory).
    pub mount_points: Vec<PathBuf>,
    /// The backup point.
    pub backup: BackupInfo,
}

/// How the other superblock file compares with the one [`Info`] shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// Byte for byte the same.
    Identical,
    /// Present but different (e.g. a crash between the primary's and the copy's write).
    Differs,
    /// Not there.
    Missing,
    /// Could not be read.
    Unreadable(String),
}

/// Whether the superblock's MAC was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// No key was given; nothing in the superblock is authenticated.
    Unverified,
    /// A key slot opened with the key and the MAC verifies.
    Verified {
        /// The slot that opened.
        slot: u8,
        /// The key source, as it describes itself.
        key: String,
    },
    /// A key was given but the superblock could not be verified with it.
    Failed(String),
}

impl Verification {
    /// Whether the superblock was verified.
    pub fn verified(&self) -> bool {
        matches!(self, Verification::Verified { .. })
    }
}

/// One key slot, without its wrapped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index.
    pub index: u8,
    /// Kind code (1 key file, 2 key service).
    pub kind: u8,
    /// The key id, hex (empty for key files).
    pub key_id: String,
    /// For key service slots: the key version the key id names.
    pub key_version: Option<u32>,
}

impl SlotInfo {
    /// The kind's name: `key-file`, `key-service`, or `unknown`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "key-file",
            2 => "key-service",
            _ => "unknown",
        }
    }
}

/// The mount lock of a backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether the lock file exists (it does once the filesystem was mounted).
    pub file: bool,
    /// Whether some process holds the lock now (on any host that honours flock there);
    /// `Err` if the probe failed.
    pub held: std::result::Result<bool, String>,
    /// The holder the lock file names, if it names one in the form this build writes: the
    /// current holder while the lock is held, the last one otherwise.
    pub holder: Option<String>,
}

/// The backup point of a backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupInfo {
    /// No `backup/point`.
    None,
    /// `backup/point` with a manifest.
    Point {
        /// The point's id.
        point: String,
        /// When it was taken (seconds since the Unix epoch).
        taken: u64,
        /// The superblock epoch it holds.
        epoch: u64,
        /// Files it lists.
        files: usize,
        /// Whether the manifest names this filesystem's UUID.
        same_fs: bool,
    },
    /// `backup/point` exists but its manifest is missing or unreadable.
    Unreadable(String),
}

/// The superblock file `name` of `dir`: `Ok(None)` if it is not there.
fn read_copy(dir: &Confined, name: &str) -> Result<Option<Vec<u8>>> {
    dir.read_small(name, SUPERBLOCK_MAX)
}

/// A superblock file decoded, with its path in any error.
fn decode(dir: &Confined, name: &str, bytes: &[u8]) -> Result<Superblock> {
    Superblock::decode_unverified(bytes)
        .map_err(|e| Error::format(format!("{}: {}", dir.display(name).display(), why(&e))))
}

/// What a format error says without its "bad format: " prefix (for errors nested in another).
fn why(e: &Error) -> String {
    match e {
        Error::Format { what } => what.clone(),
        other => crate::error::render_chain(other),
    }
}

/// Reads what `backing` says about its filesystem (see the module docs). With `key`, the
/// superblock shown is also verified: a key slot must open and the MAC must match
/// ([`Verification::Failed`] otherwise; the rest is still reported). Fails only when the path
/// is not a directory or neither superblock file can be read and decoded.
pub fn info(backing: &Path, key: Option<&dyn KeySource>) -> Result<Info> {
    let dir = BackingDir::open(backing)?;
    let confined = dir.confined();
    let primary = read_copy(confined, SUPERBLOCK);
    let copy = read_copy(confined, SUPERBLOCK_BAK);
    let missing = |name: &str| {
        Error::format(format!(
            "{}: no superblock; not a digimedfs filesystem (run mkfs.digimed first)",
            confined.display(name).display()
        ))
    };
    let primary_decoded = match &primary {
        Ok(Some(bytes)) => decode(confined, SUPERBLOCK, bytes).map(|sb| (sb, bytes.clone())),
        Ok(None) => Err(missing(SUPERBLOCK)),
        Err(e) => Err(Error::format(crate::error::render_chain(e))),
    };
    let (source, primary_error, sb, bytes, other) = match primary_decoded {
        Ok((sb, bytes)) => (SUPERBLOCK, None, sb, bytes, &copy),
        Err(primary_err) => {
            let copy_decoded = match &copy {
                Ok(Some(bytes)) => {
                    decode(confined, SUPERBLOCK_BAK, bytes).map(|sb| (sb, bytes.clone()))
                }
                Ok(None) => Err(missing(SUPERBLOCK_BAK)),
                Err(e) => Err(Error::format(crate::error::render_chain(e))),
            };
            match copy_decoded {
                Ok((sb, bytes)) => (SUPERBLOCK_BAK, Some(why(&primary_err)), sb, bytes, &primary),
                // Neither copy: if the primary is simply absent, say "not a digimedfs
                // filesystem" and nothing about the copy.
                Err(_) if matches!(primary, Ok(None)) && matches!(copy, Ok(None)) => {
                    return Err(primary_err)
                }
                Err(copy_err) => {
                    return Err(Error::format(format!(
                        "no usable superblock: {}; {}",
                        why(&primary_err),
                        why(&copy_err)
                    )))
                }
            }
        }
    };
    let other_copy = match other {
        Ok(Some(b)) if *b == bytes => CopyState::Identical,
        Ok(Some(_)) => CopyState::Differs,
        Ok(None) => CopyState::Missing,
        Err(e) => CopyState::Unreadable(crate::error::render_chain(e)),
    };
    let verification = match key {
        None => Verification::Unverified,
        Some(key) => verify(&sb, &bytes, key),
    };
    let slots = sb
        .slots
        .iter()
        .map(|s| SlotInfo {
            index: s.index,
            kind: s.kind,
            key_id: hex::encode(&s.key_id),
            key_version: (s.kind == 2)
                .then(|| <[u8; 4]>::try_from(s.key_id.as_slice()).ok())
                .flatten()
                .map(u32::from_le_bytes),
        })
        .collect();
    Ok(Info {
        backing: backing.to_path_buf(),
        source,
        primary_error,
        other_copy,
        verification,
        fs_uuid: format_uuid(&sb.fs_uuid),
        label: sb.label.clone(),
        tenant: sb.tenant.clone(),
        format_version: FORMAT_VERSION,
        block_size: sb.block_size,
        cipher_suite: sb.cipher_suite,
        created: sb.created,
        epoch: sb.epoch,
        flags: sb.flags,
        slots,
        lock: lock_info(confined),
        mount_points: mount_points(backing),
        backup: backup_info(confined, &sb.fs_uuid),
    })
}

/// Opens a key slot of `sb` with `key` and checks the MAC of `bytes` (the superblock file `sb`
/// was decoded from) with the key it derives.
fn verify(sb: &Superblock, bytes: &[u8], key: &dyn KeySource) -> Verification {
    let ctx = SlotContext {
        fs_uuid: sb.fs_uuid,
        tenant: sb.tenant.clone(),
    };
    let mut refusal = None;
    for slot in sb.slots.iter().filter(|s| s.kind == key.kind()) {
        let master = match key.open_slot(slot, &ctx) {
            Ok(Some(master)) => master,
            Ok(None) => continue,
            Err(e) => {
                refusal.get_or_insert(crate::error::render_chain(&e));
                continue;
            }
        };
        let keys = match FsKeys::derive(&master, &sb.fs_uuid) {
            Ok(keys) => keys,
            Err(e) => return Verification::Failed(crate::error::render_chain(&e)),
        };
        return match Superblock::verify(bytes, &keys.superblock) {
            Ok(()) => Verification::Verified {
                slot: slot.index,
                key: key.describe(),
            },
            Err(e) => Verification::Failed(crate::error::render_chain(&e)),
        };
    }
    Verification::Failed(refusal.unwrap_or_else(|| {
        format!(
            "wrong key: {} opens no key slot of this superblock",
            key.describe()
        )
    }))
}

/// The lock file's state: probed with a non-blocking flock, released at once.
fn lock_info(dir: &Confined) -> LockInfo {
    let raw = dir.read_small(LOCK_FILE, HOLDER_MAX);
    let file = matches!(raw, Ok(Some(_)));
    let holder = raw.ok().flatten().and_then(|raw| holder_description(&raw));
    let held = daemon_holds_lock(dir).map_err(|e| crate::error::render_chain(&e));
    LockInfo { file, held, holder }
}

/// This host's digimedfs mounts of `backing`.
fn mount_points(backing: &Path) -> Vec<PathBuf> {
    let Ok(canonical) = backing.canonicalize() else {
        return Vec::new();
    };
    crate::mounts::current()
        .into_iter()
        .filter(|m| m.fstype == "fuse.digimedfs" && m.source == canonical)
        .map(|m| m.point)
        .collect()
}

/// The backup point, from its manifest (as `digimedfs backup status` reads it).
fn backup_info(dir: &Confined, fs_uuid: &[u8; 16]) -> BackupInfo {
    let point_dir = format!("{}/{POINT_DIR}", crate::backup::BACKUP_DIR);
    match dir.status(&point_dir) {
        Ok(None) => return BackupInfo::None,
        Ok(Some(_)) => {}
        Err(e) => return BackupInfo::Unreadable(crate::error::render_chain(&e)),
    }
    match current_point(dir) {
        Ok(Some(m)) => BackupInfo::Point {
            point: m.point,
            taken: m.taken,
            epoch: m.epoch,
            files: m.entries.len(),
            same_fs: m.fs_uuid == *fs_uuid,
        },
        Ok(None) => BackupInfo::Unreadable(format!(
            "{} exists but has no manifest (a point being ended, or damaged)",
            dir.display(&point_dir).display()
        )),
        Err(e) => BackupInfo::Unreadable(crate::error::render_chain(&e)),
    }
}

/// The names of the flags set in `flags` that this build knows, for people.
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    let mut names = Vec::new();
    if flags & FLAG_CLEAN != 0 {
        names.push("clean");
    }
    if flags & FLAG_STORE_STATE != 0 {
        names.push("store state record");
    }
    names
}

/// What [`set_label`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuneReport {
    /// Filesystem UUID, hyphenated.
    pub fs_uuid: String,
    /// The label before.
    pub old_label: String,
    /// The label now.
    pub new_label: String,
    /// Whether the superblock was rewritten (false: it already had this label).
    pub changed: bool,
}

/// Gives the filesystem in `backing` the label `label` (see the module docs). Refuses a label
/// over 64 bytes before touching anything, and a mounted filesystem with the mount's own
/// "already mounted by HOLDER" refusal.
pub fn set_label(backing: &Path, key: &dyn KeySource, label: &str) -> Result<TuneReport> {
    check_label(label)?;
    let dir = BackingDir::open(backing)?;
    // Taking the lock creates the lock file: not in a directory that holds no filesystem.
    if read_copy(dir.confined(), SUPERBLOCK)?.is_none()
        && read_copy(dir.confined(), SUPERBLOCK_BAK)?.is_none()
    {
        return Err(Error::format(format!(
            "{}: no superblock; not a digimedfs filesystem (run mkfs.digimed first)",
            dir.path(SUPERBLOCK).display()
        )));
    }
    let _lock = dir.lock(false)?;
    let (mut sb, keys) = unlock_superblock(&dir, key)?;
    let ctx = SlotContext {
        fs_uuid: sb.fs_uuid,
        tenant: sb.tenant.clone(),
    };
    // A superblock older than the key service last saw is a rollback: not one to build on.
    key.check_anchor(&ctx, sb.epoch, &sb.meta_digest)?;
    let old_label = std::mem::replace(&mut sb.label, label.to_string());
    let changed = old_label != label;
    if changed {
        dir.write_superblock(&sb.encode(&keys.superblock)?)?;
    }
    Ok(TuneReport {
        fs_uuid: format_uuid(&sb.fs_uuid),
        old_label,
        new_label: sb.label,
        changed,
    })
}
