//! `digimed-keyservice`: initialize, administer and serve a digimedfs key service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use digimedfs_keyservice::admin::Admin;
use digimedfs_keyservice::server::{Server, ServerConfig};
use digimedfs_keyservice::state::Credential;

/// Key service for digimedfs (per-tenant KEKs that never leave the service).
///
/// The credential that unseals the root secret comes from --credential-file (the file's bytes)
/// or else from the environment variable DIGIMED_KS_PASSPHRASE.
#[derive(Parser)]
#[command(
    version,
    after_help = "STATE_DIR is the key service's state directory (root.sealed, registry.json, \
anchors.json, audit.log, made by `init`). TENANT and ID are tenant ids: 1 to 64 of \
A-Z a-z 0-9 . _ -. FS_UUID is a filesystem's uuid as mkfs.digimed printed it. \
See docs/keyservice.md."
)]
struct Cli {
    /// Read the credential from this file instead of DIGIMED_KS_PASSPHRASE.
    #[arg(long, global = true)]
    credential_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

#[derive(Subcommand)]
enum TenantCmd {
    /// Add a tenant.
    Add { state_dir: PathBuf, id: String },
    /// List tenants.
    List { state_dir: PathBuf },
    /// Revoke a tenant (all its requests refused).
    Revoke { state_dir: PathBuf, id: String },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a token for a tenant; printed once.
    Issue { state_dir: PathBuf, tenant: String },
    /// Issue an admin token; printed once.
    IssueAdmin { state_dir: PathBuf },
    /// Revoke the token whose id starts with PREFIX (>= 8 hex digits), or the full token.
    Revoke { state_dir: PathBuf, prefix: String },
}

#[derive(Subcommand)]
enum AnchorCmd {
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

#[derive(Subcommand)]
enum AuditCmd {
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

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour codes only on a terminal, never in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // As `digimedfs`: usage errors exit 1, help and version 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    std::process::ExitCode::SUCCESS
                }
                _ => std::process::ExitCode::from(1),
            };
        }
    };
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error chain, never a backtrace (even with RUST_BACKTRACE set).
            eprintln!("digimed-keyservice: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let cred = || Credential::from_file_or_env(cli.credential_file.as_deref());
    let admin = |dir: &PathBuf| -> Result<Admin> {
        Admin::open(dir, &cred()?).with_context(|| format!("unsealing {}", dir.display()))
    };
    match &cli.cmd {
        Cmd::Init {
            state_dir,
            demo_tls,
        } => {
            digimedfs_keyservice::admin::init(state_dir, &cred()?)?;
            println!("initialized {}", state_dir.display());
            let token = admin(state_dir)?.token_issue(None)?;
            println!("admin token (shown once): {}", token.as_str());
            if *demo_tls {
                let d = digimedfs_keyservice::tls::write_demo(&state_dir.join("tls"))?;
                println!(
                    "demo TLS (not for production): CA {}, cert {}, key {}",
                    d.ca.display(),
                    d.cert.display(),
                    d.key.display()
                );
            }
        }
        Cmd::Serve {
            state_dir,
            listen,
            tls_cert,
            tls_key,
            audit_log,
            max_connections,
            address_failure_limit,
        } => {
            let mut cfg = ServerConfig::new(
                state_dir.clone(),
                *listen,
                tls_cert.clone(),
                tls_key.clone(),
            );
            cfg.audit_log = audit_log.clone();
            cfg.max_connections = *max_connections;
            cfg.address_failure_limit = *address_failure_limit;
            let cred = cred()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let server = Server::bind(cfg, &cred).await?;
                drop(cred);
                tracing::info!(addr = %server.local_addr()?, "key service listening (TLS)");
                server
                    .run(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await?;
                anyhow::Ok(())
            })?;
        }
        Cmd::Tenant { cmd } => match cmd {
            TenantCmd::Add { state_dir, id } => {
                admin(state_dir)?.tenant_add(id)?;
                println!("tenant {id} added (key version 1)");
            }
            TenantCmd::List { state_dir } => print!("{}", admin(state_dir)?.tenant_list()?),
            TenantCmd::Revoke { state_dir, id } => {
                admin(state_dir)?.tenant_revoke(id)?;
                println!("tenant {id} revoked");
            }
        },
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Issue { state_dir, tenant } => {
                let t = admin(state_dir)?.token_issue(Some(tenant))?;
                let hash = hex::encode(digimedfs_keyservice::registry::token_hash(&t));
                eprintln!(
                    "token id {} for tenant {tenant} (token shown once on stdout)",
                    digimedfs_keyservice::registry::token_id(&hash)
                );
                println!("{}", t.as_str());
            }
            TokenCmd::IssueAdmin { state_dir } => {
                let t = admin(state_dir)?.token_issue(None)?;
                println!("{}", t.as_str());
            }
            TokenCmd::Revoke { state_dir, prefix } => {
                let id = admin(state_dir)?.token_revoke(prefix)?;
                println!("token {id} revoked");
            }
        },
        Cmd::Rotate { state_dir, tenant } => {
            let v = admin(state_dir)?.rotate(tenant)?;
            println!("tenant {tenant}: current key version is now {v}");
        }
        Cmd::Retire {
            state_dir,
            tenant,
            version,
        } => {
            admin(state_dir)?.retire(tenant, *version)?;
            println!("tenant {tenant}: key version {version} retired");
        }
        Cmd::AcceptRollback { state_dir, fs_uuid } => {
            admin(state_dir)?.accept_rollback(fs_uuid)?;
            println!("filesystem {fs_uuid}: the next older epoch will be accepted once");
        }
        Cmd::Anchor { cmd } => match cmd {
            AnchorCmd::Show { state_dir, fs_uuid } => {
                match admin(state_dir)?.anchor_show(fs_uuid)? {
                    Some(a) => println!(
                        "filesystem {fs_uuid}: tenant {}, epoch {}, digest {}{}",
                        a.tenant,
                        a.epoch,
                        if a.digest.is_empty() {
                            "(none yet)"
                        } else {
                            &a.digest
                        },
                        if a.accept_rollback {
                            ", one rollback accepted"
                        } else {
                            ""
                        }
                    ),
                    None => println!("filesystem {fs_uuid}: no anchor"),
                }
            }
            AnchorCmd::Clear {
                state_dir,
                fs_uuid,
                audit_log,
            } => {
                let mut adm = admin(state_dir)?;
                if let Some(p) = audit_log {
                    adm.set_audit_log(p);
                }
                let old = adm.anchor_clear(fs_uuid)?;
                println!(
                    "filesystem {fs_uuid}: anchor cleared (was tenant {}, epoch {}); the next \
                     mount by the tenant whose key opens it anchors it again",
                    old.tenant, old.epoch
                );
            }
        },
        Cmd::Status {
            state_dir,
            audit_log,
        } => print!("{}", admin(state_dir)?.status(audit_log.as_deref())?),
        Cmd::Audit { cmd } => match cmd {
            AuditCmd::Verify {
                state_dir,
                audit_log,
                audit_key_file,
                checkpoint,
                allow_unkeyed,
            } => {
                let path = match (audit_log, state_dir) {
                    (Some(p), _) => p.clone(),
                    (None, Some(d)) => d.join(digimedfs_keyservice::state::AUDIT_FILE),
                    (None, None) => anyhow::bail!("give STATE_DIR or --audit-log PATH"),
                };
                let key = match (audit_key_file, state_dir) {
                    (Some(f), _) => digimedfs_keyservice::audit::AuditKey::from_file(f)?,
                    (None, Some(d)) => admin(d)?.audit_key()?,
                    (None, None) => {
                        anyhow::bail!("give STATE_DIR (and the credential) or --audit-key-file")
                    }
                };
                let checkpoint = match checkpoint {
                    Some(c) => Some(
                        c.split_once(':')
                            .and_then(|(n, v)| Some((n.parse::<usize>().ok()?, v.to_string())))
                            .context(
                                "--checkpoint takes LINE:VALUE as `audit checkpoint` prints it",
                            )?,
                    ),
                    None => None,
                };
                let opts = digimedfs_keyservice::audit::VerifyOpts {
                    checkpoint,
                    allow_unkeyed: *allow_unkeyed,
                };
                let v = digimedfs_keyservice::audit::verify(&path, &key, &opts)?;
                println!("{}: {v}", path.display());
                if let Some((n, _)) = &opts.checkpoint {
                    println!("checkpoint at line {n} matches");
                }
            }
            AuditCmd::Checkpoint {
                state_dir,
                audit_log,
            } => {
                let adm = admin(state_dir)?;
                let v = adm.audit_verify(
                    audit_log.as_deref(),
                    &digimedfs_keyservice::audit::VerifyOpts::default(),
                )?;
                match v.last {
                    Some(last) => println!("{}:{last}", v.lines),
                    None => anyhow::bail!("the audit log is empty; nothing to checkpoint"),
                }
            }
            AuditCmd::Key { state_dir } => {
                let key = admin(state_dir)?.audit_key()?;
                eprintln!(
                    "audit key on stdout: whoever holds it can verify the audit chain and also \
                     forge one; store it like a credential"
                );
                println!("{}", key.to_hex().as_str());
            }
        },
    }
    Ok(())
}
