//! `mkfs.digimed`: creates a digimedfs filesystem in a backing directory, its master key wrapped
//! by a key file or by the key service. A thin shell over [`digimedfs::mkfs::mkfs`]. Exit status as mkfs(8): 0 on success, 1 on any error.

mod cli;

use anyhow::Context;
use clap::Parser;
use digimedfs::keysource::{KeyFile, KeyService, KeySource};
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
    let key: Box<dyn KeySource> = match (&cli.key_file, &cli.keyservice) {
        (Some(path), None) => Box::new(KeyFile::open(path)?),
        (None, Some(url)) => {
            let (Some(tenant), Some(token), Some(ca)) =
                (&cli.tenant, &cli.token_file, &cli.ca_file)
            else {
                anyhow::bail!("--keyservice needs --tenant, --token-file and --ca-file");
            };
            let ks =
                KeyService::from_files(url, tenant, token, ca).map_err(digimedfs::Error::from)?;
            Box::new(ks)
        }
        _ => anyhow::bail!("give exactly one of --key-file PATH and --keyservice URL"),
    };
    let opts = MkfsOptions {
        block_size: cli.block_size,
        label: cli.label.clone(),
        tenant: cli.tenant.clone().unwrap_or_else(|| "default".into()),
        force: cli.force,
    };
    let report = mkfs(&cli.backing_dir, key.as_ref(), &opts)
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
