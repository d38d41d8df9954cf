//! `mkfs.digimed`: creates a digimedfs filesystem in a backing directory. A thin shell over
//! [`digimedfs::mkfs::mkfs`]. Exit status as mkfs(8): 0 on success, 1 on any error.

mod cli;

use anyhow::Context;
use clap::Parser;
use digimedfs::keysource::KeyFile;
use digimedfs::mkfs::{mkfs, MkfsOptions};
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
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "mkfs.digimed: {}", render(&err));
            ExitCode::from(1)
        }
    }
}

fn run(cli: &cli::Cli) -> anyhow::Result<()> {
    let key = KeyFile::open(&cli.key_file)?;
    let opts = MkfsOptions {
        block_size: cli.block_size,
        label: cli.label.clone(),
        tenant: cli.tenant.clone(),
        force: cli.force,
    };
    let report = mkfs(&cli.backing_dir, &key, &opts)
        .with_context(|| format!("creating a filesystem in {}", cli.backing_dir.display()))?;
    if !cli.quiet {
        println!(
            "digimedfs filesystem created: uuid={} tenant={} block_size={} label={}",
            report.uuid, report.tenant, report.block_size, report.label
        );
    }
    Ok(())
}

/// The error and its causes, `: `-separated, like `{:#}`, but without repeating a cause that
/// the message before it already ends with (library errors include their source's text).
fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
