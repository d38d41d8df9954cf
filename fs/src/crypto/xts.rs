//! Content encryption: AES-256-XTS (IEEE 1619-2007) over one whole filesystem block, in place.
//!
//! Each block is a single XTS data unit whose 16-byte tweak is
//! `le64(file_id) || le64(generation)`. The generation is unique per block write in the whole
//! filesystem, so a (key, tweak) pair never encrypts two different plaintexts. XTS gives
//! confidentiality only; integrity comes from [`crate::crypto::mac::BlockMac`].
//!
//! Guarantees: the two 256-bit key halves are required to differ (IEEE 1619 / FIPS 140 IG A.9);
//! buffers that are empty or not a multiple of 16 bytes are rejected with `Error::Invalid`
//! instead of reaching the `xts-mode` assertions (ciphertext stealing is never used).

use aes::cipher::KeyInit;
use aes::Aes256;
use subtle::ConstantTimeEq;
use xts_mode::Xts128;

use crate::{Error, Result};

/// AES-256-XTS cipher for whole data blocks.
pub struct DataCipher(Xts128<Aes256>);

impl DataCipher {
    /// A cipher from the 64-byte XTS key: `key[..32]` encrypts the data, `key[32..]` the tweak.
    /// `Err(Error::Invalid)` if the two halves are equal.
    pub fn new(key: &[u8; 64]) -> Result<DataCipher> {
        let k1: &[u8; 32] = key
            .first_chunk()
            .ok_or_else(|| Error::invalid("XTS key shorter than 32 bytes"))?;
        let k2: &[u8; 32] = key
            .last_chunk()
            .ok_or_else(|| Error::invalid("XTS key shorter than 32 bytes"))?;
        if bool::from(k1.ct_eq(k2)) {
            return Err(Error::invalid("XTS key halves must differ"));
        }
        let c1 = Aes256::new(k1.into());
        let c2 = Aes256::new(k2.into());
        Ok(DataCipher(Xts128::new(c1, c2)))
    }

    /// Encrypts `buf` in place as one XTS data unit.
    ///
    /// tweak = file_id as u64 little-endian || generation as u64 little-endian (16 bytes).
    /// `generation` is unique per block write in the whole filesystem, so the (file,generation)
    /// tweak never repeats. buf.len() must be a multiple of 16 and >= 16 (Err(Error::invalid)
    /// otherwise).
    pub fn encrypt_block(&self, file_id: u64, generation: u64, buf: &mut [u8]) -> Result<()> {
        check_len(buf.len())?;
        self.0.encrypt_sector(buf, tweak(file_id, generation));
        Ok(())
    }

    /// Decrypts `buf` in place; the inverse of [`DataCipher::encrypt_block`] with the same
    /// `file_id` and `generation`. Same length rules.
    pub fn decrypt_block(&self, file_id: u64, generation: u64, buf: &mut [u8]) -> Result<()> {
        check_len(buf.len())?;
        self.0.decrypt_sector(buf, tweak(file_id, generation));
        Ok(())
    }
}

/// The 16-byte XTS tweak: `le64(file_id) || le64(generation)`.
fn tweak(file_id: u64, generation: u64) -> [u8; 16] {
    ((u128::from(generation) << 64) | u128::from(file_id)).to_le_bytes()
}

fn check_len(len: usize) -> Result<()> {
    if len < 16 || !len.is_multiple_of(16) {
        return Err(Error::invalid(format!(
            "XTS data unit of {len} bytes: must be a non-zero multiple of 16"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    // IEEE 1619-2007 Annex B, XTS-AES-256 test vectors (Key1 || Key2).
    const KEY_V10: &str = "2718281828459045235360287471352662497757247093699959574966967627\
                           3141592653589793238462643383279502884197169399375105820974944592";

    // Vector 10: data unit sequence number 0xff, 512-byte data unit 00 01 .. ff 00 01 .. ff.
    const CT_V10: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b\
        5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd\
        5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0\
        c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca\
        2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0\
        b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f\
        93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec\
        583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a\
        84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1\
        505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae\
        9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29\
        a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac\
        6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f\
        645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385\
        1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa\
        773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

    fn key_v10() -> [u8; 64] {
        hex::decode(KEY_V10).unwrap().try_into().unwrap()
    }

    fn pt512() -> Vec<u8> {
        (0..512u32).map(|i| (i % 256) as u8).collect()
    }

    fn raw_xts(key: &[u8; 64]) -> Xts128<Aes256> {
        Xts128::new(
            Aes256::new_from_slice(&key[..32]).unwrap(),
            Aes256::new_from_slice(&key[32..]).unwrap(),
        )
    }

    #[test]
    fn ieee1619_vector_10() {
        let dc = DataCipher::new(&key_v10()).unwrap();
        // Data unit sequence number 0xff = file_id 0xff, generation 0 in our tweak layout.
        let mut buf = pt512();
        dc.encrypt_block(0xff, 0, &mut buf).unwrap();
        assert_eq!(hex::encode(&buf), CT_V10);
        dc.decrypt_block(0xff, 0, &mut buf).unwrap();
        assert_eq!(buf, pt512());
    }

    #[test]
    fn tweak_layout_is_le_file_id_then_le_generation() {
        let key = key_v10();
        let dc = DataCipher::new(&key).unwrap();
        let raw = raw_xts(&key);
        let (file_id, generation) = (0x0102_0304_0506_0708u64, 0x1112_1314_1516_1718u64);
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&file_id.to_le_bytes());
        t[8..].copy_from_slice(&generation.to_le_bytes());
        assert_eq!(tweak(file_id, generation), t);

        let mut a = pt512();
        let mut b = pt512();
        dc.encrypt_block(file_id, generation, &mut a).unwrap();
        raw.encrypt_sector(&mut b, t);
        assert_eq!(a, b);
    }

    #[test]
    fn roundtrip_and_tweak_separation() {
        let dc = DataCipher::new(&key_v10()).unwrap();
        let pt = vec![0x5au8; 4096];
        let mut c11 = pt.clone();
        dc.encrypt_block(1, 1, &mut c11).unwrap();
        assert_ne!(c11, pt);
        let mut c12 = pt.clone();
        dc.encrypt_block(1, 2, &mut c12).unwrap();
        let mut c21 = pt.clone();
        dc.encrypt_block(2, 1, &mut c21).unwrap();
        assert_ne!(c11, c12);
        assert_ne!(c11, c21);
        assert_ne!(c12, c21);
        let mut back = c11.clone();
        dc.decrypt_block(1, 1, &mut back).unwrap();
        assert_eq!(back, pt);
        // Wrong tweak does not decrypt.
        let mut wrong = c11;
        dc.decrypt_block(1, 2, &mut wrong).unwrap();
        assert_ne!(wrong, pt);
    }

    #[test]
    fn equal_halves_rejected() {
        let mut key = [0x42u8; 64];
        assert!(matches!(DataCipher::new(&key), Err(Error::Invalid { .. })));
        key[63] ^= 1;
        assert!(DataCipher::new(&key).is_ok());
    }

    #[test]
    fn bad_lengths_rejected() {
        let dc = DataCipher::new(&key_v10()).unwrap();
        for len in [0usize, 1, 15, 17, 31, 4095] {
            let mut buf = vec![0u8; len];
            assert!(matches!(
                dc.encrypt_block(1, 1, &mut buf),
                Err(Error::Invalid { .. })
            ));
            assert!(matches!(
                dc.decrypt_block(1, 1, &mut buf),
                Err(Error::Invalid { .. })
            ));
        }
        let mut one = [0u8; 16];
        assert!(dc.encrypt_block(1, 1, &mut one).is_ok());
    }
}
