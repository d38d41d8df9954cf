//! Key derivation: HKDF-SHA256 (RFC 5869), and every HKDF label and associated-data or domain
//! prefix of digimedfs and its key service, in this one module.
//!
//! Each working key of a filesystem is `HKDF-SHA256(ikm = master key, salt = fs uuid,
//! info = label)` with one distinct label per key; the key-encryption key of a key slot uses
//! [`LABEL_KEY_SLOT`] followed by the slot's associated data. The labels are part of the on-disk
//! format: changing any of them makes existing filesystems unreadable. Distinct labels guarantee
//! independent keys (HKDF's info domain separation); no label is a prefix of another, so a label
//! with data appended never equals another label. The test `labels_are_pinned` fails on any
//! change to any of these byte strings.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::{Error, Result};

/// Label of the 64-byte AES-256-XTS data key (two 32-byte halves, which must differ).
pub const LABEL_DATA_XTS: &[u8] = b"digimedfs v1 data aes-256-xts";
/// Label of the 32-byte AES-256-GCM-SIV metadata sealing key.
pub const LABEL_META_AEAD: &[u8] = b"digimedfs v1 meta aes-256-gcm-siv";
/// Label of the 32-byte BLAKE3 key for directory-entry and xattr-name keys.
pub const LABEL_NAME_MAC: &[u8] = b"digimedfs v1 name mac";
/// Label of the 32-byte block-tag root key, from which the POLYVAL and AES mask keys of
/// incarnation 0 are derived ([`LABEL_BLOCK_TAG_POLYVAL`], [`LABEL_BLOCK_TAG_AES`]).
pub const LABEL_BLOCK_MAC: &[u8] = b"digimedfs v1 block mac";
/// Label of the 32-byte BLAKE3 key for the superblock MAC.
pub const LABEL_SUPERBLOCK_MAC: &[u8] = b"digimedfs v1 superblock mac";
/// Label of the 32-byte BLAKE3 key for the metadata digest.
pub const LABEL_META_DIGEST: &[u8] = b"digimedfs v1 meta digest";
/// Label prefix of the 32-byte key-slot key-encryption key (the slot's AD is appended).
pub const LABEL_KEY_SLOT: &[u8] = b"digimedfs v1 key slot";
/// Label of the 32-byte incarnation root key, from which the block keys of every
/// incarnation k ≥ 1 are derived (see [`crate::crypto::incarnation`]).
pub const LABEL_INCARNATION_ROOT: &[u8] = b"digimedfs v1 incarnation root";
/// Label prefix of the 64-byte AES-256-XTS data key of incarnation k
/// (ikm = incarnation root, salt = the incarnation's salt, info = label ‖ be32(k)).
pub const LABEL_INCARNATION_XTS: &[u8] = b"digimedfs v1 incarnation data aes-256-xts";
/// Label prefix of the 32-byte block-tag mask key (AES-256 `K`) of incarnation k
/// (ikm = incarnation root, salt = the incarnation's salt, info = label ‖ be32(k)).
pub const LABEL_INCARNATION_MASK: &[u8] = b"digimedfs v1 incarnation block tag aes";

/// Label of the POLYVAL key `H` of block tags (ikm = block-tag root key, no salt).
pub const LABEL_BLOCK_TAG_POLYVAL: &[u8] = b"digimedfs v1 block tag polyval";
/// Label of the AES-256 mask key `K` of block tags (ikm = block-tag root key, no salt).
pub const LABEL_BLOCK_TAG_AES: &[u8] = b"digimedfs v1 block tag aes";
/// Label of the key-service key that keeps the audit chain (ikm = the service's root secret).
pub const LABEL_AUDIT_CHAIN: &[u8] = b"digimedfs v1 audit chain mac";
/// Label prefix of a tenant's key-encryption key (ikm = tenant seed; the key version and the
/// tenant id are appended).
pub const LABEL_TENANT_KEK: &[u8] = b"digimedfs v1 tenant kek";
/// Label of the key that seals tenant seeds in the key service's registry (ikm = root secret).
pub const LABEL_SEED_SEAL: &[u8] = b"digimedfs v1 registry seed seal";

/// Associated-data prefix of a sealed metadata record (the record's key is appended).
pub const AD_RECORD: &[u8] = b"dgm1 rec";
/// Associated-data prefix of a key slot's wrapped master key (slot index and kind appended).
pub const AD_KEY_SLOT: &[u8] = b"dgm1 slot";
/// MAC domain of a backup point's manifest (the manifest body follows).
pub const DOMAIN_MANIFEST: &[u8] = b"dgm1 backup manifest";
/// BLAKE3 domain of directory-entry keys (parent inode and name follow).
pub const DOMAIN_DIRENT_NAME: &[u8] = b"dir1";
/// BLAKE3 domain of xattr-name keys (inode and name follow).
pub const DOMAIN_XATTR_NAME: &[u8] = b"xat1";
/// Associated-data prefix of a tenant seed sealed in the registry (the tenant id follows).
pub const AD_TENANT_SEED: &[u8] = b"digimedfs v1 tenant seed";
/// Associated-data prefix of a key in transit between the key service and a client.
pub const AD_TRANSIT: &[u8] = b"digimedfs v1 transit";
/// Associated data of the key service's root secret, sealed under the admin credential.
pub const AD_KEYSERVICE_ROOT: &[u8] = b"digimedfs v1 keyservice root";

/// Every HKDF label, in a fixed order (see the module docs).
pub const HKDF_LABELS: &[(&str, &[u8])] = &[
    ("LABEL_DATA_XTS", LABEL_DATA_XTS),
    ("LABEL_META_AEAD", LABEL_META_AEAD),
    ("LABEL_NAME_MAC", LABEL_NAME_MAC),
    ("LABEL_BLOCK_MAC", LABEL_BLOCK_MAC),
    ("LABEL_SUPERBLOCK_MAC", LABEL_SUPERBLOCK_MAC),
    ("LABEL_META_DIGEST", LABEL_META_DIGEST),
    ("LABEL_KEY_SLOT", LABEL_KEY_SLOT),
    ("LABEL_INCARNATION_ROOT", LABEL_INCARNATION_ROOT),
    ("LABEL_INCARNATION_XTS", LABEL_INCARNATION_XTS),
    ("LABEL_INCARNATION_MASK", LABEL_INCARNATION_MASK),
    ("LABEL_BLOCK_TAG_POLYVAL", LABEL_BLOCK_TAG_POLYVAL),
    ("LABEL_BLOCK_TAG_AES", LABEL_BLOCK_TAG_AES),
    ("LABEL_AUDIT_CHAIN", LABEL_AUDIT_CHAIN),
    ("LABEL_TENANT_KEK", LABEL_TENANT_KEK),
    ("LABEL_SEED_SEAL", LABEL_SEED_SEAL),
];

/// Every associated-data and domain prefix, in a fixed order.
pub const DOMAINS: &[(&str, &[u8])] = &[
    ("AD_RECORD", AD_RECORD),
    ("AD_KEY_SLOT", AD_KEY_SLOT),
    ("DOMAIN_MANIFEST", DOMAIN_MANIFEST),
    ("DOMAIN_DIRENT_NAME", DOMAIN_DIRENT_NAME),
    ("DOMAIN_XATTR_NAME", DOMAIN_XATTR_NAME),
    ("AD_TENANT_SEED", AD_TENANT_SEED),
    ("AD_TRANSIT", AD_TRANSIT),
    ("AD_KEYSERVICE_ROOT", AD_KEYSERVICE_ROOT),
];

/// HKDF-SHA256 extract-and-expand of `ikm` with `salt` and `info` into `out`.
///
/// Fails only if `out` is longer than 255 * 32 bytes (RFC 5869's limit).
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .map_err(|_| {
            Error::invalid(format!(
                "HKDF-SHA256 output of {} bytes is too long",
                out.len()
            ))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::crypto::{FsKeys, MasterKey};

    /// A change to any label or prefix changes the on-disk format or the key service's keys:
    /// this known answer (SHA-256 over `NAME=hex(bytes)` lines) must then be changed on purpose.
    #[test]
    fn labels_are_pinned() {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (name, bytes) in HKDF_LABELS.iter().chain(DOMAINS) {
            h.update(format!("{name}={}\n", hex::encode(bytes)));
        }
        assert_eq!(
            hex::encode(h.finalize()),
            "6d1815d7a44659c77701d8bf23fe7a75c3c77a5eab6d9e753a62b92d94260c7a"
        );
    }

    #[test]
    fn no_label_is_a_prefix_of_another() {
        for set in [HKDF_LABELS, DOMAINS] {
            for (i, (a, x)) in set.iter().enumerate() {
                for (j, (b, y)) in set.iter().enumerate() {
                    assert!(i == j || !y.starts_with(x), "{a} is a prefix of {b}");
                }
            }
        }
    }

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn check(ikm: &str, salt: &str, info: &str, okm: &str) {
        let want = h(okm);
        let mut out = vec![0u8; want.len()];
        hkdf_sha256(&h(ikm), &h(salt), &h(info), &mut out).unwrap();
        assert_eq!(hex::encode(out), okm);
    }

    #[test]
    fn rfc5869_case_1() {
        check(
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        );
    }

    #[test]
    fn rfc5869_case_2() {
        check(
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
             202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\
             404142434445464748494a4b4c4d4e4f",
            "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f\
             808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\
             a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf\
             d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef\
             f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c\
             59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71\
             cc30c58179ec3e87c14c01d5c1f3434f1d87",
        );
    }

    #[test]
    fn rfc5869_case_3() {
        // Empty salt and info. (RFC 5869 treats an absent salt as HashLen zeros, which HMAC
        // pads identically to an empty salt.)
        check(
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "",
            "",
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        );
    }

    #[test]
    fn too_long_output_is_an_error() {
        let mut out = vec![0u8; 255 * 32 + 1];
        assert!(hkdf_sha256(b"k", b"s", b"i", &mut out).is_err());
    }

    /// Pinned outputs of the key derivation for a fixed master key and uuid.
    /// Changing these changes the on-disk format: existing filesystems would no longer open.
    /// (The XTS output and the sealed record were cross-checked once against an independent
    /// HKDF + AES-XTS + AES-GCM-SIV implementation: Python `hmac` and `cryptography`.)
    #[test]
    fn fs_keys_derivation_is_pinned() {
        let master_bytes: Vec<u8> = (0u8..64).collect();
        let master = MasterKey::from_bytes(&master_bytes).unwrap();
        let uuid: [u8; 16] = *b"digimedfs-uuid-1";
        let keys = FsKeys::derive(&master, &uuid).unwrap();

        let entry = keys.names.entry_key(1, b"a");
        let xattr = keys.names.xattr_key(1, b"user.a");
        let block = keys.blocks.tag(7, 3, 42, b"ciphertext");
        let sb = keys.superblock.mac(b"x");
        let digest = keys.digest.mac(b"x");
        let mut data = [0u8; 32];
        keys.data.encrypt_block(1, 1, &mut data).unwrap();
        let meta_ok = keys.meta.open(b"ad", &h(PINNED_SEALED)).map(|p| p.to_vec());

        assert_eq!(hex::encode(entry), PINNED_ENTRY);
        assert_eq!(hex::encode(xattr), PINNED_XATTR);
        assert_eq!(hex::encode(block), PINNED_BLOCK);
        assert_eq!(hex::encode(sb), PINNED_SUPERBLOCK);
        assert_eq!(hex::encode(digest), PINNED_DIGEST);
        assert_eq!(hex::encode(data), PINNED_DATA);
        assert_eq!(meta_ok.as_deref(), Some(&b"meta"[..]));
    }

    // Changing these changes the on-disk format.
    const PINNED_ENTRY: &str = "6dcdbc33b38d71644e5d91d106d011f1";
    const PINNED_XATTR: &str = "de0c38e1ef9e650f882b6e3350f82277";
    const PINNED_BLOCK: &str = "a05da9daab05a693c0c54ec79c4b794c";
    const PINNED_SUPERBLOCK: &str =
        "c5aa88fecee22fbe35d9beb6e76e5e7abcfea44d0b71cd691cce9ec4c98caf6f";
    const PINNED_DIGEST: &str = "11b9075bc13297d625594c17d6d7adee024e8bdc27c3eeef475d16d73083e983";
    const PINNED_DATA: &str = "2e0da779b42cbc47e5ea0c9870d2480e33160208d91e88bb7a83b90d1bb5bc50";
    /// `MetaSealer::seal(b"ad", b"meta")` made once with the derived meta key.
    const PINNED_SEALED: &str = "3d6e6ccbde59fd28ee40bf2bb03a8c171f715b282a79046f00e65913609db73e";
}
