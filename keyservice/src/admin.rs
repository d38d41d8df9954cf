//! Administrative operations on a state directory (used by the CLI and by tests).
//!
//! Every operation first unseals the root secret with the credential: holding the credential is
//! what authorizes an administrator. Writes go through [`crate::registry::modify`] (one writer at
//! a time, atomic replacement), so running servers pick them up at their next request. Changes
//! to rollback anchors (`accept-rollback`, `anchor clear`) are recorded in the audit log first.

use crate::registry::{self, Registry, TenantState};
use crate::state::{Credential, StateDir};
use crate::{Error, Result};
use zeroize::Zeroizing;

/// Creates a state directory: a new root secret sealed under `cred` and an empty registry.
/// Refuses if a root secret already exists.
pub fn init(state: &std::path::Path, cred: &Credential) -> Result<()> {
    let state = StateDir::new(state);
    state.init_root(cred)?;
    let registry = state.file(crate::state::REGISTRY_FILE);
    if !registry.exists() {
        Registry::default().save(&registry)?;
    }
    Ok(())
}

/// An unsealed state directory for administration.
pub struct Admin {
    state: StateDir,
    root: crate::keys::RootSecret,
    audit_log: std::path::PathBuf,
}

impl Admin {
    /// Unseals `state` with `cred`.
    pub fn open(state: &std::path::Path, cred: &Credential) -> Result<Admin> {
        let state = StateDir::new(state);
        let root = state.unseal(cred)?;
        let audit_log = state.file(crate::state::AUDIT_FILE);
        Ok(Admin {
            state,
            root,
            audit_log,
        })
    }

    /// Records admin actions in `path` instead of `STATE_DIR/audit.log`.
    pub fn set_audit_log(&mut self, path: &std::path::Path) {
        self.audit_log = path.to_path_buf();
    }

    /// Appends an admin action on filesystem `fs_uuid` to the audit log.
    fn audit(&self, op: &str, tenant: Option<String>, fs_uuid: &str, reason: String) -> Result<()> {
        use rand::RngCore;
        let mut rid = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut rid);
        let log = crate::audit::AuditLog::open(&self.audit_log, self.root.audit_key()?)?;
        log.append(&crate::audit::Event {
            request_id: hex::encode(rid),
            tenant,
            fs_uuid: Some(fs_uuid.to_string()),
            op: op.to_string(),
            client: "admin-cli".into(),
            outcome: "ok".into(),
            reason,
            ..crate::audit::Event::default()
        })
    }

    /// Adds a tenant (key version 1).
    pub fn tenant_add(&self, id: &str) -> Result<()> {
        registry::modify(&self.state, |r| r.add_tenant(&self.root, id))
    }

    /// Revokes a tenant: all its requests are refused from now on.
    pub fn tenant_revoke(&self, id: &str) -> Result<()> {
        registry::modify(&self.state, |r| {
            r.tenant_mut(id)?.state = TenantState::Revoked;
            Ok(())
        })
    }

    /// Issues a token for `tenant` (None: admin token); the token is returned once.
    pub fn token_issue(&self, tenant: Option<&str>) -> Result<Zeroizing<String>> {
        registry::modify(&self.state, |r| r.issue_token(tenant))
    }

    /// Revokes the token whose id starts with `prefix`; returns its id.
    pub fn token_revoke(&self, prefix: &str) -> Result<String> {
        registry::modify(&self.state, |r| r.revoke_token(prefix))
    }

    /// Starts a new key version for `tenant`; returns it.
    pub fn rotate(&self, tenant: &str) -> Result<u32> {
        registry::modify(&self.state, |r| {
            let t = r.tenant_mut(tenant)?;
            t.current = t
                .current
                .checked_add(1)
                .ok_or_else(|| Error::Invalid("key version overflow".into()))?;
            Ok(t.current)
        })
    }

    /// Retires an old key version: unwraps under it are refused (404) from now on.
    pub fn retire(&self, tenant: &str, version: u32) -> Result<()> {
        registry::modify(&self.state, |r| {
            let t = r.tenant_mut(tenant)?;
            if version == t.current {
                return Err(Error::Invalid(format!(
                    "version {version} is the current version of {tenant:?}; rotate first"
                )));
            }
            if version == 0 || version > t.current {
                return Err(Error::Invalid(format!(
                    "{tenant:?} has no version {version}"
                )));
            }
            t.retired.insert(version);
            Ok(())
        })
    }

    /// Lets the filesystem `fs_uuid` (hex) go back to an older epoch once.
    pub fn accept_rollback(&self, fs_uuid: &str) -> Result<()> {
        let clean = clean_uuid(fs_uuid)?;
        let cur = crate::anchors::get(&self.state, &clean)?
            .ok_or_else(|| Error::Invalid(format!("no anchor for filesystem {clean}")))?;
        self.audit(
            "admin_accept_rollback",
            Some(cur.tenant),
            &clean,
            format!(
                "next older epoch accepted once (anchor at epoch {})",
                cur.epoch
            ),
        )?;
        crate::anchors::accept_rollback(&self.state, &clean)
    }

    /// The anchor of filesystem `fs_uuid` (hex, hyphens allowed), if any.
    pub fn anchor_show(&self, fs_uuid: &str) -> Result<Option<crate::anchors::Anchor>> {
        crate::anchors::get(&self.state, &clean_uuid(fs_uuid)?)
    }

    /// Removes the anchor and tenant binding of filesystem `fs_uuid` (audited first); the next
    /// unwrap by the tenant whose key opens it binds it again, and its next mount anchors it.
    pub fn anchor_clear(&self, fs_uuid: &str) -> Result<crate::anchors::Anchor> {
        let clean = clean_uuid(fs_uuid)?;
        let cur = crate::anchors::get(&self.state, &clean)?
            .ok_or_else(|| Error::Invalid(format!("no anchor for filesystem {clean}")))?;
        self.audit(
            "admin_anchor_clear",
            Some(cur.tenant.clone()),
            &clean,
            format!(
                "anchor cleared (was tenant {}, epoch {})",
                cur.tenant, cur.epoch
            ),
        )?;
        crate::anchors::clear(&self.state, &clean)
    }

    /// The key of the audit chain (for `audit key`, to hand to an auditor).
    pub fn audit_key(&self) -> Result<crate::audit::AuditKey> {
        self.root.audit_key()
    }

    /// Verifies the audit log at `path` (default: the admin's audit log) with the audit key.
    pub fn audit_verify(
        &self,
        path: Option<&std::path::Path>,
        opts: &crate::audit::VerifyOpts,
    ) -> Result<crate::audit::Verified> {
        let path = path.unwrap_or(&self.audit_log);
        crate::audit::verify(path, &self.root.audit_key()?, opts)
    }

    /// The registry as it is now.
    pub fn registry(&self) -> Result<Registry> {
        Registry::load(&self.state.file(crate::state::REGISTRY_FILE))
    }

    /// A human-readable listing of tenants.
    pub fn tenant_list(&self) -> Result<String> {
        let reg = self.registry()?;
        let mut out = String::new();
        for (id, t) in &reg.tenants {
            let tokens = reg
                .tokens
                .iter()
                .filter(|k| k.tenant.as_deref() == Some(id.as_str()) && !k.revoked)
                .count();
            out.push_str(&format!(
                "{id}\t{:?}\tcurrent v{}\tretired {:?}\tactive tokens {tokens}\n",
                t.state, t.current, t.retired
            ));
        }
        Ok(out)
    }

    /// A status summary: tenants, tokens, audit chain.
    pub fn status(&self, audit: Option<&std::path::Path>) -> Result<String> {
        let reg = self.registry()?;
        let mut out = format!("state dir {}\n", self.state.path().display());
        out.push_str(&format!(
            "tenants: {} ({} revoked)\n",
            reg.tenants.len(),
            reg.tenants
                .values()
                .filter(|t| t.state == TenantState::Revoked)
                .count()
        ));
        out.push_str(&self.tenant_list()?);
        out.push_str("tokens:\n");
        for t in &reg.tokens {
            out.push_str(&format!(
                "  {}\t{}\t{}\n",
                registry::token_id(&t.hash),
                t.tenant.as_deref().unwrap_or("(admin)"),
                if t.revoked { "revoked" } else { "active" }
            ));
        }
        let audit_path = audit
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| self.state.file(crate::state::AUDIT_FILE));
        if audit_path.exists() {
            match self.audit_verify(Some(&audit_path), &crate::audit::VerifyOpts::default()) {
                Ok(v) => out.push_str(&format!("audit log: {v}\n")),
                Err(e) => out.push_str(&format!("audit log: BROKEN: {e}\n")),
            }
        } else {
            out.push_str("audit log: none yet\n");
        }
        Ok(out)
    }
}

/// A filesystem UUID as 32 lowercase hex digits (hyphens dropped).
fn clean_uuid(fs_uuid: &str) -> Result<String> {
    let clean: String = fs_uuid
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if clean.len() != 32 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{fs_uuid:?} is not a filesystem UUID (32 hex digits, hyphens allowed)"
        )));
    }
    Ok(clean)
}
