//! Data-block tags (POLYVAL with an AES mask, see [`BlockMac`]) and keyed BLAKE3 PRFs:
//! directory-entry / xattr-name keys and record MACs.
//!
//! Every BLAKE3 input is domain-separated by a 4-byte ASCII prefix (`dir1`, `xat1`) or, for
//! [`RecordMac::mac_parts`], by length-prefixing each part, so no two distinct inputs of one
//! function (or of two functions sharing a key) hash the same byte string; those outputs are
//! truncated BLAKE3 keyed-mode outputs. Block tags bind inode, block index, generation and
//! length through their layout. Every verification is constant time (`subtle`).
//!
//! Guarantees: the keys are held in heap boxes that are zeroized on drop (the BLAKE3 keys by
//! us, the POLYVAL key and its powers by the `polyval` crate's `zeroize` feature); the types
//! are neither `Debug`, `Clone` nor `Copy`.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Length of a data-block tag in bytes.
pub const TAG_LEN: usize = 16;

/// A 32-byte BLAKE3 key, zeroized on drop.
struct MacKey(Box<[u8; 32]>);

impl MacKey {
    fn new(key: &[u8; 32]) -> MacKey {
        let mut k = MacKey(Box::new([0u8; 32]));
        k.0.copy_from_slice(key);
        k
    }

    fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.0)
    }
}

impl Drop for MacKey {
    #[inline(never)]
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// The first `N` bytes of the hasher's output.
fn truncated<const N: usize>(hasher: &blake3::Hasher) -> [u8; N] {
    let mut out = [0u8; N];
    hasher.finalize_xof().fill(&mut out);
    out
}

/// Length of a slice as a little-endian u64 (lossless: `usize` is at most 64 bits).
fn le64_len(data: &[u8]) -> [u8; 8] {
    (data.len() as u64).to_le_bytes()
}

/// Data-block tags: a Wegman-Carter MAC over the ciphertext (encrypt-then-MAC), as GCM-SIV and
/// GMAC build theirs, so it runs at carry-less-multiply speed:
///
/// ```text
/// S   = POLYVAL_H(ciphertext || le64(block_index) || le64(len(ciphertext)))   (RFC 8452)
/// tag = S xor AES-256_K(le64(ino) || le64(generation))
/// ```
///
/// `H` (16 bytes) and `K` (32 bytes) are HKDF-SHA256 expansions of the block MAC key with the
/// infos `"digimedfs v1 block tag polyval"` and `"digimedfs v1 block tag aes"`. The mask
/// `(ino, generation)` is unique because every block write takes a fresh filesystem-wide
/// generation, which is what the construction needs; tags are additionally kept only inside
/// sealed metadata records, so storage never sees one.
pub struct BlockMac {
    /// POLYVAL keyed with `H`, powers of `H` expanded, nothing hashed: each tag starts from a
    /// copy. Boxed so the key is not moved around; the crate zeroizes it on drop.
    hash: Box<polyval::Polyval>,
    mask: aes::Aes256,
}

impl BlockMac {
    /// A block MAC under the 32-byte block MAC key.
    pub fn new(key: &[u8; 32]) -> BlockMac {
        let mut h = zeroize::Zeroizing::new([0u8; 16]);
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        // HKDF-SHA256 accepts outputs up to 8160 bytes: these lengths cannot fail.
        let _ = super::kdf::hkdf_sha256(key, &[], super::kdf::LABEL_BLOCK_TAG_POLYVAL, &mut h[..]);
        let _ = super::kdf::hkdf_sha256(key, &[], super::kdf::LABEL_BLOCK_TAG_AES, &mut k[..]);
        let hash = Box::new(polyval::Polyval::new((&*h).into()));
        use aes::cipher::KeyInit;
        BlockMac {
            hash,
            mask: aes::Aes256::new((&*k).into()),
        }
    }

    /// A block MAC with the same POLYVAL key `H` as `self` and the mask key `mask_key` used
    /// directly as `K` (the mask key of one incarnation, see
    /// [`crate::crypto::incarnation`]). Only the mask must never repeat its input under one
    /// key, so `H` can be shared while each incarnation gets its own `K`.
    pub fn with_mask_key(&self, mask_key: &[u8; 32]) -> BlockMac {
        use aes::cipher::KeyInit;
        BlockMac {
            hash: Box::new(polyval::Polyval::clone(&self.hash)),
            mask: aes::Aes256::new(mask_key.into()),
        }
    }

    /// The tag of a block's ciphertext (see the type's documentation for the layout).
    pub fn tag(
        &self,
        ino: u64,
        block_index: u64,
        generation: u64,
        ciphertext: &[u8],
    ) -> [u8; TAG_LEN] {
        use polyval::universal_hash::UniversalHash;
        let mut p = polyval::Polyval::clone(&self.hash);
        p.update_padded(ciphertext);
        self.finish_tag(p, ino, block_index, generation, ciphertext.len())
    }

    /// The tag from the POLYVAL state after the ciphertext: adds the length block, masks.
    fn finish_tag(
        &self,
        mut p: polyval::Polyval,
        ino: u64,
        block_index: u64,
        generation: u64,
        ciphertext_len: usize,
    ) -> [u8; TAG_LEN] {
        use aes::cipher::BlockEncrypt;
        use polyval::universal_hash::UniversalHash;
        let mut last = [0u8; 16];
        last[..8].copy_from_slice(&block_index.to_le_bytes());
        last[8..].copy_from_slice(&(ciphertext_len as u64).to_le_bytes());
        p.update(&[last.into()]);
        let s = p.finalize();
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&ino.to_le_bytes());
        nonce[8..].copy_from_slice(&generation.to_le_bytes());
        let mut m = aes::Block::from(nonce);
        self.mask.encrypt_block(&mut m);
        let mut out = [0u8; TAG_LEN];
        for ((o, a), b) in out.iter_mut().zip(s.iter()).zip(m.iter()) {
            *o = a ^ b;
        }
        out
    }

    /// Whether `tag` is the tag of these fields (constant-time comparison).
    pub fn verify(
        &self,
        ino: u64,
        block_index: u64,
        generation: u64,
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        bool::from(
            self.tag(ino, block_index, generation, ciphertext)
                .ct_eq(tag),
        )
    }
}

/// Keys of directory entries and extended-attribute names (names never stored in the clear
/// as keys of the metadata store).
pub struct NameMac(MacKey);

impl NameMac {
    /// A name MAC under `key`.
    pub fn new(key: &[u8; 32]) -> NameMac {
        NameMac(MacKey::new(key))
    }

    /// Directory-entry key: first 16 bytes of BLAKE3-keyed(key, "dir1" || le64(parent) || name).
    /// Also used for xattr names with a different domain: see xattr_key.
    pub fn entry_key(&self, parent: u64, name: &[u8]) -> [u8; 16] {
        let mut h = self.0.hasher();
        h.update(super::kdf::DOMAIN_DIRENT_NAME);
        h.update(&parent.to_le_bytes());
        h.update(name);
        truncated(&h)
    }

    /// first 16 bytes of BLAKE3-keyed(key, "xat1" || le64(ino) || name)
    pub fn xattr_key(&self, ino: u64, name: &[u8]) -> [u8; 16] {
        let mut h = self.0.hasher();
        h.update(super::kdf::DOMAIN_XATTR_NAME);
        h.update(&ino.to_le_bytes());
        h.update(name);
        truncated(&h)
    }
}

/// Generic 32-byte keyed BLAKE3 MAC (superblock, metadata digest).
pub struct RecordMac(MacKey);

impl RecordMac {
    /// A record MAC under `key`.
    pub fn new(key: &[u8; 32]) -> RecordMac {
        RecordMac(MacKey::new(key))
    }

    /// BLAKE3-keyed(key, data), 32 bytes.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut h = self.0.hasher();
        h.update(data);
        *h.finalize().as_bytes()
    }

    /// BLAKE3-keyed(key, le64(len(p0)) || p0 || le64(len(p1)) || p1 || ...), 32 bytes.
    pub fn mac_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = self.0.hasher();
        for part in parts {
            h.update(&le64_len(part));
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    /// [`RecordMac::mac_parts`] of `head` followed by one last part of `last_len` bytes read
    /// from `last` (a file too large to hold in memory). Fails if `last` ends early.
    pub fn mac_parts_streamed(
        &self,
        head: &[&[u8]],
        last_len: u64,
        last: &mut dyn std::io::Read,
    ) -> std::io::Result<[u8; 32]> {
        let mut h = self.0.hasher();
        for part in head {
            h.update(&le64_len(part));
            h.update(part);
        }
        h.update(&last_len.to_le_bytes());
        let copied = std::io::copy(&mut std::io::Read::take(last, last_len), &mut h)?;
        if copied != last_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "shorter than the length it was MACed with",
            ));
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Whether `tag` is [`RecordMac::mac`] of `data` (constant time; false if `tag` is not 32
    /// bytes).
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let Ok(tag) = <&[u8; 32]>::try_from(tag) else {
            return false;
        };
        bool::from(self.mac(data).ct_eq(tag))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn streamed_last_part_gives_the_same_mac() {
        let m = RecordMac::new(&[3; 32]);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let want = m.mac_parts(&[b"label", &body]);
        let got = m
            .mac_parts_streamed(&[b"label"], body.len() as u64, &mut body.as_slice())
            .unwrap();
        assert_eq!(got, want);
        let short = m.mac_parts_streamed(&[b"label"], body.len() as u64 + 1, &mut body.as_slice());
        assert!(short.is_err());
    }

    const K: [u8; 32] = [7u8; 32];

    #[test]
    fn block_tag_binds_every_field() {
        let m = BlockMac::new(&K);
        let base = m.tag(1, 2, 3, b"cipher");
        assert_eq!(base, m.tag(1, 2, 3, b"cipher"));
        assert_ne!(base, m.tag(9, 2, 3, b"cipher"));
        assert_ne!(base, m.tag(1, 9, 3, b"cipher"));
        assert_ne!(base, m.tag(1, 2, 9, b"cipher"));
        assert_ne!(base, m.tag(1, 2, 3, b"cipheR"));
        assert_ne!(base, m.tag(1, 2, 3, b"ciphe"));
        assert_ne!(base, BlockMac::new(&[8u8; 32]).tag(1, 2, 3, b"cipher"));
    }

    #[test]
    fn block_tag_matches_spec_layout() {
        use aes::cipher::{BlockEncrypt, KeyInit};
        use polyval::universal_hash::UniversalHash;
        let m = BlockMac::new(&K);
        let ct = [0x5au8; 64];
        let mut h = [0u8; 16];
        let mut k = [0u8; 32];
        crate::crypto::kdf::hkdf_sha256(&K, &[], b"digimedfs v1 block tag polyval", &mut h)
            .unwrap();
        crate::crypto::kdf::hkdf_sha256(&K, &[], b"digimedfs v1 block tag aes", &mut k).unwrap();
        let mut p = polyval::Polyval::new(&h.into());
        let mut msg = ct.to_vec();
        msg.extend_from_slice(&2u64.to_le_bytes());
        msg.extend_from_slice(&64u64.to_le_bytes());
        p.update_padded(&msg);
        let s = p.finalize();
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&1u64.to_le_bytes());
        nonce[8..].copy_from_slice(&3u64.to_le_bytes());
        let mut mask = aes::Block::from(nonce);
        aes::Aes256::new(&k.into()).encrypt_block(&mut mask);
        let want: Vec<u8> = s.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(&m.tag(1, 2, 3, &ct)[..], &want[..]);
    }

    #[test]
    fn polyval_matches_rfc8452() {
        use polyval::universal_hash::UniversalHash;
        // RFC 8452, Appendix A: POLYVAL(H, X_1, X_2).
        let h: [u8; 16] = hex::decode("25629347589242761d31f826ba4b757b")
            .unwrap()
            .try_into()
            .unwrap();
        let x = hex::decode(concat!(
            "4f4f95668c83dfb6401762bb2d01a262",
            "d1a24ddd2721d006bbe45f20d3c9f362"
        ))
        .unwrap();
        let mut p = polyval::Polyval::new(&h.into());
        p.update_padded(&x);
        assert_eq!(
            hex::encode(p.finalize()),
            "f7a3b47b846119fae5b7866cf5e5b77e"
        );
    }

    #[test]
    fn block_tags_known_answers() {
        // Tags are stored in the metadata: a library update must not change a single one.
        // (Values computed with polyval 0.6 before the move to 0.7.)
        let m = BlockMac::new(&K);
        let ct: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(
            hex::encode(m.tag(5, 77, 9001, &ct)),
            "4e3fad6047cda1021f8f1ba2291e6d68"
        );
        assert_eq!(
            hex::encode(m.tag(5, 78, 9002, &ct[..100])),
            "c92cdcda5b1a8b39f4452acbbc9f2337"
        );
        // The fourth block of the former interleaved batch (block 3, generation 53).
        assert_eq!(
            hex::encode(m.tag(6, 3, 53, &ct)),
            "886b4e763781bcdf8d177cdd761abc38"
        );
    }

    #[test]
    fn verify_rejects_only_the_wrong_tag_among_many_blocks() {
        let m = BlockMac::new(&K);
        let data: Vec<Vec<u8>> = (0..11u8)
            .map(|i| {
                let len = if i == 5 { 100 } else { 4096 };
                (0..len).map(|j| (j as u8).wrapping_mul(i + 3)).collect()
            })
            .collect();
        let blocks: Vec<(u64, u64, &[u8])> = data
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u64 * 7, 1000 + i as u64, &d[..]))
            .collect();
        let mut tags: Vec<[u8; TAG_LEN]> = blocks
            .iter()
            .map(|(idx, gen, ct)| m.tag(42, *idx, *gen, ct))
            .collect();
        tags[9][0] ^= 1;
        let ok: Vec<bool> = blocks
            .iter()
            .zip(&tags)
            .map(|((idx, gen, ct), t)| m.verify(42, *idx, *gen, ct, t))
            .collect();
        assert_eq!(ok.iter().filter(|v| !**v).count(), 1);
        assert!(!ok[9]);
    }

    #[test]
    fn block_verify_rejects_flipped_bits() {
        let m = BlockMac::new(&K);
        let ct = vec![0xabu8; 64];
        let tag = m.tag(1, 2, 3, &ct);
        assert!(m.verify(1, 2, 3, &ct, &tag));
        for bit in 0..(TAG_LEN * 8) {
            let mut bad = tag;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!m.verify(1, 2, 3, &ct, &bad));
        }
        let mut bad_ct = ct.clone();
        bad_ct[10] ^= 0x01;
        assert!(!m.verify(1, 2, 3, &bad_ct, &tag));
        assert!(!m.verify(1, 2, 4, &ct, &tag));
    }

    #[test]
    fn name_keys_bind_parent_name_and_domain() {
        let m = NameMac::new(&K);
        let e = m.entry_key(1, b"a");
        assert_eq!(e, m.entry_key(1, b"a"));
        assert_ne!(e, m.entry_key(2, b"a"));
        assert_ne!(e, m.entry_key(1, b"b"));
        assert_ne!(e, m.xattr_key(1, b"a"));
        assert_ne!(m.xattr_key(1, b"a"), m.xattr_key(2, b"a"));
        assert_ne!(m.xattr_key(1, b"a"), m.xattr_key(1, b"b"));
        let mut msg = b"dir1".to_vec();
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(b"a");
        assert_eq!(&e[..], &blake3::keyed_hash(&K, &msg).as_bytes()[..16]);
    }

    #[test]
    fn record_mac_and_parts() {
        let m = RecordMac::new(&K);
        let t = m.mac(b"superblock");
        assert_eq!(t, *blake3::keyed_hash(&K, b"superblock").as_bytes());
        assert!(m.verify(b"superblock", &t));
        assert!(!m.verify(b"superblocK", &t));
        assert!(!m.verify(b"superblock", &t[..31]));
        assert!(!m.verify(b"superblock", &[]));
        let mut bad = t;
        bad[31] ^= 0x80;
        assert!(!m.verify(b"superblock", &bad));
        // Length prefixes make part boundaries matter.
        assert_ne!(m.mac_parts(&[b"ab", b"c"]), m.mac_parts(&[b"a", b"bc"]));
        assert_ne!(m.mac_parts(&[b"abc"]), m.mac(b"abc"));
        let mut msg = 2u64.to_le_bytes().to_vec();
        msg.extend_from_slice(b"ab");
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(b"c");
        assert_eq!(m.mac_parts(&[b"ab", b"c"]), m.mac(&msg));
    }
}
