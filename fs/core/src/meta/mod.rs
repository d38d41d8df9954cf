//! The metadata store: an ordered key-value store that only ever holds sealed records.
//!
//! [`MetaStore`] is the narrow seam to storage (sled in production, `MemStore` in crash
//! tests); [`Records`] on top of it seals every value with AES-256-GCM-SIV under the metadata key
//! with the record's key as associated data, so values cannot be read, forged, or moved to
//! another key. [`DigestStore`] keeps the digest of all records up to date with every batch and
//! binds the store to a superblock epoch (the store state record), so a rolled-back store is
//! refused at open and a replayed record is never absorbed into a fresh digest.
//!
//! Contract relied upon (sled 0.34 provides it): a batch is applied atomically; after a crash
//! the store holds a prefix of the applied batches that includes every batch applied before the
//! last completed [`MetaStore::flush`].

mod buffered;
mod digest;
#[cfg(any(test, feature = "testing"))]
mod mem;
mod records;

pub use buffered::{BufferedStore, BACKLOG_GROUPS};
pub use digest::DigestStore;
#[cfg(any(test, feature = "testing"))]
pub use mem::{CrashPoint, MemStore};
pub use records::{RecordBatch, Records};

use crate::confined::Confined;
use crate::format::records::{incarnation_of_key, prefix};
use crate::Result;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One atomic group of changes: `None` deletes the key.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    /// Puts a raw value (test images).
    pub fn ops_push(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    /// Deletes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.ops.push((key.to_vec(), None));
    }
    /// The changes in order.
    pub fn ops(&self) -> &[(Vec<u8>, Option<Vec<u8>>)] {
        &self.ops
    }
}

/// Visitor for scans: gets key and value, returns `false` to stop.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// An ordered key-value store with atomic batches and an explicit durability point.
pub trait MetaStore: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visits keys starting with `prefix` in ascending order, starting after `after` if given.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()>;
    /// Applies a batch atomically.
    fn apply(&self, batch: &Batch) -> Result<()>;
    /// Makes every applied batch durable.
    fn flush(&self) -> Result<()>;
    /// Makes every applied batch durable and closes the store: later calls fail. An engine
    /// that replays its log when it opens records its state here instead, so the next open
    /// replays nothing of what this one wrote (docs/performance.md, "Mount time").
    fn close(&self) -> Result<()> {
        self.flush()
    }
    /// The layer that keeps the running digest and the store state record, if this store is
    /// (or sits on) one.
    fn digest_store(&self) -> Option<&DigestStore> {
        None
    }
}

/// The store engine: opens the [`MetaStore`] of a backing directory. This is the seam where
/// the engine (sled, in the `digimedfs-sled` crate) plugs into the core, which never names it.
pub trait MetaEngine: Send + Sync {
    /// Opens (or creates) the store in a backing directory's `meta/`, reached through `meta`.
    /// The engine must not follow links out of it (see docs/threat-model.md).
    fn open_in(&self, meta: &Confined, cache_bytes: u64) -> Result<Arc<dyn MetaStore>>;
    /// Opens (or creates) a store in a private directory `path` (fsck's snapshot of a mounted
    /// filesystem's store, test directories).
    fn open_path(&self, path: &Path, cache_bytes: u64) -> Result<Arc<dyn MetaStore>>;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A readable name for a record key in messages (type and inode, never a secret).
pub fn key_name(key: &[u8]) -> String {
    let ino = key
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    match (key.first().copied(), ino) {
        (Some(prefix::INODE), Some(i)) => format!("inode record {i}"),
        (Some(prefix::CHUNK), Some(i)) => {
            let chunk = key
                .get(9..17)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            format!("block map of inode {i} chunk {}", chunk.unwrap_or(0))
        }
        (Some(prefix::INLINE), Some(i)) => format!("inline data of inode {i}"),
        (Some(prefix::XATTR), Some(i)) => format!("xattr of inode {i}"),
        (Some(prefix::ORPHAN), Some(i)) => format!("orphan record {i}"),
        (Some(prefix::RECLAIM), Some(i)) => format!("reclaim mark of inode {i}"),
        (Some(prefix::PREV_MARK), Some(i)) => format!("previous-version mark of inode {i}"),
        (Some(prefix::DIRENT), _) => format!(
            "directory entry {}",
            hex::encode(key.get(1..).unwrap_or(&[]))
        ),
        (Some(prefix::COUNTERS), _) => "counters record".to_string(),
        (Some(prefix::STATE), _) => "store state record".to_string(),
        (Some(prefix::INCARNATION), _) => match incarnation_of_key(key) {
            Some(k) => format!("salt record of incarnation {k}"),
            None => format!("record {}", hex::encode(key)),
        },
        _ => format!("record {}", hex::encode(key)),
    }
}
