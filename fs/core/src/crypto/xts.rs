//! Content encryption: AES-256-XTS (IEEE 1619-2007) over one whole filesystem block, in place.
//!
//! Each block is a single XTS data unit whose 16-byte tweak is
//! `le64(file_id) || le64(generation)`. The generation is unique per block write in the whole
//! filesystem, so a (key, tweak) pair never encrypts two different plaintexts. XTS gives
//! confidentiality only; integrity comes from [`crate::crypto::mac::BlockMac`].
//!
//! Guarantees: the two 256-bit key halves are required to differ (IEEE 1619 / FIPS 140 IG A.9);
//! buffers that are empty or not a multiple of 16 bytes are rejected with `Error::Invalid`
//! (ciphertext stealing is never used). The implementation pipelines AES over groups of blocks;
//! the `xts-mode` crate is the reference it is tested against (IEEE 1619 vectors included).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes256;
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// AES-256-XTS over whole filesystem blocks.
pub struct DataCipher {
    data: Aes256,
    tweak: Aes256,
}

/// 16-byte blocks encrypted per AES call: enough for the AES-NI backend to pipeline (it works
/// on 8 blocks at a time) without a large stack buffer.
const GROUP: usize = 32;

impl DataCipher {
    /// A cipher from a 64-byte key: data key (first half) and tweak key (second half), which
    /// must differ (IEEE 1619).
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
        Ok(DataCipher {
            data: Aes256::new(k1.into()),
            tweak: Aes256::new(k2.into()),
        })
    }

    /// Encrypts one filesystem block in place as one XTS data unit.
    /// tweak = le64(file_id) || le64(generation). `buf.len()` must be a non-zero multiple of 16.
    pub fn encrypt_block(&self, file_id: u64, generation: u64, buf: &mut [u8]) -> Result<()> {
        check_len(buf.len())?;
        self.process(file_id, generation, buf, true);
        Ok(())
    }

    /// Decrypts one filesystem block in place (inverse of [`DataCipher::encrypt_block`]).
    pub fn decrypt_block(&self, file_id: u64, generation: u64, buf: &mut [u8]) -> Result<()> {
        check_len(buf.len())?;
        self.process(file_id, generation, buf, false);
        Ok(())
    }

    /// XTS without ciphertext stealing (lengths are multiples of 16): each 16-byte block j is
    /// `E_K1(P_j ^ T_j) ^ T_j` with `T_0 = E_K2(tweak)` and `T_{j+1} = T_j * alpha` in
    /// GF(2^128), little-endian as IEEE 1619 specifies. The blocks of a group go through AES
    /// in one call so the AES-NI backend can pipeline them; the result is identical to
    /// `xts_mode::Xts128::encrypt_sector` (tested below).
    fn process(&self, file_id: u64, generation: u64, buf: &mut [u8], encrypt: bool) {
        let mut t = aes::Block::from(tweak(file_id, generation));
        self.tweak.encrypt_block(&mut t);
        let mut t = u128::from_le_bytes(t.into());
        let mut blocks = [aes::Block::default(); GROUP];
        let mut tweaks = [0u128; GROUP];
        for group in buf.chunks_mut(GROUP * 16) {
            let n = group.len() / 16;
            for ((chunk, block), tw) in group
                .chunks_exact(16)
                .zip(blocks.iter_mut())
                .zip(tweaks.iter_mut())
            {
                *tw = t;
                let mut b = [0u8; 16];
                b.copy_from_slice(chunk);
                *block = aes::Block::from((u128::from_le_bytes(b) ^ t).to_le_bytes());
                t = mul_alpha(t);
            }
            let active = blocks.get_mut(..n).unwrap_or_default();
            if encrypt {
                self.data.encrypt_blocks(active);
            } else {
                self.data.decrypt_blocks(active);
            }
            for ((chunk, block), tw) in group
                .chunks_exact_mut(16)
                .zip(blocks.iter())
                .zip(tweaks.iter())
            {
                let mut b = [0u8; 16];
                b.copy_from_slice(block);
                chunk.copy_from_slice(&(u128::from_le_bytes(b) ^ tw).to_le_bytes());
            }
        }
    }
}

/// Multiplication by the primitive element alpha in GF(2^128) with the IEEE 1619 (little-endian)
/// convention: shift left by one, reduce with x^128 = x^7 + x^2 + x + 1.
fn mul_alpha(t: u128) -> u128 {
    let carry = t >> 127;
    (t << 1) ^ (carry * 0x87)
}

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
    use xts_mode::Xts128;

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
