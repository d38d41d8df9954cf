//! The registry: tenants, key versions, tokens (persistent, one writer).
//!
//! A single JSON file, `STATE_DIR/registry.json`, replaced atomically (temp file, fsync, rename)
//! by the admin CLI under an exclusive `flock` on `registry.lock`. Servers never write it; they
//! [`RegistryView::current`] it on every request and re-read it when its inode, size or mtime
//! changed, so a revocation reaches every instance sharing the directory at its next request.
//!
//! Tenant seeds are stored sealed under a key derived from the root secret; tokens are stored
//! only as SHA-256 hashes and compared in constant time.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::keys::{check_tenant_id, generate_seed, RootSecret, SECRET_LEN};
use crate::{Error, Result};

/// Whether a tenant may use its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Normal.
    Active,
    /// All requests refused (403).
    Revoked,
}

/// One tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The tenant's random seed, sealed under the root-derived seed key (base64).
    pub seed_sealed: String,
    /// The newest key version (new wraps use it).
    pub current: u32,
    /// Retired versions (unwrap refused with 404).
    pub retired: BTreeSet<u32>,
    /// Active or revoked.
    pub state: TenantState,
}

impl Tenant {
    /// Whether `version` can unwrap: 1..=current and not retired.
    pub fn version_usable(&self, version: u32) -> bool {
        version >= 1 && version <= self.current && !self.retired.contains(&version)
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Wrap/unwrap for its tenant.
    Tenant,
    /// Administrative endpoints only.
    Admin,
}

/// A stored token (hash only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token; its first 12 digits are the token id shown to admins.
    pub hash: String,
    /// The tenant (None for admin tokens).
    pub tenant: Option<String>,
    /// Role.
    pub role: Role,
    /// Revoked tokens are refused (403).
    pub revoked: bool,
}

/// The registry file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Tenants by id.
    pub tenants: BTreeMap<String, Tenant>,
    /// Tokens.
    pub tokens: Vec<TokenRecord>,
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Result of looking up a presented token.
pub enum TokenMatch<'a> {
    /// No token has this hash.
    Unknown,
    /// The matching record.
    Found(&'a TokenRecord),
}

impl Registry {
    /// Reads the registry at `path`.
    pub fn load(path: &Path) -> Result<Registry> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_state(path, e.to_string()))
    }

    /// Writes the registry atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::state::write_atomic(path, &json)
    }

    /// Looks a token up by comparing its hash with every stored hash in constant time.
    pub fn find_token(&self, token: &str) -> TokenMatch<'_> {
        let h = token_hash(token);
        let mut found = None;
        for rec in &self.tokens {
            let mut stored = [0u8; 32];
            let ok = hex::decode_to_slice(&rec.hash, &mut stored).is_ok();
            if ok && bool::from(stored.ct_eq(&h)) {
                found = Some(rec);
            }
        }
        match found {
            Some(r) => TokenMatch::Found(r),
            None => TokenMatch::Unknown,
        }
    }

    /// Adds a tenant with a fresh sealed seed, key version 1.
    pub fn add_tenant(&mut self, root: &RootSecret, id: &str) -> Result<()> {
        check_tenant_id(id)?;
        if self.tenants.contains_key(id) {
            return Err(Error::Invalid(format!("tenant {id:?} already exists")));
        }
        let seed = generate_seed();
        let sealed = root.seal_seed(id, &seed)?;
        self.tenants.insert(
            id.to_string(),
            Tenant {
                seed_sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
                current: 1,
                retired: BTreeSet::new(),
                state: TenantState::Active,
            },
        );
        Ok(())
    }

    /// The tenant `id` or an error naming it.
    pub fn tenant_mut(&mut self, id: &str) -> Result<&mut Tenant> {
        self.tenants
            .get_mut(id)
            .ok_or_else(|| Error::Invalid(format!("no tenant {id:?}")))
    }

    /// Issues a token for `tenant` (None: admin token); returns the token (hex) once.
    pub fn issue_token(&mut self, tenant: Option<&str>) -> Result<Zeroizing<String>> {
        if let Some(t) = tenant {
            let ten = self.tenant_mut(t)?;
            if ten.state == TenantState::Revoked {
                return Err(Error::Invalid(format!("tenant {t:?} is revoked")));
            }
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(raw.as_mut_slice());
        let token = Zeroizing::new(hex::encode(raw.as_slice()));
        self.tokens.push(TokenRecord {
            hash: hex::encode(token_hash(&token)),
            tenant: tenant.map(str::to_string),
            role: if tenant.is_some() {
                Role::Tenant
            } else {
                Role::Admin
            },
            revoked: false,
        });
        Ok(token)
    }

    /// Revokes the one token whose id (hash hex) starts with `prefix` (at least 8 hex digits),
    /// or the token itself if `prefix` is a full 64-digit token. Returns the token id.
    pub fn revoke_token(&mut self, prefix: &str) -> Result<String> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(
                "token prefix: give at least 8 hex digits".into(),
            ));
        }
        let as_token = (prefix.len() == 64).then(|| hex::encode(token_hash(&prefix)));
        let matches: Vec<usize> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.hash.starts_with(&prefix) || Some(&t.hash) == as_token.as_ref())
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => {
                let rec = self
                    .tokens
                    .get_mut(*i)
                    .ok_or_else(|| Error::Invalid("token vanished".into()))?;
                rec.revoked = true;
                Ok(token_id(&rec.hash).to_string())
            }
            [] => Err(Error::Invalid(format!("no token matches {prefix}"))),
            _ => Err(Error::Invalid(format!(
                "{} tokens match {prefix}; give more digits",
                matches.len()
            ))),
        }
    }

    /// The tenant's seed, unsealed.
    pub fn seed(&self, root: &RootSecret, tenant: &str) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
        let t = self
            .tenants
            .get(tenant)
            .ok_or_else(|| Error::Invalid(format!("no tenant {tenant:?}")))?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&t.seed_sealed)
            .map_err(|e| Error::Crypto(format!("seed of {tenant:?}: {e}")))?;
        root.open_seed(tenant, &sealed)
    }
}

/// The short id of a token shown to admins: the first 12 hex digits of its hash.
pub fn token_id(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Runs `f` on the registry under the writer lock and saves the result atomically.
pub fn modify<T>(
    state: &crate::state::StateDir,
    f: impl FnOnce(&mut Registry) -> Result<T>,
) -> Result<T> {
    use std::os::unix::io::AsRawFd;
    let lock_path = state.file(crate::state::REGISTRY_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    // SAFETY: flock on a valid fd owned by `lock`; the lock is released when it is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(&lock_path, std::io::Error::last_os_error()));
    }
    let path = state.file(crate::state::REGISTRY_FILE);
    let mut reg = Registry::load(&path)?;
    let out = f(&mut reg)?;
    reg.save(&path)?;
    drop(lock);
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// A server's read-only view of the registry, re-read when the file changes.
pub struct RegistryView {
    path: PathBuf,
    cache: Mutex<(Stamp, Arc<Registry>)>,
}

impl RegistryView {
    /// Loads the registry at `path`.
    pub fn open(path: &Path) -> Result<RegistryView> {
        let s = stamp(path)?;
        let r = Registry::load(path)?;
        Ok(RegistryView {
            path: path.to_path_buf(),
            cache: Mutex::new((s, Arc::new(r))),
        })
    }

    /// The current registry (re-read if the file changed since the last call).
    pub fn current(&self) -> Result<Arc<Registry>> {
        let s = stamp(&self.path)?;
        let mut guard = self
            .cache
            .lock()
            .map_err(|_| Error::Invalid("registry cache lock poisoned".into()))?;
        if guard.0 != s {
            let r = Registry::load(&self.path)?;
            *guard = (s, Arc::new(r));
        }
        Ok(guard.1.clone())
    }
}
