//! Command line of `digimed-keyservice`: the clap definitions, in the library so that the man
//! pages and completions (fs/mangen) come from the same definitions the binary parses with.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Key service for digimedfs (per-tenant KEKs that never leave the service).
///
/// The credential that unseals the root secret comes from --credential-file (the file's bytes)
/// or else from the environment variable DIGIMED_KS_PASSPHRASE.
#[derive(Debug, Parser)]
#[command(
    name = "digimed-keyservice",
    version,
    after_help = "STATE_DIR is the key service's state directory (root.sealed, registry.json, \
anchors.json, audit.log, made by `init`). TENANT and ID are tenant ids: 1 to 64 of \
A-Z a-z 0-9 . _ -. FS_UUID is a filesystem's uuid as mkfs.digimed printed it. \
See docs/keyservice.md."
)]
pub struct Cli {
    /// Read the credential from this file instead of DIGIMED_KS_PASSPHRASE.
    #[arg(long, global = true)]
    pub credential_file: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a state directory with a new sealed root secret; prints an admin token once.
    Init {
        state_dir: PathBuf,
        /// Also write a demo CA and server certificate (localhost, 127.0.0.1) into STATE_DIR/tls.
        #[arg(long)]
        demo_tls: bool,
    },
    /// Serve the API over TLS.
    Serve {
        state_dir: PathBuf,
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// The server's certificate chain (PEM); clients trust it through their --ca-file.
        #[arg(long)]
        tls_cert: PathBuf,
        /// The server's private key (PEM), readable only by the service.
        #[arg(long)]
        tls_key: PathBuf,
        /// Audit log (default STATE_DIR/audit.log).
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Maximum concurrent connections (at the cap, a new connection closes the oldest one
        /// that has waited at least a second for its client).
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
        /// Failed authentications per address per minute before every unauthenticated request
        /// from it is answered 429 (valid tokens from the address keep working).
        #[arg(long, default_value_t = 1000)]
        address_failure_limit: u32,
        /// Serve Prometheus metrics (plain HTTP, GET /metrics) on this address, e.g.
        /// 127.0.0.1:9464; keep it on loopback or a monitoring network. Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Start a new key version for a tenant (new wraps use it; old versions still unwrap).
    Rotate { state_dir: PathBuf, tenant: String },
    /// Retire an old key version (unwraps under it are refused).
    Retire {
        state_dir: PathBuf,
        tenant: String,
        version: u32,
    },
    /// Allow a filesystem to go back to an older epoch once (after a deliberate restore).
    AcceptRollback { state_dir: PathBuf, fs_uuid: String },
    /// Rollback anchors of filesystems.
    Anchor {
        #[command(subcommand)]
        cmd: AnchorCmd,
    },
    /// Tenants, tokens, and the audit chain.
    Status {
        state_dir: PathBuf,
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Add a tenant.
    Add { state_dir: PathBuf, id: String },
    /// List tenants.
    List { state_dir: PathBuf },
    /// Revoke a tenant (all its requests refused).
    Revoke { state_dir: PathBuf, id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Issue a token for a tenant; printed once.
    Issue { state_dir: PathBuf, tenant: String },
    /// Issue an admin token; printed once.
    IssueAdmin { state_dir: PathBuf },
    /// Revoke the token whose id starts with PREFIX (>= 8 hex digits), or the full token.
    Revoke { state_dir: PathBuf, prefix: String },
}

#[derive(Debug, Subcommand)]
pub enum AnchorCmd {
    /// Show a filesystem's anchor: its tenant, newest epoch and digest.
    Show { state_dir: PathBuf, fs_uuid: String },
    /// Remove a filesystem's anchor and tenant binding (audited); the next mount by the tenant
    /// whose key opens it binds and anchors it again.
    Clear {
        state_dir: PathBuf,
        fs_uuid: String,
        /// Audit log to record the action in (default STATE_DIR/audit.log).
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the keyed chain (and an unkeyed prefix from older versions); names the first bad
    /// line. Needs the credential, or the audit key in --audit-key-file.
    Verify {
        /// The state directory (not needed with --audit-key-file and --audit-log).
        state_dir: Option<PathBuf>,
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// File with the audit key (64 hex digits, from `audit key`); no credential needed.
        #[arg(long)]
        audit_key_file: Option<PathBuf>,
        /// LINE:VALUE printed earlier by `audit checkpoint`: that line must still carry that
        /// chain value (detects a cut-off tail or a rewritten log).
        #[arg(long)]
        checkpoint: Option<String>,
        /// Accept a log without any keyed line (only for logs known to predate the keyed
        /// chain: anyone can write an unkeyed chain).
        #[arg(long)]
        allow_unkeyed: bool,
    },
    /// Print the last line's number and chain value, to keep elsewhere (off this host) and pass
    /// to `audit verify --checkpoint` later.
    Checkpoint {
        state_dir: PathBuf,
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Print the audit key (hex) for an auditor. Whoever holds it can verify the chain, and
    /// also write a chain that verifies: give it only to whom you would let rewrite the log.
    Key { state_dir: PathBuf },
}
