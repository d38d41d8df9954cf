//! The data object store: one ciphertext object per regular file that outgrew inline storage.
//!
//! Objects are named by a random 128-bit id (hex), fanned out into 256 subdirectories of
//! `objects/` by their first byte, so no directory grows unbounded and names reveal nothing.
//! Block `i` of a file lives at byte `i * block_size` of its object; never-written blocks are
//! holes of the backing file. [`ObjectStore`] is the seam to storage: [`DirObjects`] in
//! production, `MemObjects` in crash tests.
//!
//! Segments: an object is addressed like one file of up to 2^63 bytes, but backing
//! filesystems stop much earlier (ext4 with 4 KiB blocks at [`SEGMENT_LEN`], 16 TiB − 4 KiB).
//! [`DirObjects`] therefore keeps object bytes `[0, SEGMENT_LEN)` in the object file itself and
//! bytes `[k × SEGMENT_LEN, (k+1) × SEGMENT_LEN)` for `k ≥ 1` in segment file
//! `objects/XX/<id>.seg/<k>` (decimal `k`), which exists only once something was written there.
//! A missing or short segment below the object's end reads as zeros, like a hole.
//!
//! Backup points: [`ObjectStore::freeze_into`] hard-links every object into a point directory;
//! from then on [`DirObjects`] copies an object that is still shared with a point (link count
//! above one) to a fresh file and renames that over the live name before its first change, so
//! the point's link keeps the bytes it had at the point (copy-on-write per object). Every
//! mutation holds the shared side of the point gate ([`ObjectStore::point_gate`]), which the
//! point takes exclusively while it dumps the metadata and links the objects.

mod cow;
mod dir;
#[cfg(any(test, feature = "testing"))]
mod mem;
mod none;
mod read;

pub use cow::copy_sparse;
pub use dir::DirObjects;
#[cfg(any(test, feature = "testing"))]
pub use mem::MemObjects;
pub use none::NoObjects;

use crate::{Error, Result};
use std::sync::{Arc, Mutex, RwLock};

/// Bytes of an object kept in one file of the backing filesystem: ext4's largest file with
/// 4 KiB blocks ((2^32 − 1) × 4096). Objects of earlier versions never reached it on ext4, so
/// they are exactly segment 0.
pub const SEGMENT_LEN: u64 = (1 << 44) - (1 << 12);

/// Suffix of the directory holding an object's segments `1, 2, …`.
pub const SEGMENT_DIR_SUFFIX: &str = ".seg";

/// Parses a segment file name (`1`, `2`, …; no leading zeros).
pub fn parse_segment_name(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|k| *k >= 1)
}

/// Identifier of a data object.
pub type ObjectId = [u8; 16];

/// Storage for data objects.
pub trait ObjectStore: Send + Sync {
    /// Reads at `offset`; returns the bytes read (short only at the end of the object; 0 if the
    /// object does not exist).
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Writes at `offset`, creating the object if needed.
    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> Result<()>;
    /// Sets the object's length (new space reads as zeros).
    fn set_len(&self, id: &ObjectId, len: u64) -> Result<()>;
    /// Makes `[offset, offset+len)` read as zeros, freeing storage where possible.
    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> Result<()>;
    /// Makes the object's data durable.
    fn sync(&self, id: &ObjectId) -> Result<()>;
    /// Makes every object's data durable.
    fn sync_all(&self) -> Result<()>;
    /// Removes the object (absent is fine).
    fn remove(&self, id: &ObjectId) -> Result<()>;
    /// Every object with its length.
    fn list(&self) -> Result<Vec<(ObjectId, u64)>>;
    /// The gate every mutation holds shared; a backup point holds it exclusively. `None`: this
    /// store cannot take backup points.
    fn point_gate(&self) -> Option<Arc<RwLock<()>>> {
        None
    }
    /// Hard-links every object that `wanted` accepts into `dest/XX/<id>` (`dest` relative to
    /// the backing directory) and keeps those links' contents unchanged from then on
    /// (copy-on-write). The caller holds the point gate exclusively. Returns every frozen
    /// object with its length.
    fn freeze_into(
        &self,
        dest: &str,
        _wanted: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(ObjectId, u64)>> {
        Err(Error::invalid(format!(
            "{dest}: this object store cannot take backup points"
        )))
    }
    /// Tells the store whether a backup point exists (whose links must be kept unchanged).
    fn set_point_active(&self, _active: bool) {}
}

/// Parses a hex object name.
pub fn parse_object_name(name: &str) -> Option<ObjectId> {
    let bytes = hex::decode(name).ok()?;
    bytes.try_into().ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
