//! In-memory filesystems for tests: the real core over [`MemStore`] and [`MemObjects`], with
//! crash images (what storage holds after a crash at any write) and raw access for tampering.

use crate::core::{Filesystem, OpenOptions, Parts};
use crate::crypto::{FsKeys, WrappingKey};
use crate::format::superblock::Superblock;
use crate::keysource::KeySource;
use crate::meta::{MemStore, MetaStore};
use crate::mkfs::{init_records, new_superblock, MkfsOptions};
use crate::objects::{CrashPoint, MemObjects, ObjectStore};
use crate::Result;
use std::sync::Arc;

/// A key source holding a fixed wrapping key.
pub struct StaticKey(pub [u8; 32]);

impl KeySource for StaticKey {
    fn describe(&self) -> String {
        "test key".into()
    }
    fn kind(&self) -> u8 {
        1
    }
    fn wrapping_key(&self, _fs_uuid: &[u8; 16]) -> Result<WrappingKey> {
        WrappingKey::from_bytes(&self.0)
    }
}

/// The storage of an in-memory filesystem, kept by the test across "crashes".
pub struct MemImage {
    /// Superblock.
    pub superblock: Superblock,
    /// Working keys.
    pub keys: Arc<FsKeys>,
    /// Metadata store.
    pub meta: Arc<MemStore>,
    /// Objects.
    pub objects: Arc<MemObjects>,
}

impl MemImage {
    /// A fresh filesystem with the given block size.
    pub fn create(block_size: u32) -> Result<MemImage> {
        Self::create_with(block_size, None)
    }

    /// A fresh filesystem whose storage writes count towards `crash`.
    pub fn create_with(block_size: u32, crash: Option<Arc<CrashPoint>>) -> Result<MemImage> {
        let opts = MkfsOptions {
            block_size,
            ..Default::default()
        };
        let (sb, master) = new_superblock(&StaticKey([7; 32]), &opts)?;
        let keys = Arc::new(FsKeys::derive(&master, &sb.fs_uuid)?);
        let meta = Arc::new(MemStore::new());
        let mut sb = sb;
        sb.meta_digest = init_records(meta.clone(), keys.clone(), &sb)?;
        let (meta, objects) = match crash {
            Some(c) => {
                let m = Arc::new(MemStore::with_crash_point(c.clone()));
                // Carry the freshly made records over into the counting store.
                let mut b = crate::meta::Batch::default();
                for (k, v) in meta.dump() {
                    b.ops_push(k, v);
                }
                m.apply(&b)?;
                m.flush()?;
                (m, Arc::new(MemObjects::with_crash_point(c)))
            }
            None => (meta, Arc::new(MemObjects::new())),
        };
        Ok(MemImage {
            superblock: sb,
            keys,
            meta,
            objects,
        })
    }

    /// Opens the filesystem on this image.
    pub fn open(&self, opts: &OpenOptions) -> Result<Filesystem> {
        self.open_over(self.meta.clone(), self.objects.clone(), opts)
    }

    /// Opens the filesystem on stores that wrap this image's (a test's stand-ins that hold
    /// or observe calls), with the same running digest and group commit as a real mount.
    pub fn open_over(
        &self,
        meta: Arc<dyn MetaStore>,
        objects: Arc<dyn ObjectStore>,
        opts: &OpenOptions,
    ) -> Result<Filesystem> {
        let parts = Parts {
            superblock: self.superblock.clone(),
            keys: self.keys.clone(),
            meta: Arc::new(crate::meta::BufferedStore::new(
                Arc::new(crate::meta::DigestStore::open(
                    meta,
                    self.keys.clone(),
                    &self.superblock.fs_uuid,
                )?),
                64,
            )),
            objects,
            backing: None,
        };
        Filesystem::from_parts(parts, None, opts)
    }

    /// The image's stores as [`Parts`] for [`crate::check::check_parts`]. A `MemImage`'s
    /// superblock never gets a digest of the records, so it is checked as not clean.
    pub fn parts_to_check(&self) -> Parts {
        let mut superblock = self.superblock.clone();
        superblock.flags &= !crate::format::superblock::FLAG_CLEAN;
        Parts {
            superblock,
            keys: self.keys.clone(),
            meta: self.meta.clone(),
            objects: self.objects.clone(),
            backing: None,
        }
    }

    /// The image a crash leaves: synced state only, plus `keep_meta` unflushed metadata batches
    /// and the unsynced data of objects for which `keep_obj` says so.
    pub fn crash_image(
        &self,
        keep_meta: usize,
        keep_obj: &mut dyn FnMut(&[u8; 16]) -> bool,
    ) -> MemImage {
        MemImage {
            superblock: self.superblock.clone(),
            keys: self.keys.clone(),
            meta: Arc::new(self.meta.crash_image(keep_meta)),
            objects: Arc::new(self.objects.crash_image(keep_obj)),
        }
    }
}
