//! Metadata record sealing with AES-256-GCM-SIV (RFC 8452) and a random 96-bit nonce.
//!
//! Sealed layout: `nonce(12) || ciphertext || tag(16)`, so a sealed record is
//! [`SEAL_OVERHEAD`] bytes longer than its plaintext. The associated data binds a record to
//! where it is stored (e.g. its table and key), so a valid record moved elsewhere fails to open.
//! GCM-SIV is nonce-misuse resistant: a repeated random nonce leaks only whether two records
//! with the same AD are identical, never the key or other plaintext.
//!
//! Guarantees: [`MetaSealer::open`] returns `None` (never panics) for truncated, tampered or
//! foreign input, and returns plaintext only after the tag has verified, in a buffer that is
//! zeroized on drop. The type is neither `Debug`, `Clone` nor `Copy`.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::Aes256GcmSiv;
use rand::RngCore;
use zeroize::Zeroizing;

/// Length of the random nonce that starts a sealed record.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag that ends a sealed record.
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes a sealed record adds to its plaintext: nonce(12) + tag(16).
pub const SEAL_OVERHEAD: usize = 12 + 16;

/// Seals and opens metadata records under one AES-256-GCM-SIV key.
pub struct MetaSealer(Aes256GcmSiv);

impl MetaSealer {
    /// A sealer under the 32-byte `key`.
    pub fn new(key: &[u8; 32]) -> MetaSealer {
        MetaSealer(Aes256GcmSiv::new(key.into()))
    }

    /// `nonce || AES-256-GCM-SIV(key, nonce, ad, plaintext) || tag` with a fresh random nonce.
    #[allow(clippy::expect_used)]
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // A userspace CSPRNG (ChaCha, seeded and periodically reseeded from the OS) avoids one
        // getrandom(2) call per record; GCM-SIV tolerates even a repeated nonce.
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut body = Zeroizing::new(plaintext.to_vec());
        let tag = self
            .0
            .encrypt_inout_detached((&nonce).into(), ad, body.as_mut_slice().into())
            .expect(
                "AES-GCM-SIV fails only for plaintext or AD above 2^36 bytes; records are tiny",
            );
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        out
    }

    /// The plaintext of `sealed` if it was sealed under this key with this `ad`.
    /// None if too short or authentication fails (the caller adds context).
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, rest) = sealed.split_first_chunk::<NONCE_LEN>()?;
        let (ct, tag) = rest.split_last_chunk::<AEAD_TAG_LEN>()?;
        let mut buf = Zeroizing::new(ct.to_vec());
        self.0
            .decrypt_inout_detached(nonce.into(), ad, buf.as_mut_slice().into(), tag.into())
            .ok()?;
        Some(buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sealer() -> MetaSealer {
        MetaSealer::new(&[3u8; 32])
    }

    #[test]
    fn roundtrip() {
        let s = sealer();
        for pt in [&b""[..], b"x", b"inode record", &[0u8; 1000]] {
            let sealed = s.seal(b"inode 1", pt);
            assert_eq!(sealed.len(), pt.len() + SEAL_OVERHEAD);
            assert_eq!(s.open(b"inode 1", &sealed).unwrap().as_slice(), pt);
        }
    }

    #[test]
    fn wrong_ad_or_key_fails() {
        let s = sealer();
        let sealed = s.seal(b"inode 1", b"record");
        assert!(s.open(b"inode 2", &sealed).is_none());
        assert!(s.open(b"", &sealed).is_none());
        assert!(MetaSealer::new(&[4u8; 32])
            .open(b"inode 1", &sealed)
            .is_none());
    }

    #[test]
    fn flipped_bit_fails() {
        let s = sealer();
        let sealed = s.seal(b"ad", b"some record");
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(s.open(b"ad", &bad).is_none(), "bit {i}");
        }
    }

    #[test]
    fn truncated_fails() {
        let s = sealer();
        let sealed = s.seal(b"ad", b"some record");
        for len in 0..sealed.len() {
            assert!(s.open(b"ad", &sealed[..len]).is_none(), "len {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(s.open(b"ad", &longer).is_none());
    }

    #[test]
    fn opens_a_record_sealed_by_an_earlier_build() {
        // Sealed with aes-gcm-siv 0.11 (before the move to 0.12): stored records must stay
        // readable across library versions.
        let pt: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(7)).collect();
        let sealed_hex = concat!(
            "45d99b5fbb8e01b616248b5062bb6956288df4e8bc6b5e87f94c61ccf24d3d1d40d57307e480a19da5a4",
            "c28fb90224f49a33cab263f206d4d35e22e7253937fdaef4884599d80689cdb98a44851fe4872aaf39cb",
            "9a11b829cd9ddda992fc8e269f37400503a97af9a54e53d2b0879d7d62391e0b02fe698104398029b0b8",
            "82d5"
        );
        let sealed = hex::decode(sealed_hex).unwrap();
        assert_eq!(
            sealer().open(b"inode 42", &sealed).unwrap().as_slice(),
            &pt[..]
        );
        assert!(sealer().open(b"inode 43", &sealed).is_none());
    }

    #[test]
    fn seals_are_randomized() {
        let s = sealer();
        let a = s.seal(b"ad", b"same");
        let b = s.seal(b"ad", b"same");
        assert_ne!(a, b);
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }
}
