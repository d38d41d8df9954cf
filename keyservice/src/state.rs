//! The state directory: sealed root secret, registry, anchors, audit log.
//!
//! Layout of `STATE_DIR`:
//!
//! | file | content |
//! | --- | --- |
//! | `root.sealed` | the root secret sealed with AES-256-GCM-SIV under Argon2id(credential) |
//! | `registry.json` | tenants (sealed seeds, key versions, state) and token hashes |
//! | `registry.lock` | `flock` serializing registry writers (the admin CLI) |
//! | `anchors.json` | rollback anchors: newest epoch per filesystem |
//! | `audit.log` | hash-chained JSON lines |
//!
//! The credential is either a passphrase (env `DIGIMED_KS_PASSPHRASE`) or the bytes of a
//! credential file (`--credential-file`, e.g. 32 random bytes from `head -c 32 /dev/urandom`).

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use digimedfs_core::crypto::MetaSealer;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::RootSecret;
use crate::{Error, Result};

/// Environment variable holding the passphrase.
pub const PASSPHRASE_ENV: &str = "DIGIMED_KS_PASSPHRASE";
/// File name of the sealed root secret.
pub const ROOT_FILE: &str = "root.sealed";
/// File name of the registry.
pub const REGISTRY_FILE: &str = "registry.json";
/// File name of the registry lock.
pub const REGISTRY_LOCK: &str = "registry.lock";
/// File name of the anchors store.
pub const ANCHORS_FILE: &str = "anchors.json";
/// Default file name of the audit log.
pub const AUDIT_FILE: &str = "audit.log";

/// The secret that unseals the root: passphrase or credential-file bytes.
pub struct Credential(Zeroizing<Vec<u8>>);

impl Credential {
    /// From a passphrase.
    pub fn passphrase(p: &str) -> Result<Credential> {
        if p.is_empty() {
            return Err(Error::Invalid("empty passphrase".into()));
        }
        Ok(Credential(Zeroizing::new(p.as_bytes().to_vec())))
    }

    /// From the bytes of a credential file (at least 16 bytes).
    pub fn file(path: &Path) -> Result<Credential> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        if bytes.len() < 16 {
            return Err(Error::Invalid(format!(
                "credential file {} holds {} bytes; use at least 16 random bytes",
                path.display(),
                bytes.len()
            )));
        }
        Ok(Credential(bytes))
    }

    /// `--credential-file` if given, else the passphrase in `DIGIMED_KS_PASSPHRASE`.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Credential> {
        match file {
            Some(p) => Credential::file(p),
            None => {
                let p = Zeroizing::new(std::env::var(PASSPHRASE_ENV).map_err(|_| {
                    Error::Invalid(format!(
                        "no credential: set {PASSPHRASE_ENV} or pass --credential-file"
                    ))
                })?);
                Credential::passphrase(&p)
            }
        }
    }
}

/// On-disk form of the sealed root secret.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedRoot {
    format: u32,
    kdf: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    salt: String,
    sealed: String,
}

fn argon2_key(
    cred: &Credential,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>> {
    let params = Params::new(m, t, p, Some(32)).map_err(|e| Error::Crypto(e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(&cred.0, salt, out.as_mut_slice())
        .map_err(|e| Error::Crypto(e.to_string()))?;
    Ok(out)
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// A state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `path` (not checked).
    pub fn new(path: &Path) -> StateDir {
        StateDir {
            root: path.to_path_buf(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates the directory (mode 0700) and a new root secret sealed under `cred` (the empty
    /// registry beside it is made by [`crate::admin::init`]). Refuses if a root secret already
    /// exists.
    pub fn init_root(&self, cred: &Credential) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| Error::io(&self.root, e))?;
        let root_path = self.file(ROOT_FILE);
        if root_path.exists() {
            return Err(Error::Invalid(format!(
                "{} already exists; refusing to replace the root secret",
                root_path.display()
            )));
        }
        let root = RootSecret::generate();
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let (m, t, p) = (Params::DEFAULT_M_COST, Params::DEFAULT_T_COST, 1);
        let key = argon2_key(cred, &salt, m, t, p)?;
        let sealed = MetaSealer::new(&key).seal(
            digimedfs_core::crypto::kdf::AD_KEYSERVICE_ROOT,
            root.expose(),
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let file = SealedRoot {
            format: 1,
            kdf: "argon2id".into(),
            m_cost_kib: m,
            t_cost: t,
            p_cost: p,
            salt: b64.encode(salt),
            sealed: b64.encode(sealed),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomic(&root_path, &json)
    }

    /// Unseals the root secret with `cred`.
    pub fn unseal(&self, cred: &Credential) -> Result<RootSecret> {
        let path = self.file(ROOT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let f: SealedRoot =
            serde_json::from_slice(&bytes).map_err(|e| Error::bad_state(&path, e.to_string()))?;
        if f.format != 1 || f.kdf != "argon2id" {
            return Err(Error::bad_state(&path, "unknown format or KDF"));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64
            .decode(&f.salt)
            .map_err(|e| Error::bad_state(&path, format!("salt: {e}")))?;
        let sealed = b64
            .decode(&f.sealed)
            .map_err(|e| Error::bad_state(&path, format!("sealed: {e}")))?;
        let key = argon2_key(cred, &salt, f.m_cost_kib, f.t_cost, f.p_cost)?;
        let pt = MetaSealer::new(&key)
            .open(digimedfs_core::crypto::kdf::AD_KEYSERVICE_ROOT, &sealed)
            .ok_or(Error::WrongCredential { path: path.clone() })?;
        RootSecret::from_bytes(&pt)
    }
}
