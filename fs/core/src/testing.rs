//! In-memory filesystems for tests: the real core over [`MemStore`] and [`MemObjects`], with
//! crash images (what storage holds after a crash at any write) and raw access for tampering.

use crate::crypto::{FsKeys, WrappingKey};
use crate::filesystem::{Filesystem, OpenOptions, Parts};
use crate::format::superblock::Superblock;
use crate::keysource::KeySource;
use crate::meta::CrashPoint;
use crate::meta::{MemStore, MetaStore};
use crate::mkfs::{init_records, new_superblock, MkfsOptions};
use crate::objects::{MemObjects, ObjectStore};
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

/// How many inputs each fuzz target runs: `DIGIMEDFS_FUZZ_ITERS`, or 3 000 (the suite's run).
pub fn fuzz_iterations() -> usize {
    std::env::var("DIGIMEDFS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// A small mutation fuzzer for decoders of untrusted bytes: each input is a seed (a valid
/// encoding) changed by a few random edits (bit flips, boundary values written over integers,
/// insertions, deletions, duplicated ranges, truncation, splices with another seed). It is not
/// coverage-guided; seeds from real encoders keep it near the interesting paths. Deterministic
/// for a given `seed`, so a failure is reproduced by running it again with the seed it prints.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator whose choices follow from `seed`.
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The next pseudo-random number (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// One input: a seed from `seeds` with 1–8 edits.
    pub fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds
            .get(self.below(seeds.len()))
            .cloned()
            .unwrap_or_default();
        for _ in 0..1 + self.below(8) {
            self.mutate(&mut data, seeds);
        }
        data
    }

    fn mutate(&mut self, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        const BOUNDARY: [u64; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0xffff_ffff, u64::MAX];
        let len = data.len();
        match self.below(8) {
            0 if len > 0 => {
                let i = self.below(len);
                if let Some(b) = data.get_mut(i) {
                    *b ^= 1 << self.below(8);
                }
            }
            1 if len > 0 => {
                let width = 1usize << self.below(4);
                let at = self.below(len);
                let v = BOUNDARY
                    .get(self.below(BOUNDARY.len()))
                    .copied()
                    .unwrap_or_default()
                    .to_le_bytes();
                for (k, b) in v.iter().take(width).enumerate() {
                    if let Some(d) = data.get_mut(at + k) {
                        *d = *b;
                    }
                }
            }
            2 => {
                let at = self.below(len + 1);
                let n = 1 + self.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| self.next_u64() as u8).collect();
                data.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below((len - at).min(64));
                data.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = self.below(len);
                let n = 1 + self.below((len - at).min(64));
                let copy: Vec<u8> = data.get(at..at + n).map(<[u8]>::to_vec).unwrap_or_default();
                let to = self.below(len + 1);
                data.splice(to..to, copy);
            }
            5 => data.truncate(self.below(len + 1)),
            6 => {
                let other = seeds
                    .get(self.below(seeds.len()))
                    .cloned()
                    .unwrap_or_default();
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(other.get(from..).unwrap_or_default());
            }
            _ => {
                let at = self.below(len + 1);
                let byte = [0u8, 0xff, b'\n', b' '].get(self.below(4)).copied();
                data.insert(at, byte.unwrap_or_default());
            }
        }
    }
}
