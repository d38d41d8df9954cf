//! Key slots: envelope encryption of the master key under a wrapping key (LUKS2-like).
//!
//! KEK = HKDF-SHA256(ikm = wrapping key, salt = fs uuid, info = [`LABEL_KEY_SLOT`] || ad); the
//! 64-byte master key is sealed under the KEK with AES-256-GCM-SIV and associated data `ad`,
//! giving `nonce(12) || ct(64) || tag(16)` = [`WRAPPED_KEY_LEN`] bytes.
//!
//! Guarantees: unwrapping succeeds only with the same wrapping key, fs uuid and `ad` as wrapping
//! and an untampered slot; otherwise it returns `None` without panicking. The KEK and the
//! unwrapped plaintext live only in buffers zeroized on drop.

use zeroize::Zeroizing;

use crate::crypto::kdf::{hkdf_sha256, LABEL_KEY_SLOT};
use crate::crypto::keys::{MasterKey, WrappingKey, MASTER_KEY_LEN};
use crate::crypto::seal::{MetaSealer, SEAL_OVERHEAD};

/// Length of a wrapped master key: nonce(12) || ct(64) || tag(16).
pub const WRAPPED_KEY_LEN: usize = 92;

const _: () = assert!(WRAPPED_KEY_LEN == MASTER_KEY_LEN + SEAL_OVERHEAD);

/// The key-encryption key of a slot, or None if HKDF fails (it cannot for 32 bytes).
fn kek(wrapping: &WrappingKey, fs_uuid: &[u8; 16], ad: &[u8]) -> Option<MetaSealer> {
    let mut info = Vec::with_capacity(LABEL_KEY_SLOT.len() + ad.len());
    info.extend_from_slice(LABEL_KEY_SLOT);
    info.extend_from_slice(ad);
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(wrapping.expose(), fs_uuid, &info, key.as_mut_slice()).ok()?;
    Some(MetaSealer::new(&key))
}

/// KEK = HKDF-SHA256(ikm = wrapping key, salt = fs_uuid, info = LABEL_KEY_SLOT || ad), then
/// AES-256-GCM-SIV seal of the 64-byte master key with associated data `ad` (the caller passes the
/// superblock bytes that identify the slot: fs uuid, slot index, key-source kind, key id).
/// Output = nonce(12) || ct(64) || tag(16) = 92 bytes.
#[allow(clippy::expect_used)]
pub fn wrap_master(
    wrapping: &WrappingKey,
    fs_uuid: &[u8; 16],
    ad: &[u8],
    master: &MasterKey,
) -> Vec<u8> {
    kek(wrapping, fs_uuid, ad)
        .expect("HKDF-SHA256 cannot fail for a 32-byte output")
        .seal(ad, master.expose())
}

/// The master key sealed in `wrapped`.
/// None when the wrapping key is wrong or the slot was tampered with.
pub fn unwrap_master(
    wrapping: &WrappingKey,
    fs_uuid: &[u8; 16],
    ad: &[u8],
    wrapped: &[u8],
) -> Option<MasterKey> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return None;
    }
    let plain = kek(wrapping, fs_uuid, ad)?.open(ad, wrapped)?;
    MasterKey::from_bytes(&plain).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [0x11; 16];

    #[test]
    fn roundtrip() {
        let w = WrappingKey::generate();
        let m = MasterKey::generate();
        let slot = wrap_master(&w, &UUID, b"slot 0 keyfile", &m);
        assert_eq!(slot.len(), WRAPPED_KEY_LEN);
        let back = unwrap_master(&w, &UUID, b"slot 0 keyfile", &slot).unwrap();
        assert_eq!(back.expose(), m.expose());
        // Randomized: wrapping twice gives different slots that both open.
        let slot2 = wrap_master(&w, &UUID, b"slot 0 keyfile", &m);
        assert_ne!(slot, slot2);
        assert!(unwrap_master(&w, &UUID, b"slot 0 keyfile", &slot2).is_some());
    }

    #[test]
    fn wrong_key_uuid_or_ad_fails() {
        let w = WrappingKey::generate();
        let m = MasterKey::generate();
        let slot = wrap_master(&w, &UUID, b"ad", &m);
        assert!(unwrap_master(&WrappingKey::generate(), &UUID, b"ad", &slot).is_none());
        assert!(unwrap_master(&w, &[0x12; 16], b"ad", &slot).is_none());
        assert!(unwrap_master(&w, &UUID, b"ae", &slot).is_none());
        assert!(unwrap_master(&w, &UUID, b"", &slot).is_none());
    }

    #[test]
    fn tampered_or_truncated_fails() {
        let w = WrappingKey::generate();
        let m = MasterKey::generate();
        let slot = wrap_master(&w, &UUID, b"ad", &m);
        for i in 0..slot.len() {
            let mut bad = slot.clone();
            bad[i] ^= 0x01;
            assert!(unwrap_master(&w, &UUID, b"ad", &bad).is_none());
        }
        assert!(unwrap_master(&w, &UUID, b"ad", &slot[..91]).is_none());
        assert!(unwrap_master(&w, &UUID, b"ad", &[]).is_none());
        let mut longer = slot.clone();
        longer.push(0);
        assert!(unwrap_master(&w, &UUID, b"ad", &longer).is_none());
    }
}
