//! Administrative operations on a state directory (used by the CLI and by tests).
//!
//! Every operation first unseals the root secret with the credential: holding the credential is
//! what authorizes an administrator. Writes go through [`crate::registry::modify`] (one writer at
//! a time, atomic replacement), so running servers pick them up at their next request.

use crate::registry::{self, Registry, TenantState};
use crate::state::{Credential, StateDir};
use crate::{Error, Result};
use zeroize::Zeroizing;

/// An unsealed state directory for administration.
pub struct Admin {
    state: StateDir,
    root: crate::keys::RootSecret,
}

impl Admin {
    /// Unseals `state` with `cred`.
    pub fn open(state: &std::path::Path, cred: &Credential) -> Result<Admin> {
        let state = StateDir::new(state);
        let root = state.unseal(cred)?;
        Ok(Admin { state, root })
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
        let clean: String = fs_uuid
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        crate::anchors::accept_rollback(&self.state, &clean)
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
            match crate::audit::verify(&audit_path) {
                Ok(n) => out.push_str(&format!("audit log: {n} lines, chain intact\n")),
                Err(e) => out.push_str(&format!("audit log: BROKEN: {e}\n")),
            }
        } else {
            out.push_str("audit log: none yet\n");
        }
        Ok(out)
    }
}
