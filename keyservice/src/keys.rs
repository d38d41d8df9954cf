//! The key hierarchy of the service: root secret → per-tenant KEKs → transit wraps.
//!
//! ```text
//! root secret (32 random bytes, stored only sealed under Argon2id(passphrase))
//!  ├── HKDF(root, salt = "", "digimedfs v1 registry seed seal") → seed-sealing key
//!  │     └── seals each tenant's random 32-byte seed in the registry
//!  ├── HKDF(root, salt = "", "digimedfs v1 audit chain mac") → audit key
//!  │     └── HMAC-SHA256 chain of the audit log
//!  └── HKDF(root, salt = tenant seed,
//!           "digimedfs v1 tenant kek" ‖ le32(len tenant) ‖ tenant ‖ le32(version)) → KEK
//!        └── AES-256-GCM-SIV(KEK, AD = "digimedfs v1 transit" ‖ tenant ‖ fs_uuid ‖ le32(version))
//!              wraps a filesystem's 64-byte master key
//! ```
//!
//! KEKs are derived per request and never stored; all key material is zeroized on drop.

use digimedfs_core::crypto::kdf::{
    hkdf_sha256, AD_TENANT_SEED, AD_TRANSIT, LABEL_AUDIT_CHAIN, LABEL_SEED_SEAL, LABEL_TENANT_KEK,
};
use digimedfs_core::crypto::MetaSealer;
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Length of the root secret, tenant seeds and KEKs.
pub const SECRET_LEN: usize = 32;
/// Length of a filesystem master key as carried by the API.
pub const MASTER_KEY_LEN: usize = digimedfs_core::crypto::MASTER_KEY_LEN;

/// The service's root secret (never leaves the process unsealed).
pub struct RootSecret(Zeroizing<[u8; SECRET_LEN]>);

impl RootSecret {
    /// A fresh random root secret.
    pub fn generate() -> RootSecret {
        let mut k = Zeroizing::new([0u8; SECRET_LEN]);
        OsRng.fill_bytes(k.as_mut_slice());
        RootSecret(k)
    }

    /// From exactly 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<RootSecret> {
        let src: &[u8; SECRET_LEN] = b
            .try_into()
            .map_err(|_| Error::Crypto(format!("root secret is {} bytes, expected 32", b.len())))?;
        Ok(RootSecret(Zeroizing::new(*src)))
    }

    /// The raw bytes (for sealing only).
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// KEK(tenant, version) = HKDF-SHA256(root, seed, label ‖ le32(len) ‖ tenant ‖ le32(version)).
    pub fn kek(
        &self,
        tenant: &str,
        seed: &[u8; SECRET_LEN],
        version: u32,
    ) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
        let t = tenant.as_bytes();
        let len =
            u32::try_from(t.len()).map_err(|_| Error::Invalid("tenant id too long".into()))?;
        let mut info = Vec::with_capacity(LABEL_TENANT_KEK.len() + 8 + t.len());
        info.extend_from_slice(LABEL_TENANT_KEK);
        info.extend_from_slice(&len.to_le_bytes());
        info.extend_from_slice(t);
        info.extend_from_slice(&version.to_le_bytes());
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        hkdf_sha256(self.0.as_slice(), seed, &info, out.as_mut_slice())
            .map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(out)
    }

    /// The key of the audit log's HMAC chain: HKDF-SHA256(root, "", "digimedfs v1 audit chain
    /// mac").
    pub fn audit_key(&self) -> Result<crate::audit::AuditKey> {
        let mut k = Zeroizing::new([0u8; SECRET_LEN]);
        hkdf_sha256(self.0.as_slice(), &[], LABEL_AUDIT_CHAIN, k.as_mut_slice())
            .map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(crate::audit::AuditKey(k))
    }

    /// The sealer for tenant seeds in the registry.
    fn seed_sealer(&self) -> Result<MetaSealer> {
        let mut k = Zeroizing::new([0u8; SECRET_LEN]);
        hkdf_sha256(self.0.as_slice(), &[], LABEL_SEED_SEAL, k.as_mut_slice())
            .map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(MetaSealer::new(&k))
    }

    /// Seals a tenant seed (AD binds the tenant id).
    pub fn seal_seed(&self, tenant: &str, seed: &[u8; SECRET_LEN]) -> Result<Vec<u8>> {
        Ok(self.seed_sealer()?.seal(&seed_ad(tenant), seed))
    }

    /// Opens a tenant seed sealed by [`RootSecret::seal_seed`].
    pub fn open_seed(&self, tenant: &str, sealed: &[u8]) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
        let pt = self
            .seed_sealer()?
            .open(&seed_ad(tenant), sealed)
            .ok_or_else(|| Error::Crypto(format!("seed of tenant {tenant:?} does not open")))?;
        let arr: &[u8; SECRET_LEN] = pt
            .as_slice()
            .try_into()
            .map_err(|_| Error::Crypto(format!("seed of tenant {tenant:?} has a bad length")))?;
        Ok(Zeroizing::new(*arr))
    }
}

fn seed_ad(tenant: &str) -> Vec<u8> {
    let mut ad = AD_TENANT_SEED.to_vec();
    ad.extend_from_slice(tenant.as_bytes());
    ad
}

/// A fresh random tenant seed.
pub fn generate_seed() -> Zeroizing<[u8; SECRET_LEN]> {
    let mut s = Zeroizing::new([0u8; SECRET_LEN]);
    OsRng.fill_bytes(s.as_mut_slice());
    s
}

/// AD = "digimedfs v1 transit" ‖ tenant ‖ fs_uuid ‖ le32(version).
pub fn transit_ad(tenant: &str, fs_uuid: &[u8; 16], version: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_TRANSIT.len() + tenant.len() + 20);
    ad.extend_from_slice(AD_TRANSIT);
    ad.extend_from_slice(tenant.as_bytes());
    ad.extend_from_slice(fs_uuid);
    ad.extend_from_slice(&version.to_le_bytes());
    ad
}

/// Wraps `key` under `kek` for (tenant, fs, version).
pub fn wrap(kek: &[u8; 32], tenant: &str, fs_uuid: &[u8; 16], version: u32, key: &[u8]) -> Vec<u8> {
    MetaSealer::new(kek).seal(&transit_ad(tenant, fs_uuid, version), key)
}

/// Unwraps; `None` if the wrap is not for this (KEK, tenant, fs, version).
pub fn unwrap(
    kek: &[u8; 32],
    tenant: &str,
    fs_uuid: &[u8; 16],
    version: u32,
    wrapped: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    MetaSealer::new(kek).open(&transit_ad(tenant, fs_uuid, version), wrapped)
}

/// Checks a tenant id: 1..=64 of `[A-Za-z0-9._-]`.
pub fn check_tenant_id(id: &str) -> Result<()> {
    digimedfs_core::keysource::check_tenant_id(id).map_err(|e| match e {
        digimedfs_core::Error::Invalid { what } => Error::Invalid(what),
        other => Error::Invalid(other.to_string()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kek_depends_on_everything() {
        let r = RootSecret::from_bytes(&[1; 32]).unwrap();
        let s = [2u8; 32];
        let a = r.kek("A", &s, 1).unwrap();
        assert_ne!(*a, *r.kek("B", &s, 1).unwrap());
        assert_ne!(*a, *r.kek("A", &s, 2).unwrap());
        assert_ne!(*a, *r.kek("A", &[3; 32], 1).unwrap());
        assert_eq!(*a, *r.kek("A", &s, 1).unwrap());
    }

    #[test]
    fn wrap_binds_tenant_fs_version() {
        let k = [9u8; 32];
        let w = wrap(&k, "A", &[1; 16], 1, &[7; 64]);
        assert_eq!(
            unwrap(&k, "A", &[1; 16], 1, &w).unwrap().as_slice(),
            &[7; 64]
        );
        assert!(unwrap(&k, "B", &[1; 16], 1, &w).is_none());
        assert!(unwrap(&k, "A", &[2; 16], 1, &w).is_none());
        assert!(unwrap(&k, "A", &[1; 16], 2, &w).is_none());
    }

    #[test]
    fn seeds_roundtrip_and_bind_tenant() {
        let r = RootSecret::generate();
        let s = generate_seed();
        let sealed = r.seal_seed("A", &s).unwrap();
        assert_eq!(*r.open_seed("A", &sealed).unwrap(), *s);
        assert!(r.open_seed("B", &sealed).is_err());
    }
}
