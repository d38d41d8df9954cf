//! Key material: the master key, the wrapping key and the working keys derived from the master.
//!
//! The [`MasterKey`] (64 random bytes, made at mkfs) never leaves memory unwrapped; on disk it is
//! only stored sealed under a [`WrappingKey`] (see [`crate::crypto::slots`]). [`FsKeys`] holds
//! every working key of one filesystem, each derived from the master key with HKDF-SHA256
//! (salt = fs uuid, info = a distinct label from [`crate::crypto::kdf`]).
//!
//! Guarantees: key types implement neither `Debug`, `Clone` nor `Copy`; their bytes live in one
//! heap allocation (so moves do not leave copies behind), are zeroized on drop, and are
//! reachable only through the explicit `expose()` methods.

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use std::sync::Arc;

use crate::crypto::incarnation::{BlockKeys, IncarnationRoot};
use crate::crypto::kdf::{
    hkdf_sha256, LABEL_BLOCK_MAC, LABEL_DATA_XTS, LABEL_INCARNATION_ROOT, LABEL_META_AEAD,
    LABEL_META_DIGEST, LABEL_NAME_MAC, LABEL_SUPERBLOCK_MAC,
};
use crate::crypto::mac::{BlockMac, NameMac, RecordMac};
use crate::crypto::seal::MetaSealer;
use crate::crypto::xts::DataCipher;
use crate::{Error, Result};

/// Length of the master key in bytes.
pub const MASTER_KEY_LEN: usize = 64;
/// Length of a wrapping key in bytes.
pub const WRAPPING_KEY_LEN: usize = 32;

/// The 64-byte master key of a filesystem, from which every working key is derived.
pub struct MasterKey(Box<[u8; MASTER_KEY_LEN]>);

impl MasterKey {
    /// A fresh random master key from the operating system's CSPRNG.
    pub fn generate() -> MasterKey {
        let mut key = MasterKey(Box::new([0u8; MASTER_KEY_LEN]));
        OsRng.fill_bytes(key.0.as_mut_slice());
        key
    }

    /// A master key from exactly [`MASTER_KEY_LEN`] bytes (`Error::Format` otherwise).
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey> {
        let src: &[u8; MASTER_KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::format(format!(
                "master key is {} bytes, expected {MASTER_KEY_LEN}",
                bytes.len()
            ))
        })?;
        let mut key = MasterKey(Box::new([0u8; MASTER_KEY_LEN]));
        key.0.copy_from_slice(src);
        Ok(key)
    }

    /// The raw key bytes. Do not copy them anywhere that is not zeroized.
    pub fn expose(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }
}

impl Drop for MasterKey {
    #[inline(never)]
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// A 32-byte key that wraps (encrypts) the master key in a key slot; it comes from a key file
/// or the key service.
pub struct WrappingKey(Box<[u8; WRAPPING_KEY_LEN]>);

impl WrappingKey {
    /// A fresh random wrapping key from the operating system's CSPRNG.
    pub fn generate() -> WrappingKey {
        let mut key = WrappingKey(Box::new([0u8; WRAPPING_KEY_LEN]));
        OsRng.fill_bytes(key.0.as_mut_slice());
        key
    }

    /// A wrapping key from exactly [`WRAPPING_KEY_LEN`] bytes (`Error::Format` otherwise).
    pub fn from_bytes(bytes: &[u8]) -> Result<WrappingKey> {
        let src: &[u8; WRAPPING_KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::format(format!(
                "wrapping key is {} bytes, expected {WRAPPING_KEY_LEN}",
                bytes.len()
            ))
        })?;
        let mut key = WrappingKey(Box::new([0u8; WRAPPING_KEY_LEN]));
        key.0.copy_from_slice(src);
        Ok(key)
    }

    /// The raw key bytes. Do not copy them anywhere that is not zeroized.
    pub fn expose(&self) -> &[u8; WRAPPING_KEY_LEN] {
        &self.0
    }
}

impl Drop for WrappingKey {
    #[inline(never)]
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// All working keys of one filesystem, derived from the master key with HKDF-SHA256,
/// salt = fs_uuid (16 bytes), info = a distinct label from kdf.rs per key.
pub struct FsKeys {
    /// AES-256-XTS content encryption of incarnation 0 ([`LABEL_DATA_XTS`], 64 bytes): the
    /// blocks of generations below 2^40, written before per-incarnation keys existed.
    pub data: Arc<DataCipher>,
    /// AES-256-GCM-SIV metadata record sealing ([`LABEL_META_AEAD`]).
    pub meta: MetaSealer,
    /// Directory-entry and xattr-name keys ([`LABEL_NAME_MAC`]).
    pub names: NameMac,
    /// Data-block tags ([`LABEL_BLOCK_MAC`]); its POLYVAL key is shared by every
    /// incarnation, its mask key is incarnation 0's.
    pub blocks: Arc<BlockMac>,
    /// Superblock MAC ([`LABEL_SUPERBLOCK_MAC`]).
    pub superblock: RecordMac,
    /// Metadata digest MAC ([`LABEL_META_DIGEST`]).
    pub digest: RecordMac,
    /// Root of the block keys of incarnations k ≥ 1 ([`LABEL_INCARNATION_ROOT`], 32 bytes).
    pub incarnations: IncarnationRoot,
}

impl FsKeys {
    /// Derives every working key from `master` for the filesystem `fs_uuid`.
    ///
    /// Fails (`Error::Invalid`) only if the two XTS halves come out equal, which happens with
    /// probability 2^-256.
    pub fn derive(master: &MasterKey, fs_uuid: &[u8; 16]) -> Result<FsKeys> {
        let ikm = master.expose().as_slice();

        let mut xts_key = Zeroizing::new([0u8; 64]);
        hkdf_sha256(ikm, fs_uuid, LABEL_DATA_XTS, xts_key.as_mut_slice())?;
        let data = DataCipher::new(&xts_key)?;

        let k32 = |label: &[u8]| -> Result<Zeroizing<[u8; 32]>> {
            let mut k = Zeroizing::new([0u8; 32]);
            hkdf_sha256(ikm, fs_uuid, label, k.as_mut_slice())?;
            Ok(k)
        };

        let meta = k32(LABEL_META_AEAD)?;
        let names = k32(LABEL_NAME_MAC)?;
        let blocks = k32(LABEL_BLOCK_MAC)?;
        let superblock = k32(LABEL_SUPERBLOCK_MAC)?;
        let digest = k32(LABEL_META_DIGEST)?;
        let root = k32(LABEL_INCARNATION_ROOT)?;
        Ok(FsKeys {
            data: Arc::new(data),
            meta: MetaSealer::new(&meta),
            names: NameMac::new(&names),
            blocks: Arc::new(BlockMac::new(&blocks)),
            superblock: RecordMac::new(&superblock),
            digest: RecordMac::new(&digest),
            incarnations: IncarnationRoot::new(&root),
        })
    }

    /// The block keys of incarnation 0 (the keys [`FsKeys::data`] and [`FsKeys::blocks`]).
    pub fn incarnation_zero(&self) -> BlockKeys {
        BlockKeys {
            data: Arc::clone(&self.data),
            blocks: Arc::clone(&self.blocks),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn generate_is_random() {
        assert_ne!(
            MasterKey::generate().expose(),
            MasterKey::generate().expose()
        );
        assert_ne!(
            WrappingKey::generate().expose(),
            WrappingKey::generate().expose()
        );
    }

    #[test]
    fn from_bytes_checks_length() {
        assert!(MasterKey::from_bytes(&[1u8; 63]).is_err());
        assert!(MasterKey::from_bytes(&[1u8; 65]).is_err());
        assert_eq!(
            MasterKey::from_bytes(&[7u8; 64]).unwrap().expose(),
            &[7u8; 64]
        );
        assert!(WrappingKey::from_bytes(&[1u8; 31]).is_err());
        assert!(WrappingKey::from_bytes(&[]).is_err());
        assert_eq!(
            WrappingKey::from_bytes(&[9u8; 32]).unwrap().expose(),
            &[9u8; 32]
        );
    }

    #[test]
    fn derivation_depends_on_master_and_uuid() {
        let m1 = MasterKey::from_bytes(&[1u8; 64]).unwrap();
        let m2 = MasterKey::from_bytes(&[2u8; 64]).unwrap();
        let a = FsKeys::derive(&m1, &[0u8; 16]).unwrap();
        let b = FsKeys::derive(&m2, &[0u8; 16]).unwrap();
        let c = FsKeys::derive(&m1, &[1u8; 16]).unwrap();
        let d = FsKeys::derive(&m1, &[0u8; 16]).unwrap();
        assert_ne!(a.superblock.mac(b"x"), b.superblock.mac(b"x"));
        assert_ne!(a.superblock.mac(b"x"), c.superblock.mac(b"x"));
        assert_eq!(a.superblock.mac(b"x"), d.superblock.mac(b"x"));
        // Different labels give independent keys.
        assert_ne!(a.superblock.mac(b"x"), a.digest.mac(b"x"));
    }
}
