//! `mkfs.digimed`: creates a digimedfs filesystem in a backing directory, its master key wrapped
//! by a key file or by the key service. A thin shell over [`digimedfs_core::mkfs::mkfs`]. Exit status as mkfs(8): 0 on success, 1 on any error.

use mkfs_digimed::cli;

use anyhow::Context;
use clap::Parser;
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    digimedfs_core::hardening::quit_on_broken_pipe();
    // Warnings (a key file others can read, a damaged superblock copy) go to stderr, plainly
    // (to the journal under a systemd unit).
    digimedfs_core::logging::init_stderr(
        "mkfs.digimed",
        tracing_subscriber::EnvFilter::new("warn"),
        true,
    );
    if let Err(e) = digimedfs_core::hardening::forbid_core_dumps() {
        eprintln!("warning: {e}");
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "mkfs.digimed: {}",
                digimedfs_core::error::render_chain(err.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

fn run(cli: &cli::Cli) -> anyhow::Result<()> {
    let key = cli.key.open()?;
    let opts = MkfsOptions {
        block_size: cli.block_size,
        label: cli.label.clone(),
        tenant: cli
            .key
            .service
            .tenant
            .clone()
            .unwrap_or_else(|| "default".into()),
        force: cli.force,
    };
    let report = mkfs(&cli.backing_dir, key.as_ref(), &opts, &digimedfs_sled::Sled)
        .with_context(|| format!("creating a filesystem in {}", cli.backing_dir.display()))?;
    if !cli.quiet {
        println!(
            "digimedfs filesystem created: uuid={} tenant={} block_size={} label={}",
            report.uuid, report.tenant, report.block_size, report.label
        );
    }
    Ok(())
}
