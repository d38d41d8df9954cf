//! The superblock: the one plaintext-structured file of a filesystem.
//!
//! It holds what is needed to unlock the filesystem (format version, UUID, block size, cipher
//! suite, key slots with the wrapped master key) and the state that anchors the metadata store
//! (epoch, clean flag, metadata digest). Nothing in it is secret; all of it is authenticated by a
//! MAC under a key derived from the master key, so it can only be verified after a key slot has
//! been unwrapped. Layout (all integers little-endian), see docs/format.md:
//!
//! ```text
//! magic        8   "DGMDFS\0\x01"
//! version      u32 FORMAT_VERSION
//! flags        u32 bit 0: clean (closed by an unmount); bit 1: the store has a state record
//! fs_uuid      16
//! block_size   u32 4096..=65536, power of two
//! cipher_suite u16 1 = AES-256-XTS data, POLYVAL block tags with an AES mask, AES-256-GCM-SIV records
//! created      i64 seconds since the epoch
//! epoch        u64 incremented at every mount and clean unmount
//! meta_digest  32  XOR of keyed MACs over all metadata records (valid when clean)
//! label        u16 len + bytes (UTF-8, <= 64)
//! tenant       u16 len + bytes (UTF-8, <= 128)
//! nslots       u8
//! slot * nslots: index u8, kind u8, key_id u16 len + bytes, wrapped u16 len + bytes
//! mac          32  RecordMac(superblock key) over every byte before it
//! ```

use super::codec::{Reader, Writer};
use crate::crypto::{slots, FsKeys, MasterKey, RecordMac, WrappingKey};
use crate::{Error, Result};

/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"DGMDFS\0\x01";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The only cipher suite of version 1.
pub const CIPHER_SUITE_V1: u16 = 1;
/// Flag: the filesystem was closed cleanly and `meta_digest` is valid.
pub const FLAG_CLEAN: u32 = 1;
/// Flag: the metadata store carries a store state record (docs/format.md "Store state"), so a
/// store without one is refused instead of being treated as one of an earlier build.
pub const FLAG_STORE_STATE: u32 = 2;
/// Smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 65536;
/// Length of the trailing MAC.
pub const MAC_LEN: usize = 32;
/// Longest label, in bytes of UTF-8.
pub const MAX_LABEL: usize = 64;
const MAX_TENANT: usize = 128;
/// Most key slots a superblock holds.
pub const MAX_SLOTS: usize = 8;

/// One key slot: the master key wrapped by a key from a key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    /// Slot number, unique within the superblock.
    pub index: u8,
    /// Key source kind (1 = key file, 2 = key service).
    pub kind: u8,
    /// Identifies the wrapping key within its source (e.g. key service key version).
    pub key_id: Vec<u8>,
    /// The wrapped master key.
    pub wrapped: Vec<u8>,
}

impl KeySlot {
    /// The associated data binding a wrapped key to its slot and filesystem.
    fn ad(&self, fs_uuid: &[u8; 16]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(32 + self.key_id.len());
        ad.extend_from_slice(crate::crypto::kdf::AD_KEY_SLOT);
        ad.extend_from_slice(fs_uuid);
        ad.push(self.index);
        ad.push(self.kind);
        ad.extend_from_slice(&(self.key_id.len() as u64).to_le_bytes());
        ad.extend_from_slice(&self.key_id);
        ad
    }

    /// Wraps `master` for this slot.
    pub fn seal(
        index: u8,
        kind: u8,
        key_id: Vec<u8>,
        wrapping: &WrappingKey,
        fs_uuid: &[u8; 16],
        master: &MasterKey,
    ) -> KeySlot {
        let mut slot = KeySlot {
            index,
            kind,
            key_id,
            wrapped: Vec::new(),
        };
        slot.wrapped = slots::wrap_master(wrapping, fs_uuid, &slot.ad(fs_uuid), master);
        slot
    }

    /// Unwraps the master key, `None` if `wrapping` is not this slot's key.
    pub fn open(&self, wrapping: &WrappingKey, fs_uuid: &[u8; 16]) -> Option<MasterKey> {
        slots::unwrap_master(wrapping, fs_uuid, &self.ad(fs_uuid), &self.wrapped)
    }
}

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Flags (see [`FLAG_CLEAN`]).
    pub flags: u32,
    /// Filesystem UUID.
    pub fs_uuid: [u8; 16],
    /// Data block size in bytes.
    pub block_size: u32,
    /// Cipher suite id.
    pub cipher_suite: u16,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// Monotonic epoch, incremented at every mount and clean unmount.
    pub epoch: u64,
    /// Digest of the metadata store when clean.
    pub meta_digest: [u8; 32],
    /// Human-readable label.
    pub label: String,
    /// Tenant the filesystem belongs to.
    pub tenant: String,
    /// Key slots.
    pub slots: Vec<KeySlot>,
}

/// Checks a block size: a power of two from 4 KiB to 64 KiB.
pub fn check_block_size(block_size: u32) -> Result<()> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(Error::invalid(format!(
            "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        )));
    }
    Ok(())
}

/// Checks a label: at most [`MAX_LABEL`] bytes of UTF-8 (mkfs.digimed -L, digimedfs tune -L).
pub fn check_label(label: &str) -> Result<()> {
    if label.len() > MAX_LABEL {
        return Err(Error::invalid(format!(
            "label {label:?} is {} bytes long; a label holds at most {MAX_LABEL} bytes (UTF-8)",
            label.len()
        )));
    }
    Ok(())
}

impl Superblock {
    /// Encodes the superblock and appends its MAC.
    pub fn encode(&self, mac: &RecordMac) -> Result<Vec<u8>> {
        check_label(&self.label)?;
        if self.tenant.len() > MAX_TENANT {
            return Err(Error::invalid(format!(
                "tenant id longer than {MAX_TENANT} bytes"
            )));
        }
        let nslots = u8::try_from(self.slots.len())
            .ok()
            .filter(|n| usize::from(*n) <= MAX_SLOTS)
            .ok_or_else(|| Error::invalid(format!("more than {MAX_SLOTS} key slots")))?;
        let mut w = Writer::with_capacity(512);
        w.raw(&MAGIC)
            .u32(FORMAT_VERSION)
            .u32(self.flags)
            .raw(&self.fs_uuid);
        w.u32(self.block_size)
            .u16(self.cipher_suite)
            .i64(self.created)
            .u64(self.epoch);
        w.raw(&self.meta_digest);
        w.bytes16(self.label.as_bytes())?
            .bytes16(self.tenant.as_bytes())?;
        w.u8(nslots);
        for slot in &self.slots {
            w.u8(slot.index).u8(slot.kind);
            w.bytes16(&slot.key_id)?.bytes16(&slot.wrapped)?;
        }
        let tag = mac.mac(w.as_slice());
        w.raw(&tag);
        Ok(w.into_vec())
    }

    /// Decodes a superblock WITHOUT checking its MAC (the MAC key comes from a slot in it).
    /// Callers must follow with [`Superblock::verify`].
    pub fn decode_unverified(bytes: &[u8]) -> Result<Superblock> {
        let mut r = Reader::new(bytes, "superblock");
        let magic: [u8; 8] = r.array()?;
        if magic != MAGIC {
            return Err(Error::format(
                "superblock: bad magic, not a digimedfs filesystem",
            ));
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(Error::format(format!(
                "superblock: unsupported on-disk format version {version} (this build reads \
                 version {FORMAT_VERSION}); probably made by a newer digimedfs"
            )));
        }
        let flags = r.u32()?;
        let fs_uuid: [u8; 16] = r.array()?;
        let block_size = r.u32()?;
        check_block_size(block_size).map_err(|e| Error::format(format!("superblock: {e}")))?;
        let cipher_suite = r.u16()?;
        if cipher_suite != CIPHER_SUITE_V1 {
            return Err(Error::format(format!(
                "superblock: unknown cipher suite {cipher_suite}"
            )));
        }
        let created = r.i64()?;
        let epoch = r.u64()?;
        let meta_digest: [u8; 32] = r.array()?;
        let label = utf8(r.bytes16()?, "label")?;
        let tenant = utf8(r.bytes16()?, "tenant")?;
        let nslots = r.u8()?;
        if usize::from(nslots) > MAX_SLOTS {
            return Err(Error::format(format!("superblock: {nslots} key slots")));
        }
        let mut slots = Vec::with_capacity(usize::from(nslots));
        for _ in 0..nslots {
            let index = r.u8()?;
            let kind = r.u8()?;
            let key_id = r.bytes16()?.to_vec();
            let wrapped = r.bytes16()?.to_vec();
            slots.push(KeySlot {
                index,
                kind,
                key_id,
                wrapped,
            });
        }
        let _mac: [u8; MAC_LEN] = r.array()?;
        r.finish()?;
        Ok(Superblock {
            flags,
            fs_uuid,
            block_size,
            cipher_suite,
            created,
            epoch,
            meta_digest,
            label,
            tenant,
            slots,
        })
    }

    /// Checks the trailing MAC of `bytes` with the derived superblock key.
    pub fn verify(bytes: &[u8], mac: &RecordMac) -> Result<()> {
        let split = bytes
            .len()
            .checked_sub(MAC_LEN)
            .ok_or_else(|| Error::format("superblock: shorter than its MAC"))?;
        let (body, tag) = bytes.split_at(split);
        if mac.verify(body, tag) {
            Ok(())
        } else {
            Err(Error::integrity(
                "superblock MAC mismatch: the superblock was modified",
            ))
        }
    }

    /// Tries each slot with `wrapping`; returns the master key and derived keys.
    pub fn unlock(&self, wrapping: &WrappingKey) -> Option<(MasterKey, u8)> {
        self.slots
            .iter()
            .find_map(|slot| slot.open(wrapping, &self.fs_uuid).map(|m| (m, slot.index)))
    }

    /// Whether the clean flag is set.
    pub fn is_clean(&self) -> bool {
        self.flags & FLAG_CLEAN != 0
    }
}

/// Derives the working keys for a superblock's filesystem.
pub fn derive_keys(master: &MasterKey, sb: &Superblock) -> Result<FsKeys> {
    FsKeys::derive(master, &sb.fs_uuid)
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::format(format!("superblock: {what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(master: &MasterKey, wk: &WrappingKey) -> Superblock {
        let uuid = [7u8; 16];
        Superblock {
            flags: FLAG_CLEAN,
            fs_uuid: uuid,
            block_size: 4096,
            cipher_suite: CIPHER_SUITE_V1,
            created: 1_700_000_000,
            epoch: 3,
            meta_digest: [1; 32],
            label: "cardio".into(),
            tenant: "tenant-a".into(),
            slots: vec![KeySlot::seal(0, 1, Vec::new(), wk, &uuid, master)],
        }
    }

    #[test]
    fn roundtrip_verify_and_unlock() {
        let master = MasterKey::generate();
        let wk = WrappingKey::generate();
        let sb = sample(&master, &wk);
        let keys = FsKeys::derive(&master, &sb.fs_uuid).unwrap();
        let bytes = sb.encode(&keys.superblock).unwrap();
        let back = Superblock::decode_unverified(&bytes).unwrap();
        assert_eq!(back, sb);
        Superblock::verify(&bytes, &keys.superblock).unwrap();
        let (m, idx) = back.unlock(&wk).unwrap();
        assert_eq!(idx, 0);
        assert_eq!(m.expose(), master.expose());
        assert!(back.unlock(&WrappingKey::generate()).is_none());
    }

    #[test]
    fn tampering_and_truncation_detected() {
        let master = MasterKey::generate();
        let wk = WrappingKey::generate();
        let sb = sample(&master, &wk);
        let keys = FsKeys::derive(&master, &sb.fs_uuid).unwrap();
        let bytes = sb.encode(&keys.superblock).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let rejected = match Superblock::decode_unverified(&bad) {
                Err(_) => true,
                Ok(_) => Superblock::verify(&bad, &keys.superblock).is_err(),
            };
            assert!(rejected, "flip at byte {i} not detected");
        }
        for cut in 0..bytes.len() {
            assert!(Superblock::decode_unverified(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn future_version_refused_with_clear_message() {
        let master = MasterKey::generate();
        let wk = WrappingKey::generate();
        let keys = FsKeys::derive(&master, &[7u8; 16]).unwrap();
        let mut bytes = sample(&master, &wk).encode(&keys.superblock).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = Superblock::decode_unverified(&bytes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported on-disk format version 2"),
            "{err}"
        );
    }
}
