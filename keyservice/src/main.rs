//! `digimed-keyservice`: initialize, administer and serve a digimedfs key service.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use digimedfs_keyservice::admin::Admin;
use digimedfs_keyservice::cli::{AnchorCmd, AuditCmd, Cli, Cmd, TenantCmd, TokenCmd};
use digimedfs_keyservice::sd_notify;
use digimedfs_keyservice::server::{Server, ServerConfig};
use digimedfs_keyservice::state::Credential;

fn main() -> std::process::ExitCode {
    // The journal under systemd (the unit's stderr); elsewhere stderr, coloured only on a
    // terminal, never in a log file.
    digimedfs_core::logging::init_stderr(
        "digimed-keyservice",
        digimedfs_core::logging::env_filter("info"),
        false,
    );
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
            metrics_listen,
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
            cfg.metrics_listen = *metrics_listen;
            let cred = cred()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let server = Server::bind(cfg, &cred).await?;
                drop(cred);
                let addr = server.local_addr()?;
                tracing::info!(%addr, "key service listening (TLS)");
                if let Some(m) = server.metrics_addr()? {
                    tracing::info!("metrics on http://{m}/metrics");
                }
                // systemd stops a service with SIGTERM, a terminal with SIGINT; both handlers
                // are in place before READY=1, so a stop right after readiness is a clean one.
                use tokio::signal::unix::{signal, SignalKind};
                let mut term =
                    signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
                let mut int =
                    signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
                // Under systemd (Type=notify): units ordered after us start only now.
                sd_notify::notify_or_warn(&format!("READY=1\nSTATUS=listening on {addr} (TLS)"));
                server
                    .run(async move {
                        tokio::select! {
                            _ = int.recv() => {}
                            _ = term.recv() => {}
                        }
                        sd_notify::notify_or_warn("STOPPING=1");
                        tracing::info!("key service stopping");
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
